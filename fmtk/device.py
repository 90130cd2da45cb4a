"""Where a run trains: the one place a device name given by a user becomes a ``torch.device``; the
CPU cores it may use; the memory a device has free."""

from __future__ import annotations

import math
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
    """The CPU cores this process may use, not the machine's: those it may run on (taskset's, a
    container's ``--cpuset-cpus``), at most the CPU time its cgroups let it have (a container's
    ``--cpus``, rounded up: 1.5 CPUs is 2 threads, as the JVM counts them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpus()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def default_threads(cores: int, processes: int = 1, environ: Mapping[str, str] = os.environ) -> int:
    """A run's CPU threads (``torch.set_num_threads``) when not told: ``OMP_NUM_THREADS`` when it is
    set (torchrun sets it for its processes), else half the ``cores``, shared among the training
    ``processes`` on this machine, at least one.

    torch's own default, every core, is pathological on a busy machine: beside another process using
    both of 2 cores, a step took 3.8× (mnist_dnn) and 2.4× (fmnist_cnn) as long with 2 threads as
    with 1; alone, 2 threads made fmnist_cnn's step 1.28× faster and mnist_dnn's 1.27× slower
    (docs/performance.md, "Threads")."""
    return threads_given(environ) or max(1, cores // 2 // processes)


def inference_threads(environ: Mapping[str, str] = os.environ) -> int:
    """CPU threads of the commands that only run a model (``fmtk evaluate``, ``fmtk predict``) when
    not told: a run's (:func:`default_threads` of one process), for the same reason. Alone, every
    core evaluated a folder 1.2× faster; beside a busy process, 1.4–4× slower (docs/performance.md)."""
    return default_threads(usable_cores(), 1, environ)


def threads_given(environ: Mapping[str, str]) -> int | None:
    """``OMP_NUM_THREADS`` when it is set to a number of threads."""
    given = environ.get("OMP_NUM_THREADS", "")
    return int(given) if given.isdigit() and int(given) > 0 else None


def threads_by_default() -> int:
    """:func:`default_threads` of this process: its usable cores, the training processes on this
    machine (``ignite.distributed``), its environment."""
    processes = idist.get_nproc_per_node() if idist.get_world_size() > 1 else 1
    return default_threads(usable_cores(), processes)


CGROUPS, MOUNTINFO = Path("/proc/self/cgroup"), Path("/proc/self/mountinfo")


def cgroup_chain(
    controller: str, cgroups: Path = CGROUPS, mountinfo: Path = MOUNTINFO
) -> list[tuple[str, Path]]:
    """The folders of this process's cgroup of ``controller`` (``memory``, ``cpu``) and of each
    above it, as far as they are mounted, each with its kind (``cgroup2``, or v1's ``cgroup``):
    where a limit on the process may be set (a container's, a systemd slice's).

    Its folder is its path (``cgroups``) below the cgroup its hierarchy's mount shows at the top
    (``mountinfo``): a container that sees its host's path (``/docker/ID``) has its own cgroup
    mounted there. Empty where nothing can be read."""
    try:
        paths = {}
        for line in cgroups.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "" or controller in controllers.split(","):
                paths["cgroup2" if controllers == "" else "cgroup"] = Path(path)
        chain = []
        for line in mountinfo.read_text().splitlines():
            mount, filesystem = (part.split() for part in line.split(" - "))
            top, mounted, (kind, _, options) = Path(mount[3]), Path(mount[4]), filesystem[:3]
            if kind in paths and (kind == "cgroup2" or controller in options.split(",")):
                here = mounted / (paths[kind].relative_to(top) if paths[kind].is_relative_to(top) else "")
                chain += [
                    (kind, folder) for folder in (here, *here.parents) if folder.is_relative_to(mounted)
                ]
        return chain
    except (OSError, ValueError, IndexError):
        return []


# A cgroup's memory files: its limit, its usage, and the line of memory.stat with its inactive file
# pages (reclaimed before the limit is hit, so not counted as used, as ``docker stats`` does).
MEMORY_FILES = {
    "cgroup2": ("memory.max", "memory.current", "inactive_file"),
    "cgroup": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}


def cgroup_free_bytes(cgroups: Path = CGROUPS, mountinfo: Path = MOUNTINFO) -> int | None:
    """Bytes this process's memory cgroups can still take: each limit on it (cgroup v2 and v1) less
    what that cgroup uses and cannot reclaim, the smallest of them; None where no limit is set."""
    free = []
    for kind, folder in cgroup_chain("memory", cgroups, mountinfo):
        limit_file, usage_file, inactive_line = MEMORY_FILES[kind]
        try:
            limit = (folder / limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 2**62:  # v1 writes "no limit" as about 2**63
                continue
            used = int((folder / usage_file).read_text())
            stat = dict(row.split() for row in (folder / "memory.stat").read_text().splitlines())
            free.append(max(0, int(limit) - used + int(stat.get(inactive_line, 0))))
        except (OSError, ValueError):
            continue
    return min(free, default=None)


def cgroup_cpus(cgroups: Path = CGROUPS, mountinfo: Path = MOUNTINFO) -> float | None:
    """The CPUs this process's cgroups let it use (a container's ``--cpus``: its CPU time quota over
    the quota's period, the smallest along its path; cgroup v2 and v1); None where none is set."""
    cpus = []
    for kind, folder in cgroup_chain("cpu", cgroups, mountinfo):
        try:
            if kind == "cgroup2":
                quota, period = (folder / "cpu.max").read_text().split()
            else:
                quota, period = (
                    (folder / name).read_text() for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us")
                )
            if quota.strip() not in ("max", "-1"):
                cpus.append(int(quota) / int(period))
        except (OSError, ValueError):
            continue
    return min(cpus, default=None)


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The machine's available memory (Linux's ``MemAvailable``: free memory and what the kernel can
    reclaim); None where unknown."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_memory(device: torch.device) -> list[tuple[int | None, str, bool]]:
    """Where memory for ``device``'s work is free: ``(bytes or None where unknown, the place in
    words, whether the machine's processes share it)``: the machine's available memory, what this
    process's memory limit (a container's) leaves and, on a GPU, its free memory."""
    places = [
        (available_bytes(), "of memory available on this machine", True),
        (cgroup_free_bytes(), "left under this process's memory limit (cgroup)", True),
    ]
    if device.type == "cuda":
        places.append((torch.cuda.mem_get_info(device)[0], f"free on {device}", False))
    return places


def check_memory(need: int, device: torch.device, what: str, instead: str) -> None:
    """Refuse, in one line, ``need`` bytes of decoded images (``what``: which) that cannot all be
    held: in the machine's available memory and in what this process's memory limit (a container's)
    leaves, where each training process on the machine decodes its own, and, on a GPU, in its free
    memory; ``instead``: what to do. What is not known (no ``MemAvailable``, no limit) refuses
    nothing."""
    processes = idist.get_nproc_per_node() if idist.get_world_size() > 1 else 1
    size = f"{need / 2**30:,.1f} GiB decoded"
    held = f"{size} in each of {processes} processes" if processes > 1 else size
    for free, where, shared in free_memory(device):
        needed, said = (need * processes, held) if shared else (need, size)
        if free is not None and needed > free:
            raise FmtkError(f"{what} are {said}, more than the {free / 2**30:,.1f} GiB {where}: {instead}")
