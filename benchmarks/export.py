"""fmtk export on each bundled recipe (CPU): export seconds, file size, parity, and images per
second of onnxruntime against PyTorch eager at batch 1 and 64.

Each recipe trains ``--epochs`` epochs on the real data (catdog_vgg and images at
``--image-size`` px), then is exported to ONNX and TorchScript. The speeds: the same random input
through the run's model (PyTorch eager, no_grad, eval) and through the ONNX file in onnxruntime
(its default CPU threads), the two taking turns, ``--repeats`` times each; the median and the
range of images per second are printed, and the ratio onnxruntime / eager of the medians.

    python benchmarks/export.py --data-dir ../shared/datasets [--epochs 1] [--image-size 64]
        [--recipes digits_mlp,mnist_dnn,...] [--repeats 5] [--out runs/export-benchmark]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import fmtk
from fmtk.exported import load_exported
from fmtk.exporting import Probabilities
from fmtk.training.evaluation import load_trained_model, tested_model

RECIPES = ["digits_mlp", "mnist_dnn", "fmnist_dnn", "fmnist_cnn", "catdog_vgg", "images"]
SIZED = {"catdog_vgg", "images"}  # trained at --image-size (images without its warm-up epoch)


def images_per_second(function, x: torch.Tensor, seconds: float = 1.0) -> float:
    """Calls of ``function(x)`` for about ``seconds`` (after one warm-up call): images per second."""
    function(x)
    count, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        function(x)
        count += 1
    return count * len(x) / elapsed


def speeds(run_dir: Path, onnx_file: Path, repeats: int) -> dict[int, dict[str, list[float]]]:
    """Images per second of eager and onnxruntime at batch 1 and 64, taking turns."""
    recipe, model, _, _ = load_trained_model(run_dir, "best", torch.device("cpu"))
    eager_model = Probabilities(tested_model(recipe, model)).eval()
    exported = load_exported(onnx_file)[0]

    def eager(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return eager_model(x)

    figures = {}
    for batch in (1, 64):
        x = torch.randn(batch, *recipe.input().shape)
        figures[batch] = {"eager": [], "onnxruntime": []}
        for _ in range(repeats):
            figures[batch]["eager"].append(images_per_second(eager, x))
            figures[batch]["onnxruntime"].append(images_per_second(exported, x))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/export-benchmark"))
    args = parser.parse_args()
    os.environ["FMTK_CACHE"] = str(args.out / "cache")
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads; {args.epochs} epoch(s) of training; "
          f"catdog_vgg and images at {args.image_size} px")  # fmt: skip
    print(f"{'recipe':<11} {'format':<11} {'exporter':<17} {'export s':>8} {'size':>9} "
          f"{'max diff':>9} {'top-1':>7}")  # fmt: skip
    measured = {}
    for name in args.recipes.split(","):
        values = {"image_size": args.image_size} if name in SIZED else {}
        values |= {"warmup_epochs": 0.0} if name == "images" else {}
        data_dir = args.data_dir / "catdog" / "training_set" if name == "images" else args.data_dir
        result = fmtk.fit(name, data_dir=data_dir, epochs=args.epochs, device="cpu", output_dir=args.out,
                          quiet=True, **values)  # fmt: skip
        for format in ("onnx", "torchscript"):
            done = fmtk.export(result.run_dir, format=format)
            r = done.report
            print(f"{name:<11} {format:<11} {r['exporter']:<17} {r['export_seconds']:>8.1f} "
                  f"{r['bytes'] / 1e6:>7.2f}MB {r['max_abs_difference']:>9.1e} "
                  f"{r['top1_agreement']:>7.2%}")  # fmt: skip
        measured[name] = speeds(result.run_dir, result.run_dir / "model.onnx", args.repeats)
    print(f"\nimages per second, median (min–max) of {args.repeats}, taking turns")
    print(f"{'recipe':<11} {'batch':>5} {'PyTorch eager':>24} {'onnxruntime':>24} {'ratio':>6}")
    for name, by_batch in measured.items():
        for batch, figures in by_batch.items():
            cells = {
                kind: f"{statistics.median(v):.0f} ({min(v):.0f}–{max(v):.0f})" for kind, v in figures.items()
            }
            ratio = statistics.median(figures["onnxruntime"]) / statistics.median(figures["eager"])
            print(f"{name:<11} {batch:>5} {cells['eager']:>24} {cells['onnxruntime']:>24} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
