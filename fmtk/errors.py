"""The one exception type for mistakes a user can make (bad input, missing data, wrong device), and
the one line an exception raised in a user's own code (a recipe file, a handler), or torch running
out of memory, becomes."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
TRACEBACK_VARIABLE = "FMTK_TRACEBACK"  # set to 1: errors in user code keep their whole traceback
FAILED_BATCH = "fmtk_batch"  # an exception's attribute: which batch of which split raised it (a run's)


class FmtkError(Exception):
    """A user-facing error: the CLI prints its message as one line and exits with ``exit_code``."""

    def __init__(self, message: str = "", exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class LabelOutOfRange(IndexError):
    """A batch read during a run has a label that is not one of the model's classes: found on the
    host before the batch goes to the device (:func:`fmtk.training.engines.check_host_labels`)."""

    def __init__(self, label: int, classes: int) -> None:
        super().__init__(f"label {label}, not one of the model's {classes} classes (0 … {classes - 1})")
        self.label, self.classes = label, classes


class Interrupted(FmtkError):
    """Ctrl-C (or a kill) stopped a run; the message says how to go on. Exit code 130."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=130)


def _library_folders() -> tuple[str, ...]:
    """Where fmtk, the bundled recipes, the standard library and installed packages live: a frame
    in none of them is the user's code."""
    package = Path(__file__).resolve().parent
    folders = {str(package), str(package.parent / "recipes")}  # a source checkout's bundled recipes
    folders.update(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    return tuple(str(Path(folder).resolve()) + os.sep for folder in folders)


def user_code_line(error: BaseException) -> str | None:
    """``"my_recipe.py:12: ZeroDivisionError: division by zero"`` for an exception raised in (or
    through) a user's own file, naming the innermost line of it; None for anything else (fmtk's
    own errors keep their traceback)."""
    if isinstance(error, SyntaxError) and error.filename and Path(error.filename).is_file():
        where = _place(error.filename, error.lineno)
    else:
        where = user_code_place(traceback.extract_tb(error.__traceback__))
    if where is None:
        return None
    text = error.msg if isinstance(error, SyntaxError) else str(error)  # str() repeats file and line
    message = text.strip().splitlines()[0] if text.strip() else ""
    detail = f"{type(error).__name__}: {message}" if message else type(error).__name__
    return f"{where}: {detail} ({TRACEBACK_VARIABLE}=1 shows the traceback)"


def user_code_place(frames: traceback.StackSummary) -> str | None:
    """``"my_recipe.py:12"``: the innermost of ``frames`` in a user's own file; None if none is."""
    library = _library_folders()
    mine = [
        frame
        for frame in frames
        if Path(frame.filename).is_file() and not str(Path(frame.filename).resolve()).startswith(library)
    ]
    return _place(mine[-1].filename, mine[-1].lineno) if mine else None


def _place(filename: str, line: int | None) -> str:
    """``file:line``, the file relative to the current folder when it is under it."""
    path = os.path.relpath(filename) if not os.path.relpath(filename).startswith("..") else filename
    return f"{path}:{line}"


# What a run, an evaluation or a prediction can do with less memory.
LESS_MEMORY = (
    "a smaller batch_size (--batch-size; --set accumulate_steps=N keeps the effect of an N times "
    "larger batch), --precision bf16, or for photos --set data_cache=none or a smaller image_size needs less"
)


def out_of_memory_line(error: BaseException) -> str | None:
    """torch's out-of-memory errors as one line: CUDA's ``OutOfMemoryError`` (its first three
    sentences: what it tried to allocate, the GPU's capacity and what is free; the rest is advice
    on its allocator) and the CPU allocator's ``RuntimeError``; None for any other error."""
    text = str(error)
    if type(error).__name__ == "OutOfMemoryError" and text.startswith("CUDA out of memory"):
        said = ". ".join(text.split(". ")[:3]).rstrip(".")
        return f"out of memory on the GPU ({said}): {LESS_MEMORY}"
    tried = re.search(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes", text)
    if isinstance(error, RuntimeError) and tried:
        return f"out of memory: {int(tried[1]) / 2**30:,.1f} GiB more could not be allocated: {LESS_MEMORY}"
    return None


def label_out_of_range_line(error: BaseException) -> str | None:
    """Cross-entropy's ``IndexError: Target 9 is out of bounds.`` (a label past the model's
    outputs, in a batch fmtk did not check before training) as one line; None for any other error."""
    target = re.fullmatch(r"Target (-?\d+) is out of bounds\.", str(error))
    if not isinstance(error, IndexError) or (target is None and not isinstance(error, LabelOutOfRange)):
        return None
    where = getattr(error, FAILED_BATCH, None)
    what = (
        str(error)
        if target is None
        else f"label {target[1]}, not one of the model's classes (cross-entropy: {error})"
    )
    return (
        f"{f'{where}: ' if where else 'a batch has '}{what}; only the first batch of a split read batch by "
        "batch is checked before training: check the labels the recipe's data gives"
    )


def failed_batch_line(error: BaseException) -> str | None:
    """An error raised reading a batch or by the model or loss on it, after the first batch that
    was checked (a batch of another shape, dtype or size: torch's own message), as one line
    naming the batch (:data:`FAILED_BATCH`, set by the run); None for other errors and for one
    raised in fmtk's own code (a bug of fmtk's keeps its traceback)."""
    where = getattr(error, FAILED_BATCH, None)
    if where is None or not isinstance(error, RuntimeError | ValueError | TypeError | IndexError):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    if frames and str(Path(frames[-1].filename).resolve()).startswith(str(Path(__file__).resolve().parent)):
        return None
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    # A DataLoader worker's error: "Caught RuntimeError in DataLoader worker process 0. Original
    # Traceback …", the error itself on its last line.
    message = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    if lines and lines[0].startswith("Caught "):
        message = lines[-1]
        if "resize storage that is not resizable" in message:  # torch's collate in a worker
            message += " (a DataLoader worker's words for samples of different sizes in one batch)"
    return (
        f"{where}: {message}; only the first batch of a split read batch by batch is checked before "
        "training: check that every batch of the recipe's data has the first one's shapes and types "
        f"({TRACEBACK_VARIABLE}=1 shows the traceback)"
    )


# The command line's options that the shared checks name, as the Python API's keywords
# (fmtk.fit, tune, check, export…); an option alone (``--record:``) is its keyword alone.
KEYWORDS = {option: option[2:].replace("-", "_") for option in (
    "--device", "--run-dir", "--output-dir", "--data-dir", "--checkpoint", "--split", "--folder", "--top",
    "--format", "--out", "--study-dir", "--trials", "--keep", "--against", "--backend", "--nproc-per-node",
    "--resume", "--metric", "--recipe", "--epochs", "--tolerance", "--track",
)} | {"--record": "record_to"}  # fmt: skip


@contextlib.contextmanager
def as_keywords() -> Iterator[None]:
    """A value given as a keyword is named as one in its error (``lr=abc``, ``device=cdu``,
    ``run_dir=runs/x``, ``handler mod:f``, ``space lr=…``), not as the command line's ``--set
    lr=abc``, ``--device cdu``, ``--run-dir runs/x``, ``--handler mod:f`` or ``--space lr=…`` that
    the shared checks say. The error keeps its type (and exit code)."""
    try:
        yield
    except FmtkError as error:
        # A command it suggests (``… with fmtk check RECIPE --record DIR``) keeps its options.
        parts = re.split(r"(fmtk [a-z-]+ [^;)]*)", str(error))
        parts[::2] = [_keywords(part) for part in parts[::2]]
        error.args = ("".join(parts),)
        raise


def _keywords(text: str) -> str:
    text = re.sub(r"--set (\S+?=)", r"\1", text).replace("(--set)", "(a keyword)")
    for option in ("--handler", "--space", "--try"):
        text = re.sub(rf"{option}(?=[ ):])", option[2:], text)
    for option, keyword in KEYWORDS.items():
        text = re.sub(rf"{option} (\S+?)(:|,|;|\)|\s|$)", rf"{keyword}=\1\2", text)
        text = re.sub(rf"{option}(?=[:;,)]|$)", keyword, text)
    return text


def keyword_errors(function: Callable[..., T]) -> Callable[..., T]:
    """``function``, its errors naming keywords (:func:`as_keywords`): the Python face of a function
    that a command calls too."""

    @functools.wraps(function)
    def named(*args: Any, **keywords: Any) -> T:
        with as_keywords():
            return function(*args, **keywords)

    return named


def command(*words: object) -> str:
    """A command fmtk suggests in a line, to paste into a shell as it is: ``fmtk`` and ``words``,
    each quoted where the shell needs it (a run folder with a space in its name)."""
    return shlex.join(["fmtk", *(str(word) for word in words)])


def a_kind(kind: str) -> str:
    """``kind`` with its article, for a line naming a type: ``a list``, ``an ndarray``."""
    return f"{'an' if kind[:1].lower() in 'aeiou' or kind.startswith('nd') else 'a'} {kind}"


def first_few(items: Sequence[T], shown: int = 3) -> tuple[list[T], int]:
    """The items a one-line message names, and how many it leaves to "and N more": the first
    ``shown``, or all of them when there is one more (a fourth is named, not "and 1 more")."""
    named = len(items) if len(items) <= shown + 1 else shown
    return list(items[:named]), len(items) - named


def print_any_file_name() -> None:
    """Let stdout and stderr print a file name that is not UTF-8 (a Latin-1 zip unpacked on Linux)
    as the bytes it is, as ls prints it, not fail with a UnicodeEncodeError on the line naming it:
    the CLI's process and each process a run spawns call it first."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError):  # a stream that is not a text file
            stream.reconfigure(errors="surrogateescape")


RESUME_HINT = "fmtk_resume_hint"  # set on a user's error after a checkpoint: how to go on (fmtk run)


def one_line(error: BaseException) -> str | None:
    """The one line to print for ``error``: an FmtkError's message, what ran out of memory, or where
    a user's code failed; None (keep the traceback) for an error inside fmtk or with
    ``FMTK_TRACEBACK=1``."""
    if isinstance(error, FmtkError):
        return str(error)
    if os.environ.get(TRACEBACK_VARIABLE) == "1" or not isinstance(error, Exception):
        return None
    line = (out_of_memory_line(error) or label_out_of_range_line(error) or user_code_line(error)
            or failed_batch_line(error))  # fmt: skip
    hint = getattr(error, RESUME_HINT, None)
    if line is None or hint is None:
        return line
    shown = f" ({TRACEBACK_VARIABLE}=1 shows the traceback)"
    return f"{line.removesuffix(shown)}; {hint}" + (shown if line.endswith(shown) else "")
