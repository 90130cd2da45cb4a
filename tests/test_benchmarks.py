"""The benchmarks measure what they say: benchmarks/speed.py's fmtk figure is training time only,
its --parts and --whole-job time what they name; benchmarks/accuracy.py reads runs back."""

from __future__ import annotations

import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

import pytest
from ignite.engine import Events

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (its siblings importable, as when it runs: common.py)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_fmtk_figure_leaves_out_what_follows_each_round() -> None:
    """Validation, checkpoints and every other EPOCH_COMPLETED handler run after each fmtk round;
    a handler there that sleeps must not reach the figure (it once doubled fmnist_cnn's)."""
    speed = load_benchmark("speed")

    started, whole = [], []  # each round's wall time, from its start to after both sleeps

    def slow_epoch_end(run) -> None:
        # STARTED (each round is one trainer.run) comes before both clocks start, EPOCH_STARTED
        # handlers after fmtk's own: a busy machine could pause between those and fail the test.
        run.trainer.add_event_handler(Events.STARTED, lambda _: started.append(time.perf_counter()))
        run.evaluator.add_event_handler(Events.COMPLETED, lambda _: time.sleep(0.5))
        run.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: time.sleep(0.5))
        run.trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda _: whole.append(time.perf_counter() - started[-1])
        )

    measured = speed.fmtk_and_plain(
        "digits_mlp", Path("unused"), rounds=3, steps=5, handlers=[slow_epoch_end]
    )
    seconds = measured["seconds"]
    assert len(seconds["fmtk"]) == len(seconds["plain"]) == len(seconds["fmtk (Ignite's clock)"]) == 3
    # Whatever the machine's load: the two sleeps (1 s) are in each round, not in its figures.
    for figures in (seconds["fmtk"], seconds["fmtk (Ignite's clock)"]):
        assert all(0 < value <= total - 1.0 for value, total in zip(figures, whole, strict=True))
    assert measured["per_epoch"] == 34 / 5  # digits_mlp: 34 training batches of 32
    summary = speed.summarise(measured, warmup=1)
    assert summary["fmtk"]["epochs"] == pytest.approx([value * 34 / 5 for value in seconds["fmtk"][1:]])
    pairs = zip(seconds["fmtk"][1:], seconds["plain"][1:], strict=True)
    assert summary["fmtk"]["ratios"] == [a / b for a, b in pairs] and "ratios" not in summary["plain"]


def test_speed_times_a_recipe_or_its_preset_without_early_stopping(mnist_root: Path, tmp_path: Path) -> None:
    """benchmarks/speed.py --recipes RECIPE[:PRESET]: the preset's values, the rounds as epochs, and
    nothing that acts on the rounds' validation."""
    speed = load_benchmark("speed")
    runs = [speed.timed_run(spec, 3, tmp_path / spec, device="cpu", data_dir=mnist_root)
            for spec in ("mnist_dnn", "mnist_dnn:fast")]  # fmt: skip
    faithful, fast = (run.recipe for run in runs)
    assert (faithful.lr, faithful.schedule, fast.lr, fast.schedule) == (0.1, "plateau", 0.2, "onecycle")
    for recipe in (faithful, fast):
        assert recipe.epochs == 3 and recipe.early_stopping_patience is recipe.plateau_patience is None
    for run in runs:
        with run.folder:  # released
            run.close_loggers()


def test_speed_parts_time_each_part_of_a_step_and_fmtks_own_cost() -> None:
    """benchmarks/speed.py --parts: the parts of the plain step, each timed alone; fmtk's own cost
    per step, from rounds on a 1-pixel model; the ratio they predict."""
    speed = load_benchmark("speed")
    own = speed.fmtk_cost(rounds=3, steps=50)
    assert len(own) == 3 and all(math.isfinite(value) for value in own)
    lines = speed.parts_table("digits_mlp", Path("unused"), repeats=1, own=own)
    assert lines[:3] == ["\ndigits_mlp", "| part | µs per step |", "|---|---:|"]
    rows = [line.strip("| ").split(" | ") for line in lines[3:-2]]
    parts = {name: float(value.replace(",", "")) for name, value in rows}
    assert list(parts) == ["next batch (slice, scale)", "zero_grad", "forward + loss", "backward",
                           "optimizer step", "plain step (whole)"]  # fmt: skip
    assert (
        0 < parts["optimizer step"] < parts["plain step (whole)"] and parts["next batch (slice, scale)"] > 0
    )
    assert lines[-2].startswith("| fmtk's own: trainer, step code, handlers | ")
    plain = parts["next batch (slice, scale)"] + parts["plain step (whole)"]
    predicted = float(lines[-1].split("**")[3])
    assert predicted == pytest.approx((plain + statistics.median(own)) / plain, abs=0.002)


def test_speed_whole_job_runs_each_way_in_a_process_of_its_own(mnist_root: Path, tmp_path: Path) -> None:
    """benchmarks/speed.py --whole-job: the fmtk command and the plain script, each a whole process
    (wall and CPU seconds, test accuracy); the notebooks' loop; the table, Lightning's row when it
    is not installed."""
    speed = load_benchmark("speed")
    measured = {way: [speed.whole_job(way, mnist_root, epochs=3)] for way in ("fmtk", "plain")}
    for [result] in measured.values():
        assert result["wall"] > result["cpu"] / 4 > 0 and 0.2 < result["accuracy"] <= 1  # 10 classes
    assert 0.2 < speed.job_notebook(mnist_root, tmp_path, epochs=3) <= 1
    lines = speed.whole_job_table({**measured, "lightning": []})
    assert lines[2].startswith("| fmtk | ") and lines[2].endswith(
        f"| 1.00 | {measured['fmtk'][0]['accuracy']:.2%} |"
    )
    assert lines[3].startswith("| plain | ") and lines[-1].startswith("| lightning | not run: ")


def test_accuracy_rows_seeds_and_table(tmp_path: Path) -> None:
    """benchmarks/accuracy.py: a row read back from the run folder; the table gives each entry over
    its seeds as mean (min–max); the time to an accuracy is the sum of the epochs up to the first
    that reached it."""
    accuracy = load_benchmark("accuracy")
    runs = [accuracy.train("digits_mlp", "faithful", None, {"epochs": 3}, seed, Path("unused"), tmp_path)
            for seed in (42, 1)]  # fmt: skip
    rows = [accuracy.row_from(run_dir) for run_dir in runs]
    row = rows[0]
    assert row["epochs"] == 3 and len(row["epoch_seconds"]) == len(row["valid_accuracy"]) == 3
    assert 0 < row["test_best"] <= 1 and row["seed"] == 42 and rows[1]["seed"] == 1
    assert row["channels_last"] is False and row["recipe"] == "digits_mlp"
    first = row["valid_accuracy"][0]
    assert accuracy.seconds_to(row, first) == row["epoch_seconds"][0]
    assert accuracy.seconds_to(row, 1.01) is None

    # entries(): the faithful default, each preset; fmnist_cnn's yardstick epoch; catdog_vgg reduced.
    assert accuracy.entries("digits_mlp", 64, 8)["faithful"] == (None, {})
    assert accuracy.entries("fmnist_cnn", 64, 8)["basic-epoch"] == (None, {"variant": "basic", "epochs": 1})
    assert accuracy.entries("catdog_vgg", 32, 40)["faithful"] == (None, {"image_size": 32, "epochs": 40})

    basic = {**row, "epochs": 1, "epoch_seconds": row["epoch_seconds"][:1], "valid_accuracy": [first]}
    by_entry = {"faithful": {"42": rows[0], "1": rows[1]}, "basic-epoch": {"42": basic}}
    table = accuracy.table({"fmnist_cnn": by_entry})
    tests = [r["test_best"] for r in rows]
    mean = f"{sum(tests) / 2:.2%} ({min(tests):.2%}–{max(tests):.2%})"
    seconds = sum(sum(r["epoch_seconds"]) for r in rows) / 2
    assert f"| fmnist_cnn | faithful | 42, 1 | 3 | {seconds:.1f} | {mean} |" in table
    assert table.splitlines()[2].endswith(f"| {seconds / row['epoch_seconds'][0]:.2f} |")


def test_speed_track_times_a_tracked_and_an_untracked_run_taking_turns(tmp_path: Path) -> None:
    """benchmarks/speed.py --track: the same recipe with track=mlflow (a new SQLite store) and
    without, a figure of training and one of the whole round for each, every round."""
    pytest.importorskip("mlflow")
    speed = load_benchmark("speed")
    measured = speed.tracked_and_not("digits_mlp", None, rounds=3, steps=5)
    seconds = measured["seconds"]
    assert list(seconds) == ["untracked", "untracked, whole", "tracked", "tracked, whole"]
    assert all(len(times) == 3 and min(times) > 0 for times in seconds.values())
    for name in ("untracked", "tracked"):  # a whole round holds its training
        assert all(w > t for w, t in zip(seconds[f"{name}, whole"], seconds[name], strict=True))
    assert "MLFLOW_TRACKING_URI" not in os.environ and measured["per_epoch"] == 34 / 5


@pytest.mark.slow  # a process importing torch each
@pytest.mark.parametrize(
    "script, arguments, said",
    [
        ("speed", ["--recipes", "nosuch"], "--recipes nosuch: unknown recipe 'nosuch'"),
        ("speed", ["--rounds", "0"], "argument --rounds: 0 is below 1"),
        ("speed", ["--parts", "--ways", "fmtk"], "--ways goes with --whole-job"),
        ("speed", ["--whole-job", "--ways", "nosuch"], "--ways: nosuch: not one of fmtk, plain"),
        ("copies", ["--edited", "0"], "argument --edited: 0 is below 1"),
        ("accuracy", ["--recipes", "mnist_dnn", "--entries", "nosuch"], "--entries: nosuch: not an entry"),
        ("accuracy", ["--report", "--out", "nowhere"], "--report: nowhere/accuracy.json holds no results"),
    ],
)  # each was a traceback, a silent default or an empty table
def test_a_benchmark_s_bad_argument_is_one_line(
    script: str, arguments: list[str], said: str, tmp_path: Path
) -> None:
    import subprocess

    command = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--data-dir", str(tmp_path), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    last = done.stderr.splitlines()[-1] if done.stderr else ""
    assert done.returncode == 2 and last.startswith(f"{script}.py: error: ") and said in last, done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing made
