"""Each bad input of the data and the command line: one line on stderr, a non-zero exit, no
traceback, and nothing that existed before is changed."""

from __future__ import annotations

import gzip
from pathlib import Path

from conftest import assert_one_line_error, fmtk, make_mnist_like, tree_snapshot
from PIL import Image


def run_on(data: Path, tmp_path: Path, *args: str):
    """`fmtk run ...` on ``data``; checks the data is left as it was and, when the command failed,
    that no run folder is left behind."""
    before = tree_snapshot(data) if data.exists() else None
    result = fmtk("run", *args, "--data-dir", str(data), "--output-dir", "out", cwd=tmp_path)
    assert (tree_snapshot(data) if data.exists() else None) == before
    if result.returncode != 0:
        assert not [path for path in (tmp_path / "out").glob("*")], "a failed run left a run folder"
    return result


def test_mnist_file_with_a_wrong_magic_number(tmp_path: Path) -> None:
    data = make_mnist_like(tmp_path / "data")
    path = data / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0c\x01" + gzip.decompress(path.read_bytes())[4:]))
    result = run_on(data, tmp_path, "mnist_dnn")
    assert_one_line_error(result, "train-labels-idx1-ubyte.gz", "wrong magic number")


def test_truncated_mnist_file(tmp_path: Path) -> None:
    data = make_mnist_like(tmp_path / "data")
    path = data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:5000]))
    assert_one_line_error(run_on(data, tmp_path, "mnist_dnn"), "t10k-images-idx3-ubyte.gz", "truncated")


def test_data_root_missing(tmp_path: Path) -> None:
    result = run_on(tmp_path / "nowhere", tmp_path, "catdog_vgg")
    assert_one_line_error(result, "Cat & Dog data not found", "nowhere")
    assert not (tmp_path / "nowhere").exists()


SMALL = ["catdog_vgg", "--set", "image_size=32", "--epochs", "1", "--batch-size", "8"]


def test_missing_class_folder(catdog_root: Path, tmp_path: Path) -> None:
    dogs = catdog_root / "catdog" / "test_set" / "dogs"
    for path in dogs.iterdir():
        path.unlink()
    dogs.rmdir()
    assert_one_line_error(run_on(catdog_root, tmp_path, *SMALL), "test_set classes ['cats'] differ")


def test_empty_class_folder(catdog_root: Path, tmp_path: Path) -> None:
    for path in (catdog_root / "catdog" / "training_set" / "cats").iterdir():
        path.unlink()
    assert_one_line_error(run_on(catdog_root, tmp_path, *SMALL), "training_set", "cats")


def test_corrupt_jpeg_is_named(catdog_root: Path, tmp_path: Path) -> None:
    broken = catdog_root / "catdog" / "training_set" / "dogs" / "dog.3.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    assert_one_line_error(run_on(catdog_root, tmp_path, *SMALL), "dog.3.jpg: cannot decode image")


def test_grayscale_cmyk_and_alpha_images_are_converted_and_train(catdog_root: Path, tmp_path: Path) -> None:
    cats, dogs = (
        catdog_root / "catdog" / "training_set" / "cats",
        catdog_root / "catdog" / "training_set" / "dogs",
    )
    Image.new("L", (50, 40), 90).save(cats / "gray.jpg")
    Image.new("CMYK", (45, 45), (200, 0, 0, 0)).save(dogs / "cmyk.jpg")
    Image.new("RGBA", (60, 30), (0, 0, 255, 80)).save(dogs / "alpha.png")
    result = run_on(catdog_root, tmp_path, *SMALL)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "out" / "catdog_vgg").glob("*/metrics.json"))
