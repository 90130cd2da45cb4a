"""fmtk check: a recipe's check trained and judged, its table, JUnit XML and JSON; a check made to
fail; golden runs recorded and compared (exact on one machine, the first diverging epoch when the
recipe changed); the pytest plugin on a user's project; and the bad inputs, each one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from conftest import assert_one_line_error, fmtk, tree_snapshot

import fmtk as fmtk_api
from fmtk.errors import FmtkError
from fmtk.regression.check import Check
from fmtk.regression.golden import inexact_because

DIGITS = (Path(__file__).parents[1] / "recipes" / "digits_mlp.py").read_text()


def user_recipe(folder: Path, name: str = "mydigits", **replace: str) -> Path:
    """digits_mlp as a user's recipe file ``folder/<name>.py`` with its check, texts replaced."""
    text = DIGITS.replace('name="digits_mlp"', f'name="{name}"')
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(text)
    return path


@pytest.fixture
def run_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """fmtk in ``tmp_path`` with its temporary folders in ``tmp_path/tmp`` (to see what a check leaves)."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return fmtk(*args, cwd=tmp_path)

    return run


def test_a_check_that_passes_prints_its_table_writes_junit_and_leaves_nothing(tmp_path: Path, run_in) -> None:
    result = run_in("check", "digits_mlp", "--junit", "report.xml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = lines.index("recipe      check    figure              expected      got  verdict  seconds")
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [row[2] for row in rows] == ["test_accuracy", "last_test_accuracy", "test_loss"]
    assert all(row[0] == "digits_mlp" and row[1] == "default" and row[6] == "pass" for row in rows)
    assert lines[-1] == "1 of 1 checks passed"
    suite = ElementTree.parse(tmp_path / "report.xml").getroot().find("testsuite")
    assert suite.get("tests") == "1" and suite.get("failures") == "0"
    [case] = suite.findall("testcase")
    assert case.get("classname") == "fmtk.check.digits_mlp" and case.find("failure") is None
    assert not list((tmp_path / "tmp").glob("fmtk-check-*"))  # its run folder went with the pass


def test_a_broken_recipe_fails_with_its_row_its_junit_failure_and_its_run_folder_kept(
    tmp_path: Path, run_in
) -> None:
    user_recipe(tmp_path / "recipes", "broken", **{"lr=1e-2": "lr=1e-7"})  # learns nothing in 30 epochs
    user_recipe(tmp_path / "recipes", "fine")
    result = run_in("check", "recipes", "--junit", "report.xml", "--json")
    assert result.returncode == 1, result.stderr
    results = {entry["recipe"]: entry for entry in json.loads(result.stdout)}
    assert results["fine"]["passed"] and not results["broken"]["passed"]
    rows = {row["figure"]: row for row in results["broken"]["rows"]}
    assert not rows["test_accuracy"]["passed"] and rows["test_accuracy"]["got"] < 0.95
    kept = Path(results["broken"]["run_dir"])
    assert kept.parent == tmp_path / "tmp" and (kept / "metrics.json").is_file()
    suite = ElementTree.parse(tmp_path / "report.xml").getroot().find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    failure = next(case for case in suite if case.get("classname") == "fmtk.check.broken").find("failure")
    assert failure.get("message").startswith("test_accuracy 0.") and ", expected >= 0.95" in failure.get(
        "message"
    )
    assert f"run folder: {kept}" in failure.text
    table = run_in("check", "recipes/broken.py")
    assert table.returncode == 1
    assert any(line.split()[:3] == ["broken", "default", "test_accuracy"] and line.split()[-2] == "FAIL"
               for line in table.stdout.splitlines())  # fmt: skip
    [why] = [line for line in table.stdout.splitlines() if line.startswith("broken (default): ")]
    assert why.startswith("broken (default): test_accuracy 0.") and ", expected >= 0.95; " in why
    kept_now = Path(why.rpartition(" (run folder: ")[2].rstrip(")"))
    assert kept_now.parent == tmp_path / "tmp" and (kept_now / "metrics.csv").is_file()


def test_a_golden_run_is_met_exactly_on_its_machine_and_a_changed_seed_diverges_at_epoch_1(
    tmp_path: Path, run_in
) -> None:
    recipe = user_recipe(tmp_path, "mine")
    recorded = fmtk("check", str(recipe), "--record", "gold", cwd=tmp_path)
    assert recorded.returncode == 0, recorded.stderr
    assert recorded.stdout.splitlines()[-1] == f"mine (default): recorded {Path('gold') / 'mine-default'}"
    assert sorted(p.name for p in (tmp_path / "gold" / "mine-default").iterdir()) == [
        "config.json", "metrics.csv", "metrics.json"
    ]  # fmt: skip
    again = fmtk("check", str(recipe), "--against", "gold", "--json", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    [result] = json.loads(again.stdout)
    assert result["diverged"] is None and result["compared"]  # bit for bit: fmtk's CPU runs are deterministic
    table = fmtk("check", str(recipe), "--against", "gold", cwd=tmp_path)
    assert any(
        line.split()[2:6] == ["(golden)", "same", "same", "pass"] for line in table.stdout.splitlines()
    )
    before = tree_snapshot(tmp_path / "gold")
    assert_one_line_error(fmtk("check", str(recipe), "--record", "gold", cwd=tmp_path),
                          "gold/mine-default exists; remove it to record again")  # fmt: skip
    user_recipe(tmp_path, "mine", **{"    log_every=10,": "    log_every=10,\n    seed=1,"})
    changed = fmtk("check", str(recipe), "--against", "gold", cwd=tmp_path)
    assert changed.returncode == 1
    [line] = [line for line in changed.stdout.splitlines() if "differs from the golden run" in line]
    assert line.startswith("mine (default): differs from the golden run at epoch 1, train_loss: ")
    assert "(compared exactly: same torch, CPU and threads); the recipe differs: seed 42 → 1" in line
    # its code alone changed (two hidden layers): no value differs, and the line says where to look
    user_recipe(tmp_path, "mine", **{'[recipe.options["hidden"]]': '[recipe.options["hidden"]] * 2'})
    coded = fmtk("check", str(recipe), "--against", "gold", cwd=tmp_path)
    [line] = [line for line in coded.stdout.splitlines() if "differs from the golden run" in line]
    assert ("(compared exactly: same torch, CPU and threads); the recipe's values are the same: its code or "
            "its data changed (run folder: ") in line  # fmt: skip
    assert tree_snapshot(tmp_path / "gold") == before


def test_a_check_added_since_the_golden_runs_fails_alone_and_a_tolerance_says_what_it_let_pass(
    tmp_path: Path, run_in
) -> None:
    recipe = user_recipe(tmp_path, "mine")
    assert run_in("check", "mine.py", "--record", "gold").returncode == 0
    # A second check added to the recipe after the golden runs were recorded: it fails, untrained,
    # saying how to record it; the first is still compared (before: every check refused in one line).
    strict = 'Check(name="strict", expect={"test_accuracy": ">= 0.5"})'
    user_recipe(tmp_path, "mine", **{"check=Check(": f"check=({strict}, Check(", "}),\n": "})),\n"})
    result = run_in("check", "mine.py", "--against", "gold")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:6] for line in lines if "(golden)" in line] == [
        ["mine", "strict", "(golden)", "same", "none", "FAIL"],
        ["mine", "default", "(golden)", "same", "same", "pass"],
    ]
    gold = Path("gold") / "mine-strict"
    assert (
        f"mine (strict): no golden run {gold}: record it with fmtk check {recipe} --name strict --record gold"
        in lines
    )
    assert lines[-1] == "1 of 2 checks passed" and "checking mine (strict)" not in result.stdout
    recorded = run_in("check", "mine.py", "--name", "strict", "--record", "gold")
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    # A recipe value changed that leaves the figures as they were: it passes, and the table says so.
    user_recipe(tmp_path, "mine", **{"    log_every=10,": "    log_every=5,"})
    loose = run_in("check", "mine.py", "--name", "default", "--against", "gold", "--tolerance", "0.5")
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert loose.stdout.splitlines()[-2:] == [
        "mine (default): the same as its golden run, though the recipe differs: log_every 10 → 5",
        "1 of 1 checks passed",
    ]


def test_a_golden_run_of_a_gpu_is_met_on_the_cpu_within_the_tolerance_naming_why(
    tmp_path: Path, run_in
) -> None:
    # A golden run recorded on a GPU (its config.json as a GPU's run writes it), compared on the CPU:
    # within the tolerance, saying why not exactly, and without the GPU's precision (bf16).
    recipe = user_recipe(tmp_path, "mine")
    assert fmtk("check", str(recipe), "--record", "gold", cwd=tmp_path).returncode == 0
    config_file = tmp_path / "gold" / "mine-default" / "config.json"
    config = json.loads(config_file.read_text())
    config["device"] = "cuda"
    config["versions"].update(gpu="NVIDIA H200", cuda="13.0", cudnn="91900")
    config["speed"].update(precision="bf16", deterministic=True)
    config_file.write_text(json.dumps(config))
    user_recipe(tmp_path, "mine", **{"    log_every=10,": "    log_every=10,\n    seed=1,"})
    changed = fmtk("check", str(recipe), "--against", "gold", "--keep", "kept", cwd=tmp_path)
    assert changed.returncode == 1
    [line] = [line for line in changed.stdout.splitlines() if "differs from the golden run" in line]
    assert (
        "(beyond the tolerance 0.001; not comparable exactly: device cuda there, cpu here); "
        "the recipe differs: seed 42 → 1"
    ) in line
    kept = json.loads((tmp_path / "kept" / "mine-default" / "config.json").read_text())
    assert kept["speed"]["precision"] == "32" and kept["speed"]["deterministic"] is True


def test_a_gpu_run_is_compared_exactly_only_on_the_same_gpu_with_deterministic_kernels() -> None:
    versions = {"torch": "2.14.1", "cpu": "x86_64, AMD EPYC, AVX512"}
    gpu = {
        "device": "cuda",
        "versions": {**versions, "gpu": "NVIDIA H200", "cuda": "13.0", "cudnn": "91900"},
        "speed": {"threads": 8, "deterministic": True},
    }
    assert inexact_because(gpu, gpu) == inexact_because(gpu, {**gpu, "device": "cuda:1"}) == ""
    assert inexact_because(gpu, {**gpu, "speed": {"threads": 8, "deterministic": False}}) == (
        "a GPU run without --deterministic is not repeatable bit for bit"
    )
    other = {**gpu, "versions": {**gpu["versions"], "gpu": "NVIDIA H100 80GB HBM3", "cudnn": "91000"}}
    assert inexact_because(gpu, other) == (
        "GPU NVIDIA H200 there, NVIDIA H100 80GB HBM3 here; cuDNN 91900 there, 91000 here"
    )
    cpu = {"device": "cpu", "versions": versions, "speed": {"threads": 1, "deterministic": False}}
    assert inexact_because(cpu, cpu) == ""
    assert inexact_because(cpu, {**cpu, "speed": {"threads": 2}}) == "threads 1 there, 2 here"


def test_from_python_and_pytest_s_check_recipe(tmp_path: Path, run_in) -> None:
    [result] = fmtk_api.check("digits_mlp", keep=tmp_path / "kept")
    assert result.passed and result.run_dir == tmp_path / "kept" / "digits_mlp-default"
    from fmtk.testing import check_recipe

    failing = user_recipe(tmp_path, "slow_learner", **{"lr=1e-2": "lr=1e-7"})
    report = check_recipe(failing)
    assert not report.passed and "slow_learner  default  test_accuracy" in str(report)


PLUGIN_PROJECT_TEST = """
def test_users_own() -> None:
    assert 1 + 1 == 2
"""


def test_the_pytest_plugin_collects_a_user_s_recipe_folder_beside_their_tests(tmp_path: Path, run_in) -> None:
    user_recipe(tmp_path / "recipes", "good")
    user_recipe(tmp_path / "recipes", "bad", **{"lr=1e-2": "lr=1e-7"})
    user_recipe(tmp_path / "recipes", "askew", **{"check=Check(": 'check=Check(settings={"nope": 1}, '})
    (tmp_path / "recipes" / "common.py").write_text("HIDDEN = 32  # a helper module: no item\n")
    (tmp_path / "recipes" / "unfinished.py").write_text("from fmtk import Recipe\nrecipe = Recipe(\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_own.py").write_text(PLUGIN_PROJECT_TEST)
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "--fmtk-recipes",
        "recipes",
        "-v",
        "-p",
        "no:cacheprovider",
    ]
    (tmp_path / "tmp").mkdir(exist_ok=True)  # where the failed check's run folder is kept: not /tmp
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 1, result.stdout
    assert "test_own.py::test_users_own PASSED" in result.stdout
    assert "good.py::good[default] PASSED" in result.stdout and "bad.py::bad[default] FAILED" in result.stdout
    # A file that cannot be loaded fails as its own item, with fmtk's line; the other tests ran.
    assert "unfinished.py::load FAILED" in result.stdout and "common.py" not in result.stdout
    assert "unfinished.py:2: SyntaxError: '(' was never closed" in result.stdout
    # A malformed check fails as its item, unmarked (before: a slow item, and pytest's traceback)
    assert "askew.py::askew[default] FAILED" in result.stdout
    assert "check default: cannot run in its settings: unknown recipe key 'nope'" in result.stdout
    assert any(line.split()[:3] == ["bad", "default", "test_accuracy"] and "FAIL" in line
               for line in result.stdout.splitlines())  # the failure is the table row  # fmt: skip
    quick = subprocess.run(
        [*command, "-m", "not slow"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    kept = [path.name.rsplit("-", 1)[0] for path in (tmp_path / "tmp").iterdir()]
    assert kept == ["fmtk-check-bad-default"]  # the failed check's run, to look into
    assert quick.returncode == 1 and "2 deselected" in quick.stdout, quick.stdout  # (unfinished, askew fail)
    assert "askew.py::askew[default] FAILED" in quick.stdout
    # Counted as collected (before: "collected 1 item", and --collect-only said "no tests collected")
    assert "collected 5 items / 2 deselected / 3 selected" in quick.stdout
    listed = subprocess.run([*command, "--collect-only"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)  # fmt: skip
    assert listed.returncode == 0 and "5 tests collected in " in listed.stdout, listed.stdout
    assert "<RecipeCheck good[default]>" in listed.stdout


def golden(config: str) -> dict[str, str]:
    """The files of a golden run of mydigits' check ``mine`` whose config.json is ``config``."""
    return {"gold/mine-default/config.json": config, "gold/mine-default/metrics.csv": "",
            "gold/mine-default/metrics.json": "{}"}  # fmt: skip


@pytest.mark.parametrize(
    "args, files, fragments",
    [
        (["mine.py"], {"mine.py": ("expect={", 'expect={"test_acuracy": ">= 0.5", ')},
         ["Error: mine.py:", ": recipe mine, check default: expects unknown figure 'test_acuracy'; did you "
          "mean test_accuracy? a run gives test_accuracy, test_loss"]),
        (["mine.py"], {"mine.py": ('">= 0.95", "last', '"about 0.9", "last')},
         ["expect test_accuracy: 'about 0.9' is not a comparison; write one of >=, <=, >, <, =="]),
        (["mine.py"], {"mine.py": ("check=Check(", 'check=Check(settings={"hiden": 8}, ')},
         ["Error: mine.py:", ": recipe mine, check default: cannot run in its settings: unknown recipe key "
          "'hiden'", "did you mean hidden?"]),
        (["mine.py"], {"mine.py": ('">= 0.95", "last', '">= 95", "last')},
         ["mine.py:", "expect test_accuracy: '>= 95': an accuracy is a fraction from 0 to 1 (0.9 for 90%)"]),
        (["nowhere/"], {}, ["nowhere/: no such file or folder"]),
        (["mine.py", "--against", "gold"], golden('{"name": "digits_mlp"}'),
         ["gold/mine-default is a golden run of recipe digits_mlp, not mine"]),
        (["mine.py", "--against", "gold"], golden('{"name": "mine"}'),
         ["config.json has no 'versions' (an older fmtk wrote it), which the comparison needs"]),
        (["mine.py", "--against", "nowhere"], {}, ["--against: no golden run nowhere/mine-default"]),
        (["empty"], {"empty/notes.txt": "no recipes"}, ["empty: a folder without recipe files (*.py)"]),
        (["mine.py", "--record", "a", "--against", "b"], {}, ["give one of them"]),
        (["mine.py", "--keep", "kept"], {"kept/mine-default/x": ""}, ["kept/mine-default exists"]),
        (["mine.py", "--keep", "afile"], {"afile": "x"}, ["--keep afile is a file; give a folder"]),
        (["mine.py", "--record", "afile"], {"afile": "x"}, ["--record afile is a file; give a folder"]),
        (["mine.py", "--tolerance", "0.1"], {}, ["--tolerance: goes with --against DIR"]),
        (["mine.py", "--against", "gold", "--tolerance", "nan"], golden('{"name": "mine"}'),
         ["--tolerance nan: expected a number, 0 or more"]),
        (["mine.py"], {"mine.py": ("check=Check(expect={", 'check=Check(expect=[">= 0.9"]) or dict(a={')},
         ["mine.py:", "a check's expect is a mapping, {figure: '>= value'}, got ['>= 0.9']"]),
        (["mine.py", "--junit", "no/such/report.xml"], {}, ["--junit no/such/report.xml: no folder no/such"]),
        (["mine.py", "--data-dir", "."], {"mine.py": ("check=Check(", 'check=Check(data="photos", ')},
         ["mine (default): its data 'photos' is not a folder under . (give --data-dir)"]),
    ],
    ids=["unknown_figure", "bad_comparison", "bad_settings", "accuracy_in_percent", "no_such_folder",
         "other_recipe_golden", "old_golden",
         "no_golden", "no_recipes", "record_and_against", "kept_exists", "keep_a_file", "record_a_file",
         "tolerance_alone", "tolerance_nan", "expect_a_list", "junit_nowhere", "no_data"],
)  # fmt: skip
def test_bad_input_is_one_line_and_trains_nothing(
    tmp_path: Path, run_in, args: list[str], files: dict[str, object], fragments: list[str]
) -> None:
    user_recipe(tmp_path, "mine")
    for name, content in files.items():
        path = tmp_path / name
        if isinstance(content, tuple):
            text = path.read_text()
            assert content[0] in text
            path.write_text(text.replace(content[0], content[1], 1))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    before = tree_snapshot(tmp_path)
    result = run_in("check", *args)
    assert_one_line_error(result, *fragments)
    usage = {"--record", "--against"} <= set(args) or ("--tolerance" in args and "--against" not in args)
    usage = usage or "nan" in args
    assert result.returncode == (2 if usage else 1)  # usage: click's 2
    assert "checking" not in result.stdout  # refused before any training
    assert {
        name: stamp for name, stamp in tree_snapshot(tmp_path).items() if not name.startswith("tmp")
    } == before


def test_a_record_that_was_interrupted_says_how_to_record_the_rest(tmp_path: Path, run_in) -> None:
    """Each check's golden run is kept as it passes: after Ctrl-C, the same command is refused with
    the command that records the others."""
    user_recipe(tmp_path / "recipes", "first")
    second = user_recipe(tmp_path / "recipes", "second")
    (tmp_path / "gold" / "first-default").mkdir(parents=True)  # recorded before the interruption
    result = run_in("check", "recipes", "--record", "gold")
    assert_one_line_error(
        result,
        f"--record: {Path('gold') / 'first-default'} exists; remove it to record again, or record only the "
        f"others: fmtk check {second} --record gold (nothing was overwritten)",
    )
    assert "checking" not in result.stdout
    # Of a recipe with a check recorded and one not (it failed): the other by its name, not the recipe
    # again (before: the same command, refused the same way for good).
    strict = 'Check(name="strict", expect={"test_accuracy": ">= 0.99"})'
    pair = user_recipe(tmp_path, "pair", **{"check=Check(": f"check=({strict}, Check(", "}),\n": "})),\n"})
    (tmp_path / "gold" / "pair-default").mkdir()
    again = run_in("check", "pair.py", "--record", "gold")
    assert_one_line_error(again, f"or record only the others: fmtk check {pair} --name strict --record gold")
    named = run_in("check", "pair.py", "--name", "nosuch")
    assert_one_line_error(named, "pair: no check named 'nosuch' (its checks: strict, default)")


NO_CHECK = {"    check=Check(": "    # check=Check("}  # the check line left out
CTRL_C = """from ignite.engine import Events


def press_ctrl_c(run):  # as Ctrl-C at the end of epoch 2
    def press(engine):
        raise KeyboardInterrupt

    run.trainer.add_event_handler(Events.EPOCH_COMPLETED(once=2), press)


recipe = Recipe(
    attach=press_ctrl_c,"""
STOPPED = {"recipe = Recipe(": CTRL_C}


def test_a_folder_s_helper_modules_are_left_out_and_recipes_without_a_check_are_named(
    tmp_path: Path, run_in
) -> None:
    user_recipe(tmp_path / "recipes", "mydigits")
    user_recipe(tmp_path / "recipes", "nocheck", **NO_CHECK)
    (tmp_path / "recipes" / "common.py").write_text("HIDDEN = 32  # what the recipes share\n")
    result = run_in("check", "recipes", "recipes/mydigits.py")  # the one recipe twice: checked once
    assert result.returncode == 0, result.stderr
    assert "not checked: nocheck (no check stated: a recipe's check field)" in result.stderr
    assert result.stdout.splitlines()[-1] == "1 of 1 checks passed"
    user_recipe(tmp_path / "other", "mydigits", **{"hidden": "hidden"})  # another file, the same name
    assert_one_line_error(
        run_in("check", "recipes", "other"),
        f"recipe name mydigits: both {tmp_path / 'recipes' / 'mydigits.py'} and {tmp_path / 'other'}",
    )


def test_a_bundled_recipe_named_and_given_as_its_file_is_checked_once() -> None:
    from fmtk.recipe_loading import bundled_recipes_dir
    from fmtk.regression.running import recipes_named

    file = str(bundled_recipes_dir() / "digits_mlp.py")
    for targets in (["digits_mlp", file], [file, "digits_mlp"]):
        recipes, _ = recipes_named(targets)
        assert [recipe.name for recipe in recipes] == ["digits_mlp"]


def test_a_folder_s_file_that_does_not_load_fails_as_its_own_check_and_the_others_run(
    tmp_path: Path, run_in
) -> None:
    """As pytest's plugin makes it a failing item: one broken file of a team's folder does not hide
    the other checks, and the JUnit report has it (it was one line and no report)."""
    user_recipe(tmp_path / "recipes", "mydigits")
    (tmp_path / "recipes" / "unfinished.py").write_text("from fmtk import Recipe\nrecipe = Recipe(\n")
    result = run_in("check", "recipes", "--junit", "report.xml")
    assert result.returncode == 1, result.stderr
    why = "unfinished.py:2: SyntaxError: '(' was never closed"
    assert f"unfinished.py: not loaded, not checked: recipes/{why}" in result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "1 of 2 checks passed" and "checking mydigits (default) …" in lines
    assert "unfinished.py  load     (file)              loads      failed  FAIL" in result.stdout
    assert f"unfinished.py (load): the file did not load: recipes/{why}" in result.stdout
    suite = ElementTree.parse(tmp_path / "report.xml").getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("errors"), suite.get("failures")) == ("2", "1", "0")
    [broken] = [case for case in suite.iter("testcase") if case.find("error") is not None]
    assert (broken.get("classname"), broken.get("name")) == ("fmtk.check.unfinished", "load")
    assert why in broken.find("error").get("message")
    alone = run_in("check", "recipes/unfinished.py")  # a file named itself: one line, as fmtk run
    assert_one_line_error(alone, why)


def test_an_interrupted_check_leaves_no_run_folder(tmp_path: Path, run_in) -> None:
    user_recipe(tmp_path, "mine", **STOPPED)
    result = run_in("check", "mine.py")
    assert result.returncode == 130 and result.stderr.strip() == "interrupted", result.stderr
    assert list((tmp_path / "tmp").glob("fmtk-check-*")) == []


def test_a_check_whose_run_fails_before_it_begins_fails_and_leaves_no_folder(tmp_path: Path, run_in) -> None:
    images = (Path(__file__).parents[1] / "recipes" / "images.py").read_text()
    assert 'data="catdog"' in images
    (tmp_path / "images.py").write_text(images.replace('data="catdog"', 'data="photos"'))
    (tmp_path / "data" / "photos").mkdir(parents=True)  # no class folder in it
    result = run_in("check", "images.py", "--data-dir", "data", "--junit", "report.xml")
    assert result.returncode == 1 and "data/photos: no class folder in it" in result.stdout
    assert "run folder" not in result.stdout and list((tmp_path / "tmp").glob("fmtk-check-*")) == []
    suite = ElementTree.parse(tmp_path / "report.xml").getroot().find("testsuite")
    assert (suite.get("errors"), suite.get("failures")) == ("1", "0")  # it could not train: an error
    assert "no class folder in it" in suite.find("testcase").find("error").get("message")


def test_a_check_states_what_it_expects() -> None:
    with pytest.raises(FmtkError, match="a check expects nothing"):
        Check(expect={})
    with pytest.raises(FmtkError, match="epochs must be a whole number >= 1, got 0"):
        Check(expect={"test_accuracy": ">= 0.5"}, epochs=0)
    assert [str(e) for e in Check(expect={"epochs_run": "== 17", "test_loss": "<=.2"}).expectations()] == [
        "== 17", "<= 0.2"
    ]  # fmt: skip


def test_a_recipe_option_that_differs_from_the_golden_run_is_named_alone() -> None:
    from fmtk.regression.golden import Golden, recipe_changes

    golden = Golden(
        Path("gold"), {"seed": 42, "options": {"hidden": 32, "drop": 0.1}, "device": "cpu"}, [], {}
    )
    run = {"seed": 42, "options": {"hidden": 33, "drop": 0.1}, "device": "cuda"}  # the device: circumstance
    assert recipe_changes(golden, run) == ("hidden 32 → 33",)
    assert recipe_changes(golden, {**run, "options": {"drop": 0.1}}) == ("hidden 32 → None",)
    field = {"seed": 42, "device": "cpu"}  # an option named as a field, even as a circumstance: said too
    named_as_a_field = Golden(Path("gold"), {**field, "options": {"seed": 1, "device": "a"}}, [], {})
    assert recipe_changes(named_as_a_field, {**field, "options": {"seed": 2, "device": "b"}}) == (
        "options.device 'a' → 'b'", "options.seed 1 → 2"
    )  # fmt: skip
