"""How well fmtk's near-copy check (fmtk.data.copies) tells copies from other photos, and what it costs,
on the Cat & Dog photos (CPU).

For each image size: every pair of the 2,500 photos (both folders), counted by how many bits their
hashes differ and, for those that are candidates (at most HASH_BITS bits), by whether their thumbnails
correlate enough to be near copies; then ``--edited`` training photos each saved again four ways
(JPEG at quality 50, half the width and height, 15% brighter, 5% cropped off each side) and
compared with their original: the bits, the correlation and how many are found; and the cost: the
fingerprints of the 2,000 training photos against decoding them (median of ``--rounds``, in turns).
Then images that are not photos (Fashion-MNIST, MNIST): how many are taken for copies. Last, the
comparison of 10,000 photos with 40,000 (random hashes: few candidates) and of 4,096 whose hashes
are all alike with themselves (every pair a candidate: the worst case).

    python benchmarks/copies.py --data-dir ../shared/datasets [--sizes 32 224] [--edited 200]
        [--rounds 5] [--out runs/copies-benchmark.json]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import at_least, spread, write_json
from PIL import Image, ImageEnhance

from fmtk.data.copies import HASH_BITS, SAME, Fingerprints, copied, correlation
from fmtk.data.images import decode_images, list_image_folder
from fmtk.data.mnist import read_idx
from fmtk.device import usable_cores

EDITS = {
    "jpeg q50": lambda image: Image.open(_saved(image, "JPEG", quality=50)),
    "half size": lambda image: image.resize((image.width // 2, image.height // 2)),
    "15% brighter": lambda image: ImageEnhance.Brightness(image).enhance(1.15),
    "5% cropped": lambda image: image.crop(
        (
            image.width // 20,
            image.height // 20,
            image.width - image.width // 20,
            image.height - image.height // 20,
        )
    ),
}


def _saved(image: Image.Image, format: str, **options: object) -> io.BytesIO:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    buffer.seek(0)
    return buffer


def all_pairs(prints: Fingerprints, names: list[str]) -> dict:
    """Every pair of ``prints``: counts by hash bits up to HASH_BITS, the near copies among them and
    the highest correlation of the others."""
    bits = np.bitwise_count(prints.hashes[:, None] ^ prints.hashes[None, :])
    first, second = np.nonzero(np.triu(bits <= HASH_BITS, 1))
    correlated = correlation(prints.thumbnails[first], prints.thumbnails[second])
    same = correlated >= SAME
    return {
        "pairs": len(prints) * (len(prints) - 1) // 2,
        "within_bits": {k: int((bits[first, second] <= k).sum()) for k in range(HASH_BITS + 1)},
        "near_copies": [
            {"photos": [names[i], names[j]], "bits": int(bits[i, j]), "correlation": round(float(c), 4)}
            for i, j, c in zip(first[same], second[same], correlated[same], strict=True)
        ],
        "highest_other_correlation": round(float(correlated[~same].max()), 4) if (~same).any() else None,
    }


def edited_copies(paths: list[str], originals: Fingerprints, size: int) -> dict:
    """Each of ``paths`` edited each way, decoded at ``size`` and compared with its original."""
    found = {}
    with tempfile.TemporaryDirectory() as folder:
        for edit, change in EDITS.items():
            files = []
            for index, path in enumerate(paths):
                file = Path(folder) / f"{index}.png"
                change(Image.open(path).convert("RGB")).save(file)
                files.append((str(file), 0))
            prints = Fingerprints.of(decode_images(files, size))
            bits = np.bitwise_count(prints.hashes ^ originals.hashes)
            correlated = correlation(prints.thumbnails, originals.thumbnails)
            judged = np.array([copied(prints[[i]], originals[[i]])[0] == 0 for i in range(len(paths))])
            found[edit] = {
                "bits_max": int(bits.max()), "bits_median": float(np.median(bits)),
                "correlation_min": round(float(correlated.min()), 4), "found": int(judged.sum()),
                "of": len(paths),
            }  # fmt: skip
    return found


def cost(samples: list[tuple[str, int]], size: int, rounds: int) -> dict:
    """Seconds of decoding ``samples`` and of their fingerprints, in turns."""
    decoding, printing = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        images = decode_images(samples, size)
        decoding.append(time.perf_counter() - started)
        started = time.perf_counter()
        Fingerprints.of(images)
        printing.append(time.perf_counter() - started)
    return {"decode_s": decoding, "fingerprints_s": printing,
            "ratio": statistics.median(printing) / statistics.median(decoding)}  # fmt: skip


def show(size: int, pairs: dict, edited: dict, spent: dict) -> None:
    print(f"\n{size} px: {pairs['pairs']:,} pairs; within k bits: {pairs['within_bits']}")
    for copy in pairs["near_copies"]:
        first, second = copy["photos"]
        print(f"  near copies: {first} ~ {second} ({copy['bits']} bits, {copy['correlation']})")
    print(f"  the other candidates' highest correlation: {pairs['highest_other_correlation']}")
    for edit, figures in edited.items():
        found, bits = (
            f"{figures['found']}/{figures['of']}",
            f"{figures['bits_max']} (median {figures['bits_median']:g})",
        )
        print(f"  {edit:12}  found {found}  bits max {bits}  correlation min {figures['correlation_min']}")
    decoding, printing = spread(spent["decode_s"], "{:.3f}"), spread(spent["fingerprints_s"], "{:.3f}")
    print(f"  2,000 photos: decoding {decoding} s, fingerprints {printing} s: {spent['ratio']:.3f}×")


def mnist_photos(data_dir: Path, name: str, split: str, count: int) -> Fingerprints:
    """The first ``count`` images of an MNIST-like file made 64 px colour photos, fingerprinted."""
    images = read_idx(data_dir / name / "raw" / f"{split}-images-idx3-ubyte.gz")[:count]
    grey = torch.from_numpy(images.copy())  # writable
    scaled = torch.nn.functional.interpolate(grey[:, None].float(), size=64, mode="bilinear")
    return Fingerprints.of(scaled.round().to(torch.uint8).expand(-1, 3, -1, -1))


def other_kinds(data_dir: Path) -> dict:
    """Images that are not photos, whose different items look alike: 1,000 test images of
    Fashion-MNIST and of MNIST against 4,000 training ones, as 64 px colour photos: how many are
    taken for near copies."""
    flagged = {}
    for name in ("FashionMNIST", "MNIST"):
        found = copied(
            mnist_photos(data_dir, name, "t10k", 1000), mnist_photos(data_dir, name, "train", 4000)
        )
        flagged[name] = int((found >= 0).sum())
        print(
            f"{name} as 64 px photos: {flagged[name]} of 1,000 test images taken for copies of 4,000 training"
        )
    return flagged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="the datasets folder (catdog/ in it)")
    parser.add_argument("--sizes", type=at_least(16), nargs="+", default=[32, 224], help="image sizes, px")
    parser.add_argument("--edited", type=at_least(1), default=200, help="training photos saved again")
    parser.add_argument("--rounds", type=at_least(1), default=5, help="rounds of the cost's timing")
    parser.add_argument("--out", type=Path, default=Path("runs/copies-benchmark.json"))
    arguments = parser.parse_args()
    root = arguments.data_dir / "catdog"
    train, _, _ = list_image_folder(root / "training_set")
    test, _, _ = list_image_folder(root / "test_set")
    names = [path for path, _ in train + test]
    report = {"threads": torch.get_num_threads(), "cores": usable_cores(), "sizes": {}}
    print(f"HASH_BITS {HASH_BITS}, SAME {SAME}; {len(names):,} photos; torch threads {report['threads']}")
    for size in arguments.sizes:
        prints = Fingerprints.of(decode_images(train + test, size))
        pairs = all_pairs(prints, names)
        edited = edited_copies(names[: arguments.edited], prints[np.arange(arguments.edited)], size)
        spent = cost(train, size, arguments.rounds)
        report["sizes"][size] = {"pairs": pairs, "edited": edited, "cost": spent}
        show(size, pairs, edited, spent)
    report["other_kinds"] = other_kinds(arguments.data_dir)
    rng = np.random.default_rng(0)
    thumbnails = lambda count: rng.integers(0, 256, (count, 1152), dtype=np.uint8)  # noqa: E731
    random = [
        Fingerprints(rng.integers(0, 2**63, n, dtype=np.uint64), thumbnails(n)) for n in (10_000, 40_000)
    ]
    alike = Fingerprints(np.zeros(4096, np.uint64), thumbnails(4096))
    seconds, worst = [], []
    for _ in range(arguments.rounds):
        started = time.perf_counter()
        copied(*random)
        seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        copied(alike, alike)
        worst.append(time.perf_counter() - started)
    report["compare_alike_4096_s"] = worst
    print(f"comparing 4,096 photos whose hashes are all alike with themselves: {spread(worst, '{:.2f}')} s")
    report["compare_10000_by_40000_s"] = seconds
    print(f"\ncomparing 10,000 photos with 40,000: {spread(seconds, '{:.2f}')} s")
    write_json(arguments.out, report)
    print(f"report: {arguments.out}")


if __name__ == "__main__":
    main()
