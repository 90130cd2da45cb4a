"""The engines: the device, the optimizer, the training step (and its one open place), the evaluator.

The trainer's step is ``zero_grad → forward → loss → backward → [StepEvents.BACKWARD_COMPLETED]
→ optimizer.step``; handlers of ``BACKWARD_COMPLETED`` (gradient clipping, a user's own) run between
backward and step and see the true gradients, also under ``16-mixed`` (the scaler unscales first).
With gradient accumulation (``accumulate_steps`` N > 1, :mod:`fmtk.training.accumulation`) zero_grad
comes before a group's first batch, and ``BACKWARD_COMPLETED`` and the step after its last. With
mixup/CutMix (:mod:`fmtk.data.mixing`) each batch is mixed on the device before the step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, EventEnum, Events, create_supervised_evaluator
from ignite.metrics import Accuracy, ConfusionMatrix, Loss, Metric
from ignite.utils import convert_tensor
from torch import nn

from fmtk.choices import PRECISIONS
from fmtk.device import threads_by_default
from fmtk.errors import FmtkError, LabelOutOfRange
from fmtk.training.accumulation import batch_in_epoch, place_in_group


class StepEvents(EventEnum):
    """Events the trainer fires inside its training step.

    ``BACKWARD_COMPLETED``: the gradients of the batch are in each parameter's ``.grad`` (unscaled
    under ``16-mixed``) and the optimizer has not stepped yet, e.g.
    ``run.trainer.on(StepEvents.BACKWARD_COMPLETED)(lambda engine: clip_grad_norm_(params, 1.0))``.
    It fires only before a real optimizer step: with ``accumulate_steps`` N > 1, once per group of
    N batches, after the group's last backward pass, with the group's summed gradients (the
    gradient of its mean loss). Its filters test the iteration (batch) number, which then is a
    group's last: with N=4, ``every=10`` fires at iterations 20, 40, ….
    """

    BACKWARD_COMPLETED = "backward_completed"


# mix(x, y, epoch, batch) → (mixed x, targets): mixup/CutMix of a training batch on its device.
Mixer = Callable[[torch.Tensor, torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class SpeedOptions:
    """How the training step runs: ``precision`` (``32``, ``bf16`` autocast, or ``16-mixed``
    autocast with a gradient scaler), ``channels_last`` memory format, ``compile`` (torch.compile;
    a string: its ``mode``, e.g. ``"reduce-overhead"``, CUDA graphs), ``deterministic`` (torch's
    deterministic algorithms and cuDNN settings: a resumed CUDA run ends with exactly the figures
    of an uninterrupted one; see docs/resuming.md) and ``threads`` (the CPU threads of torch's
    operations; they change the float sums, so a run's figures are those of its thread count).

    ``precision="auto"`` and ``channels_last=None`` are chosen per device by :meth:`resolve`;
    ``compile=None`` and ``deterministic=None`` mean off, ``threads=None`` half the usable cores
    (:func:`fmtk.device.default_threads`). A resumed run, or one made again from a config.json,
    fills every unset option with the one recorded (:meth:`carried_on`).
    """

    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | str | None = None
    deterministic: bool | None = None
    threads: int | None = None

    def resolve(self, device: torch.device, model: nn.Module) -> SpeedOptions:
        """Per-device defaults: on CUDA bf16 (16-mixed where the GPU lacks bf16); on the CPU 32-bit;
        channels_last for conv nets on both (faster end to end on the CPU too: docs/performance.md)."""
        precision = self.precision
        if precision == "auto":
            precision = "32"
            if device.type == "cuda":
                precision = "bf16" if torch.cuda.is_bf16_supported() else "16-mixed"
        if precision not in PRECISIONS:
            raise FmtkError(f"--precision {precision}: choose auto, {', '.join(PRECISIONS)}")
        channels_last = self.channels_last
        if channels_last is None:
            has_conv = any(isinstance(module, nn.Conv2d) for module in model.modules())
            channels_last = has_conv
        threads = self.threads if self.threads is not None else threads_by_default()
        if threads < 1:
            raise FmtkError(f"threads {threads}: give 1 or more")
        compile, deterministic = self.compile or False, bool(self.deterministic)
        return SpeedOptions(precision, channels_last, compile, deterministic, threads)

    def carried_on(self, recorded: Mapping[str, Any], same_device_type: bool) -> SpeedOptions:
        """These options for a resumed run whose config.json recorded ``recorded`` (its resolved
        options): each option not given takes the recorded value; the precision only on the same
        kind of device (bf16 chosen for a GPU is not the CPU's choice)."""
        precision = self.precision
        if precision == "auto" and same_device_type:
            precision = recorded.get("precision", precision)

        def given_or_recorded(name: str) -> Any:
            value = getattr(self, name)
            return recorded.get(name) if value is None else value

        return SpeedOptions(
            precision, given_or_recorded("channels_last"), given_or_recorded("compile"),
            given_or_recorded("deterministic"), given_or_recorded("threads"),
        )  # fmt: skip

    def config(self) -> dict[str, Any]:
        return {
            "precision": self.precision, "channels_last": self.channels_last, "compile": self.compile,
            "deterministic": self.deterministic, "threads": self.threads,
        }  # fmt: skip


def configure_kernels(device: torch.device, deterministic: bool, threads: int) -> None:
    """torch's kernel choices for a run, set for each run (they are global to the process): its CPU
    ``threads``; deterministic kernels (Lightning's ``deterministic=True``), else cuDNN's
    autotuning on CUDA.

    Deterministic: ``torch.use_deterministic_algorithms`` (an operation without a deterministic
    kernel warns, naming itself, instead of failing the run: e.g. the backward pass of adaptive
    average pooling, whose global form is deterministic in fact), cuDNN's deterministic
    convolutions without autotuning, and cuBLAS's fixed workspace (``CUBLAS_WORKSPACE_CONFIG``,
    read when CUDA first runs a matrix product in the process: the command line sets it first).
    """
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    # Fixed input sizes: let cuDNN pick the fastest kernels (autotuning picks by timing: not repeatable).
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)


CUBLAS_DETERMINISTIC = ":4096:8"  # the workspace torch's reproducibility notes ask for


def loss_on(loss_fn: Callable, device: torch.device) -> Callable:
    """A recipe's loss ready for ``device``: a module moved there (class weights, if any), a plain
    function as it is."""
    return loss_fn.to(device) if isinstance(loss_fn, nn.Module) else loss_fn


def create_trainer(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    device: torch.device,
    speed: SpeedOptions = SpeedOptions("32", False),
    scaler: torch.amp.GradScaler | None = None,
    accumulate_steps: int = 1,
    mix: Mixer | None = None,
    classes: int | None = None,
) -> Engine:
    """An Ignite trainer whose output is the batch loss as a detached tensor on the device.

    The epoch's batch losses are ``trainer.state.batch_losses`` (tensors); their mean is
    ``trainer.state.metrics["loss"]`` and the epoch's training time ``trainer.state.train_seconds``
    from EPOCH_COMPLETED on. Between backward and the optimizer's
    step the trainer fires :attr:`StepEvents.BACKWARD_COMPLETED`.
    ``model`` may be a DistributedDataParallel wrapper; ``scaler`` is needed for ``16-mixed``.
    With ``accumulate_steps`` N > 1 the optimizer steps once per group of N batches
    (:mod:`fmtk.training.accumulation`) on the gradient of the group's mean loss; the output and
    the batch losses stay each batch's own loss. With ``mix`` (mixup/CutMix,
    :class:`fmtk.data.mixing.BatchMixer`) each batch is mixed on the device before the step.
    With ``classes``, labels read on the host are checked against it (:func:`check_host_labels`).
    """
    mode = speed.compile if isinstance(speed.compile, str) else None
    if speed.compile and device.type != "cuda":  # torch's "No CUDA runtime is found, using CUDA_HOME=…"
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    forward = torch.compile(model, mode=mode) if speed.compile else model
    autocast = _autocast(device, speed.precision)
    if speed.precision == "16-mixed" and scaler is None:
        raise ValueError("16-mixed precision needs a GradScaler")

    if accumulate_steps < 1:
        raise ValueError(f"accumulate_steps must be >= 1, got {accumulate_steps}")
    # Not create_supervised_trainer: it returns loss.item() (a device→host sync every step) and
    # calls model.train() every step; here the loss stays a tensor and the mode is set per epoch.
    # The epoch's batch losses are kept as tensors (trainer.state.batch_losses, also read by the
    # NaN guard) and averaged once at the end of the epoch: no kernel per step. (Ignite's Average
    # metric checks and converts each output in Python every step: docs/performance.md, "Per-step costs".)
    parts = (forward, optimizer, loss_fn, device, speed, scaler, autocast, classes)
    step = _step(*parts) if accumulate_steps == 1 else _accumulating_step(model, accumulate_steps, *parts)
    trainer = _Trainer(step if mix is None else _mixing(step, mix, device, classes))
    # Counted by the iteration, so that filters work: BACKWARD_COMPLETED(every=10).
    trainer.register_events(*StepEvents, event_to_attr={StepEvents.BACKWARD_COMPLETED: "iteration"})
    trainer.add_event_handler(Events.EPOCH_STARTED, _start_epoch, model)
    # First of the EPOCH_COMPLETED handlers, so every later one sees the epoch's mean loss.
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _finish_epoch, device)
    return trainer


class _Trainer(Engine):
    """Ignite's Engine, firing an event that nothing listens to without formatting its debug message.

    Ignite formats ``"<epoch> | <iteration>, Firing handlers for event <name>"`` for every event
    it fires, logged or not: four a step, two of them (GET_BATCH_STARTED and _COMPLETED) with no
    handler in a run (measured in docs/performance.md)."""

    def _fire_event(self, event_name: Any, *event_args: Any, **event_kwargs: Any) -> None:
        if self._event_handlers[event_name] or self.logger.isEnabledFor(logging.DEBUG):
            super()._fire_event(event_name, *event_args, **event_kwargs)
        else:
            self.last_event_name = event_name


Step = Callable[[Engine, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]


def _step(
    forward: Callable,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    device: torch.device,
    speed: SpeedOptions,
    scaler: torch.amp.GradScaler | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    classes: int | None,
) -> Step:
    """The training step: ``zero_grad → forward → loss → backward → BACKWARD_COMPLETED → step``."""

    def train_step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = _on_device(batch, device, speed, classes)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(forward(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        _optimizer_step(engine, optimizer, scaler)
        loss = loss.detach()
        engine.state.batch_losses.append(loss)
        return loss

    return train_step


def _accumulating_step(
    model: nn.Module,
    accumulate_steps: int,
    forward: Callable,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable,
    device: torch.device,
    speed: SpeedOptions,
    scaler: torch.amp.GradScaler | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
    classes: int | None,
) -> Step:
    """The step with accumulation, apart from :func:`_step`, which stays free of the group
    arithmetic: the gradient scaler's unscale, step and update (and what runs between) come once
    per group of ``accumulate_steps`` batches."""
    distributed = isinstance(model, nn.parallel.DistributedDataParallel)

    def accumulating_step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = _on_device(batch, device, speed, classes)
        index, size = place_in_group(engine, accumulate_steps)
        if index == 0:
            optimizer.zero_grad(set_to_none=True)
        last = index == size - 1
        # DistributedDataParallel all-reduces the gradients in backward: only the group's last needs it.
        with contextlib.nullcontext() if last or not distributed else model.no_sync():
            with autocast():
                loss = loss_fn(forward(x), y)
            # Each batch's share of the group's mean loss; a smaller last group is a mean of its own.
            share = loss / size
            (share if scaler is None else scaler.scale(share)).backward()
        if last:
            _optimizer_step(engine, optimizer, scaler)
        loss = loss.detach()
        engine.state.batch_losses.append(loss)
        return loss

    return accumulating_step


def _on_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, speed: SpeedOptions, classes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = batch
    check_host_labels(y, classes, device)
    if x.device != device or y.device != device:  # in-memory batches are there already: nothing to move
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if speed.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _optimizer_step(
    engine: Engine, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """After backward: what runs between backward and step (BACKWARD_COMPLETED), then the step."""
    if scaler is None:
        _between_backward_and_step(engine)
        optimizer.step()
        return
    scaler.unscale_(optimizer)  # what runs between backward and step sees the true gradients
    _between_backward_and_step(engine)
    scaler.step(optimizer)  # skipped when unscaling found inf/NaN gradients
    scaler.update()


def check_host_labels(y: torch.Tensor, classes: int | None, device: torch.device) -> None:
    """Raise :class:`~fmtk.errors.LabelOutOfRange` for a batch's labels that are on the host (a
    DataLoader's) and go to a GPU when they are not all in 0 … ``classes``-1: there, cross-entropy's
    check of a label is a device-side assert, which names no label, is raised steps later and leaves
    the process unable to use the GPU again. On the CPU, cross-entropy says it itself; labels on the
    GPU already (in-memory splits, checked whole before training) would make the host wait for the
    device. ~2 µs a batch."""
    if classes is None or device.type == "cpu" or not isinstance(y, torch.Tensor) or y.device.type != "cpu":
        return
    if not y.numel() or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:  # soft labels…
        return
    low, high = (int(value) for value in torch.aminmax(y))
    if low < 0 or high >= classes:
        raise LabelOutOfRange(low if low < 0 else high, classes)


def _mixing(step: Callable, mix: Mixer, device: torch.device, classes: int | None) -> Callable:
    """``step`` on batches mixed by ``mix(x, y, epoch, batch)``, ``batch`` the batch's place in the
    epoch (from 0). Without mixing the trainer runs ``step`` itself: no work per batch."""

    def mixing_step(engine: Engine, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        check_host_labels(y, classes, device)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return step(engine, mix(x, y, engine.state.epoch, batch_in_epoch(engine)))

    return mixing_step


def _autocast(device: torch.device, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """The step's autocast context, made anew each step: bf16 or float16 autocast, none for 32-bit."""
    dtype = {"bf16": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


def _between_backward_and_step(engine: Engine) -> None:
    # Ignite's fire_event formats a debug message even when no handler listens; looking up the
    # handlers first costs far less (docs/performance.md, "Per-step costs").
    if engine._event_handlers[StepEvents.BACKWARD_COMPLETED]:
        engine.fire_event(StepEvents.BACKWARD_COMPLETED)


def _start_epoch(engine: Engine, model: nn.Module) -> None:
    model.train()
    engine.state.batch_losses = []
    engine.state.epoch_started = time.perf_counter()


def _finish_epoch(engine: Engine, device: torch.device) -> None:
    losses = engine.state.batch_losses
    count = torch.tensor(float(len(losses)), device=device)
    totals = torch.stack([torch.stack(losses).float().sum(), count])
    if idist.get_world_size() > 1:
        totals = idist.all_reduce(totals)  # the mean over every process's batches
    engine.state.metrics["loss"] = (totals[0] / totals[1]).item()  # waits for the device
    # The epoch's training time, before validation and the other EPOCH_COMPLETED handlers, and
    # after the device has finished the epoch's steps (Ignite's state.times has no sync, and
    # after the epoch it includes those handlers).
    engine.state.train_seconds = time.perf_counter() - engine.state.epoch_started


def create_evaluator(
    model: nn.Module,
    loss_fn: Callable,
    device: torch.device,
    num_classes: int | None = None,
    extra_metrics: Mapping[str, Metric] | None = None,
    confusion: bool = True,
) -> Engine:
    """An Ignite evaluator with ``accuracy`` and ``loss`` (mean over samples) metrics, a
    ``confusion`` matrix when ``num_classes`` is given (and ``confusion``), and ``extra_metrics``
    (each must give one number: a one-element tensor becomes a float). With ``num_classes``,
    labels read on the host are checked against it (:func:`check_host_labels`)."""
    extra_metrics = dict(extra_metrics or {})
    taken = [name for name in extra_metrics if name in BUILT_IN_METRICS]
    if taken:
        raise FmtkError(f"metric name {taken[0]!r} is taken by fmtk's own; choose another")
    metrics = {"accuracy": Accuracy(device=device), "loss": Loss(loss_fn, device=device), **extra_metrics}
    if num_classes is not None and confusion:
        metrics["confusion"] = ConfusionMatrix(num_classes, device=device)

    def prepare_batch(batch: Any, device: torch.device, non_blocking: bool) -> tuple[Any, Any]:
        x, y = batch
        check_host_labels(y, num_classes, device)
        return convert_tensor(x, device, non_blocking), convert_tensor(y, device, non_blocking)

    evaluator = create_supervised_evaluator(
        model, metrics=metrics, device=device, non_blocking=True, prepare_batch=prepare_batch
    )
    if extra_metrics:
        evaluator.add_event_handler(Events.COMPLETED, _scalar_metrics, list(extra_metrics))
    return evaluator


BUILT_IN_METRICS = ("loss", "accuracy", "confusion")


def _scalar_metrics(evaluator: Engine, names: list[str]) -> None:
    # First of the evaluator's COMPLETED handlers: the logs, early stopping and checkpoints that
    # follow read one float per metric.
    for name in names:
        value = evaluator.state.metrics[name]
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise FmtkError(
                    f"metric {name!r} gives {value.numel()} values, fmtk logs one number per metric "
                    "(e.g. Precision(average=True))"
                )
            evaluator.state.metrics[name] = value.item()
