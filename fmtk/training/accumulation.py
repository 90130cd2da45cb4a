"""Gradient accumulation (a recipe's ``accumulate_steps``): which batches make one optimizer step.

With ``accumulate_steps`` N the batches of an epoch are taken in groups of N; the gradients of a
group add up and the optimizer steps once, at its last batch. When N does not divide the epoch's
batch count, the epoch's last group is smaller. Groups never cross the end of an epoch, so every
end-of-epoch checkpoint sits between two optimizer steps. Everything here follows from the
trainer's iteration and epoch length: a resumed run needs no state of its own for it.
"""

from __future__ import annotations

from ignite.engine import Engine, Events
from ignite.engine.events import CallableEventWithFilter


def steps_per_epoch(batches: int, accumulate_steps: int) -> int:
    """The optimizer steps of an epoch of ``batches`` batches: one per group, the last one may be
    smaller (``ceil(batches / accumulate_steps)``)."""
    return -(-batches // accumulate_steps)


def batch_in_epoch(engine: Engine) -> int:
    """The index (from 0) of the trainer's current batch in its epoch."""
    return (engine.state.iteration - 1) % engine.state.epoch_length


def place_in_group(engine: Engine, accumulate_steps: int) -> tuple[int, int]:
    """Where the current batch is: its index in its group (from 0) and the group's size."""
    index = batch_in_epoch(engine)
    first = index - index % accumulate_steps
    return index - first, min(accumulate_steps, engine.state.epoch_length - first)


def optimizer_step(engine: Engine, accumulate_steps: int) -> int:
    """The number (from 1, over the whole run) of the optimizer step the current batch belongs to."""
    epochs_done = (engine.state.iteration - 1) // engine.state.epoch_length
    per_epoch = steps_per_epoch(engine.state.epoch_length, accumulate_steps)
    return epochs_done * per_epoch + batch_in_epoch(engine) // accumulate_steps + 1


def step_started(accumulate_steps: int) -> Events | CallableEventWithFilter:
    """``ITERATION_STARTED`` of the first batch of each group: where a per-step handler (an LR
    schedule) sets what the group's optimizer step uses. Every iteration when N is 1 (no filter)."""
    if accumulate_steps == 1:
        return Events.ITERATION_STARTED
    return Events.ITERATION_STARTED(
        event_filter=lambda engine, _: batch_in_epoch(engine) % accumulate_steps == 0
    )


def step_completed(accumulate_steps: int) -> Events | CallableEventWithFilter:
    """``ITERATION_COMPLETED`` of the last batch of each group, after the optimizer stepped (an EMA
    of the weights). Every iteration when N is 1 (no filter)."""
    if accumulate_steps == 1:
        return Events.ITERATION_COMPLETED

    def ends_group(engine: Engine, _: int) -> bool:
        index, size = place_in_group(engine, accumulate_steps)
        return index == size - 1

    return Events.ITERATION_COMPLETED(event_filter=ends_group)
