"""`fmtk check`: the recipes' regression tests (torch is imported inside the command)."""

from __future__ import annotations

from pathlib import Path

import click

from fmtk.cli.group import check_output_place, cli, data_dir_option
from fmtk.errors import FmtkError


@cli.command("check")
@click.argument("targets", nargs=-1, metavar="[RECIPE|FILE|FOLDER]...")
@click.option("--device", default="cpu", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--name", metavar="LABEL",
              help="Only the check labelled LABEL (its name, else its preset, else 'default': the table's "
              "check column).")  # fmt: skip
@data_dir_option
@click.option("--junit", type=click.Path(path_type=Path), help="Also write the results as JUnit XML.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of the table.")
@click.option("--keep", type=click.Path(path_type=Path), metavar="DIR",
              help="Keep every check's run folder in DIR [default: a failing one's only, in a temporary "
              "folder].")  # fmt: skip
@click.option("--record", "record_to", type=click.Path(path_type=Path), metavar="DIR",
              help="Keep each passing run as a golden run in DIR/<recipe>-<check> (on a GPU trained with "
              "deterministic kernels).")  # fmt: skip
@click.option("--against", type=click.Path(path_type=Path), metavar="DIR",
              help="Compare each run epoch by epoch with its golden run, DIR/<recipe>-<check>.")  # fmt: skip
@click.option("--tolerance", type=click.FloatRange(min=0), metavar="X",
              help="Allowed absolute difference from a golden run [default: 0 on the machine, torch and "
              "threads it was recorded with (on a GPU: the same GPU, CUDA and cuDNN, deterministic), else "
              "0.001].")  # fmt: skip
def check_command(
    targets: tuple[str, ...],
    device: str,
    name: str | None,
    data_dir: Path | None,
    junit: Path | None,
    as_json: bool,
    keep: Path | None,
    record_to: Path | None,
    against: Path | None,
    tolerance: float | None,
) -> None:
    """Train each recipe's check (its `check` field: a short run and the figures it must reach) and
    print one table: recipe, check, figure, expected, got, verdict, seconds. Exits 1 when any check
    fails. With no RECIPE, every bundled recipe; a FOLDER means every recipe file in it.
    """
    from fmtk.pipes import outlive_closed_pipes
    from fmtk.regression.report import as_json as results_json
    from fmtk.regression.report import format_table, junit_xml
    from fmtk.regression.running import plan_checks, recipes_named, run_check

    outlive_closed_pipes(
        "the checks go on to their end without printing; the exit code says whether they passed"
    )

    if junit is not None:
        check_output_place("--junit", junit)
    recipes, unloadable = recipes_named(targets)
    planned = []
    if any(recipe.checks for recipe in recipes) or not unloadable:  # (else the failed loads say it)
        planned = plan_checks(recipes, name=name, keep=keep, record_to=record_to, against=against,
                              data_dir=data_dir, tolerance=tolerance)  # fmt: skip
    unchecked = [recipe.name for recipe in recipes if not recipe.checks]
    if unchecked:  # (with none checked at all, plan_checks said so)
        click.echo(f"not checked: {', '.join(unchecked)} (no check stated: a recipe's check field)", err=True)
    results = list(unloadable)  # a folder's files that did not load: failed, the other files checked
    for failed in unloadable:
        click.echo(f"{failed.recipe}: not loaded, not checked: {failed.error}", err=True)
    for recipe, one, where in planned:
        if not as_json and "unrecorded" not in where:  # (one without its golden run is not trained)
            click.echo(f"checking {recipe.name} ({one.label}) …")
        results.append(run_check(recipe, one, device, data_dir, tolerance=tolerance, **where))
    click.echo(results_json(results) if as_json else format_table(results))
    if record_to is not None and not as_json:  # which golden runs the command kept
        for result in results:
            kept = f"recorded {result.recorded}" if result.recorded else "not recorded: it failed"
            click.echo(f"{result.recipe} ({result.check}): {kept}")
    if junit is not None:
        try:
            junit.write_text(junit_xml(results))
        except OSError as error:
            raise FmtkError(f"--junit {junit}: cannot write it ({error.strerror})") from None
    if not all(result.passed for result in results):
        raise SystemExit(1)
