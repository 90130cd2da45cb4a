"""The `fmtk` command: parse, call, print. Every FmtkError becomes one line on stderr and exit 1."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fmtk.errors import FmtkError
from fmtk.recipe import apply_overrides, bundled_recipe_names, load_recipe


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FmtkError as error:
            raise click.ClickException(str(error)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fmtk")
def cli() -> None:
    """fmtk: train PyTorch recipes with Ignite engines and handlers."""


@cli.command("list")
def list_recipes() -> None:
    """The bundled recipes, one line each."""
    for name in bundled_recipe_names():
        click.echo(f"{name:<12} {load_recipe(name).description}")


def parse_settings(settings: tuple[str, ...]) -> dict[str, str]:
    """``("lr=0.1", "variant=basic")`` → ``{"lr": "0.1", "variant": "basic"}``."""
    parsed = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key.strip():
            raise FmtkError(f"--set {setting}: expected key=value")
        parsed[key.strip()] = value.strip()
    return parsed


def resolve_handler(reference: str) -> Callable:
    """``package.module:function`` → the function (a user's handler that receives the Run)."""
    module_name, colon, attribute = reference.partition(":")
    if not colon or not module_name or not attribute:
        raise FmtkError(f"--handler {reference}: expected package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise FmtkError(f"--handler {reference}: cannot import {module_name} ({error})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise FmtkError(f"--handler {reference}: {module_name} has no function {attribute}")
    return function


def finished_message(run_dir: Path, epochs: int) -> str | None:
    """Why a run folder has nothing left to resume, or None."""
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return None
    results = json.loads(metrics_path.read_text())
    if results.get("stopped_early"):
        return f"{run_dir} is finished: early stopping ended it at epoch {results['epochs_run']}"
    if results.get("epochs_run", 0) >= epochs:
        done = results["epochs_run"]
        return (
            f"{run_dir} is finished ({done} of {epochs} epochs); pass --epochs with more than {done} to go on"
        )
    return None


@cli.command()
@click.argument("recipe_name", metavar="RECIPE", required=False)
@click.option(
    "--resume", type=click.Path(path_type=Path), help="Continue this run folder from its last checkpoint."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--epochs", type=int, help="Maximum number of epochs.")
@click.option("--batch-size", type=int, help="Batch size.")
@click.option("--lr", type=float, help="Learning rate.")
@click.option("--seed", type=int, help="Random seed (data split, order, initialisation).")
@click.option(
    "--data-dir", type=click.Path(path_type=Path), envvar="FMTK_DATA", default="data", show_default=True,
    help="Data root (else $FMTK_DATA, else ./data).",
)  # fmt: skip
@click.option("--output-dir", type=click.Path(path_type=Path), default="runs", show_default=True,
              help="Runs go to OUTPUT_DIR/RECIPE/YYYYmmdd-HHMMSS/.")  # fmt: skip
@click.option(
    "--run-dir", type=click.Path(path_type=Path), help="Exact run folder (must not exist or be empty)."
)
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE", help="Override any recipe field.")
@click.option("--handler", "handlers", multiple=True, metavar="MODULE:FUNCTION",
              help="A function that receives the Run and attaches handlers (repeatable).")  # fmt: skip
def run(
    recipe_name: str | None,
    resume: Path | None,
    device: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    data_dir: Path,
    output_dir: Path,
    run_dir: Path | None,
    settings: tuple[str, ...],
    handlers: tuple[str, ...],
) -> None:
    """Train RECIPE (a bundled name or a path to a recipe .py file), then test its checkpoints.

    With --resume RUN_DIR instead of RECIPE, continue that run where its last checkpoint left off.
    """
    from fmtk.engines import resolve_device
    from fmtk.resume import find_last_checkpoint, recipe_from_run
    from fmtk.run import build_run, make_run_dir

    if (recipe_name is None) == (resume is None):
        raise FmtkError("give a RECIPE to start a run, or --resume RUN_DIR to continue one")
    attachers = [resolve_handler(reference) for reference in handlers]
    torch_device = resolve_device(device)
    checkpoint = None
    if resume is not None:
        changed = [name for name, value in [("--batch-size", batch_size), ("--lr", lr), ("--seed", seed),
                   ("--set", settings), ("--run-dir", run_dir)] if value]  # fmt: skip
        if changed:
            raise FmtkError(f"--resume keeps the run's recipe; {', '.join(changed)} cannot change it")
        recipe = recipe_from_run(resume, epochs)
        checkpoint = find_last_checkpoint(resume)
        finished = finished_message(resume, recipe.epochs)
        if finished:
            click.echo(finished)
            return
        folder = resume
    else:
        overrides = parse_settings(settings)
        flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
        overrides.update({key: str(value) for key, value in flags.items() if value is not None})
        recipe = apply_overrides(load_recipe(recipe_name), overrides)
        folder = make_run_dir(output_dir, recipe.name, run_dir)
    click.echo(f"run folder: {folder}")
    try:
        training = build_run(recipe, folder, torch_device, data_dir, echo=click.echo, resume_from=checkpoint)
        for attach in attachers:
            attach(training)
        training.run()
    except FmtkError:
        if resume is None and not any(folder.iterdir()):
            folder.rmdir()  # bad data: leave no empty run folder behind
        raise
    except KeyboardInterrupt:
        # The last checkpoint is complete: DiskSaver writes a temporary file and renames it.
        saved = sorted(folder.glob("last_checkpoint_*.pt"))
        where = (
            f"the last complete checkpoint is {saved[-1].name}" if saved else "no checkpoint was written yet"
        )
        click.echo(f"interrupted: {where}; resume with: fmtk run --resume {folder}", err=True)
        sys.exit(130)
    click.echo(f"run folder: {folder}")


def main() -> None:
    """Console entry point."""
    # Ignite logs "Engine run is terminating due to exception" through Python's last-resort
    # handler; the CLI reports every error itself, in one line.
    logging.getLogger("ignite").addHandler(logging.NullHandler())
    cli(prog_name="fmtk")
