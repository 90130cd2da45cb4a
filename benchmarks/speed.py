"""Training speed on the CPU: fmtk against a plain PyTorch loop, and what users would write instead.

By default, for each recipe (``--recipes RECIPE[:PRESET],...``), ``fmtk`` (the recipe's Ignite
trainer, every handler a run has) and ``plain`` (the loop a person writes by hand) train the same
model with the same optimizer on the same in-memory batches, in fmtk's default layout, taking turns
in rounds (fmtk, plain, plain, fmtk, ...) so both see the same machine load. fmtk's figure is the
training time the run records (metrics.csv ``epoch_seconds``); ``fmtk (Ignite's clock)``, Ignite's
``state.times``, must agree. Seconds per epoch, median (min–max), and the per-round ratio to plain.

``--parts``: where one step's time goes, in µs: each part of the plain step on the recipe's model,
timed alone, and what fmtk adds to a step (fmtk and plain taking turns on a 1-pixel model, where
compute is next to nothing); from these, fmtk / plain predicted from parts that each vary little.

``--track``: the run with ``--track mlflow`` (a local SQLite store) against without, taking turns: the
training seconds of a round and its whole seconds (validation, checkpoints, the epoch's log_batch).

``--whole-job``: mnist_dnn as a user runs it, each way a whole process, taking turns: ``fmtk run``;
a plain script over in-memory tensors (the floor); PyTorch Lightning (``pip install -e ".[bench]"``);
the notebooks' torchvision ``MNIST`` + ``DataLoader``. The method and figures: docs/performance.md.

    python benchmarks/speed.py --data-dir ../shared/datasets [--recipes fmnist_cnn:fast] [--rounds 8]
    python benchmarks/speed.py --data-dir ../shared/datasets --parts [--rounds 5]
    python benchmarks/speed.py --data-dir ../shared/datasets --whole-job [--rounds 3] [--epochs 17]
    python benchmarks/speed.py --data-dir ../shared/datasets --track [--recipes mnist_dnn] [--rounds 8]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gzip
import importlib.util
import itertools
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from unittest import mock

import torch
from common import at_least, last_line, run_limited, spread

import fmtk
from fmtk.errors import FmtkError
from fmtk.recipe_loading import resolve_recipe

# Steps per round of fmtk and plain taking turns: short rounds, so both see the same machine load.
ROUND_STEPS = {"mnist_dnn": 500, "fmnist_cnn": 250}
PART_STEPS = {"mnist_dnn": 200, "fmnist_cnn": 40}  # --parts: the steps each part is timed over
WAYS = ("fmtk", "plain", "lightning", "notebook")  # --whole-job
SEED, LR, BATCH = 42, 0.1, 100  # mnist_dnn's, for the whole job's ways that are not fmtk
LIMIT = 3600  # seconds a measuring process may take
# --whole-job: every way with fmtk's default thread count (half the usable cores), not torch's (all).
THREADS = os.environ.get("OMP_NUM_THREADS") or str(max(1, len(os.sched_getaffinity(0)) // 2))


def plain_epoch(model, optimizer, batches, precision: str = "32", channels_last: bool = False) -> float:
    """One epoch of the loop a person writes by hand: no handlers, no metrics. On CUDA (the model's
    device) in ``precision`` (``32`` or ``bf16`` autocast), the clock stops once the device is done."""
    loss_fn = torch.nn.CrossEntropyLoss()
    device = next(model.parameters()).device
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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def timed_run(spec: str | fmtk.Recipe, rounds: int, run_dir: Path | str, overrides: Mapping | None = None,
              **options) -> fmtk.Run:  # fmt: skip
    """The run of ``spec`` (``RECIPE[:PRESET]`` or a Recipe) with ``overrides`` (``--set`` values) for
    ``rounds`` timed rounds: no early stopping or plateau acting on their validation. ``options``:
    ``fmtk.build_run``'s (device, data_dir, speed)."""
    recipe, _, preset = spec.partition(":") if isinstance(spec, str) else (spec, "", "")
    values = {"epochs": str(rounds), "early_stopping_patience": "none", "plateau_patience": "none"}
    return fmtk.build_run(recipe, run_dir, echo=None, preset=preset or None, progress=False,
                          **options, **{**values, **(overrides or {})})  # fmt: skip


def fmtk_and_plain(recipe: str | fmtk.Recipe, data_dir: Path | None, rounds: int,
                   channels_last: bool | None = None, steps: int | None = None,
                   handlers: Sequence[Callable] = (), device: str = "cpu", precision: str = "32",
                   overrides: Mapping[str, str] | None = None) -> dict:  # fmt: skip
    """fmtk and plain taking turns in rounds of ``steps`` steps (default ``ROUND_STEPS``) on one
    model, optimizer and data, in the order fmtk, plain, plain, fmtk, ...: the seconds of each
    round. ``handlers(run)`` may attach more to the run (tests do); ``device``, ``precision`` and
    ``channels_last`` (None: fmtk's default) are the run's (``benchmarks/gpu.py`` measures CUDA so).
    fmtk's figure is the run's own (metrics.csv ``epoch_seconds``); ``fmtk (Ignite's clock)`` is
    Ignite's ``state.times``, read before Ignite adds its EPOCH_COMPLETED handlers' time."""
    from ignite.engine import Events

    times: dict[str, list[float]] = {"fmtk": [], "plain": [], "fmtk (Ignite's clock)": []}

    def fmtk_round(round_number: int) -> None:
        # An Ignite "epoch" of `steps` iterations; validation and checkpoints follow it, untimed.
        run.trainer.run(run.data.train, max_epochs=round_number, epoch_length=steps)
        times["fmtk"].append(run.history[-1]["epoch_seconds"])

    def plain_round(round_number: int) -> None:
        batches = itertools.islice(iter(run.data.train), steps)
        layout = run.speed.channels_last  # as the run resolved it
        times["plain"].append(plain_epoch(run.model, run.optimizer, batches, precision, layout))

    def ignite_clock(engine) -> None:
        times["fmtk (Ignite's clock)"].append(engine.state.times["EPOCH_COMPLETED"])

    speed = fmtk.SpeedOptions(precision, channels_last)
    with tempfile.TemporaryDirectory() as run_dir:
        run = timed_run(recipe, rounds, run_dir, overrides, device=device, data_dir=data_dir, speed=speed)
        steps = steps or ROUND_STEPS[run.recipe.name]
        if steps > len(run.data.train):  # the plain loop's round would be shorter
            raise ValueError(f"{steps} steps a round, but {len(run.data.train)} training batches")
        with run.folder:
            try:
                run.prepare()  # the checkpoints too: every handler a run has
                run.trainer.add_event_handler(Events.EPOCH_COMPLETED, ignite_clock)
                for handler in handlers:
                    handler(run)
                for round_number in range(1, rounds + 1):
                    turns = (fmtk_round, plain_round) if round_number % 2 else (plain_round, fmtk_round)
                    for take_turn in turns:
                        take_turn(round_number)
            finally:
                run.close_loggers()
    return {"seconds": times, "per_epoch": len(run.data.train) / steps}


def summarise(measured: dict, warmup: int, baseline: str = "plain") -> dict:
    """Per method, after ``warmup`` rounds: the seconds per whole epoch of each round and, but for
    the baseline, each round's ratio to the ``baseline`` round beside it."""
    rounds = {method: times[warmup:] for method, times in measured["seconds"].items()}
    summary = {}
    for method, times in rounds.items():
        summary[method] = {"epochs": [seconds * measured["per_epoch"] for seconds in times]}
        if baseline in rounds and method != baseline:
            summary[method]["ratios"] = [a / b for a, b in zip(times, rounds[baseline], strict=True)]
    return summary


# --track ------------------------------------------------------------------------------------------


def tracked_and_not(recipe: str, data_dir: Path | None, rounds: int, steps: int | None = None) -> dict:
    """The run of ``recipe`` with ``track=mlflow`` (to a new SQLite store) and without, taking turns
    in rounds of ``steps`` steps: each round's training seconds (metrics.csv's ``epoch_seconds``,
    with the points kept every ``log_every`` steps) and whole seconds (with validation, checkpoints
    and, tracked, the epoch's one ``log_batch``)."""
    names = ("untracked", "tracked")
    times: dict[str, list[float]] = {f"{name}{part}": [] for name in names for part in ("", ", whole")}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as held:
        held.enter_context(
            mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"})
        )
        runs = {name: timed_run(recipe, rounds, Path(folder) / name, {"track": "mlflow"} if name == "tracked"
                                else {}, data_dir=data_dir) for name in names}  # fmt: skip
        steps = steps or ROUND_STEPS[runs["tracked"].recipe.name]
        for run in runs.values():
            held.enter_context(run.folder)
            held.callback(run.close_loggers)
            run.prepare()
        for round_number in range(1, rounds + 1):
            for name in names if round_number % 2 else reversed(names):
                run, started = runs[name], time.perf_counter()
                run.trainer.run(run.data.train, max_epochs=round_number, epoch_length=steps)
                times[f"{name}, whole"].append(time.perf_counter() - started)
                times[name].append(run.history[-1]["epoch_seconds"])
    return {"seconds": times, "per_epoch": len(runs["tracked"].data.train) / steps}


# --parts ------------------------------------------------------------------------------------------


def per_call(function: Callable[[], object], calls: int) -> float:
    """µs per call of ``function``, over ``calls`` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def step_parts(run, steps: int, repeats: int) -> dict[str, float]:
    """µs per step of each part of the plain step on ``run``'s model, optimizer and batches, timed
    alone (backward: forward, loss and backward less the first two), and of the whole plain step;
    medians of ``repeats`` rounds after a warm-up round."""
    model, optimizer, loss_fn = run.model, run.optimizer, torch.nn.CrossEntropyLoss()
    batches = itertools.cycle(list(itertools.islice(iter(run.data.train), steps)))
    x, y = next(batches)
    model.train()

    def plain_step() -> None:
        x, y = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()

    rounds = []
    for _ in range(repeats + 1):
        forward = per_call(lambda: loss_fn(model(x), y), steps)
        rounds.append({
            "next batch (slice, scale)": per_call(functools.partial(next, iter(run.data.train)), steps),
            "zero_grad": per_call(lambda: optimizer.zero_grad(set_to_none=True), steps),
            "forward + loss": forward,
            "backward": per_call(lambda: loss_fn(model(x), y).backward(), steps) - forward,
            "optimizer step": per_call(optimizer.step, steps),
            "plain step (whole)": per_call(plain_step, steps),
        })  # fmt: skip
    return {name: statistics.median(parts[name] for parts in rounds[1:]) for name in rounds[0]}


def one_pixel_recipe() -> fmtk.Recipe:
    """A linear model of one pixel (4 weights), batches of 10: a step with next to no compute."""

    def data(recipe, data_dir, device) -> fmtk.DataSplits:
        images = torch.randint(0, 256, (5000, 1, 1, 1), dtype=torch.uint8, device=device)
        labels = (images.flatten() > 127).long()
        few = fmtk.TensorBatches(images[:100], labels[:100], 10)  # validation and test
        train = fmtk.TensorBatches(images, labels, 10, shuffle=True)  # 500 steps
        return fmtk.DataSplits(train, few, few, ["dark", "bright"])

    model = lambda recipe: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1, 2))  # noqa: E731
    return fmtk.Recipe("one_pixel", "fmtk's own cost per step", model, data, optimizer="SGD", batch_size=10)


def fmtk_cost(rounds: int, steps: int = 500) -> list[float]:
    """µs that fmtk adds to a step over the plain loop (its trainer, step code and handlers), per
    round of the two taking turns on :func:`one_pixel_recipe`, the warm-up round left out."""
    seconds = fmtk_and_plain(one_pixel_recipe(), None, rounds + 1, steps=steps)["seconds"]
    return [(a - b) / steps * 1e6 for a, b in zip(seconds["fmtk"][1:], seconds["plain"][1:], strict=True)]


def parts_table(spec: str, data_dir: Path, repeats: int, own: list[float]) -> list[str]:
    """The Markdown table of ``spec``'s step parts, fmtk's own cost ``own`` and the predicted ratio."""
    speed = fmtk.SpeedOptions("32", False)
    with tempfile.TemporaryDirectory() as run_dir:
        run = timed_run(spec, 1000, run_dir, device="cpu", data_dir=data_dir, speed=speed)
        with run.folder:
            try:
                steps = min(PART_STEPS.get(run.recipe.name, 100), len(run.data.train))
                parts = step_parts(run, steps, repeats)
            finally:
                run.close_loggers()
    plain = parts["next batch (slice, scale)"] + parts["plain step (whole)"]
    lines = [f"\n{spec}", "| part | µs per step |", "|---|---:|"]
    lines += [f"| {name} | {value:,.1f} |" for name, value in parts.items()]
    lines.append(f"| fmtk's own: trainer, step code, handlers | {spread(own, '{:,.1f}')} |")
    return [*lines, f"| **fmtk / plain (predicted)** | **{(plain + statistics.median(own)) / plain:.3f}** |"]


# --whole-job ---------------------------------------------------------------------------------------


def mlp() -> torch.nn.Module:
    """mnist_dnn's MLP 784-128-64-10."""
    nn = torch.nn
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def split(labels) -> tuple[list[int], list[int]]:
    """fmtk's split of MNIST's training set: scikit-learn's, stratified, seeded, 1/6 for validation."""
    from sklearn.model_selection import train_test_split

    train, valid = train_test_split(range(len(labels)), test_size=1 / 6, stratify=labels, random_state=SEED)
    return sorted(train), sorted(valid)


def mnist_tensors(data_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each split's images (N×1×28×28, 0–1) and labels, read from the IDX files as a plain script does."""

    def read(name: str) -> torch.Tensor:
        data = gzip.open(data_dir / "MNIST" / "raw" / f"{name}-ubyte.gz").read()
        values = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return values[16:].view(-1, 1, 28, 28).float() / 255 if data[3] == 3 else values[8:].long()

    x, y = read("train-images-idx3"), read("train-labels-idx1")
    train, valid = split(y)
    test = read("t10k-images-idx3"), read("t10k-labels-idx1")
    return {"train": (x[train], y[train]), "valid": (x[valid], y[valid]), "test": test}


def train_and_test(model: torch.nn.Module, batches: Callable, epochs: int) -> float:
    """SGD over ``batches("train")`` each epoch, then the valid accuracy; the test accuracy at the end."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def accuracy(name: str) -> float:
        model.eval()
        with torch.no_grad():
            counts = [(int((model(x).argmax(1) == y).sum()), len(y)) for x, y in batches(name)]
        return sum(right for right, _ in counts) / sum(total for _, total in counts)

    for epoch in range(epochs):
        model.train()
        for x, y in batches("train"):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: valid accuracy {accuracy('valid'):.4f}")
    return accuracy("test")


def job_plain(data_dir: Path, out: Path, epochs: int) -> float:
    """A hand-written loop over in-memory tensors."""
    torch.manual_seed(SEED)
    splits = mnist_tensors(data_dir)

    def batches(split: str):
        x, y = splits[split]
        order = torch.randperm(len(y)) if split == "train" else torch.arange(len(y))
        return ((x[order[i : i + BATCH]], y[order[i : i + BATCH]]) for i in range(0, len(y), BATCH))

    return train_and_test(mlp(), batches, epochs)


def job_notebook(data_dir: Path, out: Path, epochs: int) -> float:
    """The notebooks' loop: torchvision's MNIST + ``ToTensor`` + ``DataLoader``, fmtk's split."""
    import torchvision
    from torch.utils.data import DataLoader, Subset

    torch.manual_seed(SEED)
    (out / "MNIST" / "raw").mkdir(parents=True)  # unpacked: torchvision would download packed files again
    for packed in (data_dir / "MNIST" / "raw").glob("*.gz"):
        (out / "MNIST" / "raw" / packed.stem).write_bytes(gzip.decompress(packed.read_bytes()))
    dataset, test = (torchvision.datasets.MNIST(out, train=train, transform=torchvision.transforms.ToTensor())
                     for train in (True, False))  # fmt: skip
    train, valid = split(dataset.targets)
    splits = {"train": Subset(dataset, train), "valid": Subset(dataset, valid), "test": test}
    loaders = {
        name: DataLoader(data, batch_size=BATCH, shuffle=name == "train") for name, data in splits.items()
    }
    return train_and_test(mlp(), loaders.__getitem__, epochs)


def job_lightning(data_dir: Path, out: Path, epochs: int) -> float:
    """The job as Lightning's users write it: EarlyStopping, ModelCheckpoint (best and last, both
    tested), ReduceLROnPlateau on the valid loss, the TensorBoard logger, fmtk's patiences."""
    import lightning as L
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(SEED)
    loaders = {split: DataLoader(TensorDataset(*tensors), batch_size=BATCH, shuffle=split == "train")
               for split, tensors in mnist_tensors(data_dir).items()}  # fmt: skip

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = mlp()

        def training_step(self, batch, batch_index):
            loss = F.cross_entropy(self.model(batch[0]), batch[1])
            self.log("train_loss", loss, on_epoch=True)
            return loss

        def validation_step(self, batch, batch_index, split: str = "val"):
            logits = self.model(batch[0])
            self.log(f"{split}_loss", F.cross_entropy(logits, batch[1]))
            self.log(f"{split}_acc", (logits.argmax(1) == batch[1]).float().mean())

        def test_step(self, batch, batch_index):
            self.validation_step(batch, batch_index, "test")

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=LR)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=3)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}

    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", monitor="val_acc", mode="max", save_last=True)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=TensorBoardLogger(out, name="mnist_dnn"),
                        callbacks=[EarlyStopping("val_loss", patience=6), checkpoint],
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    module = Module()
    trainer.fit(module, loaders["train"], loaders["valid"])
    best = trainer.test(module, loaders["test"], ckpt_path="best", verbose=False)
    trainer.test(module, loaders["test"], ckpt_path="last", verbose=False)
    return best[0]["test_acc"]


JOBS = {"plain": job_plain, "notebook": job_notebook, "lightning": job_lightning}


def whole_job(way: str, data_dir: Path, epochs: int) -> dict | None:
    """One whole process doing the job ``way``: its wall and CPU seconds from outside and its test
    accuracy (fmtk's: its best checkpoint's); None for Lightning when it is not installed."""
    if way == "lightning" and importlib.util.find_spec("lightning") is None:
        return None
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--job", way, "--out", out]
        if way == "fmtk":  # the fmtk command, as a user runs it
            command = [sys.executable, "-m", "fmtk", "run", "mnist_dnn", "--output-dir", out, "--device=cpu"]
        command += [f"--data-dir={data_dir}", f"--epochs={epochs}"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        env = {**os.environ, "OMP_NUM_THREADS": THREADS}  # every way: fmtk's default thread count
        code, stdout, stderr, wall = run_limited(command, LIMIT, env=env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0:
            raise SystemExit(f"{way} failed: {last_line(stderr) or code}")
        results = json.loads(next(Path(out).rglob("metrics.json")).read_text()) if way == "fmtk" else None
        accuracy = results["test"]["best"]["accuracy"] if results else float(last_line(stdout))
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return {"wall": wall, "cpu": cpu, "accuracy": accuracy}


def whole_job_table(measured: dict[str, list[dict]]) -> list[str]:
    """One row per way: wall seconds median (min–max), CPU seconds, ratio to fmtk, test accuracy."""
    fmtk_wall = statistics.median(r["wall"] for r in measured["fmtk"]) if measured.get("fmtk") else None
    lines = ["| way | wall s | CPU s | ratio to fmtk (wall) | test accuracy |", "|---|---:|---:|---:|---:|"]
    for way, results in measured.items():
        if not results:
            lines.append(f'| {way} | not run: pip install -e ".[bench]" | | | |')
            continue
        walls = [r["wall"] for r in results]
        ratio = f"{statistics.median(walls) / fmtk_wall:.2f}" if fmtk_wall else "–"
        cpu, accuracy = (statistics.median(r[key] for r in results) for key in ("cpu", "accuracy"))
        lines.append(f"| {way} | {spread(walls)} | {cpu:.1f} | {ratio} | {accuracy:.2%} |")
    return lines


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--recipes", default="mnist_dnn,fmnist_cnn", help="RECIPE[:PRESET],...")
    parser.add_argument("--rounds", type=at_least(1), help="measured rounds (8; --parts: 5; --whole-job: 3)")
    parser.add_argument("--epochs", type=at_least(1), default=17, help="--whole-job: the job's epochs")
    parser.add_argument("--warmup", type=at_least(0), default=1, help="rounds before those measured")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--parts", action="store_true", help="where one step's time goes, in µs")
    modes.add_argument("--whole-job", action="store_true", help="the whole mnist_dnn job: fmtk and its peers")
    modes.add_argument("--track", action="store_true", help="fmtk with --track mlflow against without")
    parser.add_argument("--ways", help=f"--whole-job: these ways only ({','.join(WAYS)})")
    parser.add_argument("--job", choices=JOBS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()
    args.rounds = args.rounds or (5 if args.parts else 3 if args.whole_job else 8)
    if args.ways is not None and not args.whole_job:
        parser.error("--ways goes with --whole-job")
    args.ways = args.ways or ",".join(WAYS)
    unknown = [way for way in args.ways.split(",") if way not in WAYS]
    if unknown:
        parser.error(f"--ways: {', '.join(unknown)}: not one of {', '.join(WAYS)}")
    for spec in args.recipes.split(",") if not args.job else []:  # each one line here, not a traceback later
        name, _, preset = spec.partition(":")
        try:
            resolve_recipe(name, preset or None, {})
        except FmtkError as error:
            parser.error(f"--recipes {spec}: {error}")

    if args.job:  # one way of the whole job, in a process of its own
        print(JOBS[args.job](args.data_dir, args.out, args.epochs))
        return
    rounds = f"{args.rounds} rounds" + ("" if args.whole_job else f" after {args.warmup} of warm-up")
    print(f"torch {torch.__version__}, threads as fmtk chooses them; medians of {rounds} (min–max)")
    if args.parts:
        own = fmtk_cost(20 * args.rounds)
        for spec in args.recipes.split(","):
            print("\n".join(parts_table(spec, args.data_dir, args.rounds, own)), flush=True)
    elif args.whole_job:
        measured: dict[str, list[dict]] = {way: [] for way in args.ways.split(",")}
        for _ in range(args.rounds):
            for way, results in measured.items():
                results += filter(None, [whole_job(way, args.data_dir, args.epochs)])
        print(f"mnist_dnn, {args.epochs} epochs, the ways taking turns", *whole_job_table(measured), sep="\n")
    elif args.track:
        print(
            "| recipe | measured | untracked s | tracked s | tracked / untracked |\n|---|---|---:|---:|---:|"
        )
        for recipe in args.recipes.split(","):
            seconds = tracked_and_not(recipe, args.data_dir, args.warmup + args.rounds)["seconds"]
            for part, what in (
                ("", "training (epoch_seconds)"),
                (", whole", "whole round, validation and all"),
            ):
                untracked, tracked = (
                    seconds[f"{name}{part}"][args.warmup :] for name in ("untracked", "tracked")
                )
                ratio = spread([a / b for a, b in zip(tracked, untracked, strict=True)], "{:.3f}")
                print(
                    f"| {recipe} | {what} | {spread(untracked)} | {spread(tracked)} | {ratio} |", flush=True
                )
    else:
        print("| recipe | pipeline | s/epoch | images/s | ratio to plain |\n|---|---|---:|---:|---:|")
        for recipe in args.recipes.split(","):
            measured = fmtk_and_plain(recipe, args.data_dir, args.warmup + args.rounds)
            for method, row in summarise(measured, args.warmup).items():
                images = 50_000 / statistics.median(row["epochs"])  # MNIST's and Fashion-MNIST's training set
                ratio = spread(row["ratios"], "{:.3f}") if "ratios" in row else "1.000"
                print(
                    f"| {recipe} | {method} | {spread(row['epochs'])} | {images:,.0f} | {ratio} |", flush=True
                )


if __name__ == "__main__":
    main()
