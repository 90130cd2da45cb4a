"""A recipe's parts, got one way by every command (run, lr-find, evaluate, predict, show): the model
on its device, the data checked and augmented for training, and the losses.

A check or an option added here reaches every command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from ignite.utils import manual_seed
from torch import nn

from fmtk.data.augment import Augmentation
from fmtk.data.batches import DataSplits, TensorBatches
from fmtk.data.checks import check_splits
from fmtk.data.images import LoaderBatches
from fmtk.distributed import check_sharded
from fmtk.errors import FmtkError
from fmtk.recipe import Recipe
from fmtk.training.engines import SpeedOptions, loss_on


@dataclass(frozen=True)
class Parts:
    """What a recipe gives a run: the model (on ``device``, in its memory format), the data, the
    loss of validation and testing (``loss_fn``), the loss of training (``train_loss``: with the
    recipe's label smoothing) and the speed options resolved for the model and device."""

    recipe: Recipe
    device: torch.device
    model: nn.Module
    data: DataSplits
    loss_fn: Callable
    train_loss: Callable
    speed: SpeedOptions


def create_model(recipe: Recipe, device: torch.device) -> nn.Module:
    """The recipe's model on ``device``, from the recipe's seed (Python, numpy and torch are seeded
    first, so the initial weights, and the data drawn after them, are the recipe's)."""
    manual_seed(recipe.seed)
    model = recipe.call("model")  # first: a bad variant fails before a slow data load
    if not isinstance(model, nn.Module):
        raise FmtkError(
            f"recipe {recipe.name}: model() returned {type(model).__name__}, not a torch nn.Module"
        )
    model = model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    return model


def load_data(
    recipe: Recipe, data_dir: Path, device: torch.device, model: nn.Module | None = None
) -> DataSplits:
    """The recipe's data from ``data_dir`` on ``device``, checked (three splits with samples, batches
    of the right kind, and with ``model``: one output per class) and with the recipe's augmentation
    on the training split."""
    data = recipe.call("data", data_dir, device)
    if not isinstance(data, DataSplits):
        raise FmtkError(
            f"recipe {recipe.name}: data() returned {type(data).__name__}, not a "
            "DataSplits(train, valid, test, classes)"
        )
    check_sharded({"train": data.train, "valid": data.valid, "test": data.test})
    check_splits(recipe.name, model, data, device)
    augment_training_split(recipe, data)
    return data


def recipe_parts(
    recipe: Recipe,
    data_dir: Path,
    device: torch.device,
    speed: SpeedOptions | None = None,
    load_weights: Callable[[nn.Module], None] | None = None,
) -> Parts:
    """Model, data and losses of ``recipe``; ``load_weights(model)`` runs between the model and the
    data (a checkpoint that does not fit fails before a slow data load)."""
    model = create_model(recipe, device)
    speed = (speed or SpeedOptions()).resolve(device, model)  # "auto" values chosen for this model
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if load_weights is not None:
        load_weights(model)
    data = load_data(recipe, data_dir, device, model)
    loss_fn = loss_on(recipe.loss(recipe), device)
    # Label smoothing for training only: validation and testing report the plain loss.
    train_loss = (
        nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing) if recipe.label_smoothing else loss_fn
    )
    return Parts(recipe, device, model, data, loss_fn, train_loss, speed)


def augment_training_split(recipe: Recipe, data: DataSplits) -> None:
    """The recipe's augmentation, on its training split only (a flip of 0 keeps the data's own)."""
    if not (recipe.augment_flip or recipe.augment_crop or recipe.augment_shift or recipe.augment_erase):
        return
    if not isinstance(data.train, TensorBatches | LoaderBatches):
        raise FmtkError(
            f"recipe {recipe.name}: augment_* need a training split of fmtk.data.TensorBatches or "
            f"LoaderBatches; data() gave {type(data.train).__name__}"
        )
    own = data.train.augmentation
    data.train.augmentation = Augmentation(
        flip_p=recipe.augment_flip or own.flip_p, shift=recipe.augment_shift,
        erase_p=recipe.augment_erase, crop_scale=recipe.augment_crop,
    )  # fmt: skip
