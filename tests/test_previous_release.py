"""A run folder written by the previous release (fmtk 0.1.0 before the one-owner refactor: digits_mlp,
1 epoch, ``--set schedule=none --set plateau_patience=none``) still resumes, evaluates and trains
again with the current code: its config.json's flat values keep working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import fmtk

OLD_RUN = Path(__file__).parent / "fixtures" / "previous_release_run"


def test_an_old_run_resumes_evaluates_and_trains_again(tmp_path: Path) -> None:
    run_dir = shutil.copytree(OLD_RUN, tmp_path / "old")
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

    again = fmtk("run", "--config", str(OLD_RUN / "config.json"), "--output-dir", str(tmp_path / "runs"),
                 "--device", "cpu")  # fmt: skip
    assert again.returncode == 0, again.stderr
    (new_run,) = (tmp_path / "runs" / "digits_mlp").iterdir()
    changed = json.loads((new_run / "config.json").read_text())["changed"]
    assert changed == {"schedule": "none", "plateau_patience": None, "epochs": 1}
