"""A run in MLflow (``track="mlflow"``, ``fmtk run --track mlflow``) or W&B (``track="wandb"``): one
tracker run per run folder, across resumes.

The tracking server is ``$MLFLOW_TRACKING_URI``, else MLflow's own default, ``mlflow.db`` (SQLite)
in the working folder, which ``mlflow ui`` started there shows; the experiment is
``$MLFLOW_EXPERIMENT_NAME``, else the recipe's name. The MLflow run's id is kept in the run folder
(``tracking.json``), and ``--resume`` goes on in that MLflow run.

Ignite's ``MLflowLogger`` is not used: it logs each event as it happens into whichever MLflow run is
active, so a run killed after its last checkpoint and resumed logs those steps twice, and a server
that stops answering raises inside the training loop. Here an epoch's row and its per-iteration
points go in one ``log_batch``, written before the epoch's last checkpoint; a resumed run leaves out
the epochs the MLflow run already has (the same figures: resume is exact), so its history is an
uninterrupted run's. A server that stops answering mid-run costs one line; the run goes on.

W&B (``WandbTracker``): the project is ``$WANDB_PROJECT``, else the recipe's name; with
``WANDB_MODE=offline`` it logs into files under ``./wandb`` (``$WANDB_DIR``) that ``wandb sync``
sends later. Its step is the iteration, with ``epoch`` as the axis of the epochs' figures.
"""

from __future__ import annotations

import importlib
import json
import logging
import netrc
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from ignite.engine import Engine

from fmtk.errors import FmtkError
from fmtk.exported import require_onnx
from fmtk.recipe import Recipe
from fmtk.runfolder import BEST, CONFIG, METRICS_CSV, METRICS_JSON, write_json
from fmtk.training.handlers import IterationPoints, every_iterations
from fmtk.training.tensorboard import hparam_values

TRACKING_JSON = "tracking.json"
# MLflow retries a request for about 4 minutes by default (7 tries, growing waits): a server that is
# down would hold the run's start, or an epoch's end, that long. A user's own settings win.
QUICK_FAILURE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    # Its "🏃 View run … at URL" on stdout, between the run's own lines (and in a quiet fmtk.fit).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter's value
BATCH = 900  # metrics per log_batch (MLflow takes at most 1,000)
RUN_FILES = (CONFIG, METRICS_JSON, METRICS_CSV)
# W&B writes what a run logs to its file every 15 s by default: a run killed with SIGKILL loses what
# was not written yet (W&B's service process ends with the run). Every second, where W&B has it.
WANDB_FLUSH = ("x_transaction_log_flush_interval", 1.0)


def import_tracker(name: str) -> Any:
    """The module of tracker ``name`` (``mlflow``, ``wandb``), or one line saying what to install."""
    try:
        return importlib.import_module(name)
    except ImportError:
        library = {"mlflow": "MLflow", "wandb": "W&B's wandb"}[name]
        # the package itself, as fmtk tune and export name theirs (fmtk may be a clone, not from PyPI)
        raise FmtkError(f"track={name} needs {library}, which is not installed: pip install {name}") from None


class Tracker:
    """What the trackers share: opened when the run is assembled (before its data loads: a tracker
    that cannot be used is one line before anything trains); the loss and LR kept every
    ``log_every`` steps and each epoch's row logged at the epoch's end, before its last checkpoint,
    the epochs the tracker's run already has left out (a resumed run trains them again to the same
    figures); finished with the test figures and the run's files. One that fails mid-run costs one
    line. Rank 0 only."""

    track = ""  # the recipe's track value

    def __init__(self, run_dir: Path, echo: Callable[[str], None]) -> None:
        self.run_dir, self.echo = Path(run_dir), echo
        self.errors: tuple[type[BaseException], ...] = (OSError,)
        self.recorded = read_tracking(run_dir)  # a resumed run's: its tracker run
        self.study = read_tracking(self.run_dir.parent)  # a trial of fmtk tune's: the study's
        self.run_id: str | None = self.recorded.get("run_id")
        self.logged_epoch = 0  # the last epoch the tracker's run has (a resumed run logs only later ones)
        self.broken = False
        self.points: IterationPoints | None = None
        self.history: list[dict[str, float]] = []

    def attach(
        self, trainer: Engine, optimizer: torch.optim.Optimizer, history: list[dict[str, float]], every: int
    ) -> None:
        """The loss and LR every ``every`` iterations, and each epoch's row of ``history``
        (metrics.csv's), logged at the epoch's end by :meth:`log_epoch`, which the run attaches
        after your handlers (their values are in the row)."""
        self.points = IterationPoints(optimizer)
        every_iterations(trainer, every, self.points.keep)
        self.history = history

    def log_epoch(self, engine: Engine) -> None:
        points, row = self.points.take(), self.history[-1]
        epoch = int(row["epoch"])
        if self.broken or epoch <= self.logged_epoch:
            return
        # Epochs a resumed run trained before, that the tracker's run lacks (its server was away
        # then): their rows from metrics.csv first, without their per-iteration points.
        missed = [done for done in self.history[:-1] if self.logged_epoch < int(done["epoch"]) < epoch]
        try:
            for done in missed:
                self.send_epoch([], done, int(done["epoch"]) * engine.state.epoch_length)
                self.logged_epoch = int(done["epoch"])
            self.send_epoch(points, row, engine.state.iteration)
        except self.errors as error:
            self.lost(error)
            return
        self.logged_epoch = epoch

    def check(self, recipe: Recipe) -> None:
        """What the tracker can refuse of ``recipe``'s run once connected, before the data loads."""

    def begin(self, recipe: Recipe, config: Mapping[str, Any]) -> None:
        """Make the tracker's run of a new run folder, or go on in a resumed one's."""
        raise NotImplementedError

    def begin_study(self, recipe: Recipe, space: Mapping[str, str], metric: str, trials: int) -> None:
        """The study of ``fmtk tune`` in this (study) folder, whose trials' runs are its own."""
        raise NotImplementedError

    def send_epoch(self, points: list[tuple[int, float, list[float]]], row: dict[str, float], iteration: int):
        raise NotImplementedError

    def finish(self, results: Mapping[str, Any], files: tuple[str, ...] = RUN_FILES) -> None:
        """The test figures of ``results`` (metrics.json), the run's ``files`` and pictures; finished."""
        raise NotImplementedError

    def finish_study(self, metric: str, best_value: float, best_trial: int, files: tuple[str, ...]) -> None:
        raise NotImplementedError

    def end(self, status: str) -> None:
        """The tracker's run ended by an error (``FAILED``) or Ctrl-C (``KILLED``)."""
        raise NotImplementedError

    def where(self) -> str:
        """The tracker, in the words of a message."""
        raise NotImplementedError

    def lost(self, error: BaseException) -> None:
        self.broken = True
        self.echo(
            f"warning: track={self.track}: {self.where()} {_failure(error)}; the run goes on without it, "
            f"everything is in {self.run_dir} as always"
        )


class MlflowTracker(Tracker):
    """The MLflow run of one run folder, at ``$MLFLOW_TRACKING_URI`` (else ``./mlflow.db``); a trial
    of ``fmtk tune``: a child of the study's."""

    track = "mlflow"

    def __init__(self, run_dir: Path, echo: Callable[[str], None]) -> None:
        mlflow = import_tracker("mlflow")
        from mlflow.exceptions import MlflowException

        super().__init__(run_dir, echo)

        for name, value in QUICK_FAILURE.items():
            os.environ.setdefault(name, value)
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # a new SQLite store's setup
            logging.getLogger(name).setLevel(logging.WARNING)
        self.errors = (MlflowException, OSError)
        self.uri = self.recorded.get("uri") or self.study.get("uri") or mlflow.get_tracking_uri()
        if re.fullmatch(r"[\w.-]+:\d+(/.*)?", str(self.uri)):  # MLflow would take it for a folder
            raise FmtkError(f"track=mlflow: the tracking URI {self.uri} has no scheme: http://{self.uri}?")
        try:
            self.client = mlflow.MlflowClient(self.uri)
            if self.run_id is None:
                self.client.search_experiments(max_results=1)  # the server answers
            else:
                self.client.update_run(self.run_id, status="RUNNING")
                self.logged_epoch = max(
                    (m.step for m in self.client.get_metric_history(self.run_id, "valid_loss")), default=0
                )
        except self.errors as error:
            raise FmtkError(f"track=mlflow: {self.where()} {_failure(error)}") from None

    def where(self) -> str:
        return f"the tracking server {self.uri}"

    def check(self, recipe: Recipe) -> None:
        """A new run's experiment, if there is one already, is not deleted (MLflow would refuse the
        run only once the data has loaded, naming the experiment by its number)."""
        if self.run_id is None:
            try:
                self._experiment(self.study.get("experiment") or recipe.name)
            except self.errors as error:
                raise FmtkError(f"track=mlflow: {self.where()} {_failure(error)}") from None

    def _experiment(self, experiment: str) -> tuple[str, str | None]:
        """The name of the experiment a new run goes to (``$MLFLOW_EXPERIMENT_NAME``, else
        ``experiment``) and its id; None: it is not made yet."""
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
        found = self.client.get_experiment_by_name(name)
        if found is not None and found.lifecycle_stage == "deleted":
            raise FmtkError(
                f"track=mlflow: the experiment {name!r} at {self.uri} is deleted: restore it "
                f"(MLFLOW_TRACKING_URI={shlex.quote(str(self.uri))} mlflow experiments restore -x "
                f"{found.experiment_id}) or name another with MLFLOW_EXPERIMENT_NAME"
            )
        return name, None if found is None else found.experiment_id

    def begin(self, recipe: Recipe, config: Mapping[str, Any]) -> None:
        """Make the MLflow run of a new run folder (its values as parameters, tags saying where it
        came from; a trial of ``fmtk tune``: a child of the study's) and record its id in
        ``tracking.json``; a resumed one already has it."""
        if self.run_id is not None:
            # MLflow keeps a parameter's first value (it refuses another): the tag holds the values
            # the run goes on with (--resume --epochs N: epochs N).
            try:
                self.client.set_tag(self.run_id, "fmtk.changed", json.dumps(recipe.changed, default=str))
            except self.errors as error:
                raise FmtkError(f"track=mlflow: {self.where()} {_failure(error)}") from None
            self.echo(f"tracking: MLflow run {self.run_id} at {self.uri}, after epoch {self.logged_epoch}")
            return
        tags = run_tags(recipe, config, self.run_dir)
        if self.study.get("study"):
            tags["mlflow.parentRunId"] = self.study["run_id"]
        params = {key: _param(value) for key, value in hparam_values(recipe).items()}
        self._create(self.study.get("experiment") or recipe.name, tags, params)

    def begin_study(self, recipe: Recipe, space: Mapping[str, str], metric: str, trials: int) -> None:
        """The parent MLflow run of an ``fmtk tune`` study in this (study) folder: its trials' MLflow
        runs are its children."""
        if self.run_id is not None:
            self.echo(f"tracking: MLflow run {self.run_id} at {self.uri} (the study's, going on)")
            return
        tags = {"fmtk.recipe": recipe.name, "fmtk.study": str(self.run_dir.resolve())}
        params = {
            **{f"space.{key}": _param(spec) for key, spec in space.items()},
            "metric": metric,
            "trials": str(trials),
        }
        self._create(recipe.name, tags, params, study=True)

    def _create(
        self, experiment: str, tags: dict[str, str], params: dict[str, str], study: bool = False
    ) -> None:
        try:
            name, experiment_id = self._experiment(experiment)
            if experiment_id is None:
                experiment_id = self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, tags=utf8(tags), run_name=self.run_dir.name)
            self.run_id = run.info.run_id
            pairs = list(params.items())
            for first in range(0, len(pairs), 100):  # MLflow takes 100 parameters a call
                self.client.log_batch(self.run_id, params=_params(pairs[first : first + 100]))
        except self.errors as error:
            raise FmtkError(f"track=mlflow: {self.where()} {_failure(error)}") from None
        recorded = {"tracker": "mlflow", "uri": self.uri, "experiment": name, "run_id": self.run_id}
        write_json(self.run_dir / TRACKING_JSON, {**recorded, **({"study": True} if study else {})})
        self.echo(f"tracking: MLflow run {self.run_id} at {self.uri} (experiment {name})")

    def send_epoch(self, points: list[tuple[int, float, list[float]]], row: dict[str, float], iteration: int):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric("train_loss_iteration", loss, now, step) for step, loss, _ in points]
        metrics += [Metric("lr_iteration", lrs[0], now, step) for step, _, lrs in points]
        # The epoch's row last: an MLflow run that has its valid_loss has the whole epoch.
        epoch = int(row["epoch"])
        metrics += [Metric(key, float(value), now, epoch) for key, value in row.items() if key != "epoch"]
        self._send(metrics)

    def finish(self, results: Mapping[str, Any], files: tuple[str, ...] = RUN_FILES) -> None:
        """The test figures (``test_best_accuracy``, …, at the last epoch), why a handler stopped the
        run (``fmtk.stopped_by``: a pruned trial's ``pruned``), the run's ``files`` and pictures, and
        the MLflow run marked finished."""
        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), int(results.get("epochs_run") or self.logged_epoch)
        figures = [Metric(name, value, now, epoch) for name, value in test_figures(results).items()]
        if not self._log(figures):
            return
        paths = [self.run_dir / name for name in files] + sorted(self.run_dir.glob("*.png"))
        try:
            if results.get("stopped_by"):
                self.client.set_tag(self.run_id, "fmtk.stopped_by", str(results["stopped_by"]))
            for path in paths:
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, "FINISHED")
        except self.errors as error:
            self.lost(error)

    def finish_study(self, metric: str, best_value: float, best_trial: int, files: tuple[str, ...]) -> None:
        """A study's parent run: its best value (``best_<metric>``), best trial, files, finished."""
        from mlflow.entities import Metric

        if not self._log([Metric(f"best_{metric}", float(best_value), int(time.time() * 1000), 0)]):
            return
        try:
            self.client.set_tag(self.run_id, "fmtk.best_trial", str(best_trial))
        except self.errors as error:
            self.lost(error)
            return
        self.finish({}, files)

    def end(self, status: str) -> None:
        """Mark the MLflow run ``FAILED`` or ``KILLED`` (a run stopped by an error or Ctrl-C)."""
        if self.run_id is not None and not self.broken:
            try:
                self.client.set_terminated(self.run_id, status)
            except self.errors as error:
                self.lost(error)

    def _send(self, metrics: list) -> None:
        for first in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first : first + BATCH])

    def _log(self, metrics: list) -> bool:
        if self.broken:
            return False
        try:
            self._send(metrics)
        except self.errors as error:
            self.lost(error)
            return False
        return True


class WandbTracker(Tracker):
    """The W&B run of one run folder: online with a W&B login, or into files with
    ``WANDB_MODE=offline`` (``wandb sync`` sends them later). W&B's step is the iteration: the
    per-iteration points at theirs, an epoch's row at the epoch's last, its figures drawn against
    ``epoch``; which epochs the run has is kept in ``tracking.json`` (offline, there is no server
    to ask). A trial of ``fmtk tune`` is in the study's group."""

    track = "wandb"

    def __init__(self, run_dir: Path, echo: Callable[[str], None]) -> None:
        self.wandb = import_tracker("wandb")
        offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled")
        server = os.environ.get("WANDB_BASE_URL") or self.wandb.Settings().base_url  # (W&B's own default)
        if not (offline or os.environ.get("WANDB_API_KEY") or _netrc_login(urlsplit(server).hostname or "")):
            raise FmtkError(
                "track=wandb: no W&B login here: run `wandb login` or set WANDB_API_KEY; or set "
                "WANDB_MODE=offline to log into files that `wandb sync` sends later"
            )
        # Before the data loads, as MLflow's server is asked: W&B itself waits a minute, then says
        # "context deadline exceeded", and leaves a ./wandb folder.
        if not offline and (unreachable := _unreachable(server)):
            raise FmtkError(
                f"track=wandb: the W&B server {server} {unreachable}: check the network, or set "
                "WANDB_MODE=offline to log into files that `wandb sync` sends later"
            )
        if folder := os.environ.get("WANDB_DIR"):  # W&B makes it too, but first warns it is no git root
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise FmtkError(f"$WANDB_DIR {folder}: cannot make it ({error.strerror})") from None
        super().__init__(run_dir, echo)
        self.errors = (Exception,)  # W&B raises its own kinds, and a run must never die of one
        self.logged_epoch = self.recorded.get("logged_epoch", 0)
        self.run: Any = None

    def where(self) -> str:
        return "W&B"

    def begin(self, recipe: Recipe, config: Mapping[str, Any]) -> None:
        self.project = os.environ.get("WANDB_PROJECT") or self.study.get("project") or recipe.name
        resumed, self.run_id = self.run_id is not None, self.run_id or secrets.token_hex(4)
        values = utf8({**hparam_values(recipe), **run_tags(recipe, config, self.run_dir)})
        group = self.study.get("group")  # a trial's: its study's
        argv, sys.argv = sys.argv, utf8(sys.argv)  # W&B sends it with the run, and fails on bytes
        try:
            self.run = self.wandb.init(
                project=self.project, id=self.run_id, resume="allow", name=self.run_dir.name, config=values,
                tags=[recipe.name, *([recipe.preset] if recipe.preset else [])], group=group,
                job_type="trial" if group else "train",
                settings=self.wandb.Settings(console="off", silent=True, init_timeout=60, **self._flush()),
            )  # fmt: skip
            self.run.define_metric("epoch")
            for key in ("train_loss", "valid_*", "lr", "epoch_seconds"):
                self.run.define_metric(key, step_metric="epoch")
        except Exception as error:  # noqa: BLE001 - W&B's own kinds: one line, before any training
            raise FmtkError(f"track=wandb: W&B {_failure(error)}") from None
        finally:
            sys.argv = argv
        self._record()
        after = f", after epoch {self.logged_epoch}" if resumed else ""
        self.echo(
            f"tracking: W&B run {self.run_id} of project {self.project} ({self.run.settings.mode}){after}"
        )

    def _flush(self) -> dict[str, float]:
        name, seconds = WANDB_FLUSH
        return {name: seconds} if name in getattr(self.wandb.Settings, "model_fields", {}) else {}

    def begin_study(self, recipe: Recipe, space: Mapping[str, str], metric: str, trials: int) -> None:
        """A study is a W&B group (its folder's name): each trial's run is in it."""
        project = os.environ.get("WANDB_PROJECT") or recipe.name
        write_json(self.run_dir / TRACKING_JSON, {"tracker": "wandb", "study": True, "project": project,
                                                   "group": self.run_dir.name})  # fmt: skip

    def send_epoch(self, points: list[tuple[int, float, list[float]]], row: dict[str, float], iteration: int):
        for step, loss, lrs in points:
            self.run.log({"train_loss_iteration": loss, "lr_iteration": lrs[0]}, step=step)
        # Committed now: W&B holds a step's row until a later step comes (a kill would lose it).
        self.run.log({key: float(value) for key, value in row.items()}, step=iteration, commit=True)
        self._record(logged_epoch=int(row["epoch"]))

    def finish(self, results: Mapping[str, Any], files: tuple[str, ...] = RUN_FILES) -> None:
        """The test figures in the run's summary, why a handler stopped it, its files and pictures."""
        if self.broken or self.run is None:
            return
        try:
            self.run.summary.update(test_figures(results))
            if results.get("stopped_by"):
                self.run.summary["stopped_by"] = results["stopped_by"]
            # Copied into the W&B run's folder, which W&B sends whole at finish (and `wandb sync`
            # later): run.save links them and warns once a file to save them again when they change.
            for path in [self.run_dir / name for name in files] + sorted(self.run_dir.glob("*.png")):
                if path.is_file():
                    shutil.copy2(path, Path(self.run.dir) / path.name)
            self.run.finish(exit_code=0)
        except self.errors as error:
            self.lost(error)

    def finish_study(self, metric: str, best_value: float, best_trial: int, files: tuple[str, ...]) -> None:
        """Nothing: a study is its trials' group."""

    def end(self, status: str) -> None:
        if self.run is not None and not self.broken:
            try:
                self.run.finish(exit_code=1)
            except self.errors as error:
                self.lost(error)

    def _record(self, **more: Any) -> None:
        recorded = {"tracker": "wandb", "project": self.project, "run_id": self.run_id,
                    "mode": self.run.settings.mode, "logged_epoch": self.logged_epoch, **more}  # fmt: skip
        write_json(self.run_dir / TRACKING_JSON, recorded)


def open_tracker(recipe: Recipe, run_dir: Path, echo: Callable[[str], None]) -> Tracker | None:
    """The tracker the recipe asks for (``track``), ready to begin; None for ``none``."""
    if recipe.track_model:
        require_onnx()  # before anything trains, not at the end
    kinds = {"mlflow": MlflowTracker, "wandb": WandbTracker}
    if recipe.track not in kinds:
        return None
    tracker = kinds[recipe.track](run_dir, echo)
    tracker.check(recipe)
    return tracker


def exported_model(run_dir: Path, echo: Callable[[str], None]) -> tuple[str, ...]:
    """``track_model``: the run's best checkpoint exported as ONNX (``fmtk export``, checked against
    the run: its report beside it), the two files' names; none, and a warning, if it cannot be.

    A resumed run finds the export of its first end: kept when it is of the best checkpoint still,
    replaced when it is of an earlier best (that checkpoint is gone: a longer run found a better
    one); an export of another checkpoint (``fmtk export --checkpoint last``) is not touched."""
    from fmtk.exporting import export, report_path

    model = run_dir / "model.onnx"
    report, best = report_path(model), sorted(path.name for path in run_dir.glob(f"{BEST}_checkpoint_*.pt"))
    try:
        exported_from = json.loads(report.read_text())["metadata"]["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        exported_from = None
    best = best[0] if len(best) == 1 else None  # else export says what is wrong
    if model.is_file() and best is not None and exported_from == best:
        return model.name, report.name
    earlier_best = (
        model.is_file() and isinstance(exported_from, str) and exported_from.startswith(f"{BEST}_checkpoint_")
    )
    aside = [path.with_name(f".{path.name}.earlier") for path in (model, report)]
    if earlier_best:
        for path, moved in zip((model, report), aside, strict=True):
            path.replace(moved)
    echo(f"track_model: exporting {best or 'the best checkpoint'} as ONNX (fmtk export) …")  # seconds
    try:
        made = export(run_dir, echo=echo)
    except FmtkError as error:
        if earlier_best:  # the earlier export stays as it was
            for path, moved in zip((model, report), aside, strict=True):
                moved.replace(path)
        echo(f"warning: track_model: the model was not exported: {error}")
        return ()
    if earlier_best:
        for moved in aside:
            moved.unlink()
        echo(f"track_model: {model.name} now holds {best} (it held {exported_from}, an earlier best)")
    return made.path.name, made.report_path.name


def _unreachable(url: str, seconds: float = 3.0) -> str | None:
    """Why the server at ``url`` cannot be reached in a few words (no TCP connection in ``seconds``),
    else None."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=seconds).close()
    except socket.gaierror:
        return "cannot be reached (no such host)"
    except ConnectionRefusedError:
        return "cannot be reached (connection refused)"
    except TimeoutError:
        return f"does not answer (no connection in {seconds:g} s)"
    except OSError as error:
        return f"cannot be reached ({error.strerror or error})"
    return None


def _netrc_login(host: str) -> bool:
    """Whether ``~/.netrc`` holds a login for ``host`` (where ``wandb login`` keeps its key)."""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def test_figures(results: Mapping[str, Any]) -> dict[str, float]:
    """metrics.json's test figures by name: ``test_best_accuracy``, ``test_last_loss``, …"""
    return {
        f"test_{which}_{name}": float(value)
        for which, tested in results.get("test", {}).items()
        for name, value in tested.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def read_tracking(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / TRACKING_JSON
    return json.loads(path.read_text()) if path.is_file() else {}


def run_tags(recipe: Recipe, config: Mapping[str, Any], run_dir: Path) -> dict[str, str]:
    """Where the run came from: recipe, preset, changed values, versions, run folder, and the git
    commit of a user's recipe file in a repository (MLflow's own tag for it)."""
    versions = config.get("versions", {})
    tags = {
        "fmtk.recipe": recipe.name,
        "fmtk.preset": recipe.preset or "",
        "fmtk.changed": json.dumps(recipe.changed, default=str),
        "fmtk.run_dir": str(Path(run_dir).resolve()),
        "fmtk.command": str(config.get("command") or ""),
        **{f"version.{name}": str(value) for name, value in versions.items()},
    }
    commit = git_commit(recipe.source)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def git_commit(source: str | None) -> str | None:
    """The commit of the repository holding the recipe file ``source``, if it is in one."""
    if not source:
        return None
    try:
        found = subprocess.run(["git", "-C", str(Path(source).resolve().parent), "rev-parse", "HEAD"],
                               capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() if found.returncode == 0 else None


def _param(value: Any) -> str:
    text = str(utf8(value))
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 1] + "…"


def utf8(value: Any) -> Any:
    """``value`` with each string in it as UTF-8 can hold it: a file name that is not UTF-8 (in a
    path, a command line, a class folder's name) holds escaped bytes that the trackers cannot send
    (``surrogates not allowed``); they get U+FFFD, as a terminal shows them."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if isinstance(value, (list, tuple)):
        return type(value)(utf8(item) for item in value)
    if isinstance(value, dict):
        return {utf8(key): utf8(item) for key, item in value.items()}
    return value


def _params(pairs: list[tuple[str, str]]) -> list:
    from mlflow.entities import Param

    return [Param(key, value) for key, value in pairs]


def _failure(error: BaseException) -> str:
    """What went wrong, in a few words: MLflow's messages hold a whole retry history."""
    text = str(error)
    if "Connection refused" in text:
        return "cannot be reached (connection refused)"
    if "Failed to resolve" in text or "Name or service not known" in text:
        return "cannot be reached (no such host)"
    if "WRONG_VERSION_NUMBER" in text or "record layer failure" in text:  # TLS to a plain-HTTP server
        return "cannot be reached (it does not speak https here: http://?)"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return ("cannot be reached (its TLS certificate is not trusted: "
                "MLFLOW_TRACKING_SERVER_CERT_PATH=CA.pem, or MLFLOW_TRACKING_INSECURE_TLS=true)")  # fmt: skip
    if "Max retries exceeded" in text:
        return "cannot be reached"
    if "unsupported URI" in text:
        return "is not a tracking URI MLflow knows (http://, https://, sqlite:///, postgresql://, …)"
    if "timed out" in text.lower():
        return "does not answer (timed out)"
    answered = re.search(r"error code (\d{3}) != 200", text)  # MLflow's RestException: the body is HTML
    if answered:
        why = {"404": " (no MLflow API at this URL: give the server's root, e.g. http://HOST:5000)",
               "401": " (a login is needed: MLFLOW_TRACKING_USERNAME and _PASSWORD, or _TOKEN)",
               "403": " (this login may not use it)"}  # fmt: skip
        return f"answers HTTP {answered[1]}{why.get(answered[1], '')}"
    if "MLFLOW_ALLOW_FILE_STORE" in text:  # MLflow 3 refuses ./mlruns-style folders unless told
        return ("is a folder (MLflow's file store), which MLflow refuses now: use a database, e.g. "
                "sqlite:///mlflow.db (`mlflow migrate-filestore` moves old runs into one), or set "
                "MLFLOW_ALLOW_FILE_STORE=true")  # fmt: skip
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    if len(first) > 300:  # whole sentences, not a cut one
        first = first[: first.rfind(". ", 0, 300) + 1 or 300] + " …"
    return f"failed: {first}"
