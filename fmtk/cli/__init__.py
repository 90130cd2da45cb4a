"""The `fmtk` command: parse, call, print. Only this package uses click and exits.

torch, Ignite and everything that imports them are imported inside the commands: they take
seconds to import, and ``fmtk --help``, ``--version`` and ``fmtk runs`` need neither.
"""

import contextlib
import sys

from fmtk.cli import cache, check, export, look, train, tune  # noqa: F401 - each registers its commands on the group
from fmtk.cli.group import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Console entry point."""
    for stream in (sys.stdout, sys.stderr):
        # A file name that is not UTF-8 (a Latin-1 zip unpacked on Linux) prints as the bytes it is, as
        # ls prints it, not as a UnicodeEncodeError in place of the line that names it.
        with contextlib.suppress(AttributeError, ValueError):
            stream.reconfigure(errors="surrogateescape")
    cli(prog_name="fmtk")
