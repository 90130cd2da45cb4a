"""Where a run trains: the one place a device name given by a user becomes a ``torch.device``."""

from __future__ import annotations

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
