"""Checks of a recipe's data and model before training: what would otherwise fail only after an
epoch, or after training (an empty test split), or never (a label past the model's outputs), is
refused with one line naming the recipe and the split.

Examples:
    .. code-block:: python

        from fmtk.data.checks import check_splits

        check_splits(recipe.name, model, data, device)  # raises FmtkError, or returns None
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fmtk.data.batches import Batches, DataSplits
from fmtk.errors import TRACEBACK_VARIABLE, FmtkError, out_of_memory_line, user_code_line

SPLITS = ("train", "valid", "test")
INTEGERS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
LOSS_INTEGERS = (torch.uint8, torch.int64)  # the label kinds cross-entropy takes


def check_splits(
    recipe_name: str,
    model: nn.Module | None,
    data: DataSplits,
    device: torch.device,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], Any] | None = None,
) -> None:
    """Raise :class:`FmtkError` (one line naming the recipe and the split) when a split has no
    samples; when its labels are not an integer tensor or not in 0 … classes-1; when its inputs are
    integers (uint8 pixels) and the model's parameters are floating point; when the model does not
    give one score per class (run in eval mode on two samples of the valid split), or ``loss_fn``
    gives no single number on them. Without a ``model`` (``fmtk show``), the splits and labels only.

    Only the first batch of each split is loaded (one batch each: cheap); the labels of a split that
    holds them all without loading (:func:`split_labels`) are checked whole, so a bad label further
    on in other data fails only when training reaches it. The run's random stream and the model's
    train/eval mode are left as they were.
    """
    names = data.classes
    if not isinstance(names, list | tuple) or not all(isinstance(name, str) for name in names):
        raise FmtkError(f"recipe {recipe_name}: its classes are {type(names).__name__}; give a list of the "
                        "class names, e.g. ['cat', 'dog']")  # fmt: skip
    if len(set(names)) != len(names):
        twice = sorted({name for name in names if names.count(name) > 1})
        raise FmtkError(f"recipe {recipe_name}: its class names {', '.join(twice)} come twice; each class "
                        "needs its own")  # fmt: skip
    classes = len(names)
    first = {name: _first_batch(recipe_name, name, getattr(data, name), device) for name in SPLITS}
    for name, (x, y) in first.items():
        split = f"recipe {recipe_name}: the {name} split"
        _check_labels(split, y, classes)
        if model is not None:
            _check_inputs(split, x, model)
        _check_all_labels(split, split_labels(getattr(data, name)), classes)
    if model is not None:
        x, y = first["valid"]
        output = _check_output_size(recipe_name, model, x, classes, device)
        if loss_fn is not None:
            _check_loss(recipe_name, loss_fn, output, y[:2].to(device))


def _check_loss(recipe_name: str, loss_fn: Callable, output: torch.Tensor, y: torch.Tensor) -> None:
    """The loss is one number a batch (a vector would fail at the first backward pass)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (MSELoss's broadcasting warning, before its failure's line)
        try:
            loss = loss_fn(output, y)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            message = _torch_message(error)
            if message is None:
                raise  # (a loss of the user's own code: its file and line are named)
            given = f"scores {'×'.join(map(str, output.shape))} and labels {'×'.join(map(str, y.shape))}"
            raise FmtkError(
                f"recipe {recipe_name}: its loss fails on the model's {given} of 2 valid samples: "
                f"{message} (its loss must take class scores and class indices, as cross-entropy does; "
                f"{TRACEBACK_VARIABLE}=1 shows the traceback)"
            ) from None
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        shape = "×".join(map(str, loss.shape)) if isinstance(loss, torch.Tensor) else ""
        kind = f"a tensor of shape {shape}" if shape else f"a {type(loss).__name__}"
        raise FmtkError(f"recipe {recipe_name}: its loss gives {kind} on a batch of 2; it "
                        "must give one number (a mean over the batch, e.g. reduction='mean')")  # fmt: skip


def _cuda(device: torch.device) -> list[torch.device]:
    return [device] if device.type == "cuda" else []


def _first_batch(recipe_name: str, name: str, split: Batches, device: torch.device) -> tuple[Any, Any]:
    """The split's first ``(x, y)``; a DataLoader draws its base seed from torch's generator, so the
    iteration runs on a fork of it."""
    empty = FmtkError(f"recipe {recipe_name}: the {name} split has no samples")
    if not hasattr(split, "__len__"):  # a generator: an epoch could not be counted, nor run twice
        kind = type(split).__name__
        raise FmtkError(f"recipe {recipe_name}: the {name} split ({kind}) has no length; give batches that "
                        "can be iterated every epoch: a DataLoader or fmtk.data.TensorBatches")  # fmt: skip
    if len(split) == 0:
        raise empty
    with torch.random.fork_rng(devices=_cuda(device)):
        batch = next(iter(split), None)
    if batch is None:
        raise empty
    if isinstance(batch, Mapping):
        keys = ", ".join(map(str, batch))
        raise FmtkError(f"recipe {recipe_name}: the {name} split's batches are dicts ({keys}), not (inputs, "
                        "labels) pairs")  # fmt: skip
    try:
        x, y = batch
    except (TypeError, ValueError):
        raise FmtkError(
            f"recipe {recipe_name}: the {name} split's batches are not (inputs, labels) pairs"
        ) from None
    if isinstance(y, torch.Tensor) and y.ndim > 0 and len(y) == 0:
        raise empty
    return x, y


def _check_labels(split: str, y: Any, classes: int) -> None:
    if not isinstance(y, torch.Tensor) or y.dtype not in INTEGERS:
        kind = str(y.dtype).removeprefix("torch.") if isinstance(y, torch.Tensor) else type(y).__name__
        raise FmtkError(f"{split}'s labels are {kind}; labels must be an integer tensor (class indices)")
    if y.dtype not in LOSS_INTEGERS:  # cross-entropy takes int64 (or uint8) class indices only
        kind = str(y.dtype).removeprefix("torch.")
        raise FmtkError(
            f"{split}'s labels are {kind}; cross-entropy takes int64 class indices: labels.long()"
        )
    if y.ndim != 1:
        shape = "×".join(map(str, y.shape)) or "a scalar"
        raise FmtkError(f"{split}'s labels of a batch are {shape}; they must be one class index per sample "
                        "(shape N: labels.view(-1))")  # fmt: skip
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise FmtkError(
            f"{split}'s first batch has label {low if low < 0 else high}, not one of the {classes} classes "
            f"(0 … {classes - 1})"
        )


def split_labels(batches: object) -> torch.Tensor | None:
    """All the labels of a split, when it holds them without loading its batches: TensorBatches'
    labels, the class indices of LoaderBatches over image files (their dataset's ``(path, label)``
    samples); else None."""
    labels = getattr(batches, "labels", None)
    samples = getattr(getattr(getattr(batches, "loader", None), "dataset", None), "samples", None)
    if labels is None and samples is not None:
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return labels if isinstance(labels, torch.Tensor) else None


def _check_all_labels(split: str, labels: torch.Tensor | None, classes: int) -> None:
    """Every label of the split in 0 … classes-1 (the first batch's were checked already)."""
    if labels is None or labels.numel() == 0 or labels.dtype not in INTEGERS:
        return
    labels = labels.reshape(-1).cpu()
    wrong = ((labels < 0) | (labels >= classes)).nonzero()
    if len(wrong):
        index = int(wrong[0])
        raise FmtkError(
            f"{split}'s sample {index} has label {int(labels[index])}, not one of the {classes} classes "
            f"(0 … {classes - 1}); out of range: {len(wrong)} of its {len(labels)} labels"
        )


def _check_inputs(split: str, x: Any, model: nn.Module) -> None:
    weight = next(model.parameters(), None)
    if not isinstance(x, torch.Tensor) or weight is None or not weight.is_floating_point():
        return
    if any(isinstance(module, (nn.Embedding, nn.EmbeddingBag)) for module in model.modules()):
        return  # integer inputs are token indices
    if x.dtype in INTEGERS:
        kind = str(x.dtype).removeprefix("torch.")
        raise FmtkError(f"{split}'s inputs are {kind}; scale them to float, e.g. fmtk.data.scale_pixels")
    if x.is_floating_point() and x.dtype != weight.dtype:  # float64 from numpy: the first layer refuses it
        kind, wanted = (str(dtype).removeprefix("torch.") for dtype in (x.dtype, weight.dtype))
        raise FmtkError(f"{split}'s inputs are {kind}; the model's weights are {wanted}: make them {wanted} "
                        "(e.g. .float())")  # fmt: skip


def _torch_message(error: Exception) -> str | None:
    """The first line of an error torch raised on a recipe's model or loss; None to keep ``error``
    as it is: raised in a user's own code (its file and line are named), out of memory, or with
    ``FMTK_TRACEBACK=1``."""
    if os.environ.get(TRACEBACK_VARIABLE) == "1" or user_code_line(error) or out_of_memory_line(error):
        return None
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _failed_on(recipe_name: str, x: torch.Tensor, error: Exception) -> FmtkError | None:
    """One line for a bundled model that fails on the valid split's inputs, naming their size (photos
    too small for it: ``--set image_size=16`` to a VGG); None to keep ``error`` as it is
    (:func:`_torch_message`, or the device's own error)."""
    message = _torch_message(error)
    if message is None or str(error).startswith(("CUDA", "cuDNN", "CUBLAS")):  # the device's, not the inputs'
        return None
    size = "×".join(map(str, x.shape[1:]))
    small = x.ndim == 4 and any(word in message.lower() for word in ("small", "greater than"))
    hint = "; a larger image_size may fit it" if small else ""
    return FmtkError(
        f"recipe {recipe_name}: its model fails on inputs of {size} (the valid split's): {message}{hint} "
        f"({TRACEBACK_VARIABLE}=1 shows the traceback)"
    )


def _check_output_size(
    recipe_name: str, model: nn.Module, x: torch.Tensor, classes: int, device: torch.device
) -> torch.Tensor:
    """The model gives one score per class: checked on two samples ``x`` of the valid split before
    training, not after an epoch (or never: cross-entropy fails only on a label past the size)."""
    with torch.random.fork_rng(devices=_cuda(device)), torch.no_grad():  # the run's stream stays
        was_training, x = model.training, x[:2].to(device)
        try:
            output = model.eval()(x)
        except (RuntimeError, ValueError) as error:
            failed = _failed_on(recipe_name, x, error)
            if failed is None:
                raise
            raise failed from None
        finally:
            model.train(was_training)
    if not isinstance(output, torch.Tensor):
        raise FmtkError(f"recipe {recipe_name}: the model returns a {type(output).__name__}; it must return "
                        "one tensor of class scores (N × classes)")  # fmt: skip
    if output.ndim != 2 or output.shape[1] != classes:
        gives = {0: "one number for the whole batch", 1: "one number per sample"}.get(
            output.ndim, f"{'×'.join(map(str, output.shape[1:]))} outputs per sample"
        )
        raise FmtkError(
            f"recipe {recipe_name}: the model gives {gives} but the data has "
            f"{classes} classes; its last layer must have {classes} outputs"
        )
    return output
