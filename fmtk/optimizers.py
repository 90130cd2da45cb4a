"""The optimizer of a run: ``torch.optim.<name>`` with the recipe's arguments, checked against its
signature, fused where torch offers it, in two parameter groups when fine-tuning."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fmtk.errors import FmtkError

FUSED_OPTIMIZERS = ("SGD", "Adam", "AdamW")

# torch.optim classes that fmtk's step (one optimizer.step() per batch) cannot drive, and why.
UNDRIVABLE_OPTIMIZERS = {
    "Optimizer": "it is the base class of the optimizers",
    "LBFGS": "it needs a closure that re-evaluates the loss several times per step",
    "SparseAdam": "it needs sparse gradients (nn.Embedding(sparse=True)) and nothing else",
    "Rprop": "it is a full-batch method: it steps by the sign of the gradient, which mini-batches scramble",
}

# Arguments fmtk sets itself (lr, weight_decay: recipe fields; fused/foreach: the fastest kernels).
OWN_OPTIMIZER_ARGUMENTS = ("params", "lr", "weight_decay", "fused", "foreach", "capturable", "differentiable")


def optimizer_arguments(optimizer_class: type) -> list[str]:
    """The keyword arguments of ``optimizer_class`` a recipe's ``optimizer_args`` may set."""
    parameters = inspect.signature(optimizer_class).parameters
    return [name for name in parameters if name not in OWN_OPTIMIZER_ARGUMENTS]


def optimizer_problems(name: str, arguments: Mapping[str, Any]) -> Iterator[str]:
    """What is wrong with a recipe's optimizer ``name`` and its ``arguments``, one line each."""
    optimizer_class = getattr(torch.optim, name, None)
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        names = [key for key, value in vars(torch.optim).items()
                 if isinstance(value, type) and issubclass(value, torch.optim.Optimizer)]  # fmt: skip
        same = [
            key for key in names if key.lower() == name.rpartition(".")[2].lower()
        ]  # adam, torch.optim.Adam
        close = same or difflib.get_close_matches(name, names, n=1, cutoff=0.75)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        yield f"optimizer must name a class in torch.optim, got '{name}'{hint}"
        return  # (the arguments of a class that is no optimizer are not checked)
    accepted = optimizer_arguments(optimizer_class)
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        yield f"optimizer {name} takes no argument {unknown[0]!r}; its arguments: {', '.join(accepted)}"
    defaults = inspect.signature(optimizer_class).parameters
    for argument, value in arguments.items():
        if argument in accepted:
            expected = _expected(defaults[argument].default, value)
            if expected is not None:
                yield f"optimizer {name}: {argument} expects {expected}, got {value!r}"
    reason = UNDRIVABLE_OPTIMIZERS.get(name)
    if reason is not None:
        yield f"optimizer {name} cannot be driven by fmtk's step: {reason}"


def _expected(default: Any, value: Any) -> str | None:
    """What an argument whose default is ``default`` expects, when ``value`` is not of that kind
    (torch's own error would be about a comparison or subscript deep inside it); None when it is,
    or when the default does not say (None, a tensor)."""

    def number(item: Any) -> bool:
        return isinstance(item, int | float | torch.Tensor) and not isinstance(item, bool)

    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int | float):
        return None if number(value) else "a number"
    if isinstance(default, tuple) and all(isinstance(item, int | float) for item in default):
        if isinstance(value, tuple | list) and len(value) == len(default) and all(map(number, value)):
            return None
        return f"{len(default)} numbers, e.g. {'/'.join(map(str, default))}"
    return None


def create_optimizer(
    name: str,
    model: nn.Module,
    lr: float,
    weight_decay: float,
    device: torch.device,
    arguments: Mapping[str, Any] | None = None,
    head: Sequence[str] | None = None,
) -> torch.optim.Optimizer:
    """``torch.optim.<name>`` with ``arguments`` (momentum, betas…); SGD, Adam and AdamW fused (a few
    large kernels per step instead of several small ones per parameter), which torch offers for
    them on the CPU and CUDA. A value torch refuses is one line naming the optimizer. With
    ``head`` (parameter names), two parameter groups: the head's, then the rest's (fine-tuning)."""
    optimizer_class = getattr(torch.optim, name)
    options = {"lr": lr, "weight_decay": weight_decay, **(arguments or {})}
    if name in FUSED_OPTIMIZERS and device.type in ("cpu", "cuda"):
        options["fused"] = True
    try:
        return optimizer_class(model.parameters() if head is None else head_and_rest(model, head), **options)
    except (ValueError, TypeError) as error:
        given = ", ".join(f"{key}={value}" for key, value in (arguments or {}).items())
        raise FmtkError(f"optimizer {name}({given}): {error}") from None


def head_and_rest(model: nn.Module, head: Sequence[str]) -> list[dict[str, Any]]:
    """The parameter groups of fine-tuning: the parameters named in ``head``, then the others."""
    named = dict(model.named_parameters())
    in_head = set(head)
    groups = [
        [p for n, p in named.items() if n in in_head],
        [p for n, p in named.items() if n not in in_head],
    ]
    if not all(groups):
        raise FmtkError(f"fine-tuning needs parameters in the head and outside it; the head is {list(head)}")
    return [{"params": params} for params in groups]
