"""fmtk tune: a search on digits_mlp end to end, every trial an ordinary run; pruning; a study
killed mid-trial (or right after a pruning decision) that resumes to exactly the uninterrupted
study; the Python API; several processes per trial; and the bad inputs, each one line."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error, fmtk, fmtk_process, tree_snapshot
from PIL import Image

# Trial 0 tries the recipe's own lr, trial 1 a hopeless one (pruned after epoch 1: the median
# pruner compares it with trial 0's), trial 2 trial 0's values again (never worse, so it completes:
# the mid-trial kill lands in it), trial 3 what TPE draws.
SEARCH = [
    "tune", "digits_mlp", "--trials", "4", "--space", "lr=loguniform:1e-4:0.5", "--space",
    "batch_size=choice:32,64", "--try", "lr=0.05,batch_size=32", "--try", "lr=0.0001,batch_size=32",
    "--try", "lr=0.05,batch_size=32", "--prune-after", "1", "--set", "epochs=3", "--device", "cpu",
]  # fmt: skip

KILLERS = """
import os
import signal

from ignite.engine import Events


def sigkill_mid_trial_2(run):  # in its second epoch
    if run.run_dir.name == "trial_002":
        at = len(run.data.train) + 3
        run.trainer.on(Events.ITERATION_COMPLETED(once=at))(lambda _: os.kill(os.getpid(), signal.SIGKILL))


def sigkill_after_pruning_trial_1(run):  # its checkpoints hold the decision; metrics.json not written
    if run.run_dir.name == "trial_001":
        run.trainer.on(Events.COMPLETED)(lambda _: os.kill(os.getpid(), signal.SIGKILL))


def ctrl_c_mid_trial_1(run):
    if run.run_dir.name == "trial_001":
        run.trainer.on(Events.ITERATION_COMPLETED(once=5))(lambda _: os.kill(os.getpid(), signal.SIGINT))


def ctrl_c_mid_trial_0(run):  # before the study has any checkpoint
    if run.run_dir.name == "trial_000":
        run.trainer.on(Events.ITERATION_COMPLETED(once=5))(lambda _: os.kill(os.getpid(), signal.SIGINT))


def record_values(run):  # each process of a trial: the values it trains with
    import ignite.distributed as idist

    rank = idist.get_rank()
    (run.run_dir / f"values_rank{rank}.json").write_text(
        '{"lr": %r, "batch_size": %d}' % (run.recipe.lr, run.recipe.batch_size)
    )
"""


def study_of(output_dir: Path) -> Path:
    (study,) = (output_dir / "tune" / "digits_mlp").iterdir()
    return study


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the timing column."""
    with (run_dir / "metrics.csv").open() as file:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(file)]


def trial_summary(study: Path) -> list[tuple]:
    """Each trial's folder, values, ending and figures: what an interrupted study must reproduce."""
    summary = []
    for trial in sorted(study.glob("trial_*")):
        config = json.loads((trial / "config.json").read_text())
        metrics = json.loads((trial / "metrics.json").read_text())
        ending = (metrics["epochs_run"], metrics["stopped_by"], metrics["checkpoints"], metrics["test"])
        summary.append((trial.name, config["changed"], ending, epoch_rows(trial)))
    return summary


def test_a_search_runs_its_trials_as_runs_prunes_a_hopeless_one_and_names_the_best(tmp_path: Path) -> None:
    result = fmtk(*SEARCH, "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    study = study_of(tmp_path / "runs")
    assert sorted(path.name for path in study.iterdir()) == [
        "best.json", "study.db", "study.json", "trial_000", "trial_001", "trial_002", "trial_003", "tune.png",
    ]  # fmt: skip
    configs = [json.loads((study / f"trial_00{n}" / "config.json").read_text()) for n in range(4)]
    assert [config["lr"] for config in configs] == [0.05, 0.0001, 0.05, configs[3]["lr"]]  # the tries first
    assert 1e-4 <= configs[3]["lr"] <= 0.5 and configs[3]["batch_size"] in (32, 64)
    assert all(config["epochs"] == 3 for config in configs)
    for trial in study.glob("trial_*"):  # ordinary run folders
        assert {"config.json", "metrics.csv", "metrics.json"} <= {path.name for path in trial.iterdir()}
        assert list(trial.glob("best_checkpoint_*.pt")) and list(trial.glob("last_checkpoint_*.pt"))
        assert list(trial.glob("events.out.tfevents.*"))

    metrics = [json.loads((study / f"trial_00{n}" / "metrics.json").read_text()) for n in range(4)]
    assert metrics[1]["stopped_by"] == "pruned" and metrics[1]["epochs_run"] == 1
    assert metrics[1]["stopped_early"] is False  # pruned, not early-stopped: RunStop says which
    assert metrics[0]["stopped_by"] is None and metrics[2]["stopped_by"] is None
    assert epoch_rows(study / "trial_000") == epoch_rows(study / "trial_002")  # same values, same run
    assert "pruned after epoch 1: valid accuracy" in result.stdout
    table = fmtk("runs", str(study), cwd=tmp_path)
    states = {line.split()[0]: line.split()[-1] for line in table.stdout.splitlines()[1:]}
    assert states["trial_001"] == "pruned" and states["trial_000"] == "finished"
    resumed = fmtk("run", "--resume", str(study / "trial_001"), cwd=tmp_path)  # the decision is kept
    assert resumed.returncode == 0 and "is finished: pruned at epoch 1" in resumed.stdout

    # best.json against the trials' own metrics.json
    best = json.loads((study / "best.json").read_text())
    complete = [n for n in range(4) if metrics[n]["stopped_by"] is None]
    top = max(metrics[n]["best_valid_accuracy"] for n in complete)
    winner = min(n for n in complete if metrics[n]["best_valid_accuracy"] == top)
    assert (best["trial"], best["run"], best["value"]) == (winner, f"trial_00{winner}", top)
    assert best["trials"] == {"complete": len(complete), "pruned": 4 - len(complete), "fail": 0}
    assert best["test_accuracy"] == metrics[winner]["test"]["best"]["accuracy"]
    assert isinstance(best["values"]["batch_size"], int)  # typed as the run's config.json holds it
    assert f"best: trial {winner} (trial_00{winner}), valid_accuracy" in result.stdout
    # The command best.json gives trains the best trial again, to the same figures.
    again = fmtk(*best["command"].split()[1:], "--output-dir", str(tmp_path / "again"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    (rerun,) = (tmp_path / "again" / "digits_mlp").iterdir()
    assert epoch_rows(rerun) == epoch_rows(study / best["run"])
    with Image.open(study / "tune.png") as picture:
        # the trials (their legend under them when every corner of the plot is taken), then lr and
        # batch_size side by side
        assert picture.width == 720 and picture.height >= 440 + 250


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["sigkill_mid_trial_2", "sigkill_after_pruning_trial_1"])
def test_a_killed_study_resumes_to_exactly_the_uninterrupted_one(tmp_path: Path, kill: str) -> None:
    (tmp_path / "killers.py").write_text(KILLERS)
    straight = fmtk(*SEARCH, "--study-dir", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    killed = fmtk_process(
        *SEARCH, "--study-dir", "killed", "--handler", f"killers:{kill}", cwd=tmp_path, env=env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    study = tmp_path / "killed"
    interrupted = "trial_002" if kill == "sigkill_mid_trial_2" else "trial_001"
    finished = sorted(path.name for path in study.glob("trial_*") if path.name < interrupted)
    finished_before = {name: tree_snapshot(study / name) for name in finished}

    resumed = fmtk("tune", "--resume", "killed", "--device", "cpu", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trial {interrupted[-1]}: resuming" in resumed.stdout
    assert "resuming after epoch 1 from last_checkpoint_1.pt" in resumed.stdout
    assert trial_summary(study) == trial_summary(tmp_path / "straight")
    for name, files in finished_before.items():  # finished trials are not run again
        assert tree_snapshot(study / name) == files
    best, best_straight = (
        json.loads((folder / "best.json").read_text()) for folder in (study, tmp_path / "straight")
    )
    assert {k: v for k, v in best.items() if k != "command" and k != "train_seconds"} == {
        k: v for k, v in best_straight.items() if k != "command" and k != "train_seconds"
    }


@pytest.mark.slow
@pytest.mark.parametrize("trial", [1, 0])
def test_ctrl_c_in_a_trial_says_how_to_go_on(tmp_path: Path, trial: int) -> None:
    """Also in the first trial's first epoch, before any checkpoint: the study folder is kept (it
    went, although the line named it to go on with)."""
    (tmp_path / "killers.py").write_text(KILLERS)
    search = ["tune", "digits_mlp", "--trials", "2", "--space", "lr=loguniform:0.01:0.5", "--set", "epochs=2",
              "--device", "cpu", "--study-dir", "study"]  # fmt: skip
    # Ctrl-C as from a terminal, also when the tests run in the background (SIGINT ignored there)
    stopped = fmtk_process(*search, "--handler", f"killers:ctrl_c_mid_trial_{trial}", cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(tmp_path)},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == "interrupted; go on with: fmtk tune --resume study"
    resumed = fmtk("tune", "--resume", "study", "--device", "cpu", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"trial {trial}: resuming" in resumed.stdout and "2 trials: 2 complete" in resumed.stdout
    if trial == 1:  # the last trial: resuming it is all the study had left to do
        assert "as many as --trials 2 asks: its interrupted trial ended, no new one" in resumed.stdout


def test_from_python_a_study_returns_the_best_values_and_goes_on_with_more_trials(tmp_path: Path) -> None:
    import fmtk as toolkit

    space = {"lr": "loguniform:0.01:0.5", "hidden": [32, 64]}
    result = toolkit.tune(
        "digits_mlp", trials=2, space=space, epochs=2, output_dir=tmp_path, device="cpu", quiet=True
    )
    assert [row["trial"] for row in result.trials] == [0, 1]
    assert all(row["state"] == "complete" and 0.01 <= row["lr"] <= 0.5 for row in result.trials)
    assert set(result.best_values) == {"lr", "hidden"} and isinstance(result.best_values["hidden"], int)
    assert result.best_value == max(row["value"] for row in result.trials)
    assert result.best_run == result.study_dir / f"trial_{result.best_trial:03d}"
    more = toolkit.tune(resume=result.study_dir, trials=3, device="cpu", quiet=True)
    assert [row["trial"] for row in more.trials] == [0, 1, 2]
    assert more.trials[:2] == result.trials  # not run again


@pytest.mark.parametrize("epochs", [4, 3], ids=["judged-at-epoch-3-of-4", "judged-at-its-last-epoch"])
def test_no_trial_is_pruned_in_its_warm_up_epochs_nor_at_its_last(tmp_path: Path, epochs: int) -> None:
    import fmtk as toolkit

    # The hopeless lr that the search above prunes after epoch 1 is judged after epoch 3 here; of 3
    # epochs, it has trained them all: complete.
    result = toolkit.tune(
        "digits_mlp", trials=2, space={"lr": "loguniform:1e-4:0.5"}, tries=[{"lr": 0.05}, {"lr": 0.0001}],
        prune_after=1, prune_warmup=2, epochs=epochs, output_dir=tmp_path, device="cpu", quiet=True,
    )  # fmt: skip
    last = epochs == 3
    assert [row["state"] for row in result.trials] == ["complete", "complete" if last else "pruned"]
    metrics = json.loads((result.study_dir / "trial_001" / "metrics.json").read_text())
    assert metrics["stopped_by"] == (None if last else "pruned") and metrics["epochs_run"] == 3
    assert json.loads((result.study_dir / "study.json").read_text())["pruning"]["warmup"] == 2
    with pytest.raises(toolkit.FmtkError, match=r"^prune_warmup=-1: expected a whole number, 0 or more$"):
        toolkit.tune("digits_mlp", trials=1, space={"lr": "loguniform:1e-4:0.5"}, prune_warmup=-1)


@pytest.mark.slow
def test_each_process_of_a_trial_trains_with_the_values_drawn_once(tmp_path: Path) -> None:
    (tmp_path / "killers.py").write_text(KILLERS)
    search = ["tune", "digits_mlp", "--trials", "2", "--space", "lr=loguniform:0.01:0.5", "--space",
              "batch_size=choice:32,64", "--set", "epochs=2", "--device", "cpu",
              "--nproc-per-node", "2"]  # fmt: skip
    result = fmtk(*search, "--study-dir", "study", "--handler", "killers:record_values", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for trial in sorted((tmp_path / "study").glob("trial_*")):
        config = json.loads((trial / "config.json").read_text())
        assert config["processes"] == 2
        ranks = [json.loads((trial / f"values_rank{rank}.json").read_text()) for rank in (0, 1)]
        assert ranks[0] == ranks[1] == {"lr": config["lr"], "batch_size": config["batch_size"]}


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--space", "lrr=uniform:0.1:1"], "unknown recipe key 'lrr'"),
        (["--space", "lr=gauss:0.1:1"], "--space lr=gauss:0.1:1: expected loguniform:LOW:HIGH"),
        (["--space", "lr=uniform:0.5:0.1"], "--space lr=uniform:0.5:0.1: LOW must be below HIGH"),
        (["--space", "lr=uniform:0.1"], "expected uniform:LOW:HIGH with LOW and HIGH numbers"),
        (["--space", "lr=loguniform:0:1"], "a log scale needs LOW > 0"),
        (["--space", "lr=uniform:-1:1"], "lr=uniform:-1:1: recipe digits_mlp: lr must be > 0, got -1.0"),
        (["--space", "batch_size=uniform:16:64"], "batch_size=uniform:16:64: batch_size=16.0: expected int"),
        (["--space", "lr=uniform:0.1:1", "--trials", "0"], "--trials 0: a study needs at least 1 trial"),
        (["--space", "lr=uniform:0.1:1", "--set", "lr=0.2"], "lr: both searched (--space) and set"),
        (["--space", "lr=uniform:0.1:1", "--try", "lr=5"], "lr=5 is outside --space lr=uniform:0.1:1"),
        (["--space", "lr=uniform:0.1:1", "--try", "epochs=5"], "expected KEY=VALUE pairs of the searched"),
        (["--space", "lr=uniform:0.1:1", "--try", ""], "--try '': give KEY=VALUE pairs of the searched keys"),
        (["--space", "lr=uniform:0.1:1", "--try", "lr=abc"], "--try lr=abc: lr=abc is not a number"),
        (["--space", "lr=uniform:0.1:1", "--try", "lr=0.2,lr=0.3"], "--try lr=0.2,lr=0.3: lr is given twice"),
        (["--space", "hidden=choice:32"], "one choice searches nothing; give two or more, or --set"),
        (["--space", "lr=uniform:0.1:1", "--metric", "f1"], "--metric f1: not a validation metric"),
        (["--space", "lr=uniform:0.1:1", "--space", "lr=uniform:0.2:1"], "--space: a key is given twice"),
        ([], "give at least one --space KEY=SPEC"),
        # what each trial would fail on
        (["--space", "lr=uniform:0.1:1", "--backend", "gloo"], "--backend gloo needs --nproc-per-node 2"),
        (["--space", "lr=uniform:0.1:1", "--handler", "nosuch:f"], "--handler nosuch:f: cannot import"),
    ],
)  # fmt: skip
def test_a_bad_search_is_one_line_before_any_trial(
    tmp_path: Path, arguments: list[str], fragment: str
) -> None:
    trials = [] if "--trials" in arguments else ["--trials", "2"]
    result = fmtk("tune", "digits_mlp", *trials, *arguments, "--device", "cpu", cwd=tmp_path)
    assert_one_line_error(result, fragment)
    assert list(tmp_path.iterdir()) == []  # no study folder


def test_a_study_folder_is_new_or_resumed_never_mixed(tmp_path: Path) -> None:
    from dataclasses import asdict

    from fmtk.tuning.study import StudyRequest

    other = tmp_path / "other"
    other.mkdir()
    (other / "study.json").write_text(
        json.dumps(asdict(StudyRequest("mnist_dnn", {"lr": "uniform:0.1:1"}, 3)))
    )
    before = tree_snapshot(tmp_path)
    search = ["tune", "digits_mlp", "--trials", "1", "--space", "lr=uniform:0.1:1", "--device", "cpu"]
    assert_one_line_error(
        fmtk(*search, "--study-dir", "other", cwd=tmp_path), "other holds a study of mnist_dnn"
    )
    assert_one_line_error(fmtk("tune", "--resume", "other", "--space", "lr=uniform:0.1:1", cwd=tmp_path),
                          "--resume keeps the study's search; --space cannot change it")  # fmt: skip
    judged = fmtk("tune", "--resume", "other", "--metric", "loss", "--no-prune", cwd=tmp_path)
    assert_one_line_error(judged, "--resume keeps the study's search; --metric, --prune/--no-prune cannot")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    assert_one_line_error(
        fmtk("tune", "--resume", "run", cwd=tmp_path), "not a study folder (it has no study.json)"
    )
    assert_one_line_error(
        fmtk("tune", "--resume", "nowhere", cwd=tmp_path), "--resume nowhere: no such folder"
    )
    assert_one_line_error(
        fmtk(*search, "--study-dir", "run/config.json", cwd=tmp_path), "--study-dir run/config.json is a file"
    )
    neither = fmtk("tune", "--trials", "2", cwd=tmp_path)
    assert neither.returncode == 2 and "give a RECIPE to start a study" in neither.stderr
    assert_one_line_error(fmtk("tune", "digits_mlp", "--resume", "run", cwd=tmp_path),
                          "RECIPE digits_mlp and --resume run: give one")  # fmt: skip
    assert tree_snapshot(tmp_path) == {
        **before,
        "run/config.json": tree_snapshot(tmp_path)["run/config.json"],
    }


@pytest.fixture(scope="module")
def one_trial_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import fmtk as toolkit

    study = tmp_path_factory.mktemp("study") / "study"
    toolkit.tune("digits_mlp", trials=1, space={"lr": "loguniform:0.01:0.5"}, epochs=1, study_dir=study,
                 device="cpu", quiet=True)  # fmt: skip
    return study


def test_a_study_whose_database_is_gone_or_foreign_is_one_line_and_kept(
    one_trial_study: Path, tmp_path: Path
) -> None:
    def foreign(path: Path) -> None:  # another program's SQLite database
        path.unlink()
        with sqlite3.connect(path) as database:
            database.execute("create table photos (name text)")

    junk = "not an fmtk study's database (file is not a database)"
    breakages = {
        "missing": (Path.unlink, "study.db: missing; the study's trials are kept in it"),
        "empty": (lambda path: path.write_bytes(b""), "study.db: empty"),
        "junk": (lambda path: path.write_text("junk"), junk),
        "foreign": (foreign, "not an fmtk study's database (it holds no study)"),
    }
    for name, (breaking, fragment) in breakages.items():
        study = shutil.copytree(one_trial_study, tmp_path / name)
        breaking(study / "study.db")
        before = tree_snapshot(study)
        assert_one_line_error(fmtk("tune", "--resume", name, "--trials", "2", cwd=tmp_path), fragment)
        assert tree_snapshot(study) == before, name


def test_a_resumed_study_whose_new_trials_all_fail_stops_and_says_how_to_go_on(
    one_trial_study: Path, tmp_path: Path
) -> None:
    shutil.copytree(one_trial_study, tmp_path / "study")
    # a handler that every trial fails in (an FmtkError: a trial's failure, not the study's)
    failing = "import fmtk\n\ndef attach(run):\n    raise fmtk.FmtkError('no GPU')\n"
    (tmp_path / "failing.py").write_text(failing)
    result = fmtk("tune", "--resume", "study", "--trials", "6", "--handler", "failing:attach", cwd=tmp_path)
    assert_one_line_error(
        result,
        "the 3 trials this command started failed, the last with: no GPU",
        "go on with: fmtk tune --resume study --trials 9",  # 6 asked; 3 failed ones are ended trials
    )
    assert result.stdout.count("failed: no GPU") == 3 and "trial 4" not in result.stdout
    again = fmtk("tune", "--resume", "study", "--trials", "3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "the study has 4 ended trials, as many as --trials 3 asks: none was run" in again.stdout
    assert "4 trials: 1 complete, 0 pruned, 3 failed" in again.stdout
    search = ["tune", "digits_mlp", "--trials", "5", "--space", "lr=uniform:0.1:1", "--try", "lr=0.5"]
    new = fmtk(*search, "--handler", "failing:attach", "--study-dir", "new", cwd=tmp_path)
    assert_one_line_error(new, "the first 3 trials failed, the last with: no GPU")
    assert not (tmp_path / "new").exists()  # a study that never began


FLAKY = """
from ignite.engine import Events


def flaky(run):  # trial 1 fails in its epoch 2, as a user's handler may
    @run.trainer.on(Events.EPOCH_COMPLETED(once=2))
    def explode(engine):
        if run.run_dir.name == "trial_001":
            raise RuntimeError("too high for me")
"""


def test_a_handler_s_error_fails_its_trial_only_and_a_resume_says_other_handlers(
    tmp_path: Path,
) -> None:
    (tmp_path / "mine.py").write_text(FLAKY)
    search = ["tune", "digits_mlp", "--trials", "3", "--space", "lr=loguniform:0.01:0.1", "--set", "epochs=2",
              "--no-prune", "--study-dir", "study", "--handler", "mine:flaky"]  # fmt: skip
    done = fmtk(*search, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # before: the study ended, and each --resume at the same place
    assert "trial 1 failed: mine.py:9: RuntimeError: too high for me (FMTK_TRACEBACK=1 shows" in done.stdout
    assert "3 trials: 2 complete, 0 pruned, 1 failed" in done.stdout
    assert json.loads((tmp_path / "study" / "study.json").read_text())["handlers"] == ["mine:flaky"]
    again = fmtk("tune", "--resume", "study", "--trials", "4", cwd=tmp_path)  # said (before: unsaid)
    assert again.returncode == 0, again.stderr
    assert ("note: the study's earlier trials ran with --handler mine:flaky; its next ones with no --handler "
            "(the same ones keep its trials alike)") in again.stdout.splitlines()  # fmt: skip
    other = fmtk("tune", "--resume", "study", "--trials", "5", "--handler", "mine:flaky", "--handler",
                 "mine:flaky", cwd=tmp_path)  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert (
        "note: the study's earlier trials ran with --handler mine:flaky; its next ones with --handler "
        "mine:flaky --handler mine:flaky (the same ones keep its trials alike)"
    ) in other.stdout


def test_a_try_s_unset_keys_and_the_next_trial_draw_values_of_their_own(tmp_path: Path) -> None:
    search = ["tune", "digits_mlp", "--trials", "2", "--set", "epochs=1", "--space", "lr=loguniform:0.01:0.1",
              "--space", "hidden=choice:32,64", "--try", "hidden=64", "--study-dir", "study"]  # fmt: skip
    result = fmtk(*search, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    configs = [
        json.loads((trial / "config.json").read_text())
        for trial in sorted((tmp_path / "study").glob("trial_*"))
    ]
    assert (
        configs[0]["options"]["hidden"] == 64 and configs[0]["lr"] != configs[1]["lr"]
    )  # the same seed before


def test_without_optuna_the_command_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "optuna_integration", None)  # as if not installed
    result = fmtk("tune", "digits_mlp", "--trials", "1", "--space", "lr=uniform:0.1:1", cwd=tmp_path)
    assert_one_line_error(result, "fmtk tune needs optuna-integration: pip install optuna optuna-integration")


def test_the_extra_is_declared_and_in_the_test_extra() -> None:
    import configparser

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).parents[1] / "setup.cfg")
    for extra in ("tune", "test"):
        names = [line.split(">=")[0] for line in setup["options.extras_require"][extra].split()]
        assert {"optuna", "optuna-integration"} <= set(names), extra


def test_tune_png_marks_the_trials_at_its_edge_and_draws_the_metric_against_each_searched_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import ImageDraw

    from fmtk.pictures import LINE_COLOURS
    from fmtk.tuning.report import search_picture

    texts, polygons = [], []
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, *a, **k: texts.append(text))
    polygon = ImageDraw.ImageDraw.polygon

    def record(self, xy, *args, **options):
        polygons.append((xy, options))
        return polygon(self, xy, *args, **options)

    monkeypatch.setattr(ImageDraw.ImageDraw, "polygon", record)
    values = [0.9, 0.4, 0.92, 0.91, 0.1, 0.93, 0.5, 0.95]  # trials 1, 4 and 6 far worse
    rows = [
        {"trial": n, "state": "pruned" if n == 6 else "complete", "value": value, "lr": 10.0 ** -(n % 4 + 1),
         "batch_size": (32, 64, 128)[n % 3]}
        for n, value in enumerate(values)
    ]  # fmt: skip
    picture = search_picture(
        rows, "valid_accuracy", "fmtk tune t", False, {"lr": "log", "batch_size": "categories"}
    )
    assert picture.size == (720, 440 + 250)  # the trials, then the two searched values side by side
    assert "worse than 0.9 (at the edge)" in texts  # the cutoff is named once, in the legend, not the title
    assert "fmtk tune t" in texts and {
        "valid_accuracy against lr",
        "valid_accuracy against batch_size",
    } <= set(texts)
    assert "lr (log)" in texts and ["32", "64", "128"] == [t for t in texts if t in ("32", "64", "128")][:3]
    # trials 1, 4, 6 at the edge, in the top panel and each value's panel, and the legend's sign: 3 × 3 + 1
    clipped = [xy for xy, options in polygons if options.get("outline") in LINE_COLOURS[:2]]
    assert len(clipped) == 9 and len(polygons) == 10
    assert all(xy[2][1] > xy[0][1] for xy, _ in polygons)  # pointing down: worse is lower

    # The worse half not far worse (0.50 and 0.55 against 0.65 and 0.70): every trial where it is.
    texts.clear(), polygons.clear()
    rows = [
        {"trial": n, "state": "complete", "value": v, "lr": 0.1} for n, v in enumerate([0.55, 0.65, 0.5, 0.7])
    ]
    search_picture(rows, "valid_accuracy", "fmtk tune t", False, {"lr": "log"})
    assert not polygons and not [text for text in texts if "at the edge" in text]

    # Exactly half far worse (two of four diverged): those two at the edge, of accuracy and of loss.
    for metric, values, minimise, cutoff in (("valid_accuracy", [0.103, 0.936, 0.103, 0.892], False, 0.892),
                                             ("valid_loss", [2.3, 0.2, 2.31, 0.25], True, 0.25)):  # fmt: skip
        texts.clear(), polygons.clear()
        rows = [{"trial": n, "state": "complete", "value": v, "lr": 0.1} for n, v in enumerate(values)]
        search_picture(rows, metric, "fmtk tune t", minimise, {"lr": "log"})
        assert f"worse than {cutoff} (at the edge)" in texts and len(polygons) == 2 * 2 + 1, metric


def test_a_pruned_trial_s_value_is_its_best_until_it_stopped(tmp_path: Path) -> None:
    import optuna

    from fmtk.tuning.report import _trial_row

    pruned = optuna.trial.create_trial(
        state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.55, 2: 0.5}
    )
    assert _trial_row(pruned, tmp_path, minimise=False)["value"] == 0.55  # as the median pruner judged it
    assert _trial_row(pruned, tmp_path, minimise=True)["value"] == 0.5


def test_tune_png_draws_each_trial_over_the_best_so_far(monkeypatch: pytest.MonkeyPatch) -> None:
    # A trial that becomes the best sits where the best-so-far line has a point: its dot stays seen.
    from PIL import ImageDraw

    from fmtk.pictures import LINE_COLOURS
    from fmtk.tuning.report import search_picture

    dots = []
    ellipse = ImageDraw.ImageDraw.ellipse

    def record(self, xy, *args, **options):
        dots.append((xy, options.get("fill")))
        return ellipse(self, xy, *args, **options)

    monkeypatch.setattr(ImageDraw.ImageDraw, "ellipse", record)
    rows = [
        {"trial": n, "state": "complete", "value": value, "lr": 0.1}
        for n, value in enumerate([0.5, 0.7, 0.6, 0.8])
    ]
    picture = search_picture(rows, "valid_accuracy", "fmtk tune t", False)
    trials = [xy for xy, fill in dots if fill == LINE_COLOURS[0]]
    assert len(trials) >= 4  # the 4 trials (and the legend's sign)
    for x0, y0, x1, y1 in trials[:4]:
        assert picture.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == LINE_COLOURS[0]


def test_tune_png_names_failed_trials_and_keeps_one_colour_per_meaning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from PIL import ImageDraw

    from fmtk.pictures import LINE_COLOURS
    from fmtk.tuning.report import search_picture

    texts, marks = [], []  # what is written; the colour of each dot or triangle

    def recording(method: str, seen) -> None:
        real = getattr(ImageDraw.ImageDraw, method)
        monkeypatch.setattr(
            ImageDraw.ImageDraw, method, lambda self, xy, *a, **k: seen(a, k) or real(self, xy, *a, **k)
        )

    recording("text", lambda args, options: texts.append(args[0]))
    recording("ellipse", lambda args, options: marks.append(options.get("fill")))
    recording("polygon", lambda args, options: marks.append(options.get("outline")))
    values = [0.5, 0.7, None, None, 0.8]  # trials 2 and 3 failed
    rows = [
        {"trial": n, "state": "fail" if value is None else "complete", "value": value, "lr": 0.1}
        for n, value in enumerate(values)
    ]
    picture = search_picture(rows, "valid_accuracy", "fmtk tune t", False)
    assert "fmtk tune t; 2 failed trials (no value, not drawn)" in texts
    # the best so far is a line (green, as in a study with pruned trials), with no mark at any trial
    assert LINE_COLOURS[2] in {colour for _, colour in picture.getcolors(1 << 16)}
    assert LINE_COLOURS[2] not in marks and marks.count(LINE_COLOURS[0]) == 3 + 1  # 3 trials, the legend's
