"""The run folder: new folders, finding checkpoints, tidying after an interrupted process."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmtk.errors import FmtkError
from fmtk.runfolder import (
    EPOCH_COLUMNS,
    append_epoch_row,
    find_checkpoint,
    find_last_checkpoint,
    make_run_dir,
    remove_stale_files,
    truncate_history,
)


def test_make_run_dir_never_reuses_a_folder(tmp_path: Path) -> None:
    first = make_run_dir(tmp_path, "mnist_dnn")
    second = make_run_dir(tmp_path, "mnist_dnn")
    assert first != second and first.parent == second.parent == tmp_path / "mnist_dnn"


def test_the_last_checkpoint_is_the_highest_epoch_not_the_last_name(tmp_path: Path) -> None:
    for name in ("last_checkpoint_9.pt", "last_checkpoint_10.pt", "last_checkpoint_x.pt"):
        (tmp_path / name).write_bytes(b"")
    assert find_last_checkpoint(tmp_path).name == "last_checkpoint_10.pt"
    assert find_checkpoint(tmp_path, "last").name == "last_checkpoint_10.pt"
    with pytest.raises(FmtkError, match="expected one best_checkpoint_"):
        find_checkpoint(tmp_path, "best")


def test_truncate_history_drops_the_epochs_being_redone(tmp_path: Path) -> None:
    for epoch in (1, 2, 3):
        append_epoch_row(tmp_path, {column: epoch for column in EPOCH_COLUMNS})
    assert [row["epoch"] for row in truncate_history(tmp_path, 2)] == [1, 2]
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == ",".join(EPOCH_COLUMNS)
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 3


def test_remove_stale_files_keeps_the_named_checkpoints(tmp_path: Path) -> None:
    names = ["last_checkpoint_2.pt", "last_checkpoint_3.pt", "best_checkpoint_2_valid_accuracy=0.9.pt",
             "tmpab_12xyz", "metrics.csv"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"")
    remove_stale_files(tmp_path, {"last_checkpoint_2.pt", "best_checkpoint_2_valid_accuracy=0.9.pt"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[2], "metrics.csv"])
