"""What ``fmtk run`` does: in this process, in ``--nproc-per-node`` spawned ones, or in each
process ``torchrun`` started. Everything a process needs travels as one picklable ``RunRequest``.

The launcher raises (:class:`~fmtk.errors.FmtkError`, :class:`~fmtk.errors.Interrupted`) and
prints through the ``echo`` it is given; the command line turns both into output and exit codes.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
from fmtk.errors import RESUME_HINT, FmtkError, Interrupted, command, one_line, print_any_file_name
from fmtk.recipe import Recipe, apply_overrides
from fmtk.recipe_loading import recipe_from_config, resolve_recipe
from fmtk.runfolder import (
    CONFIG,
    find_last_checkpoint,
    has_checkpoint,
    read_config,
    run_folder,
)
from fmtk.scratch import process_folder
from fmtk.training.build import assemble_run
from fmtk.training.checkpoints import UnreadableState
from fmtk.training.engines import SpeedOptions
from fmtk.training.start import Start, check_epochs_ahead, check_extension, finished_message
from fmtk.values import one_or_more


@dataclass
class RunRequest:
    """One ``fmtk run`` command: the recipe (by name or file, with its preset and typed overrides),
    a run's config.json to train again, or the run to resume; and where and how to train."""

    recipe_name: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set text and typed flags (epochs=3)
    preset: str | None = None  # one of the recipe's presets, applied before the overrides
    config: Path | None = None  # instead of recipe_name: a run's config.json (or its folder) to train again
    resume: Path | None = None
    untracked: bool = False  # with resume: this start without the run's tracker (--track none)
    recipe_file: Path | None = None  # with config or resume: the run's recipe file where it is now
    epochs: int | None = None  # with resume only; a new run's epochs are among the overrides
    data_dir: Path = Path("data")
    output_dir: Path = Path("runs")
    run_dir: Path | None = None  # the exact folder of a new run; the one made, once it is made
    device: torch.device = torch.device("cpu")
    speed: SpeedOptions = field(default_factory=SpeedOptions)
    handlers: tuple[str | Callable, ...] = ()  # "module:function" or a picklable function of the run
    nproc_per_node: int = 1
    backend: str | None = None
    error_dir: str | None = None  # spawned processes (which train in run_dir) write their error here
    command: str | None = None  # the command line, for config.json

    def recipe(self) -> Recipe:
        """The recipe this request trains (each process loads it itself)."""
        if self.resume is not None:
            return recipe_from_config(read_config(self.resume), self.epochs, self.recipe_file)
        if self.config is not None:
            return apply_overrides(
                recipe_from_config(read_config(self.config), recipe=self.recipe_file, decided=False),
                self.overrides,
            )
        return resolve_recipe(self.recipe_name, self.preset, self.overrides)

    def hold_folder(self, recipe_name: str) -> contextlib.AbstractContextManager[Path]:
        """The run folder this request trains in, made (or the one to resume), locked while it
        trains, and kept on Ctrl-C once its config.json is written (``fmtk run --resume`` starts it
        again; removed before that, as a failed start)."""
        folder = self.resume or self.run_dir
        return run_folder(folder, output_dir=self.output_dir, recipe_name=recipe_name,
                          reuse=self.resume is not None, resumable_with=CONFIG)  # fmt: skip

    def processes_backend(self) -> str | None:
        """The backend of this request's processes (:func:`choose_backend`); None for one process."""
        if self.nproc_per_node > 1 or under_torchrun():
            return choose_backend(self.backend, self.device.type)
        if self.backend is not None:
            raise FmtkError(f"--backend {self.backend} needs --nproc-per-node 2 or more (or torchrun)")
        return None

    def checkpoint(self) -> Path | None:
        """The last checkpoint to resume from (None: a new run, or a resumed one that has no
        checkpoint of any kind yet, which starts again from the beginning)."""
        if self.resume is None or not has_checkpoint(self.resume):
            return None
        try:
            return find_last_checkpoint(self.resume)
        except FmtkError as error:  # it has a best checkpoint only
            best = command("run", "--resume", self.resume, "--checkpoint", "best")
            raise FmtkError(f"{error}; a new run from its best one: {best}") from None


def given_handlers(given: Any) -> tuple[list[str | Callable], list[str]]:
    """The handlers given from Python (one, or a list; :func:`one_or_more`) and their names for the
    recorded command."""
    handlers = one_or_more(given, "handlers", (str,), "functions of the run or 'module:function' names")
    return handlers, [handler_name(handler) for handler in handlers]


def handler_name(handler: str | Callable) -> str:
    """A handler as the recorded command names it: ``module:function`` (also a function of an
    importable module, which ``--handler`` takes as it is), else the function's name."""
    if isinstance(handler, str):
        return handler
    module, name = getattr(handler, "__module__", None), getattr(handler, "__qualname__", "")
    if module not in (None, "__main__") and name.isidentifier():  # not a lambda, a method, a local one
        return f"{module}:{name}"
    return getattr(handler, "__name__", repr(handler))


def resolve_handler(reference: str | Callable) -> Callable:
    """``package.module:function`` → the function (a user's handler that receives the Run); a
    function of the run is returned as it is."""
    if callable(reference):
        return reference
    if not isinstance(reference, str):
        raise FmtkError(f"handlers: {reference!r} is neither a function of the run nor 'module:function'")
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


def train(request: RunRequest, echo: Callable[[str], None] = print) -> None:
    """Carry out ``request`` in as many processes as it asks for. Mistakes raise FmtkError before any
    process starts; Ctrl-C raises :class:`~fmtk.errors.Interrupted` saying how to resume."""
    if request.resume is not None:
        check_epochs_ahead(request.resume, request.epochs)
    recipe = request.recipe()  # a bad recipe, override or handler fails here, before any process starts
    if request.resume is not None:
        check_extension(request.resume, recipe, request.epochs)
    if request.config is not None:  # made again with the speed options (threads…) it recorded
        recorded = read_config(request.config)
        trained_on = recorded.get("device")
        same_type = trained_on is not None and torch.device(trained_on).type == request.device.type
        request.speed = request.speed.carried_on(recorded.get("speed", {}), same_type)
    if request.resume is not None:
        finished = finished_message(request.resume, recipe, handler_words(request.handlers))
        if finished:
            if is_main_process():
                echo(finished)
            return
    attachers = [resolve_handler(reference) for reference in request.handlers]
    if under_torchrun() and request.nproc_per_node > 1:
        raise FmtkError("under torchrun, give --nproc-per-node to torchrun, not to fmtk run")
    backend = request.processes_backend()
    if backend is not None:
        world_size = request.nproc_per_node if request.nproc_per_node > 1 else torchrun_world_size()
        check_global_batch(recipe.batch_size, world_size)  # before any process starts
    if under_torchrun():  # this process is one rank of the group; rank 0 makes the run folder
        launch(run_process, request, None, backend)
        return
    held = request.hold_folder(recipe.name)
    folder = None
    try:
        with held as folder:
            if request.nproc_per_node > 1:
                _spawn(replace(request, run_dir=folder), backend)
            else:
                _run(request, recipe, attachers, folder, echo)
    except KeyboardInterrupt:
        if folder is None:
            raise
        raise interrupted(folder, request.handlers) from None  # after the hold: the folder is kept
    except UnreadableState as error:
        raise FmtkError(f"{error} with: {resume_command(folder, request.handlers)}") from None
    except Exception as error:  # a user's code failed after a checkpoint: the run is kept, to go on
        if folder is not None and not isinstance(error, FmtkError) and folder.is_dir():
            with contextlib.suppress(FmtkError):  # (no last checkpoint yet: nothing to go on from)
                last = find_last_checkpoint(folder).name
                setattr(error, RESUME_HINT, f"the run keeps {last}: resume with: "
                                            f"{resume_command(folder, request.handlers)}")  # fmt: skip
        raise
    echo(f"run folder: {folder}")


def _run(
    request: RunRequest, recipe: Recipe, attachers: list[Callable], folder: Path, echo: Callable[[str], None]
) -> None:
    """Build the requested run in ``folder`` and train it in this process (one rank, or the only one)."""
    start = Start.of(folder, request.device, request.checkpoint())
    run = assemble_run(recipe, start, request.device, request.data_dir, echo, request.speed,
                       command=request.command, handlers=attachers,
                       tracked=not request.untracked)  # fmt: skip
    echo(f"run folder: {folder}")  # once it is assembled: a run that cannot start leaves no folder to name
    run.run()


def _spawn(request: RunRequest, backend: str) -> None:
    """Train in ``request.nproc_per_node`` spawned processes; the first error is raised here."""
    from torch.multiprocessing import ProcessExitedException

    # Named by this process: one a SIGKILL leaves is removed by the next launch (fmtk.scratch).
    with process_folder("fmtk-errors-") as errors, _ctrl_c_passed_on():
        try:
            launch(run_process, replace(request, error_dir=str(errors)), request.nproc_per_node, backend)
        except KeyboardInterrupt:  # the processes were told: what they leave is what the line says
            for process in multiprocessing.active_children():
                process.join(timeout=60)
            raise
        except ProcessExitedException as failure:
            # Not printed by rank 0 itself: the first process to fail makes torch's spawn stop the
            # others, rank 0 perhaps before it could print. Each process leaves its error; the lowest
            # rank's is shown (none: fmtk's own bug, whose traceback the process printed).
            reports = sorted(path for path in errors.iterdir() if not path.suffix)
            if not reports and failure.exit_code == 130:  # Ctrl-C that reached them, not this process
                raise KeyboardInterrupt from None  # (it ignores SIGINT as a script's background job)
            raise FmtkError(
                reports[0].read_text(errors="surrogateescape") if reports else "",
                exit_code=failure.exit_code or 1,
            ) from None


@contextlib.contextmanager
def _ctrl_c_passed_on() -> Iterator[None]:
    """Ctrl-C that reaches the launcher alone (``kill -INT PID``) stops its processes too, as one
    from a terminal, which reaches them all, does (before, they trained on to the end while the
    launcher said the run was interrupted); a launcher that ignores it (a script's background job)
    still ignores it."""
    if (
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        or threading.current_thread() is not threading.main_thread()  # (click's CliRunner)
    ):
        yield
        return

    def pass_on(number: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for process in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGINT)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGINT, pass_on)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _interrupted_once(number: int, frame: Any) -> None:
    """A spawned process's Ctrl-C: the first stops it; later ones (a terminal's reaches it and the
    launcher passes one on) are ignored, so that none breaks into the stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def run_process(local_rank: int, request: RunRequest) -> None:
    """The main function of each of several processes (spawned, or started by torchrun): an error
    or Ctrl-C is printed once (by rank 0), then the process exits with its code, which the
    launcher passes on."""
    logging.getLogger("ignite").addHandler(logging.NullHandler())
    print_any_file_name()
    if request.error_dir is not None:
        _end_with_the_launcher()
    elif under_torchrun():
        _end_with(os.getppid())  # torchrun's agent: killed with SIGKILL, it cannot stop its ranks
    try:
        with quiet_ignite():
            _process_run(replace(request, device=process_device(request.device)))
    except Exception as error:  # noqa: BLE001 - a user's handler or recipe may raise anything
        line = one_line(error)
        if line is None:  # fmtk's own bug: the traceback, through torch's spawn or torchrun
            raise
        if request.error_dir is not None:  # spawned: the launcher prints it
            report = Path(request.error_dir) / f"{idist.get_rank():05d}"
            report.with_suffix(".part").write_text(line, errors="surrogateescape")  # any file name in it
            report.with_suffix(".part").rename(report)  # whole, even if this process is stopped
        elif is_main_process():
            print(f"Error: {line}", file=sys.stderr, flush=True)
        _end(1)
    except KeyboardInterrupt:
        # Spawned processes: the launching process says how to resume; under torchrun, rank 0.
        if request.error_dir is None and is_main_process() and request.run_dir is not None:
            print(interrupted(request.run_dir, request.handlers), file=sys.stderr, flush=True)
        _end(130)


def _end(code: int) -> None:
    """End this rank after an error or Ctrl-C, its files written and closed, without the
    interpreter's teardown: the process group, still held by the run's traceback, would be freed by
    its last collection, where a gloo thread letting go of an unfinished collective dies of
    ``std::terminate`` ("terminate called without an active exception", SIGABRT: the launcher then
    exited 250, not 130; :func:`fmtk.distributed._run_then_free_the_group` says why)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _end_with_the_launcher() -> None:
    """A spawned process stops as the launcher asks and ends when it ends, however it ends (SIGKILL
    too): an orphan would train on, unseen, in a folder no longer held, beside a ``--resume`` of it."""
    # Ctrl-C, or the launcher's SIGTERM passed on, raises KeyboardInterrupt here also when the
    # launcher started with SIGINT ignored (a background job of a script), which spawn passes on.
    signal.signal(signal.SIGINT, _interrupted_once)
    launcher = multiprocessing.parent_process()
    if launcher is not None:
        _end_with(launcher.pid)


def _end_with(parent: int) -> None:
    """This process is killed when process ``parent``, its parent, ends (Linux's PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it ended before this process could ask
        os._exit(1)


def _process_run(request: RunRequest) -> None:
    """One rank's run: spawned processes train in the folder the launcher holds; under torchrun,
    rank 0 makes and holds the folder and tells the others."""
    recipe = request.recipe()
    attachers = [resolve_handler(reference) for reference in request.handlers]
    echo = _print if is_main_process() else _quiet
    if request.error_dir is not None:  # spawned: in the folder the launching process holds
        _run(request, recipe, attachers, request.run_dir, echo)
        return
    if not is_main_process():
        folder = Path(idist.broadcast("", src=0, safe_mode=True))
        _run(replace(request, run_dir=folder), recipe, attachers, folder, echo)
        return
    held = request.hold_folder(recipe.name)
    with held as folder:
        request.run_dir = folder  # this process's copy: for the Ctrl-C message
        idist.broadcast(str(folder), src=0, safe_mode=True)
        _run(request, recipe, attachers, folder, echo)
    echo(f"run folder: {folder}")  # at the end too, as one process and spawned ones say it


def _print(line: str) -> None:
    print(line, flush=True)


def _quiet(line: str) -> None:
    """``echo`` of the processes other than rank 0."""


def resume_command(folder: Path, handlers: Sequence[str | Callable] = ()) -> str:
    """The command that resumes the run in ``folder``, with its ``handlers`` (a resume needs them)."""
    return command("run", "--resume", folder, *handler_words(handlers))


def handler_words(handlers: Sequence[str | Callable]) -> list[str]:
    """``--handler module:function`` for each of ``handlers``, as a command line gives them."""
    return [word for handler in handlers for word in ("--handler", handler_name(handler))]


def interrupted(folder: Path, handlers: Sequence[str | Callable] = ()) -> Interrupted:
    """What Ctrl-C (or a kill) says: how to go on (with the run's ``handlers``, which a resume needs)."""
    if not (folder / CONFIG).is_file():  # the run folder went with the start (run_folder)
        return Interrupted("interrupted before the run began; nothing was kept")
    command = resume_command(folder, handlers)
    if not has_checkpoint(folder):
        return Interrupted(
            f"interrupted before the first checkpoint; start it again from the beginning with: {command}"
        )
    # The last checkpoint is complete: DiskSaver writes a temporary file and renames it.
    try:
        where = f"the last complete checkpoint is {find_last_checkpoint(folder).name}"
    except FmtkError:
        where = "no last checkpoint was written yet"
    return Interrupted(f"interrupted: {where}; resume with: {command}")
