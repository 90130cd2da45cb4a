"""Pictures of data and results, drawn with Pillow: titled image grids and confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

LINE_HEIGHT = 15


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except TypeError:
        return ImageFont.load_default()


def titled_grid(
    images: torch.Tensor, titles: Sequence[str], columns: int = 8, cell: int = 112
) -> Image.Image:
    """uint8 images (N×C×H×W, C = 1 or 3) in a grid, each scaled to ``cell`` px with its title
    (one or more lines) above."""
    rows = max(1, -(-len(images) // columns))
    width = min(columns, len(images)) * cell
    title_height = LINE_HEIGHT * max((title.count("\n") + 1 for title in titles), default=1) + 4
    sheet = Image.new("RGB", (max(width, cell), rows * (cell + title_height)), "white")
    draw, font = ImageDraw.Draw(sheet), _font()
    for index, (image, title) in enumerate(zip(images, titles, strict=True)):
        pixels = image.cpu().numpy().transpose(1, 2, 0)
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels).convert("RGB")
        small = picture.width < cell // 2  # keep MNIST's pixels crisp, photos smooth
        picture = picture.resize((cell, cell), Image.NEAREST if small else Image.BILINEAR)
        left, top = (index % columns) * cell, (index // columns) * (cell + title_height)
        for line_number, line in enumerate(title.split("\n")):
            position = (left + cell // 2, top + 2 + LINE_HEIGHT * line_number + LINE_HEIGHT // 2)
            draw.text(position, line, fill="black", font=font, anchor="mm")
        sheet.paste(picture, (left, top + title_height))
    return sheet


def confusion_picture(matrix: np.ndarray, classes: Sequence[str], title: str) -> Image.Image:
    """A confusion matrix (rows: true class, columns: predicted) with counts, shaded by row share."""
    count = len(classes)
    cell, margin, top = 46, 96, 44
    sheet = Image.new("RGB", (margin + count * cell + 8, top + margin + count * cell), "white")
    draw, font = ImageDraw.Draw(sheet), _font(11)
    draw.text((8, 8), title, fill="black", font=_font(14))
    draw.text((margin + count * cell // 2, top - 10), "predicted", fill="black", font=font, anchor="mm")
    draw.text((8, top + margin - 14), "true", fill="black", font=font)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    for row in range(count):
        y = top + margin + row * cell
        draw.text((margin - 6, y + cell // 2), classes[row], fill="black", font=font, anchor="rm")
        for column in range(count):
            x = margin + column * cell
            shade = int(255 * (1 - shares[row, column]))
            fill = (shade, shade, 255) if row == column else (255, shade, shade)
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=fill, outline=(200, 200, 200))
            ink = "white" if shares[row, column] > 0.6 else "black"
            draw.text(
                (x + cell // 2, y + cell // 2),
                str(int(matrix[row, column])),
                fill=ink,
                font=font,
                anchor="mm",
            )
    for column, name in enumerate(classes):  # column labels, written upwards
        label = Image.new("RGB", (margin - 8, cell), "white")
        ImageDraw.Draw(label).text((4, cell // 2), name, fill="black", font=font, anchor="lm")
        sheet.paste(label.rotate(90, expand=True), (margin + column * cell, top))
    return sheet
