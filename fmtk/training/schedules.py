"""The learning-rate schedules a recipe names, on Ignite's param schedulers: ``plateau`` (the
notebooks': ReduceLROnPlateau on a valid metric, once per epoch), ``onecycle`` and ``cosine`` (with
an optional linear warm-up), which move at every optimizer step (every iteration, unless gradients
accumulate); ``none`` keeps the LR constant.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import (
    CosineAnnealingScheduler,
    LRScheduler,
    ParamScheduler,
    ReduceLROnPlateauScheduler,
    create_lr_scheduler_with_warmup,
)

from fmtk.errors import FmtkError
from fmtk.recipe import PER_ITERATION_SCHEDULES, Recipe
from fmtk.training import accumulation


def attach_schedule(
    recipe: Recipe,
    trainer: Engine,
    evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    batches_per_epoch: int,
) -> ParamScheduler | CheckpointablePlateau | None:
    """The recipe's LR schedule, attached (its state goes into the last checkpoint), or None."""
    if recipe.schedule in PER_ITERATION_SCHEDULES:
        return attach_lr_schedule(
            trainer,
            optimizer,
            recipe.schedule,
            recipe.lr,
            recipe.epochs,
            batches_per_epoch,
            recipe.warmup_epochs,
            recipe.accumulate_steps,
        )
    if recipe.schedule == "plateau" and recipe.plateau_patience is not None:
        return attach_lr_plateau(
            evaluator,
            optimizer,
            recipe.plateau_patience,
            recipe.plateau_factor,
            *recipe.watched("plateau_metric"),
        )
    return None


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


class CheckpointablePlateau(ReduceLROnPlateauScheduler):
    """Ignite's ReduceLROnPlateauScheduler, with a state_dict that ``torch.load(weights_only=True)`` reads.

    Ignite patches a bound method onto the torch scheduler, which then lands in its state_dict;
    it is dropped on save and patched back on load.
    """

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["scheduler"] = {k: v for k, v in state["scheduler"].items() if k != "_reduce_lr"}
        return state

    def load_state_dict(self, state_dict: Mapping) -> None:
        super().load_state_dict(state_dict)
        self.scheduler._reduce_lr = self._reduce_lr


def attach_lr_plateau(
    evaluator: Engine,
    optimizer: torch.optim.Optimizer,
    patience: int,
    factor: float,
    metric: str = "loss",
    mode: str = "min",
) -> CheckpointablePlateau:
    """Multiply the LR by ``factor`` when the valid ``metric`` has not improved (``mode`` min or
    max) for ``patience`` epochs."""
    scheduler = CheckpointablePlateau(optimizer, metric, mode=mode, factor=factor, patience=patience)
    # On the evaluator, not the trainer: it needs the valid loss, once per validation.
    evaluator.add_event_handler(Events.COMPLETED, scheduler)
    return scheduler
