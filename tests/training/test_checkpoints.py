"""What a run keeps: the registry's checks, the last checkpoint holding every kept state, restoring."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tree_snapshot
from ignite.engine import Engine, Events
from torch.utils._pytree import tree_leaves

from fmtk.device import threads_by_default
from fmtk.errors import FmtkError
from fmtk.recipe import apply_overrides
from fmtk.recipe_loading import load_recipe
from fmtk.runfolder import find_last_checkpoint
from fmtk.training.build import build_run
from fmtk.training.checkpoints import (
    RandomState,
    ResumePoint,
    attach_checkpoints,
    check_keepable,
    load_model_weights,
    restore,
)
from fmtk.training.engines import SpeedOptions

CPU = torch.device("cpu")


class Counter:
    """A user's handler state: how many iterations it has seen."""

    def __init__(self) -> None:
        self.count = 0

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.count = state["count"]


class Holding:
    """A state whose state_dict is ``state``."""

    def __init__(self, state: object) -> None:
        self.state = state

    def state_dict(self) -> object:
        return self.state

    def load_state_dict(self, state: object) -> None:
        self.state = state


def test_a_state_that_comes_to_hold_what_a_checkpoint_cannot_give_back_stops_the_run_at_once(
    tmp_path: Path,
) -> None:
    run = digits_run(tmp_path / "run", epochs=3)
    held = run.keep("held", Holding({"counts": torch.zeros(2), "seen": [1]}))
    run.trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=2), lambda _: held.state.update(seen=[1, np.int64(2)])
    )  # fmt: skip
    said = r"^last_checkpoint_2.pt: the state kept as 'held' now holds an int64 at \['seen'\]\[1\], "
    with pytest.raises(
        FmtkError,
        match=said + r"which fmtk cannot read back .* The previous checkpoint is kept: .*resume the run$",
    ):
        run.run()
    assert [path.name for path in (tmp_path / "run").glob("last_checkpoint_*.pt")] == ["last_checkpoint_1.pt"]


def digits_run(run_dir: Path, epochs: int = 2, resume_from: Path | None = None, counter: bool = True):
    """digits_mlp with a kept iteration counter; ``run_dir`` is created if needed."""
    run_dir.mkdir(exist_ok=True)
    recipe = apply_overrides(load_recipe("digits_mlp"), {"epochs": str(epochs)})
    run = build_run(recipe, run_dir, CPU, Path("data"), echo=lambda line: None, resume_from=resume_from)
    if counter:
        kept = run.keep("counter", Counter())
        run.trainer.add_event_handler(
            Events.ITERATION_COMPLETED, lambda _: setattr(kept, "count", kept.count + 1)
        )
    return run


def test_random_state_round_trip(tmp_path: Path) -> None:
    state = RandomState()
    torch.save(state.state_dict(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    state.load_state_dict(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


@pytest.mark.parametrize(
    "name, state, message",
    [
        ("my counter", Counter(), "the name must be a Python identifier"),
        ("mine", Counter(), "already keeps a state of that name"),
        ("numbers", [1, 2], r"a list has no state_dict\(\)"),
        ("thing", object(), r"an object has no state_dict\(\)"),
        # fmtk's own names, also those this run does not keep: a state kept as ema_model in a run
        # without an EMA was tested as the last checkpoint's weights
        ("ema_model", Counter(), r"fmtk keeps its own state under that name \(model, .*ema_model"),
        ("scaler", Counter(), "fmtk keeps its own state under that name"),
        ("loader_random", Counter(), "fmtk keeps its own state under that name"),
        ("best_checkpoint", Counter(), "fmtk keeps its own state under that name"),
        # what torch.load(weights_only=True) refuses: before, the run trained to its end and then
        # could neither be tested nor resumed
        ("arr", Holding({"arr": np.zeros(3)}), r"holds an ndarray at \['arr'\], which fmtk cannot read back"),
        ("deep", Holding({"a": [1, {"n": np.float64(1)}]}), r"holds a float64 at \['a'\]\[1\]\['n'\]"),
        ("inset", Holding({"s": {np.int64(1)}}), r"holds an int64 at \['s'\] \(an item of a set\), which"),
    ],
)
def test_keep_refuses_what_cannot_be_checkpointed(name: str, state: object, message: str) -> None:
    with pytest.raises(FmtkError, match=message):
        check_keepable(name, state, {"optimizer": object(), "mine": object()})


def test_the_last_checkpoint_holds_and_restores_a_kept_state(tmp_path: Path) -> None:
    run = digits_run(tmp_path / "run")
    run.run()
    iterations = run.trainer.state.iteration
    assert run.kept["counter"].count == iterations > 0
    last = find_last_checkpoint(tmp_path / "run")
    assert torch.load(last, weights_only=True)["counter"] == {"count": iterations}

    resumed = digits_run(tmp_path / "run", epochs=3, resume_from=last)
    assert resumed.kept["counter"].count == 0
    resumed.prepare()
    assert resumed.kept["counter"].count == iterations  # restored before training goes on
    with pytest.raises(FmtkError, match=r"keep\('late'\) after the run started"):
        resumed.keep("late", Counter())


@pytest.mark.parametrize("kept_now", [True, False], ids=["kept-now-only", "kept-before-only"])
def test_a_state_kept_on_one_side_only_is_refused_and_changes_nothing(tmp_path: Path, kept_now: bool) -> None:
    digits_run(tmp_path / "run", counter=not kept_now).run()
    (tmp_path / "run" / "metrics.json").unlink()  # as if interrupted while testing
    before = tree_snapshot(tmp_path / "run")
    resumed = digits_run(tmp_path / "run", epochs=3, resume_from=find_last_checkpoint(tmp_path / "run"),
                         counter=kept_now)  # fmt: skip
    fragment = (
        "has no state for 'counter'" if kept_now else "holds state 'counter' that this run does not keep"
    )
    with pytest.raises(FmtkError, match=fragment) as error:
        resumed.run()
    assert "\n" not in str(error.value)
    assert tree_snapshot(tmp_path / "run") == before  # not even a TensorBoard file is left


def test_restore_names_every_missing_state() -> None:
    with pytest.raises(FmtkError, match=r"last_checkpoint_2.pt has no state for 'a', 'b'"):
        restore({"model": None, "a": None, "b": None}, {"model": {}}, Path("run/last_checkpoint_2.pt"))


# meta: a device other than the CPU, as CUDA is. Reading a checkpoint onto the run's device put
# torch's random states there, where torch.set_rng_state refuses them (a CUDA resume failed so).
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_checkpoint_is_read_onto_the_cpu_whatever_device_the_run_goes_on_on(
    tmp_path: Path, device: str
) -> None:
    digits_run(tmp_path / "run", epochs=1, counter=False).run()
    point = ResumePoint.read(find_last_checkpoint(tmp_path / "run"), torch.device(device))
    tensors = [leaf for leaf in tree_leaves(point.checkpoint) if isinstance(leaf, torch.Tensor)]
    assert len(tensors) > 10 and {tensor.device.type for tensor in tensors} == {"cpu"}
    assert point.trained_on == "cpu" and point.device == torch.device(device)
    draws = []
    for _ in range(2):  # the random states come back, each time the same
        RandomState().load_state_dict(point.checkpoint["random_state"])
        draws.append((torch.rand(3), np.random.rand(3), random.random()))
    assert torch.equal(draws[0][0], draws[1][0]) and np.array_equal(draws[0][1], draws[1][1])
    assert draws[0][2] == draws[1][2]


def test_a_resumed_run_keeps_its_speed_options_and_says_what_it_changes(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    speed = SpeedOptions("bf16", deterministic=True)
    build_run("digits_mlp", run_dir, CPU, echo=None, speed=speed, epochs=1).run()
    last = find_last_checkpoint(run_dir)

    lines: list[str] = []
    resumed = build_run("digits_mlp", run_dir, CPU, echo=lines.append, resume_from=last, epochs=2)
    resumed.folder.close()
    threads = threads_by_default()
    assert resumed.speed == SpeedOptions("bf16", False, False, True, threads)  # as recorded, none given
    assert not [line for line in lines if line.startswith("resuming")]

    lines.clear()
    speed = SpeedOptions("32", compile=False, threads=threads + 1)
    resumed = build_run(
        "digits_mlp", run_dir, CPU, echo=lines.append, resume_from=last, speed=speed, epochs=2
    )
    resumed.folder.close()
    assert resumed.speed == SpeedOptions("32", False, False, True, threads + 1)
    assert lines[:2] == [
        f"resuming with precision 32, not bf16; threads {threads + 1}, not {threads}: the epochs from here "
        "on will not be exactly those of an uninterrupted run",
        f"CPU threads: {threads + 1} (the default here: {threads})",
    ]


def test_a_run_resumed_with_another_torch_or_cpu_says_so(tmp_path: Path) -> None:
    # As if the run's first epoch had been trained elsewhere: its config.json's versions edited.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    build_run("digits_mlp", run_dir, CPU, echo=None, epochs=1).run()
    config = json.loads((run_dir / "config.json").read_text())
    now = dict(config["versions"])
    config["versions"].update(torch="2.13.0", cpu="aarch64, Neoverse-V2, SVE256")
    (run_dir / "config.json").write_text(json.dumps(config))
    lines: list[str] = []
    resumed = build_run(
        "digits_mlp", run_dir, CPU, echo=lines.append, resume_from=find_last_checkpoint(run_dir), epochs=2
    )
    resumed.folder.close()
    assert lines[0] == (
        f"resuming with torch {now['torch']}, not 2.13.0; CPU {now['cpu']}, not aarch64, Neoverse-V2, "
        "SVE256: the epochs from here on will not be exactly those of an uninterrupted run"
    )


def test_deterministic_kernels_are_set_for_a_run_that_asks_and_unset_for_one_that_does_not(
    tmp_path: Path,
) -> None:
    seen = []
    for deterministic in (True, None):
        run_dir = tmp_path / f"run-{deterministic}"
        run_dir.mkdir()
        speed = SpeedOptions(deterministic=deterministic)
        run = build_run("digits_mlp", run_dir, CPU, echo=None, speed=speed, epochs=1)
        run.trainer.add_event_handler(
            Events.ITERATION_COMPLETED(once=1),
            lambda: seen.append(
                (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
            ),
        )
        run.run()
        assert json.loads((run_dir / "config.json").read_text())["speed"]["deterministic"] is bool(
            deterministic
        )
    assert seen == [(True, True), (False, False)]


@pytest.mark.parametrize(
    "accuracies, losses, best",
    [
        ([0.5, 0.8, 0.8, 0.7], [1.0, 0.6, 0.4, 0.3], 3),  # a tie: the lower valid loss
        ([0.5, 0.8, 0.8, 0.7], [1.0, 0.4, 0.6, 0.3], 2),
        ([0.5, 0.8, 0.8, 0.7], [1.0, 0.4, 0.4, 0.3], 2),  # and on equal loss the earliest
        ([0.5, 0.8, 0.81, 0.7], [1.0, 0.4, 900.0, 0.3], 3),  # a better accuracy wins at any loss
        ([0.5, 0.8, 0.8, 0.7], [1.0, float("nan"), 0.4, 0.3], 2),  # a loss that is not finite: no part
    ],
)
def test_the_best_checkpoint_breaks_an_accuracy_tie_by_the_lower_valid_loss(
    tmp_path: Path, accuracies: list[float], losses: list[float], best: int
) -> None:
    trainer, evaluator = Engine(lambda engine, batch: None), Engine(lambda engine, batch: None)
    model = torch.nn.Linear(1, 1)

    @evaluator.on(Events.COMPLETED)
    def measure(engine: Engine) -> None:  # before the best checkpoint's handler, as the evaluator's metrics
        epoch = trainer.state.epoch
        engine.state.metrics = {"accuracy": accuracies[epoch - 1], "loss": losses[epoch - 1]}

    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda _: evaluator.run([0]))
    attach_checkpoints(trainer, evaluator, tmp_path, {"model": model}, {"model": model})
    trainer.run([0], max_epochs=4)
    [kept] = tmp_path.glob("best_*.pt")
    assert kept.name.endswith(f"_{best}_valid_accuracy={accuracies[best - 1]:.4f}.pt")


def test_weights_of_another_number_of_classes_say_so_and_another_model_names_both() -> None:
    def net(classes: int, hidden: int = 8) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(4, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, classes)
        )

    checkpoint = {"model": net(3).state_dict(), "run_info": {"recipe": "images", "model": "Sequential"}}
    with pytest.raises(FmtkError) as caught:
        load_model_weights(checkpoint, Path("best.pt"), "images", net(2))
    assert str(caught.value) == (
        "best.pt holds a model whose output layer 2 gives 3 classes; images builds it with 2 here: other "
        "classes (another data folder?)"
    )
    with pytest.raises(FmtkError, match="holds a Sequential with .* a different architecture or variant"):
        load_model_weights(checkpoint, Path("best.pt"), "images", net(3, hidden=6))


class _StopWhileWritten:
    """Pickled inside torch.save: Ctrl-C arrives while the checkpoint is being written."""

    def __reduce__(self) -> tuple:
        os.kill(os.getpid(), signal.SIGINT)
        return (collections.OrderedDict, ())  # (what torch.load(weights_only=True) reads back)


def test_a_stop_asked_for_while_a_checkpoint_is_written_is_taken_once_it_is_whole(tmp_path: Path) -> None:
    from fmtk.training.checkpoints import RunSaver

    saver = RunSaver(str(tmp_path), atomic=True, require_empty=False)
    weights = torch.arange(100_000.0)
    # Ctrl-C as a terminal's process takes it (a shell's background job, as CI may be, ignores it).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            saver({"model": {"w": weights}, "stop": _StopWhileWritten()}, "last_checkpoint_1.pt")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # as it was
    finally:
        signal.signal(signal.SIGINT, before)
    saved = torch.load(tmp_path / "last_checkpoint_1.pt", weights_only=False)
    assert torch.equal(saved["model"]["w"], weights) and saved["stop"] == {}
    assert [path.name for path in tmp_path.iterdir()] == ["last_checkpoint_1.pt"]  # no torn temporary file


def test_the_training_clock_goes_on_from_the_time_its_checkpoint_holds() -> None:
    from fmtk.training.checkpoints import TrainingClock

    clock = TrainingClock()
    clock.start()
    resumed = TrainingClock()
    resumed.start()
    resumed.load_state_dict({"seconds": 100.0})  # restored after the start, as Run.prepare does
    assert 100.0 <= resumed.seconds < 100.0 + clock.seconds + 60
    assert resumed.state_dict()["seconds"] >= 100.0
