"""The benchmarks measure what they say: benchmarks/speed.py's fmtk figure is training time only."""

from __future__ import annotations

import importlib.util
import statistics
import time
from pathlib import Path

import pytest
from conftest import make_mnist_like
from ignite.engine import Events
from torch import nn

from fmtk.models import fashion_cnn_basic

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
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
    assert summary["fmtk"]["min"] <= summary["fmtk"]["median"] <= summary["fmtk"]["max"]
    assert len(summary["fmtk"]["ratio"]) == 3 and "ratio" not in summary["plain"]


def test_speed_times_a_recipe_or_its_preset_without_early_stopping() -> None:
    """benchmarks/speed.py --recipes RECIPE[:PRESET]: the preset's values, the rounds as epochs, and
    nothing that acts on the rounds' validation."""
    speed = load_benchmark("speed")
    faithful, fast = speed.timed_recipe("mnist_dnn", 3), speed.timed_recipe("mnist_dnn:fast", 3)
    assert (faithful.lr, faithful.schedule, fast.lr, fast.schedule) == (0.1, "plateau", 0.2, "onecycle")
    for recipe in (faithful, fast):
        assert recipe.epochs == 3 and recipe.early_stopping_patience is recipe.plateau_patience is None


def test_speed_layouts_take_turns_and_compare_to_contiguous() -> None:
    """benchmarks/speed.py --layouts: a contiguous and a channels-last run of one recipe, a figure
    per round for each, the ratio to contiguous per round."""
    speed = load_benchmark("speed")
    measured = speed.layouts("digits_mlp", Path("unused"), rounds=3, steps=5)
    seconds = measured["seconds"]
    assert list(seconds) == ["fmtk contiguous", "fmtk --channels-last"]
    assert all(len(times) == 3 and min(times) > 0 for times in seconds.values())
    summary = speed.summarise(measured, warmup=1, baseline="fmtk contiguous")
    pairs = zip(seconds["fmtk --channels-last"][1:], seconds["fmtk contiguous"][1:], strict=True)
    ratios = [a / b for a, b in pairs]
    assert summary["fmtk --channels-last"]["ratio"] == [statistics.median(ratios), min(ratios), max(ratios)]
    assert "ratio" not in summary["fmtk contiguous"] and measured["batch_size"] == 32


def test_speed_relu_orders_take_turns_in_the_notebooks_order_and_fmtks(mnist_root: Path) -> None:
    """benchmarks/speed.py --relu-order: a run of the notebooks' conv blocks (ReLU → MaxPool) and
    one of fmtk's (MaxPool → ReLU) take turns, a figure per round each, with --set values applied."""
    speed = load_benchmark("speed")
    make_mnist_like(mnist_root, "FashionMNIST")
    sets = ["variant=basic", "batch_size=8"]
    measured = speed.relu_orders("fmnist_cnn", mnist_root, rounds=3, steps=3, sets=sets, channels_last=False)
    seconds = measured["seconds"]
    assert list(seconds) == ["ReLU → pool (notebooks)", "pool → ReLU (fmtk)"]
    assert all(len(times) == 3 and min(times) > 0 for times in seconds.values())
    assert measured["batch_size"] == 8
    fmtk_order, notebook = fashion_cnn_basic(), speed.relu_before_pooling(fashion_cnn_basic())
    assert [type(layer) for layer in fmtk_order[1]] == [nn.Conv2d, nn.MaxPool2d, nn.ReLU]
    assert [type(layer) for layer in notebook[1]] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]
    assert [type(layer) for layer in notebook[2:]] == [type(layer) for layer in fmtk_order[2:]]


def test_accuracy_rows_seeds_table_and_picture(tmp_path: Path) -> None:
    """benchmarks/accuracy.py: a row read back from the run folder; a finished run is recognised as
    the entry whose values it trained (any seed), and a run with other values as none; the table
    gives each entry over its seeds as mean (min–max); the time to an accuracy is the sum of the
    epochs up to the first that reached it; a picture per recipe."""
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

    # entries() of digits_mlp: its faithful default (3 epochs asked here) and its presets.
    with pytest.raises(SystemExit, match="none of digits_mlp's entries"):
        accuracy.entry_of(runs[1], 64, 8)  # 3 epochs: not the faithful recipe's values
    assert accuracy.entries("digits_mlp", 64, 8)["faithful"] == (None, {})
    other = accuracy.train("digits_mlp", "faithful", None, {}, 7, Path("unused"), tmp_path)
    assert accuracy.entry_of(other, 64, 8) == "faithful"
    assert accuracy.row_from(other)["seed"] == 7

    basic = {**row, "epochs": 1, "epoch_seconds": row["epoch_seconds"][:1], "valid_accuracy": [first]}
    by_entry = {"faithful": {"42": rows[0], "1": rows[1]}, "basic-epoch": {"42": basic}}
    table = accuracy.table({"fmnist_cnn": by_entry})
    tests = [r["test_best"] for r in rows]
    mean = f"{sum(tests) / 2:.2%} ({min(tests):.2%}–{max(tests):.2%})"
    seconds = sum(sum(r["epoch_seconds"]) for r in rows) / 2
    assert f"| fmnist_cnn | faithful | 42, 1 | 3 | {seconds:.1f} | {mean} |" in table
    assert table.splitlines()[2].endswith(f"| {seconds / row['epoch_seconds'][0]:.2f} |")
    accuracy.picture("fmnist_cnn", by_entry, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
