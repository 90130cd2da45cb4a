"""Trainer and evaluator construction: the device, the training step, the metrics."""

from __future__ import annotations

from collections.abc import Callable

import torch
from ignite.engine import Engine, Events, create_supervised_evaluator
from ignite.metrics import Accuracy, Average, ConfusionMatrix, Loss
from torch import nn

from fmtk.errors import FmtkError


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a clear error otherwise."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise FmtkError(f"--device {spec}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FmtkError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FmtkError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise FmtkError(f"--device {spec}: fmtk supports auto, cpu, cuda and cuda:N")
    return device


def create_trainer(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable, device: torch.device
) -> Engine:
    """An Ignite trainer whose output is the batch loss as a detached tensor on the device.

    The epoch mean of the loss is ``trainer.state.metrics["loss"]``.
    """

    # Not create_supervised_trainer: it returns loss.item() (a device→host sync every step) and
    # calls model.train() every step; here the loss stays a tensor and the mode is set per epoch.
    def train_step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = (tensor.to(device, non_blocking=True) for tensor in batch)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    trainer = Engine(train_step)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: model.train())
    # device=: accumulate on the training device, so no per-step copy to the host.
    Average(output_transform=lambda loss: loss, device=device).attach(trainer, "loss")
    return trainer


def create_evaluator(
    model: nn.Module, loss_fn: Callable, device: torch.device, num_classes: int | None = None
) -> Engine:
    """An Ignite evaluator with ``accuracy`` and ``loss`` (mean over samples) metrics, and a
    ``confusion`` matrix when ``num_classes`` is given."""
    metrics = {"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device)}
    if num_classes is not None:
        metrics["confusion"] = ConfusionMatrix(num_classes, device=device)
    return create_supervised_evaluator(model, metrics=metrics, device=device, non_blocking=True)
