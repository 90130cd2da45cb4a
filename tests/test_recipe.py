from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import USER_RECIPE, fmtk
from PIL import Image

from fmtk.errors import FmtkError
from fmtk.recipe import apply_overrides
from fmtk.recipe_loading import bundled_recipe_names, load_recipe, recipe_from_config


def test_bundled_recipes() -> None:
    bundled = ["catdog_vgg", "digits_mlp", "fmnist_cnn", "fmnist_dnn", "images", "mnist_dnn"]
    assert bundled_recipe_names() == bundled
    for name in bundled_recipe_names():
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description
        json.dumps(recipe.config())  # config.json must be plain JSON


@pytest.mark.parametrize(
    "name, numbers",
    [
        ("mnist_dnn", {"optimizer": "SGD", "lr": 0.1, "batch_size": 100, "epochs": 17}),
        ("fmnist_dnn", {"optimizer": "Adam", "lr": 1e-3, "batch_size": 16}),
        ("fmnist_cnn", {"optimizer": "Adam", "lr": 1e-3, "batch_size": 16, "plateau_patience": 5,
                        "plateau_factor": 0.1, "early_stopping_patience": 11}),
        ("catdog_vgg", {"optimizer": "Adam", "lr": 1e-4, "batch_size": 16, "epochs": 55,
                        "plateau_patience": 4, "early_stopping_patience": 8}),
    ],
)  # fmt: skip
def test_recipes_keep_the_notebook_numbers(name: str, numbers: dict) -> None:
    recipe = load_recipe(name)
    assert {key: getattr(recipe, key) for key in numbers} == numbers


def test_unknown_recipe_suggests_the_closest_name() -> None:
    with pytest.raises(FmtkError, match="unknown recipe 'mnist_dn'; did you mean 'mnist_dnn'"):
        load_recipe("mnist_dn")


def test_user_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "my_recipe.py"
    path.write_text(USER_RECIPE)
    assert load_recipe(str(path)).name == "my_digits"


@pytest.mark.parametrize(
    ("written", "said"),
    [("learning_rate=0.1", "has no field 'learning_rate'; did you mean lr?"),
     ("epochz=3", "has no field 'epochz'; did you mean epochs?"),
     ("colour=1", "has no field 'colour'; see docs/recipes.md for its fields")],
)  # fmt: skip
def test_a_mistyped_recipe_field_is_one_line_naming_the_one_meant(tmp_path: Path, written: str, said: str):
    path = tmp_path / "mine.py"
    path.write_text(USER_RECIPE.replace("    epochs=2,", f"    {written},"))
    with pytest.raises(FmtkError) as error:
        load_recipe(str(path))
    assert re.fullmatch(rf"{re.escape(str(path))}:\d+: Recipe\(\.\.\.\) has no field .*", str(error.value))
    assert f"{said} (a recipe's own values go in options=" in str(error.value)


def test_recipe_file_without_recipe_variable(tmp_path: Path) -> None:
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(FmtkError, match="must define a variable `recipe"):
        load_recipe(str(path))
    path.write_text("recipe = dict(name='mine')\n")
    with pytest.raises(FmtkError, match=r"empty.py: its `recipe` is a dict; make it with Recipe\(\.\.\.\)$"):
        load_recipe(str(path))


@pytest.mark.parametrize(
    ("written", "said"),
    [("lr='0.01'", "recipe my_digits: lr='0.01': expected float"),
     ("loss=torch.nn.CrossEntropyLoss()", "recipe my_digits: loss is a CrossEntropyLoss module; give a "
                                          "function of the recipe that makes it: loss=lambda recipe: ..."),
     ("metrics=3", "recipe my_digits: metrics must be a function of the recipe, got int"),
     ("optimizer=torch.optim.SGD",
      "recipe my_digits: optimizer=torch.optim.SGD: give its name, optimizer='SGD'")],
)  # fmt: skip
def test_a_wrong_value_in_a_recipe_file_is_one_line_naming_the_file(tmp_path: Path, written: str, said: str):
    path = tmp_path / "mine.py"
    path.write_text("import torch\n" + USER_RECIPE.replace("    epochs=2,", f"    epochs=2,\n    {written},"))
    with pytest.raises(FmtkError) as error:
        load_recipe(str(path))
    assert str(error.value) == f"{path}: {said}"


def test_overrides_are_typed() -> None:
    recipe = apply_overrides(
        load_recipe("fmnist_cnn"),
        {"lr": "0.01", "epochs": "3", "plateau_patience": "none", "variant": "basic", "optimizer": "SGD"},
    )
    assert (recipe.lr, recipe.epochs, recipe.plateau_patience) == (0.01, 3, None)
    assert (recipe.options["variant"], recipe.optimizer) == ("basic", "SGD")
    assert load_recipe("fmnist_cnn").lr == 1e-3  # the bundled recipe is not changed


def test_an_option_without_a_type_to_follow_reads_as_its_text_does() -> None:
    # A None default: before, --set drop=0.3 gave the text '0.3' (nn.Dropout then failed) and
    # fmtk.fit(drop=0.3) was refused as "expected str or None".
    recipe = load_recipe("digits_mlp")
    recipe = recipe.__class__(**{**vars(recipe), "options": {**recipe.options, "drop": None}})
    for given, expected in [("0.3", 0.3), ("2", 2), ("true", True), ("none", None), ("relu", "relu"),
                            ("runs/a", "runs/a"), (0.3, 0.3), (None, None)]:  # fmt: skip
        value = apply_overrides(recipe, {"drop": given}).options["drop"]
        assert value == expected and type(value) is type(expected)
    with pytest.raises(FmtkError, match=r"^drop=\[1\]: expected int or float or bool or str or none"):
        apply_overrides(recipe, {"drop": [1]})
    # Once set, still the recipe's None that decides: on top (a preset's), and in a run's config again
    once = apply_overrides(recipe, {"drop": "0.3"})
    assert apply_overrides(once, {"drop": "none"}).options["drop"] is None
    again = recipe_from_config(json.loads(json.dumps(once.config())), recipe=recipe, decided=False)
    assert again.options["drop"] == 0.3 and apply_overrides(again, {"drop": "true"}).options["drop"] is True


def test_one_keyword_argument_of_a_dict_field_is_set_by_its_dotted_key() -> None:
    recipe = apply_overrides(load_recipe("mnist_dnn"), {"optimizer_args": "momentum:0.9,nesterov:true"})
    changed = apply_overrides(recipe, {"optimizer_args.momentum": "0.8", "optimizer_args.dampening": 0.0})
    assert changed.optimizer_args == {"momentum": 0.8, "nesterov": True, "dampening": 0.0}
    assert changed.changed["optimizer_args"] == changed.optimizer_args
    assert recipe.optimizer_args == {"momentum": 0.9, "nesterov": True}  # the one it came from is kept
    with pytest.raises(FmtkError, match="optimizer SGD takes no argument 'momentun'"):
        apply_overrides(recipe, {"optimizer_args.momentun": "0.8"})
    with pytest.raises(FmtkError, match="unknown recipe key 'lr.x'"):
        apply_overrides(recipe, {"lr.x": "1"})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"learning_rate": "0.1"},
            r"unknown recipe key 'learning_rate' .*; did you mean lr\? valid keys: .*batch_size.*lr",
        ),
        ({"image_sise": "64"}, "key 'image_sise' for catdog_vgg; did you mean image_size\\? valid keys"),
        ({"epochs": "three"}, "--set epochs=three: expected int"),
        ({"lr": "0"}, "lr must be > 0"),
        ({"lr": "-1"}, "lr must be > 0"),
        ({"batch_size": "0"}, "batch_size must be >= 1"),
        ({"epochs": "0"}, "epochs must be >= 1"),
        (
            {"optimizer": "Adamm"},
            "optimizer must name a class in torch.optim, got 'Adamm'; did you mean 'Adam'",
        ),
        (
            {"optimizer": "adamw"},
            "optimizer must name a class in torch.optim, got 'adamw'; did you mean 'AdamW'",
        ),
        ({"optimizer": "torch.optim.SGD"}, r"got 'torch.optim.SGD'; did you mean 'SGD'\?$"),
        ({"image_size": "big"}, "expected int"),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides: dict, message: str) -> None:
    with pytest.raises(FmtkError, match=message) as error:
        apply_overrides(load_recipe("catdog_vgg"), overrides)
    assert "\n" not in str(error.value)


def test_bundled_recipes_found_from_any_directory(tmp_path: Path) -> None:
    result = fmtk("list", cwd=tmp_path)
    assert "mnist_dnn" in result.stdout and "catdog_vgg" in result.stdout


TABLE_RECIPE = """
import torch
from sklearn.datasets import load_wine
from torch import nn

from fmtk import Recipe
from fmtk.data import DataSplits, TensorBatches


def model(recipe):
    return nn.Sequential(nn.Linear(13, 16), nn.ReLU(), nn.Linear(16, 3))


def data(recipe, data_dir, device):
    features, labels = load_wine(return_X_y=True)
    x = torch.tensor((features - features.mean(0)) / features.std(0), dtype=torch.float32)
    y = torch.tensor(labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    def split(part, shuffle=False):
        return TensorBatches(x[part], y[part], recipe.batch_size, shuffle=shuffle, scale=1.0)
    return DataSplits(split(slice(0, 100), True), split(slice(100, 140)), split(slice(140, None)),
                      ["a", "b", "c"])


recipe = Recipe(name="wine", description="wine's 13 measures", model=model, data=data, optimizer="Adam",
                lr=1e-3, batch_size=16, epochs=2)
"""


def test_a_recipe_of_a_table_s_rows_ends_its_run_and_show_says_nothing_is_to_draw(tmp_path: Path) -> None:
    """Its samples are rows of 13 numbers, not images: the end of the run drew the valid split's
    wrong predictions as images (a traceback, and a run that no resume could finish)."""
    (tmp_path / "wine.py").write_text(TABLE_RECIPE)
    done = fmtk("run", "wine.py", "--run-dir", "run", "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "top_losses.csv").is_file()  # 2 epochs at lr 1e-3: some are wrong
    run = tmp_path / "run"
    assert (run / "metrics.json").is_file() and not (run / "top_losses.png").exists()
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    asked = fmtk("predict", "run", "photo.png", cwd=tmp_path)  # a table's model reads no image file
    assert asked.returncode == 1
    assert "recipe wine does not say how to read an image file: give it image_input=" in asked.stderr
    shown = fmtk("show", "wine.py", cwd=tmp_path)
    assert shown.returncode == 1
    assert shown.stderr == "Error: recipe wine: its samples are not images (each is 13): nothing to draw\n"
