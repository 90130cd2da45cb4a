"""Recipe checks in pytest: :func:`check_recipe` for a test of your own, and the plugin
(:mod:`fmtk.pytest_plugin`) that makes every check of a recipe folder a test item.

Example::

    def test_my_recipe_still_trains():
        report = check_recipe("recipes/my_recipe.py", data_dir="data")
        assert report.passed, report
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fmtk.errors import FmtkError
from fmtk.recipe import Recipe
from fmtk.recipe_loading import load_recipe
from fmtk.regression.report import format_table
from fmtk.regression.running import CheckResult, run_check


@dataclass
class CheckReport:
    """The results of a recipe's checks; ``str()`` is ``fmtk check``'s table of them (the rows
    that failed say why), which makes it the message of a failing ``assert report.passed, report``."""

    results: list[CheckResult]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def __str__(self) -> str:
        return format_table(self.results)


def check_recipe(
    recipe: Recipe | str | Path,
    device: torch.device | str = "cpu",
    data_dir: Path | str | None = None,
    *,
    name: str | None = None,
    keep: Path | str | None = None,
    against: Path | str | None = None,
    tolerance: float | None = None,
) -> CheckReport:
    """Run the checks of ``recipe`` (an object, a bundled recipe's name or a recipe file), or only
    the one named ``name``, as ``fmtk check`` does (``against``: a folder of golden runs)."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(str(recipe))
    checks = [one for one in recipe.checks if name is None or one.label == name]
    if not checks:
        labels = ", ".join(one.label for one in recipe.checks) or "none"
        raise FmtkError(
            f"recipe {recipe.name} has no check {name or ''} (its checks: {labels})".replace("  ", " ")
        )
    kept = None if keep is None else Path(keep)
    return CheckReport([
        run_check(recipe, one, device, data_dir, keep=kept, tolerance=tolerance,
                  golden=None if against is None else Path(against) / f"{recipe.name}-{one.label}")
        for one in checks
    ])  # fmt: skip
