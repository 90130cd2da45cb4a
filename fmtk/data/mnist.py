"""MNIST-like datasets: MNIST and Fashion-MNIST from IDX files, scikit-learn's 8×8 digits.

All three become in-memory :class:`~fmtk.data.batches.TensorBatches` splits.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import struct
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import torch

from fmtk.data.batches import DataSplits, TensorBatches, stratified_split
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
    downloads them into ``data_dir`` (this needs the network). Of several processes, one per
    machine looks (and downloads) first and the others after it: two downloads would write the
    same files at once, and one's tidying up would remove the folders the other is writing into.
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

    with idist.one_rank_first(local=True):
        found = present()
        if not found:
            download_mnist(data_dir, name)
            found = present()
    missing = [f"{MNIST_FILES[key]}.gz" for key in MNIST_FILES if key not in found]
    if missing:
        raise FmtkError(f"{raw}: missing {', '.join(missing)}")
    return found


def download_mnist(data_dir: Path, name: str) -> None:
    """torchvision's download of ``name`` into ``data_dir``; offline, one line saying where to put
    the files, and no folder left behind that the attempt made."""
    import torchvision.datasets

    raw = data_dir / name / "raw"
    created = [folder for folder in (raw, raw.parent, data_dir) if not folder.exists()]
    try:
        getattr(torchvision.datasets, name)(str(data_dir), download=True)
    except Exception as error:  # noqa: BLE001 - any download failure gets the same advice
        for folder in created:
            with contextlib.suppress(OSError):  # only an empty folder goes
                folder.rmdir()
        files = ", ".join(f"{stem}.gz" for stem in MNIST_FILES.values())
        raise FmtkError(
            f"{name} not found in {raw} and the download failed ({type(error).__name__}); put {files} there"
        ) from None


def load_mnist_like(
    data_dir: Path, name: str, batch_size: int, device: torch.device, seed: int, valid_fraction: float = 1 / 6
) -> DataSplits:
    """MNIST or FashionMNIST: a seeded stratified train/valid split (50,000/10,000 of the 60,000
    training images by default) and the test set."""
    files = find_mnist_files(Path(data_dir), name)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for key, array in arrays.items():
        if array.ndim != (3 if key.endswith("images") else 1):  # e.g. a labels file in the images' place
            what = "images (count, rows, columns)" if key.endswith("images") else "labels (count)"
            raise FmtkError(f"{files[key]}: not an IDX file of {what}: its shape is {array.shape}")
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise FmtkError(f"{files[split + '_images']}: {len(images)} images, but "
                            f"{files[split + '_labels']} has {len(labels)} labels")  # fmt: skip

    def tensors(split: str, index: np.ndarray | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(arrays[f"{split}_images"][index].copy()).unsqueeze(1)
        labels = torch.from_numpy(arrays[f"{split}_labels"][index].astype(np.int64))
        return images.to(device), labels.to(device)

    classes = FASHION_MNIST_CLASSES if name == "FashionMNIST" else [str(d) for d in range(10)]
    check_mnist_arrays(arrays, files, len(classes))
    train_index, valid_index = stratified_split(
        arrays["train_labels"], valid_fraction, seed, source=str(files["train_labels"])
    )
    return DataSplits(
        train=TensorBatches(*tensors("train", train_index), batch_size, shuffle=True, seed=seed),
        valid=TensorBatches(*tensors("train", valid_index), batch_size),
        test=TensorBatches(*tensors("test"), batch_size),
        classes=classes,
    )


def check_mnist_arrays(arrays: dict[str, np.ndarray], files: dict[str, Path], classes: int) -> None:
    """Refuse, at load time and naming the file, data that would fail only during or after
    training: no images, a label past the classes, test images of another size than training's."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) == 0:
            raise FmtkError(f"{files[split + '_images']}: holds no images")
        if int(labels.max()) >= classes:
            raise FmtkError(
                f"{files[split + '_labels']}: label {int(labels.max())} is not one of the {classes} classes "
                f"(0–{classes - 1})"
            )
    train_size, test_size = arrays["train_images"].shape[1:], arrays["test_images"].shape[1:]
    if test_size != train_size:
        raise FmtkError(
            f"{files['test_images']}: images are {test_size[0]}×{test_size[1]}, the training images "
            f"{train_size[0]}×{train_size[1]}"
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
