"""Training speed: fmtk vs a plain PyTorch loop vs the notebooks' pipeline, in one command.

For each recipe (CPU):

- ``fmtk`` and ``plain`` run in one process on the same model, optimizer and in-memory batches,
  taking turns in rounds of a few hundred steps (fmtk, plain, fmtk, plain, ...), so both see the
  same machine load. ``fmtk`` is the recipe's Ignite trainer with every handler a run has (each
  round is an Ignite epoch of that many steps; Ignite's ``state.times``, validation excluded).
  ``plain`` is the loop a person writes by hand over the same batches. Their ratio is what fmtk
  costs. Figures are scaled to seconds per whole epoch.
- ``notebook``: the notebooks' pipeline, torchvision dataset + ``DataLoader`` + ``ToTensor``, in its
  own process, with a fresh model and the recipe's optimizer as the notebook creates it.
- ``fmtk --channels-last`` (conv recipes): the fmtk run with the channels-last memory format.

Warm-up rounds (epochs for the notebook) are excluded; each figure is the median of the measured
ones. Prints seconds
per epoch, images/s, the ratio to ``plain`` and the peak RSS of the process, as a Markdown table.

    python benchmarks/speed.py --data-dir ../shared/datasets [--rounds 8] [--epochs 2] [--warmup 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RECIPES = {"mnist_dnn": "MNIST", "fmnist_cnn": "FashionMNIST"}
# Steps per round of fmtk and plain taking turns: short rounds, so both see the same machine load.
ROUND_STEPS = {"mnist_dnn": 500, "fmnist_cnn": 250}


def plain_epoch(model, optimizer, batches) -> float:
    """One epoch of the loop a person writes by hand: no handlers, no metrics."""
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    started = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
    return time.perf_counter() - started


def fmtk_and_plain(recipe_name: str, data_dir: Path, rounds: int, channels_last: bool = False) -> dict:
    """Alternate fmtk and plain in rounds of ``ROUND_STEPS`` steps on one model, optimizer and data;
    seconds per (whole) epoch of each round."""
    from fmtk import build_run, load_recipe
    from fmtk.recipe import apply_overrides
    from fmtk.training.engines import SpeedOptions

    overrides = {"epochs": str(rounds), "early_stopping_patience": "none", "plateau_patience": "none"}
    recipe = apply_overrides(load_recipe(recipe_name), overrides)
    speed = SpeedOptions("32", channels_last)
    steps = ROUND_STEPS[recipe_name]
    times = {"fmtk": [], "plain": []}
    with tempfile.TemporaryDirectory() as run_dir:
        run = build_run(recipe, Path(run_dir), torch.device("cpu"), data_dir, lambda line: None, speed=speed)
        run.prepare()  # the checkpoints too: every handler a run has
        per_epoch = len(run.data.train) / steps
        for round_number in range(1, rounds + 1):
            # An Ignite "epoch" of `steps` iterations (validation after it is not timed).
            run.trainer.run(run.data.train, max_epochs=round_number, epoch_length=steps)
            times["fmtk"].append(run.trainer.state.times["EPOCH_COMPLETED"] * per_epoch)
            batches = itertools.islice(iter(run.data.train), steps)
            times["plain"].append(plain_epoch(run.model, run.optimizer, batches) * per_epoch)
        for logger in (run.tensorboard, run.tensorboard_iterations):
            logger.close()
    return times


def fmtk_channels_last(recipe_name: str, data_dir: Path, rounds: int) -> dict:
    return {"fmtk --channels-last": fmtk_and_plain(recipe_name, data_dir, rounds, True)["fmtk"]}


def notebook(recipe_name: str, data_dir: Path, epochs: int) -> dict:
    import torchvision
    from torch.utils.data import DataLoader, Subset

    from fmtk import load_recipe

    recipe = load_recipe(recipe_name)
    torch.manual_seed(recipe.seed)
    model = recipe.model(recipe)
    optimizer = getattr(torch.optim, recipe.optimizer)(model.parameters(), lr=recipe.lr)
    name = RECIPES[recipe_name]
    with tempfile.TemporaryDirectory() as root:
        # torchvision extracts the .gz files next to them: give it a copy, not the data root.
        shutil.copytree(data_dir / name / "raw", Path(root) / name / "raw")
        dataset = getattr(torchvision.datasets, name)(
            root, train=True, download=True, transform=torchvision.transforms.ToTensor()
        )
        train = Subset(dataset, range(50_000))  # the same 50,000-image training size
        loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True)
        return {"notebook": [plain_epoch(model, optimizer, loader) for _ in range(epochs)]}


MEASUREMENTS = {"pair": fmtk_and_plain, "channels_last": fmtk_channels_last, "notebook": notebook}


def measure_in_subprocess(what: str, recipe: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", what, recipe, "--data-dir", str(args.data_dir)]
    command += ["--rounds", str(args.rounds), "--epochs", str(args.epochs), "--warmup", str(args.warmup)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=8, help="measured fmtk/plain rounds (after warm-up)")
    parser.add_argument("--epochs", type=int, default=2, help="measured notebook epochs (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--recipes", default="mnist_dnn,fmnist_cnn")
    parser.add_argument("--no-channels-last", action="store_true", help="skip the channels-last row")
    parser.add_argument("--one", nargs=2, metavar=("WHAT", "RECIPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:
        what, recipe = args.one
        measured = args.epochs if what == "notebook" else args.rounds
        result = MEASUREMENTS[what](recipe, args.data_dir, args.warmup + measured)
        seconds = {method: statistics.median(times[args.warmup :]) for method, times in result.items()}
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({"seconds": seconds, "peak_mib": peak}))
        return

    threads = torch.get_num_threads()
    medians = f"medians of {args.rounds} rounds (notebook: {args.epochs} epochs)"
    print(f"torch {torch.__version__}, {threads} threads, CPU; {medians}")
    print("| recipe | pipeline | s/epoch | images/s | ratio to plain | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for recipe in args.recipes.split(","):
        measured = ["pair", "notebook"]
        if recipe != "mnist_dnn" and not args.no_channels_last:
            measured.insert(1, "channels_last")
        rows = {}
        for what in measured:
            result = measure_in_subprocess(what, recipe, args)
            rows.update({method: (s, result["peak_mib"]) for method, s in result["seconds"].items()})
        plain = rows["plain"][0]
        for method, (seconds, peak) in rows.items():
            print(
                f"| {recipe} | {method} | {seconds:.2f} | {50_000 / seconds:,.0f} | {seconds / plain:.3f} "
                f"| {peak:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
