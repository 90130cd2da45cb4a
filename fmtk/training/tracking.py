"""A run in MLflow (``track="mlflow"``, ``fmtk run --track mlflow``): one MLflow run per run folder,
across resumes.

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
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from fmtk.errors import FmtkError
from fmtk.recipe import Recipe
from fmtk.runfolder import CONFIG, METRICS_CSV, METRICS_JSON, write_json
from fmtk.training.handlers import IterationPoints, every_iterations
from fmtk.training.tensorboard import hparam_values

TRACKING_JSON = "tracking.json"
INSTALL = 'pip install "fmtk[track]"'
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


def import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError:
        raise FmtkError(f"track=mlflow needs MLflow, which is not installed: {INSTALL}") from None
    return mlflow


class MlflowTracker:
    """The MLflow run of one run folder: opened when the run is assembled (before its data loads:
    a server that cannot be reached is one line before anything trains), logged to at each epoch's
    end, finished with the test figures and the run's files. Rank 0 only."""

    def __init__(self, run_dir: Path, echo: Callable[[str], None]) -> None:
        mlflow = import_mlflow()
        from mlflow.exceptions import MlflowException

        for name, value in QUICK_FAILURE.items():
            os.environ.setdefault(name, value)
        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # a new SQLite store's setup
            logging.getLogger(name).setLevel(logging.WARNING)
        self.run_dir, self.echo = run_dir, echo
        self.errors: tuple[type[BaseException], ...] = (MlflowException, OSError)
        recorded = read_tracking(run_dir)
        study = read_tracking(run_dir.parent)  # a trial of fmtk tune logs where its study does
        self.uri = recorded.get("uri") or study.get("uri") or mlflow.get_tracking_uri()
        self.client = mlflow.MlflowClient(self.uri)
        self.run_id: str | None = recorded.get("run_id")
        self.logged_epoch = 0  # the last epoch the MLflow run has (a resumed run logs only later ones)
        self.broken = False
        self.points: IterationPoints | None = None
        try:
            if self.run_id is None:
                self.client.search_experiments(max_results=1)  # the server answers
            else:
                self.client.update_run(self.run_id, status="RUNNING")
                self.logged_epoch = max(
                    (m.step for m in self.client.get_metric_history(self.run_id, "valid_loss")), default=0
                )
        except self.errors as error:
            raise FmtkError(f"track=mlflow: the tracking server {self.uri} {_failure(error)}") from None

    def begin(self, recipe: Recipe, config: Mapping[str, Any]) -> None:
        """Make the MLflow run of a new run folder (its values as parameters, tags saying where it
        came from; a trial of ``fmtk tune``: a child of the study's) and record its id in
        ``tracking.json``; a resumed one already has it."""
        if self.run_id is not None:
            self.echo(f"tracking: MLflow run {self.run_id} at {self.uri}, after epoch {self.logged_epoch}")
            return
        tags, study = run_tags(recipe, config, self.run_dir), read_tracking(self.run_dir.parent)
        if study.get("study"):
            tags["mlflow.parentRunId"] = study["run_id"]
        params = {key: _param(value) for key, value in hparam_values(recipe).items()}
        self._create(study.get("experiment") or recipe.name, tags, params)

    def begin_study(self, recipe: Recipe, space: Mapping[str, str], metric: str, trials: int) -> None:
        """The parent MLflow run of an ``fmtk tune`` study in this (study) folder: its trials' MLflow
        runs are its children."""
        if self.run_id is not None:
            self.echo(f"tracking: MLflow run {self.run_id} at {self.uri} (the study's, going on)")
            return
        tags = {"fmtk.recipe": recipe.name, "fmtk.study": str(self.run_dir.resolve())}
        params = {
            **{f"space.{key}": spec for key, spec in space.items()},
            "metric": metric,
            "trials": str(trials),
        }
        self._create(recipe.name, tags, params, study=True)

    def _create(
        self, experiment: str, tags: dict[str, str], params: dict[str, str], study: bool = False
    ) -> None:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment
        try:
            found = self.client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, tags=tags, run_name=self.run_dir.name)
            self.run_id = run.info.run_id
            pairs = list(params.items())
            for first in range(0, len(pairs), 100):  # MLflow takes 100 parameters a call
                self.client.log_batch(self.run_id, params=_params(pairs[first : first + 100]))
        except self.errors as error:
            raise FmtkError(f"track=mlflow: the tracking server {self.uri} {_failure(error)}") from None
        recorded = {"tracker": "mlflow", "uri": self.uri, "experiment": name, "run_id": self.run_id}
        write_json(self.run_dir / TRACKING_JSON, {**recorded, **({"study": True} if study else {})})
        self.echo(f"tracking: MLflow run {self.run_id} at {self.uri} (experiment {name})")

    def attach(
        self, trainer: Engine, optimizer: torch.optim.Optimizer, history: list[dict[str, float]], every: int
    ) -> None:
        """The loss and LR every ``every`` iterations, and each epoch's row of ``history`` (metrics.csv's),
        logged at the epoch's end in one batch."""
        self.points = IterationPoints(optimizer)
        every_iterations(trainer, every, self.points.keep)
        self.history = history
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)

    def log_epoch(self, engine: Engine) -> None:
        points, row = self.points.take(), self.history[-1]
        epoch = int(row["epoch"])
        if self.broken or epoch <= self.logged_epoch:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric("train_loss_iteration", loss, now, iteration) for iteration, loss, _ in points]
        metrics += [Metric("lr_iteration", lrs[0], now, iteration) for iteration, _, lrs in points]
        # The epoch's row last: an MLflow run that has its valid_loss has the whole epoch.
        metrics += [Metric(key, float(value), now, epoch) for key, value in row.items() if key != "epoch"]
        if self._log(metrics):
            self.logged_epoch = epoch

    def finish(
        self, results: Mapping[str, Any], files: tuple[str, ...] = (CONFIG, METRICS_JSON, METRICS_CSV)
    ) -> None:
        """The test figures (``test_best_accuracy``, …, at the last epoch), why a handler stopped the
        run (``fmtk.stopped_by``: a pruned trial's ``pruned``), the run's ``files`` and pictures, and
        the MLflow run marked finished."""
        from mlflow.entities import Metric

        now, epoch = int(time.time() * 1000), int(results.get("epochs_run") or self.logged_epoch)
        figures = [
            Metric(f"test_{which}_{name}", float(value), now, epoch)
            for which, tested in results.get("test", {}).items()
            for name, value in tested.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
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
            self._lost(error)

    def finish_study(self, metric: str, best_value: float, best_trial: int, files: tuple[str, ...]) -> None:
        """A study's parent run: its best value (``best_<metric>``), best trial, files, finished."""
        from mlflow.entities import Metric

        if self._log([Metric(f"best_{metric}", float(best_value), int(time.time() * 1000), 0)]):
            self.finish({"stopped_by": None}, files)
            if not self.broken:
                try:
                    self.client.set_tag(self.run_id, "fmtk.best_trial", str(best_trial))
                except self.errors as error:
                    self._lost(error)

    def end(self, status: str) -> None:
        """Mark the MLflow run ``FAILED`` or ``KILLED`` (a run stopped by an error or Ctrl-C)."""
        if self.run_id is not None and not self.broken:
            try:
                self.client.set_terminated(self.run_id, status)
            except self.errors as error:
                self._lost(error)

    def _log(self, metrics: list) -> bool:
        if self.broken:
            return False
        try:
            for first in range(0, len(metrics), BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[first : first + BATCH])
        except self.errors as error:
            self._lost(error)
            return False
        return True

    def _lost(self, error: BaseException) -> None:
        self.broken = True
        self.echo(
            f"warning: track=mlflow: the tracking server {self.uri} {_failure(error)}; the run goes on "
            f"without it, everything is in {self.run_dir} as always"
        )


def open_tracker(recipe: Recipe, run_dir: Path, echo: Callable[[str], None]) -> MlflowTracker | None:
    """The tracker the recipe asks for (``track``), connected; None for ``none``."""
    return MlflowTracker(run_dir, echo) if recipe.track == "mlflow" else None


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
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 1] + "…"


def _params(pairs: list[tuple[str, str]]) -> list:
    from mlflow.entities import Param

    return [Param(key, value) for key, value in pairs]


def _failure(error: BaseException) -> str:
    """What went wrong, in a few words: MLflow's messages hold a whole retry history."""
    text = str(error)
    if "Connection refused" in text or "Max retries exceeded" in text:
        return "cannot be reached (connection refused)"
    if "timed out" in text.lower():
        return "does not answer (timed out)"
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    return f"failed: {first[:200]}"
