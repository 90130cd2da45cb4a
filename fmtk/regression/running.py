"""Running a recipe's checks: which recipes a command names, one check trained in a folder of its
own and its figures held against what it expects (and, given a golden run, compared with it epoch
by epoch)."""

from __future__ import annotations

import difflib
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fmtk.device import resolve_device
from fmtk.errors import FmtkError, command, first_few, one_line
from fmtk.recipe import Recipe, apply_overrides, apply_preset
from fmtk.recipe_loading import (
    NoRecipe,
    bundled_recipe_names,
    bundled_recipes_dir,
    data_root,
    load_recipe,
    recipe_files,
    resolve_recipe,
)
from fmtk.regression.check import FIGURES, Check
from fmtk.regression.golden import (
    Divergence,
    Golden,
    check_new,
    compare,
    golden_speed,
    read_golden,
    recipe_changes,
    record,
)
from fmtk.runfolder import read_config, read_history, read_results
from fmtk.training.build import build_run
from fmtk.training.engines import SpeedOptions
from fmtk.values import check_paths


@dataclass(frozen=True)
class Row:
    """One expectation of a check and what the run gave."""

    figure: str
    expected: str
    got: float | None
    passed: bool


@dataclass
class CheckResult:
    """One check of one recipe: a row per expectation, the seconds it took, the run folder it
    kept (a failing run's; None when removed) and, when it could not run or differs from its
    golden run, why."""

    recipe: str
    check: str
    rows: list[Row] = field(default_factory=list)
    seconds: float = 0.0
    run_dir: Path | None = None
    error: str | None = None  # the run failed: its one line
    diverged: Divergence | None = None  # the first difference from the golden run
    compared: bool = False  # it was compared with a golden run
    # The same as its golden run (within the tolerance) although these recipe values differ
    recipe_changes: tuple[str, ...] = ()
    unrecorded: str | None = None  # --against: its golden run is missing: how to record it (not trained)
    recorded: Path | None = None  # the golden run it was kept as (--record)
    loaded: bool = True  # False: a recipe file of a folder that did not load (recipe: its file)

    @classmethod
    def unloadable(cls, file: Path, error: Exception) -> CheckResult:
        """A recipe file of a checked folder that did not load: its checks failed, the others run."""
        return cls(
            file.name, "load", error=one_line(error) or f"{type(error).__name__}: {error}", loaded=False
        )

    @property
    def passed(self) -> bool:
        return (self.error is None and self.diverged is None and self.unrecorded is None
                and all(row.passed for row in self.rows))  # fmt: skip

    def failures(self) -> list[str]:
        """Why it failed, one line each (none when it passed)."""
        failed = "the run failed" if self.loaded else "the file did not load"
        lines = [f"{failed}: {self.error}"] if self.error is not None else []
        lines += [
            f"{row.figure} {number_text(row.got)}, expected {row.expected}"
            for row in self.rows
            if not row.passed
        ]
        if self.diverged is not None:
            lines.append(str(self.diverged))
        if self.unrecorded is not None:
            lines.append(self.unrecorded)
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe, "check": self.check, "passed": self.passed,
            "seconds": round(self.seconds, 2),
            "rows": [{"figure": r.figure, "expected": r.expected, "got": r.got, "passed": r.passed}
                     for r in self.rows],
            "error": self.error, "diverged": None if self.diverged is None else str(self.diverged),
            "run_dir": None if self.run_dir is None else str(self.run_dir), "compared": self.compared,
            "recorded": None if self.recorded is None else str(self.recorded),
            "recipe_changes": list(self.recipe_changes), "unrecorded": self.unrecorded,
        }  # fmt: skip


def number_text(value: float | None) -> str:
    """A figure as the table shows it: 4 significant digits, ``-`` when the run did not give it."""
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def recipes_named(targets: Sequence[str]) -> tuple[list[Recipe], list[CheckResult]]:
    """The recipes ``fmtk check`` names: bundled names, recipe files, folders (:func:`folder_recipes`);
    none: every bundled recipe. A recipe named twice is checked once; two recipes of one name (the
    table, JUnit and the golden and kept folders name a check by its recipe's) are one line. Also
    the failed results of a folder's files that did not load (a named one is one line)."""
    if not targets:
        return [load_recipe(name) for name in bundled_recipe_names()], []
    recipes: dict[str, Recipe] = {}
    unloadable: list[CheckResult] = []
    for target in targets:
        found = folder_recipes(Path(target), unloadable) if Path(target).is_dir() else [load_recipe(target)]
        for recipe in found:
            seen = recipes.setdefault(recipe.name, recipe)
            if _file_of(seen) != _file_of(recipe):
                raise FmtkError(f"recipe name {recipe.name}: both {seen.source or seen.name} and "
                                f"{recipe.source or recipe.name} have it; a check is named by its recipe's "
                                "name: rename one")  # fmt: skip
    return list(recipes.values()), unloadable


def _file_of(recipe: Recipe) -> Path:
    """The file a loaded recipe comes from: a bundled one's too (named, or given as its file)."""
    if recipe.source:
        return Path(recipe.source).resolve()
    return bundled_recipes_dir().resolve() / f"{recipe.name}.py"


def folder_recipes(folder: Path, unloadable: list[CheckResult]) -> list[Recipe]:
    """The recipe of each recipe file in ``folder`` (:func:`recipe_files`), a module that defines no
    ``recipe`` left out (a helper the recipes import), one that does not load added to
    ``unloadable`` (as pytest's plugin makes it a failing item: the other files are checked); none
    at all is one line."""
    recipes, failed = [], []
    for file in recipe_files(folder):
        try:
            recipes.append(load_recipe(str(file)))
        except NoRecipe:
            continue
        except Exception as error:  # noqa: BLE001 - a user's file may raise anything: its check fails
            failed.append(CheckResult.unloadable(file, error))
    if not recipes and not failed:
        raise FmtkError(f"{folder}: a folder without recipe files (*.py)")
    unloadable.extend(failed)
    return recipes


def figures_of(run_dir: Path) -> dict[str, float]:
    """The figures of :data:`~fmtk.regression.check.FIGURES` of an ended run."""
    results = read_results(run_dir) or {}
    figures = {
        key: results[key] for key in ("epochs_run", "train_seconds", "best_valid_accuracy") if key in results
    }
    for which, prefix in (("best", "test_"), ("last", "last_test_")):
        for name, value in results.get("test", {}).get(which, {}).items():
            figures[prefix + name] = value
    history, _ = read_history(run_dir)
    best = [row for row in history if row["epoch"] == results.get("best_epoch")]
    if best:
        figures.update({name: value for name, value in best[0].items() if name.startswith("valid_")})
    return figures


def known_figures(recipe: Recipe) -> list[str]:
    """Every figure a check of ``recipe`` can expect."""
    metrics = ["accuracy", "loss", *recipe.make_metrics()]
    named = [f"{prefix}{metric}" for prefix in ("test_", "last_test_", "valid_") for metric in metrics]
    return [*named, *(key for key in FIGURES if "<m>" not in key)]


def check_recipe_values(recipe: Recipe, check: Check) -> Recipe:
    """The recipe as the check trains it (its preset, then its settings and epochs), its
    expectations checked against the figures a run gives: a mistake is one line before training."""
    where = f"{f'{check.written_at}: ' if check.written_at else ''}recipe {recipe.name}, check {check.label}"
    try:
        trained = apply_overrides(apply_preset(recipe, check.preset), check.overrides())
    except FmtkError as error:
        said = str(error).replace("--set ", "")  # (set in the check, not on a command line)
        raise FmtkError(f"{where}: cannot run in its settings: {said}") from None
    known = known_figures(trained)
    for figure in check.expect:
        if figure not in known:
            close = difflib.get_close_matches(figure, known, n=1, cutoff=0.75)
            hint = f"did you mean {close[0]}? " if close else ""
            raise FmtkError(
                f"{where}: expects unknown figure '{figure}'; {hint}a run gives {', '.join(known)}"
            )
    return trained


def prepare_check(
    recipe: Recipe,
    check: Check,
    *,
    keep: Path | None = None,
    golden: Path | None = None,
    record_to: Path | None = None,
) -> tuple[Recipe, Golden | None]:
    """Everything a check needs that can be wrong, checked before it trains (each one line): the
    recipe as the check trains it (:func:`check_recipe_values`), the golden run it is compared
    with, a new folder to record it in, a new folder to keep it in."""
    trained = check_recipe_values(recipe, check)
    reference = read_golden(golden, trained) if golden is not None else None
    if record_to is not None:
        check_new(record_to)
    for option, place, what in (("--keep", keep, "the runs"), ("--record", record_to and record_to.parent,
                                                             "the golden runs")):  # fmt: skip
        if place is not None and Path(place).exists() and not Path(place).is_dir():
            raise FmtkError(f"{option} {place} is a file; give a folder to keep {what} in")
    folder = _run_folder(keep, recipe.name, check.label, make=False)
    if folder is not None and folder.exists():
        raise FmtkError(f"--keep {keep}: {folder} exists; give another folder (nothing was overwritten)")
    return trained, reference


def run_check(
    recipe: Recipe,
    check: Check,
    device: torch.device | str = "cpu",
    data_dir: Path | str | None = None,
    *,
    keep: Path | None = None,
    golden: Path | None = None,
    record_to: Path | None = None,
    tolerance: float | None = None,
    echo: Callable[[str], None] | None = None,
    unrecorded: str | None = None,
) -> CheckResult:
    """Train ``check``'s run of ``recipe`` and hold its figures against what it expects.

    The run goes into a temporary folder, removed when the check passes and kept (its path in the
    result) when it fails; with ``keep`` into ``keep/<recipe>-<check>`` either way. With ``golden``
    (a folder :func:`fmtk.regression.golden.record` wrote) the run is made with the golden run's
    speed options (its threads and deterministic kernels; its precision on the same kind of device)
    and compared with it epoch by epoch: exactly when torch, the CPU and the threads are the same
    (on a GPU also its name, CUDA and cuDNN, with deterministic kernels), else within ``tolerance``
    (default 1e-3, absolute). With ``record_to`` (a new folder) a passing run is kept there as a
    golden run; on a GPU it trains with deterministic kernels, so that it can be met exactly.
    ``unrecorded`` (:func:`plan_checks`: its golden run is missing beside others): the check fails
    with that line, untrained.
    """
    if unrecorded is not None:
        return CheckResult(recipe.name, check.label, unrecorded=unrecorded)
    trained, reference = prepare_check(recipe, check, keep=keep, golden=golden, record_to=record_to)
    root = data_root(data_dir)
    data = root / check.data if check.data else root
    device = resolve_device(device)
    folder = _run_folder(keep, recipe.name, check.label)
    speed = SpeedOptions()
    if reference is not None:
        speed = golden_speed(reference, device)
    elif record_to is not None and device.type != "cpu":
        speed = SpeedOptions(deterministic=True)  # a GPU's golden run, to be met bit for bit
    started = time.perf_counter()
    result = CheckResult(recipe.name, check.label)
    try:
        run = build_run(trained, folder, device, data, echo=echo, speed=speed, progress=False,
                        command=f"fmtk check {recipe.name} ({check.label})")  # fmt: skip
        run.run()
    except Exception as error:  # noqa: BLE001 - a user's recipe may raise anything: the check fails
        result.error = one_line(error) or f"{type(error).__name__}: {error}"
    except BaseException:  # Ctrl-C: a check is not resumed, its half-made run is no use
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    result.seconds = time.perf_counter() - started
    if folder.is_dir() and not any(folder.iterdir()):  # the run failed before it began: nothing in it
        folder.rmdir()
    figures = figures_of(folder) if folder.is_dir() else {}
    for expectation in check.expectations():
        got = figures.get(expectation.figure)
        result.rows.append(Row(expectation.figure, str(expectation), got, expectation.holds(got)))
    if reference is not None and result.error is None:
        result.diverged, result.compared = compare(reference, folder, tolerance), True
        if result.diverged is None:
            result.recipe_changes = recipe_changes(reference, read_config(folder))
    if record_to is not None and result.passed:
        try:
            record(folder, record_to)
        except BaseException:
            if keep is None:  # the check's own temporary run folder goes with the failed command
                shutil.rmtree(folder, ignore_errors=True)
            raise
        result.recorded = record_to
    if result.passed and keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        result.run_dir = folder if folder.is_dir() else None
    return result


def _run_folder(keep: Path | None, recipe: str, label: str, make: bool = True) -> Path | None:
    """Where a check trains: ``keep/<recipe>-<label>`` (new: :func:`prepare_check`), else a new
    temporary folder (None when not ``make``)."""
    if keep is not None:
        return Path(keep) / f"{recipe}-{label}"
    return Path(tempfile.mkdtemp(prefix=f"fmtk-check-{recipe}-{label}-")) if make else None


def plan_checks(
    recipes: Sequence[Recipe],
    *,
    name: str | None = None,
    keep: Path | str | None = None,
    record_to: Path | str | None = None,
    against: Path | str | None = None,
    data_dir: Path | str | None = None,
    tolerance: float | None = None,
) -> list[tuple[Recipe, Check, dict[str, Path | None]]]:
    """Every check of ``recipes`` (only the one labelled ``name``, when given) with the places it
    uses (``keep``, ``golden``, ``record_to``: ``<DIR>/<recipe>-<check>``), each prepared
    (:func:`prepare_check`) and its ``data`` folder found under ``data_dir``'s root: every mistake
    is one line before anything trains."""
    if record_to is not None and against is not None:
        raise FmtkError(
            "--record, --against: give one of them (the first keeps new golden runs, the second compares "
            "with kept ones)",
            exit_code=2,  # a usage error, as click's
        )
    if tolerance is not None and against is None:
        raise FmtkError("--tolerance: goes with --against DIR (the golden runs to compare with)", exit_code=2)
    if tolerance is not None and not 0 <= tolerance < math.inf:  # (click's FloatRange takes nan)
        raise FmtkError(f"--tolerance {tolerance}: expected a number, 0 or more", exit_code=2)
    chosen = [(recipe, one) for recipe in recipes for one in recipe.checks if name in (None, one.label)]
    if record_to is not None:
        _check_none_recorded(chosen, Path(record_to))
    # A check without its golden run beside others that have theirs (one added since they were
    # recorded, one whose --record failed) fails alone, untrained; with none there, the folder is wrong.
    recorded = against is not None and any(
        (Path(against) / f"{recipe.name}-{one.label}").exists() for recipe, one in chosen
    )
    planned = []
    for recipe, one in chosen:
        folder = f"{recipe.name}-{one.label}"
        where = {
            "keep": None if keep is None else Path(keep),
            "golden": None if against is None else Path(against) / folder,
            "record_to": None if record_to is None else Path(record_to) / folder,
        }
        if recorded and not where["golden"].exists():
            source = recipe.source or recipe.name
            again = command("check", source, "--name", one.label, "--record", against)
            where["unrecorded"] = f"no golden run {where['golden']}: record it with {again}"
            where["golden"] = None
        prepare_check(recipe, one, **{key: value for key, value in where.items() if key != "unrecorded"})
        if one.data and not (data_root(data_dir) / one.data).is_dir():
            raise FmtkError(f"{recipe.name} ({one.label}): its data {one.data!r} is not a folder "
                            f"under {data_root(data_dir)} (give --data-dir)")  # fmt: skip
        planned.append((recipe, one, where))
    if not planned:
        names = ", ".join(recipe.name for recipe in recipes)
        labels = ", ".join(one.label for recipe in recipes for one in recipe.checks) or "none"
        which = f"no check named {name!r} (its checks: {labels})" if name is not None else "no check stated"
        raise FmtkError(f"{names}: {which} (a recipe's check field; see docs/checks.md)")
    return planned


def _check_none_recorded(chosen: Sequence[tuple[Recipe, Check]], record_to: Path) -> None:
    """A golden run is never recorded over: those of the ``chosen`` checks already in ``record_to``
    are one line, with the recipes still to record (a ``--record`` that was interrupted goes on so)."""
    recorded, missing = [], []
    for recipe, one in chosen:
        folder = record_to / f"{recipe.name}-{one.label}"
        (recorded if folder.exists() else missing).append((recipe, one, folder))
    if not recorded:
        return
    shown, more = first_few([str(folder) for _, _, folder in recorded])
    one = len(recorded) == 1
    line = (f"--record: {', '.join(shown)}{f' and {more} more' if more else ''} exist{'s' if one else ''}; "
            f"remove {'it' if one else 'them'} to record again")  # fmt: skip
    if missing:  # a recipe with a check recorded already: its others by name (--name), one command each
        partly = {recipe.name for recipe, _, _ in recorded}
        whole = dict.fromkeys(
            recipe.source or recipe.name for recipe, _, _ in missing if recipe.name not in partly
        )
        commands = [command("check", *whole, "--record", record_to)] if whole else []
        commands += [command("check", recipe.source or recipe.name, "--name", one.label, "--record",
                             record_to) for recipe, one, _ in missing if recipe.name in partly]  # fmt: skip
        line += f", or record only the others: {'; '.join(commands)}"
    line += " (nothing was overwritten)"
    raise FmtkError(line)


def check(
    recipe: Recipe | str | Path,
    *,
    device: torch.device | str = "cpu",
    data_dir: Path | str | None = None,
    name: str | None = None,
    keep: Path | str | None = None,
    record_to: Path | str | None = None,
    against: Path | str | None = None,
    tolerance: float | None = None,
) -> list[CheckResult]:
    """Run every check of ``recipe`` (a :class:`~fmtk.recipe.Recipe`, a bundled recipe's name or a
    recipe file's path), or only the one labelled ``name``, and return their results;
    ``record_to`` keeps each run as a golden run there, ``against`` compares each with the golden
    run there (:mod:`fmtk.regression.golden`), each figure within ``tolerance`` of its golden one
    (default: the check's own). ``device`` defaults to the CPU, as ``fmtk check``'s: the figures a
    check expects were measured there.

    Example::

        [result] = fmtk.check("digits_mlp", data_dir="data")
        assert result.passed, result.failures()
    """
    recipe = resolve_recipe(recipe)
    check_paths(data_dir=data_dir, keep=keep, record_to=record_to, against=against)
    if tolerance is not None and (
        isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < math.inf
    ):
        raise FmtkError(f"tolerance={tolerance!r}: expected a number, 0 or more")
    planned = plan_checks([recipe], name=name, keep=keep, record_to=record_to, against=against,
                          data_dir=data_dir, tolerance=tolerance)  # fmt: skip
    return [
        run_check(recipe, one, device, data_dir, tolerance=tolerance, **where)
        for recipe, one, where in planned
    ]
