"""Temporary folders of one process, named by its number, so that those a process killed with
SIGKILL left behind are known as such and removed by the next one (the standard library only)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def process_running(pid: int) -> bool:
    """Whether this machine runs a process ``pid`` (the writer; or, rarely, a later one given its number);
    True where it cannot ask (not POSIX: Windows' os.kill(pid, 0) would send CTRL_C_EVENT)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's
        return True
    except (ProcessLookupError, OverflowError):  # none; a number no process can have
        return False
    return True


@contextlib.contextmanager
def process_folder(prefix: str) -> Iterator[Path]:
    """A new folder ``<prefix><pid>`` in Python's temporary folder for this process, removed at the
    end; those that processes no longer running left (killed with SIGKILL) are removed first."""
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{prefix}*"):
        pid = stale.name.removeprefix(prefix)
        if pid.isdigit() and not process_running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    folder = base / f"{prefix}{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)  # an earlier process's of this number: gone too
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
