"""What a study says when it ends: the best trial and the table of trials (:class:`StudyResult`),
best.json, the picture of the search (tune.png) and Optuna's parameter importances."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmtk.errors import FmtkError, command
from fmtk.pictures import LINE_COLOURS, lines_picture, scatter_picture, sheet_of
from fmtk.recipe import watched_metric
from fmtk.runfolder import CONFIG, read_config, read_results, write_json

BEST_JSON, PICTURE = "best.json", "tune.png"
IMPORTANCE_TRIALS = 5  # finished trials before Optuna's parameter importances mean something


@dataclass
class StudyResult:
    """What :func:`fmtk.tune` returns: the best trial's values (``best_values``, typed as its run's
    config.json holds them), its valid metric (``best_value``) and run folder, and one row per trial
    (``trials``: number, state, value, the drawn values, epochs run, test accuracy of the best
    checkpoint, seconds, run folder)."""

    recipe: str
    study_dir: Path
    metric: str  # the metrics.csv column searched on: valid_accuracy, valid_loss, …
    best_trial: int
    best_value: float
    best_values: dict[str, Any]
    best_run: Path
    trials: list[dict[str, Any]]
    importances: dict[str, float] | None  # Optuna's, once IMPORTANCE_TRIALS trials completed
    minimise: bool = False  # the metric is better lower (a loss)
    searched: dict[str, str] | None = None  # each searched key's scale: linear, log or categories

    def __repr__(self) -> str:
        values = ", ".join(f"{key}={value!r}" for key, value in self.best_values.items())
        return (
            f"StudyResult({self.study_dir}: {len(self.trials)} trials; best trial {self.best_trial}, "
            f"{self.metric} {self.best_value:.4f} with {values})"
        )


def study_result(study: optuna.Study, folder: Path, recipe: str, metric: str) -> StudyResult:
    """The study's best trial and its table of trials, read from study.db and the trial folders."""
    trials = study.get_trials(deepcopy=False)
    minimise = study.direction == optuna.study.StudyDirection.MINIMIZE
    rows = [_trial_row(trial, folder, minimise) for trial in trials]
    completed = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    if not completed:
        raise FmtkError(f"{folder}: no trial completed (pruned or failed: see above), so no best values")
    best = study.best_trial
    best_run = Path(folder) / rows[best.number]["run"]
    config = read_config(best_run)
    values = {key: _config_value(config, key) for key in best.params}
    importances = None
    if len(completed) >= IMPORTANCE_TRIALS and len(best.params) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning
            found = optuna.importance.get_param_importances(study)
        importances = {key: round(value, 4) for key, value in found.items()}
    watched = watched_metric(metric)
    searched = {key: _scale(spread) for key, spread in best.distributions.items()}
    return StudyResult(recipe, Path(folder), watched.column, best.number, best.value, values, best_run, rows,
                       importances, watched.minimise, searched)  # fmt: skip


def _scale(distribution: optuna.distributions.BaseDistribution) -> str:
    """How tune.png draws a searched value: ``categories``, ``log`` or ``linear``."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return "categories"
    return "log" if getattr(distribution, "log", False) else "linear"


def trial_name(number: int) -> str:
    """The folder of trial ``number`` in its study folder: ``trial_007``."""
    return f"trial_{number:03d}"


def _config_value(config: dict[str, Any], key: str) -> Any:
    """A searched key's value in a run's config.json: a field, an option or ``field.argument``."""
    name, dot, argument = key.partition(".")
    if dot and isinstance(config.get(name), dict):
        return config[name][argument]
    return config[key] if key in config else config["options"][key]


def _trial_row(trial: optuna.trial.FrozenTrial, folder: Path, minimise: bool) -> dict[str, Any]:
    run = trial_name(trial.number)
    results = read_results(Path(folder) / run) if (Path(folder) / run / CONFIG).is_file() else None
    results = results or {}
    test = results.get("test", {}).get("best", {})
    value = trial.value if trial.state == TrialState.COMPLETE else None
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        # its best until it stopped, as a complete trial's value is its best epoch's (and as the
        # median pruner judged it)
        reported = trial.intermediate_values.values()
        value = min(reported) if minimise else max(reported)
    return {
        "trial": trial.number,
        "state": trial.state.name.lower(),
        "value": value,
        **trial.params,
        "epochs": results.get("epochs_run"),
        "test_accuracy": test.get("accuracy"),
        "seconds": results.get("train_seconds"),
        "run": run,
    }


def write_report(result: StudyResult, folder: Path, seconds: float, echo: Callable[[str], None]) -> None:
    """best.json and tune.png in the study folder, and the summary lines."""
    rows = result.trials
    best_row = rows[result.best_trial]
    counts = {state: sum(row["state"] == state for row in rows) for state in ("complete", "pruned", "fail")}
    trained = sum(row["seconds"] or 0 for row in rows)
    again = command("run", "--config", result.best_run / CONFIG)
    report = {
        "trial": result.best_trial,
        "run": best_row["run"],
        "metric": result.metric,
        "value": result.best_value,
        "values": result.best_values,
        "test_accuracy": best_row["test_accuracy"],
        "command": again,
        "trials": counts,
        "train_seconds": round(trained, 2),
        "importances": result.importances,
    }
    write_json(folder / BEST_JSON, report)
    title = f"fmtk tune {result.recipe} ({folder.name}): {result.metric} per trial"
    picture = search_picture(rows, result.metric, title, result.minimise, result.searched)
    picture.save(folder / PICTURE)
    values = values_text(result.best_values)
    test = best_row["test_accuracy"]
    ended = f"{counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed"
    echo(f"{len(rows)} trials: {ended}; {trained:.0f} s of training")
    tested = f", test accuracy {100 * test:.2f}% (best checkpoint)" if test is not None else ""
    best = f"{result.metric} {result.best_value:.4f}{tested}"
    echo(f"best: trial {result.best_trial} ({best_row['run']}), {best}")
    echo(f"best values: {values}")
    if result.importances:
        echo("importance: " + ", ".join(f"{key} {value:.2f}" for key, value in result.importances.items()))
    echo(f"train it again: {again}")
    echo(f"wrote {folder / BEST_JSON} and {folder / PICTURE}")


def values_text(values: dict[str, Any]) -> str:
    """``lr=0.0412 batch_size=64``: a trial's values in one line, floats to 3 digits."""
    return " ".join(f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}"
                    for key, value in values.items())  # fmt: skip


def search_picture(
    rows: list[dict[str, Any]],
    metric: str,
    title: str,
    minimise: bool,
    searched: dict[str, bool] | None = None,
) -> Any:
    """Each trial's valid metric (a pruned one's best until it stopped) and the best so far; under
    it, the metric against each ``searched`` value (``{key: on a log scale}``), the best trial
    circled. When half the trials are worse than the rest by far (the better half would fill less
    than a fifth of the plot), those are drawn at the edge as triangles (the search's
    story is in the better half)."""
    completed = [(row["trial"], row["value"]) for row in rows if row["state"] == "complete"]
    pruned = [
        (row["trial"], row["value"]) for row in rows if row["state"] == "pruned" and row["value"] is not None
    ]
    best, leader, best_row = [], None, None  # from the first completed trial to the last trial of any kind
    for row in rows:
        value = row["value"] if row["state"] == "complete" else None
        if value is not None and (leader is None or (value < leader if minimise else value > leader)):
            leader, best_row = value, row
        if leader is not None:
            best.append((row["trial"], leader))
    trials, pruned_trials, best_so_far = "completed trial", "pruned (its best until then)", "best so far"
    lines = {trials: _columns(completed), pruned_trials: _columns(pruned), best_so_far: _columns(best)}
    lines = {name: line for name, line in lines.items() if line[0]}
    # One colour for one meaning in every study's picture, whichever kinds of trial it has.
    colours = dict(zip((trials, pruned_trials, best_so_far), LINE_COLOURS, strict=False))
    failed = sum(row["state"] == "fail" for row in rows)
    if failed:
        title += f"; {failed} failed trial{'s' if failed > 1 else ''} (no value, not drawn)"
    limits = _better_half(sorted(value for _, value in completed + pruned), minimise)
    edge = f"worse than {limits[0] if not minimise else limits[1]:.4g} (at the edge)" if limits else ""
    # The best so far is a line without points: a point at a failed trial would read as its value.
    picture = lines_picture(lines, title, "trial", metric, dots=(trials, pruned_trials),
                            lines_only=(best_so_far,), legend_at_top=minimise, y_limits=limits,
                            clipped_name=edge, colours=colours)  # fmt: skip
    drawn = [row for row in rows if row["value"] is not None and row["state"] in ("complete", "pruned")]
    panels = [
        scatter_picture(
            [
                (
                    str(row[key]) if scale == "categories" else row[key],
                    row["value"],
                    0 if row["state"] == "complete" else 1,
                )
                for row in drawn
            ],
            f"{metric} against {key}",
            key,
            log_x=scale == "log",
            y_limits=limits,
            ring=next((i for i, row in enumerate(drawn) if row is best_row), None),
        )  # fmt: skip
        for key, scale in (searched or {}).items()
        if any(key in row for row in drawn)
    ]
    return sheet_of(picture, panels)


def _better_half(values: list[float], minimise: bool) -> tuple[float, float] | None:
    """The metric's range of the better half of the trials' sorted ``values``, when the worse half
    is worse by far: drawn whole, the better half would fill less than a fifth of the plot's height.
    Else None (every trial drawn where it is). Of an even count, the better half with both middle
    values first, then without the worse of them: two of four trials diverged leave the two good."""
    if len(values) < 4:
        return None
    middles = sorted({(len(values) - 1) // 2, len(values) // 2}, reverse=minimise)  # widest first
    for index in middles:
        limits = (values[index], values[-1]) if not minimise else (values[0], values[index])
        if limits[0] != limits[1] and 5 * (limits[1] - limits[0]) < values[-1] - values[0]:
            return limits
    return None


def _columns(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [number for number, _ in points], [value for _, value in points]
