"""fmtk on a CUDA GPU: each precision and memory format, checkpoints written on CUDA read on the CPU,
SIGKILL and an exact resume (--deterministic), a CUDA run resumed on the CPU and a CPU run on CUDA,
--compile, export of a CUDA-trained run, a golden run of fmtk check met exactly, and 2 NCCL
processes with 2 GPUs (the steps' host syncs: tests/training/test_step_sync.py).

Every test here is marked ``cuda`` and skipped without CUDA; ``benchmarks/gpu.py`` runs them
(``pytest -m cuda``) when a GPU is lent. They train small runs on small fake data in the real
formats; on one GPU they are expected to take about a minute and a half, CUDA's start-up and the
first torch.compile included (not yet measured: no GPU has run them).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import pytest
import torch
from conftest import fmtk, fmtk_process, free_bytes, make_mnist_like, make_photos
from torch import nn

import fmtk as toolkit
from fmtk.errors import LESS_MEMORY
from fmtk.training.engines import SpeedOptions
from fmtk.training.evaluation import evaluate_folder

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CUDA = "cuda"
# fmnist_cnn's own model (3 conv blocks with BatchNorm and dropout) on 1,000 training images of batch
# 50: 20 steps an epoch. Bars in row bands on noise: learnt in an epoch or two at any precision.
CONV = {"epochs": 2, "batch_size": 50}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with a small FashionMNIST (1,200 training images, 300 test) in the IDX format."""
    return make_mnist_like(tmp_path_factory.mktemp("cuda_data"), "FashionMNIST", train=1200, test=300)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "default-layout"])
@pytest.mark.parametrize("precision", ["32", "bf16", "16-mixed"])
def test_a_conv_net_trains_on_cuda_in_each_precision_and_layout(
    fashion: Path, tmp_path: Path, precision: str, channels_last: bool
) -> None:
    run_dir = tmp_path / "run"
    speed = SpeedOptions(precision, channels_last)
    result = toolkit.fit("fmnist_cnn", device=CUDA, data_dir=fashion, run_dir=run_dir, quiet=True,
                         speed=speed, **CONV)  # fmt: skip
    metrics = read_metrics(run_dir)
    assert metrics["device"] == CUDA and metrics["epochs_run"] == 2
    assert (metrics["precision"], metrics["channels_last"]) == (precision, channels_last)
    for row in result.history:
        assert math.isfinite(row["train_loss"]) and math.isfinite(row["valid_loss"]), row
    assert result.history[-1]["valid_accuracy"] > 0.5  # 10 classes: chance is 0.1
    # The layout the model trained in (the last conv: its input has many channels, unlike the first's).
    last_conv = [module for module in result.model.modules() if isinstance(module, nn.Conv2d)][-1]
    assert last_conv.weight.device.type == CUDA
    assert last_conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    checkpoint = torch.load(run_dir / "last_checkpoint_2.pt", map_location="cpu", weights_only=True)
    assert ("scaler" in checkpoint) == (precision == "16-mixed")  # fp16's loss scale, for a resume
    if precision == "16-mixed":
        assert checkpoint["scaler"]["scale"] > 0


@pytest.fixture(scope="module")
def conv_run(fashion: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fmnist_cnn trained 2 epochs on CUDA in 32-bit, channels-last: its checkpoints hold CUDA tensors
    in the channels-last layout."""
    run_dir = tmp_path_factory.mktemp("cuda_runs") / "conv"
    toolkit.fit("fmnist_cnn", device=CUDA, data_dir=fashion, run_dir=run_dir, quiet=True,
                speed=SpeedOptions("32", channels_last=True), **CONV)  # fmt: skip
    return run_dir


def test_checkpoints_written_on_cuda_evaluate_on_the_cpu_as_on_cuda(
    conv_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # "32" convolutions on a GPU run in TF32 by default (cuDNN): here in full float32 on both
    # devices, so that only the order of float additions differs.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    on_cuda = toolkit.evaluate(conv_run, device=CUDA)
    on_cpu = toolkit.evaluate(conv_run, device="cpu")
    assert on_cpu.accuracy == on_cuda.accuracy > 0.5
    assert on_cpu.loss == pytest.approx(on_cuda.loss, rel=1e-4, abs=1e-6)
    assert (on_cpu.confusion == on_cuda.confusion).all()


def test_a_folder_evaluated_on_cuda_gives_the_cpus_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The streamed evaluation (chunks moved to the GPU, the loss ranking kept there) against the
    # CPU's, of one run, convolutions in full float32 on both.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    photos = make_photos(tmp_path / "photos", {"ants": 12, "bees": 12, "wasps": 12})
    run_dir = tmp_path / "run"
    toolkit.fit("images", device=CUDA, data_dir=photos, run_dir=run_dir, quiet=True, epochs=2, image_size=32,
                warmup_epochs=0)  # fmt: skip
    new = make_photos(tmp_path / "new", {"ants": 30, "bees": 30, "wasps": 30}, seed=3)
    (new / "bees" / "empty.jpg").write_bytes(b"")
    _, on_cuda = evaluate_folder(run_dir, new, "best", torch.device(CUDA))
    _, on_cpu = evaluate_folder(run_dir, new, "best", torch.device("cpu"))
    assert on_cuda.photos == on_cpu.photos == 90 and len(on_cuda.unreadable) == 1
    assert on_cuda.accuracy == on_cpu.accuracy
    assert on_cuda.loss == pytest.approx(on_cpu.loss, rel=1e-4, abs=1e-6)
    assert (on_cuda.confusion == on_cpu.confusion).all()
    # The ranking's losses (near-equal ones may swap places: sums in another order).
    losses = [[row["loss"] for row in result.wrong] for result in (on_cuda, on_cpu)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-6)
    assert on_cuda.images.device.type == "cpu" and on_cuda.images.shape == on_cpu.images.shape


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_a_cuda_trained_run_exports_and_passes_its_parity_check(conv_run: Path, format: str) -> None:
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    done = toolkit.export(conv_run, format=format)  # on the CPU; it raises when the parity check fails
    assert done.path.is_file()
    assert done.report["top1_agreement"] == 1.0 and done.report["max_abs_difference"] <= 1e-4


# Killed in epoch 3 of 3 with SIGKILL, resumed with no option repeated (the run's speed options
# come back from its config.json). digits_mlp (no data needed, an MLP: no cuDNN) and fmnist_cnn
# (convolutions, BatchNorm, dropout, bf16 by default on CUDA), both with --deterministic: torch's
# deterministic algorithms, cuDNN without autotuning and a fixed cuBLAS workspace, so that the same
# state gives the same bits; the shuffles come from a seeded CUDA generator per epoch and the
# checkpoint holds the CUDA RNG states.
RESUMED = {
    "digits_mlp": ["digits_mlp", "--epochs", "3", "--device", CUDA, "--precision", "32", "--deterministic"],
    "fmnist_cnn": ["fmnist_cnn", "--epochs", "3", "--batch-size", "50", "--device", CUDA, "--deterministic"],
}
KILLER = """
import os
import signal

from ignite.engine import Events


def sigkill_mid_epoch_3(run):
    @run.trainer.on(Events.ITERATION_COMPLETED)
    def kill(engine):
        if engine.state.iteration == 2 * engine.state.epoch_length + 5:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the timing column."""
    with (run_dir / "metrics.csv").open() as file:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(file)]


def results(run_dir: Path) -> dict:
    metrics = read_metrics(run_dir)
    return {key: metrics[key] for key in ("best_epoch", "epochs_run", "stopped_early", "checkpoints", "test")}


def killed_in_epoch_3(arguments: list[str], tmp_path: Path, name: str = "killed") -> Path:
    """``fmtk run ARGUMENTS`` in a process of its own (SIGKILL needs one), killed mid-epoch 3."""
    (tmp_path / "killers.py").write_text(KILLER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    killed = fmtk_process("run", *arguments, "--run-dir", name, "--handler", "killers:sigkill_mid_epoch_3",
                          cwd=tmp_path, env=env, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    run_dir = tmp_path / name
    assert sorted(path.name for path in run_dir.glob("last_*.pt")) == ["last_checkpoint_2.pt"]
    assert not (run_dir / "metrics.json").exists()
    return run_dir


@pytest.mark.parametrize("recipe", RESUMED)
def test_sigkill_mid_epoch_then_resume_on_cuda_ends_exactly_like_an_uninterrupted_run(
    fashion: Path, tmp_path: Path, recipe: str
) -> None:
    arguments = [*RESUMED[recipe], "--data-dir", str(fashion)]
    straight = fmtk("run", *arguments, "--run-dir", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    run_dir = killed_in_epoch_3(arguments, tmp_path)

    resumed = fmtk("run", "--resume", "killed", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    assert "resuming on" not in resumed.stdout and "not exactly" not in resumed.stdout  # nothing changed
    assert epoch_rows(run_dir) == epoch_rows(tmp_path / "straight")
    assert results(run_dir) == results(tmp_path / "straight")
    metrics = read_metrics(run_dir)
    assert metrics["device"] == CUDA and metrics["deterministic"] is True


def test_a_cuda_run_resumes_on_the_cpu_and_says_what_changed(fashion: Path, tmp_path: Path) -> None:
    arguments = [*RESUMED["fmnist_cnn"][:-1], "--data-dir", str(fashion)]  # bf16, not deterministic
    run_dir = killed_in_epoch_3(arguments, tmp_path)
    resumed = fmtk("run", "--resume", "killed", "--device", "cpu", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert (
        "resuming on cpu, not cuda, with precision 32, not bf16: the epochs from here on will not be exactly "
        "those of an uninterrupted run"
    ) in resumed.stdout
    metrics = read_metrics(run_dir)
    assert metrics["device"] == "cpu" and metrics["epochs_run"] == 3 and metrics["precision"] == "32"


def test_a_cpu_run_resumes_on_cuda_and_says_what_changed(fashion: Path, tmp_path: Path) -> None:
    arguments = [*RESUMED["fmnist_cnn"][:5], "--device", "cpu", "--data-dir", str(fashion)]
    run_dir = killed_in_epoch_3(arguments, tmp_path)
    resumed = fmtk("run", "--resume", "killed", "--device", CUDA, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    [line] = [line for line in resumed.stdout.splitlines() if line.startswith("resuming on")]
    assert line.startswith("resuming on cuda") and ", not cpu" in line, line
    assert line.endswith("the epochs from here on will not be exactly those of an uninterrupted run"), line
    metrics = read_metrics(run_dir)
    assert metrics["device"].startswith(CUDA) and metrics["epochs_run"] == 3


def test_running_out_of_gpu_memory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "greedy.py").write_text(
        "import torch\nfrom ignite.engine import Events\n\n\ndef attach(run):\n"
        "    run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3),\n"
        "                                  lambda e: torch.empty(2**45, dtype=torch.uint8, device='cuda'))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = fmtk_process("run", "digits_mlp", "--device", CUDA, "--handler", "greedy:attach",
                          "--output-dir", "runs", cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    # torch's first sentences (what it tried, the GPU's capacity and what is free), then what needs less.
    said = "Error: out of memory on the GPU (CUDA out of memory. Tried to allocate 32.00 TiB"
    assert lines[0].startswith(said), lines[0]
    assert lines[0].endswith(f"): {LESS_MEMORY}")
    assert not (tmp_path / "runs").exists()  # before the first checkpoint: nothing left


def test_photos_too_many_for_the_gpu_are_one_line_before_decoding(catdog_root: Path, tmp_path: Path) -> None:
    gpu, host = free_bytes(torch.device(CUDA)), free_bytes(torch.device("cpu"))
    size = math.ceil(math.sqrt(1.2 * gpu / (52 * 3)))  # 52 photos, 1.2 times the GPU's free memory
    if host is None or 52 * 3 * size**2 >= host:
        pytest.skip("this machine's memory is smaller than its GPU's")
    result = fmtk("run", "catdog_vgg", "--device", CUDA, "--data-dir", str(catdog_root), "--set",
                  f"image_size={size}", "--output-dir", "runs", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"data_cache=memory: the 52 photos at {size} px are " in result.stderr
    assert "GiB free on cuda: --set data_cache=none decodes them" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_golden_run_recorded_on_cuda_is_met_exactly_there(tmp_path: Path) -> None:
    # fmtk check --record on a GPU trains with deterministic kernels and records the GPU, CUDA and
    # cuDNN; --against on the same GPU is then compared bit for bit, and meets it.
    recorded = fmtk("check", "digits_mlp", "--device", CUDA, "--record", "gold", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    config = json.loads((tmp_path / "gold" / "digits_mlp-default" / "config.json").read_text())
    assert config["speed"]["deterministic"] is True
    assert config["versions"]["gpu"] == torch.cuda.get_device_name() and config["versions"]["cudnn"]
    again = fmtk("check", "digits_mlp", "--device", CUDA, "--against", "gold", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)[0]["diverged"] is None


def test_compile_trains_an_epoch_on_cuda(tmp_path: Path) -> None:
    done = fmtk("run", "digits_mlp", "--epochs", "1", "--device", CUDA, "--compile", "--run-dir", "run",
                cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    metrics = read_metrics(tmp_path / "run")
    assert metrics["compile"] is True and metrics["epochs_run"] == 1
    assert metrics["test"]["best"]["accuracy"] > 0.5  # digits: ~90% after one epoch


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_nccl_processes_train_on_two_gpus(mnist_root: Path, tmp_path: Path) -> None:
    done = fmtk_process("run", "mnist_dnn", "--epochs", "2", "--batch-size", "20", "--device", CUDA,
                        "--nproc-per-node", "2", "--backend", "nccl", "--data-dir", str(mnist_root),
                        "--run-dir", str(tmp_path / "run"), cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("epoch   2/2") == 1  # only rank 0 prints
    metrics = read_metrics(tmp_path / "run")
    assert metrics["processes"] == 2 and metrics["epochs_run"] == 2
    assert metrics["device"] == "cuda:0"  # rank 0's own GPU
    assert metrics["test"]["best"]["accuracy"] > 0.5  # bars in row bands: learnt in 2 epochs


LATE_LABEL = """import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from fmtk import Recipe
from fmtk.data import DataSplits
from fmtk.models import mlp

def data(recipe, data_dir, device):
    digits = load_digits()
    x, y = torch.tensor(digits.data[:64], dtype=torch.float32) / 16, torch.tensor(digits.target[:64])
    y[40] = 10  # in the third batch: only the first of a DataLoader is read before training
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return DataSplits(loader, loader, loader, [str(d) for d in range(10)])

recipe = Recipe(name="late", description="a label past the classes in batch 3",
                model=lambda recipe: mlp(64, [16], 10), data=data, epochs=1)
"""


def test_a_later_label_past_the_classes_is_one_line_not_a_device_side_assert(tmp_path: Path) -> None:
    (tmp_path / "late.py").write_text(LATE_LABEL)
    result = fmtk("run", "late.py", "--device", CUDA, "--output-dir", "runs", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "Error: batch 3 of the train split, epoch 1: label 10, not one of the model's 10 classes (0 … 9); "
        "only the first batch of a split read batch by batch is checked before training: check the labels "
        "the recipe's data gives"
    ], result.stderr
