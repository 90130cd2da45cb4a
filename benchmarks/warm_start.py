"""A warm start against a start from scratch, on a small folder of other photos (CPU).

The source: an `images` run (resnet18 from scratch) on the Cat & Dog ``training_set``. The small
folder: ``--per-class`` photos of each class of ``test_set`` to train on (a fifth of them held out
for validation), the rest of ``test_set`` to test on, linked (never copied) into ``<out>/photos``.
On it, `images` trains for ``--epochs`` epochs from scratch, then from the source run's weights
(``weights=RUN``: every tensor fits, the classes being the same) at the recipe's LR and at the
``finetune`` preset's (1e-4). Printed: each run's test accuracy (best and last checkpoint) and
training seconds, and the source run's own accuracy on the small folder's test photos.

Then photos of other classes, so that the source's head does not fit and fine-tuning has a new
head to train: ``--per-class`` Fashion-MNIST training images of each of its 10 classes written as
PNG files (and 100 test images of each), trained from scratch, then from the source run's weights
(new head fc 512→10) with and without ``freeze_epochs=1`` (``backbone_lr_scale=0.1``).

    python benchmarks/warm_start.py --data-dir ../shared/datasets [--image-size 64]
        [--source-epochs 4] [--epochs 4] [--per-class 50] [--out runs/warm-start-benchmark]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from PIL import Image

import fmtk
from fmtk.data.mnist import FASHION_MNIST_CLASSES, find_mnist_files, read_idx


def small_folder(test_set: Path, out: Path, per_class: int) -> Path:
    """``out/{train,test}/<class>/``: links to the first ``per_class`` photos of each class of
    ``test_set`` (sorted by name), and to the others."""
    for folder in sorted(p for p in test_set.iterdir() if p.is_dir()):
        photos = sorted(folder.iterdir())
        for split, chosen in (("train", photos[:per_class]), ("test", photos[per_class:])):
            (out / split / folder.name).mkdir(parents=True, exist_ok=True)
            for photo in chosen:
                link = out / split / folder.name / photo.name
                if not link.exists():
                    link.symlink_to(photo.resolve())
    return out


def fashion_folder(data_dir: Path, out: Path, per_class: int, test_per_class: int = 100) -> Path:
    """``out/{train,test}/<class>/<i>.png``: the first ``per_class`` Fashion-MNIST training images
    of each class, and the first ``test_per_class`` test images of each."""
    files = find_mnist_files(data_dir, "FashionMNIST")
    for split, count in (("train", per_class), ("test", test_per_class)):
        images, labels = read_idx(files[f"{split}_images"]), read_idx(files[f"{split}_labels"])
        for label, name in enumerate(FASHION_MNIST_CLASSES):
            folder = out / split / name.replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            for i in (labels == label).nonzero()[0][:count]:
                Image.fromarray(images[i]).save(folder / f"{i}.png")
    return out


def report(name: str, result: fmtk.Result) -> None:
    seconds = sum(row["epoch_seconds"] for row in result.history)
    best, last = (result.test[which]["accuracy"] for which in ("best", "last"))
    print(f"{name:<42} {best:>7.2%} {last:>7.2%}  {seconds:6.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--source-epochs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("runs/warm-start-benchmark"))
    args = parser.parse_args()
    os.environ["FMTK_CACHE"] = str(args.out / "cache")
    catdog = args.data_dir / "catdog"
    common = {"device": "cpu", "output_dir": args.out, "quiet": True, "image_size": args.image_size}
    source = fmtk.fit("images", data_dir=catdog / "training_set", epochs=args.source_epochs, **common)
    photos = small_folder(catdog / "test_set", args.out / "photos", args.per_class)
    print(f"{args.image_size} px; source: {args.source_epochs} epochs on catdog/training_set; "
          f"small folder: {args.per_class} photos per class, {args.epochs} epochs")  # fmt: skip
    print(f"{'run':<42} {'best':>7} {'last':>7}  training s")
    report("source (training_set)", source)
    report("small folder, from scratch", fmtk.fit("images", data_dir=photos, epochs=args.epochs, **common))
    untouched = fmtk.evaluate(source.run_dir, data_dir=photos, device="cpu")  # its test split
    print(f"{'source on the small test split':<42} {untouched.accuracy:>7.2%}  (no training on it)")
    for lr in (None, 1e-4):  # the recipe's LR (1e-3), then the finetune preset's
        values = {"weights": str(source.run_dir), **({"lr": lr} if lr else {})}
        warm = fmtk.fit("images", data_dir=photos, epochs=args.epochs, **values, **common)
        report(f"small folder, weights=source, lr {lr or 1e-3:g}", warm)
    fashion = fashion_folder(args.data_dir, args.out / "fashion", args.per_class)
    print(f"Fashion-MNIST as PNG files: {args.per_class} per class (10 classes), {args.epochs} epochs")
    report("fashion, from scratch", fmtk.fit("images", data_dir=fashion, epochs=args.epochs, **common))
    for freeze in (0, 1):
        values = {
            "weights": str(source.run_dir),
            "freeze_epochs": freeze,
            "backbone_lr_scale": 0.1 if freeze else 1,
        }
        warm = fmtk.fit("images", data_dir=fashion, epochs=args.epochs, **values, **common)
        print(f"  {json.loads((warm.run_dir / 'config.json').read_text())['started_from']}")
        report(f"fashion, weights=source, freeze_epochs={freeze}", warm)


if __name__ == "__main__":
    main()
