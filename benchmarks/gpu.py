"""fmtk on one GPU, in one command sized for a short device loan (catdog_vgg, VGG16-BN, 224 px):
the GPU acceptance run.

In this order, each only while the time budget allows (``--budget-seconds``; what does not fit is
recorded as skipped, with why):

1. ``pytest -m cuda`` in a subprocess with a time limit: the tests marked ``cuda`` (tests/test_cuda.py:
   each precision and layout, checkpoints written on CUDA read on the CPU, SIGKILL and an exact
   resume with ``--deterministic``, a CUDA run resumed on the CPU, ``--compile``, export, NCCL with
   two GPUs; tests/training/test_step_sync.py: no host sync in a step, with every option; and the
   CUDA defaults); passed, failed, skipped, from its JUnit report.
2. Host syncs: catdog_vgg's first epoch with torch's sync debug mode on from its third step to its
   last (by where each happened; the target is none), and apart, the epoch's end (validation and
   checkpoints: ``torch.save`` copies each of the model's tensors to the host, one sync each).
3. fmtk against a plain loop (``benchmarks/speed.py``'s ``fmtk_and_plain``): one model, optimizer
   and batches, taking turns in rounds of ``PAIR_STEPS`` steps, in bf16 and 32-bit, channels-last;
   the ratio of their seconds (median over rounds; the target is ≤ 1.03).
4. The headline command in full, ``fmtk run catdog_vgg --device cuda --deterministic``: once
   uninterrupted and, beside it on the same GPU, once killed with SIGKILL in epoch ``KILL_EPOCH``
   and resumed; their metrics.csv rows and test figures must be equal.
5. catdog_vgg's training images/s on the real photos, channels-last on, in each precision (32,
   bf16, 16-mixed). A row is one fmtk run (``build_run`` on ``cuda`` with its ``SpeedOptions``,
   every handler a run attaches, the recipe's seed) trained one Ignite epoch of ``--warmup`` +
   ``--steps`` steps of batch 16. The clock runs from the end of the last warm-up step to the end
   of the last step, each read after ``torch.cuda.synchronize()``; images/s is the images of the
   timed steps over those seconds. Validation follows the epoch, untimed. With each row, the valid
   accuracy it ends with, after its warm-up + timed steps (150 by default) from the same seed on the
   same batches: bf16 and 16-mixed against 32-bit in the same layout.
6. bf16, channels-last, ``--compile`` in each mode of ``COMPILE_MODES`` (default; ``reduce-overhead``:
   CUDA graphs), each in a subprocess with a time limit (compiling takes long, and how long is
   unknown until a GPU has run it).
7. The same three precisions in the default layout (channels-last off).
8. With two or more GPUs: ``fmtk run catdog_vgg --nproc-per-node 2`` (NCCL), one epoch; else skipped.

The photos are decoded once into a cache file (``data_cache=file``; ``$FMTK_CACHE``, else a
temporary folder) that every row and subprocess reads. Prints one Markdown table and writes it all
as JSON (``--out``) after each measurement, so a run cut short keeps what it measured. Without
CUDA: one line, nothing written, exit 0.

    python benchmarks/gpu.py --data-dir ../shared/datasets --out gpu.json [--steps 130] [--warmup 20]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "catdog_vgg"
CATDOG = {"data_cache": "file"}  # the recipe's own values otherwise: 224 px, batch 16, Adam 1e-4
PRECISIONS = ("32", "bf16", "16-mixed")
COMPILED = ("bf16", True)  # precision, channels_last of the compiled rows
COMPILE_MODES = (True, "reduce-overhead")  # torch.compile's default mode; CUDA graphs
CACHELESS = ("bf16", True)  # precision, channels_last of the data_cache=none row (target: ≤ 1.25× file's)
PAIR_PRECISIONS = ("bf16", "32")  # fmtk against a plain loop, channels-last
PAIR_STEPS, PAIR_ROUNDS = 50, 5  # steps per round; rounds taking turns, the first one a warm-up
KILL_EPOCH = 10  # the headline run killed in this epoch (the faithful recipe stops after ~47)
# Valid accuracy may fall this far below the 32-bit row's before the table says so: 400 valid
# photos (one standard deviation of a proportion near 75% is ~2.2 points), and different
# roundings take different paths after 150 steps.
ACCURACY_TOLERANCE = 0.05
RESERVE = 20  # seconds of the budget kept for the table, the JSON file and leaving
# Seconds a measurement is expected to take, at least; it starts only if that much budget is left.
ESTIMATES = {
    "tests": 45, "syncs": 40, "pair": 45, "headline": 150, "first row": 60, "row": 20, "compile": 150,
    "ddp": 120,
}  # fmt: skip
# The most seconds the CUDA tests get (``ESTIMATES["tests"]`` is the least they need to start):
# about 1.5 minutes expected, never yet measured (pytest collecting every test module, CUDA's
# start-up, a first torch.compile); stopped at the limit they report no counts at all, hence its margin.
TESTS_LIMIT = 240
TIME_LIMIT = "stopped after {:.0f} s (time limit)"


class Budget:
    """The seconds left of ``seconds`` (less ``reserve``) since it was made. A measurement starts
    only if its estimate fits; otherwise it is recorded in ``skipped`` with the reason."""

    def __init__(self, seconds: float, reserve: float = RESERVE) -> None:
        self.seconds, self.reserve = seconds, reserve
        self.started = time.monotonic()
        self.skipped: list[dict[str, str]] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.seconds - self.reserve - self.elapsed()

    def allows(self, name: str, needs: float) -> bool:
        left = self.left()
        if left >= needs:
            return True
        self.skip(name, f"budget: needs ~{needs:.0f} s, {max(left, 0):.0f} s left")
        return False

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"what": name, "reason": reason})


def row_name(
    precision: str, channels_last: bool, compile: bool | str = False, data_cache: str = "file"
) -> str:
    """``bf16, channels-last, compiled``: a row's speed options in words (a compile mode named; the
    photos decoded by DataLoader workers every epoch: ``data_cache=none``)."""
    words = [precision, "channels-last" if channels_last else "default layout"]
    if compile:
        words.append("compiled" if compile is True else f"compiled ({compile})")
    if data_cache != "file":
        words.append(f"data_cache={data_cache}")
    return ", ".join(words)


class CudaSyncs:
    """Host-device synchronisations counted by torch's sync debug mode while it is entered, by
    where they happened (``file:line`` of the Python frame that called into torch)."""

    def __init__(self) -> None:
        self.found: Counter[str] = Counter()
        self._caught: warnings.catch_warnings | None = None
        self._records: list[warnings.WarningMessage] = []

    def __enter__(self) -> CudaSyncs:
        self._caught = warnings.catch_warnings(record=True)
        self._records = self._caught.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_sync_debug_mode("default")
        self._caught.__exit__(*exc)
        for record in self._records:
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
    """The first epoch of ``run`` with every handler a run has (its checkpoints too); its folder and
    loggers released after."""
    with run.folder:
        try:
            run.prepare()
            run.trainer.run(run.data.train, max_epochs=1)
        finally:
            run.close_loggers()


def sync_count(
    data_dir: Path | None, device: str = "cuda", overrides: dict[str, str] | None = None, counter=CudaSyncs
) -> dict:
    """The host syncs of ``RECIPE``'s first epoch: in steps 3 to the last (by place), and apart, at
    the epoch's end (validation, checkpoints), counted by ``counter()`` (torch's sync debug mode)."""
    from ignite.engine import Events

    from fmtk import build_run

    values = {
        "epochs": "1",
        "early_stopping_patience": "none",
        "plateau_patience": "none",
        **(overrides or {}),
    }
    in_steps, at_end = counter(), counter()
    with tempfile.TemporaryDirectory() as run_dir:
        run = build_run(RECIPE, run_dir, device, data_dir, None, progress=False, **values)
        watch_steps(run.trainer, in_steps)
        run.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda _: at_end.__enter__())
        run.trainer.add_event_handler(Events.COMPLETED, lambda _: at_end.__exit__(None, None, None))
        first_epoch(run)
        steps = run.trainer.state.epoch_length - 2
    return {
        "steps": steps, "in_steps": sum(in_steps.found.values()), "in_steps_by_place": dict(in_steps.found),
        "at_epoch_end": sum(at_end.found.values()), "at_epoch_end_by_place": dict(at_end.found),
    }  # fmt: skip


def fmtk_against_plain(
    data_dir: Path | None,
    precision: str,
    overrides: dict[str, str],
    device: str,
    steps: int = PAIR_STEPS,
    rounds: int = PAIR_ROUNDS,
) -> dict:
    """fmtk and a plain loop taking turns (``benchmarks/speed.py``), channels-last: each one's median
    seconds per round and the median (min–max) of the per-round ratio, the warm-up round left out."""
    import statistics

    speed = load_script("speed")
    sets = [f"{key}={value}" for key, value in overrides.items()]
    measured = speed.fmtk_and_plain(RECIPE, data_dir, rounds, channels_last=True, steps=steps, device=device,
                                    precision=precision, sets=sets)  # fmt: skip
    fmtk, plain = (measured["seconds"][name][1:] for name in ("fmtk", "plain"))
    ratios = [a / b for a, b in zip(fmtk, plain, strict=True)]
    return {
        "precision": precision, "channels_last": True, "steps": steps, "rounds": len(ratios),
        "fmtk_ms_per_step": statistics.median(fmtk) / steps * 1000,
        "plain_ms_per_step": statistics.median(plain) / steps * 1000,
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
    }  # fmt: skip


def load_script(name: str):
    """Another script of benchmarks/ as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KILLER = """
import os
import signal

from ignite.engine import Events


def sigkill(run):
    @run.trainer.on(Events.ITERATION_COMPLETED)
    def kill(engine):
        if engine.state.iteration == ({epoch} - 1) * engine.state.epoch_length + 5:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without its timing column."""
    import csv

    with (run_dir / "metrics.csv").open() as file:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(file)]


def headline_resume(
    data_dir: Path,
    timeout: float,
    recipe: str = RECIPE,
    kill_epoch: int = KILL_EPOCH,
    extra: Sequence[str] = ("--set", "data_cache=file"),
) -> dict[str, Any]:
    """``fmtk run RECIPE --device cuda --deterministic`` uninterrupted and, at the same time on the
    same GPU, killed with SIGKILL in epoch ``kill_epoch`` and resumed: whether their epochs and test
    figures are equal, and their test accuracy."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "killers.py").write_text(KILLER.format(epoch=kill_epoch))
        device = "cuda" if torch.cuda.is_available() else "cpu"
        arguments = [
            "run",
            recipe,
            "--device",
            device,
            "--deterministic",
            "--data-dir",
            str(data_dir),
            *extra,
        ]
        command = [sys.executable, "-m", "fmtk"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(ROOT)])}
        started = time.perf_counter()
        with subprocess.Popen([*command, *arguments, "--run-dir", str(root / "straight")], cwd=root,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True) as straight:  # fmt: skip
            killed = run_limited([*command, *arguments, "--run-dir", str(root / "killed"), "--handler",
                                  "killers:sigkill"], timeout, env=env, cwd=root)  # fmt: skip
            left = timeout - (time.perf_counter() - started)
            resumed = run_limited(
                [*command, "run", "--resume", str(root / "killed")], left, env=env, cwd=root
            )
            try:
                _, straight_err = straight.communicate(
                    timeout=max(timeout - (time.perf_counter() - started), 1)
                )
            except subprocess.TimeoutExpired:
                os.killpg(straight.pid, signal.SIGKILL)
                _, straight_err = straight.communicate()
        result: dict[str, Any] = {"command": "fmtk " + " ".join(arguments[:5]), "kill_epoch": kill_epoch,
                                  "seconds": time.perf_counter() - started}  # fmt: skip
        problems = []
        if killed[0] != -signal.SIGKILL:
            problems.append(f"the killed run ended with {killed[0]}: {last_line(killed[2])}")
        if resumed[0] != 0:
            problems.append(f"the resume ended with {resumed[0]}: {last_line(resumed[2])}")
        if straight.returncode != 0:
            problems.append(
                f"the uninterrupted run ended with {straight.returncode}: {last_line(straight_err)}"
            )
        if problems:
            result["error"] = "; ".join(problems)
            return result
        metrics = {
            name: json.loads((root / name / "metrics.json").read_text()) for name in ("straight", "killed")
        }
        result.update(
            epochs_equal=epoch_rows(root / "straight") == epoch_rows(root / "killed"),
            test_equal=metrics["straight"]["test"] == metrics["killed"]["test"],
            epochs_run=metrics["straight"]["epochs_run"],
            test_accuracy=metrics["straight"]["test"]["best"]["accuracy"],
            resumed_test_accuracy=metrics["killed"]["test"]["best"]["accuracy"],
            # The line a resume prints when it goes on differently (device, precision): none here.
            resume_changes=[
                line for line in resumed[1].splitlines()
                if line.startswith("resuming") and not line.startswith("resuming after")
            ],
        )  # fmt: skip
    return result


def measure(
    data_dir: Path | None,
    precision: str,
    channels_last: bool,
    compile: bool = False,
    steps: int = 130,
    warmup: int = 20,
    recipe: str = RECIPE,
    device: str = "cuda",
    overrides: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One row: ``recipe`` built by fmtk with these speed options (``overrides`` as ``--set``)
    trains one Ignite epoch of ``warmup + steps`` steps from the recipe's seed; images/s over the
    last ``steps`` (the clock read after the device has finished, at the end of step ``warmup`` and
    of the last step), then the valid accuracy and loss of the validation that ends the epoch."""
    from ignite.engine import Events

    from fmtk import build_run
    from fmtk.training.engines import SpeedOptions

    if warmup < 1 or steps < 1:
        raise ValueError(f"warmup and steps must be >= 1, got {warmup} and {steps}")
    device = torch.device(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    values = {
        "epochs": "1",
        "early_stopping_patience": "none",
        "plateau_patience": "none",
        **(overrides or {}),
    }
    last = warmup + steps
    marks: list[float] = []
    images = [0]

    def clock(engine) -> None:
        iteration = engine.state.iteration
        if warmup < iteration <= last:
            images[0] += len(engine.state.batch[0])
        if iteration in (warmup, last):
            if cuda:
                torch.cuda.synchronize(device)
            marks.append(time.perf_counter())

    started = time.perf_counter()
    speed = SpeedOptions(precision, channels_last, compile)
    with tempfile.TemporaryDirectory() as run_dir:
        run = build_run(recipe, run_dir, device, data_dir, None, speed=speed, progress=False, **values)
        built = time.perf_counter()
        with run.folder:  # released as Run.run releases it
            try:
                run.trainer.add_event_handler(Events.ITERATION_COMPLETED, clock)
                # An epoch may be longer than the data: Ignite starts the batches again.
                run.trainer.run(run.data.train, max_epochs=1, epoch_length=last)
            finally:
                run.close_loggers()
        seconds = marks[1] - marks[0]
        epoch = run.history[-1]
        row = {
            "recipe": recipe,
            "precision": precision,
            "channels_last": channels_last,
            "compile": compile,
            "speed": run.speed.config(),  # as the run resolved and recorded them
            "device": str(device),
            "batch_size": run.recipe.batch_size,
            "data_cache": run.recipe.options.get("data_cache", "file"),
            "image_size": run.recipe.options.get("image_size"),
            "warmup_steps": warmup,
            "steps": steps,
            "images": images[0],
            "seconds": seconds,
            "images_per_s": images[0] / seconds,
            "ms_per_step": seconds / steps * 1000,
            # From the epoch's start to the end of the warm-up: cuDNN's autotuning, compilation.
            "warmup_seconds": marks[0] - run.trainer.state.epoch_started,
            "build_seconds": built - started,
            "trained_steps": last,
            "valid_accuracy": epoch["valid_accuracy"],
            "valid_loss": epoch["valid_loss"],
            "train_loss": epoch["train_loss"],
        }
        if cuda:
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del run, epoch
    gc.collect()  # the engines' handlers hold the run in cycles: free its model and data now
    if cuda:
        torch.cuda.empty_cache()
    row["wall_seconds"] = time.perf_counter() - started
    return row


def run_limited(
    command: Sequence[str], timeout: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int | None, str, str, float]:
    """``command`` with a time limit: (exit code, or None when the limit stopped it; stdout;
    stderr; seconds). At the limit its whole process group is killed (compile workers, spawned ranks)."""
    started = time.perf_counter()
    with subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            out, err = process.communicate(timeout=max(timeout, 0.1))
            code: int | None = process.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            code = None
    return code, out, err, time.perf_counter() - started


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def measure_in_subprocess(spec: dict[str, Any], data_dir: Path | None, timeout: float) -> dict[str, Any]:
    """:func:`measure` (keyword arguments ``spec``) in a new process stopped at ``timeout`` seconds;
    its row, or the spec with an ``error``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    code, out, err, seconds = run_limited(command, timeout)
    if code is None:
        return {**spec, "error": TIME_LIMIT.format(seconds), "wall_seconds": seconds}
    if code != 0:
        return {**spec, "error": last_line(err) or f"exit code {code}", "wall_seconds": seconds}
    row = json.loads(last_line(out))
    row["wall_seconds"] = seconds  # the process's, its start included
    return row


def junit_counts(report: Path) -> dict[str, Any]:
    """Passed, failed, skipped, errors and the failed tests' names, from pytest's JUnit XML file."""
    root = ElementTree.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {
        name: sum(int(suite.get(name, 0)) for suite in suites)
        for name in ("tests", "failures", "errors", "skipped")
    }
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {
        "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
        "failed": counts["failures"],
        "errors": counts["errors"],
        "skipped": counts["skipped"],
        "failed_tests": failed,
    }


def cuda_tests(timeout: float, data_dir: Path | None) -> dict[str, Any]:
    """``pytest -m cuda`` over tests/ in a subprocess (``$FMTK_DATA`` = ``data_dir``): the tests
    marked ``cuda``."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "junit.xml"
        command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider",
                   f"--junitxml={report}", str(ROOT / "tests")]  # fmt: skip
        env = {**os.environ, **({"FMTK_DATA": str(data_dir)} if data_dir is not None else {})}
        code, out, err, seconds = run_limited(command, timeout, env=env, cwd=ROOT)
        result: dict[str, Any] = {"command": "pytest -m cuda", "returncode": code, "seconds": seconds}
        counted = report.is_file()
        if counted:
            result.update(junit_counts(report))
        result["summary"] = last_line(out)
    if code is None:
        result["error"] = TIME_LIMIT.format(seconds)
    elif code not in (0, 1, 5) or not counted:  # 1: some failed (counted); 5: none selected
        result["error"] = f"pytest exit code {code}: {last_line(err) or result['summary']}"
    return result


def ddp_smoke(data_dir: Path, timeout: float) -> dict[str, Any]:
    """``fmtk run catdog_vgg --nproc-per-node 2`` with NCCL on two GPUs, one epoch; its test accuracy."""
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        arguments = ["run", RECIPE, "--nproc-per-node", "2", "--backend", "nccl", "--device", "cuda",
                     "--epochs", "1", "--data-dir", str(data_dir), "--run-dir", str(run_dir),
                     "--set", "data_cache=file"]  # fmt: skip
        code, _, err, seconds = run_limited([sys.executable, "-m", "fmtk", *arguments], timeout, cwd=ROOT)
        result: dict[str, Any] = {"command": "fmtk " + " ".join(arguments[:10]), "returncode": code,
                                  "seconds": seconds, "steps": "1 epoch"}  # fmt: skip
        if code is None:
            result["error"] = TIME_LIMIT.format(seconds)
        elif code != 0:
            result["error"] = last_line(err) or f"exit code {code}"
        else:
            results = json.loads((run_dir / "metrics.json").read_text())
            result["test_accuracy"] = results["test"]["best"]["accuracy"]
    return result


def accuracy_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each reduced-precision row's valid accuracy against the 32-bit row of the same layout (a
    compiled row: the eager 32-bit one) after the same number of steps."""
    reference = {
        (row["channels_last"], row["trained_steps"]): row
        for row in rows
        if row["precision"] == "32" and not row["compile"] and "error" not in row
    }
    compared = []
    for row in rows:
        if row["precision"] == "32" and not row["compile"] or "error" in row:
            continue
        base = reference.get((row["channels_last"], row["trained_steps"]))
        if base is None:
            continue
        difference = row["valid_accuracy"] - base["valid_accuracy"]
        cache = row.get("data_cache", "file")
        compared.append({
            "row": row_name(row["precision"], row["channels_last"], row["compile"], cache),
            "reference": row_name("32", base["channels_last"]),
            "steps": row["trained_steps"],
            "valid_accuracy": row["valid_accuracy"],
            "reference_accuracy": base["valid_accuracy"],
            "difference": difference,
            "within_tolerance": difference >= -ACCURACY_TOLERANCE,
        })  # fmt: skip
    return compared


def environment(device: torch.device) -> dict[str, Any]:
    """The GPU, torch, CUDA and cuDNN versions and the settings that decide what "32" means."""
    from fmtk.version import __version__

    found: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "fmtk": __version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": str(device),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        found.update(
            gpu=torch.cuda.get_device_name(device),
            gpus=torch.cuda.device_count(),
            memory_gib=round(properties.total_memory / 2**30, 1),
            capability=f"{properties.major}.{properties.minor}",
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
            # "32" convolutions run in TF32 when cuDNN allows it (torch's default); matmuls follow this.
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    return found


def write_report(path: Path, report: dict[str, Any]) -> None:
    """``report`` as JSON, written whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(path)


def table(report: dict[str, Any]) -> list[str]:
    """The report as one line of its machine and one Markdown table."""
    found, settings = report["environment"], report["settings"]
    machine = found.get("gpu") or found["device"]
    if "gpus" in found:
        machine += f" ×{found['gpus']}, {found['memory_gib']} GiB, sm {found['capability']}"
    lines = [
        f"{machine}; torch {found['torch']}, CUDA {found['cuda']}, cuDNN {found.get('cudnn')}; "
        f"{RECIPE} {settings['image_size']} px, batch {settings['batch_size']}; "
        f"{report['seconds']:.0f} s of a {settings['budget_seconds']:.0f}-s budget",
        "| measurement | result | steps (warm-up + timed) | valid accuracy | vs 32-bit |",
        "|---|---|---|---:|---|",
    ]
    tests = report.get("tests")
    if tests is not None:
        counts = "" if "passed" not in tests else (
            f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
            f"{tests['skipped']} skipped"
        )  # fmt: skip
        result = "; ".join(part for part in (counts, tests.get("error", "")) if part)
        lines.append(f"| CUDA tests (`{tests['command']}`) | {result} ({tests['seconds']:.0f} s) | | | |")
    lines += outcome_lines(report)
    compared = {entry["row"]: entry for entry in report["accuracy"]}
    cached = {
        (row["precision"], row["channels_last"]): row
        for row in report["speed"]
        if "error" not in row and not row["compile"] and row.get("data_cache", "file") == "file"
    }
    for row in report["speed"]:
        name = row_name(row["precision"], row["channels_last"], row["compile"], row.get("data_cache", "file"))
        steps = f"{row['warmup_steps']} + {row['steps']}"
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | {steps} | | |")
            continue
        result = f"{row['images_per_s']:,.0f} images/s, {row['ms_per_step']:.1f} ms/step"
        if "peak_memory_gib" in row:
            result += f", {row['peak_memory_gib']:.1f} GiB peak"
        if row["compile"]:
            result += f", warm-up {row['warmup_seconds']:.0f} s"
        base = cached.get((row["precision"], row["channels_last"]))
        if row.get("data_cache", "file") != "file" and base is not None:
            result += (
                f", {row['ms_per_step'] / base['ms_per_step']:.2f}× the decoded cache's time (target ≤ 1.25)"
            )
        versus = ""
        if name in compared:
            entry = compared[name]
            versus = f"{100 * entry['difference']:+.2f} points"
            if not entry["within_tolerance"]:
                versus += f" (more than {100 * ACCURACY_TOLERANCE:.0f} below)"
        lines.append(f"| {name} | {result} | {steps} | {100 * row['valid_accuracy']:.2f}% | {versus} |")
    ddp = report.get("ddp")
    if ddp is not None:
        result = (
            ddp.get("error") or f"test accuracy {100 * ddp['test_accuracy']:.2f}% ({ddp['seconds']:.0f} s)"
        )
        lines.append(f"| DDP, 2 processes, NCCL | {result} | {ddp['steps']} | | |")
    for skipped in report["skipped"]:
        lines.append(f"| {skipped['what']} | skipped: {skipped['reason']} | | | |")
    return lines


def outcome_lines(report: dict[str, Any]) -> list[str]:
    """The table's rows of the host syncs, fmtk against the plain loop and the headline resume."""
    lines = []
    syncs = report.get("syncs")
    if syncs is not None:
        result = syncs.get("error") or (
            f"{syncs['in_steps']} in {syncs['steps']} steps"
            + "".join(f"; {count} at {place}" for place, count in syncs["in_steps_by_place"].items())
            + f"; {syncs['at_epoch_end']} at the epoch's end (validation, checkpoints)"
        )
        lines.append(f"| host syncs, steps 3 to the epoch's last (target 0) | {result} | | | |")
    for pair in report.get("pairs", []):
        result = pair.get("error") or (
            f"{pair['ratio']:.3f} ({pair['ratio_min']:.3f}–{pair['ratio_max']:.3f}): "
            f"{pair['fmtk_ms_per_step']:.2f} against {pair['plain_ms_per_step']:.2f} ms/step"
        )
        steps = "" if "error" in pair else f"{pair['rounds']} rounds of {pair['steps']}"
        name = f"fmtk / plain loop, {pair['precision']}, channels-last (target ≤ 1.03)"
        lines.append(f"| {name} | {result} | {steps} | | |")
    headline = report.get("headline")
    if headline is not None:
        result = headline.get("error") or headline_result(headline)
        name = f"`{headline['command']}` killed in epoch {headline['kill_epoch']}, resumed"
        lines.append(f"| {name} | {result} | | | |")
    return lines


def headline_result(headline: dict[str, Any]) -> str:
    same = {key: "=" if headline[f"{key}_equal"] else "≠" for key in ("epochs", "test")}
    return (
        ("equal" if set(same.values()) == {"="} else "DIFFERENT")
        + f": epochs {same['epochs']}, test {same['test']}; {100 * headline['test_accuracy']:.2f}% test "
        f"after {headline['epochs_run']} epochs ({headline['seconds']:.0f} s)"
    )


@contextlib.contextmanager
def decode_cache() -> Iterator[str]:
    """``$FMTK_CACHE`` for the decoded photos: the one given, else a temporary folder for this run."""
    given = os.environ.get("FMTK_CACHE")
    if given:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="fmtk-gpu-cache-") as folder:
        os.environ["FMTK_CACHE"] = folder  # read by this process and inherited by the subprocesses
        try:
            yield folder
        finally:
            del os.environ["FMTK_CACHE"]


def collect(args: argparse.Namespace, device: str = "cuda") -> dict[str, Any]:
    """Every measurement that fits in the budget, in order of what matters most when time runs out;
    the report is written to ``args.out`` after each one."""
    from fmtk import load_recipe
    from fmtk.recipe import apply_overrides

    budget = Budget(args.budget_seconds)
    device = torch.device(device)
    data_dir = args.data_dir or (Path(os.environ["FMTK_DATA"]) if os.environ.get("FMTK_DATA") else None)
    data_dir = data_dir.resolve() if data_dir is not None else None  # subprocesses start elsewhere
    overrides = {**CATDOG, "image_size": str(args.image_size)}
    recipe = apply_overrides(load_recipe(RECIPE), overrides)  # what each row trains
    report: dict[str, Any] = {
        "environment": environment(device),
        "settings": {
            "recipe": RECIPE, "data_dir": str(data_dir) if data_dir else None, "image_size": args.image_size,
            "batch_size": recipe.batch_size, "warmup_steps": args.warmup, "steps": args.steps,
            "budget_seconds": args.budget_seconds, "accuracy_tolerance": ACCURACY_TOLERANCE,
        },
        "tests": None, "syncs": None, "pairs": [], "headline": None, "speed": [], "accuracy": [], "ddp": None,
        "skipped": budget.skipped, "seconds": 0.0,
    }  # fmt: skip
    no_photos = ""  # why the rows cannot run, if they cannot
    if data_dir is None:
        no_photos = "no photos: give --data-dir or set $FMTK_DATA"
    elif not (data_dir / "catdog").is_dir():
        no_photos = f"no Cat & Dog photos in {data_dir / 'catdog'}"

    def save(what: str) -> None:
        report["accuracy"] = accuracy_comparison(report["speed"])
        report["seconds"] = budget.elapsed()
        write_report(args.out, report)
        print(f"[{budget.elapsed():4.0f} s] {what}", file=sys.stderr, flush=True)

    def measured(name: str, needs: float, function, *arguments) -> dict[str, Any] | None:
        """``function(*arguments)`` if the budget and the photos allow, an exception as its error."""
        if no_photos:
            budget.skip(name, no_photos)
            return None
        if not budget.allows(name, needs):
            return None
        try:
            return function(*arguments)
        except Exception as error:  # noqa: BLE001 - recorded; the next measurements still run
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return {"error": f"{type(error).__name__}: {last_line(str(error))}"}

    def speed_row(
        precision: str, channels_last: bool, compile: bool | str = False, data_cache: str = "file"
    ) -> None:
        name = row_name(precision, channels_last, compile, data_cache)
        if no_photos:
            budget.skip(name, no_photos)
            return
        spec = {
            "precision": precision, "channels_last": channels_last, "compile": compile, "steps": args.steps,
            "warmup": args.warmup, "device": str(device),
            "overrides": {**overrides, "data_cache": data_cache},
        }  # fmt: skip
        if compile:  # in a process of its own, stopped at the budget's end
            if not budget.allows(name, ESTIMATES["compile"]):
                return
            row = measure_in_subprocess(spec, data_dir, budget.left())
        else:
            done = [row["wall_seconds"] for row in report["speed"] if not row["compile"]]
            needs = 1.5 * max(done) if done else ESTIMATES["first row"]
            if not budget.allows(name, max(needs, ESTIMATES["row"])):
                return
            started = time.perf_counter()
            try:
                row = measure(data_dir, **spec)
            except Exception as error:  # noqa: BLE001 - recorded; the next rows still run
                row = {**spec, "error": f"{type(error).__name__}: {last_line(str(error))}"}
                row["wall_seconds"] = time.perf_counter() - started
                gc.collect()  # what the failed run held (an out-of-memory error's tensors)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        row.setdefault("warmup_steps", args.warmup)
        row.setdefault("trained_steps", args.warmup + args.steps)
        report["speed"].append(row)
        save(f"{name}: " + (row.get("error") or f"{row['images_per_s']:,.0f} images/s"))

    with decode_cache():
        if budget.allows("CUDA tests", ESTIMATES["tests"]):
            report["tests"] = cuda_tests(min(TESTS_LIMIT, budget.left()), data_dir)
            save(f"CUDA tests: {report['tests'].get('summary') or report['tests'].get('error')}")
        report["syncs"] = measured(
            "host syncs", ESTIMATES["syncs"], sync_count, data_dir, str(device), overrides
        )
        if report["syncs"] is not None:
            save(f"host syncs: {report['syncs'].get('error') or report['syncs']['in_steps']} in the steps")
        for precision in PAIR_PRECISIONS:
            pair = measured(f"fmtk / plain, {precision}", ESTIMATES["pair"], fmtk_against_plain, data_dir,
                            precision, overrides, str(device))  # fmt: skip
            if pair is not None:
                report["pairs"].append({"precision": precision, **pair})
                save(f"fmtk / plain, {precision}: {pair.get('error') or round(pair['ratio'], 3)}")
        headline = f"{RECIPE} --deterministic killed and resumed"
        report["headline"] = measured(
            headline, ESTIMATES["headline"], lambda: headline_resume(data_dir, budget.left())
        )
        if report["headline"] is not None:
            save(f"{headline}: {report['headline'].get('error') or report['headline']['epochs_equal']}")
        for precision in PRECISIONS:
            speed_row(precision, True)
        speed_row(*CACHELESS, data_cache="none")  # the photos decoded by DataLoader workers every epoch
        for mode in COMPILE_MODES:
            speed_row(*COMPILED, compile=mode)
        for precision in PRECISIONS:
            speed_row(precision, False)
        gpus = torch.cuda.device_count() if device.type == "cuda" else 0
        if gpus < 2:
            budget.skip("DDP, 2 processes, NCCL", f"{gpus} GPU{'s' if gpus != 1 else ''}: needs 2")
        elif no_photos:
            budget.skip("DDP, 2 processes, NCCL", no_photos)
        elif budget.allows("DDP, 2 processes, NCCL", ESTIMATES["ddp"]):
            report["ddp"] = ddp_smoke(data_dir, budget.left())
    save("done")
    return report


def what_it_measures(args: argparse.Namespace) -> str:
    return (
        f"the CUDA tests; the host syncs of a step; fmtk against a plain loop; the headline run killed and "
        f"resumed; {RECIPE}'s training images/s at {args.image_size} px in 32, bf16 and 16-mixed, "
        f"channels-last on and off, and compiled; their valid accuracy after {args.warmup + args.steps} "
        "steps against 32-bit; a 2-process NCCL run with 2 GPUs"
    )


def main(argv: Sequence[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--data-dir", type=Path, help="the datasets folder (default: $FMTK_DATA)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu.json"), help="the JSON file to write")
    parser.add_argument("--steps", type=int, default=130, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument(
        "--budget-seconds", type=float, default=480, help="start nothing that would not end within it (8 min)"
    )
    parser.add_argument("--image-size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--one", metavar="SPEC", help=argparse.SUPPRESS)  # one row, in a subprocess
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")

    if args.one:
        print(json.dumps(measure(args.data_dir, **json.loads(args.one))))
        return 0
    if not torch.cuda.is_available():
        print(
            f"CUDA is not available: nothing measured, nothing written (on a GPU: {what_it_measures(args)})"
        )
        return 0
    report = collect(args)
    print("\n".join(table(report)))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
