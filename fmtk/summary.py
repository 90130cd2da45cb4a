"""A model's layer table: output shapes and parameter counts, from one forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NOT_CALLED = "-"  # the output shape of a module its parent does not call (MultiheadAttention's out_proj)
MODEL = "(model)"  # the row of the model's own parameters (a ViT's class token)


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[tuple[str, str, str, int]]:
    """``(name, type, output shape, parameters)`` for each leaf layer and each module that holds
    parameters of its own (MultiheadAttention's in-projection, a ViT's class token, ConvNeXt's layer
    scale), in the order the forward pass reaches them, for a batch of one input of ``input_shape``
    (C×H×W for images); a module with parameters that the pass never calls (its parent uses them)
    follows its parent, its shape ``-``. The rows' parameters add up to the model's."""
    rows: dict[str, tuple[str, str, str, int]] = {}
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None or _own_parameters(module):

            def record(module: nn.Module, inputs: object, output: Any, name: str = name) -> None:
                if name not in rows:  # (a module called twice: its first call)
                    rows[name] = (name, type(module).__name__, _shape(output), _own_parameters(module))

            hooks.append(module.register_forward_hook(record))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    table = list(rows.values())
    for name, module in model.named_modules():
        if name not in rows and _own_parameters(module):
            ancestors = [i for i, row in enumerate(table) if name.startswith(f"{row[0]}.")]
            after = max(ancestors, key=lambda i: len(table[i][0]), default=len(table) - 1)  # the nearest
            table.insert(after + 1, (name, type(module).__name__, NOT_CALLED, _own_parameters(module)))
    return [(name or MODEL, *rest) for name, *rest in table]


def _own_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters(recurse=False))


def _shape(output: Any) -> str:
    """The shape of a module's output, or of the first tensor of a tuple (MultiheadAttention's)."""
    if isinstance(output, (tuple, list)):
        output = next((item for item in output if isinstance(item, torch.Tensor)), None)
    return str(list(output.shape)) if isinstance(output, torch.Tensor) else NOT_CALLED


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
