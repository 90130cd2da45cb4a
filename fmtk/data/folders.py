"""Folders of photos as a run's data, in the layouts ImageFolder and timm users keep:

- ``PHOTOS/<class>/*.jpg``: train, valid and test drawn from it by a seeded stratified split;
- ``PHOTOS/{train,val,test}/<class>/*.jpg`` (also ``training``/``valid``/``validation``/``testing``,
  and Kaggle's ``training_set``/``test_set``, nested or not): each split from its folder, and a
  split without one drawn from the training photos.

The class names are the class folders' names, sorted (torchvision's ``find_classes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmtk.caches import bad_list
from fmtk.data.batches import DataSplits, TensorBatches, stratified_split
from fmtk.data.copies import Fingerprinted, Fingerprints, LabelConflict, label_conflicts, near_copies
from fmtk.data.image_cache import Bad, FolderCache, cache_line, make_room
from fmtk.data.image_input import IMAGENET_MEAN, IMAGENET_STD
from fmtk.data.images import (
    DATA_CACHES,
    BadImages,
    bad_images_error,
    checked_files,
    decoded,
    find_split_folder,
    kinds_of,
    list_image_folder,
    loader_splits,
    no_photo_folder,
    sample_labels,
)
from fmtk.device import check_memory
from fmtk.errors import FmtkError

SPLIT_FOLDERS = {
    "train": ("train", "training", "training_set"),
    "valid": ("val", "valid", "validation", "valid_set", "validation_set"),
    "test": ("test", "testing", "test_set"),
}
Samples = list[tuple[str, int]]


@dataclass(frozen=True)
class PhotoSplits:
    """Where each split's photos are: the class names, each listed folder's ``(path, label)``
    samples, and per split its folder and the indices of its samples there; and the other files of
    the class folders (:class:`~fmtk.data.images.Listing`)."""

    classes: list[str]
    listed: dict[Path, Samples]
    splits: dict[str, tuple[Path, np.ndarray]]
    others: tuple[str, ...] = ()

    def samples(self, split: str) -> Samples:
        folder, index = self.splits[split]
        return [self.listed[folder][i] for i in index]

    def without(self, paths: set[str]) -> PhotoSplits:
        """These splits less the photos at ``paths``; every other photo stays in its split."""
        listed, renumbered = {}, {}
        for folder, samples in self.listed.items():
            kept = [i for i, (path, _) in enumerate(samples) if path not in paths]
            listed[folder] = [samples[i] for i in kept]
            renumbered[folder] = {old: new for new, old in enumerate(kept)}
        splits = {
            split: (
                folder,
                np.array([renumbered[folder][i] for i in index if i in renumbered[folder]], dtype=int),
            )
            for split, (folder, index) in self.splits.items()
        }
        return PhotoSplits(self.classes, listed, splits, self.others)

    def leaving_out(self, paths: set[str]) -> PhotoSplits:
        """These splits with the photos at ``paths`` left out of them; the folders' listings, and so
        the rows of their decoded photos, stay as they are."""
        splits = {
            split: (folder, np.array([i for i in index if self.listed[folder][i][0] not in paths], dtype=int))
            for split, (folder, index) in self.splits.items()
        }
        return dataclasses.replace(self, splits=splits)


SKIP_HINT = "; or train without them: --set skip_bad_images=true"  # a new run's way on (not a resumed one's)


def split_folders(root: Path) -> dict[str, Path]:
    """The split folders of ``root`` by split name (none: a folder of class folders)."""
    found = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = find_split_folder(root, name)
                break
    return found


def photo_classes(root: Path) -> list[str]:
    """The class names of a photo folder (those of its training folder in the split layout)."""
    return list_image_folder(split_folders(root).get("train", root)).classes


def find_photo_splits(root: Path, valid_share: float, test_share: float, seed: int) -> PhotoSplits:
    """The train, valid and test photos of ``root``; the splits without a folder are drawn from the
    training photos: ``test_share`` of them for testing, then ``valid_share`` of the rest."""
    root = Path(root)
    if not root.is_dir():
        raise no_photo_folder(root)
    folders = split_folders(root)
    if folders and "train" not in folders:
        names = ", ".join(folder.name for folder in folders.values())
        raise FmtkError(f"{root}: has {names} but no training folder ({', '.join(SPLIT_FOLDERS['train'])})")
    train_folder = folders.get("train", root)
    samples, classes, others = list_image_folder(train_folder)
    if len(classes) < 2:
        raise FmtkError(
            f"{train_folder}: one class folder ({', '.join(classes)}); a classifier needs two or more"
        )
    listed = {train_folder: samples}
    splits: dict[str, tuple[Path, np.ndarray]] = {}
    for split in ("test", "valid"):
        if split in folders:
            listed[folders[split]], own, more = list_image_folder(folders[split])
            others += more
            if own != classes:
                raise FmtkError(f"{folders[split]}: classes {own} differ from {train_folder}'s {classes}")
            splits[split] = (folders[split], np.arange(len(listed[folders[split]])))
    train = np.arange(len(samples))
    for split, share in (("test", test_share), ("valid", valid_share)):
        if split not in splits:
            kept, held = holdout(sample_labels(samples)[train].numpy(), share, seed, train_folder, split)
            train, splits[split] = train[kept], (train_folder, train[held])
    splits["train"] = (train_folder, train)
    return PhotoSplits(classes, listed, splits, tuple(others))


def holdout(
    labels: np.ndarray, share: float, seed: int, source: Path, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split of ``labels`` into kept and held-out indices (``share`` held out); a
    class with one photo stays whole in the kept part (it cannot be in both)."""
    counts = np.bincount(labels)
    alone = np.flatnonzero(counts[labels] == 1)
    rest = np.flatnonzero(counts[labels] > 1)
    if len(alone) == 0:  # (as the Cat & Dog recipe has always split)
        return stratified_split(labels, share, seed, source=str(source), split=split)
    kept, held = stratified_split(labels[rest], share, seed, source=str(source), split=split)
    return np.sort(np.concatenate([rest[kept], alone])), rest[held]


def load_photo_folder(
    root: Path,
    image_size: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    *,
    flip_p: float = 0.0,
    valid_share: float = 0.2,
    test_share: float = 0.2,
    data_cache: str = "memory",
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    skip_bad_images: bool | None = None,
    drop_near_copies: bool = False,
) -> DataSplits:
    """The photos of ``root`` (either layout) as train, valid and test batches of ``image_size``
    pixels, normalised by ``mean``/``std``. ``data_cache``: ``memory`` decodes every photo once into
    a tensor on the device; ``file`` also keeps it in a file under
    :func:`fmtk.data.image_cache.cache_folder` for the next run; ``none`` decodes in DataLoader
    workers every epoch (for folders too large to hold). ``flip_p`` flips training photos only.

    Every photo is decoded before training (``none``: once, to check it), and the files that cannot
    be are one :class:`~fmtk.data.images.BadImages` error naming them all; with ``skip_bad_images``
    the run trains without them instead, and the splits' ``skipped`` lists them (None: the recipe has
    no such option, and the error does not suggest it).

    The valid and test photos that are near copies of photos they are judged against are listed in
    the splits' ``near_copies`` (:mod:`fmtk.data.copies`); with ``drop_near_copies`` they are also
    left out of their splits."""
    if data_cache not in DATA_CACHES:
        raise FmtkError(f"data_cache {data_cache}: choose {', '.join(DATA_CACHES)}")
    found = find_photo_splits(root, valid_share, test_share, seed)
    try:
        data = photo_batches(found, image_size, batch_size, device, seed, flip_p, data_cache, mean, std,
                             skip_bad_images=bool(skip_bad_images),
                             drop_near_copies=drop_near_copies)  # fmt: skip
    except BadImages as bad:
        hint = SKIP_HINT if skip_bad_images is False else ""
        if found.others:  # said now too: the next try would say it only once these are fixed
            hint += f"; besides, files of kinds fmtk does not read are left out: {kinds_of(found.others)}"
        raise bad_images_error(bad, bad_list(root), hint) from None
    if not data.skipped:  # every photo decodes now: an earlier run's list of bad ones is stale
        with contextlib.suppress(OSError):  # (a cache folder this user may not write)
            bad_list(root).unlink(missing_ok=True)
    return data


def photo_batches(
    found: PhotoSplits,
    image_size: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    flip_p: float,
    data_cache: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    skip_bad_images: bool = False,
    drop_near_copies: bool = False,
) -> DataSplits:
    """The batches of ``found``'s splits (:func:`load_photo_folder`), every photo decoded first (once:
    with ``skip_bad_images`` the bad ones are left out of what was decoded, not decoded again; with
    ``drop_near_copies`` the near copies are left out of the splits, not of what was decoded)."""
    paths = [path for samples in found.listed.values() for path, _ in samples]
    if data_cache != "none":
        photos = f"data_cache={data_cache}: the {len(paths):,} photos at {image_size} px"
        instead = (
            "--set data_cache=none decodes them in DataLoader workers every epoch instead "
            "(or a smaller image_size)"
        )
        check_memory(len(paths) * 3 * image_size**2, device, photos, instead)
    images, bad, prints, cached = decode_found(found, image_size, data_cache)
    if bad and not skip_bad_images:
        raise BadImages(bad, len(paths))
    if bad:
        found = found.without({path for path, _ in bad})
        none_left(found, "none of them can be decoded (skip_bad_images)")
    skipped = tuple(path for path, _ in bad)
    prints = {split: prints[folder][index] for split, (folder, index) in found.splits.items()}
    names = {split: [path for path, _ in found.samples(split)] for split in found.splits}
    trained_on = Fingerprinted(tuple(os.path.abspath(name) for name in names["train"]), prints["train"])
    classes = {split: sample_labels(found.samples(split)).numpy() for split in names}  # each photo's
    copies = near_copies(prints, names, leave_out=drop_near_copies, labels=classes)
    conflicts = photos_in_two_classes(found, prints, names, classes)
    if drop_near_copies and copies:
        found = found.leaving_out({copy.photo for copy in copies})
        none_left(found, "each is a near copy of a photo it is judged against (drop_near_copies)")
    noted = {"skipped": skipped, "others": found.others, "near_copies": copies, "conflicts": conflicts,
             "trained_on": trained_on, "cached": cached}  # fmt: skip
    if data_cache == "none":
        splits = tuple(found.samples(split) for split in ("train", "valid", "test"))
        data = loader_splits(splits, found.classes, image_size, batch_size, device, seed, flip_p, mean, std)
        return dataclasses.replace(data, **noted)
    labels = {folder: sample_labels(samples) for folder, samples in found.listed.items()}
    rows = split_rows(found.splits, images)

    def batches(split: str) -> TensorBatches:
        folder, index = found.splits[split]
        index = torch.from_numpy(index)
        return TensorBatches(
            rows[split].to(device), labels[folder][index].to(device), batch_size,
            shuffle=split == "train", seed=seed, flip_p=flip_p if split == "train" else 0.0,
            mean=mean, std=std, names=[path for path, _ in found.samples(split)],
        )  # fmt: skip

    splits = batches("train"), batches("valid"), batches("test")
    return DataSplits(*splits, found.classes, **noted)


def photos_in_two_classes(
    found: PhotoSplits,
    prints: dict[str, Fingerprints],
    names: dict[str, list[str]],
    labels: dict[str, np.ndarray],
) -> tuple[LabelConflict, ...]:
    """The pairs of near copies among all of ``found``'s photos (any splits) in two classes' folders."""
    order = ("train", "valid", "test")
    every = Fingerprints.joined([prints[split] for split in order])
    named = [name for split in order for name in names[split]]
    return label_conflicts(every, named, np.concatenate([labels[split] for split in order]), found.classes)


def none_left(found: PhotoSplits, why: str) -> None:
    """One line naming a split that ``found`` left without photos (Ignite's engines would fail on
    it with their own message), else a class folder it left without (it would train a class no
    photo is of, where an empty class folder is refused: :func:`list_image_folder`), and ``why``."""
    for split, (folder, index) in found.splits.items():
        if len(index) == 0:
            raise FmtkError(f"{folder}: no {split} photos left: {why}")
    for folder, samples in found.listed.items():
        empty = sorted(set(found.classes) - {found.classes[label] for _, label in samples})
        if empty:
            many = len(empty) > 1
            named = f"class folders {', '.join(empty)} have" if many else f"class folder {empty[0]} has"
            raise FmtkError(f"{folder}: {named} no photo left: {why}; fix them or remove the "
                            f"folder{'s' * many}")  # fmt: skip


def decode_found(
    found: PhotoSplits, image_size: int, data_cache: str
) -> tuple[dict[Path, torch.Tensor], Bad, dict[Path, Fingerprints], str | None]:
    """Every photo of ``found`` decoded (:func:`photo_batches`; ``data_cache=none``: only checked):
    the decoded photos and the fingerprints of the good ones per folder, the bad ones, ``(path,
    why)``, and what the file cache did (:func:`~fmtk.data.image_cache.cache_line`)."""
    images, bad, prints = {}, [], {}
    if data_cache == "none":  # decoded here only to check them; the DataLoader decodes every epoch
        paths = [path for samples in found.listed.values() for path, _ in samples]
        bad, joined = checked_files(paths, image_size)
        unread, start = {path for path, _ in bad}, 0
        for folder, samples in found.listed.items():
            good = sum(path not in unread for path, _ in samples)
            prints[folder], start = joined[np.arange(start, start + good)], start + good
        return images, bad, prints, None
    caches = {}
    if data_cache == "file":
        caches = {folder: FolderCache(listed, folder, image_size) for folder, listed in found.listed.items()}
        make_room(caches.values())
    for folder, samples in found.listed.items():
        try:
            images[folder] = decoded(samples, folder, image_size, data_cache, caches.get(folder))
        except BadImages as error:  # every folder's bad files, not the first one's
            images[folder], bad = error.good, bad + error.bad
        prints[folder] = Fingerprints.of(images[folder])
    return images, bad, prints, cache_line(caches.values())


def split_rows(
    splits: dict[str, tuple[Path, np.ndarray]], images: dict[Path, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Each split's photos, in its order: a slice of its folder's decoded photos, whose rows are put
    in the order of the folder's splits in place (a copy of each split would hold every photo
    twice; measured in docs/images.md). The splits of a folder share no photo
    (:func:`find_photo_splits` draws them apart)."""
    rows = {}
    for folder, photos in images.items():
        names = [split for split, (where, _) in splits.items() if where == folder]
        order = np.concatenate([splits[split][1] for split in names]) if names else np.zeros(0, dtype=int)
        arrange_rows(photos, order.tolist())
        start = 0
        for split in names:
            rows[split], start = photos[start : start + len(splits[split][1])], start + len(splits[split][1])
    return rows


def arrange_rows(tensor: torch.Tensor, order: list[int]) -> None:
    """Put ``tensor``'s rows ``order`` first, in that order (the others after them), in place: one
    row at a time along each cycle of the permutation, with one row held aside. ``order`` names
    each row once at most."""
    if len(set(order)) < len(order):
        raise ValueError("arrange_rows: order repeats a row")
    target = order + sorted(set(range(len(tensor))) - set(order))  # row i becomes the row target[i]
    placed = [False] * len(tensor)
    for start in range(len(tensor)):
        if placed[start]:
            continue
        held, here = tensor[start].clone(), start
        while True:
            placed[here] = True
            source = target[here]
            if source == start:
                tensor[here] = held
                break
            tensor[here], here = tensor[source], source


def load_catdog(
    data_dir: Path,
    image_size: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    flip_p: float = 0.3,
    valid_fraction: float = 0.2,
    data_cache: str = "memory",
    drop_near_copies: bool = False,
) -> DataSplits:
    """Cat & Dog photos (``data_dir/catdog/{training_set,test_set}``): a stratified train/valid
    split of training_set, test_set for testing (:func:`load_photo_folder`). The random flip
    applies to the training split only (the notebook also flipped test images)."""
    root = Path(data_dir) / "catdog"
    if not root.is_dir():
        raise FmtkError(f"Cat & Dog data not found: {root} (expected training_set/ and test_set/)")
    if "test" not in split_folders(root):
        raise FmtkError(f"{root}: no test_set folder (expected training_set/ and test_set/)")
    return load_photo_folder(
        root, image_size, batch_size, device, seed, flip_p=flip_p, valid_share=valid_fraction,
        data_cache=data_cache, drop_near_copies=drop_near_copies,
    )  # fmt: skip
