"""Resume that loses nothing: SIGKILL mid-epoch, Ctrl-C, a kill during a checkpoint write, NaN."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from pathlib import Path
from unittest.mock import ANY

import pytest
import torch
from conftest import assert_one_line_error, fmtk_process, make_mnist_like, tree_snapshot
from conftest import fmtk as fmtk_here

from fmtk.runfolder import read_history

pytestmark = pytest.mark.slow  # each test trains in subprocesses; most kill one and resume it

ITERATIONS_PER_EPOCH = 20  # 1,000 training images of the small dataset, batch 50
# fmnist_dnn: dropout (random), BatchNorm, Adam, plateau and early stopping: every state matters.
RECIPE = ["fmnist_dnn", "--epochs", "4", "--batch-size", "50", "--set", "plateau_patience=1"]

HANDLERS = """
import os
import signal

import torch
from ignite.engine import Events


class IterationCounter:  # a user's handler state: iterations seen, written to counter.csv per epoch

    def __init__(self):
        self.count = 0

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def count_iterations(run):
    counter = run.keep("iteration_counter", IterationCounter())

    @run.trainer.on(Events.ITERATION_COMPLETED)
    def count(engine):
        counter.count += 1

    @run.trainer.on(Events.EPOCH_COMPLETED)
    def write(engine):
        with open(run.run_dir / "counter.csv", "a") as file:
            file.write(f"{engine.state.epoch},{counter.count}\\n")
        run.history[-1]["iterations_seen"] = counter.count  # a column of metrics.csv
        if engine.state.epoch % 2 == 0:  # a column from epoch 2 on, blank in the odd epochs
            loss = torch.tensor(engine.state.metrics["loss"], dtype=torch.float64)  # a tensor: float()ed
            run.history[-1]["even_epoch_loss"] = loss


def at_iteration(run, iteration, action):
    @run.trainer.on(Events.ITERATION_COMPLETED(once=iteration))
    def act(engine):
        action(run)


def sigkill_mid_epoch_3(run):
    at_iteration(run, 2 * 20 + 7, lambda run: os.kill(os.getpid(), signal.SIGKILL))


def ctrl_c_mid_epoch_1(run):
    at_iteration(run, 5, lambda run: os.kill(os.getpid(), signal.SIGINT))


def ctrl_c_while_assembling(run):  # the run folder is made, its config.json not yet written
    os.kill(os.getpid(), signal.SIGINT)


def report_running(run):  # what `fmtk runs` sees of this run while it trains
    from fmtk.runlock import is_running

    seen = run.run_dir / "seen_running.txt"
    at_iteration(run, 3, lambda run: seen.write_text(str(is_running(run.run_dir))))


def ctrl_c_mid_epoch_2(run):
    at_iteration(run, 20 + 5, lambda run: os.kill(os.getpid(), signal.SIGINT))


def poison_weights_in_epoch_2(run):
    at_iteration(run, 20 + 3, lambda run: next(run.model.parameters()).data.fill_(float("nan")))


def sigkill_while_writing_checkpoint_2(run):
    real_save = torch.save

    def save(obj, file, *args, **kwargs):
        if run.trainer.state.epoch == 2 and "trainer" in obj:  # the last checkpoint of epoch 2
            file.write(b"half a checkpoint")
            file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, file, *args, **kwargs)

    torch.save = save
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    # Faint bars: valid accuracy rises every epoch, so the best checkpoint moves each epoch.
    make_mnist_like(root / "data", "FashionMNIST", train=1200, test=300, bar=68)
    (root / "killers.py").write_text(HANDLERS)
    return root


def fmtk(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    """``fmtk run ARGS`` on the workspace's data: in a new process when a handler kills it or
    presses Ctrl-C, else in this one."""
    args = ("run", *args, "--data-dir", str(workspace / "data"))
    if not any(arg.startswith(("killers:sigkill", "killers:ctrl_c")) for arg in args):
        return fmtk_here(*args, cwd=workspace)
    # Ctrl-C as from a terminal, also when these tests run in the background (where the shell
    # starts them with SIGINT ignored, and Python then leaves it ignored).
    return fmtk_process(*args, cwd=workspace, env={**os.environ, "PYTHONPATH": str(workspace)},
                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip


def epoch_rows(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv without the timing column."""
    with (run_dir / "metrics.csv").open() as file:
        return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in csv.DictReader(file)]


def results(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {key: metrics[key] for key in ("best_epoch", "epochs_run", "stopped_early", "checkpoints", "test")}


@pytest.fixture(scope="module")
def uninterrupted(workspace: Path) -> Path:
    result = fmtk(workspace, *RECIPE, "--run-dir", "straight")
    assert result.returncode == 0, result.stderr
    return workspace / "straight"


def test_sigkill_mid_epoch_then_resume_ends_exactly_like_an_uninterrupted_run(
    workspace: Path, uninterrupted: Path
) -> None:
    killed = fmtk(workspace, *RECIPE, "--run-dir", "killed", "--handler", "killers:sigkill_mid_epoch_3")
    assert killed.returncode == -9
    run_dir = workspace / "killed"
    assert sorted(p.name for p in run_dir.glob("last_*.pt")) == ["last_checkpoint_2.pt"]
    assert not (run_dir / "metrics.json").exists()

    resumed = fmtk(workspace, "--resume", "killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    assert epoch_rows(run_dir) == epoch_rows(uninterrupted)
    assert results(run_dir) == results(uninterrupted)
    assert sorted(p.name for p in run_dir.glob("*.pt")) == sorted(p.name for p in uninterrupted.glob("*.pt"))
    assert results(uninterrupted)["best_epoch"] == 4  # the best checkpoint moved after the resume too
    # config.json keeps each start (a resume replaced the speed options it records: the last start's).
    starts = json.loads((run_dir / "config.json").read_text())["starts"]
    assert [(start["after_epoch"], start["command"].split()[1:3]) for start in starts] == [
        (0, ["run", "fmnist_dnn"]),
        (2, ["run", "--resume"]),
    ]
    assert all(start["device"] == "cpu" and "threads" in start["speed"] for start in starts)
    assert "starts" not in json.loads((uninterrupted / "config.json").read_text())
    # The training time counts the epochs before the kill too (it held the resumed start's alone).
    with (run_dir / "metrics.csv").open() as file:
        trained = sum(float(row["epoch_seconds"]) for row in csv.DictReader(file))
    assert json.loads((run_dir / "metrics.json").read_text())["train_seconds"] >= round(trained, 2)


# Every option beyond the notebooks on at once: a per-iteration schedule with warm-up (Ignite's
# ConcatScheduler state), optimizer arguments (momentum buffers), label smoothing, clipping, and
# an EMA of the weights (its averaged weights, which validation and the best checkpoint use),
# augmentation (drawn from the (seed, epoch) generator).
MODERN = ["fmnist_dnn", "--epochs", "4", "--batch-size", "50", "--set", "plateau_patience=none",
          "--set", "schedule=cosine", "--set", "warmup_epochs=1", "--set", "label_smoothing=0.1",
          "--set", "optimizer=SGD", "--set", "lr=0.05", "--set", "optimizer_args=momentum:0.9,nesterov:true",
          "--set", "max_grad_norm=1.0", "--set", "ema_decay=0.9", "--set", "augment_shift=2",
          "--set", "augment_erase=0.25", "--set", "augment_flip=0.5",
          "--set", "augment_crop=0.5"]  # fmt: skip


def test_sigkill_then_resume_with_every_training_option_on(workspace: Path) -> None:
    straight = fmtk(workspace, *MODERN, "--run-dir", "modern")
    assert straight.returncode == 0, straight.stderr
    killed = fmtk(
        workspace, *MODERN, "--run-dir", "modern_killed", "--handler", "killers:sigkill_mid_epoch_3"
    )
    assert killed.returncode == -9
    resumed = fmtk(workspace, "--resume", "modern_killed")
    assert resumed.returncode == 0, resumed.stderr
    rows = epoch_rows(workspace / "modern_killed")
    assert rows == epoch_rows(workspace / "modern")
    # The first epoch is the warm-up from lr / 100; the cosine starts at lr.
    assert [float(row["lr"]) for row in rows][:2] == pytest.approx([0.0005, 0.05], rel=1e-3)
    assert results(workspace / "modern_killed") == results(workspace / "modern")


# Gradient accumulation over groups of 3 batches (20 an epoch: the last group has 2), with a
# per-iteration schedule and an EMA that move once per optimizer step; killed inside a group
# (after batch 7 of epoch 3, the first of its group).
ACCUMULATING = ["fmnist_dnn", "--epochs", "4", "--batch-size", "50", "--set", "plateau_patience=none",
                "--set", "accumulate_steps=3", "--set", "schedule=onecycle",
                "--set", "ema_decay=0.9"]  # fmt: skip


def test_sigkill_then_resume_with_gradient_accumulation(workspace: Path) -> None:
    straight = fmtk(workspace, *ACCUMULATING, "--run-dir", "accumulating")
    assert straight.returncode == 0, straight.stderr
    killed = fmtk(workspace, *ACCUMULATING, "--run-dir", "accumulating_killed",
                  "--handler", "killers:sigkill_mid_epoch_3")  # fmt: skip
    assert killed.returncode == -9
    resumed = fmtk(workspace, "--resume", "accumulating_killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    assert epoch_rows(workspace / "accumulating_killed") == epoch_rows(workspace / "accumulating")
    assert results(workspace / "accumulating_killed") == results(workspace / "accumulating")
    state = torch.load(workspace / "accumulating" / "last_checkpoint_4.pt", weights_only=True)
    assert state["lr_scheduler"]["event_index"] == 4 * 7  # ceil(20 / 3) optimizer steps an epoch


# mixup and CutMix, each sample either (mix_switch_prob), with label smoothing on top; killed mid-epoch 3:
# the resumed run mixes epochs 3 and 4 from the same (seed, epoch, batch) seeds.
MIXING = [*RECIPE, "--set", "mixup_alpha=0.2", "--set", "cutmix_alpha=1.0", "--set", "label_smoothing=0.1"]


def test_sigkill_then_resume_with_mixup_and_cutmix(workspace: Path, uninterrupted: Path) -> None:
    straight = fmtk(workspace, *MIXING, "--run-dir", "mixing")
    assert straight.returncode == 0, straight.stderr
    killed = fmtk(workspace, *MIXING, "--run-dir", "mixed_killed", "--handler", "killers:sigkill_mid_epoch_3")
    assert killed.returncode == -9
    resumed = fmtk(workspace, "--resume", "mixed_killed")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 2" in resumed.stdout
    assert epoch_rows(workspace / "mixed_killed") == epoch_rows(workspace / "mixing")
    assert results(workspace / "mixed_killed") == results(workspace / "mixing")
    mixed, plain = epoch_rows(workspace / "mixing"), epoch_rows(uninterrupted)
    assert all(a["train_loss"] != b["train_loss"] for a, b in zip(mixed, plain, strict=True))  # it mixed


def test_a_handlers_kept_state_survives_sigkill_and_resume(workspace: Path, uninterrupted: Path) -> None:
    counting = ["--handler", "killers:count_iterations"]
    straight = fmtk(workspace, *RECIPE, "--run-dir", "counted", *counting)
    assert straight.returncode == 0, straight.stderr
    expected = "".join(f"{epoch},{epoch * ITERATIONS_PER_EPOCH}\n" for epoch in range(1, 5))
    assert (workspace / "counted" / "counter.csv").read_text() == expected

    killed = fmtk(workspace, *RECIPE, "--run-dir", "counted_killed", *counting,
                  "--handler", "killers:sigkill_mid_epoch_3")  # fmt: skip
    assert killed.returncode == -9
    run_dir = workspace / "counted_killed"
    assert torch.load(run_dir / "last_checkpoint_2.pt", weights_only=True)["iteration_counter"] == {
        "count": 2 * ITERATIONS_PER_EPOCH
    }
    # Resumed without the handler that kept it: refused, one line naming the state, nothing changed.
    before = tree_snapshot(run_dir)
    assert_one_line_error(fmtk(workspace, "--resume", "counted_killed"), "'iteration_counter'", "--handler")
    assert tree_snapshot(run_dir) == before

    resumed = fmtk(workspace, "--resume", "counted_killed", *counting)
    assert resumed.returncode == 0, resumed.stderr
    assert (run_dir / "counter.csv").read_text() == expected  # 60 and 80, not 20 and 40
    finished = fmtk(workspace, "--resume", "counted_killed", *counting)  # how to go on: with its handler
    going_on = "fmtk run --resume counted_killed --epochs N --handler killers:count_iterations (N > 4)"
    assert (
        finished.returncode == 0 and f"is finished (4 of 4 epochs); to go on: {going_on}" in finished.stdout
    )
    # The handler's values in metrics.csv, so a resumed run's history has them for every epoch.
    rows = epoch_rows(run_dir)
    assert rows == epoch_rows(workspace / "counted")
    assert [row.pop("iterations_seen") for row in rows] == [str(20 * epoch) for epoch in range(1, 5)]
    losses = [row["train_loss"] for row in rows]
    assert [row.pop("even_epoch_loss") for row in rows] == ["", losses[1], "", losses[3]]
    assert rows == epoch_rows(uninterrupted)
    history, _ = read_history(run_dir)
    assert history[1]["iterations_seen"] == 40 and "even_epoch_loss" not in history[0]
    assert results(run_dir) == results(workspace / "counted") == results(uninterrupted)


OWN_LOADER = """import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fmtk import Recipe
from fmtk.data import DataSplits


class Noisy(Dataset):  # blobs with noise drawn as each sample is read: the workers' seeds count
    def __init__(self, count, seed):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (count,), generator=generator)
        self.points = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))[self.labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.points[index] + torch.randn(8), self.labels[index]


def data(recipe, data_dir, device):
    # As PyTorch's reproducibility notes advise: the loader's own seeded generator.
    generator = torch.Generator().manual_seed(recipe.seed)
    train = DataLoader(Noisy(600, 1), batch_size=30, shuffle=True, generator=generator,
                       num_workers=recipe.options["workers"])
    valid, test = (DataLoader(Noisy(200, seed), batch_size=50) for seed in (2, 3))
    return DataSplits(train, valid, test, ["a", "b", "c"])


recipe = Recipe(
    name="own_loader",
    description="blobs from a DataLoader with its own generator",
    model=lambda recipe: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)),
    data=data,
    optimizer="SGD",
    lr=0.05,
    batch_size=30,
    epochs=4,
    options={"workers": 0},
)
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_a_recipe_s_own_loader_generator_resumes_exactly(workspace: Path, workers: int) -> None:
    """A DataLoader with its own seeded generator draws each epoch's order (and its workers' seeds)
    from it, which torch's global state does not hold: a resumed run drew epoch 1's order again
    (the best checkpoint and the test accuracy moved). The last checkpoint keeps it now."""
    (workspace / "own_loader.py").write_text(OWN_LOADER)
    own = ["own_loader.py", "--set", f"workers={workers}"]
    straight = fmtk(workspace, *own, "--run-dir", f"own_{workers}")
    assert straight.returncode == 0, straight.stderr
    killed = fmtk(
        workspace, *own, "--run-dir", f"own_killed_{workers}", "--handler", "killers:sigkill_mid_epoch_3"
    )
    assert killed.returncode == -9
    resumed = fmtk(workspace, "--resume", f"own_killed_{workers}")
    assert resumed.returncode == 0, resumed.stderr
    assert epoch_rows(workspace / f"own_killed_{workers}") == epoch_rows(workspace / f"own_{workers}")
    assert results(workspace / f"own_killed_{workers}") == results(workspace / f"own_{workers}")


def test_ctrl_c_keeps_the_last_checkpoint_and_says_how_to_resume(
    workspace: Path, uninterrupted: Path
) -> None:
    interrupted = fmtk(workspace, *RECIPE, "--run-dir", "ctrl_c", "--handler", "killers:ctrl_c_mid_epoch_2")
    assert interrupted.returncode == 130
    # with the run's handlers, which a resume needs (before: left out, and a kept state's resume failed)
    resume = "resume with: fmtk run --resume ctrl_c --handler killers:ctrl_c_mid_epoch_2"
    assert_one_line_error(interrupted, "last_checkpoint_1.pt", resume)
    run_dir = workspace / "ctrl_c"
    assert [row["epoch"] for row in epoch_rows(run_dir)] == ["1"]
    torch.load(run_dir / "last_checkpoint_1.pt", weights_only=True)
    assert fmtk(workspace, "--resume", "ctrl_c").returncode == 0
    assert results(run_dir) == results(uninterrupted)


def test_ctrl_c_before_the_first_checkpoint_says_so_and_resume_starts_again(
    workspace: Path, uninterrupted: Path
) -> None:
    interrupted = fmtk(workspace, *RECIPE, "--run-dir", "early_c", "--handler", "killers:ctrl_c_mid_epoch_1",
                       "--handler", "killers:report_running")  # fmt: skip
    assert interrupted.returncode == 130
    again = "fmtk run --resume early_c --handler killers:ctrl_c_mid_epoch_1 --handler killers:report_running"
    assert_one_line_error(interrupted, "interrupted before the first checkpoint", again)
    run_dir = workspace / "early_c"
    assert (run_dir / "seen_running.txt").read_text() == "True"
    assert not list(run_dir.glob("*.pt")) and (run_dir / "config.json").exists()
    resumed = fmtk(workspace, "--resume", "early_c")
    assert resumed.returncode == 0, resumed.stderr
    assert "starting the run again from the beginning" in resumed.stdout
    assert results(run_dir) == results(uninterrupted)
    assert epoch_rows(run_dir) == epoch_rows(uninterrupted)


@pytest.mark.parametrize("run_dir", ["made_c", None], ids=["--run-dir", "runs/<recipe>/<time>"])
def test_ctrl_c_before_the_config_is_written_keeps_nothing(workspace: Path, run_dir: str | None) -> None:
    """Ctrl-C while the run is assembled (data loading): its folder cannot be resumed yet (no
    config.json), so it goes as a failed start does, and the line says so (it was kept, empty, with
    a resume command that failed)."""
    where = ["--run-dir", run_dir] if run_dir else ["--output-dir", "early_runs"]
    interrupted = fmtk(workspace, *RECIPE, *where, "--handler", "killers:ctrl_c_while_assembling")
    assert interrupted.returncode == 130
    assert_one_line_error(interrupted, "interrupted before the run began; nothing was kept")
    assert not (workspace / (run_dir or "early_runs")).exists()


def test_kill_while_writing_a_checkpoint_leaves_the_previous_one(
    workspace: Path, uninterrupted: Path
) -> None:
    killed = fmtk(
        workspace, *RECIPE, "--run-dir", "torn", "--handler", "killers:sigkill_while_writing_checkpoint_2"
    )
    assert killed.returncode == -9
    run_dir = workspace / "torn"
    torch.load(run_dir / "last_checkpoint_1.pt", weights_only=True)  # intact
    assert not (run_dir / "last_checkpoint_2.pt").exists()  # the torn write never got its name
    assert fmtk(workspace, "--resume", "torn").returncode == 0
    assert not list(run_dir.glob("tmp*"))  # the torn temporary file is cleaned up
    assert epoch_rows(run_dir) == epoch_rows(uninterrupted)
    assert results(run_dir) == results(uninterrupted)


def test_nan_loss_stops_with_one_line_and_keeps_the_good_checkpoint(workspace: Path) -> None:
    result = fmtk(workspace, *RECIPE, "--run-dir", "nan", "--handler", "killers:poison_weights_in_epoch_2")
    assert_one_line_error(result, "NaN or infinite at epoch 2, iteration 24")
    assert result.returncode == 1
    run_dir = workspace / "nan"
    assert [p.name for p in run_dir.glob("last_*.pt")] == ["last_checkpoint_1.pt"]
    weights = torch.load(run_dir / "last_checkpoint_1.pt", weights_only=True)["model"]
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_finished_run_says_so_and_changes_nothing(workspace: Path, uninterrupted: Path) -> None:
    before = tree_snapshot(uninterrupted)
    result = fmtk(workspace, "--resume", "straight")
    assert result.returncode == 0 and "is finished (4 of 4 epochs)" in result.stdout
    assert tree_snapshot(uninterrupted) == before


def test_resume_with_more_epochs_goes_on(workspace: Path, uninterrupted: Path) -> None:
    import shutil

    run_dir = workspace / "longer"
    shutil.copytree(uninterrupted, run_dir)
    result = fmtk(workspace, "--resume", "longer", "--epochs", "6")
    assert result.returncode == 0, result.stderr
    assert [row["epoch"] for row in epoch_rows(run_dir)] == ["1", "2", "3", "4", "5", "6"]
    assert epoch_rows(run_dir)[:4] == epoch_rows(uninterrupted)
    assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 6
    assert [p.name for p in run_dir.glob("last_*.pt")] == ["last_checkpoint_6.pt"]


@pytest.mark.parametrize(
    "edit, fragments",
    [
        ("garbage", ["last_checkpoint_4.pt: not a readable fmtk checkpoint"]),
        ("other_recipe", ["was made by recipe fmnist_dnn, not mnist_dnn"]),
        ("other_architecture", ["holds a Sequential with", "fmnist_dnn builds a Sequential with", "variant"]),
        (
            "no_checkpoint",
            [
                "bad_no_checkpoint: no last_checkpoint_*.pt to resume from; a new run from its "
                "best one: fmtk run --resume bad_no_checkpoint --checkpoint best"
            ],
        ),
    ],
)
def test_resume_refuses_a_checkpoint_it_cannot_use(
    workspace: Path, uninterrupted: Path, edit: str, fragments: list[str]
) -> None:
    import shutil

    run_dir = workspace / f"bad_{edit}"
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "metrics.json").unlink()  # as if it had been interrupted during testing
    checkpoint = run_dir / "last_checkpoint_4.pt"
    config = json.loads((run_dir / "config.json").read_text())
    if edit == "garbage":
        checkpoint.write_bytes(b"this is not a checkpoint")
    elif edit == "other_recipe":
        config["name"] = "mnist_dnn"
        config["options"] = {"variant": "relu"}
    elif edit == "other_architecture":
        state = torch.load(checkpoint, weights_only=True)
        state["model"] = {k: v[..., :3] if v.ndim == 2 else v for k, v in state["model"].items()}
        torch.save(state, checkpoint)
    else:
        checkpoint.unlink()
    (run_dir / "config.json").write_text(json.dumps(config))
    before = tree_snapshot(run_dir)
    assert_one_line_error(fmtk(workspace, "--resume", run_dir.name), *fragments)
    assert tree_snapshot(run_dir) == before


def test_resume_cannot_change_the_recipe(workspace: Path, uninterrupted: Path) -> None:
    result = fmtk(workspace, "--resume", "straight", "--lr", "0.5")
    assert_one_line_error(result, "--resume keeps the run's recipe; --lr cannot change it")


def test_a_finished_run_whose_schedule_cannot_go_on_names_the_warm_start_that_does(tmp_path: Path) -> None:
    done = fmtk_here("run", "digits_mlp", "--epochs", "2", "--set", "schedule=cosine", "--run-dir", "cos",
                     cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    command = f"fmtk run --config {Path('cos') / 'config.json'} --set weights=cos --set epochs=N"
    before = tree_snapshot(tmp_path / "cos")
    finished = fmtk_here("run", "--resume", "cos", cwd=tmp_path)
    assert finished.returncode == 0
    assert "cos is finished (2 of 2 epochs; its cosine schedule ended with them): " in finished.stdout
    assert f"start a new run: {command}" in finished.stdout
    refused = fmtk_here("run", "--resume", "cos", "--epochs", "3", cwd=tmp_path)
    assert_one_line_error(refused, "--epochs 3: the run's cosine schedule is laid out over its 2 epochs",
                          f"start a new run: {command}")  # fmt: skip
    assert tree_snapshot(tmp_path / "cos") == before
    # The command it names works: a new run from the finished one's best weights.
    named = command.replace("=N", "=1").split()[1:]
    warm = fmtk_here(*named, "--run-dir", "on", cwd=tmp_path)
    assert warm.returncode == 0, warm.stderr
    config = json.loads((tmp_path / "on" / "config.json").read_text())
    assert (
        config["weights"] == str(tmp_path / "cos")  # in full: a --config run from another folder finds it
        and config["epochs"] == 1
        and "best_checkpoint_" in config["started_from"]
    )
    (tmp_path / "elsewhere").mkdir()  # the warm run made again from another folder (it was not found)
    again = fmtk_here(
        "run", "--config", "../on/config.json", "--run-dir", "again", cwd=tmp_path / "elsewhere"
    )
    assert again.returncode == 0, again.stderr


def test_an_early_stopped_run_names_its_next_step(tmp_path: Path) -> None:
    diverging = ["--epochs", "8", "--set", "early_stopping_patience=1", "--set", "lr=2"]  # stops by epoch 4
    done = fmtk_here("run", "digits_mlp", *diverging, "--run-dir", "early", cwd=tmp_path)
    assert done.returncode == 0 and "early stopping:" in done.stdout, done.stderr
    results = json.loads((tmp_path / "early" / "metrics.json").read_text())
    assert results["stopped_early"] is True and results["stopped_by"] is None
    # The decision is in the last checkpoint: a kill after it, before testing, resumes to no more epochs.
    [last] = (tmp_path / "early").glob("last_checkpoint_*.pt")
    stop = torch.load(last, weights_only=True)["stop"]
    assert stop == {"reason": "early stopping", "epoch": results["epochs_run"]}
    (tmp_path / "early" / "metrics.json").unlink()
    tested = fmtk_here("run", "--resume", "early", cwd=tmp_path)
    assert tested.returncode == 0 and "train_loss" not in tested.stdout, tested.stdout  # no epoch trained
    assert json.loads((tmp_path / "early" / "metrics.json").read_text()) == {**results, "train_seconds": ANY}
    finished = fmtk_here("run", "--resume", "early", cwd=tmp_path)
    assert (
        finished.returncode == 0 and "early is finished: early stopping ended it at epoch " in finished.stdout
    )
    assert "to train on from its best weights, start a new run: fmtk run --config" in finished.stdout


def test_resume_from_the_best_checkpoint_is_a_new_run_that_records_where_it_came_from(tmp_path: Path) -> None:
    done = fmtk_here("run", "digits_mlp", "--epochs", "3", "--run-dir", "first", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    before = tree_snapshot(tmp_path / "first")
    [best] = (tmp_path / "first").glob("best_checkpoint_*.pt")
    again = fmtk_here("run", "--resume", "first", "--checkpoint", "best", "--epochs", "2",
                      "--run-dir", "from_best", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert tree_snapshot(tmp_path / "first") == before  # the run it came from is not touched
    config = json.loads((tmp_path / "from_best" / "config.json").read_text())
    assert (
        config["weights"] == str(tmp_path / "first") and config["epochs"] == 2
    )  # in full: found from anywhere
    assert config["started_from"] == f"loaded 4 of 4 tensors from {tmp_path / 'first' / best.name}"
    assert config["command"].startswith("fmtk run --resume first --checkpoint best")
    # It starts where the best epoch was: its first epoch's loss is far below a first epoch's from scratch.
    assert (
        float(epoch_rows(tmp_path / "from_best")[0]["train_loss"])
        < 0.5
        < float(epoch_rows(tmp_path / "first")[0]["train_loss"])
    )
    refused = fmtk_here("run", "digits_mlp", "--checkpoint", "best", cwd=tmp_path)
    assert_one_line_error(refused, "--checkpoint best goes with --resume RUN_DIR")
