"""``fmtk lr-find``: Ignite's FastaiLRFinder over a recipe's training data, without a run.

The LR rises exponentially each step from ``start_lr`` to ``end_lr`` while the model trains; the
smoothed loss against the LR shows where training is fastest. The model and optimizer are
restored afterwards (Ignite saves and reloads them), no run folder or checkpoint is written, and the
picture is a new file (an existing one is refused before anything runs).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from ignite.handlers import FastaiLRFinder

from fmtk.errors import FmtkError
from fmtk.pictures import curve_picture
from fmtk.recipe import Recipe
from fmtk.training.build import check_output_size
from fmtk.training.engines import create_optimizer, create_trainer, loss_on


@dataclass
class LRFinding:
    """The LRs tried, the smoothed loss at each, and Ignite's suggestion (the steepest descent)."""

    lrs: list[float]
    losses: list[float]
    suggestion: float | None  # None: the curve has no fall and rise (Ignite finds no U shape)
    diverged: bool  # the loss passed 5× its best before end_lr (Ignite's stop)


def find_lr(
    recipe: Recipe,
    data_dir: Path,
    device: torch.device,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
) -> LRFinding:
    """Train the recipe's model from its seed for up to ``steps`` steps with the LR rising from
    ``start_lr`` to ``end_lr``; stops early when the loss diverges (Ignite's rule: 5× the best)."""
    if not 0 < start_lr < end_lr:
        raise FmtkError(f"lr-find: need 0 < start lr < end lr, got {start_lr} and {end_lr}")
    torch.manual_seed(recipe.seed)
    model = recipe.call("model").to(device)
    data = recipe.call("data", data_dir, device)
    check_output_size(recipe.name, model, data, device)
    optimizer = create_optimizer(recipe.optimizer, model, start_lr, recipe.weight_decay, device,
                                 recipe.optimizer_args)  # fmt: skip
    loss_fn = loss_on(recipe.loss(recipe), device)
    trainer = create_trainer(model, optimizer, loss_fn, device)
    finder = FastaiLRFinder()
    to_save = {"model": model, "optimizer": optimizer}
    epochs = math.ceil(steps / len(data.train))
    with warnings.catch_warnings(record=True) as caught:  # Ignite warns when the loss never diverged
        warnings.simplefilter("always")
        with finder.attach(trainer, to_save, num_iter=steps, start_lr=start_lr, end_lr=end_lr) as finding:
            finding.run(data.train, max_epochs=epochs)
    never_diverged = [warning for warning in caught if "without loss diverging" in str(warning.message)]
    for warning in caught:  # any other warning goes on to the user as it came
        if warning not in never_diverged:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    diverged = not never_diverged
    results = finder.get_results()
    if len(results["lr"]) < 3:
        raise FmtkError(f"lr-find: the loss diverged after {len(results['lr'])} steps; lower the start lr")
    try:
        suggestion = float(finder.lr_suggestion())
    except RuntimeError:  # Ignite: "unexpected curve shape, the curve should be somehow U-shaped"
        suggestion = None
    return LRFinding(list(results["lr"]), list(results["loss"]), suggestion, diverged)


def save_lr_picture(finding: LRFinding, path: Path, title: str) -> None:
    """Loss against LR (log axis) with the suggestion marked, as a new PNG file."""
    # Up to twice the first loss: the diverging tail would flatten the part that matters.
    picture = curve_picture(finding.lrs, finding.losses, finding.suggestion, title, "learning rate",
                            "smoothed training loss", y_limit=2 * finding.losses[0])  # fmt: skip
    with path.open("xb") as file:  # never overwrite
        picture.save(file, format="PNG")
