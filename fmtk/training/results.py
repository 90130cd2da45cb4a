"""What a run writes about itself: config.json when it starts; when it ends, its best and last
checkpoints tested, its pictures, metrics.json and the test table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
from torch.utils.tensorboard import SummaryWriter

from fmtk.pictures import curves_picture
from fmtk.runfolder import CURVES, TOP_LOSSES_CSV, checkpoint_epoch, picture_path
from fmtk.training.checkpoints import load_model_weights, read_checkpoint
from fmtk.training.evaluation import Evaluation, evaluate, run_pictures, tested_model, write_top_losses_csv
from fmtk.training.handlers import RunStop
from fmtk.training.parts import Parts, split_counts
from fmtk.training.start import Start
from fmtk.version import versions
from fmtk.weights import evaluated_weights


def run_config(parts: Parts, start: Start, data_dir: Path | None, command: str | None) -> dict[str, Any]:
    """config.json: the resolved recipe, class names, speed, processes, versions, the data folder,
    the command line that started the run and when (a resumed or restarted run keeps its first)."""
    config = {**parts.recipe.config(), "classes": parts.data.classes, "speed": parts.speed.config()}
    config["device"] = str(parts.device)
    if parts.data.skipped:  # what skip_bad_images left out
        config["skipped_images"] = [os.path.abspath(path) for path in parts.data.skipped]  # as data_dir
    if parts.data.near_copies:  # valid and test photos that flatter their figures (fmtk.data.copies)
        config["near_copies"] = [copy._asdict() for copy in parts.data.near_copies]
    if parts.data.conflicts:  # near copies in two classes' folders: one of each is labelled wrong
        config["label_conflicts"] = [conflict._asdict() for conflict in parts.data.conflicts]
    first = start.first(command, parts.started_from)  # started_from: what the starting weights gave
    config["started_from"] = first["started_from"]
    config["head"] = list(parts.head)  # and the tensors they did not give
    config.update(processes=idist.get_world_size(), versions=versions(parts.device), command=first["command"],
                  started=first["started"])  # fmt: skip
    if starts := start.starts(command, config["device"], config["speed"]):  # once resumed: every start's
        config["starts"] = starts
    if data_dir is not None:  # evaluate and --resume read the same data by default
        config["data_dir"] = str(Path(data_dir).resolve())
    if (counted := split_counts(parts.data)) is not None:  # a resumed run checks its data is the same
        config["splits"] = counted
    return config


def test_checkpoint(parts: Parts, path: Path) -> Evaluation:
    """Load the weights validation used from the checkpoint at ``path`` into the parts' model and
    evaluate them on the test split (with the recipe's test-time flip averaging, if on)."""
    recipe = parts.recipe
    checkpoint = read_checkpoint(path)
    load_model_weights(evaluated_weights(checkpoint), path, recipe.name, parts.model)
    model = tested_model(recipe, parts.model)
    return evaluate(model, parts.data.test, parts.data.classes, parts.device, parts.loss_fn,
                    recipe.make_metrics())  # fmt: skip


def write_pictures(
    parts: Parts,
    best: Evaluation,
    run_dir: Path,
    writer: SummaryWriter,
    epoch: int,
    history: list[dict[str, float]],
    best_epoch: int | None,
) -> None:
    """The run's pictures as PNG files and as images in its TensorBoard: the learning curves of its
    ``history`` (metrics.csv's rows), and those of the model holding the best checkpoint's weights."""
    pictures, wrong = run_pictures(parts.recipe.name, parts.model, best, parts.data.valid)
    title = f"{parts.recipe.name}: {run_dir.name}"
    pictures[CURVES] = curves_picture(history, best_epoch, title)
    for name, picture in pictures.items():
        picture.save(picture_path(run_dir, name))
        writer.add_image(name, np.asarray(picture), epoch, dataformats="HWC")
    if wrong:
        write_top_losses_csv(wrong, run_dir / TOP_LOSSES_CSV)


def final_results(
    parts: Parts,
    history: list[dict[str, float]],
    tested: dict[str, tuple[Path, Evaluation]],
    epochs_run: int,
    seconds: float,
    stop: RunStop | None = None,
) -> dict[str, Any]:
    """What metrics.json holds: the run's figures per epoch summed up and the test figures of the
    ``best`` and ``last`` checkpoints (``tested``: their paths and evaluations); ``stop``: why
    training ended before its epochs (``stopped_early``: early stopping; ``stopped_by``: the reason
    a handler gave :meth:`~fmtk.training.run.Run.stop`)."""
    stop = stop if stop is not None else RunStop()
    recipe = parts.recipe
    watched = recipe.watched("checkpoint_metric")
    best_path = tested["best"][0]
    # The best checkpoint's own epoch (its file name): right also when metrics.csv lost rows.
    best_epoch = checkpoint_epoch(best_path)
    rows = [row for row in history if row["epoch"] == best_epoch]
    return {
        "recipe": recipe.name,
        "device": str(parts.device),
        "processes": idist.get_world_size(),
        **parts.speed.config(),
        "best_epoch": best_epoch,
        "best_valid_accuracy": max((row["valid_accuracy"] for row in history), default=None),
        "best_checkpoint_metric": {
            "name": watched.column, "mode": watched.mode, "value": rows[0][watched.column] if rows else None
        },
        "epochs_run": epochs_run,
        "stopped_early": stop.early_stopped,
        "stopped_by": stop.by_handler,
        "train_seconds": round(seconds, 2),
        "checkpoints": {which: path.name for which, (path, _) in tested.items()},
        "test": {
            which: {"loss": result.loss, "accuracy": result.accuracy, **result.metrics}
            for which, (_, result) in tested.items()
        },
    }  # fmt: skip


def test_table(results: dict[str, Any]) -> list[str]:
    """The lines of the table a run ends with: each checkpoint's file, test loss and accuracy."""
    lines = [f"{'checkpoint':<12}{'file':<44}{'test_loss':>10}{'test_acc':>10}"]
    for which in ("best", "last"):
        test, name = results["test"][which], results["checkpoints"][which]
        lines.append(f"{which:<12}{name:<44}{test['loss']:>10.4f}{100 * test['accuracy']:>9.2f}%")
    return lines
