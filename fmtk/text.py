"""Terminal text: how many columns a string takes (a wide character, 犬 or 猫, two; a combining
accent none), strings padded by it, and rows of cells as aligned columns (fmtk's tables)."""

from __future__ import annotations

import unicodedata
from collections.abc import Container, Sequence


def columns(text: str) -> int:
    """The terminal columns ``text`` takes: ``len`` but for wide and combining characters."""
    return sum(
        0 if unicodedata.combining(char) else 2 if unicodedata.east_asian_width(char) in "WF" else 1
        for char in text
    )


def ljust(text: str, width: int) -> str:
    return text + " " * max(0, width - columns(text))


def rjust(text: str, width: int) -> str:
    return " " * max(0, width - columns(text)) + text


def cut(text: str, width: int) -> str:
    """``text``'s beginning that fits in ``width`` columns."""
    while columns(text) > width:
        text = text[:-1]
    return text


def aligned(rows: Sequence[Sequence[str]], right: Container[int] = ()) -> list[str]:
    """``rows`` of cells as lines of columns two spaces apart, each as wide as its widest cell, the
    columns whose index is in ``right`` right-aligned; no trailing spaces."""
    widths = [max(columns(row[index]) for row in rows) for index in range(len(rows[0]))]
    return [
        "  ".join(rjust(cell, width) if index in right else ljust(cell, width)
                  for index, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip()
        for row in rows
    ]  # fmt: skip
