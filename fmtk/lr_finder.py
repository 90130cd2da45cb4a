"""``fmtk lr-find``: Ignite's FastaiLRFinder over a recipe's training data, without a run.

The LR rises exponentially each step from ``start_lr`` to ``end_lr`` while the model trains; the
smoothed loss against the LR shows where training is fastest. The model and optimizer are
restored afterwards (Ignite saves and reloads them), no run folder or checkpoint is written, and the
picture is a new file (an existing one is refused before anything runs).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from ignite.handlers import FastaiLRFinder

from fmtk.errors import FmtkError
from fmtk.pictures import curve_picture
from fmtk.recipe import Recipe
from fmtk.training.engines import create_optimizer, create_trainer
from fmtk.training.parts import recipe_parts


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
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):  # NaN fails every comparison
        raise FmtkError(f"lr-find: need 0 < start lr < end lr, got {start_lr} and {end_lr} (finite numbers)")
    # The run's own model, data (checked, augmented) and training loss, from the recipe's seed.
    parts = recipe_parts(recipe, data_dir, device)
    model, data = parts.model, parts.data
    optimizer = create_optimizer(recipe.optimizer, model, start_lr, recipe.weight_decay, device,
                                 recipe.optimizer_args)  # fmt: skip
    scaler = torch.amp.GradScaler(device.type) if parts.speed.precision == "16-mixed" else None
    trainer = create_trainer(model, optimizer, parts.train_loss, device, parts.speed, scaler)
    finder = FastaiLRFinder()
    to_save = {"model": model, "optimizer": optimizer}
    epochs = math.ceil(steps / len(data.train))
    with warnings.catch_warnings(record=True) as caught, _temp_folder_of_this_process():
        warnings.simplefilter("always")  # Ignite warns when the loss never diverged
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
    created = False
    try:
        with path.open("xb") as file:  # never overwrite
            created = True
            picture.save(file, format="PNG")
    except FileExistsError:
        raise FmtkError(f"{path} exists; choose another --out (nothing was overwritten)") from None
    except OSError as error:
        if created:  # a part-written picture of ours (a full disk)
            path.unlink(missing_ok=True)
        raise FmtkError(f"{path}: cannot write the picture ({error.strerror})") from None


@contextmanager
def _temp_folder_of_this_process() -> Iterator[None]:
    """Python's temporary folder is ``fmtk-lr-find-<pid>`` inside it while the finder runs; those of
    processes that are gone are removed first, and this one at the end."""
    # Ignite's FastaiLRFinder.attach saves the model and optimizer in a tempfile.TemporaryDirectory
    # (no way to keep them in memory), which a SIGKILL leaves behind: this folder is found next time.
    base = Path(tempfile.gettempdir())
    for stale in base.glob("fmtk-lr-find-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and _gone(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = base / f"fmtk-lr-find-{os.getpid()}"
    folder.mkdir(exist_ok=True)
    saved, tempfile.tempdir = tempfile.tempdir, str(folder)
    try:
        yield
    finally:
        tempfile.tempdir = saved
        shutil.rmtree(folder, ignore_errors=True)


def _gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (always False but on POSIX, where signal 0 only asks)."""
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # another user's process
        return False
    return False
