"""The Run: a recipe assembled by :func:`~fmtk.training.build.build_run` into engines and handlers.

A Run is complete when it is made. :meth:`Run.run` attaches the checkpoints over every state the
run keeps, restores them when resuming, trains and tests. Between the two, anything may be attached
to ``run.trainer``/``run.evaluator`` and kept with :meth:`Run.keep`.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, EarlyStopping, ParamScheduler
from ignite.handlers.tensorboard_logger import TensorboardLogger
from ignite.utils import manual_seed
from torch import nn

from fmtk.distributed import is_main_process
from fmtk.errors import FAILED_BATCH, FmtkError, command
from fmtk.runfolder import CONFIG, METRICS_JSON, TRAIN_FINGERPRINTS, checkpoint_epoch, write_json
from fmtk.training.checkpoints import CLOCK, STOP, attach_checkpoints, check_keepable
from fmtk.training.evaluation import Evaluation
from fmtk.training.handlers import attach_epoch_record
from fmtk.training.parts import Parts
from fmtk.training.results import final_results, test_checkpoint, test_table, write_pictures
from fmtk.training.schedules import CheckpointablePlateau
from fmtk.training.start import Start
from fmtk.training.tracking import RUN_FILES, Tracker, exported_model

# The events of a batch being read or stepped on (Ignite counts the iteration at ITERATION_STARTED).
READING, STEPPING = (Events.GET_BATCH_STARTED, Events.GET_BATCH_COMPLETED), Events.ITERATION_STARTED


def failed_batch(trainer: Engine, evaluator: Engine) -> str | None:
    """Which batch an error came from when it was raised reading a batch or by the step (or the
    evaluator's forward pass) on it, e.g. ``batch 4 of the train split, epoch 3``; None when it was
    raised elsewhere (a handler after a step, the end of an epoch)."""
    for engine, split in ((evaluator, "valid"), (trainer, "train")):
        # The evaluator's metrics take each batch at ITERATION_COMPLETED (cross-entropy's label check)
        if engine.last_event_name not in (
            *READING,
            STEPPING,
            *[Events.ITERATION_COMPLETED] * (split == "valid"),
        ):
            continue
        number = engine.state.iteration + (engine.last_event_name in READING)
        length = engine.state.epoch_length
        batch = (number - 1) % length + 1 if length else number
        when = "validation after epoch" if split == "valid" else "epoch"
        return f"batch {batch} of the {split} split, {when} {trainer.state.epoch}"
    return None


@dataclass(frozen=True)
class Engines:
    """The optimizer and the engines of a run: ``evaluated_model`` is what validation, the best
    checkpoint and testing use (the model, or its EMA); ``scaler`` the 16-mixed gradient scaler."""

    optimizer: torch.optim.Optimizer
    trainer: Engine
    evaluator: Engine
    evaluated_model: nn.Module
    scaler: torch.amp.GradScaler | None
    metric_names: list[str]  # the evaluators' metrics: loss, accuracy, then the recipe's own


@dataclass(frozen=True)
class Logs:
    """What the handlers every run gets leave to it: the epoch rows (as in metrics.csv), the
    TensorBoard loggers (rank 0 only), early stopping and the LR schedule (None when off)."""

    history: list[dict[str, float]]
    tensorboard: TensorboardLogger | None
    tensorboard_iterations: TensorboardLogger | None
    early_stopping: EarlyStopping | None
    lr_scheduler: CheckpointablePlateau | ParamScheduler | None


@dataclass(kw_only=True)
class Run(Parts):
    """One assembled run: its recipe's parts (``recipe``, ``device``, ``model``, ``data``, ``loss_fn``,
    ``speed``: :class:`~fmtk.training.parts.Parts`), Ignite engines and handlers, in its run folder.

    Attach any Ignite handler to ``trainer`` or ``evaluator`` (the valid-split evaluator, metrics
    ``loss`` and ``accuracy``), and :meth:`keep` any state it has, before calling :meth:`run`.
    Between backward and the optimizer's step the trainer fires
    :attr:`~fmtk.training.engines.StepEvents.BACKWARD_COMPLETED`.

    ``kept`` names every object the last checkpoint holds; ``best_checkpoint`` and
    ``last_checkpoint`` (Ignite ``Checkpoint`` handlers) exist once :meth:`prepare` has run: they
    are attached last, after every handler a user adds.
    """

    # The engines: as :class:`Engines` says.
    optimizer: torch.optim.Optimizer
    trainer: Engine
    evaluator: Engine
    evaluated_model: nn.Module
    scaler: torch.amp.GradScaler | None
    metric_names: list[str]
    # What the handlers every run gets leave: as :class:`Logs` says.
    history: list[dict[str, float]]
    tensorboard: TensorboardLogger | None
    tensorboard_iterations: TensorboardLogger | None
    early_stopping: EarlyStopping | None
    lr_scheduler: CheckpointablePlateau | ParamScheduler | None
    start: Start  # how it begins: new, again or resumed, in its run folder
    run_dir: Path
    config: dict[str, Any]  # what config.json holds, written by prepare()
    kept: dict[str, Any]
    echo: Callable[[str], None] = print
    # The run folder's hold (its lock; a failed run's removal), released when run() ends.
    folder: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext, repr=False)
    tracker: Tracker | None = None  # track="mlflow" or "wandb": the run's tracker (rank 0)
    best_checkpoint: Checkpoint | None = None
    last_checkpoint: Checkpoint | None = None
    results: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, parts: Parts, engines: Engines, logs: Logs, start: Start, **rest: Any) -> Run:
        """The run assembled from its records (``rest``: ``config``, ``kept``, ``echo``, ``folder``)."""
        records = (parts, engines, logs)
        made = {item.name: getattr(record, item.name) for record in records for item in fields(record)}
        return cls(**made, start=start, run_dir=start.run_dir, **rest)

    def keep(self, name: str, state: Any) -> Any:
        """Save ``state`` (anything with ``state_dict``/``load_state_dict``) in the last checkpoint
        as ``name`` and restore it on ``--resume``; returns ``state``. Call it before :meth:`run`,
        e.g. in a recipe's ``attach`` or a ``--handler`` function."""
        if self.last_checkpoint is not None:
            raise FmtkError(f"keep({name!r}) after the run started: keep states before run()")
        check_keepable(name, state, self.kept)
        self.kept[name] = state
        return state

    @property
    def training_done(self) -> bool:
        """True once the epoch limit is reached or training was stopped (early stopping, :meth:`stop`)."""
        return self.trainer.state.epoch >= self.recipe.epochs or self.kept[STOP].ended

    @property
    def stopped_by(self) -> str | None:
        """The reason given to :meth:`stop`, also after a resume; None when no handler stopped the run."""
        return self.kept[STOP].by_handler

    def stop(self, reason: str) -> None:
        """End training after the current epoch (its checkpoints are still written), for ``reason``
        (e.g. ``"pruned"``), then test the checkpoints as usual. Unlike ``trainer.terminate()``
        alone, the decision is kept: metrics.json says ``stopped_by`` and ``--resume`` does not
        train on. Call it from a handler of a training epoch (e.g. the evaluator's COMPLETED)."""
        epoch = self.trainer.state.epoch
        self.kept[STOP].record(reason, epoch)
        # Said when training ends, after the epoch's own line (a handler of the validation runs
        # before the trainer's epoch line is printed).
        self.trainer.add_event_handler(
            Events.TERMINATE, lambda _: self.echo(f"stopped after epoch {epoch}: {reason}")
        )
        self.trainer.terminate()

    def prepare(self) -> None:
        """Attach the best and last checkpoints (the last one holds everything kept) and, when
        resuming, restore every kept state; tidy the run folder and write config.json. :meth:`run`
        calls it; call it yourself only to drive ``trainer`` directly. Does nothing the second time."""
        if self.last_checkpoint is not None:
            return
        # After your handlers (their values in the epoch's row), then the checkpoints, last of the
        # trainer's EPOCH_COMPLETED handlers: they save what every other one decided.
        if is_main_process():
            attach_epoch_record(self.trainer, self.run_dir, self.history, self.echo)
        if self.tracker is not None:
            self.trainer.add_event_handler(Events.EPOCH_COMPLETED, self.tracker.log_epoch)
        best_state = {"model": self.evaluated_model, "run_info": self.kept["run_info"]}
        self.best_checkpoint, self.last_checkpoint = attach_checkpoints(
            self.trainer, self.evaluator, self.run_dir, best_state, self.kept,
            *self.recipe.watched("checkpoint_metric"),
        )  # fmt: skip
        self.start.resume(self.kept, self.last_checkpoint, self.history, self.echo)
        epoch = self.start.epoch
        if self.evaluated_model is not self.model:
            self.echo(
                f"EMA of the weights (decay {self.recipe.ema_decay}): validation, the best checkpoint "
                "and testing use the averaged weights"
            )
        if is_main_process():
            write_json(self.run_dir / CONFIG, self.config)
            if self.data.trained_on is not None:  # for fmtk evaluate --folder's near copies
                self.data.trained_on.save(self.run_dir / TRAIN_FINGERPRINTS)
        if idist.get_world_size() > 1:
            # Dropout and flips differ per process; the weights are rank 0's (DDP broadcasts them).
            manual_seed(self.recipe.seed + 1_000_003 * idist.get_rank() + epoch)
        idist.barrier()  # rank 0 has tidied the run folder before any rank trains

    def run(self) -> dict[str, Any]:
        """Train (or go on training), then test the best and the last checkpoints; write
        metrics.json and return it. The run folder's lock is released at the end."""
        with self.folder, self._disk_full_as_one_line():
            clock = self.kept[CLOCK]
            clock.start()
            testing = False
            try:
                self.prepare()  # a resume restores the clock's time before it
                if not self.training_done:
                    self.trainer.run(self.data.train, max_epochs=self.recipe.epochs)
                idist.barrier()  # rank 0 has written the checkpoints every rank now reads
                testing = True
                self.results = self._test_checkpoints(clock.seconds)
            except BaseException as error:
                self.end_tracking(error)
                where = "a batch of the test split" if testing else failed_batch(self.trainer, self.evaluator)
                if where is not None and isinstance(error, Exception):
                    setattr(error, FAILED_BATCH, where)  # (errors.failed_batch_line says it)
                raise
            finally:
                self.close_loggers()
            if is_main_process():
                write_json(self.run_dir / METRICS_JSON, self.results)
                for line in test_table(self.results):
                    self.echo(line)
                if self.tracker is not None:
                    model = exported_model(self.run_dir, self.echo) if self.recipe.track_model else ()
                    self.tracker.finish(self.results, (*RUN_FILES, *model))
        return self.results

    def test(self, checkpoint_path: Path) -> Evaluation:
        """Load the model weights of ``checkpoint_path`` and evaluate them on the test split."""
        return test_checkpoint(self, checkpoint_path)

    def end_tracking(self, error: BaseException) -> None:
        """The tracker's run marked as ended by ``error``: killed by Ctrl-C, else failed."""
        if self.tracker is not None:
            self.tracker.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def close_loggers(self) -> None:
        """Close the TensorBoard loggers (their files are complete)."""
        for logger in (self.tensorboard, self.tensorboard_iterations):
            if logger is not None:
                logger.close()

    def _test_checkpoints(self, seconds: float) -> dict[str, Any]:
        """Test the last and then the best checkpoint (the model ends holding the best weights)."""
        best_path = Path(self.best_checkpoint.last_checkpoint)  # the saver folder is part of it
        last_path = Path(self.last_checkpoint.last_checkpoint)
        last = self.test(last_path)  # on every rank: Ignite's metrics reduce across them
        best = self.test(best_path)
        epoch = self.trainer.state.epoch
        if is_main_process():  # while the model holds the best weights
            best_epoch = checkpoint_epoch(best_path)
            write_pictures(self, best, self.run_dir, self.tensorboard.writer, epoch, self.history, best_epoch)
            for which, result in [("best", best), ("last", last)]:
                self.tensorboard.writer.add_scalar(f"test/{which}_accuracy", result.accuracy, epoch)
        tested = {"best": (best_path, best), "last": (last_path, last)}
        return final_results(self, self.history, tested, epoch, seconds, self.kept[STOP])

    @contextlib.contextmanager
    def _disk_full_as_one_line(self) -> Iterator[None]:
        """A full disk, wherever it hits (torch.save reports it as a RuntimeError), becomes one line;
        checkpoints are written atomically and the superseded ones removed only after, so the
        last complete one is still there to resume from."""
        try:
            yield
        except (OSError, RuntimeError) as error:
            no_space = getattr(error, "errno", None) == errno.ENOSPC
            if not no_space and shutil.disk_usage(self.run_dir).free >= 1 << 20:
                raise
            raise FmtkError(
                f"no space left on device while writing to {self.run_dir}; the last complete checkpoint "
                f"is kept: free some space, then {command('run', '--resume', self.run_dir)}"
            ) from None
