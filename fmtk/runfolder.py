"""The run folder: every file name in it, and the functions that create, read and tidy it.

A run folder holds::

    config.json                      the resolved recipe, classes, speed, processes, versions, command
    metrics.csv                      one row per epoch (EPOCH_COLUMNS, a recipe's metrics, handlers' values)
    metrics.json                     the run's results, written when it ends
    train_fingerprints.npz           a photo folder's training photos' fingerprints (evaluate --folder)
    best_checkpoint_<epoch>_valid_<metric>=<v>.pt   the model at the best valid checkpoint_metric
    last_checkpoint_<epoch>.pt       every state a resume needs
    curves.png                       the learning curves: loss and valid accuracy per epoch
    confusion_best.png, top_losses.png, top_losses.csv
    events.out.tfevents.*, iterations/ (TensorBoard)
    evaluations/<data>-<checkpoint>/  what fmtk evaluate --folder wrote (evaluation.json, pictures)
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from fmtk.errors import FmtkError, Interrupted, command
from fmtk.runlock import lock_run

CONFIG = "config.json"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
TOP_LOSSES_CSV = "top_losses.csv"
CURVES = "curves"  # the learning curves' picture, curves.png
TRAIN_FINGERPRINTS = "train_fingerprints.npz"  # a photo folder's training photos (fmtk.data.copies)
EVALUATIONS = "evaluations"  # fmtk evaluate --folder's results, one folder per evaluation
ITERATIONS = "iterations"  # the per-iteration TensorBoard sub-run
BEST, LAST = "best", "last"  # checkpoint name prefixes: <prefix>_checkpoint_<epoch>[_<score>].pt
EPOCH_COLUMNS = ["epoch", "train_loss", "valid_loss", "valid_accuracy", "lr", "epoch_seconds"]

CHECKPOINT = re.compile(rf"({BEST}|{LAST})_checkpoint_.*\.pt")  # either kind
LAST_EPOCH = re.compile(rf"{LAST}_checkpoint_(\d+)\.pt")  # a last checkpoint's name; group 1: its epoch
_TORN_WRITE = re.compile(r"tmp[a-z0-9_]{8}")  # tempfile.NamedTemporaryFile names (Ignite's atomic DiskSaver)


def make_run_dir(output_dir: Path, recipe_name: str, run_dir: Path | None = None) -> Path:
    """Create the run folder: ``run_dir`` exactly (it must not exist or be empty), or a new
    ``<output_dir>/<recipe>/<YYYYmmdd-HHMMSS>`` (suffixed ``-2``, ``-3`` … if that exists)."""
    option, named = ("--run-dir", run_dir) if run_dir is not None else ("--output-dir", output_dir)
    try:
        str(named).encode("utf-8")  # TensorBoard's event files fail on another name, the run begun
    except UnicodeEncodeError:
        raise FmtkError(
            f"{option} {named}: its name is not UTF-8, and TensorBoard cannot write into it; give another"
        ) from None
    try:
        if run_dir is not None:
            run_dir = Path(run_dir)
            if run_dir.exists() and not run_dir.is_dir():
                raise FmtkError(f"--run-dir {run_dir} is a file; give a new folder (nothing was changed)")
            if run_dir.exists() and any(run_dir.iterdir()):
                raise FmtkError(f"--run-dir {run_dir} is not empty; give a new folder (nothing was changed)")
            run_dir.mkdir(parents=True, exist_ok=True)
            return run_dir
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / recipe_name / stamp
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


def remove_if_empty(run_dir: Path, remove_parent: bool) -> None:
    """Remove a run folder that holds nothing (a failed start), and its ``<output_dir>/<recipe>``
    parent too when ``remove_parent`` and that is empty then."""
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
        if remove_parent and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()


@contextlib.contextmanager
def run_folder(
    run_dir: Path | None = None,
    *,
    output_dir: Path = Path("runs"),
    recipe_name: str = "",
    reuse: bool = False,
    resumable_with: str | None = None,
) -> Iterator[Path]:
    """The run folder of one command, from its making to its lock's release: ``run_dir`` as it is
    (``reuse``: a run to resume), else ``run_dir`` made new (it must not exist or be empty), else a
    new ``<output_dir>/<recipe_name>/<YYYYmmdd-HHMMSS>``; locked (:func:`fmtk.runlock.lock_run`)
    until the block ends. A block that fails removes what this command made in the folder, the
    folder too if it made it, unless a checkpoint was written (a resume then goes on from it); one
    stopped by Ctrl-C (or :class:`Interrupted`) keeps it all once it holds ``resumable_with``, the
    file ``--resume`` starts again from (config.json of a run, study.json of a study), and removes it
    as a failure before that."""
    existed = reuse or (run_dir is not None and os.path.isdir(run_dir))  # False for a bad name too
    made_output_dir = run_dir is None and not reuse and not Path(output_dir).exists()
    if reuse:
        folder = Path(run_dir)
    else:
        folder = make_run_dir(output_dir, recipe_name, Path(run_dir) if run_dir is not None else None)
    before = set(folder.rglob("*"))
    try:
        lock = lock_run(folder)
    except BaseException:
        if not existed:
            remove_if_empty(folder, remove_parent=run_dir is None)
        raise
    try:
        with lock:
            yield folder
    except (KeyboardInterrupt, Interrupted):
        if resumable_with is None or not (folder / resumable_with).is_file():
            _discard(folder, before, existed, run_dir is None, made_output_dir)
        raise
    except BaseException:
        _discard(folder, before, existed, run_dir is None, made_output_dir)
        raise


def _discard(
    folder: Path, before: set[Path], existed: bool, in_output_dir: bool, made_output_dir: bool = False
) -> None:
    """Remove what a failed command made in ``folder`` (the folder itself if it made it), unless
    it wrote a checkpoint there."""
    made = set(folder.rglob("*")) - before if folder.is_dir() else set()
    if any(CHECKPOINT.fullmatch(path.name) for path in made):
        return
    if not existed:
        shutil.rmtree(folder, ignore_errors=True)
        if in_output_dir:  # an <output_dir>/<recipe> left empty goes too, and <output_dir> if it made it
            remove_if_empty(folder.parent, remove_parent=made_output_dir)
        return
    for path in sorted(made, reverse=True):  # files before the folders that hold them
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink(missing_ok=True)


def write_json(path: Path, values: dict[str, Any]) -> None:
    """``values`` as indented JSON, written whole or not at all (a temporary file renamed: Ctrl-C or
    a kill never leaves half of a config.json that ``--resume`` could not read)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(values, indent=2) + "\n")
    os.replace(partial, path)


def not_a_run(folder: Path, resuming: bool = False) -> str:
    """Why ``folder``, which has no config.json, is not a run folder, in words naming what it is."""
    if (folder / "study.json").is_file():  # (fmtk.tuning.study's STUDY_JSON)
        if resuming:
            return f"a study of fmtk tune, not a run: {command('tune', '--resume', folder)} goes on with it"
        listed = command("runs", folder)
        return f"a study of fmtk tune, not a run: its trial_* folders are ({listed} lists them)"
    if any(folder.glob(f"*/{CONFIG}")) or any(folder.glob(f"*/*/{CONFIG}")):
        return f"a folder of runs, not a run: name one of them ({command('runs', folder)} lists them)"
    if folder.is_dir() and not any(folder.iterdir()):
        return (
            "an empty folder, not a run: one stopped before it began (a kill while its data loaded) "
            "leaves one; start it again, as a new run (--run-dir takes an empty folder)"
        )
    return f"not a run folder (it has no {CONFIG})"


def read_config(run_dir: Path) -> dict[str, Any]:
    """The config.json of a run folder (or that file itself); a one-line error for a missing folder
    or an unreadable file."""
    path = run_dir if run_dir.is_file() else run_dir / CONFIG
    if not path.is_file() and not run_dir.is_dir():
        raise FmtkError(f"{run_dir}: {'no such file' if run_dir.suffix == '.json' else 'no such run folder'}")
    if path.name == CONFIG and not path.exists() and run_dir.is_dir():
        raise FmtkError(f"{run_dir}: {not_a_run(run_dir)}")
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        if path.name != CONFIG and isinstance(error, ValueError):  # a file given for a config.json
            raise FmtkError(f"{path}: not a config.json (not JSON: {error})") from None
        raise FmtkError(f"{path.parent}: cannot read {path.name} ({error})") from None
    if not isinstance(config, dict):
        raise FmtkError(f"{path}: not an fmtk config (a JSON object)")
    if path.name != CONFIG and "name" not in config:  # e.g. a run's metrics.json given for its config
        raise FmtkError(f"{path}: not a config.json (it names no recipe)")
    return config


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's metrics.json, or None while the run has not ended."""
    path = run_dir / METRICS_JSON
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise FmtkError(f"{path}: not readable JSON; remove it to resume the run") from None


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run folder holds any checkpoint, best or last (a run stopped before the end of
    its first epoch has none)."""
    return any(run_dir.glob(f"{BEST}_checkpoint_*.pt")) or any(run_dir.glob(f"{LAST}_checkpoint_*.pt"))


def find_last_checkpoint(run_dir: Path, purpose: str = "to resume from") -> Path:
    """The newest ``last_checkpoint_<epoch>.pt`` of a run folder."""
    found = [
        (int(m.group(1)), path)
        for path in run_dir.glob(f"{LAST}_checkpoint_*.pt")
        if (m := LAST_EPOCH.fullmatch(path.name))
    ]
    if not found:
        raise FmtkError(f"{run_dir}: no {LAST}_checkpoint_*.pt {purpose}")
    return max(found)[1]


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file was written after, from its name (None for another name)."""
    match = re.match(rf"(?:{BEST}|{LAST})_checkpoint_(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def find_checkpoint(run_dir: Path, which: str) -> Path:
    """``best``, ``last`` or a path → the checkpoint file."""
    if which == LAST:
        return find_last_checkpoint(run_dir, "(the run has not finished an epoch)")
    if which == BEST:
        found = sorted(run_dir.glob(f"{BEST}_checkpoint_*.pt"))
        if len(found) != 1:
            raise FmtkError(f"{run_dir}: expected one {BEST}_checkpoint_*.pt, found {len(found)}")
        return found[0]
    path = Path(which)
    if not path.is_file():
        raise FmtkError(f"--checkpoint {which}: no such file (use best, last or a path)")
    return path


def remove_stale_files(run_dir: Path, keep: set[str]) -> None:
    """Delete the checkpoints not named in ``keep`` (written for epochs that a resume redoes, or
    superseded ones not removed yet) and the temporary files of checkpoint writes that never ended."""
    for path in run_dir.glob("*_checkpoint_*.pt"):
        if path.name not in keep:
            path.unlink()
    for path in run_dir.iterdir():
        if _TORN_WRITE.fullmatch(path.name):
            path.unlink()


def append_epoch_row(run_dir: Path, row: dict[str, float]) -> None:
    """Add one epoch's row to metrics.csv: with the header, the row's keys, if the file is new; a key
    the header lacks (a handler's value, given first now) widens it, the earlier rows left blank
    there (the file is rewritten whole, atomically)."""
    path = run_dir / METRICS_CSV
    columns = _header(path)
    if columns is not None and all(key in columns for key in row):
        with path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=columns).writerow(row)
        return
    columns, rows = _written_rows(path) if columns is not None else ([], [])
    _write_rows(path, [*columns, *(key for key in row if key not in columns)], [*rows, row])


def read_history(run_dir: Path) -> tuple[list[dict[str, float]], list[str]]:
    """metrics.csv's rows (a whole number an int, as the epoch, another a float; a blank, a handler's
    value of another epoch, left out) and its columns; none yet: ``[]``."""
    path = run_dir / METRICS_CSV
    if not path.exists():
        return [], EPOCH_COLUMNS
    columns, written = _written_rows(path)
    rows = []
    for line, row in enumerate(written, start=2):
        try:
            rows.append({key: _number(text) for key, text in row.items() if text != ""})
        except (TypeError, ValueError):
            raise FmtkError(f"{path}: line {line} is not a row of numbers; fix or remove it") from None
    return rows, columns or EPOCH_COLUMNS


def truncate_history(run_dir: Path, epoch: int) -> list[dict[str, float]]:
    """Drop metrics.csv rows after ``epoch`` (written by an interrupted process) and return the rest."""
    path = run_dir / METRICS_CSV
    rows, _ = read_history(run_dir)
    if any(row["epoch"] > epoch for row in rows):
        columns, written = _written_rows(path)
        _write_rows(path, columns, written[: sum(row["epoch"] <= epoch for row in rows)])
    return [row for row in rows if row["epoch"] <= epoch]


def _header(path: Path) -> list[str] | None:
    """metrics.csv's columns; None when there is no file yet (or not even a header)."""
    try:
        with path.open(newline="") as file:
            return next(csv.reader(file), None)
    except FileNotFoundError:
        return None


def _written_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """metrics.csv's columns and rows as its text has them."""
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def _write_rows(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    temporary = path.with_suffix(".csv.tmp")
    with temporary.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def _number(text: str | None) -> float:
    if not isinstance(text, str):  # a row cut short (None) or too long (a list)
        raise ValueError(text)
    return int(text) if text.lstrip("-").isdigit() else float(text)


def confusion_name(checkpoint: str, split: str) -> str:
    """The name of a confusion-matrix picture: ``confusion_best``, ``confusion_last_valid``, …"""
    return f"confusion_{checkpoint}" + ("" if split == "test" else f"_{split}")


def picture_path(run_dir: Path, name: str) -> Path:
    """Where a run's picture ``name`` (``confusion_best``, ``top_losses``, …) is saved."""
    return run_dir / f"{name}.png"


def new_evaluation_dir(run_dir: Path, name: str) -> Path:
    """A new folder ``<run_dir>/evaluations/<name>`` (suffixed ``-2``, ``-3`` … if that exists): where
    an evaluation on other data than the run's own puts what it writes, never over the run's files."""
    base = run_dir / EVALUATIONS / name
    try:
        base.parent.mkdir(exist_ok=True)
        for attempt in range(1, 1000):
            candidate = base if attempt == 1 else base.with_name(f"{name}-{attempt}")
            try:
                candidate.mkdir()
                return candidate
            except FileExistsError:
                continue
    except OSError as error:
        raise FmtkError(f"cannot create {error.filename}: {error.strerror}") from None
    raise FmtkError(f"cannot find a free folder name under {base.parent}")
