"""The `fmtk` command group: its error handling (every FmtkError and click usage error becomes one
line on stderr and its exit code), the options several commands share, and the helpers they use.

torch, Ignite and everything that imports them are imported inside the commands: they take
seconds to import, and ``fmtk --help``, ``--version`` and ``fmtk runs`` need neither.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fmtk.errors import FmtkError, Interrupted, one_line
from fmtk.runfolder import CONFIG, not_a_run

if TYPE_CHECKING:
    from fmtk.recipe import Recipe


def _one_line(error: click.UsageError) -> click.UsageError:
    """The error without its context, which click shows as one line (``Error: fmtk run: ...``) instead
    of three (usage, "Try --help", the error); bare ``fmtk`` still shows its help."""
    if isinstance(error, click.exceptions.NoArgsIsHelpError) or error.ctx is None:
        return error
    return click.UsageError(f"{error.ctx.command_path}: {error.format_message()}")


class _Command(click.Command):
    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as error:
            if error.ctx is not None or parent is None:
                raise
            # click's parser raises some errors (an option missing its value) without a context
            raise click.UsageError(f"{parent.command_path} {info_name}: {error.format_message()}") from None


class _Group(click.Group):
    command_class = _Command

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:  # fmtk's own options: fmtk --bogus
            raise _one_line(error) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as error:  # a command's options and arguments, an unknown command
            raise _one_line(error) from None
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except KeyboardInterrupt:  # before a command could say more (click: "Aborted!", exit 1)
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as error:  # noqa: BLE001 - a user's code may raise anything; fmtk's own keep their traceback
            line = one_line(error)
            if line is None:
                raise
            if line:  # (an error another process printed already has none)
                click.echo(line if isinstance(error, Interrupted) else f"Error: {line}", err=True)
            sys.exit(getattr(error, "exit_code", 1))


def _stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a scheduler's stop) stops a command as Ctrl-C does: the processes it
    spawned are told as a terminal's Ctrl-C tells them, and a run or study is kept to resume. By
    default it would end this process alone, and its spawned processes would train on, unseen,
    in a folder no longer held."""
    if threading.current_thread() is not threading.main_thread():  # (click's CliRunner in a thread)
        return
    main = os.getpid()

    def stop(number: int, frame: Any) -> None:
        if os.getpid() != main:  # a forked DataLoader worker: as by default
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends it at once
        for child in multiprocessing.active_children():
            os.kill(child.pid, signal.SIGINT)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


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
recipe_file_option = click.option(
    "--recipe", "recipe_file", type=click.Path(path_type=Path), metavar="FILE",
    help="The run's recipe file where it is now, when it moved since the run (config.json names its "
    "old place).",
)  # fmt: skip


def _set_threads(context: click.Context, parameter: click.Parameter, threads: int | None) -> None:
    import torch

    from fmtk.device import inference_threads

    torch.set_num_threads(threads or inference_threads())


# --threads of the commands that only run a model: set when the command line is read.
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), callback=_set_threads, expose_value=False,
    help="CPU threads of torch's operations, photo decoding and onnxruntime [default: OMP_NUM_THREADS when "
    "set, else half the usable cores, as a run's]. See docs/performance.md#threads.",
)  # fmt: skip


def training_options(command: Callable) -> Callable:
    """The options of how a run trains, shared by ``fmtk run`` and ``fmtk tune``: handlers,
    precision, memory format, compile, deterministic kernels, CPU threads, processes and their backend."""
    from fmtk.choices import BACKENDS, PRECISIONS

    options = [
        click.option(
            "--handler",
            "handlers",
            multiple=True,
            metavar="MODULE:FUNCTION",
            help="A function that receives the Run and attaches handlers (repeatable).",
        ),
        click.option(
            "--precision",
            type=click.Choice(["auto", *PRECISIONS]),
            default="auto",
            show_default=True,
            help="auto: bf16 on CUDA (16-mixed without bf16), 32 on the CPU.",
        ),
        click.option(
            "--channels-last/--no-channels-last",
            default=None,
            help="Memory format of conv nets [default: on; off for nets without Conv2d].",
        ),
        click.option(
            "--compile/--no-compile",
            "compile_model",
            default=None,
            help="torch.compile the training step's model [default: off; a resumed run: as it was].",
        ),
        click.option(
            "--deterministic/--no-deterministic",
            default=None,
            help="Deterministic kernels (torch, cuDNN, cuBLAS): a resumed CUDA run ends exactly like an "
            "uninterrupted one [default: off; a resumed run: as it was].",
        ),
        click.option(
            "--threads",
            type=click.IntRange(min=1),
            help="CPU threads of torch's operations [default: half the usable cores; a resumed run: as it "
            "was]. See docs/performance.md#threads.",
        ),
        click.option(
            "--nproc-per-node",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="Train in N processes on this machine (ignite.distributed); a resumed run: as it was.",
        ),
        click.option(
            "--backend", type=click.Choice(BACKENDS), help="nccl or gloo [default: nccl with CUDA]."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fmtk")
def cli() -> None:
    """fmtk: train PyTorch recipes with Ignite engines and handlers."""
    _stop_on_sigterm()
    # Ignite logs "Engine run is terminating due to exception" through Python's last-resort
    # handler; the CLI reports every error itself, in one line.
    ignite_logger = logging.getLogger("ignite")
    if not any(isinstance(handler, logging.NullHandler) for handler in ignite_logger.handlers):
        ignite_logger.addHandler(logging.NullHandler())
    # Pillow warns of a photo over 89 megapixels (a "decompression bomb") in two lines of its own
    # source; fmtk decodes it at the recipe's size, and one over twice that is named as unreadable.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


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
        raise FmtkError(f"fmtk {command} {run_dir}: {not_a_run(run_dir, resuming='--resume' in command)}")


def check_output_place(option: str, path: Path, suffix: str | None = None) -> None:
    """The file an option names can be written once the work is done: its folder exists and is
    writable, it is not a folder itself, and its name ends in ``suffix`` when given (refused before
    anything trains, not after)."""
    if suffix is not None and path.suffix.lower() != suffix:
        raise FmtkError(f"{option} {path}: give a name ending in {suffix}")
    if path.is_dir():
        raise FmtkError(f"{option} {path}: a folder; give a file name")
    if not path.parent.is_dir():
        raise FmtkError(f"{option} {path}: no folder {path.parent}")
    if not os.access(path.parent, os.W_OK):
        raise FmtkError(f"{option} {path}: cannot write it (the folder {path.parent} is not writable)")
    if path.exists() and not os.access(path, os.W_OK):
        raise FmtkError(f"{option} {path}: cannot write it (the file is not writable)")
