"""Fashion-MNIST MLP 784-128-64-10 with He init, BatchNorm and dropout 0.5/0.2; Adam 1e-3, batch 16."""

from torch import nn

from fmtk import Check, Preset, Recipe
from fmtk.data import ImageInput, load_mnist_like
from fmtk.models import mlp


def model(recipe: Recipe) -> nn.Module:
    # nn.Dropout, not the notebook's F.dropout(x, 0.5), which stayed on at test time.
    return mlp(784, [128, 64], 10, batch_norm=True, dropout=recipe.options["dropout"], he_init=True)


def data(recipe, data_dir, device):
    return load_mnist_like(data_dir, "FashionMNIST", recipe.batch_size, device, recipe.seed)


def image_input(recipe):
    return ImageInput(28, channels=1)


recipe = Recipe(
    name="fmnist_dnn",
    description=__doc__.splitlines()[0],
    model=model,
    data=data,
    image_input=image_input,
    optimizer="Adam",
    lr=1e-3,
    batch_size=16,
    epochs=30,
    plateau_patience=5,
    plateau_factor=0.1,
    early_stopping_patience=11,  # the notebook's patience 10: it stops when its counter exceeds 10
    options={"dropout": [0.5, 0.2]},  # after the first and the second hidden layer
    presets={
        "best": Preset(
            "the same MLP past 89.5%: lighter dropout, AdamW one-cycle to 3e-3, batch 128, label "
            "smoothing, 40 epochs",
            {
                "dropout": [0.2, 0.1],
                "optimizer": "AdamW",
                "lr": 3e-3,
                "weight_decay": 1e-4,
                "batch_size": 128,
                "schedule": "onecycle",
                "early_stopping_patience": None,
                "label_smoothing": 0.1,
                "epochs": 40,
            },
        ),
    },
    # Regression check (fmtk check): the notebook's MLP scored 87.7%; --preset best, with the recipe's
    # seed on one CPU thread, 89.76% test (best checkpoint, epoch 33), 89.70% last, 71 s of training;
    # over seeds 42, 1, 2 89.73% (89.64-89.78), the faithful recipe 87.76% (87.56-87.97). The floor
    # is 0.6 points below the lowest seed (another CPU's or a GPU's arithmetic moves the figure as a
    # seed does) and 0.9 above the faithful recipe's highest.
    check=Check(preset="best", expect={"test_accuracy": ">= 0.89", "epochs_run": "== 40"}),
)
