"""Predictions for images: files, the image files of folders, or images already open, answered in
chunks, every readable one answered and each unreadable one named with why (``fmtk predict``, of a
run's checkpoint or of an exported model file)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from fmtk.data.image_input import ImageInput, Source, image_files, read_pixels, source_name
from fmtk.data.images import UNLISTED_SHOWN, BadImages


def answer_images(
    sources: Sequence[Source],
    image_input: ImageInput,
    probabilities_of: Callable[[torch.Tensor], torch.Tensor],
    classes: Sequence[str],
    top: int,
) -> Iterator[dict[str, Any]]:
    """Per image of ``sources`` (folders: their image files), in order, ``{"file", "predictions"}``:
    its ``top`` most probable classes by ``probabilities_of`` a float CPU batch; or ``{"file",
    "error"}`` when it cannot be read. Each chunk of images (:func:`read_pixels`, in as many threads
    as torch's) is answered as soon as it is read, while the next is read."""
    sources = image_files(sources)
    for good, pixels, bad in read_pixels(sources, image_input, threads=torch.get_num_threads()):
        answers = {index: {"file": source_name(sources[index], index), "error": why} for index, why in bad}
        if good:
            probabilities = probabilities_of(image_input.normalise(pixels))
            for index, predictions in zip(good, top_classes(probabilities, classes, top), strict=True):
                answers[index] = {"file": source_name(sources[index], index), "predictions": predictions}
        del pixels  # before the chunk after the next is read
        yield from (answers[index] for index in sorted(answers))


def top_classes(probabilities: torch.Tensor, classes: Sequence[str], top: int) -> list[list[dict[str, Any]]]:
    """Per row of ``probabilities``, its ``top`` most probable classes with their probabilities."""
    values, indices = probabilities.topk(min(top, len(classes)), dim=1)
    return [
        [{"class": classes[index], "probability": float(p)} for p, index in zip(v, ix, strict=True)]
        for v, ix in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def unreadable(results: Sequence[dict[str, Any]]) -> BadImages | None:
    """The one-line error naming the images of ``results`` that could not be read (None: all were)."""
    bad = [(result["file"], result["error"]) for result in results if "error" in result]
    if not bad:
        return None  # (below: every one named, up to 50, as nothing else names them; --json: each answer)
    return BadImages(bad, len(results), verb="read", shown=UNLISTED_SHOWN, others_in=" (--json names each)")
