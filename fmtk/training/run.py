"""One assembled run: what it keeps, how it starts (checkpoints, restoring), trains, tests, reports.

:func:`fmtk.training.build.build_run` assembles it; :meth:`Run.run` attaches the checkpoints over
every state the run keeps, restores them when resuming, trains and tests. Between the two,
anything may be attached to ``run.trainer``/``run.evaluator`` and kept with :meth:`Run.keep`.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine
from ignite.handlers import Checkpoint, EarlyStopping, ParamScheduler
from ignite.handlers.tensorboard_logger import TensorboardLogger
from ignite.utils import manual_seed
from torch import nn

from fmtk.data.batches import DataSplits
from fmtk.distributed import is_main_process
from fmtk.errors import FmtkError
from fmtk.recipe import Recipe, watched
from fmtk.runfolder import (
    CONFIG,
    METRICS_JSON,
    picture_path,
    read_config,
    remove_stale_files,
    truncate_history,
    write_json,
)
from fmtk.runs import RunLock, lock_run
from fmtk.training.checkpoints import (
    attach_checkpoints,
    check_keepable,
    evaluated_weights,
    load_model_weights,
    read_checkpoint,
    restore,
)
from fmtk.training.engines import SpeedOptions
from fmtk.training.evaluation import Evaluation, evaluate, run_pictures, tested_model
from fmtk.training.handlers import CheckpointablePlateau
from fmtk.version import versions


@dataclass
class ResumePoint:
    """The last checkpoint a run goes on from: its file and its contents."""

    path: Path
    checkpoint: dict[str, Any]

    @property
    def iteration(self) -> int:
        return self.checkpoint["trainer"]["iteration"]

    @property
    def epoch(self) -> int:
        return self.iteration // self.checkpoint["trainer"]["epoch_length"]

    def files(self) -> set[str]:
        """The checkpoint files this state names: itself and its best checkpoint."""
        best = {Path(name).name for _, name in self.checkpoint["best_checkpoint"]["_saved"]}
        return {self.path.name} | best


@dataclass
class Run:
    """One assembled run: its recipe, data, model, Ignite engines and handlers.

    Attach any Ignite handler to ``trainer`` or ``evaluator`` (the valid-split evaluator, metrics
    ``loss`` and ``accuracy``), and :meth:`keep` any state it has, before calling :meth:`run`.
    Between backward and the optimizer's step the trainer fires
    :attr:`~fmtk.training.engines.StepEvents.BACKWARD_COMPLETED`.

    ``kept`` names every object the last checkpoint holds; ``best_checkpoint`` and
    ``last_checkpoint`` (Ignite ``Checkpoint`` handlers) exist once :meth:`prepare` has run.
    """

    recipe: Recipe
    run_dir: Path
    device: torch.device
    data: DataSplits
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    trainer: Engine
    evaluator: Engine
    speed: SpeedOptions
    scaler: torch.amp.GradScaler | None = None
    # The weights validation, the best checkpoint and testing use: the model, or its EMA.
    evaluated_model: nn.Module | None = None
    resume: ResumePoint | None = None
    echo: Callable[[str], None] = print
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch, as in metrics.csv
    tensorboard: TensorboardLogger | None = None  # per-epoch scalars, in the run folder (rank 0 only)
    tensorboard_iterations: TensorboardLogger | None = None  # per-iteration train loss, in iterations/
    early_stopping: EarlyStopping | None = None
    lr_scheduler: CheckpointablePlateau | ParamScheduler | None = None  # the recipe's schedule
    kept: dict[str, Any] = field(default_factory=dict)
    created_paths: list[Path] = field(default_factory=list)  # by build_run: removed if the run cannot start
    best_checkpoint: Checkpoint | None = None
    last_checkpoint: Checkpoint | None = None
    results: dict[str, Any] = field(default_factory=dict)
    # The evaluators' metrics: loss, accuracy, then the recipe's own (Recipe.metrics).
    metric_names: list[str] = field(default_factory=lambda: ["loss", "accuracy"])
    command: str | None = None  # the command line that started the run, for config.json
    restart: bool = False  # the run folder holds a start that wrote no checkpoint: begin again
    data_dir: Path | None = None  # the data root the recipe's data() read
    take_lock: bool = True  # lock the run folder in prepare(); False when the caller holds the lock
    _lock: RunLock | None = field(default=None, repr=False)  # on the run folder while training

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
        """True once the epoch limit is reached or early stopping has decided to stop."""
        stopper = self.early_stopping
        stopped = stopper is not None and stopper.counter >= stopper.patience
        return self.trainer.state.epoch >= self.recipe.epochs or stopped

    def prepare(self) -> None:
        """Attach the best and last checkpoints (the last one holds everything kept) and, when
        resuming, restore every kept state. :meth:`run` calls it; call it yourself only to drive
        ``trainer`` directly. Does nothing the second time."""
        if self.last_checkpoint is not None:
            return
        try:
            # Last of the trainer's EPOCH_COMPLETED handlers: it saves what every other one decided.
            best_state = {"model": self.evaluated_model or self.model, "run_info": self.kept["run_info"]}
            self.best_checkpoint, self.last_checkpoint = attach_checkpoints(
                self.trainer, self.evaluator, self.run_dir, best_state, self.kept,
                *watched(self.recipe.checkpoint_metric),
            )  # fmt: skip
            if self.resume is not None:  # first of all, it checks that both sides name the same states
                restore(self.kept, self.resume.checkpoint, self.resume.path)
            epoch = self.resume.epoch if self.resume is not None else 0
            if is_main_process() and self.take_lock:  # before tidying: no other process trains it
                self._lock = lock_run(self.run_dir)
            if is_main_process() and (self.resume is not None or self.restart):
                self.history[:] = truncate_history(self.run_dir, epoch)  # reads every row before writing
        except Exception:
            self._close_loggers(discard=True)  # a run that cannot start changes nothing
            if self._lock is not None:
                self._lock.close()
                self._lock = None
            raise
        if self.resume is not None:
            if is_main_process():
                remove_stale_files(self.run_dir, self.resume.files())
            self.last_checkpoint.load_state_dict({"_saved": [(epoch, self.resume.path.name)]})
            self.echo(f"resuming after epoch {epoch} from {self.resume.path.name}")
        elif self.restart:
            if is_main_process():
                remove_stale_files(self.run_dir, set())
            self.echo(f"{self.run_dir} has no checkpoint yet: starting the run again from the beginning")
        if self.evaluated_model is not None and self.evaluated_model is not self.model:
            self.echo(
                f"EMA of the weights (decay {self.recipe.ema_decay}): validation, the best checkpoint "
                "and testing use the averaged weights"
            )
        if is_main_process():
            self._write_config()
        if idist.get_world_size() > 1:
            # Dropout and flips differ per process; the weights are rank 0's (DDP broadcasts them).
            manual_seed(self.recipe.seed + 1_000_003 * idist.get_rank() + epoch)
        idist.barrier()  # rank 0 has tidied the run folder before any rank trains

    def _write_config(self) -> None:
        """config.json: the resolved recipe, class names, speed, processes, versions and the command
        line that started the run (kept when it is resumed)."""
        command = self.command
        if self.resume is not None or self.restart:
            command = read_config(self.run_dir).get("command", command)
        config = {**self.recipe.config(), "classes": self.data.classes, "speed": self.speed.config()}
        config.update(processes=idist.get_world_size(), versions=versions(), command=command)
        if self.data_dir is not None:  # evaluate and --resume read the same data by default
            config["data_dir"] = str(Path(self.data_dir).resolve())
        write_json(self.run_dir / CONFIG, config)

    def run(self) -> dict[str, Any]:
        """Train (or go on training), then test the best and the last checkpoints; write
        metrics.json and return it."""
        with self._disk_full_as_one_line():
            self.prepare()
            started = time.perf_counter()
            try:
                if not self.training_done:
                    self.trainer.run(self.data.train, max_epochs=self.recipe.epochs)
                idist.barrier()  # rank 0 has written the checkpoints every rank now reads
                self.results = self._summarise(time.perf_counter() - started)
            finally:
                self._close_loggers()
                if self._lock is not None:
                    self._lock.close()
                    self._lock = None
            if is_main_process():
                write_json(self.run_dir / METRICS_JSON, self.results)
                self._print_test_table()
        return self.results

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
                f"is kept: free some space, then fmtk run --resume {self.run_dir}"
            ) from None

    def test(self, checkpoint_path: Path) -> Evaluation:
        """Load the model weights of ``checkpoint_path`` and evaluate them on the test split."""
        checkpoint = read_checkpoint(checkpoint_path, self.device)
        load_model_weights(evaluated_weights(checkpoint), checkpoint_path, self.recipe.name, self.model)
        return evaluate(
            tested_model(self.recipe, self.model),
            self.data.test,
            self.data.classes,
            self.device,
            self.loss_fn,
            self.recipe.make_metrics(),
        )

    def _summarise(self, seconds: float) -> dict[str, Any]:
        """Test the last and then the best checkpoint (the model ends holding the best weights)."""
        accuracies = [row["valid_accuracy"] for row in self.history]
        name, mode = watched(self.recipe.checkpoint_metric)
        scores = [row[f"valid_{name}"] for row in self.history]
        # Other ranks keep no history of the epochs before a resume; their summary is not written.
        best_score = (max if mode == "max" else min)(scores, default=None)
        best_epoch = self.history[scores.index(best_score)]["epoch"] if scores else None
        best_path = Path(self.best_checkpoint.last_checkpoint)  # the saver folder is part of it
        last_path = Path(self.last_checkpoint.last_checkpoint)
        last = self.test(last_path)  # on every rank: Ignite's metrics reduce across them
        best = self.test(best_path)
        if is_main_process():
            self._write_pictures(best)  # while the model holds the best weights
            for which, result in [("best", best), ("last", last)]:
                self.tensorboard.writer.add_scalar(
                    f"test/{which}_accuracy", result.accuracy, self.trainer.state.epoch
                )
        return {
            "recipe": self.recipe.name,
            "device": str(self.device),
            "processes": idist.get_world_size(),
            **self.speed.config(),
            "best_epoch": best_epoch,
            "best_valid_accuracy": max(accuracies, default=None),
            "best_checkpoint_metric": {"name": f"valid_{name}", "mode": mode, "value": best_score},
            "epochs_run": self.trainer.state.epoch,
            "stopped_early": self.trainer.state.epoch < self.recipe.epochs,
            "train_seconds": round(seconds, 2),
            "checkpoints": {"best": best_path.name, "last": last_path.name},
            "test": {
                which: {"loss": result.loss, "accuracy": result.accuracy, **result.metrics}
                for which, result in [("best", best), ("last", last)]
            },
        }

    def _close_loggers(self, discard: bool = False) -> None:
        """Close the TensorBoard loggers; with ``discard``, also remove what build_run created."""
        for logger in (self.tensorboard, self.tensorboard_iterations):
            if logger is not None:
                logger.close()
        if discard:
            for path in sorted(self.created_paths, reverse=True):  # files before their folders
                if path.is_dir():
                    path.rmdir()
                else:
                    path.unlink()

    def _write_pictures(self, best: Evaluation) -> None:
        """The run's pictures as PNG files and as images in its TensorBoard."""
        pictures = run_pictures(self.recipe.name, self.model, best, self.data.valid, self.data.classes)
        for name, picture in pictures.items():
            picture.save(picture_path(self.run_dir, name))
            self.tensorboard.writer.add_image(
                name, np.asarray(picture), self.trainer.state.epoch, dataformats="HWC"
            )

    def _print_test_table(self) -> None:
        self.echo(f"{'checkpoint':<12}{'file':<44}{'test_loss':>10}{'test_acc':>10}")
        for which in ("best", "last"):
            test = self.results["test"][which]
            name = self.results["checkpoints"][which]
            self.echo(f"{which:<12}{name:<44}{test['loss']:>10.4f}{100 * test['accuracy']:>9.2f}%")
