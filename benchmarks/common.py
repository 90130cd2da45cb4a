"""What the benchmark scripts share: a figure with its spread, a subprocess with a time limit and
its last line, a JSON report written whole, the checks of their arguments."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def spread(values: Sequence[float], form: str = "{:.2f}", centre: Callable = statistics.median) -> str:
    """``centre (min–max)`` of ``values``, each written by ``form``; one value alone."""
    if len(values) == 1:
        return form.format(values[0])
    return f"{form.format(centre(values))} ({form.format(min(values))}–{form.format(max(values))})"


def run_limited(
    command: Sequence[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int | None, str, str, float]:
    """``command`` with a time limit: (exit code, or None when the limit stopped it; stdout;
    stderr; seconds). At the limit its whole process group is killed (compile workers, spawned ranks)."""
    started = time.perf_counter()
    with subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            out, err = process.communicate(timeout=max(timeout, 0.1))
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            code = None
    return code, out, err, time.perf_counter() - started


def last_line(text: str) -> str:
    """The last line of ``text`` that is not blank, stripped."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def write_json(path: Path, report: Any) -> None:
    """``report`` as JSON, written whole or not at all (a run cut short keeps the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(report, indent=1) + "\n")
    temporary.replace(path)


def at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low`` (argparse says the error in one line)."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value

    return integer
