"""Pictures of data and results, drawn with Pillow: titled image grids and confusion matrices."""

from __future__ import annotations

import functools
import itertools
import math
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFont

from fmtk.errors import FmtkError

if TYPE_CHECKING:  # torch is imported where it is used: `fmtk runs --curves` needs none (2 s)
    import torch

LINE_HEIGHT = 15
HEADING_HEIGHT = 24  # the title line above a whole picture
TITLE_LINE = 18  # each further line of a title too long for one
CORRECT_BLUE = (0, 0, 255)
ERROR_RED = (200, 30, 30)
ERROR_INK = (150, 0, 0)
ZERO_INK = (175, 175, 175)
GRID_LINE = (200, 200, 200)


# Pillow's default font (Aileron) has ASCII only: a class named "chèvre" or "猫" would show boxes. Each
# character it lacks is drawn in the first of these fonts (found where Pillow looks: the system's and
# the user's font folders) that has it, else in the font fontconfig names for it (Linux), else as its
# unaccented letter (é → e), else as Aileron's box, said once on stderr.
FALLBACK_FONTS = (
    "DejaVuSans.ttf", "NotoSans-Regular.ttf", "LiberationSans-Regular.ttf",  # Linux
    "Arial Unicode.ttf", "Arial.ttf", "arial.ttf", "segoeui.ttf", "seguisym.ttf",  # macOS, Windows
    "NotoSansCJK-Regular.ttc", "msyh.ttc", "meiryo.ttc", "malgun.ttf", "PingFang.ttc",  # CJK
)  # fmt: skip
MISSING_GLYPHS = (
    "fmtk: no font on this machine has {characters} of {text!r}: drawn as boxes in pictures; installing "
    "a font that has them fixes it (DejaVu Sans; Noto Sans CJK for Chinese, Japanese, Korean)"
)


class Font:
    """Text of one size for pictures: Pillow's default font, with the characters it lacks in a
    fallback font (see :data:`FALLBACK_FONTS`). ``getlength`` and ``draw`` as Pillow's."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.base = _loaded(None, size)

    def runs(self, text: str) -> list[tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, str]]:
        """``text`` cut into pieces, each with the font that draws it."""
        pieces: list[tuple[str | None, str]] = []
        missing = []
        for character in unicodedata.normalize("NFC", text):
            if pieces and character.isspace():
                source, drawn = pieces[-1][0], character
            else:
                source, drawn, lacking = _glyph(character)
                missing += [character] if lacking else []
            if pieces and pieces[-1][0] == source:
                pieces[-1] = (source, pieces[-1][1] + drawn)
            else:
                pieces.append((source, drawn))
        if missing and not _said_missing:
            _said_missing.append(text)
            listed = ", ".join(f"{c} (U+{ord(c):04X})" for c in dict.fromkeys(missing))
            print(MISSING_GLYPHS.format(characters=listed, text=text), file=sys.stderr)
        return [(_loaded(source, self.size), piece) for source, piece in pieces]

    def getlength(self, text: str) -> float:
        return sum(font.getlength(piece) for font, piece in self.runs(text))

    def draw(
        self, draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: Any, anchor: str = "la"
    ) -> None:
        """``text`` at ``xy`` as ``draw.text`` puts it (anchors l/m/r with a/m/s/d); pieces in other
        fonts share the default font's baseline."""
        runs = self.runs(text)
        if len(runs) <= 1 or "\n" in text:  # one font (Pillow's own lines for several)
            font, piece = runs[0] if len(runs) == 1 else (self.base, text)
            draw.text(xy, piece, fill=fill, font=font, anchor=anchor)
            return
        length = sum(font.getlength(piece) for font, piece in runs)
        ascent, descent = self.base.getmetrics()
        x = xy[0] - {"l": 0, "m": length / 2, "r": length}[anchor[0]]
        baseline = xy[1] + {"a": ascent, "m": (ascent - descent) / 2, "s": 0, "d": -descent}[anchor[1]]
        for font, piece in runs:
            draw.text((x, baseline), piece, fill=fill, font=font, anchor="ls")
            x += font.getlength(piece)


@functools.cache
def _font(size: int = 12) -> Font:
    return Font(size)


@functools.cache
def _loaded(source: str | None, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The default font (``source`` None) or the font file ``source`` at ``size``."""
    if source is not None:
        return ImageFont.truetype(source, size)
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:
        return ImageFont.load_default()


@functools.cache
def _glyph(character: str) -> tuple[str | None, str, bool]:
    """The font that has ``character`` (None: the default one), what it draws for it, and whether
    no font has it (drawn as the default font's box)."""
    if character.isspace() or _has_glyph(None, character):
        return None, character, False
    if unicodedata.category(character) in ("Cc", "Cf"):  # control and format characters: invisible
        return None, "", False
    for source in (*_fallback_sources(), *_fontconfig_sources):
        if _has_glyph(source, character):
            return source, character, False
    source = _fontconfig_font(character)
    if source is not None and _has_glyph(source, character):
        _fontconfig_sources.append(source)  # tried first for the next character (one call a font)
        return source, character, False
    letters = "".join(c for c in unicodedata.normalize("NFKD", character) if not unicodedata.combining(c))
    if letters and letters != character and all(_has_glyph(None, letter) for letter in letters):
        return None, letters, False  # é → e: better than a box
    return None, character, True


_fontconfig_sources: list[str] = []  # the fonts fontconfig named so far


@functools.cache
def _fallback_sources() -> tuple[str, ...]:
    """The paths of the :data:`FALLBACK_FONTS` this machine has (Pillow looks them up by file name)."""
    found = []
    for name in FALLBACK_FONTS:
        try:
            found.append(str(ImageFont.truetype(name, 12).path))
        except OSError:
            continue
    return tuple(dict.fromkeys(found))


def _fontconfig_font(character: str) -> str | None:
    """The font file fontconfig chooses for ``character``, or None without fontconfig."""
    program = shutil.which("fc-match")
    if program is None:
        return None
    try:
        found = subprocess.run([program, "--format=%{file}", f":charset={ord(character):x}"],
                               capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return found.stdout.strip() or None


@functools.cache
def _has_glyph(source: str | None, character: str) -> bool:
    """Whether the font draws ``character`` as something other than its box for a missing glyph
    (Pillow does not say which characters a font has)."""
    try:
        font = _loaded(source, 24)
    except OSError:
        return False
    return _ink(font, character) not in (_ink(font, "\U0010fffd"), None)


def _ink(font: Any, text: str) -> tuple | None:
    """What ``font`` draws for ``text`` (its size, ink box, grey levels and ink per row and column);
    None when it draws nothing."""
    mask = font.getmask(text, mode="L")
    if mask.getbbox() is None:
        return None
    return mask.size, mask.getbbox(), tuple(mask.histogram()), mask.getprojection()


_said_missing: list[str] = []  # the text whose missing characters were said (once a process)


def _mix(colour: tuple[int, int, int], strength: float) -> tuple[int, int, int]:
    """``colour`` blended into white: 0 is white, 1 is ``colour``."""
    return tuple(round(255 - strength * (255 - channel)) for channel in colour)


def scale_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """``images`` of any range as uint8, the batch's lowest value → 0 and highest → 255.

    The rule of torchvision's ``make_grid(normalize=True)``, which cannot be used itself because it
    leaves no room for titles: 8×8 digits (0–16) become as bright as MNIST, and uint8 images that
    span 0–255 (MNIST, photos) stay as they are. A constant batch keeps its values (clamped).
    """
    import torch

    pixels = images.detach().float().cpu()
    low, high = (float(pixels.min()), float(pixels.max())) if pixels.numel() else (0.0, 0.0)
    if high > low:
        pixels = (pixels - low) * (255 / (high - low))
    return pixels.round().clamp(0, 255).to(torch.uint8)


def are_images(samples: torch.Tensor) -> bool:
    """Whether ``samples`` can be drawn as images: N×C×H×W with C = 1 or 3 (a recipe's data may be
    anything a model takes: a table's rows, N×13, are not)."""
    return samples.ndim == 4 and samples.shape[1] in (1, 3)


def titled_grid(
    images: torch.Tensor,
    titles: Sequence[str],
    columns: int = 8,
    cell: int = 112,
    title: str | None = None,
) -> Image.Image:
    """Images (N×C×H×W, C = 1 or 3, any value range: see :func:`scale_to_uint8`) in a grid, each
    scaled to ``cell`` px with its title (one or more lines) above, under a ``title`` line for the
    whole grid when given."""
    rows = max(1, -(-len(images) // columns))
    font, heading_font = _font(), _font(14)
    heading = HEADING_HEIGHT if title else 0
    width = max(min(columns, len(images)) * cell, cell)
    if title:
        width = max(width, int(heading_font.getlength(title)) + 16)
    fitted = [fit_lines(text, font, cell - 6) for text in titles]  # a long class name: no overlap
    title_height = LINE_HEIGHT * max((len(lines) for lines in fitted), default=1) + 4
    sheet = Image.new("RGB", (width, heading + rows * (cell + title_height)), "white")
    draw = ImageDraw.Draw(sheet)
    if title:
        heading_font.draw(draw, (8, HEADING_HEIGHT // 2), title, "black", "lm")
    for index, (image, lines) in enumerate(zip(scale_to_uint8(images), fitted, strict=True)):
        pixels = image.numpy().transpose(1, 2, 0)
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
        small = picture.width < cell // 2  # keep MNIST's pixels crisp, photos smooth
        picture = picture.resize((cell, cell), Image.NEAREST if small else Image.BILINEAR)
        left, top = (index % columns) * cell, heading + (index // columns) * (cell + title_height)
        for line_number, line in enumerate(lines):
            position = (left + cell // 2, top + 2 + LINE_HEIGHT * line_number + LINE_HEIGHT // 2)
            font.draw(draw, position, line, "black", "mm")
        sheet.paste(picture, (left, top + title_height))
    return sheet


def _title_lines(title: str, width: int) -> tuple[list[str], int]:
    """A picture's title wrapped to ``width`` px (a long one: its words on more lines), and the
    height its lines after the first add."""
    lines = fit_lines(title, _font(14), width)
    return lines, TITLE_LINE * (len(lines) - 1)


def _draw_title(draw: ImageDraw.ImageDraw, lines: list[str], left: int) -> None:
    """A picture's title (:func:`_title_lines`), one line under another from the top."""
    for number, line in enumerate(lines):
        _font(14).draw(draw, (left, 4 + TITLE_LINE * number), line, "black")


def fit_lines(text: str, font: Font, width: float) -> list[str]:
    """The lines of ``text``, each wrapped at its spaces to ``width`` px, and a word still wider than
    that shortened to fit with "…"."""
    lines = []
    for line in text.split("\n"):
        current = ""
        for word in line.split(" "):
            joined = f"{current} {word}" if current else word
            if current and font.getlength(joined) > width:
                lines.append(current)
                joined = word
            current = joined
        lines.append(current)
    return [_shortened(line, font, width) for line in lines]


def _shortened(line: str, font: Font, width: float) -> str:
    if font.getlength(line) <= width:
        return line
    while line and font.getlength(line + "…") > width:
        line = line[:-1]
    return line + "…"


def confusion_picture(matrix: np.ndarray, classes: Sequence[str], title: str) -> Image.Image:
    """A confusion matrix (rows: true class, columns: predicted) with counts and, at the right,
    each class's accuracy.

    Correct counts (the diagonal) are shaded blue by their share of the row. Errors are shaded red
    by their count relative to the largest error, never lighter than a clear pink, so that 3
    errors among 1,000 still show; cells without errors stay white.
    """
    font, heading_font = _font(11), _font(14)
    count = len(classes)
    totals = matrix.sum(axis=1)
    shares = matrix / np.maximum(totals[:, None], 1)
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    largest_error = max(int(errors.max()), 1)
    accuracies = [_share(int(matrix[i, i]), int(totals[i])) if totals[i] else "-" for i in range(count)]

    longest_label = max(font.getlength(name) for name in classes)
    cell = max(46, int(max(font.getlength(str(int(value))) for value in matrix.flat)) + 12)
    left = int(max(longest_label, font.getlength("true"))) + 14  # row labels
    band = int(max(longest_label, 12)) + 10  # column labels, written upwards, as tall as the longest
    top = HEADING_HEIGHT + LINE_HEIGHT  # the title, then "predicted"
    matrix_top, matrix_right = top + band, left + count * cell
    accuracy_width = int(font.getlength("100.0%")) + 24
    width = max(matrix_right + accuracy_width, int(heading_font.getlength(title)) + 16)
    sheet = Image.new("RGB", (width, matrix_top + count * cell + 8), "white")
    draw = ImageDraw.Draw(sheet)

    heading_font.draw(draw, (8, HEADING_HEIGHT // 2), title, "black", "lm")
    font.draw(draw, (left + count * cell // 2, top - 2), "predicted", "black", "md")
    font.draw(draw, (left - 6, matrix_top - 4), "true", "black", "rd")
    font.draw(draw, (matrix_right + accuracy_width // 2, matrix_top - 4), "acc", "black", "md")
    for column, name in enumerate(classes):
        label = Image.new("RGB", (band, cell), "white")
        font.draw(ImageDraw.Draw(label), (4, cell // 2), name, "black", "lm")
        sheet.paste(label.rotate(90, expand=True), (left + column * cell, top))
    for row in range(count):
        y = matrix_top + row * cell
        font.draw(draw, (left - 6, y + cell // 2), classes[row], "black", "rm")
        for column in range(count):
            x = left + column * cell
            value = int(matrix[row, column])
            if row == column:
                fill = _mix(CORRECT_BLUE, shares[row, column])
                ink = "white" if shares[row, column] > 0.6 else "black"
            elif value:
                strength = 0.3 + 0.7 * value / largest_error
                fill, ink = _mix(ERROR_RED, strength), "white" if strength > 0.65 else ERROR_INK
            else:
                fill, ink = "white", ZERO_INK
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=fill, outline=GRID_LINE)
            font.draw(draw, (x + cell // 2, y + cell // 2), str(value), ink, "mm")
        position = (matrix_right + accuracy_width // 2, y + cell // 2)
        font.draw(draw, position, accuracies[row], "black", "mm")
    return sheet


def curve_picture(
    xs: Sequence[float],
    ys: Sequence[float],
    mark: float | None,
    title: str,
    x_label: str,
    y_label: str,
    y_limit: float | None = None,
    mark_label: str | None = None,
    clipped_name: str | None = None,
) -> Image.Image:
    """A line of ``ys`` against ``xs`` on a log-10 x axis (as an LR finder's loss against the LR),
    with a vertical line at ``mark`` when given, labelled ``mark_label`` (default "suggested
    <mark>"), decade ticks and round y ticks; values above ``y_limit`` are drawn at the top edge in
    grey (a diverging tail would flatten the rest), said beside the y label as ``clipped_name``
    (default "above <y_limit>")."""
    width, height, left, right, top, bottom = 640, 400, 60, 20, HEADING_HEIGHT + 24, 40
    titled, extra = _title_lines(title, width - left - right)
    height, top = height + extra, top + extra
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    font = _font()
    _draw_title(draw, titled, left)
    font.draw(draw, (left, HEADING_HEIGHT + 4 + extra), y_label, "black")  # under the title
    logs = np.log10(np.asarray(xs, dtype=float))
    values = np.asarray(ys, dtype=float)
    above = values > y_limit if y_limit is not None else np.zeros(len(values), dtype=bool)
    if above.any():
        values = np.minimum(values, y_limit)
        note = f"grey: {clipped_name or f'above {y_limit:.3g}'}, drawn at the top"
        font.draw(draw, (width - right - font.getlength(note), HEADING_HEIGHT + 4 + extra), note, ZERO_INK)
    x_low, x_high = float(logs.min()), float(logs.max())
    y_low, y_high = float(values.min()), float(values.max())
    x_high, y_high = max(x_high, x_low + 1e-9), max(y_high, y_low + 1e-9)

    def at(log_x: float, y: float) -> tuple[float, float]:
        x = left + (log_x - x_low) / (x_high - x_low) * (width - left - right)
        return x, top + (y_high - y) / (y_high - y_low) * (height - top - bottom)

    draw.rectangle([left, top, width - right, height - bottom], outline=GRID_LINE)
    first, last = int(np.ceil(x_low)), int(np.floor(x_high))
    every = max(1, math.ceil((last - first + 1) / 10))  # at most 10 labels: 31 decades ran together
    for decade in range(first - first % every + (every if first % every else 0), last + 1, every):
        x, _ = at(decade, y_low)
        draw.line([(x, top), (x, height - bottom)], fill=GRID_LINE)
        font.draw(draw, (x - 12, height - bottom + 4), f"1e{decade}", "black")
    for tick, label in round_ticks(y_low, y_high, count=4):
        _, y = at(x_low, tick)
        draw.line([(left, y), (width - right, y)], fill=GRID_LINE)
        font.draw(draw, (left - 6 - font.getlength(label), y - 6), label, "black")
    points = [at(x, y) for x, y in zip(logs, values, strict=True)]
    # Each stretch in one colour: a segment to or from a value above the limit is grey.
    grey = [bool(above[index] or above[index + 1]) for index in range(len(points) - 1)]
    start = 0
    for end in range(1, len(grey) + 1):
        if end == len(grey) or grey[end] != grey[start]:
            draw.line(points[start : end + 1], fill=ZERO_INK if grey[start] else CORRECT_BLUE, width=2)
            start = end
    if mark is not None:
        x, _ = at(float(np.log10(mark)), y_low)
        draw.line([(x, top), (x, height - bottom)], fill=ERROR_RED, width=2)
        label = mark_label if mark_label is not None else f"suggested {mark:.2g}"
        shift = 4 if x + 8 + font.getlength(label) < width - right else -4 - font.getlength(label)
        font.draw(draw, (x + shift, top + 4), label, ERROR_RED)
    font.draw(draw, (width // 2 - 20, height - 18), x_label, "black")
    return picture


X_MARGIN = 0.04  # of a line picture's x axis, each side: its end points inside the frame

# matplotlib's tab10, with black for its grey (fmtk's grey marks values beyond the axis)
LINE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207),
                (140, 86, 75), (227, 119, 194), (188, 189, 34), (0, 0, 0)]  # fmt: skip


def lines_picture(
    lines: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    x_label: str,
    y_label: str,
    reference: tuple[float, str] | None = None,
    dots: Collection[str] = (),
    lines_only: Collection[str] = (),
    legend_at_top: bool = False,
    y_limits: tuple[float, float] | None = None,
    clipped_name: str = "outside the axis (at its edge)",
    colours: dict[str, tuple[int, int, int]] | None = None,
    x_end: float | None = None,
    legend: bool = True,
    x_start: float = 0.0,
) -> Image.Image:
    """Named lines ``{name: (xs, ys)}`` on linear axes, a dot at each point (a y that is not finite,
    a diverged loss, is a gap in its line), a legend, and a grey horizontal line at ``reference``
    ``(y, label)`` when given (e.g. accuracy against time); the names in ``dots`` are drawn as dots
    only, unjoined, over the lines; those in ``lines_only`` without a dot at each point. The legend
    sits in the first corner of the plot where it hides no line, point or label: bottom right (where
    rising curves leave room), top right, bottom left, top left, the top ones first with
    ``legend_at_top`` (falling curves); under the plot when every corner is taken. Values outside
    ``y_limits`` (low, high) are drawn at its edge as hollow triangles pointing out, named
    ``clipped_name`` in the legend, so that one outlier does not flatten the rest. A line's colour is
    its place's among :data:`LINE_COLOURS`, or its name's in ``colours``. The x axis runs from
    ``x_start`` (0; epochs: 1) to the largest x, or to ``x_end`` when given, with a margin of 4% on
    each side (as matplotlib's): a point at either end is drawn whole, inside the frame.
    ``legend=False``: none (another panel has it)."""
    width, height, left, right, top, bottom = 720, 440, 60, 20, HEADING_HEIGHT + 24, 40
    titled, extra = _title_lines(title, width - left - right)
    height, top = height + extra, top + extra
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    font = _font()
    _draw_title(draw, titled, left)
    font.draw(draw, (left, HEADING_HEIGHT + 4 + extra), y_label, "black")  # under the title
    xs = [float(x) for line_xs, _ in lines.values() for x in line_xs] or [0.0]
    outside = {name: [_side(float(y), y_limits) for y in line_ys] for name, (_, line_ys) in lines.items()}
    if y_limits is not None:
        lines = {name: (line_xs, [min(max(float(y), y_limits[0]), y_limits[1]) if math.isfinite(y) else y
                                  for y in line_ys])
                 for name, (line_xs, line_ys) in lines.items()}  # fmt: skip
    ys = [float(y) for _, line_ys in lines.values() for y in line_ys if math.isfinite(y)] or [0.0]
    if reference is not None:
        ys.append(reference[0])
    x_start = float(x_start)
    end = max(float(max(xs) if x_end is None else x_end), x_start)
    span = end - x_start
    # one x (one epoch): in the middle
    x_low, x_high = (
        (x_start - X_MARGIN * span, end + X_MARGIN * span) if span > 1e-6 else (x_start - 0.5, x_start + 0.5)
    )
    margin = 0.05 * (max(ys) - min(ys) or abs(max(ys)) or 1.0)  # a flat line: about its value
    y_low, y_high = min(ys) - margin, max(ys) + margin

    at = _plot_mapping((left, top, width - right, height - bottom), (x_low, x_high), (y_low, y_high))
    draw.rectangle([left, top, width - right, height - bottom], outline=GRID_LINE)
    whole = all(float(x).is_integer() for x in xs)  # e.g. trial numbers: no tick between two
    _draw_x_ticks(draw, at, (x_start, end), (top, height - bottom), whole, font)
    for tick, label in round_ticks(y_low, y_high):
        _, y = at(x_low, tick)
        draw.line([(left, y), (width - right, y)], fill=GRID_LINE)
        font.draw(draw, (4, y - 6), label, "black")
    names = list(lines)
    sides = [side for line_sides in outside.values() for side in line_sides if side]
    if sides:
        names.append(clipped_name)
    painted = {name: LINE_COLOURS[index % len(LINE_COLOURS)] for index, name in enumerate(names)}
    painted.update(colours or {})
    empty = picture.copy()  # the axes alone: what the lines and points add is where the legend must not go
    if reference is not None:
        _draw_reference(draw, at(x_low, reference[0])[1], reference[1], (left, width - right), font)
    on_top = sorted(lines, key=lambda name: name in dots)  # dots over lines: a trial over the best so far
    for name in on_top:
        (line_xs, line_ys), colour = lines[name], painted[name]
        points = [
            at(float(x), float(y)) if math.isfinite(y) else None
            for x, y in zip(line_xs, line_ys, strict=True)
        ]
        for finite, stretch in itertools.groupby(points, key=lambda point: point is not None):
            joined = list(stretch)
            if finite and len(joined) > 1 and name not in dots:  # a value that is not finite: a gap
                draw.line(joined, fill=colour, width=2)
        for point, side in zip(points, outside[name], strict=True):
            if point is not None and name not in lines_only:
                _draw_point(draw, *point, colour, side)
    font.draw(draw, (width // 2 - 40, height - 18), x_label, "black")
    if not legend:
        return picture
    key = {"names": names, "font": font, "dots": dots, "colours": painted,
              "clipped": (clipped_name, sides[0]) if sides else None}  # fmt: skip
    corner = _free_corner(ImageChops.difference(picture, empty), _legend_size(draw, names, font),
                          (left, top, width - right, height - bottom), legend_at_top)  # fmt: skip
    if corner is not None:
        _draw_legend(draw, right=corner[0], bottom=corner[1], **key)
        return picture
    # Every corner of the plot would hide a line or a point: the legend goes under the picture (which
    # widens to the right for a legend wider than it).
    across, below = _legend_size(draw, names, font)
    extended = Image.new("RGB", (max(width, left + across + 8), height + below + 8), "white")
    extended.paste(picture, (0, 0))
    legend_right = max(width - right - 8, left + across)
    _draw_legend(ImageDraw.Draw(extended), right=legend_right, bottom=height + below + 2, **key)
    return extended


def _legend_size(draw: ImageDraw.ImageDraw, names: Sequence[str], font: Font) -> tuple[int, int]:
    """The width and height of :func:`_draw_legend`'s box for ``names``."""
    longest = max((font.getlength(name) for name in names), default=0)
    return math.ceil(46 + longest), 6 + len(names) * (LINE_HEIGHT + 2)


def _free_corner(
    drawn: Image.Image, size: tuple[int, int], plot: tuple[int, int, int, int], top_first: bool
) -> tuple[int, int] | None:
    """The (right, bottom) of the first corner of the ``plot`` box (left, top, right, bottom) where a
    box of ``size`` covers nothing ``drawn`` (non-black pixels): bottom right, top right, bottom left,
    top left (the top ones first with ``top_first``); None if none is free or the box is larger than
    the plot."""
    (width, height), (left, top, right, bottom) = size, plot
    rights, bottoms = (right - 8, left + 8 + width), (bottom - 6, top + 6 + height)
    if top_first:
        bottoms = bottoms[::-1]
    if width + 16 > right - left or height + 12 > bottom - top:  # larger than the plot
        return None
    for corner in [(x, y) for x in rights for y in bottoms]:
        box = (corner[0] - width - 2, corner[1] - height - 2, corner[0] + 3, corner[1] + 3)  # and a margin
        if drawn.crop(box).getbbox() is None:
            return corner
    return None


def round_ticks(low: float, high: float, count: int = 5) -> list[tuple[float, str]]:
    """At least ``count - 1`` ticks between ``low`` and ``high`` at round values (multiples of 1, 2,
    2.5 or 5 times a power of ten, as plotting libraries place them: the largest such step that
    gives that many), each with its label: as many decimals as the step needs, or where that takes 8
    characters or more the fewest significant digits that tell them apart (``2e+12``). A span too
    small for a float to tell ticks apart gets one tick; one that is not finite, none."""
    span = high - low
    if not (math.isfinite(low) and math.isfinite(high) and math.isfinite(span)):
        return []
    if not span > 1e-9 * max(abs(low), abs(high)):
        return [(low, f"{low:.4g}")]
    power = 10.0 ** math.floor(math.log10(span))
    steps = [multiple * power * shift for shift in (1, 0.1, 0.01) for multiple in (5, 2.5, 2, 1)]
    for step in steps:
        first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
        if last - first + 1 >= count - 1:
            break
    exponent = math.floor(math.log10(step) + 1e-9)
    two_and_a_half = round(step / 10.0**exponent, 6) == 2.5
    decimals = max(0, -exponent + (1 if two_and_a_half else 0))

    ticks = [index * step for index in range(first, last + 1)]
    fixed = [f"{tick:.{decimals}f}" for tick in ticks]
    if max(map(len, fixed)) < 8:
        return list(zip(ticks, fixed, strict=True))
    for digits in range(4, 18):  # the fewest significant digits that tell the ticks apart
        short = [f"{tick:.{digits}g}" for tick in ticks]
        if len(set(short)) == len(short):
            return list(zip(ticks, min(short, fixed, key=lambda labels: max(map(len, labels))), strict=True))
    return list(zip(ticks, fixed, strict=True))


def _share(part: int, whole: int) -> str:
    """``part`` of ``whole`` as a percentage with one decimal, rounded as ``fmtk evaluate``'s two are
    (11 of 12: 91.7%), but never 100.0% with an error nor 0.0% with a hit (99.97%: 99.9%)."""
    text = f"{100 * part / whole:.1f}"
    if text == "100.0" and part < whole:
        text = "99.9"
    elif text == "0.0" and part > 0:
        text = "0.1"
    return f"{text}%"


def _log_ticks(low: float, high: float) -> list[float]:
    """Ticks of a log axis from ``low`` to ``high`` (both > 0): the powers of ten between them, or
    where fewer than two, their multiples of 1, 2 and 5 (at most five: 1, 5, 10, 50…)."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for multiples in ((1,), (1, 5), (1, 2, 5)):
        ticks = [m * 10.0**k for k in decades for m in multiples if low <= m * 10.0**k <= high]
        if len(ticks) >= 2:
            return ticks[:: math.ceil(len(ticks) / 5)]
    return [low, high]


def _side(value: float, limits: tuple[float, float] | None) -> int:
    """-1 below ``limits``, 1 above, 0 within (or no limits, or not finite)."""
    if limits is None or not math.isfinite(value):
        return 0
    return -1 if value < limits[0] else 1 if value > limits[1] else 0


def _draw_point(
    draw: ImageDraw.ImageDraw, x: float, y: float, colour: tuple[int, int, int], side: int
) -> None:
    """A dot; or, for a value beyond the axis (``side`` -1 below, 1 above), a hollow triangle
    pointing that way."""
    if side == 0:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    else:
        base, tip = y + 4 * side, y - 5 * side  # screen y grows downwards
        draw.polygon([(x - 5, base), (x + 5, base), (x, tip)], outline=colour, width=2)


def scatter_picture(
    points: Sequence[tuple[float | str, float, int]],
    title: str,
    x_label: str,
    log_x: bool = False,
    y_limits: tuple[float, float] | None = None,
    ring: int | None = None,
) -> Image.Image:
    """A small panel of points ``(x, y, colour index into LINE_COLOURS)``: numbers on a linear or
    log-10 (``log_x``) x axis, or text as evenly spaced categories; y beyond ``y_limits`` drawn at
    its edge as hollow triangles pointing out; the point at index ``ring`` circled (the best)."""
    width, height, left, right, top, bottom = 360, 250, 56, 16, HEADING_HEIGHT + 4, 36
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    font = _font()
    font.draw(draw, (left, 4), title, "black")
    categories = sorted({x for x, _, _ in points if isinstance(x, str)}, key=_natural)
    if categories:
        position = {name: index for index, name in enumerate(categories)}
        xs = [float(position[str(x)]) for x, _, _ in points]
        x_low, x_high = -0.5, len(categories) - 0.5
    else:
        xs = [math.log10(float(x)) if log_x else float(x) for x, _, _ in points]
        spread = (max(xs) - min(xs)) or 1.0
        x_low, x_high = min(xs) - 0.05 * spread, max(xs) + 0.05 * spread
    sides = [_side(y, y_limits) for _, y, _ in points]
    ys = [min(max(y, y_limits[0]), y_limits[1]) if y_limits else y for _, y, _ in points]
    margin = 0.05 * ((max(ys) - min(ys)) or 1.0)
    y_low, y_high = min(ys) - margin, max(ys) + margin

    at = _plot_mapping((left, top, width - right, height - bottom), (x_low, x_high), (y_low, y_high))
    draw.rectangle([left, top, width - right, height - bottom], outline=GRID_LINE)
    for tick, label in round_ticks(y_low, y_high, count=3):
        _, y = at(x_low, tick)
        draw.line([(left, y), (width - right, y)], fill=GRID_LINE)
        font.draw(draw, (4, y - 6), label, "black")
    if categories:
        ticks = [(float(index), name) for index, name in enumerate(categories)]
    elif log_x:
        ticks = [(math.log10(value), f"{value:.3g}") for value in _log_ticks(10**x_low, 10**x_high)]
    else:
        ticks = round_ticks(x_low, x_high, count=4)
    for tick, label in ticks:
        x, _ = at(tick, y_low)
        draw.line([(x, top), (x, height - bottom)], fill=GRID_LINE)
        font.draw(draw, (x, height - bottom + 10), label, "black", "mm")
    for index, (x, y, side, (_, _, colour)) in enumerate(zip(xs, ys, sides, points, strict=True)):
        px, py = at(x, y)
        _draw_point(draw, px, py, LINE_COLOURS[colour % len(LINE_COLOURS)], side)
        if index == ring:
            draw.ellipse([px - 7, py - 7, px + 7, py + 7], outline="black", width=2)
    x_title = x_label + (" (log)" if log_x else "")
    font.draw(draw, ((left + width - right) // 2, height - 8), x_title, "black", "mm")
    return picture


def curves_picture(history: Sequence[dict[str, float]], best_epoch: int | None, title: str) -> Image.Image:
    """A run's learning curves from its epoch rows (metrics.csv's): train and valid loss above, valid
    accuracy below, against the epoch, the best checkpoint's epoch marked on both. A value that is
    not finite (a loss that diverged) leaves a gap in its line; both axes run to the last epoch."""
    epochs = [row["epoch"] for row in history]
    best = [row for row in history if row["epoch"] == best_epoch]
    marked = f"best checkpoint (epoch {best_epoch})"
    train, valid, mark = LINE_COLOURS[0], LINE_COLOURS[1], LINE_COLOURS[2]
    colours = {"train loss": train, "valid loss": valid, "valid accuracy": valid, marked: mark}
    loss = lines_picture(
        {
            "train loss": (epochs, [row["train_loss"] for row in history]),
            "valid loss": (epochs, [row["valid_loss"] for row in history]),
            marked: ([row["epoch"] for row in best], [row["valid_loss"] for row in best]),
        },
        title, "epoch", "loss (train: the epoch's mean, as it trained; valid: after it)",
        dots=(marked,), legend_at_top=True, colours=colours, x_end=max(epochs, default=None), x_start=1,
    )  # fmt: skip
    accuracy = lines_picture(
        {
            "valid accuracy": (epochs, [100 * row["valid_accuracy"] for row in history]),
            marked: ([row["epoch"] for row in best], [100 * row["valid_accuracy"] for row in best]),
        },
        "", "epoch", "valid accuracy (%)", dots=(marked,), colours=colours, x_end=max(epochs, default=None),
        x_start=1,
    )  # fmt: skip
    return sheet_of(loss, [accuracy], columns=1)


def runs_curves_picture(histories: dict[str, Sequence[dict[str, float]]], title: str) -> Image.Image:
    """Several runs' learning curves, one colour per run (``{name: its metrics.csv rows}``, at most
    len(:data:`LINE_COLOURS`)): valid loss above, valid accuracy below, against the epoch; values
    that are not finite leave gaps, losses above 10 times the lowest of the runs' highest losses are
    drawn at the edge."""
    if len(histories) > len(LINE_COLOURS):
        raise ValueError(f"at most {len(LINE_COLOURS)} runs in one picture, got {len(histories)}")

    def lines(key: str, scale: float) -> dict[str, tuple[list[float], list[float]]]:
        return {name: ([row["epoch"] for row in rows], [scale * row[key] for row in rows])
                for name, rows in histories.items()}  # fmt: skip

    last = max((row["epoch"] for rows in histories.values() for row in rows), default=None)
    losses = lines("valid_loss", 1.0)
    # One diverged run would flatten the others: losses above 10 times the lowest of the runs' highest
    # losses (a run that converged keeps all of its own) are drawn at the edge.
    finite = {name: [y for y in ys if math.isfinite(y)] for name, (_, ys) in losses.items()}
    highest = [max(ys) for ys in finite.values() if ys]
    values = [y for ys in finite.values() for y in ys]
    limits = None
    if highest and min(highest) > 0 and max(highest) > 10 * min(highest):
        limits = (min(values), 10 * min(highest))
    clipped = "above 10 times the lowest run's peak (at the edge)"
    loss = lines_picture(losses, title, "epoch", "valid loss", legend_at_top=True, x_end=last,
                         y_limits=limits, clipped_name=clipped, x_start=1)  # fmt: skip
    accuracy = lines_picture(lines("valid_accuracy", 100), "", "epoch", "valid accuracy (%)", x_end=last,
                             legend=False, x_start=1)  # fmt: skip
    return sheet_of(loss, [accuracy], columns=1)


def save_new_picture(picture: Image.Image, path: Path, option: str = "--out") -> None:
    """``picture`` as a new PNG file at ``path``: an existing file is never overwritten, and a picture
    that could not be written whole (a full disk) is removed; each is one line (the first names the
    ``option`` that chose the file); so is a name that does not end in .png."""
    if path.suffix.lower() != ".png":
        raise FmtkError(f"{option} {path}: a picture is a PNG file; give a name ending in .png")
    created = False
    try:
        with path.open("xb") as file:
            created = True
            picture.save(file, format="PNG")
    except FileExistsError:
        raise FmtkError(f"{path} exists; choose another {option} (nothing was overwritten)") from None
    except OSError as error:
        if created:
            path.unlink(missing_ok=True)
        raise FmtkError(f"{path}: cannot write the picture ({error.strerror})") from None


def _natural(text: str) -> tuple[int, float, str]:
    """Categories in their natural order: numbers by value (32 before 128), then text."""
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def sheet_of(first: Image.Image, panels: Sequence[Image.Image], columns: int = 2) -> Image.Image:
    """``first`` above the ``panels``, ``columns`` of them in a row, on white."""
    if not panels:
        return first
    cell_width, cell_height = max(p.width for p in panels), max(p.height for p in panels)
    rows = -(-len(panels) // columns)
    width = max(first.width, columns * cell_width)
    sheet = Image.new("RGB", (width, first.height + rows * cell_height), "white")
    sheet.paste(first, (0, 0))
    for index, panel in enumerate(panels):
        sheet.paste(panel, ((index % columns) * cell_width, first.height + (index // columns) * cell_height))
    return sheet


def _plot_mapping(
    box: tuple[float, float, float, float], x_range: tuple[float, float], y_range: tuple[float, float]
) -> Callable[[float, float], tuple[float, float]]:
    """Data coordinates → pixels of the plot ``box`` (left, top, right, bottom), y growing upwards."""
    left, top, right, bottom = box
    (x_low, x_high), (y_low, y_high) = x_range, y_range

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x_low) / (x_high - x_low) * (right - left),
            top + (y_high - y) / (y_high - y_low) * (bottom - top),
        )

    return at


def _draw_x_ticks(
    draw: ImageDraw.ImageDraw,
    at: Callable[[float, float], tuple[float, float]],
    x_range: tuple[float, float],
    y_span: tuple[int, int],
    whole: bool,
    font: Font,
) -> None:
    """Vertical grid lines across ``y_span`` (top, bottom) at round values of ``x_range``
    (:func:`round_ticks`; whole numbers only when ``whole``: epochs, trials), labelled under them."""
    top, bottom = y_span
    ticks = round_ticks(*x_range)
    if whole and any(not tick.is_integer() for tick, _ in ticks):  # a step below 1
        whole_numbers = range(math.ceil(x_range[0]), math.floor(x_range[1]) + 1)
        ticks = [(float(tick), str(tick)) for tick in whole_numbers]
    for tick, label in ticks:
        x, _ = at(tick, 0.0)
        draw.line([(x, top), (x, bottom)], fill=GRID_LINE)
        font.draw(draw, (x, bottom + 4), label, "black", "ma")


def _draw_reference(
    draw: ImageDraw.ImageDraw, y: float, label: str, x_span: tuple[int, int], font: Font
) -> None:
    """A dashed grey horizontal line at height ``y`` across ``x_span``, ``label`` above its right end."""
    left, right = x_span
    for start in range(left, right, 12):
        draw.line([(start, y), (min(start + 6, right), y)], fill=ZERO_INK, width=2)
    font.draw(draw, (right - 4 - font.getlength(label), y - 15), label, "black")


def _draw_legend(
    draw: ImageDraw.ImageDraw,
    names: Sequence[str],
    right: float,
    bottom: float,
    font: Font,
    dots: Collection[str] = (),
    clipped: tuple[str, int] | None = None,
    colours: dict[str, tuple[int, int, int]] | None = None,
) -> None:
    """The lines' names and colours in a box on white whose bottom right corner is (right, bottom)
    (:func:`_legend_size` big); ``clipped`` ``(name, side)``: that name with a grey hollow triangle
    pointing to the side (-1 down, 1 up)."""
    legend_left = right - 46 - max((font.getlength(name) for name in names), default=0)
    legend_y = bottom - 2 - len(names) * (LINE_HEIGHT + 2)
    draw.rectangle([legend_left, legend_y - 4, right, bottom], fill="white", outline=GRID_LINE)
    for index, name in enumerate(names):
        colour = (colours or {}).get(name, LINE_COLOURS[index % len(LINE_COLOURS)])
        if clipped is not None and name == clipped[0]:
            _draw_point(draw, legend_left + 16, legend_y + 7, ZERO_INK, clipped[1])
        elif name in dots:
            draw.ellipse([legend_left + 13, legend_y + 4, legend_left + 19, legend_y + 10], fill=colour)
        else:
            draw.line(
                [(legend_left + 6, legend_y + 7), (legend_left + 26, legend_y + 7)], fill=colour, width=3
            )
        font.draw(draw, (legend_left + 32, legend_y), name, "black")
        legend_y += LINE_HEIGHT + 2
