"""Folders of photos in either layout, split into train, valid and test (fmtk.data.folders)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photos, tree_snapshot

from fmtk.data.folders import arrange_rows, find_photo_splits, load_photo_folder, photo_classes, split_rows
from fmtk.data.images import BadImages
from fmtk.errors import FmtkError

CPU = torch.device("cpu")


def counts(splits, name: str) -> list[int]:
    return torch.bincount(getattr(splits, name).labels, minlength=len(splits.classes)).tolist()


def all_counts(splits) -> tuple[list[int], ...]:
    return tuple(counts(splits, name) for name in ("train", "valid", "test"))


def test_a_folder_of_class_folders_is_split_stratified_and_reproducibly(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 10, "bees": 20, "wasps": 5})
    before = tree_snapshot(photos)
    splits = load_photo_folder(photos, 16, 4, CPU, seed=3)
    assert tree_snapshot(photos) == before and splits.classes == ["ants", "bees", "wasps"]
    assert counts(splits, "test") == [2, 4, 1]  # 20 % of each class
    assert counts(splits, "valid") == [2, 3, 1]  # 20 % of what is left
    assert counts(splits, "train") == [6, 13, 3]
    assert splits.train.images.shape[1:] == (3, 16, 16) and splits.train.images.dtype == torch.uint8
    again, same = (find_photo_splits(photos, 0.2, 0.2, seed=3) for _ in range(2))
    assert sorted(again.samples("test")) == sorted(same.samples("test"))
    other = find_photo_splits(photos, 0.2, 0.2, seed=4)
    assert sorted(other.samples("test")) != sorted(again.samples("test"))
    every = [path for split in ("train", "valid", "test") for path, _ in again.samples(split)]
    assert len(every) == len(set(every)) == 35  # each photo in one split


def test_split_folders_are_taken_as_they_are_and_a_missing_valid_is_drawn_from_train(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    make_photos(photos / "train", {"cats": 10, "dogs": 10})
    make_photos(photos / "val", {"cats": 3, "dogs": 2}, seed=1)
    make_photos(photos / "test", {"cats": 4, "dogs": 4}, seed=2)
    splits = load_photo_folder(photos, 16, 4, CPU, seed=0)
    assert all_counts(splits) == ([10, 10], [3, 2], [4, 4])
    (photos / "val").rename(tmp_path / "elsewhere")
    splits = load_photo_folder(photos, 16, 4, CPU, seed=0, valid_share=0.3)
    assert all_counts(splits) == ([7, 7], [3, 3], [4, 4])


def test_a_class_with_one_photo_trains_and_is_never_held_out(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"common": 12, "rare": 1, "usual": 8})
    splits = load_photo_folder(photos, 16, 4, CPU, seed=0)
    assert counts(splits, "train")[1] == 1 and counts(splits, "valid")[1] == counts(splits, "test")[1] == 0


def test_the_data_cache_none_path_gives_the_same_splits(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    held = load_photo_folder(photos, 16, 4, CPU, seed=0)
    loaded = load_photo_folder(photos, 16, 4, CPU, seed=0, data_cache="none")
    for name in ("valid", "test"):
        x, y = map(torch.cat, zip(*getattr(loaded, name), strict=True))
        expected_x, expected_y = map(torch.cat, zip(*getattr(held, name), strict=True))
        assert torch.equal(y, expected_y) and torch.allclose(x, expected_x)


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (lambda root: make_photos(root, {"only": 6}), ["one class folder (only)", "two or more"]),
        (lambda root: (make_photos(root, {"a": 4, "b": 4}), (root / "c").mkdir()), ["c"]),
        (lambda root: make_photos(root / "test", {"a": 4, "b": 4}), ["has test but no training folder"]),
        (
            lambda root: [
                make_photos(root / name, {"a": 4, other: 4}) for name, other in (("train", "b"), ("val", "c"))
            ],
            ["val: classes ['a', 'c'] differ from", "['a', 'b']"],
        ),
    ],
    ids=["one_class", "empty_class_folder", "no_train_folder", "val_classes_differ"],
)
def test_a_folder_that_cannot_train_is_one_line(tmp_path: Path, make, fragments: list[str]) -> None:
    root = tmp_path / "photos"
    root.mkdir()
    make(root)
    with pytest.raises(FmtkError) as error:
        load_photo_folder(root, 16, 4, CPU, seed=0)
    assert "\n" not in str(error.value) and all(fragment in str(error.value) for fragment in fragments)


def test_a_missing_folder_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(FmtkError, match="photo folder not found"):
        find_photo_splits(tmp_path / "nowhere", 0.2, 0.2, 0)
    (tmp_path / "afile").write_text("")  # (before: "not found", of a file that is there)
    with pytest.raises(FmtkError, match="afile: a file, not a folder of photos"):
        find_photo_splits(tmp_path / "afile", 0.2, 0.2, 0)


def test_photo_classes_reads_the_training_folder(tmp_path: Path) -> None:
    make_photos(tmp_path / "flat", {"x": 2, "y": 2})
    make_photos(tmp_path / "split" / "training_set", {"p": 2, "q": 2, "r": 2})
    assert photo_classes(tmp_path / "flat") == ["x", "y"]
    assert photo_classes(tmp_path / "split") == ["p", "q", "r"]


def spoil(photos: Path) -> list[str]:
    """Three bad files in a folder of good ones, in two splits' folders: a truncated JPEG, a text
    file named .jpg and an empty .png."""
    first = sorted((photos / "train" / "ants").iterdir())[0]
    first.write_bytes(first.read_bytes()[:100])
    (photos / "train" / "bees" / "notes.jpg").write_text("not an image")
    (photos / "test" / "ants" / "empty.png").write_bytes(b"")
    return sorted(
        str(path) for path in (first, photos / "train/bees/notes.jpg", photos / "test/ants/empty.png")
    )


@pytest.mark.parametrize("data_cache", ["memory", "file", "none"])
def test_every_bad_photo_is_named_in_one_pass_and_listed_in_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_cache: str
) -> None:
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    for split, count in (("train", 8), ("test", 3)):
        make_photos(photos / split, {"ants": count, "bees": count})
    bad = spoil(photos)
    before = tree_snapshot(photos)
    for skip in (None, False):
        with pytest.raises(BadImages) as raised:
            load_photo_folder(photos, 16, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=skip)
        line = str(raised.value)
        assert "\n" not in line and line.startswith("3 of 24 image files cannot be decoded: ")
        assert line.count(" (") == 3 and line.endswith(
            "fix or remove them"
            + ("; or train without them: --set skip_bad_images=true" if skip is False else "")
        )
    [listed] = (tmp_path / "cache").glob("bad-images-photos-*.txt")
    assert f"all of them are listed in {listed}" in line
    assert sorted(row.split("\t")[0] for row in listed.read_text().splitlines()) == bad
    assert tree_snapshot(photos) == before  # nothing written into the photos' folder

    skipped = load_photo_folder(photos, 16, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=True)
    whole = load_photo_folder(
        tmp_path / "photos", 16, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=True
    )
    assert sorted(skipped.skipped) == bad and whole.skipped == skipped.skipped
    sizes = [sum(len(y) for _, y in getattr(skipped, split)) for split in ("train", "valid", "test")]
    assert sum(sizes) == 24 - 3 and sizes[2] == 6  # the test folder less its empty.png
    # The test split (a folder of its own) holds exactly the good photos with their labels.
    clean = tmp_path / "clean"
    shutil.copytree(photos, clean)
    for path in bad:
        (clean / Path(path).relative_to(photos)).unlink()
    expected = load_photo_folder(clean, 16, 4, CPU, seed=0, data_cache=data_cache)
    for (x, y), (expected_x, expected_y) in zip(skipped.test, expected.test, strict=True):
        assert torch.equal(y, expected_y) and torch.equal(x, expected_x)
    for path in bad:  # fixed: the folder's list of bad files goes with them (before: `fmtk cache` kept it)
        Path(path).unlink()
    load_photo_folder(photos, 16, 4, CPU, seed=0, data_cache=data_cache)
    assert not listed.exists()


@pytest.mark.parametrize("data_cache", ["memory", "none"])
def test_a_class_whose_every_photo_is_bad_is_refused_by_skip_bad_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_cache: str
) -> None:
    # Before, the run trained a class of no photo ("train 120 (allbad 0, …)"), where an empty class
    # folder is refused.
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    photos = make_photos(tmp_path / "photos", {"ants": 8, "bees": 8})
    (photos / "wasps").mkdir()
    (photos / "wasps" / "empty.jpg").write_bytes(b"")
    (photos / "wasps" / "notes.jpg").write_text("not an image")
    with pytest.raises(FmtkError) as raised:
        load_photo_folder(photos, 16, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=True)
    assert str(raised.value) == (
        f"{photos}: class folder wasps has no photo left: none of them can be decoded (skip_bad_images); "
        "fix them or remove the folder"
    )
    (photos / "wasps" / "notes.jpg").rename(photos / "bees" / "notes.jpg")  # a bad photo of a class kept
    (photos / "hornets").mkdir()
    (photos / "hornets" / "bad.png").write_bytes(b"\x89PNG")
    many = r"photos: class folders hornets, wasps have no photo left: .*remove the folders$"
    with pytest.raises(FmtkError, match=many):
        load_photo_folder(photos, 16, 4, CPU, seed=0, data_cache=data_cache, skip_bad_images=True)


@pytest.mark.parametrize("order", [[3, 0, 4, 1, 2, 5], [5, 4, 3, 2, 1, 0], [2, 0], [], [0, 1, 2, 3, 4, 5]])
def test_rows_are_arranged_in_place(order: list[int]) -> None:
    rows = torch.arange(6 * 4).view(6, 4)
    before, storage = rows.clone(), rows.data_ptr()
    arrange_rows(rows, order)
    rest = [i for i in range(6) if i not in order]
    assert torch.equal(rows, before[order + rest]) and rows.data_ptr() == storage


def test_splits_are_slices_of_their_folders_photos_in_their_order() -> None:
    train, test = Path("train"), Path("test")
    photos = {
        train: torch.arange(10).view(10, 1, 1, 1).repeat(1, 3, 2, 2),
        test: torch.arange(3).view(3, 1, 1, 1),
    }
    splits = {"train": (train, np.array([7, 2, 9, 0, 4, 5])), "valid": (train, np.array([8, 1, 3, 6])),
              "test": (test, np.array([2, 0, 1]))}  # fmt: skip
    rows = split_rows(splits, {folder: tensor.clone() for folder, tensor in photos.items()})
    for split, (folder, index) in splits.items():
        assert torch.equal(rows[split], photos[folder][torch.from_numpy(index)])
    same = rows["valid"].untyped_storage().data_ptr() == rows["train"].untyped_storage().data_ptr()
    assert same  # slices of one tensor: no copy
    shared = {"train": (train, np.array([1, 2])), "valid": (train, np.array([2, 3]))}  # a photo in both
    unchanged = photos[train].clone()
    with pytest.raises(ValueError, match="order repeats a row"):
        split_rows(shared, {train: unchanged})
    assert torch.equal(unchanged, photos[train])  # refused before a row moved


def test_predict_reads_a_folder_s_linked_folders_as_a_run_does_and_a_link_back_up_once(
    tmp_path: Path,
) -> None:
    from PIL import Image
    from torchvision.datasets.folder import make_dataset

    from fmtk.data.image_input import image_files

    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    for path in (photos / "cats" / "a.png", elsewhere / "b.png", elsewhere / "deeper" / "c.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(path)
    (photos / "cats" / "linked").symlink_to(elsewhere, target_is_directory=True)
    run_reads = sorted(path for path, _ in make_dataset(str(photos), {"cats": 0}, extensions=(".png",)))
    assert [str(path) for path in image_files([photos])] == run_reads  # (before: a.png alone)
    assert [path.name for path in image_files([photos])] == ["a.png", "b.png", "c.png"]
    (photos / "cats" / "up").symlink_to(photos, target_is_directory=True)  # a loop: walked once
    assert [path.name for path in image_files([photos])] == ["a.png", "b.png", "c.png"]
