"""The `fmtk` command: list, run, and a one-line error with a non-zero exit for every bad input."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import (
    USER_RECIPE,
    assert_one_line_error,
    fmtk,
    fmtk_process,
    joining,
    new_cgroup,
    tree_snapshot,
)

from fmtk.cli import cli
from fmtk.device import cgroup_cpus, default_threads, inference_threads, threads_by_default, usable_cores


def test_list() -> None:
    result = CliRunner().invoke(cli, ["list"])
    assert result.exit_code == 0
    recipes = [line.split()[0] for line in result.output.splitlines() if not line.startswith(" ")]
    assert recipes == ["catdog_vgg", "digits_mlp", "fmnist_cnn", "fmnist_dnn", "images", "mnist_dnn"]
    presets = [line.split(":")[0].strip() for line in result.output.splitlines() if line.startswith(" ")]
    assert "--preset fast" in presets  # mnist_dnn's, under its recipe
    archs = CliRunner().invoke(cli, ["list", "--archs"]).output.split()
    assert {"resnet18", "efficientnet_b0", "vit_b_16", "convnext_tiny"} <= set(archs) and len(archs) > 50


def test_run_digits_writes_a_complete_run(tmp_path: Path) -> None:
    result = fmtk(
        "run", "digits_mlp", "--epochs", "3", "--device", "cpu", "--output-dir", "out", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "out" / "digits_mlp").iterdir()
    assert f"run folder: {Path('out') / 'digits_mlp' / run_dir.name}" in result.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["test"]["best"]["accuracy"] > 0.5
    assert "best" in result.stdout and "last" in result.stdout  # the test table


def test_speed_options_reach_the_run(tmp_path: Path) -> None:
    threads = threads_by_default() + 1  # not the default: the run says so
    result = fmtk("run", "digits_mlp", "--epochs", "1", "--device", "cpu", "--precision", "bf16",
                  "--channels-last", "--deterministic", "--threads", str(threads), "--run-dir", "run",
                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    speed = {
        "precision": "bf16",
        "channels_last": True,
        "compile": False,
        "deterministic": True,
        "threads": threads,
    }
    assert config["speed"] == speed and config["device"] == "cpu"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["precision"] == "bf16"
    assert f"CPU threads: {threads} (the default here: {threads - 1})" in result.stdout

    # Made again from its config.json, the run keeps the options it recorded (its figures depend on them).
    again = fmtk("run", "--config", "run", "--run-dir", "again", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "config.json").read_text())["speed"] == speed
    assert_one_line_error(
        fmtk("run", "digits_mlp", "--threads", "0"), "--threads", "0 is not in the range x>=1"
    )


def test_more_threads_than_usable_cores_are_said() -> None:
    from fmtk.device import usable_cores
    from fmtk.training.build import threads_line

    cores = usable_cores()
    assert threads_line(threads_by_default()) is None
    said = f"; more than the {cores} cores this process may use: its threads wait for each other, and each"
    assert threads_line(cores + 1).endswith(said + " step takes longer")
    assert "more than" not in (threads_line(cores) or "")


@pytest.mark.slow  # torch.compile's first steps
def test_compile_on_the_cpu_says_it_compiles_and_torch_s_cuda_warning_is_gone(tmp_path: Path) -> None:
    done = fmtk_process("run", "digits_mlp", "--epochs", "1", "--compile", "--run-dir", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "torch.compile: the first steps compile the model (each start's), which takes a while" in done.stdout
    )
    assert "CUDA_HOME" not in done.stderr  # torch's "No CUDA runtime is found, using CUDA_HOME=…"


def test_16_mixed_on_the_cpu_is_said_to_be_slow() -> None:
    from fmtk.training.build import cpu_half_line
    from fmtk.training.engines import SpeedOptions

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert cpu_half_line(SpeedOptions("16-mixed"), cpu).startswith("precision 16-mixed on the CPU: most CPUs")
    assert cpu_half_line(SpeedOptions("bf16"), cpu) is cpu_half_line(SpeedOptions("16-mixed"), cuda) is None


@pytest.mark.parametrize(
    "cores, processes, environ, threads",
    [(1, 1, {}, 1), (2, 1, {}, 1), (3, 1, {}, 1), (4, 1, {}, 2), (16, 1, {}, 8), (16, 4, {}, 2),
     (2, 2, {}, 1), (16, 1, {"OMP_NUM_THREADS": "3"}, 3), (16, 1, {"OMP_NUM_THREADS": ""}, 8)],
)  # fmt: skip
def test_a_run_takes_half_the_cores_unless_told(
    cores: int, processes: int, environ: dict, threads: int
) -> None:
    assert default_threads(cores, processes, environ) == threads


def test_commands_that_only_run_a_model_take_a_run_s_threads_unless_told() -> None:
    assert inference_threads({}) == max(1, usable_cores() // 2) == default_threads(usable_cores())
    assert inference_threads({"OMP_NUM_THREADS": "3"}) == 3
    assert inference_threads({"OMP_NUM_THREADS": "none"}) == max(1, usable_cores() // 2)


def test_a_containers_cpu_quota_bounds_the_cores_used(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: a quota of half of one cannot lower it")
    ask = [sys.executable, "-c", "from fmtk.device import usable_cores; print(usable_cores())"]
    assert subprocess.run(ask, capture_output=True, text=True, check=True).stdout.split() == [str(cores)]
    # Half a CPU of time, as `docker run --cpus 0.5` sets it: one thread, not one per core.
    with new_cgroup("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}) as cgroup:
        limited = subprocess.run(ask, capture_output=True, text=True, check=True, preexec_fn=joining(cgroup))
    assert limited.stdout.split() == ["1"]


def write_files(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_a_cpu_quota_is_read_from_cgroup_v2_and_v1_as_a_container_sees_them(tmp_path: Path) -> None:
    # v2 with its own namespace (its cgroup at the top of the mount), then v1 seeing its host's path,
    # with cpu and cpuacct mounted together and a cgroup made inside the container's own.
    (tmp_path / "v2.cgroup").write_text("0::/\n")
    (tmp_path / "v2.mountinfo").write_text(
        f"31 23 0:27 / {tmp_path / 'v2'} rw,relatime - cgroup2 cgroup2 rw\n"
    )
    cpu_max = write_files(tmp_path / "v2", {"cpu.max": "150000 100000\n"}) / "cpu.max"
    assert cgroup_cpus(tmp_path / "v2.cgroup", tmp_path / "v2.mountinfo") == 1.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_cpus(tmp_path / "v2.cgroup", tmp_path / "v2.mountinfo") is None
    (tmp_path / "v1.cgroup").write_text(
        "6:memory:/docker/0b5e\n3:cpu,cpuacct:/docker/0b5e/job\n0::/docker/0b5e\n"
    )
    v1 = tmp_path / "v1" / "cpu,cpuacct"
    (tmp_path / "v1.mountinfo").write_text(
        f"32 31 0:28 /docker/0b5e {v1} rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        f"33 31 0:29 /docker/0b5e {tmp_path / 'v1' / 'memory'} rw,nosuid - cgroup cgroup rw,memory\n"
    )
    write_files(v1, {"cpu.cfs_quota_us": "400000\n", "cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpus(tmp_path / "v1.cgroup", tmp_path / "v1.mountinfo") == 4.0
    write_files(v1 / "job", {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpus(tmp_path / "v1.cgroup", tmp_path / "v1.mountinfo") == 4.0
    write_files(v1 / "job", {"cpu.cfs_quota_us": "25000\n", "cpu.cfs_period_us": "50000\n"})
    assert cgroup_cpus(tmp_path / "v1.cgroup", tmp_path / "v1.mountinfo") == 0.5
    assert cgroup_cpus(tmp_path / "v1.cgroup", tmp_path / "no such file") is None


HELPED_RECIPE = """
import dataclasses
from pathlib import Path

from fmtk import Recipe
from digits_helpers import digits  # a module beside the recipe file


def from_data(recipe, data_dir):
    with open(Path(__file__).parent / "from_data_calls.txt", "a") as file:
        file.write("called\\n")
    return dataclasses.replace(recipe, description="classes counted from the data")


recipe = Recipe(name="helped", description="a recipe split in two files", model=lambda recipe: digits(),
                data=lambda recipe, data_dir, device: digits(recipe, device), epochs=1, from_data=from_data)
"""

DIGITS_HELPERS = """
from fmtk.data import load_digits_splits
from fmtk.models import mlp


def digits(recipe=None, device=None):
    return mlp(64, [16], 10) if recipe is None else load_digits_splits(recipe.batch_size, device, recipe.seed)
"""


def test_a_recipe_file_imports_modules_beside_it_and_its_data_decides_once_a_command(tmp_path: Path) -> None:
    folder = write_files(tmp_path / "mine", {"helped.py": HELPED_RECIPE, "digits_helpers.py": DIGITS_HELPERS})
    done = fmtk("run", str(folder / "helped.py"), "--run-dir", "r", cwd=tmp_path)  # not run from its folder
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["description"] == "classes counted from the data"
    calls = folder / "from_data_calls.txt"
    assert calls.read_text().count("called") == 1  # before: twice a run (the model's values, then the data's)
    for command in (["evaluate", "r"], ["run", "--resume", "r", "--epochs", "2"]):
        assert fmtk(*command, cwd=tmp_path).returncode == 0
    assert calls.read_text().count("called") == 1  # config.json holds what it decided
    assert fmtk("run", "--config", "r/config.json", "--run-dir", "again", cwd=tmp_path).returncode == 0
    assert calls.read_text().count("called") == 2  # a new run's data decides anew
    (folder / "helped.py").rename(folder / "moved.py")
    gone = fmtk("evaluate", "r", cwd=tmp_path)
    place = "(put it back there, or give its new place: --recipe FILE)"
    assert_one_line_error(gone, f"recipe file not found: {folder / 'helped.py'}, which config.json names "
                          f"as the run's recipe {place}")  # fmt: skip
    other = fmtk("evaluate", "r", "--recipe", "digits_mlp", cwd=tmp_path)
    assert_one_line_error(other, "--recipe: digits_mlp holds recipe 'digits_mlp', but config.json names the "
                          "run's recipe 'helped'")  # fmt: skip
    assert fmtk("evaluate", "r", "--recipe", "mine/moved.py", cwd=tmp_path).returncode == 0
    resumed = fmtk("run", "--resume", "r", "--epochs", "3", "--recipe", "mine/moved.py", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["source"] == str(folder / "moved.py")
    assert fmtk("evaluate", "r", cwd=tmp_path).returncode == 0  # its new place, recorded


DECIDING = HELPED_RECIPE.replace(
    'description="classes counted from the data")', 'options={**recipe.options, "width": 16})'
).replace("epochs=1, from_data", 'epochs=1, options={"width": 8}, from_data')


def test_a_value_set_that_the_data_decides_is_said_and_recorded_as_used(tmp_path: Path) -> None:
    """`--set width=4` on a recipe whose from_data sets width: the run said nothing and config.json
    (and `fmtk runs`) recorded width=4 among the changed values while it trained with 16."""
    write_files(tmp_path, {"deciding.py": DECIDING, "digits_helpers.py": DIGITS_HELPERS})
    done = fmtk("run", "deciding.py", "--set", "width=4", "--run-dir", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        "recipe helped: its from_data decided width=16 from the data (set: width=4)"
        in done.stdout.splitlines()
    )
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["changed"], config["options"]["width"]) == ({"width": 16}, 16)
    plain = fmtk("run", "deciding.py", "--run-dir", "plain", cwd=tmp_path)  # nothing set: nothing said
    assert "from_data decided" not in plain.stdout


def test_a_recipe_files_broken_preset_and_its_name_without_py_are_one_line(tmp_path: Path) -> None:
    typo_preset = 'presets={"wide": Preset("wider", {"widht": 16})},'
    with_preset = USER_RECIPE.replace("epochs=2,", f"epochs=2, {typo_preset}")
    (tmp_path / "my_recipe.py").write_text("from fmtk import Preset\n" + with_preset)
    typo = fmtk("run", "my_recipe.py", "--output-dir", "runs", cwd=tmp_path)  # before: it trained, unsaid
    assert_one_line_error(typo, "preset wide: unknown recipe key 'widht' for my_digits")
    named = fmtk("run", "my_recipe", cwd=tmp_path)
    assert_one_line_error(named, "unknown recipe 'my_recipe'; did you mean the file my_recipe.py?")
    assert not (tmp_path / "runs").exists()


def test_run_a_user_recipe_file_with_set(tmp_path: Path) -> None:
    (tmp_path / "my_recipe.py").write_text(USER_RECIPE)
    result = fmtk(
        "run", "my_recipe.py", "--run-dir", "r", "--set", "lr=0.01", "--set", "epochs=1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["name"], config["lr"], config["epochs"]) == ("my_digits", 0.01, 1)


def test_run_dir_that_holds_a_run_is_refused_and_untouched(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("epoch\n1\n")
    before = tree_snapshot(run_dir)
    assert_one_line_error(fmtk("run", "digits_mlp", "--run-dir", str(run_dir)), "--run-dir", "not empty")
    assert tree_snapshot(run_dir) == before


def test_resume_goes_on_in_its_own_folder_and_says_so_to_a_new_folders_options(tmp_path: Path) -> None:
    default, both = ["--output-dir", "runs"], ["--run-dir", "r2", "--output-dir", "o"]  # default, given
    for given, names in [(default, "--output-dir names"), (both, "--run-dir and --output-dir name")]:
        result = fmtk("run", "--resume", "r", *given, cwd=tmp_path)
        assert_one_line_error(result, f"--resume goes on in r itself; {names} a new run's folder")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["run", "mnist_dn"], ["unknown recipe 'mnist_dn'", "did you mean 'mnist_dnn'"]),
        (["run", "digits_mlp", "--set", "lrate=1"], ["unknown recipe key 'lrate'", "valid keys"]),
        (["run", "digits_mlp", "--set", "epochs=many"], ["--set epochs=many: expected int"]),
        (["run", "digits_mlp", "--set", "lr"], ["--set lr: expected key=value"]),
        (["run", "digits_mlp", "--lr", "0"], ["lr must be > 0"]),
        (["run", "digits_mlp", "--batch-size", "0"], ["batch_size must be >= 1"]),
        (["run", "digits_mlp", "--epochs", "0"], ["epochs must be >= 1"]),
        (["run", "digits_mlp", "--device", "tpu"], ["--device tpu"]),
        (["run", "digits_mlp", "--handler", "nowhere.module:attach"], ["--handler", "cannot import nowhere"]),
        (["run", "mnist_dnn", "--set", "variant=tanh", "--data-dir", "."], ["unknown variant 'tanh'"]),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    assert_one_line_error(fmtk(*args, "--output-dir", str(tmp_path / "out"), cwd=tmp_path), *fragments)


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["run", "digits_mlp", "--epochs", "x"], ["fmtk run: Invalid value for '--epochs': 'x'"]),
        (["tune", "digits_mlp", "--prune-warmup", "-1"], ["fmtk tune: Invalid value for '--prune-warmup'"]),
        (["run", "digits_mlp", "--bogus"], ["fmtk run: No such option '--bogus'"]),
        (["run", "digits_mlp", "--preset"], ["fmtk run: Option '--preset' requires an argument"]),
        (["evaluate"], ["fmtk evaluate: Missing argument 'RUN_DIR|MODEL_FILE'"]),
        (["trian"], ["fmtk: No such command 'trian'"]),
        (["--bogus"], ["fmtk: No such option '--bogus'"]),
    ],
)
def test_usage_errors_are_one_line_naming_the_command(
    tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    result = fmtk(*args, cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert result.returncode == 2 and not any(tmp_path.iterdir())


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
@pytest.mark.parametrize("args", [["list"], ["--help"]])
def test_an_output_that_takes_nothing_is_one_line(tmp_path: Path, args: list[str]) -> None:
    """``fmtk list > /dev/full`` (a full disk under ``> file``): one line, not two tracebacks."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "fmtk", *args], cwd=tmp_path, stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    assert (result.returncode, result.stderr) == (
        1,
        "Error: cannot write the output (No space left on device)\n",
    )


def test_bare_fmtk_still_shows_its_help(tmp_path: Path) -> None:
    result = fmtk(cwd=tmp_path)
    assert "Commands:" in result.stdout + result.stderr and "Error" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line(tmp_path: Path) -> None:
    result = fmtk("run", "catdog_vgg", "--device", "cuda", "--output-dir", "out", cwd=tmp_path)
    assert_one_line_error(result, "--device cuda: CUDA is not available")
    assert not (tmp_path / "out").exists()  # failed before creating anything


def test_missing_mnist_files_is_one_line(tmp_path: Path) -> None:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"")
    result = fmtk(
        "run", "mnist_dnn", "--data-dir", str(tmp_path / "data"), "--output-dir", "out", cwd=tmp_path
    )
    assert_one_line_error(result, "missing train-labels-idx1-ubyte.gz")


def test_output_dir_that_cannot_hold_folders_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file, not a folder")  # as root, permissions cannot block a mkdir; this can
    result = fmtk("run", "digits_mlp", "--output-dir", str(blocker), cwd=tmp_path)
    assert_one_line_error(result, "cannot create the run folder", str(blocker))
    assert blocker.read_text() == "a file, not a folder"


RECIPE_WITH_HANDLERS = """
from ignite.engine import Events

from fmtk import Recipe
from fmtk.data import load_digits_splits
from fmtk.models import mlp


def note_epochs(run):
    @run.trainer.on(Events.EPOCH_COMPLETED)
    def note(engine):
        with open(run.run_dir / "recipe_handler.txt", "a") as file:
            file.write(f"{engine.state.epoch}\\n")


recipe = Recipe(
    name="digits_with_handler",
    description="a recipe that attaches its own handler",
    model=lambda recipe: mlp(64, [16], 10),
    data=lambda recipe, data_dir, device: load_digits_splits(recipe.batch_size, device, recipe.seed),
    epochs=3,
    attach=note_epochs,
)
"""

CLI_HANDLERS = """
from ignite.engine import Events


def stop_after_two(run):
    run.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda engine: engine.terminate())


def mark(run):
    (run.run_dir / "marked.txt").write_text("yes")
"""


def test_recipe_attach_and_repeated_handlers(tmp_path: Path) -> None:
    (tmp_path / "recipe_with_handlers.py").write_text(RECIPE_WITH_HANDLERS)
    (tmp_path / "my_handlers.py").write_text(CLI_HANDLERS)
    result = fmtk(
        "run", "recipe_with_handlers.py", "--run-dir", "r",
        "--handler", "my_handlers:stop_after_two", "--handler", "my_handlers:mark", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r" / "recipe_handler.txt").read_text() == "1\n2\n"  # the recipe's own handler ran
    assert (tmp_path / "r" / "marked.txt").read_text() == "yes"  # both --handler functions ran
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs_run"] == 2


def test_handler_reference_to_a_missing_function_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "my_handlers.py").write_text(CLI_HANDLERS)
    result = fmtk(
        "run", "digits_mlp", "--handler", "my_handlers:nothing_here", "--output-dir", "out", cwd=tmp_path
    )
    assert_one_line_error(
        result, "--handler my_handlers:nothing_here: my_handlers has no function nothing_here"
    )
    assert not (tmp_path / "out").exists()


DATALOADER_RECIPE = """
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from fmtk import Recipe
from fmtk.data import DataSplits
from fmtk.models import mlp


def data(recipe, data_dir, device):
    digits = load_digits()
    images = torch.tensor(digits.images / 16, dtype=torch.float32).unsqueeze(1)
    dataset = TensorDataset(images, torch.tensor(digits.target))
    train, valid, test = torch.utils.data.random_split(dataset, [1200, 300, 297])
    loader = lambda split, shuffle=False: DataLoader(split, batch_size=recipe.batch_size, shuffle=shuffle)
    return DataSplits(loader(train, True), loader(valid), loader(test), [str(d) for d in range(10)])


recipe = Recipe(name="digits_loader", description="DataLoader splits", model=lambda r: mlp(64, [32], 10),
                data=data, lr=1e-2, batch_size=32, epochs=3)
"""


def test_a_recipe_with_dataloader_splits_trains(tmp_path: Path) -> None:
    (tmp_path / "loader_recipe.py").write_text(DATALOADER_RECIPE)
    result = fmtk("run", "loader_recipe.py", "--run-dir", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "train 1200 · valid 300 · test 297"  # before: no line at all
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["test"]["best"]["accuracy"] > 0.8
    assert (tmp_path / "r" / "confusion_best.png").exists()  # top_losses.png needs in-memory images
    result = fmtk("show", "loader_recipe.py", "--out", "s.png", cwd=tmp_path)
    assert_one_line_error(result, "fmtk show needs in-memory TensorBatches splits")


MARGIN_RECIPE = USER_RECIPE.replace("    epochs=2,", "    loss=lambda recipe: nn.MultiMarginLoss(),")


def test_evaluate_reports_the_recipes_own_loss(tmp_path: Path) -> None:
    (tmp_path / "margin.py").write_text("from torch import nn\n" + MARGIN_RECIPE)
    assert fmtk("run", "margin.py", "--run-dir", "r", cwd=tmp_path).returncode == 0
    result = fmtk("evaluate", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = float(result.stdout.splitlines()[1].split()[1])
    tested = json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["best"]["loss"]
    assert printed == pytest.approx(tested, abs=1e-4)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["loss"] == "<lambda>"


def test_config_trains_the_same_recipe_again_to_the_same_figures(tmp_path: Path) -> None:
    first = fmtk("run", "digits_mlp", "--epochs", "2", "--set", "lr=0.05", "--run-dir", "a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["command"] == "fmtk run digits_mlp --epochs 2 --set lr=0.05 --run-dir a"
    assert config["changed"] == {"lr": 0.05, "epochs": 2}
    assert config["versions"]["torch"] == metadata.version("torch")
    again = fmtk("run", "--config", "a/config.json", "--run-dir", "b", cwd=tmp_path)
    assert again.returncode == 0, again.stderr

    def figures(run: str) -> tuple:
        rows = (tmp_path / run / "metrics.csv").read_text().splitlines()
        results = json.loads((tmp_path / run / "metrics.json").read_text())
        return [row.rsplit(",", 1)[0] for row in rows], results["test"], results["checkpoints"]

    assert figures("b") == figures("a")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["changed"] == config["changed"]
    both = fmtk("run", "--config", "a", "digits_mlp", cwd=tmp_path)
    assert_one_line_error(both, "RECIPE digits_mlp and --config a: give one (a RECIPE or --config")
    neither = fmtk("run", cwd=tmp_path)
    assert neither.returncode == 2  # a missing argument: a usage error
    assert_one_line_error(neither, "fmtk run: give a RECIPE or --config CONFIG_JSON to start a run")
    assert "[RECIPE]" in fmtk("run", "--help").stdout.splitlines()[0]
    before = tree_snapshot(tmp_path)
    for given, fragment in [
        ("nosuch.json", "nosuch.json: no such file"),
        ("a/metrics.csv", "a/metrics.csv: not a config.json (not JSON: Expecting value"),
        ("a/metrics.json", "a/metrics.json: not a config.json (it names no recipe)"),
    ]:
        assert_one_line_error(fmtk("run", "--config", given, cwd=tmp_path), fragment)
    assert tree_snapshot(tmp_path) == before


def test_runs_lists_the_runs_under_a_folder(tmp_path: Path) -> None:
    assert (
        fmtk(
            "run", "digits_mlp", "--epochs", "1", "--set", "lr=0.02", "--output-dir", "runs", cwd=tmp_path
        ).returncode
        == 0
    )
    listing = fmtk("runs", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    header, row = listing.stdout.splitlines()
    assert header.split()[:5] == ["run", "recipe", "preset", "changed", "epochs"]
    assert "digits_mlp" in row and "lr=0.02 epochs=1" in row and row.endswith("finished")
    [run] = json.loads(fmtk("runs", "runs", "--json", cwd=tmp_path).stdout)
    assert (run["recipe"], run["epochs_done"], run["state"]) == ("digits_mlp", 1, "finished")
    bad_key = fmtk("runs", "--sort", "colour", cwd=tmp_path)
    assert_one_line_error(bad_key, "--sort", "unknown sort key 'colour'; valid keys: run, recipe")
    assert bad_key.returncode == 2  # a usage error, as click's own
    assert_one_line_error(fmtk("runs", "nowhere", cwd=tmp_path), "nowhere")


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_a_missing_run_folder_is_named_with_its_command(tmp_path: Path, command: str) -> None:
    extra = ["image.png"] if command == "predict" else []
    assert_one_line_error(
        fmtk(command, "nowhere", *extra, cwd=tmp_path), f"fmtk {command} nowhere: no such run folder"
    )


def test_evaluate_and_resume_read_the_data_the_run_trained_on(mnist_root: Path, tmp_path: Path) -> None:
    trained = fmtk(
        "run", "mnist_dnn", "--epochs", "1", "--data-dir", str(mnist_root), "--run-dir", "r", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data_dir"] == str(mnist_root.resolve())
    evaluated = fmtk("evaluate", "r", cwd=tmp_path)  # no --data-dir: the run's own
    assert evaluated.returncode == 0, evaluated.stderr
    resumed = fmtk("run", "--resume", "r", "--epochs", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


def test_ctrl_c_before_a_command_can_say_more_exits_130(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ctrl-C before a command can say more: 130, as a shell expects (click said "Aborted!", exit 1)."""
    import fmtk.runs

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fmtk.runs, "find_run_dirs", pressed)
    result = CliRunner().invoke(cli, ["runs", str(tmp_path)])
    assert (result.exit_code, result.stderr) == (130, "interrupted\n")


HOLDS_NUMPY = """import numpy as np
from ignite.engine import Events


class Best:
    def __init__(self):
        self.best = 0.0

    def state_dict(self):
        return {"best": self.best}

    def load_state_dict(self, state):
        self.best = state["best"]


def attach(run):
    kept = run.keep("best", Best())

    @run.trainer.on(Events.EPOCH_COMPLETED(once=2))
    def later(trainer):
        kept.best = np.float32(0.5)  # a checkpoint cannot hold it
"""


def test_a_kept_state_a_checkpoint_cannot_hold_names_the_whole_resume_command(tmp_path: Path) -> None:
    (tmp_path / "holds.py").write_text(HOLDS_NUMPY)
    failed = fmtk("run", "digits_mlp", "--epochs", "3", "--run-dir", "my run", "--handler", "holds:attach",
                  cwd=tmp_path)  # fmt: skip
    command = "fmtk run --resume 'my run' --handler holds:attach"  # (before: "and the run's --handlers")
    assert_one_line_error(failed, "now holds a float32 at ['best']", f"resume the run with: {command}")
    assert [path.name for path in (tmp_path / "my run").glob("last_*.pt")] == ["last_checkpoint_1.pt"]


BOOM = """from ignite.engine import Events


def at_epoch_2(run):
    @run.trainer.on(Events.EPOCH_COMPLETED(once=2))
    def boom(trainer):
        raise RuntimeError("boom")
"""


def test_a_handler_s_error_after_a_checkpoint_says_how_to_resume(tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text(BOOM)
    failed = fmtk("run", "digits_mlp", "--epochs", "3", "--run-dir", "my run", "--handler", "boom:at_epoch_2",
                  cwd=tmp_path)  # fmt: skip
    command = "fmtk run --resume 'my run' --handler boom:at_epoch_2"  # to paste as it is: quoted
    hint = f"the run keeps last_checkpoint_1.pt: resume with: {command}"
    assert_one_line_error(failed, f"boom.py:7: RuntimeError: boom; {hint} (FMTK_TRACEBACK=1")
    resumed = fmtk(*shlex.split(command)[1:4], cwd=tmp_path)  # the handler fixed: here, left out
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "my run" / "metrics.json").read_text())["epochs_run"] == 3


def test_every_command_fmtk_suggests_pastes_into_a_shell_with_a_space_in_the_folder(tmp_path: Path) -> None:
    import fmtk as toolkit

    assert (
        fmtk("run", "digits_mlp", "--epochs", "1", "--run-dir", "my runs/one", cwd=tmp_path).returncode == 0
    )
    finished = fmtk("run", "--resume", "my runs/one", cwd=tmp_path)
    going_on = "fmtk run --resume 'my runs/one' --epochs N"
    assert finished.returncode == 0 and f"to go on: {going_on} (N > 1)" in finished.stdout
    resumed = fmtk(*shlex.split(going_on.replace(" N", " 2"))[1:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    in_python = r"; to go on: fmtk\.resume\('.*/my runs/one', epochs=N\) \(N > 2\)$"
    with pytest.raises(toolkit.FmtkError, match=in_python):
        toolkit.resume(tmp_path / "my runs" / "one")  # the Python call in Python, whatever the folder's name
    assert_one_line_error(fmtk("predict", "my runs", "x.jpg", cwd=tmp_path),
                          "(fmtk runs 'my runs' lists them)")  # fmt: skip
    listed = fmtk(*shlex.split("fmtk runs 'my runs'")[1:], cwd=tmp_path)
    assert listed.returncode == 0 and "one" in listed.stdout


def test_a_suggested_command_quotes_what_the_shell_would_split() -> None:
    from fmtk.errors import command

    assert command("run", "--resume", Path("runs/a"), "--epochs", 3) == "fmtk run --resume runs/a --epochs 3"
    line = command("check", "my recipe.py", "--name", "it's", "--record", Path("gold en"))
    assert shlex.split(line) == ["fmtk", "check", "my recipe.py", "--name", "it's", "--record", "gold en"]
