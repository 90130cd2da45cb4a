"""The version of fmtk (read by setup.cfg, saved in every checkpoint), and of what it runs on."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"


def versions(device: torch.device | None = None) -> dict[str, str]:
    """fmtk's version and those of Python and the libraries a run's figures depend on, and the CPU
    (config.json); for a run on a GPU ``device`` also the GPU's name and the CUDA and cuDNN
    versions torch runs it with, which change its figures as the CPU does a CPU run's."""
    import torch  # (not at import: setup.cfg reads this module's __version__)

    found = {"fmtk": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "pytorch-ignite"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    found["cpu"] = cpu()
    if device is not None and device.type == "cuda":
        found.update(gpu=torch.cuda.get_device_name(device), cuda=str(torch.version.cuda),
                     cudnn=str(torch.backends.cudnn.version()))  # fmt: skip
    return found


# What decides a run's figures' last bits besides its recipe and speed options, by label: the
# entries of config.json's versions (the GPU's only on a GPU).
MACHINE = {"torch": "torch", "CPU": "cpu", "GPU": "gpu", "CUDA": "cuda", "cuDNN": "cudnn"}


def machine_changes(before: Mapping[str, str], now: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """``(label, before, now)`` of each :data:`MACHINE` entry that both ``versions`` record and
    that differs between them."""
    return [(label, before[key], now[key]) for label, key in MACHINE.items()
            if key in before and key in now and before[key] != now[key]]  # fmt: skip


def cpu() -> str:
    """The CPU and the instruction set torch's kernels use on it (``x86_64, Intel(R) Xeon(R) Processor,
    AVX512``): two machines can train the same seed to different figures, since the kernels differ."""
    import torch  # (not at import: setup.cfg reads this module's __version__)

    name = platform.processor()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        name = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                     if line.startswith("model name")), name)  # fmt: skip
    return ", ".join(filter(None, [platform.machine(), name, torch.backends.cpu.get_cpu_capability()]))
