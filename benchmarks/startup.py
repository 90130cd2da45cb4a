"""How long the quick commands take as whole processes: `fmtk --help`, `fmtk --version`, and
`fmtk runs` over 200 synthetic run folders, beside a bare `python -c pass` and an `import torch`
measured in the same rounds (taking turns), as medians with their spread.

    python benchmarks/startup.py            # --rounds 7 --runs 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_runs(root: Path, count: int) -> None:
    """``count`` run folders as fmtk writes them: config.json, a 20-epoch metrics.csv, and
    metrics.json for two of every three (the rest read as interrupted)."""
    header = "epoch,train_loss,valid_loss,valid_accuracy,lr,epoch_seconds\n"
    for index in range(count):
        run_dir = root / f"recipe_{index % 5}" / f"20261123-{index:06d}"
        run_dir.mkdir(parents=True)
        config = {"name": f"recipe_{index % 5}", "epochs": 20, "lr": 0.01, "changed": {"lr": 0.01}}
        (run_dir / "config.json").write_text(json.dumps(config))
        rows = [f"{epoch},0.5,0.4,{0.8 + epoch / 200},0.01,1.0\n" for epoch in range(1, 21)]
        (run_dir / "metrics.csv").write_text(header + "".join(rows))
        if index % 3:
            test = {"best": {"accuracy": 0.9}, "last": {"accuracy": 0.89}}
            results = {"epochs_run": 20, "stopped_early": False, "best_valid_accuracy": 0.9,
                       "train_seconds": 12.5, "test": test}  # fmt: skip
            (run_dir / "metrics.json").write_text(json.dumps(results))


def seconds(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    fmtk = [sys.executable, "-m", "fmtk"]
    with tempfile.TemporaryDirectory() as folder:
        make_runs(Path(folder), args.runs)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "fmtk --help": [*fmtk, "--help"],
            "fmtk --version": [*fmtk, "--version"],
            f"fmtk runs ({args.runs} runs)": [*fmtk, "runs", folder],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():  # warm-up: file caches
            seconds(command)
        for _ in range(args.rounds):  # in turns, so a slow spell of the machine hits every command
            for name, command in commands.items():
                times[name].append(seconds(command))
    print(f"{'command':<28}{'median s':>10}{'min':>8}{'max':>8}")
    for name, values in times.items():
        print(f"{name:<28}{statistics.median(values):>10.3f}{min(values):>8.3f}{max(values):>8.3f}")


if __name__ == "__main__":
    main()
