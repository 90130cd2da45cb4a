"""Accuracy against training time, across seeds: each bundled recipe's faithful default and its presets (CPU).

For each recipe, every entry trains once per seed (``--seeds``) through ``fmtk.fit``, the entries
taking turns seed by seed so the machine's drift falls on all alike. The table gives, over the
seeds: epochs run, mean training seconds (the runs' ``epoch_seconds``), the test accuracy of the
best and the last checkpoint, mean (min–max), and the mean seconds until valid accuracy first
reached the notebook's test accuracy, every figure read back from the run folder (config.json,
metrics.csv, metrics.json). fmnist_cnn also trains one epoch of its basic variant per seed (the
notebook's batch and layout): each entry's time is also given as a ratio to it. catdog_vgg trains
at a reduced size and epoch budget (``--catdog-size``, ``--catdog-epochs``). Writes every epoch of
every run to ``<out>/accuracy.json``, merged with what earlier calls wrote there.

    python benchmarks/accuracy.py --data-dir ../shared/datasets [--recipes fmnist_dnn fmnist_cnn]
        [--entries faithful fast] [--seeds 42 1 2] [--out runs/accuracy-benchmark] [--report]
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import statistics
import time
from pathlib import Path

import torch
from common import spread, write_json

import fmtk

# The notebooks' test accuracy (catdog: at 224 px; the reduced CPU runs only compare the entries).
NOTEBOOK_ACCURACY = {"mnist_dnn": 0.97, "fmnist_dnn": 0.877, "fmnist_cnn": 0.927, "catdog_vgg": 0.959}
BASIC_EPOCH = "basic-epoch"


def entries(recipe_name: str, catdog_size: int, catdog_epochs: int) -> dict[str, tuple[str | None, dict]]:
    """``{entry: (preset, values)}`` of one recipe: the faithful default, then each preset."""
    presets = fmtk.load_recipe(recipe_name).presets
    values = {"image_size": catdog_size, "epochs": catdog_epochs} if recipe_name == "catdog_vgg" else {}
    found = {"faithful": (None, values), **{name: (name, values) for name in presets}}
    if recipe_name == "fmnist_cnn":
        found[BASIC_EPOCH] = (None, {"variant": "basic", "epochs": 1})
    return found


def train(recipe_name: str, entry: str, preset: str | None, values: dict, seed: int, data_dir: Path,
          runs: Path) -> Path:  # fmt: skip
    """One run of an entry; the yardstick epoch in the notebook's layout, the rest in the device's default."""
    speed = fmtk.SpeedOptions(channels_last=False if entry == BASIC_EPOCH else None)
    result = fmtk.fit(recipe_name, preset=preset, device="cpu", data_dir=data_dir, output_dir=runs,
                      quiet=True, speed=speed, seed=seed, **values)  # fmt: skip
    return result.run_dir


def row_from(run_dir: Path) -> dict:
    """One run's figures, read from its folder's config.json, metrics.csv and metrics.json."""
    if not (run_dir / "metrics.json").is_file():
        raise SystemExit(f"{run_dir}: the run has not ended (no metrics.json)")
    config, results = (json.loads((run_dir / name).read_text()) for name in ("config.json", "metrics.json"))
    with (run_dir / "metrics.csv").open(newline="") as file:
        history = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
    return {
        "recipe": config["name"], "preset": config["preset"], "seed": config["seed"], "epochs": len(history),
        "epoch_seconds": [row["epoch_seconds"] for row in history],
        "valid_accuracy": [row["valid_accuracy"] for row in history],
        "test_best": results["test"]["best"]["accuracy"], "test_last": results["test"]["last"]["accuracy"],
        "image_size": config["options"].get("image_size"), "run_dir": str(run_dir),
        "channels_last": config["speed"]["channels_last"], "torch": config["versions"]["torch"],
        "cpu": config["versions"].get("cpu"),  # (runs of fmtk before it recorded the CPU: None)
        "date": time.strftime("%Y-%m-%d", time.gmtime((run_dir / "metrics.json").stat().st_mtime)),
    }  # fmt: skip


def seconds_to(row: dict, accuracy: float) -> float | None:
    """Training seconds until valid accuracy first reached ``accuracy`` (None: never)."""
    elapsed = 0.0
    for seconds, valid in zip(row["epoch_seconds"], row["valid_accuracy"], strict=True):
        elapsed += seconds
        if valid >= accuracy:
            return elapsed
    return None


percent = functools.partial(spread, form="{:.2%}", centre=statistics.mean)  # test accuracies over seeds


def table(measured: dict[str, dict[str, dict[str, dict]]]) -> str:
    lines = [
        "| recipe | entry | seeds | epochs | training s (mean) | test best, mean (min–max) "
        "| test last, mean (min–max) | s to notebook, valid (mean) | × basic epoch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe_name, by_entry in measured.items():
        basic = by_entry.get(BASIC_EPOCH, {})
        basic_seconds = statistics.mean(sum(row["epoch_seconds"]) for row in basic.values()) if basic else 0
        for entry, by_seed in by_entry.items():
            rows = list(by_seed.values())
            seconds = statistics.mean(sum(row["epoch_seconds"]) for row in rows)
            times = [seconds_to(row, NOTEBOOK_ACCURACY[recipe_name]) for row in rows]
            reached = [t for t in times if t is not None]
            to_notebook = f"{statistics.mean(reached):.1f}" if reached else "-"
            if reached and len(reached) < len(rows):
                to_notebook += f" ({len(reached)} of {len(rows)})"
            epochs = sorted({row["epochs"] for row in rows})
            ratio = f"{seconds / basic_seconds:.2f}" if basic_seconds and entry != BASIC_EPOCH else ""
            lines.append(
                f"| {recipe_name} | {entry} | {', '.join(by_seed)} | {'–'.join(map(str, epochs))} | "
                f"{seconds:.1f} | {percent([r['test_best'] for r in rows])} | "
                f"{percent([r['test_last'] for r in rows])} | {to_notebook} | {ratio} |"
            )
    return "\n".join(lines)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--recipes", nargs="+", default=list(NOTEBOOK_ACCURACY), choices=NOTEBOOK_ACCURACY)
    parser.add_argument("--entries", nargs="+", help="only these entries (faithful, a preset, basic-epoch)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--catdog-size", type=int, default=64)
    parser.add_argument("--catdog-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy-benchmark"))
    parser.add_argument("--runs", type=Path, default=Path("runs/accuracy-benchmark/runs"))
    parser.add_argument("--report", action="store_true", help="train nothing: the table of <out>")
    args = parser.parse_args()
    known = {entry for name in args.recipes for entry in entries(name, args.catdog_size, args.catdog_epochs)}
    unknown = sorted(set(args.entries or ()) - known)
    if unknown:
        parser.error(f"--entries: {', '.join(unknown)}: not an entry of {', '.join(args.recipes)} "
                     f"({', '.join(sorted(known))})")  # fmt: skip
    saved = args.out / "accuracy.json"
    if args.report and not saved.is_file():
        parser.error(f"--report: {saved} holds no results (train them first, without --report)")
    args.out.mkdir(parents=True, exist_ok=True)
    measured: dict[str, dict[str, dict[str, dict]]] = json.loads(saved.read_text()) if saved.is_file() else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (each run's CPU: its config.json)")

    def record(run_dir: Path, entry: str) -> None:
        row = row_from(run_dir)
        measured.setdefault(row["recipe"], {}).setdefault(entry, {})[str(row["seed"])] = row
        write_json(saved, measured)
        seconds = sum(row["epoch_seconds"])
        print(f"{row['recipe']} {entry} seed {row['seed']}: {seconds:.1f} s, {row['epochs']} epochs, "
              f"test {row['test_best']:.2%} / {row['test_last']:.2%}", flush=True)  # fmt: skip

    for recipe_name in args.recipes:
        chosen = entries(recipe_name, args.catdog_size, args.catdog_epochs)
        chosen = {entry: spec for entry, spec in chosen.items() if not args.entries or entry in args.entries}
        # Seed by seed, the entries (the yardstick epoch too) take turns: the machine's drift and
        # load fall on every entry alike.
        for seed in [] if args.report else args.seeds:
            for entry, (preset, values) in chosen.items():
                record(train(recipe_name, entry, preset, values, seed, args.data_dir, args.runs), entry)
    print(table({name: measured[name] for name in args.recipes if measured.get(name)}))


if __name__ == "__main__":
    main()
