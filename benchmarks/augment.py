"""Augmenting training batches: fmtk's batched per-sample augmentation against torchvision v2 and
kornia (CPU).

On 10,000 uint8 images of each shape (MNIST 1×28×28 in batches of 100; photos 3×64×64 in batches
of 16), images per second of making the batches, the ways taking turns, medians of the rounds:

- ``none``: TensorBatches slicing and scaling, no augmentation;
- ``fmtk``: the same with a left-right flip (p 0.5), a translation of up to 2 (MNIST) or 8 (photos)
  pixels, or for the last row a random-resized crop (35–100% of the area), and random erasing
  (p 0.5), each drawn per sample, on the whole batch at once;
- ``torchvision v2, per sample``: the same transforms (``RandomHorizontalFlip``,
  ``RandomCrop(padding=…)`` or ``RandomResizedCrop``, ``RandomErasing``) called on each sample in a
  Python loop, which is what per-sample randomness costs with them;
- ``torchvision v2, per batch``: one call on the whole batch; fast, but every sample of a batch gets
  the same flip, crop and box (shown for what it costs, not a choice);
- ``kornia``: kornia.augmentation's same three transforms on the whole batch, per sample (only
  when kornia is installed: ``pip install kornia``; it is not an fmtk dependency).

    python benchmarks/augment.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torchvision.transforms import v2

from fmtk.data.batches import TensorBatches

# name: (shape, batch, padding of the shift, or None: a random-resized crop instead)
SHAPES = {
    "MNIST 1×28×28, batch 100": ((1, 28, 28), 100, 2),
    "photos 3×64×64, batch 16": ((3, 64, 64), 16, 8),
    "photos 3×64×64, batch 16, resized crop": ((3, 64, 64), 16, None),
}
COUNT = 10_000
CROP_SCALE = 0.35


def kornia_transform(shape: tuple[int, ...], pad: int | None):
    """kornia's flip, crop and erasing on a batch, per sample; None without kornia."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    crop = (K.RandomCrop(shape[1:], padding=pad) if pad is not None
            else K.RandomResizedCrop(shape[1:], scale=(CROP_SCALE, 1.0)))  # fmt: skip
    return K.AugmentationSequential(K.RandomHorizontalFlip(), crop, K.RandomErasing(p=0.5))


def images_per_second(batches, transform=None, per_sample: bool = False) -> float:
    started = time.perf_counter()
    for x, _ in batches:
        if transform is not None:
            x = torch.stack([transform(image) for image in x]) if per_sample else transform(x)
    return COUNT / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads, CPU; images/s, medians of {args.rounds}")
    print(
        "| images | none | fmtk (batched, per sample) | torchvision v2, per sample | v2, per batch | kornia |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, (shape, batch, pad) in SHAPES.items():
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (COUNT, *shape), dtype=torch.uint8, generator=generator)
        labels = torch.zeros(COUNT, dtype=torch.long)
        plain = TensorBatches(images, labels, batch, shuffle=True, shard=(0, 1))
        geometry = {"shift": pad} if pad is not None else {"crop_scale": CROP_SCALE}
        augmented = TensorBatches(images, labels, batch, shuffle=True, shard=(0, 1), flip_p=0.5, erase_p=0.5,
                                  **geometry)  # fmt: skip
        crop = (v2.RandomCrop(shape[1:], padding=pad) if pad is not None
                else v2.RandomResizedCrop(shape[1:], scale=(CROP_SCALE, 1.0), antialias=False))  # fmt: skip
        transform = v2.Compose([v2.RandomHorizontalFlip(), crop, v2.RandomErasing(p=0.5)])
        ways = {
            "none": (plain, None, False),
            "fmtk": (augmented, None, False),
            "v2 per sample": (plain, transform, True),
            "v2 per batch": (plain, transform, False),
        }
        kornia = kornia_transform(shape, pad)
        if kornia is not None:
            ways["kornia"] = (plain, kornia, False)
        measured: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(args.rounds + 1):  # the first round warms up
            for way, (batches, transform_or_none, per_sample) in ways.items():
                measured[way].append(images_per_second(batches, transform_or_none, per_sample))
        medians = [f"{statistics.median(values[1:]):,.0f}" for values in measured.values()]
        medians += ["not installed"] * (5 - len(medians))
        print(f"| {name} | " + " | ".join(medians) + " |", flush=True)


if __name__ == "__main__":
    main()
