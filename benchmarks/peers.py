"""One whole job, as a user runs it, done by fmtk and by what users would write instead (CPU).

The job is mnist_dnn as its recipe says: MLP 784-128-64-10, SGD lr 0.1, batch 100, the seeded
stratified 50,000/10,000 split, at most 17 epochs with validation after each, then the test set.
Each way runs as a whole process (interpreter start and imports included), the ways taking turns
in each round, so all see the same machine load:

- ``fmtk``: ``fmtk run mnist_dnn``, with early stopping, best and last checkpoints, plateau
  scheduling and TensorBoard, both checkpoints tested (``fmtk.cli.main`` in this script's process,
  which is what the ``fmtk`` command runs).
- ``plain``: a hand-written PyTorch loop over in-memory tensors, the same model, optimizer and
  splits; validation each epoch, the last weights tested; no checkpoints or logs: the floor.
- ``lightning``: the job as PyTorch Lightning users write it: a ``LightningModule``,
  ``TensorDataset`` + ``DataLoader``, ``EarlyStopping``, ``ModelCheckpoint(save_last=True)``,
  ``ReduceLROnPlateau`` with ``monitor``, the TensorBoard logger, both checkpoints tested.
  Needs ``pip install -e ".[bench]"``; skipped, saying so, without it.
- ``notebook``: the notebooks' loop: torchvision's ``MNIST`` + ``ToTensor`` + ``DataLoader``.

Prints, per way, the median wall seconds of the rounds (min–max), the median CPU seconds (user +
system, of the process and its children), the ratio to fmtk, the seconds the process measured
itself (from its first line to its last: a second clock for the wall figure) and the test
accuracy; then ``fmtk run digits_mlp``'s start-up: seconds until it prints its run folder (imports,
data, model, engines) and until its first epoch line.

    python benchmarks/peers.py --data-dir ../shared/datasets [--rounds 3] [--epochs 17]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before any import: the process's own clock for the whole job

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

SEED, LR, BATCH, VALID = 42, 0.1, 100, 10_000
WAYS = ("fmtk", "plain", "lightning", "notebook")


def mlp():
    from torch import nn

    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10)
    )


def mnist_arrays(data_dir: Path):
    """The four IDX files as numpy arrays (gzip + numpy: what a plain script does)."""
    import gzip

    import numpy as np

    def read(name: str):
        data = gzip.open(data_dir / "MNIST" / "raw" / f"{name}.gz").read()
        header = 4 + 4 * data[3]
        shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
        return np.frombuffer(data, np.uint8, offset=header).reshape(shape)

    return {
        split: (read(f"{prefix}-images-idx3-ubyte"), read(f"{prefix}-labels-idx1-ubyte"))
        for split, prefix in (("train", "train"), ("test", "t10k"))
    }


def split_indices(labels):
    """The recipe's seeded stratified split (scikit-learn's train_test_split, as fmtk does)."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    train, valid = train_test_split(
        np.arange(len(labels)), test_size=VALID, stratify=labels, random_state=SEED
    )
    return np.sort(train), np.sort(valid)


def job_fmtk(data_dir: Path, out: Path, epochs: int) -> float:
    from fmtk.cli import main

    sys.argv = ["fmtk", "run", "mnist_dnn", "--data-dir", str(data_dir), "--output-dir", str(out)]
    sys.argv += ["--epochs", str(epochs), "--device", "cpu"]
    try:
        main()  # what the fmtk command runs
    except SystemExit as exit:
        if exit.code:
            raise
    results = json.loads(next(out.rglob("metrics.json")).read_text())
    return results["test"]["best"]["accuracy"]


def job_plain(data_dir: Path, out: Path, epochs: int) -> float:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    arrays = mnist_arrays(data_dir)
    images, labels = (torch.from_numpy(a.copy()) for a in arrays["train"])
    train, valid = (torch.from_numpy(index) for index in split_indices(arrays["train"][1]))
    splits = {
        "train": (images[train], labels[train].long()),
        "valid": (images[valid], labels[valid].long()),
        "test": tuple(torch.from_numpy(a.copy()) for a in arrays["test"]),
    }
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def batches(split: str, shuffle: bool = False):
        x, y = splits[split]
        order = torch.randperm(len(y)) if shuffle else torch.arange(len(y))
        for start in range(0, len(y), BATCH):
            index = order[start : start + BATCH]
            yield x[index].unsqueeze(1).float() / 255, y[index].long()

    def accuracy(split: str) -> float:
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches(split))
        return correct / len(splits[split][1])

    for epoch in range(epochs):
        model.train()
        for x, y in batches("train", shuffle=True):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: valid accuracy {accuracy('valid'):.4f}")
    return accuracy("test")


def job_lightning(data_dir: Path, out: Path, epochs: int) -> float:
    import lightning as L
    import torch
    import torch.nn.functional as F
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    L.seed_everything(SEED)
    arrays = mnist_arrays(data_dir)
    images = torch.from_numpy(arrays["train"][0].copy()).unsqueeze(1).float() / 255
    labels = torch.from_numpy(arrays["train"][1].copy()).long()
    train, valid = (torch.from_numpy(index) for index in split_indices(arrays["train"][1]))
    test_images = torch.from_numpy(arrays["test"][0].copy()).unsqueeze(1).float() / 255
    test = TensorDataset(test_images, torch.from_numpy(arrays["test"][1].copy()).long())

    class MnistModule(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = mlp()

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.log("train_loss", loss, on_epoch=True)
            return loss

        def _evaluate(self, batch, split: str) -> None:
            x, y = batch
            logits = self.model(x)
            self.log(f"{split}_loss", F.cross_entropy(logits, y))
            self.log(f"{split}_acc", (logits.argmax(1) == y).float().mean())

        def validation_step(self, batch, batch_idx):
            self._evaluate(batch, "val")

        def test_step(self, batch, batch_idx):
            self._evaluate(batch, "test")

        def configure_optimizers(self):
            optimizer = torch.optim.SGD(self.parameters(), lr=LR)
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=3)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}

    checkpoint = ModelCheckpoint(dirpath=out / "checkpoints", monitor="val_acc", mode="max", save_last=True)
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=[EarlyStopping("val_loss", patience=6), checkpoint],
        logger=TensorBoardLogger(out, name="mnist_dnn"),
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    module = MnistModule()
    trainer.fit(
        module,
        DataLoader(TensorDataset(images[train], labels[train]), batch_size=BATCH, shuffle=True),
        DataLoader(TensorDataset(images[valid], labels[valid]), batch_size=BATCH),
    )
    best = trainer.test(module, DataLoader(test, batch_size=BATCH), ckpt_path="best", verbose=False)
    trainer.test(module, DataLoader(test, batch_size=BATCH), ckpt_path="last", verbose=False)
    return best[0]["test_acc"]


def job_notebook(data_dir: Path, out: Path, epochs: int) -> float:
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch.utils.data import DataLoader, Subset

    torch.manual_seed(SEED)
    # torchvision extracts the .gz files next to them: give it a copy, not the data root.
    shutil.copytree(data_dir / "MNIST" / "raw", out / "MNIST" / "raw")
    to_tensor = torchvision.transforms.ToTensor()
    dataset = torchvision.datasets.MNIST(out, train=True, download=True, transform=to_tensor)
    test = torchvision.datasets.MNIST(out, train=False, download=True, transform=to_tensor)
    train, valid = split_indices(dataset.targets.numpy())
    loaders = {
        "train": DataLoader(Subset(dataset, train), batch_size=BATCH, shuffle=True),
        "valid": DataLoader(Subset(dataset, valid), batch_size=BATCH),
        "test": DataLoader(test, batch_size=BATCH),
    }
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)

    def accuracy(split: str) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in loaders[split]:
                correct += int((model(x).argmax(1) == y).sum())
                total += len(y)
        return correct / total

    for epoch in range(epochs):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        print(f"epoch {epoch + 1}: valid accuracy {accuracy('valid'):.4f}")
    return accuracy("test")


def run_job(way: str, args: argparse.Namespace) -> dict | None:
    """One whole process doing the job ``way``; wall and CPU seconds from outside, its own clock."""
    if way == "lightning" and not has_lightning():
        return None
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, __file__, "--job", way, "--data-dir", str(args.data_dir), "--out", out]
        command += ["--epochs", str(args.epochs)]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if finished.returncode:
        raise SystemExit(f"{way} failed:\n{finished.stderr[-3000:]}")
    reported = json.loads(finished.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, **reported}


def has_lightning() -> bool:
    import importlib.util

    return importlib.util.find_spec("lightning") is not None


def startup(rounds: int) -> dict[str, list[float]]:
    """``fmtk run digits_mlp``: seconds until its run-folder line, until its first epoch line, and
    the whole process."""
    marks = {"until its run folder line": "run folder", "until its first epoch line": "epoch   1/"}
    times: dict[str, list[float]] = {name: [] for name in [*marks, "whole run"]}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-m", "fmtk", "run", "digits_mlp", "--output-dir", out, "--device=cpu"]
            pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.DEVNULL}
            seen = {}
            started = time.perf_counter()
            with subprocess.Popen(command, text=True, env=env, **pipes) as process:
                for line in process.stdout:
                    for name, start in marks.items():
                        if line.startswith(start) and name not in seen:
                            seen[name] = time.perf_counter() - started
            seen["whole run"] = time.perf_counter() - started
        for name, value in seen.items():
            times[name].append(value)
    return times


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=17)
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument("--job", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_dir = args.data_dir.resolve()

    if args.job:
        accuracy = globals()[f"job_{args.job}"](args.data_dir, args.out, args.epochs)
        print(json.dumps({"accuracy": accuracy, "own_seconds": time.perf_counter() - STARTED}))
        return

    import torch

    ways = args.ways.split(",")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU; mnist_dnn, {args.epochs} epochs; "
          f"{args.rounds} rounds, the ways taking turns; median (min–max)")  # fmt: skip
    measured: dict[str, list[dict]] = {way: [] for way in ways}
    for _ in range(args.rounds):
        for way in ways:
            result = run_job(way, args)
            if result is not None:
                measured[way].append(result)
    fmtk = statistics.median(r["wall"] for r in measured["fmtk"]) if measured.get("fmtk") else None
    print("| way | wall s | CPU s | ratio to fmtk (wall) | own clock s | test accuracy |")
    print("|---|---:|---:|---:|---:|---:|")
    for way, results in measured.items():
        if not results:
            print(f'| {way} | not run: pip install -e ".[bench]" | | | | |')
            continue
        walls = [r["wall"] for r in results]
        ratio = f"{statistics.median(walls) / fmtk:.2f}" if fmtk else "–"
        accuracy = statistics.median(r["accuracy"] for r in results)
        print(
            f"| {way} | {spread(walls)} | {statistics.median(r['cpu'] for r in results):.1f} | {ratio} "
            f"| {statistics.median(r['own_seconds'] for r in results):.2f} | {100 * accuracy:.2f}% |",
            flush=True,
        )
    times = startup(args.rounds)
    print("\n`fmtk run digits_mlp` start-up, whole process, seconds: median (min–max)")
    for name, values in times.items():
        print(f"- {name}: {spread(values)}")


if __name__ == "__main__":
    main()
