"""fmtk: a training toolkit for PyTorch built on PyTorch-Ignite.

A *recipe* (model + data + numbers) is assembled into Ignite engines with the usual handlers
(validation, early stopping, checkpoints, LR plateau, TensorBoard) and run.
"""

from fmtk.errors import FmtkError
from fmtk.recipe import Recipe, load_recipe
from fmtk.runfolder import make_run_dir
from fmtk.training.build import build_run
from fmtk.training.engines import StepEvents
from fmtk.training.run import Run
from fmtk.version import __version__

__all__ = [
    "FmtkError", "Recipe", "Run", "StepEvents", "__version__", "build_run", "load_recipe", "make_run_dir",
]  # fmt: skip
