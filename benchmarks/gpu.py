"""fmtk on one GPU, in one command sized for a short device loan (catdog_vgg, VGG16-BN, 224 px):
the GPU acceptance run of issue 37. In this order, each only while the time budget allows
(``--budget-seconds``; what does not fit is recorded as skipped, with why):

1. ``pytest -m cuda``, a subprocess with a time limit (tests/test_cuda.py, tests/training/test_step_sync.py).
2. Host syncs in catdog_vgg's first epoch, steps 3 to the last (target: none), and at its end, apart.
3. fmtk against a plain loop (``benchmarks/speed.py``'s ``fmtk_and_plain``), bf16 and 32-bit (target ≤ 1.03).
4. ``fmtk run catdog_vgg --device cuda --deterministic`` uninterrupted and, beside it, killed with
   SIGKILL in epoch ``KILL_EPOCH`` and resumed: their metrics.csv rows and test figures must be equal.
5. Training images/s on the photos in 32, bf16 and 16-mixed, channels-last: one fmtk run a row
   (``build_run``, every handler), ``--warmup`` + ``--steps`` steps timed after ``torch.cuda.synchronize()``,
   and the valid accuracy it ends with, against 32-bit's.
6. bf16, channels-last, ``--compile`` in each of ``COMPILE_MODES``, each in a subprocess with a time limit.
7. bf16, channels-last, with ``data_cache=none``: the photos decoded by DataLoader workers every epoch,
   as for a folder too large to hold (target: ≤ 1.25× the decoded cache's time per step).
8. bf16, channels-last, ``--deterministic`` (in a subprocess: cuBLAS reads its workspace setting
   once a process), against the same row without it: what exactness costs.
9. The three precisions in the default layout (channels-last off).

One Markdown table; the report is written as JSON (``--out``) after each measurement, so a run cut
short keeps what it measured. Without CUDA: one line. The method: docs/performance.md, "On a GPU".

    python benchmarks/gpu.py --data-dir ../shared/datasets --out gpu.json [--steps 130] [--warmup 20]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import gc
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from common import last_line, run_limited, spread, write_json

import fmtk

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "catdog_vgg"
ONE_EPOCH = {"epochs": "1", "early_stopping_patience": "none", "plateau_patience": "none"}
PRECISIONS = ("32", "bf16", "16-mixed")
COMPILE_MODES = (True, "reduce-overhead")  # torch.compile's default mode; CUDA graphs
PAIR_STEPS, PAIR_ROUNDS = 50, 5  # fmtk and plain: steps per round; rounds, the first one a warm-up
KILL_EPOCH = 10  # the headline run killed in this epoch (the faithful recipe stops after ~47)
# Valid accuracy may fall this far below the 32-bit row's before the table says so: 400 valid
# photos (one standard deviation of a proportion near 75% is ~2.2 points), and different
# roundings take different paths after 150 steps.
ACCURACY_TOLERANCE = 0.05
ACCURACY_POINTS = f"{100 * ACCURACY_TOLERANCE:.0f} points"
# Seconds a measurement is expected to take, at least; it starts only if that much budget is left.
ESTIMATES = {"tests": 45, "syncs": 40, "pair": 45, "headline": 150, "first row": 60, "row": 20,
             "subprocess row": 45, "compile": 150}  # fmt: skip
TESTS_LIMIT = 240  # the CUDA tests' most seconds: ~1.5 minutes expected; cut off, they count nothing
TIME_LIMIT = "stopped after {:.0f} s (time limit)"


class Budget:
    """The seconds left of ``seconds`` (less ``reserve``) since it was made. A measurement starts
    only if its estimate fits; otherwise it is recorded in ``skipped`` with the reason."""

    def __init__(self, seconds: float, reserve: float = 20) -> None:  # for the table, the JSON and leaving
        self.seconds, self.reserve = seconds, reserve
        self.started = time.monotonic()
        self.skipped: list[dict[str, str]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.reserve - self.elapsed()

    def allows(self, name: str, needs: float) -> bool:
        if self.left() >= needs:
            return True
        self.skip(name, f"budget: needs ~{needs:.0f} s, {max(self.left(), 0):.0f} s left")
        return False

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"what": name, "reason": reason})


def row_name(row: dict[str, Any]) -> str:
    """``bf16, channels-last, compiled``: a row's speed options in words."""
    words = [row["precision"], "channels-last" if row["channels_last"] else "default layout"]
    if row.get("deterministic"):
        words.append("deterministic")
    if row.get("compile"):
        words.append("compiled" if row["compile"] is True else f"compiled ({row['compile']})")
    if cache_of(row) != "file":
        words.append(f"data_cache={cache_of(row)}")
    return ", ".join(words)


def cache_of(row: dict[str, Any]) -> str:
    return row.get("overrides", {}).get("data_cache", "file")


class CudaSyncs:
    """Host-device synchronisations counted by torch's sync debug mode while it is entered, by
    where they happened (``file:line`` of the Python frame that called into torch)."""

    def __init__(self) -> None:
        self.found: Counter[str] = Counter()

    def __enter__(self) -> CudaSyncs:
        self.caught = warnings.catch_warnings(record=True)
        self.records = self.caught.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self.caught.__exit__(*exc)
        for record in self.records:
            if "synchroniz" in str(record.message):
                self.found[f"{Path(record.filename).name}:{record.lineno}"] += 1


def watch_steps(trainer, watcher, first: int = 3) -> None:
    """``watcher`` (a context manager) on from the batch of step ``first`` of the first epoch to the
    end of its last step, before the epoch's own handlers (validation, checkpoints) run."""
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=first - 1), lambda _: watcher.__enter__())

    def stop(engine) -> None:
        if engine.state.iteration == engine.state.epoch_length:
            watcher.__exit__(None, None, None)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, stop)


def first_epoch(run) -> None:
    """The first epoch of ``run`` with every handler a run has (its checkpoints too)."""
    with run.folder:
        try:
            run.prepare()
            run.trainer.run(run.data.train, max_epochs=1)
        finally:
            run.close_loggers()


def sync_count(data_dir: Path | None, device: str = "cuda", overrides: dict | None = None, counter=CudaSyncs):
    """The host syncs of ``RECIPE``'s first epoch: in steps 3 to the last (by place), and apart, at
    the epoch's end (validation, checkpoints), counted by ``counter()`` (torch's sync debug mode)."""
    from ignite.engine import Events

    in_steps, at_end = counter(), counter()
    with tempfile.TemporaryDirectory() as run_dir:
        values = {**ONE_EPOCH, **(overrides or {})}
        run = fmtk.build_run(RECIPE, run_dir, device, data_dir, None, progress=False, **values)
        watch_steps(run.trainer, in_steps)
        run.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: at_end.__enter__())
        run.trainer.add_event_handler(Events.COMPLETED, lambda _: at_end.__exit__(None, None, None))
        first_epoch(run)
    return {"steps": run.trainer.state.epoch_length - 2, "in_steps": sum(in_steps.found.values()),
            "in_steps_by_place": dict(in_steps.found), "at_epoch_end": sum(at_end.found.values()),
            "at_epoch_end_by_place": dict(at_end.found)}  # fmt: skip


def fmtk_against_plain(data_dir: Path | None, precision: str, overrides: dict, device: str,
                       steps: int = PAIR_STEPS, rounds: int = PAIR_ROUNDS) -> dict:  # fmt: skip
    """fmtk and a plain loop taking turns (``benchmarks/speed.py``), channels-last: each one's median
    ms per step and each round's ratio (the median: ``ratio``), the warm-up round left out."""
    from speed import fmtk_and_plain  # benchmarks/speed.py, this script's neighbour

    measured = fmtk_and_plain(RECIPE, data_dir, rounds, True, steps, device=device, precision=precision,
                              overrides=overrides)  # fmt: skip
    fmtk_seconds, plain = (measured["seconds"][name][1:] for name in ("fmtk", "plain"))
    ratios = [a / b for a, b in zip(fmtk_seconds, plain, strict=True)]
    return {"precision": precision, "channels_last": True, "steps": steps, "rounds": len(ratios),
            "fmtk_ms_per_step": statistics.median(fmtk_seconds) / steps * 1000,
            "plain_ms_per_step": statistics.median(plain) / steps * 1000,
            "ratio": statistics.median(ratios), "ratios": ratios}  # fmt: skip


# A handler module for `fmtk run --handler killers:sigkill`: the process kills itself mid-epoch.
KILLER = """
import os, signal
from ignite.engine import Events

def sigkill(run):
    @run.trainer.on(Events.ITERATION_COMPLETED)
    def kill(engine):
        if engine.state.iteration == ({epoch} - 1) * engine.state.epoch_length + 5:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without its timing column."""
    with (run_dir / "metrics.csv").open() as file:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(file)]


def headline_resume(data_dir: Path, timeout: float, recipe: str = RECIPE, kill_epoch: int = KILL_EPOCH,
                    extra: Sequence[str] = ("--set", "data_cache=file")) -> dict[str, Any]:  # fmt: skip
    """``fmtk run RECIPE --device cuda --deterministic`` uninterrupted and, at the same time on the
    same GPU, killed with SIGKILL in epoch ``kill_epoch`` and resumed: whether their epochs and test
    figures are equal, and their test accuracy."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "killers.py").write_text(KILLER.format(epoch=kill_epoch))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        arguments = ["run", recipe, "--device", device, "--deterministic", f"--data-dir={data_dir}", *extra]
        fmtk_run = [sys.executable, "-m", "fmtk", *arguments]
        options = {"env": {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}, "cwd": root}
        started = time.perf_counter()

        def left() -> float:
            return timeout - (time.perf_counter() - started)

        straight_run = [*fmtk_run, "--run-dir", str(root / "straight")]
        pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
        with subprocess.Popen(straight_run, start_new_session=True, **pipes, **options) as straight:
            killer = ["--run-dir", str(root / "killed"), "--handler", "killers:sigkill"]
            killed = run_limited([*fmtk_run, *killer], left(), **options)
            resume = [sys.executable, "-m", "fmtk", "run", "--resume", str(root / "killed")]
            resumed = run_limited(resume, left(), **options)
            try:
                _, straight_err = straight.communicate(timeout=max(left(), 1))
            except subprocess.TimeoutExpired:
                os.killpg(straight.pid, signal.SIGKILL)
                _, straight_err = straight.communicate()
        result = {"command": f"fmtk {' '.join(arguments[:5])}", "kill_epoch": kill_epoch,
                  "seconds": timeout - left()}  # fmt: skip
        ended = {"killed run": (killed[0], killed[2], -signal.SIGKILL), "resume": (resumed[0], resumed[2], 0),
                 "uninterrupted run": (straight.returncode, straight_err, 0)}  # fmt: skip
        problems = [f"the {name} ended with {code}: {last_line(err)}"
                    for name, (code, err, expected) in ended.items() if code != expected]  # fmt: skip
        if problems:
            return {**result, "error": "; ".join(problems)}
        first, second = (json.loads((root / run / "metrics.json").read_text())
                         for run in ("straight", "killed"))  # fmt: skip
        # The line a resume prints when it goes on differently (device, precision): none here.
        changes = [line for line in resumed[1].splitlines()
                   if line.startswith("resuming") and not line.startswith("resuming after")]  # fmt: skip
        return {**result, "epochs_equal": epoch_rows(root / "straight") == epoch_rows(root / "killed"),
                "test_equal": first["test"] == second["test"], "epochs_run": first["epochs_run"],
                "test_accuracy": first["test"]["best"]["accuracy"], "resume_changes": changes,
                "resumed_test_accuracy": second["test"]["best"]["accuracy"]}  # fmt: skip


def measure(data_dir: Path | None, precision: str, channels_last: bool, compile: bool | str = False,
            steps: int = 130, warmup: int = 20, recipe: str = RECIPE, device: str = "cuda",
            overrides: dict[str, str] | None = None, deterministic: bool = False
            ) -> dict[str, Any]:  # fmt: skip
    """One row: ``recipe`` built by fmtk with these speed options (``overrides`` as ``--set``)
    trains one Ignite epoch of ``warmup + steps`` steps from the recipe's seed; images/s over the
    last ``steps`` (the clock read after the device has finished, at the end of step ``warmup`` and
    of the last step), then the valid accuracy and loss of the validation that ends the epoch."""
    from ignite.engine import Events

    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    last, marks, images = warmup + steps, [], [0]

    def clock(engine) -> None:
        iteration = engine.state.iteration
        if warmup < iteration <= last:
            images[0] += len(engine.state.batch[0])
        if iteration in (warmup, last):
            if cuda:
                torch.cuda.synchronize(device)
            marks.append(time.perf_counter())

    started = time.perf_counter()
    speed = fmtk.SpeedOptions(precision, channels_last, compile, deterministic)
    with tempfile.TemporaryDirectory() as run_dir:
        run = fmtk.build_run(recipe, run_dir, device, data_dir, None, speed=speed, progress=False,
                             **ONE_EPOCH, **(overrides or {}))  # fmt: skip
        with run.folder:  # released as Run.run releases it
            try:
                run.trainer.add_event_handler(Events.ITERATION_COMPLETED, clock)
                # An epoch may be longer than the data: Ignite starts the batches again.
                run.trainer.run(run.data.train, max_epochs=1, epoch_length=last)
            finally:
                run.close_loggers()
        seconds, epoch, started_epoch = marks[1] - marks[0], run.history[-1], run.trainer.state.epoch_started
        row = {
            "recipe": recipe, "precision": precision, "channels_last": channels_last, "compile": compile,
            "deterministic": deterministic, "speed": run.speed.config(), "device": str(device),
            "batch_size": run.recipe.batch_size, "image_size": run.recipe.options.get("image_size"),
            "warmup_steps": warmup, "steps": steps,
            "trained_steps": last, "images": images[0], "seconds": seconds,
            "images_per_s": images[0] / seconds, "ms_per_step": 1000 * seconds / steps,
            # From the epoch's start to the warm-up's end: cuDNN's autotuning, compiling.
            "warmup_seconds": marks[0] - started_epoch,
            **{name: epoch[name] for name in ("valid_accuracy", "valid_loss", "train_loss")},
        }  # fmt: skip
        if cuda:
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del run, epoch
    free_memory(device)  # the engines' handlers hold the run in cycles: free its model and data now
    return {**row, "wall_seconds": time.perf_counter() - started}


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def measure_in_subprocess(spec: dict[str, Any], data_dir: Path | None, timeout: float) -> dict[str, Any]:
    """:func:`measure` (keyword arguments ``spec``) in a new process stopped at ``timeout`` seconds:
    its row, or the spec with an ``error``; ``wall_seconds``: the process's, its start included."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    command += ["--data-dir", str(data_dir)] if data_dir else []
    code, out, err, seconds = run_limited(command, timeout)
    if code == 0:
        return {**json.loads(last_line(out)), "wall_seconds": seconds}
    error = TIME_LIMIT.format(seconds) if code is None else last_line(err) or f"exit code {code}"
    return {**spec, "error": error, "wall_seconds": seconds}


def junit_counts(report: Path) -> dict[str, Any]:
    """Passed, failed, skipped, errors and the failed tests' names, from pytest's JUnit XML file."""
    root = ElementTree.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests, failures, errors, skipped = (sum(int(suite.get(name, 0)) for suite in suites)
                                        for name in ("tests", "failures", "errors", "skipped"))  # fmt: skip
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in root.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]  # fmt: skip
    return {"passed": tests - failures - errors - skipped, "failed": failures, "errors": errors,
            "skipped": skipped, "failed_tests": failed}  # fmt: skip


def cuda_tests(timeout: float, data_dir: Path | None) -> dict[str, Any]:
    """``pytest -m cuda`` over tests/ in a subprocess (``$FMTK_DATA`` = ``data_dir``)."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={report}", str(ROOT / "tests")]  # fmt: skip
        env = {**os.environ, **({"FMTK_DATA": str(data_dir)} if data_dir is not None else {})}
        code, out, err, seconds = run_limited(command, timeout, env=env, cwd=ROOT)
        result: dict[str, Any] = {"command": "pytest -m cuda", "returncode": code, "seconds": seconds}
        counted = report.is_file()
        result.update(junit_counts(report) if counted else {}, summary=last_line(out))
    if code is None:
        result["error"] = TIME_LIMIT.format(seconds)
    elif code not in (0, 1, 5) or not counted:  # 1: some failed (counted); 5: none selected
        result["error"] = f"pytest exit code {code}: {last_line(err) or result['summary']}"
    return result


def environment(device: torch.device) -> dict[str, Any]:
    """The GPU, torch, CUDA and cuDNN versions and the settings that decide what "32" means."""
    found = {"torch": torch.__version__, "cuda": torch.version.cuda, "fmtk": fmtk.__version__,
             "python": platform.python_version(), "device": str(device),
             "date": datetime.datetime.now().isoformat(timespec="seconds")}  # fmt: skip
    if device.type == "cuda":
        info = torch.cuda.get_device_properties(device)
        found.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(),
                     memory_gib=round(info.total_memory / 2**30, 1), bf16=torch.cuda.is_bf16_supported(),
                     capability=f"{info.major}.{info.minor}", cudnn=torch.backends.cudnn.version(),
                     # "32" convolutions run in TF32 when cuDNN allows it (torch's default); matmuls if so.
                     cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                     float32_matmul_precision=torch.get_float32_matmul_precision())  # fmt: skip
    return found


def table(report: dict[str, Any]) -> list[str]:
    """The report as one line of its machine and one Markdown table."""
    found, settings = report["environment"], report["settings"]
    machine = found.get("gpu") or found["device"]
    if "gpus" in found:
        machine += f" ×{found['gpus']}, {found['memory_gib']} GiB, sm {found['capability']}"
    budget = f"{report['seconds']:.0f} s of a {settings['budget_seconds']:.0f}-s budget"
    lines = [f"{machine}; torch {found['torch']}, CUDA {found['cuda']}, cuDNN {found.get('cudnn')}; {RECIPE} "
             f"{settings['image_size']} px, batch {settings['batch_size']}; {budget}",
             "| measurement | result | steps (warm-up + timed) | valid accuracy | vs 32-bit |",
             "|---|---|---|---:|---|", *outcome_lines(report)]  # fmt: skip
    # Each reduced-precision row against the eager 32-bit row of its layout, after the same steps.
    eager_32 = {(row["channels_last"], row["trained_steps"]): row for row in report["speed"]
                if row["precision"] == "32" and not row["compile"] and "error" not in row}  # fmt: skip
    # The eager, decoded-cache, not deterministic row of each precision and layout: what the others cost.
    plain = {(row["precision"], row["channels_last"]): row for row in report["speed"]
             if not row["compile"] and not row.get("deterministic") and "error" not in row
             and cache_of(row) == "file"}  # fmt: skip
    for row in report["speed"]:
        name, steps = row_name(row), f"{row['warmup_steps']} + {row['steps']}"
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | {steps} | | |")
            continue
        result = f"{row['images_per_s']:,.0f} images/s, {row['ms_per_step']:.1f} ms/step"
        result += f", {row['peak_memory_gib']:.1f} GiB peak" if "peak_memory_gib" in row else ""
        result += f", warm-up {row['warmup_seconds']:.0f} s" if row["compile"] else ""
        usual = plain.get((row["precision"], row["channels_last"]))
        times = f", {row['ms_per_step'] / usual['ms_per_step']:.2f}×" if usual is not None else ""
        if cache_of(row) != "file" and times:
            result += f"{times} the decoded cache's (target ≤ 1.25)"
        if row.get("deterministic") and times:
            result += f"{times} the time without"
        base, versus = eager_32.get((row["channels_last"], row["trained_steps"])), ""
        if base is not None and base is not row:
            difference = row["valid_accuracy"] - base["valid_accuracy"]
            below = "" if difference >= -ACCURACY_TOLERANCE else f" (more than {ACCURACY_POINTS} below)"
            versus = f"{100 * difference:+.2f} points{below}"
        lines.append(f"| {name} | {result} | {steps} | {100 * row['valid_accuracy']:.2f}% | {versus} |")
    return lines + [f"| {skip['what']} | skipped: {skip['reason']} | | | |" for skip in report["skipped"]]


def outcome_lines(report: dict[str, Any]) -> list[str]:
    """The table's rows of the CUDA tests, the host syncs, fmtk against the plain loop and the headline."""
    lines = []
    tests = report.get("tests")
    if tests is not None:
        counts = [f"{tests[key]} {key}" for key in ("passed", "failed", "errors", "skipped") if key in tests]
        result = "; ".join(filter(None, [", ".join(counts), tests.get("error")]))
        lines.append(f"| CUDA tests (`{tests['command']}`) | {result} ({tests['seconds']:.0f} s) | | | |")
    syncs = report.get("syncs")
    if syncs is not None:
        by_place = syncs.get("in_steps_by_place", {})
        places = "".join(f"; {count} at {place}" for place, count in by_place.items())
        at_end = f"{syncs.get('at_epoch_end')} at the epoch's end (validation, checkpoints)"
        result = syncs.get("error") or f"{syncs['in_steps']} in {syncs['steps']} steps{places}; {at_end}"
        lines.append(f"| host syncs, steps 3 to the epoch's last (target 0) | {result} | | | |")
    for pair in report.get("pairs", []):
        name = f"fmtk / plain loop, {pair['precision']}, channels-last (target ≤ 1.03)"
        if "error" in pair:
            lines.append(f"| {name} | {pair['error']} | | | |")
            continue
        per_step = f"{pair['fmtk_ms_per_step']:.2f} against {pair['plain_ms_per_step']:.2f} ms/step"
        steps = f"{pair['rounds']} rounds of {pair['steps']}"
        lines.append(f"| {name} | {spread(pair['ratios'], '{:.3f}')}: {per_step} | {steps} | | |")
    headline = report.get("headline")
    if headline is not None:  # (one that raised has only its error)
        headline = {"command": f"fmtk run {RECIPE}", "kill_epoch": KILL_EPOCH, **headline}
        same = {key: "=" if headline.get(f"{key}_equal") else "≠" for key in ("epochs", "test")}
        verdict = "equal" if set(same.values()) == {"="} else "DIFFERENT"
        result = headline.get("error") or (
            f"{verdict}: epochs {same['epochs']}, test {same['test']}; {headline['test_accuracy']:.2%} test "
            f"after {headline['epochs_run']} epochs ({headline['seconds']:.0f} s)")  # fmt: skip
        name = f"`{headline['command']}` killed in epoch {headline['kill_epoch']}, resumed"
        lines.append(f"| {name} | {result} | | | |")
    return lines


def collect(args: argparse.Namespace, device: str = "cuda") -> dict[str, Any]:
    """Every measurement that fits in the budget, in order of what matters most when time runs out;
    the report is written to ``args.out`` after each one."""
    budget, device = Budget(args.budget_seconds), torch.device(device)
    data_dir = args.data_dir or (Path(os.environ["FMTK_DATA"]) if os.environ.get("FMTK_DATA") else None)
    data_dir = data_dir.resolve() if data_dir is not None else None  # subprocesses start elsewhere
    overrides = {"data_cache": "file", "image_size": str(args.image_size)}  # else the recipe's own values
    report: dict[str, Any] = {
        "environment": environment(device),
        "settings": {"recipe": RECIPE, "data_dir": str(data_dir) if data_dir else None,
                     "image_size": args.image_size, "batch_size": fmtk.load_recipe(RECIPE).batch_size,
                     "warmup_steps": args.warmup, "steps": args.steps, "budget_seconds": args.budget_seconds,
                     "accuracy_tolerance": ACCURACY_TOLERANCE},
        "tests": None, "syncs": None, "pairs": [], "headline": None, "speed": [],
        "skipped": budget.skipped, "seconds": 0.0,
    }  # fmt: skip
    no_photos = "no photos: give --data-dir or set $FMTK_DATA" if data_dir is None else ""  # why, if so
    if data_dir is not None and not (data_dir / "catdog").is_dir():
        no_photos = f"no Cat & Dog photos in {data_dir / 'catdog'}"

    def save(what: str) -> None:
        report["seconds"] = budget.elapsed()
        write_json(args.out, report)
        print(f"[{budget.elapsed():4.0f} s] {what}", file=sys.stderr, flush=True)

    def measured(into: str, name: str, needs: float, function: Callable[[], dict], **known: Any) -> None:
        """``function()`` (an exception: its error), with ``known``, into ``report[into]`` (a list:
        appended to) if the photos and the budget allow; then the report is written."""
        if no_photos:
            return budget.skip(name, no_photos)
        if not budget.allows(name, needs):
            return None
        started = time.perf_counter()
        try:
            result = {**known, **function()}
        except Exception as error:  # noqa: BLE001 - recorded; the next measurements still run
            free_memory(device)  # what the failed run held (an out-of-memory error's tensors)
            error = f"{type(error).__name__}: {last_line(str(error))}"
            result = {**known, "error": error, "wall_seconds": time.perf_counter() - started}
        report[into] = [*report[into], result] if isinstance(report[into], list) else result
        save(f"{name}: {result.get('error', 'measured')}")

    def speed_row(precision: str, channels_last: bool, compile: bool | str = False, cache: str = "file",
                  deterministic: bool = False):  # fmt: skip
        spec = {"precision": precision, "channels_last": channels_last, "compile": compile,
                "device": str(device), "steps": args.steps, "warmup": args.warmup,
                "overrides": {**overrides, "data_cache": cache}, "deterministic": deterministic}  # fmt: skip
        known = {**spec, "warmup_steps": args.warmup, "trained_steps": args.warmup + args.steps}
        if compile or deterministic:  # in a process of its own, stopped at the budget's end
            in_subprocess = lambda: measure_in_subprocess(spec, data_dir, budget.left())  # noqa: E731
            needs = ESTIMATES["compile" if compile else "subprocess row"]
            return measured("speed", row_name(known), needs, in_subprocess, **known)
        eager = [row for row in report["speed"] if not row["compile"] and not row.get("deterministic")]
        done = [row["wall_seconds"] for row in eager]
        needs = max(1.5 * max(done) if done else ESTIMATES["first row"], ESTIMATES["row"])
        measured("speed", row_name(known), needs, lambda: measure(data_dir, **spec), **known)

    # The photos decoded once, for every row and subprocess: in $FMTK_CACHE, else a folder of this run's.
    with (
        tempfile.TemporaryDirectory(prefix="fmtk-gpu-cache-") as folder,
        mock.patch.dict(os.environ, {"FMTK_CACHE": os.environ.get("FMTK_CACHE") or folder}),
    ):
        if budget.allows("CUDA tests", ESTIMATES["tests"]):
            report["tests"] = cuda_tests(min(TESTS_LIMIT, budget.left()), data_dir)
            save(f"CUDA tests: {report['tests'].get('error') or report['tests']['summary']}")
        syncs = functools.partial(sync_count, data_dir, str(device), overrides)
        measured("syncs", "host syncs", ESTIMATES["syncs"], syncs)
        for precision in ("bf16", "32"):
            pair = functools.partial(fmtk_against_plain, data_dir, precision, overrides, str(device))
            measured("pairs", f"fmtk / plain, {precision}", ESTIMATES["pair"], pair, precision=precision)
        headline = lambda: headline_resume(data_dir, budget.left())  # noqa: E731
        measured("headline", f"{RECIPE} --deterministic killed and resumed", ESTIMATES["headline"], headline)
        for precision in PRECISIONS:
            speed_row(precision, True)
        for mode in COMPILE_MODES:
            speed_row("bf16", True, compile=mode)
        speed_row("bf16", True, cache="none")  # decoded by DataLoader workers every epoch
        speed_row("bf16", True, deterministic=True)  # what exactness costs
        for precision in PRECISIONS:
            speed_row(precision, False)
    save("done")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, help="the datasets folder (default: $FMTK_DATA)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu.json"), help="the JSON file to write")
    parser.add_argument("--steps", type=int, default=130, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--budget-seconds", type=float, default=480, help="start nothing that ends later")
    parser.add_argument("--image-size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--one", metavar="SPEC", help=argparse.SUPPRESS)  # one row, in a subprocess
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.one:
        print(json.dumps(measure(args.data_dir, **json.loads(args.one))))
    elif not torch.cuda.is_available():
        steps = args.warmup + args.steps
        print(
            "CUDA is not available: nothing measured, nothing written (on a GPU: the CUDA tests, host syncs, "
            f"fmtk against a plain loop, the headline resume, {RECIPE}'s images/s at {args.image_size} px "
            f"per precision, layout and compiling, valid accuracy after {steps} steps)"
        )
    else:
        report = collect(args)
        print("\n".join(table(report)) + f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
