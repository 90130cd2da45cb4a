"""The benchmarks measure what they say: benchmarks/speed.py's fmtk figure is training time only."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from ignite.engine import Events

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
        run.trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: started.append(time.perf_counter()))
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


def test_accuracy_rows_table_and_picture(tmp_path: Path) -> None:
    """benchmarks/accuracy.py: one row per entry from the run's own epoch figures; the time to an
    accuracy is the sum of the epochs up to the first that reached it; a picture per recipe."""
    accuracy = load_benchmark("accuracy")
    row = accuracy.measure("digits_mlp", None, {"epochs": 3}, Path("unused"), tmp_path / "runs", False)
    assert row["epochs"] == 3 and len(row["epoch_seconds"]) == len(row["valid_accuracy"]) == 3
    assert 0 < row["test_best"] <= 1 and row["channels_last"] is False
    first = row["valid_accuracy"][0]
    assert accuracy.seconds_to(row, first) == row["epoch_seconds"][0]
    assert accuracy.seconds_to(row, 1.01) is None
    basic = {**row, "epochs": 1, "epoch_seconds": row["epoch_seconds"][:1], "valid_accuracy": [first]}
    table = accuracy.table({"fmnist_cnn": {"faithful": row, "basic-epoch": basic}})
    ratio = sum(row["epoch_seconds"]) / row["epoch_seconds"][0]
    assert "| fmnist_cnn | faithful | 3 |" in table and table.splitlines()[2].endswith(f"| {ratio:.2f} |")
    accuracy.picture("fmnist_cnn", {"faithful": row, "basic-epoch": basic}, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
