"""fmtk: a training toolkit for PyTorch built on PyTorch-Ignite.

A *recipe* (model + data + numbers) is assembled into Ignite engines with the usual handlers
(validation, early stopping, checkpoints, LR plateau, TensorBoard) and run::

    import fmtk
    result = fmtk.fit("mnist_dnn", epochs=3, device="cpu")

The names below are imported on first use: ``import fmtk`` (and ``fmtk --help``) does not wait
for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from fmtk.errors import FmtkError, keyword_errors
from fmtk.version import __version__

_LAZY = {
    "fit": "fmtk.api", "evaluate": "fmtk.api", "predict": "fmtk.api", "predictions": "fmtk.api",
    "Result": "fmtk.api", "resume": "fmtk.api",
    "Recipe": "fmtk.recipe", "Preset": "fmtk.recipe", "load_recipe": "fmtk.recipe_loading",
    "make_run_dir": "fmtk.runfolder",
    "DataSplits": "fmtk.data.batches", "TensorBatches": "fmtk.data.batches",
    "build_run": "fmtk.training.build", "Run": "fmtk.training.run", "Evaluation": "fmtk.training.evaluation",
    "FolderEvaluation": "fmtk.training.evaluation",
    "SpeedOptions": "fmtk.training.engines", "StepEvents": "fmtk.training.engines",
    "export": "fmtk.exporting", "Export": "fmtk.exporting", "ImageInput": "fmtk.data.image_input",
    "tune": "fmtk.tuning", "StudyResult": "fmtk.tuning.report",
    "Check": "fmtk.regression.check", "check": "fmtk.regression.running",
    "CheckResult": "fmtk.regression.running",
}  # fmt: skip

# The functions that commands call too (fmtk tune, check, export): from Python, their errors name
# keywords.
_COMMANDS = {"tune", "check", "export"}

__all__ = [
    "Check", "CheckResult", "DataSplits", "Evaluation", "Export", "FmtkError", "FolderEvaluation",
    "ImageInput", "Preset", "Recipe", "Result", "Run", "SpeedOptions", "StepEvents", "StudyResult",
    "TensorBatches", "__version__", "build_run", "check", "evaluate", "export", "fit", "load_recipe",
    "make_run_dir", "predict", "predictions", "resume", "tune",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fmtk' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    if name in _COMMANDS:  # errors name their keywords, not the command's options
        value = keyword_errors(value)
    globals()[name] = value  # once
    return value
