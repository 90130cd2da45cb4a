"""The training step never makes the host wait for the device: steps 3..N of an epoch, with every
option a step can have (augmentation, mixup/CutMix, EMA, clipping, accumulation, a per-step
schedule, label smoothing, 16-mixed and bf16).

A step that waits for the GPU (``.item()``, a boolean mask, a tensor made from Python numbers and
copied over) stops the CPU from queueing the next step's kernels while the GPU works. On CUDA,
torch's sync debug mode counts every such wait (``test_..._on_cuda``). On the CPU nothing waits,
so the CPU test watches the operations that wait on CUDA, through a TorchDispatchMode: it runs in
every CI run. What it cannot see on the CPU: ``.tolist()``, ``.numpy()`` and ``.cpu()`` of a
tensor, which do not go through torch's dispatcher there.
"""

from __future__ import annotations

import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import make_mnist_like
from ignite.engine import Events
from test_benchmarks import load_benchmark
from torch.utils._python_dispatch import TorchDispatchMode

from fmtk.training.build import build_run
from fmtk.training.engines import SpeedOptions

aten = torch.ops.aten
# The counter of CUDA's syncs and the watch over steps 3..N are benchmarks/gpu.py's, which counts them
# in catdog_vgg's epoch on a GPU.
gpu = load_benchmark("gpu")
watch_steps = gpu.watch_steps

# Operations that make the host wait for a CUDA device: reading a value (.item(), bool(), int()),
# results whose size depends on the values, and a tensor made from Python data (a host-to-device
# copy from pageable memory, which waits).
WAITING = {
    aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.is_nonzero, aten.equal,
    aten._unique2, aten.unique_dim, aten.unique_consecutive, aten.repeat_interleave, aten.lift_fresh,
}  # fmt: skip
MASKED = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}  # waits with a boolean index


def where_in_fmtk() -> str:
    """The innermost frame of fmtk (or of the test) that led here: file and line."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/fmtk/" in frame.filename or "/tests/" in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
    return "?"


class WaitingOperations(TorchDispatchMode):
    """The operations (and where fmtk called them) that would make the host wait on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        packet = func.overloadpacket
        masked = packet in MASKED and any(
            isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in _indices(args)
        )
        if packet in WAITING or masked:
            self.found[f"{packet.__name__} at {where_in_fmtk()}"] += 1
        return func(*args, **kwargs)


def _indices(args: tuple[Any, ...]) -> list[Any]:
    return list(args[1]) if len(args) > 1 and isinstance(args[1], list | tuple) else []


# Each option a step can have, as recipe values of fmnist_cnn (a conv net with BatchNorm and dropout).
OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "augmentation": {"augment_flip": 0.5, "augment_crop": 0.5, "augment_shift": 2, "augment_erase": 0.5},
    "mixup-cutmix": {"mixup_alpha": 0.2, "cutmix_alpha": 1.0},
    "ema": {"ema_decay": 0.99},
    "clipping": {"max_grad_norm": 1.0},
    "accumulation": {"accumulate_steps": 3},
    "schedule": {"schedule": "cosine", "warmup_epochs": 0.5, "label_smoothing": 0.1},
    "sgd": {"optimizer": "SGD", "optimizer_args": {"momentum": 0.9, "nesterov": True}},
}
# Every option on at once (with Adam, the recipe's optimizer).
EVERYTHING = {
    key: value for name, values in OPTIONS.items() if name != "sgd" for key, value in values.items()
}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mnist_like(tmp_path_factory.mktemp("sync_data"), "FashionMNIST", train=600, test=100)


def steps_watched(fashion: Path, run_dir: Path, device: str, watcher: Any, precision: str, **values: Any):
    """fmnist_cnn's first epoch (batch 40: about a dozen steps) on ``device``, ``watcher`` on from step 3 to
    its last. On the CPU the NaN guard and the per-iteration points (every ``log_every``) come after
    the epoch: the guard reads on the host, one check later, what the device found (on CUDA a copy
    in pinned memory, which does not wait; on the CPU the tensor itself, which the watch would count)."""
    run_dir.mkdir()
    settings = {"epochs": 1, "batch_size": 40, "log_every": 2 if device == "cuda" else 1000} | values
    run = build_run("fmnist_cnn", run_dir, device, fashion, None, speed=SpeedOptions(precision),
                    progress=False, **settings)  # fmt: skip
    watch_steps(run.trainer, watcher)
    gpu.first_epoch(run)
    return run


@pytest.mark.parametrize("values", OPTIONS.values(), ids=OPTIONS.keys())
def test_no_step_would_wait_for_a_gpu(fashion: Path, tmp_path: Path, values: dict[str, Any]) -> None:
    watcher = WaitingOperations()
    steps_watched(fashion, tmp_path / "run", "cpu", watcher, "32", **values)
    assert not watcher.found, dict(watcher.found)


@pytest.mark.parametrize("precision", ["32", "bf16", "16-mixed"])
def test_no_step_with_every_option_would_wait_for_a_gpu(
    fashion: Path, tmp_path: Path, precision: str
) -> None:
    watcher = WaitingOperations()
    steps_watched(fashion, tmp_path / "run", "cpu", watcher, precision, **EVERYTHING)
    assert not watcher.found, dict(watcher.found)


@pytest.mark.parametrize("preset", [None, "best"])
def test_no_catdog_step_would_wait_for_a_gpu(
    catdog_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, preset: str | None
) -> None:
    # benchmarks/gpu.py's own count, of catdog_vgg's photos (decoded once, normalised and flipped on
    # the device; the best preset's crops, erasing, EMA), at 32 px, on the CPU through the watch.
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    values = {"image_size": "32", "batch_size": "4", "data_cache": "file", "preset": preset}
    if preset == "best":  # its one epoch of warm-up would leave the cosine schedule no epoch
        values["warmup_epochs"] = "0.5"
    counted = gpu.sync_count(catdog_root, "cpu", values, counter=WaitingOperations)
    assert counted["steps"] == 8 - 2 and counted["in_steps_by_place"] == {}
    assert counted["at_epoch_end"] > 0  # the same watch sees validation's and the checkpoints' reads


def test_the_nan_guard_would_wait_only_to_read_its_copy(fashion: Path, tmp_path: Path) -> None:
    # With checks every 2 steps, the one read the watch sees on the CPU is the guard's read of what
    # the device found a check earlier, which on CUDA is a copy in pinned memory (the CUDA test
    # counts that it does not wait); finding it on the device waits for nothing.
    watcher = WaitingOperations()
    run = steps_watched(fashion, tmp_path / "run", "cpu", watcher, "32", **EVERYTHING, log_every=2)
    [(place, reads)] = watcher.found.items()
    assert place.startswith("_local_scalar_dense at handlers.py:") and place.endswith("int(self.tensor)")
    assert reads == len(range(4, run.trainer.state.epoch_length + 1, 2))  # the checks of steps 3..N


def test_the_watch_sees_a_step_that_would_wait(fashion: Path, tmp_path: Path) -> None:
    # The watch itself: a user's handler reading the loss each step (.item()) is seen, with its line.
    watcher = WaitingOperations()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run = build_run("fmnist_cnn", run_dir, "cpu", fashion, None, progress=False, epochs=1, batch_size=40)
    run.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: engine.state.output.item())
    watch_steps(run.trainer, watcher)
    with run.folder:
        run.prepare()
        run.trainer.run(run.data.train, max_epochs=1)
        run.close_loggers()
    assert list(watcher.found.values()) == [run.trainer.state.epoch_length - 2]  # steps 3..N
    assert "engine.state.output.item()" in next(iter(watcher.found))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["32", "bf16", "16-mixed"])
@pytest.mark.parametrize("values", [{}, EVERYTHING], ids=["plain", "every-option"])
def test_no_step_synchronises_with_the_host_on_cuda(
    fashion: Path, tmp_path: Path, precision: str, values: dict[str, Any]
) -> None:
    syncs = gpu.CudaSyncs()
    steps_watched(fashion, tmp_path / "run", "cuda", syncs, precision, **values)
    assert not syncs.found, dict(syncs.found)
