from __future__ import annotations

import shutil
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, tree_snapshot
from PIL import ExifTags, Image, features
from torch.utils.data import DataLoader

from fmtk.data import image_cache
from fmtk.data.augment import Augmentation
from fmtk.data.folders import load_catdog
from fmtk.data.image_input import ImageInput, heif, image_files, photo_extensions, read_all
from fmtk.data.images import (
    BadImages,
    LoaderBatches,
    decode_image,
    decode_image_folder,
    list_image_folder,
    loader_workers,
    others_line,
    usable_cores,
)
from fmtk.errors import FmtkError

CPU = torch.device("cpu")


def test_decode_image_folder_converts_every_mode_to_rgb(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "train", per_class=3)
    Image.new("L", (30, 50), 128).save(folder / "cats" / "gray.jpg")
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "dogs" / "cmyk.jpg")
    Image.new("RGBA", (20, 35), (0, 0, 255, 100)).save(folder / "dogs" / "alpha.png")
    images, labels, classes = decode_image_folder(folder, image_size=16)
    assert images.shape == (9, 3, 16, 16) and images.dtype == torch.uint8
    assert classes == ["cats", "dogs"] and labels.tolist() == [0] * 4 + [1] * 5


# EXIF orientation → how the stored rows are shown (the EXIF standard; 5 and 7 are mirrored turns)
SHOWN = {
    1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a.transpose(1, 0, 2), 2), 8: lambda a: np.rot90(a, 1),
}  # fmt: skip


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_a_photo_is_decoded_upright_as_a_viewer_shows_it(tmp_path: Path, orientation: int) -> None:
    pixels = np.random.default_rng(orientation).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ExifTags.Base.Orientation] = orientation  # 6: a phone held upright; 3: upside down
    image.save(tmp_path / "photo.png", exif=exif)  # PNG: lossless, and 16 px decoded at 16: no resizing
    upright = SHOWN[orientation](pixels)
    np.testing.assert_array_equal(decode_image(tmp_path / "photo.png", 16), upright)
    with Image.open(tmp_path / "photo.png") as opened:
        grey = ImageInput(16, channels=1).pixels(opened)[0].numpy()
    expected = Image.fromarray(np.ascontiguousarray(upright)).convert("L")
    np.testing.assert_array_equal(grey, np.asarray(expected))


@pytest.mark.parametrize("kind", ["jpg", "avif", "webp"])  # JPEG: its draft decodes at 1/4 first
def test_a_phone_photo_decoded_small_is_upright(tmp_path: Path, kind: str) -> None:
    pixels = np.zeros((60, 100, 3), np.uint8)
    pixels[:, :30] = 255  # a white band on the stored rows' left: on top once turned (orientation 6)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ExifTags.Base.Orientation] = 6
    image.save(tmp_path / f"phone.{kind}", exif=exif, quality=95)
    with Image.open(tmp_path / f"phone.{kind}") as saved:
        assert saved.getexif()[ExifTags.Base.Orientation] == 6 and saved.size == (100, 60)  # as stored
    decoded = decode_image(tmp_path / f"phone.{kind}", 10).mean(axis=2)
    assert decoded[:2].min() > 240 and decoded[5:].max() < 15


def test_a_malformed_exif_block_does_not_cost_the_photo(tmp_path: Path) -> None:
    # Orientation 6, and a resolution written as text where a fraction belongs: Pillow reads it, and
    # its ImageOps.exif_transpose fails rewriting it (TypeError: bad operand type for abs(): 'str').
    entries = [struct.pack("<HHII", 0x0112, 3, 1, 6), struct.pack("<HHI4s", 0x011A, 2, 3, b"ab\0\0")]
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:, :4] = 255  # a band on the stored rows' left: on top once turned
    Image.fromarray(pixels).save(tmp_path / "odd.png", exif=b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd)
    np.testing.assert_array_equal(decode_image(tmp_path / "odd.png", 16), np.rot90(pixels, -1))


def test_wide_grey_is_stretched_from_its_lowest_to_its_highest_value(tmp_path: Path) -> None:
    twelve_bits = np.array([[0, 1365], [2730, 4095]] * 4, dtype=np.uint16).repeat(4, axis=1)  # 8 × 8
    levels = np.array([[0, 85], [170, 255]] * 4, dtype=np.uint8).repeat(4, axis=1)  # its high byte: 0…15
    Image.fromarray(twelve_bits).save(tmp_path / "xray.png")  # 16-bit grey: Pillow's mode I;16
    Image.fromarray(twelve_bits).save(tmp_path / "xray.tif")
    Image.fromarray(twelve_bits.astype(np.int32) * 100_000 - 7).save(tmp_path / "int32.tif")  # mode I
    Image.fromarray(twelve_bits.astype(np.float32) / 8).save(tmp_path / "float.tif")  # mode F
    for name in ("xray.png", "xray.tif", "int32.tif", "float.tif"):
        np.testing.assert_array_equal(
            decode_image(tmp_path / name, 8), np.repeat(levels[..., None], 3, axis=2)
        )
        with Image.open(tmp_path / name) as opened:
            np.testing.assert_array_equal(ImageInput(8, channels=1).pixels(opened)[0].numpy(), levels)
    Image.fromarray(np.full((8, 8), 300, np.uint16)).save(tmp_path / "flat.png")
    assert decode_image(tmp_path / "flat.png", 8).max() == 0
    Image.fromarray(np.array([[0.5, np.nan]], np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(FmtkError) as raised:
        decode_image(tmp_path / "nan.tif", 8)
    assert (
        str(raised.value)
        == f"{tmp_path / 'nan.tif'}: cannot decode image (pixels that are not numbers (NaN or infinity))"
    )


def test_a_malformed_exif_header_does_not_cost_a_png(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "odd.png", exif=b"Exif\0\0garbage!")  # Pillow: SyntaxError
    np.testing.assert_array_equal(decode_image(tmp_path / "odd.png", 16), pixels)


def test_hidden_files_and_folders_are_neither_photos_nor_classes(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "photos", per_class=3)
    images, labels, classes = decode_image_folder(folder, image_size=16)
    (folder / "cats" / "._cat.0.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # a Mac's resource fork
    (folder / ".ipynb_checkpoints").mkdir()  # Jupyter's: would be an empty class
    (folder / "__MACOSX" / "cats").mkdir(parents=True)  # unzipped from a Mac's zip of the class folders
    (folder / "__MACOSX" / "cats" / "cat.0.jpg").write_bytes(bytes(80))
    (folder / "dogs" / ".thumbnails").mkdir()
    shutil.copy(folder / "cats" / "cat.0.jpg", folder / "dogs" / ".thumbnails" / "cat.0.jpg")
    again = decode_image_folder(folder, image_size=16)
    assert again[2] == classes and torch.equal(again[1], labels) and torch.equal(again[0], images)
    assert image_files([folder]) == sorted(folder.glob("*/[!.]*.jpg"))  # fmtk predict FOLDER


def test_a_folder_without_class_folders_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "photos" / ".git").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(tmp_path / "photos" / "cat.jpg")
    with pytest.raises(FmtkError, match=r"photos: no class folder in it \(PHOTOS/<class>/\*\.jpg\)$"):
        decode_image_folder(tmp_path / "photos", image_size=16)


@pytest.fixture
def heif_again() -> Iterator[None]:
    """Whether pillow-heif is found is decided again after the test (it is cached per process)."""
    heif.cache_clear()
    yield
    heif.cache_clear()


def test_heic_photos_are_read_upright_with_pillow_heif(tmp_path: Path, heif_again: None) -> None:
    assert heif()  # pillow-heif: fmtk's heic extra, in its test extra; Pillow now writes HEIC too
    folder = make_image_folder(tmp_path / "photos", per_class=2)
    pixels = np.zeros((60, 90, 3), np.uint8)
    pixels[:, :30] = 255  # a white band on the stored rows' left: on top once turned (orientation 6)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[ExifTags.Base.Orientation] = 6
    image.save(folder / "cats" / "IMG_0001.HEIC", exif=exif.tobytes(), quality=95)  # turned: irot, as a phone
    decoded = decode_image(folder / "cats" / "IMG_0001.HEIC", 12).mean(axis=2)
    assert decoded[:3].min() > 230 and decoded[5:].max() < 25
    samples, classes, others = list_image_folder(folder)
    assert len(samples) == 5 and others == []
    assert read_all([folder / "cats" / "IMG_0001.HEIC"], ImageInput(12))[2] == []


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow reads no AVIF (its wheels do since 11.3)")
def test_avif_photos_are_read_where_pillow_reads_them(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "photos", per_class=2)
    pixels = np.zeros((16, 16, 3), np.uint8)
    pixels[:8] = (200, 30, 30)
    Image.fromarray(pixels).save(folder / "cats" / "web.avif", quality=95)
    samples, _, others = list_image_folder(folder)
    assert str(folder / "cats" / "web.avif") in [path for path, _ in samples] and others == []
    decoded = decode_image(folder / "cats" / "web.avif", 16).astype(int)
    assert np.abs(decoded - pixels).mean() < 6


def test_without_pillow_heif_heic_photos_are_counted_and_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, heif_again: None
) -> None:
    folder = make_image_folder(tmp_path / "photos", per_class=2)
    (folder / "cats" / "IMG_0001.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "cats" / "notes.txt").write_text("taken in May")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import pillow_heif: ImportError
    samples, _, others = list_image_folder(folder)
    assert len(samples) == 4 and sorted(Path(path).name for path in others) == ["IMG_0001.HEIC", "notes.txt"]
    line = others_line(others)
    assert line.startswith("files left out, of kinds fmtk does not read: 1 .heic, 1 .txt (it reads .jpg")
    read = photo_extensions()  # torchvision's, and AVIF where Pillow reads it; no HEIC without pillow-heif
    assert read[-1] in (".webp", ".avif")
    assert line.endswith(f" {read[-1]}); HEIC photos: pip install pillow-heif")
    listed = image_files([folder])  # fmtk predict FOLDER: answered as unreadable, saying what to install
    assert folder / "cats" / "IMG_0001.HEIC" in listed and folder / "cats" / "notes.txt" not in listed
    _, _, unread = read_all([folder / "cats" / "IMG_0001.HEIC"], ImageInput(12))
    assert unread == [(0, "HEIC photos need pillow-heif: pip install pillow-heif")]
    (folder / "birds").mkdir()  # a class of a phone's photos alone
    (folder / "birds" / "IMG_0002.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(FmtkError, match=r": class folder birds holds no photo \(fmtk reads \.jpg .*\); add "
                       r"photos or remove the folder; HEIC photos: pip install pillow-heif; besides, files "
                       r"of kinds fmtk does not read are left out \(2 \.heic, 1 \.txt\)$"):  # fmt: skip
        list_image_folder(folder)
    (folder / "cats" / "empty.jpg").write_bytes(b"")  # found without decoding: said at once too
    with pytest.raises(
        FmtkError, match=r"\(2 \.heic, 1 \.txt\) and 1 photo file is empty \(.*/cats/empty\.jpg\)$"
    ):
        list_image_folder(folder)


def test_decode_image_names_a_corrupt_file(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "train", per_class=2)
    broken = folder / "dogs" / "dog.0.jpg"
    broken.write_bytes(broken.read_bytes()[: len(broken.read_bytes()) // 3])
    with pytest.raises(FmtkError, match=r"1 of 4 image files cannot be decoded: .*dog.0.jpg \(") as raised:
        decode_image_folder(folder, image_size=16)
    assert raised.value.bad == [(str(broken), raised.value.bad[0][1])]


def test_decode_image_rejects_a_non_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(FmtkError, match="notes.jpg"):
        decode_image(path, 16)


def test_empty_class_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "train", per_class=2)
    for path in (folder / "dogs").iterdir():
        path.unlink()
    with pytest.raises(FmtkError, match="dogs"):
        decode_image_folder(folder, image_size=16)


def test_load_catdog_stratified_split_and_train_only_flip(catdog_root: Path) -> None:
    before = tree_snapshot(catdog_root)
    splits = load_catdog(catdog_root, image_size=24, batch_size=8, device=CPU, seed=42)
    assert tree_snapshot(catdog_root) == before
    assert torch.bincount(splits.valid.labels).tolist() == [4, 4]  # 20 % of 20 per class
    assert len(splits.train.labels) == 32 and len(splits.test.labels) == 12
    flips = [split.augmentation.flip_p for split in (splits.train, splits.valid, splits.test)]
    assert flips == [0.3, 0, 0]
    x, _ = next(iter(splits.test))
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32


def test_load_catdog_accepts_kaggle_nested_layout(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_image_folder(root / "catdog" / "training_set" / "training_set", per_class=10)
    make_image_folder(root / "catdog" / "test_set" / "test_set", per_class=3)
    splits = load_catdog(root, image_size=16, batch_size=4, device=CPU, seed=0)
    assert len(splits.test.labels) == 6 and splits.classes == ["cats", "dogs"]


def test_load_catdog_missing_class_in_test_set(catdog_root: Path) -> None:
    test_dogs = catdog_root / "catdog" / "test_set" / "dogs"
    for path in test_dogs.iterdir():
        path.unlink()
    test_dogs.rmdir()
    with pytest.raises(FmtkError, match=r"test_set: classes \['cats'\] differ"):
        load_catdog(catdog_root, image_size=16, batch_size=4, device=CPU, seed=0)


def test_decode_resizes_like_torchvision(tmp_path: Path) -> None:
    path = tmp_path / "x.png"  # PNG: no JPEG draft scaling, so the result is PIL's bilinear resize
    pixels = np.random.default_rng(0).integers(0, 255, (64, 48, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    from torchvision.transforms import functional

    expected = np.asarray(functional.resize(Image.open(path), [16, 16]))
    np.testing.assert_array_equal(decode_image(path, 16), expected)


def test_file_cache_is_reused_and_keyed_by_the_files(
    catdog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    before = tree_snapshot(catdog_root)
    first = load_catdog(catdog_root, 16, 8, CPU, seed=0, data_cache="file")
    caches = sorted((tmp_path / "cache").glob("*.npy"))
    assert [path.name.split("-")[0] for path in caches] == ["test_set", "training_set"]
    memory = load_catdog(catdog_root, 16, 8, CPU, seed=0)
    assert torch.equal(first.train.images, memory.train.images)
    stamps = {path: path.stat().st_mtime_ns for path in caches}
    again = load_catdog(catdog_root, 16, 8, CPU, seed=0, data_cache="file")
    assert torch.equal(again.test.images, memory.test.images)
    assert {path: path.stat().st_mtime_ns for path in caches} == stamps  # read, not rewritten
    assert tree_snapshot(catdog_root) == before  # the data root is never written
    Image.new("RGB", (30, 30), (200, 0, 0)).save(catdog_root / "catdog" / "test_set" / "cats" / "new.jpg")
    changed = load_catdog(catdog_root, 16, 8, CPU, seed=0, data_cache="file")
    assert len(changed.test.labels) == len(memory.test.labels) + 1  # a new file: a new cache
    replaced = list((tmp_path / "cache").glob("test_set-*.npy"))
    assert len(replaced) == 1 and replaced != caches[:1]  # the old one could never be read again: gone
    monkeypatch.setattr(image_cache, "DECODING", image_cache.DECODING + 1)  # decoding gives new pixels
    load_catdog(catdog_root, 16, 8, CPU, seed=0, data_cache="file")
    again = list((tmp_path / "cache").glob("test_set-*.npy"))
    assert len(again) == 1 and again != replaced  # the old pixels are not read


def test_dataloader_path_gives_the_cached_paths_batches(catdog_root: Path) -> None:
    memory = load_catdog(catdog_root, 16, 8, CPU, seed=0)
    loaders = load_catdog(catdog_root, 16, 8, CPU, seed=0, data_cache="none")
    for split in ("valid", "test"):  # unshuffled: the same samples in the same order
        for (x1, y1), (x2, y2) in zip(getattr(memory, split), getattr(loaders, split), strict=True):
            assert torch.allclose(x1, x2) and torch.equal(y1, y2)
    assert loaders.train.loader.num_workers == loader_workers(usable_cores())
    # Decoding in two worker processes, whatever this machine's default.
    workers = LoaderBatches(loaders.train.loader.dataset, 8, CPU, shuffle=True, seed=0, workers=2)
    workers.set_epoch(1)
    labels = torch.cat([y for _, y in workers])
    assert sorted(labels.tolist()) == sorted(memory.train.labels.tolist())  # every training sample once


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 0), (3, 2), (8, 7), (16, 8), (128, 8)])
def test_the_loader_leaves_a_core_to_training_and_takes_none_on_two(cores: int, workers: int) -> None:
    assert loader_workers(cores) == workers


def test_dataloader_path_augments_training_batches_the_same_way_each_epoch(catdog_root: Path) -> None:
    loaders = load_catdog(catdog_root, 16, 8, CPU, seed=0, flip_p=0.0, data_cache="none")
    train = loaders.train
    train.loader = DataLoader(train.loader.dataset, 8, sampler=train.sampler)  # no workers: quicker here
    plain = list(train)
    train.augmentation = Augmentation(crop_scale=0.3, shift=3, erase_p=0.5)
    first, again = list(train), list(train)
    for (x, y), (xa, ya), (xb, _) in zip(plain, first, again, strict=True):
        assert torch.equal(y, ya) and not torch.equal(x, xa) and torch.equal(xa, xb)
    train.set_epoch(1)
    assert not torch.equal(next(iter(train))[0], first[0][0])
    assert not loaders.valid.augmentation.active and not loaders.test.augmentation.active


def test_unknown_data_cache_is_a_clear_error(catdog_root: Path) -> None:
    with pytest.raises(FmtkError, match="data_cache disk: choose memory, file, none"):
        load_catdog(catdog_root, 16, 8, CPU, seed=0, data_cache="disk")


def test_bad_images_are_named_up_to_four_and_counted_beyond() -> None:
    bad = [(f"p{index}.jpg", "truncated") for index in range(5)]
    four = str(BadImages(bad[:4], 9))
    assert four == (
        "4 of 9 image files cannot be decoded: p0.jpg (truncated); p1.jpg (truncated); p2.jpg (truncated); "
        "p3.jpg (truncated): fix or remove them"
    )  # before: "…; and 1 more", which hid a name that fits
    five = str(BadImages(bad, 9))
    assert "p2.jpg (truncated); and 2 more: fix" in five and "p3.jpg" not in five
    from fmtk.prediction import unreadable  # predict's: up to 50, the rest in its --json

    answers = [{"file": f"p{index}.jpg", "error": "truncated"} for index in range(60)]
    said = str(unreadable(answers))
    assert "p49.jpg (truncated); and 10 more (--json names each): fix" in said and "p50.jpg" not in said
    assert all(f"p{index}.jpg (" in str(unreadable(answers[:51])) for index in range(51))
