"""Gradient accumulation (``accumulate_steps``): batch 32 × 4 steps as batch 128 does, the partial last
group, schedules counted in optimizer steps, clipping once per step, the EMA, DistributedDataParallel."""

from __future__ import annotations

import contextlib
import math
import socket
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from torch import nn

from fmtk.distributed import launch
from fmtk.optimizers import create_optimizer
from fmtk.training import accumulation
from fmtk.training.build import build_run
from fmtk.training.engines import SpeedOptions, StepEvents, create_trainer
from fmtk.training.handlers import attach_ema, ema_momentum
from fmtk.training.schedules import attach_lr_schedule

CPU = torch.device("cpu")
FP32 = SpeedOptions("32", False)


def small_model() -> nn.Module:
    """No BatchNorm, no dropout: the batch's composition changes nothing but the gradient."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))


def big_batches(count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(128, 8, generator=generator), torch.randint(0, 3, (128,), generator=generator))
            for _ in range(count)]  # fmt: skip


def split(batches: list, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same samples in the same order, in batches of ``size``."""
    return [(x[i : i + size], y[i : i + size]) for x, y in batches for i in range(0, len(x), size)]


def train(
    model: nn.Module,
    batches: list,
    accumulate_steps: int,
    optimizer: str = "SGD",
    arguments: dict | None = None,
    epochs: int = 2,
    speed: SpeedOptions = FP32,
) -> tuple[list[list[torch.Tensor]], list[float]]:
    """The parameters after each optimizer step, and each epoch's training loss."""
    optimizer = create_optimizer(optimizer, model, 0.05, 0.0, CPU, arguments)
    scaler = torch.amp.GradScaler("cpu") if speed.precision == "16-mixed" else None
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(), CPU, speed, scaler, accumulate_steps)
    after_steps: list[list[torch.Tensor]] = []
    losses: list[float] = []
    trainer.add_event_handler(
        accumulation.step_completed(accumulate_steps),
        lambda _: after_steps.append([p.detach().clone() for p in model.parameters()]),
    )
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda engine: losses.append(engine.state.metrics["loss"])
    )
    trainer.run(batches, max_epochs=epochs)
    return after_steps, losses


@pytest.mark.parametrize(
    "optimizer, arguments", [("SGD", {"momentum": 0.9}), ("Adam", {})], ids=["SGD-momentum", "Adam"]
)
def test_batch_32_times_4_steps_as_batch_128(optimizer: str, arguments: dict) -> None:
    """The issue's acceptance test: the same samples in the same order, the same updates."""
    batches = big_batches()
    whole, whole_losses = train(small_model(), batches, 1, optimizer, arguments)
    accumulated, accumulated_losses = train(small_model(), split(batches, 32), 4, optimizer, arguments)
    assert len(whole) == len(accumulated) == 6  # 3 steps an epoch, 2 epochs
    for step, (expected, got) in enumerate(zip(whole, accumulated, strict=True)):
        for a, b in zip(expected, got, strict=True):
            torch.testing.assert_close(
                b, a, rtol=1e-5, atol=1e-6, msg=lambda m, step=step: f"step {step + 1}: {m}"
            )
    # Each batch's own loss is reported (a group's weights do not change between its batches, so the
    # mean of the four quarter-batch losses is the whole batch's): not the loss divided by 4.
    assert accumulated_losses == pytest.approx(whole_losses, rel=1e-5)


def test_16_mixed_accumulates_the_unscaled_gradient_and_steps_the_scaler_once_per_group() -> None:
    """float16 autocast with a gradient scaler runs on the CPU too (torch ≥ 2.3): the scaler's
    unscale, step and update come once per group, and the step is batch 128's up to float16's error."""
    batches = big_batches()
    whole, _ = train(small_model(), batches, 1, epochs=1)
    speed = SpeedOptions("16-mixed", False)
    updates = []
    real_update = torch.amp.GradScaler.update
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            torch.amp.GradScaler, "update", lambda self, *a: updates.append(1) or real_update(self, *a)
        )
        accumulated, _ = train(small_model(), split(batches, 32), 4, epochs=1, speed=speed)
    assert len(updates) == len(accumulated) == 3
    for expected, got in zip(whole, accumulated, strict=True):
        for a, b in zip(expected, got, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-3)


def test_a_partial_last_group_steps_on_its_own_mean() -> None:
    """10 batches with N=4: groups of 4, 4 and 2, three optimizer steps an epoch; the last group's
    gradient is the mean over its two batches (as a batch of their samples would give)."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(), CPU, accumulate_steps=4)
    batches = split(big_batches(5), 64)[:10]
    steps, gradients, zeroed = [], [], []
    optimizer.register_step_post_hook(lambda *_: steps.append(trainer.state.iteration))
    trainer.on(StepEvents.BACKWARD_COMPLETED)(lambda _: gradients.append(model[0].weight.grad.clone()))
    real_zero_grad = optimizer.zero_grad
    optimizer.zero_grad = lambda **kwargs: zeroed.append(trainer.state.iteration) or real_zero_grad(**kwargs)

    @trainer.on(Events.ITERATION_STARTED(once=9))  # before the last group: its expected gradient
    def expected_gradient(engine) -> None:
        reference = small_model()
        reference.load_state_dict(model.state_dict())
        for x, y in batches[8:]:
            (nn.functional.cross_entropy(reference(x), y) / 2).backward()
        engine.state.expected = reference[0].weight.grad

    trainer.run(batches, max_epochs=2)
    assert steps == [4, 8, 10, 14, 18, 20] and zeroed == [1, 5, 9, 11, 15, 19]
    torch.testing.assert_close(gradients[2], trainer.state.expected)
    assert accumulation.steps_per_epoch(10, 4) == 3 and accumulation.steps_per_epoch(12, 4) == 3


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_schedule_moves_once_per_optimizer_step(schedule: str) -> None:
    """With N=3 over 10 batches, the schedule moves at each group's first batch, 4 times an epoch,
    and each optimizer step uses the value its N=1 counterpart would at the same step number."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    trainer = create_trainer(nn.Identity(), optimizer, lambda x, y: x.sum(), CPU, accumulate_steps=3)
    warmup = {"warmup_epochs": 1.0} if schedule == "cosine" else {}
    attach_lr_schedule(trainer, optimizer, schedule, 0.1, 3, 10, **warmup, accumulate_steps=3)
    used = []
    optimizer.register_step_pre_hook(lambda *_: used.append(optimizer.param_groups[0]["lr"]))
    batches = [(torch.ones(2, 1, requires_grad=True), torch.zeros(2))] * 10
    trainer.run(batches, max_epochs=3)
    assert len(used) == 12

    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    expected = []
    engine = create_trainer(nn.Identity(), reference, lambda x, y: x.sum(), CPU)
    attach_lr_schedule(engine, reference, schedule, 0.1, 3, 4, **warmup)
    reference.register_step_pre_hook(lambda *_: expected.append(reference.param_groups[0]["lr"]))
    engine.run(batches[:4], max_epochs=3)
    assert used == pytest.approx(expected)


def test_onecycle_reaches_its_end_at_the_last_optimizer_step(tmp_path: Path) -> None:
    """A whole run: one-cycle laid out over ceil(batches / N) steps an epoch ends at its final value
    on the run's last step (OneCycleLR raises when stepped past its total), and the epoch log's LR
    is that of each epoch's first step."""
    run = build_run("digits_mlp", tmp_path, CPU, echo=None, epochs=2, schedule="onecycle",
                    plateau_patience=None, early_stopping_patience=None, accumulate_steps=3)  # fmt: skip
    batches = len(run.data.train)
    steps = math.ceil(batches / 3)
    assert batches % 3 != 0  # the epoch ends on a partial group
    used = []
    run.optimizer.register_step_pre_hook(lambda *_: used.append(run.optimizer.param_groups[0]["lr"]))
    run.run()
    assert len(used) == 2 * steps
    lr = run.recipe.lr
    assert used[-1] == pytest.approx(lr / 25 / 1e4, rel=1e-3)  # OneCycleLR's end: initial lr / 1e4
    assert used[0] == pytest.approx(lr / 25)
    assert [row["lr"] for row in run.history] == pytest.approx([used[0], used[steps]])


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_max_grad_norm_clips_each_step_once_on_the_accumulated_gradient(
    precision: str, tmp_path: Path
) -> None:
    max_norm, lr = 1e-3, 0.1
    run = build_run("digits_mlp", tmp_path, CPU, echo=None, speed=SpeedOptions(precision, False), epochs=1,
                    optimizer="SGD", lr=lr, max_grad_norm=max_norm, accumulate_steps=3)  # fmt: skip
    parameters = list(run.model.parameters())
    steps = []

    @run.trainer.on(StepEvents.BACKWARD_COMPLETED)  # after the clipping, attached first
    def before_step(engine) -> None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters]))
        steps.append([float(norm), [p.detach().clone() for p in parameters]])

    @run.trainer.on(accumulation.step_completed(3))
    def after_step(engine) -> None:
        moved = [p.detach() - before for p, before in zip(parameters, steps[-1][1], strict=True)]
        steps[-1][1] = float(
            torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m) for m in moved]))
        )

    run.run()
    assert len(steps) == math.ceil(len(run.data.train) / 3)
    taken = [(norm, moved) for norm, moved in steps if math.isfinite(norm)]  # 16-mixed skips inf steps
    assert len(taken) >= len(steps) // 2
    for norm, moved in taken:
        assert norm == pytest.approx(max_norm, rel=1e-3)
        assert moved == pytest.approx(lr * max_norm, rel=1e-2)


def test_the_ema_averages_once_per_optimizer_step() -> None:
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(), CPU, accumulate_steps=4)
    ema = EMAHandler(model, momentum=0.1, handle_buffers="update")
    attach_ema(trainer, ema, 0.99, accumulate_steps=4)
    updates = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: updates.append(e.state.ema_momentum))
    trainer.run(split(big_batches(), 32)[:10], max_epochs=2)
    # Set at each group's last batch from the number of that optimizer step: 1, 2, 3 (the partial
    # group of two), then 4, 5, 6 in epoch 2.
    expected = [ema_momentum(0.99, step) for step in (1, 2, 3, 4, 5, 6)]
    assert [updates[i] for i in (3, 7, 9, 13, 17, 19)] == pytest.approx(expected)
    assert updates[4:7] == [updates[3]] * 3  # unchanged inside a group: no update there


def _accumulate_under_ddp(local_rank: int, seen: dict) -> None:
    batches = big_batches()
    model = small_model()
    ddp = nn.parallel.DistributedDataParallel(model)
    real_no_sync = ddp.no_sync

    @contextlib.contextmanager
    def counted_no_sync():
        seen.setdefault("no_sync", []).append(len(seen.get("no_sync", [])))
        with real_no_sync():
            yield

    ddp.no_sync = counted_no_sync
    optimizer = create_optimizer("SGD", model, 0.05, 0.0, CPU, {"momentum": 0.9})
    trainer = create_trainer(ddp, optimizer, nn.CrossEntropyLoss(), CPU, accumulate_steps=4)
    trainer.run(split(batches, 32), max_epochs=1)
    seen["parameters"] = [p.detach().clone() for p in model.parameters()]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_distributed_data_parallel_skips_the_all_reduce_inside_a_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group's first N-1 backward passes run in ``no_sync()`` (one gloo process, torchrun's way)."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(port)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    seen: dict = {}
    launch(_accumulate_under_ddp, seen, None, "gloo")
    assert len(seen["no_sync"]) == 9  # 3 groups of 4 batches, the last of each synchronised
    whole, _ = train(small_model(), big_batches(), 1, "SGD", {"momentum": 0.9}, epochs=1)
    for a, b in zip(whole[-1], seen["parameters"], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
