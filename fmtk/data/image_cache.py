"""The decoded-image cache of image folders (``data_cache=file``): one ``.npy`` file per folder and
image size, keyed by every file's path, size and modification time."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fmtk.errors import FmtkError

# Part of every cache's key: changed whenever decoding gives a photo other pixels, so that no cache
# of the old pixels is read again. 2: upright (fmtk.data.image_input.upright).
DECODING = 2


def cache_folder() -> Path:
    """Where decoded image caches go: ``$FMTK_CACHE``, else ``~/.cache/fmtk``."""
    return Path(os.environ.get("FMTK_CACHE") or Path.home() / ".cache" / "fmtk")


def cached_decode_images(
    samples: list[tuple[str, int]], folder: Path, image_size: int, decode: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """``decode(samples, image_size)`` (:func:`fmtk.data.images.decode_images`) through a ``.npy``
    file in :func:`cache_folder`, keyed by :data:`DECODING`, the image size and every file's path
    (relative to ``folder``), size and modification time (any change: a new file)."""
    key = hashlib.sha256(f"{DECODING}\0{image_size}".encode())
    for path, _ in samples:
        status = os.stat(path)
        key.update(f"{os.path.relpath(path, folder)}\0{status.st_size}\0{status.st_mtime_ns}\n".encode())
    cache = cache_folder() / f"{folder.name}-{image_size}px-{key.hexdigest()[:20]}.npy"
    if cache.is_file():
        try:
            return torch.from_numpy(np.load(cache))
        except (OSError, ValueError):
            pass  # a torn or foreign file: decode again and replace it
    images = decode(samples, image_size)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        with temporary.open("wb") as file:
            np.save(file, images.numpy())
        temporary.replace(cache)  # atomic: a reader never sees half a file
    except OSError as error:
        raise FmtkError(f"cannot write the image cache {cache}: {error.strerror}") from None
    return images
