"""The handlers really act: early stopping stops, the plateau lowers the LR, state survives a save."""

from __future__ import annotations

import math
import re
from pathlib import Path

import ignite.distributed as idist
import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from torch import nn

from fmtk.training.handlers import (
    NonFiniteLoss,
    attach_early_stopping,
    attach_nonfinite_guard,
    attach_validation,
    every_iterations,
)
from fmtk.training.schedules import attach_lr_plateau


def scripted_engines(valid_losses: list[float], metric: str = "loss") -> tuple[Engine, Engine]:
    """A trainer and an evaluator whose valid ``metric`` after epoch k is ``valid_losses[k - 1]``."""
    trainer = Engine(lambda engine, batch: None)
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.COMPLETED)
    def set_loss(engine: Engine) -> None:
        engine.state.metrics[metric] = valid_losses[trainer.state.epoch - 1]

    attach_validation(trainer, evaluator, [0])
    return trainer, evaluator


def test_early_stopping_stops_after_patience_bad_epochs() -> None:
    trainer, evaluator = scripted_engines([1.0, 0.9, 0.8, 0.85, 0.9, 0.95, 0.7, 0.6, 0.5, 0.4])
    attach_early_stopping(trainer, evaluator, patience=3)
    trainer.run([0], max_epochs=10)
    assert trainer.state.epoch == 6  # best at 3; epochs 4, 5, 6 did not improve


def test_early_stopping_watches_any_metric_and_says_why_it_stopped(capsys: pytest.CaptureFixture) -> None:
    trainer, evaluator = scripted_engines([0.5, 0.7, 0.6, 0.65, 0.7, 0.9], metric="f1")
    lines = []
    attach_early_stopping(trainer, evaluator, patience=3, metric="f1", mode="max", echo=lines.append)
    trainer.run([0], max_epochs=6)
    assert trainer.state.epoch == 5  # best (highest) at 2; epochs 3, 4, 5 did not beat it
    assert lines == ["early stopping: valid f1 has not improved for 3 epochs; stopped after epoch 5"]
    assert "EarlyStopping" not in capsys.readouterr().err  # Ignite's own INFO line stays quiet


def test_early_stopping_counter_survives_evaluations() -> None:
    # Ignite's attach() would reset the counter at every evaluation and never stop.
    trainer, evaluator = scripted_engines([1.0] + [2.0] * 9)
    attach_early_stopping(trainer, evaluator, patience=2)
    trainer.run([0], max_epochs=10)
    assert trainer.state.epoch == 3


def test_plateau_lowers_the_lr() -> None:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    trainer, evaluator = scripted_engines([1.0, 0.9, 0.95, 0.95, 0.95, 0.95])
    lrs = []
    attach_lr_plateau(evaluator, optimizer, patience=2, factor=0.1)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.run([0], max_epochs=6)
    assert [round(lr, 6) for lr in lrs] == [0.1, 0.1, 0.1, 0.1, 0.01, 0.01]


def test_plateau_watches_any_metric() -> None:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    trainer, evaluator = scripted_engines([0.5, 0.6, 0.55, 0.55, 0.7], metric="top2")
    lrs = []
    attach_lr_plateau(evaluator, optimizer, patience=1, factor=0.5, metric="top2", mode="max")
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: lrs.append(optimizer.param_groups[0]["lr"]))
    trainer.run([0], max_epochs=5)
    assert lrs == [0.1, 0.1, 0.1, 0.05, 0.05]  # 0.55 twice below the best 0.6: halved after the second


def test_plateau_and_early_stopping_state_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.1)
    trainer, evaluator = scripted_engines([1.0, 1.1, 1.2])
    scheduler = attach_lr_plateau(evaluator, optimizer, patience=5, factor=0.1)
    stopper = attach_early_stopping(trainer, evaluator, patience=5)
    trainer.run([0], max_epochs=3)
    to_save = {"lr_scheduler": scheduler, "early_stopping": stopper, "trainer": trainer}
    checkpoint = Checkpoint(to_save, DiskSaver(str(tmp_path), require_empty=False))
    checkpoint(trainer)
    saved = torch.load(tmp_path / checkpoint.last_checkpoint, weights_only=True)  # plain values only

    fresh_optimizer = torch.optim.SGD(nn.Linear(1, 1).parameters(), lr=0.5)
    fresh_trainer, fresh_evaluator = scripted_engines([9.0])
    fresh_scheduler = attach_lr_plateau(fresh_evaluator, fresh_optimizer, patience=5, factor=0.1)
    fresh_stopper = attach_early_stopping(fresh_trainer, fresh_evaluator, patience=5)
    Checkpoint.load_objects({"lr_scheduler": fresh_scheduler, "early_stopping": fresh_stopper}, saved)
    assert fresh_scheduler.scheduler.num_bad_epochs == scheduler.scheduler.num_bad_epochs == 2
    assert fresh_scheduler.scheduler.best == 1.0
    assert (fresh_stopper.counter, fresh_stopper.best_score) == (2, 1.0)
    fresh_scheduler.scheduler.num_bad_epochs = 5
    fresh_scheduler.scheduler.step(2.0)  # the re-patched reduction still acts on the new optimizer
    assert fresh_optimizer.param_groups[0]["lr"] == 0.05


def test_every_iterations_counts_the_whole_run_like_ignites_filter() -> None:
    trainer = Engine(lambda engine, batch: None)
    seen: dict[str, list[int]] = {"fmtk": [], "ignite": []}
    every_iterations(trainer, 3, lambda engine: seen["fmtk"].append(engine.state.iteration))
    every_iterations(trainer, 4, lambda engine: seen["fmtk"].append(-engine.state.iteration))
    trainer.on(Events.ITERATION_COMPLETED(every=3))(
        lambda engine: seen["ignite"].append(engine.state.iteration)
    )
    trainer.on(Events.ITERATION_COMPLETED(every=4))(
        lambda engine: seen["ignite"].append(-engine.state.iteration)
    )
    trainer.run(range(5), max_epochs=3)
    assert seen["fmtk"] == seen["ignite"] == [3, -4, 6, -8, 9, 12, -12, 15]
    assert len(trainer._event_handlers[Events.ITERATION_COMPLETED]) == 3  # one for fmtk's, two filters


def guarded_trainer(bad_iterations: set[int], check_every: int) -> tuple[Engine, list[int]]:
    """A trainer keeping each step's loss (NaN at ``bad_iterations``) as fmtk's does, with the NaN
    guard checking every ``check_every`` iterations; the iterations that ran."""
    ran = []

    def step(engine: Engine, _: object) -> torch.Tensor:
        ran.append(engine.state.iteration)
        loss = torch.tensor(math.nan if engine.state.iteration in bad_iterations else 0.5)
        engine.state.batch_losses.append(loss)
        return loss

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: setattr(engine.state, "batch_losses", []))
    attach_nonfinite_guard(trainer, check_every)
    return trainer, ran


@pytest.mark.parametrize(
    ("bad", "stopped_at", "message"),
    [
        # The check at 6 finds it on the device; the host reads it at the next check (8), not at once.
        ({6, 7}, 8, "epoch 1, iteration 6; stopped (no checkpoint was written yet)"),
        # Found after the last check of the epoch: read at the epoch's end, before its checkpoint.
        ({11}, 12, "epoch 1, iteration 11; stopped (no checkpoint was written yet)"),
        ({12}, 12, "epoch 1, iteration 12"),
        ({15}, 20, "epoch 2, iteration 15; stopped (the last checkpoint is from before it)"),
    ],
    ids=["mid-epoch", "after-the-last-check", "last-step", "second-epoch"],
)
def test_the_nan_guard_names_the_first_bad_iteration_one_check_later(
    bad: set[int], stopped_at: int, message: str
) -> None:
    trainer, ran = guarded_trainer(bad, check_every=4 if 15 in bad else 2)
    with pytest.raises(NonFiniteLoss, match=re.escape(message)):
        trainer.run(range(12), max_epochs=3)
    assert ran[-1] == stopped_at


def _guard_in_each_process(rank: int) -> tuple[int, str]:
    trainer, ran = guarded_trainer({6} if rank == 1 else set(), check_every=2)
    try:
        trainer.run(range(12), max_epochs=1)
    except NonFiniteLoss as error:
        return ran[-1], str(error)
    return ran[-1], "finished"


@pytest.mark.slow  # two processes, each importing torch
def test_the_nan_guard_stops_every_process_at_the_same_iteration() -> None:
    with idist.Parallel(backend="gloo", nproc_per_node=2) as parallel:
        parallel.run(_report_guard)


def _report_guard(_: int) -> None:
    stopped_at, said = _guard_in_each_process(idist.get_rank())
    # Only process 1 had a NaN; both stop after the same step, saying the same.
    assert [stopped_at, said] == [8, "training loss became NaN or infinite at epoch 1, iteration 6; "
                                  "stopped (no checkpoint was written yet)"]  # fmt: skip
