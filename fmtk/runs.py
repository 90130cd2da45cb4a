"""The runs under a folder as one table (``fmtk runs``).

Only the small files of each run folder are read (config.json, metrics.json, metrics.csv), and
nothing heavy is imported, so listing hundreds of runs takes a moment.

Examples:
    .. code-block:: python

        from pathlib import Path
        from fmtk.runs import format_runs_table, list_runs, sort_runs

        print(format_runs_table(sort_runs(list_runs(Path("runs")), "best_valid_acc")))
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from fmtk.errors import FmtkError
from fmtk.runfolder import CONFIG, ITERATIONS, METRICS_CSV, read_config, read_results
from fmtk.runlock import is_running
from fmtk.text import aligned

RUNNING, INTERRUPTED, PRUNED, STOPPED, STOPPED_EARLY, FINISHED, UNREADABLE = (
    "running", "interrupted", "pruned", "stopped", "stopped early", "finished", "unreadable",
)  # fmt: skip
STATES = (RUNNING, INTERRUPTED, PRUNED, STOPPED, STOPPED_EARLY, FINISHED, UNREADABLE)  # --sort state's order


def find_run_dirs(root: Path) -> list[Path]:
    """Every folder under ``root`` (``root`` included) that holds a config.json, in path order;
    TensorBoard's ``iterations/`` sub-runs are not searched."""
    root = Path(root)
    if not root.is_dir():
        raise FmtkError(f"{root}: no such folder")
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if name != ITERATIONS)
        if CONFIG in files:
            found.append(Path(folder))
    return found


def list_runs(root: Path, whole_paths: bool = False) -> list[dict[str, Any]]:
    """One row (plain JSON values, see :func:`read_run`) per run folder under ``root``, sorted by
    path, its ``run`` relative to ``root`` (with ``whole_paths``: ``root`` joined to it). A run whose
    files cannot be read gets the state ``unreadable`` and an ``error``."""
    root = Path(root)
    return [read_run(run_dir, root, whole_paths) for run_dir in find_run_dirs(root)]


def read_run(run_dir: Path, root: Path, whole_path: bool = False) -> dict[str, Any]:
    """The row of one run folder: ``run`` (its path relative to ``root``, its name when it is
    ``root``, or ``run_dir`` itself with ``whole_path``), ``recipe``, ``preset``,
    ``changed`` (dict, or None when config.json does not say), ``epochs_done``, ``epochs_max``,
    ``best_valid_accuracy``, ``test_accuracy_best``, ``test_accuracy_last``, ``train_seconds``,
    ``device`` (the GPU's name for a run on a GPU, else config.json's device: ``cpu``), ``state``
    (one of :data:`STATES`), ``started`` (when, ISO 8601 in UTC: :func:`_started`) and
    ``error`` (why it is unreadable, else None); a value the files do not give is None."""
    row: dict[str, Any] = {
        # (a run folder given itself: by its name, not ".", as --curves' legend names it)
        "run": (run_dir if whole_path else run_dir.relative_to(root) if run_dir != root
                else Path(run_dir.resolve().name)).as_posix(),  # fmt: skip
        "recipe": None, "preset": None, "changed": None, "epochs_done": None, "epochs_max": None,
        "best_valid_accuracy": None, "test_accuracy_best": None, "test_accuracy_last": None,
        "train_seconds": None, "device": None, "state": None, "error": None, "started": None,
    }  # fmt: skip
    running = is_running(run_dir)
    results = None
    try:
        config = _json_object(read_config(run_dir), CONFIG)
        row["recipe"] = _text(config.get("name"))
        row["preset"] = _text(config.get("preset"))
        changed = config.get("changed")
        row["changed"] = _set_on_top(config, changed) if isinstance(changed, dict) else None
        if row["changed"] is not None:  # a trial of fmtk tune: its searched values, also a recipe's own
            values = {key: _recipe_value(config, key) for key in _searched_keys(run_dir.parent)}
            row["changed"] = {**{key: value for key, value in values.items() if value is not None},
                              **row["changed"]}  # fmt: skip
        row["epochs_max"] = _integer(config.get("epochs"))
        row["started"] = _started(config.get("started"), run_dir.name)
        versions = config.get("versions") if isinstance(config.get("versions"), dict) else {}
        row["device"] = _text(versions.get("gpu")) or _text(config.get("device"))
        results = read_results(run_dir)
        if results is None:  # not ended: what the finished epochs wrote
            row["epochs_done"], row["best_valid_accuracy"] = _read_history(run_dir)
        else:
            results = _json_object(results, "metrics.json")
            test = results.get("test") if isinstance(results.get("test"), dict) else {}
            row["epochs_done"] = _integer(results.get("epochs_run"))
            row["best_valid_accuracy"] = _number(results.get("best_valid_accuracy"))
            row["test_accuracy_best"] = _accuracy(test.get("best"))
            row["test_accuracy_last"] = _accuracy(test.get("last"))
            row["train_seconds"] = _number(results.get("train_seconds"))
    except (FmtkError, OSError) as error:
        row["error"] = str(error)
    if running:  # first: a running process may be rewriting the files just read
        row["state"] = RUNNING
    elif row["error"] is not None:
        row["state"] = UNREADABLE
    elif results is None:
        row["state"] = INTERRUPTED
    else:
        # Before its epochs: by early stopping, by fmtk tune's pruning or another handler's Run.stop.
        stopped_by = results.get("stopped_by")
        row["state"] = (
            PRUNED if stopped_by == PRUNED else STOPPED if stopped_by
            else STOPPED_EARLY if results.get("stopped_early") else FINISHED
        )  # fmt: skip
    return row


def _started(recorded: Any, folder_name: str) -> str | None:
    """When a run started, in UTC (``2026-12-04T23:07:49+00:00``): config.json's ``started``, or, for
    runs made before it was recorded, the local time in the name of a folder fmtk made
    (``<YYYYmmdd-HHMMSS>[-N]``); else None."""
    named = _FOLDER_TIME.fullmatch(folder_name)
    try:
        if isinstance(recorded, str):
            when = datetime.fromisoformat(recorded)
        elif named:
            when = datetime.strptime(named.group(1), "%Y%m%d-%H%M%S")
        else:
            return None
    except ValueError:
        return None
    return when.astimezone(timezone.utc).isoformat(timespec="seconds")


_FOLDER_TIME = re.compile(r"(\d{8}-\d{6})(-\d+)?")  # make_run_dir's names


def _read_history(run_dir: Path) -> tuple[int, float | None]:
    """(epochs done, best valid accuracy) from metrics.csv."""
    rows = read_curves(run_dir)
    accuracies = [row["valid_accuracy"] for row in rows if math.isfinite(row["valid_accuracy"])]
    # (a NaN would make the best depend on the order)
    return max((int(row["epoch"]) for row in rows), default=0), max(accuracies, default=None)


def read_curves(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv's rows with an ``epoch``, a ``valid_loss`` and a ``valid_accuracy`` (floats), none
    without the file; a row cut short (the process was killed while writing it) or not numbers is
    skipped."""
    path = run_dir / METRICS_CSV
    if not path.exists():
        return []
    with path.open(newline="") as file:
        try:
            rows = list(csv.DictReader(file))
        except UnicodeDecodeError:
            raise FmtkError(f"{METRICS_CSV} is not UTF-8 text") from None
        except csv.Error as error:  # e.g. a NUL byte
            raise FmtkError(f"{METRICS_CSV} is not CSV text ({error})") from None
    curves = []
    for values in rows:
        if None in values.values():  # a short row: the write was cut off
            continue
        try:
            row = {key: float(values[key]) for key in ("epoch", "valid_loss", "valid_accuracy")}
            row["epoch"] = int(row["epoch"])
        except (KeyError, ValueError, OverflowError):  # OverflowError: an epoch of inf
            continue
        curves.append(row)
    return curves


def _json_object(values: Any, name: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise FmtkError(f"{name} does not hold a JSON object")
    return values


def _number(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _accuracy(evaluation: Any) -> float | None:
    return _number(evaluation.get("accuracy")) if isinstance(evaluation, dict) else None


def runs_as_json(rows: list[dict[str, Any]]) -> str:
    """The rows as JSON text (``fmtk runs --json``); NaN and infinities, which JSON cannot write,
    become null."""
    return json.dumps(_finite(rows), indent=2, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _set_on_top(config: dict[str, Any], changed: dict[str, Any]) -> dict[str, Any]:
    """``changed`` less what the preset column and config.json's ``derived`` tell: the values the
    preset set as it set them, and a warm-up fmtk fitted to a shorter run."""
    preset = config.get("preset_values") if isinstance(config.get("preset_values"), dict) else {}
    derived = config.get("derived") if isinstance(config.get("derived"), dict) else {}
    return {
        key: value for key, value in changed.items()
        if key not in derived and not (key in preset and preset[key] == value)
    }  # fmt: skip


def _searched_keys(folder: Path) -> list[str]:
    """The keys an fmtk tune study in ``folder`` searches (its study.json's space), else none."""
    try:
        space = json.loads((folder / "study.json").read_text()).get("space")
    except (OSError, ValueError, AttributeError):
        return []
    return [key for key in space if isinstance(key, str)] if isinstance(space, dict) else []


def _recipe_value(config: dict[str, Any], key: str) -> Any:
    """A recipe's value in its config.json: a field (``lr``), an option (``hidden``) or one argument
    of a dict field (``optimizer_args.momentum``); None when it has none."""
    name, _, argument = key.partition(".")
    for values, wanted in ((config, key), (config.get("options"), key), (config.get(name), argument)):
        if isinstance(values, dict) and wanted in values:
            return values[wanted]
    return None


def format_changed(changed: dict[str, Any] | None) -> str:
    """``{"lr": 0.05, "epochs": 3}`` → ``lr=0.05 epochs=3`` (as `--set` takes them); ``?`` when
    unknown (runs from before config.json recorded it), ``-`` when nothing was changed."""
    if changed is None:
        return "?"
    return " ".join(f"{key}={_format_value(value)}" for key, value in changed.items()) or "-"


def _format_value(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return {None: "none", True: "true", False: "false"}[value]
    if isinstance(value, float) and len(repr(value)) > 8:  # drawn by fmtk tune: 4 digits (--json has all)
        return f"{value:.4g}"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str) and value and not any(character.isspace() for character in value):
        return value
    if isinstance(value, dict) and all(str(name).isidentifier() and _is_argument(item)
                                       for name, item in value.items()):  # optimizer_args  # fmt: skip
        return ",".join(f"{name}:{_argument(item)}" for name, item in value.items())
    if isinstance(value, list) and value and all(_is_argument(item) and not isinstance(item, list)
                                                 for item in value):  # layers=64,32  # fmt: skip
        return ",".join(map(_argument, value))
    return json.dumps(value, separators=(",", ":"))


def _is_argument(value: Any) -> bool:
    """Whether `--set`'s ``name:value`` pairs can say ``value``: a bool, a number, text or a tuple of them."""
    if isinstance(value, list):
        return bool(value) and all(_is_argument(item) and not isinstance(item, list) for item in value)
    return isinstance(value, (bool, int, float)) or (isinstance(value, str) and value.isidentifier())


def _argument(value: Any) -> str:
    if isinstance(value, list):  # a tuple, as JSON keeps it
        return "/".join(map(_argument, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _seconds(row: dict[str, Any]) -> str:
    return "-" if row["train_seconds"] is None else f"{row['train_seconds']:.1f}"


def _epochs(row: dict[str, Any]) -> str:
    done, most = row["epochs_done"], row["epochs_max"]
    if done is None and most is None:
        return "-"
    return f"{'-' if done is None else done}/{'-' if most is None else most}"


class Column(NamedTuple):
    """One column of the table; its header is also its ``--sort`` key."""

    header: str
    text: Callable[[dict[str, Any]], str]  # the cell
    right_aligned: bool
    sort_value: Callable[[dict[str, Any]], Any]  # None: the run goes last
    largest_first: bool


def _percent_column(header: str, key: str) -> Column:
    return Column(header, lambda row: _percent(row[key]), True, lambda row: row[key], True)


def _changed_order(row: dict[str, Any]) -> str | None:
    return None if row["changed"] is None else format_changed(row["changed"])


COLUMNS = [
    Column("run", lambda row: row["run"], False, lambda row: row["run"].split("/"), False),  # tree order
    Column("recipe", lambda row: row["recipe"] or "-", False, lambda row: row["recipe"], False),
    Column("preset", lambda row: row["preset"] or "-", False, lambda row: row["preset"], False),
    Column("changed", lambda row: format_changed(row["changed"]), False, _changed_order, False),
    Column("epochs", _epochs, True, lambda row: row["epochs_done"], True),
    _percent_column("best_valid_acc", "best_valid_accuracy"),
    _percent_column("test_acc_best", "test_accuracy_best"),
    _percent_column("test_acc_last", "test_accuracy_last"),
    Column("train_seconds", _seconds, True, lambda row: row["train_seconds"], True),
    Column("device", lambda row: row["device"] or "-", False, lambda row: row["device"], False),
    Column("state", lambda row: row["state"], False, lambda row: STATES.index(row["state"]), False),
]
_STARTED = Column("started", str, False, lambda row: row["started"], True)  # not shown: the run tells
SORT_KEYS = [column.header for column in COLUMNS] + [_STARTED.header]
# --json's names of the sorted values, taken by --sort too: a script reads those.
JSON_SORT_KEYS = {
    "best_valid_accuracy": "best_valid_acc", "test_accuracy_best": "test_acc_best",
    "test_accuracy_last": "test_acc_last", "epochs_done": "epochs",
}  # fmt: skip


def unknown_sort_key(key: str) -> str:
    """The line refusing ``key``: the table's names, and ``--json``'s that differ."""
    return (f"unknown sort key '{key}'; valid keys: {', '.join(SORT_KEYS)} (or --json's names: "
            f"{', '.join(JSON_SORT_KEYS)})")  # fmt: skip


def sort_runs(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``rows`` sorted by one of :data:`SORT_KEYS`: accuracies, epochs and seconds largest first,
    names alphabetically, ``started`` newest first, ``state`` running first; runs without the value
    last. ``--json``'s names of the values are taken too (:data:`JSON_SORT_KEYS`)."""
    key = JSON_SORT_KEYS.get(key, key)
    column = next((column for column in [*COLUMNS, _STARTED] if column.header == key), None)
    if column is None:
        raise FmtkError(unknown_sort_key(key))
    present = [row for row in rows if column.sort_value(row) is not None]
    missing = [row for row in rows if column.sort_value(row) is None]
    return sorted(present, key=column.sort_value, reverse=column.largest_first) + missing


def format_runs_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text columns (``-`` for a missing value), then one line per unreadable
    run saying why. No rows: the header alone."""
    table = [[column.header for column in COLUMNS]]
    table += [[column.text(row) for column in COLUMNS] for row in rows]
    lines = aligned(table, right={index for index, column in enumerate(COLUMNS) if column.right_aligned})
    lines += [f"{row['run']}: {row['error']}" for row in rows if row["error"] is not None]
    return "\n".join(lines)
