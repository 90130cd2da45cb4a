"""Image files: decode and resize every image once into a uint8 tensor, or in DataLoader workers.

Decoding a JPEG costs far more than a training step of a small model; doing it once, then
flipping and normalising whole batches on the device, keeps the epoch loop free of PIL.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fmtk.caches import a_file_instead
from fmtk.data.augment import Augmentation
from fmtk.data.batches import (
    DataSplits,
    check_global_batch,
    process_shard,
    scale_pixels,
)
from fmtk.data.copies import Fingerprints
from fmtk.data.image_cache import Bad, FolderCache, cached_decode_images
from fmtk.data.image_input import (
    HEIF_EXTENSIONS,
    HEIF_INSTALL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageInput,
    hidden,
    open_image,
    photo_extensions,
    read_all,
    read_pixels,
    resize_rgb,
)
from fmtk.device import usable_cores
from fmtk.errors import FmtkError, first_few

if TYPE_CHECKING:
    from tqdm import tqdm

DATA_CACHES = ("memory", "file", "none")
NO_FOLDER_HINT = " (give the photos' folder: --data-dir PHOTOS, or $FMTK_DATA)"


def no_photo_folder(path: Path) -> FmtkError:
    """The line for a photo folder that is not there, or is a file."""
    if path.exists():
        return FmtkError(f"{path}: a file, not a folder of photos{NO_FOLDER_HINT}")
    return FmtkError(f"photo folder not found: {path}{NO_FOLDER_HINT}")


UNDECODABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """One image file as an RGB uint8 array of image_size × image_size."""
    try:
        return _decode(path, image_size)
    except UNDECODABLE as error:
        raise FmtkError(f"{path}: cannot decode image ({error})") from None


def _decode(path: str | Path, image_size: int) -> np.ndarray:
    with open_image(path) as image:
        return resize_rgb(image, image_size)


class Listing(NamedTuple):
    """A ``folder/<class>/<image>`` tree: ``(path, class_index)`` of each photo, the class names, and
    the other files of the class folders, of kinds fmtk does not read as photos (``.mov``, ``.txt``…;
    ``.heic`` without pillow-heif): :func:`~fmtk.data.image_input.photo_extensions`."""

    samples: list[tuple[str, int]]
    classes: list[str]
    others: list[str]


def list_image_folder(folder: Path, allow_empty: bool = False) -> Listing:
    """The photos, classes and other files of a ``folder/<class>/<image>`` tree, without anything
    :func:`hidden`; a class folder without photos is one line unless ``allow_empty``."""
    # Here, not at the top: importing torchvision takes ~1 s, which recipes without image folders
    # (MNIST, digits) would pay at every start (benchmarks/speed.py --whole-job).
    from torchvision.datasets.folder import has_file_allowed_extension, make_dataset

    if not folder.is_dir():
        raise no_photo_folder(folder)
    with os.scandir(folder) as entries:  # torchvision's find_classes, without hidden folders
        classes = sorted(entry.name for entry in entries if entry.is_dir() and not hidden(entry, folder))
    if not classes:
        raise FmtkError(f"{folder}: no class folder in it (PHOTOS/<class>/*.jpg)")
    others: list[str] = []
    extensions = photo_extensions()

    def is_photo(path: str) -> bool:
        if hidden(path, folder):
            return False
        if has_file_allowed_extension(path, extensions):
            return True
        others.append(path)
        return False

    class_to_index = {name: index for index, name in enumerate(classes)}
    samples = make_dataset(str(folder), class_to_index, is_valid_file=is_photo, allow_empty=True)
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if empty and not allow_empty:
        many = len(empty) > 1
        named = f"class folders {', '.join(empty)} hold" if many else f"class folder {empty[0]} holds"
        raise FmtkError(f"{folder}: {named} no photo (fmtk reads {' '.join(extensions)}); add photos or "
                        f"remove the folder{heif_hint(others)}{_besides(samples, others)}")  # fmt: skip
    return Listing(samples, classes, others)


def _besides(samples: list[tuple[str, int]], others: list[str]) -> str:
    """What else a folder refused for an empty class folder holds that needs fixing, found without
    decoding a photo (decoding waits for the classes): its files of other kinds and empty files,
    so that the next try does not stop at them."""
    empty = []
    for path, _ in samples:
        with contextlib.suppress(OSError):
            if os.stat(path).st_size == 0:
                empty.append(path)
    said = [f"files of kinds fmtk does not read are left out ({kinds_of(others)})"] if others else []
    if empty:
        named, more = first_few(empty)
        more_said = f" and {more} more" if more else ""
        said.append(f"{len(empty)} photo file{'s' * (len(empty) > 1)} {'are' if len(empty) > 1 else 'is'} "
                    f"empty ({', '.join(named)}{more_said})")  # fmt: skip
    return f"; besides, {' and '.join(said)}" if said else ""


def others_line(others: Sequence[str]) -> str | None:
    """A line counting the files of the class folders that are not photos, by kind, or None: a
    folder of phone photos saved as HEIC would otherwise train on its JPEGs alone, unsaid."""
    if not others:
        return None
    read, kinds = " ".join(photo_extensions()), kinds_of(others)
    return f"files left out, of kinds fmtk does not read: {kinds} (it reads {read}){heif_hint(others)}"


def kinds_of(others: Sequence[str]) -> str:
    """The files counted by kind, most first: ``2 .gif, 1 .txt``."""
    kinds = Counter(Path(path).suffix.lower() or "without an extension" for path in others)
    return ", ".join(f"{count} {kind}" for kind, count in kinds.most_common())


def heif_hint(others: Sequence[str]) -> str:
    """What to install, when ``others`` holds HEIC photos (only without pillow-heif can it)."""
    heic = any(Path(path).suffix.lower() in HEIF_EXTENSIONS for path in others)
    return f"; HEIC photos: {HEIF_INSTALL}" if heic else ""


class BadImages(FmtkError):
    """Image files that cannot be decoded, every one found in a pass: ``bad`` is ``[(path, why)]``,
    of ``total`` files. The one-line message names the count and the first ones, the file that
    lists them all when there is one (:func:`bad_images_error`), and the way on: ``fix or remove
    them`` and the ``hint``, or what ``way_on`` says instead; then why that list could not be
    written, when it could not (``unlisted``)."""

    SHOWN = 3  # bad files named in the line

    def __init__(
        self,
        bad: list[tuple[str, str]],
        total: int,
        listed_in: Path | None = None,
        hint: str = "",
        good: torch.Tensor | None = None,
        verb: str = "decoded",
        way_on: str | None = None,
        shown: int = SHOWN,
        others_in: str = "",
        unlisted: str = "",
    ) -> None:
        self.bad, self.total, self.good = bad, total, good  # good: the others, decoded (decode_images)
        self.listed_in, self.hint, self.verb, self.unlisted = listed_in, hint, verb, unlisted
        self.shown = shown
        named, left = first_few(bad, shown)
        said = "; ".join(f"{path} ({why})" for path, why in named)
        more = f"; and {left} more{others_in}" if left else ""
        listed = f"; all of them are listed in {listed_in}" if listed_in is not None else ""
        way_on = f"fix or remove them{hint}" if way_on is None else way_on
        unlisted = f"; the list of all of them cannot be written: {unlisted}" if unlisted else ""
        super().__init__(
            f"{len(bad)} of {total} image files cannot be {verb}: {said}{more}{listed}: {way_on}{unlisted}"
        )

    def saying(self, way_on: str) -> BadImages:
        """The same error with another way on."""
        return BadImages(
            self.bad,
            self.total,
            self.listed_in,
            verb=self.verb,
            way_on=way_on,
            unlisted=self.unlisted,
            shown=self.shown,
        )


# Whether reading a folder of photos shows a bar on stderr: set by a run's start as it sets the
# epochs' bar (fmtk.training.build: a terminal or Jupyter, the main process), and by `fmtk evaluate
# --folder`, so that a folder that takes minutes does not look hung.
PHOTO_BARS: ContextVar[bool] = ContextVar("fmtk_photo_bars", default=False)


@contextlib.contextmanager
def photo_bars(shown: bool) -> Iterator[None]:
    """:data:`PHOTO_BARS` set to ``shown`` within the block, as it was after."""
    token = PHOTO_BARS.set(shown)
    try:
        yield
    finally:
        PHOTO_BARS.reset(token)


def photo_bar(total: int, what: str = "decoding photos") -> tqdm:
    """A bar over ``total`` photos, cleared when done; shown only with :data:`PHOTO_BARS`."""
    from tqdm.auto import tqdm  # (a widget in Jupyter, as Ignite's bar)

    return tqdm(total=total, desc=what, unit=" photos", leave=False, disable=not PHOTO_BARS.get())


def checked_files(paths: list[str], image_size: int) -> tuple[Bad, Fingerprints]:
    """``(path, why)`` of each file of ``paths`` that cannot be decoded, and the fingerprints of the
    others, in order (every file decoded, a chunk at a time, in a thread per core, no pixels kept):
    the check of ``data_cache=none``."""
    bad, prints = [], []
    with photo_bar(len(paths)) as bar:
        for good, pixels, unread in read_pixels(paths, ImageInput.photo(image_size)):
            bad += [(paths[i], why) for i, why in unread]
            prints.append(Fingerprints.of(pixels))
            bar.update(len(good) + len(unread))
    return bad, Fingerprints.joined(prints)


UNLISTED_SHOWN = 50  # bad files named in the line when no list of them could be written


def bad_images_error(found: BadImages, listed_in: Path, hint: str = "") -> BadImages:
    """``found`` with its whole list written to ``listed_in``, a file of the cache folder (never of
    the photos' folder), and named in its line, and ``hint`` (what else to do) after it; a list that
    cannot be written is said last, the bad files named all the same."""
    try:
        listed_in.parent.mkdir(parents=True, exist_ok=True)
        listed = "".join(f"{path}\t{why}\n" for path, why in found.bad)
        listed_in.write_text(listed, encoding="utf-8", errors="surrogateescape")  # names as on disk
    except OSError as error:
        why = a_file_instead(listed_in.parent) or f"{listed_in} ({error.strerror})"
        return BadImages(
            found.bad, found.total, hint=hint, unlisted=why, shown=UNLISTED_SHOWN
        )  # (named here)
    return BadImages(found.bad, found.total, listed_in, hint)


def decode_images(samples: list[tuple[str, int]], image_size: int) -> torch.Tensor:
    """The images of ``(path, label)`` samples as one uint8 N×3×S×S tensor, decoded in a thread per
    core (:func:`~fmtk.data.image_input.read_all`); every file that cannot be decoded is found
    first, then all of them are one :class:`BadImages` error, which holds the others decoded
    (``good``, in their order)."""
    paths = [path for path, _ in samples]
    with photo_bar(len(paths)) as bar:
        images, _, unread = read_all(paths, ImageInput.photo(image_size), bar.update)
    if unread:
        raise BadImages([(paths[i], why) for i, why in unread], len(paths), good=images)
    return images


def sample_labels(samples: list[tuple[str, int]]) -> torch.Tensor:
    """The int64 labels of ``(path, label)`` samples."""
    return torch.tensor([label for _, label in samples], dtype=torch.int64)


def decode_image_folder(folder: Path, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of ``folder`` as a uint8 N×3×S×S tensor, their int64 labels and the class names."""
    samples, classes, _ = list_image_folder(folder)
    return decode_images(samples, image_size), sample_labels(samples), classes


class ImageFiles(Dataset):
    """Image files decoded on demand (the DataLoader path): ``(uint8 3×S×S tensor, label)``."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int) -> None:
        self.samples = samples
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        pixels = decode_image(path, self.image_size).copy()  # writable: torch warns on a read-only array
        return torch.from_numpy(pixels).permute(2, 0, 1), label


def loader_workers(cores: int) -> int:
    """DataLoader worker processes for ``cores`` cores: one core left to the training process, at
    most 8; none on two cores or fewer, where the training process decoding alone was faster
    (catdog at 224 px on 2 cores: 861 photos/s, against 640–703 with 1 to 4 workers:
    ``benchmarks/images.py --loader`` at 8d07a4a, docs/images.md)."""
    return 0 if cores <= 2 else min(8, cores - 1)


class LoaderBatches:
    """Batches of a DataLoader over ``dataset`` (uint8 images), moved to ``device``, scaled,
    normalised and augmented there (``augmentation``: a flip with ``flip_p``, crops, shifts,
    erasing, drawn per batch from a generator seeded by the seed, epoch and rank), like
    :class:`~fmtk.data.batches.TensorBatches`.

    For data too large to hold decoded: worker processes decode (``workers``; by default
    :func:`loader_workers` of the usable cores), pinned memory lets the copy to a GPU overlap. The
    training split shards through a DistributedSampler when several processes train (the recipe's
    batch size is the global one); evaluation splits take every ``world_size``-th sample, unpadded.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        device: torch.device,
        *,
        shuffle: bool = False,
        seed: int = 0,
        flip_p: float = 0.0,
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        workers: int | None = None,
        shard: tuple[int, int] | None = None,
        persistent: bool = True,
    ) -> None:
        self.rank, self.world_size = shard if shard is not None else process_shard()
        if shuffle:
            check_global_batch(batch_size, self.world_size)
            self.sampler = DistributedSampler(
                dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=seed
            )
            batch_size //= self.world_size
        else:
            self.sampler = range(self.rank, len(dataset), self.world_size)
        # A training batch of one sample (per process) is dropped: BatchNorm cannot train on it.
        drop_last = shuffle and batch_size > 1 and len(self.sampler) % batch_size == 1
        workers = loader_workers(usable_cores()) if workers is None else workers
        self.loader = DataLoader(
            dataset, batch_size, sampler=self.sampler, num_workers=workers, drop_last=drop_last,
            persistent_workers=persistent and workers > 0, pin_memory=device.type == "cuda",
        )  # fmt: skip
        self.device = device
        self.seed = seed
        self.normalisation = (tuple(mean), tuple(std))
        self.augmentation = Augmentation(flip_p=flip_p)
        self.mean = torch.tensor(mean, device=device).view(-1, 1, 1)
        self.std = torch.tensor(std, device=device).view(-1, 1, 1)
        self.epoch = 0

    def whole(self) -> LoaderBatches:
        """Every sample of an evaluation split in its order, also in one of several processes (as
        :meth:`~fmtk.data.batches.TensorBatches.whole`): a run's pictures, drawn by one of them
        (its workers end with the pass)."""
        if self.world_size == 1 and not isinstance(self.sampler, DistributedSampler):
            return self
        mean, std = self.normalisation
        return LoaderBatches(self.loader.dataset, self.loader.batch_size, self.device, mean=mean, std=std,
                             workers=self.loader.num_workers, shard=(0, 1), persistent=False)  # fmt: skip

    @property
    def names(self) -> list[str] | None:
        """Each sample's file, in :meth:`whole`'s order, when the dataset is of files."""
        samples = getattr(self.loader.dataset, "samples", None)
        return [str(path) for path, _ in samples] if samples is not None else None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order (and augmentation) the next iteration uses."""
        self.epoch = epoch
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        seed = (self.seed * 100_003 + self.epoch) * 1_009 + self.rank
        generator = torch.Generator(device=self.device).manual_seed(seed)
        try:
            for images, labels in self.loader:
                x = scale_pixels(images.to(self.device, non_blocking=True), 255.0, self.mean, self.std)
                if self.augmentation.active:
                    drawn = self.augmentation.draw(len(x), x.shape[-2:], generator, self.device)
                    x = self.augmentation.apply(x, drawn, slice(None))
                yield x, labels.to(self.device, non_blocking=True)
        except FmtkError as error:
            # A worker's error arrives with its traceback in the message; keep the last line's text.
            raise FmtkError(str(error).strip().splitlines()[-1].partition(": ")[2] or str(error)) from None


def find_split_folder(root: Path, name: str) -> Path:
    """``root/name``, or Kaggle's nested ``root/name/name`` when that is where the classes are."""
    folder = root / name
    nested = folder / name
    return nested if nested.is_dir() else folder


def decoded(
    samples: list[tuple[str, int]],
    folder: Path,
    image_size: int,
    data_cache: str,
    cache: FolderCache | None = None,
) -> torch.Tensor:
    """The images of ``samples`` decoded (:func:`decode_images`), through ``cache`` (else the folder's)
    with ``data_cache=file``."""
    if data_cache != "file":
        return decode_images(samples, image_size)
    images, bad = cached_decode_images(cache or FolderCache(samples, folder, image_size), _decode_keeping_bad)
    if bad:
        raise BadImages(bad, len(samples), good=images)
    return images


def _decode_keeping_bad(samples: list[tuple[str, int]], image_size: int) -> tuple[torch.Tensor, Bad]:
    try:
        return decode_images(samples, image_size), []
    except BadImages as error:
        return error.good, error.bad


def loader_splits(
    samples: tuple[list[tuple[str, int]], ...],
    classes: list[str],
    image_size: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    flip_p: float,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
) -> DataSplits:
    """Train, valid and test ``samples`` decoded by DataLoader workers every epoch (``data_cache=none``)."""

    def loader(split: list[tuple[str, int]], train: bool = False) -> LoaderBatches:
        files = ImageFiles(split, image_size)
        return LoaderBatches(
            files,
            batch_size,
            device,
            shuffle=train,
            seed=seed,
            flip_p=flip_p if train else 0,
            mean=mean,
            std=std,
        )

    train, valid, test = samples
    return DataSplits(loader(train, train=True), loader(valid), loader(test), classes)
