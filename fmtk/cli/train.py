"""`fmtk run` and `fmtk lr-find`: commands that train (torch is imported inside them)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from fmtk.cli.group import (
    check_output_place,
    check_run_folder,
    cli,
    data_dir_option,
    device_option,
    parse_settings,
    recipe_file_option,
    recipe_with_settings,
    set_option,
    training_options,
)
from fmtk.errors import FmtkError, command

# The fewest steps from which fmtk.lr_finder's valley rule can suggest an LR: it reads none of the
# first tenth, the flat start (a falling loss's first point) and the last 5, and needs a fall of 5.
MIN_STEPS = 12


@cli.command()
@click.argument("recipe_name", metavar="[RECIPE]", required=False)
@click.option(
    "--resume", type=click.Path(path_type=Path), help="Continue this run folder from its last checkpoint."
)
@click.option("--checkpoint", type=click.Choice(["last", "best"]), default="last", show_default=True,
              help="With --resume: go on from the last checkpoint (every state), or from the best one's "
              "weights, a new run with its values (config.json records where it came from).")  # fmt: skip
@click.option("--config", "config", type=click.Path(path_type=Path), metavar="CONFIG_JSON",
              help="Instead of RECIPE: train the recipe of a run's config.json (or run folder) again, "
              "with its values, into a new folder.")  # fmt: skip
@recipe_file_option
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
@click.option("--track", type=click.Choice(["none", "mlflow", "wandb"]),
              help="Also log the run in MLflow ($MLFLOW_TRACKING_URI, else ./mlflow.db) or W&B "
              "(WANDB_MODE=offline: into files); as --set track=NAME.")  # fmt: skip
@click.option("--track-model", is_flag=True, default=None,
              help="With --track: the best checkpoint exported as ONNX at the end (fmtk export), "
              "logged too.")  # fmt: skip
@set_option
@training_options
def run(
    recipe_name: str | None,
    resume: Path | None,
    checkpoint: str,
    config: Path | None,
    recipe_file: Path | None,
    device: str,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    data_dir: Path,
    output_dir: Path,
    run_dir: Path | None,
    preset: str | None,
    track: str | None,
    track_model: bool | None,
    settings: tuple[str, ...],
    handlers: tuple[str, ...],
    precision: str,
    channels_last: bool | None,
    compile_model: bool | None,
    deterministic: bool | None,
    threads: int | None,
    nproc_per_node: int,
    backend: str | None,
) -> None:
    """Train RECIPE (a bundled name or a path to a recipe .py file), then test its checkpoints.

    With --resume RUN_DIR instead of RECIPE, continue that run where its last checkpoint left off
    (with --checkpoint best: a new run from its best checkpoint's weights); with --config
    RUN_DIR/config.json, train that run's recipe and values again in a new folder.
    """
    from fmtk.device import resolve_device
    from fmtk.distributed import under_torchrun
    from fmtk.launcher import RunRequest, train
    from fmtk.pipes import RUN_GOES_ON, outlive_closed_pipes
    from fmtk.recipe_loading import data_root
    from fmtk.runfolder import CONFIG, read_config
    from fmtk.training.engines import SpeedOptions

    outlive_closed_pipes(RUN_GOES_ON)
    given = [f"{name} {value}" for name, value in (("RECIPE", recipe_name), ("--resume", resume),
             ("--config", config)) if value is not None]  # fmt: skip
    if len(given) > 1:
        raise FmtkError(f"{' and '.join(given)}: give one (a RECIPE or --config CONFIG_JSON starts a run, "
                        "--resume RUN_DIR continues one)")  # fmt: skip
    if not given:  # a missing argument: click's usage error (exit 2)
        raise click.UsageError(
            "give a RECIPE or --config CONFIG_JSON to start a run, or --resume RUN_DIR to continue one"
        )
    if recipe_file is not None and recipe_name is not None:
        raise FmtkError(f"--recipe {recipe_file} goes with --resume or --config (a run's recipe file, moved "
                        f"since); to train it, give it as RECIPE: {command('run', recipe_file)}")  # fmt: skip
    if checkpoint == "best":  # a new run: the run's values, from its best checkpoint's weights
        if resume is None:
            raise FmtkError("--checkpoint best goes with --resume RUN_DIR")
        check_run_folder("run --resume", resume)
        config, resume, settings = resume / CONFIG, None, (*settings, f"weights={resume}")
    request = RunRequest(
        recipe_name=recipe_name, config=config, resume=resume, recipe_file=recipe_file,
        output_dir=output_dir, run_dir=run_dir,
        data_dir=data_root(data_dir, resume or config), device=resolve_device(device),
        speed=SpeedOptions(precision, channels_last, compile_model, deterministic, threads),
        handlers=handlers, nproc_per_node=nproc_per_node, backend=backend,
        command=shlex.join(["fmtk", *sys.argv[1:]]),
    )  # fmt: skip
    if resume is not None:
        output_given = (
            click.get_current_context().get_parameter_source("output_dir") is ParameterSource.COMMANDLINE
        )
        folders = [name for name, given in [("--run-dir", run_dir), ("--output-dir", output_given)] if given]
        if folders:
            names = "names" if len(folders) == 1 else "name"
            raise FmtkError(
                f"--resume goes on in {resume} itself; {' and '.join(folders)} {names} a new run's folder"
            )
        own = read_config(resume) if (resume / CONFIG).is_file() else {}  # (else: said below)
        same = {"--track": track == own.get("track"), "--track-model": own.get("track_model") is True}
        changed = [name for name, value in [("--batch-size", batch_size), ("--lr", lr), ("--seed", seed),
                   ("--set", settings), ("--preset", preset), ("--track", track not in (None, "none")),
                   ("--track-model", track_model)] if value and not same.get(name)]  # fmt: skip
        if changed:
            raise FmtkError(
                f"--resume keeps the run's recipe; {', '.join(changed)} cannot change it"
                + ("; --track none goes on without its tracker this time" * (track is not None))
            )
        request.epochs, request.untracked = epochs, track == "none"
        check_run_folder("run --resume", resume)
        source = click.get_current_context().get_parameter_source("nproc_per_node")
        if source is not ParameterSource.COMMANDLINE and not under_torchrun():  # as many as it trained in
            recorded = read_config(resume).get("processes")
            request.nproc_per_node = recorded if isinstance(recorded, int) and recorded >= 1 else 1
    else:
        if preset is not None and config is not None:
            raise FmtkError("--preset with --config: the run's values already hold its preset; use --set")
        request.preset = preset
        request.overrides = parse_settings(settings)
        flags = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "track": track,
                 "track_model": track_model}  # fmt: skip
        flagged = {key: value for key, value in flags.items() if value is not None}
        for key in sorted(flagged.keys() & request.overrides.keys()):
            flag = f"--{key.replace('_', '-')}"
            raise FmtkError(f"{flag} {flagged[key]} and --set {key}={request.overrides[key]} both set {key}; "
                            "give one")  # fmt: skip
        request.overrides.update(flagged)
    train(request, click.echo)


@cli.command("lr-find")
@click.argument("recipe_name", metavar="RECIPE")
@click.option("--preset", metavar="NAME", help="One of the recipe's named presets.")
@set_option
@device_option
@data_dir_option
@click.option(
    "--steps",
    default=100,
    show_default=True,
    type=click.IntRange(min=MIN_STEPS),
    help=f"Optimizer steps at most (of N batches with accumulate_steps=N); {MIN_STEPS} at least, the "
    "fewest from which the valley rule can suggest an LR.",
)
@click.option("--start-lr", default=1e-7, show_default=True, type=float)
@click.option("--end-lr", default=10.0, show_default=True, type=float)
@click.option("--out", type=click.Path(path_type=Path),
              help="PNG file (default: RECIPE_lr_find.png; with --preset, "
              "RECIPE_PRESET_lr_find.png).")  # fmt: skip
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads, as a run's [default: "
              "OMP_NUM_THREADS when set, else half the usable cores]. See "
              "docs/performance.md#threads.")  # fmt: skip
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
    threads: int | None,
) -> None:
    """Train RECIPE's model with the LR rising each step (Ignite's FastaiLRFinder); print the
    suggested LR (fastai's valley rule) and draw the loss against the LR. Writes no run folder and
    no checkpoint."""
    from fmtk.data.images import photo_bars
    from fmtk.device import resolve_device
    from fmtk.lr_finder import MANY_PASSES, MIN_VALLEY_POINTS, find_lr, save_lr_picture
    from fmtk.recipe_loading import data_root
    from fmtk.training.handlers import progress_by_default

    recipe = recipe_with_settings(recipe_name, settings, preset)
    out = out or Path(f"{recipe.name}{f'_{preset}' if preset else ''}_lr_find.png")
    if out.exists():
        raise FmtkError(f"{out} exists; choose another --out (nothing was overwritten)")
    check_output_place("--out", out, ".png")
    with photo_bars(progress_by_default()):  # a photo folder is decoded whole first
        finding = find_lr(
            recipe, data_root(data_dir), resolve_device(device), steps, start_lr, end_lr, threads
        )
    given = [f"--preset {preset}"] * bool(preset) + [f"--set {setting}" for setting in settings]
    title = f"{' '.join([recipe.name, *given])}: LR finder, {finding.steps} steps"
    save_lr_picture(finding, out, title)
    if recipe.fine_tunes:
        click.echo("note: lr-find trains every tensor at one LR; freeze_epochs and backbone_lr_scale act "
                   "in a run only (the suggestion is for lr, the head's)")  # fmt: skip
    if finding.passes > MANY_PASSES:
        batches = f"{finding.train_batches} batch{'es' if finding.train_batches > 1 else ''}"
        click.echo(f"note: the sweep went {finding.passes:.0f} times over the training split ({batches}): on "
                   "so little data its loss falls partly as the model learns it by heart, and the suggestion "
                   "says less of a run")  # fmt: skip
    ended = (
        "then passed 5 times its lowest, where the sweep stopped" if finding.diverged
        else f"stayed under 5 times its lowest up to lr {end_lr:g}"
    )  # fmt: skip
    if finding.suggestion is None:
        click.echo(
            f"no suggestion: the smoothed loss falls over no {MIN_VALLEY_POINTS} steps in a row of those the "
            f"rule reads (it leaves out the first tenth, the flat start and the last 5) between lr "
            f"{start_lr:g} and {end_lr:g} in {finding.steps} steps; give more --steps or a wider range; "
            f"picture: {out}"
        )
        return
    click.echo(
        f"suggested lr: {finding.suggestion:.3g} ({finding.rule} rule: about halfway down the longest fall "
        f"of the smoothed loss, which {ended}); picture: {out}"
    )
