"""benchmarks/gpu.py on a machine without CUDA: the one line it prints, and its parts run on the CPU
at tiny sizes (a row's timing and accuracy, the subprocess and its time limit, the pytest counts,
the budget, the table)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_benchmarks import BENCHMARKS, load_benchmark

from fmtk.device import threads_by_default

gpu = load_benchmark("gpu")
common = load_benchmark("common")

# catdog_root: 32 training photos, 8 valid; at 32 px and batch 4 a VGG16-BN step is cheap on the CPU.
TINY_CATDOG = {"image_size": "32", "batch_size": "4", "data_cache": "file"}


def test_without_cuda_it_prints_one_line_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # the default --out is runs/gpu.json here
    assert gpu.main([]) == 0
    assert gpu.main(["--out", "gpu.json", "--data-dir", "data", "--steps", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(
        line.startswith("CUDA is not available: nothing measured") for line in lines
    )
    assert "after 150 steps" in lines[0] and "after 25 steps" in lines[1]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_the_script_without_cuda_exits_0_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), "--out", "gpu.json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("CUDA is not available")
    assert list(tmp_path.iterdir()) == []


def test_a_row_times_the_steps_after_warm_up_and_validates(
    catdog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """catdog_vgg itself, at 32 px on the CPU: 1 warm-up and 2 timed steps of batch 4, then the
    epoch's validation."""
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    row = gpu.measure(catdog_root, "32", True, steps=2, warmup=1, device="cpu", overrides=TINY_CATDOG)
    speed = {"precision": "32", "channels_last": True, "compile": False, "deterministic": False}
    assert row["speed"] == {**speed, "threads": threads_by_default()}
    assert (row["steps"], row["warmup_steps"], row["trained_steps"], row["image_size"]) == (2, 1, 3, 32)
    assert row["images"] == 8 and row["images_per_s"] == pytest.approx(8 / row["seconds"])
    assert 0 < row["seconds"] < row["wall_seconds"] and row["warmup_seconds"] > 0
    assert 0 <= row["valid_accuracy"] <= 1 and row["valid_loss"] > 0
    assert "peak_memory_gib" not in row  # CUDA only
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # training_set and test_set, decoded once
    json.dumps(row)
    exact = gpu.measure(catdog_root, "32", True, steps=2, warmup=1, device="cpu", overrides=TINY_CATDOG,
                        deterministic=True)  # fmt: skip
    assert exact["deterministic"] and exact["speed"]["deterministic"]
    assert exact["valid_loss"] == row["valid_loss"]  # on the CPU, the same figures either way


def test_a_row_in_a_subprocess_and_the_time_limit() -> None:
    spec = {"recipe": "digits_mlp", "device": "cpu", "precision": "32", "channels_last": False,
            "steps": 2, "warmup": 1}  # fmt: skip
    row = gpu.measure_in_subprocess(spec, None, timeout=300)
    assert "error" not in row, row
    assert row["recipe"] == "digits_mlp" and row["steps"] == 2 and row["images_per_s"] > 0
    sleeper = "import time; print('started', flush=True); time.sleep(60)"
    # Killed at its limit; what it printed by then is kept (on a loaded machine Python may take
    # longer than the limit to start: then nothing, and the test must not ask for the line).
    code, out, _, seconds = common.run_limited([sys.executable, "-c", sleeper], 3)
    assert code is None and out in ("", "started\n") and seconds < 30
    assert common.run_limited([sys.executable, "-c", "print(6 * 7)"], 30)[:2] == (0, "42\n")
    row = gpu.measure_in_subprocess({**spec, "steps": 0}, None, timeout=300)  # a failing row: its error
    assert row["error"].startswith("IndexError") and row["recipe"] == "digits_mlp" and row["wall_seconds"] > 0


def test_junit_counts(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" '
        'failures="1" skipped="1" tests="3"><testcase classname="tests.test_cli" name="test_a"/>'
        '<testcase classname="tests.training.test_engines" name="test_b"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_cli" name="test_c"><skipped message="y"/></testcase>'
        "</testsuite></testsuites>"
    )
    assert gpu.junit_counts(report) == {
        "passed": 1, "failed": 1, "errors": 0, "skipped": 1,
        "failed_tests": ["tests.training.test_engines::test_b"],
    }  # fmt: skip


def test_with_no_budget_everything_is_skipped_and_written(
    catdog_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole collection on the CPU with a budget that fits nothing: each measurement recorded as
    skipped with why, the report written, the table says so."""
    out = tmp_path / "runs" / "gpu.json"
    args = gpu.argparse.Namespace(
        data_dir=catdog_root, out=out, steps=130, warmup=20, budget_seconds=0, image_size=224
    )
    report = gpu.collect(args, device="cpu")
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    skipped = {entry["what"]: entry["reason"] for entry in report["skipped"]}
    assert list(skipped) == [
        "CUDA tests",
        "host syncs",
        "fmtk / plain, bf16",
        "fmtk / plain, 32",
        "catdog_vgg --deterministic killed and resumed",
        *[f"{precision}, channels-last" for precision in gpu.PRECISIONS],
        "bf16, channels-last, compiled",
        "bf16, channels-last, compiled (reduce-overhead)",
        "bf16, channels-last, data_cache=none",
        "bf16, channels-last, deterministic",
        *[f"{precision}, default layout" for precision in gpu.PRECISIONS],
    ]
    assert skipped["CUDA tests"] == "budget: needs ~45 s, 0 s left"
    assert skipped["32, channels-last"] == "budget: needs ~60 s, 0 s left"
    assert report["tests"] is None and report["speed"] == [] and report["settings"]["warmup_steps"] == 20
    assert report["syncs"] is None and report["pairs"] == [] and report["headline"] is None
    lines = gpu.table(report)
    assert lines[1].startswith("| measurement |") and len(lines) == 3 + len(skipped)
    assert "[   0 s] done" in capsys.readouterr().err

    monkeypatch.delenv("FMTK_DATA", raising=False)  # no photos at all: the rows say so, not the budget
    args.data_dir = None
    skipped = {entry["what"]: entry["reason"] for entry in gpu.collect(args, device="cpu")["skipped"]}
    assert skipped["bf16, channels-last, compiled"] == "no photos: give --data-dir or set $FMTK_DATA"
    assert (
        skipped["host syncs"] == skipped["fmtk / plain, 32"] == "no photos: give --data-dir or set $FMTK_DATA"
    )


def test_table_and_accuracy_against_32_bit() -> None:
    budget = gpu.Budget(100, reserve=10)
    assert budget.allows("a", 80) and not budget.allows("b", 95)
    assert budget.skipped == [{"what": "b", "reason": "budget: needs ~95 s, 90 s left"}]

    def row(precision, channels_last, accuracy, compile=False, **more):
        return {"precision": precision, "channels_last": channels_last, "compile": compile,
                "warmup_steps": 20, "steps": 130, "trained_steps": 150, "valid_accuracy": accuracy,
                "images_per_s": 1234.5, "ms_per_step": 12.96, "peak_memory_gib": 5.25,
                "warmup_seconds": 61.2, **more}  # fmt: skip

    rows = [
        row("32", True, 0.70),
        row("bf16", True, 0.7125),
        row("16-mixed", True, 0.64),
        row("bf16", True, 0.69, compile=True),
        row("bf16", True, 0.71, overrides={"data_cache": "none"}, ms_per_step=14.9),
        row("bf16", True, 0.7125, deterministic=True, ms_per_step=14.0),
        row("32", False, 0.68),
        {"precision": "bf16", "channels_last": False, "compile": False, "steps": 130, "warmup": 20,
         "warmup_steps": 20, "trained_steps": 150, "error": "OutOfMemoryError: CUDA out of memory"},
    ]  # fmt: skip
    report = {
        "environment": {"device": "cuda", "gpu": "NVIDIA H200", "gpus": 1, "memory_gib": 139.8,
                        "capability": "9.0", "torch": "2.9.0", "cuda": "12.8", "cudnn": 91002},
        "settings": {"image_size": 224, "batch_size": 16, "budget_seconds": 420},
        "tests": {"command": "pytest -k cuda", "passed": 1, "failed": 0, "errors": 0, "skipped": 1,
                  "seconds": 14.2},
        "speed": rows, "seconds": 300.4,
        "skipped": [{"what": "16-mixed, default layout", "reason": "budget: needs ~20 s, 3 s left"}],
    }  # fmt: skip
    lines = gpu.table(report)
    assert lines[0].startswith("NVIDIA H200 ×1, 139.8 GiB, sm 9.0; torch 2.9.0, CUDA 12.8, cuDNN 91002;")
    assert lines[0].endswith("300 s of a 420-s budget")
    assert (
        lines[3] == "| CUDA tests (`pytest -k cuda`) | 1 passed, 0 failed, 0 errors, 1 skipped (14 s) | | | |"
    )
    assert lines[4] == (
        "| 32, channels-last | 1,234 images/s, 13.0 ms/step, 5.2 GiB peak | 20 + 130 | 70.00% |  |"
    )
    assert lines[5].endswith("| 71.25% | +1.25 points |")
    assert lines[6].endswith("| 64.00% | -6.00 points (more than 5 points below) |")
    # A compiled row against the eager 32-bit row of its layout; the default layout's own 32-bit row.
    assert "warm-up 61 s" in lines[7] and lines[7].endswith("| 69.00% | -1.00 points |")
    # Photos decoded every epoch: its step time against the decoded cache's row of its precision and layout.
    assert lines[8] == (
        "| bf16, channels-last, data_cache=none | 1,234 images/s, 14.9 ms/step, 5.2 GiB peak, 1.15× the "
        "decoded cache's (target ≤ 1.25) | 20 + 130 | 71.00% | +1.00 points |"
    )
    # --deterministic: its step time against the same row without it.
    assert lines[9] == (
        "| bf16, channels-last, deterministic | 1,234 images/s, 14.0 ms/step, 5.2 GiB peak, 1.08× the time "
        "without | 20 + 130 | 71.25% | +1.25 points |"
    )
    assert lines[10].startswith("| 32, default layout |") and lines[10].endswith("| 68.00% |  |")
    assert (
        lines[11] == "| bf16, default layout | failed: OutOfMemoryError: CUDA out of memory | 20 + 130 | | |"
    )
    assert lines[12] == "| 16-mixed, default layout | skipped: budget: needs ~20 s, 3 s left | | | |"


class Windows:
    """A stand-in for the sync counter on the CPU: counts how often its window opens and closes."""

    def __init__(self) -> None:
        self.found = Counter()

    def __enter__(self) -> Windows:
        self.found["opened"] += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.found["closed"] += 1


def test_the_sync_count_watches_steps_3_to_the_last_and_the_epochs_end_apart(
    catdog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    counted = gpu.sync_count(catdog_root, "cpu", TINY_CATDOG, counter=Windows)
    assert counted["steps"] == 8 - 2  # 32 training photos, batch 4
    assert counted["in_steps_by_place"] == counted["at_epoch_end_by_place"] == {"opened": 1, "closed": 1}


def test_fmtk_against_the_plain_loop_takes_turns(
    catdog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    pair = gpu.fmtk_against_plain(catdog_root, "32", TINY_CATDOG, "cpu", steps=2, rounds=3)
    assert pair["rounds"] == len(pair["ratios"]) == 2 and pair["steps"] == 2
    assert pair["ratio"] == sum(pair["ratios"]) / 2
    assert pair["fmtk_ms_per_step"] > 0 and pair["plain_ms_per_step"] > 0


@pytest.mark.slow
def test_the_headline_run_killed_and_resumed_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    # digits_mlp on the CPU stands in for catdog_vgg on a GPU: the same three processes.
    result = gpu.headline_resume(tmp_path, 300, recipe="digits_mlp", kill_epoch=2, extra=["--epochs", "3"])
    assert "error" not in result, result
    assert result["epochs_equal"] and result["test_equal"] and result["epochs_run"] == 3
    assert result["resume_changes"] == []  # nothing changed on resuming: no line says so
    line = gpu.outcome_lines({"headline": result})[0]
    assert line.startswith(
        "| `fmtk run digits_mlp --device cpu --deterministic` killed in epoch 2, resumed | equal:"
    )


def test_the_table_rows_of_syncs_pairs_and_the_headline() -> None:
    report = {
        "syncs": {"steps": 98, "in_steps": 0, "in_steps_by_place": {}, "at_epoch_end": 100,
                  "at_epoch_end_by_place": {"storage.py:264": 100}},
        "pairs": [{"precision": "bf16", "steps": 50, "rounds": 3, "ratio": 1.0123,
                   "ratios": [0.99, 1.0123, 1.04], "fmtk_ms_per_step": 8.61, "plain_ms_per_step": 8.5},
                  {"precision": "32", "error": "OutOfMemoryError: CUDA out of memory"}],
        "headline": {"command": "fmtk run catdog_vgg --device cuda --deterministic", "kill_epoch": 10,
                     "epochs_equal": True, "test_equal": False, "test_accuracy": 0.84, "epochs_run": 47,
                     "seconds": 140.2},
    }  # fmt: skip
    assert gpu.outcome_lines(report) == [
        "| host syncs, steps 3 to the epoch's last (target 0) | 0 in 98 steps; 100 at the epoch's end "
        "(validation, checkpoints) | | | |",
        "| fmtk / plain loop, bf16, channels-last (target ≤ 1.03) | 1.012 (0.990–1.040): 8.61 against 8.50 "
        "ms/step | 3 rounds of 50 | | |",
        "| fmtk / plain loop, 32, channels-last (target ≤ 1.03) | OutOfMemoryError: CUDA out of memory "
        "| | | |",
        "| `fmtk run catdog_vgg --device cuda --deterministic` killed in epoch 10, resumed | DIFFERENT: "
        "epochs =, test ≠; 84.00% test after 47 epochs (140 s) | | | |",
    ]
