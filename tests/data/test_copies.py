"""Near copies across a photo folder's splits (fmtk.data.copies): real photos saved again as a
user's folder would hold them are found in every data cache, bad files or not; other photos are not."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, fmtk
from PIL import Image, ImageEnhance

import fmtk as toolkit
from fmtk.data import copies, load_catdog, load_photo_folder
from fmtk.data.copies import Fingerprints, LabelConflict, NearCopy, conflicts_line, copied, copies_line

CPU = torch.device("cpu")


@pytest.fixture
def folder(real_data: Path, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """``train``/``test`` of real Cat & Dog photos, the test split holding three photos of the
    training folder saved again (JPEG at quality 50, half size, brighter) and a file that is not a
    photo: ``(folder, {copy: its original})``."""
    source, photos = real_data / "catdog" / "training_set", tmp_path / "photos"
    for split, start, count in (("train", 1, 12), ("test", 101, 5)):
        for kind in ("cats", "dogs"):
            (photos / split / kind).mkdir(parents=True)
            for number in range(start, start + count):
                name = f"{kind[:-1]}.{number}.jpg"
                shutil.copy(source / kind / name, photos / split / kind / name)
    originals = {}
    for name, original, change in [
        ("cats/saved_again.jpg", "cats/cat.3.jpg", lambda image: image),
        (
            "dogs/half.png",
            "dogs/dog.5.jpg",
            lambda image: image.resize((image.width // 2, image.height // 2)),
        ),
        ("dogs/brighter.png", "dogs/dog.8.jpg", lambda image: ImageEnhance.Brightness(image).enhance(1.15)),
    ]:
        change(Image.open(photos / "train" / original)).save(photos / "test" / name, quality=50)
        originals[str(photos / "test" / name)] = str(photos / "train" / original)
    (photos / "train" / "cats" / "notes.jpg").write_text("not a photo")
    (photos / "test" / "dogs" / "empty.png").write_bytes(b"")
    return photos, originals


@pytest.mark.parametrize("data_cache", ["memory", "file", "none"])
@pytest.mark.parametrize("size", [32, 64])
def test_photos_saved_again_are_found_in_every_data_cache(
    folder: tuple[Path, dict[str, str]], data_cache: str, size: int
) -> None:
    photos, originals = folder
    data = load_photo_folder(photos, size, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=True)
    bad = {str(photos / "train" / "cats" / "notes.jpg"), str(photos / "test" / "dogs" / "empty.png")}
    assert set(data.skipped) == bad  # their rows are no photo's
    assert {copy.photo: copy.copy_of for copy in data.near_copies} == originals
    assert {copy.split for copy in data.near_copies} == {"test"}
    assert data.conflicts == ()  # each copy is in its original's class


@pytest.mark.parametrize("data_cache", ["memory", "file", "none"])
def test_drop_near_copies_leaves_them_out_of_their_split_and_only_them(
    folder: tuple[Path, dict[str, str]], data_cache: str
) -> None:
    photos, originals = folder
    load = lambda drop: load_photo_folder(  # noqa: E731
        photos, 32, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=True, drop_near_copies=drop
    )
    kept, dropped = load(False), load(True)
    assert dropped.near_copies == tuple(copy._replace(left_out=True) for copy in kept.near_copies)
    whole = lambda batches: torch.cat([torch.cat([x.flatten(1), y[:, None]], 1) for x, y in batches])  # noqa: E731
    assert torch.equal(whole(dropped.train), whole(kept.train))
    assert torch.equal(whole(dropped.valid), whole(kept.valid))
    names = [split_names(kept.test), split_names(dropped.test)]
    assert len(names[0]) == 13 and set(originals) < set(names[0])
    assert names[1] == [name for name in names[0] if name not in originals]
    # The photos left are the others, each with its own pixels and label, in the same order.
    assert torch.equal(whole(dropped.test), whole(kept.test)[[name not in originals for name in names[0]]])


def test_a_split_left_without_photos_is_one_line(folder: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    photos, _ = folder
    for path in (photos / "test").rglob("*.*"):  # the test split: photos of train saved again, one bad
        if path.name not in ("saved_again.jpg", "half.png", "empty.png"):
            path.unlink()
    small = [
        "--set",
        "image_size=32",
        "--set",
        "warmup_epochs=0",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--run-dir",
        "run",
    ]
    run = lambda *more: fmtk("run", "images", "--data-dir", str(photos), *small, *more, cwd=tmp_path)  # noqa: E731
    assert_one_line_error(
        run("--set", "skip_bad_images=true", "--set", "drop_near_copies=true"),
        f"{photos / 'test'}: no test photos left: each is a near copy of a photo it is judged against "
        "(drop_near_copies)",
    )
    for path in ("test/cats/saved_again.jpg", "test/dogs/half.png"):
        (photos / path).write_bytes(b"not a photo")
    assert_one_line_error(
        run("--set", "skip_bad_images=true"),
        f"{photos / 'test'}: no test photos left: none of them can be decoded (skip_bad_images)",
    )
    assert not (tmp_path / "run").exists()
    kept = run("--set", "skip_bad_images=false")
    assert_one_line_error(kept, "4 of 28 image files cannot be decoded")  # as before: the bad files named


def split_names(batches) -> list[str]:
    """The files of a photo split's samples, in its order (``data_cache=none``: its dataset's)."""
    return (
        batches.names if hasattr(batches, "names") else [path for path, _ in batches.loader.dataset.samples]
    )


def test_the_one_copy_among_the_cat_and_dog_photos_is_found_when_the_split_parts_it(real_data: Path) -> None:
    training = real_data / "catdog" / "training_set" / "dogs"
    found = {seed: load_catdog(real_data, 32, 16, CPU, seed=seed).near_copies for seed in (0, 1)}
    assert found[0] == (
        NearCopy("valid", str(training / "dog.180.jpg"), str(training / "dog.74.jpg"), "train"),
    )
    assert found[1] == ()  # the same photo twice, both drawn into train
    assert load_catdog(real_data, 32, 16, CPU, seed=1).conflicts == ()  # in the dogs' folder both times


@pytest.mark.parametrize("pairs, at_once", [(copies.PAIRS_AT_ONCE, copies.AT_ONCE), (7, 3), (1, 1)])
def test_each_photo_s_first_copy_is_found_whatever_the_blocks(
    monkeypatch: pytest.MonkeyPatch, pairs: int, at_once: int
) -> None:
    rng = np.random.default_rng(0)
    hashes = lambda count: rng.integers(0, 2**63, count, dtype=np.uint64)  # noqa: E731
    of = Fingerprints(hashes(40), rng.integers(0, 256, (40, 1152), dtype=np.uint8))
    of.hashes[31], of.thumbnails[31] = of.hashes[9], of.thumbnails[9]  # photo 9 twice: 9 is the first
    of.thumbnails[20] = 128  # flat
    photos = Fingerprints(hashes(25), rng.integers(0, 256, (25, 1152), dtype=np.uint8))
    noise = lambda rows: np.clip(rows.astype(int) + rng.integers(-6, 7, rows.shape), 0, 255).astype(np.uint8)  # noqa: E731
    planted = {3: 9, 11: 0, 17: 39, 24: 20}  # 24 copies the flat photo: no one's copy
    for row, original in planted.items():
        photos.hashes[row] = of.hashes[original] ^ np.uint64(0b101)  # 2 bits apart
        photos.thumbnails[row] = noise(of.thumbnails[original])
    monkeypatch.setattr(copies, "PAIRS_AT_ONCE", pairs)
    monkeypatch.setattr(copies, "AT_ONCE", at_once)
    found = copied(photos, of)
    assert {row: int(found[row]) for row in np.flatnonzero(found >= 0)} == {3: 9, 11: 0, 17: 39}


@pytest.mark.parametrize("data_cache", ["memory", "none"])
def test_a_photo_in_two_classes_folders_is_found_in_any_split(
    folder: tuple[Path, dict[str, str]], data_cache: str
) -> None:
    photos, _ = folder
    train, test = photos / "train", photos / "test"
    shutil.copy(train / "cats" / "cat.4.jpg", train / "dogs" / "also_a_dog.jpg")  # in train twice
    half = Image.open(train / "dogs" / "dog.9.jpg")
    half.resize((half.width // 2, half.height // 2)).save(test / "cats" / "a_cat.png")  # train and test
    data = load_photo_folder(photos, 32, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=True)
    found = {frozenset([(c.photo, c.label), (c.copy_of, c.copy_label)]) for c in data.conflicts}
    assert found == {
        frozenset(
            [(str(train / "cats" / "cat.4.jpg"), "cats"), (str(train / "dogs" / "also_a_dog.jpg"), "dogs")]
        ),
        frozenset([(str(train / "dogs" / "dog.9.jpg"), "dogs"), (str(test / "cats" / "a_cat.png"), "cats")]),
    }
    # The test photo does not flatter the test figures (the model learns it as a dog): no near copy.
    assert str(test / "cats" / "a_cat.png") not in {copy.photo for copy in data.near_copies}
    assert len(data.near_copies) == 3  # the fixture's own, each in its original's class


def test_the_line_names_the_photos_in_two_classes() -> None:
    assert conflicts_line(()) is None
    pair = LabelConflict("p/cats/a.jpg", "cats", "p/dogs/b.jpg", "dogs")
    assert conflicts_line([pair]) == (
        "the same photo in two classes: p/cats/a.jpg (cats) ~ p/dogs/b.jpg (dogs): one of the two is "
        "labelled wrong; move it to its class or remove it (config.json lists it: label_conflicts)"
    )
    assert conflicts_line([pair, pair._replace(photo="p/cats/c.jpg")]) == (
        "the same photo in two classes: 2 pairs, e.g. p/cats/a.jpg (cats) ~ p/dogs/b.jpg (dogs): one of "
        "each pair is labelled wrong; move it to its class or remove it (config.json lists them all: "
        "label_conflicts)"
    )


def test_the_line_counts_the_copies_by_split() -> None:
    assert copies_line(()) is None
    one = copies_line([NearCopy("valid", "b/x.jpg", "a/x.jpg", "train")])
    assert one == (
        "near copies across splits: 1 valid photo is a near copy of a training photo (b/x.jpg ~ a/x.jpg): "
        "the valid figures flatter the model; remove one of each pair, or leave them out with "
        "drop_near_copies=true (config.json lists them all: near_copies)"
    )
    tests = [NearCopy("test", f"{i}.jpg", "v.jpg", "valid") for i in range(2)]
    several = copies_line([NearCopy("valid", "v.jpg", "t.jpg", "train"), *tests])
    assert several.startswith(
        "near copies across splits: 1 valid and 2 test photos are a near copy of a training or valid photo "
        "(e.g. v.jpg ~ t.jpg): the valid and test figures flatter the model;"
    )
    left_out = copies_line([NearCopy("valid", "v.jpg", "t.jpg", "train", True),
                            *(copy._replace(left_out=True) for copy in tests)])  # fmt: skip
    assert left_out == several.split(": the")[0] + (
        ": left out of the valid and test splits (drop_near_copies; config.json: near_copies)"
    )


def test_a_run_names_them_and_evaluating_a_folder_names_the_run_s_training_photos_in_it(
    folder: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    photos, originals = folder
    (photos / "train" / "cats" / "notes.jpg").unlink()
    (photos / "test" / "dogs" / "empty.png").unlink()
    small = ["--set", "image_size=32", "--set", "warmup_epochs=0", "--device", "cpu"]
    run = fmtk(
        "run", "images", "--data-dir", str(photos), "--run-dir", "run", "--epochs", "1", *small, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0].startswith("near copies across splits: 3 test photos are a near copy")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert "label_conflicts" not in config
    listed = config["near_copies"]
    assert {copy["photo"]: copy["copy_of"] for copy in listed} == originals
    assert {copy["split"] for copy in listed} == {"test"}
    trained = set(np.load(tmp_path / "run" / "train_fingerprints.npz")["names"].tolist())
    assert len(trained) == 19 and trained < {str(path) for path in (photos / "train").rglob("*.jpg")}

    done = fmtk("evaluate", "run", "--folder", str(photos / "test"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    expected = {copy: original for copy, original in originals.items() if original in trained}
    assert expected  # a copy whose original was drawn into valid is not one of a training photo
    [place] = (tmp_path / "run" / "evaluations").iterdir()
    figures = json.loads((place / "evaluation.json").read_text())
    assert {copy["photo"]: copy["copy_of"] for copy in figures["near_copies"]} == expected
    # The accuracy without them, the other way: the wrong photos are all in top_losses.csv (≤ 32).
    wrong = {row["file"] for row in csv.DictReader((place / "top_losses.csv").open())}
    others = [path for path in map(str, (photos / "test").rglob("*.*")) if path not in expected]
    assert figures["accuracy_without_near_copies"] == pytest.approx(
        1 - len(wrong - set(expected)) / len(others)
    )
    line = (
        f"near copies of the run's training photos: {len(expected)} of the {figures['photos']} photos (e.g. "
    )
    assert line in done.stdout
    # The same from Python: the FolderEvaluation holds what evaluation.json does.
    python = toolkit.evaluate(tmp_path / "run", folder=photos / "test", device="cpu")
    assert python.near_copies == figures["near_copies"] and python.photos == figures["photos"]
    assert python.accuracy_without_near_copies == figures["accuracy_without_near_copies"]
    assert python.accuracy == figures["accuracy"] and python.table() in done.stdout
    assert [row["file"] for row in python.wrong] == [
        row["file"] for row in csv.DictReader((place / "top_losses.csv").open())
    ]

    whole = fmtk("evaluate", "run", "--folder", str(photos / "train"), cwd=tmp_path)
    assert "near copies of the run's training photos: 19 of the 24 photos (e.g. " in whole.stdout
    assert ", itself a training photo): the figures above flatter" in whole.stdout  # not the file twice
