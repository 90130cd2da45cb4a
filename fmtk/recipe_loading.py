"""Finding a recipe and its data: bundled recipes by name, a user's file by path, the recipe of a
run's config.json, with a preset and ``--set`` values; the data folder a command reads."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fmtk.errors import FmtkError, command
from fmtk.recipe import (
    RENAMED,
    Recipe,
    apply_overrides,
    apply_preset,
    nearest_key,
    overridable_fields,
)
from fmtk.runfolder import CONFIG, read_config

DATA_VARIABLE = "FMTK_DATA"


def resolve_recipe(
    recipe: Recipe | str | Path, preset: str | None = None, overrides: Mapping[str, Any] | None = None
) -> Recipe:
    """The recipe to train: a :class:`Recipe`, a bundled recipe's name or a recipe file's path, with
    its preset ``preset`` and then ``overrides`` applied (each checked like ``--set``)."""
    if not isinstance(recipe, Recipe | str | os.PathLike):  # (from Python: not str(None) as a name)
        raise FmtkError(f"recipe={recipe!r}: expected a Recipe, a bundled recipe's name or a recipe file")
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(os.fspath(recipe))
    recipe = apply_preset(recipe, preset)
    return apply_overrides(recipe, overrides) if overrides else recipe


def data_root(given: Path | str | None, run_dir: Path | None = None) -> Path:
    """The data folder a command reads: ``given`` (``--data-dir``), else the one the run in
    ``run_dir`` trained on (evaluate, ``--resume``, ``--config``), else ``$FMTK_DATA``, else ./data."""
    if given is not None:
        return Path(given)
    config = None if run_dir is None else run_dir if run_dir.is_file() else run_dir / CONFIG
    recorded = read_config(run_dir).get("data_dir") if config is not None and config.is_file() else None
    if isinstance(recorded, str):
        return Path(recorded)
    return Path(os.environ.get(DATA_VARIABLE) or "data")


def bundled_recipes_dir() -> Path:
    """The folder of the recipes that ship with fmtk (installed as the package fmtk.recipes)."""
    import fmtk.recipes

    return Path(fmtk.recipes.__file__).parent


def bundled_recipe_names() -> list[str]:
    """Names of the bundled recipes, sorted."""
    return sorted(p.stem for p in bundled_recipes_dir().glob("*.py") if not p.stem.startswith("_"))


class NoRecipe(FmtkError):
    """A Python file that defines no ``recipe``: in a folder of recipe files, a helper module."""


def recipe_files(folder: Path) -> list[Path]:
    """A folder's Python files that may be recipe files, sorted (not ``_``-prefixed: ``__init__``)."""
    return sorted(file for file in folder.glob("*.py") if not file.name.startswith("_"))


def load_recipe(name_or_path: str) -> Recipe:
    """Load a bundled recipe by name (``mnist_dnn``) or a user's recipe file by path."""
    path = Path(name_or_path)
    bundled = path.suffix != ".py"
    if path.is_dir() and name_or_path not in bundled_recipe_names():  # (./digits_mlp: --output-dir .'s)
        run = (
            f"; a run folder goes on with {command('run', '--resume', path)}"
            if (path / "config.json").is_file()
            else ""
        )
        raise FmtkError(
            f"{path} is a folder, not a recipe: give a recipe file (.py) or a bundled recipe's name{run}"
        )
    if bundled and not path.exists() and any(sep in name_or_path for sep in {"/", os.sep}):
        raise FmtkError(f"{name_or_path}: no such file or folder")  # a path, not a recipe's name
    if bundled:
        names = bundled_recipe_names()
        if name_or_path not in names:
            close = difflib.get_close_matches(name_or_path, names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known recipes: {', '.join(names)}"
            if Path(f"{name_or_path}.py").is_file():  # a recipe file of this folder, named without .py
                hint = f"; did you mean the file {name_or_path}.py?"
            raise FmtkError(f"unknown recipe '{name_or_path}'{hint}")
        path = bundled_recipes_dir() / f"{name_or_path}.py"
    if not path.is_file():
        raise FmtkError(f"recipe file not found: {path}")
    if (
        not bundled and str(path.resolve().parent) not in sys.path
    ):  # its helper modules, as `python file` finds them
        sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(f"fmtk_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except FmtkError as error:  # fmtk's own check of what the file makes (a Check, a Preset): name the line
        raise FmtkError(f"{_line_of(path, error)}: {error}") from None
    except TypeError as error:  # a mistyped Recipe field: the one it is near, as --set says it
        unexpected = re.fullmatch(r"Recipe\.__init__\(\) got an unexpected keyword argument '(\w+)'",
                                  str(error))  # fmt: skip
        if unexpected is None:
            raise
        close = nearest_key(unexpected[1], [field.name for field in dataclasses.fields(Recipe) if field.init])
        hint = f"did you mean {close}?" if close else "see docs/recipes.md for its fields"
        raise FmtkError(f"{_line_of(path, error)}: Recipe(...) has no field '{unexpected[1]}'; {hint} (a "
                        "recipe's own values go in options={...})") from None  # fmt: skip
    recipe = getattr(module, "recipe", None)
    if recipe is None:
        raise NoRecipe(f"{path} must define a variable `recipe = Recipe(...)`")
    if not isinstance(recipe, Recipe):
        raise FmtkError(f"{path}: its `recipe` is a {type(recipe).__name__}; make it with Recipe(...)")
    try:
        recipe.validate()
    except FmtkError as error:  # a user's file: named (a bundled recipe's mistake is fmtk's own)
        raise FmtkError(str(error) if bundled else f"{path}: {error}") from None
    for preset in recipe.presets:  # a mistake in one is said now, not only when it is asked for
        apply_preset(recipe, preset)
    return recipe if bundled else recipe.came_from(source=str(path.resolve()))


def _line_of(path: Path, error: BaseException) -> str:
    """``file.py:12``, the line of ``path`` that ``error`` was raised through (else the file)."""
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if Path(frame.filename).resolve() == path.resolve()]  # fmt: skip
    return f"{path}:{lines[-1]}" if lines else str(path)


def recipe_from_config(
    config: dict[str, Any],
    epochs: int | None = None,
    recipe: Recipe | str | Path | None = None,
    decided: bool = True,
) -> Recipe:
    """The recipe a run was made with, from its config.json (bundled recipes by name, a user's file
    by its path), or ``recipe`` given (a recipe object made in Python, or the run's recipe file
    where it is now: ``--recipe``), with the run's values and ``epochs`` raised if given.
    ``decided``: the values its ``from_data`` gave are the run's own (to go on with, evaluate or
    export it); a new run made from the config (``--config``) runs it again on its data."""
    if recipe is None:
        recipe = _load_recipe_of(config)
    else:
        recipe = _given_for(config, recipe)
    values = {name: config[name] for name in overridable_fields() if name in config}
    changed = dict(config.get("changed", {}))
    if epochs is not None:
        values["epochs"] = changed["epochs"] = epochs
    untyped = recipe.untyped_options()
    options = {**recipe.options, **config.get("options", {})}
    for old, new in RENAMED.items():
        if old in options and old not in recipe.options:  # written by an earlier release
            values[new] = values.get(new) or options.pop(old)  # (its augment_* value, if set, won)
            if old in changed:
                changed[new] = changed.pop(old)
    recipe = dataclasses.replace(recipe, **values, options=options).came_from(
        changed=changed,
        preset=config.get("preset"),
        derived=_derived(config),
        data_decided=decided,
        preset_values=config.get("preset_values") if isinstance(config.get("preset_values"), dict) else {},
        untyped=untyped,
    )
    recipe.validate()
    return recipe


def _derived(config: dict[str, Any]) -> dict[str, list[float]]:
    """config.json's ``derived``: each field's own ``[value, epochs]`` (one not of that form, e.g.
    edited by hand, is left out: the field's recorded value then stands as a value given)."""
    derived = config.get("derived")
    pairs = derived.items() if isinstance(derived, dict) else ()

    def numbers(pair: Any) -> bool:
        return isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, (int, float)) for v in pair)

    return {name: pair for name, pair in pairs if numbers(pair)}


def _given_for(config: dict[str, Any], recipe: Recipe | str | Path) -> Recipe:
    """``recipe`` (a Recipe, a recipe file or a bundled recipe's name), refused in one line when it
    is not the recipe config.json names: its checkpoints hold another model's weights."""
    if not isinstance(recipe, Recipe | str | os.PathLike):
        raise FmtkError(f"--recipe {recipe!r}: expected a recipe file, a bundled recipe's name or a Recipe")
    try:
        given = recipe if isinstance(recipe, Recipe) else load_recipe(os.fspath(recipe))
    except FmtkError as error:
        raise FmtkError(f"--recipe: {error}") from None
    name = config.get("name")
    if given.name != name:
        which = f"{'' if isinstance(recipe, Recipe) else f'{recipe} holds '}recipe {given.name!r}"
        raise FmtkError(f"--recipe: {which}, but config.json names the run's recipe {name!r}")
    return given


def _load_recipe_of(config: dict[str, Any]) -> Recipe:
    """The recipe file or bundled recipe a config names; a recipe object made in Python has neither."""
    name = config.get("name")
    if name is None:
        raise FmtkError('config.json names no recipe (no "name")')
    if not isinstance(name, str):
        raise FmtkError(f'config.json: "name" must be a recipe\'s name (text), got {name!r}')
    if config.get("source"):
        source = config["source"]
        if not Path(source).is_file():
            raise FmtkError(f"recipe file not found: {source}, which config.json names as the run's recipe "
                            "(put it back there, or give its new place: --recipe FILE)")  # fmt: skip
        return load_recipe(config["source"])
    names = bundled_recipe_names()
    if name not in names:
        raise FmtkError(
            f"config.json names recipe '{name}', which is no bundled recipe ({', '.join(names)}) and "
            "no recipe file; a recipe made in Python is given from Python: fmtk.resume, evaluate, "
            "predict or export(run_dir, ..., recipe=recipe)"
        )
    recipe = load_recipe(name)
    if config.get("model") not in (None, recipe.config()["model"]):  # one of the same name, made in Python
        raise FmtkError(
            f"recipe '{name}' was made in Python (its model is not the bundled recipe's); "
            "give the recipe object from Python: fmtk.resume, evaluate, predict or export(run_dir, "
            "..., recipe=recipe)"
        )
    return recipe
