"""The `fmtk` command: parse, call, print. Every FmtkError becomes one line on stderr and exit 1."""

from __future__ import annotations

import importlib
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


@cli.command()
@click.argument("recipe_name", metavar="RECIPE")
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
    recipe_name: str,
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
    """Train RECIPE (a bundled name or a path to a recipe .py file), then test its checkpoints."""
    from fmtk.engines import resolve_device
    from fmtk.run import build_run, make_run_dir

    overrides = parse_settings(settings)
    flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed}
    overrides.update({key: str(value) for key, value in flags.items() if value is not None})
    recipe = apply_overrides(load_recipe(recipe_name), overrides)
    attachers = [resolve_handler(reference) for reference in handlers]
    torch_device = resolve_device(device)
    folder = make_run_dir(output_dir, recipe.name, run_dir)
    click.echo(f"run folder: {folder}")
    training = build_run(recipe, folder, torch_device, data_dir, echo=click.echo)
    for attach in attachers:
        attach(training)
    training.run()
    click.echo(f"run folder: {folder}")


def main() -> None:
    """Console entry point."""
    cli(prog_name="fmtk")
