"""mixup and CutMix in training: the trainer mixes each training batch by its place in the epoch (the
plain step when off), with gradient accumulation and 16-mixed; label smoothing on top of the mixed
targets; short runs that train with them; validation and testing never mix."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from torch import nn

from fmtk.data.batches import DataSplits
from fmtk.data.mixing import BatchMixer, Mixing
from fmtk.optimizers import create_optimizer
from fmtk.recipe import apply_overrides
from fmtk.recipe_loading import load_recipe
from fmtk.training.build import build_run
from fmtk.training.engines import SpeedOptions, create_trainer
from fmtk.training.parts import training_loss, training_mix

CPU = torch.device("cpu")
CLASSES = 3


def images(count: int = 3, size: int = 12) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.randn(size, 1, 4, 4, generator=generator),
            torch.randint(0, CLASSES, (size,), generator=generator),
        )
        for _ in range(count)
    ]


def test_without_mixing_the_trainer_runs_the_plain_step() -> None:
    recipe = load_recipe("digits_mlp")
    data = DataSplits([], [], [], [str(k) for k in range(10)])
    assert training_mix(recipe, data, CPU) is None
    model = nn.Linear(4, CLASSES)
    optimizer = create_optimizer("SGD", model, 0.1, 0.0, CPU)
    assert (
        create_trainer(model, optimizer, nn.CrossEntropyLoss(), CPU)._process_function.__name__
        == "train_step"
    )
    mixer = training_mix(apply_overrides(recipe, {"cutmix_alpha": "1"}), data, CPU)
    assert mixer.mixing == Mixing(0.0, 1.0, 0.5, 10) and mixer.seed == recipe.seed


@pytest.mark.parametrize(
    "accumulate_steps, precision", [(1, "32"), (3, "32"), (1, "16-mixed"), (2, "16-mixed")]
)
def test_the_step_trains_on_each_batch_mixed_by_its_place_in_the_epoch(
    accumulate_steps: int, precision: str
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, CLASSES))
    before = copy.deepcopy(model)
    mixer = BatchMixer(Mixing(mixup_alpha=0.4, cutmix_alpha=1.0, classes=CLASSES), seed=5, device=CPU)
    calls, mixed = [], []

    def mix(x, y, epoch, batch):
        calls.append((epoch, batch))
        mixed.append(mixer(x, y, epoch, batch))
        return mixed[-1]

    speed = SpeedOptions(precision, False)
    scaler = torch.amp.GradScaler("cpu") if precision == "16-mixed" else None
    optimizer = create_optimizer("SGD", model, 0.1, 0.0, CPU)
    trainer = create_trainer(
        model, optimizer, nn.CrossEntropyLoss(), CPU, speed, scaler, accumulate_steps, mix
    )
    first_losses = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: first_losses.append(e.state.batch_losses[0]))
    trainer.run(images(), max_epochs=2)
    assert calls == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    x, targets = mixed[0]
    assert targets.shape == (12, CLASSES) and math.isfinite(trainer.state.metrics["loss"])
    with torch.autocast("cpu", dtype=torch.float16, enabled=precision == "16-mixed"):
        expected = nn.CrossEntropyLoss()(before(x), targets)  # the first step's loss: the mixed batch's
    assert first_losses[0].item() == pytest.approx(expected.item(), rel=1e-3)
    assert not torch.equal(model[1].weight, before[1].weight)


def test_label_smoothing_applies_on_top_of_the_mixed_targets() -> None:
    recipe = apply_overrides(load_recipe("digits_mlp"), {"mixup_alpha": "0.3", "label_smoothing": "0.1"})
    data = DataSplits([], [], [], [str(k) for k in range(CLASSES)])
    loss = training_loss(recipe, data, nn.CrossEntropyLoss(), CPU)
    x, y = images(1)[0]
    _, targets = BatchMixer(Mixing(mixup_alpha=0.3, classes=CLASSES), 0, CPU)(x, y, 1, 0)
    outputs = torch.randn(len(y), CLASSES)
    smoothed = targets * 0.9 + 0.1 / CLASSES  # timm's mixup_target(smoothing=0.1): the same targets
    expected = -(smoothed * outputs.log_softmax(dim=1)).sum(dim=1).mean()
    torch.testing.assert_close(loss(outputs, targets), expected)


@pytest.mark.parametrize(
    "values",
    [{"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0},
     {"mixup_alpha": 0.2, "cutmix_alpha": 1.0, "mix_switch_prob": 0.3, "label_smoothing": 0.1}],
    ids=["mixup", "cutmix", "both-with-label-smoothing"],
)  # fmt: skip
def test_a_short_run_trains_with_mixing_and_only_training_batches_are_mixed(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict
) -> None:
    calls = []
    real_call = BatchMixer.__call__
    monkeypatch.setattr(
        BatchMixer, "__call__", lambda self, *args: calls.append(args[2:]) or real_call(self, *args)
    )
    run = build_run("mnist_dnn", tmp_path / "run", CPU, mnist_root, echo=None, epochs=3, lr=0.3, **values)
    results = run.run()
    assert all(math.isfinite(row["train_loss"]) for row in run.history)
    assert results["test"]["best"]["accuracy"] > 0.3  # 10 classes: chance is 0.1
    per_epoch = len(run.data.train)
    assert calls == [
        (epoch, batch) for epoch in (1, 2, 3) for batch in range(per_epoch)
    ]  # training batches only
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {key: config[key] for key in values} == values
