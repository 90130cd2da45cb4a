"""Near copies across a photo folder's splits: a valid or test photo that is (nearly) a training
photo — the same shot saved twice, re-compressed, resized or brightened — is a question the model
has seen answered, and that split's figures flatter it.

Each photo's fingerprint is taken from its decoded pixels, made 16×18 grey: a 64-bit difference
hash (pooled to 8×9, one bit per pair of neighbours in a row: is the right one brighter) and the
16×18 thumbnail itself. Pairs whose hashes differ in at most :data:`HASH_BITS` bits are candidates,
and those whose thumbnails correlate by at least :data:`SAME` are near copies.
``benchmarks/copies.py`` measured it on the 2,500 Cat & Dog photos (3.1 million pairs), decoded at 32
and at 224 px: the one pair that is the same photo (``training_set/dogs/dog.74.jpg`` and
``dog.180.jpg``) differs in 0 and 2 bits and correlates 0.9995 at both; of 200 of them saved
again as JPEG at quality 50, at half size or 15% brighter, every copy was found (at most 7 bits,
correlation at least 0.979); the other candidate pairs correlated 0.859 and 0.819 at most. A crop
is another photo here: of the 200 with 5% cut off each side, 39 and 34 were found.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torchvision.transforms.v2.functional import resize

HASH_BITS = 10  # candidates: hashes this close
SAME = 0.95  # near copies: thumbnails this correlated
PAIRS_AT_ONCE = 2**23  # hash pairs compared in one step (64 MiB of uint64)


@dataclasses.dataclass(frozen=True)
class Fingerprints:
    """Photos' difference hashes (uint64) and grey 16×18 thumbnails (uint8 rows of 288)."""

    hashes: np.ndarray
    thumbnails: np.ndarray

    @classmethod
    def of(cls, images: torch.Tensor, chunk: int = 256) -> Fingerprints:
        """The fingerprints of uint8 N×C×S×S ``images``, a chunk at a time, each first made 16×18
        (torchvision's uint8 resize: a float copy of a 224 px photo alone took 4 times as long)."""
        parts = []
        for start in range(0, len(images), chunk):
            small = resize(images[start : start + chunk], [16, 18], antialias=True).float().mean(1)
            pooled = small.reshape(len(small), 8, 2, 9, 2).mean((2, 4))
            bits = (pooled[:, :, 1:] > pooled[:, :, :-1]).reshape(len(small), 64).numpy()
            hashes = np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)
            parts.append(cls(hashes, small.round().to(torch.uint8).reshape(len(small), -1).numpy()))
        return cls.joined(parts)

    @classmethod
    def joined(cls, parts: Sequence[Fingerprints]) -> Fingerprints:
        if not parts:
            return cls(np.zeros(0, np.uint64), np.zeros((0, 16 * 18), np.uint8))
        hashes = np.concatenate([part.hashes for part in parts])
        return cls(hashes, np.concatenate([part.thumbnails for part in parts]))

    def __len__(self) -> int:
        return len(self.hashes)

    def __getitem__(self, rows: np.ndarray | list[int]) -> Fingerprints:
        return Fingerprints(self.hashes[rows], self.thumbnails[rows])


def correlation(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The correlation of each row of ``first`` with the same row of ``second`` (thumbnails)."""
    first, second = (
        rows - rows.mean(1, keepdims=True) for rows in (first.astype(np.float32), second.astype(np.float32))
    )
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return np.einsum("ij,ij->i", first, second) / np.maximum(norms, 1e-6)


def copied(photos: Fingerprints, of: Fingerprints) -> np.ndarray:
    """For each of ``photos``, the index of a near copy among ``of``, or -1."""
    found = np.full(len(photos), -1)
    if not len(of):
        return found
    step = max(1, PAIRS_AT_ONCE // len(of))
    for start in range(0, len(photos), step):
        bits = np.bitwise_count(photos.hashes[start : start + step, None] ^ of.hashes[None, :])
        rows, columns = np.nonzero(bits <= HASH_BITS)
        same = correlation(photos.thumbnails[start + rows], of.thumbnails[columns]) >= SAME
        found[start + rows[same][::-1]] = columns[same][::-1]  # the first copy of each, where several
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
        with temporary.open("wb") as file:
            np.savez(file, names=np.array(self.names, dtype=str), hashes=self.prints.hashes,
                     thumbnails=self.prints.thumbnails)  # fmt: skip
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> Fingerprinted:
        with np.load(path) as saved:
            return cls(tuple(saved["names"].tolist()), Fingerprints(saved["hashes"], saved["thumbnails"]))


class NearCopy(NamedTuple):
    split: str  # valid or test
    photo: str
    copy_of: str  # a training photo, or for a test photo a valid one


def near_copies(prints: dict[str, Fingerprints], names: dict[str, list[str]]) -> tuple[NearCopy, ...]:
    """Each valid and test photo that is a near copy of a training photo, and each other test photo
    that is one of a valid photo; ``prints`` and ``names`` by split, in the same order."""
    found: list[NearCopy] = []
    for split, of in (("valid", "train"), ("test", "train"), ("test", "valid")):
        taken = {copy.photo for copy in found}
        for row, original in enumerate(copied(prints[split], prints[of])):
            if original >= 0 and names[split][row] not in taken:
                found.append(NearCopy(split, names[split][row], names[of][original]))
    return tuple(found)


def copies_line(copies: Sequence[NearCopy]) -> str | None:
    """A line counting the near copies by split, with the first, or None."""
    if not copies:
        return None
    counts = Counter(copy.split for copy in copies)
    counted = " and ".join(f"{counts[split]} {split}" for split in ("valid", "test") if counts[split])
    first, one = copies[0], len(copies) == 1
    against = "a training or valid photo" if counts["test"] else "a training photo"
    splits = " and ".join(split for split in ("valid", "test") if counts[split])
    return (
        f"near copies across splits: {counted} photo{'' if one else 's'} {'is' if one else 'are'} a near "
        f"copy of {against} ({'' if one else 'e.g. '}{first.photo} ~ {first.copy_of}): the {splits} figures "
        "flatter the model; remove one of each pair (config.json lists them all: near_copies)"
    )
