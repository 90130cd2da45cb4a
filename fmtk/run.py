"""Assemble one run end to end (data → model → engines → handlers), train, test, write its folder."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, EarlyStopping
from ignite.handlers.tensorboard_logger import TensorboardLogger
from ignite.utils import manual_seed
from torch import nn

import fmtk
from fmtk.data import DataSplits
from fmtk.distributed import broadcast_buffers, check_sharded, is_main_process
from fmtk.engines import (
    SpeedOptions,
    create_evaluator,
    create_optimizer,
    create_trainer,
)
from fmtk.errors import FmtkError
from fmtk.handlers import (
    CheckpointablePlateau,
    RandomState,
    attach_checkpoints,
    attach_early_stopping,
    attach_epoch_log,
    attach_lr_plateau,
    attach_nonfinite_guard,
    attach_progress,
    attach_tensorboard,
    attach_validation,
)
from fmtk.recipe import Recipe
from fmtk.report import Evaluation, evaluate, write_run_pictures
from fmtk.resume import (
    load_model_weights,
    read_checkpoint,
    remove_stale_checkpoints,
    restore,
    truncate_history,
)


class RunInfo:
    """What made a checkpoint (recipe, model class, fmtk version), saved inside every checkpoint."""

    def __init__(self, recipe: Recipe, model: nn.Module) -> None:
        parameters = sum(p.numel() for p in model.parameters())
        self.info = {"recipe": recipe.name, "model": type(model).__name__, "parameters": parameters}
        self.info["fmtk"] = fmtk.__version__

    def state_dict(self) -> dict[str, Any]:
        return dict(self.info)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore: what made a checkpoint is checked by fmtk.resume.load_model_weights."""


@dataclass
class Run:
    """One assembled run: its recipe, data, model, Ignite engines and handlers.

    Attach any Ignite handler to ``trainer`` or ``evaluator`` (the valid-split evaluator) before
    calling :meth:`run`.
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
    best_checkpoint: Checkpoint
    last_checkpoint: Checkpoint
    tensorboard: TensorboardLogger | None  # per-epoch scalars, in the run folder (rank 0 only)
    tensorboard_iterations: TensorboardLogger | None  # per-iteration train loss, in iterations/
    history: list[dict[str, float]]
    early_stopping: EarlyStopping | None = None
    lr_scheduler: CheckpointablePlateau | None = None
    echo: Callable[[str], None] = print
    speed: SpeedOptions = field(default_factory=lambda: SpeedOptions("32", False))
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def training_done(self) -> bool:
        """True once the epoch limit is reached or early stopping has decided to stop."""
        stopper = self.early_stopping
        stopped = stopper is not None and stopper.counter >= stopper.patience
        return self.trainer.state.epoch >= self.recipe.epochs or stopped

    def run(self) -> dict[str, Any]:
        """Train (or go on training), then test the best and the last checkpoints; write
        metrics.json and return it."""
        started = time.perf_counter()
        try:
            if not self.training_done:
                self.trainer.run(self.data.train, max_epochs=self.recipe.epochs)
            idist.barrier()  # rank 0 has written the checkpoints every rank now reads
            self.results = self._summarise(time.perf_counter() - started)
        finally:
            for logger in (self.tensorboard, self.tensorboard_iterations):
                if logger is not None:
                    logger.close()
        if is_main_process():
            (self.run_dir / "metrics.json").write_text(json.dumps(self.results, indent=2) + "\n")
            self._print_test_table()
        return self.results

    def test(self, checkpoint_path: Path) -> Evaluation:
        """Load the model weights of ``checkpoint_path`` and evaluate them on the test split."""
        checkpoint = read_checkpoint(checkpoint_path, self.device)
        load_model_weights(checkpoint, checkpoint_path, self.recipe, self.model)
        return evaluate(self.model, self.data.test, self.data.classes, self.device)

    def _summarise(self, seconds: float) -> dict[str, Any]:
        accuracies = [row["valid_accuracy"] for row in self.history]
        # Other ranks keep no history of the epochs before a resume; their summary is not written.
        best_epoch = self.history[accuracies.index(max(accuracies))]["epoch"] if accuracies else None
        best_path = Path(self.best_checkpoint.last_checkpoint)  # the saver folder is part of it
        last_path = Path(self.last_checkpoint.last_checkpoint)
        best = self.test(best_path)  # on every rank: Ignite's metrics reduce across them
        if is_main_process():
            write_run_pictures(self, best)  # while the model holds the best weights
        last = self.test(last_path)
        return {
            "recipe": self.recipe.name,
            "device": str(self.device),
            "processes": idist.get_world_size(),
            **self.speed.config(),
            "best_epoch": best_epoch,
            "best_valid_accuracy": max(accuracies, default=None),
            "epochs_run": self.trainer.state.epoch,
            "stopped_early": self.trainer.state.epoch < self.recipe.epochs,
            "train_seconds": round(seconds, 2),
            "checkpoints": {"best": best_path.name, "last": last_path.name},
            "test": {
                which: {"loss": result.loss, "accuracy": result.accuracy}
                for which, result in [("best", best), ("last", last)]
            },
        }

    def _print_test_table(self) -> None:
        self.echo(f"{'checkpoint':<12}{'file':<44}{'test_loss':>10}{'test_acc':>10}")
        for which in ("best", "last"):
            test = self.results["test"][which]
            name = self.results["checkpoints"][which]
            self.echo(f"{which:<12}{name:<44}{test['loss']:>10.4f}{100 * test['accuracy']:>9.2f}%")


def make_run_dir(output_dir: Path, recipe_name: str, run_dir: Path | None = None) -> Path:
    """Create the run folder: ``run_dir`` exactly (it must not exist or be empty), or a new
    ``<output_dir>/<recipe>/<YYYYmmdd-HHMMSS>`` (suffixed ``-2``, ``-3`` … if that exists)."""
    try:
        if run_dir is not None:
            if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
                raise FmtkError(f"--run-dir {run_dir} is not empty; give a new folder (nothing was changed)")
            run_dir.mkdir(parents=True, exist_ok=True)
            return run_dir
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = output_dir / recipe_name / stamp
        for attempt in range(1, 1000):
            candidate = base if attempt == 1 else base.with_name(f"{stamp}-{attempt}")
            try:
                candidate.mkdir(parents=True)
                return candidate
            except FileExistsError:
                continue
        raise FmtkError(f"cannot find a free run folder name under {base.parent}")
    except OSError as error:  # not writable, a file in the way, read-only file system…
        raise FmtkError(f"cannot create the run folder {error.filename}: {error.strerror}") from None


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
    ``resume_from`` (a last checkpoint of that run) every state continues from it.

    ``speed`` (precision, channels_last, compile) defaults per device (``SpeedOptions.resolve``). When
    several processes train (``ignite.distributed``), every rank calls this; only rank 0 writes
    files and calls ``echo``.
    """
    manual_seed(recipe.seed)
    run_dir = Path(run_dir)
    rank, world_size = idist.get_rank(), idist.get_world_size()
    main = rank == 0
    if not main:
        echo = _silent
    model = recipe.model(recipe).to(device)  # first: a bad variant fails before a slow data load
    speed = (speed or SpeedOptions()).resolve(device, model)
    if speed.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
    resume_epoch = resume_iteration = 0
    if resume_from is not None:
        checkpoint = read_checkpoint(resume_from, device)
        load_model_weights(checkpoint, resume_from, recipe, model)
        resume_iteration = checkpoint["trainer"]["iteration"]
        resume_epoch = resume_iteration // checkpoint["trainer"]["epoch_length"]
    data = recipe.data(recipe, Path(data_dir), device)
    check_sharded({"train": data.train, "valid": data.valid, "test": data.test})
    optimizer = idist.auto_optim(
        create_optimizer(recipe.optimizer, model, recipe.lr, recipe.weight_decay, device)
    )
    loss_fn = nn.CrossEntropyLoss()
    # DistributedDataParallel for training only: checkpoints hold the plain model, and evaluation
    # (whose metrics Ignite reduces across ranks) needs no gradient synchronisation.
    train_model = idist.auto_model(model) if world_size > 1 else model
    scaler = torch.amp.GradScaler(device.type) if speed.precision == "16-mixed" else None

    trainer = create_trainer(train_model, optimizer, loss_fn, device, speed, scaler)
    evaluator = create_evaluator(model, loss_fn, device)
    # Order matters: each EPOCH_COMPLETED handler sees what the earlier ones left (bar closed,
    # validation metrics, early stopping and plateau decisions) before the last checkpoint.
    if main and sys.stderr.isatty():  # a disabled bar still costs ~40 µs a step
        attach_progress(trainer)
    attach_nonfinite_guard(trainer, recipe.log_every)
    if hasattr(data.train, "set_epoch"):  # each epoch's order (and shard) from (seed, epoch)
        trainer.add_event_handler(
            Events.EPOCH_STARTED, lambda engine: data.train.set_epoch(engine.state.epoch)
        )
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: broadcast_buffers(model))
    attach_validation(trainer, evaluator, data.valid)
    early_stopping = lr_scheduler = None
    if recipe.early_stopping_patience is not None:
        early_stopping = attach_early_stopping(trainer, evaluator, recipe.early_stopping_patience)
    if recipe.plateau_patience is not None:
        lr_scheduler = attach_lr_plateau(evaluator, optimizer, recipe.plateau_patience, recipe.plateau_factor)
    csv_path = run_dir / "metrics.csv" if main else None
    history = attach_epoch_log(trainer, evaluator, optimizer, csv_path, echo)
    tensorboard = tensorboard_iterations = None
    if main:
        tensorboard, tensorboard_iterations = attach_tensorboard(
            trainer, evaluator, optimizer, run_dir, recipe.log_every, resume_epoch, resume_iteration
        )

    run_info = RunInfo(recipe, model)
    last_state = {"model": model, "optimizer": optimizer, "trainer": trainer, "random_state": RandomState()}
    optional = {"lr_scheduler": lr_scheduler, "early_stopping": early_stopping, "run_info": run_info}
    optional["scaler"] = scaler
    last_state.update({name: handler for name, handler in optional.items() if handler is not None})
    best, last = attach_checkpoints(
        trainer, evaluator, run_dir, {"model": model, "run_info": run_info}, last_state
    )

    if resume_from is not None:
        if main:
            history[:] = truncate_history(run_dir / "metrics.csv", resume_epoch)
            remove_stale_checkpoints(run_dir, resume_from, checkpoint)
        restore({**last_state, "best_checkpoint": best}, checkpoint)
        last.load_state_dict({"_saved": [(resume_epoch, resume_from.name)]})  # replaced at the next save
        echo(f"resuming after epoch {resume_epoch} from {resume_from.name}")
    if world_size > 1:
        # Dropout and flips differ per process; the weights are rank 0's (DDP broadcasts them).
        manual_seed(recipe.seed + 1_000_003 * rank + resume_epoch)
    if main:
        config = {**recipe.config(), "classes": data.classes, "speed": speed.config()}
        config["processes"] = world_size
        (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    run = Run(
        recipe=recipe,
        run_dir=run_dir,
        device=device,
        data=data,
        model=model,
        optimizer=optimizer,
        loss_fn=loss_fn,
        trainer=trainer,
        evaluator=evaluator,
        best_checkpoint=best,
        last_checkpoint=last,
        tensorboard=tensorboard,
        tensorboard_iterations=tensorboard_iterations,
        history=history,
        early_stopping=early_stopping,
        lr_scheduler=lr_scheduler,
        echo=echo,
        speed=speed,
    )
    if recipe.attach is not None:
        recipe.attach(run)
    idist.barrier()  # rank 0 has tidied the run folder before any rank trains
    return run


def _silent(line: str) -> None:
    """``echo`` of the processes other than rank 0."""
