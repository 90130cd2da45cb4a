"""The order of a run's handlers, written once: which handler runs at which event of which engine,
in what order, and where your own handlers go. docs/handlers.md shows :data:`ORDER` (its table is
checked against it), and tests/training/test_order.py checks the engines of assembled runs against it
(:func:`handlers_in_order`). Within one event Ignite calls handlers in the order they were
attached, so this is also the order of attachment in ``training.build``; the checkpoints are
attached last, by :meth:`~fmtk.training.run.Run.prepare`, after every handler of yours."""

from __future__ import annotations

from typing import Any, NamedTuple

from ignite.engine import Engine
from ignite.handlers import ParamScheduler


class Step(NamedTuple):
    """One handler of a run: the engine and event it runs at, its name, when a run has it, and the
    functions or classes (qualified names, as the engine holds them) that are it."""

    engine: str
    event: str
    handler: str
    when: str
    functions: tuple[str, ...] = ()


YOURS = "yours"  # a recipe's attach, a --handler, or a handler attached to run.trainer/run.evaluator
T, E = "trainer", "evaluator"
ALWAYS, MAIN, BAR = "always", "rank 0", "in a terminal or Jupyter, rank 0"

ORDER: tuple[Step, ...] = (
    Step(T, "EPOCH_STARTED", "the epoch's order of the training data (set_epoch)", ALWAYS,
         ("attach_handlers.<locals>.order_epoch",)),
    Step(T, "EPOCH_STARTED", "the epoch's timer and first-step LR (the epoch line)", ALWAYS,
         ("attach_epoch_log.<locals>.arm",)),
    Step(T, "EPOCH_STARTED", "TensorBoard: lr", MAIN, ("OptimizerParamsHandler",)),
    Step(T, "EPOCH_STARTED", YOURS, YOURS),
    Step(T, "ITERATION_STARTED", "the per-step LR schedule", "schedule onecycle or cosine"),
    Step(T, "BACKWARD_COMPLETED", "gradient clipping", "max_grad_norm",
         ("attach_gradient_clipping.<locals>.clip",)),
    Step(T, "ITERATION_COMPLETED", "EMA: warm-up of its decay, then the update", "ema_decay",
         ("attach_ema.<locals>.warm_up", "EMAHandler._update_ema_model")),
    Step(T, "ITERATION_COMPLETED", "progress bar", BAR, ("_OutputHandler",)),
    Step(T, "ITERATION_COMPLETED", "every log_every steps: NaN check, the loss and LR kept for TensorBoard",
         ALWAYS,
         ("_EveryIterations",)),
    Step(T, "ITERATION_COMPLETED", YOURS, YOURS),
    Step(T, "EPOCH_COMPLETED", "progress bar closed", BAR, ("ProgressBar._close",)),
    Step(T, "EPOCH_COMPLETED", "NaN guard: the epoch's losses", ALWAYS,
         ("attach_nonfinite_guard.<locals>.check_epoch",)),
    Step(T, "EPOCH_COMPLETED", "the training DataLoader's iterator ended (its sampler's last draw, kept)",
         "a training DataLoader with its own generator", ("LoaderGenerators.end_epoch",)),
    Step(T, "EPOCH_COMPLETED", "BatchNorm buffers from rank 0", "always (a no-op in one process)",
         ("attach_handlers.<locals>.share_buffers",)),
    Step(T, "EPOCH_COMPLETED", "validation: runs the evaluator (its COMPLETED handlers below)", ALWAYS,
         ("attach_validation.<locals>.validate",)),
    Step(E, "COMPLETED", "a valid loss that is not finite stops the run", ALWAYS,
         ("attach_validation.<locals>.stop_if_not_finite",)),
    Step(E, "COMPLETED", "early stopping", "early_stopping_patience", ("EarlyStopping",)),
    Step(E, "COMPLETED", "early stopping's decision kept in RunStop", "early_stopping_patience",
         ("attach_early_stopping.<locals>.record",)),
    Step(E, "COMPLETED", "plateau LR schedule", "schedule plateau with plateau_patience",
         ("CheckpointablePlateau",)),
    Step(E, "COMPLETED", "TensorBoard: valid metrics", MAIN, ("OutputHandler",)),
    Step(E, "COMPLETED", YOURS, YOURS),
    Step(E, "COMPLETED", "best checkpoint", ALWAYS, ("Checkpoint",)),
    Step(T, "EPOCH_COMPLETED", "the epoch line and its row, run.history[-1]", ALWAYS,
         ("attach_epoch_log.<locals>.log_epoch",)),
    Step(T, "EPOCH_COMPLETED", "TensorBoard: train loss", MAIN, ("OutputHandler",)),
    Step(T, "EPOCH_COMPLETED", "TensorBoard: the epoch's per-iteration points", MAIN,
         ("attach_tensorboard.<locals>.write_points",)),
    Step(T, "EPOCH_COMPLETED", YOURS, YOURS),
    Step(T, "EPOCH_COMPLETED", "metrics.csv: the epoch's row, with the values your handlers added", MAIN,
         ("attach_epoch_record.<locals>.record_epoch",)),
    Step(T, "EPOCH_COMPLETED", "MLflow or W&B: the epoch's row and per-iteration points",
         "track mlflow or wandb, rank 0", ("Tracker.log_epoch",)),
    Step(T, "EPOCH_COMPLETED", "last checkpoint (every kept state)", ALWAYS, ("Checkpoint",)),
    Step(T, "EPOCH_COMPLETED", "superseded checkpoints removed", ALWAYS,
         ("attach_checkpoints.<locals>.flush_removals",)),
    Step(T, "TERMINATE", "early stopping's line", "early_stopping_patience",
         ("attach_early_stopping.<locals>.say_why",)),
)  # fmt: skip

# (engine, qualified name) → the step's name; a name on several engines (Checkpoint, OutputHandler) is
# told apart by its engine.
_NAMES = {(step.engine, function): step.handler for step in ORDER for function in step.functions}
_IGNITE_OWN = ("Engine._", "Metric.", "_start_epoch", "_finish_epoch")
_FOR_ONE_STEP = "attach_epoch_log.<locals>.remember_lr"  # the epoch line's, there for one step only


def handler_name(engine: str, event: str, handler: Any) -> str | None:
    """The :data:`ORDER` name of a handler an engine holds, :data:`YOURS` for one fmtk did not
    attach, None for the engines' own (Ignite's epoch bookkeeping, the metrics')."""
    while hasattr(handler, "_parent"):  # Ignite wraps a handler of a filtered event
        handler = handler._parent()
    qualname = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    if qualname.startswith(_IGNITE_OWN) or qualname == _FOR_ONE_STEP:
        return None
    if (engine, qualname) in _NAMES:
        return _NAMES[engine, qualname]
    if isinstance(handler, ParamScheduler) or type(handler).__name__ == "LRScheduler":  # many classes
        return "the per-step LR schedule"
    return YOURS


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
