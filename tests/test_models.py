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


def notebook_block(
    in_channels: int, out_channels: int, batch_norm: bool, dropout: float = 0
) -> nn.Sequential:
    """A conv block in the notebooks' order: ReLU, then MaxPool."""
    norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    drop = [nn.Dropout(dropout)] if dropout else []
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1), *norm, nn.ReLU(), nn.MaxPool2d(2), *drop]
    return nn.Sequential(*layers)


NOTEBOOK_CNNS = {
    "basic": lambda: nn.Sequential(
        notebook_block(1, 32, False), notebook_block(32, 64, False), nn.Flatten(),
        nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10),
    ),
    "improved": lambda: nn.Sequential(
        notebook_block(1, 32, True), notebook_block(32, 64, True, 0.2), notebook_block(64, 128, True, 0.4),
        nn.Flatten(), nn.Linear(1152, 128), nn.BatchNorm1d(128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10),
    ),
}  # fmt: skip


@pytest.mark.parametrize("variant, build", [("basic", fashion_cnn_basic), ("improved", fashion_cnn_improved)])
def test_conv_blocks_pooling_before_relu_compute_the_notebooks_cnns(variant: str, build) -> None:
    """fmtk pools before ReLU (cheaper); outputs and gradients are the notebooks' ReLU-then-pool ones."""
    model, notebook = build(), NOTEBOOK_CNNS[variant]()
    notebook.load_state_dict(model.state_dict())
    x = torch.randn(8, 1, 28, 28)
    x[:, :, :10] = 0.0  # a flat background: ties inside pooling windows
    for net in (model, notebook):
        torch.manual_seed(1)  # the same dropout masks
        net.train()(x).square().sum().backward()
    assert torch.equal(model.eval()(x), notebook.eval()(x))
    for (name, ours), theirs in zip(model.named_parameters(), notebook.parameters(), strict=True):
        assert torch.allclose(ours.grad, theirs.grad, rtol=1e-5, atol=1e-7), name


class Tokens(nn.Module):
    """A small ViT-like model: a token of its own, attention whose out_proj it never calls itself,
    a block with a scale of its own around a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, 8))
        self.embed = nn.Linear(4, 8)
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True)
        self.block = nn.Sequential(nn.Linear(8, 8))
        self.block.scale = nn.Parameter(torch.ones(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([self.token.expand(len(x), -1, -1), self.embed(x)], dim=1)
        tokens, _ = self.attention(tokens, tokens, tokens)
        return self.head(self.block(tokens)[:, 0] * self.block.scale)


def test_the_summary_s_rows_add_up_to_the_model_s_parameters() -> None:
    """vit_b_16's rows left out a third of its 85.8 M (its attention's in- and out-projections, its
    class token and position embedding): parameters a module holds beside its children."""
    from fmtk.summary import format_summary, layer_table

    model = Tokens()
    rows = layer_table(model, (5, 4))
    assert sum(count for *_, count in rows) == count_parameters(model) == 443
    named = {name: (kind, shape, count) for name, kind, shape, count in rows}
    assert named["attention"] == ("MultiheadAttention", "[1, 6, 8]", 216)  # in_proj: its own, 3 × (64 + 8)
    assert named["attention.out_proj"] == ("NonDynamicallyQuantizableLinear", "-", 72)  # used, not called
    assert named["block"][2] == 8 and named["(model)"] == ("Tokens", "[1, 3]", 8)
    names = [name for name, *_ in rows]
    assert names.index("attention.out_proj") == names.index("attention") + 1  # after its parent
    assert "total parameters: 443" in format_summary(model, (5, 4))
