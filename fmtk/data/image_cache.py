"""The decoded-photo cache of image folders (``data_cache=file``): per folder and image size, one
``.npy`` file of its photos and one ``.json`` of what they are, in :func:`fmtk.caches.cache_folder`,
keyed by every file's path, size and modification time. A folder whose files changed replaces its
cache at that size (the old one could not be read again), so the cache grows with the folders and
sizes trained, not with each change; ``fmtk cache`` lists and clears it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch

from fmtk.caches import (
    PHOTOS,
    UNFINISHED,
    a_file_instead,
    being_written,
    byte_size,
    cache_folder,
    folder_name,
    temporary_name,
)
from fmtk.errors import FmtkError

# Part of every cache's key: changed whenever decoding gives a photo other pixels, so that no cache
# of the old pixels is read again. 2: upright (fmtk.data.image_input.upright).
DECODING = 2

Bad = list[tuple[str, str]]  # (path, why) of the files that cannot be decoded


class FolderCache:
    """``samples`` (the photos of ``folder``) decoded at ``image_size``, in the cache folder."""

    def __init__(self, samples: list[tuple[str, int]], folder: Path, image_size: int) -> None:
        self.samples, self.folder, self.image_size = samples, Path(folder), image_size
        place = hashlib.sha256(os.fsencode(f"{image_size}\0{self.folder.resolve()}")).hexdigest()[:8]
        key = hashlib.sha256(f"{DECODING}\0{image_size}".encode())
        for path, _ in samples:  # os.fsencode: any file name, UTF-8 or not
            status = os.stat(path)
            key.update(os.fsencode(f"{self.relative(path)}\0{status.st_size}\0{status.st_mtime_ns}\n"))
        self.place = cache_folder() / f"{folder_name(self.folder)}-{image_size}px-{place}-"
        self.npy = Path(f"{self.place}{key.hexdigest()[:20]}.npy")
        self.json = self.npy.with_suffix(".json")
        self.used: str | None = None  # "read", "written" or "decoded" (not this process's to write)

    def relative(self, path: str) -> str:
        return os.path.relpath(path, self.folder)

    @property
    def bytes_needed(self) -> int:
        return len(self.samples) * 3 * self.image_size**2

    def read(self) -> tuple[torch.Tensor, Bad] | None:
        """The photos decoded and the files that could not be, as written; None when there is no
        whole cache (none, torn, foreign or another's: decode again)."""
        try:
            said = json.loads(self.json.read_text())
            paths = {self.relative(path): path for path, _ in self.samples}
            bad = [(paths[name], why) for name, why in said["bad"]]
            images = np.load(self.npy)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        size = self.image_size
        if images.dtype != np.uint8 or images.shape != (len(self.samples) - len(bad), 3, size, size):
            return None
        try:  # last used, for `fmtk cache`: its access time, set (a mount may keep none); its time stays
            os.utime(self.npy, ns=(time.time_ns(), self.npy.stat().st_mtime_ns))
        except OSError:
            pass  # a cache folder this user may read but not write
        return torch.from_numpy(images), bad

    def stale(self) -> list[Path]:
        """The folder's other files at this size: caches of its photos before they changed, and
        files left by a process killed while writing them."""
        folder, name = self.place.parent, self.place.name
        try:
            files = [path for path in folder.iterdir() if path.name.startswith(name)]
        except OSError:
            return []
        files = [path for path in files if PHOTOS.fullmatch(path.name) or UNFINISHED.fullmatch(path.name)]
        mine = (self.npy.name, self.json.name)
        writing = [path for path in files if path.suffix == ".tmp" and being_written(path)]
        return [path for path in files if path.name not in mine and path not in writing]

    def write(self, images: torch.Tensor, bad: Bad) -> None:
        """Both files, each atomically (a reader never sees half of one), the ``.json`` last; the
        cache folder was checked before decoding (:func:`check_writable`)."""
        said = {
            "folder": str(self.folder.resolve()), "image_size": self.image_size, "photos": len(self.samples),
            "bad": [(self.relative(path), why) for path, why in bad], "decoding": DECODING,
        }  # fmt: skip
        contents = [
            (self.npy, lambda file: np.save(file, images.numpy())),
            (self.json, lambda file: file.write(json.dumps(said, indent=1).encode())),
        ]
        for path, write in contents:
            temporary = temporary_name(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with temporary.open("wb") as file:
                    write(file)
                temporary.replace(path)
            except OSError as error:
                raise FmtkError(f"cannot write the image cache {path}: {error.strerror}") from None
            finally:  # a full disk, a Ctrl-C or any error keeps no half-written copy (renamed: none left)
                with contextlib.suppress(OSError):
                    temporary.unlink(missing_ok=True)


def make_room(caches: Iterable[FolderCache]) -> None:
    """Before decoding: delete the stale files of each folder (:meth:`FolderCache.stale`; those that
    cannot be deleted stay, unused), then refuse, in one line, photos whose cache the cache folder's
    disk cannot hold."""
    caches = list(caches)
    for cache in caches:
        for path in cache.stale():
            with contextlib.suppress(OSError):  # a cache folder this user may read but not write
                path.unlink(missing_ok=True)
    missing = [cache for cache in caches if not (cache.npy.is_file() and cache.json.is_file())]
    if not missing:
        return
    need = sum(cache.bytes_needed for cache in missing)
    where = cache_folder()
    check_writable(where)
    existing = next(folder for folder in [where, *where.parents] if folder.exists())
    free = shutil.disk_usage(existing).free
    if need > free:
        raise FmtkError(
            f"data_cache=file: the {sum(len(cache.samples) for cache in missing):,} photos to cache at "
            f"{missing[0].image_size} px are {byte_size(need)} decoded, more than the {byte_size(free)} "
            f"free on the disk of the cache folder {where}: free space (fmtk cache --clear), set "
            "FMTK_CACHE to a folder on a larger disk, or --set data_cache=memory"
        )


def check_writable(where: Path) -> None:
    """Before decoding: the cache folder can be made and written in (a read-only disk, a folder of
    another user's, a path through a file), else one line that says what to do instead."""
    if a_file := a_file_instead(where):
        raise FmtkError(a_file)
    probe = temporary_name(where / ".writable")
    try:
        where.mkdir(parents=True, exist_ok=True)
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise FmtkError(
            f"data_cache=file: cannot write in the cache folder {where} ({error.strerror}): set FMTK_CACHE "
            "to a folder you can write in, or --set data_cache=memory"
        ) from None


def cached_decode_images(
    cache: FolderCache, decode: Callable[[list[tuple[str, int]], int], tuple[torch.Tensor, Bad]]
) -> tuple[torch.Tensor, Bad]:
    """The photos of ``cache`` decoded and the files that cannot be, from the cache when it has them,
    else by ``decode(samples, image_size)`` and written for the next run (the bad files too: a folder
    with one keeps its others decoded). Of a machine's processes of one run only the first writes:
    the others would write the same file, each its own temporary copy on the disk at once, which
    :func:`make_room` counts once."""
    found, cache.used = cache.read(), "read"
    if found is None:
        found, cache.used = decode(cache.samples, cache.image_size), "decoded"
        if idist.get_local_rank() == 0:
            cache.write(*found)
            cache.used = "written"
    return found


def cache_line(caches: Iterable[FolderCache]) -> str | None:
    """What ``caches`` did this run, one line: the photos read from the cache folder, and those
    decoded and kept there for the next runs (with their size); None when none was used."""
    caches = [cache for cache in caches if cache.used is not None]
    if not caches:
        return None
    photos = {used: sum(len(cache.samples) for cache in caches if cache.used == used)
              for used in ("read", "written", "decoded")}  # fmt: skip
    kept = byte_size(sum(cache.npy.stat().st_size for cache in caches
                         if cache.used == "written" and cache.npy.is_file()))  # fmt: skip
    said = {
        "read": f"read from {cache_folder()}",
        "written": f"decoded and kept {'there' if photos['read'] else f'in {cache_folder()}'} for the next "
        f"runs ({kept}; fmtk cache lists and clears them)",
        "decoded": "decoded (the machine's first process keeps them)",
    }
    parts = [f"{count:,} {said[used]}" for used, count in photos.items() if count]
    parts[0] = parts[0].replace(" ", f" photos at {caches[0].image_size} px ", 1)
    return f"data_cache=file: {', '.join(parts)}"
