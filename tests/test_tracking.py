"""--track mlflow against a real MLflow tracking server (``mlflow server`` over SQLite on a free port,
as teams run it): what a run logs, one MLflow run across SIGKILL and --resume, a server that goes
away mid-run, one that cannot be reached, MLflow not installed, a study, 2 processes; and --track
wandb in W&B's offline mode, its files read back."""

from __future__ import annotations

import csv
import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_one_line_error, fmtk_process, make_mnist_like, make_photos
from conftest import fmtk as fmtk_here

mlflow = pytest.importorskip("mlflow")  # the track extra, in test: CI has it

HANDLERS = """
import os
import signal
import time
import urllib.request

from ignite.engine import Events


def at_iteration(run, iteration, action):
    @run.trainer.on(Events.ITERATION_COMPLETED(once=iteration))
    def act(engine):
        action()


def sigkill_mid_epoch_3(run):
    at_iteration(run, 2 * 20 + 7, lambda: os.kill(os.getpid(), signal.SIGKILL))


def sigkill_2_s_into_epoch_3(run):  # W&B writes its file every second: what it had is in it
    at_iteration(run, 2 * 20 + 7, lambda: time.sleep(2) or os.kill(os.getpid(), signal.SIGKILL))


def stop_server_in_epoch_2(run):
    def stop():
        os.killpg(int(os.environ["TEST_SERVER_GROUP"]), signal.SIGTERM)
        for _ in range(200):  # until it no longer answers (it is the test's child: not reaped here)
            try:
                urllib.request.urlopen(os.environ["MLFLOW_TRACKING_URI"] + "/health", timeout=1).close()
            except OSError:
                return
            time.sleep(0.1)

    at_iteration(run, 20 + 3, stop)


def ctrl_c_in_epoch_2(run):
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (tests start it ignored)
    at_iteration(run, 20 + 3, lambda: os.kill(os.getpid(), signal.SIGINT))


def error_in_epoch_2(run):
    def fail():
        raise RuntimeError("a handler's bug")

    at_iteration(run, 20 + 3, fail)
"""
# fmnist_dnn on 1,000 small images, batch 50: 20 steps an epoch; dropout, BatchNorm, Adam, the plateau.
# A per-iteration point every 5 steps: the killed run has kept points of epoch 3 that it never logged.
RECIPE = ["fmnist_dnn", "--epochs", "4", "--batch-size", "50", "--set", "plateau_patience=1", "--set",
          "log_every=5", "--track", "mlflow"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """``mlflow server`` over a SQLite file in ``folder``, its artifacts served by it, one worker;
    stopped with its whole process group."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{port or free_port()}"
        command = [
            str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
            "--port", self.uri.rsplit(":", 1)[1], "--workers", "1",
            "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
            "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
        ]  # fmt: skip
        # No job runner: it starts worker processes that outlive a stopped server.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.log = (folder / "server.log").open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracking")
    make_mnist_like(root / "data", "FashionMNIST", train=1200, test=300, bar=68)
    (root / "trackers.py").write_text(HANDLERS)
    return root


@pytest.fixture(scope="module")
def server(workspace: Path) -> Iterator[Server]:
    running = Server(workspace / "server")
    yield running
    running.stop()


def tracked(
    workspace: Path, uri: str, experiment: str, *args: str, **env: str
) -> subprocess.CompletedProcess:
    """``fmtk run ARGS`` on the workspace's data logging to ``uri``, in a new process (a real
    environment; a SIGKILL kills only it)."""
    environment = {**os.environ, "PYTHONPATH": str(workspace), "MLFLOW_TRACKING_URI": uri,
                   "MLFLOW_EXPERIMENT_NAME": experiment, **env}  # fmt: skip
    return fmtk_process("run", *args, "--data-dir", str(workspace / "data"), cwd=workspace, env=environment)


def mlflow_run(uri: str, run_dir: Path):
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    client = mlflow.MlflowClient(uri)
    return client, client.get_run(run_id)


def histories(uri: str, run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric the MLflow run holds: its (step, value) points in step order."""
    client, run = mlflow_run(uri, run_dir)
    return {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }


def test_a_tracked_run_logs_its_values_epochs_tests_and_files(
    workspace: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "plain")
    result = fmtk_here("run", "digits_mlp", "--epochs", "2", "--run-dir", "plain", "--device", "cpu",
                       "--track", "mlflow", "--track-model", cwd=workspace)  # fmt: skip
    assert result.returncode == 0, result.stderr
    run_dir = workspace / "plain"
    client, run = mlflow_run(server.uri, run_dir)
    assert f"tracking: MLflow run {run.info.run_id} at {server.uri} (experiment plain)" in result.stdout
    assert (run.info.status, run.info.run_name) == ("FINISHED", "plain")
    assert client.get_experiment(run.info.experiment_id).name == "plain"
    assert run.data.params["lr"] == "0.01" and run.data.params["recipe"] == "digits_mlp"
    assert run.data.tags["fmtk.recipe"] == "digits_mlp"
    assert run.data.tags["fmtk.run_dir"] == str(run_dir.resolve())
    assert json.loads(run.data.tags["fmtk.changed"]) == {"epochs": 2, "track": "mlflow", "track_model": True}
    history = histories(server.uri, run_dir)
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    for column, name in enumerate(rows[0][1:], start=1):
        assert history[name] == [(int(row[0]), float(row[column])) for row in rows[1:]]
    # digits_mlp: 34 steps an epoch, a point every 10 (log_every): steps 10, 20, 30, 40, 50, 60.
    assert [step for step, _ in history["train_loss_iteration"]] == [10, 20, 30, 40, 50, 60]
    assert [step for step, _ in history["lr_iteration"]] == [10, 20, 30, 40, 50, 60]
    tested = json.loads((run_dir / "metrics.json").read_text())["test"]
    for which in ("best", "last"):
        for name in ("accuracy", "loss"):
            assert history[f"test_{which}_{name}"] == [(2, tested[which][name])]
    files = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {
        "config.json",
        "metrics.json",
        "metrics.csv",
        "curves.png",
        "confusion_best.png",
        "top_losses.png",
    } <= files
    # --track-model: the best checkpoint as fmtk export makes it, with its parity report, and said first
    assert {"model.onnx", "model.onnx.json"} <= files and (run_dir / "model.onnx").is_file()
    assert "track_model: exporting best_checkpoint_" in result.stdout
    logged = Path(client.download_artifacts(run.info.run_id, "model.onnx.json", str(workspace)))
    assert json.loads(logged.read_text()) == json.loads((run_dir / "model.onnx.json").read_text())

    # A longer run from it finds a better checkpoint: its export replaces the earlier best's, there and
    # in MLflow (the earlier best checkpoint is gone).
    earlier = json.loads((run_dir / "model.onnx.json").read_text())["metadata"]["checkpoint"]
    longer = fmtk_here("run", "--resume", "plain", "--epochs", "3", cwd=workspace)
    assert longer.returncode == 0, longer.stderr
    best = json.loads((run_dir / "metrics.json").read_text())["checkpoints"]["best"]
    assert best.startswith("best_checkpoint_3_") and earlier.startswith("best_checkpoint_2_")
    assert f"track_model: model.onnx now holds {best} (it held {earlier}, an earlier best)" in longer.stdout
    assert json.loads((run_dir / "model.onnx.json").read_text())["metadata"]["checkpoint"] == best
    _, run = mlflow_run(server.uri, run_dir)  # the parameter stays the first start's; the tag is now's
    assert run.data.params["epochs"] == "2" and json.loads(run.data.tags["fmtk.changed"])["epochs"] == 3
    logged = Path(client.download_artifacts(run.info.run_id, "model.onnx.json", str(workspace / "longer")))
    assert json.loads(logged.read_text())["metadata"]["checkpoint"] == best
    assert not [path.name for path in run_dir.iterdir() if path.name.startswith(".")]  # nothing set aside


@pytest.mark.slow
def test_sigkill_and_resume_make_one_mlflow_run_with_an_uninterrupted_runs_history(
    workspace: Path, server: Server
) -> None:
    straight = tracked(workspace, server.uri, "resume", *RECIPE, "--run-dir", "straight")
    assert straight.returncode == 0, straight.stderr
    killed = tracked(workspace, server.uri, "resume", *RECIPE, "--run-dir", "killed",
                     "--handler", "trackers:sigkill_mid_epoch_3")  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # Epochs 1 and 2 are in the MLflow run, epoch 3 is not: killed before its end.
    assert {step for step, _ in histories(server.uri, workspace / "killed")["valid_loss"]} == {1, 2}
    resumed = tracked(workspace, server.uri, "resume", "--resume", "killed")
    assert resumed.returncode == 0, resumed.stderr
    _, run = mlflow_run(server.uri, workspace / "killed")
    assert f"tracking: MLflow run {run.info.run_id} at {server.uri}, after epoch 2" in resumed.stdout
    assert run.info.status == "FINISHED"
    expected, got = histories(server.uri, workspace / "straight"), histories(server.uri, workspace / "killed")
    # Every figure, point by point; of the seconds each epoch trained, the epochs.
    seconds = [[step for step, _ in history.pop("epoch_seconds")] for history in (expected, got)]
    assert got == expected and seconds == [[1, 2, 3, 4]] * 2
    assert [step for step, _ in expected["valid_loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in expected["train_loss_iteration"]] == list(range(5, 81, 5))
    experiment = mlflow.MlflowClient(server.uri).get_experiment_by_name("resume")
    runs = mlflow.MlflowClient(server.uri).search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["killed", "straight"]  # one MLflow run each


@pytest.mark.slow
def test_a_server_that_goes_away_mid_run_costs_one_line_and_nothing_else(
    workspace: Path, tmp_path: Path
) -> None:
    gone = Server(tmp_path / "server")
    try:
        result = tracked(workspace, gone.uri, "gone", *RECIPE, "--run-dir", "gone",
                         "--handler", "trackers:stop_server_in_epoch_2",
                         TEST_SERVER_GROUP=str(gone.process.pid))  # fmt: skip
    finally:
        gone.stop()
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning: track=mlflow")]
    assert warnings == [
        f"warning: track=mlflow: the tracking server {gone.uri} cannot be reached (connection refused); the "
        f"run goes on without it, everything is in gone as always"
    ]
    run_dir = workspace / "gone"
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 1 + 4
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 4

    # Still gone: a resume is one line that names the way on without it (before: none, --track refused).
    refused = tracked(workspace, gone.uri, "gone", "--resume", "gone", "--epochs", "5")
    assert_one_line_error(refused, "cannot be reached", "; or go on without it this time: --track none")
    untracked = tracked(workspace, gone.uri, "gone", "--resume", "gone", "--epochs", "5", "--track", "none")
    assert untracked.returncode == 0, untracked.stderr
    assert "tracking: not in mlflow this time (--track none); a later --resume with it sends the epochs it " \
           "missed" in untracked.stdout.splitlines()  # fmt: skip

    # The server back, a resume for one more epoch: the MLflow run gets the epochs it missed too.
    back = Server(tmp_path / "server", port=int(gone.uri.rsplit(":", 1)[1]))
    try:
        resumed = tracked(workspace, back.uri, "gone", "--resume", "gone", "--epochs", "6")
        assert resumed.returncode == 0, resumed.stderr
        got = histories(back.uri, run_dir)
        _, run = mlflow_run(back.uri, run_dir)
    finally:
        back.stop()
    assert [step for step, _ in got["valid_loss"]] == [1, 2, 3, 4, 5, 6] and run.info.status == "FINISHED"
    with (run_dir / "metrics.csv").open() as file:
        assert [value for _, value in got["valid_loss"]] == [
            float(row["valid_loss"]) for row in csv.DictReader(file)
        ]


@pytest.mark.slow
def test_a_run_stopped_by_ctrl_c_is_killed_in_mlflow_and_one_stopped_by_an_error_failed(
    workspace: Path, server: Server
) -> None:
    for handler, status in [("ctrl_c_in_epoch_2", "KILLED"), ("error_in_epoch_2", "FAILED")]:
        result = tracked(workspace, server.uri, "ended", *RECIPE, "--run-dir", handler,
                         "--handler", f"trackers:{handler}")  # fmt: skip
        assert result.returncode == (130 if status == "KILLED" else 1), result.stderr
        _, run = mlflow_run(server.uri, workspace / handler)
        assert run.info.status == status
        assert {step for step, _ in histories(server.uri, workspace / handler)["valid_loss"]} == {1}
    resumed = tracked(workspace, server.uri, "ended", "--resume", "ctrl_c_in_epoch_2")
    assert resumed.returncode == 0, resumed.stderr
    _, run = mlflow_run(server.uri, workspace / "ctrl_c_in_epoch_2")
    assert run.info.status == "FINISHED"  # the same MLflow run, finished by the resumed run
    assert [step for step, _ in histories(server.uri, workspace / "ctrl_c_in_epoch_2")["valid_loss"]] == [
        1, 2, 3, 4
    ]  # fmt: skip


class NotMlflow(http.server.BaseHTTPRequestHandler):
    """A web server's 404 page for every request."""

    def answer(self) -> None:
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(b"<!doctype html>\n<html><body><h1>Not Found</h1></body></html>\n")

    do_GET = do_POST = answer

    def log_message(self, *args: object) -> None:  # quiet
        pass


def test_a_tracking_server_that_cannot_be_reached_is_one_line_before_anything_trains(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    started = time.monotonic()
    result = fmtk_here("run", "digits_mlp", "--output-dir", "unreached", "--track", "mlflow", cwd=workspace)
    assert_one_line_error(result, "track=mlflow: the tracking server http://127.0.0.1:", "cannot be reached")
    assert time.monotonic() - started < 30  # MLflow's own retries would take ~4 minutes
    assert not (workspace / "unreached").exists()  # no run folder left behind
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nonsense://x")
    result = fmtk_here("run", "digits_mlp", "--output-dir", "unreached", "--track", "mlflow", cwd=workspace)
    assert_one_line_error(
        result, "track=mlflow: the tracking server nonsense://x is not a tracking URI MLflow"
    )
    assert not (workspace / "unreached").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (workspace / "mlruns").as_uri())  # MLflow's old file store
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = fmtk_here("run", "digits_mlp", "--output-dir", "unreached", "--track", "mlflow", cwd=workspace)
    assert_one_line_error(
        result,
        "is a folder (MLflow's file store), which MLflow refuses now",
        "or set MLFLOW_ALLOW_FILE_STORE=true",
    )
    assert not (workspace / "unreached").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "127.0.0.1:5055")  # no scheme: MLflow takes it for a folder
    result = fmtk_here("run", "digits_mlp", "--output-dir", "unreached", "--track", "mlflow", cwd=workspace)
    assert_one_line_error(
        result, "track=mlflow: the tracking URI 127.0.0.1:5055 has no scheme: http://127.0.0.1:5055?"
    )
    # A web server that is not MLflow's (or MLflow's under a wrong path): its 404 page, not its HTML.
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotMlflow) as site:
        threading.Thread(target=site.serve_forever, daemon=True).start()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{site.server_address[1]}/ajax-api")
        result = fmtk_here(
            "run", "digits_mlp", "--output-dir", "unreached", "--track", "mlflow", cwd=workspace
        )
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"https://127.0.0.1:{site.server_address[1]}")  # http only
        https = fmtk_here(
            "run", "digits_mlp", "--output-dir", "unreached", "--track", "mlflow", cwd=workspace
        )
        site.shutdown()
    assert_one_line_error(
        result, "/ajax-api answers HTTP 404 (no MLflow API at this URL: give the server's root"
    )
    assert_one_line_error(https, "cannot be reached (it does not speak https here: http://?)")
    assert not (workspace / "unreached").exists()


def test_a_deleted_mlflow_experiment_is_one_line_naming_it_before_the_data_loads(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = f"sqlite:///{workspace / 'deleted.db'}"
    client = mlflow.MlflowClient(uri)
    number = client.create_experiment("gone")
    client.delete_experiment(number)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "gone")
    result = fmtk_here("run", "digits_mlp", "--output-dir", "unreached", "--track", "mlflow", cwd=workspace)
    restore = f"MLFLOW_TRACKING_URI={uri} mlflow experiments restore -x {number}"
    assert_one_line_error(
        result, f"the experiment 'gone' at {uri} is deleted: restore it ({restore}) or name"
    )
    assert "train " not in result.stdout and not (workspace / "unreached").exists()  # before the data loads


def test_a_long_tracker_message_is_cut_after_a_whole_sentence() -> None:
    from fmtk.training.tracking import _failure

    sentence = "The server said no. " + "x" * 290 + ". Then more."
    assert _failure(RuntimeError(sentence)) == "failed: The server said no. …"
    assert _failure(RuntimeError("y" * 400)) == "failed: " + "y" * 300 + " …"


def test_the_git_commit_of_a_recipe_file_in_a_repository_is_a_tag(tmp_path: Path) -> None:
    from fmtk.training.tracking import git_commit

    recipe = tmp_path / "repo" / "my_recipe.py"
    recipe.parent.mkdir()
    recipe.write_text("# a recipe\n")
    assert git_commit(str(recipe)) is None and git_commit(None) is None  # not in a repository; bundled
    git = ["git", "-C", str(recipe.parent), "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "my_recipe.py"], ["commit", "-q", "-m", "recipe"]):
        subprocess.run([*git, *command], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
    assert git_commit(str(recipe)) == head.strip()


def test_without_mlflow_the_run_says_what_to_install(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: import fails
    result = fmtk_here("run", "digits_mlp", "--output-dir", "none", "--set", "track=mlflow", cwd=workspace)
    assert_one_line_error(result, "track=mlflow needs MLflow", ": pip install mlflow")
    assert not (workspace / "none").exists()
    resume = fmtk_here("run", "--resume", "nowhere", "--track", "mlflow", cwd=workspace)
    assert_one_line_error(resume, "--track cannot change it")
    untracked = fmtk_here("run", "digits_mlp", "--output-dir", "none", "--track-model", cwd=workspace)
    assert_one_line_error(untracked, "track_model logs the model to a tracker: set track")


@pytest.mark.slow
def test_a_tracked_study_is_a_parent_run_with_a_child_per_trial_the_pruned_one_marked(
    workspace: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_tune import SEARCH

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "study")
    result = fmtk_here(*SEARCH, "--track", "mlflow", "--study-dir", "study", cwd=workspace)  # or --set
    assert result.returncode == 0, result.stderr
    study = workspace / "study"
    client, parent = mlflow_run(server.uri, study)
    assert parent.info.status == "FINISHED" and parent.data.params["space.lr"] == "loguniform:0.0001:0.5"
    best = json.loads((study / "best.json").read_text())
    assert parent.data.metrics["best_valid_accuracy"] == best["value"]
    assert parent.data.tags["fmtk.best_trial"] == str(best["trial"])
    assert {"study.json", "best.json", "tune.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_name = {child.info.run_name: child for child in children}
    assert sorted(by_name) == ["trial_000", "trial_001", "trial_002", "trial_003"]
    assert by_name["trial_001"].data.tags["fmtk.stopped_by"] == "pruned"
    assert "fmtk.stopped_by" not in by_name["trial_000"].data.tags
    for name, child in by_name.items():
        assert child.data.params["lr"] == str(json.loads((study / name / "config.json").read_text())["lr"])


@pytest.mark.slow  # several processes, each importing torch
def test_two_processes_log_once_to_one_mlflow_run_also_when_resumed(workspace: Path, server: Server) -> None:
    two = ["--nproc-per-node", "2", "--device", "cpu"]
    first = tracked(workspace, server.uri, "two", "digits_mlp", "--epochs", "2", "--run-dir", "two",
                    "--track", "mlflow", *two)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("tracking: MLflow run") == 1  # rank 0's
    resumed = tracked(workspace, server.uri, "two", "--resume", "two", "--epochs", "3", *two)
    assert resumed.returncode == 0, resumed.stderr
    history = histories(server.uri, workspace / "two")
    assert [step for step, _ in history["valid_loss"]] == [1, 2, 3]  # each epoch once
    steps = [step for step, _ in history["train_loss_iteration"]]
    assert steps == list(range(10, 3 * 34 + 1, 10))  # 34 steps an epoch (of half batches), once each
    experiment = mlflow.MlflowClient(server.uri).get_experiment_by_name("two")
    assert len(mlflow.MlflowClient(server.uri).search_runs([experiment.experiment_id])) == 1


def test_the_docs_runs_table_example(
    workspace: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import python_script
    from test_docs import ROOT, python_block

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    (workspace / "runs_table.py").write_text(
        python_block("Reading runs back", 1, ROOT / "docs" / "tracking.md")
    )
    done = python_script(workspace / "runs_table.py", workspace)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["run", "status", "lr", "valid_acc", "test_acc"]
    assert [row.split()[1:3] for row in rows] == [["FINISHED", "0.01"], ["FINISHED", "0.05"]]


WANDB_RECORD = struct.Struct("<IHB")  # a .wandb file's record header: CRC, length, kind


def wandb_records(path: Path) -> Iterator[Any]:
    """The records of W&B's offline run file (``run-<id>.wandb``): LevelDB's log format (blocks of
    32 KiB, records split over them as FIRST, MIDDLE, LAST), each a ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data, position, pending = path.read_bytes(), 7, b""  # after its header: b":W&B", magic, version
    while position + WANDB_RECORD.size <= len(data):
        if 32768 - position % 32768 < WANDB_RECORD.size:  # a block's end too short for a header
            position += 32768 - position % 32768
            continue
        _, length, kind = WANDB_RECORD.unpack_from(data, position)
        if kind == 0 and length == 0:
            break
        chunk = data[position + WANDB_RECORD.size : position + WANDB_RECORD.size + length]
        position += WANDB_RECORD.size + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(folder: Path, run_id: str) -> list[tuple[int, str, float]]:
    """(step, key, value) of every point W&B logged offline for run ``run_id`` under ``folder``, in
    every folder of it (each start of a run, a resume too, is a folder of its own)."""
    points = []
    for run_file in sorted(folder.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb")):
        for record in wandb_records(run_file):
            if record.WhichOneof("record_type") == "history":
                named = [
                    (item.key or "/".join(item.nested_key), item.value_json) for item in record.history.item
                ]
                points += [(record.history.step.num, key, json.loads(value))
                           for key, value in named if not key.startswith("_")]  # fmt: skip
    return points


@pytest.mark.slow
def test_wandb_offline_sigkill_and_resume_log_an_uninterrupted_runs_history(workspace: Path) -> None:
    pytest.importorskip("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(workspace / "wb"), "WANDB_SILENT": "true"}
    wandb_recipe = [*RECIPE[:-1], "wandb"]
    straight = tracked(workspace, "", "", *wandb_recipe, "--run-dir", "wb_straight", **env)
    assert straight.returncode == 0, straight.stderr
    killed = tracked(workspace, "", "", *wandb_recipe, "--run-dir", "wb_killed",
                     "--handler", "trackers:sigkill_2_s_into_epoch_3", **env)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = tracked(workspace, "", "", "--resume", "wb_killed", **env)
    assert resumed.returncode == 0, resumed.stderr
    ids = {name: json.loads((workspace / name / "tracking.json").read_text())["run_id"]
           for name in ("wb_straight", "wb_killed")}  # fmt: skip
    assert (
        f"tracking: W&B run {ids['wb_killed']} of project fmnist_dnn (offline), after epoch 2"
        in resumed.stdout
    )
    for name in ("wb_straight", "wb_killed"):  # the run's files, in the W&B run that ended it
        files = {path.name for path in (workspace / "wb").glob(f"wandb/offline-run-*-{ids[name]}/files/*")}
        assert {"config.json", "metrics.json", "metrics.csv", "curves.png"} <= files, name
    expected, got = (  # a step's points in any order (W&B merges them into one row)
        sorted(point for point in wandb_history(workspace / "wb", ids[name]) if point[1] != "epoch_seconds")
        for name in ("wb_straight", "wb_killed")
    )
    assert got == expected
    assert sorted({step for step, key, _ in expected if key == "epoch"}) == [20, 40, 60, 80]
    assert [value for _, key, value in expected if key == "epoch"] == [1, 2, 3, 4]
    assert len([point for point in expected if point[1] == "train_loss_iteration"]) == 16


def test_wandb_without_a_login_or_offline_mode_is_one_line(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no `wandb login`
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    result = fmtk_here("run", "digits_mlp", "--output-dir", "unlogged", "--track", "wandb", cwd=workspace)
    assert_one_line_error(result, "track=wandb: no W&B login here", "WANDB_MODE=offline")
    assert not (workspace / "unlogged").exists()


def test_wandb_dir_is_made_before_wandb_warns_or_is_one_line_when_it_cannot_be(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(workspace / "not" / "yet"))
    made = fmtk_here("run", "digits_mlp", "--epochs", "1", "--run-dir", "made", "--track", "wandb",
                     cwd=workspace)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "does not exist" not in made.stderr  # W&B's "git root … does not exist" warning
    assert list((workspace / "not" / "yet" / "wandb").glob("offline-run-*"))
    (workspace / "a_file").write_text("")
    monkeypatch.setenv("WANDB_DIR", str(workspace / "a_file" / "wb"))
    result = fmtk_here("run", "digits_mlp", "--run-dir", "unmade", "--track", "wandb", cwd=workspace)
    bad = workspace / "a_file" / "wb"
    assert_one_line_error(result, f"$WANDB_DIR {bad}: cannot make it (Not a directory)")
    assert not (workspace / "unmade").exists() and "train " not in result.stdout  # before the data loads


def test_a_w_and_b_server_that_cannot_be_reached_is_one_line_before_the_data_loads(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """W&B itself waited a minute (its init_timeout), said "context deadline exceeded" and left a
    ./wandb folder."""
    pytest.importorskip("wandb")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    result = fmtk_here("run", "digits_mlp", "--run-dir", "unmade", "--track", "wandb", cwd=workspace)
    assert_one_line_error(
        result, f"track=wandb: the W&B server http://127.0.0.1:{port} cannot be reached (connection "
        "refused): check the network, or set WANDB_MODE=offline",
    )  # fmt: skip
    assert not (workspace / "unmade").exists() and not (workspace / "wandb").exists()
    assert "train " not in result.stdout


@pytest.mark.slow  # three processes, each importing torch
def test_photos_whose_names_are_not_utf8_are_tracked_as_a_terminal_shows_them(
    workspace: Path, server: Server
) -> None:
    """A Latin-1 zip unpacked on Linux: the folder's and a class folder's names are bytes that are not
    UTF-8; MLflow and W&B get them with U+FFFD (before, the run stopped: surrogates not allowed)."""
    photos = Path(os.fsdecode(bytes(workspace / "latin") + b"/caf\xe9"))
    make_photos(photos, {"ants": 8, os.fsdecode(b"f\xe9e"): 8})
    small = ["images", "--data-dir", str(photos), "--set", "image_size=16", "--set", "warmup_epochs=0",
             "--epochs", "1", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "MLFLOW_EXPERIMENT_NAME": "latin",
           "WANDB_MODE": "offline", "WANDB_DIR": str(workspace / "latin"),
           "WANDB_SILENT": "true"}  # fmt: skip
    for tracker in ("mlflow", "wandb"):
        done = fmtk_process("run", *small, "--track", tracker, "--run-dir", f"latin_{tracker}", cwd=workspace,
                            env=env, errors="replace")  # fmt: skip
        assert done.returncode == 0, done.stderr
    _, run = mlflow_run(server.uri, workspace / "latin_mlflow")
    assert run.data.params["classes"] == "['ants', 'f\ufffde']"
    assert f"--data-dir '{workspace / 'latin'}/caf\ufffd' " in run.data.tags["fmtk.command"]
    run_id = json.loads((workspace / "latin_wandb" / "tracking.json").read_text())["run_id"]
    [run_file] = (workspace / "latin").glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    [config] = [
        record.run.config for record in wandb_records(run_file) if record.WhichOneof("record_type") == "run"
    ]
    values = {item.key: json.loads(item.value_json) for item in config.update}
    assert values["classes"] == ["ants", "f\ufffde"], values["classes"]
    assert "caf\ufffd" in values["fmtk.command"]


def test_a_resume_given_its_own_tracker_again_goes_on_and_another_is_refused(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'own.db'}")
    run = ["--run-dir", "own", "--threads", "1"]
    assert (
        fmtk_here("run", "digits_mlp", "--epochs", "1", "--track", "mlflow", *run, cwd=workspace).returncode
        == 0
    )
    again = fmtk_here("run", "--resume", "own", "--epochs", "2", "--track", "mlflow", cwd=workspace)
    assert again.returncode == 0, again.stderr  # what it tracks in already: nothing to refuse
    assert json.loads((workspace / "own" / "metrics.json").read_text())["epochs_run"] == 2
    other = fmtk_here("run", "--resume", "own", "--epochs", "3", "--track", "wandb", cwd=workspace)
    assert_one_line_error(other, "--resume keeps the run's recipe; --track cannot change it")
    import fmtk as toolkit

    assert (
        len(toolkit.resume(workspace / "own", epochs=3, track="mlflow", quiet=True).history) == 3
    )  # Python too
    with pytest.raises(toolkit.FmtkError, match="^track='wandb': a resumed run keeps its tracker"):
        toolkit.resume(workspace / "own", epochs=4, track="wandb")
