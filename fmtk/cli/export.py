"""The command that takes a model out of fmtk: export (torch is imported inside it)."""

from __future__ import annotations

from pathlib import Path

import click

from fmtk.cli.group import check_run_folder, checkpoint_option, cli, data_dir_option, recipe_file_option


@cli.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@checkpoint_option
@click.option("--format", "format_", type=click.Choice(["onnx", "torchscript"]), default=None,
              help="Default: from --out's suffix (.onnx, .pt), else onnx.")  # fmt: skip
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The file to write (default RUN_DIR/model.onnx or .pt); never overwritten.")  # fmt: skip
@data_dir_option
@recipe_file_option
def export(
    run_dir: Path,
    checkpoint: str,
    format_: str | None,
    out: Path | None,
    data_dir: Path | None,
    recipe_file: Path | None,
) -> None:
    """Export a run's model to ONNX or TorchScript with its class names and image preparation
    inside, after checking it against the run on validation samples (the report: FILE.json)."""
    from fmtk.exporting import export as export_run

    check_run_folder("export", run_dir)
    done = export_run(
        run_dir,
        checkpoint=checkpoint,
        format=format_,
        out=out,
        data_dir=data_dir,
        recipe=recipe_file,
        echo=click.echo,
    )
    report = done.report
    click.echo(
        f"exported {report['metadata']['recipe']} {report['metadata']['checkpoint']} to {done.path} "
        f"({_size(report['bytes'])}, {report['exporter']} exporter, {report['export_seconds']:.1f} s)"
    )
    sizes = ", ".join(map(str, report["batch_sizes"]))
    click.echo(
        f"parity on {report['samples']} valid samples, in batches of {sizes}: largest difference "
        f"{report['max_abs_difference']:.1e}, top-1 agreement {100 * report['top1_agreement']:.2f}%"
    )
    click.echo(f"wrote {done.report_path}")


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"
