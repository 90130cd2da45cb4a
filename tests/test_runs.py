"""The runs table: finding run folders, each state, the columns, sorting, and the running lock.

Run folders are written here file by file in the format fmtk writes them (no training)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import fmtk
from PIL import Image, ImageDraw

from fmtk.errors import FmtkError
from fmtk.pictures import LINE_COLOURS, X_MARGIN
from fmtk.runfolder import CONFIG, METRICS_CSV, METRICS_JSON, append_epoch_row, write_json
from fmtk.runlock import is_running, lock_run
from fmtk.runs import (
    JSON_SORT_KEYS,
    SORT_KEYS,
    format_changed,
    format_runs_table,
    list_runs,
    runs_as_json,
    sort_runs,
)

needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="no fcntl.flock on Windows")
UNSET = object()  # a config.json key left out, as in runs from older fmtk versions


def make_run(
    root: Path,
    run: str,
    accuracies: list[float],
    epochs: int | None = None,
    ended: bool = True,
    test: tuple[float, float] = (0.91, 0.9),
    seconds: float = 12.5,
    changed: Any = UNSET,
    preset: Any = UNSET,
    started: Any = UNSET,
) -> Path:
    """A run folder ``root/run`` whose finished epochs had ``accuracies`` (valid accuracy); with
    metrics.json when ``ended`` (stopped early when fewer than the recipe's ``epochs``, which
    defaults to as many as ran)."""
    run_dir = root / run
    run_dir.mkdir(parents=True)
    epochs = len(accuracies) if epochs is None else epochs
    config: dict[str, Any] = {"name": run.split("/")[0], "lr": 0.01, "epochs": epochs, "options": {}}
    if changed is not UNSET:
        config["changed"] = changed
    if preset is not UNSET:
        config["preset"] = preset
    if started is not UNSET:
        config["started"] = started
    write_json(run_dir / CONFIG, config)
    for epoch, accuracy in enumerate(accuracies, start=1):
        values = dict(epoch=epoch, train_loss=0.5, valid_loss=0.4, lr=0.01, epoch_seconds=0.6)
        append_epoch_row(run_dir, {**values, "valid_accuracy": accuracy})
    if ended:
        results = {
            "recipe": config["name"],
            "best_epoch": accuracies.index(max(accuracies)) + 1,
            "best_valid_accuracy": max(accuracies),
            "epochs_run": len(accuracies),
            "stopped_early": len(accuracies) < epochs,
            "train_seconds": seconds,
            "test": {"best": {"loss": 0.3, "accuracy": test[0]}, "last": {"loss": 0.35, "accuracy": test[1]}},
        }
        write_json(run_dir / METRICS_JSON, results)
    return run_dir


def by_run(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["run"]: row for row in rows}


def test_each_state_with_its_columns(tmp_path: Path) -> None:
    make_run(tmp_path, "mnist_dnn/20260101-100000", [0.5, 0.8, 0.7], 3, changed={"lr": 0.05}, preset=None)
    make_run(tmp_path, "mnist_dnn/20260101-110000", [0.6, 0.65], epochs=10, test=(0.64, 0.62), changed={})
    interrupted = make_run(tmp_path, "fmnist_cnn/20260102-090000", [0.7, 0.9, 0.85], 20, ended=False)
    with (interrupted / METRICS_CSV).open("a") as file:
        file.write("4,0.2,0.3")  # killed while writing epoch 4's row: not an epoch done
    make_run(tmp_path, "fmnist_cnn/20260102-100000", [], 20, ended=False)  # killed before epoch 1 ended

    rows = list_runs(tmp_path)

    assert [row["run"] for row in rows] == [
        "fmnist_cnn/20260102-090000", "fmnist_cnn/20260102-100000",
        "mnist_dnn/20260101-100000", "mnist_dnn/20260101-110000",
    ]  # fmt: skip
    assert rows[2] == {
        "run": "mnist_dnn/20260101-100000", "recipe": "mnist_dnn", "preset": None, "changed": {"lr": 0.05},
        "epochs_done": 3, "epochs_max": 3, "best_valid_accuracy": 0.8, "test_accuracy_best": 0.91,
        "test_accuracy_last": 0.9, "train_seconds": 12.5, "device": None, "state": "finished", "error": None,
        "started": datetime(2026, 1, 1, 10).astimezone(timezone.utc).isoformat(),  # the folder's name, local
    }  # fmt: skip
    assert [row["state"] for row in rows] == ["interrupted", "interrupted", "finished", "stopped early"]
    for stopped_by, state in [("pruned", "pruned"), ("valid accuracy passed 0.95", "stopped")]:  # Run.stop
        stopped = make_run(tmp_path / state, "digits_mlp/20260103-100000", [0.9, 0.96], 10)
        results = json.loads((stopped / METRICS_JSON).read_text())
        write_json(stopped / METRICS_JSON, {**results, "stopped_early": False, "stopped_by": stopped_by})
        assert [row["state"] for row in list_runs(tmp_path / state)] == [state]  # "stopped early" before
    interrupted_row = rows[0]  # its epochs so far, from metrics.csv; no test before the run ends
    assert (interrupted_row["epochs_done"], interrupted_row["best_valid_accuracy"]) == (3, 0.9)
    assert interrupted_row["test_accuracy_best"] is None
    assert (rows[1]["epochs_done"], rows[1]["best_valid_accuracy"]) == (0, None)
    assert format_runs_table(rows).splitlines() == [
        "run                         recipe      preset  changed  epochs  best_valid_acc  test_acc_best"
        "  test_acc_last  train_seconds  device  state",
        "fmnist_cnn/20260102-090000  fmnist_cnn  -       ?          3/20          90.00%              -"
        "              -              -  -       interrupted",
        "fmnist_cnn/20260102-100000  fmnist_cnn  -       ?          0/20               -              -"
        "              -              -  -       interrupted",
        "mnist_dnn/20260101-100000   mnist_dnn   -       lr=0.05     3/3          80.00%         91.00%"
        "         90.00%           12.5  -       finished",
        "mnist_dnn/20260101-110000   mnist_dnn   -       -          2/10          65.00%         64.00%"
        "         62.00%           12.5  -       stopped early",
    ]


def test_the_device_column_names_the_gpu_a_run_trained_on(tmp_path: Path) -> None:
    places = {
        "a/20260101-100000": {"device": "cpu", "versions": {"cpu": "x86_64, AMD EPYC, AVX512"}},
        "b/20260101-100000": {"device": "cuda:0", "versions": {"gpu": "NVIDIA H200", "cuda": "13.0"}},
        "c/20260101-100000": {"device": "cuda"},  # a GPU run of an fmtk that did not record the GPU
    }
    for run, where in places.items():
        run_dir = make_run(tmp_path, run, [0.5])
        config = json.loads((run_dir / CONFIG).read_text())
        write_json(run_dir / CONFIG, {**config, **where})
    rows = list_runs(tmp_path)
    assert [row["device"] for row in rows] == ["cpu", "NVIDIA H200", "cuda"]
    assert [re.split(r"\s{2,}", line)[-2] for line in format_runs_table(rows).splitlines()] == [
        "device", "cpu", "NVIDIA H200", "cuda"
    ]  # fmt: skip
    assert [row["device"] for row in sort_runs(rows, "device")] == ["NVIDIA H200", "cpu", "cuda"]


def test_run_folders_are_found_at_any_depth_but_not_in_iterations(tmp_path: Path) -> None:
    make_run(tmp_path, "deep/er/still/20260101-100000", [0.5])
    make_run(tmp_path, "deep/er/still/20260101-100000/iterations", [0.5])  # not a run of its own
    (tmp_path / "empty/20260101-100000").mkdir(parents=True)  # no config.json: not a run
    assert [row["run"] for row in list_runs(tmp_path)] == ["deep/er/still/20260101-100000"]
    run_dir = tmp_path / "deep/er/still/20260101-100000"
    assert [row["run"] for row in list_runs(run_dir)] == [
        "20260101-100000"
    ]  # given itself: its name, not "."
    assert list_runs(tmp_path / "empty") == []
    assert format_runs_table([]).split() == SORT_KEYS[:-1]  # the header alone


@pytest.mark.parametrize(
    ("changed", "shown"),
    [
        (None, "?"),
        ({}, "-"),
        ({"lr": 0.05, "epochs": 3}, "lr=0.05 epochs=3"),
        ({"lr": 0.0005611516415334506, "dropout": 0.1234567}, "lr=0.0005612 dropout=0.1235"),  # drawn by tune
        ({"max_grad_norm": None, "channels_last": True, "optimizer": "SGD"},
         "max_grad_norm=none channels_last=true optimizer=SGD"),
        ({"weight_decay": 1e-05, "note": "two words"}, 'weight_decay=1e-05 note="two words"'),
        # Keyword arguments and lists as --set takes them (they showed as JSON, which it refuses).
        ({"optimizer_args": {"momentum": 0.9, "nesterov": True, "betas": [0.9, 0.99]}, "layers": [64, 32]},
         "optimizer_args=momentum:0.9,nesterov:true,betas:0.9/0.99 layers=64,32"),
        ({"odd": {"two words": 1}, "nested": [[1]]}, 'odd={"two words":1} nested=[[1]]'),
    ],
)  # fmt: skip
def test_changed_values_read_as_set_takes_them(changed: dict[str, Any] | None, shown: str) -> None:
    assert format_changed(changed) == shown


def test_a_study_s_trials_show_their_searched_values_also_those_equal_to_the_recipe_s(tmp_path: Path) -> None:
    space = {"lr": "loguniform:0.001:0.1", "hidden": "choice:32,64", "optimizer_args.momentum": "uniform:0:1"}
    trial = make_run(tmp_path, "study/trial_000", [0.5], changed={"epochs": 3})  # lr 0.01: the recipe's
    write_json(tmp_path / "study" / "study.json", {"recipe": "digits_mlp", "space": space})
    config = json.loads((trial / CONFIG).read_text())
    write_json(trial / CONFIG, {**config, "options": {"hidden": 64}, "optimizer_args": {"momentum": 0.9}})
    make_run(tmp_path, "other/20260101-100000", [0.5], changed={"epochs": 3})  # not a trial: as it is
    rows = by_run(list_runs(tmp_path))
    assert (
        format_changed(rows["study/trial_000"]["changed"])
        == "lr=0.01 hidden=64 optimizer_args.momentum=0.9 epochs=3"
    )
    assert rows["other/20260101-100000"]["changed"] == {"epochs": 3}


def test_preset_and_changed_from_config_json(tmp_path: Path) -> None:
    make_run(tmp_path, "a/old", [0.5])  # before config.json held them: unknown
    make_run(tmp_path, "b/plain", [0.5], changed={}, preset=None)
    make_run(tmp_path, "c/quick", [0.5], changed={"epochs": 1, "lr": 0.1}, preset="quick")
    rows = by_run(list_runs(tmp_path))
    assert [(rows[run]["preset"], rows[run]["changed"]) for run in ("a/old", "b/plain", "c/quick")] == [
        (None, None), (None, {}), ("quick", {"epochs": 1, "lr": 0.1}),
    ]  # fmt: skip
    cells = [line.split()[2:4] for line in format_runs_table(list(rows.values())).splitlines()[1:]]
    assert cells == [["-", "?"], ["-", "-"], ["quick", "epochs=1"]]


def sort_fixture(root: Path) -> list[dict[str, Any]]:
    make_run(
        root,
        "b/20260103",
        [0.7],
        epochs=1,
        seconds=30.0,
        changed={"lr": 0.1},
        started="2026-01-03T10:00:00+00:00",
    )
    make_run(
        root,
        "a/20260101",
        [0.9, 0.8],
        epochs=5,
        seconds=5.0,
        preset="quick",
        started="2026-01-01T11:00:00+01:00",
    )
    make_run(
        root,
        "c/20260102",
        [0.6, 0.7, 0.8],
        ended=False,
        changed={"epochs": 3},
        started="2026-01-02T10:00:00+00:00",
    )
    # started after the others, whatever its name says (a --run-dir name, a copy)
    make_run(
        root,
        "a/20260101-2",
        [0.7, 0.9],
        epochs=2,
        seconds=9.0,
        preset="long",
        changed={},
        started="2026-01-04T09:00:00-03:00",
    )
    return list_runs(root)


@pytest.mark.parametrize(
    ("key", "order"),
    [
        ("run", ["a/20260101", "a/20260101-2", "b/20260103", "c/20260102"]),
        ("recipe", ["a/20260101", "a/20260101-2", "b/20260103", "c/20260102"]),
        ("started", ["a/20260101-2", "b/20260103", "c/20260102", "a/20260101"]),
        # highest first, ties in path order, runs without the value last
        ("best_valid_acc", ["a/20260101", "a/20260101-2", "c/20260102", "b/20260103"]),
        ("test_acc_best", ["a/20260101", "a/20260101-2", "b/20260103", "c/20260102"]),
        ("train_seconds", ["b/20260103", "a/20260101-2", "a/20260101", "c/20260102"]),
        ("epochs", ["c/20260102", "a/20260101", "a/20260101-2", "b/20260103"]),
        ("preset", ["a/20260101-2", "a/20260101", "b/20260103", "c/20260102"]),
        ("changed", ["a/20260101-2", "c/20260102", "b/20260103", "a/20260101"]),
        ("state", ["c/20260102", "a/20260101", "a/20260101-2", "b/20260103"]),
    ],
)  # fmt: skip
def test_sort(tmp_path: Path, key: str, order: list[str]) -> None:
    assert [row["run"] for row in sort_runs(sort_fixture(tmp_path), key)] == order


def test_changed_leaves_out_what_the_preset_set_and_a_fitted_warm_up(tmp_path: Path) -> None:
    """A preset run's changed column repeated the whole preset (240 characters for catdog_vgg's best)
    beside the preset column, and a warm-up fmtk fitted to `--epochs 1` looked set by the user."""
    from fmtk.recipe_loading import resolve_recipe

    for name, preset, given, shown in [
        ("catdog_vgg", "best", {"epochs": 1}, {"epochs": 1}),  # its warm-up fitted too: 0.025
        ("catdog_vgg", "best", {"lr": 0.001}, {"lr": 0.001}),  # a preset's value changed again
        ("images", None, {"epochs": 1}, {"epochs": 1}),
    ]:
        config = resolve_recipe(name, preset, given).config()
        (tmp_path / name).mkdir(exist_ok=True)
        write_json(tmp_path / name / CONFIG, config)
        [row] = list_runs(tmp_path / name)
        assert row["changed"] == shown and len(config["changed"]) > len(shown), config["changed"]


def test_sort_takes_the_json_s_names_of_the_values_too(tmp_path: Path) -> None:
    rows = sort_fixture(tmp_path)
    for json_key, header in JSON_SORT_KEYS.items():
        assert json_key in json.loads(runs_as_json(rows))[0]
        assert sort_runs(rows, json_key) == sort_runs(rows, header)


def test_started_is_config_json_s_time_else_the_time_fmtk_named_the_folder_with(tmp_path: Path) -> None:
    make_run(tmp_path, "r/own-name", [0.5], started="2026-12-04T23:07:49+01:00")
    make_run(tmp_path, "r/20261204-220000-2", [0.5])  # made before config.json recorded it
    make_run(tmp_path, "r/mine", [0.5])  # neither: sorted last
    rows = by_run(list_runs(tmp_path))
    assert rows["r/own-name"]["started"] == "2026-12-04T22:07:49+00:00"
    local = datetime(2026, 12, 4, 22, 0, 0).astimezone(timezone.utc).isoformat()
    assert rows["r/20261204-220000-2"]["started"] == local and rows["r/mine"]["started"] is None
    order = [row["run"] for row in sort_runs(list(rows.values()), "started")]
    assert order[-1] == "r/mine"


def test_a_new_run_records_when_it_started_and_a_resume_keeps_it(tmp_path: Path) -> None:
    done = fmtk("run", "digits_mlp", "--epochs", "1", "--run-dir", "r", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    started = json.loads((tmp_path / "r" / CONFIG).read_text())["started"]
    assert abs(datetime.fromisoformat(started) - datetime.now(timezone.utc)).total_seconds() < 120
    again = fmtk("run", "--resume", "r", "--epochs", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "r" / CONFIG).read_text())["started"] == started


def test_every_sort_key_sorts_and_an_unknown_one_lists_them(tmp_path: Path) -> None:
    rows = sort_fixture(tmp_path)
    make_run(tmp_path, "z/corrupt", [0.5])
    (tmp_path / "z/corrupt" / CONFIG).write_text("{")
    rows = list_runs(tmp_path)
    for key in SORT_KEYS:  # an unreadable run (almost every value None) sorts too
        assert sorted(row["run"] for row in sort_runs(rows, key)) == sorted(row["run"] for row in rows)
    both = (
        r"valid keys: run, recipe, .*, started \(or --json's names: best_valid_accuracy, .*, epochs_done\)$"
    )
    with pytest.raises(FmtkError, match=f"^unknown sort key 'accuracy'; {both}"):
        sort_runs(rows, "accuracy")
    from fmtk.cli.look import runs as runs_command

    [sort] = [option for option in runs_command.params if option.name == "sort_key"]
    assert re.findall(r"\w+", sort.help.split("(")[0]) == [*SORT_KEYS[:-1], "or", "started"]  # --help: all


def test_a_missing_root_is_named(tmp_path: Path) -> None:
    with pytest.raises(FmtkError, match=f"^{re.escape(str(tmp_path / 'nothing'))}: no such folder$"):
        list_runs(tmp_path / "nothing")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(FmtkError, match="a_file: no such folder"):
        list_runs(tmp_path / "a_file")


def test_unreadable_files_give_a_row_not_an_exception(tmp_path: Path) -> None:
    make_run(tmp_path, "a/fine", [0.5])
    (make_run(tmp_path, "b/config_torn", [0.5]) / CONFIG).write_text('{"name": "b", ')
    (make_run(tmp_path, "c/config_a_list", [0.5]) / CONFIG).write_text("[1, 2]")
    (make_run(tmp_path, "d/results_torn", [0.5]) / METRICS_JSON).write_text('{"epochs_run": 3')
    (make_run(tmp_path, "e/results_wrong_types", [0.5]) / METRICS_JSON).write_text(
        json.dumps({"epochs_run": "3", "best_valid_accuracy": [1], "test": "none", "train_seconds": True})
    )
    rows = by_run(list_runs(tmp_path))
    assert {run: row["state"] for run, row in rows.items()} == {
        "a/fine": "finished", "b/config_torn": "unreadable", "c/config_a_list": "unreadable",
        "d/results_torn": "unreadable", "e/results_wrong_types": "finished",
    }  # fmt: skip
    assert "cannot read config.json" in rows["b/config_torn"]["error"]
    assert rows["c/config_a_list"]["error"].endswith("config.json: not an fmtk config (a JSON object)")
    assert rows["d/results_torn"]["recipe"] == "d"  # what could be read is shown
    assert rows["e/results_wrong_types"]["best_valid_accuracy"] is None  # a wrong type shows as missing
    lines = format_runs_table(list(rows.values())).splitlines()
    assert len(lines) == 1 + 5 + 3  # the header, the rows, one line per unreadable run saying why
    assert lines[-1].startswith("d/results_torn: ") and "metrics.json: not readable JSON" in lines[-1]


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process that holds an exclusive flock on ``path`` (as a training process does on its
    run folder) until it is killed."""
    script = (
        "import fcntl, os, sys, time\n"
        "descriptor = os.open(sys.argv[1], os.O_RDONLY)\n"
        "fcntl.flock(descriptor, fcntl.LOCK_EX)\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
    return holder


@needs_flock
def test_running_while_another_process_holds_the_lock_and_not_after_it_is_killed(tmp_path: Path) -> None:
    training = make_run(tmp_path, "a/training", [0.5, 0.6], ended=False)
    resuming = make_run(tmp_path, "b/resuming_a_finished_run", [0.5])
    holders = [hold_lock(training), hold_lock(resuming)]
    try:
        rows = by_run(list_runs(tmp_path))
        assert rows["a/training"]["state"] == rows["b/resuming_a_finished_run"]["state"] == "running"
        assert rows["a/training"]["epochs_done"] == 2  # the epochs done so far, from metrics.csv
        message = (
            f"^{re.escape(str(training))} is being trained by another fmtk process \\(pid {holders[0].pid}\\)"
        )
        with pytest.raises(FmtkError, match=message):
            lock_run(training)
    finally:
        for holder in holders:
            os.kill(holder.pid, signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
            holder.wait()
    rows = by_run(list_runs(tmp_path))
    assert rows["a/training"]["state"] == "interrupted"
    assert rows["b/resuming_a_finished_run"]["state"] == "finished"


@needs_flock
def test_lock_run_holds_until_closed(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, "a/run", [0.5])
    with lock_run(run_dir):
        assert is_running(run_dir)
        with pytest.raises(FmtkError, match="is being trained by another fmtk process"):
            lock_run(run_dir)  # flock locks belong to an open file: a second open conflicts
    assert not is_running(run_dir)
    lock_run(run_dir).close()
    with pytest.raises(FmtkError, match="cannot open the run folder"):
        lock_run(tmp_path / "not_a_run")


@needs_flock
def test_lock_run_waits_out_a_listing_that_looks_at_the_run(tmp_path: Path) -> None:
    import fcntl

    run_dir = make_run(tmp_path, "a/run", [0.5])
    listing = os.open(run_dir, os.O_RDONLY)  # as is_running opens it, but holding its shared lock longer
    fcntl.flock(listing, fcntl.LOCK_SH)
    threading.Timer(0.1, os.close, [listing]).start()
    lock_run(run_dir).close()  # does not fail with "being trained by another fmtk process"


def test_two_hundred_runs(tmp_path: Path) -> None:
    states = ["finished", "stopped early", "interrupted"]
    for index in range(200):
        state = states[index % 3]
        accuracies = [0.5 + index / 1000, 0.6 + index / 1000][: 1 if state == "stopped early" else 2]
        run = f"recipe_{index % 7}/20260101-{index:06d}"
        make_run(tmp_path, run, accuracies, epochs=2, ended=state != "interrupted", changed={"seed": index})

    rows = list_runs(tmp_path)

    assert len(rows) == 200 and json.loads(json.dumps(rows)) == rows  # plain JSON values
    rows_by_run = by_run(rows)
    for index in range(200):
        row = rows_by_run[f"recipe_{index % 7}/20260101-{index:06d}"]
        assert row["state"] == states[index % 3]
        assert row["recipe"] == f"recipe_{index % 7}" and row["changed"] == {"seed": index}
        assert row["epochs_done"] == (1 if row["state"] == "stopped early" else 2)
        assert row["best_valid_accuracy"] == pytest.approx(0.4 + index / 1000 + row["epochs_done"] / 10)
    best = sort_runs(rows, "best_valid_acc")
    assert best[0]["run"] == "recipe_2/20260101-000198"  # the last finished run: 2 epochs, 0.798
    assert len(format_runs_table(best).splitlines()) == 201


def test_curves_draw_each_run_of_the_table_in_its_colour_at_its_values(tmp_path: Path) -> None:
    """`fmtk runs FOLDER... --curves FILE`: the runs of several folders (paths as typed), each
    run's valid accuracy at its epochs in the colour of its place in the table (the lower panel)."""
    make_run(tmp_path, "one/digits_mlp/a", [0.5, 0.7, 0.9])
    make_run(tmp_path, "two/digits_mlp/b", [0.9, 0.8], ended=False)  # interrupted: its epochs so far
    (tmp_path / "two/digits_mlp/b" / METRICS_CSV).open("a").write("3,0.5")  # torn as by a kill: skipped
    result = fmtk("runs", "one/digits_mlp/a", "two", "--curves", "curves.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["one/digits_mlp/a", "two/digits_mlp/b"]
    assert lines[-1] == "wrote curves.png"
    pixels = np.asarray(Image.open(tmp_path / "curves.png"))
    assert pixels.shape == (880, 720, 3)  # two panels, the legend in a corner of the upper one

    def colour_at(epoch: int, accuracy: float) -> tuple[int, ...]:
        top, bottom, low, high = 440 + 48, 440 + 400, 48.0, 92.0  # 50 % … 90 %, and a 5 % margin
        row = top + (high - 100 * accuracy) / (high - low) * (bottom - top)
        # epochs 1 … 3 across the plot (an axis of epochs starts at 1)
        return tuple(pixels[round(row), round(60 + ((epoch - 1) / 2 + X_MARGIN) / (1 + 2 * X_MARGIN) * 640)])

    for epoch, accuracy in enumerate([0.5, 0.7, 0.9], start=1):
        assert colour_at(epoch, accuracy) == LINE_COLOURS[0]
    for epoch, accuracy in enumerate([0.9, 0.8], start=1):
        assert colour_at(epoch, accuracy) == LINE_COLOURS[1]
    assert colour_at(3, 0.5) != LINE_COLOURS[1]  # the torn row


def test_curves_take_the_first_ten_runs_and_never_overwrite(tmp_path: Path) -> None:
    for index in range(12):
        make_run(tmp_path, f"digits_mlp/{index:02d}", [0.5 + index / 100, 0.6 + index / 100])
    result = fmtk("runs", ".", "--sort", "best_valid_acc", "--curves", "best.png", cwd=tmp_path)
    assert result.stdout.splitlines()[-1] == "wrote best.png: 10 of the table's 12 runs"
    pixels = np.asarray(Image.open(tmp_path / "best.png")).reshape(-1, 3)
    drawn = [(pixels == colour).all(1).sum() for colour in LINE_COLOURS]
    assert min(drawn) > 100  # every colour: ten runs
    quiet = fmtk("runs", ".", "--json", "--curves", "json.png", cwd=tmp_path)  # stdout: JSON alone
    assert len(json.loads(quiet.stdout)) == 12
    assert quiet.stderr == "wrote json.png: 10 of the table's 12 runs\n"
    before = (tmp_path / "best.png").read_bytes()
    again = fmtk("runs", ".", "--curves", "best.png", cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr == "Error: best.png exists; choose another --curves (nothing was overwritten)\n"
    assert (tmp_path / "best.png").read_bytes() == before
    empty = fmtk("runs", "nothing_here", "--curves", "none.png", cwd=tmp_path / "digits_mlp")
    assert empty.returncode == 1 and "no such folder" in empty.stderr
    assert not (tmp_path / "digits_mlp" / "none.png").exists()
    text = fmtk("runs", ".", "--curves", "curves.txt", cwd=tmp_path)
    assert text.stderr == "Error: --curves curves.txt: a picture is a PNG file; give a name ending in .png\n"
    assert not (tmp_path / "curves.txt").exists()


def test_curves_leave_out_runs_without_an_epoch_and_name_a_run_given_as_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run given as the folder itself is named by its folder (not `.`), once even when given
    twice; a run with no finished epoch, or none with a finite figure, is left out with a line."""
    texts = []
    draw_text = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):
        texts.append(text)
        return draw_text(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    make_run(tmp_path, "digits_mlp/20260101-100000", [0.5, 0.6])
    make_run(tmp_path, "digits_mlp/starting", [], ended=False)  # no epoch yet
    make_run(tmp_path, "digits_mlp/diverged", [float("nan")])
    write_json(tmp_path / "digits_mlp/diverged" / METRICS_JSON, {"epochs_run": 1})
    (tmp_path / "digits_mlp/diverged" / METRICS_CSV).write_text(
        "epoch,valid_loss,valid_accuracy\n1,nan,nan\n"
    )
    alone = fmtk("runs", "20260101-100000", "--curves", "alone.png", cwd=tmp_path / "digits_mlp")
    assert alone.returncode == 0, alone.stderr
    assert "20260101-100000" in texts and "." not in texts
    twice = fmtk("runs", "digits_mlp", "digits_mlp/20260101-100000", "--curves", "all.png", cwd=tmp_path)
    assert twice.returncode == 0, twice.stderr
    assert [line.split()[0] for line in twice.stdout.splitlines()[1:-1]] == [
        "digits_mlp/20260101-100000", "digits_mlp/diverged", "digits_mlp/starting",
    ]  # fmt: skip
    assert twice.stdout.splitlines()[-1] == "wrote all.png: 1 of the table's 3 runs"
    assert twice.stderr.splitlines() == [
        "digits_mlp/diverged: no finished epoch with finite figures; left out of --curves",
        "digits_mlp/starting: no finished epoch with finite figures; left out of --curves",
    ]
    none = fmtk("runs", "digits_mlp/starting", "--curves", "none.png", cwd=tmp_path)
    assert none.returncode == 1 and none.stderr.endswith(
        "Error: --curves none.png: no run with a finished epoch to draw\n"
    )
    assert not (tmp_path / "none.png").exists()


@needs_flock
def test_curves_are_drawn_before_the_table_whose_reader_may_have_gone(tmp_path: Path) -> None:
    """`fmtk runs --curves FILE | true`: the table cannot be printed (click ends at the closed pipe),
    but the picture was drawn first."""
    make_run(tmp_path, "digits_mlp/a", [0.5, 0.6])
    command = [sys.executable, "-m", "fmtk", "runs", ".", "--curves", "a.png"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # before the process has printed anything
    process.communicate(timeout=120)
    assert (tmp_path / "a.png").exists()
