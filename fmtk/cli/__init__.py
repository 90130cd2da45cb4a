"""The `fmtk` command: parse, call, print. Only this package uses click and exits.

torch, Ignite and everything that imports them are imported inside the commands: they take
seconds to import, and ``fmtk --help``, ``--version`` and ``fmtk runs`` need neither.
"""

from fmtk.cli import cache, check, export, look, train, tune  # noqa: F401 - each registers its commands on the group
from fmtk.cli.group import cli
from fmtk.errors import print_any_file_name

__all__ = ["cli", "main"]


def main() -> None:
    """Console entry point."""
    print_any_file_name()
    cli(prog_name="fmtk")
