"""The training step: its open place between backward and step, gradient clipping, and the speed
options (precision, channels_last, torch.compile, fused optimizers)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch import nn

from fmtk.device import resolve_device, threads_by_default
from fmtk.errors import FmtkError, LabelOutOfRange
from fmtk.optimizers import create_optimizer
from fmtk.recipe import apply_overrides
from fmtk.recipe_loading import load_recipe
from fmtk.training.build import build_run
from fmtk.training.checkpoints import read_checkpoint
from fmtk.training.engines import SpeedOptions, StepEvents, create_evaluator, create_trainer

CPU = torch.device("cpu")


def test_cpu_defaults_are_32_bit_and_channels_last_for_conv_nets() -> None:
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    threads = threads_by_default()
    assert SpeedOptions().resolve(CPU, conv) == SpeedOptions("32", True, False, False, threads)
    assert SpeedOptions().resolve(CPU, nn.Linear(2, 2)) == SpeedOptions("32", False, False, False, threads)
    assert SpeedOptions(channels_last=False).resolve(CPU, conv).channels_last is False
    assert SpeedOptions("bf16", True).resolve(CPU, conv) == SpeedOptions("bf16", True, False, False, threads)
    with pytest.raises(FmtkError, match="--precision fp8: choose auto, 32, bf16, 16-mixed"):
        SpeedOptions("fp8").resolve(CPU, conv)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_are_bf16_and_channels_last_for_conv_nets() -> None:
    device = resolve_device("cuda")
    resolved = SpeedOptions().resolve(device, nn.Sequential(nn.Conv2d(1, 2, 3)))
    assert resolved.precision in ("bf16", "16-mixed") and resolved.channels_last
    assert not SpeedOptions().resolve(device, nn.Linear(2, 2)).channels_last


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_optimizers_are_fused_where_torch_offers_it(name: str) -> None:
    optimizer = create_optimizer(name, nn.Linear(3, 2), 0.1, 0.0, CPU)
    assert optimizer.defaults["fused"] is True


@pytest.mark.slow  # trains a CNN three times, once through torch.compile
@pytest.mark.parametrize(
    "speed",
    [SpeedOptions("bf16", True), SpeedOptions("16-mixed", True), SpeedOptions("32", False, compile=True)],
    ids=["bf16-channels-last", "16-mixed", "compile"],
)
def test_each_speed_option_trains_and_is_recorded(
    mnist_root: Path, tmp_path: Path, speed: SpeedOptions
) -> None:
    recipe = apply_overrides(
        load_recipe("fmnist_cnn"), {"epochs": "1", "batch_size": "50", "variant": "basic"}
    )
    (mnist_root / "FashionMNIST").symlink_to(mnist_root / "MNIST")
    run = build_run(recipe, tmp_path / "run", CPU, mnist_root, echo=lambda line: None, speed=speed)
    assert run.model[1][0].weight.is_contiguous(memory_format=torch.channels_last) == speed.channels_last
    results = run.run()
    assert results["precision"] == speed.precision and results["compile"] is bool(speed.compile)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["speed"]["precision"] == speed.precision
    assert results["test"]["best"]["accuracy"] > 0.5  # bars in row bands: easy once trained at all
    checkpoint = read_checkpoint(tmp_path / "run" / "last_checkpoint_1.pt")
    assert ("scaler" in checkpoint) == (speed.precision == "16-mixed")  # fp16's loss scale resumes


def total_norm(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors])))


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_backward_completed_sees_true_gradients_before_the_step(precision: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    trainer = create_trainer(
        model, optimizer, nn.CrossEntropyLoss(), CPU, SpeedOptions(precision, False), scaler
    )
    seen = {}

    @trainer.on(StepEvents.BACKWARD_COMPLETED)
    def record(engine) -> None:
        seen["weight"] = model.weight.detach().clone()
        seen["grad"] = model.weight.grad.clone()
        # The true gradient, as a plain backward pass computes it (not multiplied by the loss scale).
        x, y = engine.state.batch
        reference = nn.Linear(4, 3)
        reference.load_state_dict(model.state_dict())
        with torch.autocast("cpu", dtype=torch.float16, enabled=precision == "16-mixed"):
            nn.functional.cross_entropy(reference(x), y).backward()
        seen["expected_grad"] = reference.weight.grad

    batch = (torch.randn(8, 4), torch.randint(0, 3, (8,)))
    trainer.run([batch], max_epochs=1)
    assert torch.allclose(seen["grad"], seen["expected_grad"], rtol=1e-2, atol=1e-4)
    assert torch.allclose(
        model.weight.detach(), seen["weight"] - 0.5 * seen["grad"], atol=1e-6
    )  # then the step


@pytest.mark.parametrize("precision", ["32", "16-mixed"])
def test_max_grad_norm_bounds_the_step(precision: str, tmp_path: Path) -> None:
    max_norm, lr = 1e-3, 0.1
    overrides = {"epochs": "1", "optimizer": "SGD", "lr": str(lr), "max_grad_norm": str(max_norm)}
    recipe = apply_overrides(load_recipe("digits_mlp"), overrides)
    run = build_run(
        recipe, tmp_path, CPU, tmp_path, echo=lambda line: None, speed=SpeedOptions(precision, False)
    )
    parameters = list(run.model.parameters())
    steps = []

    @run.trainer.on(StepEvents.BACKWARD_COMPLETED)  # attached after the clipping: sees clipped gradients
    def before_step(engine) -> None:
        steps.append([total_norm(p.grad for p in parameters), [p.detach().clone() for p in parameters]])

    @run.trainer.on(Events.ITERATION_COMPLETED)
    def after_step(engine) -> None:
        steps[-1][1] = total_norm(
            p.detach() - before for p, before in zip(parameters, steps[-1][1], strict=True)
        )

    run.run()
    taken = [(norm, moved) for norm, moved in steps if math.isfinite(norm)]  # 16-mixed skips inf steps
    assert len(taken) >= len(steps) // 2
    for norm, moved in taken:
        assert norm == pytest.approx(max_norm, rel=1e-3)  # the raw gradients are far larger
        assert moved == pytest.approx(lr * max_norm, rel=1e-2)  # the optimizer stepped with them


def test_max_grad_norm_is_checked() -> None:
    with pytest.raises(FmtkError, match="max_grad_norm must be > 0 or none, got 0.0"):
        apply_overrides(load_recipe("digits_mlp"), {"max_grad_norm": "0"})


def test_epoch_seconds_leave_out_validation_and_epoch_end_handlers(tmp_path: Path) -> None:
    """The training time a run records per epoch (metrics.csv, the epoch line, benchmarks/speed.py)
    stops before validation and the EPOCH_COMPLETED handlers; Ignite's ``state.times`` read after
    the epoch includes them."""
    run = build_run("digits_mlp", tmp_path, CPU, echo=None, epochs=2)
    started, whole = [], []  # each epoch's wall time from its start to after both sleeps
    run.trainer.add_event_handler(Events.EPOCH_STARTED, lambda _: started.append(time.perf_counter()))
    run.trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: time.sleep(1.0))
    run.evaluator.add_event_handler(Events.COMPLETED, lambda _: time.sleep(1.0))
    run.trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: whole.append(time.perf_counter() - started[-1])
    )
    run.run()
    seconds = [row["epoch_seconds"] for row in run.history]
    # Whatever the machine's load: the two sleeps (2 s) are in the whole epoch, not in its training time.
    assert len(seconds) == 2 and all(
        0 < value <= total - 2.0 for value, total in zip(seconds, whole, strict=True)
    )
    assert run.trainer.state.times["EPOCH_COMPLETED"] > 2.0  # what the benchmark once published
    recorded = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    assert [float(row.split(",")[-1]) for row in recorded] == pytest.approx(seconds)


@pytest.mark.parametrize("accumulate_steps", [1, 2])
def test_a_host_label_past_the_classes_is_found_before_its_batch_goes_to_another_device(
    accumulate_steps: int,
) -> None:
    # "meta" stands in for a GPU (shapes only, no data): on a GPU cross-entropy's own check is a
    # device-side assert. Batch 3 holds label 3 of 3 classes.
    meta = torch.device("meta")
    x, y = torch.randn(12, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 3, 1])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    model = nn.Linear(4, 3).to(meta)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_trainer(model, optimizer, nn.CrossEntropyLoss(), meta, accumulate_steps=accumulate_steps,
                             classes=3)  # fmt: skip
    with pytest.raises(LabelOutOfRange, match=r"^label 3, not one of the model's 3 classes \(0 … 2\)$"):
        trainer.run(loader, max_epochs=1)
    assert trainer.state.iteration == 3
    evaluator = create_evaluator(model, nn.CrossEntropyLoss(), meta, 3)
    valid = torch.utils.data.TensorDataset(x[:4], torch.tensor([0, 1, -1, 2]))
    with pytest.raises(LabelOutOfRange, match=r"^label -1, not one of"):
        evaluator.run(torch.utils.data.DataLoader(valid, batch_size=4))
    # On the CPU the labels are not read: cross-entropy names a bad one itself.
    model = nn.Linear(4, 3)
    trainer = create_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss(), CPU,
                             classes=3)  # fmt: skip
    with pytest.raises(IndexError, match=r"^Target 3 is out of bounds\.$") as raised:
        trainer.run(loader, max_epochs=1)
    assert not isinstance(raised.value, LabelOutOfRange)
