"""fmtk export: ONNX and TorchScript files that answer as the run does, with the class names and
the image preparation inside; fmtk predict of such a file; the deploy example without torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import (
    USER_RECIPE,
    assert_one_line_error,
    fmtk,
    make_image_folder,
    make_mnist_like,
    make_photos,
    tree_snapshot,
)
from PIL import ExifTags, Image

import fmtk as toolkit
from fmtk.exported import load_exported, on_the_cpu
from fmtk.recipe_loading import load_recipe
from fmtk.training.evaluation import load_trained_model
from fmtk.weights import EMA_MODEL

ROOT = Path(__file__).resolve().parent.parent


def trained(tmp_path: Path, recipe: str, *args: str) -> Path:
    """``fmtk run RECIPE ARGS`` on the CPU into ``tmp_path/run``."""
    done = fmtk("run", recipe, "--device", "cpu", "--run-dir", "run", *args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "run"


def grey_and_colour_files(folder: Path, count: int = 5) -> list[Path]:
    """Image files of several modes and sizes (what a user hands fmtk predict), and a phone's JPEG
    with an EXIF orientation and a 16-bit grey PNG."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, size=(20 + 7 * index, 30, 3)).astype(np.uint8)
        image = Image.fromarray(pixels).convert(["RGB", "L", "RGBA"][index % 3])
        paths.append(folder / f"image{index}.png")
        image.save(paths[-1])
    phone = Image.fromarray(rng.integers(0, 256, size=(24, 40, 3)).astype(np.uint8))
    exif = phone.getexif()
    exif[ExifTags.Base.Orientation] = 6  # a phone held upright: the sensor's rows, turned on viewing
    paths.append(folder / "phone.jpg")
    phone.save(paths[-1], exif=exif)
    paths.append(folder / "grey16.png")
    Image.fromarray(rng.integers(0, 65536, size=(30, 26)).astype(np.uint16)).save(paths[-1])
    return paths


def predictions(*args: str, cwd: Path) -> list[dict]:
    done = fmtk("predict", *args, "--top", "3", "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_same_answers(exported: list[dict], run: list[dict]) -> None:
    """The same classes in the same order, probabilities equal to float tolerance."""
    for got, want in zip(exported, run, strict=True):
        assert got["file"] == want["file"]
        assert [p["class"] for p in got["predictions"]] == [p["class"] for p in want["predictions"]]
        for p, q in zip(got["predictions"], want["predictions"], strict=True):
            assert p["probability"] == pytest.approx(q["probability"], abs=1e-5)


RECIPES = {  # small runs of each bundled recipe, on small files of the real formats
    "digits_mlp": [],
    "mnist_dnn": ["--epochs", "1"],
    "fmnist_dnn": ["--epochs", "1"],
    "fmnist_cnn": ["--epochs", "1", "--set", "batch_size=64"],
    "catdog_vgg": ["--epochs", "1", "--set", "image_size=32"],
    "images": ["--epochs", "1", "--set", "image_size=32", "--set", "warmup_epochs=0"],
}


@pytest.fixture
def small_data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_mnist_like(root)
    make_mnist_like(root, "FashionMNIST")
    make_image_folder(root / "catdog" / "training_set", per_class=12)
    make_image_folder(root / "catdog" / "test_set", per_class=4, seed=1)
    make_photos(root / "photos", {"ants": 10, "bees": 10, "wasps": 10})
    return root


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_recipe_exports_to_both_formats_and_they_answer_as_the_run(
    recipe: str, small_data: Path, tmp_path: Path
) -> None:
    data_dir = small_data / "photos" if recipe == "images" else small_data
    run_dir = trained(tmp_path, recipe, "--data-dir", str(data_dir), *RECIPES[recipe])
    files = grey_and_colour_files(tmp_path / "photos")
    from_run = predictions(str(run_dir), *map(str, files), cwd=tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    for format, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        done = fmtk("export", str(run_dir), "--format", format, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        model_file = run_dir / f"model{suffix}"
        assert f"to {model_file}" in done.stdout and "top-1 agreement 100.00%" in done.stdout
        report = json.loads((run_dir / f"model{suffix}.json").read_text())
        assert report["max_abs_difference"] <= 1e-4 and report["top1_agreement"] == 1.0
        assert report["input_mismatch"] is None and "warning" not in done.stdout  # its image_input fits
        assert 0 < report["samples"] <= 64 and report["batch_sizes"] == [report["samples"], 1, 7]
        assert_same_answers(predictions(str(model_file), *map(str, files), cwd=tmp_path), from_run)
        metadata = load_exported(model_file)[1]
        assert metadata["classes"] == config["classes"] and metadata["recipe"] == recipe
        assert metadata["checkpoint"].startswith("best_checkpoint_")
        assert metadata["fmtk_version"] == toolkit.__version__
        if recipe in ("catdog_vgg", "images"):
            assert metadata["input"]["size"] == 32 and metadata["input"]["mean"] == [0.485, 0.456, 0.406]
        else:
            assert metadata["input"] == load_recipe(recipe).input().to_dict()


def test_the_onnx_file_holds_its_metadata_and_a_dynamic_batch(small_data: Path, tmp_path: Path) -> None:
    run_dir = trained(tmp_path, "mnist_dnn", "--epochs", "1", "--data-dir", str(small_data))
    done = toolkit.export(run_dir, out=tmp_path / "digits.onnx")
    model = onnx.load(str(done.path))
    metadata = json.loads({p.key: p.value for p in model.metadata_props}["fmtk"])
    assert metadata["input"] == {"size": 28, "channels": 1, "mean": [0.0], "std": [1.0], "scale": 255.0,
                                 "mode": "L", "resize": "bilinear", "layout": "NCHW",
                                 "orientation": "exif", "wide_grey": "min-max to 0-255"}  # fmt: skip
    assert metadata["output"] == "probabilities" and metadata["classes"] == [str(d) for d in range(10)]
    [images] = model.graph.input
    assert images.name == "images"
    assert [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim][1:] == [1, 28, 28]
    assert images.type.tensor_type.shape.dim[0].dim_param  # the batch size is free
    assert done.report == json.loads((tmp_path / "digits.onnx.json").read_text())
    assert done.report["batch_sizes"] == [64, 1, 7] and done.report["exporter"] == "dynamo"


def test_an_ema_run_with_flip_averaging_exports_what_evaluate_runs(tmp_path: Path) -> None:
    run_dir = trained(tmp_path, "digits_mlp", "--set", "ema_decay=0.9", "--set", "tta_flip=true")
    last = torch.load(next(run_dir.glob("last_checkpoint_*.pt")), weights_only=True)
    assert EMA_MODEL in last  # the last checkpoint holds the raw weights and the averaged ones
    onnx_file = toolkit.export(run_dir, checkpoint="last").path
    script_file = toolkit.export(run_dir, checkpoint="last", format="torchscript").path
    _, model, _, _ = load_trained_model(run_dir, "last", torch.device("cpu"))  # as evaluate: the EMA's
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        flip_averaged = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
        for path in (onnx_file, script_file):
            torch.testing.assert_close(load_exported(path)[0](x), flip_averaged, atol=1e-5, rtol=0)
        model.load_state_dict(last["model"])  # the raw weights answer differently
        raw = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert not torch.allclose(raw, flip_averaged, atol=1e-3)


def test_an_exported_model_is_evaluated_on_a_folder_as_its_run_is(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 12, "bees": 12, "wasps": 12})
    settings = ["--set", "image_size=32", "--set", "warmup_epochs=0", "--set", "tta_flip=true"]
    run_dir = trained(tmp_path, "images", "--data-dir", str(photos), "--epochs", "1", *settings)
    new = make_photos(tmp_path / "new", {"ants": 5, "wasps": 6}, seed=3)  # some of the classes
    (new / "ants" / "torn.jpg").write_bytes(b"\xff\xd8 not a whole JPEG")
    from_run = fmtk("evaluate", str(run_dir), "--folder", "new", cwd=tmp_path)
    assert from_run.returncode == 1 and "torn.jpg" in from_run.stderr  # read (left out), said, exit 1
    want = json.loads((run_dir / "evaluations" / "new-best" / "evaluation.json").read_text())
    for format, suffix in (("onnx", ".onnx"), ("torchscript", ".pt")):
        model_file = toolkit.export(run_dir, format=format, out=tmp_path / f"model{suffix}").path
        done = fmtk("evaluate", model_file.name, "--folder", "new", cwd=tmp_path)
        assert done.returncode == 1 and "torn.jpg" in done.stderr, done.stderr
        assert done.stdout.startswith(f"images, model{suffix}, 11 photos of new\n")
        place = tmp_path / "evaluations" / f"model{suffix}-new"
        assert f"wrote {Path('evaluations') / place.name}" in done.stdout
        got = json.loads((place / "evaluation.json").read_text())
        assert (got["accuracy"], got["confusion"], got["classes"]) == (
            want["accuracy"], want["confusion"], want["classes"]
        )  # fmt: skip
        assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)  # the cross-entropy of its probabilities
        assert got["unreadable"] == want["unreadable"] and got["checkpoint"] == model_file.name
        assert sorted(path.name for path in place.iterdir()) == sorted(
            path.name for path in (run_dir / "evaluations" / "new-best").iterdir()
        )
        evaluation = toolkit.evaluate(model_file, folder=new)  # the same from Python
        assert evaluation.accuracy == got["accuracy"] and evaluation.photos == 11
    (tmp_path / "evaluations").rename(tmp_path / "kept")
    (tmp_path / "evaluations").write_text("a file in the way")  # said before any photo is evaluated
    assert_one_line_error(fmtk("evaluate", "model.onnx", "--folder", "new", cwd=tmp_path),
                          "cannot write the evaluation into evaluations: a file, not a folder")  # fmt: skip
    with pytest.raises(toolkit.FmtkError, match=r"^folder=nowhere: no such folder"):  # named as a keyword
        toolkit.evaluate(model_file, folder="nowhere")
    assert_one_line_error(fmtk("evaluate", "model.onnx", cwd=tmp_path),
                          "is evaluated on a labelled photo folder: give --folder")  # fmt: skip
    assert_one_line_error(fmtk("evaluate", "model.onnx", "--folder", "new", "--data-dir", ".", cwd=tmp_path),
                          "--data-dir goes with a run folder; model.onnx is an exported model")  # fmt: skip
    with pytest.raises(toolkit.FmtkError, match=r"^checkpoint: for a run folder; .*model.pt is an"):
        toolkit.evaluate(tmp_path / "model.pt", folder=new, checkpoint="last")


DEPLOY_BLOCKER = "raise ImportError('{name} is not installed here')\n"


def test_the_deploy_script_classifies_without_torch_or_fmtk(tmp_path: Path) -> None:
    run_dir = trained(tmp_path, "digits_mlp")
    model_file = toolkit.export(run_dir).path
    files = grey_and_colour_files(tmp_path / "photos", 3)
    text = (ROOT / "docs" / "deploy.md").read_text()
    (tmp_path / "classify.py").write_text(re.findall(r"```python\n(.*?)```", text, re.DOTALL)[0])
    blocked = tmp_path / "blocked"
    for name in ("torch", "fmtk", "torchvision"):
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(DEPLOY_BLOCKER.format(name=name))
    env = {**os.environ, "PYTHONPATH": str(blocked)}
    check = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "torch is not installed here" in check.stderr
    done = subprocess.run(
        [sys.executable, "classify.py", str(model_file), *map(str, files)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    from_run = fmtk("predict", str(run_dir), *map(str, files), cwd=tmp_path).stdout.splitlines()
    lines = done.stdout.splitlines()  # "FILE: CLASS PROBABILITY", as fmtk predict prints them
    assert [line.rsplit(" ", 1)[0] for line in lines] == [line.rsplit(" ", 1)[0] for line in from_run]
    for line, want in zip(lines, from_run, strict=True):
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(float(want.rsplit(" ", 1)[1]), abs=1.5e-3)


UNTRACEABLE = """
import torch
from torch import nn
from fmtk import Recipe
from fmtk.data import ImageInput, load_digits_splits
from fmtk.models import mlp


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = mlp(64, [16], 10)

    def forward(self, x):
        if x.mean() > 0.5:  # data-dependent control flow
            return self.net(x)
        return self.net(x) * 2


recipe = Recipe(
    name="branchy",
    description="a model with a branch on its input",
    model=lambda recipe: Branchy(),
    data=lambda recipe, data_dir, device: load_digits_splits(recipe.batch_size, device, recipe.seed),
    image_input=lambda recipe: ImageInput(8, channels=1),
    epochs=1,
)
"""


def test_a_model_the_exporters_cannot_trace_is_one_line_with_their_reasons(tmp_path: Path) -> None:
    (tmp_path / "branchy.py").write_text(UNTRACEABLE)
    run_dir = trained(tmp_path, "branchy.py")
    before = tree_snapshot(run_dir)
    done = fmtk("export", str(run_dir), cwd=tmp_path)
    assert_one_line_error(
        done, "cannot export branchy to ONNX: dynamo exporter: GuardOnDataDependentSymNode",
        "TorchScript-based exporter: TracerWarning: Converting a tensor to a Python boolean",
    )  # fmt: skip
    assert "the dynamo exporter failed (GuardOnDataDependentSymNode" in done.stdout
    script = fmtk("export", str(run_dir), "--format", "torchscript", cwd=tmp_path)
    assert_one_line_error(script, "cannot export branchy to TorchScript: TracerWarning")
    assert tree_snapshot(run_dir) == before  # no file, no partial file


MISPREPARED = (  # samples 0…1, image files prepared as if they were standardised around 0.5
    USER_RECIPE.replace('"my_digits"', '"misprepared"')
    .replace("import load_digits_splits", "import ImageInput, load_digits_splits")
    .replace("epochs=2,", "image_input=lambda recipe: ImageInput(8, 1, mean=(0.5,), std=(0.1,)), epochs=1,")
)


def test_an_image_input_unlike_the_data_is_said_at_export(tmp_path: Path) -> None:
    """The parity check feeds both models the valid split's tensors, so it passed a recipe whose
    image_input prepares files otherwise than its data() prepares samples: its answers to files
    were wrong, its export checked."""
    (tmp_path / "misprepared.py").write_text(MISPREPARED)
    run_dir = trained(tmp_path, "misprepared.py")
    done = fmtk("export", str(run_dir), "--format", "torchscript", cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the file is the run's model all the same
    said = ("the run's valid inputs span 0.00…1.00 in channel 0, where image files prepared by the recipe's "
            "image_input (scale 255, mean 0.5, std 0.1) span -5.00…5.00: its answers to image files may be "
            "wrong")  # fmt: skip
    assert f"warning: {said}" in done.stdout
    assert json.loads((run_dir / "model.pt.json").read_text())["input_mismatch"].startswith(said)


@pytest.fixture
def digits_run(tmp_path: Path) -> Path:
    return trained(tmp_path, "digits_mlp")


def test_an_onnx_model_runs_on_as_many_threads_as_torch(digits_run: Path, tmp_path: Path) -> None:
    # onnxruntime's own default is every physical core, whatever --threads or a CPU quota says. Its
    # session makes a thread per intra-op thread beyond the first (counted in /proc/self/task).
    path = toolkit.export(digits_run, out=tmp_path / "digits.onnx").path
    threads = torch.get_num_threads()
    load_exported(path)  # onnxruntime's own first threads
    made = {}
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            before = len(os.listdir("/proc/self/task"))
            session = load_exported(path)
            made[count] = len(os.listdir("/proc/self/task")) - before
            del session
    finally:
        torch.set_num_threads(threads)
    assert made[2] == made[1] + 1


def test_predict_with_a_checkpoint_file_names_the_command_that_takes_it(
    digits_run: Path, tmp_path: Path
) -> None:
    """It said "not a TorchScript file (… your checkpoint file is corrupted …)" of a sound checkpoint."""
    grey_and_colour_files(tmp_path, 1)[0].rename(tmp_path / "image.png")
    checkpoint = next(digits_run.glob("best_checkpoint_*.pt"))
    assert_one_line_error(fmtk("predict", str(checkpoint), "image.png", cwd=tmp_path),
                          f"{checkpoint}: an fmtk checkpoint, not an exported model: fmtk predict "
                          f"{digits_run.resolve()} IMAGE --checkpoint {checkpoint}")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["export", "nowhere"], ["fmtk export nowhere: no such run folder"]),
        (["export", "."], ["fmtk export .: a folder of runs, not a run: name one of them"]),
        (["export", "run", "--format", "tflite"], ["'tflite' is not one of 'onnx', 'torchscript'"]),
        (["export", "run", "--out", "model.bin"], ["--out model.bin: an ONNX file ends in .onnx"]),
        (["export", "run", "--out", "no/such/model.onnx"], ["--out no/such/model.onnx: no folder no/such"]),
        (["export", "run", "--checkpoint", "garbled.pt"], ["garbled.pt"]),
        (["predict", "garbled.pt", "image.png"], ["garbled.pt: not a TorchScript file"]),
        (["predict", "run/config.json", "image.png"], ["run/config.json: not an exported model"]),
        (["predict", "model.onnx", "image.png"], ["fmtk predict model.onnx: no such model file"]),
        (
            ["predict", "garbled.pt", "image.png", "--checkpoint", "last"],
            ["--checkpoint goes with a run folder"],
        ),
        (["predict", "garbled.pt", "image.png", "--device", "cpu:1"], ["--device cpu:1: the CPU has no"]),
    ],
    ids=[
        "not a run",
        "no config",
        "unknown format",
        "wrong suffix",
        "no folder",
        "garbled checkpoint",
        "predict a checkpoint file",
        "predict a json file",
        "predict a missing model file",
        "predict a model file with --checkpoint",
        "predict a model file on a device that is not there",
    ],  # fmt: skip
)
def test_bad_exports_are_one_line_and_change_nothing(
    digits_run: Path, tmp_path: Path, args: list[str], fragments: list[str]
) -> None:
    (tmp_path / "garbled.pt").write_bytes(b"not a checkpoint at all")
    grey_and_colour_files(tmp_path, 1)[0].rename(tmp_path / "image.png")
    before = tree_snapshot(tmp_path)
    assert_one_line_error(fmtk(*args, cwd=tmp_path), *fragments)
    assert tree_snapshot(tmp_path) == before


def test_the_python_api_names_an_unknown_format(digits_run: Path) -> None:
    with pytest.raises(toolkit.FmtkError, match="^format=tflite: unknown \\(choose onnx or torchscript\\)"):
        toolkit.export(digits_run, format="tflite")


def test_an_existing_file_is_never_overwritten(digits_run: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.onnx").write_text("a file of the user's")
    assert_one_line_error(
        fmtk("export", "run", "--out", "mine.onnx", cwd=tmp_path),
        "mine.onnx exists and is not overwritten",
    )
    assert (tmp_path / "mine.onnx").read_text() == "a file of the user's"
    assert fmtk("export", "run", cwd=tmp_path).returncode == 0
    again = fmtk("export", "run", cwd=tmp_path)
    assert_one_line_error(again, "run/model.onnx exists")


@pytest.mark.parametrize("out", [[], ["--out", "ro/model.onnx"], ["--out", "ro/model.pt"]])
def test_an_export_into_a_folder_it_cannot_write_is_one_line_before_exporting(
    digits_run: Path, tmp_path: Path, out: list[str]
) -> None:
    from test_bad_input import unwritable_folder, writable_again

    folder = unwritable_folder(digits_run if not out else tmp_path / "ro")
    try:  # (before: both exporters' failures, then a traceback from removing the partial file)
        where = "run/model.onnx: the folder run" if not out else f"{out[1]}: the folder ro"
        assert_one_line_error(
            fmtk("export", "run", *out, cwd=tmp_path), f"cannot write {where} is not writable"
        )
    finally:
        writable_again(folder)


def test_over_the_tolerance_the_export_fails_and_leaves_no_file(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fmtk.exporting.TOLERANCE", 0.0)  # no float32 graph matches to the last bit
    before = tree_snapshot(tmp_path)
    done = fmtk("export", "run", cwd=tmp_path)
    assert_one_line_error(
        done, "the exported onnx model differs from the run by up to", "nothing was written"
    )
    assert tree_snapshot(tmp_path) == before


def test_without_the_onnx_packages_the_command_says_what_to_install(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    done = fmtk("export", "run", cwd=tmp_path)
    assert_one_line_error(done, "needs onnxscript: pip install onnx onnxscript onnxruntime")
    assert fmtk("export", "run", "--format", "torchscript", cwd=tmp_path).returncode == 0


def test_when_the_dynamo_exporter_fails_the_torchscript_based_one_is_used_and_said(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_export = torch.onnx.export

    def dynamo_fails(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("an operator the dynamo exporter lacks")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    done = fmtk("export", "run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = "the dynamo exporter failed (RuntimeError: an operator the dynamo exporter lacks); using the"
    assert f"{said} TorchScript-based one" in done.stdout.splitlines()
    report = json.loads((digits_run / "model.onnx.json").read_text())
    assert report["exporter"] == "torchscript-based" and report["top1_agreement"] == 1.0
    files = grey_and_colour_files(tmp_path / "photos", 3)
    from_file = predictions(str(digits_run / "model.onnx"), *map(str, files), cwd=tmp_path)
    assert_same_answers(from_file, predictions(str(digits_run), *map(str, files), cwd=tmp_path))


def test_a_run_without_a_checkpoint_is_one_line(digits_run: Path, tmp_path: Path) -> None:
    for checkpoint in digits_run.glob("*checkpoint_*.pt"):
        checkpoint.unlink()
    assert_one_line_error(fmtk("export", "run", cwd=tmp_path), "expected one best_checkpoint_*.pt, found 0")
    assert not (digits_run / "model.onnx").exists()


def test_a_run_copied_elsewhere_exports_with_its_data_given(digits_run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(digits_run, moved)
    done = fmtk("export", "moved", "--checkpoint", "last", "--out", "last.pt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert load_exported(tmp_path / "last.pt")[1]["checkpoint"].startswith("last_checkpoint_")


def test_an_exported_model_takes_auto_as_the_cpu_also_on_a_gpu_machine(tmp_path: Path) -> None:
    # On a GPU machine "auto" resolves to CUDA: predict and evaluate of a model file refused their own
    # default there (before), as only an explicit --device cuda must be.
    on_the_cpu(tmp_path / "model.onnx", "auto", torch.device("cuda"))
    with pytest.raises(toolkit.FmtkError, match=r"^device cuda: an exported model runs on the CPU here"):
        on_the_cpu(tmp_path / "model.onnx", "cuda", torch.device("cuda"))
