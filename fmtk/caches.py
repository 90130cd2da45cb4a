"""fmtk's cache folder, ``$FMTK_CACHE`` (else ``~/.cache/fmtk``): what fmtk keeps in it, and listing and
clearing it (``fmtk cache``). The standard library only: the command imports neither torch nor numpy.

What fmtk keeps there (:mod:`fmtk.data.image_cache` writes the first two, for ``data_cache=file``):

- ``<folder>-<size>px-<place>-<key>.npy``: a folder's photos decoded at one size; ``<place>`` hashes
  the folder's path, ``<key>`` its files (each one's path, size and modification time).
- the same name in ``.json``: what the ``.npy`` holds (the folder, its photos, the files that cannot
  be decoded).
- ``bad-images-<name>-<hash>.txt``: the last list of a folder's files that cannot be decoded.
- ``<name>.<host>-<pid>.tmp``: a file being written, or left by a process killed while writing it
  (an older fmtk's ``<name>.<pid>.tmp``).
- ``<folder>-<size>px-<key>.npy``: an older fmtk's decoded photos (before the ``.json``), never read again.

Nothing else in the folder is fmtk's: it is never listed nor deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path

from fmtk.errors import FmtkError, command
from fmtk.scratch import process_running
from fmtk.text import aligned

PHOTOS = re.compile(r".+-\d+px-[0-9a-f]{8}-[0-9a-f]{20}\.(npy|json)")
OLD_PHOTOS = re.compile(r".*-\d+px-[0-9a-f]{20}\.npy")  # (``--data-dir .`` gave no name)
BAD_LIST = re.compile(r"bad-images-.+\.txt")
# (an older fmtk's too: no <place>, no <host>)
UNFINISHED = re.compile(
    r".*-\d+px-([0-9a-f]{8}-)?[0-9a-f]{20}\.(npy|json)\.((?P<host>.+)-)?(?P<pid>\d+)\.tmp"
)

# Another machine's temporary file (or an older fmtk's) modified this recently is being written: kept.
WRITING_SECONDS = 600


def cache_folder() -> Path:
    """Where fmtk keeps decoded photos and lists of bad files: ``$FMTK_CACHE``, else ``~/.cache/fmtk``."""
    return Path(os.environ.get("FMTK_CACHE") or Path.home() / ".cache" / "fmtk")


def a_file_instead(where: Path) -> str | None:
    """What is wrong with the cache folder ``where`` when it is a file (mkdir says only "File
    exists"), else None."""
    if where.exists() and not where.is_dir():
        return f"the cache folder {where} is a file ($FMTK_CACHE names a folder)"
    return None


def folder_name(folder: Path) -> str:
    """The name of ``folder`` in the cache folder's file names (``--data-dir .``: its real name)."""
    return Path(folder).resolve().name or "photos"


def bad_list_name(folder: Path) -> str:
    """The name of ``folder``'s list of bad files: its name and its whole path's hash (two folders
    named ``photos`` have two lists)."""
    return f"{folder_name(folder)}-{hashlib.sha256(os.fsencode(Path(folder).resolve())).hexdigest()[:8]}"


def bad_list(folder: Path) -> Path:
    """``folder``'s last list of the files that cannot be decoded, in the cache folder."""
    return cache_folder() / f"bad-images-{bad_list_name(folder)}.txt"


def temporary_name(path: Path) -> Path:
    """Where this process writes ``path`` before renaming it: named by the machine and the process,
    so that a file left by a killed writer is known as such at once on the machine that wrote it."""
    return path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")


def being_written(path: Path, now: float | None = None) -> bool:
    """Whether the temporary file ``path`` is still being written: its process still runs (one of
    this machine's), else it was modified in the last :data:`WRITING_SECONDS` (a cache folder
    shared by machines); an older one was left by a process killed while writing it."""
    named = UNFINISHED.fullmatch(path.name)
    if named and named["host"] == socket.gethostname():
        return process_running(int(named["pid"])) and path.exists()
    try:
        return (now or time.time()) - path.stat().st_mtime < WRITING_SECONDS
    except FileNotFoundError:
        return False


@dataclasses.dataclass
class Cached:
    """One folder's photos decoded at one size: its ``.npy`` and ``.json`` (either may be missing)."""

    paths: list[Path]
    size: int  # bytes on disk
    used: float  # last read or written
    folder: str | None = None  # the photos' folder, as the .json says
    image_size: int | None = None
    photos: int | None = None
    bad: int | None = None

    @property
    def complete(self) -> bool:
        return {path.suffix for path in self.paths} == {".npy", ".json"} and self.folder is not None


@dataclasses.dataclass
class CacheContents:
    """fmtk's files in a cache folder, by kind."""

    where: Path
    photos: list[Cached]
    old: list[Path]  # an older fmtk's decoded photos
    bad_lists: list[Path]
    unfinished: list[Path]  # left by a killed process
    writing: list[Path]  # being written now: never deleted

    def deletable(self) -> list[Path]:
        photos = [path for cached in self.photos for path in cached.paths]
        return photos + self.old + self.bad_lists + self.unfinished

    def of(self, folders: list[Path]) -> CacheContents:
        """Only what is kept of ``folders`` (photo folders, there or gone): their decoded photos at
        every size, also of the split folders in them (``train/``, ``test/``…, each cached as its
        own), and their lists of bad files. A folder with none is one line, before anything is
        deleted (a mistyped second folder must not leave the first one cleared)."""
        chosen = CacheContents(self.where, [], [], [], [], [])
        for folder in folders:
            resolved, listed = str(Path(folder).resolve()), bad_list(folder).name
            inside = resolved.rstrip(os.sep) + os.sep
            photos = [cached for cached in self.photos if (str(cached.folder) + os.sep).startswith(inside)]
            lists = [path for path in self.bad_lists if path.name == listed]
            if not photos and not lists:
                raise FmtkError(f"{folder}: nothing of this folder's in the cache folder {self.where} "
                                "(fmtk cache lists what is there)")  # fmt: skip
            chosen.photos += [cached for cached in photos if cached not in chosen.photos]
            chosen.bad_lists += [path for path in lists if path not in chosen.bad_lists]
        return chosen


def cache_contents(where: Path | None = None) -> CacheContents:
    """What fmtk keeps in ``where`` (default :func:`cache_folder`); nothing there: all empty."""
    where = cache_folder() if where is None else where
    contents = CacheContents(where, [], [], [], [], [])
    try:
        files = sorted(path for path in where.iterdir() if path.is_file())
    except FileNotFoundError:
        return contents
    except OSError as error:
        raise FmtkError(f"cannot read the cache folder {where}: {error.strerror}") from None
    now, stems = time.time(), {}
    for path in files:
        if PHOTOS.fullmatch(path.name):
            stems.setdefault(path.with_suffix(""), []).append(path)
        elif OLD_PHOTOS.fullmatch(path.name):
            contents.old.append(path)
        elif BAD_LIST.fullmatch(path.name):
            contents.bad_lists.append(path)
        elif UNFINISHED.fullmatch(path.name):
            (contents.writing if being_written(path, now) else contents.unfinished).append(path)
    listed = [_cached(paths) for paths in stems.values()]
    contents.photos = sorted((cached for cached in listed if cached), key=lambda cached: -cached.used)
    return contents


def _cached(paths: list[Path]) -> Cached | None:
    """The cache of these files; None when a run replaced them since they were listed."""
    try:
        stats = {path.suffix: path.stat() for path in paths}
    except FileNotFoundError:
        return None
    main = stats.get(".npy") or stats[".json"]
    used = max(main.st_atime, main.st_mtime)  # a read sets its access time (fmtk.data.image_cache)
    cached = Cached(paths, sum(stat.st_size for stat in stats.values()), used)
    description = next((path for path in paths if path.suffix == ".json"), None)
    try:
        said = json.loads(description.read_text()) if description is not None else {}
        cached.folder, cached.image_size = str(said["folder"]), int(said["image_size"])
        cached.photos, cached.bad = int(said["photos"]), len(said["bad"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # a torn or foreign .json: listed as such, deleted by --clear
    return cached


def clear_cache(contents: CacheContents) -> tuple[int, int]:
    """Delete every file of ``contents`` but those being written: ``(files, bytes)`` deleted."""
    files = size = 0
    for path in contents.deletable():
        try:
            bytes_ = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue  # another process deleted or replaced it
        except OSError as error:
            raise FmtkError(f"cannot delete {path}: {error.strerror}") from None
        files, size = files + 1, size + bytes_
    return files, size


def byte_size(count: int) -> str:
    """``count`` bytes in KiB, MiB or GiB, whichever is the largest below it: ``"287.2 MiB"``."""
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if count >= 2**power:
            return f"{count / 2**power:,.1f} {unit}"
    return f"{count / 2**10:,.1f} KiB"


def format_cache(contents: CacheContents, folders: Sequence[Path] = ()) -> str:
    """The cache folder's contents for ``fmtk cache``: its decoded folders as a table, newest used
    first, then a line of the rest and what ``--clear`` would free (of ``folders`` only, if given:
    ``contents`` is then :meth:`CacheContents.of` them)."""
    photos = contents.photos
    others = contents.old + contents.bad_lists + contents.unfinished
    total = sum(cached.size for cached in photos) + _sizes(others)
    if not (photos or others or contents.writing):
        return f"{contents.where}: no folder's photos kept decoded, nothing of fmtk's to clear"
    lines = [f"{contents.where}: {_count(len(photos), 'decoded folder')}, {byte_size(total)} in all"]
    if photos:
        table = [("photos of", "size", "files", "bad", "on disk", "last used")]  # files: bad ones too
        for cached in photos:
            folder = cached.folder if cached.complete else "(unfinished or unreadable: --clear deletes it)"
            if cached.folder is not None and not Path(cached.folder).is_dir():
                folder += " (gone)"
            table.append((
                folder, _or_dash(cached.image_size, "{}px"), _or_dash(cached.photos, "{:,}"),
                _or_dash(cached.bad, "{:,}"), byte_size(cached.size),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(cached.used)),
            ))  # fmt: skip
        lines += aligned(table, right=(1, 2, 3, 4))
    rest = [
        f"{_count(len(contents.old), 'cache')} of an older fmtk ({byte_size(_sizes(contents.old))}, never "
        "read again)" if contents.old else "",
        _count(len(contents.bad_lists), "list") + " of bad files" if contents.bad_lists else "",
        f"{_count(len(contents.unfinished), 'unfinished file')} ({byte_size(_sizes(contents.unfinished))}, "
        "left by killed processes)" if contents.unfinished else "",
        f"{_count(len(contents.writing), 'file')} being written" if contents.writing else "",
    ]  # fmt: skip
    if any(rest):
        lines.append("also: " + "; ".join(part for part in rest if part))
    if contents.deletable():
        again = " (the next run of each folder decodes its photos again)" if photos else ""
        lines.append(f"{command('cache', *folders, '--clear')} deletes them{again}.")
    return "\n".join(lines)


def _count(number: int, thing: str) -> str:
    return f"{number:,} {thing}{'' if number == 1 else 's'}"


def _or_dash(value: int | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def _sizes(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            pass
    return total
