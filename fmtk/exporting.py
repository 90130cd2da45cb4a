"""A run's model as a file that leaves fmtk: ONNX (through torch.onnx) or TorchScript, holding
the class names and how to prepare an image (an :class:`ImageInput`), and checked against the run
on real validation samples before it is kept.

The exported graph takes ``images`` (N×C×H×W float, prepared as the metadata's ``input`` says)
and gives ``probabilities`` (N×classes): the softmax of the model that ``fmtk evaluate`` runs
(the EMA weights where the run has them, flip-averaged with ``tta_flip``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmtk.data.image_input import ImageInput
from fmtk.errors import FmtkError
from fmtk.exported import (
    FORMAT_NAMES,
    FORMATS,
    METADATA,
    SUFFIXES,
    innermost_reason,
    load_exported,
    require_onnx,
)
from fmtk.recipe import Recipe
from fmtk.recipe_loading import data_root
from fmtk.runfolder import find_checkpoint, read_config
from fmtk.training.evaluation import load_trained_model, tested_model
from fmtk.training.parts import load_data
from fmtk.values import check_path, check_paths
from fmtk.version import __version__

TOLERANCE = 1e-4  # the largest difference of a probability allowed between the file and the run
SAMPLES = 64  # validation samples the parity check runs, beside batches of 1 and 7


class Probabilities(nn.Module):
    """The class probabilities of ``model``'s outputs (logits, or FlipAveraged's log-probabilities)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).softmax(dim=1)


@dataclass
class Export:
    """What :func:`export` wrote: the model file and its parity report (also in ``<file>.json``)."""

    path: Path
    report: dict[str, Any]

    @property
    def report_path(self) -> Path:
        return report_path(self.path)


def report_path(path: Path) -> Path:
    """The parity report beside an exported file: ``model.onnx`` → ``model.onnx.json``."""
    return path.with_name(path.name + ".json")


def export(
    run_dir: Path | str,
    *,
    checkpoint: str = "best",
    format: str | None = None,  # noqa: A002 - the command's option name
    out: Path | str | None = None,
    data_dir: Path | str | None = None,
    recipe: Recipe | Path | str | None = None,
    echo: Any = None,
) -> Export:
    """Export a run's checkpoint as a model file with its classes and image preparation inside,
    check it against the run on validation samples and write the report beside it.

    Args:
        run_dir: the run folder.
        checkpoint: ``best``, ``last`` or a checkpoint's path.
        format: ``onnx`` or ``torchscript`` (default: from ``out``'s suffix, else ``onnx``).
        out: the file (default ``RUN_DIR/model.onnx`` or ``model.pt``); never overwritten.
        data_dir: where the validation samples come from (default: the run's data).
        recipe: the recipe the run was made with, needed when fmtk cannot load it again: a recipe
            object made in Python, or the run's recipe file where it is now (moved since).
        echo: where the progress lines go (default: nowhere).

    Returns:
        An :class:`Export`: the file's ``path`` and the ``report`` (what ``FILE.json`` holds).
    """
    check_path("run_dir", run_dir)
    check_paths(out=out, data_dir=data_dir)
    run_dir = Path(run_dir)
    format, out = _format_and_out(run_dir, format, None if out is None else Path(out))
    if format == "onnx":
        require_onnx()
    find_checkpoint(run_dir, checkpoint)  # a mistyped one is said first
    for path in (out, report_path(out)):
        if path.exists():
            raise FmtkError(f"{path} exists and is not overwritten (choose another --out)")
    device = torch.device("cpu")
    recipe, model, checkpoint_path, classes = load_trained_model(run_dir, checkpoint, device, recipe)
    image_input = recipe.input()
    net = Probabilities(tested_model(recipe, model)).eval()
    samples = _valid_samples(recipe, data_root(data_dir, run_dir), model)
    mismatch = input_mismatch(samples, image_input)
    if mismatch is not None:  # said, not refused: the file is the run's model all the same
        if echo is None:
            warnings.warn(mismatch, stacklevel=2)
        else:
            echo(f"warning: {mismatch}")
    metadata = {
        "classes": classes,
        "input": image_input.to_dict(),
        "output": "probabilities",
        "recipe": recipe.name,
        "tta_flip": recipe.tta_flip,
        "run": run_dir.resolve().name,  # the folder's name: no path of this machine in a shipped file
        "checkpoint": checkpoint_path.name,
        "fmtk_version": __version__,
    }
    partial = out.with_name(f".{out.name}.partial")
    try:
        started = time.perf_counter()
        if format == "onnx":
            exporter = _export_onnx(net, samples, partial, metadata, echo)
        else:
            exporter = _export_torchscript(net, samples, partial, metadata)
        seconds = time.perf_counter() - started
        run_exported = load_exported(partial, format)[0]
        parity = _parity(net, run_exported, samples)
        if (difference := parity["max_abs_difference"]) > TOLERANCE:
            raise FmtkError(
                f"the exported {format} model differs from the run by up to {difference:.2e} in a "
                f"probability (tolerance {TOLERANCE:g}); nothing was written"
            )
        os.replace(partial, out)
    finally:
        with contextlib.suppress(OSError):  # (one that cannot be written cannot be left either)
            partial.unlink(missing_ok=True)
    report = {
        "file": out.name, "format": format, "exporter": exporter, "export_seconds": round(seconds, 2),
        "bytes": out.stat().st_size, "tolerance": TOLERANCE, **parity, "input_mismatch": mismatch,
        "metadata": metadata,
    }  # fmt: skip
    done = Export(out, report)
    done.report_path.write_text(json.dumps(report, indent=2) + "\n")
    return done


def _format_and_out(run_dir: Path, format: str | None, out: Path | None) -> tuple[str, Path]:  # noqa: A002
    if format is not None and format not in FORMATS:
        raise FmtkError(f"--format {format}: unknown (choose {' or '.join(FORMATS)})")
    if format is None:
        format = SUFFIXES.get(out.suffix, "onnx") if out is not None else "onnx"
    if out is None:
        read_config(run_dir)  # not a run: one line, before the default path is made inside it
        out = run_dir / f"model{FORMATS[format]}"
    elif out.suffix != FORMATS[format]:
        raise FmtkError(f"--out {out}: {FORMAT_NAMES[format]} file ends in {FORMATS[format]}")
    if not out.parent.is_dir():
        raise FmtkError(f"--out {out}: no folder {out.parent}")
    if not os.access(out.parent, os.W_OK):  # said before the export, not as its exporters' failures
        raise FmtkError(f"cannot write {out}: the folder {out.parent} is not writable (choose another --out)")
    return format, out


def _valid_samples(recipe: Any, data_dir: Path, model: nn.Module) -> torch.Tensor:
    """The first ``SAMPLES`` model inputs of the validation split, prepared as the run's were."""
    inputs, count = [], 0
    for x, _ in load_data(recipe, data_dir, torch.device("cpu"), model).valid:
        inputs.append(x)
        count += len(x)
        if count >= SAMPLES:
            break
    return torch.cat(inputs)[:SAMPLES].float().contiguous()


def input_mismatch(samples: torch.Tensor, image_input: ImageInput) -> str | None:
    """How the run's inputs (``samples``: its valid split's) differ from what ``image_input`` makes
    of image files, when they plainly do: a channel's values outside the range files give (0…255
    scaled and normalised), or every channel's spread over less than a quarter of it (one narrow
    channel may be the data's: a stain, a tint); None when they fit. The parity check feeds both
    models the same tensors, so it cannot see a recipe whose image_input does not prepare files
    as its data() prepares samples (its answers to files would be wrong)."""
    low = (0.0 - torch.tensor(image_input.mean)) / torch.tensor(image_input.std)
    high = (255.0 / image_input.scale - torch.tensor(image_input.mean)) / torch.tensor(image_input.std)
    low, high = low.expand(image_input.channels), high.expand(image_input.channels)
    values = samples.transpose(0, 1).reshape(samples.shape[1], -1)
    least, most = values.min(dim=1).values, values.max(dim=1).values
    if len(least) != image_input.channels:
        return None  # (the run's own input check says so)
    span = high - low
    outside = (least < low - 0.05 * span) | (most > high + 0.05 * span)
    narrow = (most - least) < 0.25 * span
    if not outside.any() and not narrow.all():
        return None
    channel = int(outside.nonzero()[0]) if outside.any() else int(((most - least) / span).argmax())
    return (
        f"the run's valid inputs span {least[channel]:.2f}…{most[channel]:.2f} in channel {channel}, where "
        f"image files prepared by the recipe's image_input (scale {image_input.scale:g}, mean "
        f"{_numbers(image_input.mean)}, std {_numbers(image_input.std)}) span {low[channel]:.2f}…"
        f"{high[channel]:.2f}: its answers to image files may be wrong; make image_input prepare a file "
        "as the recipe's data() prepares a sample"
    )


def _numbers(values: tuple[float, ...]) -> str:
    return "/".join(f"{value:g}" for value in values)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporters print their progress and graphs, and log torch.fx's guesses; fmtk says what happened in
    its own lines. A TracerWarning (a value baked into the traced graph, e.g. a branch on a
    tensor) is an error: the file would answer differently from the model."""
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", torch.jit.TracerWarning)
        disabled = logging.root.manager.disable  # the level a caller may have disabled already
        logging.disable(max(disabled, logging.WARNING))
        try:
            yield
        finally:
            logging.disable(disabled)


def _export_onnx(net: nn.Module, samples: torch.Tensor, path: Path, metadata: dict, echo: Any) -> str:
    """``torch.onnx.export`` with the dynamo exporter, else the TorchScript-based one (saying so);
    the name of the one that worked."""
    import onnx

    names = {"input_names": ["images"], "output_names": ["probabilities"]}
    example = (torch.cat([samples, samples])[:2],)  # 2: torch.export specialises a size of 1
    dynamo_reason = None
    try:
        with _quiet_exporter():
            batch = torch.export.Dim("batch")
            torch.onnx.export(net, example, dynamo=True, dynamic_shapes=({0: batch},), verbose=False,
                              **names).save(str(path))  # fmt: skip
    except Exception as error:  # noqa: BLE001 - torch.export raises many kinds; the fallback says why
        dynamo_reason = innermost_reason(error)
    if dynamo_reason is not None:  # outside the except block: the fallback's errors are its own
        if echo is not None:
            echo(f"the dynamo exporter failed ({dynamo_reason}); using the TorchScript-based one")
        try:
            with _quiet_exporter():
                axes = {"images": {0: "batch"}}
                torch.onnx.export(net, example, str(path), dynamo=False, dynamic_axes=axes, **names)
        except Exception as fallback:  # noqa: BLE001
            raise FmtkError(
                f"cannot export {metadata['recipe']} to ONNX: dynamo exporter: {dynamo_reason}; "
                f"TorchScript-based exporter: {innermost_reason(fallback)}"
            ) from None
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {METADATA: json.dumps(metadata)})
    onnx.save(model, str(path))
    return "dynamo" if dynamo_reason is None else "torchscript-based"


def _export_torchscript(net: nn.Module, samples: torch.Tensor, path: Path, metadata: dict) -> str:
    try:
        with _quiet_exporter():
            traced = torch.jit.trace(net, (torch.cat([samples, samples])[:2],), check_trace=False)
    except Exception as error:  # noqa: BLE001 - tracing raises many kinds
        raise FmtkError(
            f"cannot export {metadata['recipe']} to TorchScript: {innermost_reason(error)}"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's notice that it is deprecated
        torch.jit.save(traced, str(path), _extra_files={f"{METADATA}.json": json.dumps(metadata)})
    return "torch.jit.trace"


def _parity(net: nn.Module, exported: Any, samples: torch.Tensor) -> dict[str, Any]:
    """The exported model against the run's on ``samples`` in one batch and in batches of 1 and 7:
    the largest difference of a probability and the share of samples with the same top class."""
    with torch.no_grad():
        expected = net(samples)
    difference, agree, count = 0.0, 0, 0
    for size in (len(samples), 1, 7):
        for start in range(0, len(samples), size):
            got = exported(samples[start : start + size])
            want = expected[start : start + size]
            difference = max(difference, float((got - want).abs().max()))
            agree += int((got.argmax(1) == want.argmax(1)).sum())
            count += len(want)
    return {
        "samples": len(samples),
        "batch_sizes": [len(samples), 1, 7],
        "max_abs_difference": difference,
        "top1_agreement": agree / count,
    }
