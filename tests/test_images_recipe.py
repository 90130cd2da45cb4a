"""The `images` recipe: a user's folder of photos, any torchvision architecture, starting weights
from torchvision's hub cache, a file or an earlier run (fmtk.weights)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from conftest import assert_one_line_error, fmtk, fmtk_process, make_photos, tree_snapshot
from PIL import Image

import fmtk as fmtk_api
from fmtk.data.folders import find_photo_splits
from fmtk.data.image_input import DECODERS, ImageInput, read_pixels
from fmtk.data.images import photo_bar, photo_bars
from fmtk.device import inference_threads
from fmtk.recipe_loading import resolve_recipe
from fmtk.training import evaluation
from fmtk.training.parts import recipe_parts

CPU = torch.device("cpu")
SMALL = ["--set", "image_size=32", "--set", "warmup_epochs=0", "--device", "cpu"]
RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's file name of ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos") / "bugs", {"ants": 10, "bees": 10, "wasps": 10})


@pytest.fixture(scope="module")
def trained(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """images on the photos for 2 epochs from scratch: (run folder, what the run printed)."""
    run_dir = tmp_path_factory.mktemp("runs") / "bugs"
    done = fmtk("run", "images", "--data-dir", str(photos), "--epochs", "2", "--run-dir", str(run_dir),
                *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return run_dir, done.stdout


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch hub cache ($TORCH_HOME) holding a resnet18 weights file under torchvision's name."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(7)
    torch.save(torchvision.models.resnet18().state_dict(), folder / RESNET18_FILE)
    return folder / RESNET18_FILE


def parts_of(photos: Path, **values):
    return recipe_parts(resolve_recipe("images", None, {"image_size": 32, **values}), photos, CPU)


def test_a_photo_folder_trains_with_its_class_names_and_predict_answers_with_them(
    trained: tuple[Path, str], photos: Path
) -> None:
    run_dir, printed = trained
    config = json.loads((run_dir / "config.json").read_text())
    assert config["classes"] == config["options"]["classes"] == ["ants", "bees", "wasps"]
    assert config["options"]["image_size"] == 32 and config["started_from"] is None
    # 20 % of 30 photos tested, 20 % of the other 24 validated (scikit-learn rounds up: 5)
    counts = "train 19 (ants 7, bees 6, wasps 6) · valid 5 (ants 1, bees 2, wasps 2) · test 6 ("
    [line] = [line for line in printed.splitlines() if line.startswith(counts)]
    assert line.endswith("(ants 2, bees 2, wasps 2)")
    predicted = fmtk("predict", str(run_dir), str(photos / "bees" / "bees3.png"), "--top", "3")
    assert predicted.returncode == 0, predicted.stderr
    photo, _, answer = predicted.stdout.strip().partition(": ")
    assert photo.endswith("bees3.png") and set(answer.split()[::2]) == {"ants", "bees", "wasps"}
    assert predicted.stderr == ""
    more = fmtk("predict", str(run_dir), str(photos / "bees"), "--top", "5")  # of 3 classes
    assert more.returncode == 0 and more.stdout.count("wasps") == len(list((photos / "bees").iterdir()))
    assert more.stderr == "--top 5: the model has 3 classes; each image shows all 3\n"
    evaluated = fmtk("evaluate", str(run_dir))  # the run's own photo folder, from config.json
    assert evaluated.returncode == 0 and "wasps" in evaluated.stdout, evaluated.stderr


def test_default_weights_are_read_from_the_torch_hub_cache_and_the_head_is_new(
    photos: Path, hub_cache: Path
) -> None:
    parts = parts_of(photos, weights="DEFAULT")
    assert parts.started_from == "loaded 120 of 122 tensors from resnet18 IMAGENET1K_V1; new: fc 512→3"
    saved = torch.load(hub_cache, weights_only=True)
    assert torch.equal(parts.model.conv1.weight, saved["conv1.weight"])
    assert torch.equal(parts.model.layer4[1].bn2.running_var, saved["layer4.1.bn2.running_var"])
    assert parts.model.fc.out_features == 3 and parts.recipe.options["image_size"] == 32


def test_the_weights_set_the_default_image_size_and_normalisation(photos: Path, hub_cache: Path) -> None:
    parts = recipe_parts(resolve_recipe("images", None, {"weights": "IMAGENET1K_V1"}), photos, CPU)
    assert parts.recipe.options["image_size"] == 224 and parts.data.train.images.shape[-1] == 224
    assert parts.started_from.endswith("; new: fc 512→3; photos at 224 px (image_size=0)")  # said
    assert torch.allclose(parts.data.train.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_a_run_with_weights_records_them_and_resumes_without_them(
    photos: Path, hub_cache: Path, tmp_path: Path
) -> None:
    done = fmtk("run", "images", "--data-dir", str(photos), "--epochs", "1", "--set", "weights=DEFAULT",
                "--set", "schedule=none", "--run-dir", str(tmp_path / "r"), *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = "loaded 120 of 122 tensors from resnet18 IMAGENET1K_V1; new: fc 512→3"
    assert line in done.stdout.splitlines()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["started_from"] == line
    hub_cache.unlink()  # offline from now on: a resume and predict need the run's own weights only
    resumed = fmtk("run", "--resume", str(tmp_path / "r"), "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["started_from"] == line


def test_a_resume_goes_on_with_the_photos_it_trained_on_wherever_they_are_now(
    photos: Path, tmp_path: Path
) -> None:
    # Before, a resume on other photos went on silently: new splits, epochs of other data in one run.
    done = fmtk("run", "images", "--data-dir", str(photos), "--epochs", "1", "--set", "schedule=none",
                "--run-dir", str(tmp_path / "r"), *SMALL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    splits = json.loads((tmp_path / "r" / "config.json").read_text())["splits"]
    assert sum(splits["train"].values()) + sum(splits["valid"].values()) + sum(splits["test"].values()) == 30
    more, swapped = tmp_path / "more", tmp_path / "swapped"
    for copy in (more, swapped):
        shutil.copytree(photos, copy)
    shutil.copy(photos / "ants" / "ants2.jpg", more / "ants" / "ants10.jpg")
    train = {Path(name).name for name in np.load(tmp_path / "r" / "train_fingerprints.npz")["names"]}
    changed = next(path for path in sorted((swapped / "bees").iterdir()) if path.name in train)
    Image.open(changed).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(changed)
    run = tmp_path / "r"
    warm = f"fmtk run --config {run / 'config.json'} --set weights={run} --set epochs=N"
    recorded = [f"{name} {sum(counts.values())} ({', '.join(f'{c} {n}' for c, n in counts.items())})"
                for name, counts in splits.items()]  # fmt: skip
    trained = sum(splits["train"].values())
    differs = f"1 of its {trained} training photos differs from those it trained on)"
    for folder, why in [(more, [f"; it trained on {split})" for split in recorded]), (swapped, [differs])]:
        before = tree_snapshot(run)
        refused = fmtk("run", "--resume", str(run), "--epochs", "2", "--data-dir", str(folder))
        again = f"; resume it with the data it trained on under {photos} (--data-dir: where it is now)"
        assert_one_line_error(refused, f"{folder}: not the data this run trained on (", again, warm)
        assert any(fragment in refused.stderr for fragment in why), refused.stderr
        assert tree_snapshot(run) == before
    broken = tmp_path / "broken"  # --set skip_bad_images=true, a new run's way on, is refused by --resume
    shutil.copytree(photos, broken)
    (broken / "ants" / "ants3.png").write_bytes(b"")
    refused = fmtk("run", "--resume", str(run), "--epochs", "2", "--data-dir", str(broken))
    assert_one_line_error(refused, "ants3.png (", ": the run trained on them: restore them as they were to "
                          "resume it, or leave them out in a new run from its weights (--set "
                          "skip_bad_images=true)")  # fmt: skip
    moved = tmp_path / "moved"
    shutil.copytree(photos, moved)
    resumed = fmtk("run", "--resume", str(tmp_path / "r"), "--epochs", "2", "--data-dir", str(moved))
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data_dir"] == str(moved)


def test_a_cut_short_weights_file_in_the_hub_cache_is_one_line_saying_to_delete_it(
    photos: Path, hub_cache: Path, tmp_path: Path
) -> None:
    hub_cache.write_bytes(hub_cache.read_bytes()[:100_000])  # a download cut short, copied by hand
    done = fmtk("run", "images", "--data-dir", str(photos), "--set", "weights=DEFAULT", "--output-dir", "out",
                *SMALL, cwd=tmp_path)  # fmt: skip
    assert_one_line_error(done, f"resnet18 IMAGENET1K_V1: {hub_cache} is not a readable weights file (",
                          "delete it, and torchvision downloads it again")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_offline_with_an_empty_hub_cache_is_one_line_naming_the_file_and_folder(
    photos: Path, tmp_path: Path
) -> None:
    # A real process: urllib reads the proxy (a closed port, so nothing is downloaded) at start.
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9"}
    done = fmtk_process("run", "images", "--data-dir", str(photos), "--set", "weights=DEFAULT",
                        "--output-dir", "out", *SMALL, cwd=tmp_path, env=env)  # fmt: skip
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert_one_line_error(done, "resnet18 IMAGENET1K_V1: cannot download", f"put {RESNET18_FILE} in {folder}")
    assert not list((tmp_path / "out").glob("*/*")), "a failed start left a run folder"


def test_a_warm_start_from_a_run_folder_or_a_file_loads_every_tensor(
    trained: tuple[Path, str], photos: Path, tmp_path: Path
) -> None:
    run_dir, _ = trained
    [best] = run_dir.glob("best_checkpoint_*.pt")
    parts = parts_of(photos, weights=str(run_dir))
    assert parts.started_from == f"loaded 122 of 122 tensors from {best}"
    weights = torch.load(best, weights_only=True)["model"]
    assert torch.equal(parts.model.fc.weight, weights["fc.weight"])
    torch.save({f"module.{key}": value for key, value in weights.items()}, tmp_path / "ddp.pt")
    assert parts_of(photos, weights=str(tmp_path / "ddp.pt")).started_from.startswith("loaded 122 of 122")
    deeper = parts_of(photos, weights=str(run_dir), arch="resnet34")  # another architecture: most is new
    assert deeper.started_from == (
        f"loaded 122 of 218 tensors from {best}; new: layer1.2.conv1, layer1.2.bn1, layer1.2.conv2, "
        "layer1.2.bn2, and 28 more modules (config.json's head lists their tensors)"
    )
    assert len(deeper.head) == 96
    shallower = torchvision.models.resnet34(num_classes=3).state_dict()  # a deeper arch's file: it says so
    torch.save(shallower, tmp_path / "resnet34.pt")
    assert parts_of(photos, weights=str(tmp_path / "resnet34.pt")).started_from == (
        f"loaded 122 of 122 tensors from {tmp_path / 'resnet34.pt'}; 96 of its 218 tensors fit no layer of "
        "the model: left out"
    )


def test_balanced_class_weights_weight_the_training_loss_by_inverse_frequency(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"many": 20, "few": 5})
    parts = parts_of(photos, class_weights="balanced", label_smoothing=0.0)
    train = torch.bincount(parts.data.train.labels).float()  # few: 3, many: 13 (alphabetical)
    assert torch.allclose(parts.train_loss.weight, train.sum() / (2 * train))
    assert parts.loss_fn is not parts.train_loss and getattr(parts.loss_fn, "weight", None) is None


@pytest.mark.parametrize(
    ("settings", "fragments"),
    [
        (["arch=resnet81"], ["arch 'resnet81' is not a torchvision classification model", "resnet18"]),
        (["weights=IMAGENET1K_V9"], ["weights 'IMAGENET1K_V9': resnet18 has no such torchvision weights"]),
        (["weights=nowhere/model.pt"], ["weights nowhere/model.pt: no such file or run folder"]),
        (["class_weights=even"], ["class_weights must be one of none, balanced, got 'even'"]),
        (["test_share=1.5"], ["test_share must be in (0, 1), got 1.5"]),
        (["weights=DEFAULT", "freeze_epochs=15"], ["must be >= 0 and below epochs (15:", "got 15"]),
        (
            ["freeze_epochs=1"],
            ["freeze_epochs and backbone_lr_scale fine-tune from starting weights; set weights"],
        ),
        (["weights=DEFAULT", "backbone_lr_scale=0"], ["backbone_lr_scale must be > 0, got 0.0"]),
        (
            ["classes=ants,bees"],
            ["its class folders are ants, bees, wasps, not classes=ants,bees as given; leave classes out"],
        ),  # (said once every photo was decoded)
    ],
    ids=[
        "unknown_arch",
        "unknown_weights",
        "missing_file",
        "class_weights",
        "test_share",
        "freeze_all",
        "freeze_no_weights",
        "backbone_lr_zero",
        "other_classes",
    ],  # fmt: skip
)
def test_bad_values_are_one_line_and_leave_no_run(
    photos: Path, tmp_path: Path, settings: list[str], fragments: list[str]
) -> None:
    sets = [item for setting in settings for item in ("--set", setting)]
    done = fmtk("run", "images", "--data-dir", str(photos), "--output-dir", "out", *sets, *SMALL,
                cwd=tmp_path)  # fmt: skip
    assert_one_line_error(done, *fragments)
    assert not (tmp_path / "out").exists()


def test_a_one_epoch_run_with_a_warm_up_of_one_epoch_is_refused_before_the_photos_are_read(
    photos: Path, tmp_path: Path
) -> None:
    """The recipe's own warm-up keeps its share of a shorter run (test_training_options); one given
    with the run is checked."""
    done = fmtk("run", "images", "--data-dir", str(photos), "--epochs", "1", "--set", "image_size=32",
                "--set", "warmup_epochs=1", "--output-dir", "out", cwd=tmp_path)  # fmt: skip
    assert_one_line_error(done, "warmup_epochs 1.0 leaves no epoch of the 1 for the cosine schedule",
                          "--set warmup_epochs=0")  # fmt: skip
    assert done.stdout == "" and not (tmp_path / "out").exists()  # no split counts, no run folder named


@pytest.mark.parametrize(("arch", "size"), [("googlenet", 32), ("inception_v3", 75)])
def test_the_architectures_with_auxiliary_heads_train_from_scratch_and_from_imagenet_weights(
    photos: Path, hub_cache: Path, tmp_path: Path, arch: str, size: int
) -> None:
    # Before, training mode gave the auxiliary heads' outputs with the logits: a TypeError in the loss.
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    imagenet = torchvision.models.get_model(arch, aux_logits=True, init_weights=False)  # as torchvision's
    torch.save(imagenet.state_dict(), hub_cache.parent / Path(weights.url).name)
    small = ["--set", f"arch={arch}", "--set", f"image_size={size}", "--set", "warmup_epochs=0",
             "--epochs", "1", "--device", "cpu"]  # fmt: skip
    for name, start in [("scratch", []), ("pretrained", ["--set", "weights=DEFAULT"])]:
        done = fmtk("run", "images", "--data-dir", str(photos), *small, *start, "--run-dir", name,
                    cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
    pretrained = tmp_path / "pretrained"
    line = json.loads((pretrained / "config.json").read_text())["started_from"]
    aux = {"googlenet": 20, "inception_v3": 14}[arch]  # the auxiliary heads' tensors: left out
    assert line.startswith("loaded ") and line.endswith(
        f"from {arch} IMAGENET1K_V1; new: fc {imagenet.fc.in_features}→3; {aux} of its "
        f"{len(imagenet.state_dict())} tensors fit no layer of the model: left out"
    )
    best = torch.load(next(pretrained.glob("best_*.pt")), weights_only=True)["model"]
    assert not [name for name in best if name.startswith(("aux", "AuxLogits"))]


def test_weights_that_fit_nothing_are_one_line(
    trained: tuple[Path, str], photos: Path, tmp_path: Path
) -> None:
    run_dir, _ = trained
    done = fmtk("run", "images", "--data-dir", str(photos), "--set", "arch=mobilenet_v3_small",
                "--set", f"weights={run_dir}", "--output-dir", "out", *SMALL, cwd=tmp_path)  # fmt: skip
    assert_one_line_error(done, "none of its 122 tensors fits the model", "another architecture?")
    assert not list((tmp_path / "out").glob("*/*"))


def test_summary_needs_the_class_names_and_says_where_they_come_from(photos: Path) -> None:
    missing = fmtk("summary", "images")
    assert_one_line_error(missing, "the class names come from the photos (--data-dir PHOTOS)")
    shown = fmtk("summary", "images", "--set", "classes=a,b,c", "--set", "arch=mobilenet_v3_small")
    assert shown.returncode == 0 and "input: [3, 224, 224]" in shown.stdout, shown.stderr
    assert shown.stderr == (  # the model may depend on the data (a user's recipe: its class count)
        "note: images sets some values from its data (from_data); without --data-dir the model is made "
        "with the values given (the recipe's own, or --set)\n"
    )
    # --data-dir, as the line says: the folder's 3 classes size the head
    folder = fmtk("summary", "images", "--data-dir", str(photos), "--set", "arch=resnet18")
    assert folder.returncode == 0 and folder.stderr == "", folder.stderr
    assert folder.stdout.splitlines()[-4].split()[:3] == ["fc", "Linear", "[1,"] and "3]" in folder.stdout
    assert_one_line_error(
        fmtk("summary", "images", "--data-dir", str(photos / "none")), "photo folder not found"
    )
    one = fmtk("summary", "images", "--set", "classes=a")
    assert_one_line_error(one, "recipe images: classes ['a']: a classifier needs two or more")
    assert one.stdout == ""  # the line alone, as for a folder of one class


FINE_TUNING = {"weights": "DEFAULT", "freeze_epochs": 1, "backbone_lr_scale": 0.1, "epochs": 3,
               "image_size": 32, "warmup_epochs": 0.0, "batch_size": 4}  # fmt: skip


def test_fine_tuning_trains_the_head_alone_then_the_rest_at_a_scaled_lr(
    photos: Path, hub_cache: Path, tmp_path: Path
) -> None:
    from ignite.engine import Events

    from fmtk.training.build import build_run

    said: list[str] = []
    run = build_run("images", tmp_path / "r", device="cpu", data_dir=photos, echo=said.append, **FINE_TUNING)
    said_line = "fine-tuning: the new head trains alone for 1 epoch, then the rest at 0.1 × the head's lr"
    assert f"{said_line} (the epoch line's lr is the head's)" in said
    seen = {"conv1": [], "bn1": [], "fc": [], "lr": []}

    @run.trainer.on(Events.ITERATION_COMPLETED)
    def lrs(engine) -> None:  # after the step: the LRs it used
        seen["lr"].append((engine.state.epoch, *(group["lr"] for group in run.optimizer.param_groups)))

    @run.trainer.on(Events.EPOCH_COMPLETED)
    def weights(engine) -> None:
        model = run.model
        for name, tensor in (
            ("conv1", model.conv1.weight),
            ("bn1", model.bn1.running_mean),
            ("fc", model.fc.weight),
        ):
            seen[name].append(tensor.detach().clone())

    saved = torch.load(hub_cache, weights_only=True)
    run.run()
    assert torch.equal(seen["conv1"][0], saved["conv1.weight"])  # frozen in epoch 1, BatchNorm too
    assert torch.equal(seen["bn1"][0], saved["bn1.running_mean"])
    assert not torch.equal(seen["conv1"][1], seen["conv1"][0]) and not torch.equal(
        seen["bn1"][1], seen["bn1"][0]
    )
    assert not torch.equal(
        seen["fc"][0], torch.load(tmp_path / "r" / "last_checkpoint_3.pt")["model"]["fc.weight"]
    )
    for epoch, head_lr, rest_lr in seen["lr"]:
        assert head_lr > 0 and rest_lr == pytest.approx(head_lr * (0.0 if epoch == 1 else 0.1))
    assert {epoch for epoch, *_ in seen["lr"]} == {1, 2, 3}  # the cosine schedule moved both
    assert len({head_lr for _, head_lr, _ in seen["lr"]}) > 3
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["head"] == ["fc.weight", "fc.bias"] and config["freeze_epochs"] == 1


KILLER = """
import os, signal
from ignite.engine import Events

def at(iteration):
    def attach(run):
        kill = lambda _: os.kill(os.getpid(), signal.SIGKILL)
        run.trainer.add_event_handler(Events.ITERATION_COMPLETED(once=iteration), kill)
    return attach

in_epoch_2, in_epoch_3 = at(8), at(13)  # 5 steps an epoch, 2 frozen: either side of the unfreeze
"""


@pytest.mark.slow  # SIGKILL needs processes of their own
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("kill", ["in_epoch_2", "in_epoch_3"])
def test_a_fine_tuning_run_killed_either_side_of_the_unfreeze_resumes_exactly(
    photos: Path, hub_cache: Path, tmp_path: Path, kill: str, processes: int
) -> None:
    (tmp_path / "killer.py").write_text(KILLER)
    values = {**FINE_TUNING, "freeze_epochs": 2, "epochs": 4}  # a checkpoint on either side
    sets = [item for key, value in values.items() for item in ("--set", f"{key}={value}")]
    common = ["run", "images", "--data-dir", str(photos), *sets, "--device", "cpu"]
    # Two processes: each rank kills itself at the same step, as a SIGKILL of the whole job would.
    command, spawn = (fmtk, []) if processes == 1 else (fmtk_process, ["--nproc-per-node", "2"])
    straight = command(*common, *spawn, "--run-dir", "straight", cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    killed = fmtk_process(
        *common, *spawn, "--run-dir", "killed", "--handler", f"killer:{kill}", cwd=tmp_path, env=env
    )
    assert killed.returncode == (-9 if processes == 1 else 256 - 9), killed.stderr  # the launcher exits -9
    resumed = command("run", "--resume", "killed", *spawn, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming after epoch {int(kill[-1]) - 1}" in resumed.stdout
    assert json.loads((tmp_path / "killed" / "metrics.json").read_text())["processes"] == processes

    def rows(run: str) -> list[dict[str, str]]:
        lines = (tmp_path / run / "metrics.csv").read_text().splitlines()
        header = lines[0].split(",")
        return [
            {k: v for k, v in zip(header, line.split(","), strict=True) if k != "epoch_seconds"}
            for line in lines[1:]
        ]

    assert rows("killed") == rows("straight") and len(rows("straight")) == 4
    done = [
        json.loads((tmp_path / run / "metrics.json").read_text())["test"] for run in ("killed", "straight")
    ]
    assert done[0] == done[1]


def test_bad_photos_are_named_at_once_and_skip_bad_images_trains_without_them(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "bugs", {"ants": 8, "bees": 8})
    (photos / "ants" / "notes.jpg").write_text("not an image")
    (photos / "bees" / "empty.jpg").write_bytes(b"")
    (photos / "ants" / "._ants0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # a Mac's: hidden
    (photos / "ants" / "Thumbs.db").write_bytes(bytes(80))  # Windows's: neither a photo nor counted
    for name in ("IMG_0001.MOV", "IMG_0002.mov", "labels.txt"):  # a phone's live photos: not read, but said
        (photos / "bees" / name).write_bytes(b"\x00\x00\x00\x14ftypqt  ")
    refused = fmtk("run", "images", "--data-dir", str(photos), "--output-dir", "out", *SMALL, cwd=tmp_path)
    assert_one_line_error(
        refused, "2 of 18 image files cannot be decoded: ", "notes.jpg (",
        "empty.jpg (0 bytes: an empty file)",
        "bad-images-bugs-", ".txt: fix or remove them; or train without them: --set skip_bad_images=true; "
        "besides, files of kinds fmtk does not read are left out: 2 .mov, 1 .txt",  # all at once
    )  # fmt: skip
    assert not list((tmp_path / "out").glob("*/*"))  # no run folder left

    done = fmtk("run", "images", "--data-dir", "bugs", "--run-dir", "run", "--epochs", "1",
                "--set", "skip_bad_images=true", *SMALL, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Whole paths, as data_dir beside them (before: as given, relative to where the run started)
    skipped = sorted(str(photos / name) for name in ("ants/notes.jpg", "bees/empty.jpg"))
    assert sorted(json.loads((tmp_path / "run" / "config.json").read_text())["skipped_images"]) == skipped
    assert "skip_bad_images: training without 2 undecodable files (" in done.stdout
    left_out = "files left out, of kinds fmtk does not read: 2 .mov, 1 .txt (it reads .jpg .jpeg .png"
    assert left_out in done.stdout.splitlines()[1]


@pytest.mark.parametrize("cache", ["memory", "none"])
def test_a_run_with_a_progress_bar_shows_one_over_the_photos_decoding(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], cache: str
) -> None:
    values = {"image_size": 32, "warmup_epochs": 0, "epochs": 1, "data_cache": cache}
    fmtk_api.fit("images", data_dir=photos, device="cpu", run_dir=tmp_path / "shown", progress=True, **values)
    shown = capsys.readouterr().err  # tqdm's: "decoding photos:   0%|   | 0/30 [...]", then cleared
    assert "decoding photos:   0%" in shown and " 0/30 " in shown
    fmtk_api.fit("images", data_dir=photos, device="cpu", run_dir=tmp_path / "not", progress=False, **values)
    assert "decoding photos" not in capsys.readouterr().err


def test_an_image_size_the_architecture_cannot_take_is_one_line_naming_one_it_can(
    photos: Path, tmp_path: Path
) -> None:
    done = fmtk("run", "images", "--data-dir", str(photos), "--output-dir", "out", *SMALL,
                "--set", "arch=alexnet", cwd=tmp_path)  # fmt: skip
    assert_one_line_error(
        done, "arch alexnet cannot take 32×32 images (Given input size: (256x1x1)",
        "it takes 64 px (the smallest tried of 64, 75, 96, 128, 160, 224, 299, 384, 512): "
        "--set image_size=64",
    )  # fmt: skip
    assert not list((tmp_path / "out").glob("*/*"))


@pytest.mark.parametrize(("size", "said"), [
    ("-5", "image_size=-5: expected a whole number of pixels, 1 or more (0: the weights' own size)"),
    ("40000", "image_size=40000: one 40000×40000 image takes 95.4 GiB in resnet18's first layer, more "
              "than the "),
])  # fmt: skip
def test_an_image_size_no_model_or_memory_can_take_is_one_line_before_the_photos_load(
    photos: Path, tmp_path: Path, size: str, said: str
) -> None:
    done = fmtk("run", "images", "--data-dir", str(photos), "--output-dir", "out", *SMALL,
                "--set", f"image_size={size}", cwd=tmp_path)  # fmt: skip
    assert_one_line_error(done, said)
    assert "train " not in done.stdout and not list((tmp_path / "out").glob("*/*"))


def test_without_a_data_folder_the_line_says_how_to_give_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FMTK_DATA", raising=False)  # then the folder is ./data
    done = fmtk("run", "images", *SMALL, cwd=tmp_path)
    assert_one_line_error(done, "photo folder not found: data (give the photos' folder: --data-dir PHOTOS")


def copy_samples(samples: list[tuple[str, int]], classes: list[str], folder: Path) -> Path:
    for path, label in samples:
        (folder / classes[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / classes[label])
    return folder


def test_evaluating_the_run_s_own_test_photos_as_a_folder_gives_its_test_figures(
    trained: tuple[Path, str], photos: Path, tmp_path: Path
) -> None:
    run_dir, _ = trained
    config = json.loads((run_dir / "config.json").read_text())
    found = find_photo_splits(photos, 0.2, 0.2, config["seed"])  # the split the run drew
    copy_samples(found.samples("test"), found.classes, tmp_path / "held" / "test")
    split = fmtk("evaluate", str(run_dir))
    folder = fmtk("evaluate", str(run_dir), "--folder", str(tmp_path / "held"))
    assert split.returncode == folder.returncode == 0, folder.stderr
    assert split.stdout.splitlines()[1:12] == folder.stdout.splitlines()[1:12]  # loss, accuracy, tables
    assert f"6 photos of {tmp_path / 'held'}" in folder.stdout.splitlines()[0]
    figures = json.loads((run_dir / "evaluations" / "held-best" / "evaluation.json").read_text())
    assert figures["photos"] == 6 and np.array(figures["confusion"]).sum() == 6 and not figures["unreadable"]
    python = fmtk_api.evaluate(run_dir, folder=tmp_path / "held", device="cpu")
    assert python.loss == pytest.approx(figures["loss"], abs=1e-6) and python.accuracy == figures["accuracy"]


def test_a_new_folder_is_evaluated_whole_beside_the_run_and_its_bad_photos_listed(
    trained: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    new = make_photos(tmp_path / "new" / "test", {"ants": 4, "bees": 3}, seed=5).parent  # some classes
    (new / "test" / "bees" / "empty.jpg").write_bytes(b"")
    (new / "test" / "ants" / "notes.jpg").write_text("not a photo")
    (new / "test" / "ants" / "._ants0.png").write_bytes(bytes(80))  # hidden: not a photo, not said
    (new / "test" / "bees" / "IMG_0001.MOV").write_bytes(b"\x00\x00\x00\x14ftypqt  ")
    (new / "test" / "wasps").mkdir()  # an empty class folder: as one not there (it was an error)
    own = {
        name: stamp for name, stamp in tree_snapshot(run_dir).items() if not name.startswith("evaluations")
    }
    result = fmtk("evaluate", str(run_dir), "--folder", str(new))
    assert_one_line_error(result, "2 of 9 image files cannot be read (left out): ", "empty.jpg (",
                          "notes.jpg (", "new-best/evaluation.json")  # fmt: skip
    assert f"7 photos of {new}" in result.stdout
    assert "files left out, of kinds fmtk does not read: 1 .mov (it reads .jpg" in result.stdout
    place = run_dir / "evaluations" / "new-best"
    figures = json.loads((place / "evaluation.json").read_text())
    assert figures["photos"] == 7 and np.array(figures["confusion"]).sum(axis=1).tolist() == [4, 3, 0]
    assert figures["per_class"]["wasps"]["recall"] is None  # no wasps: undefined, not 0
    assert sorted(Path(path).name for path, _ in figures["unreadable"]) == ["empty.jpg", "notes.jpg"]
    assert [Path(path).name for path in figures["others"]] == ["IMG_0001.MOV"]
    with open(place / "top_losses.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    losses = [float(row["loss"]) for row in rows]
    assert losses == sorted(losses, reverse=True) and all(Path(row["file"]).is_file() for row in rows)
    assert all(row["true"] != row["predicted"] for row in rows)
    assert {p.name for p in place.iterdir()} == {"evaluation.json", "confusion.png", "top_losses.png",
                                                  "top_losses.csv"} or not rows  # fmt: skip
    assert {name: stamp for name, stamp in tree_snapshot(run_dir).items()
            if not name.startswith("evaluations")} == own  # fmt: skip
    again = fmtk("evaluate", str(run_dir), "--folder", str(new))
    assert again.returncode == 1 and (run_dir / "evaluations" / "new-best-2" / "evaluation.json").is_file()


def test_a_folder_evaluated_two_photos_at_a_time_gives_what_one_pass_over_all_gives(
    trained: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks of 2 photos (the run's batches are 32): batches cut at each chunk, an unreadable photo
    # beside a readable one in a chunk, a chunk of two unreadable ones (files 7, 8 and 9 of 14 in
    # order); the figures, the ranking and the pictured photos are those of one chunk.
    run_dir, _ = trained
    new = make_photos(tmp_path / "new", {"ants": 4, "bees": 3, "wasps": 4}, seed=7)
    for name in ("empty.jpg", "empty2.jpg"):
        (new / "bees" / name).write_bytes(b"")
    (new / "bees" / "notes.jpg").write_text("not a photo")
    written, bars = {}, []

    def kept_bar(total: int, what: str) -> Any:
        bars.append(photo_bar(total, what))
        return bars[-1]

    monkeypatch.setattr(evaluation, "photo_bar", kept_bar)
    for chunk in (256, 2):
        monkeypatch.setattr(evaluation, "CHUNK_BYTES", chunk * 3 * 32 * 32)
        with photo_bars(True):  # as in a terminal
            recipe, result = evaluation.evaluate_folder(run_dir, new, "best", torch.device("cpu"))
        place = tmp_path / f"chunks-of-{chunk}"
        place.mkdir()
        result.write(place, recipe.name)
        written[chunk] = place
    assert [(bar.desc, bar.total, bar.n) for bar in bars] == [("evaluating photos", 14, 14)] * 2
    one, two = (json.loads((written[chunk] / "evaluation.json").read_text()) for chunk in (256, 2))
    assert one["photos"] == two["photos"] == 11 and len(one["unreadable"]) == 3
    assert two == {**one, "loss": pytest.approx(one["loss"], rel=1e-6)}
    with open(written[256] / "top_losses.csv") as first, open(written[2] / "top_losses.csv") as second:
        rows = list(zip(csv.DictReader(first), csv.DictReader(second), strict=True))
    assert rows and all(a["file"] == b["file"] and a["predicted"] == b["predicted"] for a, b in rows)
    assert all(float(a["loss"]) == pytest.approx(float(b["loss"]), rel=1e-5) for a, b in rows)
    pictures = [np.asarray(Image.open(written[chunk] / "top_losses.png")) for chunk in (256, 2)]
    assert np.array_equal(*pictures)


def test_a_folder_is_decoded_in_as_many_threads_as_torch_has(
    trained: tuple[Path, str], photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --threads 1 sets torch's threads to 1: the decoding threads alive at each chunk are then one.
    run_dir, _ = trained
    alive, read_pixels = [], evaluation.read_pixels

    def watched(*args: Any, **kwargs: Any) -> Iterator:
        for chunk in read_pixels(*args, **kwargs):
            alive.append(
                sorted(thread.name for thread in threading.enumerate() if thread.name.startswith(DECODERS))
            )
            yield chunk

    monkeypatch.setattr(evaluation, "read_pixels", watched)
    monkeypatch.setattr(evaluation, "CHUNK_BYTES", 8 * 3 * 32 * 32)  # chunks of 8 photos: 4 of them
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluation.evaluate_folder(run_dir, photos, "best", torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert alive == [[f"{DECODERS}_0"]] * 4


def test_a_folder_of_no_readable_photo_is_one_line_and_writes_nothing(
    trained: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    (tmp_path / "odd" / "ants").mkdir(parents=True)
    (tmp_path / "odd" / "ants" / "empty.jpg").write_bytes(b"")
    (tmp_path / "odd" / "ants" / "notes.png").write_text("not a photo")
    before = tree_snapshot(run_dir)
    result = fmtk("evaluate", str(run_dir), "--folder", str(tmp_path / "odd"))
    assert_one_line_error(result, f"--folder {tmp_path / 'odd'}: none of its 2 photos can be read: ")
    assert tree_snapshot(run_dir) == before


@pytest.mark.parametrize(
    "classes, args, fragments",
    [
        (
            {"ants": 2, "moths": 2},
            [],
            ["class folder(s) moths are not among the run's classes (ants, bees, wasps)"],
        ),
        (
            {"ants": 2},
            ["--split", "valid"],
            ["--folder is evaluated whole", "without --split and --data-dir"],
        ),
        ({"Ants": 2, "bee": 2}, [], ["(ants, bees, wasps); did you mean ants for Ants, bees for bee?"]),
        ({"ants": 0, "bees": 0}, [], ["odd: no photos in its class folders (ants, bees, wasps)"]),
        (
            {"ants": 0, "bees": 0, "bees/notes.txt": 0}, [],
            ["(ants, bees, wasps); its class folders hold only files of kinds fmtk does not read: 1 .txt"],
        ),
    ],
)  # fmt: skip
def test_a_folder_that_cannot_be_evaluated_is_one_line_and_writes_nothing(
    trained: tuple[Path, str], tmp_path: Path, classes: dict[str, int], args: list[str], fragments: list[str]
) -> None:
    run_dir, _ = trained
    new = make_photos(tmp_path / "odd", {name: count for name, count in classes.items() if "." not in name})
    for name in (name for name in classes if "." in name):  # a file of another kind
        (new / name).write_text("not a photo")
    before = tree_snapshot(run_dir)
    assert_one_line_error(fmtk("evaluate", str(run_dir), "--folder", str(new), *args), *fragments)
    assert tree_snapshot(run_dir) == before


def test_predictions_answer_each_chunk_before_the_one_after_the_next_is_read(
    trained: tuple[Path, str], tmp_path: Path
) -> None:
    # 600 photos: chunks of 256, 256 and 88. Once the first answer is taken (one thread decoding),
    # the third chunk's files are removed: only the second was being read, so they are answered as
    # missing.
    run_dir, _ = trained
    folder = make_photos(tmp_path / "many", {"ants": 300, "bees": 300})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as --threads 1 sets it: also one thread decoding
    try:
        answers = fmtk_api.predictions(run_dir, [folder], device="cpu")
        first = next(answers)
        assert [thread.name for thread in threading.enumerate() if thread.name.startswith(DECODERS)] == [
            f"{DECODERS}_0"
        ]
    finally:
        torch.set_num_threads(threads)
    files = sorted(str(path) for path in folder.rglob("*.*"))
    for name in files[512:]:
        Path(name).unlink()
    results = [first, *answers]
    assert [result["file"] for result in results] == files
    assert all("predictions" in result for result in results[:512])
    assert all("No such file" in result["error"] for result in results[512:])


def test_the_next_chunk_is_decoded_while_the_caller_works_on_this_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images = [Image.new("RGB", (8, 8), (level, 0, 0)) for level in range(6)]
    index = {id(image): i for i, image in enumerate(images)}
    decoded, pixels = [], ImageInput.pixels

    def recorded(self: ImageInput, image: Image.Image) -> torch.Tensor:
        decoded.append(index[id(image)])
        return pixels(self, image)

    monkeypatch.setattr(ImageInput, "pixels", recorded)

    def soon_decoded(wanted: set[int]) -> bool:
        deadline = time.monotonic() + 10
        while not wanted <= set(decoded) and time.monotonic() < deadline:
            time.sleep(0.01)
        return wanted <= set(decoded)

    chunks = read_pixels(images, ImageInput.photo(8), chunk=2, threads=1)
    assert next(chunks)[0] == [0, 1]
    assert soon_decoded({2, 3}) and not {4, 5} & set(decoded)  # the next chunk only
    good, first_red, _ = next(chunks)
    assert good == [2, 3] and first_red[:, 0, 0, 0].tolist() == [2, 3]
    assert soon_decoded({4, 5}) and [chunk[0] for chunk in chunks] == [[4, 5]]


def test_predict_and_evaluate_run_on_the_threads_given_else_a_run_s(
    trained: tuple[Path, str], photos: Path
) -> None:
    run_dir, _ = trained
    threads = torch.get_num_threads()
    try:
        for args, expected in ((["--threads", "1"], 1), ([], inference_threads()), (["--threads", "3"], 3)):
            torch.set_num_threads(5)
            assert fmtk("predict", str(run_dir), str(photos / "ants"), *args).returncode == 0
            assert torch.get_num_threads() == expected
            torch.set_num_threads(5)
            assert fmtk("evaluate", str(run_dir), *args).returncode == 0
            assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(threads)


def test_a_photo_past_pillow_s_bomb_warning_is_read_quietly_and_one_past_its_limit_is_named(
    trained: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # (89 megapixels: a real one takes seconds)
    Image.new("RGB", (40, 40)).save(tmp_path / "large.png")  # over 1000: warned of; over 2000: refused
    Image.new("RGB", (50, 50)).save(tmp_path / "huge.png")
    result = fmtk("predict", str(trained[0]), str(tmp_path / "large.png"), str(tmp_path / "huge.png"))
    assert_one_line_error(result, "1 of 2 image files cannot be read: ", "huge.png (Image size (2500 pixels)")
    assert result.stdout.startswith(f"{tmp_path / 'large.png'}: ")  # (before: Pillow's two-line warning too)


def test_predict_answers_every_good_photo_of_folders_and_names_the_bad_ones_at_the_end(
    trained: tuple[Path, str], photos: Path, tmp_path: Path
) -> None:
    run_dir, _ = trained
    (tmp_path / "notes.jpg").write_text("not a photo")
    empty = [tmp_path / f"empty{n}.jpg" for n in range(4)]
    for path in empty:
        path.write_bytes(b"")
    result = fmtk("predict", str(run_dir), str(photos / "ants"), str(tmp_path / "notes.jpg"),
                  str(tmp_path / "gone.png"), *map(str, empty))  # fmt: skip
    assert_one_line_error(  # each named: nothing else names them (before: "; and 3 more")
        result, "6 of 16 image files cannot be read: ", "notes.jpg (", "gone.png (No such file",
        *(f"{path.name} (0 bytes" for path in empty),
    )  # fmt: skip
    answered = [line.partition(": ")[0] for line in result.stdout.splitlines()]
    assert answered == sorted(str(path) for path in (photos / "ants").iterdir())  # the folder's, in order
    mixed = tmp_path / "mixed"  # files of kinds it does not read are counted, as a run counts them
    shutil.copytree(photos / "bees", mixed)
    Image.new("RGB", (9, 9)).save(mixed / "anim.gif")
    (mixed / "notes.txt").write_text("")
    sorted(mixed.glob("bees*"))[0].rename(mixed / "abeille é.png")
    told = fmtk("predict", str(run_dir), str(mixed), "--json")
    assert told.returncode == 0 and len(json.loads(told.stdout)) == 10
    assert f'"file": "{mixed / "abeille é.png"}"' in told.stdout  # as it is named (before: "\\u00e9")
    assert told.stderr.startswith("files left out, of kinds fmtk does not read: 1 .gif, 1 .txt (it reads ")
    with Image.open(photos / "bees" / "bees3.png") as image:
        opened = fmtk_api.predict(run_dir, [image, photos / "bees" / "bees3.png"], top=3, device="cpu")
    assert opened[0]["file"] == "<image 0>" and opened[0]["predictions"] == opened[1]["predictions"]


def test_evaluate_with_another_data_dir_never_writes_over_the_run_s_pictures(
    trained: tuple[Path, str], tmp_path: Path
) -> None:
    run_dir, _ = trained
    other = make_photos(tmp_path / "other", {"ants": 5, "bees": 5, "wasps": 5}, seed=3)
    own = {
        name: stamp for name, stamp in tree_snapshot(run_dir).items() if not name.startswith("evaluations")
    }
    result = fmtk("evaluate", str(run_dir), "--data-dir", str(other))
    assert result.returncode == 0, result.stderr
    assert f"test split of {other} (to score every photo of a folder: fmtk evaluate" in result.stdout
    assert (run_dir / "evaluations" / "other-best" / "confusion.png").is_file()
    assert {name: stamp for name, stamp in tree_snapshot(run_dir).items()
            if not name.startswith("evaluations")} == own  # fmt: skip
    (tmp_path / "held" / "test" / "ants").mkdir(parents=True)
    refused = fmtk("evaluate", str(run_dir), "--data-dir", str(tmp_path / "held"))
    assert_one_line_error(refused, "has test but no training folder",
                          f"to score every photo of a folder: fmtk evaluate {run_dir} --folder")  # fmt: skip
    nowhere = fmtk("evaluate", str(run_dir), "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(nowhere, "photo folder not found: ")  # (before: "… --folder nowhere" to paste)
    assert "--folder" not in nowhere.stderr


def test_evaluate_refuses_a_split_of_photos_changed_since_the_run_and_scores_them_once_restored(
    tmp_path: Path,
) -> None:
    # Before, a changed folder's splits were drawn again and evaluated: another test split, exit 0.
    photos = make_photos(tmp_path / "bugs", {"ants": 5, "bees": 5, "wasps": 5})
    run, kept = tmp_path / "r", tmp_path / "kept"
    done = fmtk("run", "images", "--data-dir", str(photos), "--epochs", "1", "--run-dir", str(run),
                "--set", "image_size=16", "--set", "warmup_epochs=0", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    shutil.copytree(photos, kept)
    train = sorted(Path(name) for name in np.load(run / "train_fingerprints.npz")["names"])
    newcomer = make_photos(tmp_path / "new", {"ants": 1}, seed=5) / "ants" / "ants0.jpg"
    trained = sum(json.loads((run / "config.json").read_text())["splits"]["train"].values())
    more = ["; it trained on ", " (ants "]  # one photo more: counts differ
    swapped = [f" of its {trained} training photos differ", " from those it trained on)"]  # same counts
    whole = f"to score every photo of a folder: fmtk evaluate {run} --folder {photos}"
    for change, why in [(lambda: shutil.copy(newcomer, photos / "ants" / "new.jpg"), more),
                        (lambda: (train[0].unlink(), shutil.copy(newcomer, train[0].with_name("new.jpg"))),
                         swapped)]:  # fmt: skip
        shutil.rmtree(photos)
        shutil.copytree(kept, photos)
        change()
        before = tree_snapshot(tmp_path)
        refused = fmtk("evaluate", str(run))
        assert_one_line_error(refused, f"{photos}: not the data this run trained on (", *why,
                              "), so its test split may not be the one it held out; ", whole)  # fmt: skip
        assert tree_snapshot(tmp_path) == before
    with pytest.raises(fmtk_api.FmtkError, match=f"of its {trained} training photos differ"):
        fmtk_api.evaluate(run, device="cpu")
    moved = tmp_path / "moved"  # the changed photos elsewhere: still the run's, changed
    shutil.copytree(photos, moved)
    refused = fmtk("evaluate", str(run), "--data-dir", str(moved))
    assert_one_line_error(refused, f"{moved}: not the data this run trained on (", *swapped,
                          f"fmtk evaluate {run} --folder {moved}")  # fmt: skip
    assert refused.stderr.count("--folder") == 1
    shutil.rmtree(photos)
    shutil.copytree(kept, photos)
    again = fmtk("evaluate", str(run))
    assert again.returncode == 0, again.stderr
    best = next(line.split() for line in done.stdout.splitlines() if line.startswith("best "))
    assert again.stdout.splitlines()[1] == f"loss {best[2]}  accuracy {best[3]}"  # the run's own test


def test_a_run_decoding_in_data_loader_workers_shows_its_wrong_valid_photos_too(
    photos: Path, tmp_path: Path
) -> None:
    done = fmtk("run", "images", "--data-dir", str(photos), "--epochs", "1", "--run-dir", "run", *SMALL,
                "--set", "data_cache=none", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "run" / "top_losses.csv", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert rows and all(Path(row["file"]).parent.parent == photos for row in rows)  # its photos by name
    assert [float(row["loss"]) for row in rows] == sorted((float(row["loss"]) for row in rows), reverse=True)
    assert all(row["true"] != row["predicted"] for row in rows)
    with Image.open(tmp_path / "run" / "top_losses.png") as picture:
        assert picture.width >= 128 * min(8, len(rows))
