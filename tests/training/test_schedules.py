"""The per-iteration LR schedules take the values they promise at known iterations."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine

from fmtk.errors import FmtkError
from fmtk.training.schedules import attach_lr_schedule


def lrs_seen(schedule: str, epochs: int = 2, steps: int = 10, **kwargs) -> list[float]:
    """The LR of each training step under ``schedule`` (read inside the step)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    seen: list[float] = []
    trainer = Engine(lambda engine, batch: seen.append(optimizer.param_groups[0]["lr"]))
    attach_lr_schedule(trainer, optimizer, schedule, 0.1, epochs, steps, **kwargs)
    trainer.run(range(steps), max_epochs=epochs)
    return seen


def test_onecycle_rises_to_the_peak_and_falls_to_almost_nothing() -> None:
    seen = lrs_seen("onecycle", epochs=2, steps=50)
    assert len(seen) == 100
    assert seen[0] == pytest.approx(0.1 / 25)  # OneCycleLR's start: max_lr / div_factor
    assert max(seen) == pytest.approx(0.1) and seen.index(max(seen)) == 29  # peak after 30%
    assert seen[-1] == pytest.approx(0.1 / 25 / 1e4, rel=1e-2)


def test_cosine_with_warmup_rises_linearly_then_falls_by_a_half_cosine() -> None:
    seen = lrs_seen("cosine", epochs=3, steps=10, warmup_epochs=1)
    assert len(seen) == 30
    assert seen[0] == pytest.approx(0.001)  # warm-up from lr / 100 ...
    assert seen[5] == pytest.approx(0.001 + 5 * (0.1 - 0.001) / 9, rel=1e-3)  # ... linearly ...
    assert seen[9] == pytest.approx(0.1)  # ... to lr at the warm-up's last step; then the cosine
    for step in (10, 20, 29):  # of the 21-step cycle (its first value, lr, was the warm-up's last)
        assert seen[step] == pytest.approx(0.1 * (1 + math.cos(math.pi * (step - 9) / 21)) / 2)
    assert all(a >= b for a, b in zip(seen[9:], seen[10:], strict=False)) and seen[-1] < 0.001


def test_cosine_without_warmup_starts_at_the_lr() -> None:
    seen = lrs_seen("cosine", epochs=1, steps=20)
    assert seen[0] == pytest.approx(0.1) and seen[-1] < 0.003


def test_a_warmup_as_long_as_the_run_is_refused() -> None:
    with pytest.raises(
        FmtkError,
        match=r"warmup_epochs 2 leaves no epoch .* \(--set warmup_epochs=0, or a value below epochs\)",
    ):
        lrs_seen("cosine", epochs=2, warmup_epochs=2)


def test_the_schedule_resumes_from_its_state() -> None:
    """Saved after an epoch and loaded into a fresh one, the schedule goes on where it was."""
    whole = lrs_seen("onecycle", epochs=2, steps=10)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    trainer = Engine(lambda engine, batch: None)
    scheduler = attach_lr_schedule(trainer, optimizer, "onecycle", 0.1, 2, 10)
    trainer.run(range(10), max_epochs=1)
    states = scheduler.state_dict(), optimizer.state_dict(), trainer.state_dict()

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    seen: list[float] = []
    trainer = Engine(lambda engine, batch: seen.append(optimizer.param_groups[0]["lr"]))
    scheduler = attach_lr_schedule(trainer, optimizer, "onecycle", 0.1, 2, 10)
    for state, saved in zip((scheduler, optimizer, trainer), states, strict=True):
        state.load_state_dict(saved)
    trainer.run(range(10), max_epochs=2)
    assert seen == pytest.approx(whole[10:])
