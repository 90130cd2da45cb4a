"""Training speed: fmtk vs a plain PyTorch loop vs the notebooks' pipeline, in one command.

For each recipe, the same model, data, batch size and optimizer are trained three ways, each in its
own process (so each peak RSS is its own), on the CPU:

- ``fmtk``: the recipe's Ignite trainer with every handler a run has (validation excluded from the
  timing: the epoch's training part, Ignite's ``state.times``), at the CPU defaults; for conv
  recipes also with ``--channels-last``;
- ``plain``: a hand-written loop over the same in-memory ``TensorBatches``;
- ``notebook``: the notebooks' pipeline, torchvision dataset + ``DataLoader`` + ``ToTensor``.

Warm-up epochs are excluded. Prints seconds per epoch, images/s, the ratio to ``plain`` and the
peak RSS, as a Markdown table.

    python benchmarks/speed.py --data-dir ../shared/datasets [--epochs 2] [--warmup 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RECIPES = {"mnist_dnn": "MNIST", "fmnist_cnn": "FashionMNIST"}


def epoch_times_fmtk(
    recipe_name: str, data_dir: Path, epochs: int, channels_last: bool = False
) -> tuple[list[float], int]:
    from fmtk import build_run, load_recipe
    from fmtk.engines import SpeedOptions
    from fmtk.recipe import apply_overrides

    overrides = {"epochs": str(epochs), "early_stopping_patience": "none"}
    recipe = apply_overrides(load_recipe(recipe_name), overrides)
    speed = SpeedOptions("32", channels_last)
    with tempfile.TemporaryDirectory() as run_dir:
        run = build_run(recipe, Path(run_dir), torch.device("cpu"), data_dir, lambda line: None, speed=speed)
        run.trainer.run(run.data.train, max_epochs=epochs)
        run.tensorboard.close()
        run.tensorboard_iterations.close()
        return [row["epoch_seconds"] for row in run.history], len(run.data.train.labels)


def plain_loop(model, optimizer, batches, epochs: int, on_epoch_start=None) -> list[float]:
    """The loop a person writes by hand: no handlers, no metrics."""
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for epoch in range(1, epochs + 1):
        if on_epoch_start:
            on_epoch_start(epoch)
        model.train()
        started = time.perf_counter()
        for x, y in batches:
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def model_and_optimizer(recipe_name: str):
    from fmtk import load_recipe

    recipe = load_recipe(recipe_name)
    torch.manual_seed(recipe.seed)
    model = recipe.model(recipe)
    optimizer = getattr(torch.optim, recipe.optimizer)(model.parameters(), lr=recipe.lr)
    return recipe, model, optimizer


def epoch_times_plain(recipe_name: str, data_dir: Path, epochs: int) -> tuple[list[float], int]:
    recipe, model, optimizer = model_and_optimizer(recipe_name)
    data = recipe.data(recipe, data_dir, torch.device("cpu"))
    return plain_loop(model, optimizer, data.train, epochs, data.train.set_epoch), len(data.train.labels)


def epoch_times_notebook(recipe_name: str, data_dir: Path, epochs: int) -> tuple[list[float], int]:
    import torchvision
    from torch.utils.data import DataLoader, Subset

    recipe, model, optimizer = model_and_optimizer(recipe_name)
    name = RECIPES[recipe_name]
    with tempfile.TemporaryDirectory() as root:
        # torchvision extracts the .gz files next to them: give it a copy, not the data root.
        shutil.copytree(data_dir / name / "raw", Path(root) / name / "raw")
        dataset = getattr(torchvision.datasets, name)(
            root, train=True, download=True, transform=torchvision.transforms.ToTensor()
        )
        train = Subset(dataset, range(50_000))  # the same 50,000-image training size
        loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True)
        return plain_loop(model, optimizer, loader, epochs), len(train)


def epoch_times_fmtk_channels_last(recipe_name: str, data_dir: Path, epochs: int) -> tuple[list[float], int]:
    return epoch_times_fmtk(recipe_name, data_dir, epochs, channels_last=True)


METHODS = {
    "fmtk": epoch_times_fmtk,
    "fmtk --channels-last": epoch_times_fmtk_channels_last,  # conv recipes only
    "plain": epoch_times_plain,
    "notebook": epoch_times_notebook,
}
CONV_ONLY = {"fmtk --channels-last"}


def measure_in_subprocess(method: str, recipe: str, data_dir: Path, epochs: int, warmup: int) -> dict:
    command = [sys.executable, __file__, "--one", method, recipe, "--data-dir", str(data_dir)]
    command += ["--epochs", str(epochs), "--warmup", str(warmup)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--recipes", default="mnist_dnn,fmnist_cnn")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "RECIPE"), help=argparse.SUPPRESS)
    parser.add_argument("--methods", default=",".join(METHODS), help="which pipelines (comma-separated)")
    args = parser.parse_args()

    if args.one:
        method, recipe = args.one
        times, images = METHODS[method](recipe, args.data_dir, args.warmup + args.epochs)
        seconds = sum(times[args.warmup :]) / args.epochs
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({"seconds": seconds, "images": images, "peak_mib": peak}))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; {args.epochs} measured epochs")
    print("| recipe | pipeline | s/epoch | images/s | ratio to plain | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for recipe in args.recipes.split(","):
        methods = [m for m in args.methods.split(",") if m not in CONV_ONLY or recipe != "mnist_dnn"]
        results = {
            method: measure_in_subprocess(method, recipe, args.data_dir, args.epochs, args.warmup)
            for method in methods
        }
        for method, result in results.items():
            ratio = result["seconds"] / results["plain"]["seconds"]
            rate = result["images"] / result["seconds"]
            print(
                f"| {recipe} | {method} | {result['seconds']:.2f} | {rate:,.0f} | {ratio:.3f} "
                f"| {result['peak_mib']:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
