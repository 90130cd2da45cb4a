"""evaluate, predict, show and summary on a real run folder made from the real data, and the
pictures every run writes."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, fmtk, make_photos, tree_snapshot
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def real_test_digits(data: Path, count: int) -> tuple[np.ndarray, list[int]]:
    raw = data / "MNIST" / "raw"
    images = np.frombuffer(gzip.open(raw / "t10k-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(
        -1, 28, 28
    )
    labels = list(gzip.open(raw / "t10k-labels-idx1-ubyte.gz").read()[8:])
    return images[:count], labels[:count]


def test_every_run_writes_its_curves_confusion_and_top_losses(real_mnist_run) -> None:
    run_dir, _ = real_mnist_run
    for name in ("curves.png", "confusion_best.png", "top_losses.png"):
        with Image.open(run_dir / name) as picture:
            assert picture.format == "PNG" and picture.width > 400
    images = EventAccumulator(str(run_dir)).Reload().Tags()["images"]
    assert {"curves", "confusion_best", "top_losses"} <= set(images)


@pytest.mark.parametrize("split, size, picture", [("test", 10_000, "confusion_best.png"),
                                                  ("valid", 10_000, "confusion_best_valid.png")])  # fmt: skip
def test_evaluate(real_mnist_run, split: str, size: int, picture: str) -> None:
    run_dir, data = real_mnist_run
    result = fmtk("evaluate", str(run_dir), "--split", split, "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("mnist_dnn, best_checkpoint_") and lines[0].endswith(f"{split} split")
    accuracy = float(lines[1].split("accuracy ")[1].rstrip("%"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    if split == "test":
        assert accuracy == pytest.approx(100 * metrics["test"]["best"]["accuracy"], abs=0.006)
    matrix_start = lines.index("confusion matrix (rows: true class, columns: predicted)")
    rows = [[int(v) for v in line.split()[1:]] for line in lines[matrix_start + 2 : matrix_start + 12]]
    assert np.array(rows).sum() == size and len(rows) == 10
    per_class = lines[4:14]
    assert [line.split()[0] for line in per_class] == [str(d) for d in range(10)]
    assert (run_dir / picture).exists()


def test_evaluate_last_and_a_bad_checkpoint(real_mnist_run, tmp_path: Path) -> None:
    run_dir, data = real_mnist_run
    result = fmtk("evaluate", str(run_dir), "--checkpoint", "last", "--data-dir", str(data))
    assert result.returncode == 0 and "last_checkpoint_2.pt" in result.stdout
    assert (run_dir / "confusion_last.png").exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    before = tree_snapshot(run_dir)
    assert_one_line_error(
        fmtk("evaluate", str(run_dir), "--checkpoint", str(junk)), "junk.pt: not a readable"
    )
    assert tree_snapshot(run_dir) == before


def test_predict_real_digits_in_any_mode_and_size(real_mnist_run, tmp_path: Path) -> None:
    run_dir, data = real_mnist_run
    images, labels = real_test_digits(data, 12)
    paths = []
    for index, pixels in enumerate(images):
        picture = Image.fromarray(pixels)
        if index % 3 == 0:
            picture = picture.convert("RGBA").resize((90, 90))
            path = tmp_path / f"digit{index}.png"
        elif index % 3 == 1:
            path = tmp_path / f"digit{index}.jpg"
            picture = picture.convert("RGB").resize((56, 56))
        else:
            path = tmp_path / f"digit{index}.png"
        picture.save(path)
        paths.append(str(path))
    result = fmtk("predict", str(run_dir), *paths, "--json", "--top", "3")
    assert result.returncode == 0, result.stderr
    predictions = json.loads(result.stdout)
    assert [p["file"] for p in predictions] == paths
    for prediction in predictions:
        probabilities = [guess["probability"] for guess in prediction["predictions"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
    correct = sum(
        int(p["predictions"][0]["class"]) == label for p, label in zip(predictions, labels, strict=True)
    )
    assert correct >= 10  # a 2-epoch model is right on ~96% of test digits
    plain = fmtk("predict", str(run_dir), paths[0])
    assert plain.returncode == 0 and plain.stdout.startswith(f"{paths[0]}: {labels[0]} ")


def test_predict_names_a_file_that_is_not_an_image(real_mnist_run, tmp_path: Path) -> None:
    run_dir, _ = real_mnist_run
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    assert_one_line_error(
        fmtk("predict", str(run_dir), str(notes)), "1 of 1 image files cannot be read: ", "notes.png ("
    )


def test_show_catdog_grid_and_class_counts(real_data: Path, tmp_path: Path) -> None:
    data = real_data
    out = tmp_path / "grid.png"
    args = ["show", "catdog_vgg", "--split", "test", "-n", "8", "--out", str(out), "--set", "image_size=32"]
    result = fmtk(*args, "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert "train cats: 800  dogs: 800" in result.stdout and "test  cats: 250  dogs: 250" in result.stdout
    with Image.open(out) as picture:
        assert picture.size[0] == 8 * 112
    assert_one_line_error(fmtk(*args, "--data-dir", str(data)), "grid.png exists")  # never overwritten


def test_show_says_when_a_split_has_fewer_samples_than_asked(tmp_path: Path) -> None:
    out = tmp_path / "all.png"
    result = fmtk("show", "digits_mlp", "--split", "test", "-n", "1000", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"wrote {out} (all 360 samples of the test split, not 1000)"
    with Image.open(out) as picture:
        assert picture.size[1] > 40 * 100  # 45 rows of 8
    photos = make_photos(tmp_path / "photos", {"ants": 10, "bees": 10})  # fewer than -n's default, 32
    (photos / "ants" / "notes.txt").write_text("not a photo")  # said as a run says it
    out = tmp_path / "photos.png"
    result = fmtk("show", "images", "--data-dir", str(photos), "--set", "image_size=16", "--out", str(out))
    assert result.stdout.startswith("files left out, of kinds fmtk does not read: 1 .txt (it reads .jpg")
    assert result.stdout.splitlines()[-1] == f"wrote {out} (all 12 samples of the train split)", result.stderr


def test_show_fashion_mnist_class_names(real_data: Path, tmp_path: Path) -> None:
    data = real_data
    result = fmtk("show", "fmnist_cnn", "--out", str(tmp_path / "f.png"), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("train T-Shirt: 5000  Trouser: 5000  Pullover: 5000")
    assert "Ankle Boot: 1000" in result.stdout


@pytest.mark.parametrize(
    "args, total",
    [
        (["fmnist_cnn", "--set", "variant=basic"], "421,642"),
        (["catdog_vgg", "--set", "image_size=64"], "16,526,466"),
        (["fmnist_cnn", "--preset", "fast"], "421,642"),  # the preset's basic CNN (the default: 242,250)
    ],
)
def test_summary_matches_the_notebooks(args: list[str], total: str) -> None:
    result = fmtk("summary", *args)
    assert result.returncode == 0, result.stderr
    assert f"total parameters: {total}" in result.stdout
    assert "Conv2d" in result.stdout and "output shape" in result.stdout


TABULAR = """import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from fmtk import Recipe
from fmtk.data import DataSplits
from fmtk.models import mlp

def data(recipe, data_dir, device):
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32), torch.tensor(digits.target)
    rows = DataLoader(TensorDataset(x, y), 32)
    return DataSplits(rows, rows, rows, [str(d) for d in range(10)])

recipe = Recipe(name="rows", description="64 numbers a sample", model=lambda r: mlp(64, [32], 10), data=data)
"""


def test_a_recipe_without_image_input_is_summarised_on_a_batch_of_its_data(tmp_path: Path) -> None:
    (tmp_path / "rows.py").write_text(TABULAR)
    result = fmtk("summary", str(tmp_path / "rows.py"))
    assert result.returncode == 0, result.stderr
    assert "input: [64]" in result.stdout
    assert "total parameters: 2,410" in result.stdout  # 64·32+32 + 32·10+10


def test_per_class_precision_recall_f1_equal_scikit_learns() -> None:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from fmtk.training.evaluation import Evaluation

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 300)
    predicted = np.where((rng.random(300) < 0.7) & (truth < 3), truth, rng.integers(0, 3, 300))  # never 3
    confusion = confusion_matrix(truth, predicted, labels=range(4))
    per_class = Evaluation(0.0, 0.0, confusion, ["a", "b", "c", "d"]).per_class()
    precision, recall, f1, count = precision_recall_fscore_support(
        truth, predicted, labels=range(4), zero_division=np.nan
    )
    assert np.allclose(per_class["precision"], precision, equal_nan=True) and np.isnan(
        per_class["precision"][3]
    )
    assert np.allclose(per_class["recall"], recall) and np.array_equal(per_class["count"], count)
    assert np.allclose(per_class["f1"][:3], f1[:3]) and per_class["f1"][3] == 0.0  # recall 0: F1 0


def test_the_text_confusion_matrix_names_its_columns_as_the_terminal_allows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whole names where the terminal is wide enough (they were cut to 5 characters: Fashion-MNIST's
    "Pullo", "Sneak"); cut in a narrow one, numbered when the cut names look alike."""
    from fmtk.training.evaluation import Evaluation

    confusion = np.array([[5, 1, 0], [0, 6, 1], [2, 0, 7]])

    def matrix(classes: list[str]) -> list[list[str]]:
        return [line.split() for line in Evaluation(0.5, 0.8, confusion, classes).table().splitlines()[-4:]]

    monkeypatch.setenv("COLUMNS", "100")
    assert matrix(["class_0", "class_1", "class_2"])[0] == ["class_0", "class_1", "class_2"]
    assert matrix(["cat", "dog", "longername"])[0] == ["cat", "dog", "longername"]
    monkeypatch.setenv("COLUMNS", "30")
    alike = matrix(["class_0", "class_1", "class_2"])
    assert alike[0] == ["0", "1", "2"] and alike[3] == ["2", "class_2", "2", "0", "7"]
    apart = matrix(["cat", "dog", "longername"])
    assert apart[0] == ["cat", "dog", "longe"] and apart[3] == ["longername", "2", "0", "7"]


def test_the_text_tables_align_names_with_wide_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    """A class named in Chinese or Japanese characters (two columns each) shifted its row by one
    column per character; an accent written as a combining character took one too many."""
    from fmtk.text import aligned, columns
    from fmtk.training.evaluation import Evaluation

    assert (columns("dogs 犬"), columns("cafe\u0301"), columns("chats égarés")) == (7, 4, 12)
    monkeypatch.setenv("COLUMNS", "100")
    classes = ["chats égarés", "dogs 犬", "cafe\u0301"]
    table = Evaluation(0.5, 0.8, np.array([[5, 1, 0], [0, 6, 1], [2, 0, 7]]), classes).table().splitlines()
    per_class, matrix = table[3:6], table[-4:]  # (its head too)
    assert len({columns(line) for line in per_class}) == 1 and len({columns(line) for line in matrix}) == 1
    assert [columns(line) for line in aligned([["犬", "1"], ["dog", "12"]], right={1})] == [7, 7]


def test_show_augmented_draws_the_samples_as_training_sees_them(
    real_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from fmtk.cli import cli

    def show(*args: str):
        return CliRunner().invoke(cli, ["show", *args, "-n", "8", "--data-dir", str(real_data)])

    plain, augmented = tmp_path / "plain.png", tmp_path / "augmented.png"
    assert show("fmnist_cnn", "--out", str(plain)).exit_code == 0
    result = show("fmnist_cnn", "--set", "augment_shift=2", "--set", "augment_erase=0.5", "--augmented",
                  "--out", str(augmented))  # fmt: skip
    assert result.exit_code == 0, result.output
    with Image.open(plain) as before, Image.open(augmented) as after:
        assert before.size == after.size and np.asarray(before).tolist() != np.asarray(after).tolist()
    refused = show("fmnist_cnn", "--augmented", "--split", "valid", "--out", str(tmp_path / "v.png"))
    assert refused.exit_code == 1 and "--split valid is never augmented" in refused.output
    refused = show("mnist_dnn", "--augmented", "--out", str(tmp_path / "m.png"))
    assert (
        refused.exit_code == 1
        and "mnist_dnn augments nothing; set augment_*, mixup_alpha or cutmix_alpha, or give --preset fast"
        in refused.output
    )  # the preset that does
    monkeypatch.chdir(tmp_path)  # a preset's picture has a name of its own, beside the recipe's
    assert show("mnist_dnn", "--augmented", "--preset", "fast").exit_code == 0
    assert (tmp_path / "mnist_dnn_fast_train_augmented.png").is_file()
    refused = show("fmnist_dnn", "--preset", "best", "--augmented", "--out", str(tmp_path / "m.png"))
    assert (
        "fmnist_dnn --preset best augments nothing; set augment_*, mixup_alpha or cutmix_alpha\n"
        in refused.output
    )
    assert not (tmp_path / "v.png").exists() and not (tmp_path / "m.png").exists()
    # Mixup alone is augmentation too: the samples shown are mixed among themselves.
    digits, mixed = tmp_path / "digits.png", tmp_path / "mixed.png"
    assert show("mnist_dnn", "--out", str(digits)).exit_code == 0
    result = show("mnist_dnn", "--set", "mixup_alpha=0.4", "--augmented", "--out", str(mixed))
    assert result.exit_code == 0, result.output
    with Image.open(digits) as before, Image.open(mixed) as after:
        assert np.asarray(before).tolist() != np.asarray(after).tolist()


def test_show_augmented_keeps_a_photo_s_colours(real_data: Path, tmp_path: Path) -> None:
    # Every photo mirrored, nothing else: the same pixels, so the same colours (the normalised values
    # were stretched to 0–255 before: whites came out light blue).
    common = ["show", "catdog_vgg", "--set", "image_size=32", "-n", "8", "--data-dir", str(real_data)]
    plain = fmtk(*common, "--out", "plain.png", cwd=tmp_path)
    mirrored = fmtk(*common, "--set", "augment_flip=1", "--augmented", "--out", "mirrored.png", cwd=tmp_path)
    assert plain.returncode == mirrored.returncode == 0, mirrored.stderr
    with Image.open(tmp_path / "plain.png") as before, Image.open(tmp_path / "mirrored.png") as after:
        colours = [np.asarray(image.convert("RGB"), dtype=float).mean((0, 1)) for image in (before, after)]
        assert np.asarray(before).tolist() != np.asarray(after).tolist()
    assert np.abs(colours[0] - colours[1]).max() < 0.5, colours


def test_a_mixed_samples_title_gives_its_two_classes_and_their_shares() -> None:
    import torch

    from fmtk.cli.look import mixed_title

    classes = ["Coat", "Shirt", "Bag"]
    assert mixed_title(torch.tensor([0.3, 0.0, 0.7]), classes) == "Bag 70%\nCoat 30%"
    assert mixed_title(torch.tensor([0.0, 0.999, 0.001]), classes) == "Shirt 100%"  # a 0% share: no line


def test_show_augmented_by_default_writes_beside_the_plain_samples(real_data: Path, tmp_path: Path) -> None:
    plain = fmtk("show", "fmnist_cnn", "-n", "4", "--data-dir", str(real_data), cwd=tmp_path)
    shown = fmtk("show", "fmnist_cnn", "-n", "4", "--augmented", "--set", "augment_shift=2",
                 "--data-dir", str(real_data), cwd=tmp_path)  # fmt: skip
    assert plain.returncode == shown.returncode == 0, shown.stderr
    assert {path.name for path in tmp_path.iterdir()} == {"fmnist_cnn_train_samples.png",
                                                          "fmnist_cnn_train_augmented.png"}  # fmt: skip
