"""Batches: datasets as whole uint8 tensors on the training device, sliced by index; the splits.

A plain DataLoader with per-sample PIL → ToTensor conversion spends most of an MNIST epoch on
Python overhead; slicing one in-memory tensor by a random permutation costs almost nothing.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import ignite.distributed as idist
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from fmtk.data.augment import Augmentation
from fmtk.data.copies import Fingerprinted, LabelConflict, NearCopy
from fmtk.errors import FmtkError


def scale_pixels(
    images: torch.Tensor, scale: float, mean: torch.Tensor | None = None, std: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 images (C×H×W or N×C×H×W) as float ``/ scale``, then ``(x - mean) / std`` per channel."""
    x = images.float().div_(scale)
    return x if mean is None else (x - mean) / std


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
    """Batches ``(x, y)`` sliced from uint8 ``images`` (N×C×H×W; or any float tensor of samples, a
    table's rows N×F, with ``scale=1.0`` and no augmentation) and int64 ``labels``.

    Each batch is scaled to float (``/ scale``), normalised by ``mean``/``std``, and optionally
    augmented per sample (:class:`~fmtk.data.augment.Augmentation`), all on the tensors' device and
    without a loop over samples: flipped left-right with probability ``flip_p``, a random-resized
    crop of at least ``crop_scale`` of the area, translated by up to ``shift`` pixels (a random crop
    with zero padding), and a random box erased with probability ``erase_p``. With ``shuffle``
    every epoch draws a new permutation (and the augmentation) from a generator seeded by
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
        shift: int = 0,
        erase_p: float = 0.0,
        crop_scale: float = 0.0,
        names: Sequence[str] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if names is not None and len(names) != len(images):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        self.images = images
        self.names = names  # each sample's file, when it has one (a photo folder's)
        self.labels = labels
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.scale = scale
        self.augmentation = Augmentation(flip_p, shift, erase_p, crop_scale)
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
        whole.shuffle, whole.augmentation, whole.rank, whole.world_size = False, Augmentation(), 0, 1
        return whole

    def take(self, index: torch.Tensor) -> TensorBatches:
        """The samples at ``index``, in that order, as one unshuffled, unsharded batch that keeps
        this split's augmentation (to look at what training sees)."""
        taken = copy.copy(self)
        taken.images, taken.labels, taken.batch_size = self.images[index], self.labels[index], len(index)
        taken.names = None if self.names is None else [self.names[i] for i in index.tolist()]
        taken.shuffle, taken.rank, taken.world_size = False, 0, 1
        return taken

    def unscaled(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs this split gave (augmented, mixed) back in its images' pixel values, 0 … ``scale``
        (the inverse of :func:`scale_pixels`; random erasing's noise clamped): to look at them."""
        x = x if self.mean is None else x * self.std.to(x.device) + self.mean.to(x.device)
        return (x * self.scale).clamp(0, self.scale)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation (and augmentation) the next iteration uses."""
        self.epoch = epoch

    def _global_batches(self) -> list[tuple[int, int]]:
        """``(start, stop)`` positions of each global batch in the epoch's (padded) order. A
        training (shuffled) split's last batch of one sample per process joins the batch before
        it: BatchNorm cannot train on a single sample."""
        count = len(self.labels)
        if self.shuffle:
            count = math.ceil(count / self.world_size) * self.world_size
        batches = [(start, min(start + self.batch_size, count)) for start in range(0, count, self.batch_size)]
        if self.shuffle and len(batches) > 1 and batches[-1][1] - batches[-1][0] <= self.world_size:
            batches[-2:] = [(batches[-2][0], batches[-1][1])]
        return batches

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
        # Each sample's augmentation for the whole epoch, drawn up front from the (seed, epoch)
        # generator: any epoch's batches can be made again, so a resumed run sees the same ones.
        augmentation = self.augmentation
        drawn = augmentation.draw(len(order), self.images.shape[-2:], generator, device)
        for start, stop in batches:
            if stop - start <= self.rank:
                continue  # an evaluation split's short last batch has nothing for this process
            mine = slice(start + self.rank, stop, self.world_size)
            index = order[mine]
            x = scale_pixels(self.images[index], self.scale, self.mean, self.std)
            if drawn:
                x = augmentation.apply(x, drawn, mine)
            yield x, self.labels[index]


class Batches(Protocol):
    """What a split is: a re-iterable of ``(x, y)`` batches with a length (TensorBatches,
    :class:`~fmtk.data.images.LoaderBatches`, a DataLoader)."""

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...


@dataclass
class DataSplits:
    """The three splits a run needs, as iterables of ``(x, y)`` batches, and the class names; and
    the data files left out: those that could not be read (``skipped``: a photo folder's
    ``skip_bad_images``), and those of a photo folder's class folders that are not photos
    (``others``: ``.mov``, ``.txt``…); the valid and test photos that are near copies of photos
    they are judged against (``near_copies``: :mod:`fmtk.data.copies`), the pairs of near copies in
    two classes' folders (``conflicts``), the fingerprints of the training photos
    (``trained_on``: kept in the run folder for ``fmtk evaluate --folder``), and what the photo
    cache did (``cached``: one line, ``data_cache=file``)."""

    train: Batches
    valid: Batches
    test: Batches
    classes: list[str]
    skipped: tuple[str, ...] = ()
    others: tuple[str, ...] = ()
    near_copies: tuple[NearCopy, ...] = ()
    conflicts: tuple[LabelConflict, ...] = ()
    trained_on: Fingerprinted | None = None
    cached: str | None = None


def stratified_split(
    labels: np.ndarray,
    valid_size: float | int,
    seed: int,
    *,
    source: str = "the labels",
    split: str = "valid",
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a stratified train/valid split (scikit-learn's train_test_split); ``source``
    names the data and ``split`` the held-out part in the one-line error for labels that cannot be
    split so."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    lonely = [str(label) for label, count in enumerate(counts) if count == 1]
    if lonely:
        raise FmtkError(
            f"{source}: class {', '.join(lonely)} has a single sample; a stratified {split} split needs "
            "two or more of each class"
        )
    indices = np.arange(len(labels))
    try:
        train, valid = train_test_split(indices, test_size=valid_size, stratify=labels, random_state=seed)
    except ValueError as error:  # e.g. fewer valid samples than classes
        raise FmtkError(f"{source}: cannot split off a stratified {split} set ({error})") from None
    return np.sort(train), np.sort(valid)
