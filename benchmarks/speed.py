"""Training speed: fmtk vs a plain PyTorch loop vs the notebooks' pipeline, in one command.

For each recipe (CPU):

- ``fmtk`` and ``plain`` run in one process on the same model, optimizer and in-memory batches,
  taking turns in rounds of a few hundred steps (fmtk, plain, plain, fmtk, ...), so both see the
  same machine load. ``fmtk`` is the recipe's Ignite trainer with every handler a run has (each
  round is an Ignite epoch of that many steps); its figure is the training time the run records
  (metrics.csv ``epoch_seconds``), which leaves out the validation and checkpoints that follow
  each round. ``fmtk (Ignite's clock)`` is the same rounds timed by Ignite's ``state.times``, read
  before Ignite adds its EPOCH_COMPLETED handlers' time: a second clock that must agree.
  ``plain`` is the loop a person writes by hand over the same batches. The ratio (median of the
  per-round ratios, min–max beside it) is what fmtk costs. Figures are scaled to whole epochs.
- ``notebook``: the notebooks' pipeline, torchvision dataset + ``DataLoader`` + ``ToTensor``, in its
  own process, with a fresh model and the recipe's optimizer as the notebook creates it.
- ``fmtk --channels-last`` (conv recipes): the fmtk run with the channels-last memory format,
  paired with plain rounds of its own.
- ``--relu-order RECIPE[:PRESET] ...``: instead, two fmtk runs of the recipe taking turns, one with
  the notebooks' conv blocks (ReLU → MaxPool) and one with fmtk's (MaxPool → ReLU, the same
  function), channels-last (``--no-channels-last``: contiguous); the ratio is fmtk's over the
  notebooks'. With these two, ``--set KEY=VALUE`` changes a recipe value (``--set variant=basic``).
- ``--layouts RECIPE[:PRESET] ...``: instead, the memory layout end to end: two fmtk runs of the
  recipe (with its preset), one contiguous and one channels-last, taking turns round by round;
  the ratio is channels-last's seconds over contiguous's (below 1: channels-last is faster).

Warm-up rounds (epochs for the notebook) are excluded. Prints seconds per epoch (median, min–max),
images/s, the ratio to ``plain`` and the peak RSS of the process, as a Markdown table.
``benchmarks/step.py`` gives the per-step breakdown behind the ratio.

    python benchmarks/speed.py --data-dir ../shared/datasets [--rounds 8] [--epochs 2] [--warmup 1]
    python benchmarks/speed.py --data-dir ../shared/datasets --recipes fmnist_cnn:fast
    python benchmarks/speed.py --data-dir ../shared/datasets --layouts fmnist_cnn fmnist_cnn:fast
    python benchmarks/speed.py --data-dir ../shared/datasets --relu-order fmnist_cnn:fast
    python benchmarks/speed.py --data-dir ../shared/datasets --relu-order fmnist_cnn --set variant=basic \
        --no-channels-last
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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RECIPES = {"mnist_dnn": "MNIST", "fmnist_cnn": "FashionMNIST"}
# Steps per round of fmtk and plain taking turns: short rounds, so both see the same machine load.
ROUND_STEPS = {"mnist_dnn": 500, "fmnist_cnn": 250}


def plain_epoch(model, optimizer, batches, precision: str = "32", channels_last: bool = False) -> float:
    """One epoch of the loop a person writes by hand: no handlers, no metrics. On CUDA (the model's
    device) in ``precision`` (``32`` or ``bf16`` autocast), the clock stops once the device is done."""
    loss_fn = torch.nn.CrossEntropyLoss()
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    dtype = {"32": None, "bf16": torch.bfloat16}[precision]
    model.train()
    started = time.perf_counter()
    for x, y in batches:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def fmtk_and_plain(
    recipe_name: str,
    data_dir: Path,
    rounds: int,
    channels_last: bool = False,
    steps: int | None = None,
    handlers: Sequence[Callable] = (),
    device: str = "cpu",
    precision: str = "32",
    sets: Sequence[str] = (),
) -> dict:
    """Alternate fmtk and plain in rounds of ``steps`` steps (default ``ROUND_STEPS``) on one model,
    optimizer and data, in the order fmtk, plain, plain, fmtk, ... (drift hits both alike);
    seconds of each round. ``handlers(run)`` may attach more to the run (tests use it); ``sets``
    change recipe values (``KEY=VALUE``); ``device`` and ``precision`` (``32``, ``bf16``) are the
    run's (``benchmarks/gpu.py`` measures CUDA so).

    fmtk's figure is the epoch's training time as the run records it (metrics.csv ``epoch_seconds``:
    from its first step until its last loss is on the host); ``fmtk (Ignite's clock)`` is the same
    epoch by Ignite's ``state.times``, read before Ignite adds its EPOCH_COMPLETED handlers' time
    (validation, checkpoints), a second clock for the same figure."""
    from ignite.engine import Events

    from fmtk import build_run
    from fmtk.training.engines import SpeedOptions

    recipe = timed_recipe(recipe_name, rounds, sets)
    speed = SpeedOptions(precision, channels_last)
    steps = steps or ROUND_STEPS[recipe.name]
    times: dict[str, list[float]] = {"fmtk": [], "plain": [], "fmtk (Ignite's clock)": []}
    with tempfile.TemporaryDirectory() as run_dir:
        device = torch.device(device)
        run = build_run(recipe, Path(run_dir), device, data_dir, None, speed=speed, progress=False)
        run.prepare()  # the checkpoints too: every handler a run has
        ignite_clock = times["fmtk (Ignite's clock)"]
        run.trainer.add_event_handler(
            Events.EPOCH_COMPLETED, lambda engine: ignite_clock.append(engine.state.times["EPOCH_COMPLETED"])
        )
        for handler in handlers:
            handler(run)

        def fmtk_round(round_number: int) -> None:
            # An Ignite "epoch" of `steps` iterations; validation and checkpoints follow it, untimed.
            run.trainer.run(run.data.train, max_epochs=round_number, epoch_length=steps)
            times["fmtk"].append(run.history[-1]["epoch_seconds"])

        def plain_round() -> None:
            batches = itertools.islice(iter(run.data.train), steps)
            times["plain"].append(plain_epoch(run.model, run.optimizer, batches, precision, channels_last))

        for round_number in range(1, rounds + 1):
            if round_number % 2:
                fmtk_round(round_number)
                plain_round()
            else:
                plain_round()
                fmtk_round(round_number)
        for logger in (run.tensorboard, run.tensorboard_iterations):
            logger.close()
        return {"seconds": times, "per_epoch": len(run.data.train) / steps}


def timed_recipe(spec: str, rounds: int, sets: Sequence[str] = ()):
    """The recipe of ``spec`` (``RECIPE[:PRESET]``) with ``sets`` (``KEY=VALUE``, as ``fmtk run
    --set``) for ``rounds`` timed rounds: no early stopping or plateau, which would act on the
    rounds' validation."""
    from fmtk.cli.group import parse_settings
    from fmtk.recipe_loading import resolve_recipe

    recipe_name, _, preset = spec.partition(":")
    overrides = {"epochs": str(rounds), "early_stopping_patience": "none", "plateau_patience": "none"}
    overrides.update(parse_settings(tuple(sets)))
    return resolve_recipe(recipe_name, preset or None, overrides)


def fmtk_channels_last(recipe_name: str, data_dir: Path, rounds: int) -> dict:
    measured = fmtk_and_plain(recipe_name, data_dir, rounds, True)
    seconds = measured["seconds"]
    seconds["fmtk --channels-last"] = seconds.pop("fmtk")
    del seconds["fmtk (Ignite's clock)"]
    return measured


def layouts(
    spec: str, data_dir: Path, rounds: int, steps: int | None = None, sets: Sequence[str] = ()
) -> dict:
    """``spec`` (``RECIPE[:PRESET]``) trained by two fmtk runs, contiguous and channels-last, taking
    turns in rounds of ``steps`` steps (default ``ROUND_STEPS``; contiguous first in odd rounds):
    each round's training seconds as the run records them."""
    from fmtk.training.engines import SpeedOptions

    recipe = timed_recipe(spec, rounds, sets)
    variants = {
        "fmtk contiguous": (recipe, SpeedOptions("32", False)),
        "fmtk --channels-last": (recipe, SpeedOptions("32", True)),
    }
    return take_turns(variants, data_dir, rounds, steps)


def relu_before_pooling(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with each conv block's MaxPool → ReLU put back in the notebooks' order, ReLU → MaxPool
    (the same function; fmtk pools first)."""
    blocks = [module for module in model.modules() if isinstance(module, torch.nn.Sequential)]
    for block in blocks:
        for index, (first, second) in enumerate(itertools.pairwise(list(block))):
            if isinstance(first, torch.nn.MaxPool2d) and isinstance(second, torch.nn.ReLU):
                block[index], block[index + 1] = second, first
    return model


def relu_orders(
    spec: str,
    data_dir: Path,
    rounds: int,
    steps: int | None = None,
    sets: Sequence[str] = (),
    channels_last: bool = True,
) -> dict:
    """``spec`` trained by two fmtk runs, the notebooks' ReLU → MaxPool and fmtk's MaxPool → ReLU,
    taking turns as :func:`layouts` does (the notebooks' order first in odd rounds)."""
    import dataclasses

    from fmtk.training.engines import SpeedOptions

    recipe = timed_recipe(spec, rounds, sets)
    notebook = dataclasses.replace(recipe, model=lambda r: relu_before_pooling(recipe.model(r)))
    speed = SpeedOptions("32", channels_last)
    variants = {"ReLU → pool (notebooks)": (notebook, speed), "pool → ReLU (fmtk)": (recipe, speed)}
    return take_turns(variants, data_dir, rounds, steps)


def take_turns(variants: dict, data_dir: Path, rounds: int, steps: int | None = None) -> dict:
    """One fmtk run per variant (``name: (recipe, speed options)``), taking turns in rounds of
    ``steps`` steps (default ``ROUND_STEPS``; in the given order in odd rounds, reversed in even
    ones): each round's training seconds as the run records them."""
    from fmtk import build_run

    recipe = next(iter(variants.values()))[0]
    steps = steps or ROUND_STEPS[recipe.name]
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for index, (name, (variant, speed)) in enumerate(variants.items()):
            run_dir = Path(folder) / str(index)
            runs[name] = build_run(variant, run_dir, torch.device("cpu"), data_dir, None, speed=speed)
            runs[name].prepare()
        for round_number in range(1, rounds + 1):
            order = list(times) if round_number % 2 else list(reversed(times))
            for name in order:
                run = runs[name]
                run.trainer.run(run.data.train, max_epochs=round_number, epoch_length=steps)
                times[name].append(run.history[-1]["epoch_seconds"])
        for run in runs.values():
            for logger in (run.tensorboard, run.tensorboard_iterations):
                logger.close()
        per_epoch = len(next(iter(runs.values())).data.train) / steps
        return {"seconds": times, "per_epoch": per_epoch, "batch_size": recipe.batch_size}


def notebook(recipe_name: str, data_dir: Path, epochs: int) -> dict:
    import torchvision
    from torch.utils.data import DataLoader, Subset

    recipe = timed_recipe(recipe_name, epochs)
    torch.manual_seed(recipe.seed)
    model = recipe.model(recipe)
    optimizer = getattr(torch.optim, recipe.optimizer)(model.parameters(), lr=recipe.lr)
    name = RECIPES[recipe.name]
    with tempfile.TemporaryDirectory() as root:
        # torchvision extracts the .gz files next to them: give it a copy, not the data root.
        shutil.copytree(data_dir / name / "raw", Path(root) / name / "raw")
        dataset = getattr(torchvision.datasets, name)(
            root, train=True, download=True, transform=torchvision.transforms.ToTensor()
        )
        train = Subset(dataset, range(50_000))  # the same 50,000-image training size
        loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True)
        return {
            "seconds": {"notebook": [plain_epoch(model, optimizer, loader) for _ in range(epochs)]},
            "per_epoch": 1,
        }


MEASUREMENTS = {
    "pair": fmtk_and_plain, "channels_last": fmtk_channels_last, "notebook": notebook, "layouts": layouts,
    "relu_orders": relu_orders,
}  # fmt: skip
# What the runs taking turns are compared to, per --one measurement (default: the plain loop).
BASELINES = {"layouts": "fmtk contiguous", "relu_orders": "ReLU → pool (notebooks)"}


def measure_in_subprocess(what: str, recipe: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--one", what, recipe, "--data-dir", str(args.data_dir)]
    command += ["--rounds", str(args.rounds), "--epochs", str(args.epochs), "--warmup", str(args.warmup)]
    command += ["--no-channels-last"] if args.no_channels_last else []
    command += [f"--set={value}" for value in args.set]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def summarise(measured: dict, warmup: int, baseline: str = "plain") -> dict:
    """Per method: the median, min and max seconds per whole epoch of the measured rounds, and the
    median, min and max of its per-round ratio to the ``baseline`` round beside it."""
    rounds = {method: times[warmup:] for method, times in measured["seconds"].items()}
    summary = {}
    for method, times in rounds.items():
        epochs = [seconds * measured["per_epoch"] for seconds in times]
        row = {"median": statistics.median(epochs), "min": min(epochs), "max": max(epochs)}
        if baseline in rounds and method != baseline:
            ratios = [a / b for a, b in zip(times, rounds[baseline], strict=True)]
            row["ratio"] = [statistics.median(ratios), min(ratios), max(ratios)]
        summary[method] = row
    return summary


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=8, help="measured fmtk/plain rounds (after warm-up)")
    parser.add_argument("--epochs", type=int, default=2, help="measured notebook epochs (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--recipes", default="mnist_dnn,fmnist_cnn", help="RECIPE[:PRESET],...")
    parser.add_argument("--no-channels-last", action="store_true", help="skip the channels-last row")
    parser.add_argument("--layouts", nargs="+", metavar="RECIPE[:PRESET]", help="contiguous vs channels-last")
    parser.add_argument(
        "--relu-order",
        nargs="+",
        metavar="RECIPE[:PRESET]",
        help="the notebooks' ReLU → pool vs fmtk's pool → ReLU",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe value (--layouts, --relu-order)",
    )
    parser.add_argument("--one", nargs=2, metavar=("WHAT", "RECIPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.set and not (args.layouts or args.relu_order or args.one):
        parser.error("--set goes with --layouts or --relu-order")
    from fmtk.cli.group import parse_settings
    from fmtk.errors import FmtkError

    try:
        parse_settings(tuple(args.set))  # here, not in each measuring process
    except FmtkError as error:
        parser.error(str(error))

    if args.one:
        what, recipe = args.one
        rounds = args.warmup + (args.epochs if what == "notebook" else args.rounds)
        options = {"sets": args.set} if what in BASELINES else {}  # the runs taking turns
        if what == "relu_orders":
            options["channels_last"] = not args.no_channels_last
        measured = MEASUREMENTS[what](recipe, args.data_dir, rounds, **options)
        baseline = BASELINES.get(what, "plain")
        summary = summarise(measured, args.warmup, baseline)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({"summary": summary, "peak_mib": peak, "batch_size": measured.get("batch_size")}))
        return

    threads = torch.get_num_threads()
    medians = f"medians of {args.rounds} rounds (notebook: {args.epochs} epochs), min–max in brackets"
    print(f"torch {torch.__version__}, {threads} threads, CPU; {medians}")
    if args.layouts or args.relu_order:
        what, specs = ("layouts", args.layouts) if args.layouts else ("relu_orders", args.relu_order)
        layout = "contiguous" if args.no_channels_last else "channels-last"
        layout = "" if what == "layouts" else f" ({layout})"
        print(f"| recipe | batch | run{layout} | s/epoch | images/s | ratio to the first | peak RSS MiB |")
        print("|---|---:|---|---:|---:|---:|---:|")
        for spec in specs:
            result = measure_in_subprocess(what, spec, args)
            for method, row in result["summary"].items():
                ratio = row.get("ratio", [1.0, 1.0, 1.0])
                print(
                    f"| {spec} | {result['batch_size']} | {method} | {row['median']:.2f} "
                    f"({row['min']:.2f}–{row['max']:.2f}) | {50_000 / row['median']:,.0f} "
                    f"| {ratio[0]:.3f} ({ratio[1]:.3f}–{ratio[2]:.3f}) | {result['peak_mib']:.0f} |",
                    flush=True,
                )
        return
    print("| recipe | pipeline | s/epoch | images/s | ratio to plain | peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for recipe in args.recipes.split(","):
        measured = ["pair", "notebook"]
        if recipe.partition(":")[0] != "mnist_dnn" and not args.no_channels_last:
            measured.insert(1, "channels_last")
        rows = {}
        for what in measured:
            result = measure_in_subprocess(what, recipe, args)
            if what == "channels_last":  # its plain rounds gave its ratio; the plain row is the pair's
                del result["summary"]["plain"]
            rows.update({method: (row, result["peak_mib"]) for method, row in result["summary"].items()})
        plain = rows["plain"][0]["median"]
        for method, (row, peak) in rows.items():
            # A paired method's ratio is the median of its per-round ratios; the notebook's is to
            # the plain loop's median (it runs in its own process).
            ratio = row.get("ratio", [row["median"] / plain])
            spread = f" ({ratio[1]:.3f}–{ratio[2]:.3f})" if len(ratio) == 3 else ""
            print(
                f"| {recipe} | {method} | {row['median']:.2f} ({row['min']:.2f}–{row['max']:.2f}) "
                f"| {50_000 / row['median']:,.0f} | {ratio[0]:.3f}{spread} | {peak:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
