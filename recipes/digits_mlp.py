"""scikit-learn's 8×8 digits (bundled, no download), MLP 64-64-10, Adam 1e-2: trains in seconds.

Also the worked example of a recipe around data you already hold as arrays: see
fmtk.data.load_digits_splits, which wraps them in TensorBatches.
"""

from torch import nn

from fmtk import Recipe
from fmtk.data import ImageInput, load_digits_splits
from fmtk.models import mlp


def model(recipe: Recipe) -> nn.Module:
    return mlp(64, [recipe.options["hidden"]], 10)


def data(recipe, data_dir, device):
    return load_digits_splits(recipe.batch_size, device, recipe.seed)


def image_input(recipe):
    return ImageInput(8, channels=1)  # light digit on dark ground, like the data


recipe = Recipe(
    name="digits_mlp",
    description=__doc__.splitlines()[0],
    model=model,
    data=data,
    image_input=image_input,
    optimizer="Adam",
    lr=1e-2,
    batch_size=32,
    epochs=30,
    plateau_patience=4,
    early_stopping_patience=8,
    log_every=10,
    options={"hidden": 64},
)
