"""Image-folder datasets (Cat & Dog): decode and resize every image once into a uint8 tensor.

Decoding a JPEG costs far more than a training step of a small model; doing it once, then
flipping and normalising whole batches on the device, keeps the epoch loop free of PIL.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from fmtk.data import DataSplits, TensorBatches, scale_pixels, stratified_split
from fmtk.errors import FmtkError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_rgb(image: Image.Image, image_size: int) -> np.ndarray:
    """An image of any mode (L, CMYK, RGBA…) as an RGB uint8 array of image_size × image_size."""
    # JPEG only: let the decoder downscale by 1/2, 1/4 or 1/8 while staying ≥ the target.
    image.draft("RGB", (image_size, image_size))
    return np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BILINEAR))


def decode_image(path: str | Path, image_size: int) -> np.ndarray:
    """One image file as an RGB uint8 array of image_size × image_size."""
    try:
        with Image.open(path) as image:
            return resize_rgb(image, image_size)
    except (OSError, SyntaxError, ValueError) as error:
        raise FmtkError(f"{path}: cannot decode image ({error})") from None


def photo_input(image: Image.Image, image_size: int) -> torch.Tensor:
    """One photo as the model input of the image-folder recipes: 3×S×S, ImageNet-normalised."""
    pixels = torch.from_numpy(resize_rgb(image, image_size).copy()).permute(2, 0, 1)
    mean, std = (torch.tensor(values).view(-1, 1, 1) for values in (IMAGENET_MEAN, IMAGENET_STD))
    return scale_pixels(pixels, 255.0, mean, std)


def list_image_folder(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, class_index)`` pairs and class names of a ``folder/<class>/<image>`` tree."""
    if not folder.is_dir():
        raise FmtkError(f"image folder not found: {folder}")
    try:
        classes, class_to_index = find_classes(str(folder))
        samples = make_dataset(str(folder), class_to_index, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as error:  # torchvision's message names the empty class folders
        raise FmtkError(f"{folder}: {str(error).splitlines()[0]}") from None
    return samples, classes


def decode_image_folder(folder: Path, image_size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All images of ``folder`` as a uint8 N×3×S×S tensor, their int64 labels and the class names."""
    samples, classes = list_image_folder(folder)
    paths = [path for path, _ in samples]
    # PIL releases the GIL while decoding, so threads use every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        arrays = list(pool.map(partial(decode_image, image_size=image_size), paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels, classes


def find_split_folder(root: Path, name: str) -> Path:
    """``root/name``, or Kaggle's nested ``root/name/name`` when that is where the classes are."""
    folder = root / name
    nested = folder / name
    return nested if nested.is_dir() else folder


def load_catdog(
    data_dir: Path,
    image_size: int,
    batch_size: int,
    device: torch.device,
    seed: int,
    flip_p: float = 0.3,
    valid_fraction: float = 0.2,
) -> DataSplits:
    """Cat & Dog photos: stratified train/valid split of training_set, test_set for testing.

    The random flip applies to the training split only (the notebook also flipped test images).
    """
    root = Path(data_dir) / "catdog"
    if not root.is_dir():
        raise FmtkError(f"Cat & Dog data not found: {root} (expected training_set/ and test_set/)")
    train_images, train_labels, classes = decode_image_folder(
        find_split_folder(root, "training_set"), image_size
    )
    test_images, test_labels, test_classes = decode_image_folder(
        find_split_folder(root, "test_set"), image_size
    )
    if test_classes != classes:
        raise FmtkError(f"{root}: test_set classes {test_classes} differ from training_set classes {classes}")
    train_index, valid_index = stratified_split(train_labels.numpy(), valid_fraction, seed)

    def batches(images: torch.Tensor, labels: torch.Tensor, train: bool = False) -> TensorBatches:
        return TensorBatches(
            images.to(device), labels.to(device), batch_size, shuffle=train, seed=seed,
            flip_p=flip_p if train else 0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )  # fmt: skip

    return DataSplits(
        train=batches(train_images[train_index], train_labels[train_index], train=True),
        valid=batches(train_images[valid_index], train_labels[valid_index]),
        test=batches(test_images, test_labels),
        classes=classes,
    )
