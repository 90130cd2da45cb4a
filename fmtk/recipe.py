"""The Recipe type, its rules, and its presets and `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmtk.data.batches import DataSplits
from fmtk.data.image_input import ImageInput
from fmtk.errors import FmtkError, user_code_line
from fmtk.optimizers import optimizer_problems
from fmtk.regression.check import Check, recipe_checks
from fmtk.values import argument_value, parse_option, parse_value, typed

SCHEDULES = ("plateau", "onecycle", "cosine", "none")
TRACKERS = ("none", "mlflow", "wandb")
CLASS_WEIGHTS = ("none", "balanced")
PER_ITERATION_SCHEDULES = ("onecycle", "cosine")  # step every iteration, laid out over the epochs


def cross_entropy(recipe: Recipe) -> nn.Module:
    """The default loss of a recipe: ``nn.CrossEntropyLoss()``."""
    return nn.CrossEntropyLoss()


@dataclass(frozen=True)
class Provenance:
    """Where a recipe came from, set by fmtk (not by a recipe's author) and recorded in
    config.json: ``source``, the file of a user's recipe (for ``--resume``); ``preset``, the
    preset it was given, and ``preset_values``, the values it set; ``changed``, the values set on
    top of its defaults (the preset's included); ``derived``, the
    recipe's own ``[value, epochs]`` of a field fmtk fitted to the run's epochs (``warmup_epochs``),
    to fit again when a new run from its config.json changes them. ``data_decided``: it
    holds the values its ``from_data`` decides (run once, or read from the run's config.json), which
    is not run again (not recorded)."""

    source: str | None = None
    preset: str | None = None
    changed: Mapping[str, Any] = field(default_factory=dict)
    derived: Mapping[str, list[float]] = field(default_factory=dict)
    data_decided: bool = False
    preset_values: Mapping[str, Any] = field(default_factory=dict)  # what the preset set, as it set it
    # Options whose recipe default is None: each takes any value as it reads, also once one is set
    untyped: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Preset:
    """Named values of a recipe, e.g. ``fmtk run mnist_dnn --preset fast``: the same model and data
    with other numbers, applied like ``--set`` (which may change them further)."""

    description: str
    values: dict[str, Any]


@dataclass
class Recipe:
    """Model + data + the numbers of one training setup.

    Args:
        name: the recipe's name (it names the run folders).
        description: one line (``fmtk list`` shows it).
        model: ``model(recipe)`` → the ``nn.Module``.
        data: ``data(recipe, data_dir, device)`` → the :class:`fmtk.data.DataSplits`.
        loss: ``loss(recipe)`` → the loss of training, validation and testing (default: cross-entropy).
        options: the recipe's own knobs (``variant``, ``image_size``…).
        check: its regression test (:class:`~fmtk.regression.check.Check`, ``fmtk check``).
        the other fields: the numbers (optimizer, lr, batch_size, epochs, schedules, augmentation…),
            each described in docs/recipes.md.

    Every scalar field and every key of ``options`` can be changed from the command line with
    ``--set key=value``.

    Example::

        recipe = Recipe(name="tiny", description="...", model=make_model, data=make_data,
                        optimizer="Adam", lr=1e-3, batch_size=32, epochs=5)
    """

    # --- What it is -------------------------------------------------------------------------------
    name: str
    description: str

    # --- Model and data -----------------------------------------------------------------------------
    model: Callable[[Recipe], nn.Module]
    data: Callable[[Recipe, Path, torch.device], DataSplits]
    options: dict[str, Any] = field(default_factory=dict)  # recipe-specific knobs: variant, image_size…
    loss: Callable[[Recipe], Callable] = cross_entropy  # a module or a function (output, target) → loss
    # More Ignite metrics of validation and testing, each one number, e.g. {"f1": Fbeta(1.0)} (per evaluator).
    metrics: Callable[[Recipe], dict[str, Any]] | None = None
    # from_data(recipe, data_dir) → the recipe with the values its data decides (an image folder's
    # class names, which size the model), before the model is made; config.json records them.
    from_data: Callable[[Recipe, Path], Recipe] | None = None
    # image_input(recipe) → an ImageInput: how an image file becomes a model input, as the test split
    # is prepared (predict reads files with it, summary takes its shape, export writes it in the file).
    image_input: Callable[[Recipe], ImageInput] | None = None

    # --- Optimisation -------------------------------------------------------------------------------
    optimizer: str = "Adam"  # any class name in torch.optim
    lr: float = 1e-3
    weight_decay: float = 0.0
    # More keyword arguments of the optimizer (momentum, nesterov, betas, eps…), checked against its
    # signature; on the command line: --set optimizer_args=momentum:0.9,nesterov:true,betas:0.9/0.99
    optimizer_args: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16
    # Gradient accumulation: the optimizer steps once per this many batches, on the gradient of their
    # mean loss (batch 32 with 4 steps ≙ batch 128); an epoch's last group may be smaller.
    accumulate_steps: int = 1
    epochs: int = 10
    # Gradient clipping: the total norm of each step's gradients is scaled down to at most this.
    max_grad_norm: float | None = None

    # --- Schedule, stopping and the best checkpoint -------------------------------------------------
    # The LR schedule: "plateau" (ReduceLROnPlateau as set by plateau_patience/_factor/_metric: the
    # notebooks'), "onecycle" (lr is the peak), "cosine" (from lr to 0, after warmup_epochs of
    # linear warm-up from lr/100) or "none"; onecycle and cosine step every iteration.
    schedule: str = "plateau"
    warmup_epochs: float = 0.0
    # torch ReduceLROnPlateau on valid loss, with the plateau schedule (the default); None turns it off.
    plateau_patience: int | None = None
    plateau_factor: float = 0.1
    # Ignite's EarlyStopping patience (stops when the counter *reaches* it); None turns it off.
    early_stopping_patience: int | None = None
    # The valid metric each watches: "<metric>", "<metric>:min" or "<metric>:max" (no mode: min for a
    # name containing "loss", else max); metrics: loss, accuracy and the names of ``metrics``.
    early_stopping_metric: str = "loss"
    checkpoint_metric: str = "accuracy"  # the best checkpoint holds the weights of its best epoch
    plateau_metric: str = "loss"

    # --- Regularisation and augmentation ------------------------------------------------------------
    # Label smoothing of the training loss; validation and testing report plain cross-entropy.
    label_smoothing: float = 0.0
    # "balanced": the training loss weights each class by its inverse frequency in the train split.
    class_weights: str = "none"
    # An EMA of the weights (Ignite's EMAHandler, every step) with this decay, e.g. 0.999; validation,
    # the best checkpoint, testing and predict use it. None: off.
    ema_decay: float | None = None
    # Augmentation of the training split, per sample on its device (fmtk.data.augment): a left-right
    # flip with probability augment_flip (0: the data's own flip, if any), a random-resized crop of
    # augment_crop … 100% of the area (0: none), a shift by up to augment_shift pixels (zero padded),
    # a random box erased with probability augment_erase. Valid and test batches: never augmented.
    augment_flip: float = 0.0
    augment_crop: float = 0.0
    augment_shift: int = 0
    augment_erase: float = 0.0
    # mixup and CutMix of the training batches (fmtk.data.mixing), each sample with its own λ ~ Beta(α, α)
    # and partner; an α of 0 turns one off. With both on, a sample is CutMix with probability
    # mix_switch_prob, else mixup. The targets become class probabilities: the default loss only.
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_switch_prob: float = 0.5
    # Test-time augmentation: testing, evaluate and predict average the class probabilities of each
    # image and its left-right mirror (validation, which picks the best checkpoint, does not).
    tta_flip: bool = False

    # --- Weights and fine-tuning --------------------------------------------------------------------
    # The starting weights (fmtk.weights): torchvision's (DEFAULT, IMAGENET1K_V1…) for a recipe
    # with a torchvision ``arch`` option, a weights file or a run folder; what fits is loaded.
    weights: str | None = None
    # Fine-tuning from weights: the head they did not give trains alone for freeze_epochs epochs
    # (the rest's BatchNorm in eval mode), then the rest too, at backbone_lr_scale × the LR.
    freeze_epochs: int = 0
    backbone_lr_scale: float = 1.0

    # --- Run control --------------------------------------------------------------------------------
    seed: int = 42
    log_every: int = 50  # iterations between per-iteration points (TensorBoard, trackers) and NaN checks
    # Where else the run is logged: "none", "mlflow" or "wandb" (training/tracking.py; the track extra).
    track: str = "none"
    # With a tracker: the run's best checkpoint exported as ONNX (fmtk export) at the end, logged too.
    track_model: bool = False
    # A recipe's own handlers: called with the assembled fmtk.training.run.Run before training starts.
    attach: Callable[[Any], None] | None = None
    # Named sets of values (`fmtk run RECIPE --preset NAME`).
    presets: dict[str, Preset] = field(default_factory=dict)
    # Its regression test (fmtk check): a short run and the figures it must reach; one or several.
    check: Check | tuple[Check, ...] | None = None

    # --- Where it came from: set by fmtk (load_recipe, --preset, --set), recorded in config.json ----
    provenance: Provenance = field(default_factory=Provenance)

    @property
    def source(self) -> str | None:
        """The file of a user's recipe (for ``--resume``); None for a bundled one."""
        return self.provenance.source

    @property
    def preset(self) -> str | None:
        """The preset it was given, if any."""
        return self.provenance.preset

    @property
    def changed(self) -> dict[str, Any]:
        """The values set on top of its defaults (``--set``, a preset, ``fmtk.fit`` keywords)."""
        return dict(self.provenance.changed)

    def came_from(self, **given: Any) -> Recipe:
        """This recipe with its provenance's ``source``, ``preset`` or ``changed`` replaced."""
        return dataclasses.replace(self, provenance=dataclasses.replace(self.provenance, **given))

    def untyped_options(self) -> frozenset[str]:
        """The options that take any value as it reads: a default of None, or once such a one is set."""
        return self.provenance.untyped | {key for key, value in self.options.items() if value is None}

    def validate(self) -> None:
        """Raise FmtkError on values that cannot train (a wrong type, lr ≤ 0, batch size 0, ...)."""
        if not isinstance(self.name, str) or not SAFE_NAME.fullmatch(self.name):
            raise FmtkError(
                f"recipe name {self.name!r} must be one folder name: letters, digits, '_', '-', '.' "
                "(it names the run folders)"
            )
        for name in CALLABLES:  # (a module given where a function that makes it goes: loss=nn.MSELoss())
            made = getattr(self, name)
            if isinstance(made, nn.Module):
                kind = type(made).__name__
                raise FmtkError(f"recipe {self.name}: {name} is a {kind} module; give a function of the "
                                f"recipe that makes it: {name}=lambda recipe: ...")  # fmt: skip
            if not (made is None or callable(made)):
                raise FmtkError(f"recipe {self.name}: {name} must be a function of the recipe, got "
                                f"{type(made).__name__}")  # fmt: skip
        if isinstance(self.optimizer, type):  # the class, where its name goes
            named = self.optimizer.__name__
            raise FmtkError(
                f"recipe {self.name}: optimizer=torch.optim.{named}: give its name, optimizer={named!r}"
            )
        for name, kind in overridable_fields().items():
            value = typed(f"recipe {self.name}: {name}", getattr(self, name), kind)
            if isinstance(value, float) and not math.isfinite(value):
                raise FmtkError(f"recipe {self.name}: {name} must be a finite number, got {value}")
        for problem in [*_value_problems(self), *optimizer_problems(self.optimizer, self.optimizer_args)]:
            raise FmtkError(f"recipe {self.name}: {problem}")

    def call(self, part: str, *args: Any) -> Any:
        """``self.<part>(self, *args)`` (``model``, ``data``, ``image_input``…). An exception from a
        user's own code passes on (the command line names its file and line); one from fmtk's code
        (a bundled recipe given a value it cannot build with) becomes one line naming the values."""
        try:
            return getattr(self, part)(self, *args)
        except FmtkError:
            raise
        except Exception as error:  # noqa: BLE001 - torch, PIL, numpy: whatever the bad value upset
            if user_code_line(error) is not None:
                raise
            values = " ".join(f"{key}={value}" for key, value in self.changed.items()) or "its own values"
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise FmtkError(
                f"recipe {self.name}: {part}() failed with {values} ({type(error).__name__}: {reason})"
            ) from None

    @property
    def checks(self) -> tuple[Check, ...]:
        """The recipe's regression checks (its ``check`` field, one or several)."""
        return recipe_checks(self.check, self.name)

    @property
    def fine_tunes(self) -> bool:
        """Whether ``freeze_epochs`` or ``backbone_lr_scale`` asks for fine-tuning (two LR groups)."""
        return self.freeze_epochs > 0 or self.backbone_lr_scale != 1

    def input(self) -> ImageInput:
        """How this recipe reads one image file (its ``image_input``)."""
        if self.image_input is None:
            raise FmtkError(
                f"recipe {self.name} does not say how to read an image file: give it image_input= (an "
                "ImageInput; docs/recipes.md), as predict and export read and write image files only"
            )
        given = self.call("image_input")
        if not isinstance(given, ImageInput):
            raise FmtkError(f"recipe {self.name}: image_input gave {type(given).__name__}, not ImageInput")
        return given

    def watched(self, field: str) -> Watched:
        """The valid metric and its mode that ``field`` (``early_stopping_metric``,
        ``checkpoint_metric`` or ``plateau_metric``) names: ``"loss"`` → ``("loss", "min")``,
        ``"f1"`` → ``("f1", "max")``, ``"f1:min"`` → ``("f1", "min")`` (without a mode: min for a
        name containing "loss", else max). The one place such a value is read."""
        return watched_metric(getattr(self, field))

    def make_metrics(self) -> dict[str, Any]:
        """New instances of the recipe's own metrics (``metrics``), for one evaluator."""
        from ignite.metrics import Metric

        made = dict(self.metrics(self)) if self.metrics is not None else {}
        for name, metric in made.items():
            if not isinstance(metric, Metric):
                kind = type(metric).__name__
                raise FmtkError(f"recipe {self.name}: metrics() gives {name!r} as {kind}, not an Ignite "
                                "Metric (e.g. ignite.metrics.Precision(average=True))")  # fmt: skip
        return made

    def config(self) -> dict[str, Any]:
        """The resolved recipe as plain JSON values (written to the run folder's config.json)."""
        values = {name: getattr(self, name) for name in overridable_fields()}
        values["options"] = dict(self.options)
        for name in CALLABLES:
            function = getattr(self, name)
            values[name] = None if function is None else getattr(function, "__qualname__", repr(function))
        return {
            "name": self.name, "description": self.description, "source": self.source, **values,
            "preset": self.preset, "changed": dict(self.changed),
            **({"preset_values": dict(self.provenance.preset_values)} if self.preset else {}),
            **({"derived": dict(self.provenance.derived)} if self.provenance.derived else {}),
        }  # fmt: skip


class Watched(typing.NamedTuple):
    """A watched valid metric: its ``name`` and ``mode`` (``min`` or ``max``)."""

    name: str
    mode: str

    @property
    def column(self) -> str:
        """Its metrics.csv column: ``valid_<name>``."""
        return f"valid_{self.name}"

    @property
    def minimise(self) -> bool:
        return self.mode == "min"

    def best(self, values: typing.Iterable[float]) -> float:
        """The best of ``values`` by the mode."""
        return min(values) if self.minimise else max(values)


def watched_metric(text: str) -> Watched:
    """A watched metric's name and mode, the one place such a text is parsed: ``"loss"`` →
    ``("loss", "min")``, ``"f1"`` → ``("f1", "max")``, ``"f1:min"`` → ``("f1", "min")`` (without a
    mode: min for a name containing "loss", else max)."""
    name, _, mode = text.partition(":")
    return Watched(name, mode or ("min" if "loss" in name else "max"))


def _value_problems(recipe: Recipe) -> Iterator[str]:
    """What is wrong with the recipe's values, one line each (none: it can train)."""
    r = recipe
    checks = [
        (r.lr > 0, f"lr must be > 0, got {r.lr}"),
        (r.weight_decay >= 0, f"weight_decay must be >= 0, got {r.weight_decay}"),
        (r.batch_size >= 1, f"batch_size must be >= 1, got {r.batch_size}"),
        (r.accumulate_steps >= 1, f"accumulate_steps must be >= 1, got {r.accumulate_steps}"),
        (r.epochs >= 1, f"epochs must be >= 1, got {r.epochs}"),
        (r.log_every >= 1, f"log_every must be >= 1, got {r.log_every}"),
        (0 < r.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {r.plateau_factor}"),
        (0 <= r.seed < 2**32, f"seed must be in 0 … 2**32-1 (numpy's range), got {r.seed}"),
        *[
            (value is None or value >= 1, f"{name} must be >= 1 or none, got {value}")
            for name, value in [("early_stopping_patience", r.early_stopping_patience),
                                ("plateau_patience", r.plateau_patience)]
        ],
        *[
            (WATCH.fullmatch(getattr(r, name)) is not None,
             f"{name} must be a metric name, optionally with :min or :max, got '{getattr(r, name)}'")
            for name in ("early_stopping_metric", "checkpoint_metric", "plateau_metric")
        ],
        (r.max_grad_norm is None or r.max_grad_norm > 0,
         f"max_grad_norm must be > 0 or none, got {r.max_grad_norm}"),
        (r.track in TRACKERS, f"track must be one of {', '.join(TRACKERS)}, got '{r.track}'"),
        (not r.track_model or r.track != "none", "track_model logs the model to a tracker: set track"),
        (r.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got '{r.schedule}'"),
        (r.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {r.warmup_epochs}"),
        (r.warmup_epochs == 0 or r.schedule == "cosine",
         f"warmup_epochs is the cosine schedule's warm-up; schedule is {r.schedule} "
         "(--set warmup_epochs=0 with it)"),
        (r.warmup_epochs < r.epochs or r.warmup_epochs == 0,
         f"warmup_epochs {r.warmup_epochs} leaves no epoch of the {r.epochs} for the cosine schedule "
         "(--set warmup_epochs=0, or a value below epochs)"),
        (0 <= r.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {r.label_smoothing}"),
        (0 <= r.augment_flip <= 1, f"augment_flip must be in [0, 1], got {r.augment_flip}"),
        (0 <= r.augment_crop < 1, f"augment_crop must be in [0, 1) (0: off), got {r.augment_crop}"),
        (r.augment_shift >= 0, f"augment_shift must be >= 0 pixels, got {r.augment_shift}"),
        (0 <= r.augment_erase < 1, f"augment_erase must be in [0, 1), got {r.augment_erase}"),
        (r.mixup_alpha >= 0, f"mixup_alpha must be >= 0 (0: off), got {r.mixup_alpha}"),
        (r.cutmix_alpha >= 0, f"cutmix_alpha must be >= 0 (0: off), got {r.cutmix_alpha}"),
        (0 <= r.mix_switch_prob <= 1, f"mix_switch_prob must be in [0, 1], got {r.mix_switch_prob}"),
        (r.ema_decay is None or 0 < r.ema_decay < 1,
         f"ema_decay must be in (0, 1) or none, got {r.ema_decay}"),
        (0 <= r.freeze_epochs < r.epochs,
         f"freeze_epochs must be >= 0 and below epochs ({r.epochs}: some epoch trains the whole model), "
         f"got {r.freeze_epochs}"),
        (r.backbone_lr_scale > 0, f"backbone_lr_scale must be > 0, got {r.backbone_lr_scale}"),
        (r.weights is None or r.weights.strip() != "",  # (an empty path is the current folder)
         "weights is empty: give none, torchvision weights (DEFAULT), a weights file or a run folder"),
        (r.weights is not None or not r.fine_tunes,
         "freeze_epochs and backbone_lr_scale fine-tune from starting weights; set weights"),
        (r.class_weights in CLASS_WEIGHTS,
         f"class_weights must be one of {', '.join(CLASS_WEIGHTS)}, got '{r.class_weights}'"),
        *[(getattr(r, name) in (0, "none") or r.loss is cross_entropy,
           f"{name} changes the default cross-entropy; this recipe has its own loss")
          for name in ("label_smoothing", "class_weights")],
        *[(getattr(r, name) == 0 or r.loss is cross_entropy,
           f"{name} mixes the targets into class probabilities, which the default cross-entropy takes; "
           "this recipe has its own loss")
          for name in ("mixup_alpha", "cutmix_alpha")],
    ]  # fmt: skip
    return (message for ok, message in checks if not ok)


WATCH = re.compile(r"[A-Za-z_]\w*(:min|:max)?")  # a watched metric: "loss", "f1:max"
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one path component, never "." or ".."
# Keys of earlier releases, read under their new names (--set, config.json) by a recipe that has no
# option of the old name: catdog_vgg's own flip (options["flip_p"]) became the augmentation's.
RENAMED = {"flip_p": "augment_flip"}

# In config.json by name.
CALLABLES = ("model", "data", "loss", "metrics", "from_data", "attach", "image_input")


def apply_preset(recipe: Recipe, name: str | None) -> Recipe:
    """``recipe`` with the values of its preset ``name`` (checked like ``--set``); None: as it is."""
    if name is None:
        return recipe
    if name not in recipe.presets:
        known = f"its presets: {', '.join(recipe.presets)}" if recipe.presets else "it has none"
        raise FmtkError(f"recipe {recipe.name} has no preset '{name}'; {known}")
    try:
        applied = apply_overrides(recipe, recipe.presets[name].values)
        values = {key: applied.changed[key] for key in recipe.presets[name].values if key in applied.changed}
        return applied.came_from(preset=name, preset_values=values)
    except FmtkError as error:  # a mistake in the recipe's own preset: named
        raise FmtkError(f"preset {name}: {error}") from None


def _presets_own(recipe: Recipe, key: str) -> bool:
    """Whether ``recipe``'s value of ``key`` is its preset's (set by the preset, not since; or
    fitted from it, ``derived``), as a recipe's own default is the recipe's."""
    preset = recipe.presets.get(recipe.provenance.preset) if recipe.provenance.preset else None
    if preset is None or key not in preset.values:
        return False
    value = parse_value(key, preset.values[key], overridable_fields()[key])
    if key in recipe.provenance.derived:
        return recipe.provenance.derived[key][0] == value
    return getattr(recipe, key) == value


def overridable_fields() -> dict[str, Any]:
    """The Recipe fields `--set` may change, with their types."""
    hints = typing.get_type_hints(Recipe)
    fixed = {"name", "description", "options", "provenance", "presets", "check", *CALLABLES}
    return {f.name: hints[f.name] for f in dataclasses.fields(Recipe) if f.name not in fixed}


# What other toolkits call a field, by fmtk's name for it
OTHER_NAMES = {"learning_rate": "lr", "num_epochs": "epochs", "n_epochs": "epochs", "max_epochs": "epochs",
               "batchsize": "batch_size", "bs": "batch_size", "random_seed": "seed"}  # fmt: skip


def nearest_key(key: str, known: Sequence[str], cutoff: float = 0.75) -> str | None:
    """The recipe key ``key`` was likely meant as (another toolkit's name, or a near spelling), or None."""
    if OTHER_NAMES.get(key) in known:
        return OTHER_NAMES[key]
    close = difflib.get_close_matches(key, known, n=1, cutoff=cutoff)
    return close[0] if close else None


def apply_overrides(recipe: Recipe, overrides: Mapping[str, Any]) -> Recipe:
    """A copy of ``recipe`` with ``overrides`` applied, each checked by the field's type: strings
    (from ``--set``) are parsed, other values (``fmtk.fit`` keywords) must have the type."""
    fields = overridable_fields()
    changes: dict[str, Any] = {}
    options = dict(recipe.options)
    changed = dict(recipe.changed)
    untyped = recipe.untyped_options()
    for key, value in overrides.items():
        if key not in fields and key not in options:
            key = RENAMED.get(key, key)
        name, dot, argument = key.partition(".")
        if dot and typing.get_origin(fields.get(name)) is dict and argument.isidentifier():
            # One keyword argument of a dict field: optimizer_args.momentum=0.9 (e.g. for fmtk tune).
            given = argument_value(value) if isinstance(value, str) else value
            key, value = name, {**changes.get(name, getattr(recipe, name)), argument: given}
        if key in fields:
            changes[key] = parsed = parse_value(key, value, fields[key])
            default = getattr(recipe, key)
        elif key in options:
            default = options[key]
            options[key] = parsed = parse_option(key, value, None if key in untyped else default)
        else:
            known = sorted([*fields, *options])
            close = nearest_key(key, known)
            hint = f"did you mean {close}? " if close else ""
            valid = ", ".join(known)
            raise FmtkError(f"unknown recipe key '{key}' for {recipe.name}; {hint}valid keys: {valid}")
        if parsed != default or key in changed:
            changed[key] = parsed
    derived = dict(recipe.provenance.derived)
    presets = _presets_own(recipe, "warmup_epochs")
    if "warmup_epochs" in changes:  # the user's own
        derived.pop("warmup_epochs", None)
    elif "warmup_epochs" in derived or "warmup_epochs" not in changed or presets:
        # The recipe's own warm-up (or its preset's) would leave a shorter run no cosine epoch
        # (images: 1 of 15, and `--epochs 1`): it keeps its share of the run instead (1/15 of 1
        # epoch), fitted again from the recipe's own when the epochs change again (`--config RUN
        # --set epochs=15`).
        own, of_epochs = derived.pop("warmup_epochs", (recipe.warmup_epochs, recipe.epochs))
        epochs = changes.get("epochs", recipe.epochs)
        if presets:  # the preset's value, as it set it
            changed["warmup_epochs"] = own
        else:
            changed.pop("warmup_epochs", None)
        changes["warmup_epochs"] = own
        if 0 < own >= epochs:
            changes["warmup_epochs"] = changed["warmup_epochs"] = round(own * epochs / of_epochs, 4)
            derived["warmup_epochs"] = [own, of_epochs]
    updated = dataclasses.replace(recipe, **changes, options=options).came_from(
        changed=changed, derived=derived, untyped=frozenset(untyped)
    )
    updated.validate()
    return updated
