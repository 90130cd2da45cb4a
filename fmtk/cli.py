"""The `fmtk` command: parse, call, print. Every FmtkError becomes one line on stderr and exit 1.

torch, Ignite and everything that imports them are imported inside the commands: they take
seconds to import, and ``fmtk --help``, ``--version`` and ``fmtk runs`` need neither.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fmtk.choices import BACKENDS, PRECISIONS
from fmtk.errors import FmtkError, Interrupted, one_line
from fmtk.runfolder import (
    BEST,
    CONFIG,
    LAST,
    confusion_name,
    picture_path,
)

if TYPE_CHECKING:
    from fmtk.recipe import Recipe


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as error:  # noqa: BLE001 - a user's code may raise anything; fmtk's own keep their traceback
            line = one_line(error)
            if line is None:
                raise
            if line:  # (an error another process printed already has none)
                click.echo(line if isinstance(error, Interrupted) else f"Error: {line}", err=True)
            sys.exit(getattr(error, "exit_code", 1))


# Options several commands share, declared once.
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None,
    help="Data root [default: the run's own (evaluate, --resume, --config), else $FMTK_DATA, else ./data].",
)  # fmt: skip
device_option = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
checkpoint_option = click.option(
    "--checkpoint", default="best", show_default=True, help="best, last or a checkpoint path."
)
set_option = click.option(
    "--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override any recipe field (repeatable)."
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fmtk")
def cli() -> None:
    """fmtk: train PyTorch recipes with Ignite engines and handlers."""
    # Ignite logs "Engine run is terminating due to exception" through Python's last-resort
    # handler; the CLI reports every error itself, in one line.
    ignite_logger = logging.getLogger("ignite")
    if not any(isinstance(handler, logging.NullHandler) for handler in ignite_logger.handlers):
        ignite_logger.addHandler(logging.NullHandler())


@cli.command("list")
def list_recipes() -> None:
    """The bundled recipes, one line each."""
    from fmtk.recipe_loading import bundled_recipe_names, load_recipe

    for name in bundled_recipe_names():
        recipe = load_recipe(name)
        click.echo(f"{name:<12} {recipe.description}")
        for preset, values in recipe.presets.items():
            click.echo(f"{'':<12}   --preset {preset}: {values.description}")


def parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    """``("lr=0.1", "variant=basic")`` → ``{"lr": "0.1", "variant": "basic"}``."""
    parsed = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key.strip():
            raise FmtkError(f"--set {setting}: expected key=value")
        parsed[key.strip()] = value.strip()
    return parsed


def recipe_with_settings(recipe_name: str, settings: tuple[str, ...], preset: str | None = None) -> Recipe:
    """The recipe named on the command line with its ``--preset`` and ``--set`` values."""
    from fmtk.recipe_loading import resolve_recipe

    return resolve_recipe(recipe_name, preset, parse_settings(settings))


def check_run_folder(command: str, run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise FmtkError(f"fmtk {command} {run_dir}: no such run folder")
    if not (run_dir / CONFIG).is_file():
        raise FmtkError(f"fmtk {command} {run_dir}: not a run folder (it has no {CONFIG})")


@cli.command()
@click.argument("recipe_name", metavar="[RECIPE]", required=False)
@click.option(
    "--resume", type=click.Path(path_type=Path), help="Continue this run folder from its last checkpoint."
)
@click.option("--config", "config", type=click.Path(path_type=Path), metavar="CONFIG_JSON",
              help="Instead of RECIPE: train the recipe of a run's config.json (or run folder) again, "
              "with its values, into a new folder.")  # fmt: skip
@device_option
@click.option("--epochs", type=int, help="Maximum number of epochs.")
@click.option("--batch-size", type=int, help="Batch size (the global batch when several processes train).")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--seed", type=int, help="Random seed (data split, order, initialisation).")
@data_dir_option
@click.option("--output-dir", type=click.Path(path_type=Path), default="runs", show_default=True,
              help="Runs go to OUTPUT_DIR/RECIPE/YYYYmmdd-HHMMSS/.")  # fmt: skip
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Exact run folder (must not exist or be empty)."
)
@click.option("--preset", metavar="NAME", help="One of the recipe's named presets (fmtk list shows them).")
@set_option
@click.option("--handler", "handlers", multiple=True, metavar="MODULE:FUNCTION",
              help="A function that receives the Run and attaches handlers (repeatable).")  # fmt: skip
@click.option("--precision", type=click.Choice(["auto", *PRECISIONS]), default="auto", show_default=True,
              help="auto: bf16 on CUDA (16-mixed without bf16), 32 on the CPU.")  # fmt: skip
@click.option("--channels-last/--no-channels-last", default=None,
              help="Memory format of conv nets [default: on with CUDA].")  # fmt: skip
@click.option("--compile", "compile_model", is_flag=True, help="torch.compile the training step's model.")
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train in N processes on this machine (ignite.distributed).")  # fmt: skip
@click.option("--backend", type=click.Choice(BACKENDS), help="nccl or gloo [default: nccl with CUDA].")
def run(
    recipe_name: str | None,
    resume: Path | None,
    config: Path | None,
    device: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    data_dir: Path,
    output_dir: Path,
    run_dir: Path | None,
    preset: str | None,
    settings: tuple[str, ...],
    handlers: tuple[str, ...],
    precision: str,
    channels_last: bool | None,
    compile_model: bool,
    nproc_per_node: int,
    backend: str | None,
) -> None:
    """Train RECIPE (a bundled name or a path to a recipe .py file), then test its checkpoints.

    With --resume RUN_DIR instead of RECIPE, continue that run where its last checkpoint left off;
    with --config RUN_DIR/config.json, train that run's recipe and values again in a new folder.
    """
    from fmtk.device import resolve_device
    from fmtk.launcher import RunRequest, train
    from fmtk.recipe_loading import data_root
    from fmtk.training.engines import SpeedOptions

    if sum(given is not None for given in (recipe_name, resume, config)) != 1:
        raise FmtkError(
            "give a RECIPE or --config CONFIG_JSON to start a run, or --resume RUN_DIR to continue one"
        )
    request = RunRequest(
        recipe_name=recipe_name, config=config, resume=resume, output_dir=output_dir, run_dir=run_dir,
        data_dir=data_root(data_dir, resume or config), device=resolve_device(device),
        speed=SpeedOptions(precision, channels_last, compile_model),
        handlers=handlers, nproc_per_node=nproc_per_node, backend=backend,
        command=shlex.join(["fmtk", *sys.argv[1:]]),
    )  # fmt: skip
    if resume is not None:
        changed = [name for name, value in [("--batch-size", batch_size), ("--lr", lr), ("--seed", seed),
                   ("--set", settings), ("--run-dir", run_dir), ("--preset", preset)] if value]  # fmt: skip
        if changed:
            raise FmtkError(f"--resume keeps the run's recipe; {', '.join(changed)} cannot change it")
        request.epochs = epochs
    else:
        if preset is not None and config is not None:
            raise FmtkError("--preset with --config: the run's values already hold its preset; use --set")
        request.preset = preset
        request.overrides = parse_settings(settings)
        flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
        request.overrides.update({key: value for key, value in flags.items() if value is not None})
    train(request, click.echo)


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@checkpoint_option
@click.option("--split", type=click.Choice(["test", "valid"]), default="test", show_default=True)
@data_dir_option
@device_option
def evaluate(run_dir: Path, checkpoint: str, split: str, data_dir: Path, device: str) -> None:
    """Loss, accuracy, per-class accuracy and confusion matrix of a run's checkpoint on a split.

    Also writes confusion_<checkpoint>.png (…_valid.png for the valid split) to the run folder and
    to its TensorBoard.
    """
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from fmtk.device import resolve_device
    from fmtk.recipe_loading import data_root
    from fmtk.training.evaluation import evaluate_run

    check_run_folder("evaluate", run_dir)
    recipe, path, result = evaluate_run(
        run_dir, checkpoint, split, data_root(data_dir, run_dir), resolve_device(device)
    )
    click.echo(f"{recipe.name}, {path.name}, {split} split")
    click.echo(result.table())
    stem = confusion_name(checkpoint if checkpoint in (BEST, LAST) else path.stem, split)
    picture = result.picture(f"{recipe.name}: {path.name}, {split} split")
    try:
        picture.save(picture_path(run_dir, stem))
        with SummaryWriter(str(run_dir)) as writer:
            writer.add_image(stem, np.asarray(picture), dataformats="HWC")
    except OSError as error:  # a read-only run folder: the figures are printed, the picture is not kept
        raise FmtkError(
            f"{picture_path(run_dir, stem)}: cannot write the picture ({error.strerror})"
        ) from None
    click.echo(f"wrote {picture_path(run_dir, stem)}")


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@checkpoint_option
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@device_option
def predict(
    run_dir: Path, images: tuple[Path, ...], checkpoint: str, top: int, as_json: bool, device: str
) -> None:
    """The predicted class and its probability for each IMAGE (PNG/JPEG, any mode and size)."""
    from fmtk.device import resolve_device
    from fmtk.training.evaluation import load_trained_model, predict_files

    check_run_folder("predict", run_dir)
    torch_device = resolve_device(device)
    recipe, model, _, classes = load_trained_model(run_dir, checkpoint, torch_device)
    results = predict_files(recipe, model, images, classes, top, torch_device)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for result in results:
        guesses = "  ".join(f"{p['class']} {p['probability']:.3f}" for p in result["predictions"])
        click.echo(f"{result['file']}: {guesses}")


@cli.command("lr-find")
@click.argument("recipe_name", metavar="RECIPE")
@click.option("--preset", metavar="NAME", help="One of the recipe's named presets.")
@set_option
@device_option
@data_dir_option
@click.option(
    "--steps", default=100, show_default=True, type=click.IntRange(min=5), help="Training steps at most."
)
@click.option("--start-lr", default=1e-7, show_default=True, type=float)
@click.option("--end-lr", default=10.0, show_default=True, type=float)
@click.option("--out", type=click.Path(path_type=Path), help="PNG file (default: RECIPE_lr_find.png).")
def lr_find(
    recipe_name: str,
    preset: str | None,
    settings: tuple[str, ...],
    device: str,
    data_dir: Path | None,
    steps: int,
    start_lr: float,
    end_lr: float,
    out: Path | None,
) -> None:
    """Train RECIPE's model with the LR rising each step (Ignite's FastaiLRFinder); print the
    suggested LR and draw the loss against the LR. Writes no run folder and no checkpoint."""
    from fmtk.device import resolve_device
    from fmtk.lr_finder import find_lr, save_lr_picture
    from fmtk.recipe_loading import data_root

    recipe = recipe_with_settings(recipe_name, settings, preset)
    out = out or Path(f"{recipe.name}_lr_find.png")
    if out.exists():
        raise FmtkError(f"{out} exists; choose another --out (nothing was overwritten)")
    if not out.parent.is_dir():
        raise FmtkError(f"--out {out}: no folder {out.parent}")
    if not os.access(out.parent, os.W_OK):  # refused before training, not after
        raise FmtkError(f"--out {out}: cannot write it (the folder {out.parent} is not writable)")
    finding = find_lr(recipe, data_root(data_dir), resolve_device(device), steps, start_lr, end_lr)
    title = f"{recipe.name}{f' --preset {preset}' if preset else ''}: LR finder, {len(finding.lrs)} steps"
    save_lr_picture(finding, out, title)
    ended = "diverged" if finding.diverged else f"had not diverged by lr {end_lr:g}"
    if finding.suggestion is None:
        click.echo(
            f"no suggestion: the smoothed loss does not fall and then rise between lr {start_lr:g} and "
            f"{end_lr:g} in {len(finding.lrs)} steps; give more --steps or a wider range; picture: {out}"
        )
        return
    click.echo(
        f"suggested lr: {finding.suggestion:.3g} (the steepest fall of the smoothed loss, which {ended}); "
        f"picture: {out}"
    )


@cli.command()
@click.argument("recipe_name", metavar="RECIPE")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="train", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="PNG file (default: RECIPE_SPLIT_samples.png).")
@click.option(
    "-n", "count", default=32, show_default=True, type=click.IntRange(min=1), help="How many samples."
)
@data_dir_option
@click.option("--seed", default=0, show_default=True, help="Which random samples.")
@click.option("--preset", metavar="NAME", help="One of the recipe's named presets.")
@click.option("--augmented", is_flag=True, help="Training samples as the recipe's augmentation makes them.")
@set_option
def show(
    recipe_name: str,
    split: str,
    out: Path | None,
    count: int,
    data_dir: Path,
    seed: int,
    preset: str | None,
    augmented: bool,
    settings: tuple[str, ...],
) -> None:
    """A grid of random samples of a split titled with their class names, and the class counts."""
    import torch

    from fmtk.data.batches import TensorBatches
    from fmtk.pictures import titled_grid
    from fmtk.recipe_loading import data_root
    from fmtk.training.parts import load_data

    recipe = recipe_with_settings(recipe_name, settings, preset)
    if augmented and split != "train":
        raise FmtkError(f"--augmented shows the training split; --split {split} is never augmented")
    out = out or Path(f"{recipe.name}_{split}_samples.png")
    if out.exists():
        raise FmtkError(f"{out} exists; choose another --out (nothing was overwritten)")
    data = load_data(recipe, data_root(data_dir), torch.device("cpu"))
    if not all(isinstance(getattr(data, name), TensorBatches) for name in ("train", "valid", "test")):
        raise FmtkError(f"fmtk show needs in-memory TensorBatches splits; {recipe.name} has other ones")
    if augmented and not data.train.augmentation.active:
        raise FmtkError(f"--augmented: {recipe.name} augments nothing; set augment_* or a --preset")
    for name in ("train", "valid", "test"):
        counts = torch.bincount(getattr(data, name).labels, minlength=len(data.classes)).tolist()
        click.echo(f"{name:<6}" + "  ".join(f"{c}: {n}" for c, n in zip(data.classes, counts, strict=True)))
    batches = getattr(data, split)
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(batches.labels), generator=generator)[:count]
    titles = [data.classes[int(label)] for label in batches.labels[chosen]]
    images = batches.images[chosen]
    if augmented:
        images, _ = next(iter(batches.take(chosen)))
    try:
        titled_grid(images, titles, columns=8).save(out)
    except OSError as error:
        raise FmtkError(f"--out {out}: cannot write it ({error.strerror})") from None
    click.echo(f"wrote {out}")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path), default="runs", required=False)
@click.option("--sort", "sort_key", default="run", show_default=True, metavar="COLUMN",
              help="run, recipe, preset, changed, epochs, best_valid_acc, test_acc_best, test_acc_last, "
              "train_seconds, state or started (newest first).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one object per run.")
def runs(folder: Path, sort_key: str, as_json: bool) -> None:
    """The runs under FOLDER (default ./runs) as one table: recipe, changed values, epochs, best
    valid accuracy, test accuracy of the best and last checkpoints, training time, state."""
    from fmtk.runs import format_runs_table, list_runs, runs_as_json, sort_runs

    rows = sort_runs(list_runs(folder), sort_key)
    if as_json:
        click.echo(runs_as_json(rows))
    elif not rows:
        click.echo(f"no runs under {folder}")
    else:
        click.echo(format_runs_table(rows))


@cli.command()
@click.argument("recipe_name", metavar="RECIPE")
@set_option
def summary(recipe_name: str, settings: tuple[str, ...]) -> None:
    """The model's layers with output shapes and parameter counts, and the totals."""
    from PIL import Image

    from fmtk.summary import format_summary

    recipe = recipe_with_settings(recipe_name, settings)
    if recipe.image_input is None:
        raise FmtkError(f"recipe {recipe.name} does not say what its input looks like (image_input)")
    input_shape = tuple(recipe.call("image_input", Image.new("RGB", (64, 64))).shape)
    click.echo(f"{recipe.name}: {recipe.description}")
    click.echo(format_summary(recipe.call("model"), input_shape))


def main() -> None:
    """Console entry point."""
    cli(prog_name="fmtk")
