"""How one image file becomes a model input: the one description that ``fmtk predict`` reads
files with and ``fmtk export`` writes into an exported model, so that a program without fmtk
(or torch) prepares its images exactly as the run's test images were."""

from __future__ import annotations

import ctypes
import functools
import os
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import ExifTags, Image

from fmtk.data.batches import scale_pixels
from fmtk.device import usable_cores
from fmtk.errors import FmtkError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = {1: "L", 3: "RGB"}
DECODERS = "fmtk-decoder"  # the name of read_pixels' threads


HEIF_EXTENSIONS = (".heic", ".heif")  # a phone's photos (an iPhone's by default)
HEIF_INSTALL = "pip install pillow-heif"


@functools.cache
def heif() -> bool:
    """Whether Pillow reads HEIC/HEIF photos here: pillow-heif is installed (fmtk's ``heic`` extra),
    and its opener is registered with Pillow by the first call in each process (DataLoader
    workers included)."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def photo_extensions() -> tuple[str, ...]:
    """The extensions of the files fmtk reads as photos: torchvision's, AVIF's where Pillow reads it
    (its wheels do since 11.3), and HEIC/HEIF's with :func:`heif`."""
    from PIL import features
    from torchvision.datasets.folder import IMG_EXTENSIONS  # here: importing torchvision takes ~1 s

    avif = (".avif",) if features.check("avif") else ()
    return IMG_EXTENSIONS + avif + (HEIF_EXTENSIONS if heif() else ())


def open_image(path: str | Path) -> Image.Image:
    """``Image.open``, HEIC/HEIF included where :func:`heif`; without pillow-heif a HEIC file is an
    OSError that says what to install."""
    if not heif() and Path(path).suffix.lower() in HEIF_EXTENSIONS:
        raise OSError(f"HEIC photos need pillow-heif: {HEIF_INSTALL}")
    if Path(path).stat().st_size == 0:  # (Pillow: "cannot identify image file")
        raise OSError("0 bytes: an empty file")
    return Image.open(path)


# EXIF orientation → the turn that shows the photo as a viewer does: Pillow's ImageOps.exif_transpose
# table. Not exif_transpose itself: it also rewrites the EXIF block, and fails on a malformed one
# (TypeError, struct.error) that takes nothing from the pixels.
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # fmt: skip


def orientation(image: Image.Image) -> int | None:
    """The image's EXIF orientation; None without one, or with a malformed EXIF block (PNG and WebP
    raise on one, where Pillow's JPEG reader ignores it: the pixels are fine)."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation)
    except (SyntaxError, struct.error):
        return None


def upright(image: Image.Image) -> Image.Image:
    """``image`` as a viewer shows it: turned by its EXIF orientation (a phone stores the sensor's
    rows and the turn in a tag); grey wider than 8 bits (16-bit PNG or TIFF, 32-bit TIFF) as 8-bit
    grey, :func:`stretched` (Pillow's own conversion saturates 16-bit grey to white)."""
    turn = UPRIGHT.get(orientation(image))
    if turn is not None:
        image = image.transpose(turn)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return Image.fromarray(stretched(np.asarray(image, dtype=np.float64)), "L")
    return image


def stretched(values: np.ndarray) -> np.ndarray:
    """Grey values of any range as uint8, from their lowest (0) to their highest (255), as ImageJ
    and Fiji make 8-bit images of microscopy's and X-rays' 16-bit ones: a 12-bit image stored in
    16 bits keeps its 4,096 levels' detail, where its high byte would keep 16. A constant image is
    0. NaN or infinity: ValueError (the file is named as one that cannot be read)."""
    if not np.isfinite(values).all():
        raise ValueError("pixels that are not numbers (NaN or infinity)")
    low, high = values.min(), values.max()
    return ((values - low) * 255 / ((high - low) or 1)).round().astype(np.uint8)


def resize_rgb(image: Image.Image, image_size: int) -> np.ndarray:
    """An image of any mode (L, CMYK, RGBA, 16-bit grey…), :func:`upright`, as an RGB uint8 array of
    image_size × image_size."""
    # JPEG only: let the decoder downscale by 1/2, 1/4 or 1/8 while staying ≥ the target.
    image.draft("RGB", (image_size, image_size))
    return np.asarray(upright(image).convert("RGB").resize((image_size, image_size), Image.BILINEAR))


@dataclass(frozen=True)
class ImageInput:
    """An image of any mode, :func:`upright`, converted to ``channels`` (1: grey, 3: RGB), resized
    bilinearly to ``size`` × ``size``, its 0…255 values divided by ``scale``, then ``(x - mean) /
    std`` per channel: the model's ``channels × size × size`` float input."""

    size: int
    channels: int = 3
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    scale: float = 255.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"image size must be >= 1, got {self.size}")
        if self.channels not in MODES:
            raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {self.channels}")
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {getattr(self, name)}")
        if not all(value > 0 for value in (*self.std, self.scale)):
            raise ValueError(f"std and scale must be positive, got std {self.std}, scale {self.scale}")

    @classmethod
    def photo(
        cls, size: int, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD
    ) -> ImageInput:
        """An RGB photo normalised by ``mean`` and ``std`` (ImageNet's by default)."""
        return cls(size, 3, tuple(mean), tuple(std))

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The uint8 ``channels × size × size`` pixels, before scaling."""
        if self.channels == 3:  # the decoder of the photo recipes' training images
            return torch.from_numpy(resize_rgb(image, self.size).copy()).permute(2, 0, 1)
        grey = np.asarray(upright(image).convert("L").resize((self.size, self.size), Image.BILINEAR))
        return torch.from_numpy(grey.copy()).unsqueeze(0)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.normalise(self.pixels(image))

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (C×S×S or N×C×S×S, on any device) as the model's float input."""
        mean, std = (
            torch.tensor(values, device=pixels.device).view(-1, 1, 1) for values in (self.mean, self.std)
        )
        return scale_pixels(pixels, self.scale, mean, std)

    def to_dict(self) -> dict:
        """As JSON holds it (``mode``: the PIL mode the image is converted to; ``resize``: how;
        ``orientation``, ``wide_grey``: how it is made :func:`upright` first)."""
        values = {**asdict(self), "mean": list(self.mean), "std": list(self.std)}
        return {**values, "mode": MODES[self.channels], "resize": "bilinear", "layout": "NCHW",
                "orientation": "exif", "wide_grey": "min-max to 0-255"}  # fmt: skip

    @classmethod
    def from_dict(cls, values: dict) -> ImageInput:
        return cls(
            int(values["size"]), int(values["channels"]), tuple(values["mean"]), tuple(values["std"]),
            float(values["scale"]),
        )  # fmt: skip


Source = Path | str | Image.Image  # an image file, or an image already open


def image_files(sources: Sequence[Source]) -> list[Source]:
    """``sources`` with each folder replaced by the image files under it (:func:`listed_files`)."""
    return listed_files(sources)[0]


def listed_files(sources: Sequence[Source]) -> tuple[list[Source], list[Path]]:
    """``sources`` with each folder replaced by the image files under it (torchvision's image
    extensions and HEIC's, at any depth, sorted, none :func:`hidden`), files and open images as they
    are; and the folders' files it leaves out, of kinds fmtk does not read (``.gif``, ``.txt``…). A
    folder without image files is one line. Without pillow-heif a HEIC file is listed too, to be
    answered as one that cannot be read, saying what to install (:func:`open_image`)."""
    listed: list[Source] = []
    others: list[Path] = []
    for source in sources:
        if isinstance(source, Image.Image) or not Path(source).is_dir():
            listed.append(source)
            continue
        found, other = folder_files(Path(source))
        if not found:
            raise FmtkError(f"{source}: a folder without image files ({' '.join(listed_extensions())})")
        listed.extend(found)
        others.extend(other)
    return listed, others


def listed_extensions() -> tuple[str, ...]:
    return tuple(dict.fromkeys(photo_extensions() + HEIF_EXTENSIONS))


def folder_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files under ``folder`` and its other files, each sorted, none :func:`hidden`."""
    extensions, images, others, walked = listed_extensions(), [], [], set()
    for root, folders, names in os.walk(folder, followlinks=True):  # linked folders too, as a run reads
        if os.path.realpath(root) in walked:  # a link back up: walked already
            folders.clear()
            continue
        walked.add(os.path.realpath(root))
        for path in (Path(root) / name for name in names):
            if path.is_file() and not hidden(path, folder):
                (images if path.suffix.lower() in extensions else others).append(path)
    return sorted(images), sorted(others)


# What the systems leave in folders of photos, hidden (by an attribute, on Windows) or not.
SYSTEM_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}


def hidden(path: str | Path, folder: str | Path) -> bool:
    """Whether ``path`` below ``folder`` is hidden or in a hidden folder: a name that starts with a
    dot, or one of :data:`SYSTEM_NAMES`. No one means those as photos or classes: macOS's
    ``._IMG_0001.jpg`` (what a Mac leaves beside each photo on a USB or network disk, and in a
    ``__MACOSX`` folder of each zip it makes), Jupyter's ``.ipynb_checkpoints``, Windows's
    ``Thumbs.db``."""
    return any(part.startswith(".") or part in SYSTEM_NAMES for part in Path(path).relative_to(folder).parts)


def source_name(source: Source, index: int) -> str:
    """How a source is named in results: its path, or ``<image N>`` for an open image."""
    return f"<image {index}>" if isinstance(source, Image.Image) else str(source)


def read_pixels(
    sources: Sequence[Source],
    image_input: ImageInput,
    chunk: int = 256,
    into: torch.Tensor | None = None,
    threads: int | None = None,
) -> Iterator[tuple[list[int], torch.Tensor, list[tuple[int, str]]]]:
    """The sources in chunks of ``chunk``, each decoded (in ``threads`` threads, by default one per
    usable core: PIL releases the GIL while decoding) into the rows of one uint8 N×C×S×S tensor, a
    source's own row of ``into`` when given, else a new tensor per chunk: ``(indices of the readable
    ones, their pixels, (index, why) of each that cannot be read)``. A bad file costs its own answer
    only. The next chunk is decoded while the caller works on this one (its model on a GPU or on the
    other cores): a caller that keeps none of them holds two chunks of pixels at most."""

    def read(row: torch.Tensor, source: Source) -> str | None:
        """Decode ``source`` into ``row``; why it cannot be, or None."""
        try:
            if isinstance(source, Image.Image):
                row.copy_(image_input.pixels(source))
            else:
                with open_image(source) as image:
                    row.copy_(image_input.pixels(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            return getattr(error, "strerror", None) or str(error) or type(error).__name__
        return None

    def decode(start: int) -> tuple[torch.Tensor, list[Future[str | None]]]:
        """Start decoding the chunk at ``start``: its rows, and why each cannot be read (or None) to come."""
        part = sources[start : start + chunk]
        rows = (
            into[start : start + len(part)]
            if into is not None
            else torch.empty(len(part), *image_input.shape, dtype=torch.uint8)
        )
        return rows, [pool.submit(read, row, source) for row, source in zip(rows, part, strict=True)]

    pool = ThreadPoolExecutor(max_workers=threads or usable_cores(), thread_name_prefix=DECODERS)
    try:
        started = [decode(0)] if sources else []
        for start in range(0, len(sources), chunk):
            if start + chunk < len(sources):
                started.append(decode(start + chunk))  # the next, while the caller works on this one
            rows, decoding = started.pop(0)
            whys = [why.result() for why in decoding]
            good = [start + i for i, why in enumerate(whys) if why is None]
            bad = [(start + i, why) for i, why in enumerate(whys) if why is not None]
            yield good, (rows[[i - start for i in good]] if bad else rows), bad
            del rows, decoding  # before the chunk after the next is decoded
            release_freed_memory()
    finally:  # a caller that stops early (an error, Ctrl-C) does not wait for the next chunk
        pool.shutdown(cancel_futures=True)


def release_freed_memory() -> None:
    """Give the pages of freed memory back to the system (glibc's ``malloc_trim``; nothing where
    there is none), after each chunk. Decoding allocates and frees photo-sized buffers in each
    thread, which glibc kept: evaluating 3,000 photos at 512 px a chunk at a time, the process's
    memory grew chunk after chunk to a peak of 1.71 GB without it, and stayed at 1.28 GB with it
    (0.82 GB before the first chunk)."""
    trim = getattr(LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None


def read_all(
    sources: Sequence[Source], image_input: ImageInput, done: Callable[[int], object] | None = None
) -> tuple[torch.Tensor, list[int], list[tuple[int, str]]]:
    """The readable ones of ``sources`` (:func:`read_pixels`) as one uint8 N×C×S×S tensor, each
    decoded into its own row (joining chunks at the end would hold every image twice), their
    indices, and ``(index, why)`` of each that cannot be read. ``done(n)`` after each chunk of n."""
    images = torch.empty(len(sources), *image_input.shape, dtype=torch.uint8)
    kept, unread = [], []
    for good, _, bad in read_pixels(sources, image_input, into=images):
        kept += good
        unread += bad
        if done is not None:
            done(len(good) + len(bad))
    return (images[kept] if unread else images), kept, unread
