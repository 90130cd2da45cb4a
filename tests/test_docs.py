"""The examples of the README and docs/ run exactly as written, and their links lead somewhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fmtk, python_script

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]


def python_block(section: str, number: int = 1, document: Path = README) -> str:
    """The ``number``-th ```python block under the heading ``section`` of ``document``."""
    text = document.read_text()
    start = text.index(f"## {section}\n")
    return re.findall(r"```python\n(.*?)```", text[start:], re.DOTALL)[number - 1]


def test_every_python_example_is_one_a_test_runs() -> None:
    counts = {path.name: len(re.findall(r"```python\n", path.read_text())) for path in DOCUMENTS}
    assert {name: count for name, count in counts.items() if count} == {
        "README.md": 4,
        "checks.md": 1,
        "deploy.md": 1,
        "handlers.md": 2,
        "python.md": 2,
        "tracking.md": 1,
        "tuning.md": 1,
    }


def test_every_option_of_every_command_is_in_its_section_of_the_commands_page() -> None:
    from fmtk.cli import cli

    sections: dict[str, str] = {}
    for section in re.split(r"^## ", (ROOT / "docs" / "commands.md").read_text(), flags=re.MULTILINE)[1:]:
        for name in re.findall(
            r"`fmtk ([a-z-]+)", section.splitlines()[0]
        ):  # `fmtk run …` · `fmtk run --resume …`
            sections[name] = sections.get(name, "") + section
    missing = {
        name: [
            option for option in options if not re.search(rf"{re.escape(option)}\b", sections.get(name, ""))
        ]
        for name, command in cli.commands.items()
        for options in [[o for parameter in command.params for o in parameter.opts if o.startswith("--")]]
    }
    assert set(sections) == set(cli.commands)
    assert {name: options for name, options in missing.items() if options} == {}


def test_relative_links_lead_to_files() -> None:
    for document in DOCUMENTS:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", document.read_text()):
            assert (document.parent / target).exists(), f"{document.name} links to missing {target}"


def handlers_example(tmp_path: Path, number: int, module: str, *args: str) -> Path:
    """Run digits_mlp with Example ``number`` of docs/handlers.md as ``--handler module:attach``."""
    sections = [
        "Keeping a handler's state: `run.keep`",
        "Between backward and step: `StepEvents.BACKWARD_COMPLETED`",
    ]
    code = python_block(sections[number - 1], 1, ROOT / "docs" / "handlers.md")
    (tmp_path / f"{module}.py").write_text(code)
    result = fmtk("run", "digits_mlp", "--handler", f"{module}:attach", "--run-dir", "r", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path / "r"


def test_the_notebook_walk_through_runs(tmp_path: Path) -> None:
    done = python_script(ROOT / "docs" / "notebook.py", tmp_path)
    assert done.returncode == 0, done.stderr
    [run_dir] = (tmp_path / "runs" / "wine").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["changed"] == {"hidden": 64}
    assert "wine/" in done.stdout.splitlines()[-1] and done.stdout.splitlines()[-1].endswith("finished")


def test_handlers_example_keeps_its_count_in_the_last_checkpoint(tmp_path: Path) -> None:
    import torch
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = handlers_example(tmp_path, 1, "count_samples", "--epochs", "2")
    logged = [event.value for event in EventAccumulator(str(run_dir)).Reload().Scalars("train/samples_seen")]
    assert logged[1] == 2 * logged[0] > 0
    checkpoint = torch.load(run_dir / "last_checkpoint_2.pt", weights_only=True)
    assert checkpoint["sample_count"] == {"seen": logged[1]}


def test_handlers_example_logs_the_clipped_gradient_norm(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = handlers_example(tmp_path, 2, "grad_total_norm", "--epochs", "1", "--set", "max_grad_norm=0.5")
    events = EventAccumulator(str(run_dir / "iterations")).Reload().Scalars("grads/total_norm")
    assert [event.step for event in events] == list(range(10, 10 * len(events) + 1, 10)) and len(events) >= 3
    assert all(event.value <= 0.5 + 1e-4 for event in events)  # logged after the recipe's clipping


def test_from_python_example(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(python_block("From Python"))
    result = python_script(tmp_path / "train.py", tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs" / "digits_mlp").iterdir()
    assert json.loads((run_dir / "config.json").read_text())["changed"] == {"epochs": 8, "lr": 0.05}
    assert "precision" in result.stdout and "confusion matrix" in result.stdout
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 8  # resumed on to 8


def test_python_docs_examples(tmp_path: Path) -> None:
    python_doc = ROOT / "docs" / "python.md"
    made_in_python = python_block("A recipe made in Python", 1, python_doc)
    (tmp_path / "notebook_recipe.py").write_text(made_in_python)
    result = python_script(tmp_path / "notebook_recipe.py", tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs" / "notebook_digits").iterdir()
    assert float(result.stdout.split()[0]) > 0.8
    cli = fmtk("evaluate", str(run_dir), cwd=tmp_path)
    assert cli.returncode == 1 and cli.stderr.strip() in python_doc.read_text()  # the error the page shows
    (tmp_path / "lrs.py").write_text(python_block("`build_run`: the run before it starts", 1, python_doc))
    result = python_script(tmp_path / "lrs.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[0.05, 0.05, 0.05]" in result.stdout


def test_writing_a_recipe_example(tmp_path: Path) -> None:
    (tmp_path / "my_recipe.py").write_text(python_block("Writing a recipe"))
    result = fmtk("run", "my_recipe.py", "--set", "hidden=128", "--run-dir", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["name"] == "my_digits" and config["options"] == {"hidden": 128}
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["best"]["accuracy"] > 0.9


def test_checks_python_example_checks_the_readme_recipe(tmp_path: Path) -> None:
    (tmp_path / "my_recipe.py").write_text(python_block("Writing a recipe"))
    (tmp_path / "check.py").write_text(python_block("From Python and pytest", 1, ROOT / "docs" / "checks.md"))
    result = python_script(tmp_path / "check.py", tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("True [('test_accuracy', 0.9")
    cli = fmtk("check", "my_recipe.py", cwd=tmp_path)  # the README's command
    assert cli.returncode == 0 and cli.stdout.splitlines()[-1] == "1 of 1 checks passed", cli.stdout


def test_writing_a_handler_example_stops_at_95_percent(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(python_block("Writing a handler"))
    result = python_script(tmp_path / "train.py", tmp_path)
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "runs" / "digits_mlp").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    accuracies = [float(row.split(",")[3]) for row in rows]
    assert accuracies[-1] > 0.95 and all(a <= 0.95 for a in accuracies[:-1])  # stopped at the first
    assert metrics["epochs_run"] == len(rows) < 40
    assert metrics["stopped_by"] == "valid accuracy passed 0.95"


@pytest.mark.slow  # the installed console script, in another process
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


def test_tuning_python_example(tmp_path: Path) -> None:
    (tmp_path / "search.py").write_text(python_block("From Python", 1, ROOT / "docs" / "tuning.md"))
    done = python_script(tmp_path / "search.py", tmp_path)
    assert done.returncode == 0, done.stderr
    (study,) = (tmp_path / "runs" / "tune" / "digits_mlp").iterdir()
    assert sorted(path.name for path in study.glob("trial_*")) == [f"trial_00{n}" for n in range(4)]
    first = json.loads((study / "trial_000" / "config.json").read_text())
    assert (first["lr"], first["options"]["hidden"]) == (0.01, 64)  # the try: the recipe's own values
    lines = done.stdout.splitlines()
    assert lines[0].startswith("{'lr': ") and len(lines) == 1 + 3


def import_floors(package: Path) -> dict[str, int]:
    """Each module of ``package`` (dotted, without the package's name) and its floor: 0 when it
    imports no other module of the package, else one above the highest it imports (imports inside
    functions and for type hints count too)."""
    import ast

    modules = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    imports: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
            imports[module] |= {
                found for name in names if (found := resolve(name)) not in (None, module, "fmtk")
            }
    floors: dict[str, int] = {}

    def floor(module: str) -> int:
        if module not in floors:
            floors[module] = 1 + max((floor(other) for other in imports[module]), default=-1)
        return floors[module]

    return {module.removeprefix(f"{package.name}."): floor(module) for module in modules}


def test_the_architecture_page_s_import_floors_are_the_code_s() -> None:
    floors = import_floors(ROOT / "fmtk")
    packages = {
        "fmtk",
        "training",
        "data",
        "regression",
        "cli",
        "recipes",
        "__main__",
    }  # re-exports, entry points
    rows = {}
    for module, floor in floors.items():
        if module not in packages and not module.startswith("recipes."):
            rows.setdefault(floor, []).append(module)
    table = "\n".join(
        f"| {floor} | " + ", ".join(f"`{m}`" for m in sorted(rows[floor])) + " |" for floor in sorted(rows)
    )
    assert table in (ROOT / "docs" / "architecture.md").read_text()
