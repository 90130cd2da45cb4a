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
    read_history,
    remove_stale_files,
    run_folder,
    truncate_history,
)
from fmtk.runlock import is_running


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


def test_a_handler_s_value_widens_metrics_csv_and_its_text_survives_tidying(tmp_path: Path) -> None:
    fmtk_own = {"train_loss": 0.1 + 0.2, "valid_loss": 1 / 3, "valid_accuracy": 0.5, "lr": 1e-3}
    append_epoch_row(tmp_path, {"epoch": 1, **fmtk_own})
    append_epoch_row(tmp_path, {"epoch": 2, **fmtk_own, "seen": 40})  # a handler's value from epoch 2 on
    append_epoch_row(tmp_path, {"epoch": 3, **fmtk_own, "seen": 60, "norm": 2.5})
    append_epoch_row(tmp_path, {"epoch": 4, **fmtk_own, "norm": 3.5})  # none this epoch: blank
    text = (tmp_path / "metrics.csv").read_text()
    assert text.splitlines()[0] == "epoch,train_loss,valid_loss,valid_accuracy,lr,seen,norm"
    assert text.splitlines()[1:3] == ["1,0.30000000000000004,0.3333333333333333,0.5,0.001,,",
                                      "2,0.30000000000000004,0.3333333333333333,0.5,0.001,40,"]  # fmt: skip
    rows, columns = read_history(tmp_path)
    assert rows[1:] == [{"epoch": 2, **fmtk_own, "seen": 40},
                        {"epoch": 3, **fmtk_own, "seen": 60, "norm": 2.5},
                        {"epoch": 4, **fmtk_own, "norm": 3.5}]  # fmt: skip
    assert type(rows[1]["seen"]) is int and columns[-2:] == ["seen", "norm"]
    assert truncate_history(tmp_path, 3) == rows[:3]
    assert (tmp_path / "metrics.csv").read_text() == "".join(text.splitlines(keepends=True)[:4])


@pytest.mark.parametrize("line", ["3,0.5", "3,0.5,0.5,0.5,0.001,1,2,9"])
def test_a_row_cut_short_or_too_long_is_one_line(tmp_path: Path, line: str) -> None:
    append_epoch_row(tmp_path, {"epoch": 1, "train_loss": 0.5, "valid_loss": 0.5, "valid_accuracy": 0.5,
                                "lr": 0.001, "seen": 1, "norm": 2})  # fmt: skip
    with (tmp_path / "metrics.csv").open("a") as file:
        file.write(line + "\n")
    with pytest.raises(FmtkError, match=r"metrics.csv: line 3 is not a row of numbers; fix or remove it"):
        read_history(tmp_path)


def test_remove_stale_files_keeps_the_named_checkpoints(tmp_path: Path) -> None:
    names = ["last_checkpoint_2.pt", "last_checkpoint_3.pt", "best_checkpoint_2_valid_accuracy=0.9.pt",
             "tmpab_12xyz", "metrics.csv"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"")
    remove_stale_files(tmp_path, {"last_checkpoint_2.pt", "best_checkpoint_2_valid_accuracy=0.9.pt"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[0], names[2], "metrics.csv"])


def test_run_folder_removes_what_a_failed_command_made(tmp_path: Path) -> None:
    output = tmp_path / "runs"
    with pytest.raises(RuntimeError), run_folder(output_dir=output, recipe_name="digits_mlp") as folder:
        assert is_running(folder)  # locked while the command holds it
        (folder / "config.json").write_text("{}")
        raise RuntimeError("failed before the first checkpoint")
    assert not (output / "digits_mlp").exists()  # the folder and its empty <recipe> parent

    given = tmp_path / "given"
    given.mkdir()
    with pytest.raises(RuntimeError), run_folder(given):
        (given / "iterations").mkdir()
        (given / "iterations" / "events").write_text("")
        raise RuntimeError
    assert given.is_dir() and not any(given.iterdir())  # an empty folder the user gave stays, empty


def test_run_folder_keeps_a_resumed_run_and_any_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last_checkpoint_1.pt").write_bytes(b"")
    with pytest.raises(RuntimeError), run_folder(run_dir, reuse=True):
        (run_dir / "events.2").write_text("")
        raise RuntimeError
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "last_checkpoint_1.pt"
    ]  # only the new file went

    with pytest.raises(RuntimeError), run_folder(tmp_path / "new") as folder:
        (folder / "last_checkpoint_1.pt").write_bytes(b"")  # written before the failure: resumable
        raise RuntimeError
    assert (tmp_path / "new" / "last_checkpoint_1.pt").exists()

    with (
        pytest.raises(KeyboardInterrupt),
        run_folder(tmp_path / "kept", resumable_with="config.json") as folder,
    ):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt  # fmtk run keeps it: --resume starts it again
    assert (tmp_path / "kept" / "config.json").exists() and not is_running(tmp_path / "kept")


def test_run_folder_refuses_a_folder_another_process_trains(tmp_path: Path) -> None:
    with run_folder(tmp_path / "run") as folder, pytest.raises(FmtkError, match="being trained by another"):
        with run_folder(folder, reuse=True):
            pass
    assert (tmp_path / "run").is_dir() and not is_running(tmp_path / "run")
