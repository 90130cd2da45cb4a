from __future__ import annotations

import pytest
import torch
from torch import nn

from fmtk.models import count_parameters, fashion_cnn_basic, fashion_cnn_improved, mlp, vgg16_gap


@pytest.mark.parametrize(
    "build, parameters",
    [
        (fashion_cnn_basic, 421_642),  # the notebook's summary
        (vgg16_gap, 16_526_466),  # the notebook's summary
        (lambda: mlp(784, [128, 64], 10), 109_386),
        (lambda: mlp(784, [20], 10, activation=nn.Sigmoid), 15_910),
    ],
)
def test_parameter_counts_match_the_notebooks(build, parameters: int) -> None:
    assert count_parameters(build()) == parameters


@pytest.mark.parametrize(
    "model, shape",
    [
        (fashion_cnn_basic(), (2, 1, 28, 28)),
        (fashion_cnn_improved(), (2, 1, 28, 28)),
        (mlp(784, [128, 64], 10, batch_norm=True, dropout=[0.5, 0.2], he_init=True), (2, 1, 28, 28)),
    ],
)
def test_ten_class_outputs(model: nn.Module, shape: tuple[int, ...]) -> None:
    assert model.eval()(torch.zeros(shape)).shape == (2, 10)


def test_vgg_gap_head_accepts_any_image_size() -> None:
    model = vgg16_gap().eval()
    for size in (32, 64):
        assert model(torch.zeros(1, 3, size, size)).shape == (1, 2)


def test_dropout_is_off_in_eval_mode() -> None:
    model = mlp(16, [32], 4, dropout=[0.5]).eval()
    x = torch.randn(8, 16)
    assert torch.equal(model(x), model(x))  # the notebook's F.dropout(x, 0.5) kept dropping here


def test_he_init_fan_out() -> None:
    torch.manual_seed(0)
    layer = mlp(784, [1000], 10, he_init=True)[1]
    expected_std = (2 / 1000) ** 0.5  # fan_out of a 784→1000 Linear is 1000
    assert abs(layer.weight.std().item() - expected_std) < 0.002
