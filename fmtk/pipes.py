"""A training command outlives the reader of its output: ``fmtk run … | head -3`` prints three
lines and the run goes on to its end, instead of dying at its next line (Python's BrokenPipeError,
which click ends with exit code 1) and, before its first checkpoint, taking its folder with it.

Each of stdout and stderr that is a pipe (or a socket) is given to a thread that passes the output
on, waiting for a slow reader as a plain write would; once the reader has gone (or writing to it
fails otherwise) the thread drops the rest and says so once on stderr, when stderr can still be
read. Every writer is covered at once: print, click, tqdm's bars, C code, and the processes a run
spawns, which inherit the descriptors.

Examples:
    .. code-block:: python

        from fmtk.pipes import outlive_closed_pipes

        outlive_closed_pipes("the run goes on to its end without printing")  # first in a long command
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import stat
import sys
import threading

GONE = "fmtk: the reader of this output has gone (a pipe closed, as `| head` does); {going_on}"
RUN_GOES_ON = (
    "the run goes on to its end without printing; `fmtk runs` shows how far it is, Ctrl-C stops it "
    "(resumable)"
)
_relays: list[_Relay] = []


class _Relay(threading.Thread):
    """Copies what is written to one end of its own pipe, which replaces ``descriptors`` (1, 2 or
    both when they are one pipe), to the pipe they were; drops it once that pipe's reader has gone."""

    def __init__(self, descriptors: tuple[int, ...], gone: str) -> None:
        super().__init__(name="fmtk-output", daemon=True)
        self.target = os.dup(descriptors[0])  # where the output went
        self.source, writer = os.pipe()
        for descriptor in descriptors:
            os.dup2(writer, descriptor)
        os.close(writer)
        self.descriptors = descriptors
        self.wake, self.waking = os.pipe()  # stop() writes to it: the thread need not poll
        self.gone, self.gone_line = False, gone

    def run(self) -> None:
        stopping = False
        while True:
            # Once stopping, only what is already written: a DataLoader worker not yet ended still
            # holds the pipe, so its end would not come.
            ready, _, _ = select.select([self.source, self.wake], [], [], 0 if stopping else None)
            if self.wake in ready:
                stopping = True
            if self.source not in ready:
                if stopping:
                    return
                continue
            data = os.read(self.source, 1 << 16)
            if not data:  # no writer left
                return
            self.pass_on(data)

    def pass_on(self, data: bytes) -> None:
        """Write all of ``data``, waiting for the reader as long as it takes; if writing fails (the
        reader gone: EPIPE; a socket reset), drop it and the rest."""
        while data and not self.gone:
            try:
                data = data[os.write(self.target, data) :]
            except BlockingIOError:  # a non-blocking pipe, full: wait until it takes more
                select.select([], [self.target], [])
            except OSError:
                self.gone = True
                if 2 not in self.descriptors:  # else stderr went to the closed pipe too: nobody to tell
                    with contextlib.suppress(OSError):
                        os.write(2, (self.gone_line + "\n").encode())

    def stop(self) -> None:
        """Pass on what is left (as long as the reader takes to read it, as a plain write would
        wait) and give the descriptors back their pipe (at exit)."""
        os.write(self.waking, b"!")
        self.join()
        for descriptor in self.descriptors:
            os.dup2(self.target, descriptor)
        for descriptor in (self.target, self.source, self.wake, self.waking):
            os.close(descriptor)


def _is_pipe(descriptor: int) -> bool:
    try:
        mode = os.fstat(descriptor).st_mode
    except OSError:  # closed
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def outlive_closed_pipes(going_on: str) -> None:
    """Relay stdout and stderr through threads when they are the process's own pipes, so that it
    never sees their reader go (see the module's docstring); once per process, undone at its exit.
    ``going_on`` ends the line that says the reader has gone (``the run goes on …``)."""
    if _relays or sys.stdout is not sys.__stdout__:  # (click's test runner captures the output)
        return
    pipes = [descriptor for descriptor in (1, 2) if _is_pipe(descriptor)]
    if not pipes:
        return
    if len(pipes) == 2 and _same_file(1, 2):  # `2>&1 |`: one relay keeps their lines in order
        groups = [(1, 2)]
    else:
        groups = [(descriptor,) for descriptor in pipes]
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    for descriptors in groups:
        relay = _Relay(descriptors, GONE.format(going_on=going_on))
        relay.start()
        _relays.append(relay)
    atexit.register(_stop_relays)


def _same_file(first: int, second: int) -> bool:
    one, other = os.fstat(first), os.fstat(second)
    return (one.st_dev, one.st_ino) == (other.st_dev, other.st_ino)


def _stop_relays() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    while _relays:
        _relays.pop().stop()
