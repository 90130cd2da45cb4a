"""The decoded-photo cache (``data_cache=file``) and ``fmtk cache``: a folder's cache replaces its
own older ones, bad files are kept with it, a full disk is refused before decoding and leaves no
half-written file, and ``fmtk cache`` lists and clears fmtk's files only."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import ignite.distributed as idist
import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, fmtk, make_photos

from fmtk.caches import WRITING_SECONDS, cache_contents
from fmtk.data import images, load_photo_folder
from fmtk.data.image_cache import FolderCache
from fmtk.data.images import BadImages
from fmtk.distributed import launch
from fmtk.errors import FmtkError

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def load(folder: Path, size: int = 16, **options) -> object:
    return load_photo_folder(folder, size, 4, CPU, seed=0, data_cache="file", **options)


def names(cache: Path, pattern: str = "*") -> list[str]:
    return sorted(path.name for path in cache.glob(pattern))


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("decoded again")

    monkeypatch.setattr(images, "decode_images", refuse)


def test_a_changed_folder_replaces_its_own_cache_and_no_other(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = make_photos(tmp_path / "a" / "photos", {"ants": 6, "bees": 6})
    namesake = make_photos(tmp_path / "b" / "photos", {"ants": 7, "bees": 7})  # same name, another folder
    made, _, _ = load(photos), load(photos, size=20), load(namesake)
    assert made.cached == (
        f"data_cache=file: 12 photos at 16 px decoded and kept in {cache} for the "
        "next runs (9.1 KiB; fmtk cache lists and clears them)"
    )  # the run says it
    first = names(cache)
    assert len(first) == 6 and {name.rsplit(".", 1)[1] for name in first} == {"npy", "json"}
    (photos / "ants" / "ants0.jpg").unlink()
    (photos / "bees" / "bees1.png").write_bytes((photos / "bees" / "bees3.png").read_bytes())
    changed = load(photos)
    now = names(cache)
    assert len(now) == 6 and len(set(now) - set(first)) == 2  # its 16 px cache replaced: npy and json
    assert sum(len(y) for split in ("train", "valid", "test") for _, y in getattr(changed, split)) == 11
    no_decoding(monkeypatch)  # the others are read (its 20 px one stays until a run at 20 px replaces it)
    assert load(namesake).cached == f"data_cache=file: 14 photos at 16 px read from {cache}"
    load(photos)


def test_bad_files_are_kept_with_the_cache_and_named_from_where_the_run_is(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    (photos / "bees" / "broken.jpg").write_bytes(b"not a photo")
    with pytest.raises(BadImages, match=r"1 of 13 image files cannot be decoded: .*broken\.jpg"):
        load(photos)
    no_decoding(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadImages) as raised:
        load(Path("photos"))
    assert raised.value.bad[0][0] == os.path.join("photos", "bees", "broken.jpg")
    skipped = load(Path("photos"), skip_bad_images=True)
    assert skipped.skipped == (os.path.join("photos", "bees", "broken.jpg"),)
    assert sum(len(y) for split in ("train", "valid", "test") for _, y in getattr(skipped, split)) == 12


def test_a_torn_cache_is_decoded_again(tmp_path: Path, cache: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    expected = load(photos).train.images
    [npy] = cache.glob("*.npy")
    npy.write_bytes(npy.read_bytes()[:500])
    assert torch.equal(load(photos).train.images, expected)
    assert np.load(npy).shape == (12, 3, 16, 16)


def test_a_full_disk_is_refused_before_decoding_and_leaves_no_half_file(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real_usage(path)._replace(free=1000))
    with pytest.raises(FmtkError) as raised:
        load(photos)
    line = str(raised.value)
    assert line.startswith("data_cache=file: the 12 photos to cache at 16 px are 9.0 KiB decoded, more than")
    assert f"free on the disk of the cache folder {cache}: free space (fmtk cache --clear)" in line
    assert not cache.exists() or names(cache) == []
    monkeypatch.undo()
    monkeypatch.setenv("FMTK_CACHE", str(cache))

    def disk_full(file: object, array: np.ndarray) -> None:
        file.write(b"\x93NUMPY half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(FmtkError, match=r"cannot write the image cache .*\.npy: No space left on device"):
        load(photos)
    assert names(cache) == []  # no .tmp left behind


def test_ctrl_c_while_the_cache_is_written_leaves_no_half_file(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})

    def interrupted(file: object, array: np.ndarray) -> None:
        file.write(b"\x93NUMPY half")
        raise KeyboardInterrupt  # (the run then says "interrupted before the run began; nothing was kept")

    monkeypatch.setattr(np, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(photos)
    assert names(cache) == []  # before: the .npy's .tmp, full size


def test_files_left_by_a_killed_writer_go_and_one_being_written_stays(tmp_path: Path, cache: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    load(photos)
    [npy] = cache.glob("*.npy")
    (photos / "ants" / "ants0.jpg").unlink()  # the next run writes a new cache
    left = npy.with_name(f"{npy.name}.999999.tmp")
    writing = npy.with_name(f"{npy.name[:-24]}{'0' * 20}.npy.999998.tmp")
    mine = npy.with_name(f"{npy.name[:-24]}notes.txt")  # the user's, named like the cache
    for path in (left, writing, mine):
        path.write_bytes(b"half")
    old = time.time() - WRITING_SECONDS - 60
    os.utime(left, (old, old))
    load(photos)
    assert not left.exists() and writing.exists() and mine.exists() and not npy.exists()
    assert len(names(cache, "*.npy")) == 1


def test_a_file_left_by_a_killed_writer_of_this_machine_goes_at_once(tmp_path: Path, cache: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    load(photos)
    [npy] = cache.glob("*.npy")
    (photos / "ants" / "ants0.jpg").unlink()  # the next run writes a new cache
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    host = socket.gethostname()
    left = npy.with_name(f"{npy.name}.{host}-{int(ended.stdout)}.tmp")  # its process has ended
    writing = npy.with_name(f"{npy.name[:-24]}{'0' * 20}.npy.{host}-{os.getpid()}.tmp")  # this one runs
    elsewhere = npy.with_name(f"{npy.name[:-24]}{'1' * 20}.npy.another-host-{int(ended.stdout)}.tmp")
    for path in (left, writing, elsewhere):
        path.write_bytes(b"half")
    old = time.time() - WRITING_SECONDS - 60
    os.utime(writing, (old, old))  # written slowly: its process says it is being written
    assert [path.name for path in cache_contents(cache).writing] == sorted([writing.name, elsewhere.name])
    load(photos)
    assert not left.exists() and writing.exists() and elsewhere.exists()


def test_the_cache_command_lists_and_clears_fmtks_files_only(tmp_path: Path, cache: Path) -> None:
    empty = f"{cache}: no folder's photos kept decoded, nothing of fmtk's to clear\n"
    assert fmtk("cache").stdout == empty  # no folder yet
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    (photos / "bees" / "broken.jpg").write_bytes(b"")
    with pytest.raises(BadImages):
        load(photos)
    gone = make_photos(tmp_path / "gone", {"ants": 6, "bees": 6})
    load(gone, size=20)
    shutil.rmtree(gone)
    (cache / "notes.txt").write_text("mine")  # not fmtk's
    (cache / "photos-16px-0123456789abcdef0123.npy").write_bytes(b"x" * 2048)  # an older fmtk's
    left = cache / f"{next(cache.glob('*.npy')).name}.4242.tmp"
    left.write_bytes(b"x" * 1024)
    os.utime(left, (time.time() - WRITING_SECONDS - 60,) * 2)
    writing = cache / "gone-20px-00000000-0000000000000000000a.npy.4243.tmp"
    writing.write_bytes(b"x")

    lines = fmtk("cache").stdout.splitlines()
    assert lines[0].startswith(f"{cache}: 2 decoded folders, ") and lines[0].endswith(" in all")
    assert lines[1].split() == ["photos", "of", "size", "files", "bad", "on", "disk", "last", "used"]
    rows = {line.split()[0]: line.split() for line in lines[2:4]}
    assert rows[str(photos)][1:4] == ["16px", "13", "1"]
    assert rows[str(gone)][1:5] == ["(gone)", "20px", "12", "0"]
    assert lines[4] == (
        "also: 1 cache of an older fmtk (2.0 KiB, never read again); 1 list of bad files; 1 unfinished file "
        "(1.0 KiB, left by killed processes); 1 file being written"
    )
    assert lines[5] == (
        "fmtk cache --clear deletes them (the next run of each folder decodes its photos again)."
    )
    assert len(cache_contents().deletable()) == 7

    cleared = fmtk("cache", "--clear")
    assert cleared.returncode == 0
    assert cleared.stdout.startswith("deleted 7 files (") and cleared.stdout.endswith(
        f") from {cache}; kept 1 being written\n"
    )
    assert names(cache) == sorted(["notes.txt", writing.name])
    writing.unlink()
    assert fmtk("cache").stdout == empty


def test_an_unreadable_cache_folder_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("FMTK_CACHE", str(blocker))
    assert_one_line_error(fmtk("cache"), f"cannot read the cache folder {blocker}")


def test_the_cache_command_imports_neither_torch_nor_numpy(cache: Path) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from fmtk.cli import cli; "
        "result = CliRunner().invoke(cli, ['cache']); "
        "print(result.exit_code, 'torch' in sys.modules, 'numpy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False", "False"]


def test_the_folder_given_as_dot_is_named_and_listed(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    monkeypatch.chdir(photos)
    load(Path("."))
    assert [name.split("-")[0] for name in names(cache)] == ["photos", "photos"]
    assert len(cache_contents().photos) == 1


def test_two_folders_of_one_name_have_two_lists_of_bad_files(tmp_path: Path) -> None:
    from fmtk.caches import bad_list_name

    first, second = bad_list_name(tmp_path / "a" / "photos"), bad_list_name(tmp_path / "b" / "photos")
    assert first != second and first.startswith("photos-") and second.startswith("photos-")
    assert bad_list_name(tmp_path / "a" / ".." / "a" / "photos") == first  # one folder, one list


def test_a_cache_folder_that_cannot_be_made_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "file" / "cache"))
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    no_decoding(monkeypatch)  # said before the photos decode
    with pytest.raises(
        FmtkError, match=r"cannot write in the cache folder .*file/cache \(Not a directory\): set FMTK_CACHE"
    ):
        load(photos)
    monkeypatch.setenv("FMTK_CACHE", str(tmp_path / "file"))  # it said "File exists"
    with pytest.raises(
        FmtkError, match=r"the cache folder .*file is a file \(\$FMTK_CACHE names a folder\)$"
    ):
        load(photos)


def test_a_killed_writer_s_file_goes_when_a_later_run_reads_the_cache(tmp_path: Path, cache: Path) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    load(photos)
    [npy] = cache.glob("*.npy")
    left = npy.with_name(f"{npy.name}.999999.tmp")  # killed while writing this very cache
    left.write_bytes(b"half")
    load(photos)
    assert left.exists()  # it may still be being written
    os.utime(left, (time.time() - WRITING_SECONDS - 60,) * 2)
    load(photos)
    assert not left.exists() and npy.exists()


def _load_in_rank(local_rank: int, settings: tuple[Path, Path]) -> None:
    """One of a run's processes loading the photos with ``data_cache=file``; each says in ``said``
    whether it wrote the cache. Every process reads the cache (finding none) before any writes."""
    photos, said = settings
    read, write = FolderCache.read, FolderCache.write

    def read_then_wait(cache: FolderCache) -> object:
        found = read(cache)
        idist.barrier()  # all have looked: without the rule, each would write
        return found

    def noted_write(cache: FolderCache, *args: object) -> None:
        (said / f"rank{idist.get_rank()}").write_text("wrote")
        write(cache, *args)

    FolderCache.read, FolderCache.write = read_then_wait, noted_write  # this process's own
    load(photos)


@pytest.mark.slow  # two processes, each importing torch
def test_of_a_run_s_processes_only_the_first_writes_the_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    said = tmp_path / "said"
    said.mkdir()
    launch(_load_in_rank, (photos, said), 2, "gloo")
    assert names(said) == ["rank0"]
    assert len(names(cache, "*.npy")) == 1 and len(names(cache, "*.json")) == 1 and not names(cache, "*.tmp")
    no_decoding(monkeypatch)  # and the next run reads it
    load(photos)


def test_the_cache_command_lists_and_clears_the_photo_folders_it_is_given_only(
    tmp_path: Path, cache: Path
) -> None:
    photos = make_photos(tmp_path / "photos", {"ants": 6, "bees": 6})
    (photos / "bees" / "broken.jpg").write_bytes(b"")
    with pytest.raises(BadImages):
        load(photos)
    with pytest.raises(BadImages):
        load(photos, size=20)  # with its list of bad files: 5 files
    other = make_photos(tmp_path / "other photos", {"ants": 6, "bees": 6})
    load(other)
    gone = make_photos(tmp_path / "gone", {"ants": 6, "bees": 6})
    load(gone)
    shutil.rmtree(gone)
    everything = names(cache)

    listed = fmtk("cache", "other photos", cwd=tmp_path).stdout.splitlines()
    assert listed[0].startswith(f"{cache}: 1 decoded folder, ") and listed[2].startswith(f"{other}  16px  ")
    again = " (the next run of each folder decodes its photos again)."
    assert listed[-1] == f"fmtk cache 'other photos' --clear deletes them{again}"
    typo = fmtk("cache", "--clear", "gone", "photoes", cwd=tmp_path)  # the typo comes second
    assert_one_line_error(
        typo, f"photoes: nothing of this folder's in the cache folder {cache} (fmtk cache lists"
    )
    assert names(cache) == everything  # nothing deleted

    cleared = fmtk("cache", "--clear", "photos", "gone", cwd=tmp_path)
    assert cleared.returncode == 0 and cleared.stdout.startswith("deleted 7 files (")
    assert [cached.folder for cached in cache_contents(cache).photos] == [str(other)]
    assert not cache_contents(cache).bad_lists

    split = tmp_path / "split"  # train/ and test/: each split folder cached as its own
    for part in ("train", "test"):
        make_photos(split / part, {"ants": 6, "bees": 6})
    load(split)
    listed = fmtk("cache", "split", cwd=tmp_path).stdout.splitlines()
    assert listed[0].startswith(f"{cache}: 2 decoded folders, ")
    assert fmtk("cache", "--clear", "split", cwd=tmp_path).stdout.startswith("deleted 4 files (")
    assert [cached.folder for cached in cache_contents(cache).photos] == [str(other)]
