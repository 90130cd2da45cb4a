"""The learning-rate schedules a recipe names, on Ignite's param schedulers.

``plateau`` (the notebooks': ReduceLROnPlateau on a valid metric, once per epoch) is attached by
:func:`fmtk.training.handlers.attach_lr_plateau`; ``onecycle`` and ``cosine`` (with an optional
linear warm-up) move at every optimizer step (every iteration, unless gradients accumulate) and are
attached here; ``none`` keeps the LR constant.
"""

from __future__ import annotations

import torch
from ignite.engine import Engine
from ignite.handlers import (
    CosineAnnealingScheduler,
    LRScheduler,
    ParamScheduler,
    create_lr_scheduler_with_warmup,
)

from fmtk.errors import FmtkError
from fmtk.training import accumulation


def attach_lr_schedule(
    trainer: Engine,
    optimizer: torch.optim.Optimizer,
    schedule: str,
    lr: float,
    epochs: int,
    batches_per_epoch: int,
    warmup_epochs: float = 0.0,
    accumulate_steps: int = 1,
) -> ParamScheduler:
    """Attach the per-step ``schedule`` (``onecycle`` or ``cosine``) over ``epochs`` epochs of
    ``batches_per_epoch`` batches, and return it (its ``state_dict`` belongs in the last checkpoint).

    ``onecycle``: torch's OneCycleLR with ``lr`` as the peak (warm-up over the first 30%, then
    cosine annealing to ``lr / 1e4``). ``cosine``: from ``lr`` to 0 by a half cosine, after a linear
    warm-up from ``lr / 100`` over ``warmup_epochs`` epochs when that is above 0.
    The schedule counts optimizer steps: with ``accumulate_steps`` N it moves at the first batch of
    each group of N (:mod:`fmtk.training.accumulation`), ``ceil(batches_per_epoch / N)`` times an epoch.
    """
    steps_per_epoch = accumulation.steps_per_epoch(batches_per_epoch, accumulate_steps)
    total = epochs * steps_per_epoch
    if schedule == "onecycle":
        scheduler = LRScheduler(torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total))
    elif schedule == "cosine":
        warmup = round(warmup_epochs * steps_per_epoch)
        if warmup >= total:
            raise FmtkError(
                f"warmup_epochs {warmup_epochs} leaves no epoch of the {epochs} for the cosine schedule "
                "(--set warmup_epochs=0, or a value below epochs)"
            )
        # One half cosine over the steps after the warm-up: a cycle as long as what is left.
        scheduler = CosineAnnealingScheduler(optimizer, "lr", lr, 0.0, cycle_size=total - warmup + 1)
        if warmup > 1:  # Ignite's warm-up needs two steps or more (one step is no ramp: skipped)
            scheduler = create_lr_scheduler_with_warmup(
                scheduler, warmup_start_value=lr / 100, warmup_duration=warmup, warmup_end_value=lr
            )
    else:
        raise ValueError(f"not a per-iteration schedule: {schedule}")
    # At ITERATION_STARTED, as Ignite's param schedulers expect: each step uses its own value. With
    # accumulation only at a group's first batch (a filter), so it moves once per optimizer step and
    # an epoch's first batch (whose LR the epoch log reads) has its step's value.
    trainer.add_event_handler(accumulation.step_started(accumulate_steps), scheduler)
    return scheduler
