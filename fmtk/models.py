"""The seed architectures of the bootcamp notebooks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def mlp(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    *,
    activation: type[nn.Module] = nn.ReLU,
    batch_norm: bool = False,
    dropout: Sequence[float] = (),
    he_init: bool = False,
) -> nn.Sequential:
    """Flatten → [Linear → (BatchNorm1d) → activation → (Dropout)] per hidden layer → Linear.

    ``dropout`` gives one rate per hidden layer (empty: none). ``he_init`` uses kaiming normal
    with mode fan_out on the Linear weights, as the Fashion-MNIST notebook does.
    """
    if any(size < 1 for size in hidden):
        raise ValueError(f"hidden layer widths must be >= 1, got {list(hidden)}")
    if dropout and len(dropout) != len(hidden):
        raise ValueError(f"dropout gives {len(dropout)} rates for {len(hidden)} hidden layers")
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for index, size in enumerate(hidden):
        layers.append(nn.Linear(width, size))
        if batch_norm:
            layers.append(nn.BatchNorm1d(size))
        layers.append(activation())
        if dropout:
            layers.append(nn.Dropout(dropout[index]))  # the notebook's F.dropout stayed on at test time
        width = size
    layers.append(nn.Linear(width, num_classes))
    model = nn.Sequential(*layers)
    if he_init:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
    return model


def conv_block(
    in_channels: int, out_channels: int, *, batch_norm: bool, dropout: float = 0.0
) -> nn.Sequential:
    """Conv 3×3 (same padding) → (BatchNorm2d) → MaxPool 2 → ReLU → (Dropout).

    The notebooks apply ReLU before the pooling; pooling first is the same function (the max of
    ReLUs is the ReLU of the max), with the same gradients, and ReLU runs on a quarter of the values
    (an epoch of ``fmnist_cnn --preset fast`` in 0.91 of the time, channels-last on the CPU)."""
    if out_channels < 1:
        raise ValueError(f"conv block channel counts must be >= 1, got {out_channels}")
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True)]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def fashion_cnn_basic(num_classes: int = 10) -> nn.Sequential:
    """The notebook's basic CNN: two conv blocks (32, 64), fc 3136 → 128 → 10 (421,642 parameters)."""
    return nn.Sequential(
        conv_block(1, 32, batch_norm=False),
        conv_block(32, 64, batch_norm=False),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )


def fashion_cnn_improved(num_classes: int = 10, dropout: Sequence[float] = (0.2, 0.4, 0.5)) -> nn.Sequential:
    """The improved CNN: conv blocks 32/64/128 with BatchNorm2d, dropout after the second and third
    (``dropout[0]``, ``dropout[1]``; the notebook's 0.2 and 0.4), fc 1152 → 128 with BatchNorm1d and
    dropout (``dropout[2]``, 0.5) → 10."""
    if len(dropout) != 3:
        raise ValueError(f"the improved CNN takes 3 dropout rates, got {len(dropout)}")
    return nn.Sequential(
        conv_block(1, 32, batch_norm=True),
        conv_block(32, 64, batch_norm=True, dropout=dropout[0]),
        conv_block(64, 128, batch_norm=True, dropout=dropout[1]),
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 128),
        nn.BatchNorm1d(128),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout[2]),
        nn.Linear(128, num_classes),
    )


# The notebook's VGG16: block 3 ends in a 512-channel conv (torchvision's "D" config has 256 there),
# which is what gives its 16,526,466 parameters with the GAP head below.
VGG16_NOTEBOOK_CONFIG = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    512,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]


def vgg16_gap(num_classes: int = 2) -> nn.Sequential:
    """VGG16 with BatchNorm (13 convs), global average pooling, head 512 → 64 → BN → ReLU → classes."""
    from torchvision.models.vgg import make_layers  # here: importing torchvision takes ~1 s

    return nn.Sequential(
        make_layers(VGG16_NOTEBOOK_CONFIG, batch_norm=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 64),
        nn.BatchNorm1d(64),
        nn.ReLU(inplace=True),
        nn.Linear(64, num_classes),
    )


class FlipAveraged(nn.Module):
    """Test-time augmentation: the class probabilities of each image and of its left-right mirror,
    averaged. Returned as log-probabilities, which cross-entropy, accuracy and softmax read as
    logits (the softmax of the output is the averaged probabilities)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = (self.model(x).softmax(dim=1) + self.model(x.flip(-1)).softmax(dim=1)) / 2
        return probabilities.log()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
