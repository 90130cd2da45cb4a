from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_mnist_like, tree_snapshot, write_idx

from fmtk.data.mnist import load_digits_splits, load_mnist_like, read_idx
from fmtk.errors import FmtkError

CPU = torch.device("cpu")


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "images-idx3-ubyte", array, compress=compress)
    np.testing.assert_array_equal(read_idx(path), array)


def test_read_idx_wrong_magic_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 20)  # 0x0d: float data, not MNIST's bytes
    with pytest.raises(FmtkError, match="train-images-idx3-ubyte.*magic number"):
        read_idx(path)


@pytest.mark.parametrize("cut", [10, 100])
def test_read_idx_truncated(tmp_path: Path, cut: int) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((5, 28, 28), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(FmtkError, match="truncated"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x-idx3-ubyte", np.ones((50, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FmtkError, match="x-idx3-ubyte.gz"):
        read_idx(path)


def test_load_mnist_like_splits_without_writing(mnist_root: Path) -> None:
    before = tree_snapshot(mnist_root)
    splits = load_mnist_like(mnist_root, "MNIST", batch_size=64, device=CPU, seed=0, valid_fraction=1 / 6)
    assert tree_snapshot(mnist_root) == before  # nothing extracted or written into the root
    assert (len(splits.train.labels), len(splits.valid.labels), len(splits.test.labels)) == (500, 100, 200)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(splits.valid.labels).tolist() == [10] * 10  # stratified
    x, y = next(iter(splits.test))
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y.dtype == torch.int64
    assert splits.classes == [str(d) for d in range(10)]


def test_load_mnist_like_reads_uncompressed_files(tmp_path: Path) -> None:
    root = make_mnist_like(tmp_path)
    for path in (root / "MNIST" / "raw").glob("*.gz"):
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    splits = load_mnist_like(root, "MNIST", batch_size=64, device=CPU, seed=0, valid_fraction=1 / 6)
    assert len(splits.test.labels) == 200


def test_load_mnist_like_names_missing_files(mnist_root: Path) -> None:
    (mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FmtkError, match="missing t10k-labels-idx1-ubyte.gz"):
        load_mnist_like(mnist_root, "MNIST", batch_size=64, device=CPU, seed=0)


def test_load_mnist_like_names_a_file_in_another_s_place_and_a_count_mismatch(tmp_path: Path) -> None:
    raw = make_mnist_like(tmp_path) / "MNIST" / "raw"
    images, labels = raw / "t10k-images-idx3-ubyte.gz", raw / "t10k-labels-idx1-ubyte.gz"
    kept = images.read_bytes()
    images.write_bytes(labels.read_bytes())  # the labels copied over the images
    wrong = (
        r"images-idx3-ubyte.gz: not an IDX file of images \(count, rows, columns\): its shape is \(200,\)$"
    )
    with pytest.raises(FmtkError, match=wrong):
        load_mnist_like(tmp_path, "MNIST", batch_size=64, device=CPU, seed=0)
    images.write_bytes(kept)
    write_idx(labels.with_suffix(""), np.zeros(150, np.uint8))  # 150 labels for 200 images
    mismatch = r"t10k-images-idx3-ubyte.gz: 200 images, but .*t10k-labels-idx1-ubyte.gz has 150 labels$"
    with pytest.raises(FmtkError, match=mismatch):
        load_mnist_like(tmp_path, "MNIST", batch_size=64, device=CPU, seed=0)


def test_digits_splits() -> None:
    splits = load_digits_splits(batch_size=32, device=CPU, seed=0)
    sizes = [len(split.labels) for split in (splits.train, splits.valid, splits.test)]
    assert sum(sizes) == 1797 and sizes[2] == 360
    x, _ = next(iter(splits.train))
    assert x.shape == (32, 1, 8, 8) and x.max() <= 1.0


def test_offline_download_failure_says_where_the_files_go_and_leaves_nothing(tmp_path: Path) -> None:
    import socket

    try:
        socket.getaddrinfo("ossci-datasets.s3.amazonaws.com", 443)
        pytest.skip("this machine reaches the network; the download would succeed")
    except OSError:
        pass
    root = tmp_path / "data"
    with pytest.raises(FmtkError, match=r"MNIST not found in .*raw.*put train-images-idx3-ubyte.gz"):
        load_mnist_like(root, "MNIST", batch_size=64, device=CPU, seed=0)
    assert not root.exists()
