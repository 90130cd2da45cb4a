"""Accuracy against training time: each bundled recipe's faithful default and its presets (CPU).

For each recipe, every entry trains with the recipe's fixed seed through ``fmtk.fit`` (the CLI's
code path) and prints: recipe, preset, epochs run, training seconds (the run's own per-epoch
``epoch_seconds``, validation and checkpoints left out), the test accuracy of the best and the
last checkpoint, and the training seconds until valid accuracy first reached the notebook's test
accuracy. It writes ``<out>/<recipe>.png`` (valid accuracy against training seconds, one line per
entry) and ``<out>/accuracy.json`` (every epoch of every entry, merged with what an earlier call
wrote there, so recipes can be measured in separate calls).

fmnist_cnn also trains one faithful epoch of its basic variant (batch 16, as the notebook): the
machine's speed drifts up to 2×, so a preset's time is also given as a ratio to that epoch
measured in the same call. catdog_vgg trains at a reduced size and epoch budget on the CPU
(``--catdog-size``, ``--catdog-epochs``), the faithful recipe and the preset alike.

    python benchmarks/accuracy.py --data-dir ../shared/datasets [--recipes mnist_dnn fmnist_cnn]
        [--entries faithful fast] [--out runs/accuracy-benchmark] [--report]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import fmtk
from fmtk.pictures import lines_picture
from fmtk.recipe_loading import load_recipe
from fmtk.training.engines import SpeedOptions

# The notebooks' test accuracy (catdog: at 224 px; the reduced CPU runs only compare the entries).
NOTEBOOK_ACCURACY = {"mnist_dnn": 0.97, "fmnist_dnn": 0.877, "fmnist_cnn": 0.927, "catdog_vgg": 0.959}
RECIPES = ("mnist_dnn", "fmnist_cnn", "catdog_vgg")


def entries(recipe_name: str, catdog_size: int, catdog_epochs: int) -> dict[str, tuple[str | None, dict]]:
    """``{entry: (preset, values)}`` of one recipe: the faithful default, then each preset."""
    presets = load_recipe(recipe_name).presets
    values = {"image_size": catdog_size, "epochs": catdog_epochs} if recipe_name == "catdog_vgg" else {}
    found = {"faithful": (None, values)}
    found.update({name: (name, values) for name in presets})
    if recipe_name == "fmnist_cnn":
        found["basic-epoch"] = (None, {"variant": "basic", "epochs": 1})
    return found


def measure(
    recipe_name: str, preset: str | None, values: dict, data_dir: Path, runs: Path, channels_last: bool
) -> dict:
    started = time.perf_counter()
    speed = SpeedOptions(channels_last=channels_last or None)  # None: the device's default layout
    result = fmtk.fit(recipe_name, preset=preset, device="cpu", data_dir=data_dir, output_dir=runs,
                      quiet=True, speed=speed, **values)  # fmt: skip
    history = result.history
    return {
        "recipe": recipe_name, "preset": preset, "values": values, "epochs": len(history),
        "epoch_seconds": [row["epoch_seconds"] for row in history],
        "valid_accuracy": [row["valid_accuracy"] for row in history],
        "test_best": result.test["best"]["accuracy"], "test_last": result.test["last"]["accuracy"],
        "whole_seconds": time.perf_counter() - started, "run_dir": str(result.run_dir),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
        "channels_last": channels_last,
    }  # fmt: skip


def seconds_to(row: dict, accuracy: float) -> float | None:
    """Training seconds until valid accuracy first reached ``accuracy`` (None: never)."""
    elapsed = 0.0
    for seconds, valid in zip(row["epoch_seconds"], row["valid_accuracy"], strict=True):
        elapsed += seconds
        if valid >= accuracy:
            return elapsed
    return None


def table(measured: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| recipe | entry | epochs | training s | test best | test last | s to notebook (valid) "
        "| × basic epoch |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe_name, rows in measured.items():
        for entry, row in rows.items():
            # The faithful basic epoch in the same layout (default or channels-last).
            basic = rows.get("basic-epoch (channels-last)" if row.get("channels_last") else "basic-epoch")
            seconds = sum(row["epoch_seconds"])
            reached = seconds_to(row, NOTEBOOK_ACCURACY[recipe_name])
            is_basic = entry.startswith("basic-epoch")
            ratio = f"{seconds / sum(basic['epoch_seconds']):.2f}" if basic and not is_basic else ""
            lines.append(
                f"| {recipe_name} | {entry} | {row['epochs']} | {seconds:.1f} | {row['test_best']:.2%} | "
                f"{row['test_last']:.2%} | {'-' if reached is None else f'{reached:.1f}'} | {ratio} |"
            )
    return "\n".join(lines)


def picture(recipe_name: str, rows: dict[str, dict], path: Path) -> None:
    lines = {}
    for entry, row in rows.items():
        if entry.startswith("basic-epoch"):
            continue
        elapsed, xs = 0.0, []
        for seconds in row["epoch_seconds"]:
            elapsed += seconds
            xs.append(elapsed)
        lines[f"{entry} ({row['test_best']:.2%} test)"] = (xs, [100 * v for v in row["valid_accuracy"]])
    values = next(iter(rows.values()))["values"]
    size = f" at {values['image_size']} px" if "image_size" in values else ""
    # The notebook's figure is its full-size one: no line for runs at a reduced image size.
    notebook = NOTEBOOK_ACCURACY[recipe_name]
    reference = None if size else (100 * notebook, f"notebook {notebook:.1%} test")
    lines_picture(lines, f"{recipe_name}{size}: valid accuracy against training time (CPU)",
                  "training seconds", "valid accuracy %", reference).save(path)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=sorted(NOTEBOOK_ACCURACY))
    parser.add_argument("--entries", nargs="+", help="only these entries (faithful, a preset, basic-epoch)")
    parser.add_argument("--catdog-size", type=int, default=64)
    parser.add_argument("--catdog-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy-benchmark"))
    parser.add_argument("--runs", type=Path, default=Path("runs/accuracy-benchmark/runs"))
    parser.add_argument(
        "--channels-last", action="store_true", help="train in channels-last (as --channels-last)"
    )
    parser.add_argument("--report", action="store_true", help="train nothing: table and pictures of <out>")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "accuracy.json"
    measured: dict[str, dict[str, dict]] = json.loads(saved.read_text()) if saved.is_file() else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)
    for recipe_name in args.recipes:
        rows = measured.setdefault(recipe_name, {})
        for entry, (preset, values) in entries(recipe_name, args.catdog_size, args.catdog_epochs).items():
            if args.report or (args.entries and entry not in args.entries):
                continue
            key = f"{entry} (channels-last)" if args.channels_last else entry
            rows[key] = row = measure(
                recipe_name, preset, values, args.data_dir, args.runs, args.channels_last
            )
            saved.write_text(json.dumps(measured, indent=1))
            print(f"{recipe_name} {key}: {sum(row['epoch_seconds']):.1f} s, {row['epochs']} epochs, "
                  f"test {row['test_best']:.2%} / {row['test_last']:.2%}", flush=True)  # fmt: skip
        if rows:
            picture(recipe_name, rows, args.out / f"{recipe_name}.png")
    print(table({name: measured[name] for name in args.recipes if measured.get(name)}))


if __name__ == "__main__":
    main()
