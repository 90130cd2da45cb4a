"""A whole run on real-format data: its folder, its checkpoints, its TensorBoard events."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from fmtk import Recipe
from fmtk.data import load_digits_splits
from fmtk.models import mlp
from fmtk.recipe import apply_overrides
from fmtk.recipe_loading import load_recipe
from fmtk.training.build import build_run
from fmtk.training.engines import create_evaluator

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory):
    """mnist_dnn for 4 epochs on small MNIST-format files written by the test."""
    from conftest import make_mnist_like

    root = make_mnist_like(tmp_path_factory.mktemp("data"), train=1200, test=300)
    recipe = apply_overrides(load_recipe("mnist_dnn"), {"epochs": "4", "batch_size": "50", "lr": "0.05"})
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    run_dir.mkdir()
    lines: list[str] = []
    run = build_run(recipe, run_dir, CPU, root, echo=lines.append)
    run.run()
    return run, lines


def test_run_folder_is_complete(finished_run) -> None:
    run, lines = finished_run
    names = {path.name for path in run.run_dir.iterdir()}
    assert {"config.json", "metrics.csv", "metrics.json"} <= names
    assert any(n.startswith("best_") and n.endswith(".pt") for n in names)
    assert any(n.startswith("last_") and n.endswith(".pt") for n in names)
    assert any(n.startswith("events.out.tfevents") for n in names)
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["name"] == "mnist_dnn" and config["epochs"] == 4 and config["lr"] == 0.05
    rows = list(csv.DictReader((run.run_dir / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    assert list(rows[0]) == ["epoch", "train_loss", "valid_loss", "valid_accuracy", "lr", "epoch_seconds"]
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 4 and metrics["stopped_early"] is False
    for which in ("best", "last"):
        assert set(metrics["test"][which]) == {"loss", "accuracy"}
    assert metrics["test"]["last"]["accuracy"] > 0.9  # the bars are learnable
    assert sum(line.startswith("epoch ") for line in lines) == 4  # one summary line per epoch


def test_best_checkpoint_is_the_best_epochs_model(finished_run) -> None:
    run, _ = finished_run
    rows = list(csv.DictReader((run.run_dir / "metrics.csv").open()))
    accuracies = [float(row["valid_accuracy"]) for row in rows]
    losses = [float(row["valid_loss"]) for row in rows]  # on equal accuracy the lower loss
    best_epoch = max(range(len(rows)), key=lambda i: (accuracies[i], -losses[i], -i)) + 1
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["best_epoch"] == best_epoch
    assert metrics["checkpoints"]["best"].startswith(f"best_checkpoint_{best_epoch}_")
    # Its weights give exactly the valid accuracy recorded for that epoch.
    checkpoint = torch.load(run.run_dir / metrics["checkpoints"]["best"], weights_only=True)
    run.model.load_state_dict(checkpoint["model"])
    evaluator = create_evaluator(run.model, run.loss_fn, CPU)
    assert evaluator.run(run.data.valid).metrics["accuracy"] == pytest.approx(max(accuracies))
    assert checkpoint["run_info"]["recipe"] == "mnist_dnn"


def test_last_checkpoint_holds_everything_to_resume(finished_run) -> None:
    run, _ = finished_run
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    checkpoint = torch.load(run.run_dir / metrics["checkpoints"]["last"], weights_only=True)
    assert set(checkpoint) >= {
        "model", "optimizer", "trainer", "lr_scheduler", "early_stopping", "best_checkpoint", "random_state",
    }  # fmt: skip
    assert checkpoint["trainer"]["iteration"] == 4 * len(run.data.train)
    assert len(list(run.run_dir.glob("*.pt"))) == 2  # older checkpoints are replaced, not piled up


def test_tensorboard_has_the_tags(finished_run) -> None:
    run, _ = finished_run
    events = EventAccumulator(str(run.run_dir)).Reload()
    assert {"train/loss", "valid/loss", "valid/accuracy", "lr/group_0"} <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("valid/accuracy")] == [1, 2, 3, 4]  # epochs as steps
    rows = list(csv.DictReader((run.run_dir / "metrics.csv").open()))
    logged = [event.value for event in events.Scalars("valid/loss")]
    assert logged == pytest.approx([float(row["valid_loss"]) for row in rows])
    # Train and valid loss on one chart: TensorBoard's custom-scalars layout names both tags.
    from tensorboard.plugins.custom_scalar import layout_pb2

    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    assert list(layout.category[0].chart[0].multiline.tag) == ["train/loss", "valid/loss"]
    iterations = EventAccumulator(str(run.run_dir / "iterations")).Reload()
    steps = [event.step for event in iterations.Scalars("train/loss_iteration")]
    assert steps == list(range(run.recipe.log_every, 4 * len(run.data.train) + 1, run.recipe.log_every))
    assert [event.step for event in iterations.Scalars("train/lr/group_0")] == steps
    assert all(
        math.isfinite(event.value) and event.value > 0 for event in iterations.Scalars("train/loss_iteration")
    )


class CountingMarginLoss(nn.MultiMarginLoss):
    """A loss other than cross-entropy that counts its calls with and without gradients."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"training": 0, "evaluation": 0}

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls["training" if torch.is_grad_enabled() else "evaluation"] += 1
        return super().forward(output, target)


def test_the_recipes_loss_trains_validates_and_tests(tmp_path: Path) -> None:
    loss = CountingMarginLoss()
    recipe = Recipe(
        name="digits_margin",
        description="digits with a multi-class hinge loss",
        model=lambda recipe: mlp(64, [32], 10),
        data=lambda recipe, data_dir, device: load_digits_splits(recipe.batch_size, device, recipe.seed),
        loss=lambda recipe: loss,
        lr=1e-2,
        batch_size=32,
        epochs=2,
    )
    run = build_run(recipe, tmp_path, CPU, tmp_path, echo=lambda line: None)
    results = run.run()
    assert loss.calls["training"] == run.trainer.state.iteration  # one call per training step
    assert loss.calls["evaluation"] >= 2 * len(run.data.valid) + 2 * len(run.data.test)
    run.model.eval()  # it holds the last checkpoint's weights, tested last
    with torch.no_grad():
        per_sample = [nn.MultiMarginLoss(reduction="sum")(run.model(x), y) for x, y in run.data.test]
    count = sum(len(y) for _, y in run.data.test)
    assert results["test"]["last"]["loss"] == pytest.approx(float(sum(per_sample)) / count, rel=1e-5)
    assert json.loads((tmp_path / "config.json").read_text())["loss"].endswith("<lambda>")  # recorded by name


def test_a_handler_s_numbers_reach_metrics_csv_and_anything_else_is_said_once(tmp_path: Path) -> None:
    lines: list[str] = []
    run = build_run("digits_mlp", tmp_path, CPU, tmp_path, echo=lines.append, epochs=3)

    @run.trainer.on(Events.EPOCH_COMPLETED)
    def mine(engine) -> None:
        run.history[-1]["steps"] = engine.state.iteration
        run.history[-1]["note"] = "not a number"
        run.history[-1]["scale"] = torch.tensor(0.5)
        run.history[-1]["epoch"] = 99  # fmtk's own: before, a resume then dropped metrics.csv's rows
        run.history[-1]["lr"] = 123.0

    @run.evaluator.on(Events.COMPLETED)
    def too_late(engine) -> None:  # history[-1] is the epoch before here: its row is written
        if run.history:
            run.history[-1]["late"] = 1.0

    run.run()
    with (tmp_path / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    steps = len(run.data.train)
    assert [(row["epoch"], row["steps"], row["scale"]) for row in rows] == [
        (str(e), str(steps * e), "0.5") for e in (1, 2, 3)
    ]
    assert "note" not in rows[0] and "late" not in rows[0] and float(rows[0]["lr"]) == run.recipe.lr
    assert [row["scale"] for row in run.history] == [0.5] * 3  # in memory as in the file (and on resume)
    assert [row["epoch"] for row in run.history] == [1, 2, 3]
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert warnings == [
        "warning: run.history[-1]['epoch'] is fmtk's own column: a handler's value there is not kept; give "
        "yours a name of its own",
        "warning: run.history[-1]['lr'] is fmtk's own column: a handler's value there is not kept; give "
        "yours a name of its own",
        "warning: run.history[-1]['note'] is a str, not a number: left out of metrics.csv (and of a "
        "resumed run's history); give float(...)",
        "warning: run.history[-1]['late'] was given after its epoch's row was written (history[-1] is the "
        "epoch before until the trainer's EPOCH_COMPLETED): not in metrics.csv; give it at the trainer's "
        "EPOCH_COMPLETED",
    ]
