"""`fmtk tune`: a hyperparameter search with Optuna, every trial an ordinary run (torch and Optuna
are imported inside it)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from fmtk.cli.group import cli, data_dir_option, device_option, parse_settings, set_option, training_options
from fmtk.errors import FmtkError


@cli.command()
@click.argument("recipe_name", metavar="[RECIPE]", required=False)
@click.option(
    "--trials", type=int, help="Trials to end (complete, pruned or failed); with --resume, the new total."
)
@click.option(
    "--space",
    "spaces",
    multiple=True,
    metavar="KEY=SPEC",
    help="A value to search: loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B,… "
    "(repeatable).",
)
@click.option(
    "--try",
    "tries",
    multiple=True,
    metavar="KEY=VALUE[,KEY=VALUE]",
    help="A trial to run first with these values, e.g. the recipe's own (repeatable).",
)
@click.option(
    "--metric",
    default="accuracy",
    show_default=True,
    help="The valid metric to optimise; a trial's value is its best epoch's (name:min or name:max).",
)
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Stop a trial worse than the median of the finished trials at the same epoch.",
)
@click.option(
    "--prune-after",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Finished trials before any is pruned.",
)
@click.option(
    "--prune-warmup",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="EPOCHS",
    help="A trial's first epochs, never pruned (a warm-up or a slow start).",
)
@click.option("--preset", metavar="NAME", help="One of the recipe's presets, for every trial.")
@click.option("--track", type=click.Choice(["none", "mlflow", "wandb"]),
              help="Also log the study and its trials in MLflow or W&B, as --set track=NAME.")  # fmt: skip
@set_option
@click.option(
    "--study-dir",
    type=click.Path(path_type=Path),
    help="A new or empty study folder [default: OUTPUT_DIR/tune/RECIPE/YYYYmmdd-HHMMSS].",
)
@click.option("--output-dir", type=click.Path(path_type=Path), default="runs", show_default=True)
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    metavar="STUDY_DIR",
    help="Go on with this study (after a kill or Ctrl-C, or with more --trials).",
)
@device_option
@data_dir_option
@training_options
def tune(
    recipe_name: str | None,
    trials: int | None,
    spaces: tuple[str, ...],
    tries: tuple[str, ...],
    metric: str,
    prune: bool,
    prune_after: int,
    prune_warmup: int,
    preset: str | None,
    track: str | None,
    settings: tuple[str, ...],
    study_dir: Path | None,
    output_dir: Path,
    resume: Path | None,
    device: str,
    data_dir: Path | None,
    handlers: tuple[str, ...],
    precision: str,
    channels_last: bool | None,
    compile_model: bool | None,
    deterministic: bool | None,
    threads: int | None,
    nproc_per_node: int,
    backend: str | None,
) -> None:
    """Search values of RECIPE (--space KEY=SPEC) for the best valid --metric with Optuna's TPE
    sampler, each trial an ordinary run folder in the study folder, hopeless ones pruned; at the end
    the best values, best.json and a picture. --resume STUDY_DIR goes on after a kill."""
    from fmtk.tuning import require_optuna
    from fmtk.tuning import tune as tune_recipe

    require_optuna()
    from fmtk.pipes import outlive_closed_pipes
    from fmtk.training.engines import SpeedOptions

    outlive_closed_pipes(
        "the study goes on to its end without printing; Ctrl-C stops it (`fmtk tune --resume "
        "STUDY_DIR` goes on)"
    )

    if recipe_name is not None and resume is not None:
        raise FmtkError(f"RECIPE {recipe_name} and --resume {resume}: give one (a RECIPE starts a study, "
                        "--resume STUDY_DIR goes on with one)")  # fmt: skip
    if recipe_name is None and resume is None:  # a missing argument: click's usage error (exit 2)
        raise click.UsageError("give a RECIPE to start a study, or --resume STUDY_DIR to go on with one")
    if resume is not None:
        given = [name for name, value in (("--space", spaces), ("--try", tries), ("--set", settings),
                 ("--preset", preset), ("--track", track), ("--study-dir", study_dir)) if value]  # fmt: skip
        context = click.get_current_context()
        given += [option for option, name in (("--metric", "metric"), ("--prune/--no-prune", "prune"),
                  ("--prune-after", "prune_after"), ("--prune-warmup", "prune_warmup"))
                  if context.get_parameter_source(name) is ParameterSource.COMMANDLINE]  # fmt: skip
        if given:
            raise FmtkError(f"--resume keeps the study's search; {', '.join(given)} cannot change it")
    space = dict(_key_and_spec(text) for text in spaces)
    if len(space) != len(spaces):
        raise FmtkError("--space: a key is given twice")
    overrides = parse_settings(settings)
    if track is not None:
        if "track" in overrides:
            raise FmtkError(f"--track {track} and --set track={overrides['track']} both set track; give one")
        overrides["track"] = track
    tune_recipe(
        recipe_name, trials=trials, space=space, metric=metric, prune=prune, prune_after=prune_after,
        prune_warmup=prune_warmup, tries=list(tries), preset=preset, resume=resume, study_dir=study_dir,
        output_dir=output_dir, device=device, data_dir=data_dir,
        speed=SpeedOptions(precision, channels_last, compile_model, deterministic, threads),
        nproc_per_node=nproc_per_node, backend=backend, handlers=handlers,
        command=shlex.join(["fmtk", *sys.argv[1:]]) if recipe_name is not None else None,
        **overrides,
    )  # fmt: skip


def _key_and_spec(text: str) -> tuple[str, str]:
    key, equals, spec = text.partition("=")
    if not equals or not key.strip():
        raise FmtkError(f"--space {text}: expected KEY=SPEC, e.g. lr=loguniform:1e-3:1")
    return key.strip(), spec.strip()
