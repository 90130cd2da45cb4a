"""Assemble a recipe into a :class:`~fmtk.training.run.Run`, in the order of the pipeline:
model → the checkpoint to resume from → data → optimizer and engines → the handlers every run
gets → the recipe's own handlers.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Events
from ignite.utils import manual_seed
from torch import nn

from fmtk.data.batches import DataSplits
from fmtk.distributed import broadcast_buffers, check_sharded, is_main_process
from fmtk.recipe import Recipe
from fmtk.training.checkpoints import RandomState, RunInfo, load_model_weights, read_checkpoint
from fmtk.training.engines import SpeedOptions, create_evaluator, create_optimizer, create_trainer, loss_on
from fmtk.training.handlers import (
    attach_early_stopping,
    attach_epoch_log,
    attach_gradient_clipping,
    attach_lr_plateau,
    attach_nonfinite_guard,
    attach_progress,
    attach_tensorboard,
    attach_validation,
)
from fmtk.training.run import ResumePoint, Run


def build_run(
    recipe: Recipe,
    run_dir: Path,
    device: torch.device,
    data_dir: Path,
    echo: Callable[[str], None] = print,
    resume_from: Path | None = None,
    speed: SpeedOptions | None = None,
) -> Run:
    """Assemble the run of ``recipe`` into ``run_dir`` (which must exist) on ``device``; with
    ``resume_from`` (a last checkpoint of that run) every kept state continues from it when
    :meth:`Run.run` starts.

    Args:
        recipe: what to train.
        run_dir: the run folder (see :func:`fmtk.runfolder.make_run_dir`).
        device: where to train.
        data_dir: the data root the recipe's ``data`` reads.
        echo: where the epoch lines and the test table go (rank 0 only).
        resume_from: a ``last_checkpoint_<epoch>.pt`` of ``run_dir`` to go on from.
        speed: precision, channels_last, compile; defaults per device (``SpeedOptions.resolve``).

    When several processes train (``ignite.distributed``), every rank calls this; only rank 0
    writes files and calls ``echo``.

    Example::

        recipe = load_recipe("digits_mlp")
        run = build_run(recipe, make_run_dir(Path("runs"), recipe.name), torch.device("cpu"), Path("data"))
        run.run()["test"]["best"]["accuracy"]
    """
    manual_seed(recipe.seed)
    model, speed = _create_model(recipe, device, speed or SpeedOptions())
    resume = None
    if resume_from is not None:  # before the data: a mismatching checkpoint fails fast
        resume = ResumePoint(Path(resume_from), read_checkpoint(resume_from, device))
        load_model_weights(resume.checkpoint, resume.path, recipe.name, model)
    data = recipe.data(recipe, Path(data_dir), device)
    check_sharded({"train": data.train, "valid": data.valid, "test": data.test})
    echo = echo if is_main_process() else _silent
    run = _create_engines(recipe, Path(run_dir), device, data, model, speed, resume, echo)
    _attach_handlers(run)
    if recipe.attach is not None:
        recipe.attach(run)
    return run


def _create_model(
    recipe: Recipe, device: torch.device, speed: SpeedOptions
) -> tuple[nn.Module, SpeedOptions]:
    """The recipe's model on ``device`` in its memory format, and the speed options resolved for it."""
    model = recipe.model(recipe).to(device)  # first: a bad variant fails before a slow data load
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
        create_optimizer(recipe.optimizer, model, recipe.lr, recipe.weight_decay, device)
    )
    loss_fn = loss_on(recipe.loss(recipe), device)
    # DistributedDataParallel for training only: checkpoints hold the plain model, and evaluation
    # (whose metrics Ignite reduces across ranks) needs no gradient synchronisation.
    train_model = idist.auto_model(model) if idist.get_world_size() > 1 else model
    scaler = torch.amp.GradScaler(device.type) if speed.precision == "16-mixed" else None
    run = Run(
        recipe=recipe,
        run_dir=run_dir,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        trainer=create_trainer(train_model, optimizer, loss_fn, device, speed, scaler),
        evaluator=create_evaluator(model, loss_fn, device),
        speed=speed,
        scaler=scaler,
        resume=resume,
        echo=echo,
    )
    states = {"model": model, "optimizer": optimizer, "trainer": run.trainer, "scaler": scaler}
    states.update(random_state=RandomState(), run_info=RunInfo(recipe.name, model))
    for name, state in states.items():
        if state is not None:
            run.keep(name, state)
    return run


def _attach_handlers(run: Run) -> None:
    """The handlers every run gets, keeping the states of those that have one.

    Order matters: each EPOCH_COMPLETED handler sees what the earlier ones left (bar closed,
    validation metrics, early stopping and plateau decisions); the checkpoints come last, in
    :meth:`Run.prepare`.
    """
    recipe, trainer, evaluator, data = run.recipe, run.trainer, run.evaluator, run.data
    main = is_main_process()
    if main and sys.stderr.isatty():  # a disabled bar still costs ~40 µs a step
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
        run.early_stopping = run.keep(
            "early_stopping", attach_early_stopping(trainer, evaluator, recipe.early_stopping_patience)
        )
    if recipe.plateau_patience is not None:
        plateau = attach_lr_plateau(evaluator, run.optimizer, recipe.plateau_patience, recipe.plateau_factor)
        run.lr_scheduler = run.keep("lr_scheduler", plateau)
    run.history = attach_epoch_log(trainer, evaluator, run.optimizer, run.run_dir if main else None, run.echo)
    if main:
        epoch, iteration = (run.resume.epoch, run.resume.iteration) if run.resume else (0, 0)
        existing = set(run.run_dir.rglob("*"))
        run.tensorboard, run.tensorboard_iterations = attach_tensorboard(
            trainer, evaluator, run.optimizer, run.run_dir, recipe.log_every, epoch, iteration
        )
        run.created_paths = sorted(set(run.run_dir.rglob("*")) - existing)


def _silent(line: str) -> None:
    """``echo`` of the processes other than rank 0."""
