"""Assemble a recipe into a :class:`~fmtk.training.run.Run`, in the order of the pipeline:
model → the checkpoint to resume from → data → optimizer and engines → the handlers every run
gets → the recipe's own handlers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from ignite.utils import manual_seed
from torch import nn

from fmtk.data.augment import Augmentation
from fmtk.data.batches import DataSplits, TensorBatches
from fmtk.data.images import LoaderBatches
from fmtk.distributed import broadcast_buffers, check_sharded, is_main_process
from fmtk.errors import FmtkError
from fmtk.recipe import (
    PER_ITERATION_SCHEDULES,
    Recipe,
    apply_overrides,
    apply_preset,
    load_recipe,
    overridable_fields,
    watched,
)
from fmtk.runfolder import make_run_dir, remove_if_empty
from fmtk.training.checkpoints import EMA_MODEL, RandomState, RunInfo, load_model_weights, read_checkpoint
from fmtk.training.engines import (
    SpeedOptions,
    create_evaluator,
    create_optimizer,
    create_trainer,
    loss_on,
    resolve_device,
)
from fmtk.training.handlers import (
    attach_early_stopping,
    attach_ema,
    attach_epoch_log,
    attach_gradient_clipping,
    attach_lr_plateau,
    attach_nonfinite_guard,
    attach_progress,
    attach_tensorboard,
    attach_validation,
    write_hparams,
)
from fmtk.training.run import ResumePoint, Run
from fmtk.training.schedules import attach_lr_schedule


def build_run(
    recipe: Recipe | str | Path,
    run_dir: Path | str | None = None,
    device: torch.device | str = "auto",
    data_dir: Path | str | None = None,
    echo: Callable[[str], None] | None = print,
    resume_from: Path | None = None,
    speed: SpeedOptions | None = None,
    *,
    output_dir: Path | str = "runs",
    progress: bool | None = None,
    command: str | None = None,
    restart: bool = False,
    take_lock: bool = True,
    preset: str | None = None,
    **overrides: Any,
) -> Run:
    """Assemble the run of ``recipe`` into ``run_dir`` on ``device``; with ``resume_from`` (a last
    checkpoint of that run) every kept state continues from it when :meth:`Run.run` starts.

    Args:
        recipe: what to train: a :class:`Recipe`, a bundled recipe's name or a recipe file's path.
        run_dir: the run folder; by default a new ``<output_dir>/<recipe>/<YYYYmmdd-HHMMSS>``.
        device: where to train: a ``torch.device`` or ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        data_dir: the data root the recipe's ``data`` reads (default ``$FMTK_DATA``, else ``data``).
        echo: where the epoch lines and the test table go (rank 0 only); None: nowhere.
        resume_from: a ``last_checkpoint_<epoch>.pt`` of ``run_dir`` to go on from.
        speed: precision, channels_last, compile; defaults per device (``SpeedOptions.resolve``).
        output_dir: where a new run folder goes when ``run_dir`` is not given.
        progress: a progress bar over each epoch; default: when stderr is a terminal or in Jupyter.
        command: the command line recorded in config.json.
        restart: ``run_dir`` holds a run that has no checkpoint yet: start it again from the beginning.
        take_lock: lock ``run_dir`` while the run trains (``fmtk runs`` shows it running, a second
            process is refused); False when the caller already holds :func:`fmtk.runs.lock_run`.
        preset: one of the recipe's named presets, applied before ``overrides``.
        overrides: recipe values, checked like ``--set`` (e.g. ``epochs=3, lr=0.05``).

    When several processes train (``ignite.distributed``), every rank calls this; only rank 0
    writes files and calls ``echo``.

    Example::

        run = build_run("digits_mlp", device="cpu", epochs=2, echo=None)
        run.run()["test"]["best"]["accuracy"]
    """
    recipe = apply_preset(recipe if isinstance(recipe, Recipe) else load_recipe(str(recipe)), preset)
    if overrides:
        recipe = apply_overrides(recipe, overrides)
    device = resolve_device(device)
    data_dir = Path(data_dir if data_dir is not None else os.environ.get("FMTK_DATA", "data"))
    chosen_folder = run_dir is not None
    made_folder = not chosen_folder or not Path(run_dir).exists()
    if made_folder and is_main_process():
        run_dir = make_run_dir(Path(output_dir), recipe.name, Path(run_dir) if chosen_folder else None)
    try:
        run = _assemble(recipe, Path(run_dir), device, data_dir, echo, resume_from, speed, progress,
                        command, restart)  # fmt: skip
        run.take_lock = take_lock
        return run
    except BaseException:
        if made_folder and is_main_process():  # a run that could not be assembled leaves nothing
            remove_if_empty(Path(run_dir), remove_parent=not chosen_folder)
        raise


def _assemble(
    recipe: Recipe,
    run_dir: Path,
    device: torch.device,
    data_dir: Path,
    echo: Callable[[str], None] | None,
    resume_from: Path | None,
    speed: SpeedOptions | None,
    progress: bool | None,
    command: str | None,
    restart: bool,
) -> Run:
    manual_seed(recipe.seed)
    model, speed = _create_model(recipe, device, speed or SpeedOptions())
    resume = None
    if resume_from is not None:  # before the data: a mismatching checkpoint fails fast
        resume = ResumePoint(Path(resume_from), read_checkpoint(resume_from, device))
        load_model_weights(resume.checkpoint, resume.path, recipe.name, model)
        missing = sorted(name for name in resume.files() if not (resume.path.parent / name).exists())
        if missing:  # Ignite would fail removing it after the next better epoch
            raise FmtkError(
                f"{resume.path.parent}: {', '.join(missing)}, which {resume.path.name} names as the best "
                "checkpoint, is missing; put it back to resume (nothing was changed)"
            )
    data = recipe.call("data", data_dir, device)
    if not isinstance(data, DataSplits):
        raise FmtkError(
            f"recipe {recipe.name}: data() returned {type(data).__name__}, not a "
            "DataSplits(train, valid, test, classes)"
        )
    check_sharded({"train": data.train, "valid": data.valid, "test": data.test})
    augment_training_split(recipe, data)
    check_output_size(recipe.name, model, data, device)
    echo = echo if echo is not None and is_main_process() else _silent
    run = _create_engines(recipe, run_dir, device, data, model, speed, resume, echo)
    run.command, run.restart, run.data_dir = command, restart, data_dir
    if progress is None:
        progress = sys.stderr.isatty() or _in_notebook()
    _attach_handlers(run, progress)
    if recipe.attach is not None:
        recipe.attach(run)
    return run


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


def check_output_size(recipe_name: str, model: nn.Module, data: DataSplits, device: torch.device) -> None:
    """The model gives one score per class: checked on two samples of the valid split before
    training, not after an epoch (or never: cross-entropy fails only on a label past the size)."""
    # A DataLoader draws its base seed from torch's generator: the run's random stream stays as it was.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        x, _ = next(iter(data.valid))
        was_training = model.training
        output = model.eval()(x[:2].to(device))
        model.train(was_training)
    classes = len(data.classes)
    if output.ndim != 2 or output.shape[1] != classes:
        shape = "×".join(map(str, output.shape[1:])) or "a scalar"
        raise FmtkError(
            f"recipe {recipe_name}: the model gives {shape} outputs per sample but the data has "
            f"{classes} classes; its last layer must have {classes} outputs"
        )


def _in_notebook() -> bool:
    """True in a Jupyter kernel (where stderr is no terminal but a progress bar shows)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def _create_model(
    recipe: Recipe, device: torch.device, speed: SpeedOptions
) -> tuple[nn.Module, SpeedOptions]:
    """The recipe's model on ``device`` in its memory format, and the speed options resolved for it."""
    model = recipe.call("model")  # first: a bad variant fails before a slow data load
    if not isinstance(model, nn.Module):
        raise FmtkError(
            f"recipe {recipe.name}: model() returned {type(model).__name__}, not a torch nn.Module"
        )
    model = model.to(device)
    speed = speed.resolve(device, model)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    return model, speed


def _create_engines(
    recipe: Recipe,
    run_dir: Path,
    device: torch.device,
    data: DataSplits,
    model: nn.Module,
    speed: SpeedOptions,
    resume: ResumePoint | None,
    echo: Callable[[str], None],
) -> Run:
    """Optimizer, loss, gradient scaler, trainer and evaluator, as a Run that keeps their states."""
    optimizer = idist.auto_optim(
        create_optimizer(
            recipe.optimizer, model, recipe.lr, recipe.weight_decay, device, recipe.optimizer_args
        )
    )
    loss_fn = loss_on(recipe.loss(recipe), device)
    # Label smoothing for training only: validation and testing report the plain loss.
    train_loss = (
        nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing) if recipe.label_smoothing else loss_fn
    )
    # DistributedDataParallel for training only: checkpoints hold the plain model, and evaluation
    # (whose metrics Ignite reduces across ranks) needs no gradient synchronisation.
    train_model = idist.auto_model(model) if idist.get_world_size() > 1 else model
    scaler = torch.amp.GradScaler(device.type) if speed.precision == "16-mixed" else None
    extra_metrics = recipe.make_metrics()
    # The EMA copies the model as it is now: on its device, in its memory format, with the weights
    # of the checkpoint to resume from (its own averaged weights come back with the kept states).
    # handle_buffers="update": BatchNorm's running statistics are averaged like the weights (as
    # timm's ModelEmaV2 does); Ignite's default copies the raw model's, which belong to other weights.
    ema = None
    if recipe.ema_decay is not None:
        ema = EMAHandler(model, momentum=1 - recipe.ema_decay, handle_buffers="update")
    evaluated_model = ema.ema_model if ema is not None else model
    run = Run(
        recipe=recipe,
        run_dir=run_dir,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        trainer=create_trainer(train_model, optimizer, train_loss, device, speed, scaler),
        evaluator=create_evaluator(evaluated_model, loss_fn, device, extra_metrics=extra_metrics),
        speed=speed,
        scaler=scaler,
        resume=resume,
        echo=echo,
        metric_names=["loss", "accuracy", *extra_metrics],
        evaluated_model=evaluated_model,
    )
    states = {"model": model, "optimizer": optimizer, "trainer": run.trainer, "scaler": scaler}
    states.update(random_state=RandomState(), run_info=RunInfo(recipe.name, model))
    if ema is not None:
        attach_ema(run.trainer, ema, recipe.ema_decay)
        states[EMA_MODEL] = ema.ema_model
    for name, state in states.items():
        if state is not None:
            run.keep(name, state)
    return run


def _attach_handlers(run: Run, progress: bool) -> None:
    """The handlers every run gets, keeping the states of those that have one.

    Order matters: each EPOCH_COMPLETED handler sees what the earlier ones left (bar closed,
    validation metrics, early stopping and plateau decisions); the checkpoints come last, in
    :meth:`Run.prepare`.
    """
    recipe, trainer, evaluator, data = run.recipe, run.trainer, run.evaluator, run.data
    main = is_main_process()
    metrics = run.metric_names
    for field in ("early_stopping_metric", "checkpoint_metric", "plateau_metric"):
        name = watched(getattr(recipe, field))[0]
        if name not in metrics:
            valid = ", ".join(metrics)
            raise FmtkError(
                f"recipe {recipe.name}: {field} '{name}' is not a validation metric; valid: {valid}"
            )
    if main and progress:  # not merely disabled: a disabled bar still costs ~40 µs a step
        attach_progress(trainer)
    if recipe.max_grad_norm is not None:
        attach_gradient_clipping(trainer, run.model, recipe.max_grad_norm)
    attach_nonfinite_guard(trainer, recipe.log_every)
    if hasattr(data.train, "set_epoch"):  # each epoch's order (and shard) from (seed, epoch)
        trainer.add_event_handler(
            Events.EPOCH_STARTED, lambda trainer: data.train.set_epoch(trainer.state.epoch)
        )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: broadcast_buffers(run.model))
    attach_validation(trainer, evaluator, data.valid)
    if recipe.early_stopping_patience is not None:
        stopper = attach_early_stopping(
            trainer,
            evaluator,
            recipe.early_stopping_patience,
            *watched(recipe.early_stopping_metric),
            run.echo,
        )
        run.early_stopping = run.keep("early_stopping", stopper)
    if recipe.schedule in PER_ITERATION_SCHEDULES:
        schedule = attach_lr_schedule(trainer, run.optimizer, recipe.schedule, recipe.lr, recipe.epochs,
                                      len(data.train), recipe.warmup_epochs)  # fmt: skip
        run.lr_scheduler = run.keep("lr_scheduler", schedule)
    elif recipe.schedule == "plateau" and recipe.plateau_patience is not None:
        plateau = attach_lr_plateau(evaluator, run.optimizer, recipe.plateau_patience, recipe.plateau_factor,
                                    *watched(recipe.plateau_metric))  # fmt: skip
        run.lr_scheduler = run.keep("lr_scheduler", plateau)
    run.history = attach_epoch_log(
        trainer, evaluator, run.optimizer, run.run_dir if main else None, run.echo, metrics[2:]
    )
    if main:
        epoch, iteration = (run.resume.epoch, run.resume.iteration) if run.resume else (None, 0)
        if run.restart:
            epoch = 0
        existing = set(run.run_dir.rglob("*"))
        run.tensorboard, run.tensorboard_iterations = attach_tensorboard(
            trainer, evaluator, run.optimizer, run.run_dir, recipe.log_every, epoch, iteration, metrics
        )
        if run.resume is None:  # once per run: its values against its final figures
            write_hparams(run.tensorboard.writer, hparam_values(recipe), HPARAM_METRICS)
        run.created_paths = sorted(set(run.run_dir.rglob("*")) - existing)


# The figures the HParams tab shows beside each run's values: scalar tags the run logs.
HPARAM_METRICS = ("valid/accuracy", "valid/loss", "train/loss", "test/best_accuracy", "test/last_accuracy")


def hparam_values(recipe: Recipe) -> dict[str, Any]:
    """The recipe's values as TensorBoard hyperparameters: every field --set may change, and options."""
    values = {"recipe": recipe.name, **{name: getattr(recipe, name) for name in overridable_fields()}}
    return {**values, **recipe.options}


def _silent(line: str) -> None:
    """``echo`` of the processes other than rank 0."""
