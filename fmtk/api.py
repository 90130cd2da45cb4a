"""fmtk from Python, e.g. a notebook cell: train a recipe in one call, then evaluate and predict with
a run's checkpoints.

    result = fmtk.fit("mnist_dnn", epochs=3, device="cpu", lr=0.05)
    result.history[-1]["valid_accuracy"], result.test["best"]["accuracy"], result.model
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from fmtk.device import resolve_device
from fmtk.errors import FmtkError, as_keywords, command
from fmtk.launcher import given_handlers, interrupted, resolve_handler, resume_command
from fmtk.prediction import answer_images
from fmtk.recipe import Recipe
from fmtk.recipe_loading import data_root, recipe_from_config, resolve_recipe
from fmtk.runfolder import find_last_checkpoint, has_checkpoint, read_config
from fmtk.training.build import build_run
from fmtk.training.engines import SpeedOptions
from fmtk.training.evaluation import (
    Evaluation,
    evaluate_folder,
    evaluate_run,
    load_trained_model,
    tested_model,
)
from fmtk.training.run import Run
from fmtk.training.start import check_epochs_ahead, check_extension, finished_message
from fmtk.values import check_count, check_flags, check_path, check_paths, one_or_more


@dataclass
class Result:
    """What :func:`fit` hands back.

    ``model`` holds the weights of the best checkpoint (``weights == "best"``: the epoch with the
    best valid ``checkpoint_metric``, accuracy by default), as Keras' ``restore_best_weights`` and
    fastai's ``SaveModelCallback`` leave it; the last epoch's weights are in the last checkpoint.
    """

    run_dir: Path
    history: list[dict[str, float]]  # one dict per epoch, the columns of metrics.csv
    test: dict[str, dict[str, float]]  # {"best": {"loss", "accuracy", …}, "last": {…}}
    model: nn.Module
    weights: str  # which checkpoint's weights ``model`` holds: "best"
    results: dict[str, Any]  # everything metrics.json holds
    run: Run  # the engines and handlers, e.g. run.trainer.state

    def __repr__(self) -> str:
        best, last = self.test["best"], self.test["last"]
        return (
            f"Result({self.run_dir}: {len(self.history)} epochs; test accuracy "
            f"{100 * best['accuracy']:.2f}% best checkpoint (epoch {self.results['best_epoch']}), "
            f"{100 * last['accuracy']:.2f}% last; model holds the {self.weights} weights)"
        )


def fit(
    recipe: Recipe | str | Path,
    *,
    device: torch.device | str = "auto",
    data_dir: Path | str | None = None,
    output_dir: Path | str = "runs",
    run_dir: Path | str | None = None,
    handlers: Sequence[Callable[[Run], None] | str] = (),
    quiet: bool = False,
    progress: bool | None = None,
    speed: SpeedOptions | None = None,
    preset: str | None = None,
    **overrides: Any,
) -> Result:
    """Train ``recipe`` (a :class:`Recipe`, a bundled recipe's name or a recipe file's path), test
    its best and last checkpoints, and return a :class:`Result` whose model holds the best weights.

    Args:
        device: a ``torch.device`` or ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        data_dir: the data root (default ``$FMTK_DATA``, else ``data``).
        output_dir: where the run folder is made (``<output_dir>/<recipe>/<YYYYmmdd-HHMMSS>``).
        run_dir: the exact run folder instead (it must not exist or be empty).
        handlers: functions that receive the :class:`~fmtk.training.run.Run` before it starts,
            or ``"module:function"`` references to them (as ``--handler``).
        quiet: print nothing (no epoch lines, no test table, no progress bar).
        progress: a progress bar per epoch; default: in a terminal or Jupyter, unless ``quiet``.
        speed: precision, channels_last, compile, deterministic, threads (default: per device).
        preset: one of the recipe's named presets (``fmtk list`` shows them), before ``overrides``.
        overrides: recipe values, checked like ``--set`` (``epochs=3, lr=0.05, variant="basic"``).

    Returns:
        A :class:`Result`: the run folder, the epochs' rows, the test figures and the model.

    A run stopped by an error or Ctrl-C before its first checkpoint leaves no run folder behind.

    Example::

        result = fmtk.fit("digits_mlp", epochs=3, device="cpu")
        result.test["best"]["accuracy"]
    """
    handlers, named = given_handlers(handlers)
    given = {"preset": preset} if preset is not None else {}
    shown = f"Recipe(name={recipe.name!r}, ...)" if isinstance(recipe, Recipe) else repr(str(recipe))
    more = {**given, **overrides, **({"handlers": named} if handlers else {})}
    arguments = ", ".join([shown, *(f"{k}={v!r}" for k, v in more.items())])
    check_paths(data_dir=data_dir, output_dir=output_dir, run_dir=run_dir)
    check_flags(quiet=quiet, progress=progress)
    with as_keywords():
        recipe, device = resolve_recipe(recipe, preset, overrides), resolve_device(device)
        attachers = [resolve_handler(handler) for handler in handlers]
    _check_speed(speed)
    with as_keywords():
        run = build_run(recipe, run_dir, device, data_dir, None if quiet else print, speed=speed,
                        output_dir=output_dir, progress=False if quiet else progress,
                        command=f"fmtk.fit({arguments})", handlers=attachers)  # fmt: skip
    return _result(run, quiet)


def resume(
    run_dir: Path | str,
    *,
    epochs: int | None = None,
    recipe: Recipe | Path | str | None = None,
    device: torch.device | str = "auto",
    data_dir: Path | str | None = None,
    handlers: Sequence[Callable[[Run], None] | str] = (),
    quiet: bool = False,
    progress: bool | None = None,
    speed: SpeedOptions | None = None,
    track: str | None = None,
) -> Result:
    """Go on with a run killed or interrupted (a crashed notebook kernel, Ctrl-C) from its last
    checkpoint, to exactly the figures of an uninterrupted run, as ``fmtk run --resume RUN_DIR``;
    with ``epochs``, train a finished run on to that many epochs.

    Args:
        run_dir: the run folder.
        epochs: the epochs to reach (default: the run's own).
        recipe: the recipe the run was made with, needed when fmtk cannot load it again: the
            recipe object (one made in Python), or its recipe file where it is now (moved since
            the run); the run's values are applied to it.
        device, data_dir, quiet, progress, speed: as for :func:`fit` (the data root and speed
            options default to the run's own).
        handlers: the handlers the run was made with (their states are in its checkpoint).
        track: ``"none"``: go on without the run's tracker this time (its server down); a later
            resume with it sends the epochs it missed.

    Returns:
        A :class:`Result`, as :func:`fit` gives it, of the whole run.
    """
    handlers, named = given_handlers(handlers)
    check_path("run_dir", run_dir)
    check_paths(data_dir=data_dir)
    check_flags(quiet=quiet, progress=progress)
    if epochs is not None:
        check_count("epochs", epochs)
    _check_speed(speed)
    run_dir = Path(run_dir)
    given = {"epochs": epochs, "handlers": named or None, "track": track}
    arguments = ", ".join(
        [repr(str(run_dir)), *(f"{key}={value!r}" for key, value in given.items() if value)]
    )
    with as_keywords():
        device = resolve_device(device)
        config = read_config(run_dir)
        if track not in (None, "none", config.get("track")):  # its own: nothing to refuse
            raise FmtkError(
                f"track={track!r}: a resumed run keeps its tracker; track='none' goes on without it"
            )
        if (config.get("processes") or 1) > 1:
            again = command("run", "--resume", run_dir)
            processes = config["processes"]
            raise FmtkError(f"{run_dir} trained in {processes} processes: {again} goes on in as many")
        check_epochs_ahead(run_dir, epochs)
        recipe = recipe_from_config(config, epochs, recipe)
        check_extension(run_dir, recipe, epochs)
        finished = finished_message(run_dir, recipe)
        if finished:
            going_on = command("run", "--resume", run_dir, "--epochs", "N")
            with_handlers = f", handlers={named!r}" if named else ""
            said = f"fmtk.resume({str(run_dir)!r}, epochs=N{with_handlers})"
            raise FmtkError(finished.replace(going_on, said))
        attachers = [resolve_handler(handler) for handler in handlers]
        if not has_checkpoint(run_dir):  # killed in its first epoch
            again = command("run", "--resume", run_dir)
            raise FmtkError(f"{run_dir}: no checkpoint yet: {again} starts it again")
        last = find_last_checkpoint(run_dir)
    with as_keywords():
        run = build_run(recipe, run_dir, device, data_root(data_dir, run_dir), None if quiet else print,
                        resume_from=last, speed=speed, progress=False if quiet else progress,
                        command=f"fmtk.resume({arguments})", handlers=attachers,
                        tracked=track != "none")  # fmt: skip
    return _result(run, quiet)


def _no_array(name: str, value: Any) -> None:
    """An array (numpy's, a tensor) is refused in one line that says how to give it: as an image."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype") and not isinstance(value, Image.Image):
        raise FmtkError(
            f"{name}: an array of shape {tuple(shape)}; give image files, folders or PIL images "
            "(PIL.Image.fromarray(array) makes one of a uint8 array: H×W grey, H×W×3 colour)"
        )


def _result(run: Run, quiet: bool) -> Result:
    """Train and test ``run`` (Ignite's own error line left out: the error reaches the caller) and
    hand back what it gave, saying its folder unless ``quiet``."""
    with _ignite_quiet():
        try:
            results = run.run()
        except KeyboardInterrupt as error:  # under its traceback, as fmtk run says it
            folder = run.run_dir  # gone with the start before the first checkpoint, unlike fmtk run's
            said = (
                str(interrupted(folder))
                if folder.is_dir()
                else "interrupted before the first checkpoint; nothing was kept"
            )
            error.add_note(said.replace(resume_command(folder), f"fmtk.resume({str(folder)!r})"))
            raise
    if not quiet:
        print(f"run folder: {run.run_dir}")
    return Result(run.run_dir, list(run.history), results["test"], run.model, "best", results, run)


def _check_speed(speed: Any) -> None:
    if speed is not None and not isinstance(speed, SpeedOptions):
        raise FmtkError(f"speed={speed!r}: expected a fmtk.SpeedOptions, e.g. SpeedOptions(precision='bf16')")


@contextlib.contextmanager
def _ignite_quiet() -> Iterator[None]:
    """Ignite's own log line for an error ("Engine run is terminating due to exception: …") is not
    printed: the error itself reaches the caller."""
    logger = logging.getLogger("ignite")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def evaluate(
    run_dir: Path | str,
    *,
    recipe: Recipe | Path | str | None = None,
    checkpoint: str = "best",
    split: str = "test",
    data_dir: Path | str | None = None,
    folder: Path | str | None = None,
    device: torch.device | str = "auto",
) -> Evaluation:
    """Loss, accuracy, the recipe's metrics, per-class precision/recall/F1 and the confusion matrix
    of a run's checkpoint on a split of its data or on every photo of a new labelled folder.

    Args:
        run_dir: the run folder; or a model file ``fmtk export`` wrote, evaluated on a ``folder``
            on the CPU (the run folder's keywords then left out).
        recipe: the recipe the run was made with, needed when fmtk cannot load it again: the
            recipe object (one made in Python, e.g. with a lambda model), or its recipe file where
            it is now (moved since the run); the run's values are applied to it.
        checkpoint: ``best``, ``last`` or a checkpoint's path.
        split: ``test`` or ``valid``.
        data_dir: the data root (default: the one the run trained on).
        folder: instead of a split, every photo of a labelled folder (class folders, or split
            folders of class folders), as ``fmtk evaluate --folder``; photos that cannot be read are
            left out.
        device: where to evaluate (``auto``, ``cpu``, ``cuda``…).

    Returns:
        An :class:`~fmtk.training.evaluation.Evaluation` (``table()``, ``picture(title)``, ``per_class()``);
        of a folder, a :class:`~fmtk.training.evaluation.FolderEvaluation`, an Evaluation that also
        lists the ``unreadable`` photos, the ``wrong`` ones with the highest loss, the ``near_copies``
        of the run's training photos and the ``accuracy_without_near_copies``.
    """
    check_path("run_dir", run_dir)
    check_paths(data_dir=data_dir, folder=folder)
    if split not in ("test", "valid"):
        raise FmtkError(f"split={split!r}: choose 'test' or 'valid' (the training split is augmented)")
    given = device
    with as_keywords():
        device = resolve_device(device)
    if Path(run_dir).is_file():  # a model file fmtk export wrote
        from fmtk.exported import evaluate_exported, on_the_cpu

        on_the_cpu(run_dir, given, device, recipe=recipe, data_dir=data_dir,
                         checkpoint=None if checkpoint == "best" else checkpoint,
                         split=None if split == "test" else split)  # fmt: skip
        if folder is None:
            raise FmtkError(f"evaluate {run_dir}: an exported model is evaluated on a labelled photo folder: "
                            "give folder=")  # fmt: skip
        with as_keywords():
            return evaluate_exported(Path(run_dir), Path(folder))[1]
    if folder is not None:
        if data_dir is not None:
            raise FmtkError(
                "evaluate: give folder (a labelled photo folder, all of it) or data_dir, not both"
            )
        with as_keywords():
            return evaluate_folder(Path(run_dir), Path(folder), checkpoint, device, recipe)[1]
    data_dir = data_root(data_dir, Path(run_dir))  # by default the run's own, else $FMTK_DATA, else ./data
    with as_keywords():
        return evaluate_run(Path(run_dir), checkpoint, split, data_dir, device, recipe)[2]


def predict(
    run_dir: Path | str,
    images: Sequence[Path | str | Image.Image] | Path | str | Image.Image,
    *,
    recipe: Recipe | Path | str | None = None,
    checkpoint: str = "best",
    top: int = 1,
    device: torch.device | str = "auto",
) -> list[dict[str, Any]]:
    """The most probable classes of images, from a run's checkpoint or an exported model file.

    Args:
        run_dir: a run folder, or a file ``fmtk export`` wrote (``.onnx``, ``.pt``).
        images: image files, folders (their image files, at any depth) or PIL images (named
            ``<image N>``), read as the recipe reads its test images; one, or a list.
        recipe: as for :func:`evaluate`.
        checkpoint: ``best``, ``last`` or a checkpoint's path.
        top: the classes per image.
        device: where the model runs.

    Returns:
        Per image, in order, ``{"file", "predictions": [{"class", "probability"}, ...]}``, or
        ``{"file", "error"}`` for one that cannot be read.
    """
    with as_keywords():
        return list(
            predictions(run_dir, images, recipe=recipe, checkpoint=checkpoint, top=top, device=device)
        )


def predictions(
    run_dir: Path | str,
    images: Sequence[Path | str | Image.Image] | Path | str | Image.Image,
    *,
    recipe: Recipe | Path | str | None = None,
    checkpoint: str = "best",
    top: int = 1,
    device: torch.device | str = "auto",
) -> Iterator[dict[str, Any]]:
    """:func:`predict`'s answers one at a time, in order: each chunk of 256 images is answered as
    soon as it is read, so that a folder of any size shows its first answers at once (``fmtk
    predict`` prints them so)."""
    check_path("run_dir", run_dir)
    _no_array("images", images)
    images = one_or_more(
        images, "images", (str, os.PathLike, Image.Image), "image files, folders or PIL images"
    )
    for index, image in enumerate(images):
        _no_array(f"images[{index}]", image)
        if not isinstance(image, str | os.PathLike | Image.Image):
            raise FmtkError(f"images[{index}]={image!r}: expected an image file, a folder or a PIL image")
    check_count("top", top, what="the classes per image")
    given, device = device, resolve_device(device)  # checked for a model file too: a mistyped one is said
    if Path(run_dir).is_file():
        from fmtk.exported import answer_exported, on_the_cpu

        on_the_cpu(run_dir, given, device, recipe=recipe)
        yield from answer_exported(Path(run_dir), images, top)
        return
    recipe, model, _, classes = load_trained_model(Path(run_dir), checkpoint, device, recipe)
    tested = tested_model(recipe, model)

    def probabilities_of(inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return tested(inputs.to(device)).float().softmax(dim=1).cpu()

    yield from answer_images(images, recipe.input(), probabilities_of, classes, top)
