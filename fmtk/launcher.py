"""What ``fmtk run`` does: in this process, in ``--nproc-per-node`` spawned ones, or in each
process ``torchrun`` started. Everything a process needs travels as one picklable ``RunRequest``."""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import ignite.distributed as idist
import torch

from fmtk.data.batches import check_global_batch
from fmtk.distributed import (
    choose_backend,
    is_main_process,
    launch,
    process_device,
    quiet_ignite,
    torchrun_world_size,
    under_torchrun,
)
from fmtk.errors import FmtkError, one_line
from fmtk.recipe import Recipe, apply_overrides, apply_preset, load_recipe, recipe_from_config
from fmtk.runfolder import (
    discard_failed_start,
    find_last_checkpoint,
    has_checkpoint,
    make_run_dir,
    read_config,
)
from fmtk.runs import lock_run
from fmtk.training.build import build_run
from fmtk.training.engines import SpeedOptions, resolve_device


@dataclass
class RunRequest:
    """One ``fmtk run`` command: the recipe (by name or file, with overrides) or the run to resume,
    and where and how to train."""

    recipe_name: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    preset: str | None = None  # one of the recipe's presets, applied before the overrides
    config: Path | None = None  # instead of recipe_name: a run's config.json (or its folder) to train again
    resume: Path | None = None
    epochs: int | None = None  # with resume only; a new run's epochs are among the overrides
    data_dir: Path = Path("data")
    output_dir: Path = Path("runs")
    run_dir: Path | None = None
    device: str = "auto"
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    handlers: tuple[str, ...] = ()
    nproc_per_node: int = 1
    backend: str | None = None
    folder_ready: bool = False  # run_dir (or resume) exists and is this run's: made before spawning
    error_dir: str | None = None  # spawned processes write their error here for the launcher to print
    command: str | None = None  # the command line, for config.json

    def recipe(self) -> Recipe:
        if self.resume is not None:
            return recipe_from_config(read_config(self.resume), self.epochs)
        if self.config is not None:
            return apply_overrides(recipe_from_config(read_config(self.config)), self.overrides)
        return apply_overrides(apply_preset(load_recipe(self.recipe_name), self.preset), self.overrides)

    def checkpoint(self) -> Path | None:
        """The last checkpoint to resume from (None: a new run, or a resumed one that has no
        checkpoint of any kind yet, which starts again from the beginning)."""
        if self.resume is None or not has_checkpoint(self.resume):
            return None
        return find_last_checkpoint(self.resume)


def resolve_handler(reference: str) -> Callable:
    """``package.module:function`` → the function (a user's handler that receives the Run)."""
    module_name, colon, attribute = reference.partition(":")
    if not colon or not module_name or not attribute:
        raise FmtkError(f"--handler {reference}: expected package.module:function")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # like `python -m`: modules in the current folder resolve
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise FmtkError(f"--handler {reference}: cannot import {module_name} ({error})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise FmtkError(f"--handler {reference}: {module_name} has no function {attribute}")
    try:
        inspect.signature(function).bind(None)
    except TypeError:
        raise FmtkError(f"--handler {reference}: {attribute} must take one argument, the run") from None
    except ValueError:  # no signature to read (a builtin): let the call tell
        pass
    return function


def train(request: RunRequest) -> None:
    """Carry out ``request`` in as many processes as it asks for; every error is an FmtkError,
    Ctrl-C exits 130 with a line saying how to resume."""
    recipe = request.recipe()  # a bad recipe, override or handler fails here, before any process starts
    for reference in request.handlers:
        resolve_handler(reference)
    device = resolve_device(request.device)
    if under_torchrun() and request.nproc_per_node > 1:
        raise FmtkError("under torchrun, give --nproc-per-node to torchrun, not to fmtk run")
    if request.nproc_per_node > 1 or under_torchrun():
        backend = choose_backend(request.backend, request.device)
        world_size = request.nproc_per_node if request.nproc_per_node > 1 else torchrun_world_size()
        check_global_batch(recipe.batch_size, world_size)  # before any process starts
    elif request.backend is not None:
        raise FmtkError("--backend needs --nproc-per-node 2 or more (or torchrun)")
    if under_torchrun():  # this process is one rank of the group; rank 0 makes the run folder
        launch(_run_or_exit, request, None, backend)
        return
    existed = request.run_dir is not None and Path(request.run_dir).is_dir()  # an empty folder given
    folder = request.resume or make_run_dir(request.output_dir, recipe.name, request.run_dir)
    lock = lock_run(folder)  # for the whole run, before anything is written; refused: nothing touched
    chosen_folder = request.run_dir is not None
    request.run_dir, request.folder_ready = folder, True
    click.echo(f"run folder: {folder}")
    try:
        if request.nproc_per_node > 1:
            from torch.multiprocessing import ProcessExitedException

            with tempfile.TemporaryDirectory(prefix="fmtk-errors-") as errors:
                request.error_dir = errors
                try:
                    launch(_run_or_exit, request, request.nproc_per_node, backend)
                except ProcessExitedException as failure:
                    _echo_first_error(Path(errors))
                    _discard_new_run(request, folder, chosen_folder, existed)
                    sys.exit(failure.exit_code or 1)
        else:
            run_in_process(request, device)
    except Exception:  # noqa: BLE001 - whatever failed, a run folder this command made and that holds no checkpoint goes
        _discard_new_run(request, folder, chosen_folder, existed)
        raise
    except KeyboardInterrupt:
        _interrupted(folder)
    finally:
        lock.close()
    click.echo(f"run folder: {folder}")


def run_in_process(request: RunRequest, device: torch.device) -> None:
    """Build and run the requested run in this process (one rank, or the only process)."""
    recipe = request.recipe()
    attachers = [resolve_handler(reference) for reference in request.handlers]
    folder = request.run_dir
    if not request.folder_ready:  # under torchrun: rank 0 creates the folder and tells the others
        folder = ""
        if is_main_process():
            folder = request.resume or make_run_dir(request.output_dir, recipe.name, request.run_dir)
            click.echo(f"run folder: {folder}")
        folder = Path(idist.broadcast(str(folder), src=0, safe_mode=True))
        request.run_dir = folder  # this process's copy: for the Ctrl-C message
    checkpoint = request.checkpoint()
    restart = request.resume is not None and checkpoint is None
    # The launching process holds the run folder's lock when it made the folder (folder_ready).
    run = build_run(recipe, folder, device, request.data_dir, click.echo, checkpoint, request.speed,
                    command=request.command, restart=restart, take_lock=not request.folder_ready)  # fmt: skip
    for attach in attachers:
        attach(run)
    run.run()


def _run_or_exit(local_rank: int, request: RunRequest) -> None:
    """One of several processes: an error or Ctrl-C is printed once (by rank 0), then every
    process exits with its code, which the launcher passes on."""
    logging.getLogger("ignite").addHandler(logging.NullHandler())
    try:
        with quiet_ignite():
            run_in_process(request, process_device(resolve_device(request.device)))
    except Exception as error:  # noqa: BLE001 - a user's handler or recipe may raise anything
        line = one_line(error)
        if line is None:  # fmtk's own bug: the traceback, through torch's spawn or torchrun
            raise
        if request.error_dir is not None:  # spawned: the launcher prints it
            report = Path(request.error_dir) / f"{idist.get_rank():05d}"
            report.with_suffix(".part").write_text(line)
            report.with_suffix(".part").rename(report)  # whole, even if this process is stopped
        elif is_main_process():
            click.echo(f"Error: {line}", err=True)
            if not request.folder_ready and request.run_dir is not None:  # rank 0 made it here
                _discard_new_run(request, request.run_dir, chosen_folder=True, existed=False)
        sys.exit(1)
    except KeyboardInterrupt:
        # Spawned processes: the launching process says how to resume; under torchrun, rank 0.
        if not request.folder_ready and is_main_process() and request.run_dir is not None:
            _interrupted(request.run_dir)
        sys.exit(130)


def _echo_first_error(errors: Path) -> None:
    # Not printed by rank 0 itself: the first process to fail makes torch's spawn stop the others,
    # rank 0 perhaps before it could print. Each process leaves its error; the lowest rank's is shown.
    reports = sorted(path for path in errors.iterdir() if not path.suffix)
    if reports:
        click.echo(f"Error: {reports[0].read_text()}", err=True)


def _discard_new_run(request: RunRequest, folder: Path, chosen_folder: bool, existed: bool) -> None:
    """A failed start leaves no run folder behind; a resumed run is never removed."""
    if request.resume is None:
        discard_failed_start(folder, existed, chosen_folder)


def _interrupted(folder: Path) -> None:
    if not has_checkpoint(folder):
        click.echo(
            f"interrupted before the first checkpoint; start it again from the beginning with: "
            f"fmtk run --resume {folder}",
            err=True,
        )
        sys.exit(130)
    # The last checkpoint is complete: DiskSaver writes a temporary file and renames it.
    try:
        where = f"the last complete checkpoint is {find_last_checkpoint(folder).name}"
    except FmtkError:
        where = "no last checkpoint was written yet"
    click.echo(f"interrupted: {where}; resume with: fmtk run --resume {folder}", err=True)
    sys.exit(130)
