"""Where one training step's time goes, in µs, fmtk against the plain loop (CPU).

For each recipe, on the recipe's model, optimizer and in-memory training batches:

- the parts of the plain step, each timed on its own: taking the next batch (slice, scale,
  flip, normalise), ``zero_grad``, forward + loss, backward, optimizer step;
- ``plain step``: the hand-written loop body, whole;
- ``fmtk step function (its own code)``: what fmtk's ``train_step`` (the trainer's process
  function) adds to that body, measured on a one-weight model where compute is next to nothing;
- ``Ignite engine``: what a bare Ignite ``Engine`` costs per iteration around a step that does
  nothing (its four events, the data iterator);
- ``fmtk trainer``: the same for fmtk's trainer with every handler a run attaches (validation,
  checkpoints and the other EPOCH_COMPLETED handlers are outside the epoch's time).

``fmtk / plain (predicted)`` is (next batch + plain step + fmtk's own step code + fmtk trainer) /
(next batch + plain step): a second figure for what ``benchmarks/speed.py`` measures by timing
whole rounds, built from parts that each vary little.

    python benchmarks/step.py --data-dir ../shared/datasets [--recipes mnist_dnn,fmnist_cnn] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ignite.engine import Engine, Events

STEPS = {"mnist_dnn": 200, "fmnist_cnn": 40, "fmnist_dnn": 200, "digits_mlp": 200}
DISPATCH_ITERATIONS = 1000


def build(recipe_name: str, data_dir: Path, run_dir: Path):
    from fmtk import build_run, load_recipe
    from fmtk.recipe import apply_overrides
    from fmtk.training.engines import SpeedOptions

    overrides = {"epochs": "1000", "early_stopping_patience": "none", "plateau_patience": "none"}
    recipe = apply_overrides(load_recipe(recipe_name), overrides)
    run = build_run(recipe, run_dir, "cpu", data_dir, None, speed=SpeedOptions("32", False))
    run.prepare()
    return run


def per_call(function: Callable[[], object], calls: int) -> float:
    """µs per call of ``function``, over ``calls`` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def step_parts(run, steps: int, repeats: int) -> dict[str, float]:
    """µs per step of each part of the plain step, and of the whole plain step."""
    model, optimizer = run.model, run.optimizer
    loss_fn = torch.nn.CrossEntropyLoss()
    batches = itertools.cycle(list(itertools.islice(iter(run.data.train), steps)))
    x, y = next(batches)
    model.train()
    times: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        times.setdefault(name, []).append(value)

    def plain_step() -> None:
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    def backward() -> None:
        loss = loss_fn(model(x), y)
        started = time.perf_counter()
        loss.backward()
        record("backward", (time.perf_counter() - started) * 1e6)

    for _ in range(repeats + 1):  # the first round warms up
        record("next batch", per_call(functools.partial(next, iter(run.data.train)), steps))
        record("zero_grad", per_call(lambda: optimizer.zero_grad(set_to_none=True), steps))
        record("forward + loss", per_call(lambda: loss_fn(model(x), y), steps))
        for _ in range(steps // 4):
            backward()
        record("optimizer step", per_call(optimizer.step, steps))
        record("plain step", per_call(plain_step, steps))
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def step_function_extra(repeats: int) -> float:
    """µs that fmtk's ``train_step`` adds to the plain loop body: both run on a one-weight model, so
    the compute is next to nothing and the difference is fmtk's own code (median of many turns)."""
    from fmtk.training.engines import create_trainer

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, fused=True)
    loss_fn = torch.nn.MSELoss()
    batch = (torch.ones(1, 1), torch.ones(1, 1))
    trainer = create_trainer(model, optimizer, loss_fn, torch.device("cpu"))
    trainer.state.batch_losses = []
    step = trainer._process_function

    def plain_step() -> None:
        x, y = batch
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    def fmtk_step() -> None:
        step(trainer, batch)

    differences = []  # short turns, many of them: the difference is small beside the step's noise
    for turn in range(80 * repeats):
        plain = per_call(plain_step, 25) if turn % 2 else 0.0
        fmtk = per_call(fmtk_step, 25)
        if not turn % 2:
            plain = per_call(plain_step, 25)
        differences.append(fmtk - plain)
        trainer.state.batch_losses.clear()
    return statistics.median(differences)


def dispatch(run, repeats: int) -> dict[str, float]:
    """µs per iteration of a bare Ignite engine and of fmtk's trainer around a step that does nothing."""
    batch = next(iter(run.data.train))
    data = [batch] * DISPATCH_ITERATIONS
    loss = torch.tensor(0.5)

    def nothing(engine: Engine, _) -> torch.Tensor:
        engine.state.batch_losses.append(loss)
        return loss

    bare = Engine(nothing)
    bare.add_event_handler(Events.EPOCH_STARTED, lambda engine: setattr(engine.state, "batch_losses", []))
    trainer = run.trainer
    trainer._process_function = nothing
    run.evaluator.run = lambda *args, **kwargs: None  # no validation: only the metrics it leaves
    run.evaluator.state.metrics.update(loss=0.5, accuracy=0.5)
    epoch_times: list[float] = []
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: epoch_times.append(engine.state.times["EPOCH_COMPLETED"])
    )
    bare_times = []
    for round_number in range(1, 2 * repeats + 2):
        started = time.perf_counter()
        bare.run(data, max_epochs=1)
        bare_times.append(time.perf_counter() - started)
        trainer.run(data, max_epochs=round_number, epoch_length=DISPATCH_ITERATIONS)
    per_iteration = 1e6 / DISPATCH_ITERATIONS
    return {
        "Ignite engine": statistics.median(bare_times[1:]) * per_iteration,
        "fmtk trainer": statistics.median(epoch_times[1:]) * per_iteration,
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--recipes", default="mnist_dnn,fmnist_cnn")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU; µs per step, medians of {args.repeats}")
    for recipe in args.recipes.split(","):
        with tempfile.TemporaryDirectory() as run_dir:
            run = build(recipe, args.data_dir, Path(run_dir))
            parts = step_parts(run, STEPS.get(recipe, 100), args.repeats)
            parts["fmtk step function (its own code)"] = step_function_extra(args.repeats)
            parts.update(dispatch(run, args.repeats))
            for logger in (run.tensorboard, run.tensorboard_iterations):
                logger.close()
        print(f"\n{recipe}\n| part | µs per step |\n|---|---:|")
        for name, value in parts.items():
            print(f"| {name} | {value:,.1f} |")
        plain = parts["next batch"] + parts["plain step"]
        fmtk = plain + parts["fmtk step function (its own code)"] + parts["fmtk trainer"]
        print(f"| **fmtk / plain (predicted)** | {fmtk / plain:.3f} |")


if __name__ == "__main__":
    main()
