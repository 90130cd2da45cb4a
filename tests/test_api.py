"""fmtk from Python: fit, evaluate and predict; the recipe's metrics and what the loop watches."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, fmtk
from ignite.engine import Events
from ignite.metrics import Precision, TopKCategoricalAccuracy
from PIL import Image
from sklearn.metrics import precision_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import fmtk as toolkit
from fmtk.data import ImageInput, load_digits_splits
from fmtk.launcher import handler_name
from fmtk.models import mlp
from fmtk.training.checkpoints import read_checkpoint


def digits_metrics(recipe: toolkit.Recipe) -> dict:
    return {"top2": TopKCategoricalAccuracy(k=2), "precision": Precision(average=True)}


def lambda_recipe(**values: object) -> toolkit.Recipe:
    """A recipe made in Python that fmtk cannot load again by name (a lambda model)."""
    recipe = toolkit.Recipe(
        name="notebook_digits",
        description="made in a notebook",
        model=lambda recipe: mlp(64, [32], 10),
        data=lambda recipe, data_dir, device: load_digits_splits(recipe.batch_size, device, recipe.seed),
        optimizer="SGD",
        lr=0.1,
        batch_size=32,
        epochs=3,
        image_input=lambda recipe: ImageInput(8, channels=1),
    )
    return dataclasses.replace(recipe, **values)


def test_fit_returns_the_history_the_tests_and_the_best_weights(tmp_path: Path) -> None:
    # "loss:max" keeps the epoch of the *highest* valid loss (the first): best ≠ last, so the
    # model can be seen to end on the best checkpoint's weights, not the last epoch's.
    result = toolkit.fit("digits_mlp", device="cpu", output_dir=tmp_path, quiet=True, epochs=3, lr=0.05,
                         checkpoint_metric="loss:max")  # fmt: skip
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert result.results["best_epoch"] == 1 and result.weights == "best"
    assert result.results["best_checkpoint_metric"]["name"] == "valid_loss"
    best = read_checkpoint(result.run_dir / result.results["checkpoints"]["best"])
    last = read_checkpoint(result.run_dir / result.results["checkpoints"]["last"])
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, best["model"][name])
    assert not all(torch.equal(result.model.state_dict()[k], v) for k, v in last["model"].items())
    assert result.test["best"]["accuracy"] < result.test["last"]["accuracy"]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["changed"] == {"epochs": 3, "lr": 0.05, "checkpoint_metric": "loss:max"}
    assert config["command"] == "fmtk.fit('digits_mlp', epochs=3, lr=0.05, checkpoint_metric='loss:max')"
    assert set(config["versions"]) == {"fmtk", "python", "torch", "torchvision", "pytorch-ignite", "cpu"}
    assert config["versions"]["cpu"].endswith(torch.backends.cpu.get_cpu_capability())
    assert "epoch 1" in repr(result) and "best weights" in repr(result)


def test_fit_quiet_prints_nothing_and_bad_values_leave_no_folder(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    toolkit.fit("digits_mlp", device=torch.device("cpu"), output_dir=tmp_path, quiet=True, epochs=1)
    assert capfd.readouterr() == ("", "")
    for bad, message in [({"epochs": 2.5}, "epochs=2.5: expected int"), ({"speed_of_light": 1}, "unknown")]:
        with pytest.raises(toolkit.FmtkError, match=message):
            toolkit.fit("digits_mlp", output_dir=tmp_path / "bad", **bad)
    with pytest.raises(toolkit.FmtkError, match="not a validation metric; valid: loss, accuracy"):
        toolkit.fit("digits_mlp", output_dir=tmp_path / "bad", early_stopping_metric="f1")
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").rglob("*"))


def test_a_recipe_made_in_python_evaluates_and_predicts_from_python(tmp_path: Path) -> None:
    recipe = lambda_recipe()
    result = toolkit.fit(recipe, device="cpu", run_dir=tmp_path / "run", quiet=True)
    evaluation = toolkit.evaluate(result.run_dir, recipe=recipe, device="cpu")
    assert evaluation.accuracy == pytest.approx(result.test["best"]["accuracy"])
    image = tmp_path / "digit.png"
    Image.new("L", (8, 8), 255).save(image)
    [prediction] = toolkit.predict(result.run_dir, [image], recipe=recipe, top=3, device="cpu")
    assert len(prediction["predictions"]) == 3
    for one in (image, str(image)):  # one image, not a list of its path's letters
        assert toolkit.predict(result.run_dir, one, recipe=recipe, top=3, device="cpu") == [prediction]
    mistakes = [
        (dict(checkpoint="middle"), r"^checkpoint=middle: no such file \(use best, last or a path\)$"),
        (
            dict(split="train"),
            r"^split='train': choose 'test' or 'valid' \(the training split is augmented\)$",
        ),
    ]
    for arguments, message in mistakes:
        with pytest.raises(toolkit.FmtkError, match=message):
            toolkit.evaluate(result.run_dir, recipe=recipe, device="cpu", **arguments)
    with pytest.raises(toolkit.FmtkError, match=r"^top=0: expected a whole number, 1 or more"):
        toolkit.predict(result.run_dir, image, recipe=recipe, top=0, device="cpu")
    with pytest.raises(
        toolkit.FmtkError, match=r"^images\[1\]=5: expected an image file, a folder or a PIL image$"
    ):
        toolkit.predict(result.run_dir, [image, 5], recipe=recipe, device="cpu")
    assert_one_line_error(fmtk("evaluate", str(result.run_dir)), "made in Python", "recipe=")
    exported = toolkit.export(result.run_dir, recipe=recipe, format="torchscript")  # before: no recipe=
    assert exported.path.is_file() and exported.report["top1_agreement"] == 1.0
    with pytest.raises(toolkit.FmtkError, match="^checkpoint=middle: no such file"):  # before: out exists
        toolkit.export(result.run_dir, recipe=recipe, format="torchscript", checkpoint="middle")
    with pytest.raises(toolkit.FmtkError, match=r"^recipe: recipe 'other', but config.json names the run's "
                       r"recipe 'notebook_digits'$"):  # fmt: skip
        toolkit.evaluate(result.run_dir, recipe=lambda_recipe(name="other"), device="cpu")
    with pytest.raises(toolkit.FmtkError, match=r"^recipe: for a run folder; .*model.pt is an exported"):
        toolkit.predict(exported.path, image, recipe=recipe)


def test_the_recipes_metrics_reach_every_output_and_steer_the_loop(tmp_path: Path) -> None:
    watching = {"early_stopping_metric": "precision", "plateau_metric": "top2"}
    recipe = lambda_recipe(metrics=digits_metrics, early_stopping_patience=5, plateau_patience=2, **watching)
    result = toolkit.fit(recipe, device="cpu", run_dir=tmp_path / "run", quiet=True, checkpoint_metric="top2")
    run_dir = result.run_dir
    with (run_dir / "metrics.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert list(rows[0])[3:6] == ["valid_accuracy", "valid_top2", "valid_precision"]
    assert result.results["best_checkpoint_metric"]["name"] == "valid_top2"
    assert result.results["checkpoints"]["best"].startswith(
        f"best_checkpoint_{result.results['best_epoch']}_valid_top2="
    )
    tested = result.test["best"]
    assert set(tested) == {"loss", "accuracy", "top2", "precision"} and tested["top2"] >= tested["accuracy"]
    # Ignite's precision equals scikit-learn's over the same predictions
    data = load_digits_splits(32, torch.device("cpu"), recipe.seed).test
    with torch.no_grad():
        predicted = torch.cat([result.model.eval()(x).argmax(1) for x, _ in data])
    expected = precision_score(data.labels.numpy(), predicted.numpy(), average="macro", zero_division=0)
    assert tested["precision"] == pytest.approx(expected)
    events = EventAccumulator(str(run_dir)).Reload()
    assert {"valid/top2", "valid/precision", "test/best_accuracy"} <= set(events.Tags()["scalars"])
    evaluation = toolkit.evaluate(run_dir, recipe=recipe, device="cpu")
    assert evaluation.metrics["top2"] == pytest.approx(tested["top2"])
    assert "top2" in evaluation.table() and "precision" in evaluation.table()


def test_a_metric_with_many_values_is_one_clear_error(tmp_path: Path) -> None:
    recipe = lambda_recipe(metrics=lambda recipe: {"per_class": Precision(average=False)}, epochs=1)
    with pytest.raises(toolkit.FmtkError, match="metric 'per_class' gives 10 values"):
        toolkit.fit(recipe, device="cpu", run_dir=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()  # made by fit, removed with everything in it


def test_hparams_show_the_runs_values_against_its_figures(tmp_path: Path) -> None:
    result = toolkit.fit("digits_mlp", device="cpu", output_dir=tmp_path, quiet=True, epochs=1, lr=0.02,
                         optimizer_args={"eps": 1e-7})  # fmt: skip
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(result.run_dir)).Reload()
    content = events.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = session.session_start_info.hparams
    assert values["lr"].number_value == pytest.approx(0.02) and values["recipe"].string_value == "digits_mlp"
    assert values["optimizer_args.eps"].number_value == pytest.approx(1e-7)  # comparable as a number
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    shown = {info.name.tag for info in experiment.metric_infos}
    assert {"valid/accuracy", "test/best_accuracy"} <= shown <= set(events.Tags()["scalars"])


def test_importing_fmtk_and_its_command_does_not_import_torch() -> None:
    heavy = "('torch', 'ignite', 'numpy')"
    code = f"import sys, fmtk, fmtk.cli; print(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr
    assert toolkit.Recipe.__module__ == "fmtk.recipe"  # the lazy names resolve
    assert set(toolkit.__all__) >= {"fit", "evaluate", "predict", "Result", "Recipe", "Run", "build_run"}


def test_the_progress_bar_shows_in_jupyter(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from fmtk.training.handlers import progress_by_default as _in_notebook  # stderr is no terminal here

    assert not _in_notebook()
    kernel = types.SimpleNamespace(config={"IPKernelApp": {"connection_file": "kernel.json"}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert _in_notebook()
    terminal = types.SimpleNamespace(config={"TerminalInteractiveShell": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: terminal))
    assert not _in_notebook()  # IPython in a terminal: stderr decides


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"handlers": [42]}, "handlers: 42 is neither a function of the run nor 'module:function'"),
        ({"speed": "fast"}, "speed='fast': expected a fmtk.SpeedOptions"),
        # as keywords, not as the command line's --set and --device
        ({"lr": "abc"}, "^lr=abc: expected float$"),
        ({"device": "cdu"}, "^device=cdu: not a device; use auto, cpu, cuda or cuda:N$"),
        ({"handlers": "nosuch:attach"}, "^handler nosuch:attach: cannot import nosuch"),  # one, not letters
        (
            {"handlers": 5},
            "^handlers=5: expected functions of the run or 'module:function' names, one or a list$",
        ),
        ({"run_dir": 5}, r"^run_dir=5: expected a path \(a str or a pathlib.Path\)$"),
        ({"progress": "yes"}, "^progress='yes': expected True or False$"),
    ],
)
def test_fit_names_a_bad_argument(arguments: dict, message: str, tmp_path: Path) -> None:
    arguments = {"device": "cpu", **arguments}
    with pytest.raises(toolkit.FmtkError, match=message):
        toolkit.fit("digits_mlp", output_dir=tmp_path, quiet=True, **arguments)
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


SEARCH = {"recipe": "digits_mlp", "space": {"lr": "loguniform:1e-3:1"}, "trials": 1, "device": "cpu"}


@pytest.mark.parametrize(
    ("function", "arguments", "message"),
    [
        ("tune", {**SEARCH, "trials": 0}, "^trials=0: a study needs at least 1"),
        ("tune", {**SEARCH, "trials": "2"}, "^trials='2': expected a whole number"),  # before: a TypeError
        ("tune", {**SEARCH, "space": ["lr=loguniform:1e-3:1"]}, r"^space=\['lr=.*\]: expected a mapping"),
        ("tune", {**SEARCH, "tries": [5]}, "^tries\\[0\\]=5: expected a mapping or 'key=value"),
        ("tune", {**SEARCH, "study_dir": 5}, r"^study_dir=5: expected a path \(a str or a pathlib.Path\)$"),
        ("tune", {**SEARCH, "lr": 0.1}, r"^lr: both searched \(space\) and set \(a keyword\)"),
        ("tune", {**SEARCH, "space": {"lr": "uniform:1"}}, "^space lr=uniform:1: expected"),
        ("tune", {**SEARCH, "metric": "f1"}, "^metric=f1: not a validation metric"),
        ("tune", {**SEARCH, "backend": "gloo"}, "^backend=gloo needs nproc_per_node=2 or more"),
        # one handler, not letters; checked before the study's folder, not in each trial
        ("tune", {**SEARCH, "handlers": "nosuch:f"}, "^handler nosuch:f: cannot import nosuch"),
        ("tune", {"resume": "nowhere"}, "^resume=nowhere: no such folder$"),
        ("export", {"run_dir": "x", "format": "png"}, r"^format=png: unknown \(choose onnx"),
        ("export", {"run_dir": "x", "out": "model.txt"}, "^out=model.txt: an ONNX file ends in .onnx$"),
        ("export", {"run_dir": None}, "^run_dir=None: expected a path"),  # before: pathlib's TypeError
        ("export", {"run_dir": "x", "out": 5}, "^out=5: expected a path"),
        ("evaluate", {"run_dir": None}, "^run_dir=None: expected a path"),
        ("predict", {"run_dir": "x", "images": np.zeros((28, 28), np.uint8)},
         r"^images: an array of shape \(28, 28\); give image files, .* \(PIL.Image.fromarray"),
        ("fit", {"recipe": None}, "^recipe=None: expected a Recipe, a bundled recipe's name or a"),
        ("check", {"recipe": 3}, "^recipe=3: expected a Recipe"),
        ("check", {"recipe": "digits_mlp", "keep": 5}, "^keep=5: expected a path"),
        ("check", {"recipe": "digits_mlp", "against": "g", "tolerance": "x"},
         "^tolerance='x': expected a number, 0 or more$"),  # before: a ValueError after training
        ("check", {"recipe": "digits_mlp", "tolerance": 0.1}, "^tolerance: goes with against=DIR"),
        ("check", {"recipe": "digits_mlp", "record_to": "a", "against": "b"}, "^record_to, against: give"),
        # a command it suggests keeps its options
        ("check", {"recipe": "digits_mlp", "against": "x"}, "with fmtk check RECIPE --record DIR"),
    ],
)  # fmt: skip
def test_the_python_api_names_a_keyword_given_a_wrong_value(
    function: str, arguments: dict, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(toolkit.FmtkError, match=message):
        getattr(toolkit, function)(**arguments)
    assert not any(tmp_path.iterdir())  # refused before any folder was made


def test_fit_and_build_run_refuse_a_folder_in_use_and_change_nothing(tmp_path: Path) -> None:
    """``fit`` is ``build_run(...).run()``: neither starts over a folder that holds files (an earlier
    run's), and a run of ``build_run`` is the one ``fit`` would make."""
    finished = toolkit.fit("digits_mlp", run_dir=tmp_path / "old", device="cpu", quiet=True, epochs=1)
    before = {path: path.stat().st_mtime_ns for path in finished.run_dir.rglob("*")}
    for make, named in ((toolkit.fit, "run_dir="), (toolkit.build_run, "--run-dir ")):
        with pytest.raises(toolkit.FmtkError, match=f"^{named}.*old is not empty; give a new folder"):
            make("digits_mlp", run_dir=finished.run_dir, device="cpu", epochs=1)
    assert {path: path.stat().st_mtime_ns for path in finished.run_dir.rglob("*")} == before
    run = toolkit.build_run("digits_mlp", tmp_path / "new", "cpu", echo=None, epochs=1)
    assert isinstance(run, toolkit.Run) and run.run()["test"] == finished.test


def test_quiet_fit_prints_nothing_on_ctrl_c(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    def press_ctrl_c(run) -> None:
        def interrupt(engine) -> None:
            raise KeyboardInterrupt

        run.trainer.add_event_handler(Events.ITERATION_COMPLETED, interrupt)

    with pytest.raises(KeyboardInterrupt) as interrupted:
        toolkit.fit("digits_mlp", output_dir=tmp_path, device="cpu", quiet=True, handlers=[press_ctrl_c])
    assert interrupted.value.__notes__ == ["interrupted before the first checkpoint; nothing was kept"]
    captured = capfd.readouterr()
    assert captured.out == "" and "Engine run is terminating" not in captured.err, captured.err
    assert not (tmp_path / "digits_mlp").exists()  # before the first checkpoint: nothing kept


def test_a_handler_s_error_reaches_the_caller_without_ignite_s_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(run) -> None:
        @run.trainer.on(Events.EPOCH_COMPLETED)
        def boom(engine) -> None:
            raise RuntimeError("my handler exploded")

    with pytest.raises(RuntimeError, match="^my handler exploded$"):
        toolkit.fit(
            "digits_mlp", output_dir=tmp_path, device="cpu", epochs=2, handlers=explode
        )  # one, not a list
    assert not [record for record in caplog.records if record.name.startswith("ignite")]


def test_a_run_interrupted_in_python_resumes_from_python_to_an_uninterrupted_run_s_figures(
    tmp_path: Path,
) -> None:
    def ctrl_c_in_epoch_3(run) -> None:
        @run.trainer.on(Events.ITERATION_COMPLETED)
        def press(engine) -> None:
            if engine.state.epoch == 3 and engine.state.iteration % engine.state.epoch_length == 5:
                raise KeyboardInterrupt

    straight = toolkit.fit("digits_mlp", epochs=3, device="cpu", run_dir=tmp_path / "straight", quiet=True)
    with pytest.raises(KeyboardInterrupt) as interrupted:  # a notebook's interrupted cell
        toolkit.fit("digits_mlp", epochs=3, device="cpu", run_dir=tmp_path / "cut", quiet=True,
                    handlers=ctrl_c_in_epoch_3)  # fmt: skip
    assert interrupted.value.__notes__ == [  # under its traceback
        f"interrupted: the last complete checkpoint is last_checkpoint_2.pt; resume with: "
        f"fmtk.resume({str(tmp_path / 'cut')!r})"
    ]
    resumed = toolkit.resume(tmp_path / "cut", quiet=True)
    without_time = [[{k: v for k, v in row.items() if k != "epoch_seconds"} for row in result.history]
                    for result in (straight, resumed)]  # fmt: skip
    assert without_time[0] == without_time[1] and resumed.test == straight.test
    assert resumed.run_dir == tmp_path / "cut" and len(resumed.history) == 3
    starts = json.loads((tmp_path / "cut" / "config.json").read_text())["starts"]
    assert [start["command"] for start in starts][1:] == [f"fmtk.resume({str(tmp_path / 'cut')!r})"]
    with pytest.raises(toolkit.FmtkError, match=r"is finished \(3 of 3 epochs\); to go on: fmtk.resume\("):
        toolkit.resume(tmp_path / "cut")
    with pytest.raises(
        toolkit.FmtkError, match=r"go on: fmtk.resume\('.*cut', epochs=N, handlers=\['m:f'\]\)"
    ):
        toolkit.resume(tmp_path / "cut", handlers="m:f")  # (a resume needs the run's handlers)
    assert len(toolkit.resume(tmp_path / "cut", epochs=4, quiet=True).history) == 4
    with pytest.raises(toolkit.FmtkError, match=r"^epochs=0: expected a whole number, 1 or more$"):
        toolkit.resume(tmp_path / "cut", epochs=0)
    with pytest.raises(toolkit.FmtkError, match=r"^epochs=2: .*cut has already run 4 epochs"):  # not --epochs
        toolkit.resume(tmp_path / "cut", epochs=2)
    with pytest.raises(toolkit.FmtkError, match=r"nowhere: no such run folder$"):
        toolkit.resume(tmp_path / "nowhere")


def test_resume_after_metrics_csv_was_lost_names_the_best_checkpoints_epoch(tmp_path: Path) -> None:
    """metrics.json's best_epoch is the best checkpoint's own, also when metrics.csv lost the rows."""
    run_dir = tmp_path / "run"
    first = fmtk("run", "digits_mlp", "--epochs", "2", "--set", "checkpoint_metric=loss:max",
                 "--run-dir", str(run_dir), "--device", "cpu")  # fmt: skip
    assert first.returncode == 0, first.stderr
    (run_dir / "metrics.csv").unlink()
    resumed = fmtk("run", "--resume", str(run_dir), "--epochs", "3", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr
    results = json.loads((run_dir / "metrics.json").read_text())
    best_epoch = int(results["checkpoints"]["best"].split("_")[2])  # best_checkpoint_<epoch>_...
    assert results["best_epoch"] == best_epoch == 1  # the highest valid loss: the first epoch's


def test_fit_says_its_run_folder_and_why_a_handler_stopped_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def stop_after_one_epoch(run) -> None:
        run.evaluator.add_event_handler(Events.COMPLETED, lambda _: run.stop("good enough"))

    result = toolkit.fit("digits_mlp", epochs=3, device="cpu", run_dir=tmp_path / "run",
                         handlers=[stop_after_one_epoch])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert "stopped after epoch 1: good enough" in lines and len(result.history) == 1
    assert lines[-1] == f"run folder: {tmp_path / 'run'}"
    command = json.loads((tmp_path / "run" / "config.json").read_text())["command"]
    assert command == "fmtk.fit('digits_mlp', epochs=3, handlers=['stop_after_one_epoch'])"  # a local one
    # One of a module --handler can import is recorded as --handler takes it (before: its bare name)
    assert handler_name(assert_one_line_error) == "conftest:assert_one_line_error"
    assert handler_name(lambda run: None) == "<lambda>" and handler_name("mine:attach") == "mine:attach"
    toolkit.fit("digits_mlp", epochs=1, device="cpu", run_dir=tmp_path / "quiet", quiet=True)
    assert capsys.readouterr().out == ""


def test_setup_cfg_installs_every_package_of_fmtk() -> None:
    """A wheel holds only the packages setup.cfg names (fmtk.regression was once missing: an
    installed ``fmtk check`` failed to import where an editable one worked)."""
    import configparser

    root = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    listed = {name.strip() for name in config["options"]["packages"].split(",")}
    found = {".".join(path.parent.relative_to(root).parts) for path in (root / "fmtk").rglob("__init__.py")}
    assert found | {"fmtk.recipes"} == listed


def test_build_run_names_its_folder_and_a_handlers_stop_follows_its_epochs_line(tmp_path: Path) -> None:
    """As `fmtk run` prints them: the run folder once assembled; "stopped after epoch 2" after
    epoch 2's line (it came before it: the handler runs in the validation, before the line)."""
    lines: list[str] = []
    run = toolkit.build_run("digits_mlp", tmp_path / "run", device="cpu", echo=lines.append)
    assert lines[-1] == f"run folder: {tmp_path / 'run'}"

    @run.evaluator.on(Events.COMPLETED)
    def stop_at_epoch_2(evaluator) -> None:
        if run.trainer.state.epoch == 2:
            run.stop("enough")

    run.run()
    epoch_2 = next(i for i, line in enumerate(lines) if line.startswith("epoch   2/"))
    assert lines[epoch_2 + 1] == "stopped after epoch 2: enough"


def test_a_minimised_checkpoint_metric_names_the_best_checkpoint_by_its_value(tmp_path: Path) -> None:
    # Ignite keeps the highest score, so fmtk scores a loss negated; the file name shows the loss.
    result = toolkit.fit("digits_mlp", device="cpu", run_dir=tmp_path / "run", quiet=True, epochs=2,
                         checkpoint_metric="loss")  # fmt: skip
    best = result.results["best_checkpoint_metric"]
    assert (best["name"], best["mode"]) == ("valid_loss", "min") and best["value"] > 0
    name = f"best_checkpoint_{result.results['best_epoch']}_valid_loss={best['value']:.4f}.pt"
    assert result.results["checkpoints"]["best"] == name
    assert (result.run_dir / result.results["checkpoints"]["best"]).is_file()
