"""Look at results: evaluate a checkpoint (confusion matrix, per-class accuracy), the most
confidently wrong images, and predictions for image files."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fmtk.data.batches import Batches, TensorBatches
from fmtk.data.image_input import ImageInput
from fmtk.errors import FmtkError
from fmtk.models import FlipAveraged
from fmtk.pictures import confusion_picture, titled_grid
from fmtk.recipe import Recipe
from fmtk.recipe_loading import recipe_from_config
from fmtk.runfolder import BEST, confusion_name, find_checkpoint, read_config
from fmtk.training.checkpoints import load_model_weights, read_checkpoint
from fmtk.training.engines import create_evaluator, loss_on
from fmtk.training.parts import create_model, load_data
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
        width = max(8, *(len(name) for name in self.classes)) + 2
        lines = [f"loss {self.loss:.4f}  accuracy {100 * self.accuracy:.2f}%"]
        lines += [f"{name} {value:.4f}" for name, value in self.metrics.items()]
        lines += ["", f"{'class':<{width}}{'precision':>10}{'recall':>9}{'f1':>9}{'count':>7}"]
        per_class = self.per_class()
        for index, name in enumerate(self.classes):
            shares = "".join(
                _percent(per_class[key][index], cell)
                for key, cell in [("precision", 10), ("recall", 9), ("f1", 9)]
            )
            lines.append(f"{name:<{width}}{shares}{per_class['count'][index]:>7}")
        cell = max(6, len(str(self.confusion.max())) + 2)
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        lines.append(" " * width + "".join(f"{name[: cell - 1]:>{cell}}" for name in self.classes))
        for name, row in zip(self.classes, self.confusion, strict=True):
            lines.append(f"{name:<{width}}" + "".join(f"{value:>{cell}}" for value in row))
        return "\n".join(lines)

    def picture(self, title: str) -> Image.Image:
        return confusion_picture(self.confusion, self.classes, title)


def _percent(share: float, width: int) -> str:
    """``0.9722`` → `` 97.22%`` right-aligned in ``width``; NaN (undefined) → ``-``."""
    return f"{'-':>{width}}" if np.isnan(share) else f"{100 * share:>{width - 1}.2f}%"


def evaluate(
    model: nn.Module,
    batches: Batches,
    classes: Sequence[str],
    device: torch.device,
    loss_fn: Callable,
    extra_metrics: Mapping[str, Any] | None = None,
) -> Evaluation:
    """Run Ignite's evaluator with accuracy, loss, confusion-matrix and ``extra_metrics`` over ``batches``."""
    evaluator = create_evaluator(model, loss_fn, device, len(classes), extra_metrics)
    metrics = evaluator.run(batches).metrics
    confusion = metrics["confusion"].cpu().numpy().astype(np.int64)
    extra = {name: metrics[name] for name in extra_metrics or {}}
    return Evaluation(metrics["loss"], metrics["accuracy"], confusion, list(classes), extra)


def most_confidently_wrong(model: nn.Module, batches: TensorBatches, count: int = 32) -> list[dict[str, Any]]:
    """The ``count`` wrongly classified samples with the highest loss, most confident first."""
    model.eval()
    losses, predictions, confidences, labels = [], [], [], []
    with torch.no_grad():
        for x, y in batches:
            probabilities = model(x).softmax(dim=1)
            confidence, predicted = probabilities.max(dim=1)
            losses.append(-probabilities.gather(1, y[:, None]).squeeze(1).clamp_min(1e-12).log())
            predictions.append(predicted)
            confidences.append(confidence)
            labels.append(y)
    loss, predicted, confidence, label = (
        torch.cat(parts).cpu() for parts in (losses, predictions, confidences, labels)
    )
    wrong = (predicted != label).nonzero().squeeze(1)
    order = wrong[loss[wrong].argsort(descending=True)][:count]
    return [
        {
            "index": int(i),
            "true": int(label[i]),
            "predicted": int(predicted[i]),
            "probability": float(confidence[i]),
        }
        for i in order
    ]


def top_losses_picture(
    rows: list[dict[str, Any]], images: torch.Tensor, classes: Sequence[str], title: str | None = None
) -> Image.Image:
    """The images of ``most_confidently_wrong``, each titled with the true class, the predicted one
    and its probability, under ``title`` (say which model and split) when given."""
    titles = [
        f"true: {classes[r['true']]}\npred: {classes[r['predicted']]} {r['probability']:.2f}" for r in rows
    ]
    return titled_grid(images[[r["index"] for r in rows]], titles, columns=8, cell=128, title=title)


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
    the recipe, the checkpoint's path and the evaluation."""
    recipe, model, path, classes = load_trained_model(run_dir, checkpoint, device, recipe)
    data = load_data(recipe, data_dir, device, model)
    loss_fn = loss_on(recipe.loss(recipe), device)
    return (
        recipe,
        path,
        evaluate(
            tested_model(recipe, model), getattr(data, split), classes, device, loss_fn, recipe.make_metrics()
        ),
    )


def predict_files(
    recipe: Recipe,
    model: nn.Module,
    paths: Sequence[Path],
    classes: Sequence[str],
    top: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """For each image file, the ``top`` most probable classes with their probabilities."""
    inputs = read_images(paths, recipe.input())
    with torch.no_grad():
        probabilities = tested_model(recipe, model)(inputs.to(device)).softmax(dim=1).cpu()
    return top_classes(probabilities, paths, classes, top)


def read_images(paths: Sequence[Path], image_input: ImageInput) -> torch.Tensor:
    """Image files as one batch of model inputs; a file that is no image is one line."""
    inputs = []
    for path in paths:
        try:
            with Image.open(path) as image:
                inputs.append(image_input(image))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise FmtkError(f"{path}: cannot read image ({error})") from None
    return torch.stack(inputs)


def top_classes(
    probabilities: torch.Tensor, paths: Sequence[Path], classes: Sequence[str], top: int
) -> list[dict[str, Any]]:
    """Per file, its ``top`` most probable classes: what ``fmtk predict`` prints."""
    values, indices = probabilities.topk(min(top, len(classes)), dim=1)
    return [
        {
            "file": str(path),
            "predictions": [
                {"class": classes[index], "probability": float(probability)}
                for probability, index in zip(v, ix, strict=True)
            ],
        }
        for path, v, ix in zip(paths, values.tolist(), indices.tolist(), strict=True)
    ]


def run_pictures(
    recipe_name: str, model: nn.Module, best_test: Evaluation, valid: Batches, classes: Sequence[str]
) -> dict[str, Image.Image]:
    """The pictures of a finished run: ``confusion_best`` (test split) and, for in-memory data,
    ``top_losses`` (valid split), from ``model`` holding the best checkpoint's weights."""
    confusion_title = f"{recipe_name}: best checkpoint, test split"
    pictures = {confusion_name(BEST, "test"): best_test.picture(confusion_title)}
    if isinstance(valid, TensorBatches):
        valid = valid.whole()  # every sample, also when this is one of several processes
        rows = most_confidently_wrong(model, valid)
        if rows:
            wrong_title = f"{recipe_name}: most confidently wrong, valid split (best checkpoint)"
            pictures["top_losses"] = top_losses_picture(rows, valid.images, classes, wrong_title)
    return pictures
