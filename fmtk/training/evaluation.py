"""Look at results: evaluate a checkpoint on a split of its data or on a new labelled folder
(confusion matrix, per-class precision, recall and F1) and the wrong predictions with the highest
loss."""

from __future__ import annotations

import csv
import difflib
import itertools
import json
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from fmtk.data.batches import Batches, DataSplits, TensorBatches
from fmtk.data.copies import Fingerprinted, Fingerprints, copied
from fmtk.data.folders import split_folders
from fmtk.data.image_input import ImageInput, read_all, read_pixels
from fmtk.data.images import LoaderBatches, heif_hint, kinds_of, list_image_folder, photo_bar
from fmtk.errors import FmtkError, command
from fmtk.models import FlipAveraged
from fmtk.pictures import are_images, confusion_picture, titled_grid
from fmtk.recipe import Recipe
from fmtk.recipe_loading import recipe_from_config
from fmtk.runfolder import (
    BEST,
    TOP_LOSSES_CSV,
    TRAIN_FINGERPRINTS,
    confusion_name,
    find_checkpoint,
    read_config,
)
from fmtk.text import columns, cut, ljust, rjust
from fmtk.training.checkpoints import load_model_weights, read_checkpoint
from fmtk.training.engines import create_evaluator, loss_on
from fmtk.training.parts import create_model, data_differs, holds_training_photos, load_data
from fmtk.weights import evaluated_weights


@dataclass
class Evaluation:
    """Loss, accuracy, the recipe's own metrics and the confusion matrix (rows: true class,
    columns: predicted) of one split."""

    loss: float
    accuracy: float
    confusion: np.ndarray
    classes: list[str]
    metrics: dict[str, float] = field(default_factory=dict)  # the recipe's own (Recipe.metrics)

    @property
    def per_class_accuracy(self) -> list[float]:
        """Per class: the share of its samples predicted right (its recall)."""
        return self.per_class()["recall"].tolist()

    def per_class(self) -> dict[str, np.ndarray]:
        """Per class, from the confusion matrix: ``precision``, ``recall`` and ``f1`` (NaN where
        undefined: a class never predicted has no precision, one without samples no recall), and
        ``count`` (its samples)."""
        hits = np.diag(self.confusion).astype(float)
        counts, predicted = self.confusion.sum(axis=1), self.confusion.sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision, recall = hits / predicted, hits / counts
            f1 = 2 * precision * recall / (precision + recall)
        f1[recall == 0] = 0.0  # none of the class found: F1 0, also when it is never predicted
        return {"precision": precision, "recall": recall, "f1": f1, "count": counts}

    def table(self) -> str:
        """The recipe's metrics, per-class precision, recall (accuracy of the class) and F1, and
        the confusion matrix, as terminal text."""
        width = max(8, *(columns(name) for name in self.classes)) + 2  # (a wide character: two columns)
        lines = [f"loss {self.loss:.4f}  accuracy {100 * self.accuracy:.2f}%"]
        lines += [f"{name} {value:.4f}" for name, value in self.metrics.items()]
        lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>9}{'f1':>9}{'count':>7}"]
        per_class = self.per_class()
        for index, name in enumerate(self.classes):
            shares = "".join(
                _percent(per_class[key][index], cell)
                for key, cell in [("precision", 10), ("recall", 9), ("f1", 9)]
            )
            lines.append(f"{ljust(name, width)}{shares}{per_class['count'][index]:>7}")
        cell = max(6, len(str(self.confusion.max())) + 2)  # wider for the names, within the terminal
        room = (shutil.get_terminal_size((100, 24)).columns - width) // max(len(self.classes), 1)
        cell = max(cell, min(max(map(columns, self.classes), default=0) + 1, room))
        heads, rows = [cut(name, cell - 1) for name in self.classes], list(self.classes)
        if len(set(heads)) < len(heads):  # names cut alike (class_0, class_1): the columns numbered
            heads, rows = (
                [str(index) for index in range(len(rows))],
                [f"{i} {name}" for i, name in enumerate(rows)],
            )
            width += len(heads[-1]) + 1
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        lines.append(" " * width + "".join(rjust(head, cell) for head in heads))
        for name, row in zip(rows, self.confusion, strict=True):
            lines.append(ljust(name, width) + "".join(f"{value:>{cell}}" for value in row))
        return "\n".join(lines)

    def picture(self, title: str) -> Image.Image:
        return confusion_picture(self.confusion, self.classes, title)


def _percent(share: float, width: int) -> str:
    """``0.9722`` → `` 97.22%`` right-aligned in ``width``; NaN (undefined) → ``-``."""
    return f"{'-':>{width}}" if np.isnan(share) else f"{100 * share:>{width - 1}.2f}%"


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    classes: Sequence[str],
    device: torch.device,
    loss_fn: Callable,
    extra_metrics: Mapping[str, Any] | None = None,
    each_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> Evaluation:
    """Run Ignite's evaluator with accuracy, loss, confusion-matrix and ``extra_metrics`` over
    ``batches`` (a split, or an iterator read once to its end), giving ``each_batch`` every batch's
    model output and labels."""
    evaluator = create_evaluator(model, loss_fn, device, len(classes), extra_metrics)
    if each_batch is not None:
        evaluator.add_event_handler(
            Events.ITERATION_COMPLETED, lambda engine: each_batch(*engine.state.output)
        )
    metrics = evaluator.run(batches).metrics
    confusion = metrics["confusion"].cpu().numpy().astype(np.int64)
    extra = {name: metrics[name] for name in extra_metrics or {}}
    return Evaluation(metrics["loss"], metrics["accuracy"], confusion, list(classes), extra)


class LossRanking:
    """Each sample's loss, predicted class and that class's probability, gathered batch by batch
    (:meth:`add`, on the device: no wait for it), and the wrong ones with the highest loss
    (:meth:`top`)."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, ...]] = []

    @staticmethod
    def scored(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each sample's loss, predicted class and that class's probability."""
        probabilities = logits.float().softmax(dim=1)
        confidence, predicted = probabilities.max(dim=1)
        loss = -probabilities.gather(1, labels[:, None].long()).squeeze(1).clamp_min(1e-12).log()
        return loss, predicted, confidence

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.parts.append((*self.scored(logits, labels), labels))

    def correct(self) -> torch.Tensor:
        """Whether each sample was predicted right, in the order added (a bool CPU tensor)."""
        return torch.cat([predicted == labels for _, predicted, _, labels in self.parts]).cpu()

    def top(
        self, classes: Sequence[str], names: Sequence[str] | None = None, count: int = 32
    ) -> list[dict[str, Any]]:
        """The ``count`` wrongly predicted samples with the highest loss, highest first (fastai's
        ``top_losses``): per sample its ``index`` in the order added, ``file`` (its name among
        ``names`` when given, else ``""``), ``true`` and ``predicted`` class, the predicted class's
        ``probability`` and the sample's ``loss``."""
        loss, predicted, confidence, label = (
            torch.cat(parts).cpu() for parts in zip(*self.parts, strict=True)
        )
        wrong = (predicted != label).nonzero().squeeze(1)
        order = wrong[loss[wrong].argsort(descending=True, stable=True)][:count]
        return [
            {
                "index": int(i),
                "file": names[i] if names is not None else "",
                "true": classes[label[i]],
                "predicted": classes[predicted[i]],
                "probability": float(confidence[i]),
                "loss": float(loss[i]),
            }
            for i in order
        ]


def top_losses(
    model: nn.Module, batches: TensorBatches, classes: Sequence[str], count: int = 32
) -> list[dict[str, Any]]:
    """The ``count`` wrongly predicted samples of ``batches`` with the highest loss
    (:meth:`LossRanking.top`; ``index``: in the split)."""
    model.eval()
    ranking = LossRanking()
    with torch.no_grad():
        for x, y in batches:
            ranking.add(model(x), y)
    return ranking.top(classes, batches.names, count)


TOP_LOSSES_COLUMNS = ["rank", "index", "file", "true", "predicted", "probability", "loss"]


def top_losses_picture(
    rows: list[dict[str, Any]], images: torch.Tensor, title: str | None = None
) -> Image.Image:
    """The ``images`` of :func:`top_losses`'s ``rows``, in their order, each titled with the true
    class, the predicted class and its probability, the loss and the file's name (or the sample's
    index), under ``title`` (say which model and split) when given."""
    titles = [
        f"true: {r['true']}\npred: {r['predicted']} {r['probability']:.2f}\nloss {r['loss']:.2f}\n"
        + _fitted(Path(r["file"]).name if r["file"] else f"sample {r['index']}")
        for r in rows
    ]
    return titled_grid(images, titles, columns=8, cell=128, title=title)


def _fitted(name: str, width: int = 17) -> str:
    """``name`` shortened to ``width`` characters, keeping its end (the number and extension)."""
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def write_top_losses_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The rows of :func:`top_losses` as a CSV file (``TOP_LOSSES_COLUMNS``, ``rank`` from 1), to
    find the photos, e.g. mislabelled ones."""
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as file:  # names as on disk
        writer = csv.DictWriter(file, TOP_LOSSES_COLUMNS)
        writer.writeheader()
        for rank, row in enumerate(rows, 1):
            writer.writerow({**row, "rank": rank, "probability": f"{row['probability']:.6f}",
                             "loss": f"{row['loss']:.6f}"})  # fmt: skip


def load_trained_model(
    run_dir: Path, which: str, device: torch.device, recipe: Recipe | None = None
) -> tuple[Recipe, nn.Module, Path, list[str]]:
    """The recipe (``recipe`` if given, with the run's values), the model with the weights of
    checkpoint ``which``, its path and the class names."""
    config = read_config(run_dir)
    recipe = recipe_from_config(config, recipe=recipe)
    model = create_model(recipe, device)
    path = find_checkpoint(run_dir, which)
    load_model_weights(evaluated_weights(read_checkpoint(path)), path, recipe.name, model)
    classes = config.get("classes")
    if not classes:
        raise FmtkError(f"{run_dir}: config.json has no class names (made by an older fmtk?)")
    return recipe, model.eval(), path, classes


def tested_model(recipe: Recipe, model: nn.Module) -> nn.Module:
    """The model as testing, ``fmtk evaluate`` and ``fmtk predict`` run it: with the recipe's
    test-time flip averaging when ``tta_flip`` is on."""
    return FlipAveraged(model) if recipe.tta_flip else model


def evaluate_run(
    run_dir: Path,
    checkpoint: str,
    split: str,
    data_dir: Path,
    device: torch.device,
    recipe: Recipe | None = None,
) -> tuple[Recipe, Path, Evaluation]:
    """A run's checkpoint (``best``, ``last`` or a path) evaluated on a split (``test``, ``valid``):
    the recipe, the checkpoint's path and the evaluation. The run's data (:func:`check_split_data`)
    must be what the run was made with."""
    recipe, model, path, classes = load_trained_model(run_dir, checkpoint, device, recipe)
    data = load_data(recipe, data_dir, device, model)
    check_split_data(run_dir, data_dir, data, split)
    loss_fn = loss_on(recipe.loss(recipe), device)
    return (
        recipe,
        path,
        evaluate(
            tested_model(recipe, model), getattr(data, split), classes, device, loss_fn, recipe.make_metrics()
        ),
    )


class NotTheRunsData(FmtkError):
    """The run's data changed since the run was made: its splits would be drawn again."""


def check_split_data(run_dir: Path, data_dir: Path, data: DataSplits, split: str) -> None:
    """A split of the run's data (at the place it recorded, or elsewhere holding its training
    photos) is the run's own only while the data is the same (:func:`data_differs`, as for a
    resume): changed data draws other splits, whose test photos may be ones it trained on. Other
    data (of the recipe's kind, none of its training photos) is evaluated as it is, as is any data
    of a run that recorded neither its splits nor its training photos."""
    config = read_config(run_dir)
    why = data_differs(data, run_dir, config.get("splits"))
    if why is None:
        return
    recorded = config.get("data_dir")
    at_its_place = not isinstance(recorded, str) or Path(recorded) == Path(data_dir).resolve()
    if not at_its_place and not holds_training_photos(data, run_dir):
        return
    where = f" under {recorded}" if isinstance(recorded, str) else ""
    instead = (
        f"to score every photo of a folder: {command('evaluate', run_dir, '--folder', data_dir)}"
        if data.trained_on is not None  # a photo folder
        else f"evaluate it with the data it trained on{where} (--data-dir: where it is now)"
    )
    raise NotTheRunsData(
        f"{data_dir}: not the data this run trained on ({why}), so its {split} split may not be the one "
        f"it held out; {instead}"
    )


@dataclass(kw_only=True)
class FolderEvaluation(Evaluation):
    """An :class:`Evaluation` of a run's checkpoint on every photo of a labelled folder, with what
    only a folder has: the photos evaluated, the wrong predictions with the highest loss
    (:func:`top_losses`, with their files, and their pixels in ``images``), the photos that could
    not be read (``(path, why)``), left out of the figures, the class folders' files of kinds fmtk
    does not read (``others``), and the photos that are near copies of the run's training photos
    (``{"photo", "copy_of"}``) with the accuracy without them (None when there are none, or no other
    photos; a run on other data keeps no fingerprints to compare with)."""

    folder: Path
    checkpoint: Path
    photos: int
    wrong: list[dict[str, Any]]
    unreadable: list[tuple[str, str]]
    images: torch.Tensor = field(repr=False)  # the pixels of the ``wrong`` photos, in their order
    others: list[str] = field(default_factory=list)
    near_copies: list[dict[str, str]] = field(default_factory=list)
    accuracy_without_near_copies: float | None = None

    def find_copies(
        self, prints: Fingerprints, trained_on: Fingerprinted, names: Sequence[str], correct: torch.Tensor
    ) -> None:
        """Which of the photos evaluated (``names``, with their ``prints``, and whether each was
        predicted right) are near copies of the run's training photos, and the accuracy without them."""
        found = copied(prints, trained_on.prints)
        rows = np.flatnonzero(found >= 0)
        self.near_copies = [{"photo": names[i], "copy_of": trained_on.names[found[i]]} for i in rows]
        others = np.ones(len(names), dtype=bool)
        others[rows] = False
        if len(rows) and others.any():
            self.accuracy_without_near_copies = float(correct.numpy()[others].mean())

    def copies_line(self) -> str | None:
        """A line on the photos that are near copies of the run's training photos, or None."""
        if not self.near_copies:
            return None
        first = self.near_copies[0]
        pair = f"{first['photo']} ~ {first['copy_of']}"
        if Path(first["photo"]).resolve() == Path(first["copy_of"]).resolve():  # the training folder again
            pair = f"{first['photo']}, itself a training photo"
        if self.accuracy_without_near_copies is None:
            return (
                f"all {self.photos:,} photos are near copies of the run's training photos (e.g. {pair}): "
                "these figures say how well it learned them, not how it does on new photos"
            )
        copies, rest = len(self.near_copies), self.photos - len(self.near_copies)
        return (
            f"near copies of the run's training photos: {copies:,} of the {self.photos:,} photos (e.g. "
            f"{pair}): the figures above flatter the model; accuracy without them: "
            f"{self.accuracy_without_near_copies:.2%} of {rest:,} (evaluation.json lists them: near_copies)"
        )

    def figures(self) -> dict[str, Any]:
        """What ``evaluation.json`` holds (NaN, undefined, as null)."""
        per_class = self.per_class()
        defined = {
            key: [None if np.isnan(value) else float(value) for value in values]
            for key, values in per_class.items()
        }
        return {
            "folder": str(self.folder.resolve()),
            "checkpoint": self.checkpoint.name,
            "photos": self.photos,
            "loss": self.loss,
            "accuracy": self.accuracy,
            **self.metrics,
            "classes": self.classes,
            "per_class": {
                name: {key: defined[key][index] for key in ("precision", "recall", "f1", "count")}
                for index, name in enumerate(self.classes)
            },
            "confusion": self.confusion.tolist(),
            "unreadable": [list(bad) for bad in self.unreadable],
            "others": self.others,
            "near_copies": self.near_copies,
            "accuracy_without_near_copies": self.accuracy_without_near_copies,
        }

    def write(self, place: Path, recipe_name: str) -> None:
        """``evaluation.json``, ``confusion.png`` and, when some photo is predicted wrong,
        ``top_losses.png`` and ``top_losses.csv`` into the folder ``place``."""
        on = f"{recipe_name}: {self.checkpoint.name} on {self.folder.name}"
        (place / "evaluation.json").write_text(json.dumps(self.figures(), indent=2) + "\n")
        self.picture(f"{on} ({self.photos} photos)").save(place / "confusion.png")
        if self.wrong:
            title = f"{on}: wrong predictions, highest loss first"
            top_losses_picture(self.wrong, self.images, title).save(place / "top_losses.png")
            write_top_losses_csv(self.wrong, place / TOP_LOSSES_CSV)


def labelled_photos(folder: Path, classes: Sequence[str]) -> tuple[list[tuple[str, int]], list[str]]:
    """Every photo of a labelled ``folder`` in a layout fmtk reads (class folders, or split
    folders of class folders: all of them), labelled with its class's index among ``classes``, and
    the class folders' other files (:class:`~fmtk.data.images.Listing`). A class folder that is not
    among them is one line (a folder with some of them is fine)."""
    if not folder.is_dir():
        raise FmtkError(f"--folder {folder}: no such folder")
    roots = list(dict.fromkeys(split_folders(folder).values())) or [folder]
    samples, others, unknown = [], [], set()
    for root in roots:
        found, names, more = list_image_folder(root, allow_empty=True)  # an empty class: as one not there
        others += more
        for path, label in found:
            if names[label] in classes:
                samples.append((path, classes.index(names[label])))
            else:
                unknown.add(names[label])
    if unknown:
        raise FmtkError(
            f"{folder}: class folder(s) {', '.join(sorted(unknown))} are not among the run's classes "
            f"({', '.join(classes)}){_close_names(sorted(unknown), classes)}"
        )
    return samples, others


def _close_names(names: Sequence[str], classes: Sequence[str]) -> str:
    """``; did you mean …`` for the names that are close to a class's (``Cats``, ``cat``), else ""."""
    lower = {name.lower(): name for name in classes}
    close = {}
    for name in names:
        match = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.75)
        if match:
            close[name] = lower[match[0]]
    return f"; did you mean {', '.join(f'{close[n]} for {n}' for n in close)}?" if close else ""


# A chunk of decoded photos, at most: 256 photos (37 MiB at 224 px), fewer at larger sizes.
# evaluate_folder holds two (one evaluated, the next decoded), so a folder of any number of photos is
# evaluated whole in 256 MiB of pixels at most.
CHUNK_BYTES = 128 * 2**20


def evaluate_folder(
    run_dir: Path, folder: Path, checkpoint: str, device: torch.device, recipe: Recipe | None = None
) -> tuple[Recipe, FolderEvaluation]:
    """A run's checkpoint evaluated on every photo of the labelled ``folder`` (:func:`score_folder`),
    read as ``fmtk predict`` reads files (the recipe's :meth:`~fmtk.recipe.Recipe.input`), with the
    recipe's test-time augmentation, loss and metrics; photos that are near copies of the run's
    training photos are found."""
    recipe, model, path, classes = load_trained_model(run_dir, checkpoint, device, recipe)
    trained_on = run_dir / TRAIN_FINGERPRINTS
    result = score_folder(
        folder, tested_model(recipe, model), path, classes, recipe.input(), recipe.batch_size, device,
        loss_on(recipe.loss(recipe), device), recipe.make_metrics(),
        trained_on if trained_on.is_file() else None,
    )  # fmt: skip
    return recipe, result


def score_folder(
    folder: Path,
    model: nn.Module,
    checkpoint: Path,
    classes: Sequence[str],
    image_input: ImageInput,
    batch_size: int,
    device: torch.device,
    loss_fn: Callable,
    metrics: Mapping[str, Any] | None = None,
    trained_on: Path | None = None,
) -> FolderEvaluation:
    """``model`` (of the weights in ``checkpoint``, a run's or an exported file) evaluated on every
    photo of the labelled ``folder`` (:func:`labelled_photos`), each read by ``image_input``;
    photos that cannot be read are left out and listed; with ``trained_on`` (a run's training
    photos' fingerprints) the near copies of them are found.

    The photos are decoded (in as many threads as torch's), evaluated and dropped a chunk at a time
    (:data:`CHUNK_BYTES`), the next decoded while this one is evaluated, in one pass that also ranks
    the wrong ones; those pictured among them are read again at the end."""
    samples, others = labelled_photos(folder, classes)
    if not samples:  # (empty class folders, or ones of other kinds of files)
        besides = f"; its class folders hold only files of kinds fmtk does not read: {kinds_of(others)}"
        raise FmtkError(f"--folder {folder}: no photos in its class folders ({', '.join(classes)})"
                        f"{besides if others else ''}{heif_hint(others)}")  # fmt: skip
    files, labels = [file for file, _ in samples], torch.tensor([label for _, label in samples])
    kept: list[int] = []
    unreadable: list[tuple[str, str]] = []
    prints: list[Fingerprints] | None = [] if trained_on is not None else None  # a photo folder's run

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        chunk = max(1, min(256, CHUNK_BYTES // math.prod(image_input.shape)))
        for good, pixels, bad in read_pixels(files, image_input, chunk, threads=torch.get_num_threads()):
            kept.extend(good)
            unreadable.extend((files[index], why) for index, why in bad)
            if prints is not None:
                prints.append(Fingerprints.of(pixels))
            yield from TensorBatches(
                pixels.to(device), labels[good].to(device), batch_size, shard=(0, 1),
                scale=image_input.scale, mean=image_input.mean, std=image_input.std,
            )  # fmt: skip
            del pixels  # before the chunk after the next is decoded
            bar.update(len(good) + len(bad))

    with photo_bar(len(files), "evaluating photos") as bar:
        stream = batches()
        first = next(stream, None)  # Ignite's evaluator would fail on nothing with its own message
        if first is None:
            why = unreadable[0][1]
            raise FmtkError(f"--folder {folder}: none of its {len(files)} photos can be read: {why}")
        ranking = LossRanking()
        whole = itertools.chain([first], stream)
        evaluation = evaluate(model, whole, classes, device, loss_fn, metrics, ranking.add)
    wrong = ranking.top(classes, [files[index] for index in kept])
    pictured, _, unread = read_all([row["file"] for row in wrong], image_input)
    if unread:
        raise FmtkError(f"{wrong[unread[0][0]]['file']}: changed while it was evaluated: {unread[0][1]}")
    result = FolderEvaluation(
        **vars(evaluation), folder=folder, checkpoint=checkpoint, photos=len(kept), wrong=wrong,
        unreadable=unreadable, images=pictured, others=others,
    )  # fmt: skip
    if prints is not None:
        names = [files[index] for index in kept]
        result.find_copies(
            Fingerprints.joined(prints), Fingerprinted.load(trained_on), names, ranking.correct()
        )
    return result


def run_pictures(
    recipe_name: str, model: nn.Module, best_test: Evaluation, valid: Batches
) -> tuple[dict[str, Image.Image], list[dict[str, Any]]]:
    """The pictures of a finished run, ``confusion_best`` (test split) and ``top_losses`` (valid
    split), and the rows of the latter (:func:`top_losses`, :func:`streamed_top_losses` for data
    that is not held in memory), from ``model`` holding the best checkpoint's weights."""
    confusion_title = f"{recipe_name}: best checkpoint, test split"
    pictures = {confusion_name(BEST, "test"): best_test.picture(confusion_title)}
    if isinstance(valid, TensorBatches):
        valid = valid.whole()  # every sample, also when this is one of several processes
        rows = top_losses(model, valid, best_test.classes)
        images = valid.images[[row["index"] for row in rows]]
    else:
        rows, images = streamed_top_losses(model, valid, best_test.classes)
    if rows and are_images(images):  # (a table's rows are listed in top_losses.csv only)
        wrong_title = f"{recipe_name}: wrong predictions, highest loss first, valid split (best checkpoint)"
        pictures["top_losses"] = top_losses_picture(rows, images, wrong_title)
    return pictures, rows


def streamed_top_losses(
    model: nn.Module, batches: Batches, classes: Sequence[str], count: int = 32
) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """:func:`top_losses` of a split that is not held in memory (a DataLoader, ``data_cache=none``'s
    :class:`~fmtk.data.images.LoaderBatches`), in one pass that keeps only the ``count`` wrong
    samples with the highest loss so far and their inputs; and those inputs, in the rows' order (a
    photo folder's: the photos as decoded, not as normalised). ``index``: the sample's in its
    dataset (a DataLoader's, read again in order without its sampler: every sample, also in one of
    several processes), else its place in the pass."""
    names = None
    if isinstance(batches, LoaderBatches):
        batches, names = batches.whole(), batches.names
    elif isinstance(batches, DataLoader) and not isinstance(batches.dataset, IterableDataset):
        batches = DataLoader(batches.dataset, batches.batch_size or 32, collate_fn=batches.collate_fn,
                             num_workers=batches.num_workers)  # fmt: skip
    model.eval()
    device = next(model.parameters()).device
    kept: tuple[torch.Tensor, ...] | None = None  # loss, index, predicted, probability, label, input
    seen = 0
    with torch.no_grad():  # once a run, at its end: its waits for the device do not matter
        for x, y in batches:
            if not isinstance(x, torch.Tensor):  # several inputs (a user's DataLoader): not ranked
                return [], torch.empty(0)
            x, y = x.to(device), y.to(device)
            loss, predicted, confidence = LossRanking.scored(model(x), y)
            wrong = (predicted != y).nonzero().squeeze(1)
            found = (loss[wrong], wrong + seen, predicted[wrong], confidence[wrong], y[wrong], x[wrong])
            found = tuple(part.cpu() for part in found)
            seen += len(y)
            kept = found if kept is None else tuple(torch.cat(pair) for pair in zip(kept, found, strict=True))
            order = kept[0].argsort(descending=True, stable=True)[:count]  # earlier first among equals
            kept = tuple(part[order] for part in kept)
    if kept is None or not len(kept[0]):
        return [], torch.empty(0)
    loss, index, predicted, confidence, label, inputs = kept
    rows = [
        {"index": int(i), "file": names[i] if names is not None else "", "true": classes[label[n]],
         "predicted": classes[predicted[n]], "probability": float(confidence[n]), "loss": float(loss[n])}
        for n, i in enumerate(index.tolist())
    ]  # fmt: skip
    if names is not None:  # the photos as they were decoded
        inputs = torch.stack([batches.loader.dataset[i][0] for i in index.tolist()])
    return rows, inputs
