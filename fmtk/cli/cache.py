"""`fmtk cache`: what fmtk keeps in its cache folder, and clearing it (neither torch nor numpy imported)."""

from __future__ import annotations

from pathlib import Path

import click

from fmtk.cli.group import cli


@cli.command("cache")
@click.argument("folders", metavar="[PHOTOS]...", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--clear",
    is_flag=True,
    help="Delete fmtk's files in the cache folder (but those being written); "
    "with PHOTOS, only what is kept of those photo folders.",
)
def cache(folders: tuple[Path, ...], clear: bool) -> None:
    """The cache folder ($FMTK_CACHE, else ~/.cache/fmtk): the folders whose photos are kept decoded
    (data_cache=file) with their size, photos, files that cannot be decoded, disk and last use; and
    fmtk's other files there. Nothing else in it is touched. PHOTOS: only those photo folders' (a
    folder deleted since too)."""
    from fmtk.caches import byte_size, cache_contents, clear_cache, format_cache

    contents = cache_contents()
    if folders:
        contents = contents.of(list(folders))
    if not clear:
        click.echo(format_cache(contents, list(folders)))
        return
    files, size = clear_cache(contents)
    kept = f"; kept {len(contents.writing)} being written" if contents.writing else ""
    click.echo(f"deleted {files:,} files ({byte_size(size)}) from {contents.where}{kept}")
