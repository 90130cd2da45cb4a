"""Data: splits of ``(x, y)`` batches for a recipe, and the loaders of the bundled datasets.

- :mod:`fmtk.data.batches`: :class:`TensorBatches` (in-memory uint8 tensors on the device),
  :class:`DataSplits`, :func:`stratified_split`.
- :mod:`fmtk.data.mnist`: MNIST and Fashion-MNIST IDX files, scikit-learn's digits.
- :mod:`fmtk.data.images`: image folders (Cat & Dog), decoded once or by DataLoader workers.
"""

from fmtk.data.batches import Batches, DataSplits, TensorBatches, scale_pixels, stratified_split
from fmtk.data.images import LoaderBatches, decode_image_folder, load_catdog, photo_input
from fmtk.data.mnist import grayscale_input, load_digits_splits, load_mnist_like, read_idx

__all__ = [
    "Batches", "DataSplits", "LoaderBatches", "TensorBatches", "decode_image_folder", "grayscale_input",
    "load_catdog", "load_digits_splits", "load_mnist_like", "photo_input", "read_idx", "scale_pixels",
    "stratified_split",
]  # fmt: skip
