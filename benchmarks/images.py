"""The `images` recipe on the Cat & Dog photos as a user's folder, beside `catdog_vgg` (CPU).

Both read the same photos with the same split (``catdog/training_set`` less a stratified 20% for
validation, seed 42; ``catdog/test_set`` for testing) at the same image size and epochs: catdog_vgg
as its notebook trains it (VGG16-BN from scratch, Adam 1e-4), `images` with its own defaults and
``arch`` (resnet18 from scratch by default). They take turns, ``--rounds`` times; the photos are
decoded once into a cache file (``data_cache=file`` under ``<out>/cache``) so that every run times
training, not JPEG decoding. Printed per entry: the test accuracy of the best and the last
checkpoint (the same in every round: the seed fixes them), the training seconds (the runs' own
``epoch_seconds``, validation left out) of each round and their median.

    python benchmarks/images.py --data-dir ../shared/datasets [--image-size 32] [--epochs 2]
        [--arch resnet18 ...] [--rounds 2] [--out runs/images-benchmark]

With ``--loader N ...`` instead: photos per second of the two ways a photo folder is read, over
``catdog/training_set`` at ``--image-size``, no model: ``data_cache=none`` (DataLoader workers
decode every epoch; batches of 16 scaled and flipped on the device, as training takes them) with N
workers each, the median of ``--rounds`` epochs after one warm-up epoch that starts the workers;
and ``data_cache=memory`` decoding every photo once (a thread per core), as often.

    python benchmarks/images.py --data-dir ../shared/datasets --loader 0 1 2 4 --image-size 224
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

import fmtk


def measure(entry: str, data_dir: Path, size: int, epochs: int, runs: Path) -> dict:
    """One run of ``entry`` (``catdog_vgg`` or an arch for ``images``): test accuracies and seconds."""
    common = {"device": "cpu", "output_dir": runs, "quiet": True, "image_size": size, "epochs": epochs}
    if entry == "catdog_vgg":
        result = fmtk.fit("catdog_vgg", data_dir=data_dir, data_cache="file", **common)
    else:
        result = fmtk.fit("images", data_dir=data_dir / "catdog", arch=entry, data_cache="file", **common)
    return {
        "best": result.test["best"]["accuracy"],
        "last": result.test["last"]["accuracy"],
        "seconds": sum(row["epoch_seconds"] for row in result.history),
    }


def loader_rates(data_dir: Path, size: int, workers: list[int], rounds: int) -> dict[str, list[float]]:
    """Photos per second of each ``workers`` count's DataLoader epoch and of decoding once."""
    import time

    import torch

    from fmtk.data.images import ImageFiles, LoaderBatches, decode_images, list_image_folder
    from fmtk.device import usable_cores

    samples, _ = list_image_folder(data_dir / "catdog" / "training_set")
    rates: dict[str, list[float]] = {}
    for count in workers:
        batches = LoaderBatches(ImageFiles(samples, size), 16, torch.device("cpu"), shuffle=True,
                                flip_p=0.3, workers=count)  # fmt: skip
        seconds = []
        for epoch in range(rounds + 1):  # the first starts the workers
            batches.set_epoch(epoch)
            started = time.perf_counter()
            photos = sum(len(y) for _, y in batches)
            seconds.append(time.perf_counter() - started)
        rates[f"data_cache=none, {count} workers"] = [photos / s for s in seconds[1:]]
        del batches
    once = []
    for _ in range(rounds):
        started = time.perf_counter()
        decode_images(samples, size)
        once.append(len(samples) / (time.perf_counter() - started))
    rates[f"data_cache=memory, decoded once ({usable_cores()} threads)"] = once
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--arch", nargs="+", default=["resnet18"], help="torchvision archs for images")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/images-benchmark"))
    parser.add_argument("--loader", type=int, nargs="+", metavar="N", help="photos/s with N workers, each")
    args = parser.parse_args()
    if args.loader:
        rates = loader_rates(args.data_dir, args.image_size, args.loader, args.rounds)
        print(f"{args.image_size} px, {os.cpu_count()} cores, median of {args.rounds} epochs (each)")
        for name, each in rates.items():
            print(f"{name:<46} {statistics.median(each):>7,.0f} photos/s {[round(r) for r in each]}")
        return
    os.environ["FMTK_CACHE"] = str(args.out / "cache")
    entries = ["catdog_vgg", *args.arch]
    measured: dict[str, list[dict]] = {entry: [] for entry in entries}
    for _ in range(args.rounds):
        for entry in entries:  # in turns: a drift of the machine's speed reaches every entry
            measured[entry].append(measure(entry, args.data_dir, args.image_size, args.epochs, args.out))
    print(f"{args.image_size} px, {args.epochs} epochs, {args.rounds} rounds, CPU threads {os.cpu_count()}")
    print(f"{'entry':<22} {'best':>7} {'last':>7}  training seconds (median; each round)")
    for entry, rounds in measured.items():
        name = entry if entry == "catdog_vgg" else f"images arch={entry}"
        seconds = [round(r["seconds"], 1) for r in rounds]
        print(f"{name:<22} {rounds[0]['best']:>7.2%} {rounds[0]['last']:>7.2%}  "
              f"{statistics.median(seconds):.1f} {seconds}")  # fmt: skip


if __name__ == "__main__":
    main()
