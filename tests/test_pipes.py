"""A training command outlives the reader of its output (fmtk/pipes.py): `fmtk run … | head`."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmtk.pipes import GONE, RUN_GOES_ON


@pytest.mark.parametrize("stderr", ["own pipe", "same pipe"])
def test_a_run_whose_reader_goes_trains_to_its_end(tmp_path: Path, stderr: str) -> None:
    """As `fmtk run … | head -1` (and `2>&1 | head -1`): the reader takes one line and closes the pipe;
    the run was killed at its next line (BrokenPipeError, exit 1) and lost its folder before its first
    checkpoint. Now it trains to the end and says once, on stderr when it can, that it goes on."""
    command = [sys.executable, "-m", "fmtk", "run", "digits_mlp", "--epochs", "2", "--device", "cpu",
               "--output-dir", str(tmp_path / "runs")]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr == "own pipe" else subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    first = process.stdout.readline()
    process.stdout.close()  # the reader goes, as head does
    try:
        errors = (process.communicate(timeout=300)[1] or b"").decode()
    finally:
        process.kill()
    assert process.wait() == 0, errors
    assert first.startswith(b"train 1077")
    (run_dir,) = (tmp_path / "runs" / "digits_mlp").iterdir()
    results = json.loads((run_dir / "metrics.json").read_text())
    assert results["epochs_run"] == 2 and results["test"]["last"]["accuracy"] > 0.8
    if stderr == "own pipe":
        assert errors.splitlines() == [GONE.format(going_on=RUN_GOES_ON)]


def test_output_read_to_the_end_comes_whole_and_in_order(tmp_path: Path) -> None:
    """Through the relay, stdout and stderr in one pipe (`2>&1 |`) keep every line in the order
    written, the last ones too (passed on at exit)."""
    script = (
        "import sys\n"
        "from fmtk.pipes import outlive_closed_pipes\n"
        "outlive_closed_pipes('it goes on')\n"
        "for index in range(2000):\n"
        "    print(f'out {index}', flush=True)\n"
        "    print(f'err {index}', file=sys.stderr, flush=True)\n"
        "print('last', end='')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            check=True, text=True, timeout=60)  # fmt: skip
    expected = [f"{stream} {index}" for index in range(2000) for stream in ("out", "err")] + ["last"]
    assert result.stdout.splitlines() == expected


WRITER = (
    "import sys\n"
    "from fmtk.pipes import outlive_closed_pipes\n"
    "outlive_closed_pipes('it goes on')\n"
    "for index in range(5000):\n"
    "    print(f'line {index:06d} ' + 'x' * 60, flush=True)\n"
    "print('last', flush=True)\n"
)  # 350 KB: more than a pipe holds
SLOW_WRITER = "import time\n" + WRITER.replace(
    "flush=True)\n", "flush=True)\n    time.sleep(0.0005)\n", 1
)  # ~3 s


def test_a_slow_reader_gets_every_line() -> None:
    """The relay waits for a reader that reads late, as a plain write would; it never drops what
    is still to be read (it gave up 5 s after the end, losing the last epochs' lines)."""
    # 100 KB: the process ends its writing at once, the lines held in the relay's pipe and the reader's
    writer = WRITER.replace("range(5000)", "range(1400)")
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE)
    time.sleep(7)
    lines = process.stdout.read().decode().splitlines()
    assert process.wait(timeout=60) == 0
    assert len(lines) == 1401 and lines[-1] == "last"


def test_a_socket_reset_by_its_reader_counts_as_gone(tmp_path: Path) -> None:
    """stdout a TCP socket whose reader closes with data unread (a reset, not EPIPE): the process
    goes on to its end (the relay died of ConnectionResetError and the writer then blocked)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        writer_end = socket.create_connection(server.getsockname())
        reader, _ = server.accept()
        process = subprocess.Popen([sys.executable, "-c", SLOW_WRITER], stdout=writer_end.fileno(),
                                   stderr=subprocess.PIPE)  # fmt: skip
        writer_end.close()
        with reader:
            while b"\n" not in reader.recv(100):
                pass
            time.sleep(0.5)  # more arrives, unread: closing now resets the connection
        try:
            errors = process.communicate(timeout=60)[1].decode()
        finally:
            process.kill()  # (when the relay stopped passing on, the process blocked for good)
        assert process.wait() == 0, errors
    assert errors.splitlines() == [GONE.format(going_on="it goes on")]
