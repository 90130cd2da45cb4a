"""Where a run trains: the one place a device name given by a user becomes a ``torch.device``; the
CPU cores it may use; the memory a device has free."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import ignite.distributed as idist
import torch

from fmtk.errors import FmtkError


def resolve_device(spec: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or a torch.device
    of those; a clear error otherwise."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise FmtkError(f"--device {spec}: not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FmtkError(f"--device {spec}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise FmtkError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise FmtkError(f"--device {spec}: fmtk supports auto, cpu, cuda and cuda:N")
    elif device.index is not None:  # torch accepts "cpu:1", then fails loading checkpoints onto it
        raise FmtkError(f"--device {spec}: the CPU has no numbered devices; use cpu")
    return device


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_threads(cores: int, processes: int = 1, environ: Mapping[str, str] = os.environ) -> int:
    """A run's CPU threads (``torch.set_num_threads``) when not told: ``OMP_NUM_THREADS`` when it is
    set (torchrun sets it for its processes), else half the ``cores``, shared among the training
    ``processes`` on this machine, at least one.

    torch's own default, every core, is pathological on a busy machine: beside another process using
    both of 2 cores, a step took 3.8× (mnist_dnn) and 2.4× (fmnist_cnn) as long with 2 threads as
    with 1; alone, 2 threads made fmnist_cnn's step 1.28× faster and mnist_dnn's 1.27× slower
    (docs/performance.md, "Threads")."""
    given = environ.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return int(given)
    return max(1, cores // 2 // processes)


def threads_by_default() -> int:
    """:func:`default_threads` of this process: its usable cores, the training processes on this
    machine (``ignite.distributed``), its environment."""
    processes = idist.get_nproc_per_node() if idist.get_world_size() > 1 else 1
    return default_threads(usable_cores(), processes)


def free_bytes(device: torch.device, meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes a new allocation can take on ``device`` without swapping: a GPU's free memory, the
    machine's available memory (Linux's ``MemAvailable``: free memory and what the kernel can
    reclaim; a container's own limit is not read); None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(need: int, device: torch.device, what: str, instead: str) -> None:
    """Refuse, in one line, ``need`` bytes of decoded images (``what``: which) that cannot all be
    held: in the machine's memory, where each training process on it decodes its own, and, on a
    GPU, in its free memory; ``instead``: what to do. Where nothing is known (no
    ``MemAvailable``), nothing is refused."""
    processes = idist.get_nproc_per_node() if idist.get_world_size() > 1 else 1
    size = f"{need / 2**30:,.1f} GiB decoded"
    held = f"{size} in each of {processes} processes" if processes > 1 else size
    places = [(torch.device("cpu"), need * processes, held, "of memory available on this machine")]
    if device.type == "cuda":
        places.append((device, need, size, f"free on {device}"))
    for place, needed, said, where in places:
        free = free_bytes(place)
        if free is not None and needed > free:
            raise FmtkError(f"{what} are {said}, more than the {free / 2**30:,.1f} GiB {where}: {instead}")
