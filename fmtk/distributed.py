"""Training in several processes through ``ignite.distributed``: launching, and what differs per rank.

fmtk adds no process management of its own: ``idist.Parallel`` spawns the processes (or joins
the group ``torchrun`` set up), ``idist.auto_model`` wraps the model for DistributedDataParallel,
and Ignite's metrics reduce across processes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import ignite.distributed as idist
import torch
import torch.distributed.nn.functional  # noqa: F401 - before any group exists: see _run_then_free_the_group
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from fmtk.choices import BACKENDS
from fmtk.errors import FmtkError


def under_torchrun() -> bool:
    """True when ``torchrun`` (or another launcher) started this process as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_main_process() -> bool:
    """True in the process that writes files and prints: rank 0, or the only process (under
    torchrun, before the process group exists, the one whose RANK is 0)."""
    if idist.get_world_size() > 1:
        return idist.get_rank() == 0
    return not under_torchrun() or os.environ["RANK"] == "0"


def torchrun_world_size() -> int:
    """The number of processes torchrun started (readable before the process group exists)."""
    return int(os.environ["WORLD_SIZE"])


def choose_backend(backend: str | None, device_spec: str) -> str:
    """The backend given, else NCCL when training on CUDA, gloo on the CPU."""
    if backend is None:
        wants_cuda = device_spec != "cpu" and torch.cuda.is_available()
        return "nccl" if wants_cuda else "gloo"
    if backend not in BACKENDS:
        raise FmtkError(f"--backend {backend}: choose {' or '.join(BACKENDS)}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise FmtkError("--backend nccl needs CUDA, which this machine does not have; use --backend gloo")
    return backend


def process_device(device: torch.device) -> torch.device:
    """This rank's device: its own GPU (by local rank) under NCCL or CUDA, else ``device``. (CPU
    processes on one machine share its cores: each run's threads are its share,
    :func:`fmtk.device.default_threads`.)"""
    if idist.get_world_size() > 1 and device.type == "cuda":
        return torch.device(f"cuda:{idist.get_local_rank()}")
    return device


def launch(function: Callable[..., Any], settings: Any, nproc_per_node: int | None, backend: str) -> None:
    """Run ``function(local_rank, settings)`` in each process: ``nproc_per_node`` spawned ones, or
    this process as one rank of a ``torchrun`` group (``nproc_per_node`` None)."""
    spawn: dict[str, Any] = {}
    if nproc_per_node:
        spawn["nproc_per_node"] = nproc_per_node
        if "MASTER_PORT" not in os.environ:  # Ignite's default, 2222, fails a second job on the machine
            spawn["master_port"] = free_port()
    with quiet_ignite(), idist.Parallel(backend=backend, **spawn) as parallel:
        parallel.run(_run_then_free_the_group, function, settings)


def free_port() -> int:
    """A TCP port that no one listens on now, for the rendezvous of spawned processes (as
    Lightning's ``find_free_network_port``): a fixed one makes every multi-process run on a
    machine after the first fail (``EADDRINUSE``) while the first lasts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run_then_free_the_group(local_rank: int, function: Callable[..., Any], settings: Any) -> None:
    """``function`` in one process; after it returns, the objects that still hold the process group
    are collected, so that the group's teardown (Ignite's ``destroy_process_group``, right after)
    frees it and joins gloo's threads before the interpreter exits.

    The run's model is DistributedDataParallel, whose reducer holds the group, and the run's
    objects form reference cycles: without this collection the group outlives
    ``destroy_process_group`` and is freed only by the last collection of the exiting
    interpreter. A gloo worker thread that is then still letting go of a finished collective
    whose tensor Python already dropped must take the GIL; an exiting Python 3.11 ends such a
    thread with ``pthread_exit``, whose unwinding through a C++ destructor calls
    ``std::terminate``: "terminate called without an active exception", the rank dies of SIGABRT.
    Only on success: after an error the traceback still holds the run, and a group freed with a
    collective left unfinished (Ctrl-C) would wait for it. ``torch.distributed.nn.functional``
    takes the default group as its functions' default argument when it is first imported: it is
    imported above, before any group exists (Ignite imports it too), or it would hold the group.
    """
    function(local_rank, settings)
    gc.collect()


@contextlib.contextmanager
def quiet_ignite() -> Iterator[None]:
    """Ignite's launcher and auto_model announce every step at INFO on stderr, and torch's spawn
    warns as it stops the other processes after one failed; fmtk prints its own one line."""
    spawn_logger = logging.getLogger("torch.multiprocessing.spawn")
    spawn_level, disabled = spawn_logger.level, logging.root.manager.disable
    logging.disable(logging.INFO)
    spawn_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(disabled)  # nested use (under torchrun) keeps the outer one's setting
        spawn_logger.setLevel(spawn_level)


def check_sharded(splits: dict[str, Any]) -> None:
    """A DataLoader split must shard through a DistributedSampler when several processes train."""
    if idist.get_world_size() == 1:
        return
    for name, split in splits.items():
        if isinstance(split, DataLoader) and not isinstance(split.sampler, DistributedSampler):
            raise FmtkError(
                f"the {name} split is a DataLoader without a DistributedSampler, so every process would "
                "see all of it; build it with ignite.distributed.auto_dataloader"
            )


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process rank 0's BatchNorm statistics (each rank updated them on its own shard),
    so evaluation, which runs on every rank, uses the weights the checkpoint holds."""
    if idist.get_world_size() == 1:
        return
    for buffer in model.buffers():
        buffer.copy_(idist.broadcast(buffer, src=0))
