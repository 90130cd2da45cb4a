"""Shared fixtures: small datasets written in the real formats, the real data in $FMTK_DATA, and the
runs trained on it once per test session.

Tests marked ``slow`` train on the real data, read such a run, or start several processes;
``python -m pytest -m "not slow"`` runs the others (the edit-test loop). A test that reads a shared
run is marked ``slow`` here, from its fixtures (``SHARED_RUNS``).
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed when ``compress``."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_mnist_like(
    root: Path, name: str = "MNIST", train: int = 600, test: int = 200, seed: int = 0, bar: int = 250
) -> Path:
    """A learnable MNIST-format dataset: class k is a bar of brightness ``bar`` in row band k, on
    noise up to 60 (a lower ``bar`` makes it harder)."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        labels = np.arange(count) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        for index, label in enumerate(labels):
            images[index, 2 + 2 * label : 4 + 2 * label, 4:24] = bar
        prefix = "train" if split == "train" else "t10k"
        write_idx(root / name / "raw" / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / name / "raw" / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


def make_image_folder(folder: Path, per_class: int = 10, size: int = 40, seed: int = 0) -> Path:
    """``folder/{cats,dogs}/*.jpg``: cats reddish, dogs bluish, with noise, of varying sizes."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(("cats", "dogs")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            height, width = size + int(rng.integers(0, 20)), size + int(rng.integers(0, 20))
            pixels = rng.integers(0, 80, size=(height, width, 3)).astype(np.uint8)
            pixels[..., 0 if label == 0 else 2] += 150
            Image.fromarray(pixels).save(folder / name / f"{name[:-1]}.{index}.jpg", quality=90)
    return folder


def make_photos(folder: Path, counts: dict[str, int], size: int = 28, seed: int = 0) -> Path:
    """``folder/<class>/*`` with ``counts[class]`` photos each: JPEG and PNG in turn, the first of
    the first class grey-scale and the second RGBA; class k is bright in colour channel k % 3 and
    in row band k // 3, on noise."""
    rng = np.random.default_rng(seed)
    for label, (name, count) in enumerate(counts.items()):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 70, size=(size + index % 5, size, 3)).astype(np.uint8)
            pixels[..., label % 3] += 140
            band = (label // 3) * 6
            pixels[band : band + 6] = 250
            image = Image.fromarray(pixels)
            if label == 0 and index < 2:
                image = image.convert("L" if index == 0 else "RGBA")
            suffix = "png" if index % 2 or image.mode == "RGBA" else "jpg"
            image.save(folder / name / f"{name}{index}.{suffix}")
    return folder


def tree_snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file below ``root``, to prove nothing changed."""
    return {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fmtk's cache folder (decoded photos, lists of bad image files) in a temporary folder for the
    whole session, the test processes' too: never the user's ``~/.cache/fmtk``."""
    folder = tmp_path_factory.mktemp("fmtk_cache")
    before = os.environ.get("FMTK_CACHE")
    os.environ["FMTK_CACHE"] = str(folder)
    yield folder
    if before is None:
        del os.environ["FMTK_CACHE"]
    else:
        os.environ["FMTK_CACHE"] = before


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    return make_mnist_like(tmp_path / "data")


@pytest.fixture
def catdog_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_image_folder(root / "catdog" / "training_set", per_class=20)
    make_image_folder(root / "catdog" / "test_set", per_class=6, seed=1)
    return root


def require_real_data() -> Path:
    """The real datasets from $FMTK_DATA; a skip when unset, a failure when FMTK_REQUIRE_DATA=1."""
    value = os.environ.get("FMTK_DATA")
    if not value or not Path(value).is_dir():
        message = f"real data needed: set FMTK_DATA to the datasets folder (now {value!r})"
        if os.environ.get("FMTK_REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return Path(value).resolve()  # absolute: tests run commands from other folders


@pytest.fixture
def real_data() -> Path:
    return require_real_data()


@pytest.fixture(scope="session")
def real_mnist_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """mnist_dnn for 2 epochs on the real MNIST files, trained once per session with ``fmtk run`` on
    the CPU: (run folder, data root). Tests read it; ``fmtk evaluate`` adds its pictures. A test that
    changes the folder otherwise works on a copy (``shutil.copytree``)."""
    data = require_real_data()
    run_dir = tmp_path_factory.mktemp("report") / "mnist"
    result = fmtk("run", "mnist_dnn", "--epochs", "2", "--device", "cpu", "--run-dir", str(run_dir),
                  "--data-dir", str(data))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run_dir, data


SHARED_RUNS = {"real_mnist_run"}  # fixtures that train on the real data: their readers are slow


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SHARED_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


USER_RECIPE = """
from fmtk import Recipe
from fmtk.data import load_digits_splits
from fmtk.models import mlp

recipe = Recipe(
    name="my_digits",
    description="a user's own recipe",
    model=lambda recipe: mlp(64, [16], 10),
    data=lambda recipe, data_dir, device: load_digits_splits(recipe.batch_size, device, recipe.seed),
    epochs=2,
)
"""


def fmtk(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``fmtk ARGS`` run from ``cwd`` in this process, through click's CliRunner: a new process
    spends 5–6 s of this machine's time importing torch, ~90 times a session. What a terminal would
    show comes back as from ``subprocess.run``: stdout, stderr with the warnings a plain ``python``
    prints, an escaped exception's traceback and exit code 1. Modules the command imports from
    ``cwd`` (recipes, ``--handler`` files) are forgotten afterwards, so the next test's same-named
    file is read afresh. ``fmtk_process`` runs a real process, for what only one has: signals,
    interpreter exit, environment variables."""
    from click.testing import CliRunner

    from fmtk.cli import cli

    folder = Path(cwd or Path.cwd()).resolve()
    modules, path, old_cwd, argv = set(sys.modules), list(sys.path), os.getcwd(), sys.argv
    os.chdir(folder)
    sys.argv = ["fmtk", *args]  # what config.json records as the command
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()  # Python's own defaults, not pytest's
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            result = CliRunner().invoke(cli, list(args), prog_name="fmtk")
    finally:
        os.chdir(old_cwd)
        sys.path[:], sys.argv = path, argv
        for name in set(sys.modules) - modules:
            file = getattr(sys.modules[name], "__file__", None) or ""
            # Not fmtk itself nor installed packages: run from a clone's root, both lie inside the
            # folder too (a second fmtk.recipe would make a second Recipe class).
            ours = name == "fmtk" or name.startswith("fmtk.") or file.startswith(sys.prefix)
            mine = file.startswith(str(folder)) and not ours
            if mine or name.startswith("fmtk_recipe_"):
                del sys.modules[name]
    stderr = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    stderr += result.stderr
    code = result.exit_code
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return subprocess.CompletedProcess(["fmtk", *args], code, result.stdout, stderr)


def python_script(script: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``python SCRIPT`` run from ``cwd`` in this process (``runpy``), as ``fmtk`` runs commands:
    the documented examples that train through ``fmtk.fit``."""
    import contextlib
    import io
    import runpy

    out, err, old_cwd, path = io.StringIO(), io.StringIO(), os.getcwd(), list(sys.path)
    os.chdir(cwd)
    sys.path.insert(0, str(Path(script).resolve().parent))
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
            except Exception:  # noqa: BLE001 - reported as a process would report it
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        sys.path[:] = path
    return subprocess.CompletedProcess(["python", str(script)], code, out.getvalue(), err.getvalue())


def fmtk_process(*args: str, cwd: Path | None = None, **options: Any) -> subprocess.CompletedProcess:
    """``python -m fmtk ARGS`` in a new process (``options`` go to ``subprocess.run``)."""
    command = [sys.executable, "-m", "fmtk", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, **options)


def free_bytes(device: Any) -> int | None:
    """Bytes a new allocation can take on ``device`` (a torch.device) without being refused by
    fmtk's memory check: a GPU's free memory; on the CPU, the less of the machine's available memory
    and what this process's memory limit leaves; None where neither is known."""
    import torch

    from fmtk.device import available_bytes, cgroup_free_bytes

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return min((free for free in (available_bytes(), cgroup_free_bytes()) if free is not None), default=None)


@contextmanager
def new_cgroup(controller: str, settings: dict[str, str]) -> Iterator[Path]:
    """A new cgroup (v1) of ``controller`` (``memory``, ``cpu``) under this process's own, its
    ``settings`` (file: value) written, removed afterwards; a skip where this process may not make
    one (not root, no cgroup v1 hierarchy of it). A process joins it with ``preexec_fn=joining(it)``."""
    own = [line.split(":", 2)[2] for line in Path("/proc/self/cgroup").read_text().splitlines()
           if controller in line.split(":")[1].split(",")]  # fmt: skip
    folder = Path(
        "/sys/fs/cgroup", controller, own[0].lstrip("/") if own else "-", f"fmtk-test-{os.getpid()}"
    )
    try:
        folder.mkdir()
    except OSError as error:
        pytest.skip(f"no {controller} cgroup of its own: {error}")
    try:
        for name, value in settings.items():
            (folder / name).write_text(value)
        yield folder
    finally:
        folder.rmdir()


def joining(cgroup: Path) -> Callable[[], None]:
    """A ``preexec_fn`` that puts the new process into ``cgroup``."""
    return lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
