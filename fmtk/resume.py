"""Continue a run from its last checkpoint: the recipe from config.json, every state from last_*.pt.

An uninterrupted run and one killed and resumed end with the same metrics on CPU: the last
checkpoint holds the model, optimizer, plateau scheduler, early-stopping counter, best-checkpoint
bookkeeping, trainer counters and random states, and each epoch's data order depends only on
(seed, epoch).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch
from ignite.handlers import Checkpoint

from fmtk.errors import FmtkError
from fmtk.handlers import EPOCH_COLUMNS
from fmtk.recipe import Recipe, load_recipe, overridable_fields

_LAST = re.compile(r"last_checkpoint_(\d+)\.pt")
_TORN_WRITE = re.compile(r"tmp[a-z0-9_]{8}")  # tempfile.NamedTemporaryFile names


def recipe_from_run(run_dir: Path, epochs: int | None = None) -> Recipe:
    """The recipe a run was made with (its config.json), with ``epochs`` raised if given."""
    config_path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise FmtkError(f"--resume {run_dir}: no such run folder")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise FmtkError(f"--resume {run_dir}: cannot read config.json ({error})") from None
    recipe = load_recipe(config.get("source") or config["name"])
    values = {name: config[name] for name in overridable_fields() if name in config}
    if epochs is not None:
        values["epochs"] = epochs
    recipe = dataclasses.replace(recipe, **values, options={**recipe.options, **config.get("options", {})})
    recipe.validate()
    return recipe


def find_last_checkpoint(run_dir: Path) -> Path:
    """The newest ``last_checkpoint_<epoch>.pt`` of a run folder."""
    found = [
        (int(m.group(1)), p) for p in run_dir.glob("last_checkpoint_*.pt") if (m := _LAST.fullmatch(p.name))
    ]
    if not found:
        raise FmtkError(f"--resume {run_dir}: no last_checkpoint_*.pt to resume from")
    return max(found)[1]


def read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with a one-line error for a file that is not a checkpoint."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # noqa: BLE001 - pickle, zip and I/O errors all mean "not a checkpoint"
        raise FmtkError(f"{path}: not a readable fmtk checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise FmtkError(f"{path}: not an fmtk checkpoint (no model state)")
    return checkpoint


def load_model_weights(
    checkpoint: dict[str, Any], path: Path, recipe: Recipe, model: torch.nn.Module
) -> None:
    """Load the checkpoint's model weights into ``model``; a checkpoint made by another recipe or
    model architecture is refused with one line naming both."""
    made_by = checkpoint.get("run_info", {})
    if made_by.get("recipe") not in (None, recipe.name):
        raise FmtkError(f"{path} was made by recipe {made_by['recipe']}, not {recipe.name}")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        parameters = made_by.get("parameters")
        count = f"{parameters:,}" if isinstance(parameters, int) else "?"
        theirs = f"a {made_by.get('model', 'model')} with {count} parameters"
        ours = f"a {type(model).__name__} with {sum(p.numel() for p in model.parameters()):,}"
        raise FmtkError(
            f"{path} holds {theirs} (recipe {made_by.get('recipe', '?')}); {recipe.name} builds {ours}: "
            "a different architecture or variant"
        ) from None


def truncate_history(csv_path: Path, epoch: int) -> list[dict[str, float]]:
    """Drop metrics.csv rows after ``epoch`` (written by the interrupted process) and return the rest."""
    if not csv_path.exists():
        return []
    with csv_path.open(newline="") as file:
        rows = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(file)]
    kept = [row for row in rows if row["epoch"] <= epoch]
    for row in kept:
        row["epoch"] = int(row["epoch"])
    if len(kept) != len(rows):
        temporary = csv_path.with_suffix(".csv.tmp")
        with temporary.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=EPOCH_COLUMNS)
            writer.writeheader()
            writer.writerows(kept)
        temporary.replace(csv_path)
    return kept


def remove_stale_checkpoints(run_dir: Path, resume_from: Path, checkpoint: dict[str, Any]) -> None:
    """Delete checkpoint files the resumed state does not name (written by the interrupted process
    for epochs that are now redone, or superseded ones it had not removed yet) and torn writes."""
    keep = {resume_from.name} | {Path(name).name for _, name in checkpoint["best_checkpoint"]["_saved"]}
    for path in run_dir.glob("*_checkpoint_*.pt"):
        if path.name not in keep:
            path.unlink()
    for path in run_dir.iterdir():  # DiskSaver's temporary files of writes that never finished
        if _TORN_WRITE.fullmatch(path.name):
            path.unlink()


def restore(to_load: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """Load every state object of a last checkpoint but the model (loaded by load_model_weights)."""
    objects = {k: v for k, v in to_load.items() if k in checkpoint and k != "model"}
    Checkpoint.load_objects(objects, checkpoint)
