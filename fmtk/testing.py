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

from fmtk.recipe import Recipe
from fmtk.regression.report import format_table
from fmtk.regression.running import CheckResult, check


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
    *,
    device: torch.device | str = "cpu",
    data_dir: Path | str | None = None,
    name: str | None = None,
    keep: Path | str | None = None,
    against: Path | str | None = None,
    tolerance: float | None = None,
) -> CheckReport:
    """Run the checks of ``recipe`` (an object, a bundled recipe's name or a recipe file), or only
    the one labelled ``name``, as ``fmtk check`` does (``against``: a folder of golden runs)."""
    return CheckReport(
        check(
            recipe,
            device=device,
            data_dir=data_dir,
            name=name,
            keep=keep,
            against=against,
            tolerance=tolerance,
        )  # fmt: skip
    )
