"""A training command outlives the reader of its output (fmtk/pipes.py): `fmtk run … | head`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmtk.pipes import GONE


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
    errors = process.stderr.read().decode() if process.stderr else ""
    assert process.wait(timeout=300) == 0, errors
    assert first.startswith(b"train 1077")
    (run_dir,) = (tmp_path / "runs" / "digits_mlp").iterdir()
    results = json.loads((run_dir / "metrics.json").read_text())
    assert results["epochs_run"] == 2 and results["test"]["last"]["accuracy"] > 0.8
    if stderr == "own pipe":
        follow = "; `fmtk runs` shows how far it is, Ctrl-C stops it (resumable)"
        assert errors.splitlines() == [GONE.format(what="run", follow=follow)]


def test_output_read_to_the_end_comes_whole_and_in_order(tmp_path: Path) -> None:
    """Through the relay, stdout and stderr in one pipe (`2>&1 |`) keep every line in the order
    written, the last ones too (passed on at exit)."""
    script = (
        "import sys\n"
        "from fmtk.pipes import outlive_closed_pipes\n"
        "outlive_closed_pipes()\n"
        "for index in range(2000):\n"
        "    print(f'out {index}', flush=True)\n"
        "    print(f'err {index}', file=sys.stderr, flush=True)\n"
        "print('last', end='')\n"
    )
    result = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            check=True, text=True, timeout=60)  # fmt: skip
    expected = [f"{stream} {index}" for index in range(2000) for stream in ("out", "err")] + ["last"]
    assert result.stdout.splitlines() == expected
