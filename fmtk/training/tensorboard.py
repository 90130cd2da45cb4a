"""TensorBoard logging of a run: per epoch in the run folder, per iteration in ``iterations/``, and
the run's values for the HParams tab."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import global_step_from_engine
from ignite.handlers.tensorboard_logger import TensorboardLogger
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fmtk.errors import FmtkError
from fmtk.recipe import Recipe, overridable_fields
from fmtk.runfolder import ITERATIONS
from fmtk.training.handlers import IterationPoints, every_iterations


def attach_tensorboard(
    trainer: Engine,
    evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    run_dir: Path,
    log_every: int,
    purge_steps: tuple[int, int] | None = None,
    metric_names: Sequence[str] = ("loss", "accuracy"),
) -> tuple[TensorboardLogger, TensorboardLogger]:
    """Log per epoch (epoch as step) train loss, the valid ``metric_names`` and the LR, with train
    and valid loss on one chart ("Custom Scalars" tab); and the train loss and the LR every
    ``log_every`` iterations in the ``iterations/`` sub-run.

    ``purge_steps`` (:attr:`fmtk.training.start.Start.purge_steps`): the first epoch and iteration
    an interrupted process of this run may have logged and this one logs again; their events are
    purged (``purge_step``), so no step appears twice.
    """
    for folder in (run_dir, run_dir / ITERATIONS):  # before either writer makes its event file
        _check_log_folder(folder, resuming=purge_steps is not None)
    purge = {"purge_step": purge_steps[0]} if purge_steps is not None else {}
    epochs = TensorboardLogger(log_dir=str(run_dir), **purge)
    epoch = global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
    epochs.attach_output_handler(
        trainer, Events.EPOCH_COMPLETED, tag="train", metric_names=["loss"], global_step_transform=epoch
    )
    epochs.attach_output_handler(
        evaluator,
        Events.COMPLETED,
        tag="valid",
        metric_names=list(metric_names),
        global_step_transform=epoch,
    )
    epochs.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer, param_name="lr")
    epochs.writer.add_custom_scalars(
        {"losses": {"train and valid loss": ["Multiline", ["train/loss", "valid/loss"]]}}
    )

    purge = {"purge_step": purge_steps[1]} if purge_steps is not None else {}
    iterations = TensorboardLogger(log_dir=str(run_dir / ITERATIONS), **purge)
    points = IterationPoints(optimizer)
    every_iterations(trainer, log_every, points.keep)

    # Written at the epoch's end: TensorBoard's add_scalar costs a good part of a small step
    # (docs/performance.md); once an epoch, off the epoch's clock.
    def write_points(_: Engine) -> None:
        for iteration, loss, lrs in points.take():
            iterations.writer.add_scalar("train/loss_iteration", loss, iteration)
            for index, lr in enumerate(lrs):
                iterations.writer.add_scalar(f"train/lr/group_{index}", lr, iteration)

    trainer.add_event_handler(Events.EPOCH_COMPLETED, write_points)
    return epochs, iterations


def _check_log_folder(folder: Path, resuming: bool) -> None:
    """One line for a folder TensorBoard could not write its event file in (TensorBoard's own
    error is a traceback, after it made the other writer's file)."""
    if folder.exists() and not folder.is_dir():
        reason, fix = "it is a file, not a folder", "move it away"
    elif not os.access(folder if folder.exists() else folder.parent, os.W_OK):
        reason, fix = "Permission denied", "make it writable"
    else:
        return
    hint = f"; {fix} to resume" if resuming else ""
    raise FmtkError(f"{folder}: cannot write TensorBoard's logs ({reason}){hint}")


def write_hparams(writer: SummaryWriter, values: Mapping[str, Any], metric_tags: Sequence[str]) -> None:
    """The run's values for TensorBoard's HParams tab, shown against the last value of each of
    ``metric_tags`` (scalar tags the run logs). Written into the run's own event file: torch's
    ``SummaryWriter.add_hparams`` would make a sub-run of its own."""
    shown = {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in values.items()
    }
    for summary in hparams(shown, dict.fromkeys(metric_tags, 0.0)):
        writer.file_writer.add_summary(summary)


# The figures the HParams tab shows beside each run's values: scalar tags the run logs.
HPARAM_METRICS = ("valid/accuracy", "valid/loss", "train/loss", "test/best_accuracy", "test/last_accuracy")


def hparam_values(recipe: Recipe) -> dict[str, Any]:
    """The recipe's values as TensorBoard hyperparameters: every field --set may change, and options;
    a dict field's arguments also one by one (``optimizer_args.momentum``), so that the HParams tab
    compares them as numbers (fmtk tune searches them so)."""
    values = {"recipe": recipe.name, **{name: getattr(recipe, name) for name in overridable_fields()}}
    for name, value in list(values.items()):
        if isinstance(value, dict):
            values.update({f"{name}.{key}": argument for key, argument in value.items()})
    return {**values, **recipe.options}
