"""fmtk tune on mnist_dnn: a search of LR, momentum and batch size against the faithful recipe and
the ``fast`` preset (CPU).

Three things, in one process, one after the other:
1. the faithful recipe and ``--preset fast``, each one ordinary run;
2. a ``--trials``-trial study of ``lr`` (loguniform 0.01–1), ``optimizer_args.momentum`` (uniform
   0–0.99) and ``batch_size`` (32, 64, 100, 128, 256) around the faithful recipe, its first trial the
   recipe's own values (``--try``), pruned by the median pruner;
3. the same study with ``--no-prune``, the second way of measuring what pruning saved;
4. with ``--prune-warmup N``, the same study again, pruned but never in a trial's first N epochs.

Printed: test accuracy (best checkpoint) of each; the studies' seconds (wall and training), trials
pruned, and the seconds pruning saved two ways: estimated from the pruned trials (their epochs not
run × their seconds per epoch) and measured (the unpruned study's wall time minus the pruned one's).

    python benchmarks/tune.py --data-dir ../shared/datasets [--trials 20] [--prune-warmup 2]
        [--out runs/tune-benchmark]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fmtk
from fmtk.tuning.report import write_report

SPACE = {
    "lr": "loguniform:0.01:1",
    "optimizer_args.momentum": "uniform:0:0.99",
    "batch_size": "choice:32,64,100,128,256",
}
OWN = {"lr": 0.1, "optimizer_args.momentum": 0.0, "batch_size": "100"}  # the faithful recipe's values


def study(out: Path, data_dir: Path, trials: int, prune: bool, warmup: int = 0) -> dict:
    started = time.perf_counter()
    result = fmtk.tune("mnist_dnn", trials=trials, space=SPACE, tries=[OWN], prune=prune, prune_warmup=warmup,
                       data_dir=data_dir, study_dir=out, device="cpu", quiet=True)  # fmt: skip
    wall = time.perf_counter() - started
    print(f"{out.name}: what fmtk tune prints at the end")
    write_report(result, out, wall, print)  # (best.json and tune.png again, the same)
    rows = result.trials
    saved = 0.0
    for row in rows:
        if row["state"] == "pruned":
            config = json.loads((out / row["run"] / "config.json").read_text())
            saved += (config["epochs"] - row["epochs"]) * row["seconds"] / row["epochs"]
    best_row = rows[result.best_trial]
    return {
        "wall_seconds": wall, "train_seconds": sum(row["seconds"] or 0 for row in rows),
        "pruned": sum(row["state"] == "pruned" for row in rows), "estimated_saving": saved,
        "best_trial": result.best_trial, "best_values": result.best_values, "best_valid": result.best_value,
        "best_test": best_row["test_accuracy"], "own_test": rows[0]["test_accuracy"],
        "own_valid": rows[0]["value"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--prune-warmup", type=int, default=0, help="N > 0: a third study with it")
    parser.add_argument("--out", type=Path, default=Path("runs/tune-benchmark"))
    arguments = parser.parse_args()
    out = arguments.out / time.strftime("%Y%m%d-%H%M%S")
    runs = {}
    for name, preset in (("faithful", None), ("fast preset", "fast")):
        started = time.perf_counter()
        folder = out / name.replace(" ", "_")
        data_dir = arguments.data_dir
        result = fmtk.fit(
            "mnist_dnn", preset=preset, data_dir=data_dir, run_dir=folder, device="cpu", quiet=True
        )
        runs[name] = (result.test["best"]["accuracy"], time.perf_counter() - started)
    pruned = study(out / "study", arguments.data_dir, arguments.trials, prune=True)
    unpruned = study(out / "study_no_prune", arguments.data_dir, arguments.trials, prune=False)
    studies = {"study, pruned": pruned, "study, --no-prune": unpruned}
    warmup = arguments.prune_warmup
    if warmup:
        folder = out / f"study_prune_warmup_{warmup}"
        studies[f"study, --prune-warmup {warmup}"] = study(
            folder, arguments.data_dir, arguments.trials, prune=True, warmup=warmup
        )

    print(f"{'run':<48}{'test acc':>10}{'seconds':>10}")
    for name, (accuracy, seconds) in runs.items():
        print(f"{'mnist_dnn ' + name:<48}{100 * accuracy:>9.2f}%{seconds:>10.0f}")
    for name, found in studies.items():
        print(f"{name + ': trial 0 (own values)':<48}{100 * found['own_test']:>9.2f}%")
        label = f"{name}: best, trial {found['best_trial']}"
        print(f"{label:<48}{100 * found['best_test']:>9.2f}%{found['wall_seconds']:>10.0f}")
    print(f"best values (pruned study): {pruned['best_values']}")
    print(f"best values (--no-prune):   {unpruned['best_values']}")
    for name, found in list(studies.items())[2:]:
        print(f"best values ({name[7:]}): {found['best_values']}")
        print(
            f"{name}: pruned {found['pruned']} of {arguments.trials} trials, {found['wall_seconds']:.0f} s "
            f"(training {found['train_seconds']:.0f} s)"
        )
    measured = unpruned["wall_seconds"] - pruned["wall_seconds"]
    print(
        f"pruned {pruned['pruned']} of {arguments.trials} trials; saved "
        f"{pruned['estimated_saving']:.0f} s of "
        f"training by estimate, {measured:.0f} s of wall time measured ({pruned['wall_seconds']:.0f} s "
        f"against {unpruned['wall_seconds']:.0f} s; training {pruned['train_seconds']:.0f} s against "
        f"{unpruned['train_seconds']:.0f} s)"
    )
    print(f"studies in {out}")


if __name__ == "__main__":
    main()
