"""The commands that look at recipes and runs: list, show, summary, evaluate, predict, runs (torch
is imported inside the commands that need it)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from fmtk.cli.group import (
    check_output_place,
    check_run_folder,
    checkpoint_option,
    cli,
    data_dir_option,
    device_option,
    recipe_file_option,
    recipe_with_settings,
    set_option,
    threads_option,
)
from fmtk.errors import FmtkError, command
from fmtk.runfolder import BEST, LAST, confusion_name, picture_path

if TYPE_CHECKING:
    import torch

    from fmtk.training.evaluation import FolderEvaluation


@cli.command("list")
@click.option("--archs", is_flag=True, help="torchvision's classification architectures (images' arch).")
def list_recipes(archs: bool) -> None:
    """The bundled recipes, one line each."""
    from fmtk.recipe_loading import bundled_recipe_names, load_recipe

    if archs:
        from fmtk.weights import classification_models

        click.echo(" ".join(classification_models()))
        return
    for name in bundled_recipe_names():
        recipe = load_recipe(name)
        click.echo(f"{name:<12} {recipe.description}")
        for preset, values in recipe.presets.items():
            click.echo(f"{'':<12}   --preset {preset}: {values.description}")


@cli.command()
@click.argument("recipe_name", metavar="RECIPE")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="train", show_default=True)
@click.option("--out", type=click.Path(path_type=Path),
              help="PNG file (default: RECIPE_SPLIT_samples.png, or …_augmented.png).")  # fmt: skip
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
    from fmtk.data.copies import conflicts_line, copies_line
    from fmtk.data.images import others_line, photo_bars
    from fmtk.pictures import are_images, save_new_picture, titled_grid
    from fmtk.recipe_loading import data_root
    from fmtk.training.build import skipped_line
    from fmtk.training.handlers import progress_by_default
    from fmtk.training.parts import load_data, training_mix

    recipe = recipe_with_settings(recipe_name, settings, preset)
    if augmented and split != "train":
        raise FmtkError(f"--augmented shows the training split; --split {split} is never augmented")
    named = f"{recipe.name}_{preset}" if preset else recipe.name  # (a preset's own file)
    out = out or Path(f"{named}_{split}_{'augmented' if augmented else 'samples'}.png")
    if out.exists():
        raise FmtkError(f"{out} exists; choose another --out (nothing was overwritten)")
    check_output_place("--out", out, ".png")  # before the data is loaded
    with photo_bars(progress_by_default()):  # a photo folder is decoded whole first
        data = load_data(recipe, data_root(data_dir), torch.device("cpu"))
    if not all(isinstance(getattr(data, name), TensorBatches) for name in ("train", "valid", "test")):
        raise FmtkError(f"fmtk show needs in-memory TensorBatches splits; {recipe.name} has other ones")
    mixer = training_mix(recipe, data, torch.device("cpu"))
    if augmented and not (data.train.augmentation.active or mixer is not None):
        augmenting = [name for name, values in recipe.presets.items() if _augments(values.values)]
        presets = f", or give --preset {' / '.join(augmenting)}" if augmenting and not preset else ""
        raise FmtkError(
            f"--augmented: {recipe.name}{f' --preset {preset}' if preset else ''} augments nothing; "
            f"set augment_*, mixup_alpha or cutmix_alpha{presets}"
        )
    # What a run of it says of its files (show writes no run: no config.json lists them)
    lines = (
        skipped_line(data.skipped, recorded=False),
        others_line(data.others),
        copies_line(data.near_copies, recorded=False),
        conflicts_line(data.conflicts, recorded=False),
    )
    for line in filter(None, lines):
        click.echo(line)
    for name in ("train", "valid", "test"):
        counts = torch.bincount(getattr(data, name).labels, minlength=len(data.classes)).tolist()
        click.echo(f"{name:<6}" + "  ".join(f"{c}: {n}" for c, n in zip(data.classes, counts, strict=True)))
    batches = getattr(data, split)
    if not are_images(batches.images):
        shape = "×".join(map(str, batches.images.shape[1:]))
        raise FmtkError(f"recipe {recipe.name}: its samples are not images (each is {shape}): nothing to "
                        "draw")  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(batches.labels), generator=generator)[:count]
    titles = [data.classes[int(label)] for label in batches.labels[chosen]]
    images = batches.images[chosen]
    if augmented:
        images, labels = next(iter(batches.take(chosen)))
        if mixer is not None:  # mixed among the samples shown, as training mixes a batch
            images, targets = mixer(images, labels, epoch=1, batch=0)
            titles = [mixed_title(target, data.classes) for target in targets]
        images = batches.unscaled(images)  # their colours, not the normalised values'
    save_new_picture(titled_grid(images, titles, columns=8), out)
    asked = (
        click.get_current_context().get_parameter_source("count") == click.core.ParameterSource.COMMANDLINE
    )
    shown = f" (all {len(chosen)} samples of the {split} split{f', not {count}' if asked else ''})"
    click.echo(f"wrote {out}{shown if len(chosen) < count else ''}")


AUGMENTING = ("augment_flip", "augment_crop", "augment_shift", "augment_erase", "mixup_alpha", "cutmix_alpha")


def _augments(values: dict[str, object]) -> bool:
    """Whether a preset's values turn any augmentation on."""
    return any(values.get(key) for key in AUGMENTING)


def mixed_title(target: torch.Tensor, classes: Sequence[str]) -> str:
    """A mixed sample's title: its two classes with their shares of its target, one per line."""
    shares, indices = target.topk(min(2, len(target)))
    parts = zip(shares.tolist(), indices.tolist(), strict=True)
    return "\n".join(f"{classes[index]} {share:.0%}" for share, index in parts if share >= 0.005)


@cli.command()
@click.argument("recipe_name", metavar="RECIPE")
@click.option("--preset", metavar="NAME", help="One of the recipe's named presets.")
@set_option
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Data whose values the model depends on (the images recipe: the photo folder, whose "
              "classes size its head); a recipe without image_input is summarised on a batch of its data "
              "[default there: $FMTK_DATA, else ./data].")  # fmt: skip
def summary(recipe_name: str, preset: str | None, settings: tuple[str, ...], data_dir: Path | None) -> None:
    """The model's layers with output shapes and parameter counts, and the totals."""
    import torch

    from fmtk.recipe_loading import data_root
    from fmtk.summary import format_summary
    from fmtk.training.parts import load_data, with_data

    recipe = recipe_with_settings(recipe_name, settings, preset)
    on_data = recipe.image_input is None  # the input's shape is that of its data's samples
    if data_dir is not None or on_data:
        recipe = with_data(recipe, data_root(data_dir))
    model = recipe.call("model")  # first: a model that cannot be made is the only line
    if on_data:
        x, _ = next(iter(load_data(recipe, data_root(data_dir), torch.device("cpu")).valid))
        input_shape = tuple(x.shape[1:])
    else:
        input_shape = recipe.input().shape
    if data_dir is None and not on_data and recipe.from_data is not None:
        click.echo(f"note: {recipe.name} sets some values from its data (from_data); without --data-dir "
                   "the model is made with the values given (the recipe's own, or --set)",
                   err=True)  # fmt: skip
    click.echo(f"{recipe.name}: {recipe.description}")
    click.echo(format_summary(model, input_shape))


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR|MODEL_FILE", type=click.Path(path_type=Path))
@checkpoint_option
@click.option("--split", type=click.Choice(["test", "valid"]), help="Of the run's data  [default: test].")
@data_dir_option
@click.option("--folder", type=click.Path(path_type=Path),
              help="A labelled photo folder (class folders, or split folders of class folders), evaluated "
              "whole; its classes are the run's or some of them.")  # fmt: skip
@recipe_file_option
@device_option
@threads_option
def evaluate(
    run_dir: Path,
    checkpoint: str,
    split: str | None,
    data_dir: Path | None,
    folder: Path | None,
    recipe_file: Path | None,
    device: str,
) -> None:
    """Loss, accuracy, per-class precision, recall and F1 and the confusion matrix of a run's
    checkpoint on a split of its data, or on every photo of a new labelled --folder.

    On the run's own data it writes confusion_<checkpoint>.png (…_valid.png for the valid split) to
    the run folder and its TensorBoard. On other data (--folder, or a --data-dir that is not the
    run's) it writes to a new folder RUN_DIR/evaluations/<data>-<checkpoint>/: confusion.png and,
    with --folder, evaluation.json and the wrong predictions with the highest loss (top_losses.png
    and .csv, naming the files); photos that cannot be read are listed, and the exit status is 1.

    A model file that fmtk export wrote (.onnx, .pt) is evaluated on a --folder, on the CPU, each
    photo read as the file says; it writes to a new folder evaluations/<file>-<folder>/ beside it.
    """
    from fmtk.device import resolve_device

    if _model_file("evaluate", run_dir, checkpoint=checkpoint, split=split, data_dir=data_dir,
                   recipe_file=recipe_file):  # fmt: skip
        if folder is None:
            raise FmtkError(f"fmtk evaluate {run_dir}: an exported model is evaluated on a labelled photo "
                            "folder: give --folder PHOTOS")  # fmt: skip
        from fmtk.exported import on_the_cpu

        on_the_cpu(run_dir, device, resolve_device(device))
        evaluate_model_file(run_dir, folder)
        return
    check_run_folder("evaluate", run_dir)
    if folder is not None:
        if split is not None or data_dir is not None:
            raise FmtkError(
                "--folder is evaluated whole, from its own photos: give it without --split and --data-dir"
            )
        evaluate_new_folder(run_dir, folder, checkpoint, resolve_device(device), recipe_file)
    else:
        evaluate_split(run_dir, checkpoint, split or "test", data_dir, resolve_device(device), recipe_file)


def evaluate_split(
    run_dir: Path,
    checkpoint: str,
    split: str,
    data_dir: Path | None,
    device: torch.device,
    recipe_file: Path | None = None,
) -> None:
    """``fmtk evaluate`` on a split of the run's data, or of the same recipe's data at ``data_dir``."""
    import numpy as np
    from torch.utils.tensorboard import SummaryWriter

    from fmtk.recipe_loading import data_root
    from fmtk.runfolder import TRAIN_FINGERPRINTS, new_evaluation_dir, read_config
    from fmtk.training.evaluation import NotTheRunsData, evaluate_run

    root = data_root(data_dir, run_dir)
    recorded = read_config(run_dir).get("data_dir")
    own = data_dir is None or (isinstance(recorded, str) and Path(recorded) == root.resolve())
    photos = root.is_dir() and (run_dir / TRAIN_FINGERPRINTS).is_file()  # a folder of a photo run's kind
    whole = f"to score every photo of a folder: {command('evaluate', run_dir, '--folder', root)}"
    try:
        recipe, path, result = evaluate_run(run_dir, checkpoint, split, root, device, recipe_file)
    except NotTheRunsData:  # its line says what to do instead
        raise
    except FmtkError as error:
        raise FmtkError(str(error) if own or not photos else f"{error}; {whole}") from None
    said = f" ({whole})" if photos else ""
    click.echo(f"{recipe.name}, {path.name}, {split} split" + ("" if own else f" of {root}{said}"))
    click.echo(result.table())
    stem = confusion_name(checkpoint if checkpoint in (BEST, LAST) else path.stem, split)
    if not own:  # never over the pictures of the run's own data
        place = new_evaluation_dir(run_dir, f"{root.resolve().name}-{stem.removeprefix('confusion_')}")
        result.picture(f"{recipe.name}: {path.name}, {split} split of {root}").save(place / "confusion.png")
        click.echo(f"wrote {place / 'confusion.png'}")
        return
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


def evaluate_new_folder(
    run_dir: Path, folder: Path, checkpoint: str, device: torch.device, recipe_file: Path | None = None
) -> None:
    """``fmtk evaluate --folder``: every photo of ``folder``, the results in a new evaluations folder."""
    from fmtk.data.images import photo_bars
    from fmtk.training.evaluation import evaluate_folder
    from fmtk.training.handlers import progress_by_default

    _writable(run_dir)
    with photo_bars(progress_by_default()):
        recipe, result = evaluate_folder(run_dir, folder, checkpoint, device, recipe_file)
    which = checkpoint if checkpoint in (BEST, LAST) else result.checkpoint.stem
    _folder_results(result, recipe.name, run_dir, f"{folder.resolve().name}-{which}")


def evaluate_model_file(path: Path, folder: Path) -> None:
    """``fmtk evaluate MODEL_FILE --folder``: as of a run, the results in ``evaluations/`` beside the file."""
    from fmtk.data.images import photo_bars
    from fmtk.exported import evaluate_exported
    from fmtk.training.handlers import progress_by_default

    _writable(path.parent)
    with photo_bars(progress_by_default()):
        metadata, result = evaluate_exported(path, folder)
    _folder_results(result, str(metadata.get("recipe", path.stem)), path.parent,
                    f"{path.name}-{folder.resolve().name}")  # fmt: skip


def _writable(parent: Path) -> None:
    """Where a folder's evaluation goes can be written: said before its photos are evaluated."""
    place = parent / "evaluations"
    if place.exists() and not place.is_dir():
        raise FmtkError(
            f"cannot write the evaluation into {place}: a file, not a folder (nothing was evaluated)"
        )
    if not os.access(place if place.is_dir() else parent, os.W_OK):
        raise FmtkError(f"cannot write the evaluation into {place}: {place if place.is_dir() else parent} is "
                        "not writable (nothing was evaluated)")  # fmt: skip


def _folder_results(result: FolderEvaluation, recipe_name: str, parent: Path, name: str) -> None:
    """A folder's evaluation said (its table, the files left out, the near copies) and written to a
    new folder ``parent/evaluations/name[-N]``; photos that could not be read: the exit status 1."""
    from fmtk.data.images import BadImages, others_line
    from fmtk.runfolder import new_evaluation_dir

    if result.others:
        click.echo(others_line(result.others))
    click.echo(f"{recipe_name}, {result.checkpoint.name}, {result.photos} photos of {result.folder}")
    click.echo(result.table())
    if result.near_copies:
        click.echo(result.copies_line())
    place = new_evaluation_dir(parent, name)
    try:
        result.write(place, recipe_name)
    except OSError as error:
        raise FmtkError(f"{place}: cannot write the evaluation ({error.strerror})") from None
    click.echo(f"wrote {place}")
    if result.unreadable:
        total = result.photos + len(result.unreadable)
        raise BadImages(result.unreadable, total, place / "evaluation.json", verb="read (left out)")


@cli.command()
@click.argument("run_dir", metavar="RUN_DIR|MODEL_FILE", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@checkpoint_option
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1), help="Classes per image.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@recipe_file_option
@device_option
@threads_option
def predict(
    run_dir: Path,
    images: tuple[Path, ...],
    checkpoint: str,
    top: int,
    as_json: bool,
    recipe_file: Path | None,
    device: str,
) -> None:
    """The predicted class and its probability for each IMAGE (PNG/JPEG, any mode and size; a folder:
    its image files), from a run folder's checkpoint or from a model file that fmtk export wrote
    (.onnx, .pt). Images that cannot be read are named at the end, and the exit status is 1."""
    from fmtk.api import predictions
    from fmtk.data.image_input import listed_files
    from fmtk.data.images import others_line
    from fmtk.prediction import unreadable

    if not _model_file("predict", run_dir, checkpoint=checkpoint):
        check_run_folder("predict", run_dir)
    files, others = listed_files(images)  # the folders walked once: predictions() gets their files
    left_out = others_line([str(path) for path in others])
    if left_out is not None:  # as a run and evaluate --folder say it (on stderr: --json stays JSON)
        click.echo(left_out, err=True)
    results, told = [], False
    answers = predictions(run_dir, files, recipe=recipe_file, checkpoint=checkpoint, top=top, device=device)
    for result in answers:
        classes = len(result.get("predictions", []))
        if 0 < classes < top and not told:  # once: the model has fewer classes than asked for
            click.echo(
                f"--top {top}: the model has {classes} classes; each image shows all {classes}", err=True
            )
            told = True
        results.append(result)
        if "predictions" in result and not as_json:  # as it comes: a large folder's first at once
            guesses = "  ".join(f"{p['class']} {p['probability']:.3f}" for p in result["predictions"])
            click.echo(f"{result['file']}: {guesses}")
    if as_json:
        click.echo(json.dumps(results, indent=2, ensure_ascii=False))  # a name as it is: chats égarés
    bad = unreadable(results)
    if bad is not None:  # after every answer: one bad photo costs its own only
        raise bad


RUN_OPTIONS = {"checkpoint": "--checkpoint", "split": "--split", "data_dir": "--data-dir",
               "recipe_file": "--recipe"}  # fmt: skip


def _model_file(command: str, path: Path, **given: Any) -> bool:
    """Whether ``path`` names a model file fmtk export wrote (a file, or a missing one of its
    suffixes: one line); a run folder's options ``given`` on the command line are refused with one."""
    from fmtk.exported import SUFFIXES

    if not (path.is_file() or (path.suffix in SUFFIXES and not path.is_dir())):
        return False
    if not path.is_file():
        raise FmtkError(f"fmtk {command} {path}: no such model file")
    context = click.get_current_context()
    for name in given:
        if context.get_parameter_source(name) is ParameterSource.COMMANDLINE:
            raise FmtkError(f"{RUN_OPTIONS[name]} goes with a run folder; {path} is an exported model: it "
                            "holds the weights it was exported from and its image preparation")  # fmt: skip
    return True


def _sort_key(context: click.Context, parameter: click.Parameter, key: str) -> str:
    from fmtk.runs import JSON_SORT_KEYS, SORT_KEYS, unknown_sort_key

    if JSON_SORT_KEYS.get(key, key) not in SORT_KEYS:  # a usage error (exit 2), before any folder is read
        raise click.BadParameter(unknown_sort_key(key))
    return key


@cli.command()
@click.argument("folders", metavar="[FOLDER]...", nargs=-1, type=click.Path(path_type=Path))
@click.option("--sort", "sort_key", default="run", show_default=True, metavar="COLUMN", callback=_sort_key,
              help="run, recipe, preset, changed, epochs, best_valid_acc, test_acc_best, test_acc_last, "
              "train_seconds, device, state or started (newest first).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: one object per run.")
@click.option("--curves", type=click.Path(path_type=Path), metavar="FILE.png",
              help="Also draw the runs' valid loss and accuracy per epoch, one colour each (the first "
              "10 in the table's order), into this new PNG file.")  # fmt: skip
def runs(folders: tuple[Path, ...], sort_key: str, as_json: bool, curves: Path | None) -> None:
    """The runs under each FOLDER (default ./runs; a run folder is itself) as one table: recipe,
    changed values, epochs, best valid accuracy, test accuracy of the best and last checkpoints,
    training time, state; with --curves, their learning curves in one picture."""
    from fmtk.runs import find_run_dirs, format_runs_table, read_run, runs_as_json, sort_runs

    whole_paths = len(folders) > 1  # each run's path as typed: two folders may hold the same names
    roots = folders or (Path("runs"),)
    found = {}  # a run folder named twice (a folder and one of its runs) is listed once
    for root in roots:
        for run_dir in find_run_dirs(root):
            found.setdefault(run_dir.resolve(), (read_run(run_dir, root, whole_paths), run_dir))
    folder_of = {id(row): run_dir for row, run_dir in found.values()}
    rows = sort_runs([row for row, _ in found.values()], sort_key)
    drawn = None
    if curves is not None:  # first: a reader that has gone (`| head`) cannot cost the picture
        drawn = _draw_curves([(row, folder_of[id(row)]) for row in rows], curves, shorten=whole_paths)
    if as_json:
        click.echo(runs_as_json(rows))
    elif not rows:
        click.echo(f"no runs under {', '.join(map(str, roots))}")
    else:
        click.echo(format_runs_table(rows))
    if drawn is not None:  # (with --json, on stderr: stdout is the JSON alone)
        shown = f": {drawn} of the table's {len(rows)} runs" if len(rows) > drawn else ""
        click.echo(f"wrote {curves}{shown}", err=as_json)


def _draw_curves(runs: list[tuple[dict, Path]], out: Path, shorten: bool) -> int:
    """``fmtk runs --curves``: the curves of the readable runs (row, folder) with a finished epoch,
    the first as many as there are colours, named as in the table (with ``shorten``, without the
    folders all share); a run left out for another reason
    than the count is said on stderr. How many."""
    from fmtk.pictures import LINE_COLOURS, runs_curves_picture, save_new_picture
    from fmtk.runs import read_curves

    histories = {}
    for row, folder in runs:
        if row["error"] is not None or len(histories) == len(LINE_COLOURS):
            continue
        try:
            history = read_curves(folder)
        except FmtkError as error:  # a finished run whose metrics.csv was damaged since
            click.echo(f"{row['run']}: {error}; left out of --curves", err=True)
            continue
        if not any(
            math.isfinite(epoch[key]) for epoch in history for key in ("valid_loss", "valid_accuracy")
        ):
            click.echo(f"{row['run']}: no finished epoch with finite figures; left out of --curves", err=True)
            continue
        name = row["run"]
        histories[f"{name} ({row['preset']})" if row["preset"] else name] = history  # as the table tells them
    if not histories:
        raise FmtkError(f"--curves {out}: no run with a finished epoch to draw")
    title = f"valid loss and accuracy of {len(histories)} run{'s' if len(histories) > 1 else ''}"
    picture = runs_curves_picture(_shortened(histories) if shorten else histories, title)
    save_new_picture(picture, out, "--curves")
    return len(histories)


def _shortened(histories: dict[str, list]) -> dict[str, list]:
    """The runs' names without the folders all of them share (absolute paths make wide legends)."""
    parts = [Path(name).parts for name in histories]
    shared = 0
    while all(len(one) > shared + 1 and one[shared] == parts[0][shared] for one in parts):
        shared += 1
    return {Path(*Path(name).parts[shared:]).as_posix(): history for name, history in histories.items()}
