"""The pictures: grids scaled to their data's range, with titles; confusion matrices that show
every error, fit their labels and give each class's accuracy."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from fmtk import pictures
from fmtk.data.batches import TensorBatches
from fmtk.pictures import (
    HEADING_HEIGHT,
    LINE_COLOURS,
    LINE_HEIGHT,
    X_MARGIN,
    ZERO_INK,
    _font,
    confusion_picture,
    curves_picture,
    lines_picture,
    round_ticks,
    runs_curves_picture,
    titled_grid,
)
from fmtk.training.evaluation import (
    TOP_LOSSES_COLUMNS,
    Evaluation,
    run_pictures,
    top_losses,
    top_losses_picture,
    write_top_losses_csv,
)

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat"]
FASHION += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture
def drawn_texts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[float, float], str]]:
    """Every text Pillow draws while the test runs, as ``((x, y), text)``."""
    texts = []
    draw_text = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        texts.append((tuple(xy), text))
        return draw_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return texts


def position_of(texts: list[tuple[tuple[float, float], str]], text: str) -> tuple[float, float]:
    [position] = [xy for xy, drawn in texts if drawn == text]
    return position


def first_cell(images: torch.Tensor, cell: int = 32) -> np.ndarray:
    """The pixels of the first image of a titled grid (one title line, no heading), as drawn."""
    sheet = np.asarray(titled_grid(images, ["x"] * len(images), cell=cell))
    return sheet[-cell:, :cell]


@pytest.mark.parametrize(
    "values, dtype",
    [((0, 8, 16), torch.uint8), ((-1.0, 0.0, 1.0), torch.float32), ((3, 4, 5), torch.uint8)],
    ids=["digits 0-16", "float -1..1", "uint8 3-5"],
)
def test_grid_stretches_the_batch_range_to_black_and_white(values, dtype) -> None:
    low, middle, high = values
    image = torch.tensor([[low, middle], [middle, high]], dtype=dtype).expand(1, 1, 2, 2)
    pixels = first_cell(image)  # nearest neighbour: each source pixel is a 16×16 block
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[-1, -1].tolist() == [255, 255, 255]
    assert pixels[0, -1].tolist() == [128, 128, 128]


def test_grid_keeps_images_that_span_0_to_255() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).byte()
    images[0, 0, 0, 0], images[1, 2, 7, 7] = 0, 255
    pixels = first_cell(images)
    expected = images[0].permute(1, 2, 0).repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert (pixels == expected.numpy()).all()


@pytest.mark.parametrize("value", [0, 200])
def test_grid_of_a_constant_batch_keeps_its_value(value: int) -> None:
    pixels = first_cell(torch.full((2, 1, 8, 8), value, dtype=torch.uint8))
    assert (pixels == value).all()


def test_grid_title_line_above_the_cells(drawn_texts) -> None:
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    plain = titled_grid(images, ["a", "b", "c"], columns=8, cell=40)
    drawn_texts.clear()
    title = "digits_mlp: most confidently wrong, valid split (best checkpoint)"
    titled = titled_grid(images, ["a", "b", "c"], columns=8, cell=40, title=title)
    assert titled.height == plain.height + HEADING_HEIGHT
    assert titled.width >= _font(14).getlength(title) > plain.width  # the title is not cut off
    assert position_of(drawn_texts, title)[1] < position_of(drawn_texts, "a")[1]


def matrix_top_and_left(sheet: np.ndarray) -> tuple[int, int]:
    """Where the cells of a confusion matrix without errors start (inside the top-left cell's
    outline, a perfect class is pure blue)."""
    rows, columns = (sheet == (0, 0, 255)).all(axis=2).nonzero()
    return int(rows.min()), int(columns.min())


def test_confusion_short_column_labels_leave_no_empty_band() -> None:
    sheet = np.asarray(confusion_picture(np.eye(10, dtype=np.int64) * 5, list("0123456789"), "digits"))
    top, _ = matrix_top_and_left(sheet)
    blank = (sheet[:top] == 255).all(axis=(1, 2))
    longest_run, run = 0, 0
    for is_blank in blank:
        run = run + 1 if is_blank else 0
        longest_run = max(longest_run, run)
    assert longest_run < 16


@pytest.mark.parametrize("name", ["T-shirt/top", "Ankle boot, the left one only"])
def test_confusion_column_label_band_fits_the_longest_name(name: str) -> None:
    classes = [name, *"123456789"]  # "predicted" stands over the middle columns, not over the first
    sheet = np.asarray(confusion_picture(np.eye(10, dtype=np.int64), classes, "t"))
    top, left = matrix_top_and_left(sheet)
    first_column = sheet[:top, left + 2 : left + 44]
    label_top = (first_column < 128).any(axis=(1, 2)).nonzero()[0].min()  # its label, written upwards
    assert top - label_top >= _font(11).getlength(name) - 2  # the whole name, not cut off


def test_confusion_marks_every_error_and_leaves_zeros_plain(drawn_texts) -> None:
    matrix = np.array([[997, 3, 0], [400, 600, 0], [0, 0, 1000]])
    sheet = np.asarray(confusion_picture(matrix, ["a", "b", "c"], "errors"))

    def fill(text: str) -> np.ndarray:
        x, y = position_of(drawn_texts, text)
        return sheet[int(y) - 15, int(x) - 15].astype(int)  # inside the cell, beside the number

    few, many = fill("3"), fill("400")
    assert few[0] - few[1] >= 40 and few[0] - few[2] >= 40  # clearly red, though 0.3% of its row
    assert many.sum() < few.sum()  # more errors, darker
    zeros = [xy for xy, text in drawn_texts if text == "0"]
    assert len(zeros) == 4
    assert all((sheet[int(y) - 15, int(x) - 15] == 255).all() for x, y in zeros)


def test_confusion_per_class_accuracy_at_the_right(drawn_texts) -> None:
    matrix = np.array([[99_997, 3, 0], [400, 600, 0], [0, 0, 0]])
    confusion_picture(matrix, ["a", "b", "c"], "accuracy")
    header_x, header_y = position_of(drawn_texts, "acc")
    counts = [position_of(drawn_texts, str(value)) for value in (99_997, 600, 3)]
    assert all(x < header_x for x, _ in counts)
    accuracies = [position_of(drawn_texts, text) for text in ("99.9%", "60.0%", "-")]  # 99.997% is not 100
    assert [y for _, y in accuracies[:2]] == [y for _, y in counts[:2]]
    assert all(x == header_x and y > header_y for x, y in accuracies)


def test_confusion_keeps_title_and_axis_names(drawn_texts) -> None:
    confusion_picture(np.eye(len(FASHION), dtype=np.int64), FASHION, "fmnist_dnn: best checkpoint")
    drawn = {text for _, text in drawn_texts}
    assert {"fmnist_dnn: best checkpoint", "predicted", "true", "acc", *FASHION} <= drawn


def test_run_pictures_top_losses_names_its_split_and_uses_the_data_range(drawn_texts) -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 17, (20, 1, 8, 8), generator=generator, dtype=torch.uint8)
    images[:, :, 0, 0], images[:, :, 7, 7] = 0, 16  # 8×8 digits: 0–16
    valid = TensorBatches(images, torch.arange(20) % 2, 8, scale=16.0, shard=(0, 1))
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    nn.init.zeros_(model[1].weight)
    model[1].bias.data = torch.tensor([3.0, 0.0])  # always class 0: every odd sample is wrong
    test = Evaluation(0.5, 0.5, np.array([[10, 0], [10, 0]]), ["even", "odd"])
    pictures, rows = run_pictures("digits_mlp", model, test, valid)
    title = "digits_mlp: wrong predictions, highest loss first, valid split (best checkpoint)"
    assert title in {t for _, t in drawn_texts}
    last_row_first_cell = np.asarray(pictures["top_losses"])[-128:, :128]
    assert last_row_first_cell.min() == 0 and last_row_first_cell.max() == 255
    assert [row["index"] for row in rows] == list(range(1, 20, 2)) and {row["true"] for row in rows} == {
        "odd"
    }
    assert "sample 1" in {t for _, t in drawn_texts}  # no file names: the sample's index


def test_top_losses_are_ordered_by_loss_and_name_their_files(drawn_texts, tmp_path: Path) -> None:
    images = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([0, 10, 20, 30, 40, 50], dtype=torch.uint8)
    names = [f"photos/dogs/dog.{i}.jpg" for i in range(6)]
    valid = TensorBatches(images, torch.ones(6, dtype=torch.int64), 4, scale=1.0, shard=(0, 1), names=names)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    model[1].weight.data = torch.tensor(
        [[0.1, 0, 0, 0], [0.0, 0, 0, 0]]
    )  # brighter: surer of the wrong class
    model[1].bias.data = torch.tensor([0.0, 2.5])  # samples 0–2 right, 3–5 wrong
    rows = top_losses(model, valid, ["cats", "dogs"])
    assert [row["file"] for row in rows] == names[5:2:-1]
    assert [row["loss"] for row in rows] == sorted((row["loss"] for row in rows), reverse=True)
    top_losses_picture(rows, valid.images[[row["index"] for row in rows]], "t")
    assert {"dog.5.jpg", "dog.4.jpg", "dog.3.jpg"} <= {text for _, text in drawn_texts}
    write_top_losses_csv(rows, tmp_path / "top.csv")
    lines = (tmp_path / "top.csv").read_text().splitlines()
    assert lines[0] == ",".join(TOP_LOSSES_COLUMNS) and lines[1].startswith(
        "1,5,photos/dogs/dog.5.jpg,dogs,cats,"
    )


def test_top_losses_of_a_data_loader_are_those_of_the_same_split_held_in_memory() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from fmtk.training.evaluation import streamed_top_losses

    generator = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (50, 3, 4, 4), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 3, (50,), generator=generator)
    labels[40:] = labels[0]  # and images[40:] = images[0]: equal losses, ordered by their place
    images[40:] = images[0]
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3))
    held = top_losses(model, TensorBatches(images, labels, 7, scale=255.0, shard=(0, 1)), "abc", count=12)
    dataset = TensorDataset(images.float() / 255, labels)
    loader = DataLoader(dataset, batch_size=7, shuffle=True)  # read again in order: indices are the dataset's
    streamed, inputs = streamed_top_losses(model, loader, "abc", count=12)
    assert len(held) == 12 and streamed == held  # the merge across batches keeps the global top 12
    assert torch.equal(inputs, images[[row["index"] for row in held]].float() / 255)
    uint8_labels = DataLoader(TensorDataset(images.float() / 255, labels.to(torch.uint8)), batch_size=7)
    assert streamed_top_losses(model, uint8_labels, "abc", count=12)[0] == held  # labels of any integer type


def test_lines_picture_draws_each_line_in_its_colour_with_legend_and_reference(drawn_texts) -> None:
    lines = {"faithful": ([10.0, 20.0, 30.0], [90.0, 92.0, 93.0]), "fast": ([5.0, 10.0], [91.0, 93.5])}
    picture = lines_picture(lines, "fmnist_cnn", "training seconds", "valid accuracy %", (92.7, "notebook"))
    texts = [text for _, text in drawn_texts]
    assert {"fmnist_cnn", "faithful", "fast", "notebook", "training seconds"} <= set(texts)
    pixels = np.asarray(picture).reshape(-1, 3)
    for colour in LINE_COLOURS[:2]:
        assert (pixels == colour).all(1).sum() > 100  # both lines and their legend marks
    grey_rows = np.nonzero((np.asarray(picture) == ZERO_INK).all(2).sum(1) > 200)[0]
    assert len(grey_rows) >= 1  # the dashed reference line, across the plot


def test_the_legend_and_the_lines_never_cross(drawn_texts) -> None:
    """Random lines, rising, falling and noisy: no pixel of the line inside the legend's box but its
    own mark, and the centre of every point in its line's colour (the legend took a corner where
    nothing is drawn, or went under the plot; the lines were drawn over it)."""
    rng = np.random.default_rng(0)
    top, bottom, left, right = HEADING_HEIGHT + 24, 440 - 40, 60, 720 - 20  # lines_picture's plot box
    name, width = "the only line", 80  # (its text is about 70 pixels wide)
    for round_ in range(40):
        count = int(rng.integers(2, 40))
        shapes = [np.sort(rng.random(count)), -np.sort(rng.random(count)), rng.random(count)]
        ys = shapes[round_ % 3] + 0.05 * rng.random(count)
        drawn_texts.clear()
        lines = {name: (list(range(count)), list(ys))}
        pixels = np.asarray(lines_picture(lines, "t", "x", "y", legend_at_top=round_ % 2 == 0)).copy()
        x, y = map(round, position_of(drawn_texts, name))
        pixels[y + 5 : y + 10, x - 27 : x - 5] = 0  # the legend's mark of the line
        box = pixels[y - 4 : y + LINE_HEIGHT + 4, x - 32 : x + width]
        assert not (box == LINE_COLOURS[0]).all(2).any(), round_
        margin = 0.05 * (ys.max() - ys.min())
        for index, value in enumerate(ys):
            row = top + (ys.max() + margin - value) / (ys.max() - ys.min() + 2 * margin) * (bottom - top)
            column = left + (index / (count - 1) + X_MARGIN) / (1 + 2 * X_MARGIN) * (right - left)
            assert tuple(pixels[round(row), round(column)]) == LINE_COLOURS[0], (round_, index)


def test_a_legend_with_no_free_corner_goes_under_the_plot(drawn_texts) -> None:
    crossing = {"up": ([0, 10], [0, 1]), "down": ([0, 10], [1, 0]), "level": ([0, 10], [0.5, 0.5])}
    picture = lines_picture(crossing, "crossing", "x", "y")
    assert picture.height > 440
    assert all(position_of(drawn_texts, name)[1] > 440 for name in crossing)
    falling = lines_picture({"falling": ([0, 10], [1, 0])}, "t", "x", "y")
    assert falling.height == 440
    x, y = position_of(drawn_texts, "falling")
    assert x > 360 and y < 220  # top right: the first free corner (the line ends in the bottom right)


def test_a_legend_wider_than_the_plot_widens_the_picture(drawn_texts) -> None:
    name = "/home/someone/experiments/" + "a_very_long_folder_name_" * 4 + "run"
    crossing = {name: ([0, 10], [0, 1]), "down": ([0, 10], [1, 0])}
    picture = lines_picture(crossing, "t", "x", "y")
    x, y = position_of(drawn_texts, name)
    assert y > 440 and x >= 60 and picture.width > 720
    assert x + _font().getlength(name) <= picture.width


def test_one_diverged_run_does_not_flatten_the_others_losses(drawn_texts) -> None:
    """A run whose losses go 10 times above another run's peak is drawn at the edge beyond it; runs
    that converge keep all their points, their first epochs too (ten times their median)."""
    rows = lambda losses: [  # noqa: E731
        {"epoch": epoch, "valid_loss": loss, "valid_accuracy": 0.05} for epoch, loss in enumerate(losses, 1)
    ]
    converging = [2.34 * 0.85**epoch for epoch in range(30)]  # 2.34 → 0.02
    clipped = "above 10 times the lowest run's peak (at the edge)"
    runs_curves_picture({"fine": rows(converging), "also": rows([3.0, *converging[1:]])}, "t")
    assert clipped not in [text for _, text in drawn_texts]
    labels = [float(text) for (x, _), text in drawn_texts if x == 4]  # both panels' y axes (accuracy: 5 %)
    assert 2.5 <= max(labels) < 10
    drawn_texts.clear()
    runs_curves_picture({"fine": rows(converging), "diverged": rows([0.8, 3e6, 9e6])}, "t")
    assert clipped in [text for _, text in drawn_texts]
    labels = [float(text) for (x, _), text in drawn_texts if x == 4]
    assert max(labels) < 30  # the fine run's 2.34 at the top, not millions


@pytest.mark.parametrize(
    "low, high, labels",
    [
        (0.039, 1.28, ["0.25", "0.50", "0.75", "1.00", "1.25"]),
        (90.28, 97.22, ["91", "92", "93", "94", "95", "96", "97"]),
        (92.7, 93.5, ["92.75", "93.00", "93.25", "93.50"]),
        (-1.0, 1.0, ["-1.0", "-0.5", "0.0", "0.5", "1.0"]),
        (3.0, 300.0, ["50", "100", "150", "200", "250", "300"]),
        (0.001, 0.0013, ["0.0010", "0.0011", "0.0012", "0.0013"]),
        (5.0, 5.0, ["5"]),
        (0.0, 2.07e12, ["0", "5e+11", "1e+12", "1.5e+12", "2e+12"]),  # a diverging loss: short labels
        (0.0, 12e6, ["0", "2.5e+06", "5e+06", "7.5e+06", "1e+07"]),
        (0.69314718055994529, 0.69314718055994545, ["0.6931"]),  # too close for a float: one tick
        (0.0, float("inf"), []),
        (-1e308, 1e308, []),
    ],
)
def test_round_ticks_are_round_within_the_range_and_four_or_more(
    low: float, high: float, labels: list[str]
) -> None:
    ticks = round_ticks(low, high)
    assert [label for _, label in ticks] == labels
    assert all(low - 1e-9 * abs(low) <= tick <= high + 1e-9 * abs(high) for tick, _ in ticks)
    assert [float(label) for label in labels] == pytest.approx([tick for tick, _ in ticks], rel=1e-3)


def test_the_curves_show_both_losses_and_the_accuracy_with_the_best_epoch_marked(drawn_texts) -> None:
    history = [
        {"epoch": 1, "train_loss": 1.2, "valid_loss": 0.5, "valid_accuracy": 0.90},
        {"epoch": 2, "train_loss": 0.4, "valid_loss": 0.3, "valid_accuracy": 0.95},
        {"epoch": 3, "train_loss": 0.2, "valid_loss": 0.35, "valid_accuracy": 0.94},
    ]
    picture = np.asarray(curves_picture(history, 2, "mnist_dnn: run"))
    texts = [text for _, text in drawn_texts]
    assert texts.count("best checkpoint (epoch 2)") == 2  # in each panel's legend
    assert {"mnist_dnn: run", "train loss", "valid loss", "valid accuracy", "valid accuracy (%)"} <= set(
        texts
    )
    assert {"0.25", "0.50", "1.00", "1.25"} <= set(texts) and {"90", "93", "95"} <= set(texts)  # round ticks
    half = picture.shape[0] // 2
    for panel in (picture[:half], picture[half:]):  # the marker's green: its dot and its legend's
        assert (panel.reshape(-1, 3) == LINE_COLOURS[2]).all(1).sum() > 30
    blue = (picture[half:].reshape(-1, 3) == LINE_COLOURS[0]).all(1).sum()
    assert blue == 0  # accuracy in the valid loss's red, not the train loss's blue


def test_an_lr_sweep_over_many_decades_labels_at_most_ten(drawn_texts) -> None:
    """`fmtk lr-find --start-lr 1e-30`: one label a decade ran together ("1e-25e-24e-23…")."""
    from fmtk.pictures import curve_picture

    curve_picture(np.logspace(-30, 1, 50), np.linspace(2, 1, 50), None, "t", "lr", "loss")
    labels = [text for _, text in drawn_texts if text.startswith("1e")]
    assert labels == ["1e-28", "1e-24", "1e-20", "1e-16", "1e-12", "1e-8", "1e-4", "1e0"]
    drawn_texts.clear()
    curve_picture(np.logspace(-7, 1, 50), np.linspace(2, 1, 50), None, "t", "lr", "loss")
    assert [text for _, text in drawn_texts if text.startswith("1e")] == [f"1e{d}" for d in range(-7, 2)]


def test_an_lr_sweep_s_tail_above_the_limit_is_grey_and_said_and_its_loss_axis_is_ticked_round(
    drawn_texts,
) -> None:
    """`fmtk lr-find`'s diverging tail, drawn at the top edge, read as a loss that levelled off."""
    from fmtk.pictures import CORRECT_BLUE, ZERO_INK, curve_picture

    losses = [*np.linspace(2.3, 2.2, 40), 3.0, 6.0, 9.0]  # the last two above 2 × 2.3
    picture = np.asarray(curve_picture(np.logspace(-7, 1, 43), losses, None, "t", "lr", "loss", y_limit=4.6))
    top = HEADING_HEIGHT + 24  # the plot's first row
    row = picture[top + 1]  # the top edge's values
    assert (row == ZERO_INK).all(1).sum() > 8 and not (row == CORRECT_BLUE).all(1).any()
    assert "grey: above 4.6, drawn at the top" in [text for _, text in drawn_texts]
    assert {"2.5", "3.0", "3.5", "4.0", "4.5"} <= {text for _, text in drawn_texts}
    drawn_texts.clear()
    below = curve_picture(np.logspace(-7, 1, 40), losses[:40], None, "t", "lr", "loss", y_limit=4.6)
    row = np.asarray(below)[top + 1]  # the highest loss, the first, in blue
    assert (row == CORRECT_BLUE).all(1).any() and not (row == ZERO_INK).all(1).any()
    assert not any("grey" in text for _, text in drawn_texts)


def test_the_first_and_last_points_are_drawn_whole_inside_the_frame() -> None:
    """A 1-epoch run's points, and a study's trial 0: each dot whole, inside the plot's frame (the
    last epoch's sat on the right edge, half cut; trial 0's on the left)."""
    top, bottom, left, right = HEADING_HEIGHT + 24, 440 - 40, 60, 720 - 20  # lines_picture's plot box
    one = [{"epoch": 1, "train_loss": 1.28, "valid_loss": 0.46, "valid_accuracy": 0.90}]
    loss = np.asarray(curves_picture(one, None, "one epoch"))[top + 1 : bottom, left + 1 : right]
    trials = np.asarray(lines_picture({"trial": ([0, 1, 2], [0.5, 0.9, 0.7])}, "t", "trial", "y"))
    for plot, colour in ((loss, LINE_COLOURS[0]), (loss, LINE_COLOURS[1]),
                         (trials[top + 1 : bottom, left + 1 : right], LINE_COLOURS[0])):  # fmt: skip
        columns = np.nonzero((plot == colour).all(axis=2).any(axis=0))[0]  # (a dot is 7 pixels wide)
        assert columns.min() > 2 and columns.max() < plot.shape[1] - 3, (columns.min(), columns.max())


def test_curves_of_a_diverged_run_leave_out_what_is_not_finite_and_of_no_epoch_are_empty() -> None:
    history = [
        {"epoch": 1, "train_loss": 1.0, "valid_loss": float("nan"), "valid_accuracy": 0.5},
        {"epoch": 2, "train_loss": float("inf"), "valid_loss": 2.0, "valid_accuracy": 0.6},
    ]
    picture = np.asarray(curves_picture(history, 2, "diverged"))
    red = (picture[: picture.shape[0] // 2].reshape(-1, 3) == LINE_COLOURS[1]).all(1).sum()
    assert 0 < red < 200  # the valid loss: its legend's mark only (its one point is the best's, green)
    assert curves_picture([], None, "no epoch").size == (720, 880)


@pytest.mark.parametrize("gap", [float("nan"), float("inf")])
@pytest.mark.parametrize("several", [False, True], ids=["curves.png", "runs --curves"])
def test_an_epoch_that_is_not_finite_is_a_gap_in_its_line(gap: float, several: bool) -> None:
    """Epoch 3's valid loss diverged: its line stops at epoch 2 and starts again at 4 (it was joined
    across, as if epoch 3 had been fine)."""
    losses = [1.0, 0.5, gap, 0.4, 0.3]
    history = [{"epoch": e, "train_loss": 1.0, "valid_loss": loss, "valid_accuracy": 0.5}
               for e, loss in enumerate(losses, 1)]  # fmt: skip
    if several:
        picture, colour = runs_curves_picture({"a": history}, "t"), LINE_COLOURS[0]
    else:
        picture, colour = curves_picture(history, None, "t"), LINE_COLOURS[1]
    line = (np.asarray(picture)[HEADING_HEIGHT + 24 : 400] == colour).all(axis=2)  # the loss plot
    at = [round(60 + ((epoch - 1) / 4 + X_MARGIN) / (1 + 2 * X_MARGIN) * (720 - 80)) for epoch in range(6)]
    assert line[:, at[2] + 8 : at[4] - 8].sum() == 0  # nothing between epochs 2 and 4
    for epoch in (1, 2, 4, 5):  # each finite point, and the lines 1–2 and 4–5
        assert line[:, at[epoch] - 2 : at[epoch] + 3].any()
    assert line[:, at[1] + 8 : at[2] - 8].any() and line[:, at[4] + 8 : at[5] - 8].any()


def test_round_ticks_tell_apart_every_tick_of_any_range() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5000):  # spans from below a float's resolution to 100 times the value
        low = rng.uniform(-1, 1) * 10 ** rng.uniform(-12, 12)
        high = low + abs(low) * 10 ** rng.uniform(-17, 2)
        ticks = round_ticks(low, high)
        labels = [label for _, label in ticks]
        assert 1 <= len(ticks) <= 12 and len(set(labels)) == len(labels), (low, high, labels)
        assert all(low - 1e-9 * abs(low) <= tick <= high + 1e-9 * abs(high) for tick, _ in ticks)


@pytest.fixture
def fresh_glyphs():
    """Which font draws which character is looked up again in the test and after it."""
    pictures._glyph.cache_clear()
    yield
    pictures._glyph.cache_clear()


def needs_a_fallback_font() -> None:
    if not pictures._fallback_sources():
        pytest.skip(f"none of {pictures.FALLBACK_FONTS} on this machine")


@pytest.mark.parametrize("text", ["chèvre", "3×3 → 9", "Жук"])
def test_characters_the_default_font_lacks_are_drawn_not_boxed(text: str, fresh_glyphs) -> None:
    """Pillow's default font has ASCII only: a class named "chèvre" drew a box for "è" (the same
    pixels as a character no font has)."""
    needs_a_fallback_font()
    boxed = "".join(c if c.isascii() else "\U0010fffd" for c in text)
    assert not pictures._has_glyph(None, "è")  # what the fallback is for
    matrix = np.array([[5, 1], [0, 4]])
    drawn = np.asarray(confusion_picture(matrix, [text, "b"], "t"))
    boxes = np.asarray(confusion_picture(matrix, [boxed, "b"], "t"))
    assert drawn.shape != boxes.shape or (drawn != boxes).any()
    fonts = [font for font, piece in _font(11).runs(text) if not piece.isascii()]
    assert fonts and all(font.path in pictures._fallback_sources() for font in fonts)


def test_a_word_in_two_fonts_sits_on_one_baseline_at_its_anchor(fresh_glyphs) -> None:
    """ "chèvre" is three pieces (Aileron, DejaVu, Aileron) drawn where Pillow would put the word:
    right-aligned at the anchor, the letters' feet on one line."""
    needs_a_fallback_font()
    font = _font(24)
    assert [piece for _, piece in font.runs("chèvre")] == ["ch", "è", "vre"]
    picture = Image.new("L", (300, 100), 255)
    font.draw(ImageDraw.Draw(picture), (250, 50), "chèvre", 0, "rm")
    ink = np.asarray(picture) < 128
    columns, rows = ink.any(axis=0).nonzero()[0], ink.any(axis=1).nonzero()[0]
    assert abs(columns.max() - 249) <= 2 and abs(columns.min() - (250 - font.getlength("chèvre"))) <= 3
    left = 250 - font.getlength("chèvre")
    ends = [left, left + font.getlength("ch"), left + font.getlength("chè"), 250]
    feet = [
        ink[:, round(a) + 1 : round(b) - 1].any(axis=1).nonzero()[0].max()
        for a, b in itertools.pairwise(ends)
    ]
    word = Image.new("L", (300, 100), 255)
    ImageDraw.Draw(word).text((250, 50), "chevre", fill=0, font=font.base, anchor="rm")
    assert feet == [(np.asarray(word) < 128).any(axis=1).nonzero()[0].max()] * 3  # one baseline
    assert rows.min() < 50 < rows.max()  # the middle anchor


def test_fontconfig_then_the_plain_letter_then_a_box_said_once(
    fresh_glyphs, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Without the named fonts, fontconfig names one (Linux); without it, "é" is drawn as "e"; a
    character no font has is a box, said once on stderr with what to install."""
    monkeypatch.setattr(pictures, "_fallback_sources", lambda: ())
    monkeypatch.setattr(pictures, "_fontconfig_sources", [])
    monkeypatch.setattr(pictures, "_said_missing", [])
    if shutil.which("fc-match") and pictures._fontconfig_font("Ж"):
        (font, piece), *_ = _font().runs("Жук")
        assert piece == "Жук" and Path(font.path).exists() and pictures._fontconfig_sources == [font.path]
    monkeypatch.setattr(pictures, "_fontconfig_font", lambda character: None)
    monkeypatch.setattr(pictures, "_fontconfig_sources", [])
    pictures._glyph.cache_clear()
    assert [piece for _, piece in _font().runs("café crème")] == ["cafe creme"]
    assert capsys.readouterr().err == ""
    _font().runs("x\U0010fffd")
    _font().runs("\U0010fffe")
    said = capsys.readouterr().err.splitlines()
    assert said == [pictures.MISSING_GLYPHS.format(characters="\U0010fffd (U+10FFFD)", text="x\U0010fffd")]


def test_a_grid_s_titles_are_wrapped_and_shortened_to_their_cell() -> None:
    font = pictures._font()
    lines = pictures.fit_lines(
        "true: Norwegian Forest Cat (long name)\npred: Bag 0.93\nvery_long_unbroken_file_name.jpg", font, 122
    )
    assert all(font.getlength(line) <= 122 for line in lines)
    assert lines[0] == "true: Norwegian" and "pred: Bag 0.93" in lines  # wrapped at spaces; short lines kept
    assert lines[-1].endswith("…") and "very_long_unbroken".startswith(lines[-1][:10])
    assert pictures.fit_lines("true: Bag", font, 122) == ["true: Bag"]
    # Each cell's title within its cell: the grid grows taller instead.
    titles = ["true: Norwegian Forest Cat (long name)", "x"]
    grid = pictures.titled_grid(torch.zeros(2, 3, 8, 8), titles, columns=2, cell=112)
    assert grid.height > pictures.titled_grid(torch.zeros(2, 3, 8, 8), ["a", "b"], columns=2, cell=112).height


def test_a_log_axis_is_ticked_at_powers_of_ten_else_at_1_2_5_times_them() -> None:
    from fmtk.pictures import _log_ticks

    assert _log_ticks(1.2e-4, 1.2e-2) == [0.001, 0.01]  # a searched lr's range: 0.001 and 0.01, not its ends
    assert _log_ticks(1.3e-4, 6e-3) == [0.0005, 0.001, 0.005]
    assert _log_ticks(1e-7, 10) == [1e-7, 1e-5, 1e-3, 0.1, 10]  # at most five
    assert _log_ticks(0.31, 0.39) == [0.31, 0.39]  # no round value between: the ends


def test_a_class_s_share_rounds_as_evaluate_does_but_never_to_a_whole_or_no_share() -> None:
    from fmtk.pictures import _share

    assert [_share(11, 12), _share(966, 980), _share(99_997, 100_000), _share(1, 10_000), _share(5, 5)] == [
        "91.7%", "98.6%", "99.9%", "0.1%", "100.0%"
    ]  # fmt: skip


def test_a_title_too_long_for_one_line_goes_on_the_next_and_the_picture_grows(drawn_texts) -> None:
    from fmtk.pictures import curve_picture, lines_picture

    title = ("digits_mlp --set batch_size=16 --set hidden=64 --set weight_decay=0.001 --set seed=3: LR "
             "finder, 97 steps")  # fmt: skip
    picture = curve_picture(np.logspace(-7, 1, 50), np.linspace(2, 1, 50), None, title, "lr", "loss")
    titled = [
        (xy, text) for xy, text in drawn_texts if text.startswith("digits_mlp") or text.endswith("steps")
    ]
    assert " ".join(text for _, text in titled) == title and len(titled) == 2  # every word, none cut
    assert picture.size == (640, 400 + 18) and titled[1][0][1] > titled[0][0][1]
    assert position_of(drawn_texts, "loss")[1] > titled[1][0][1]  # the y label under the title's last line
    drawn_texts.clear()
    wide = lines_picture({"a": ([1, 2], [0.5, 0.6])}, title + " " + title, "epoch", "accuracy")
    assert wide.size[1] == 440 + 18 * 2 and not [text for _, text in drawn_texts if text.endswith("…")]
