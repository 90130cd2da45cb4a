"""The handlers every run gets, one small ``attach_*`` function each, built on Ignite's own."""

from __future__ import annotations

import logging
import math
import numbers
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EarlyStopping, EMAHandler, ProgressBar
from torch import nn

from fmtk.errors import FmtkError, a_kind
from fmtk.runfolder import append_epoch_row
from fmtk.training.accumulation import optimizer_step, step_completed
from fmtk.training.engines import StepEvents


class _EveryIterations:
    """The trainer's every-N-iterations handlers, called through one plain ITERATION_COMPLETED handler.

    Ignite's ``Events.ITERATION_COMPLETED(every=N)`` wraps each handler in a filter that Python
    calls on every iteration (docs/performance.md, "Per-step costs"); these share one test.
    """

    def __init__(self) -> None:
        self.handlers: list[tuple[int, Callable[[Engine], None]]] = []

    def __call__(self, engine: Engine) -> None:
        iteration = engine.state.iteration
        for every, handler in self.handlers:
            if iteration % every == 0:
                handler(engine)


_EVERY: weakref.WeakKeyDictionary[Engine, _EveryIterations] = weakref.WeakKeyDictionary()


def every_iterations(trainer: Engine, every: int, handler: Callable[[Engine], None]) -> None:
    """Call ``handler(trainer)`` after every ``every``-th iteration (of the whole run, as Ignite's
    ``ITERATION_COMPLETED(every=every)`` does), without a filter running every step."""
    if trainer not in _EVERY:
        _EVERY[trainer] = _EveryIterations()
        trainer.add_event_handler(Events.ITERATION_COMPLETED, _EVERY[trainer])
    _EVERY[trainer].handlers.append((every, handler))


class IterationPoints:
    """The loss and the LR of each parameter group every ``log_every`` iterations (TensorBoard's
    ``train/loss_iteration`` and ``train/lr/group_<i>``, a tracker's), the loss kept on its device:
    reading one is a host-device sync, so :meth:`take` reads them all at once, at the epoch's end.
    Points of an epoch cut short by a kill are lost with it, as the resumed run makes them again."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.points: list[tuple[int, torch.Tensor, list]] = []

    def keep(self, engine: Engine) -> None:
        lrs = [group["lr"] for group in self.optimizer.param_groups]  # per-step schedules show here
        self.points.append((engine.state.iteration, engine.state.output, lrs))

    def take(self) -> list[tuple[int, float, list[float]]]:
        """``(iteration, loss, lrs)`` of the points kept since the last call (one wait for all)."""
        if not self.points:
            return []
        losses = torch.stack([loss.detach().float() for _, loss, _ in self.points]).tolist()
        taken = [
            (iteration, loss, [float(lr) for lr in lrs])
            for (iteration, _, lrs), loss in zip(self.points, losses, strict=True)
        ]
        self.points.clear()
        return taken


EARLY_STOPPING = "early stopping"  # RunStop's reason when early stopping ended training


class RunStop:
    """Why training ended before its epochs, the one record of it, kept in the last checkpoint:
    ``reason`` is ``"early stopping"`` or what a handler gave :meth:`~fmtk.training.run.Run.stop`
    (e.g. ``"pruned"``), and ``epoch`` when; None while training goes on. A stopped run that is
    resumed tests its checkpoints instead of training on (Ignite's ``terminate()`` alone is
    forgotten by a resume); metrics.json, ``fmtk runs`` and ``--resume`` read it from here."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.epoch: int | None = None

    def record(self, reason: str, epoch: int) -> None:
        self.reason, self.epoch = reason, epoch

    @property
    def ended(self) -> bool:
        return self.reason is not None

    @property
    def early_stopped(self) -> bool:
        return self.reason == EARLY_STOPPING

    @property
    def by_handler(self) -> str | None:
        """The reason a handler gave (metrics.json's ``stopped_by``); None for early stopping."""
        return None if self.early_stopped else self.reason

    def state_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.reason, self.epoch = state["reason"], state["epoch"]


class NonFiniteLoss(FmtkError):
    """The training loss became NaN or infinite."""


class _HostCopy:
    """A device scalar on its way to the host without the host waiting for it: on CUDA, copied into
    pinned memory behind an event, and read (:meth:`value`) when the device has long passed it; on
    other devices, the tensor itself."""

    def __init__(self, tensor: torch.Tensor) -> None:
        self.done: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            self.tensor = torch.empty((), dtype=tensor.dtype, pin_memory=True)
            self.tensor.copy_(tensor, non_blocking=True)
            self.done = torch.cuda.Event()
            self.done.record(torch.cuda.current_stream(tensor.device))
        else:
            self.tensor = tensor

    def value(self) -> int:
        if self.done is not None:
            self.done.synchronize()
        return int(self.tensor)


def attach_nonfinite_guard(trainer: Engine, check_every: int) -> None:
    """Stop training with a one-line error naming the epoch and iteration of the first NaN/inf loss.

    Looks at the batch losses the trainer keeps (``trainer.state.batch_losses``, see
    :func:`~fmtk.training.engines.create_trainer`) without making the host wait for the device:
    every ``check_every`` iterations the device finds the first bad one among those not yet looked
    at and copies its iteration to the host, which reads it at the next check, ``check_every``
    iterations later (the GPU has long finished it: reading it at once would make the CPU wait
    until every queued step had run). At the end of each epoch, before validation and checkpoints,
    the rest are read at once, so no checkpoint is written from non-finite weights. Nothing runs
    per step.
    """
    looked = {"epoch": 0, "count": 0}  # how many of that epoch's losses were looked at
    pending: list[_HostCopy] = []  # the last check's finding, read at the next one

    def first_bad(engine: Engine) -> torch.Tensor | None:
        """The iteration of the first non-finite loss not yet looked at, or -1, on the device."""
        losses = engine.state.batch_losses
        start = looked["count"] if looked["epoch"] == engine.state.epoch else 0
        looked.update(epoch=engine.state.epoch, count=len(losses))
        if len(losses) <= start:
            return None
        bad = ~torch.isfinite(torch.stack(losses[start:]))
        first_looked = engine.state.iteration - (len(losses) - start) + 1
        found = torch.where(bad.any(), bad.to(torch.uint8).argmax() + first_looked, -1)
        if idist.get_world_size() > 1:  # every process stops together, not one while others wait
            found = idist.all_reduce(found, op="MAX")
        return found

    def stop_at(iteration: int, engine: Engine) -> None:
        epoch = (iteration - 1) // engine.state.epoch_length + 1
        before = "no checkpoint was written yet" if epoch == 1 else "the last checkpoint is from before it"
        raise NonFiniteLoss(
            f"training loss became NaN or infinite at epoch {epoch}, iteration {iteration}; "
            f"stopped ({before})"
        )

    def stop_if_bad(engine: Engine, copies: list[_HostCopy]) -> None:
        bad = [iteration for iteration in (copy.value() for copy in copies) if iteration >= 0]
        if bad:
            stop_at(min(bad), engine)

    def check(engine: Engine) -> None:
        found = first_bad(engine)
        earlier, pending[:] = pending[:], [] if found is None else [_HostCopy(found)]
        stop_if_bad(engine, earlier)

    def check_epoch(engine: Engine) -> None:
        found = first_bad(engine)
        earlier, pending[:] = pending[:], []
        stop_if_bad(engine, earlier if found is None else [*earlier, _HostCopy(found)])

    every_iterations(trainer, check_every, check)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, check_epoch)


def attach_gradient_clipping(trainer: Engine, model: nn.Module, max_norm: float) -> None:
    """Scale each step's gradients so that their total norm is at most ``max_norm`` (between backward
    and the optimizer's step; under ``16-mixed`` after unscaling). No host sync: torch clamps the
    scale factor on the device."""
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]

    def clip(_: Engine) -> None:
        nn.utils.clip_grad_norm_(parameters, max_norm, foreach=True)

    trainer.add_event_handler(StepEvents.BACKWARD_COMPLETED, clip)


def attach_validation(trainer: Engine, evaluator: Engine, valid_data: Any) -> None:
    """Run ``evaluator`` on the valid split after every training epoch; a valid loss that is not
    finite stops the run with one line, before anything reads it (early stopping, the schedule,
    the checkpoints): the training loss was finite (the NaN guard), so the valid split's data, or
    the statistics the model validates with, are what broke."""

    def validate(_: Engine) -> None:
        evaluator.run(valid_data)

    def stop_if_not_finite(engine: Engine) -> None:
        loss = engine.state.metrics.get("loss")  # (an evaluator of fmtk's always has it)
        if loss is not None and not math.isfinite(loss):
            epoch = trainer.state.epoch
            before = (
                "no checkpoint was written yet" if epoch == 1 else "the last checkpoint is from before it"
            )
            raise NonFiniteLoss(
                f"valid loss is {loss} after epoch {epoch}, with a finite training loss: NaN or infinite "
                "values in the valid split's inputs, or in the BatchNorm statistics the model validates "
                f"with? stopped ({before})"
            )

    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    evaluator.add_event_handler(Events.COMPLETED, stop_if_not_finite)


def attach_early_stopping(
    trainer: Engine,
    evaluator: Engine,
    patience: int,
    metric: str = "loss",
    mode: str = "min",
    echo: Callable[[str], None] = print,
    stop: RunStop | None = None,
) -> EarlyStopping:
    """Stop ``trainer`` when the valid ``metric`` has not improved (``mode`` min or max) for
    ``patience`` validations, record it in ``stop`` (the run's :class:`RunStop`, before the epoch's
    checkpoint is written) and say so in one line."""
    stop = stop if stop is not None else RunStop()
    stopper = EarlyStopping(patience, lambda engine: engine.state.metrics[metric], trainer, mode=mode)
    stopper.logger.setLevel(logging.WARNING)  # its INFO "EarlyStopping: Stop training" goes to stderr
    # Not stopper.attach(evaluator): that resets the counter on every evaluation, so it never stops.
    evaluator.add_event_handler(Events.COMPLETED, stopper)

    @evaluator.on(Events.COMPLETED)
    def record(_: Engine) -> None:
        if stopper.counter >= stopper.patience and not stop.ended:
            stop.record(EARLY_STOPPING, trainer.state.epoch)

    @trainer.on(Events.TERMINATE)
    def say_why(engine: Engine) -> None:
        if stop.early_stopped:
            epochs = f"{patience} epoch{'s' * (patience != 1)}"
            echo(f"early stopping: valid {metric} has not improved for {epochs}; stopped after epoch "
                 f"{engine.state.epoch}")  # fmt: skip

    return stopper


def progress_by_default() -> bool:
    """Whether a run shows a progress bar when not told: in a terminal (stderr is one) or in a
    Jupyter kernel (where stderr is no terminal but a bar shows)."""
    if sys.stderr.isatty():
        return True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


def attach_progress(trainer: Engine) -> ProgressBar:
    """A tqdm bar over each epoch's iterations, cleared at the end of the epoch (a widget in Jupyter:
    Ignite's bar uses ``tqdm.autonotebook``)."""
    bar = ProgressBar(persist=False)
    bar.attach(trainer)
    return bar


def attach_epoch_log(
    trainer: Engine,
    evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    echo: Callable[[str], None] = print,
    extra_metrics: Sequence[str] = (),
) -> History:
    """Print one summary line per epoch and add it as a row to the growing list of rows it returns
    (:func:`attach_epoch_record` writes it to metrics.csv once handlers have added their values).
    ``extra_metrics`` (valid metrics beside loss and accuracy) get columns ``valid_<name>`` after
    ``valid_accuracy``."""
    rows = History()
    epoch_lr: dict[str, float] = {}

    # The LR of the epoch's first step: read at its ITERATION_STARTED, after a per-iteration schedule
    # has set it; the handler is there for that one step only (nothing per step).
    def remember_lr(engine: Engine) -> None:
        epoch_lr["lr"] = optimizer.param_groups[0]["lr"]
        engine.remove_event_handler(remember_lr, Events.ITERATION_STARTED)  # Ignite swaps in a new list

    @trainer.on(Events.EPOCH_STARTED)
    def arm(engine: Engine) -> None:
        if not engine.has_event_handler(remember_lr, Events.ITERATION_STARTED):  # an epoch cut short
            engine.add_event_handler(Events.ITERATION_STARTED, remember_lr)

    @trainer.on(Events.EPOCH_COMPLETED)
    def log_epoch(engine: Engine) -> None:
        row = {
            "epoch": engine.state.epoch,
            "train_loss": engine.state.metrics["loss"],
            "valid_loss": evaluator.state.metrics["loss"],
            "valid_accuracy": evaluator.state.metrics["accuracy"],
            **{f"valid_{name}": evaluator.state.metrics[name] for name in extra_metrics},
            "lr": epoch_lr["lr"],
            "epoch_seconds": engine.state.train_seconds,  # training only: no validation, no checkpoints
        }
        rows.append(row)
        rows.own = dict(row)
        echo(
            f"epoch {row['epoch']:>3}/{engine.state.max_epochs}  train_loss {row['train_loss']:.4f}  "
            f"valid_loss {row['valid_loss']:.4f}  valid_acc {100 * row['valid_accuracy']:.2f}%  "
            + "".join(f"valid_{name} {row[f'valid_{name}']:.4f}  " for name in extra_metrics)
            + f"lr {row['lr']:.1e}  {row['epoch_seconds']:.1f}s"
        )

    return rows


class History(list):
    """The epochs' rows, ``run.history``: a list of dicts, fmtk's columns and the values handlers
    add; ``own`` holds the latest row's fmtk values as the epoch line gave them."""

    own: dict[str, float]


def attach_epoch_record(
    trainer: Engine, run_dir: Path, history: History, echo: Callable[[str], None] = print
) -> None:
    """Append each epoch's row of ``history`` to ``run_dir``'s metrics.csv, with the values handlers
    added to it (``run.history[-1][name] = value``), so that a resumed run's history has them too:
    a number (or a one-element tensor) as a Python number, in the row too; anything else is left
    out, said once. A handler's value under one of fmtk's columns is put back (a changed ``epoch``
    would cost metrics.csv rows on resume), and one added to an epoch's row after it was written
    (from the evaluator's COMPLETED, where ``history[-1]`` is the epoch before) is said once."""
    said: set[str] = set()
    written: list[tuple[dict[str, Any], set[str]]] = []  # the last row written and its keys then

    def say_once(key: str, line: str) -> None:
        if key not in said:
            said.add(key)
            echo(f"warning: {line}")

    def record_epoch(_: Engine) -> None:
        row, record = history[-1], {}
        if written and set(written[0][0]) - written[0][1]:
            late = sorted(set(written[0][0]) - written[0][1])[0]
            say_once(f"late {late}", f"run.history[-1][{late!r}] was given after its epoch's row was "
                     "written (history[-1] is the epoch before until the trainer's EPOCH_COMPLETED): not in "
                     "metrics.csv; give it at the trainer's EPOCH_COMPLETED")  # fmt: skip
        for key, value in history.own.items():
            if row.get(key) is not value:
                row[key] = value
                say_once(key, f"run.history[-1][{key!r}] is fmtk's own column: a handler's value there is "
                         "not kept; give yours a name of its own")  # fmt: skip
        for key, value in row.items():
            if isinstance(value, numbers.Real) or isinstance(value, torch.Tensor) and value.numel() == 1:
                record[key] = row[key] = int(value) if isinstance(value, numbers.Integral) else float(value)
            else:
                kind = a_kind(type(value).__name__)
                say_once(key, f"run.history[-1][{key!r}] is {kind}, not a number: left out of metrics.csv "
                         "(and of a resumed run's history); give float(...)")  # fmt: skip
        append_epoch_row(run_dir, record)
        written[:] = [(row, set(row))]

    trainer.add_event_handler(Events.EPOCH_COMPLETED, record_epoch)


def ema_momentum(decay: float, iteration: int) -> float:
    """The weight of the new weights in the EMA after step ``iteration``: ``1 - min(decay, (1 + t) /
    (10 + t))``, the warm-up of TensorFlow's ExponentialMovingAverage(num_updates): early on the
    average follows the model instead of holding its random start for ~1/(1 - decay) steps."""
    return 1.0 - min(decay, (1 + iteration) / (10 + iteration))


def attach_ema(trainer: Engine, ema: EMAHandler, decay: float, accumulate_steps: int = 1) -> None:
    """Update Ignite's ``ema`` after every optimizer step of ``trainer`` with :func:`ema_momentum`
    (with ``accumulate_steps`` N, after the last batch of each group of N).

    Ignite's own warm-up (``momentum_warmup``) counts steps in a scheduler the checkpoint does not
    hold; this one is a function of the trainer's iteration, which a resumed run gets back.
    """

    def warm_up(engine: Engine) -> None:  # registered first: it sets the momentum the update reads
        step = engine.state.iteration if accumulate_steps == 1 else optimizer_step(engine, accumulate_steps)
        engine.state.ema_momentum = ema_momentum(decay, step)

    after_step = step_completed(accumulate_steps)
    trainer.add_event_handler(after_step, warm_up)
    ema.attach(trainer, name="ema_momentum", event=after_step)


def attach_fine_tuning(
    trainer: Engine,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    head: Sequence[str],
    freeze_epochs: int,
    backbone_lr_scale: float,
) -> None:
    """Fine-tuning from starting weights, on an optimizer whose groups are the head's, then the
    rest's (``head_and_rest``): before each step the rest's LR becomes ``backbone_lr_scale`` × the
    head's, whatever schedule set that, and 0 in the first ``freeze_epochs`` epochs, whose
    BatchNorm layers outside the head stay in eval mode (their running statistics are the
    weights'). Both follow from the epoch and the head's LR: a resumed run keeps nothing more.
    The rest's gradients are computed while it is frozen (an LR of 0, not ``requires_grad``),
    so DistributedDataParallel sees the same parameters throughout."""  # fmt: skip
    in_head = {key.rpartition(".")[0] for key in head}  # the modules the head's tensors belong to
    norms = [
        module for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and name not in in_head
    ]  # fmt: skip

    def scale_the_rest(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        factor = 0.0 if trainer.state.epoch <= freeze_epochs else backbone_lr_scale
        optimizer.param_groups[1]["lr"] = optimizer.param_groups[0]["lr"] * factor

    optimizer.register_step_pre_hook(scale_the_rest)

    @trainer.on(Events.EPOCH_STARTED)  # after the step's model.train(), attached with the trainer
    def freeze_norms(engine: Engine) -> None:
        if engine.state.epoch <= freeze_epochs:
            for module in norms:
                module.eval()
