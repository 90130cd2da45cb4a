"""The version of fmtk (read by setup.cfg, saved in every checkpoint), and of what it runs on."""

from __future__ import annotations

import platform
from importlib import metadata

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """fmtk's version and those of Python and the libraries a run's figures depend on (config.json)."""
    found = {"fmtk": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "pytorch-ignite"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
