"""Near copies across a photo folder's splits: a valid or test photo that is (nearly) a training
photo — the same shot saved twice, re-compressed, resized or brightened — is a question the model
has seen answered, and that split's figures flatter it.

Each photo's fingerprint is taken from its decoded pixels, made 32×36 grey: a 64-bit difference
hash (pooled to 8×9, one bit per pair of neighbours in a row: is the right one brighter) and the
32×36 thumbnail itself. Pairs whose hashes differ in at most :data:`HASH_BITS` bits are candidates,
and those whose thumbnails correlate by at least :data:`SAME` are near copies; a flat (one-colour)
photo is no one's copy. ``benchmarks/copies.py`` measured it on the 2,500 Cat & Dog photos (3.1
million pairs), decoded at 32 and at 224 px: the one pair that is the same photo
(``training_set/dogs/dog.74.jpg`` and ``dog.180.jpg``) is found (0 and 2 bits apart, correlating
0.999) and no other (the other candidates correlate 0.789 and 0.776 at most); of 200 of them saved
again as JPEG at quality 50, at half size or 15% brighter, all are found at 224 px and 176 to 182
at 32 px, where a photo has few pixels to tell by; a crop of 5% off each side is another photo. It
is made for photos: of 1,000 Fashion-MNIST test images made 64 px photos, 12 (mostly plain
trousers, alike to the pixel at 32×36) are taken for copies of 4,000 training ones; of MNIST's, none.

The same search among all of a folder's photos finds the pairs in two classes' folders
(:func:`label_conflicts`): one of each is labelled wrong.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision.transforms.v2.functional import resize

HASH_BITS = 10  # candidates: hashes this close
SAME = 0.99  # near copies: thumbnails this correlated
THUMBNAIL = (32, 36)  # grey pixels: the hash pools it 4×4 to 8×9
FLAT = 2.0  # a thumbnail whose grey levels vary less than this (standard deviation) is no one's copy
PAIRS_AT_ONCE = 2**23  # hash pairs compared in one step (64 MiB of uint64)
AT_ONCE = 2**12  # photos, and photos compared with them, whose thumbnails are correlated in one product


@dataclasses.dataclass(frozen=True)
class Fingerprints:
    """Photos' difference hashes (uint64) and grey 32×36 thumbnails (uint8 rows of 1,152)."""

    hashes: np.ndarray
    thumbnails: np.ndarray

    @classmethod
    def of(cls, images: torch.Tensor, chunk: int = 256) -> Fingerprints:
        """The fingerprints of uint8 N×C×S×S ``images``, a chunk at a time, each first made 32×36
        (torchvision's uint8 resize: a float copy of a 224 px photo alone took 4 times as long)."""
        parts = []
        for start in range(0, len(images), chunk):
            small = resize(images[start : start + chunk], list(THUMBNAIL), antialias=True).float().mean(1)
            pooled = small.reshape(len(small), 8, 4, 9, 4).mean((2, 4))
            bits = (pooled[:, :, 1:] > pooled[:, :, :-1]).reshape(len(small), 64).numpy()
            hashes = np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)
            parts.append(cls(hashes, small.round().to(torch.uint8).reshape(len(small), -1).numpy()))
        return cls.joined(parts)

    @classmethod
    def joined(cls, parts: Sequence[Fingerprints]) -> Fingerprints:
        if not parts:
            return cls(np.zeros(0, np.uint64), np.zeros((0, math.prod(THUMBNAIL)), np.uint8))
        hashes = np.concatenate([part.hashes for part in parts])
        return cls(hashes, np.concatenate([part.thumbnails for part in parts]))

    def __len__(self) -> int:
        return len(self.hashes)

    def __getitem__(self, rows: np.ndarray | list[int]) -> Fingerprints:
        return Fingerprints(self.hashes[rows], self.thumbnails[rows])

    def flat(self) -> np.ndarray:
        """Whether each thumbnail is flat (one colour, near enough: :data:`FLAT`), a block at a time
        (a float copy of them all would be 4 times their size)."""
        blocks = range(0, len(self), AT_ONCE)
        spread = [self.thumbnails[at : at + AT_ONCE].astype(np.float32).std(axis=1) for at in blocks]
        return np.concatenate([np.zeros(0, np.float32), *spread]) < FLAT


def unit_rows(thumbnails: np.ndarray) -> np.ndarray:
    """Thumbnails as float32 rows of mean 0 and length 1: their dot products are correlations."""
    rows = thumbnails.astype(np.float32)
    rows -= rows.mean(axis=1, keepdims=True)
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-6)


def correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The correlation of each row of ``first`` with the same row of ``second`` (thumbnails)."""
    return np.einsum("ij,ij->i", unit_rows(first), unit_rows(second))


def copied(photos: Fingerprints, of: Fingerprints, labels: np.ndarray | None = None) -> np.ndarray:
    """For each of ``photos``, the index of its first near copy among ``of``, or -1: pairs whose
    hashes differ in at most :data:`HASH_BITS` bits and whose thumbnails correlate by :data:`SAME`
    or more; flat photos are left out. With ``labels`` (of ``photos``, which ``of`` is too), only
    copies of another label count. Memory stays bounded however many hashes agree (a folder of
    scans on white): a block of photos at a time, their thumbnails correlated by a matrix product
    with those of the photos whose hashes are close to any of them, a block of those at a time."""
    found = np.full(len(photos), -1)
    if not len(of):
        return found
    flat = of.flat()
    step = max(1, min(AT_ONCE, PAIRS_AT_ONCE // len(of)))
    for start in range(0, len(photos), step):
        block = photos[np.arange(start, min(start + step, len(photos)))]
        close = np.bitwise_count(block.hashes[:, None] ^ of.hashes[None, :]) <= HASH_BITS
        if labels is not None:
            close &= labels[start : start + step, None] != labels[None, :]
        close[block.flat()] = False
        close[:, flat] = False
        rows, columns = np.flatnonzero(close.any(axis=1)), np.flatnonzero(close.any(axis=0))
        units, same = unit_rows(block.thumbnails[rows]), np.zeros_like(close)
        for at in range(0, len(columns), AT_ONCE):
            some = columns[at : at + AT_ONCE]
            pairs = np.ix_(rows, some)
            same[pairs] = close[pairs] & (units @ unit_rows(of.thumbnails[some]).T >= SAME)
        copies, first = np.nonzero(same)  # row by row, each row's columns in order
        copies, at = np.unique(copies, return_index=True)  # each photo's first copy
        found[start + copies] = first[at]
    return found


@dataclasses.dataclass(frozen=True)
class Fingerprinted:
    """Photos by name with their fingerprints: a run's training photos, kept in its folder
    (``train_fingerprints.npz``) for ``fmtk evaluate --folder``."""

    names: tuple[str, ...]
    prints: Fingerprints

    def save(self, path: Path) -> None:
        """Written whole or not at all."""
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with temporary.open("wb") as file:
                np.savez(file, names=np.array(self.names, dtype=str), hashes=self.prints.hashes,
                         thumbnails=self.prints.thumbnails)  # fmt: skip
            temporary.replace(path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Fingerprinted:
        with np.load(path) as saved:
            return cls(tuple(saved["names"].tolist()), Fingerprints(saved["hashes"], saved["thumbnails"]))


class NearCopy(NamedTuple):
    split: str  # valid or test
    photo: str
    copy_of: str
    copy_split: str  # train, or for a test photo valid
    left_out: bool = False  # of its split (drop_near_copies)


def near_copies(
    prints: dict[str, Fingerprints],
    names: dict[str, list[str]],
    leave_out: bool = False,
    labels: dict[str, np.ndarray] | None = None,
) -> tuple[NearCopy, ...]:
    """Each valid and test photo that is a near copy of a training photo, and each other test photo
    that is one of a valid photo; ``prints`` and ``names`` (and ``labels``) by split, in the same
    order. With ``labels``, a copy of another class is left to :func:`label_conflicts`: it does not
    flatter a split's figures, one of the two is labelled wrong. With ``leave_out`` each is marked
    as left out of its split."""
    found: list[NearCopy] = []
    for split, of in (("valid", "train"), ("test", "train"), ("test", "valid")):
        taken = {copy.photo for copy in found}
        for row, original in enumerate(copied(prints[split], prints[of])):
            if original < 0 or names[split][row] in taken:
                continue
            if labels is None or labels[split][row] == labels[of][original]:
                found.append(NearCopy(split, names[split][row], names[of][original], of, leave_out))
    return tuple(found)


def copies_line(copies: Sequence[NearCopy], recorded: bool = True) -> str | None:
    """A line counting the near copies by split, with the first, and whether they were left out
    of their splits; or None. ``recorded``: a run's, which config.json lists them in."""
    if not copies:
        return None
    counts = Counter(copy.split for copy in copies)
    counted = " and ".join(f"{counts[split]} {split}" for split in ("valid", "test") if counts[split])
    first, one = copies[0], len(copies) == 1
    of = {copy.copy_split for copy in copies}
    against = " or ".join(name for split, name in (("train", "training"), ("valid", "valid")) if split in of)
    splits = " and ".join(split for split in ("valid", "test") if counts[split])
    example = f"{'' if one else 'e.g. '}{first.photo} ~ {first.copy_of}"
    said = (
        f"near copies across splits: {counted} photo{'' if one else 's'} {'is' if one else 'are'} a near "
        f"copy of a {against} photo ({example}): "
    )
    if first.left_out:
        plural = "s" if len(counts) > 1 else ""
        listed = "; config.json: near_copies" if recorded else ""
        return said + f"left out of the {splits} split{plural} (drop_near_copies{listed})"
    return said + (
        f"the {splits} figures flatter the model; remove one of each pair, or leave them out with "
        "drop_near_copies=true" + (" (config.json lists them all: near_copies)" if recorded else "")
    )


class LabelConflict(NamedTuple):
    photo: str
    label: str  # its class folder's class
    copy_of: str  # a near copy of it in another class's folder
    copy_label: str


def label_conflicts(prints: Fingerprints, names: Sequence[str], labels: np.ndarray, classes: Sequence[str]
                    ) -> tuple[LabelConflict, ...]:  # fmt: skip
    """The pairs of photos (of any splits) that are near copies of each other in two classes'
    folders: one of each pair is labelled wrong, and the model is taught both answers."""
    found = copied(prints, prints, labels)
    pairs = sorted({(min(i, j), max(i, j)) for i, j in enumerate(found.tolist()) if j >= 0})
    return tuple(LabelConflict(names[i], classes[labels[i]], names[j], classes[labels[j]]) for i, j in pairs)


def conflicts_line(conflicts: Sequence[LabelConflict], recorded: bool = True) -> str | None:
    """A line counting the pairs of photos in two classes' folders, with the first; or None.
    ``recorded``: a run's, which config.json lists them in."""
    if not conflicts:
        return None
    first, one = conflicts[0], len(conflicts) == 1
    pair = f"{first.photo} ({first.label}) ~ {first.copy_of} ({first.copy_label})"
    counted = pair if one else f"{len(conflicts)} pairs, e.g. {pair}"
    each = "the two" if one else "each pair"
    listed = f" (config.json lists {'it' if one else 'them all'}: label_conflicts)" if recorded else ""
    return (
        f"the same photo in two classes: {counted}: one of {each} is labelled wrong; move it to its "
        f"class or remove it{listed}"
    )
