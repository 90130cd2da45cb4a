"""A recipe's parts, got one way by every command (run, lr-find, evaluate, predict, show): the model
on its device, the data checked and augmented for training, and the losses.

A check or an option added here reaches every command.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.utils import manual_seed
from torch import nn

from fmtk.data.augment import Augmentation
from fmtk.data.batches import DataSplits, TensorBatches
from fmtk.data.checks import check_splits, split_labels
from fmtk.data.copies import Fingerprinted, copied
from fmtk.data.images import LoaderBatches
from fmtk.data.mixing import BatchMixer, Mixing
from fmtk.distributed import check_sharded
from fmtk.errors import FmtkError
from fmtk.recipe import Recipe
from fmtk.runfolder import TRAIN_FINGERPRINTS
from fmtk.training.engines import SpeedOptions, configure_kernels, loss_on
from fmtk.weights import is_weights_path, load_starting_weights


@dataclass
class Parts:
    """What a recipe gives a run: the model (on ``device``, in its memory format), the data, the
    loss of validation and testing (``loss_fn``), the loss of training (``train_loss``: with the
    recipe's label smoothing and class weights), the speed options resolved for the model and
    device, the line saying which starting weights were loaded (``started_from``) and the names of
    the tensors they did not give (``head``: what fine-tuning trains alone, then at the full LR) and
    the mixup/CutMix of the training batches (``train_mix``; None: off)."""

    recipe: Recipe
    device: torch.device
    model: nn.Module
    data: DataSplits
    loss_fn: Callable
    train_loss: Callable
    speed: SpeedOptions
    started_from: str | None = None
    head: tuple[str, ...] = ()
    train_mix: BatchMixer | None = None


def create_model(recipe: Recipe, device: torch.device) -> nn.Module:
    """The recipe's model on ``device``, from the recipe's seed (Python, numpy and torch are seeded
    first, so the initial weights, and the data drawn after them, are the recipe's)."""
    manual_seed(recipe.seed)
    model = recipe.call("model")  # first: a bad variant fails before a slow data load
    if not isinstance(model, nn.Module):
        raise FmtkError(
            f"recipe {recipe.name}: model() returned {type(model).__name__}, not a torch nn.Module"
        )
    return model.to(device)


def with_data(recipe: Recipe, data_dir: Path) -> Recipe:
    """The recipe with the values its data decides (its ``from_data``, run once), or as it is. A
    value set on it (``--set``, a preset) that ``from_data`` replaced is recorded as the one used
    (:func:`decided_line` says so)."""
    if recipe.from_data is None or recipe.provenance.data_decided:
        return recipe
    prepared = recipe.call("from_data", data_dir)
    if not isinstance(prepared, Recipe):
        raise FmtkError(f"recipe {recipe.name}: from_data() returned {type(prepared).__name__}, not a Recipe")
    changed = {key: _value(prepared, key) for key in recipe.changed}
    return prepared.came_from(data_decided=True, changed=changed)


def weights_in_full(recipe: Recipe) -> Recipe:
    """The recipe with its starting weights' file or run folder as an absolute path (config.json
    records it, and a ``--config`` run from another folder finds it, as its ``data_dir``)."""
    if recipe.weights is None or not is_weights_path(recipe.weights) or not Path(recipe.weights).exists():
        return recipe
    full = str(Path(recipe.weights).resolve())
    changed = {**recipe.changed, "weights": full} if "weights" in recipe.changed else recipe.changed
    return dataclasses.replace(recipe, weights=full).came_from(changed=changed)


def decided_line(given: Recipe, used: Recipe) -> str | None:
    """The values set on ``given`` that its ``from_data`` replaced in ``used``, one line; None if none."""
    from fmtk.runs import format_changed

    replaced = [key for key, value in given.changed.items() if used.changed.get(key, value) != value]
    if not replaced:
        return None
    now = format_changed({key: used.changed[key] for key in replaced})
    set_ = format_changed({key: given.changed[key] for key in replaced})
    return f"recipe {given.name}: its from_data decided {now} from the data (set: {set_})"


def _value(recipe: Recipe, key: str) -> object:
    """A field's value, else an option's."""
    return recipe.options.get(key) if key in recipe.options else getattr(recipe, key, None)


def load_data(
    recipe: Recipe,
    data_dir: Path,
    device: torch.device,
    model: nn.Module | None = None,
    loss_fn: Callable | None = None,
) -> DataSplits:
    """The recipe's data from ``data_dir`` on ``device``, checked (three splits with samples, batches
    of the right kind, and with ``model``: one output per class) and with the recipe's augmentation
    on the training split."""
    data = with_data(recipe, data_dir).call("data", data_dir, device)  # from_data runs once a command
    if not isinstance(data, DataSplits):
        raise FmtkError(
            f"recipe {recipe.name}: data() returned {type(data).__name__}, not a "
            "DataSplits(train, valid, test, classes)"
        )
    check_sharded({"train": data.train, "valid": data.valid, "test": data.test})
    check_splits(recipe.name, model, data, device, loss_fn)
    augment_training_split(recipe, data)
    return data


def recipe_parts(
    recipe: Recipe,
    data_dir: Path,
    device: torch.device,
    speed: SpeedOptions | None = None,
    load_weights: Callable[[nn.Module], None] | None = None,
    head: tuple[str, ...] = (),
) -> Parts:
    """Model, data and losses of ``recipe`` (with the values its data decides); ``load_weights(model)``
    (a checkpoint's) runs between the model and the data, so that one that does not fit fails before
    a slow data load; without it, the recipe's starting ``weights`` are loaded (and tell the
    ``head``; a resumed run gives the one its config.json recorded)."""
    left_to_data = recipe.options.get("image_size") == 0  # (images: 0, the weights' own size)
    recipe = with_data(recipe, data_dir)
    model = create_model(recipe, device)
    started_from = None
    if load_weights is not None:
        load_weights(model)
    elif recipe.weights is not None:
        started_from, new = load_starting_weights(model, recipe.weights, recipe.options.get("arch"))
        head = tuple(new)
        if left_to_data and recipe.options.get("image_size"):  # a weights' size is slower than one asks
            started_from += f"; photos at {recipe.options['image_size']} px (image_size=0)"
    if recipe.fine_tunes and not head:
        raise FmtkError(
            f"recipe {recipe.name}: freeze_epochs and backbone_lr_scale act on the tensors the starting "
            f"weights did not give (the new head); {recipe.weights} gave every one"
        )
    speed = (speed or SpeedOptions()).resolve(device, model)  # "auto" values chosen for this model
    configure_kernels(device, speed.deterministic, speed.threads)  # before the data's check runs the model
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loss_fn = loss_on(recipe.loss(recipe), device)
    data = load_data(recipe, data_dir, device, model, loss_fn)
    train_loss = training_loss(recipe, data, loss_fn, device)
    train_mix = training_mix(recipe, data, device)
    return Parts(recipe, device, model, data, loss_fn, train_loss, speed, started_from, head, train_mix)


def training_loss(recipe: Recipe, data: DataSplits, loss_fn: Callable, device: torch.device) -> Callable:
    """The loss of training: the recipe's, or cross-entropy with its label smoothing and class
    weights (validation and testing report the plain loss)."""
    if not recipe.label_smoothing and recipe.class_weights == "none":
        return loss_fn
    weight = None
    if recipe.class_weights == "balanced":
        counts = class_counts(data.train, len(data.classes))
        if counts is None:
            raise FmtkError(
                f"recipe {recipe.name}: class_weights=balanced needs the training labels; data() gave "
                f"a training split of {type(data.train).__name__} (use TensorBatches or LoaderBatches)"
            )
        weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=recipe.label_smoothing)


def training_mix(recipe: Recipe, data: DataSplits, device: torch.device) -> BatchMixer | None:
    """The recipe's mixup/CutMix of training batches, seeded by its seed and this process's rank
    (None: both alphas 0). The targets it makes are class probabilities, which the default
    cross-entropy takes, with its label smoothing and class weights (a recipe's own loss is refused)."""
    mixing = Mixing(recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mix_switch_prob, len(data.classes))
    return BatchMixer(mixing, recipe.seed, device, idist.get_rank()) if mixing.active else None


def class_counts(batches: object, classes: int) -> torch.Tensor | None:
    """How many samples of each class ``batches`` holds (float), when it can say without loading
    them (:func:`fmtk.data.checks.split_labels`); else None."""
    labels = split_labels(batches)
    if labels is None:
        return None
    return torch.bincount(labels.cpu(), minlength=classes).float()


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


def split_counts(data: DataSplits) -> dict[str, dict[str, int]] | None:
    """Each split's samples per class (config.json's ``splits``: a resumed run and ``fmtk evaluate``
    check the data is the same, :func:`data_differs`); None when the data cannot say without loading
    the batches."""
    counted = {}
    for name in ("train", "valid", "test"):
        counts = class_counts(getattr(data, name), len(data.classes))
        if counts is None:
            return None
        counted[name] = {str(c): int(n) for c, n in zip(data.classes, counts.tolist(), strict=True)}
    return counted


def data_differs(data: DataSplits, run_dir: Path, splits: Mapping[str, Any] | None) -> str | None:
    """How ``data`` differs from what the run in ``run_dir`` was made with: each split's samples per
    class as its config.json records them (``splits``) and, from a photo folder, the training photos
    themselves (``train_fingerprints.npz``); None when it is the same, or when the run recorded
    neither. A resume goes on, and ``fmtk evaluate`` scores a split, only with the same data: other
    data draws other splits."""
    now = split_counts(data)
    if splits is not None and now is not None and splits != now:
        differ = [split for split in now if now[split] != splits.get(split)]
        return (f"{split_sizes({split: now[split] for split in differ})}; it trained on "
                f"{split_sizes({split: splits.get(split, {}) for split in differ})}")  # fmt: skip
    saved = run_dir / TRAIN_FINGERPRINTS
    if data.trained_on is None or not saved.is_file():
        return None
    before, photos = Fingerprinted.load(saved).prints, data.trained_on.prints
    if len(before.hashes) != len(photos.hashes):
        return f"{len(photos.hashes)} training photos; it trained on {len(before.hashes)}"
    unlike = (before.hashes != photos.hashes) | (before.thumbnails != photos.thumbnails).any(1)
    differ = int(unlike.sum())
    if not differ:
        return None
    verb = "differs" if differ == 1 else "differ"
    return f"{differ} of its {len(photos.hashes)} training photos {verb} from those it trained on"


def holds_training_photos(data: DataSplits, run_dir: Path) -> bool:
    """Whether the training split of ``data`` (a photo folder's) holds some of the photos the run in
    ``run_dir`` trained on, or near copies of them: a version of its data, not other data."""
    saved = run_dir / TRAIN_FINGERPRINTS
    if data.trained_on is None or not saved.is_file():
        return False
    return bool((copied(data.trained_on.prints, Fingerprinted.load(saved).prints) >= 0).any())


def split_totals(parts: Parts) -> str:
    """One line of each split's sample count, for data that cannot count its classes without loading
    its batches (a DataLoader of a dataset with a length): ``train 1077 · valid 360 · test 360``;
    empty when a split cannot say."""
    sizes = {}
    for name in ("train", "valid", "test"):
        dataset = getattr(getattr(parts.data, name), "dataset", None)
        try:
            sizes[name] = len(dataset)
        except TypeError:  # no dataset, or an iterable one
            return ""
    return " · ".join(f"{name} {size}" for name, size in sizes.items())


def split_sizes(counted: Mapping[str, Mapping[str, int]] | None) -> str:
    """One line of each split's class counts (:func:`split_counts`), e.g. ``train 1600 (cats 800,
    dogs 800) · valid …``; empty when they are not known."""
    if counted is None:
        return ""
    return " · ".join(
        f"{name} {sum(counts.values())} ({', '.join(f'{c} {n}' for c, n in counts.items())})"
        for name, counts in counted.items()
    )
