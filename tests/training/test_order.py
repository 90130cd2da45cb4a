"""The order of a run's handlers is one table (fmtk.training.order.ORDER): the engines of assembled
runs, with every option that adds a handler and with handlers of yours, hold them in that order, and
docs/handlers.md shows that table."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

import pytest
from ignite.engine import Events

from fmtk import build_run
from fmtk.training.order import ORDER, YOURS, handlers_in_order, order_table

DOCS = Path(__file__).resolve().parents[2] / "docs" / "handlers.md"


def expected(engine: str, event: str) -> list[str]:
    return [step.handler for step in ORDER if (step.engine, step.event) == (engine, event)]


def assert_in_table_order(found: list[tuple[str, str, str]]) -> None:
    """Per engine and event, the handlers found are the table's, in the table's order."""
    for (engine, event), rows in groupby(sorted(found, key=lambda row: row[:2]), key=lambda row: row[:2]):
        names = [name for name, _ in groupby(row[2] for row in rows)]  # one handler may be two functions
        table = expected(engine, event)
        assert set(names) <= set(table), (engine, event, names)
        positions = [table.index(name) for name in names]
        assert positions == sorted(positions), (engine, event, names)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"ema_decay": 0.99, "schedule": "onecycle", "plateau_patience": None, "max_grad_norm": 1.0,
         "accumulate_steps": 2},
        {"schedule": "cosine", "warmup_epochs": 0.5, "plateau_patience": None,
         "early_stopping_patience": None},
    ],
    ids=["default", "ema_onecycle_clipping_accumulation", "cosine_without_early_stopping"],
)  # fmt: skip
def test_a_run_s_handlers_are_in_the_table_s_order(tmp_path: Path, values: dict) -> None:
    run = build_run("digits_mlp", tmp_path / "run", "cpu", echo=None, progress=True, epochs=2, **values)
    run.prepare()
    try:
        found = handlers_in_order(run.trainer, run.evaluator)
    finally:
        run.close_loggers()
    assert_in_table_order(found)
    names = {name for _, _, name in found}
    assert {"validation: runs the evaluator (its COMPLETED handlers below)", "best checkpoint",
            "last checkpoint (every kept state)", "progress bar"} <= names  # fmt: skip
    assert ("gradient clipping" in names) == ("max_grad_norm" in values)
    assert ("the per-step LR schedule" in names) == ("schedule" in values)
    assert ("early stopping" in names) == (values.get("early_stopping_patience", 8) is not None)


def test_your_handlers_run_after_fmtk_s_and_before_the_checkpoints(tmp_path: Path) -> None:
    run = build_run("digits_mlp", tmp_path / "run", "cpu", echo=None, epochs=1)

    def mine(engine) -> None:
        pass

    for engine, event in [
        (run.trainer, Events.EPOCH_COMPLETED),
        (run.evaluator, Events.COMPLETED),
        (run.trainer, Events.EPOCH_STARTED),
        (run.trainer, Events.ITERATION_COMPLETED(every=5)),
    ]:
        engine.add_event_handler(event, mine)  # fmt: skip
    run.prepare()
    try:
        found = handlers_in_order(run.trainer, run.evaluator)
    finally:
        run.close_loggers()
    assert_in_table_order(found)
    trainer_epoch = [
        name for engine, event, name in found if (engine, event) == ("trainer", "EPOCH_COMPLETED")
    ]
    assert trainer_epoch[-4:] == [  # metrics.csv after yours: the values you add to the row are in it
        YOURS,
        "metrics.csv: the epoch's row, with the values your handlers added",
        "last checkpoint (every kept state)",
        "superseded checkpoints removed",
    ]
    evaluator = [name for engine, event, name in found if engine == "evaluator"]
    assert evaluator[-2:] == [YOURS, "best checkpoint"]
    assert sum(name == YOURS for _, _, name in found) == 4


def test_docs_show_the_table() -> None:
    assert order_table() in DOCS.read_text()
