"""The pytest plugin (entry point ``pytest11``): ``pytest --fmtk-recipes PATH`` collects every check
of the recipe files at PATH (a file or a folder of them) as a test item marked ``slow``, which runs
as ``fmtk check`` runs it and fails with its table rows. Without the option it does nothing, and
importing it imports neither torch nor fmtk's training code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fmtk", "fmtk recipe checks")
    group.addoption("--fmtk-recipes", action="append", default=[], metavar="PATH",
                    help="Run the checks of the recipe files at PATH (file or folder) as tests.")  # fmt: skip
    group.addoption("--fmtk-device", default="cpu", help="Where the recipe checks train (default: cpu).")
    group.addoption("--fmtk-data", default=None, metavar="DIR",
                    help="The recipe checks' data root (default: $FMTK_DATA, else ./data).")  # fmt: skip


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: trains a model (pytest -m 'not slow' leaves it out)")


class RecipeCheckFailed(AssertionError):
    """A recipe check that failed: its message is ``fmtk check``'s table."""


class RecipeFile(pytest.File):
    """A recipe file: one item per check it states; one item that fails when the file cannot be
    loaded (as a collection error, without stopping the other tests); none for a module of a folder
    that defines no recipe (a helper the recipes import)."""

    def __init__(self, *, in_folder: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_folder = in_folder

    def collect(self) -> Any:
        from fmtk.errors import FmtkError, one_line
        from fmtk.recipe_loading import NoRecipe, load_recipe
        from fmtk.regression.running import check_recipe_values

        try:
            recipe = load_recipe(str(self.path))
        except NoRecipe as error:
            if not self.in_folder:
                yield RecipeFileError.from_parent(self, name="load", why=str(error))
            return
        except Exception as error:  # noqa: BLE001 - a user's file may raise anything: its item fails
            yield RecipeFileError.from_parent(self, name="load", why=one_line(error) or repr(error))
            return
        for check in recipe.checks:
            name = f"{recipe.name}[{check.label}]"
            try:  # as fmtk check does before anything trains: its settings, preset and figures
                check_recipe_values(recipe, check)
            except FmtkError as error:  # not slow: it trains nothing, and -m "not slow" finds it
                yield RecipeFileError.from_parent(self, name=name, why=str(error))
                continue
            item = RecipeCheck.from_parent(self, name=name, recipe=recipe, check=check)
            item.add_marker(pytest.mark.slow)
            yield item


class RecipeFileError(pytest.Item):
    """A recipe file that cannot be loaded: fails with the one line fmtk says of it."""

    def __init__(self, *, why: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.why = why

    def runtest(self) -> None:
        raise RecipeCheckFailed(self.why)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        return self.why

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"fmtk check {self.path.name}"


class RecipeCheck(pytest.Item):
    """One check of one recipe, as ``fmtk check`` runs it."""

    def __init__(self, *, recipe: Any, check: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipe, self.check = recipe, check

    def runtest(self) -> None:
        from fmtk.regression.report import format_table
        from fmtk.regression.running import run_check

        options = self.config.option
        result = run_check(self.recipe, self.check, options.fmtk_device, options.fmtk_data)
        if not result.passed:
            raise RecipeCheckFailed(format_table([result]))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from fmtk.errors import FmtkError

        if isinstance(excinfo.value, RecipeCheckFailed | FmtkError):  # fmtk's one line, no traceback
            return str(excinfo.value)
        return str(super().repr_failure(excinfo, style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"fmtk check {self.name}"


@pytest.hookimpl(tryfirst=True)  # before -m and -k select among the items
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    for given in config.getoption("fmtk_recipes"):
        from fmtk.recipe_loading import recipe_files

        path = Path(given)
        if not path.exists():
            raise pytest.UsageError(f"--fmtk-recipes {given}: no such file or folder")
        files = recipe_files(path) if path.is_dir() else [path]
        if not files:
            raise pytest.UsageError(f"--fmtk-recipes {given}: a folder without recipe files (*.py)")
        for file in files:
            recipe_file = RecipeFile.from_parent(session, path=file.resolve(), in_folder=path.is_dir())
            found = list(recipe_file.collect())
            # Reported as collected, as a file's items are: the "collected N items" line and
            # --collect-only's count (before: "no tests collected") come from these reports.
            report = pytest.CollectReport(recipe_file.nodeid, "passed", None, found)
            config.hook.pytest_collectreport(report=report)
            items.extend(found)
