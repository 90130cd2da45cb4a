"""Assemble a recipe into a :class:`~fmtk.training.run.Run`, in the order of the pipeline:
the checkpoint to resume from → the recipe's parts (model, data, loss) → optimizer and engines →
the handlers every run gets → the recipe's own handlers. Each step returns a record; the Run is
made from the records, complete.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler

from fmtk.data.copies import conflicts_line, copies_line
from fmtk.data.folders import SKIP_HINT
from fmtk.data.images import BadImages, others_line, photo_bars
from fmtk.device import resolve_device, threads_by_default, usable_cores
from fmtk.distributed import broadcast_buffers, is_main_process
from fmtk.errors import FmtkError, first_few
from fmtk.optimizers import create_optimizer
from fmtk.recipe import Recipe
from fmtk.recipe_loading import data_root, resolve_recipe
from fmtk.runfolder import run_folder
from fmtk.training.checkpoints import (
    CLOCK,
    LOADER_RANDOM,
    STOP,
    LoaderGenerators,
    RandomState,
    RunInfo,
    TrainingClock,
)
from fmtk.training.engines import SpeedOptions, create_evaluator, create_trainer
from fmtk.training.handlers import (
    RunStop,
    attach_early_stopping,
    attach_ema,
    attach_epoch_log,
    attach_fine_tuning,
    attach_gradient_clipping,
    attach_nonfinite_guard,
    attach_progress,
    attach_validation,
    progress_by_default,
)
from fmtk.training.parts import (
    Parts,
    decided_line,
    recipe_parts,
    split_counts,
    split_sizes,
    split_totals,
    weights_in_full,
)
from fmtk.training.results import run_config
from fmtk.training.run import Engines, Logs, Run
from fmtk.training.schedules import attach_schedule
from fmtk.training.start import Start
from fmtk.training.tensorboard import HPARAM_METRICS, attach_tensorboard, hparam_values, write_hparams
from fmtk.training.tracking import open_tracker
from fmtk.weights import EMA_MODEL

RESUMED_WAY_ON = (  # in place of a new run's "fix or remove them; or train without them: …"
    "the run trained on them: restore them as they were to resume it, or leave them out in a new run "
    "from its weights (--set skip_bad_images=true)"
)


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
    preset: str | None = None,
    handlers: Sequence[Callable[[Run], None]] = (),
    tracked: bool = True,
    **overrides: Any,
) -> Run:
    """Assemble the run of ``recipe`` into ``run_dir`` on ``device``; with ``resume_from`` (a last
    checkpoint of that run) every kept state continues from it when :meth:`Run.run` starts. The run
    folder is made (or taken) and locked now and released when :meth:`Run.run` ends; a failure
    before the first checkpoint leaves nothing in it (:func:`fmtk.runfolder.run_folder`).

    Args:
        recipe: what to train: a :class:`Recipe`, a bundled recipe's name or a recipe file's path.
        run_dir: the run folder (it must not exist or be empty, unless resuming); by default a new
            ``<output_dir>/<recipe>/<YYYYmmdd-HHMMSS>``.
        device: where to train: a ``torch.device`` or ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        data_dir: the data root the recipe's ``data`` reads (default ``$FMTK_DATA``, else ``data``).
        echo: where the epoch lines and the test table go (rank 0 only); None: nowhere.
        resume_from: a ``last_checkpoint_<epoch>.pt`` of ``run_dir`` to go on from.
        speed: precision, channels_last, compile; defaults per device (``SpeedOptions.resolve``).
        output_dir: where a new run folder goes when ``run_dir`` is not given.
        progress: a progress bar over each epoch; default: when stderr is a terminal or in Jupyter.
        command: the command line recorded in config.json.
        preset: one of the recipe's named presets, applied before ``overrides``.
        handlers: functions that receive the :class:`Run` before it starts, after the recipe's
            ``attach`` (as ``--handler``).
        tracked: False: a resumed run goes on without its tracker this time (``--track none``).
        overrides: recipe values, checked like ``--set`` (e.g. ``epochs=3, lr=0.05``).

    Returns:
        The :class:`Run`, not yet started: ``run.run()`` trains and tests (``fmtk.fit`` is this).

    When several processes train (``ignite.distributed``), every rank calls this with the same
    ``run_dir``; only rank 0 writes files and calls ``echo``.

    Example::

        run = build_run("digits_mlp", device="cpu", epochs=2, echo=None)
        run.run()["test"]["best"]["accuracy"]
    """
    recipe = resolve_recipe(recipe, preset, overrides)
    device = resolve_device(device)
    folder = contextlib.ExitStack()
    if is_main_process():
        held = run_folder(run_dir, output_dir=Path(output_dir), recipe_name=recipe.name,
                          reuse=resume_from is not None)  # fmt: skip
        run_dir = folder.enter_context(held)
    try:
        start = Start.of(Path(run_dir), device, resume_from)
        run = assemble_run(recipe, start, device, data_root(data_dir), echo, speed, progress=progress,
                           command=command, folder=folder, handlers=handlers, tracked=tracked)  # fmt: skip
    except BaseException:
        folder.__exit__(*sys.exc_info())  # the folder's hold removes what was made, then re-raises
        raise
    run.echo(f"run folder: {run_dir}")  # as `fmtk run` says it, once the run is assembled
    return run


def assemble_run(
    recipe: Recipe,
    start: Start,
    device: torch.device,
    data_dir: Path,
    echo: Callable[[str], None] | None = print,
    speed: SpeedOptions | None = None,
    *,
    progress: bool | None = None,
    command: str | None = None,
    folder: contextlib.AbstractContextManager | None = None,
    handlers: Sequence[Callable[[Run], None]] = (),
    tracked: bool = True,
) -> Run:
    """The Run of ``recipe`` beginning as ``start`` says (new, again or resumed: :class:`Start`) in
    its run folder, an existing folder the caller holds (:func:`fmtk.runfolder.run_folder`);
    ``folder``, that hold, is released when the run ends. The recipe's ``attach`` and then each of
    ``handlers`` (``--handler`` functions) get the run. Not ``tracked``: this start goes on without
    the recipe's tracker (``--resume … --track none``), which a later start with it catches up."""
    echo = echo if echo is not None and is_main_process() else _silent
    if start.point is None:  # a new run: config.json records where its starting weights are in full
        recipe = weights_in_full(recipe)
    # Before the data loads: a photo folder decodes for minutes.
    _check_watched_metrics(recipe, ["loss", "accuracy", *recipe.make_metrics()])
    # Connected first: a tracking server that cannot be reached is one line before the data loads.
    try:
        tracker = open_tracker(recipe, start.run_dir, echo) if tracked and is_main_process() else None
    except FmtkError as error:
        if start.point is None:
            raise
        raise FmtkError(f"{error}; or go on without it this time: --track none (a later resume with it "
                        "sends the epochs it missed)") from None  # fmt: skip
    if not tracked and recipe.track != "none":
        echo(f"tracking: not in {recipe.track} this time (--track none); a later --resume with it sends "
             "the epochs it missed")  # fmt: skip
    if progress is None:
        progress = progress_by_default()
    with photo_bars(progress and is_main_process()):  # a photo folder's decoding
        try:
            parts = recipe_parts(
                recipe, data_dir, device, start.speed(speed), start.weights_loader(recipe.name), start.head
            )
        except BadImages as error:  # --resume keeps the recipe: skip_bad_images is no way on there
            if start.point is None or error.hint != SKIP_HINT:
                raise
            raise error.saying(RESUMED_WAY_ON) from None
    start.check_data(parts, data_dir)
    data = parts.data
    lines = [start.changes(parts), decided_line(recipe, parts.recipe), threads_line(parts.speed.threads),
             cpu_half_line(parts.speed, parts.device), compile_line(parts.speed),
             fine_tuning_line(parts.recipe), skipped_line(data.skipped),
             others_line(data.others), data.cached, copies_line(data.near_copies),
             conflicts_line(data.conflicts), parts.started_from]  # fmt: skip
    for line in [*lines, split_sizes(split_counts(parts.data)) or split_totals(parts)]:
        if line:
            echo(line)
    engines = create_engines(parts)
    kept = kept_states(parts, engines)
    logs = attach_handlers(parts, engines, kept, start, echo, progress)
    config = run_config(parts, start, data_dir, command)
    if tracker is not None:
        tracker.begin(parts.recipe, config)  # the values the run trains with (from_data filled in)
        tracker.attach(engines.trainer, engines.optimizer, logs.history, recipe.log_every)
    run = Run.of(parts, engines, logs, start, config=config, kept=kept, echo=echo, tracker=tracker,
                 folder=folder or contextlib.nullcontext())  # fmt: skip
    try:
        for attach in [recipe.attach] if recipe.attach is not None else []:
            attach(run)
        for attach in handlers:
            attach(run)
    except BaseException as error:
        run.close_loggers()  # their files go with the failed start
        run.end_tracking(error)
        raise
    return run


def cpu_half_line(speed: SpeedOptions, device: torch.device) -> str | None:
    """A line for 16-mixed on the CPU, which most CPUs run slower than 32-bit (float16 kernels),
    or None."""
    if device.type != "cpu" or speed.precision != "16-mixed":
        return None
    return "precision 16-mixed on the CPU: most CPUs run float16 slower than 32-bit; bf16 is the CPU's half"


def fine_tuning_line(recipe: Recipe) -> str | None:
    """A line saying how a fine-tuning run trains its head and the rest, or None."""
    if not recipe.fine_tunes:
        return None
    epochs = f"{recipe.freeze_epochs} epoch{'s' if recipe.freeze_epochs > 1 else ''}"
    alone = f"the new head trains alone for {epochs}, then " if recipe.freeze_epochs else ""
    return (f"fine-tuning: {alone}the rest at {recipe.backbone_lr_scale:g} × the head's lr (the epoch line's "
            "lr is the head's)")  # fmt: skip


def compile_line(speed: SpeedOptions) -> str | None:
    """A line saying the first steps compile the model (torch.compile: the epoch is silent that
    long), or None."""
    if not speed.compile:
        return None
    return "torch.compile: the first steps compile the model (each start's), which takes a while"


def threads_line(threads: int) -> str | None:
    """A line naming the run's CPU threads when they are not the default (a run's figures depend on
    them), or None."""
    default, cores = threads_by_default(), usable_cores()
    if threads == default:
        return None
    line = f"CPU threads: {threads} (the default here: {default})"
    if threads > cores:
        line += (
            f"; more than the {cores} cores this process may use: its threads wait for each other, and "
            "each step takes longer"
        )
    return line


def skipped_line(skipped: tuple[str, ...], recorded: bool = True) -> str | None:
    """A line naming the data files the run trains without (``skip_bad_images``), or None;
    ``recorded``: a run's, which config.json lists them in."""
    if not skipped:
        return None
    named, left = first_few(skipped)
    shown = (
        ", ".join(named) + (f" and {left} more" if left else "") + ("; in config.json" if recorded else "")
    )
    files = "file" if len(skipped) == 1 else "files"
    return f"skip_bad_images: training without {len(skipped)} undecodable {files} ({shown})"


def create_engines(parts: Parts) -> Engines:
    """Optimizer, gradient scaler, EMA, trainer and evaluator of the parts."""
    recipe, model, device = parts.recipe, parts.model, parts.device
    head = parts.head if recipe.fine_tunes else None
    optimizer = idist.auto_optim(
        create_optimizer(
            recipe.optimizer, model, recipe.lr, recipe.weight_decay, device, recipe.optimizer_args, head
        )
    )
    # DistributedDataParallel for training only: checkpoints hold the plain model, and evaluation
    # (whose metrics Ignite reduces across ranks) needs no gradient synchronisation.
    train_model = idist.auto_model(model) if idist.get_world_size() > 1 else model
    scaler = torch.amp.GradScaler(device.type) if parts.speed.precision == "16-mixed" else None
    trainer = create_run_trainer(parts, train_model, optimizer, scaler)
    if recipe.fine_tunes:
        attach_fine_tuning(trainer, optimizer, model, head, recipe.freeze_epochs, recipe.backbone_lr_scale)
    # The EMA copies the model as it is now: on its device, in its memory format, with the weights
    # of the checkpoint to resume from (its own averaged weights come back with the kept states).
    # handle_buffers="update": BatchNorm's running statistics are averaged like the weights (as
    # timm's ModelEmaV2 does); Ignite's default copies the raw model's, which belong to other weights.
    evaluated_model = model
    if recipe.ema_decay is not None:
        ema = EMAHandler(model, momentum=1 - recipe.ema_decay, handle_buffers="update")
        attach_ema(trainer, ema, recipe.ema_decay, recipe.accumulate_steps)
        evaluated_model = ema.ema_model
    extra_metrics = recipe.make_metrics()
    classes = len(parts.data.classes)
    evaluator = create_evaluator(
        evaluated_model, parts.loss_fn, device, classes, extra_metrics, confusion=False
    )
    return Engines(
        optimizer, trainer, evaluator, evaluated_model, scaler, ["loss", "accuracy", *extra_metrics]
    )


def create_run_trainer(
    parts: Parts,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
) -> Engine:
    """The trainer of the recipe's step, which a run trains with and ``fmtk lr-find`` sweeps with:
    its accumulation, mixing and gradient clipping. ``model`` may be a DDP wrapper."""
    recipe = parts.recipe
    trainer = create_trainer(model, optimizer, parts.train_loss, parts.device, parts.speed, scaler,
                             recipe.accumulate_steps, parts.train_mix, len(parts.data.classes))  # fmt: skip
    if recipe.max_grad_norm is not None:
        attach_gradient_clipping(trainer, parts.model, recipe.max_grad_norm)
    return trainer


def kept_states(parts: Parts, engines: Engines) -> dict[str, Any]:
    """The states every run keeps in its last checkpoint, by name."""
    states = {"model": parts.model, "optimizer": engines.optimizer, "trainer": engines.trainer}
    run_info = RunInfo(parts.recipe.name, parts.model, parts.device)
    states.update(scaler=engines.scaler, random_state=RandomState(), run_info=run_info)
    if engines.evaluated_model is not parts.model:
        states[EMA_MODEL] = engines.evaluated_model
    states[STOP], states[CLOCK] = RunStop(), TrainingClock()
    states[LOADER_RANDOM] = LoaderGenerators.of(parts.data.train)
    return {name: state for name, state in states.items() if state is not None}


def attach_handlers(
    parts: Parts,
    engines: Engines,
    kept: dict[str, Any],
    start: Start,
    echo: Callable[[str], None],
    progress: bool,
) -> Logs:
    """The handlers every run gets, keeping the states of those that have one in ``kept``.

    Order matters: each EPOCH_COMPLETED handler sees what the earlier ones left (bar closed,
    validation metrics, early stopping and plateau decisions); the checkpoints come last, in
    :meth:`Run.prepare`. The whole order is one table, :data:`fmtk.training.order.ORDER`.
    """
    recipe, data, trainer, evaluator = parts.recipe, parts.data, engines.trainer, engines.evaluator
    main = is_main_process()
    if main and progress:  # not merely disabled: a disabled bar still costs time every step
        attach_progress(trainer)
    attach_nonfinite_guard(trainer, recipe.log_every)
    if hasattr(data.train, "set_epoch"):  # each epoch's order (and shard) from (seed, epoch)

        def order_epoch(trainer: Engine) -> None:
            data.train.set_epoch(trainer.state.epoch)

        trainer.add_event_handler(Events.EPOCH_STARTED, order_epoch)
    if LOADER_RANDOM in kept:  # a DataLoader of the recipe's with its own generator
        trainer.add_event_handler(Events.EPOCH_COMPLETED, LoaderGenerators.end_epoch)

    def share_buffers(_: Engine) -> None:
        broadcast_buffers(parts.model)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, share_buffers)
    attach_validation(trainer, evaluator, data.valid)
    stopper = None
    if recipe.early_stopping_patience is not None:
        watched = recipe.watched("early_stopping_metric")
        stopper = attach_early_stopping(
            trainer, evaluator, recipe.early_stopping_patience, *watched, echo, kept[STOP]
        )
        kept["early_stopping"] = stopper
    schedule = attach_schedule(recipe, trainer, evaluator, engines.optimizer, len(data.train))
    if schedule is not None:
        kept["lr_scheduler"] = schedule
    metrics = engines.metric_names
    run_dir = start.run_dir
    history = attach_epoch_log(trainer, evaluator, engines.optimizer, echo if main else _silent, metrics[2:])
    tensorboard = iterations = None
    if main:
        tensorboard, iterations = attach_tensorboard(
            trainer, evaluator, engines.optimizer, run_dir, recipe.log_every, start.purge_steps, metrics
        )
        if start.point is None:  # once per run: its values against its final figures
            write_hparams(tensorboard.writer, hparam_values(recipe), HPARAM_METRICS)
    return Logs(history, tensorboard, iterations, stopper, schedule)


def _check_watched_metrics(recipe: Recipe, metrics: list[str]) -> None:
    for field in ("early_stopping_metric", "checkpoint_metric", "plateau_metric"):
        name = recipe.watched(field)[0]
        if name not in metrics:
            raise FmtkError(
                f"recipe {recipe.name}: {field} '{name}' is not a validation metric; "
                f"valid: {', '.join(metrics)}"
            )


def _silent(line: str) -> None:
    """``echo`` of the processes other than rank 0."""
