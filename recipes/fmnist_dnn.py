"""Fashion-MNIST MLP 784-128-64-10 with He init, BatchNorm and dropout 0.5/0.2; Adam 1e-3, batch 16."""

from torch import nn

from fmtk import Recipe
from fmtk.data import ImageInput, load_mnist_like
from fmtk.models import mlp


def model(recipe: Recipe) -> nn.Module:
    # nn.Dropout, not the notebook's F.dropout(x, 0.5), which stayed on at test time.
    return mlp(784, [128, 64], 10, batch_norm=True, dropout=[0.5, 0.2], he_init=True)


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
)
