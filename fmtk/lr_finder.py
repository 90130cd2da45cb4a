"""``fmtk lr-find``: Ignite's FastaiLRFinder over a recipe's training data, without a run.

The LR rises exponentially each step from ``start_lr`` to ``end_lr`` while the model trains; the
smoothed loss against the LR shows where training is fastest. The suggestion is fastai's "valley"
rule (:func:`valley_lr`), not Ignite's steepest descent. The model and optimizer are
restored afterwards (Ignite saves and reloads them), no run folder or checkpoint is written, and the
picture is a new file (an existing one is refused before anything runs).
"""

from __future__ import annotations

import math
import tempfile
import warnings
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from ignite.handlers import FastaiLRFinder

from fmtk.errors import FmtkError
from fmtk.optimizers import create_optimizer
from fmtk.pictures import curve_picture, save_new_picture
from fmtk.recipe import Recipe
from fmtk.scratch import process_folder
from fmtk.training.build import create_run_trainer
from fmtk.training.engines import SpeedOptions
from fmtk.training.parts import recipe_parts

VALLEY = "valley"  # the rule that makes LRFinding.suggestion, as the command and the picture name it
MIN_VALLEY_POINTS = 5  # a shorter decreasing run is no valley: no suggestion
MANY_PASSES = 5  # a sweep that goes more often over the training split is said to (a tiny split)


@dataclass
class LRFinding:
    """The LRs tried, the smoothed loss at each, and the suggestion of the valley rule."""

    lrs: list[float]  # each batch's: the LR its optimizer step trained with
    losses: list[float]
    suggestion: float | None  # None: the smoothed loss has no long fall (valley_lr)
    diverged: bool  # the loss passed 5× its best before end_lr (Ignite's stop)
    rule: str = VALLEY  # how the suggestion was chosen
    steps: int = 0  # optimizer steps trained (a batch each, or N with accumulate_steps=N)
    passes: float = 0.0  # how many times the sweep went over the training split
    train_batches: int = 0  # the training split's batches


def valley_lr(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """The LR about halfway down the longest fall of the smoothed ``losses`` (fastai's "valley" rule),
    or None when no decreasing run of ``MIN_VALLEY_POINTS`` points is left.

    The steepest point (Ignite's ``lr_suggestion``, fmtk's rule before) is where the loss falls
    fastest, just before it diverges: 1.1 for mnist_dnn, whose tuned LRs are 0.1 and 0.2. The valley
    rule takes an LR inside the long fall, well before the minimum.

    fastai 2.x (``valley`` and ``Learner.lr_find`` in fastai/callback/schedule.py): drop the first
    tenth and the last 5 points, and those from the first NaN on; find by dynamic programming the
    longest strictly decreasing subsequence of the losses (the first to end among the longest); with
    ``start = end - length``, suggest the LR at ``start + int(length / 3) + int(length / 6)``, about
    halfway along it in steps, so in log LR (fastai's docs say "roughly 2/3 through the longest
    valley"; its code lands about halfway).

    Changed here: the flat start is dropped as well, the points before the loss first falls a tenth
    of the way from its first value (the first point kept) to its minimum, and a curve that never
    falls below its first value has no suggestion. A model trained from scratch with SGD learns
    nothing over the first decades of LR, where the smoothed loss drifts down by noise: fastai's
    valley then starts near the sweep's start and its middle lands far below the LRs that train well
    (0.005 for ``mnist_dnn --preset fast``, tuned to 0.2: 96.3% test accuracy instead of 98.8%); and
    a curve that only rises has noisy "valleys" too (catdog_vgg at 32 px).
    """
    finite = next((index for index, loss in enumerate(losses) if not math.isfinite(loss)), len(losses))
    start, end = len(losses) // 10, min(finite, len(losses) - 5)
    lrs, losses = list(lrs[start:end]), list(losses[start:end])
    if len(losses) < MIN_VALLEY_POINTS or min(losses) == losses[0]:
        return None  # too few points, or the loss never fell below where it started
    falling = losses[0] - (losses[0] - min(losses)) / 10
    flat = next(index for index, loss in enumerate(losses) if loss <= falling)
    lrs, losses = lrs[flat:], losses[flat:]
    valley_end, length = longest_decreasing_run(losses)
    if length < MIN_VALLEY_POINTS:
        return None
    valley_start = valley_end - length  # fastai's max_start: the end less the length
    return float(lrs[valley_start + int(length / 3) + int(length / 3 / 2)])


def longest_decreasing_run(values: Sequence[float]) -> tuple[int, int]:
    """(index of its last point, length) of the longest strictly decreasing subsequence of
    ``values``, the first to end of the longest; (0, 1) when nothing decreases, (0, 0) when empty.
    The same as fastai's O(n²) loops over pairs of points, in O(n log n) (patience sorting)."""
    # lengths[i]: the longest such subsequence that ends at point i; tails[k]: the least -value at
    # which one of length k + 1 ends so far (an increasing list, so bisect finds the length).
    lengths: list[int] = []
    tails: list[float] = []
    for value in values:
        place = bisect_left(tails, -value)
        tails[place : place + 1] = [-value]
        lengths.append(place + 1)
    if not lengths:
        return 0, 0
    length = max(lengths)
    return lengths.index(length), length


def find_lr(
    recipe: Recipe,
    data_dir: Path,
    device: torch.device,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    threads: int | None = None,
) -> LRFinding:
    """Train the recipe's model from its seed for up to ``steps`` steps with the LR rising from
    ``start_lr`` to ``end_lr``; stops early when the loss diverges (Ignite's rule: 5× the best).
    ``threads``: the CPU threads, as a run's (None: a run's default)."""
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):  # NaN fails every comparison
        raise FmtkError(f"lr-find: need 0 < start lr < end lr, got {start_lr} and {end_lr} (finite numbers)")
    # The run's own model, data (checked, augmented) and training loss, from the recipe's seed.
    parts = recipe_parts(recipe, data_dir, device, SpeedOptions(threads=threads))
    model, data = parts.model, parts.data
    optimizer = create_optimizer(recipe.optimizer, model, start_lr, recipe.weight_decay, device,
                                 recipe.optimizer_args)  # fmt: skip
    scaler = torch.amp.GradScaler(device.type) if parts.speed.precision == "16-mixed" else None
    # The run's own step: accumulation, mixup/CutMix and gradient clipping as the run trains.
    trainer = create_run_trainer(parts, model, optimizer, scaler)
    finder = FastaiLRFinder()
    to_save = {"model": model, "optimizer": optimizer}
    # A step is an optimizer step: with accumulation, N batches. The finder raises the LR each
    # batch, so each optimizer step takes the LR of its group's last batch.
    batches = steps * recipe.accumulate_steps
    epochs = math.ceil(batches / len(data.train))
    # Ignite's finder trains num_iter + 1 batches and logs with each loss the LR its scheduler set
    # after that batch (the next one's): each batch's own LR is read here, before the finder's
    # handlers move it on, and num_iter is one less than the batches wanted.
    trained_lrs: list[float] = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED, lambda _: trained_lrs.append(optimizer.param_groups[0]["lr"])
    )
    # Its scheduler sets the sweep's second LR before the first batch (torch's schedulers step once
    # when made), so the first batch would skip start_lr: it trains at start_lr, as asked.
    trainer.add_event_handler(Events.ITERATION_STARTED(once=1), _set_lr, optimizer, start_lr)
    with warnings.catch_warnings(record=True) as caught, _temp_folder_of_this_process():
        warnings.simplefilter("always")  # Ignite warns when the loss never diverged
        with finder.attach(
            trainer, to_save, num_iter=batches - 1, start_lr=start_lr, end_lr=end_lr
        ) as finding:
            finding.run(data.train, max_epochs=epochs)
    never_diverged = [warning for warning in caught if "without loss diverging" in str(warning.message)]
    for warning in caught:  # any other warning goes on to the user as it came
        if warning not in never_diverged:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    diverged = not never_diverged
    results = finder.get_results()
    if len(results["lr"]) < 3:
        raise FmtkError(f"lr-find: the loss diverged after {len(results['lr'])} steps; lower the start lr")
    losses = [float(loss) for loss in results["loss"]]
    lrs = [float(lr) for lr in trained_lrs[: len(losses)]]
    trained = math.ceil(len(losses) / recipe.accumulate_steps)
    passes = len(losses) / len(data.train)
    return LRFinding(lrs, losses, valley_lr(lrs, losses), diverged, steps=trained, passes=passes,
                     train_batches=len(data.train))  # fmt: skip


def _set_lr(_: Engine, optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def save_lr_picture(finding: LRFinding, path: Path, title: str) -> None:
    """Loss against LR (log axis) with the suggestion marked, as a new PNG file."""
    # Up to twice the first loss: the diverging tail would flatten the part that matters.
    label = None if finding.suggestion is None else f"suggested {finding.suggestion:.2g} ({finding.rule})"
    picture = curve_picture(finding.lrs, finding.losses, finding.suggestion, title, "learning rate",
                            "smoothed training loss", y_limit=2 * finding.losses[0], mark_label=label,
                            clipped_name="the loss above twice its first")  # fmt: skip
    save_new_picture(picture, path)


@contextmanager
def _temp_folder_of_this_process() -> Iterator[None]:
    """Python's temporary folder is ``fmtk-lr-find-<pid>`` inside it while the finder runs
    (:func:`~fmtk.scratch.process_folder`)."""
    # Ignite's FastaiLRFinder.attach saves the model and optimizer in a tempfile.TemporaryDirectory
    # (no way to keep them in memory), which a SIGKILL leaves behind: this folder is found next time.
    with process_folder("fmtk-lr-find-") as folder:
        saved, tempfile.tempdir = tempfile.tempdir, str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = saved
