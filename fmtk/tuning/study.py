"""``fmtk tune``: a hyperparameter search with Optuna whose trials are ordinary runs, in one study
folder that survives a kill.

A study folder (default ``runs/tune/<recipe>/<YYYYmmdd-HHMMSS>``) holds::

    study.json    what was asked: recipe, preset, --set values, space, trials, metric, pruning, seed
    study.db      Optuna's study (SQLite): every trial's values, reports and state
    trial_000/ …  one run folder per trial (config.json, metrics.csv, checkpoints, TensorBoard)
    best.json     the best trial's values and figures, and the command that trains them again
    tune.png      the valid metric of each trial and the best so far

Trials run one after the other through the launcher, as ``fmtk run`` would (in one process or
``--nproc-per-node``); the values are drawn in this process. The TPE sampler is seeded per trial
from (recipe seed, trial number), so a study resumed after a kill draws what it would have drawn.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from fmtk.errors import RESUME_HINT, FmtkError, Interrupted, command, one_line
from fmtk.launcher import RunRequest, handler_name, resolve_handler, train
from fmtk.recipe import WATCH, watched_metric
from fmtk.recipe_loading import data_root, resolve_recipe
from fmtk.runfolder import CONFIG, read_history, read_results, run_folder, write_json
from fmtk.runs import PRUNED
from fmtk.training.tracking import Tracker, open_tracker
from fmtk.tuning.pruning import Pruning, TrialReporting
from fmtk.tuning.report import BEST_JSON, StudyResult, study_result, trial_name, values_text, write_report
from fmtk.tuning.space import parse_spec, search_space, spec_text, trial_values

STUDY_JSON, STUDY_DB = "study.json", "study.db"
STUDY_NAME = "fmtk"  # the one study in study.db
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
FAILURES_TO_STOP = 3  # the first trials all failing means the setup is wrong, not the values


@dataclass
class StudyRequest:
    """One search, as study.json keeps it: every trial trains ``recipe`` with its ``preset`` and
    ``settings``, then the values drawn from ``space`` (``KEY: SPEC``); ``tries`` run first."""

    recipe: str  # a bundled recipe's name or a recipe file's path
    space: dict[str, str]
    trials: int
    metric: str = "accuracy"
    preset: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    tries: list[dict[str, Any]] = field(default_factory=list)
    pruning: Pruning = field(default_factory=Pruning)
    seed: int = 0  # the recipe's, after preset and settings: the sampler's
    data_dir: str | None = None  # absolute; a resume reads the same data unless told otherwise
    command: str | None = None
    handlers: list[str] = field(default_factory=list)  # "module:function", or a function's name (Python)

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> StudyRequest:
        return cls(**{**values, "pruning": Pruning(**values["pruning"])})


def tune_study(
    request: StudyRequest | None,
    *,
    resume: Path | None = None,
    study_dir: Path | None = None,
    output_dir: Path = Path("runs"),
    run: RunRequest | None = None,
    data_dir: Path | None = None,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Carry out a new search (``request``) or go on with the one in ``resume`` (``request``: None,
    or its new number of trials) until that many trials have ended; ``run`` says how each trial
    trains (device, speed, processes, handlers), on ``data_dir`` (default: $FMTK_DATA, else ./data;
    a resumed study: its own). Returns the best trial and the table of trials."""
    run = run or RunRequest()
    run.processes_backend()  # before the study's folder: every trial would fail
    given = [handler_name(handler) for handler in run.handlers]
    if resume is not None:
        request = _resumed_request(resume, request.trials if request is not None else None)
        note = _study_handlers(request, given)
    for handler in run.handlers:
        resolve_handler(handler)
    if resume is not None:
        held = run_folder(resume, reuse=True, resumable_with=STUDY_JSON)
        data_dir = data_dir or (Path(request.data_dir) if request.data_dir else None)
    else:
        _check_new_study_dir(study_dir, request)
        data = str(data_root(data_dir).resolve())
        request = replace(checked_request(request), data_dir=data, handlers=given)
        note = None
        held = run_folder(
            study_dir,
            output_dir=Path(output_dir) / "tune",
            recipe_name=_name(request),
            resumable_with=STUDY_JSON,
        )
    run = replace(run, data_dir=data_root(data_dir))
    started = time.perf_counter()
    with _optuna_quiet(), held as folder:
        if resume is None:
            write_json(folder / STUDY_JSON, asdict(request))
        echo(f"study folder: {folder}")
        if note:
            echo(note)
        study = _open_study(folder, request, create=resume is None)
        tracker = _study_tracker(folder, request, echo)
        try:
            settled = _settle_interrupted_trials(study, folder, request, run, echo)
            ended_before, new_trials = _ended(study), []
            if resume is not None and ended_before >= request.trials:
                ran = (
                    f"its interrupted trial{'s' if settled > 1 else ''} ended, no new one"
                    if settled
                    else "none was run"
                )
                echo(f"the study has {ended_before} ended trials, as many as --trials {request.trials} "
                     f"asks: {ran} (a larger --trials goes on)")  # fmt: skip
            while (ended := _ended(study)) < request.trials:
                new_trials.append(_run_new_trial(study, folder, request, run, ended, echo))
                _check_not_all_failed(study, folder, request, ended_before, new_trials)
        except (KeyboardInterrupt, Interrupted):
            if tracker is not None:
                tracker.end("KILLED")
            raise Interrupted(f"interrupted; go on with: {command('tune', '--resume', folder)}") from None
        except BaseException:
            if tracker is not None:
                tracker.end("FAILED")
            raise
        result = study_result(study, folder, _name(request), request.metric)
        write_report(result, folder, time.perf_counter() - started, echo)
        if tracker is not None:
            tracker.finish_study(result.metric, result.best_value, result.best_trial,
                                 (STUDY_JSON, BEST_JSON))  # fmt: skip
    return result


def _study_tracker(folder: Path, request: StudyRequest, echo: Callable[[str], None]) -> Tracker | None:
    """The study in the tracker when its trials are tracked: MLflow's parent run of the trials'
    runs, W&B's group of them."""
    recipe = resolve_recipe(request.recipe, request.preset, request.settings)
    tracker = open_tracker(recipe, folder, echo)
    if tracker is not None:
        tracker.begin_study(recipe, request.space, request.metric, request.trials)
    return tracker


def _check_new_study_dir(study_dir: Path | None, request: StudyRequest) -> None:
    """``--study-dir`` must be new or empty; one holding a study says which, and how to go on."""
    if study_dir is not None and Path(study_dir).exists() and not Path(study_dir).is_dir():
        raise FmtkError(f"--study-dir {study_dir} is a file; give a new folder (nothing was changed)")
    if study_dir is None or not Path(study_dir).is_dir() or not any(Path(study_dir).iterdir()):
        return
    if (Path(study_dir) / STUDY_JSON).is_file():
        theirs = _resumed_request(study_dir, None).recipe
        if Path(theirs).stem != Path(request.recipe).stem:
            raise FmtkError(
                f"--study-dir {study_dir} holds a study of {theirs}, not {request.recipe}; give a new folder"
            )
        raise FmtkError(
            f"--study-dir {study_dir} holds a study already; go on with: "
            f"{command('tune', '--resume', study_dir)}"
        )
    raise FmtkError(f"--study-dir {study_dir} is not empty; give a new folder (nothing was changed)")


def checked_request(request: StudyRequest) -> StudyRequest:
    """The request with its recipe, space, tries and metric checked (each mistake one line), and
    the sampler's seed filled in from the recipe."""
    if request.trials < 1:
        raise FmtkError(f"--trials {request.trials}: a study needs at least 1 trial")
    space_keys = set(request.space)
    both = sorted(space_keys & set(request.settings))
    if both:
        raise FmtkError(f"{', '.join(both)}: both searched (--space) and set (--set); give each key once")
    recipe = resolve_recipe(request.recipe, request.preset, request.settings)
    space = search_space(recipe, request.space)
    tries = [
        trial_values(space, text) if isinstance(text, str) else _typed_try(space, text)
        for text in request.tries
    ]
    metrics = ["loss", "accuracy", *recipe.make_metrics()]
    name = watched_metric(request.metric).name
    if name not in metrics or not WATCH.fullmatch(request.metric):
        raise FmtkError(
            f"--metric {request.metric}: not a validation metric of {recipe.name} ({', '.join(metrics)}), "
            "optionally with :min or :max"
        )
    recipe_name = recipe.source if Path(request.recipe).suffix == ".py" else request.recipe
    spaces = {key: spec_text(distribution) for key, distribution in space.items()}
    return replace(request, recipe=recipe_name, space=spaces, tries=tries, seed=recipe.seed)


def _typed_try(space: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A try given from Python as a dict: checked like ``--try`` text."""
    return trial_values(space, ",".join(f"{key}={value}" for key, value in values.items()))


def _name(request: StudyRequest) -> str:
    return Path(request.recipe).stem if request.recipe.endswith(".py") else request.recipe


def _resumed_request(folder: Path, trials: int | None) -> StudyRequest:
    """study.json of the study in ``folder``, with ``trials`` as its new number of trials."""
    path = Path(folder) / STUDY_JSON
    if not Path(folder).is_dir():
        raise FmtkError(f"--resume {folder}: no such folder")
    if not path.is_file():
        raise FmtkError(f"--resume {folder}: not a study folder (it has no {STUDY_JSON})")
    try:
        request = StudyRequest.from_json(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as error:
        raise FmtkError(f"{path}: not a study.json fmtk can read ({type(error).__name__}: {error})") from None
    if trials is not None:
        if trials < 1:
            raise FmtkError(f"--trials {trials}: a study needs at least 1 trial")
        request.trials = trials
    return request


def _study_handlers(request: StudyRequest, given: list[str]) -> str | None:
    """A line when a resumed study's next trials run with other handlers than its earlier ones
    (study.json keeps them); None when they are the same. Not put back by themselves, as ``fmtk run
    --resume`` does not: a handler is the user's to give (before, other ones went unsaid)."""
    kept = request.handlers
    if given == kept:
        return None
    return (f"note: the study's earlier trials ran with {_handler_names(kept)}; its next ones with "
            f"{_handler_names(given)} (the same ones keep its trials alike)")  # fmt: skip


def _handler_names(names: list[str]) -> str:
    return f"--handler {' --handler '.join(names)}" if names else "no --handler"


def _open_study(folder: Path, request: StudyRequest, create: bool) -> optuna.Study:
    storage = _storage(folder)
    direction = "minimize" if watched_metric(request.metric).minimise else "maximize"
    if create:
        study = optuna.create_study(
            study_name=STUDY_NAME, storage=storage, direction=direction, pruner=request.pruning.pruner()
        )
        for values in request.tries:
            study.enqueue_trial(values)
        return study
    _check_database(Path(folder) / STUDY_DB)
    return optuna.load_study(study_name=STUDY_NAME, storage=storage, pruner=request.pruning.pruner())


def _check_database(database: Path) -> None:
    """study.db holds the study, read without writing: Optuna would make a missing or empty file a
    new database and add its tables to another program's."""
    if not database.is_file() or database.stat().st_size == 0:
        raise FmtkError(f"{database}: {'missing' if not database.exists() else 'empty'}; the study's "
                        "trials are kept in it, and it cannot go on without them")  # fmt: skip
    try:
        with contextlib.closing(sqlite3.connect(f"{database.resolve().as_uri()}?mode=ro", uri=True)) as db:
            found = db.execute("SELECT 1 FROM studies WHERE study_name = ?", (STUDY_NAME,)).fetchone()
    except sqlite3.DatabaseError as error:  # "file is not a database", "no such table: studies", …
        if "no such table" not in str(error):
            raise FmtkError(f"{database}: not an fmtk study's database ({error})") from None
        found = None
    if found is None:
        raise FmtkError(f"{database}: not an fmtk study's database (it holds no study)")


def _storage(folder: Path) -> str:
    return f"sqlite:///{(Path(folder) / STUDY_DB).resolve()}"


def _ended(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=ENDED))


def trial_folder(folder: Path, number: int) -> Path:
    return Path(folder) / trial_name(number)


def _run_new_trial(
    study: optuna.Study, folder: Path, request: StudyRequest, run: RunRequest, ended: int, echo: Callable
) -> int:
    space = {key: parse_spec(key, spec) for key, spec in request.space.items()}
    # Seeded per trial, so the draws depend on (seed, number, the trials before), never on how many
    # times this process was started: a resumed study draws what an uninterrupted one would. The
    # number is the trial's to come: --try's queued (WAITING) trials hold theirs already, and a
    # count of them all gave a try's unset keys and the next trial the same seed.
    started = len(study.get_trials(deepcopy=False, states=tuple(set(TrialState) - {TrialState.WAITING})))
    study.sampler = optuna.samplers.TPESampler(seed=request.seed + started)
    trial = study.ask(fixed_distributions=space)
    echo(f"trial {trial.number} ({ended + 1} of {request.trials}): {values_text(trial.params)}")
    _train_trial(study, trial.number, folder, request, run, echo, resume=False)
    return trial.number


def _settle_interrupted_trials(
    study: optuna.Study, folder: Path, request: StudyRequest, run: RunRequest, echo: Callable
) -> int:
    """A trial still RUNNING in study.db was killed with the study: it resumes from its last
    checkpoint (or starts again if it wrote none) and ends as it would have. Returns how many did."""
    resumed = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if set(trial.params) != set(request.space):  # killed while its values were being drawn
            study.tell(trial.number, state=TrialState.FAIL)
            continue
        echo(f"trial {trial.number}: resuming {values_text(trial.params)}")
        _train_trial(study, trial.number, folder, request, run, echo, resume=True)
        resumed += 1
    return resumed


def _train_trial(
    study: optuna.Study,
    number: int,
    folder: Path,
    request: StudyRequest,
    run: RunRequest,
    echo: Callable,
    resume: bool,
) -> None:
    """Train trial ``number`` as an ordinary run in its folder, then tell the study how it ended."""
    trial = study.get_trials(deepcopy=False)[number]
    run_dir = trial_folder(folder, number)
    # A trial's storage id (Optuna's Trial(study, id) needs it) is only on its private _trial_id.
    reporting = TrialReporting(
        _storage(folder), STUDY_NAME, trial._trial_id, watched_metric(request.metric).name, request.pruning
    )
    trial_run = replace(run, handlers=(*run.handlers, reporting), overrides={}, preset=None, resume=None)
    if resume and (run_dir / CONFIG).is_file():
        trial_run = replace(trial_run, resume=run_dir)
    else:
        if run_dir.exists():  # a start killed before it wrote its config: nothing in it to keep
            shutil.rmtree(run_dir)
        overrides = {**request.settings, **trial.params}
        trial_run = replace(
            trial_run,
            recipe_name=request.recipe,
            preset=request.preset,
            overrides=overrides,
            run_dir=run_dir,
            command=request.command,
        )
    try:
        train(trial_run, echo)
    except Interrupted:
        raise
    except Exception as error:  # noqa: BLE001 - a user's handler or recipe may raise anything
        setattr(error, RESUME_HINT, None)  # a failed trial is not resumed with fmtk run: the study goes on
        line = one_line(error)  # its file and line (before: it ended the study, and each resume)
        if line is None:  # fmtk's own bug: its traceback
            raise
        optuna.trial.Trial(study, trial._trial_id).set_user_attr("error", line)
        study.tell(number, state=TrialState.FAIL)
        echo(f"trial {number} failed: {line}")
        return
    results = read_results(run_dir) or {}
    rows, _ = read_history(run_dir)
    watched = watched_metric(request.metric)
    column = watched.column
    values = [row[column] for row in rows]
    if results.get("stopped_by") == PRUNED:
        study.tell(number, state=TrialState.PRUNED)
        echo(f"trial {number}: pruned after epoch {results['epochs_run']}")
        return
    best = watched.best(values)
    study.tell(number, best)
    leader = study.best_trial
    echo(f"trial {number}: best {column} {best:.4f} (best so far: trial {leader.number}, {leader.value:.4f})")


def _check_not_all_failed(
    study: optuna.Study, folder: Path, request: StudyRequest, ended_before: int, started: list[int]
) -> None:
    """The first trials this command ``started`` (up to :data:`FAILURES_TO_STOP`) all failing means
    the setup is wrong (data, device), not the values: the study stops with the error."""
    wanted = min(FAILURES_TO_STOP, request.trials - ended_before)
    trials = [study.get_trials(deepcopy=False)[number] for number in started[:wanted]]
    if len(trials) < wanted or not all(trial.state == TrialState.FAIL for trial in trials):
        return
    error = trials[-1].user_attrs.get("error", "see above")
    if ended_before == 0:
        raise FmtkError(f"the first {wanted} trials failed, the last with: {error}")
    # The failed trials stay in study.db (Optuna keeps every trial) and count as ended.
    raise FmtkError(
        f"the {wanted} trials this command started failed, the last with: {error}; once that is fixed, "
        f"go on with: {command('tune', '--resume', folder, '--trials', request.trials + wanted)}"
    )


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna logs each trial at INFO; fmtk prints its own line per trial."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)
