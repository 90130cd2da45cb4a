"""Data: splits of ``(x, y)`` batches for a recipe, and the loaders of the bundled datasets.

- :mod:`fmtk.data.batches`: :class:`TensorBatches` (in-memory uint8 tensors on the device),
  :class:`DataSplits`, :func:`stratified_split`.
- :mod:`fmtk.data.mnist`: MNIST and Fashion-MNIST IDX files, scikit-learn's digits.
- :mod:`fmtk.data.image_input`: :class:`ImageInput`, how one image file becomes a model input.
- :mod:`fmtk.data.images`: image files, decoded once or by DataLoader workers.
- :mod:`fmtk.data.folders`: folders of photos (yours, Cat & Dog) split into train, valid and test.
"""

from fmtk.data.batches import Batches, DataSplits, TensorBatches, scale_pixels, stratified_split
from fmtk.data.folders import load_catdog, load_photo_folder, photo_classes
from fmtk.data.image_input import ImageInput
from fmtk.data.images import LoaderBatches, decode_image_folder
from fmtk.data.mnist import load_digits_splits, load_mnist_like, read_idx

__all__ = [
    "Batches", "DataSplits", "ImageInput", "LoaderBatches", "TensorBatches", "decode_image_folder",
    "load_catdog", "load_digits_splits", "load_mnist_like", "load_photo_folder", "photo_classes",
    "read_idx", "scale_pixels", "stratified_split",
]  # fmt: skip
