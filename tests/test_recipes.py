"""Recipe regression tests on the real data in $FMTK_DATA (CI: ../shared/datasets).

Each bundled recipe's checks (its ``check`` field, what ``fmtk check`` runs) train on the CPU
through :func:`fmtk.testing.check_recipe`, against floors measured with the recipe's fixed seed
(written beside each check). The trainings are marked ``slow`` (``python -m pytest -m "not slow"``
leaves them out).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tree_snapshot

from fmtk.recipe import apply_overrides
from fmtk.recipe_loading import bundled_recipe_names, load_recipe
from fmtk.testing import check_recipe
from fmtk.training.build import build_run

CPU = torch.device("cpu")
# Every bundled recipe's checks (its check field: the run, the floors and the measurements they came from).
CHECKS = [(name, one.label) for name in bundled_recipe_names() for one in load_recipe(name).checks]


@pytest.mark.slow
@pytest.mark.parametrize("name, label", CHECKS, ids=[f"{name}-{label}" for name, label in CHECKS])
def test_the_bundled_recipes_pass_their_checks(real_data: Path, name: str, label: str) -> None:
    before = tree_snapshot(real_data)
    report = check_recipe(name, device=CPU, data_dir=real_data, name=label)
    assert report.passed, report
    assert tree_snapshot(real_data) == before  # the data root is read, never written


def test_every_bundled_recipe_states_a_check() -> None:
    assert {name for name, _ in CHECKS} == set(bundled_recipe_names())


def test_mnist_dnn_splits_are_the_notebooks(real_data: Path) -> None:
    recipe = load_recipe("mnist_dnn")
    splits = recipe.data(recipe, real_data, CPU)
    assert [len(s.labels) for s in (splits.train, splits.valid, splits.test)] == [50_000, 10_000, 10_000]


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
