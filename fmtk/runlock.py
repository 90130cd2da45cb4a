"""The lock that marks a run folder as being trained: an exclusive ``flock`` on the folder itself,
taken before anything is written and released when the process ends (SIGKILL included)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fmtk.errors import FmtkError

try:
    import fcntl
except ImportError:  # Windows: no flock, so no run is ever seen as running
    fcntl = None  # type: ignore[assignment]

_LOCK_TRIES = 10  # × 0.05 s: rides out an `fmtk runs` that holds its shared lock for a moment


class RunLock:
    """An exclusive ``flock`` on a run folder (the directory itself, so it can be taken before any
    file is written), held until :meth:`close` or the end of the process, SIGKILL included."""

    def __init__(self, descriptor: int | None) -> None:
        self.descriptor = descriptor

    def close(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # releases the lock
            self.descriptor = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def lock_run(run_dir: Path) -> RunLock:
    """Mark ``run_dir`` as being trained until the lock is closed or the process ends. Raises
    :class:`FmtkError` naming the holder's pid if another process holds it."""
    try:
        descriptor = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        raise FmtkError(f"{run_dir}: cannot open the run folder ({error.strerror})") from None
    if fcntl is None:
        return RunLock(descriptor)
    for attempt in range(_LOCK_TRIES):
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return RunLock(descriptor)
        except BlockingIOError:
            if attempt < _LOCK_TRIES - 1:
                time.sleep(0.05)
        except OSError:  # a file system without locks (some network mounts): train unguarded
            return RunLock(descriptor)
    os.close(descriptor)
    holder = _lock_holder(run_dir)
    by = f" (pid {holder})" if holder else ""
    raise FmtkError(f"{run_dir} is being trained by another fmtk process{by}; nothing was changed")


def _lock_holder(run_dir: Path) -> int | None:
    """The pid holding a flock on ``run_dir``, from Linux's /proc/locks (None elsewhere)."""
    try:
        inode = os.stat(run_dir).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return int(fields[4])
    return None


def is_running(run_dir: Path) -> bool:
    """Whether a process holds :func:`lock_run`'s lock on ``run_dir`` (always False without fcntl)."""
    if fcntl is None:
        return False
    try:
        descriptor = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)  # closing releases it
    except BlockingIOError:
        return True
    except OSError:  # no locks on this file system
        return False
    finally:
        os.close(descriptor)
    return False
