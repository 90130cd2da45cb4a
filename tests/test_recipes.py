"""Recipe regression tests on the real data in $FMTK_DATA (CI: ../shared/datasets).

Each trains the bundled recipe with the CLI's code path on CPU and checks the test accuracy of
the best checkpoint against a floor measured with the recipe's fixed seed. The trainings are marked
``slow`` (``python -m pytest -m "not slow"`` leaves them out); each recipe and its values train once.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tree_snapshot

from fmtk.recipe import apply_overrides
from fmtk.recipe_loading import load_recipe
from fmtk.training.build import build_run

CPU = torch.device("cpu")
# fmnist_cnn --preset fast (the basic CNN, 7 epochs of batch 48), measured with the recipe's seed on
# this 2-core CPU: 93.03% test (best = last, epoch 7; valid 93.47%). It replaces the faithful
# recipe's 2-epoch run (89.74%), which guarded less.
FMNIST_CNN_FAST_FLOOR = 0.92
# At 32 px, 2 epochs (3 before: 68.20% best at epoch 2, 67.20% last). The accuracy benchmark's faithful
# run at 32 px (2026-11-25, one thread) had valid 66.00% and 72.75% after epochs 1 and 2, and its
# epoch-2 checkpoint scored 69.20% test; the third epoch only cost CI time.
CATDOG_SETTINGS = {"image_size": "32", "epochs": "2"}
CATDOG_FLOOR = 0.60
# images (resnet18 from scratch) on the Cat & Dog photos as a user's folder, at 64 px and 2 epochs:
# 63.20% test, best = last (2026-12-01, two threads). At 32 px it scored 58.20%, too near chance
# (50% ± 2.2%) to guard anything; 64 px costs ~90 s.
IMAGES_SETTINGS = {"image_size": "64", "epochs": "2"}
IMAGES_FLOOR = 0.58


def train(name: str, data_dir: Path, run_dir: Path, **overrides: str) -> dict:
    recipe = apply_overrides(load_recipe(name), overrides)
    before = tree_snapshot(data_dir)
    run = build_run(recipe, run_dir, CPU, data_dir)
    results = run.run()
    assert tree_snapshot(data_dir) == before  # the data root is read, never written
    return results


@pytest.mark.slow
def test_mnist_dnn_reaches_97_percent(real_data: Path, tmp_path: Path) -> None:
    results = train("mnist_dnn", real_data, tmp_path)
    assert results["epochs_run"] == 17
    assert results["test"]["best"]["accuracy"] >= 0.97


@pytest.mark.slow
def test_mnist_dnn_fast_preset_passes_the_notebook(real_data: Path, tmp_path: Path) -> None:
    """Measured with the recipe's seed: 98.81% test (best, epoch 13) in 19.1 s of training."""
    recipe = load_recipe("mnist_dnn")
    run = build_run(recipe, tmp_path, CPU, real_data, echo=None, preset="fast")
    results = run.run()
    assert results["epochs_run"] == 14 and results["test"]["best"]["accuracy"] >= 0.985


def test_mnist_dnn_splits_are_the_notebooks(real_data: Path) -> None:
    recipe = load_recipe("mnist_dnn")
    splits = recipe.data(recipe, real_data, CPU)
    assert [len(s.labels) for s in (splits.train, splits.valid, splits.test)] == [50_000, 10_000, 10_000]


@pytest.mark.slow
def test_fmnist_dnn_best_preset_passes_89_5_percent(real_data: Path, tmp_path: Path) -> None:
    """The notebook's MLP scored 87.7%; its best preset, measured with the recipe's seed (one
    thread): 89.76% test (best checkpoint, epoch 33), 89.70% last, 71 s of training."""
    run = build_run(load_recipe("fmnist_dnn"), tmp_path, CPU, real_data, echo=None, preset="best")
    results = run.run()
    assert results["epochs_run"] == 40 and results["test"]["best"]["accuracy"] >= 0.895


@pytest.mark.slow
def test_fmnist_cnn_fast_preset_reaches_the_notebook(real_data: Path, tmp_path: Path) -> None:
    recipe = load_recipe("fmnist_cnn")
    run = build_run(recipe, tmp_path, CPU, real_data, echo=None, preset="fast")
    results = run.run()
    assert results["epochs_run"] == 7 and results["test"]["best"]["accuracy"] >= FMNIST_CNN_FAST_FLOOR


@pytest.mark.slow
def test_catdog_vgg_end_to_end_on_the_real_photos(real_data: Path, tmp_path: Path) -> None:
    # Reduced image size and epochs for CPU. 500 balanced test photos: a constant guess or
    # shuffled labels score 50% ± 2.2% (one standard deviation); the floor is far above that.
    results = train("catdog_vgg", real_data, tmp_path, **CATDOG_SETTINGS)
    assert results["epochs_run"] == int(CATDOG_SETTINGS["epochs"])
    assert {path.name[:5] for path in tmp_path.glob("*.pt")} == {"best_", "last_"}
    assert results["test"]["best"]["accuracy"] >= CATDOG_FLOOR
    assert results["test"]["last"]["accuracy"] >= CATDOG_FLOOR


@pytest.mark.slow
def test_images_trains_the_cat_and_dog_photos_as_a_users_folder(real_data: Path, tmp_path: Path) -> None:
    results = train("images", real_data / "catdog", tmp_path, **IMAGES_SETTINGS)
    assert json.loads((tmp_path / "config.json").read_text())["options"]["classes"] == ["cats", "dogs"]
    assert results["test"]["best"]["accuracy"] >= IMAGES_FLOOR
    assert results["test"]["last"]["accuracy"] >= IMAGES_FLOOR


@pytest.mark.slow
def test_soak_mnist_dnn_memory_and_file_handles_stay_flat(real_data: Path, tmp_path: Path) -> None:
    """20 epochs: resident memory grows ≤ 5% after epoch 2 and no file handle is leaked."""
    import os

    from ignite.engine import Events

    def resident_kib() -> int:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))

    recipe = apply_overrides(load_recipe("mnist_dnn"), {"epochs": "20", "early_stopping_patience": "none"})
    run = build_run(recipe, tmp_path, CPU, real_data, echo=lambda line: None)
    samples: list[tuple[int, int]] = []
    run.trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda _: samples.append((resident_kib(), len(os.listdir("/proc/self/fd"))))
    )
    run.run()
    assert len(samples) == 20
    memory, handles = zip(*samples, strict=True)
    assert max(memory[2:]) <= 1.05 * memory[1], memory
    # No growth: a leaked handle stays, so it is in every later sample; a transient one (another
    # thread of this pytest process opening a file) is in one sample, as once in CI (21 vs 20).
    assert min(handles[-5:]) <= max(handles[:2]), handles
