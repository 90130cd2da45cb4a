"""A model's layer table: output shapes and parameter counts, from one forward pass."""

from __future__ import annotations

import torch
from torch import nn


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, str, str, int]]:
    """``(name, type, output shape, parameters)`` for each leaf layer, in the order the forward pass
    reaches them, for a batch of one input of ``input_shape`` (C×H×W for images)."""
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:  # a leaf: it computes, containers only route

            def record(module: nn.Module, inputs: object, output: torch.Tensor, name: str = name) -> None:
                parameters = sum(p.numel() for p in module.parameters(recurse=False))
                rows.append((name, type(module).__name__, str(list(output.shape)), parameters))

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return rows


def format_summary(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """The layer table with totals, as terminal text."""
    rows = layer_table(model, input_shape)
    width = max(len("layer"), *(len(row[0]) for row in rows)) + 2
    lines = [f"{'layer':<{width}}{'type':<20}{'output shape':<22}{'parameters':>12}"]
    lines += [f"{name:<{width}}{kind:<20}{shape:<22}{count:>12,}" for name, kind, shape, count in rows]
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines += [
        f"input: {list(input_shape)}",
        f"total parameters: {total:,}",
        f"trainable parameters: {trainable:,}",
    ]
    return "\n".join(lines)
