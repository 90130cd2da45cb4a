"""The `fmtk` command: parse, call, print. Only this package uses click and exits.

torch, Ignite and everything that imports them are imported inside the commands: they take
seconds to import, and ``fmtk --help``, ``--version`` and ``fmtk runs`` need neither.
"""

import os
import sys
import traceback
from pathlib import Path

import click

from fmtk.cli import cache, check, export, look, train, tune  # noqa: F401 - each registers its commands on the group
from fmtk.cli.group import cli
from fmtk.errors import print_any_file_name

__all__ = ["cli", "main"]


def main() -> None:
    """Console entry point."""
    print_any_file_name()
    try:
        cli(prog_name="fmtk")
    except OSError as error:
        if not _from_echo(error):
            raise
        # stdout does not take the output (`> /dev/full`, a full disk under `> file`): one line, and
        # stdout sent to /dev/null, where Python's exit writes what it still holds (a second traceback).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        click.echo(f"Error: cannot write the output ({error.strerror or error})", err=True)
        sys.exit(1)


def _from_echo(error: OSError) -> bool:
    """Whether ``error`` was raised writing to stdout through click.echo (its help too)."""
    frames = traceback.extract_tb(error.__traceback__)
    return (
        bool(frames)
        and frames[-1].name == "echo"
        and Path(frames[-1].filename).parent == Path(click.__file__).parent
    )
