"""Run folders written by earlier releases still resume, evaluate and train again with the current
code: fmtk 0.1.0 before the one-owner refactor (f0ff98d: digits_mlp, 1 epoch, ``--set
schedule=none --set plateau_patience=none``), and the release of 2026-12-04 before the Recipe's
fields were put in labelled sections (the same, with ``--set ema_decay=0.9 --set augment_shift=1``:
an EMA's state in its checkpoint)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import fmtk

FIXTURES = Path(__file__).parent / "fixtures"
RELEASES = {
    "f0ff98d": ("previous_release_run", {}),
    "2026-12-04": ("release_2026_12_04_run", {"ema_decay": 0.9, "augment_shift": 1}),
}


@pytest.mark.parametrize("release", list(RELEASES))
def test_an_old_run_resumes_evaluates_and_trains_again(tmp_path: Path, release: str) -> None:
    folder, more = RELEASES[release]
    old_run = FIXTURES / folder
    run_dir = shutil.copytree(old_run, tmp_path / "old")
    resumed = fmtk("run", "--resume", str(run_dir), "--epochs", "2", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1 from last_checkpoint_1.pt" in resumed.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 2
    config = json.loads((run_dir / "config.json").read_text())
    assert config["schedule"] == "none" and config["plateau_patience"] is None
    assert config["command"].startswith("fmtk run digits_mlp --epochs 1")  # the run's first command

    evaluated = fmtk("evaluate", str(run_dir), "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "digits_mlp, best_checkpoint_" in evaluated.stdout

    again = fmtk("run", "--config", str(old_run / "config.json"), "--output-dir", str(tmp_path / "runs"),
                 "--device", "cpu")  # fmt: skip
    assert again.returncode == 0, again.stderr
    (new_run,) = (tmp_path / "runs" / "digits_mlp").iterdir()
    changed = json.loads((new_run / "config.json").read_text())["changed"]
    assert changed == {"schedule": "none", "plateau_patience": None, **more, "epochs": 1}
