"""Training in several processes: per-rank shards, and 2 gloo processes on the CPU end to end."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_bytes
from torch.utils.data import TensorDataset

from fmtk.data.batches import TensorBatches
from fmtk.data.images import LoaderBatches
from fmtk.distributed import free_port, launch


def sample_ids(batches) -> list[list[int]]:
    """The ids (labels are 0..N-1) of each batch."""
    return [y.tolist() for _, y in batches]


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("count", [30, 31, 37])
def test_training_shards_are_disjoint_parts_of_the_single_process_batches(
    world_size: int, count: int
) -> None:
    images = torch.zeros(count, 1, 2, 2, dtype=torch.uint8)
    single = TensorBatches(images, torch.arange(count), 6, shuffle=True, seed=3, shard=(0, 1))
    shards = [
        TensorBatches(images, torch.arange(count), 6, shuffle=True, seed=3, shard=(rank, world_size))
        for rank in range(world_size)
    ]
    for epoch in (1, 2):
        for batches in (single, *shards):
            batches.set_epoch(epoch)
        per_rank = [sample_ids(shard) for shard in shards]
        assert len({len(batches) for batches in per_rank}) == 1  # every process takes as many steps
        assert all(len(batches) == len(shard) for batches, shard in zip(per_rank, shards, strict=True))
        steps = [sorted(sum(parts, [])) for parts in zip(*per_rank, strict=True)]
        everything = sum(steps, [])
        padding = len(everything) - count
        assert 0 <= padding < world_size  # padded only up to a multiple of the process count
        assert set(everything) == set(range(count))  # together they cover the split
        # Disjoint: apart from the padding (repeats of the epoch's first samples) no sample twice.
        assert len(set(everything)) == count
        order = [i for batch in sample_ids(single) for i in batch]
        assert sorted(everything) == sorted(order + order[:padding])
        # Each step's shards together are the single-process batch of that step.
        if padding == 0:
            assert steps == [sorted(batch) for batch in sample_ids(single)]


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_shards_partition_the_split_without_padding(world_size: int) -> None:
    images = torch.zeros(25, 1, 2, 2, dtype=torch.uint8)
    shards = [
        TensorBatches(images, torch.arange(25), 4, shard=(rank, world_size)) for rank in range(world_size)
    ]
    seen = [i for shard in shards for batch in sample_ids(shard) for i in batch]
    assert sorted(seen) == list(range(25))
    assert all(len(shard) == len(sample_ids(shard)) for shard in shards)
    assert TensorBatches(images, torch.arange(25), 4, shard=(1, 2)).whole().world_size == 1


def test_loader_shards_are_disjoint_and_cover_the_split() -> None:
    dataset = TensorDataset(torch.zeros(22, 3, 2, 2, dtype=torch.uint8), torch.arange(22))
    for shuffle, world_size in [(True, 2), (False, 2), (False, 3)]:
        seen = []
        for rank in range(world_size):
            batches = LoaderBatches(
                dataset, 6, torch.device("cpu"), shuffle=shuffle, seed=1, workers=0, shard=(rank, world_size)
            )
            batches.set_epoch(2)
            seen += [i for batch in sample_ids(batches) for i in batch]
        assert sorted(seen) == list(range(22))  # 22 is even: DistributedSampler pads nothing


def fmtk_command(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmtk", *args], cwd=cwd, capture_output=True, text=True, timeout=600, env=env
    )


@pytest.mark.slow  # several processes, each importing torch
def test_two_gloo_processes_train_resume_and_match_one_process(
    real_data: Path, real_mnist_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run_dir = tmp_path / "two"
    common = ["--data-dir", str(real_data), "--device", "cpu"]
    done = fmtk_command("run", "mnist_dnn", "--epochs", "1", "--nproc-per-node", "2",
                        "--run-dir", str(run_dir), *common, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("epoch   1/1") == 1  # only rank 0 prints
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # and writes
    # Resuming a 2-process run, in 2 processes as it trained: every rank loads the last checkpoint.
    done = fmtk_command("run", "--resume", str(run_dir), "--epochs", "2", *common, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resuming after epoch 1" in done.stdout
    names = {path.name for path in run_dir.iterdir()}
    best = [name for name in names if name.startswith("best_checkpoint_")]
    events = [name for name in names if name.startswith("events.out.tfevents.")]
    assert len(best) == 1 and len(events) == 2  # one TensorBoard file per launch, by rank 0
    expected = {"config.json", "metrics.csv", "metrics.json", "last_checkpoint_2.pt", "iterations"}
    assert names == expected | {
        "curves.png",
        "confusion_best.png",
        "top_losses.png",
        "top_losses.csv",
        *best,
        *events,
    }
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2"]  # each epoch written once
    two = json.loads((run_dir / "metrics.json").read_text())
    assert two["processes"] == 2 and two["epochs_run"] == 2
    assert json.loads((run_dir / "config.json").read_text())["processes"] == 2

    one_process_run, _ = real_mnist_run  # the same 2 epochs of mnist_dnn in one process on the CPU
    one = json.loads((one_process_run / "metrics.json").read_text())
    difference = abs(two["test"]["best"]["accuracy"] - one["test"]["best"]["accuracy"])
    assert difference <= 0.005, (two["test"], one["test"])


@pytest.mark.slow  # several processes, each importing torch
def test_two_multi_process_runs_train_side_by_side_on_one_machine(tmp_path: Path) -> None:
    # Each spawned job meets its processes on a port of its own: with a fixed one (Ignite's 2222) the
    # second failed with EADDRINUSE while the first trained.
    env = {name: value for name, value in os.environ.items() if name != "MASTER_PORT"}
    jobs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fmtk",
                "run",
                "digits_mlp",
                "--nproc-per-node",
                "2",
                "--epochs",
                "2",
                "--device",
                "cpu",
                "--run-dir",
                run,
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for run in ("first", "second")
    ]
    for job in jobs:
        _, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stderr
    first, second = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("first", "second"))
    assert first["processes"] == second["processes"] == 2 and first["test"] == second["test"]


STOPPERS = """
import os
import signal

import ignite.distributed as idist
from ignite.engine import Events


def stop_the_launcher(run, number):  # each process writes its pid; rank 0 signals the launcher
    (run.run_dir / f"pid_{idist.get_rank()}").write_text(str(os.getpid()))
    launcher = os.getppid() if idist.get_world_size() > 1 else os.getpid()
    if idist.get_rank() == 0:
        at = len(run.data.train) + 3  # in epoch 2
        run.trainer.on(Events.ITERATION_COMPLETED(once=at))(lambda _: os.kill(launcher, number))


def term(run):
    stop_the_launcher(run, signal.SIGTERM)


def kill(run):
    stop_the_launcher(run, signal.SIGKILL)


def launcher_int(run):  # `kill -INT PID`: the launcher alone
    stop_the_launcher(run, signal.SIGINT)


def interrupt(run):  # `kill -INT -- -PGID`: the group's processes take it, the launcher ignores it
    (run.run_dir / f"pid_{idist.get_rank()}").write_text(str(os.getpid()))
    if idist.get_rank() == 0:
        at = len(run.data.train) + 3
        run.trainer.on(Events.ITERATION_COMPLETED(once=at))(lambda _: os.killpg(0, signal.SIGINT))


ctrl_c = interrupt  # a terminal's Ctrl-C: the whole group, the launcher too
"""


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie no one reaped has too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.slow  # several processes, each importing torch
@pytest.mark.parametrize(
    ("processes", "stop"),
    [(1, "term"), (2, "term"), (2, "kill"), (2, "interrupt"), (2, "launcher_int"), (2, "ctrl_c")],
)
def test_a_launcher_stopped_by_sigterm_or_sigkill_leaves_no_process_training(
    tmp_path: Path, processes: int, stop: str
) -> None:
    # As a background job of a script starts it: with SIGINT ignored, which spawn passes on; with
    # launcher_int (before: its processes trained on to the end) and ctrl_c as a terminal does.
    ignore = stop not in ("launcher_int", "ctrl_c")
    (tmp_path / "stoppers.py").write_text(STOPPERS)
    command = [sys.executable, "-m", "fmtk", "run", "digits_mlp", "--epochs", "3", "--device", "cpu",
               "--nproc-per-node", str(processes), "--run-dir", "run"]  # fmt: skip
    (temp := tmp_path / "tmp").mkdir()  # where the launcher keeps its processes' errors
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "TMPDIR": str(temp)}
    stopped = subprocess.run([*command, "--handler", f"stoppers:{stop}"], cwd=tmp_path, env=env, text=True,
                             capture_output=True, timeout=600, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN if ignore
                                                              else signal.SIG_DFL))  # fmt: skip
    if stop != "kill":  # as Ctrl-C: every process stops, the run is kept to resume
        assert stopped.returncode == 130, stopped.stderr
        assert stopped.stderr.strip().splitlines()[-1] == (
            "interrupted: the last complete checkpoint is last_checkpoint_1.pt; resume with: "
            f"fmtk run --resume run --handler stoppers:{stop}"
        )
    else:
        assert stopped.returncode == -signal.SIGKILL
    pids = [int(path.read_text()) for path in (tmp_path / "run").glob("pid_*")]
    assert len(pids) == processes
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(gone(pid) for pid in pids)  # before: they trained on, unseen, beside a resume
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1"]  # stopped in epoch 2, not trained on
    left = [path.name for path in temp.glob("fmtk-errors-*")]  # a SIGKILLed launcher's errors folder
    assert len(left) == (processes > 1 and stop == "kill")
    resume = ["run", "--resume", "run", "--nproc-per-node", str(processes)]
    resumed = fmtk_command(*resume, cwd=tmp_path, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert not list(temp.glob("fmtk-errors-*"))  # removed by the next launch (before: kept for good)
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows] == ["epoch", "1", "2", "3"]


def test_errors_in_spawned_processes_are_one_line_and_leave_nothing(tmp_path: Path) -> None:
    done = fmtk_command("run", "digits_mlp", "--nproc-per-node", "3", "--output-dir", "runs", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "Error: batch_size 32 is not divisible by 3 processes; the recipe's batch size is the global "
        "batch of one step"
    )
    done = fmtk_command("run", "mnist_dnn", "--nproc-per-node", "2", "--data-dir", "nowhere",
                        "--output-dir", "runs", cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: MNIST not found in nowhere/MNIST/raw")
    assert not (tmp_path / "runs").exists()  # the run folder made before spawning is removed, and runs/
    assert not (tmp_path / "nowhere").exists()  # nor the folders of the download (one process tries it)
    done = fmtk_command("run", "digits_mlp", "--backend", "gloo", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == "Error: --backend gloo needs --nproc-per-node 2 or more (or torchrun)"


@pytest.mark.slow  # several processes, each importing torch
def test_photos_two_processes_cannot_both_hold_are_one_line(catdog_root: Path, tmp_path: Path) -> None:
    # At a size where one process's decoded photos (52 of them) fit in the available memory, two do not.
    size = math.ceil(math.sqrt(0.7 * free_bytes(torch.device("cpu")) / (52 * 3)))
    done = fmtk_command("run", "catdog_vgg", "--data-dir", str(catdog_root), "--set", f"image_size={size}",
                        "--nproc-per-node", "2", "--device", "cpu", "--output-dir", "runs",
                        cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, done.stderr
    assert errors[0].startswith(f"Error: data_cache=memory: the 52 photos at {size} px are ")
    assert "GiB decoded in each of 2 processes, more than the " in errors[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow  # several processes, each importing torch
def test_torchrun_joins_its_process_group(mnist_root: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "fmtk", "run",
               "mnist_dnn", "--epochs", "2", "--batch-size", "20", "--device", "cpu",
               "--data-dir", str(mnist_root), "--run-dir", str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("run folder:") == 2 and done.stdout.count("epoch   2/2") == 1  # rank 0 only
    assert "INFO" not in done.stderr  # Ignite's launcher lines stay quiet
    results = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert results["processes"] == 2 and results["epochs_run"] == 2
    assert results["test"]["best"]["accuracy"] > 0.5  # bars in row bands: learnt in 2 epochs
    resume = [*command[: command.index("run") + 1], "--resume", str(tmp_path / "run"), "--epochs", "3"]
    resumed = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr  # before: "give --nproc-per-node to torchrun"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_run"] == 3


def _threads() -> list[str]:
    """The names of this process's threads, native ones too (gloo's: pt_gloo_runloop, …)."""
    return [
        Path(f"/proc/self/task/{task}/comm").read_text().strip() for task in os.listdir("/proc/self/task")
    ]


def _group_threads(names: list[str]) -> list[str]:
    """The threads of a gloo process group: its run loops, its transport, its TCP store."""
    return [name for name in names if "gloo" in name or "tcpstore" in name]


def _train_one_step(local_rank: int, keep: list) -> None:
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))  # its reducer holds the group
    model(torch.ones(3, 2)).sum().backward()
    cycle = {"model": model}
    cycle["self"] = cycle  # the run's objects are in reference cycles, as Engine's handlers make them
    keep.append(_threads())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names in /proc")
def test_launch_frees_the_process_group_before_returning(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    assert not _group_threads(_threads())
    during: list[list[str]] = []
    launch(_train_one_step, during, None, "gloo")
    assert _group_threads(during[0])  # gloo's worker and transport threads ran the step
    # and are joined: none is left to take the GIL at exit. The group's own threads only: the
    # count of all threads once moved by one under load, this process running other tests' leftovers.
    assert not _group_threads(_threads()), _threads()


@pytest.mark.slow  # several processes, each importing torch
def test_resume_from_the_best_checkpoint_in_two_processes(tmp_path: Path) -> None:
    done = fmtk_command(
        "run", "digits_mlp", "--epochs", "2", "--run-dir", "first", "--device", "cpu", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    [best] = (tmp_path / "first").glob("best_checkpoint_*.pt")
    options = ["--epochs", "1", "--run-dir", "two", "--nproc-per-node", "2", "--device", "cpu"]
    again = fmtk_command("run", "--resume", "first", "--checkpoint", "best", *options, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (
        again.stdout.count(f"loaded 4 of 4 tensors from {tmp_path / 'first' / best.name}") == 1
    )  # rank 0 says it
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["processes"] == 2 and config["weights"] == str(tmp_path / "first")  # in full
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["epochs_run"] == 1
    # Resumed in more processes than it trained in: said, as another device would be.
    more = fmtk_command("run", "--resume", "first", "--epochs", "3", "--nproc-per-node", "2", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "resuming with 2 processes, not 1: the epochs from here on will not be exactly" in more.stdout
