"""Look at results: evaluate a checkpoint (confusion matrix, per-class accuracy), the most
confidently wrong images, and predictions for image files."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from fmtk.data.batches import Batches, TensorBatches
from fmtk.errors import FmtkError
from fmtk.pictures import confusion_picture, titled_grid
from fmtk.recipe import Recipe, recipe_from_config
from fmtk.runfolder import BEST, confusion_name, find_checkpoint, read_config
from fmtk.training.checkpoints import load_model_weights, read_checkpoint
from fmtk.training.engines import create_evaluator


@dataclass
class Evaluation:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) of one split."""

    loss: float
    accuracy: float
    confusion: np.ndarray
    classes: list[str]

    @property
    def per_class_accuracy(self) -> list[float]:
        totals = self.confusion.sum(axis=1)
        return [
            float(self.confusion[i, i] / totals[i]) if totals[i] else float("nan") for i in range(len(totals))
        ]

    def table(self) -> str:
        """Per-class accuracy and the confusion matrix as terminal text."""
        width = max(8, *(len(name) for name in self.classes)) + 2
        lines = [f"loss {self.loss:.4f}  accuracy {100 * self.accuracy:.2f}%", ""]
        lines += [f"{'class':<{width}}{'accuracy':>9}{'count':>7}"]
        for name, accuracy, count in zip(
            self.classes, self.per_class_accuracy, self.confusion.sum(axis=1), strict=True
        ):
            lines.append(f"{name:<{width}}{100 * accuracy:>8.2f}%{count:>7}")
        cell = max(6, len(str(self.confusion.max())) + 2)
        lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
        lines.append(" " * width + "".join(f"{name[: cell - 1]:>{cell}}" for name in self.classes))
        for name, row in zip(self.classes, self.confusion, strict=True):
            lines.append(f"{name:<{width}}" + "".join(f"{value:>{cell}}" for value in row))
        return "\n".join(lines)

    def picture(self, title: str) -> Image.Image:
        return confusion_picture(self.confusion, self.classes, title)


def evaluate(
    model: nn.Module, batches: Batches, classes: Sequence[str], device: torch.device, loss_fn: Callable
) -> Evaluation:
    """Run Ignite's evaluator with accuracy, loss and confusion-matrix metrics over ``batches``."""
    evaluator = create_evaluator(model, loss_fn, device, num_classes=len(classes))
    metrics = evaluator.run(batches).metrics
    confusion = metrics["confusion"].cpu().numpy().astype(np.int64)
    return Evaluation(metrics["loss"], metrics["accuracy"], confusion, list(classes))


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
    rows: list[dict[str, Any]], images: torch.Tensor, classes: Sequence[str]
) -> Image.Image:
    """The images of ``most_confidently_wrong``, titled with the true class, the predicted one and
    its probability."""
    titles = [
        f"true: {classes[r['true']]}\npred: {classes[r['predicted']]} {r['probability']:.2f}" for r in rows
    ]
    return titled_grid(images[[r["index"] for r in rows]], titles, columns=8, cell=128)


def load_trained_model(
    run_dir: Path, which: str, device: torch.device
) -> tuple[Recipe, nn.Module, Path, list[str]]:
    """The recipe, the model with the weights of checkpoint ``which``, its path and the class names."""
    config = read_config(run_dir)
    recipe = recipe_from_config(config)
    model = recipe.model(recipe).to(device)
    path = find_checkpoint(run_dir, which)
    load_model_weights(read_checkpoint(path, device), path, recipe.name, model)
    classes = config.get("classes")
    if not classes:
        raise FmtkError(f"{run_dir}: config.json has no class names (made by an older fmtk?)")
    return recipe, model.eval(), path, classes


def predict_files(
    recipe: Recipe,
    model: nn.Module,
    paths: Sequence[Path],
    classes: Sequence[str],
    top: int,
    device: torch.device,
) -> list[dict[str, Any]]:
    """For each image file, the ``top`` most probable classes with their probabilities."""
    if recipe.image_input is None:
        raise FmtkError(f"recipe {recipe.name} does not say how to read an image file (image_input)")
    inputs = []
    for path in paths:
        try:
            with Image.open(path) as image:
                inputs.append(recipe.image_input(recipe, image))
        except (OSError, SyntaxError, ValueError) as error:
            raise FmtkError(f"{path}: cannot read image ({error})") from None
    with torch.no_grad():
        probabilities = model(torch.stack(inputs).to(device)).softmax(dim=1).cpu()
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
    title = f"{recipe_name}: best checkpoint, test split"
    pictures = {confusion_name(BEST, "test"): best_test.picture(title)}
    if isinstance(valid, TensorBatches):
        valid = valid.whole()  # every sample, also when this is one of several processes
        rows = most_confidently_wrong(model, valid)
        if rows:
            pictures["top_losses"] = top_losses_picture(rows, valid.images, classes)
    return pictures
