"""fmtk: a training toolkit for PyTorch built on PyTorch-Ignite.

A *recipe* (model + data + numbers) is assembled into Ignite engines with the usual handlers
(validation, early stopping, checkpoints, LR plateau, TensorBoard) and run.
"""

from fmtk.errors import FmtkError
from fmtk.recipe import Recipe, load_recipe
from fmtk.run import Run, build_run

__all__ = ["FmtkError", "Recipe", "Run", "build_run", "load_recipe"]
__version__ = "0.1.0"
