"""The handlers every run gets, one small ``attach_*`` function each, built on Ignite's own."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import (
    Checkpoint,
    DiskSaver,
    EarlyStopping,
    ProgressBar,
    ReduceLROnPlateauScheduler,
    global_step_from_engine,
)
from ignite.handlers.tensorboard_logger import TensorboardLogger

from fmtk.errors import FmtkError

EPOCH_COLUMNS = ["epoch", "train_loss", "valid_loss", "valid_accuracy", "lr", "epoch_seconds"]


class NonFiniteLoss(FmtkError):
    """The training loss became NaN or infinite."""


def attach_nonfinite_guard(trainer: Engine, check_every: int) -> None:
    """Stop training with a one-line error naming the epoch and iteration of the first NaN/inf loss.

    Reads the batch losses the trainer keeps (``trainer.state.batch_losses``, see
    :func:`~fmtk.engines.create_trainer`) every ``check_every`` iterations and at the end of each
    epoch, before validation and checkpoints, so no checkpoint is written from non-finite weights.
    Nothing runs per step.
    """
    checked = {"epoch": 0, "count": 0}  # how many of that epoch's losses were checked

    def check(engine: Engine) -> None:
        losses = engine.state.batch_losses
        start = checked["count"] if checked["epoch"] == engine.state.epoch else 0
        checked.update(epoch=engine.state.epoch, count=len(losses))
        first_bad = -1
        if len(losses) > start:
            bad = ~torch.isfinite(torch.stack(losses[start:]))
            if bool(bad.any()):
                first_checked = engine.state.iteration - (len(losses) - start) + 1
                first_bad = first_checked + int(bad.nonzero()[0, 0])
        if idist.get_world_size() > 1:  # every process stops together, not one while others wait
            first_bad = int(idist.all_reduce(first_bad, op="MAX"))
        if first_bad >= 0:
            epoch = (first_bad - 1) // engine.state.epoch_length + 1
            raise NonFiniteLoss(
                f"training loss became NaN or infinite at epoch {epoch}, iteration {first_bad}; "
                "stopped (the last checkpoint is from before it)"
            )

    trainer.add_event_handler(Events.ITERATION_COMPLETED(every=check_every), check)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, check)


def attach_validation(trainer: Engine, evaluator: Engine, valid_data: Any) -> None:
    """Run ``evaluator`` on the valid split after every training epoch."""
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run(valid_data))


def attach_early_stopping(trainer: Engine, evaluator: Engine, patience: int) -> EarlyStopping:
    """Stop ``trainer`` when valid loss has not improved for ``patience`` validations."""
    stopper = EarlyStopping(patience, lambda engine: engine.state.metrics["loss"], trainer, mode="min")
    # Not stopper.attach(evaluator): that resets the counter on every evaluation, so it never stops.
    evaluator.add_event_handler(Events.COMPLETED, stopper)
    return stopper


class CheckpointablePlateau(ReduceLROnPlateauScheduler):
    """Ignite's ReduceLROnPlateauScheduler, with a state_dict that ``torch.load(weights_only=True)`` reads.

    Ignite patches a bound method onto the torch scheduler, which then lands in its state_dict;
    it is dropped on save and patched back on load.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scheduler"] = {k: v for k, v in state["scheduler"].items() if k != "_reduce_lr"}
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        super().load_state_dict(state_dict)
        self.scheduler._reduce_lr = self._reduce_lr


def attach_lr_plateau(
    evaluator: Engine, optimizer: torch.optim.Optimizer, patience: int, factor: float
) -> CheckpointablePlateau:
    """Multiply the LR by ``factor`` when valid loss has not improved for ``patience`` epochs."""
    scheduler = CheckpointablePlateau(optimizer, "loss", mode="min", factor=factor, patience=patience)
    # On the evaluator, not the trainer: it needs the valid loss, once per validation.
    evaluator.add_event_handler(Events.COMPLETED, scheduler)
    return scheduler


class RandomState:
    """The torch, CUDA, numpy and Python random states, checkpointable like a module."""

    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
            "python": random.getstate(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


class RunSaver(DiskSaver):
    """Ignite's atomic DiskSaver whose removals wait until :meth:`flush_removals`.

    Ignite's Checkpoint removes the previous file *before* writing the new one, so a process
    killed during the write would keep neither. fmtk flushes the removals once all of an epoch's
    checkpoints are written, so the previous best and last stay until their successors exist.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending_removals: list[str] = []

    def remove(self, filename: str) -> None:
        self.pending_removals.append(filename)

    def flush_removals(self) -> None:
        """Remove the superseded checkpoints (a file already gone is no error)."""
        for filename in self.pending_removals:
            try:
                super().remove(filename)
            except FileNotFoundError:
                pass
        self.pending_removals.clear()


def attach_checkpoints(
    trainer: Engine,
    evaluator: Engine,
    run_dir: Path,
    best_state: dict[str, Any],
    last_state: dict[str, Any],
) -> tuple[Checkpoint, Checkpoint]:
    """Keep ``best_*.pt`` (``best_state`` at the best valid accuracy) and ``last_*.pt`` (``last_state``
    plus the best checkpoint's bookkeeping, all that resuming needs), each written atomically."""
    saver = RunSaver(str(run_dir), atomic=True, require_empty=False)
    epoch = global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
    best = Checkpoint(
        best_state,
        saver,
        filename_prefix="best",
        score_function=lambda engine: engine.state.metrics["accuracy"],
        score_name="valid_accuracy",
        n_saved=1,
        global_step_transform=epoch,
    )
    evaluator.add_event_handler(Events.COMPLETED, best)
    last = Checkpoint(
        {**last_state, "best_checkpoint": best},
        saver,
        filename_prefix="last",
        n_saved=1,
        global_step_transform=epoch,
    )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, last)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: saver.flush_removals())
    return best, last


def attach_tensorboard(
    trainer: Engine,
    evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    run_dir: Path,
    log_every: int,
    resume_epoch: int = 0,
    resume_iteration: int = 0,
) -> tuple[TensorboardLogger, TensorboardLogger]:
    """Log per epoch (epoch as step) train loss, valid loss and accuracy and the LR, with train and
    valid loss on one chart ("Custom Scalars" tab); and the train loss every ``log_every``
    iterations in the ``iterations/`` sub-run.

    When resuming after ``resume_epoch`` (``resume_iteration``), events of later steps left by the
    interrupted process are purged (``purge_step``), so no step appears twice.
    """
    purge = {"purge_step": resume_epoch + 1} if resume_epoch else {}
    epochs = TensorboardLogger(log_dir=str(run_dir), **purge)
    epoch = global_step_from_engine(trainer, Events.EPOCH_COMPLETED)
    epochs.attach_output_handler(
        trainer, Events.EPOCH_COMPLETED, tag="train", metric_names=["loss"], global_step_transform=epoch
    )
    epochs.attach_output_handler(
        evaluator,
        Events.COMPLETED,
        tag="valid",
        metric_names=["loss", "accuracy"],
        global_step_transform=epoch,
    )
    epochs.attach_opt_params_handler(trainer, Events.EPOCH_STARTED, optimizer, param_name="lr")
    epochs.writer.add_custom_scalars(
        {"losses": {"train and valid loss": ["Multiline", ["train/loss", "valid/loss"]]}}
    )

    purge = {"purge_step": resume_iteration + 1} if resume_iteration else {}
    iterations = TensorboardLogger(log_dir=str(run_dir / "iterations"), **purge)
    iterations.attach_output_handler(
        trainer,
        Events.ITERATION_COMPLETED(every=log_every),
        tag="train",
        output_transform=lambda loss: {"loss_iteration": loss},
    )
    return epochs, iterations


def attach_progress(trainer: Engine) -> ProgressBar:
    """A tqdm bar over each epoch's iterations, cleared at the end of the epoch."""
    bar = ProgressBar(persist=False)
    bar.attach(trainer)
    return bar


def attach_epoch_log(
    trainer: Engine,
    evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    csv_path: Path | None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, float]]:
    """Print one summary line per epoch and append it to ``csv_path`` (None: no file); returns the
    growing list of rows."""
    rows: list[dict[str, float]] = []
    epoch_lr: dict[str, float] = {}

    @trainer.on(Events.EPOCH_STARTED)
    def remember_lr(_: Engine) -> None:
        epoch_lr["lr"] = optimizer.param_groups[0]["lr"]

    @trainer.on(Events.EPOCH_COMPLETED)
    def log_epoch(engine: Engine) -> None:
        row = {
            "epoch": engine.state.epoch,
            "train_loss": engine.state.metrics["loss"],
            "valid_loss": evaluator.state.metrics["loss"],
            "valid_accuracy": evaluator.state.metrics["accuracy"],
            "lr": epoch_lr["lr"],
            "epoch_seconds": engine.state.times[Events.EPOCH_COMPLETED.name],
        }
        rows.append(row)
        if csv_path is None:
            return
        write_header = not csv_path.exists()
        with csv_path.open("a", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=EPOCH_COLUMNS)
            if write_header:
                writer.writeheader()
            writer.writerow(row)
        echo(
            f"epoch {row['epoch']:>3}/{engine.state.max_epochs}  train_loss {row['train_loss']:.4f}  "
            f"valid_loss {row['valid_loss']:.4f}  valid_acc {100 * row['valid_accuracy']:.2f}%  "
            f"lr {row['lr']:.1e}  {row['epoch_seconds']:.1f}s"
        )

    return rows
