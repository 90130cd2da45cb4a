"""The README's examples run exactly as written."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_block(section: str, number: int = 1) -> str:
    """The ``number``-th ```python block under the README heading ``section``."""
    text = README.read_text()
    start = text.index(f"## {section}\n")
    return re.findall(r"```python\n(.*?)```", text[start:], re.DOTALL)[number - 1]


def test_writing_a_recipe_example(tmp_path: Path) -> None:
    (tmp_path / "my_recipe.py").write_text(python_block("Writing a recipe"))
    command = [sys.executable, "-m", "fmtk", "run", "my_recipe.py", "--set", "hidden=128", "--run-dir", "r"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["name"] == "my_digits" and config["options"] == {"hidden": 128}
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["best"]["accuracy"] > 0.9


def test_writing_a_handler_example_stops_at_95_percent(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(python_block("Writing a handler"))
    result = subprocess.run([sys.executable, "train.py"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs" / "digits_mlp").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    accuracies = [float(row.split(",")[3]) for row in rows]
    assert accuracies[-1] > 0.95 and all(a <= 0.95 for a in accuracies[:-1])  # stopped at the first
    assert metrics["epochs_run"] == len(rows) < 40


def test_writing_a_handler_example_logs_gradient_norms(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (tmp_path / "grad_norms.py").write_text(python_block("Writing a handler", 2))
    command = [
        "fmtk",
        "run",
        "digits_mlp",
        "--handler",
        "grad_norms:attach",
        "--run-dir",
        "r",
        "--epochs",
        "7",
    ]
    console_script = Path(sys.executable).parent / "fmtk"  # as typed: the installed command
    result = subprocess.run([str(console_script), *command[1:]], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(tmp_path / "r" / "iterations")).Reload()
    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("grads_norm/")]
    assert "grads_norm/1/weight" in tags and len(tags) == 4  # two Linear layers: weight and bias each
    steps = [event.step for event in events.Scalars("grads_norm/1/weight")]
    assert steps == [100, 200] and all(event.value > 0 for event in events.Scalars("grads_norm/1/weight"))
