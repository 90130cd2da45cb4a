"""Accuracy against training time, across seeds: each bundled recipe's faithful default and its presets (CPU).

For each recipe, every entry trains once per seed (``--seeds``, default 42 1 2) through ``fmtk.fit``
(the CLI's code path), and the table gives, over the seeds: epochs run, mean training seconds (each
run's own per-epoch ``epoch_seconds``: validation and checkpoints left out), the test accuracy of
the best and the last checkpoint as mean (min–max), and the mean training seconds until valid
accuracy first reached the notebook's test accuracy. Every figure is read back from the run folder
(config.json, metrics.csv, metrics.json), the same way for a run this script trained and for one
it is given with ``--add-run`` (a finished ``fmtk run`` whose values are exactly an entry's, with
any seed: it is checked). It writes ``<out>/<recipe>.png`` (mean valid accuracy against training
seconds, one line per entry) and ``<out>/accuracy.json`` (every epoch of every run, merged with
what an earlier call wrote there, so recipes and seeds can be measured in separate calls).

fmnist_cnn also trains one faithful epoch of its basic variant (batch 16, as the notebook, in the
notebook's memory layout) per seed: the machine's speed drifts up to 2×, so each entry's time is
also given as a ratio to that epoch's mean, measured in the same call. The entries take turns
seed by seed (every entry with seed 42, then every entry with seed 1, ...), so drift and load fall
on all of them alike. catdog_vgg trains at a reduced size and
epoch budget on the CPU (``--catdog-size``, ``--catdog-epochs``), the faithful recipe and the
preset alike.

    python benchmarks/accuracy.py --data-dir ../shared/datasets [--recipes fmnist_dnn fmnist_cnn]
        [--entries faithful fast] [--seeds 42 1 2] [--out runs/accuracy-benchmark] [--report]
        [--add-run RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fmtk
from fmtk.pictures import lines_picture
from fmtk.recipe_loading import load_recipe, resolve_recipe
from fmtk.runfolder import METRICS_JSON, read_config, read_history, read_results
from fmtk.training.engines import SpeedOptions
from fmtk.version import cpu

# The notebooks' test accuracy (catdog: at 224 px; the reduced CPU runs only compare the entries).
NOTEBOOK_ACCURACY = {"mnist_dnn": 0.97, "fmnist_dnn": 0.877, "fmnist_cnn": 0.927, "catdog_vgg": 0.959}
RECIPES = ("mnist_dnn", "fmnist_dnn", "fmnist_cnn", "catdog_vgg")
BASIC_EPOCH = "basic-epoch"
# config.json keys that say how a run was asked for, not what it trained.
BOOKKEEPING = ("preset", "changed", "speed", "started_from", "head", "processes", "versions", "command",
               "data_dir", "classes", "device", "skipped_images", "started")  # fmt: skip


def entries(recipe_name: str, catdog_size: int, catdog_epochs: int) -> dict[str, tuple[str | None, dict]]:
    """``{entry: (preset, values)}`` of one recipe: the faithful default, then each preset."""
    presets = load_recipe(recipe_name).presets
    values = {"image_size": catdog_size, "epochs": catdog_epochs} if recipe_name == "catdog_vgg" else {}
    found = {"faithful": (None, values)}
    found.update({name: (name, values) for name in presets})
    if recipe_name == "fmnist_cnn":
        found[BASIC_EPOCH] = (None, {"variant": "basic", "epochs": 1})
    return found


def train(recipe_name: str, entry: str, preset: str | None, values: dict, seed: int, data_dir: Path,
          runs: Path) -> Path:  # fmt: skip
    """One run of an entry; the yardstick epoch in the notebook's layout, the rest in the device's default."""
    speed = SpeedOptions(channels_last=False if entry == BASIC_EPOCH else None)
    result = fmtk.fit(recipe_name, preset=preset, device="cpu", data_dir=data_dir, output_dir=runs,
                      quiet=True, speed=speed, seed=seed, **values)  # fmt: skip
    return result.run_dir


def row_from(run_dir: Path) -> dict:
    """One run's figures, read from its folder."""
    config, results = read_config(run_dir), read_results(run_dir)
    if results is None:
        raise SystemExit(f"{run_dir}: the run has not ended (no {METRICS_JSON})")
    history, _ = read_history(run_dir)
    return {
        "recipe": config["name"], "preset": config["preset"], "seed": config["seed"], "epochs": len(history),
        "epoch_seconds": [row["epoch_seconds"] for row in history],
        "valid_accuracy": [row["valid_accuracy"] for row in history],
        "test_best": results["test"]["best"]["accuracy"], "test_last": results["test"]["last"]["accuracy"],
        "image_size": config["options"].get("image_size"), "run_dir": str(run_dir),
        "channels_last": config["speed"]["channels_last"], "torch": config["versions"]["torch"],
        "cpu": config["versions"].get("cpu"),  # (runs of fmtk before it recorded the CPU: None)
        "date": time.strftime("%Y-%m-%d", time.gmtime((run_dir / METRICS_JSON).stat().st_mtime)),
    }  # fmt: skip


def entry_of(run_dir: Path, catdog_size: int, catdog_epochs: int) -> str:
    """Which entry a finished run is: the one whose values, with the run's seed, it trained exactly."""
    config = read_config(run_dir)
    trained = {key: value for key, value in config.items() if key not in BOOKKEEPING}
    for entry, (preset, values) in entries(config["name"], catdog_size, catdog_epochs).items():
        expected = resolve_recipe(config["name"], preset, {**values, "seed": config["seed"]}).config()
        expected = json.loads(json.dumps({k: v for k, v in expected.items() if k not in BOOKKEEPING}))
        if expected == trained:
            return entry
    raise SystemExit(f"{run_dir}: its values are none of {config['name']}'s entries")


def seconds_to(row: dict, accuracy: float) -> float | None:
    """Training seconds until valid accuracy first reached ``accuracy`` (None: never)."""
    elapsed = 0.0
    for seconds, valid in zip(row["epoch_seconds"], row["valid_accuracy"], strict=True):
        elapsed += seconds
        if valid >= accuracy:
            return elapsed
    return None


def spread(values: list[float], dash: str = "–") -> str:
    """``mean (min–max)`` in percent; one value alone."""
    if len(values) == 1:
        return f"{values[0]:.2%}"
    return f"{statistics.mean(values):.2%} ({min(values):.2%}{dash}{max(values):.2%})"


def table(measured: dict[str, dict[str, dict[str, dict]]]) -> str:
    lines = [
        "| recipe | entry | seeds | epochs | training s (mean) | test best, mean (min–max) "
        "| test last, mean (min–max) | s to notebook, valid (mean) | × basic epoch |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe_name, by_entry in measured.items():
        basic = by_entry.get(BASIC_EPOCH, {})
        basic_seconds = (
            statistics.mean(sum(row["epoch_seconds"]) for row in basic.values()) if basic else None
        )
        for entry, by_seed in by_entry.items():
            rows = list(by_seed.values())
            seconds = statistics.mean(sum(row["epoch_seconds"]) for row in rows)
            reached = [
                t for row in rows if (t := seconds_to(row, NOTEBOOK_ACCURACY[recipe_name])) is not None
            ]
            to_notebook = f"{statistics.mean(reached):.1f}" if reached else "-"
            if reached and len(reached) < len(rows):
                to_notebook += f" ({len(reached)} of {len(rows)})"
            epochs = sorted({row["epochs"] for row in rows})
            ratio = f"{seconds / basic_seconds:.2f}" if basic_seconds and entry != BASIC_EPOCH else ""
            lines.append(
                f"| {recipe_name} | {entry} | {', '.join(by_seed)} | {'–'.join(map(str, epochs))} | "
                f"{seconds:.1f} | {spread([r['test_best'] for r in rows])} | "
                f"{spread([r['test_last'] for r in rows])} | {to_notebook} | {ratio} |"
            )
    return "\n".join(lines)


def picture(recipe_name: str, by_entry: dict[str, dict[str, dict]], path: Path) -> None:
    """Valid accuracy against training seconds, each entry's mean over its seeds (to its shortest run)."""
    lines = {}
    for entry, by_seed in by_entry.items():
        if entry == BASIC_EPOCH:
            continue
        rows = list(by_seed.values())
        epochs = min(row["epochs"] for row in rows)
        elapsed, xs, ys = 0.0, [], []
        for epoch in range(epochs):
            elapsed += statistics.mean(row["epoch_seconds"][epoch] for row in rows)
            xs.append(elapsed)
            ys.append(100 * statistics.mean(row["valid_accuracy"][epoch] for row in rows))
        seeds = f"{len(rows)} seeds, " if len(rows) > 1 else ""
        tests = spread([row["test_best"] for row in rows], dash=" to ")  # the picture's font has no en dash
        lines[f"{entry} ({seeds}test {tests})"] = (xs, ys)
    row = next(iter(next(iter(by_entry.values())).values()))
    reduced = row["image_size"] != load_recipe(recipe_name).options.get("image_size")
    size = f" at {row['image_size']} px" if reduced else ""
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
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    parser.add_argument("--catdog-size", type=int, default=64)
    parser.add_argument("--catdog-epochs", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/accuracy-benchmark"))
    parser.add_argument("--runs", type=Path, default=Path("runs/accuracy-benchmark/runs"))
    parser.add_argument(
        "--add-run", nargs="+", type=Path, default=[], metavar="RUN_DIR",
        help="record these finished runs (each one entry's values); train nothing",
    )  # fmt: skip
    parser.add_argument("--report", action="store_true", help="train nothing: table and pictures of <out>")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "accuracy.json"
    measured: dict[str, dict[str, dict[str, dict]]] = json.loads(saved.read_text()) if saved.is_file() else {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU {cpu()}", flush=True)

    def record(run_dir: Path, entry: str) -> None:
        row = row_from(run_dir)
        measured.setdefault(row["recipe"], {}).setdefault(entry, {})[str(row["seed"])] = row
        saved.write_text(json.dumps(measured, indent=1))
        seconds = sum(row["epoch_seconds"])
        print(f"{row['recipe']} {entry} seed {row['seed']}: {seconds:.1f} s, {row['epochs']} epochs, "
              f"test {row['test_best']:.2%} / {row['test_last']:.2%}", flush=True)  # fmt: skip

    for run_dir in args.add_run:
        record(run_dir, entry_of(run_dir, args.catdog_size, args.catdog_epochs))
    for recipe_name in args.recipes:
        chosen = entries(recipe_name, args.catdog_size, args.catdog_epochs)
        chosen = {entry: spec for entry, spec in chosen.items() if not args.entries or entry in args.entries}
        # Seed by seed, the entries (the yardstick epoch too) take turns: the machine's drift and
        # load fall on every entry alike.
        for seed in [] if args.report or args.add_run else args.seeds:
            for entry, (preset, values) in chosen.items():
                record(train(recipe_name, entry, preset, values, seed, args.data_dir, args.runs), entry)
        if measured.get(recipe_name):
            picture(recipe_name, measured[recipe_name], args.out / f"{recipe_name}.png")
    print(table({name: measured[name] for name in args.recipes if measured.get(name)}))


if __name__ == "__main__":
    main()
