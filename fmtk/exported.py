"""An exported model file, read back: its formats, the fmtk metadata inside it, the file as a
function of a batch (ONNX in onnxruntime, TorchScript in torch), and ``fmtk predict`` of it.
Written by :mod:`fmtk.exporting`."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fmtk.data.image_input import ImageInput, Source
from fmtk.errors import FmtkError, command
from fmtk.prediction import answer_images

if TYPE_CHECKING:
    from fmtk.training.evaluation import FolderEvaluation

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
FORMAT_NAMES = {"onnx": "an ONNX", "torchscript": "a TorchScript"}  # in a sentence
SUFFIXES = {suffix: name for name, suffix in FORMATS.items()}  # a file's format, by its suffix
METADATA = "fmtk"  # the ONNX metadata key, and (as fmtk.json) the TorchScript extra file
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require_onnx() -> None:
    import importlib.util

    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise FmtkError(
            f"fmtk export --format onnx needs {', '.join(missing)}: pip install {' '.join(ONNX_PACKAGES)}"
        )


def innermost_reason(error: BaseException) -> str:
    """The innermost cause of an error (an exporter's, onnxruntime's), as ``Type: first line``."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__


def load_exported(path: Path, format: str | None = None) -> tuple[Any, dict[str, Any]]:  # noqa: A002
    """An exported file as a function of a float batch (N×C×H×W) → probabilities, and its fmtk
    metadata; ONNX files run in onnxruntime, TorchScript ones in torch."""
    format = format or SUFFIXES.get(path.suffix)
    if not path.is_file():
        raise FmtkError(f"{path}: no such file")
    if format == "onnx":
        require_onnx()
        import onnxruntime

        try:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # as torch's: --threads, a quota
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # noqa: BLE001 - onnxruntime's own error kinds
            raise FmtkError(
                f"{path}: not an ONNX model onnxruntime can load ({innermost_reason(error)})"
            ) from None
        text = session.get_modelmeta().custom_metadata_map.get(METADATA)

        def run(images: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(["probabilities"], {"images": images.numpy()})[0])

    elif format == "torchscript":
        files = {f"{METADATA}.json": ""}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
        except (RuntimeError, ValueError) as error:
            if _is_checkpoint(path):
                run_dir = path.resolve().parent
                predict = command("predict", run_dir, "IMAGE", "--checkpoint", path)
                raise FmtkError(f"{path}: an fmtk checkpoint, not an exported model: {predict}") from None
            raise FmtkError(f"{path}: not a TorchScript file ({innermost_reason(error)})") from None
        text = files[f"{METADATA}.json"] or None

        def run(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return module(images)

    else:
        raise FmtkError(f"{path}: not an exported model (fmtk export writes .onnx and .pt files)")
    if not text:
        raise FmtkError(f"{path}: no fmtk metadata (not written by fmtk export)")
    return run, json.loads(text)


def _is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint fmtk wrote (a torch.save of its states, ``run_info`` among them)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any file at all: it is not one
        return False
    return isinstance(saved, dict) and "run_info" in saved and "model" in saved


def on_the_cpu(path: Path | str, given: Any, device: torch.device, **run_values: Any) -> None:
    """An exported model runs on the CPU (``auto`` is taken so, also on a GPU machine), without a
    run folder's values (``run_values`` given other than None)."""
    for name, value in run_values.items():
        if value is not None:
            raise FmtkError(f"{name}: for a run folder; {path} is an exported model: it holds the "
                            "weights it was exported from and its image preparation")  # fmt: skip
    if device.type != "cpu" and given != "auto":
        raise FmtkError(f"device {device}: an exported model runs on the CPU here (a run folder runs on any "
                        "device)")  # fmt: skip


def answer_exported(path: Path, images: Sequence[Source], top: int = 1) -> Iterator[dict[str, Any]]:
    """``fmtk predict`` of an exported file: for each image (:func:`fmtk.prediction.answer_images`),
    the ``top`` most probable classes, or why it cannot be read."""
    run, metadata = load_exported(path)
    yield from answer_images(images, ImageInput.from_dict(metadata["input"]), run, metadata["classes"], top)


class ExportedModel(nn.Module):
    """An exported file's function as a model for Ignite's evaluator: its probabilities as
    log-probabilities, which the accuracy reads as it reads logits and the cross-entropy takes as
    they are (a probability of 0 is taken as float32's smallest, its loss about 87)."""

    def __init__(self, run: Any) -> None:
        super().__init__()
        self.run = run

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.run(images.cpu()).clamp_min(torch.finfo(torch.float32).tiny).log()


def evaluate_exported(
    path: Path, folder: Path, batch_size: int = 64
) -> tuple[dict[str, Any], FolderEvaluation]:
    """The exported model file ``path`` evaluated on every photo of the labelled ``folder``
    (:func:`fmtk.training.evaluation.score_folder`), each photo read as the file says (its
    metadata's input), on the CPU; the loss is the cross-entropy of its probabilities. Also the
    file's metadata."""
    from fmtk.training.evaluation import score_folder  # (Ignite's evaluator: not for predict)

    run, metadata = load_exported(path)
    image_input = ImageInput.from_dict(metadata["input"])
    cpu = torch.device("cpu")
    result = score_folder(folder, ExportedModel(run), path, metadata["classes"], image_input, batch_size, cpu,
                          nn.CrossEntropyLoss())  # fmt: skip
    return metadata, result
