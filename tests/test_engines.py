"""The training step's speed options: precision, channels_last, torch.compile, fused optimizers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fmtk.engines import SpeedOptions, create_optimizer, resolve_device
from fmtk.errors import FmtkError
from fmtk.recipe import apply_overrides, load_recipe
from fmtk.resume import read_checkpoint
from fmtk.run import build_run

CPU = torch.device("cpu")


def test_cpu_defaults_are_32_bit_in_the_default_layout() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    assert SpeedOptions().resolve(CPU, conv) == SpeedOptions("32", False, False)
    assert SpeedOptions("bf16", True).resolve(CPU, conv) == SpeedOptions("bf16", True, False)
    with pytest.raises(FmtkError, match="--precision fp8: choose auto, 32, bf16, 16-mixed"):
        SpeedOptions("fp8").resolve(CPU, conv)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_are_bf16_and_channels_last_for_conv_nets() -> None:
    device = resolve_device("cuda")
    resolved = SpeedOptions().resolve(device, nn.Sequential(nn.Conv2d(1, 2, 3)))
    assert resolved.precision in ("bf16", "16-mixed") and resolved.channels_last
    assert not SpeedOptions().resolve(device, nn.Linear(2, 2)).channels_last


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_optimizers_are_fused_where_torch_offers_it(name: str) -> None:
    optimizer = create_optimizer(name, nn.Linear(3, 2), 0.1, 0.0, CPU)
    assert optimizer.defaults["fused"] is True


@pytest.mark.parametrize(
    "speed",
    [SpeedOptions("bf16", True), SpeedOptions("16-mixed", True), SpeedOptions("32", False, compile=True)],
    ids=["bf16-channels-last", "16-mixed", "compile"],
)
def test_each_speed_option_trains_and_is_recorded(
    mnist_root: Path, tmp_path: Path, speed: SpeedOptions
) -> None:
    recipe = apply_overrides(
        load_recipe("fmnist_cnn"), {"epochs": "1", "batch_size": "50", "variant": "basic"}
    )
    (mnist_root / "FashionMNIST").symlink_to(mnist_root / "MNIST")
    run = build_run(recipe, tmp_path, CPU, mnist_root, echo=lambda line: None, speed=speed)
    assert run.model[1][0].weight.is_contiguous(memory_format=torch.channels_last) == speed.channels_last
    results = run.run()
    assert results["precision"] == speed.precision and results["compile"] == speed.compile
    assert json.loads((tmp_path / "config.json").read_text())["speed"]["precision"] == speed.precision
    assert results["test"]["best"]["accuracy"] > 0.5  # bars in row bands: easy once trained at all
    checkpoint = read_checkpoint(tmp_path / "last_checkpoint_1.pt", CPU)
    assert ("scaler" in checkpoint) == (speed.precision == "16-mixed")  # fp16's loss scale resumes
