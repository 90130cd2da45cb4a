"""Datasets as whole uint8 tensors on the training device, served in batches by index.

A plain DataLoader with per-sample PIL → ToTensor conversion spends most of an MNIST epoch on
Python overhead; slicing one in-memory tensor by a random permutation costs almost nothing.
"""

from __future__ import annotations

import copy
import gzip
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch
from PIL import Image
from sklearn.model_selection import train_test_split

from fmtk.errors import FmtkError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = [
    "T-Shirt", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle Boot",
]  # fmt: skip


def scale_pixels(
    images: torch.Tensor, scale: float, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 images (C×H×W or N×C×H×W) as float ``/ scale``, then ``(x - mean) / std`` per channel."""
    x = images.float().div_(scale)
    return x if mean is None else (x - mean) / std


def grayscale_input(image: Image.Image, size: int) -> torch.Tensor:
    """One image file (any mode) as the MNIST-like model input: 1×size×size in [0, 1]."""
    pixels = np.asarray(image.convert("L").resize((size, size), Image.BILINEAR))
    return scale_pixels(torch.from_numpy(pixels.copy()).unsqueeze(0), 255.0)


def flip_left_right(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """``images`` (N×C×H×W) with the samples where ``flip`` (N booleans) is True mirrored."""
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)


def check_global_batch(batch_size: int, world_size: int) -> None:
    """With several processes the batch size is the global batch of one step: it must divide."""
    if batch_size % world_size:
        raise FmtkError(
            f"batch_size {batch_size} is not divisible by {world_size} processes; "
            "the recipe's batch size is the global batch of one step"
        )


def process_shard() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` when not distributed)."""
    return idist.get_rank(), idist.get_world_size()


class TensorBatches:
    """Batches ``(x, y)`` sliced from uint8 ``images`` (N×C×H×W) and int64 ``labels``.

    Each batch is scaled to float (``/ scale``), optionally flipped left-right per sample with
    probability ``flip_p`` and normalised by ``mean``/``std``, all on the tensors' device. With
    ``shuffle`` every epoch draws a new permutation (and flips) from a generator seeded by
    ``(seed, epoch)``, so the order of any epoch can be reproduced (call :meth:`set_epoch` before
    iterating).

    When several processes train (``ignite.distributed``), ``batch_size`` stays the global batch:
    process ``rank`` of ``world_size`` takes every ``world_size``-th sample of each global batch,
    so the processes' shards are disjoint and together are exactly the single-process batches.
    A shuffled split is padded (by repeating its first samples, as DistributedSampler does) so
    every process gets the same number of samples per step; an unshuffled (evaluation) split is
    not, so its metrics count every sample once.

    >>> batches = TensorBatches(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10), 4)
    >>> [len(y) for _, y in batches]
    [4, 4, 2]
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        scale: float = 255.0,
        flip_p: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.scale = scale
        self.flip_p = flip_p
        self.rank, self.world_size = shard if shard is not None else process_shard()
        if shuffle:
            check_global_batch(batch_size, self.world_size)
        device = images.device
        self.mean = None if mean is None else torch.tensor(mean, device=device).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, device=device).view(-1, 1, 1)
        self.epoch = 0

    def whole(self) -> TensorBatches:
        """The same split, unshuffled and unsharded (every sample, in file order)."""
        whole = copy.copy(self)
        whole.shuffle, whole.flip_p, whole.rank, whole.world_size = False, 0.0, 0, 1
        return whole

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation (and flips) the next iteration uses."""
        self.epoch = epoch

    def _global_batches(self) -> list[tuple[int, int]]:
        """``(start, stop)`` positions of each global batch in the epoch's (padded) order."""
        count = len(self.labels)
        if self.shuffle:
            count = math.ceil(count / self.world_size) * self.world_size
        return [(start, min(start + self.batch_size, count)) for start in range(0, count, self.batch_size)]

    def __len__(self) -> int:
        return sum(1 for start, stop in self._global_batches() if stop - start > self.rank)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.images.device
        generator = torch.Generator(device=device).manual_seed(self.seed * 100_003 + self.epoch)
        count = len(self.labels)
        batches = self._global_batches()
        if self.shuffle:
            order = torch.randperm(count, generator=generator, device=device)
            padded = batches[-1][1]
            order = torch.cat([order, order[: padded - count]])
        else:
            order = torch.arange(count, device=device)
        flips = None
        if self.flip_p > 0:
            flips = torch.rand(len(order), generator=generator, device=device) < self.flip_p
        for start, stop in batches:
            if stop - start <= self.rank:
                continue  # an evaluation split's short last batch has nothing for this process
            index = order[start + self.rank : stop : self.world_size]
            x = scale_pixels(self.images[index], self.scale, self.mean, self.std)
            if flips is not None:
                x = flip_left_right(x, flips[start + self.rank : stop : self.world_size])
            yield x, self.labels[index]


@dataclass
class DataSplits:
    """The three splits a run needs, as iterables of ``(x, y)`` batches, and the class names."""

    train: TensorBatches
    valid: TensorBatches
    test: TensorBatches
    classes: list[str]


def stratified_split(labels: np.ndarray, valid_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/valid split (scikit-learn's train_test_split)."""
    indices = np.arange(len(labels))
    train, valid = train_test_split(indices, test_size=valid_size, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(valid)


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (MNIST's format), gzip-compressed or not.

    torchvision's reader takes only uncompressed files, and extracting them would write into a
    data root that may be read-only; IDX is a 4-byte magic, big-endian sizes, then the bytes.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError) as error:
        raise FmtkError(f"{path}: cannot read ({error})") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise FmtkError(f"{path}: not an IDX file of unsigned bytes (wrong magic number)")
    header = 4 + 4 * data[3]
    shape = struct.unpack(f">{data[3]}I", data[4:header]) if len(data) >= header else ()
    expected = header + math.prod(shape)
    if not shape or len(data) != expected:
        raise FmtkError(f"{path}: truncated or corrupt ({len(data)} bytes, expected {expected})")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_mnist_files(data_dir: Path, name: str) -> dict[str, Path]:
    """The four IDX files of ``name`` (MNIST or FashionMNIST) in torchvision's layout.

    Uncompressed or ``.gz`` files are used where they are; when none is there, torchvision
    downloads them into ``data_dir`` (this needs the network).
    """
    raw = data_dir / name / "raw"

    def present() -> dict[str, Path]:
        found = {}
        for key, stem in MNIST_FILES.items():
            for candidate in (raw / stem, raw / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        return found

    found = present()
    if not found:
        import torchvision.datasets

        created = [folder for folder in (raw, raw.parent, data_dir) if not folder.exists()]
        try:
            getattr(torchvision.datasets, name)(str(data_dir), download=True)
        except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
            for folder in created:  # leave no empty folders behind
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
            files = ", ".join(f"{stem}.gz" for stem in MNIST_FILES.values())
            raise FmtkError(
                f"{name} not found in {raw} and the download failed ({type(error).__name__}); "
                f"put {files} there"
            ) from None
        found = present()
    missing = [f"{MNIST_FILES[key]}.gz" for key in MNIST_FILES if key not in found]
    if missing:
        raise FmtkError(f"{raw}: missing {', '.join(missing)}")
    return found


def load_mnist_like(
    data_dir: Path, name: str, batch_size: int, device: torch.device, seed: int, valid_fraction: float = 1 / 6
) -> DataSplits:
    """MNIST or FashionMNIST: a seeded stratified train/valid split (50,000/10,000 of the 60,000
    training images by default) and the test set."""
    files = find_mnist_files(Path(data_dir), name)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise FmtkError(
                f"{files[split + '_images']}: {images.shape} images do not match {labels.shape} labels"
            )

    def tensors(split: str, index: np.ndarray | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(arrays[f"{split}_images"][index].copy()).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{split}_labels"][index].astype(np.int64))
        return images.to(device), labels.to(device)

    train_index, valid_index = stratified_split(arrays["train_labels"], valid_fraction, seed)
    classes = FASHION_MNIST_CLASSES if name == "FashionMNIST" else [str(d) for d in range(10)]
    return DataSplits(
        train=TensorBatches(*tensors("train", train_index), batch_size, shuffle=True, seed=seed),
        valid=TensorBatches(*tensors("train", valid_index), batch_size),
        test=TensorBatches(*tensors("test"), batch_size),
        classes=classes,
    )


def load_digits_splits(batch_size: int, device: torch.device, seed: int) -> DataSplits:
    """scikit-learn's bundled 8×8 digits (1,797 images, values 0–16): stratified 60/20/20 split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1).to(device)
    labels = torch.from_numpy(digits.target.astype(np.int64)).to(device)
    rest, test = stratified_split(digits.target, 0.2, seed)
    train, valid = stratified_split(digits.target[rest], 0.25, seed)
    train, valid = rest[train], rest[valid]

    def batches(index: np.ndarray, shuffle: bool = False) -> TensorBatches:
        index = torch.from_numpy(index).to(device)
        return TensorBatches(images[index], labels[index], batch_size, shuffle=shuffle, seed=seed, scale=16.0)

    return DataSplits(
        batches(train, shuffle=True), batches(valid), batches(test), [str(d) for d in range(10)]
    )
