"""Each bad input of the data and the command line: one line on stderr, a non-zero exit, no
traceback, and nothing that existed before is changed."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
import types
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    assert_one_line_error,
    fmtk,
    fmtk_process,
    joining,
    make_image_folder,
    make_mnist_like,
    make_photos,
    new_cgroup,
    tree_snapshot,
    write_idx,
)
from PIL import Image

from fmtk.device import available_bytes, cgroup_free_bytes
from fmtk.errors import LESS_MEMORY, one_line


@pytest.fixture
def fmtk_here(tmp_path: Path):
    """``fmtk ARGS`` run from ``tmp_path``."""
    return lambda *args: fmtk(*args, cwd=tmp_path)


def run_on(data: Path, tmp_path: Path, *args: str):
    """`fmtk run ...` on ``data``; checks the data is left as it was and, when the command failed,
    that no run folder is left behind."""
    before = tree_snapshot(data) if data.exists() else None
    result = fmtk("run", *args, "--data-dir", str(data), "--output-dir", "out", cwd=tmp_path)
    assert (tree_snapshot(data) if data.exists() else None) == before
    if result.returncode != 0:
        assert not [path for path in (tmp_path / "out").glob("*")], "a failed run left a run folder"
    return result


def test_mnist_file_with_a_wrong_magic_number(tmp_path: Path) -> None:
    data = make_mnist_like(tmp_path / "data")
    path = data / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0c\x01" + gzip.decompress(path.read_bytes())[4:]))
    result = run_on(data, tmp_path, "mnist_dnn")
    assert_one_line_error(result, "train-labels-idx1-ubyte.gz", "wrong magic number")


def test_truncated_mnist_file(tmp_path: Path) -> None:
    data = make_mnist_like(tmp_path / "data")
    path = data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:5000]))
    assert_one_line_error(run_on(data, tmp_path, "mnist_dnn"), "t10k-images-idx3-ubyte.gz", "truncated")


def test_data_root_missing(tmp_path: Path) -> None:
    result = run_on(tmp_path / "nowhere", tmp_path, "catdog_vgg")
    assert_one_line_error(result, "Cat & Dog data not found", "nowhere")
    assert not (tmp_path / "nowhere").exists()


SMALL = ["catdog_vgg", "--set", "image_size=32", "--epochs", "1", "--batch-size", "8"]


def test_missing_class_folder(catdog_root: Path, tmp_path: Path) -> None:
    dogs = catdog_root / "catdog" / "test_set" / "dogs"
    for path in dogs.iterdir():
        path.unlink()
    dogs.rmdir()
    assert_one_line_error(run_on(catdog_root, tmp_path, *SMALL), "test_set: classes ['cats'] differ")


def test_empty_class_folder(catdog_root: Path, tmp_path: Path) -> None:
    for path in (catdog_root / "catdog" / "training_set" / "cats").iterdir():
        path.unlink()
    assert_one_line_error(run_on(catdog_root, tmp_path, *SMALL), "training_set", "cats")


def test_photos_too_small_for_the_model_are_one_line(catdog_root: Path, tmp_path: Path) -> None:
    result = run_on(catdog_root, tmp_path, *SMALL, "--set", "image_size=16")  # VGG halves 32 px 5 times
    assert_one_line_error(
        result, "recipe catdog_vgg: its model fails on inputs of 3×16×16 (the valid split's): ",
        "Output size is too small; a larger image_size may fit it (FMTK_TRACEBACK=1 shows the traceback)",
    )  # fmt: skip


def test_corrupt_jpeg_is_named(catdog_root: Path, tmp_path: Path) -> None:
    broken = catdog_root / "catdog" / "training_set" / "dogs" / "dog.3.jpg"
    broken.write_bytes(broken.read_bytes()[:300])
    assert_one_line_error(run_on(catdog_root, tmp_path, *SMALL), "1 of ", "cannot be decoded", "dog.3.jpg (")


@pytest.mark.parametrize("cache_is", ["a file", "read-only"])
def test_bad_photos_are_named_when_their_list_cannot_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache_is: str
) -> None:
    """data_cache=memory needs the cache folder only for the list of bad files: one it cannot write
    in leaves them named all the same (before: only the list's error was said, "File exists" for a
    file)."""
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    for name in ("empty.jpg", "empty1.jpg", "empty2.jpg", "empty3.jpg", "empty4.jpg"):
        (photos / "bees" / name).write_bytes(b"")  # more than a listed error names: each named here
    cache = tmp_path / "cache"
    if cache_is == "a file":
        cache.write_text("hi\n")
        why = f"the cache folder {cache} is a file ($FMTK_CACHE names a folder)"
    else:
        unwritable_folder(cache)
        why = f"{cache}/bad-images-photos-"
    monkeypatch.setenv("FMTK_CACHE", str(cache))
    try:
        result = run_on(photos, tmp_path, "images", "--set", "image_size=16", "--device", "cpu")
        assert (cache.read_text() == "hi\n") if cache_is == "a file" else not list(cache.iterdir())
    finally:
        if cache_is == "read-only":
            writable_again(cache)
    assert_one_line_error(
        result, "Error: 5 of 17 image files cannot be decoded: ", "/bees/empty.jpg (0 bytes: an empty file);",
        *(f"/bees/empty{n}.jpg (0 bytes" for n in range(1, 5)), "/bees/empty4.jpg (0 bytes: an empty file): "
        "fix or remove them; or train without them: --set skip_bad_images=true; the list of all of them "
        f"cannot be written: {why}",
    )  # fmt: skip


def test_skip_bad_images_refuses_a_class_whose_every_photo_is_bad(tmp_path: Path) -> None:
    # Before, it trained the class with no photo ("train 14 (ants 6, bees 8, wasps 0)"), exit 0.
    photos = make_photos(tmp_path / "photos", {"ants": 8, "bees": 8})
    (photos / "wasps").mkdir()
    (photos / "wasps" / "empty.jpg").write_bytes(b"")
    (photos / "wasps" / "notes.jpg").write_text("not an image")
    skip = ["--set", "image_size=16", "--device", "cpu", "--set", "skip_bad_images=true"]
    assert_one_line_error(
        run_on(photos, tmp_path, "images", *skip),
        f"Error: {photos}: class folder wasps has no photo left: none of them can be decoded "
        "(skip_bad_images); fix them or remove the folder",
    )


SLOW_WAYS = [("file", "1"), ("none", "1"), ("memory", "2")]  # data_cache, processes
WAYS = [("memory", "1"), *(pytest.param(*way, marks=pytest.mark.slow) for way in SLOW_WAYS)]


@pytest.mark.parametrize("data_cache, processes", WAYS)
def test_file_names_that_are_not_utf8_train_and_are_named_as_they_are(
    tmp_path: Path, data_cache: str, processes: str
) -> None:
    """A Latin-1 zip unpacked on Linux: names that are not UTF-8, printed where stdout is strict."""
    photos = make_photos(tmp_path / "photos", {"ants": 8, "bees": 8})
    os.rename(bytes(photos / "ants" / "ants0.jpg"), bytes(photos / "ants") + b"/caf\xe9.jpg")
    (photos / "bees" / os.fsdecode(b"bad\xff.png")).write_bytes(b"")  # and cannot be decoded
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "FMTK_CACHE": str(tmp_path / "cache")}
    small = ["--set", "image_size=16", "--set", "warmup_epochs=0", "--set", f"data_cache={data_cache}",
             "--nproc-per-node", processes]  # fmt: skip
    run = ["run", "images", "--data-dir", str(photos), "--epochs", "1", "--device", "cpu", *small]
    refused = fmtk_process(*run, "--run-dir", "refused", cwd=tmp_path, env=env, errors="replace")
    assert_one_line_error(refused, "1 of 17 image files cannot be decoded: ", "/bees/bad\ufffd.png (")
    [listed_in] = (tmp_path / "cache").glob("bad-images-photos-*.txt")
    listed = listed_in.read_bytes()
    assert listed.startswith(bytes(photos / "bees") + b"/bad\xff.png\t")  # the name as on disk
    skip = ["--run-dir", "run", "--set", "skip_bad_images=true"]
    done = fmtk_process(*run, *skip, cwd=tmp_path, env=env, errors="replace")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["skipped_images"] == [
        os.fsdecode(bytes(photos / "bees") + b"/bad\xff.png")
    ]


@pytest.mark.slow
def test_grayscale_cmyk_and_alpha_images_are_converted_and_train(catdog_root: Path, tmp_path: Path) -> None:
    cats, dogs = (
        catdog_root / "catdog" / "training_set" / "cats",
        catdog_root / "catdog" / "training_set" / "dogs",
    )
    Image.new("L", (50, 40), 90).save(cats / "gray.jpg")
    Image.new("CMYK", (45, 45), (200, 0, 0, 0)).save(dogs / "cmyk.jpg")
    Image.new("RGBA", (60, 30), (0, 0, 255, 80)).save(dogs / "alpha.png")
    result = run_on(catdog_root, tmp_path, *SMALL)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "out" / "catdog_vgg").glob("*/metrics.json"))


# --- The table of bad inputs: one row per case, each run as a command in a fresh folder --------------
# (id, files written first {name: text}, the command's arguments, fragments of the one line)

DIGITS = "lambda recipe, data_dir, device: load_digits_splits(recipe.batch_size, device, recipe.seed)"
HEAD = "from fmtk import Recipe\nfrom fmtk.data import load_digits_splits\nfrom fmtk.models import mlp\n"


def recipe_file(body: str = "", **fields: str) -> str:
    """A user's recipe file: ``body`` first, then ``recipe = Recipe(...)`` with ``fields`` (code)."""
    values = {"name": '"mine"', "description": '"a user recipe"', "model": "lambda recipe: mlp(64, [16], 10)",
              "data": DIGITS, "epochs": "1", **fields}  # fmt: skip
    arguments = "".join(f"    {key}={value},\n" for key, value in values.items() if value is not None)
    return f"{HEAD}{body}\nrecipe = Recipe(\n{arguments})\n"


HANDLERS = """
import os

def fine(run):
    pass

def broken(run):
    return 1 / 0

def no_argument():
    pass
"""

MINE = ["run", "mine.py"]  # run the recipe file written by the case
HANDLE = ["run", "digits_mlp", "--handler"]
RAISING_DATA = "def data(recipe, data_dir, device):\n    raise ValueError('no rows')\n"
OWN_LOSS = recipe_file("from torch import nn\n", loss="lambda recipe: nn.MultiMarginLoss()")
OWN_MODEL = """from torch import nn

class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(64, 10)
    def forward(self, x):
        raise RuntimeError("shapes do not fit")
"""
LATE_LABEL = """import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset
from fmtk.data import DataSplits

def data(recipe, data_dir, device):
    digits = load_digits()
    x, y = torch.tensor(digits.data[:64], dtype=torch.float32) / 16, torch.tensor(digits.target[:64])
    good = DataLoader(TensorDataset(x, y.clone()), batch_size=16)
    y[40] = 10  # in the third batch: only the first of a DataLoader is read before training
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    return DataSplits({train}, {valid}, good, [str(d) for d in range(10)])
"""
LATE_BATCH = """import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, Dataset
from fmtk.data import DataSplits

class Digits(Dataset):  # {which} of the third batch of 16 has 32 values, not 64
    def __init__(self, odd_in):
        digits = load_digits()
        self.x = torch.tensor(digits.data[:64], dtype=torch.float32) / 16
        self.y, self.odd_in = torch.tensor(digits.target[:64]), odd_in

    def __len__(self):
        return 64

    def __getitem__(self, index):
        odd = self.odd_in and {which_index}
        return (self.x[index][:32] if odd else self.x[index]), self.y[index]

def data(recipe, data_dir, device):
    loader = lambda split: DataLoader(Digits(split == "{split}"), batch_size=16, num_workers={workers})
    return DataSplits(loader("train"), loader("valid"), loader("test"), [str(d) for d in range(10)])
"""


def late_batch(whole: bool, split: str = "train", workers: int = 0) -> dict[str, str]:
    """mine.py whose ``split`` has 32 values, not 64, in the samples of its third batch (``whole``)
    or in one of them."""
    which, index = ("every sample", "index // 16 == 2") if whole else ("sample 40", "index == 40")
    body = LATE_BATCH.format(which=which, which_index=index, split=split, workers=workers)
    return {"mine.py": recipe_file(body, data="data")}


SAME_BATCH_SIZES = (
    "training: check that every batch of the recipe's data has the first one's shapes and types"
)
NAN_VALID = """from torch import nn

class BrokenInEval(nn.Module):  # as BatchNorm with running statistics gone NaN: training is fine
    def forward(self, x):
        return x if self.training else x * float("nan")
"""
BROKEN_IN_EVAL = "lambda r: nn.Sequential(mlp(64, [16], 10), BrokenInEval())"
NO_COMPARISON = recipe_file("from fmtk import Check\n", check="Check(expect={'test_accuracy': 'about 0.9'})")
LAYERS = {"model": "lambda recipe: mlp(64, recipe.options['layers'], 10)", "options": '{"layers": [64, 32]}'}

CASES = [
    ("recipe syntax error", {"mine.py": HEAD + "recipe = Recipe(\n"}, MINE,
     ["mine.py:4: SyntaxError: '(' was never closed ("]),
    ("recipe raises at import", {"mine.py": recipe_file("ratio = 1 / 0\n")}, MINE,
     ["mine.py:4: ZeroDivisionError: division by zero", "FMTK_TRACEBACK=1"]),
    ("recipe without model and data", {"mine.py": recipe_file(model=None, data=None)}, MINE,
     ["mine.py:", "TypeError", "missing 2 required positional arguments: 'model' and 'data'"]),
    ("recipe imports a missing module", {"mine.py": recipe_file("import no_such_module\n")}, MINE,
     ["mine.py:4: ModuleNotFoundError: No module named 'no_such_module'"]),
    ("lr='fast' in the file", {"mine.py": recipe_file(lr='"fast"')}, MINE,
     ["recipe mine: lr='fast': expected float"]),
    ("model() returns None", {"mine.py": recipe_file(model="lambda recipe: None")}, MINE,
     ["recipe mine: model() returned NoneType, not a torch nn.Module"]),
    ("data() returns a tuple", {"mine.py": recipe_file(data="lambda recipe, data_dir, device: (1, 2)")}, MINE,
     ["recipe mine: data() returned tuple, not a DataSplits"]),
    ("data() raises", {"mine.py": recipe_file(RAISING_DATA, data="data")}, MINE,
     ["mine.py:5: ValueError: no rows"]),
    ("bundled model of another input size", {"mine.py": recipe_file(model="lambda r: mlp(32, [16], 10)")},
     MINE, ["recipe mine: its model fails on inputs of 1×8×8 (the valid split's): mat1 and mat2 shapes "
            "cannot be multiplied (2x64 and 32x16) (FMTK_TRACEBACK=1"]),
    ("own model raises", {"mine.py": recipe_file(OWN_MODEL, model="lambda r: Broken()")}, MINE,
     ["mine.py:11: RuntimeError: shapes do not fit"]),
    ("model output size is not the class count", {"mine.py": recipe_file(model="lambda r: mlp(64, [16], 5)")},
     MINE, ["the model gives 5 outputs per sample but the data has 10 classes"]),
    ("a label past the classes in a later batch",
     {"mine.py": recipe_file(LATE_LABEL.format(train="loader", valid="good"), data="data")}, MINE,
     ["batch 3 of the train split, epoch 1: label 10, not one of the model's classes (cross-entropy: "
      "Target 10 is out of bounds.); only the first batch of a split read batch by batch is checked"]),
    ("a label past the classes in a later valid batch",
     {"mine.py": recipe_file(LATE_LABEL.format(train="good", valid="loader"), data="data")}, MINE,
     ["batch 3 of the valid split, validation after epoch 1: label 10, not one of the model's classes"]),
    ("a batch of other inputs in the train split", late_batch(whole=True), MINE,
     ["batch 3 of the train split, epoch 1: RuntimeError: mat1 and mat2 shapes cannot be multiplied "
      "(16x32 and 64x16)", SAME_BATCH_SIZES]),
    ("a batch of other inputs in the valid split", late_batch(whole=True, split="valid"), MINE,
     ["batch 3 of the valid split, validation after epoch 1: RuntimeError: mat1 and mat2", SAME_BATCH_SIZES]),
    ("a sample of another size", late_batch(whole=False), MINE,
     ["batch 3 of the train split, epoch 1: RuntimeError: stack expects each tensor to be equal size, "
      "but got [64] at entry 0 and [32] at entry 8", SAME_BATCH_SIZES]),
    ("a sample of another size in a worker", late_batch(whole=False, workers=1), MINE,
     ["batch 3 of the train split, epoch 1: RuntimeError: ", "(a DataLoader worker's words for samples of "
      "different sizes in one batch)", SAME_BATCH_SIZES]),
    ("an unknown checkpoint_metric, said before the data loads", {},
     ["run", "images", "--data-dir", "nowhere", "--set", "checkpoint_metric=f1"],
     ["recipe images: checkpoint_metric 'f1' is not a validation metric; valid: loss, accuracy"]),
    ("a check's expectation that is no comparison", {"mine.py": NO_COMPARISON}, ["check", "mine.py"],
     ["mine.py:", ": expect test_accuracy: 'about 0.9' is not a comparison; write one of"]),
    ("recipe name with a path separator", {"mine.py": recipe_file(name='"../escape"')}, MINE,
     ["recipe name '../escape' must be one folder name"]),
    ("a valid loss of NaN", {"mine.py": recipe_file(NAN_VALID, model=BROKEN_IN_EVAL)}, MINE,
     ["valid loss is nan after epoch 1, with a finite training loss: NaN or infinite values in the valid "
      "split's inputs", "stopped (no checkpoint was written yet)"]),
    ("a folder for a recipe", {"mine/notes.txt": ""}, ["run", "mine"],
     ["mine is a folder, not a recipe: give a recipe file (.py) or a bundled recipe's name"]),
    ("a study folder for a run", {"st/study.json": "{}"}, ["evaluate", "st"],
     ["fmtk evaluate st: a study of fmtk tune, not a run: its trial_* folders are (fmtk runs st lists "
      "them)"]),
    ("a study folder resumed as a run", {"st/study.json": "{}"}, ["run", "--resume", "st"],
     ["fmtk run --resume st: a study of fmtk tune, not a run: fmtk tune --resume st goes on with it"]),
    ("a folder of runs for a run", {"runs/mine/20261207-080000/config.json": "{}"},
     ["predict", "runs", "a.png"],
     ["fmtk predict runs: a folder of runs, not a run: name one of them (fmtk runs runs lists them)"]),
    ("a run folder for a recipe", {"old/config.json": "{}"}, ["run", "old"],
     ["old is a folder, not a recipe", "a run folder goes on with fmtk run --resume old"]),
    ("empty weights", {}, ["run", "digits_mlp", "--set", "weights="],  # (it read the current folder)
     ["recipe digits_mlp: weights is empty: give none, torchvision weights (DEFAULT), a weights file"]),
    ("negative seed", {}, ["run", "digits_mlp", "--seed", "-1"], ["seed must be in 0 … 2**32-1", "got -1"]),
    ("seed above 2**32-1", {}, ["run", "digits_mlp", "--seed", "4294967296"], ["got 4294967296"]),
    ("accumulate_steps=0", {}, ["run", "digits_mlp", "--set", "accumulate_steps=0"],
     ["recipe digits_mlp: accumulate_steps must be >= 1, got 0"]),
    ("mixup_alpha=-1", {}, ["run", "digits_mlp", "--set", "mixup_alpha=-1"],
     ["recipe digits_mlp: mixup_alpha must be >= 0 (0: off), got -1.0"]),
    ("mix_switch_prob=2", {}, ["run", "digits_mlp", "--set", "mix_switch_prob=2"],
     ["recipe digits_mlp: mix_switch_prob must be in [0, 1], got 2.0"]),
    ("cutmix with a recipe's own loss", {"mine.py": OWN_LOSS}, [*MINE, "--set", "cutmix_alpha=1"],
     ["recipe mine: cutmix_alpha mixes the targets", "this recipe has its own loss"]),
    ("LBFGS", {}, ["run", "digits_mlp", "--set", "optimizer=LBFGS"], ["optimizer LBFGS cannot", "closure"]),
    ("Rprop", {}, ["run", "digits_mlp", "--set", "optimizer=Rprop"], ["optimizer Rprop", "full-batch"]),
    ("Optimizer", {}, ["run", "digits_mlp", "--set", "optimizer=Optimizer"], ["optimizer Optimizer", "base"]),
    ("negative hidden size", {}, ["run", "digits_mlp", "--set", "hidden=-3"],
     ["recipe digits_mlp: model() failed with hidden=-3", "hidden layer widths must be >= 1, got [-3]"]),
    ("list option given as text", {"mine.py": recipe_file(**LAYERS)}, [*MINE, "--set", "layers=64,x"],
     ["--set layers=64,x: expected int items separated by commas, e.g. layers="]),
    ("image_input gives no ImageInput", {"mine.py": recipe_file(image_input="lambda recipe: 'grey'")},
     ["summary", "mine.py"], ["recipe mine: image_input gave str, not ImageInput"]),
    ("image_input of the old kind", {"mine.py": recipe_file(image_input="lambda recipe, image: image")},
     ["summary", "mine.py"], ["recipe mine: image_input() failed", "missing 1 required positional argument"]),
    ("summary with image_size=0", {}, ["summary", "catdog_vgg", "--set", "image_size=0"],
     ["recipe catdog_vgg: image_input() failed with image_size=0"]),
    ("summary with a negative image_size", {}, ["summary", "catdog_vgg", "--set", "image_size=-5"],
     ["image_input() failed with image_size=-5"]),
    ("handler module raises at import", {"handlers.py": "1 / 0\n"}, [*HANDLE, "handlers:fine"],
     ["handlers.py:1: ZeroDivisionError"]),
    ("handler raises when attached", {"handlers.py": HANDLERS}, [*HANDLE, "handlers:broken"],
     ["handlers.py:8: ZeroDivisionError"]),
    ("--device cpu:1", {}, ["run", "digits_mlp", "--device", "cpu:1"], ["--device cpu:1: the CPU has no"]),
    ("show --out into a missing folder", {}, ["show", "digits_mlp", "--out", "nodir/x.png"],
     ["--out nodir/x.png: no folder nodir"]),
    ("show --out not a PNG", {}, ["show", "digits_mlp", "--out", "x.jpg"],
     ["--out x.jpg: give a name ending in .png"]),
    ("handler takes no argument", {"handlers.py": HANDLERS}, [*HANDLE, "handlers:no_argument"],
     ["no_argument must take one argument, the run"]),
    ("a flag and --set for one value", {}, ["run", "digits_mlp", "--epochs", "1", "--set", "epochs=1.5"],
     ["--epochs 1 and --set epochs=1.5 both set epochs; give one"]),
    ("--run-dir a file", {"afile": "kept"}, ["run", "digits_mlp", "--run-dir", "afile"],
     ["--run-dir afile is a file; give a new folder"]),
    ("lr-find --out not a PNG", {}, ["lr-find", "digits_mlp", "--out", "lr.txt"],
     ["--out lr.txt: give a name ending in .png"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "files, args, fragments", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_bad_input_is_one_line_and_leaves_nothing(
    tmp_path: Path, fmtk_here, files: dict[str, str], args: list[str], fragments: list[str]
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = tree_snapshot(tmp_path)
    output = ["--output-dir", "out"] if args[0] == "run" and "--resume" not in args else []
    result = fmtk_here(*args, *output)
    assert result.returncode == 1
    assert_one_line_error(result, *fragments)
    after = {name: stat for name, stat in tree_snapshot(tmp_path).items() if "__pycache__" not in name}
    assert after == before and not list(tmp_path.glob("out/*"))  # nothing changed, no run folder left


def test_an_error_of_fmtk_s_own_code_on_a_batch_keeps_its_traceback() -> None:
    """A batch's error from torch (the data's) is one line naming the batch; one raised in fmtk's
    own code on it (a bug of fmtk's) is not made one."""
    import fmtk
    from fmtk.errors import FAILED_BATCH, failed_batch_line

    def raised_in(filename: str) -> RuntimeError:
        namespace: dict = {}
        exec(compile("def step():\n    raise RuntimeError('shapes')\n", filename, "exec"), namespace)
        try:
            namespace["step"]()
        except RuntimeError as error:
            setattr(error, FAILED_BATCH, "batch 2 of the train split, epoch 1")
            return error
        raise AssertionError("it did not raise")

    torch_file = str(Path(torch.__file__).parent / "nn" / "functional.py")
    line = failed_batch_line(raised_in(torch_file))
    assert line.startswith("batch 2 of the train split, epoch 1: RuntimeError: shapes;")
    assert failed_batch_line(raised_in(str(Path(fmtk.__file__).parent / "training" / "engines.py"))) is None


@pytest.mark.slow
def test_fmtk_traceback_shows_the_whole_traceback(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(recipe_file("ratio = 1 / 0\n"))
    env = {**os.environ, "FMTK_TRACEBACK": "1"}
    command = [sys.executable, "-m", "fmtk", "run", "mine.py"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 1 and "Traceback (most recent call last)" in result.stderr
    assert 'mine.py", line 4' in result.stderr


# --- Bad inputs against a finished run: (id, how the copy of the run is spoiled, command, fragments) ---


def drop(*names: str):
    def spoil(run_dir: Path) -> None:
        for name in names:
            for path in run_dir.glob(name):
                path.unlink()

    return spoil


def edit_config(**changes: object):
    def spoil(run_dir: Path) -> None:
        config = json.loads((run_dir / "config.json").read_text())
        for key, value in changes.items():
            if value is None:
                config.pop(key)
            else:
                config[key] = value
        (run_dir / "config.json").write_text(json.dumps(config))
        drop("metrics.json")(run_dir)  # unfinished: --resume has work to do

    return spoil


def garbled_metrics_row(run_dir: Path) -> None:
    with (run_dir / "metrics.csv").open("a") as file:
        file.write("3,oops,0.1,0.9,0.01,1.0\n")
    drop("metrics.json")(run_dir)


def picture_in_the_way(run_dir: Path) -> None:  # as a read-only folder would (root can write anywhere)
    (run_dir / "confusion_best.png").unlink()
    (run_dir / "confusion_best.png").mkdir()


RUN_CASES = [
    ("evaluate a folder that is no run", lambda run_dir: None, ["evaluate", "."],
     ["fmtk evaluate .: a folder of runs, not a run: name one of them (fmtk runs . lists them)"]),
    ("predict with a folder that is no run", lambda run_dir: None, ["predict", ".", "x.png"],
     ["fmtk predict .: a folder of runs, not a run"]),
    ("evaluate --checkpoint last without one", drop("last_checkpoint_*.pt"),
     ["evaluate", "run", "--checkpoint", "last"], ["no last_checkpoint_*.pt (the run has not finished an"]),
    ("resume --epochs below the epochs run", drop("metrics.json"),
     ["run", "--resume", "run", "--epochs", "1"], ["--epochs 1: run has already run 2 epochs"]),
    ("config.json without a name", edit_config(name=None), ["run", "--resume", "run"], ["names no recipe"]),
    ("config.json whose name is a number", edit_config(name=3), ["run", "--resume", "run"],
     ['config.json: "name" must be a recipe\'s name (text), got 3']),
    ("config.json with lr 'fast'", edit_config(lr="fast"), ["run", "--resume", "run"],
     ["recipe digits_mlp: lr='fast': expected float"]),
    ("metrics.csv with a row of words", garbled_metrics_row, ["run", "--resume", "run"],
     ["metrics.csv: line 4 is not a row of numbers"]),
    ("best checkpoint deleted, then --resume", drop("best_checkpoint_*.pt", "metrics.json"),
     ["run", "--resume", "run"], ["best_checkpoint_2_valid_accuracy=", "best checkpoint, is missing"]),
    ("evaluate cannot write its picture", picture_in_the_way, ["evaluate", "run"],
     ["confusion_best.png: cannot write the picture"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    done = fmtk("run", "digits_mlp", "--epochs", "2", "--run-dir", "run", cwd=root)
    assert done.returncode == 0, done.stderr
    return root / "run"


@pytest.mark.parametrize(
    "spoil, args, fragments", [row[1:] for row in RUN_CASES], ids=[row[0] for row in RUN_CASES]
)
def test_bad_input_against_a_run_is_one_line_and_changes_nothing(
    finished_run: Path, tmp_path: Path, fmtk_here, spoil, args: list[str], fragments: list[str]
) -> None:
    shutil.copytree(finished_run, tmp_path / "run")
    spoil(tmp_path / "run")
    before = tree_snapshot(tmp_path)
    result = fmtk_here(*args)
    assert result.returncode == 1
    assert_one_line_error(result, *fragments)
    assert tree_snapshot(tmp_path) == before


# --- Bad data: (id, how a small real-format dataset is spoiled, recipe and arguments, fragments) ------


def bomb_png(path: Path) -> None:
    """A PNG whose header claims 20,000 × 20,000 pixels: Pillow refuses it as a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 20_000, 20_000, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def rewrite_idx(root: Path, name: str, change) -> None:
    """Replace the array of MNIST file ``name`` (e.g. ``train-labels-idx1-ubyte``) by ``change(array)``."""
    path = root / "MNIST" / "raw" / f"{name}.gz"
    payload = gzip.decompress(path.read_bytes())
    dims = payload[3]
    shape = struct.unpack(f">{dims}I", payload[4 : 4 + 4 * dims])
    array = np.frombuffer(payload[4 + 4 * dims :], dtype=np.uint8).reshape(shape)
    write_idx(path.with_suffix(""), change(array.copy()))


def lonely_nine(labels: np.ndarray) -> np.ndarray:
    nines = np.flatnonzero(labels == 9)
    labels[nines[1:]] = 8
    return labels


def mnist_case(change):
    def spoil(root: Path) -> Path:
        make_mnist_like(root)
        change(root)
        return root

    return spoil


def catdog_case(change):
    def spoil(root: Path) -> Path:
        make_image_folder(root / "catdog" / "training_set", per_class=12)
        make_image_folder(root / "catdog" / "test_set", per_class=4, seed=1)
        change(root / "catdog")
        return root

    return spoil


def one_class(catdog: Path) -> None:
    for split in ("training_set", "test_set"):
        shutil.rmtree(catdog / split / "dogs")


MNIST = ["mnist_dnn", "--epochs", "1"]
CATDOG = ["catdog_vgg", "--set", "image_size=32", "--epochs", "1", "--batch-size", "8"]
DATA_CASES = [
    ("MNIST label past the classes",
     mnist_case(lambda root: rewrite_idx(root, "train-labels-idx1-ubyte", lambda a: np.where(a == 3, 12, a))),
     MNIST, ["train-labels-idx1-ubyte.gz: label 12 is not one of the 10 classes"]),
    ("MNIST test images of another size",
     mnist_case(lambda root: rewrite_idx(root, "t10k-images-idx3-ubyte", lambda a: a[:, :20, :20])),
     MNIST, ["t10k-images-idx3-ubyte.gz: images are 20×20, the training images 28×28"]),
    ("MNIST class with a single sample",
     mnist_case(lambda root: rewrite_idx(root, "train-labels-idx1-ubyte", lonely_nine)),
     MNIST, ["train-labels-idx1-ubyte.gz: class 9 has a single sample"]),
    ("MNIST without images",
     mnist_case(lambda root: (rewrite_idx(root, "train-images-idx3-ubyte", lambda a: a[:0]),
                              rewrite_idx(root, "train-labels-idx1-ubyte", lambda a: a[:0]))),
     MNIST, ["train-images-idx3-ubyte.gz: holds no images"]),
    ("image folder with one class", catdog_case(one_class), CATDOG,
     ["training_set: one class folder (cats)"]),
    ("decompression bomb among the photos",
     catdog_case(lambda catdog: bomb_png(catdog / "training_set" / "dogs" / "huge.png")),
     CATDOG, ["cannot be decoded: ", "huge.png (", "decompression bomb"]),
]  # fmt: skip


@pytest.mark.parametrize(
    "spoil, args, fragments", [r[1:] for r in DATA_CASES], ids=[r[0] for r in DATA_CASES]
)
def test_bad_data_is_refused_when_it_loads(
    tmp_path: Path, spoil, args: list[str], fragments: list[str]
) -> None:
    data = spoil(tmp_path / "data")
    assert_one_line_error(run_on(data, tmp_path, *args), *fragments)


def test_a_last_training_batch_of_one_sample_trains_with_batchnorm(tmp_path: Path) -> None:
    data = make_mnist_like(tmp_path / "data", "FashionMNIST")  # 500 training images after the split
    result = run_on(data, tmp_path, "fmnist_dnn", "--epochs", "1", "--batch-size", "499")  # BatchNorm1d
    assert result.returncode == 0, result.stderr
    [run_dir] = (tmp_path / "out" / "fmnist_dnn").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 1


def test_nan_in_the_first_epoch_says_no_checkpoint_was_written(tmp_path: Path) -> None:
    (tmp_path / "poison.py").write_text(
        "from ignite.engine import Events\n\n\ndef attach(run):\n"
        "    run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=3),\n"
        "                                  lambda e: next(run.model.parameters()).data.fill_(float('nan')))\n"
    )
    result = fmtk("run", "digits_mlp", "--handler", "poison:attach", "--output-dir", "out", cwd=tmp_path)
    assert_one_line_error(result, "NaN or infinite at epoch 1", "no checkpoint was written yet")
    assert not (tmp_path / "out").exists()  # and no half-empty run folder, nor the runs folder it made


def test_running_out_of_memory_mid_epoch_is_one_line_and_the_checkpoints_stay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real allocation the CPU cannot make (1 TiB), in the training step of epoch 2.
    (tmp_path / "greedy.py").write_text(
        "import torch\nfrom ignite.engine import Events\n\n\ndef attach(run):\n"
        "    run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=40),\n"
        "                                  lambda e: torch.empty(2**40, dtype=torch.uint8))\n"
    )
    result = fmtk("run", "digits_mlp", "--handler", "greedy:attach", "--run-dir", "run", cwd=tmp_path)
    assert_one_line_error(result, "Error: out of memory: 1,024.0 GiB more could not be allocated: ",
                          "a smaller batch_size (--batch-size; --set accumulate_steps=N")  # fmt: skip
    assert result.returncode == 1
    assert [path.name for path in (tmp_path / "run").glob("last_*.pt")] == ["last_checkpoint_1.pt"]
    monkeypatch.setenv("FMTK_TRACEBACK", "1")
    shown = fmtk("run", "digits_mlp", "--handler", "greedy:attach", "--run-dir", "run2", cwd=tmp_path)
    assert "Traceback" in shown.stderr and "DefaultCPUAllocator" in shown.stderr


def test_photos_that_cannot_be_held_decoded_are_one_line_before_decoding(
    catdog_root: Path, tmp_path: Path
) -> None:
    # 52 photos at a size whose decoded pixels are twice this machine's available memory.
    available = available_bytes()
    size = math.ceil(math.sqrt(2 * available / (52 * 3)))
    started = time.monotonic()
    result = run_on(catdog_root, tmp_path, "catdog_vgg", "--set", f"image_size={size}", "--device", "cpu")
    assert_one_line_error(
        result, f"data_cache=memory: the 52 photos at {size} px are ", "GiB decoded, more than the ",
        "GiB of memory available on this machine: --set data_cache=none decodes them in DataLoader workers",
    )  # fmt: skip
    assert time.monotonic() - started < 30  # nothing was decoded
    (tmp_path / "meminfo").write_text("MemTotal:       24683784 kB\nMemAvailable:   22642832 kB\n")
    assert available_bytes(tmp_path / "meminfo") == 22642832 * 1024
    (tmp_path / "meminfo").write_text("MemTotal:       24683784 kB\n")  # a kernel before 3.14: unknown
    assert available_bytes(tmp_path / "meminfo") is None


def write_cgroup(folder: Path, version: str, limit: str, used: int, inactive_file: int) -> None:
    """A cgroup's memory files as the kernel writes them (cgroup ``version`` v1 or v2)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {
        "v2": ("memory.max", "memory.current", "inactive_file"),
        "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
    }[version]
    (folder / names[0]).write_text(f"{limit}\n")
    (folder / names[1]).write_text(f"{used}\n")
    # v1's memory.stat has this cgroup's own line first, then the hierarchy's total_ line.
    (folder / "memory.stat").write_text(
        f"cache 10\ninactive_file 10\n{names[2]} {inactive_file}\nactive_file 7\n"
    )


def test_a_memory_limit_is_read_from_cgroup_v2_and_v1_as_a_container_sees_them(tmp_path: Path) -> None:
    def free(cgroups: str, mounts: list[tuple[str, Path, str, str]]) -> int | None:
        """cgroup_free_bytes with this /proc/self/cgroup and these (cgroup at the top, folder,
        kind, options) mounts in /proc/self/mountinfo."""
        (tmp_path / "cgroup").write_text(cgroups)
        lines = [f"{31 + i} 23 0:{28 + i} {top} {folder} rw,relatime shared:9 - {kind} {kind} {options}\n"
                 for i, (top, folder, kind, options) in enumerate(mounts)]  # fmt: skip
        (tmp_path / "mountinfo").write_text("".join(lines))
        return cgroup_free_bytes(tmp_path / "cgroup", tmp_path / "mountinfo")

    # cgroup v2 in a container with its own cgroup namespace: its cgroup is the top of the mount.
    v2 = tmp_path / "v2"
    write_cgroup(v2, "v2", "2147483648", used=2**30, inactive_file=100_000_000)
    assert free("0::/\n", [("/", v2, "cgroup2", "rw,nsdelegate")]) == 2**31 - 2**30 + 100_000_000
    (v2 / "memory.max").write_text("max\n")
    assert free("0::/\n", [("/", v2, "cgroup2", "rw,nsdelegate")]) is None
    # cgroup v1 in a container that sees its host's path (no namespace): the mount shows that its own
    # cgroup is at the top; a cgroup made inside it has a smaller limit, all of it used.
    cgroups = "5:cpu,cpuacct:/docker/0b5e\n4:memory:/docker/0b5e/job\n0::/docker/0b5e\n"
    v1 = tmp_path / "v1"
    mounts = [
        ("/docker/0b5e", v1 / "cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
        ("/docker/0b5e", v1 / "memory", "cgroup", "rw,memory"),
        ("/", v1 / "unified", "cgroup2", "rw"),
    ]
    write_cgroup(v1 / "cpu,cpuacct", "v1", "1", used=0, inactive_file=0)  # not the memory controller's
    write_cgroup(v1 / "memory", "v1", "8589934592", used=2**32, inactive_file=2**29)
    assert free(cgroups, mounts) == 2**33 - 2**32 + 2**29
    write_cgroup(v1 / "memory" / "job", "v1", "1073741824", used=2**30, inactive_file=0)
    assert free(cgroups, mounts) == 0
    (v1 / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert free(cgroups, mounts) == 2**33 - 2**32 + 2**29
    assert cgroup_free_bytes(tmp_path / "no such file", tmp_path / "mountinfo") is None


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A new cgroup with a memory limit of 2 GiB (:func:`conftest.new_cgroup`)."""
    with new_cgroup("memory", {"memory.limit_in_bytes": str(2**31)}) as folder:
        yield folder


def test_photos_beyond_a_containers_memory_limit_are_one_line_before_decoding(
    memory_cgroup: Path, catdog_root: Path, tmp_path: Path
) -> None:
    # 52 photos whose decoded pixels are the cgroup's whole 2 GiB limit: far under this machine's
    # available memory, which alone would let them be decoded until the kernel killed the process.
    assert available_bytes() > 2 * 2**31
    size = math.ceil(math.sqrt(2**31 / (52 * 3)))
    args = (
        "--set",
        f"image_size={size}",
        "--device",
        "cpu",
        "--data-dir",
        str(catdog_root),
        "--output-dir",
        "out",
    )
    join = memory_cgroup / "cgroup.procs"
    result = fmtk_process(
        "run", "catdog_vgg", *args, cwd=tmp_path, preexec_fn=lambda: join.write_text(str(os.getpid()))
    )
    assert_one_line_error(
        result, f"data_cache=memory: the 52 photos at {size} px are 2.0 GiB decoded, more than the ",
        "GiB left under this process's memory limit (cgroup): --set data_cache=none decodes them",
    )  # fmt: skip
    assert not list((tmp_path / "out").glob("*"))


TINY_PHOTOS = """
from torch import nn

from fmtk import Recipe
from fmtk.data import ImageInput, load_photo_folder


def data(recipe, data_dir, device):
    return load_photo_folder(data_dir, recipe.options["image_size"], recipe.batch_size, device, recipe.seed)


recipe = Recipe(
    name="tiny_photos",
    description="each photo's mean colour: nearly free at any image size",
    model=lambda recipe: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)),
    data=data,
    image_input=lambda recipe: ImageInput.photo(recipe.options["image_size"]),
    epochs=1,
    options={"image_size": 32},
)
"""


@pytest.mark.slow
def test_a_folder_larger_than_the_memory_limit_is_evaluated_whole(
    memory_cgroup: Path, tmp_path: Path
) -> None:
    # 3,000 photos at the run's 512 px are 2.25 GiB decoded, more than the 2 GiB this process may use
    # (its cgroup's limit): they are decoded, evaluated and dropped a chunk at a time. The recipe's
    # model takes each photo's mean colour: nearly free at any size.
    (tmp_path / "tiny_photos.py").write_text(TINY_PHOTOS)
    make_image_folder(tmp_path / "photos", per_class=20)
    trained = fmtk(
        "run", "tiny_photos.py", "--data-dir", "photos", "--run-dir", "tiny", "--device", "cpu", cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr
    config = json.loads((tmp_path / "tiny" / "config.json").read_text())
    config["options"]["image_size"] = 512  # as a run trained at 512 px would hold it
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(config))
    new = make_image_folder(tmp_path / "new", per_class=1500, seed=2)
    result = fmtk_process("evaluate", "tiny", "--folder", str(new), "--device", "cpu", cwd=tmp_path,
                          preexec_fn=joining(memory_cgroup))  # fmt: skip
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "tiny" / "evaluations" / "new-best" / "evaluation.json").read_text())
    assert figures["photos"] == 3000 and sum(map(sum, figures["confusion"])) == 3000
    # 1.06 GiB at most was measured (two chunks held); 1.85 GiB when glibc kept the decoding threads' freed
    # buffers.
    assert int((memory_cgroup / "memory.max_usage_in_bytes").read_text()) < 1.5 * 2**30


def test_cudas_out_of_memory_error_keeps_its_first_three_sentences() -> None:
    # torch's message as an 80-GB GPU gave it (quoted in a public repository's file).
    error = torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 79.19 GiB of which "
        "9.00 MiB is free. Including non-PyTorch memory, this process has 79.13 GiB memory in use. Of the "
        "allocated memory 77.33 GiB is allocated by PyTorch, and 1.05 GiB is reserved by PyTorch but "
        "unallocated. If reserved but unallocated memory is large try setting "
        "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
    )
    assert one_line(error) == (
        "out of memory on the GPU (CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total "
        f"capacity of 79.19 GiB of which 9.00 MiB is free): {LESS_MEMORY}"
    )
    assert one_line(RuntimeError("CUDA error: an illegal memory access was encountered")) is None


def test_predict_names_a_decompression_bomb(finished_run: Path, tmp_path: Path) -> None:
    bomb_png(tmp_path / "huge.png")
    assert_one_line_error(
        fmtk("predict", str(finished_run), "huge.png", cwd=tmp_path),
        "cannot be read: ",
        "huge.png (",
        "decompression bomb",
    )


@pytest.mark.slow
def test_a_second_process_on_a_run_being_trained_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    (tmp_path / "pause.py").write_text(
        "import time\nfrom pathlib import Path\nfrom ignite.engine import Events\n\n\ndef attach(run):\n"
        "    @run.trainer.on(Events.ITERATION_COMPLETED(once=2))\n"
        "    def wait(engine):\n"
        "        Path('paused').touch()\n"
        "        while not Path('go').exists():\n"
        "            time.sleep(0.05)\n"
    )
    command = [sys.executable, "-m", "fmtk", "run", "digits_mlp", "--epochs", "1", "--run-dir", "r",
               "--handler", "pause:attach"]  # fmt: skip
    first = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "paused").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        before = tree_snapshot(tmp_path / "r")
        second = fmtk("run", "--resume", "r", cwd=tmp_path)
        assert_one_line_error(second, "r is being trained by another fmtk process", f"(pid {first.pid})")
        assert tree_snapshot(tmp_path / "r") == before
        listing = fmtk("runs", ".", cwd=tmp_path)
        assert listing.stdout.splitlines()[1].endswith("running")
    finally:
        (tmp_path / "go").touch()
        _, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors
    assert fmtk("runs", ".", cwd=tmp_path).stdout.splitlines()[1].endswith("finished")


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_space(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        filler = disk / "filler"
        filler.write_bytes(
            b"\0" * (1024 * 1024 - 160 * 1024)
        )  # ~160 KB left: enough for one epoch's checkpoints
        result = fmtk("run", "digits_mlp", "--epochs", "6", "--run-dir", str(disk / "r"), cwd=tmp_path)
        assert_one_line_error(result, "no space left on device while writing to", "fmtk run --resume")
        last = sorted((disk / "r").glob("last_checkpoint_*.pt"))
        assert len(last) == 1  # the last complete checkpoint, whole
        torch.load(last[0], weights_only=True)
        filler.unlink()
        resumed = fmtk("run", "--resume", str(disk / "r"), cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        assert json.loads((disk / "r" / "metrics.json").read_text())["epochs_run"] == 6
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# --- fmtk runs on damaged run folders -------------------------------------------------------------


def test_runs_lists_a_run_whose_metrics_csv_is_not_utf8_as_unreadable(
    finished_run: Path, tmp_path: Path, fmtk_here
) -> None:
    shutil.copytree(finished_run, tmp_path / "run")
    (tmp_path / "run" / "metrics.json").unlink()  # unfinished: the table reads metrics.csv
    with (tmp_path / "run" / "metrics.csv").open("ab") as file:
        file.write("3,0.2,0.2,0.95,0.01,1.0,café\n".encode("latin-1"))
    before = tree_snapshot(tmp_path)
    table = fmtk_here("runs", ".")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].endswith("unreadable") and lines[2] == "run: metrics.csv is not UTF-8 text"
    [row] = json.loads(fmtk_here("runs", ".", "--json").stdout)
    assert row["state"] == "unreadable" and "metrics.csv" in row["error"]
    assert tree_snapshot(tmp_path) == before


def test_runs_json_writes_nan_and_infinity_as_null(finished_run: Path, tmp_path: Path, fmtk_here) -> None:
    shutil.copytree(finished_run, tmp_path / "done")
    results = json.loads((tmp_path / "done" / "metrics.json").read_text())
    results["best_valid_accuracy"], results["train_seconds"] = float("nan"), float("inf")
    results["test"]["best"]["accuracy"] = float("nan")
    (tmp_path / "done" / "metrics.json").write_text(json.dumps(results))  # Python writes NaN, Infinity
    shutil.copytree(finished_run, tmp_path / "cut")
    (tmp_path / "cut" / "metrics.json").unlink()
    with (tmp_path / "cut" / "metrics.csv").open("a") as file:
        file.write("3,nan,nan,nan,0.01,1.0\n")  # a diverged epoch
    result = fmtk_here("runs", ".", "--json")
    assert result.returncode == 0, result.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    cut, done = json.loads(result.stdout, parse_constant=refuse)
    assert done["best_valid_accuracy"] is None and done["train_seconds"] is None
    assert done["test_accuracy_best"] is None and done["test_accuracy_last"] > 0.5
    rows = (finished_run / "metrics.csv").read_text().splitlines()[1:]
    accuracies = [float(row.split(",")[3]) for row in rows]
    assert cut["epochs_done"] == 3 and cut["best_valid_accuracy"] == max(accuracies)  # the NaN is no best


# --- fmtk lr-find ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lrs", [["--end-lr", "inf"], ["--start-lr", "nan"], ["--start-lr", "inf"], ["--end-lr", "nan"]]
)
def test_lr_find_refuses_an_lr_that_is_not_finite(tmp_path: Path, fmtk_here, lrs: list[str]) -> None:
    result = fmtk_here("lr-find", "digits_mlp", "--device", "cpu", *lrs)
    assert_one_line_error(result, "lr-find: need 0 < start lr < end lr, got", "(finite numbers)")
    assert not list(tmp_path.iterdir())  # no picture


def unwritable_folder(folder: Path) -> Path:
    """``folder``, made so that no one, root included, can write in it: read-only, and immutable
    (``chattr +i``) where root runs the tests. Undo with :func:`writable_again`."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):  # root
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if os.access(folder, os.W_OK):
        pytest.skip(f"cannot make {folder} unwritable for this user (no chattr +i on this file system)")
    return folder


def writable_again(folder: Path) -> None:
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
    folder.chmod(0o755)


def test_lr_find_into_a_folder_it_cannot_write_is_refused_before_training(tmp_path: Path, fmtk_here) -> None:
    from fmtk.errors import FmtkError
    from fmtk.lr_finder import LRFinding, save_lr_picture

    folder = unwritable_folder(tmp_path / "ro")
    try:
        result = fmtk_here("lr-find", "digits_mlp", "--device", "cpu", "--out", "ro/lr.png")
        assert_one_line_error(result, "--out ro/lr.png: cannot write it (the folder ro is not writable)")
        finding = LRFinding([1e-3, 1e-2, 1e-1], [1.0, 0.5, 2.0], 1e-2, True)
        with pytest.raises(FmtkError, match=r"ro/lr.png: cannot write the picture \("):
            save_lr_picture(finding, folder / "lr.png", "title")  # the same, found only when writing
        assert not list(folder.iterdir())
    finally:
        writable_again(folder)


@pytest.mark.slow
def test_a_killed_lr_find_leaves_no_temporary_folder_behind(
    tmp_path: Path, fmtk_here, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    temp = tmp_path / "temp"  # the temporary folder of both lr-finds
    temp.mkdir()
    command = [sys.executable, "-m", "fmtk", "lr-find", "digits_mlp", "--device", "cpu", "--steps", "100000",
               "--end-lr", "1e-5", "--out", "killed.png"]  # fmt: skip
    killed = subprocess.Popen(command, cwd=tmp_path, env={**os.environ, "TMPDIR": str(temp)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(temp.rglob("ignite_lr_finder_cache.pt")):  # Ignite saved the model: training
            assert killed.poll() is None, killed.communicate()[1]
            assert time.monotonic() < deadline, "the lr-find did not start"
            time.sleep(0.02)
    finally:
        killed.kill()  # SIGKILL: nothing of the process runs
        killed.communicate()
    assert list(temp.glob(f"fmtk-lr-find-{killed.pid}/*/ignite_lr_finder_cache.pt"))
    (temp / "fmtk-lr-find-1").mkdir()  # a live process's (pid 1 always runs): kept
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    result = fmtk_here("lr-find", "digits_mlp", "--device", "cpu", "--steps", "12", "--out", "next.png")
    assert result.returncode == 0, result.stderr
    assert [path.name for path in temp.glob("fmtk-lr-find-*")] == ["fmtk-lr-find-1"]
    assert not list(temp.rglob("ignite_lr_finder_cache.pt"))


# --- A recipe value the model cannot be built with --------------------------------------------------


def test_a_hidden_layer_of_width_zero_is_one_line_and_leaves_no_run(tmp_path: Path, fmtk_here) -> None:
    result = fmtk_here("run", "digits_mlp", "--set", "hidden=0", "--output-dir", "out")
    assert_one_line_error(
        result, "recipe digits_mlp: model() failed with hidden=0", "hidden layer widths must be >= 1, got [0]"
    )
    assert not list(tmp_path.glob("out/*"))


# --- --resume into a run folder TensorBoard cannot write ------------------------------------------


def iterations_made_a_file(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "iterations")  # TensorBoard's per-iteration sub-run
    (run_dir / "iterations").write_text("in the way\n")


@pytest.mark.parametrize(
    "spoil, fragment",
    [
        (iterations_made_a_file,
         "run/iterations: cannot write TensorBoard's logs (it is a file, not a folder); move it away to"),
        (unwritable_folder,
         "run: cannot write TensorBoard's logs (Permission denied); make it writable to resume"),
    ],
    ids=["iterations is a file", "read-only run folder"],
)  # fmt: skip
def test_resume_into_a_run_folder_tensorboard_cannot_write_is_one_line_and_changes_nothing(
    finished_run: Path, tmp_path: Path, fmtk_here, spoil, fragment: str
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / "metrics.json").unlink()  # unfinished: --resume has work to do
    try:
        spoil(run_dir)
        before = tree_snapshot(tmp_path)
        assert_one_line_error(fmtk_here("run", "--resume", "run", "--epochs", "3"), fragment)
        assert tree_snapshot(tmp_path) == before
    finally:
        writable_again(run_dir)


# --- fmtk.data.checks.check_splits: the splits a recipe's data gives, before training --------------


def digits_splits(**changes) -> types.SimpleNamespace:
    """scikit-learn's digits as uint8 8×8 images and int64 labels, in three TensorBatches splits of
    batch 16 (``changes`` replaces a split); the classes 0 … 9."""
    from sklearn.datasets import load_digits

    from fmtk.data.batches import DataSplits, TensorBatches

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.uint8).unsqueeze(1)
    labels = torch.tensor(digits.target)
    train, valid, test = (slice(0, 1000), slice(1000, 1400), slice(1400, None))
    splits = {
        "train": TensorBatches(images[train], labels[train], 16, shuffle=True, seed=3, scale=16.0),
        "valid": TensorBatches(images[valid], labels[valid], 16, scale=16.0),
        "test": TensorBatches(images[test], labels[test], 16, scale=16.0),
    }
    splits.update({name: make(images, labels) for name, make in changes.items()})
    return DataSplits(**splits, classes=[str(digit) for digit in range(10)])


def relabel(change):
    """A split of the first 64 digits whose labels are ``change(labels)``."""
    from fmtk.data.batches import TensorBatches

    return lambda images, labels: TensorBatches(images[:64], change(labels[:64].clone()), 16, scale=16.0)


def uint8_loader(images, labels):
    """A DataLoader of the raw uint8 images (not scaled to float)."""
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(images[:64], labels[:64]), batch_size=16)


def empty(images, labels):
    from fmtk.data.batches import TensorBatches

    return TensorBatches(images[:0], labels[:0], 16, scale=16.0)


CHECK_CASES = [
    ("empty train split", {"train": empty}, "recipe mine: the train split has no samples"),
    ("empty valid split", {"valid": empty}, "recipe mine: the valid split has no samples"),
    ("empty test split", {"test": empty}, "recipe mine: the test split has no samples"),
    ("a split whose one batch holds no sample",
     {"test": lambda images, labels: [(images[:0].float(), labels[:0])]},
     "recipe mine: the test split has no samples"),
    ("batches that are no pairs", {"valid": lambda images, labels: [(images[:4].float(),)]},
     "recipe mine: the valid split's batches are not (inputs, labels) pairs"),
    ("float labels", {"train": relabel(lambda labels: labels.float())},
     "recipe mine: the train split's labels are float32; labels must be an integer tensor (class indices)"),
    ("uint8 inputs", {"valid": uint8_loader},
     "recipe mine: the valid split's inputs are uint8; scale them to float, e.g. fmtk.data.scale_pixels"),
    ("a label past the classes", {"test": relabel(lambda labels: labels.masked_fill(labels == 3, 12))},
     "recipe mine: the test split's first batch has label 12, not one of the 10 classes (0 … 9)"),
    ("a negative label", {"train": relabel(lambda labels: labels.masked_fill(labels == 3, -1))},
     "recipe mine: the train split's first batch has label -1, not one of the 10 classes (0 … 9)"),
    ("a label past the classes after the first batch",
     {"valid": relabel(lambda labels: labels.index_fill(0, torch.tensor([40, 50]), 10))},
     "recipe mine: the valid split's sample 40 has label 10, not one of the 10 classes (0 … 9); out of "
     "range: 2 of its 64 labels"),
    # These four passed the checks and failed in the first step (or at len()) with a traceback.
    ("int32 labels", {"valid": relabel(lambda labels: labels.int())},
     "recipe mine: the valid split's labels are int32; cross-entropy takes int64 class indices: "
     "labels.long()"),
    ("labels of N×1", {"train": relabel(lambda labels: labels.unsqueeze(1))},
     "recipe mine: the train split's labels of a batch are 16×1; they must be one class index per sample "
     "(shape N: labels.view(-1))"),
    ("a generator", {"test": lambda images, labels: ((images[i:i + 16].float(), labels[i:i + 16])
                                                     for i in range(0, 64, 16))},
     "recipe mine: the test split (generator) has no length; give batches that can be iterated every epoch: "
     "a DataLoader or fmtk.data.TensorBatches"),
    ("dict batches", {"valid": lambda images, labels: [{"x": images[:4].float(), "y": labels[:4]}]},
     "recipe mine: the valid split's batches are dicts (x, y), not (inputs, labels) pairs"),
    ("float64 inputs", {"test": lambda images, labels: [(images[:4].double(), labels[:4])]},
     "recipe mine: the test split's inputs are float64; the model's weights are float32: make them float32 "
     "(e.g. .float())"),
]  # fmt: skip


@pytest.mark.parametrize("changes, message", [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES])
def test_check_splits_refuses_data_that_would_fail_only_later(changes: dict, message: str) -> None:
    from fmtk.data.checks import check_splits
    from fmtk.errors import FmtkError
    from fmtk.models import mlp

    with pytest.raises(FmtkError) as raised:
        check_splits("mine", mlp(64, [16], 10), digits_splits(**changes), torch.device("cpu"))
    assert str(raised.value) == message


def test_check_splits_refuses_a_model_whose_outputs_are_not_the_classes_and_a_loss_of_no_number() -> None:
    from fmtk.data.checks import check_splits
    from fmtk.errors import FmtkError
    from fmtk.models import mlp

    with pytest.raises(FmtkError, match="the model gives 5 outputs per sample but the data has 10 classes"):
        check_splits("mine", mlp(64, [16], 5), digits_splits(), torch.device("cpu"))
    flat = torch.nn.Sequential(
        mlp(64, [16], 1), torch.nn.Flatten(0)
    )  # N, not N × 1 (read "a scalar outputs")
    with pytest.raises(FmtkError, match="the model gives one number per sample but the data has 10 classes"):
        check_splits("mine", flat, digits_splits(), torch.device("cpu"))

    class TwoOutputs(torch.nn.Module):  # logits and features: the loss would get a tuple
        def __init__(self) -> None:
            super().__init__()
            self.mlp = mlp(64, [16], 10)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.mlp(x), x

    with pytest.raises(FmtkError, match="the model returns a tuple; it must return one tensor of class"):
        check_splits("mine", TwoOutputs(), digits_splits(), torch.device("cpu"))
    per_sample = torch.nn.CrossEntropyLoss(reduction="none")
    with pytest.raises(
        FmtkError, match=r"its loss gives a tensor of shape 2 on a batch of 2; it must give one number \("
    ):
        check_splits("mine", mlp(64, [16], 10), digits_splits(), torch.device("cpu"), per_sample)
    check_splits("mine", mlp(64, [16], 10), digits_splits(), torch.device("cpu"), torch.nn.CrossEntropyLoss())
    # torch's own losses that do not take class indices: one line, not torch's traceback
    for loss, said in [(torch.nn.BCEWithLogitsLoss(), "Target size"), (torch.nn.MSELoss(), "size of tensor"),
                       (torch.nn.NLLLoss(weight=torch.ones(5)), "weight tensor")]:  # fmt: skip
        with pytest.raises(FmtkError, match=rf"^recipe mine: its loss fails on the model's scores 2×10 and "
                                            rf"labels 2 of 2 valid samples: .*{said}"):  # fmt: skip
            check_splits("mine", mlp(64, [16], 10), digits_splits(), torch.device("cpu"), loss)


def test_class_names_that_are_no_list_or_come_twice_are_one_line() -> None:
    import dataclasses

    from fmtk.data.checks import check_splits
    from fmtk.errors import FmtkError
    from fmtk.models import mlp

    for classes, message in [("0123456789", "its classes are str; give a list of the class names"),
                             (["a", "b", "a", *"cdefghi"], "its class names a come twice")]:  # fmt: skip
        splits = dataclasses.replace(digits_splits(), classes=classes)
        with pytest.raises(FmtkError, match=f"^recipe mine: {message}"):
            check_splits("mine", mlp(64, [16], 10), splits, torch.device("cpu"))


def test_metrics_that_are_not_ignite_metrics_are_one_line() -> None:
    import dataclasses

    from ignite.metrics import Precision

    from fmtk.errors import FmtkError
    from fmtk.recipe_loading import load_recipe

    digits = load_recipe("digits_mlp")
    good = dataclasses.replace(digits, metrics=lambda recipe: {"precision": Precision(average=True)})
    assert list(good.make_metrics()) == ["precision"]
    bad = dataclasses.replace(digits, metrics=lambda recipe: {"top3": 3})
    with pytest.raises(FmtkError, match="recipe digits_mlp: metrics.. gives 'top3' as int, not an Ignite"):
        bad.make_metrics()


@pytest.mark.parametrize("training", [True, False])
def test_check_splits_passes_good_data_and_leaves_the_random_stream_and_the_mode(training: bool) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from fmtk.data.checks import check_splits
    from fmtk.models import mlp

    def shuffled_loader(images, labels):  # a DataLoader draws its base seed from torch's generator
        return DataLoader(TensorDataset(images[:200].float() / 16, labels[:200]), batch_size=16, shuffle=True)

    model = mlp(64, [16], 10).train(training)
    torch.manual_seed(5)
    check_splits("mine", model, digits_splits(train=shuffled_loader), torch.device("cpu"))
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3)) and model.training == training


def test_a_run_dir_name_too_long_and_a_config_of_an_unknown_recipe_are_one_line(tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * 300)
    assert_one_line_error(fmtk("run", "digits_mlp", "--run-dir", str(too_long)), "File name too long")
    old_config = Path(__file__).parent / "fixtures" / "previous_release_run" / "config.json"
    config = json.loads(old_config.read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "name": "no_such_recipe"}))
    result = fmtk("run", "--config", str(tmp_path / "config.json"), "--output-dir", str(tmp_path / "runs"))
    assert_one_line_error(result, "config.json names recipe 'no_such_recipe', which is no bundled recipe")
    assert not (tmp_path / "runs").exists()


def test_a_run_folder_whose_name_is_not_utf8_is_one_line_before_anything_is_made(tmp_path: Path) -> None:
    """TensorBoard's event files fail on such a folder after the data is loaded (a traceback)."""
    latin = os.fsdecode(b"caf\xe9")
    refused = fmtk("run", "digits_mlp", "--epochs", "1", "--run-dir", latin, cwd=tmp_path)
    assert_one_line_error(
        refused, "--run-dir caf", ": its name is not UTF-8, and TensorBoard cannot write into it"
    )
    refused = fmtk("run", "digits_mlp", "--epochs", "1", "--output-dir", f"{latin}/runs", cwd=tmp_path)
    assert_one_line_error(refused, "--output-dir caf", "/runs: its name is not UTF-8")
    assert os.listdir(tmp_path) == []


def test_an_empty_folder_given_as_a_run_says_what_leaves_one(tmp_path: Path) -> None:
    """A run killed while its data loaded leaves its --run-dir empty: its resume said only that the
    folder has no config.json."""
    (tmp_path / "killed").mkdir()
    before = tree_snapshot(tmp_path)
    for command in (["run", "--resume", "killed"], ["evaluate", "killed"]):
        assert_one_line_error(
            fmtk(*command, cwd=tmp_path),
            f"fmtk {' '.join(command)}: an empty folder, not a run: one stopped before it began",
            "start it again, as a new run (--run-dir takes an empty folder)",
        )
    assert tree_snapshot(tmp_path) == before
