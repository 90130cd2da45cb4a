"""The order of a run's handlers, written once: which handler runs at which event of which engine,
in what order, and where your own handlers go. docs/handlers.md shows :data:`ORDER` (its table is
checked against it), and tests/training/test_order.py checks the engines of assembled runs against it
(:func:`handlers_in_order`). Within one event Ignite calls handlers in the order they were
attached, so this is also the order of attachment in ``training.build``; the checkpoints are
attached last, by :meth:`~fmtk.training.run.Run.prepare`, after every handler of yours."""

from __future__ import annotations

from typing import Any, NamedTuple

from ignite.engine import Engine
from ignite.handlers import Checkpoint, EarlyStopping, ParamScheduler
from ignite.handlers.tensorboard_logger import OptimizerParamsHandler, OutputHandler

from fmtk.training.schedules import CheckpointablePlateau


class Step(NamedTuple):
    """One handler of a run: the engine and event it runs at, its name, when a run has it."""

    engine: str
    event: str
    handler: str
    when: str


YOURS = "yours"  # a recipe's attach, a --handler, or a handler attached to run.trainer/run.evaluator

ORDER: tuple[Step, ...] = (
    Step("trainer", "EPOCH_STARTED", "the epoch's order of the training data (set_epoch)", "always"),
    Step("trainer", "EPOCH_STARTED", "the epoch's timer and first-step LR (the epoch line)", "always"),
    Step("trainer", "EPOCH_STARTED", "TensorBoard: lr", "rank 0"),
    Step("trainer", "EPOCH_STARTED", YOURS, "yours"),
    Step("trainer", "ITERATION_STARTED", "the per-step LR schedule", "schedule onecycle or cosine"),
    Step("trainer", "BACKWARD_COMPLETED", "gradient clipping", "max_grad_norm"),
    Step("trainer", "ITERATION_COMPLETED", "EMA: warm-up of its decay, then the update", "ema_decay"),
    Step("trainer", "ITERATION_COMPLETED", "progress bar", "in a terminal or Jupyter, rank 0"),
    Step(
        "trainer",
        "ITERATION_COMPLETED",
        "every log_every steps: NaN check, per-iteration loss and LR",
        "always",
    ),  # fmt: skip
    Step("trainer", "ITERATION_COMPLETED", YOURS, "yours"),
    Step("trainer", "EPOCH_COMPLETED", "progress bar closed", "in a terminal or Jupyter, rank 0"),
    Step("trainer", "EPOCH_COMPLETED", "NaN guard: the epoch's losses", "always"),
    Step("trainer", "EPOCH_COMPLETED", "BatchNorm buffers from rank 0", "always (a no-op in one process)"),
    Step(
        "trainer",
        "EPOCH_COMPLETED",
        "validation: runs the evaluator (its COMPLETED handlers below)",
        "always",
    ),  # fmt: skip
    Step("evaluator", "COMPLETED", "early stopping", "early_stopping_patience"),
    Step("evaluator", "COMPLETED", "early stopping's decision kept in RunStop", "early_stopping_patience"),
    Step("evaluator", "COMPLETED", "plateau LR schedule", "schedule plateau with plateau_patience"),
    Step("evaluator", "COMPLETED", "TensorBoard: valid metrics", "rank 0"),
    Step("evaluator", "COMPLETED", YOURS, "yours"),
    Step("evaluator", "COMPLETED", "best checkpoint", "always"),
    Step("trainer", "EPOCH_COMPLETED", "the epoch line and metrics.csv", "always"),
    Step("trainer", "EPOCH_COMPLETED", "TensorBoard: train loss", "rank 0"),
    Step("trainer", "EPOCH_COMPLETED", "TensorBoard: the epoch's per-iteration points", "rank 0"),
    Step("trainer", "EPOCH_COMPLETED", YOURS, "yours"),
    Step("trainer", "EPOCH_COMPLETED", "last checkpoint (every kept state)", "always"),
    Step("trainer", "EPOCH_COMPLETED", "superseded checkpoints removed", "always"),
    Step("trainer", "TERMINATE", "early stopping's line", "early_stopping_patience"),
)

# fmtk's handlers by their function's qualified name (or class), as the engines hold them.
_NAMES = {
    "attach_handlers.<locals>.order_epoch": ORDER[0].handler,
    "attach_epoch_log.<locals>.arm": ORDER[1].handler,
    "attach_gradient_clipping.<locals>.clip": "gradient clipping",
    "attach_ema.<locals>.warm_up": "EMA: warm-up of its decay, then the update",
    "EMAHandler._update_ema_model": "EMA: warm-up of its decay, then the update",
    "_OutputHandler": "progress bar",
    "_EveryIterations": "every log_every steps: NaN check, per-iteration loss and LR",
    "ProgressBar._close": "progress bar closed",
    "attach_nonfinite_guard.<locals>.check": "NaN guard: the epoch's losses",
    "attach_handlers.<locals>.share_buffers": "BatchNorm buffers from rank 0",
    "attach_validation.<locals>.validate": "validation: runs the evaluator (its COMPLETED handlers below)",
    "attach_early_stopping.<locals>.record": "early stopping's decision kept in RunStop",
    "attach_epoch_log.<locals>.log_epoch": "the epoch line and metrics.csv",
    "IterationPoints.write": "TensorBoard: the epoch's per-iteration points",
    "attach_checkpoints.<locals>.flush_removals": "superseded checkpoints removed",
    "attach_early_stopping.<locals>.say_why": "early stopping's line",
}
_IGNITE_OWN = (
    "Engine._",
    "Metric.",
    "_start_epoch",
    "_finish_epoch",
    "attach_epoch_log.<locals>.remember_lr",
)


def handler_name(engine: str, event: str, handler: Any) -> str | None:
    """The :data:`ORDER` name of a handler an engine holds, :data:`YOURS` for one fmtk did not
    attach, None for the engines' own (Ignite's epoch bookkeeping, the metrics')."""
    while hasattr(handler, "_parent"):  # Ignite wraps a handler of a filtered event
        handler = handler._parent()
    qualname = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    if qualname.startswith(_IGNITE_OWN) or "remember_lr" in qualname:
        return None
    if isinstance(handler, Checkpoint):
        return "best checkpoint" if engine == "evaluator" else "last checkpoint (every kept state)"
    if isinstance(handler, EarlyStopping):
        return "early stopping"
    if isinstance(handler, CheckpointablePlateau):
        return "plateau LR schedule"
    if isinstance(handler, ParamScheduler) or type(handler).__name__ == "LRScheduler":
        return "the per-step LR schedule"
    if isinstance(handler, OptimizerParamsHandler):
        return "TensorBoard: lr"
    if isinstance(handler, OutputHandler):
        return "TensorBoard: valid metrics" if engine == "evaluator" else "TensorBoard: train loss"
    return _NAMES.get(qualname, YOURS)


def handlers_in_order(trainer: Engine, evaluator: Engine) -> list[tuple[str, str, str]]:
    """``(engine, event, name)`` of every handler the engines hold, in the order each event calls
    them (an event with a filter, e.g. every N iterations, under its plain name)."""
    found = []
    for engine_name, engine in (("trainer", trainer), ("evaluator", evaluator)):
        for event, handlers in engine._event_handlers.items():  # Ignite's registry, in calling order
            event_name = getattr(event, "name", str(event)).split("(")[0]
            for handler, _, _ in handlers:
                name = handler_name(engine_name, event_name, handler)
                if name is not None:
                    found.append((engine_name, event_name, name))
    return found


def order_table() -> str:
    """:data:`ORDER` as the markdown table docs/handlers.md shows."""
    lines = ["| engine | event | handler | when |", "|---|---|---|---|"]
    lines += [f"| {step.engine} | `{step.event}` | {step.handler} | {step.when} |" for step in ORDER]
    return "\n".join(lines)
