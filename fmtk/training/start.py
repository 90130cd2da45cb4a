"""How a run begins: the one place that reads a run folder and decides whether the run is new,
started again (its folder has a config.json but no checkpoint yet) or resumed from its last
checkpoint, and everything that follows from it: the epochs ahead, the values and speed options it
keeps, its first command, the TensorBoard steps to purge, the history to keep and the states to
restore. Lightning keeps the same in one connector (``_CheckpointConnector``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.handlers import Checkpoint

from fmtk.distributed import is_main_process
from fmtk.errors import FmtkError, command
from fmtk.recipe import PER_ITERATION_SCHEDULES, Recipe
from fmtk.runfolder import (
    CONFIG,
    LAST_EPOCH,
    read_config,
    read_results,
    remove_stale_files,
    truncate_history,
)
from fmtk.training.checkpoints import STOP, ResumePoint, load_model_weights, restore
from fmtk.training.engines import SpeedOptions
from fmtk.training.handlers import EARLY_STOPPING
from fmtk.training.parts import Parts, data_differs
from fmtk.version import machine_changes, versions

NEW, AGAIN, RESUMED = "new", "again", "resumed"


@dataclass(frozen=True)
class Start:
    """How one run begins, read from its folder once (:meth:`of`): ``kind`` is ``new`` (an empty
    folder), ``again`` (a start that wrote config.json but no checkpoint: it begins again from
    epoch 1 with its values) or ``resumed`` (from ``point``, its last checkpoint read onto the
    CPU); ``recorded`` is the folder's config.json (empty when new)."""

    run_dir: Path
    point: ResumePoint | None = None
    recorded: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, run_dir: Path, device: torch.device, checkpoint: Path | None = None) -> Start:
        """The start of the run in ``run_dir`` (made and held by the caller), going on from the
        last ``checkpoint`` when given."""
        point = ResumePoint.read(checkpoint, device) if checkpoint is not None else None
        recorded = read_config(run_dir) if (run_dir / CONFIG).exists() else {}
        return cls(Path(run_dir), point, recorded)

    @property
    def kind(self) -> str:
        return RESUMED if self.point is not None else AGAIN if self.recorded else NEW

    @property
    def epoch(self) -> int:
        """The epochs already done (0 unless resumed)."""
        return self.point.epoch if self.point is not None else 0

    @property
    def purge_steps(self) -> tuple[int, int] | None:
        """The first (epoch, iteration) TensorBoard step whose events an earlier process of this
        run may have left and a new one writes again; None for a new run."""
        if self.kind == NEW:
            return None
        return self.epoch + 1, (self.point.iteration if self.point is not None else 0) + 1

    @property
    def head(self) -> tuple[str, ...]:
        """The tensors the run's starting weights did not give (resumed: as it recorded)."""
        return tuple(self.recorded.get("head") or ()) if self.point is not None else ()

    def speed(self, given: SpeedOptions | None) -> SpeedOptions | None:
        """The speed options: a resumed run keeps those it recorded unless given now."""
        if self.point is None:
            return given
        recorded = self.recorded.get("speed", {})
        return (given or SpeedOptions()).carried_on(recorded, self.point.same_device_type)

    def weights_loader(self, recipe_name: str) -> Callable[[torch.nn.Module], None] | None:
        """Loads the checkpoint's model weights into a new model (resumed), before the data is
        read, so that a mismatch fails fast; None otherwise."""
        point = self.point
        if point is None:
            return None
        return lambda model: load_model_weights(point.checkpoint, point.path, recipe_name, model)

    def changes(self, parts: Parts) -> str | None:
        """One line of what a resumed run does differently from its epochs before (another kind of
        device, another torch, CPU or GPU, speed options other than those recorded), or None; on
        CUDA without ``deterministic`` also that its epochs will not be bit for bit an uninterrupted
        run's."""
        if self.point is None:
            return None
        recorded = self.recorded.get("speed", {})
        changes = [] if self.point.same_device_type else [f"on {parts.device}, not {self.point.trained_on}"]
        machine = machine_changes(self.recorded.get("versions", {}), versions(parts.device))
        settings = [f"{label} {now}, not {before}" for label, before, now in machine] + [
            f"{name} {value}, not {recorded[name]}"
            for name, value in parts.speed.config().items()
            if name in recorded and recorded[name] != value
        ]
        processes = self.recorded.get("processes")
        if isinstance(processes, int) and processes != idist.get_world_size():  # --nproc-per-node given
            settings.append(f"{idist.get_world_size()} processes, not {processes}")
        if settings:
            changes.append(f"with {'; '.join(settings)}")
        if changes:
            return (
                f"resuming {', '.join(changes)}: the epochs from here on will not be exactly those of an "
                "uninterrupted run"
            )
        if parts.device.type == "cuda" and not parts.speed.deterministic:
            return (
                "resuming on CUDA without --deterministic: the epochs from here on will not be bit for bit "
                "those of an uninterrupted run (cuDNN's autotuning and some kernels' sums differ by process)"
            )
        return None

    def check_data(self, parts: Parts, data_dir: Path) -> None:
        """A resumed run goes on with the data it trained on (:func:`data_differs`); a folder moved
        elsewhere holds the same data."""
        if self.point is None:
            return
        why = data_differs(parts.data, self.run_dir, self.recorded.get("splits"))
        if why is None:
            return
        where = f" under {self.recorded['data_dir']}" if self.recorded.get("data_dir") else ""
        raise FmtkError(
            f"{data_dir}: not the data this run trained on ({why}); resume it with the data it trained "
            f"on{where} (--data-dir: where it is now), or train on this data from the run's weights in a "
            f"new run: {warm_start_command(self.run_dir)}"
        )

    def first(self, command: str | None, started_from: str | None) -> dict[str, Any]:
        """What config.json keeps of the run's first start: its command, what its starting weights
        gave and when (a run made before ``started`` was recorded: from this start on)."""
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        first = {"command": command, "started_from": started_from, "started": now}
        return {key: self.recorded.get(key, value) for key, value in first.items()}

    def starts(self, command: str | None, device: str, speed: Mapping[str, Any]) -> list[dict[str, Any]]:
        """config.json's ``starts`` once a run is resumed (its top-level ``command`` and ``started``
        are its first start's, its ``speed`` and ``device`` the last one's): each start's epoch,
        command, time, device and speed options, the first one's from the config, this one's last."""
        if self.point is None:
            return list(self.recorded.get("starts", []))
        keys = ("command", "started", "device", "speed")
        earlier = self.recorded.get("starts") or [
            {"after_epoch": 0, **{key: self.recorded.get(key) for key in keys}}
        ]
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        this = {
            "after_epoch": self.epoch,
            "command": command,
            "started": now,
            "device": device,
            "speed": dict(speed),
        }
        return [*earlier, this]

    def resume(self, kept: Mapping[str, Any], last_checkpoint: Checkpoint, history: list[dict[str, float]],
               echo: Callable[[str], None]) -> None:  # fmt: skip
        """Go on where the run's folder says: restore every kept state from the checkpoint (first
        checking both sides name the same states), keep the epochs' rows and checkpoint files of
        the epochs done and drop the rest (rank 0), and say how the run begins."""
        point = self.point
        if point is not None:
            restore(kept, point.checkpoint, point.path)
            stopper, stop = kept.get("early_stopping"), kept[STOP]
            if stopper is not None and stopper.counter >= stopper.patience and not stop.ended:
                stop.record(EARLY_STOPPING, self.epoch)  # a checkpoint of a release before RunStop held it
        if is_main_process() and self.kind != NEW:
            history[:] = truncate_history(self.run_dir, self.epoch)  # reads every row before writing
            remove_stale_files(self.run_dir, point.files() if point is not None else set())
        if point is not None:
            last_checkpoint.load_state_dict({"_saved": [(self.epoch, point.path.name)]})
            echo(f"resuming after epoch {self.epoch} from {point.path.name}")
        elif self.kind == AGAIN:
            echo(f"{self.run_dir} has no checkpoint yet: starting the run again from the beginning")


# --- What `fmtk run --resume RUN_DIR [--epochs N]` may do, before the run is assembled -------------


def check_epochs_ahead(run_dir: Path, epochs: int | None) -> None:
    """``--resume --epochs N`` may raise the limit, never put it below the epochs already run."""
    done = [
        int(m.group(1))
        for path in run_dir.glob("last_checkpoint_*.pt")
        if (m := LAST_EPOCH.fullmatch(path.name))
    ]
    if epochs is not None and done and epochs < max(done):
        raise FmtkError(
            f"--epochs {epochs}: {run_dir} has already run {max(done)} epochs; give more to go on"
        )


def check_extension(run_dir: Path, recipe: Recipe, epochs: int | None) -> None:
    """``--resume --epochs N`` of a run whose per-step schedule is laid out over its epochs is
    refused, naming what does train on (:func:`warm_start_command`)."""
    recorded = read_config(run_dir).get("epochs")
    if epochs is not None and epochs != recorded and recipe.schedule in PER_ITERATION_SCHEDULES:
        raise FmtkError(
            f"--epochs {epochs}: the run's {recipe.schedule} schedule is laid out over its {recorded} epochs "
            f"and cannot be extended; to train on from its best weights, start a new run: "
            f"{warm_start_command(run_dir)}"
        )


def finished_message(run_dir: Path, recipe: Recipe, handler_words: Sequence[str] = ()) -> str | None:
    """Why a run folder has nothing left to resume, and what trains on from it (going on needs the
    run's handlers: ``handler_words``, ``--handler m:f`` each); or None."""
    results = read_results(run_dir)
    if results is None:
        return None
    if results.get("stopped_by"):  # a handler's Run.stop
        return f"{run_dir} is finished: {results['stopped_by']} at epoch {results['epochs_run']}"
    best = f"its best epoch was {results['best_epoch']}" if "best_epoch" in results else ""
    if results.get("stopped_early"):
        return (
            f"{run_dir} is finished: early stopping ended it at epoch {results['epochs_run']} ({best}); "
            f"to train on from its best weights, start a new run: {warm_start_command(run_dir)}"
        )
    ran, epochs = results.get("epochs_run", 0), recipe.epochs
    if ran < epochs:
        return None
    if recipe.schedule in PER_ITERATION_SCHEDULES:
        return (
            f"{run_dir} is finished ({ran} of {epochs} epochs; its {recipe.schedule} schedule ended with "
            f"them): to train on from its best weights, start a new run: {warm_start_command(run_dir)}"
        )
    going_on = f"{command('run', '--resume', run_dir, '--epochs', 'N', *handler_words)} (N > {ran})"
    return f"{run_dir} is finished ({ran} of {epochs} epochs); to go on: {going_on}"


def warm_start_command(run_dir: Path) -> str:
    """The command that trains on from a run that cannot go on itself: a new run with its values,
    starting from its best checkpoint's weights (``weights=RUN_DIR``, :mod:`fmtk.weights`)."""
    return command("run", "--config", run_dir / CONFIG, "--set", f"weights={run_dir}", "--set", "epochs=N")
