"""Hyperparameter search with Optuna (``fmtk tune``, :func:`tune`): every trial an ordinary run.

Optuna is an optional dependency (``pip install "fmtk[tune]"``); this module imports it only
when a search starts, so that its absence is one line naming what to install.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fmtk.errors import FmtkError
from fmtk.values import check_paths, one_or_more

if TYPE_CHECKING:
    import torch

    from fmtk.training.engines import SpeedOptions
    from fmtk.tuning.report import StudyResult

PACKAGES = {"optuna": "optuna", "optuna_integration": "optuna-integration"}  # module: distribution


def require_optuna() -> None:
    """One line naming the ``pip install`` to run when Optuna or its Ignite integration is missing."""
    missing = [package for module, package in PACKAGES.items() if not _installed(module)]
    if missing:
        raise FmtkError(f"fmtk tune needs {', '.join(missing)}: pip install {' '.join(PACKAGES.values())}")


def _installed(module: str) -> bool:
    if module in sys.modules:  # (optuna_integration, once imported, has no __spec__ for find_spec)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def tune(
    recipe: str | Path | None = None,
    *,
    trials: int | None = None,
    space: Mapping[str, str | Sequence[Any]] | None = None,
    metric: str = "accuracy",
    prune: bool = True,
    prune_after: int = 5,
    prune_warmup: int = 0,
    tries: Sequence[Mapping[str, Any]] = (),
    preset: str | None = None,
    resume: Path | str | None = None,
    study_dir: Path | str | None = None,
    output_dir: Path | str = "runs",
    device: torch.device | str = "auto",
    data_dir: Path | str | None = None,
    speed: SpeedOptions | None = None,
    nproc_per_node: int = 1,
    backend: str | None = None,
    handlers: Sequence[str | Callable] = (),
    quiet: bool = False,
    command: str | None = None,
    **overrides: Any,
) -> StudyResult:
    """Search ``space`` (``{key: "loguniform:1e-3:1"}``; a list is a choice) for the values of
    ``recipe`` (a bundled name or a recipe file) with the best valid ``metric``, in ``trials``
    ordinary runs, each pruned when hopeless (``prune``, after ``prune_after`` finished trials and
    never in a trial's first ``prune_warmup`` epochs); ``tries``: values to try first (e.g. the
    recipe's own; a mapping, or ``"key=value,key=value"`` text). ``resume``: a study folder to go on
    with (``trials``: its new total). ``overrides`` set recipe values for every trial, as in
    :func:`fmtk.fit` (``--set`` text is parsed). ``fmtk tune`` is this function.

    Args:
        recipe: a bundled recipe's name or a recipe file (each trial loads it again).
        trials: the trials to end (complete, pruned or failed); with ``resume``, the new total.
        space: the values to search, ``{key: spec}``.
        metric: the valid metric to optimise (``name``, ``name:min`` or ``name:max``).
        device, data_dir, speed, nproc_per_node, backend, handlers: as for ``fmtk run``.
        quiet: print nothing; command: the command line recorded (``fmtk tune`` gives its own).

    Returns:
        The best values and the table of trials (:class:`~fmtk.tuning.report.StudyResult`).
    """
    require_optuna()
    from fmtk.device import resolve_device
    from fmtk.launcher import RunRequest, given_handlers
    from fmtk.recipe import Recipe
    from fmtk.training.engines import SpeedOptions
    from fmtk.tuning.pruning import Pruning
    from fmtk.tuning.study import StudyRequest, tune_study

    if isinstance(recipe, Recipe):
        raise FmtkError("tune(recipe=Recipe(...)): give the recipe's name or file, which each trial loads")
    if (recipe is None) == (resume is None):
        raise FmtkError("give a recipe to start a study, or resume= a study folder to go on with")
    if speed is not None and not isinstance(speed, SpeedOptions):
        raise FmtkError(f"speed={speed!r}: expected a fmtk.SpeedOptions")
    check_paths(recipe=recipe, resume=resume, study_dir=study_dir, output_dir=output_dir, data_dir=data_dir)
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int)):
        raise FmtkError(f"--trials {trials!r}: expected a whole number (the trials to end)")
    if space is not None and not isinstance(space, Mapping):
        example = "{'lr': 'loguniform:1e-3:1'}"
        raise FmtkError(f"space={space!r}: expected a mapping {{key: spec}}, e.g. {example}")
    tries = one_or_more(tries, "tries", (str, Mapping), "mappings or 'key=value,key=value' texts")
    for index, values in enumerate(tries):
        if not isinstance(values, str | Mapping):
            raise FmtkError(f"tries[{index}]={values!r}: expected a mapping or 'key=value,key=value' text")
    request = None
    if recipe is not None:
        if trials is None:
            raise FmtkError("--trials N: how many trials to run")
        request = StudyRequest(
            os.fspath(recipe),
            dict(space or {}),
            trials,
            metric,
            preset,
            dict(overrides),
            tries,
            Pruning(prune, prune_after, prune_warmup),
            command=command,
        )
    elif trials is not None:
        request = StudyRequest("", {}, trials)  # only its number of trials is read
    run = RunRequest(
        device=resolve_device(device),
        speed=speed or SpeedOptions(),
        handlers=tuple(given_handlers(handlers)[0]),
        nproc_per_node=nproc_per_node,
        backend=backend,
    )
    return tune_study(
        request,
        resume=Path(resume) if resume is not None else None,
        study_dir=Path(study_dir) if study_dir is not None else None,
        output_dir=Path(output_dir),
        run=run,
        data_dir=Path(data_dir) if data_dir is not None else None,
        echo=(lambda line: None) if quiet else print,
    )
