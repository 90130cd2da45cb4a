"""Golden runs: a check's run kept as a reference (its config.json, metrics.csv and metrics.json,
which record the versions, the CPU and the threads it ran with), and a new run compared with it
epoch by epoch: what a team runs before and after upgrading torch or editing a recipe.

fmtk's runs are deterministic on one machine: the same recipe, torch, CPU kind and thread count
give the same metrics.csv bit for bit (tests/test_check.py proves it), so there the comparison is
exact; on a GPU also the same GPU, CUDA and cuDNN, and only with ``--deterministic`` (cuDNN's
autotuning and atomic sums vary from run to run otherwise). Elsewhere float sums differ in their
last bits and it allows a tolerance."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fmtk.errors import FmtkError
from fmtk.recipe import Recipe
from fmtk.runfolder import CONFIG, METRICS_CSV, METRICS_JSON, read_config, read_history, read_results
from fmtk.training.engines import SpeedOptions
from fmtk.version import machine_changes

GOLDEN_FILES = (CONFIG, METRICS_CSV, METRICS_JSON)
DEFAULT_TOLERANCE = 1e-3  # absolute, on another machine or torch
UNCOMPARED = {"epoch_seconds"}  # metrics.csv columns that are times, never the same twice
# config.json entries that say where and when, not what was trained (or, as "changed", repeat it)
CIRCUMSTANCES = {
    "command", "started", "starts", "versions", "data_dir", "device", "source", "speed", "processes",
    "changed",
}  # fmt: skip


@dataclass(frozen=True)
class Golden:
    """A golden run as read back: its folder, config.json, metrics.csv rows and metrics.json."""

    folder: Path
    config: dict[str, Any]
    history: list[dict[str, float]]
    results: dict[str, Any]


def inexact_because(golden: dict[str, Any], config: dict[str, Any]) -> str:
    """Why a run of ``config`` (its config.json) cannot meet the golden run of ``golden`` bit for
    bit ("" when it can): what decides a run's last bits besides its recipe differs (torch, the
    CPU, on a GPU its name, CUDA and cuDNN; the threads, the kind of device), or the run is a GPU
    run without deterministic kernels."""
    differ = machine_changes(golden.get("versions", {}), config.get("versions", {}))
    for name, there, here in [
        ("threads", golden.get("speed", {}).get("threads"), config.get("speed", {}).get("threads")),
        ("device", device_type(golden), device_type(config)),
    ]:
        if there != here:
            differ.append((name, there, here))
    if differ:
        return "; ".join(f"{name} {there} there, {here} here" for name, there, here in differ)
    if device_type(config) != "cpu" and not config.get("speed", {}).get("deterministic"):
        return "a GPU run without --deterministic is not repeatable bit for bit"
    return ""


def device_type(config: dict[str, Any]) -> str:
    """The kind of device a run's config.json says it ran on: ``cpu`` or ``cuda``."""
    return str(config.get("device", "cpu")).split(":")[0]


@dataclass(frozen=True)
class Divergence:
    """The first place a run differs from its golden run: the epoch (None: the test figures), the
    column, both values, how they were compared (exactly, or within a tolerance and why), and the
    recipe values that differ between the two configs."""

    epoch: int | None
    column: str
    golden: Any
    got: Any
    how: str
    changed: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = f"epoch {self.epoch}" if self.epoch is not None else "the test figures"
        line = (
            f"differs from the golden run at {where}, {self.column}: "
            f"{self.golden!r} there, {self.got!r} here ({self.how})"
        )
        if self.changed:
            line += f"; the recipe differs: {', '.join(self.changed)}"
        elif self.how.startswith("compared exactly"):
            line += "; the recipe's values are the same: its code or its data changed"
        return line


def record(run_dir: Path, folder: Path) -> None:
    """Keep the ended run ``run_dir`` as a golden run in the new ``folder``."""
    try:
        folder.mkdir(parents=True)
        for name in GOLDEN_FILES:
            shutil.copy2(run_dir / name, folder / name)
    except OSError as error:
        raise FmtkError(f"--record: cannot write {error.filename}: {error.strerror}") from None


def check_new(folder: Path) -> None:
    """A golden run is recorded into a new folder only: one already there is never replaced."""
    if folder.exists():
        raise FmtkError(f"--record: {folder} exists; remove it to record again (nothing was overwritten)")


def read_golden(folder: Path, recipe: Recipe) -> Golden:
    """The golden run in ``folder``, of ``recipe``; a folder that is not one, one of another recipe
    or one an older fmtk wrote without what a comparison needs is one line."""
    if not folder.is_dir():
        raise FmtkError(f"--against: no golden run {folder} (record one with fmtk check RECIPE --record DIR)")
    missing = [name for name in GOLDEN_FILES if not (folder / name).is_file()]
    if missing:
        raise FmtkError(f"--against: {folder} is not a golden run: it has no {', '.join(missing)}")
    config = read_config(folder)
    if config.get("name") != recipe.name:
        raise FmtkError(
            f"--against: {folder} is a golden run of recipe {config.get('name')}, not {recipe.name}"
        )
    for key, present in [
        ("versions", "versions" in config),
        ("speed.threads", "threads" in config.get("speed", {})),
    ]:
        if not present:
            raise FmtkError(
                f"--against: {folder}'s config.json has no '{key}' (an older fmtk wrote it), which the "
                "comparison needs: record the golden run again"
            )
    history, _ = read_history(folder)
    return Golden(folder, config, history, read_results(folder) or {})


def golden_speed(golden: Golden, device: torch.device) -> SpeedOptions:
    """The speed options of a run on ``device`` compared with ``golden``: its recorded ones,
    threads and deterministic kernels included (they change the float sums), so that on the same
    machine it can be exact; its precision only on the same kind of device."""
    same_type = device_type(golden.config) == device.type
    return SpeedOptions().carried_on(golden.config.get("speed", {}), same_device_type=same_type)


def compare(golden: Golden, run_dir: Path, tolerance: float | None = None) -> Divergence | None:
    """The first difference between the ended run ``run_dir`` and ``golden``, epoch by epoch, then
    in the test figures; None: the same. Exact where it can be (:func:`inexact_because`) and no
    ``tolerance`` is given, else within ``tolerance`` (default ``DEFAULT_TOLERANCE``)."""
    config = read_config(run_dir)
    inexact = inexact_because(golden.config, config)
    if tolerance is None:
        tolerance = DEFAULT_TOLERANCE if inexact else 0.0
    if tolerance == 0:
        same = "torch, CPU and threads" if device_type(config) == "cpu" else (
            "torch, CPU, threads, GPU, CUDA and cuDNN, deterministic kernels")  # fmt: skip
        how = f"compared exactly: same {same}"
    else:
        how = f"beyond the tolerance {tolerance:g}" + (
            f"; not comparable exactly: {inexact}" if inexact else ""
        )
    changed = recipe_changes(golden, config)
    history, _ = read_history(run_dir)
    for epoch, (theirs, ours) in enumerate(zip(golden.history, history, strict=False), start=1):
        for column, value in theirs.items():
            if column not in UNCOMPARED and not _close(value, ours.get(column), tolerance):
                return Divergence(epoch, column, value, ours.get(column), how, changed)
    if len(history) != len(golden.history):
        epoch = min(len(history), len(golden.history)) + 1
        return Divergence(epoch, "epochs run", len(golden.history), len(history), how, changed)
    ours = read_results(run_dir) or {}
    for which in ("best", "last"):
        for name, value in golden.results.get("test", {}).get(which, {}).items():
            got = ours.get("test", {}).get(which, {}).get(name)
            if not _close(value, got, tolerance):
                return Divergence(None, f"test {which} {name}", value, got, how, changed)
    return None


def recipe_changes(golden: Golden, config: dict[str, Any]) -> tuple[str, ...]:
    """The recipe values that differ between ``golden``'s config.json and a run's ``config``, each
    as ``name old → new``; a recipe's own ``options`` one by one, by the name ``--set`` takes."""
    old, new = _values(golden.config), _values(config)
    return tuple(
        f"{key} {old.get(key)!r} → {new.get(key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in CIRCUMSTANCES and old.get(key) != new.get(key)
    )


def _values(config: dict[str, Any]) -> dict[str, Any]:
    """``config``'s values with its recipe's options among them (one named as a field: ``options.KEY``)."""
    options = config.get("options")
    if not isinstance(options, dict):
        return config
    values = {key: value for key, value in config.items() if key != "options"}
    return {
        **values,
        **{key if key not in config else f"options.{key}": value for key, value in options.items()},
    }


def _close(golden: Any, got: Any, tolerance: float) -> bool:
    if isinstance(golden, int | float) and isinstance(got, int | float):
        if math.isnan(golden) and math.isnan(got):
            return True
        return golden == got if tolerance == 0 else abs(golden - got) <= tolerance
    return golden == got
