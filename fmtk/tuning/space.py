"""The search space of ``fmtk tune``: ``KEY=SPEC`` texts as Optuna distributions, checked against the
recipe up front, as ``--set`` checks a value, so a bad key or range fails before any trial runs.

``SPEC`` is ``loguniform:LOW:HIGH``, ``uniform:LOW:HIGH``, ``int:LOW:HIGH`` or ``choice:A,B,C``;
``KEY`` any recipe field or option ``--set`` takes. A choice keeps its values as text, parsed by the
key's type when a trial applies it, exactly as ``--set KEY=A`` would be.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fmtk.errors import FmtkError
from fmtk.recipe import Recipe, apply_overrides

KINDS = ("loguniform", "uniform", "int", "choice")


def parse_spec(key: str, spec: str) -> BaseDistribution:
    """One ``SPEC`` as an Optuna distribution; a malformed one is one line naming it."""
    given = f"--space {key}={spec}"
    kind, colon, rest = spec.strip().partition(":")
    if kind not in KINDS or not colon or not rest.strip():
        raise FmtkError(
            f"{given}: expected loguniform:LOW:HIGH, uniform:LOW:HIGH, int:LOW:HIGH or choice:A,B,..."
        )
    if kind == "choice":
        choices = [choice.strip() for choice in rest.split(",") if choice.strip()]
        if len(set(choices)) != len(choices):
            raise FmtkError(f"{given}: a choice is given twice")
        if len(choices) == 1:
            raise FmtkError(
                f"{given}: one choice searches nothing; give two or more, or --set {key}={choices[0]}"
            )
        return CategoricalDistribution(choices)
    bounds = rest.split(":")
    number = int if kind == "int" else float
    try:
        if len(bounds) != 2:
            raise ValueError
        low, high = number(bounds[0]), number(bounds[1])
    except ValueError:
        numbers = "whole numbers" if kind == "int" else "numbers"
        raise FmtkError(f"{given}: expected {kind}:LOW:HIGH with LOW and HIGH {numbers}") from None
    if not all(math.isfinite(bound) for bound in (low, high)):
        raise FmtkError(f"{given}: LOW and HIGH must be finite")
    if low >= high:
        raise FmtkError(f"{given}: LOW must be below HIGH")
    if kind == "int":
        return IntDistribution(low, high)
    if kind == "loguniform" and low <= 0:
        raise FmtkError(f"{given}: a log scale needs LOW > 0")
    return FloatDistribution(low, high, log=kind == "loguniform")


def spec_text(distribution: BaseDistribution) -> str:
    """The ``SPEC`` of a distribution (as :func:`parse_spec` reads it), for study.json and messages."""
    if isinstance(distribution, CategoricalDistribution):
        return "choice:" + ",".join(map(str, distribution.choices))
    if isinstance(distribution, IntDistribution):
        return f"int:{distribution.low}:{distribution.high}"
    kind = "loguniform" if distribution.log else "uniform"
    return f"{kind}:{distribution.low:g}:{distribution.high:g}"


def search_space(recipe: Recipe, specs: Mapping[str, str | Sequence[Any]]) -> dict[str, BaseDistribution]:
    """``{key: SPEC}`` (a list is a choice) as distributions, each key's extremes (its bounds, every
    choice) applied to ``recipe`` like ``--set`` so that a wrong key, type or range fails now."""
    if not specs:
        raise FmtkError("give at least one --space KEY=SPEC to search, e.g. --space lr=loguniform:1e-3:1")
    space = {}
    for key, spec in specs.items():
        if not isinstance(spec, str):
            spec = "choice:" + ",".join(map(str, spec))
        distribution = space[key] = parse_spec(key, spec)
        for value in extremes(distribution):
            try:
                apply_overrides(recipe, {key: value})
            except FmtkError as error:
                raise FmtkError(f"--space {key}={spec}: {error}") from None
    return space


def extremes(distribution: BaseDistribution) -> list[Any]:
    """The values of a distribution that bound what a trial can draw: both ends, or every choice."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def trial_values(space: Mapping[str, BaseDistribution], text: str) -> dict[str, Any]:
    """``--try KEY=VALUE,KEY=VALUE``: values of searched keys for a trial to run first, each inside
    its distribution (a choice by its text)."""
    values: dict[str, Any] = {}
    searched = ", ".join(space)
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise FmtkError(f"--try {text!r}: give KEY=VALUE pairs of the searched keys ({searched})")
    for item in items:
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or key not in space:
            raise FmtkError(f"--try {text}: expected KEY=VALUE pairs of the searched keys ({searched})")
        if key in values:
            raise FmtkError(f"--try {text}: {key} is given twice")
        distribution = space[key]
        outside = f"--try {text}: {key}={value} is outside --space {key}={spec_text(distribution)}"
        if isinstance(distribution, CategoricalDistribution):
            if value not in distribution.choices:
                raise FmtkError(outside)
            values[key] = value
            continue
        integer = isinstance(distribution, IntDistribution)
        try:
            number = int(value) if integer else float(value)
        except ValueError:
            kind = "an integer" if integer else "a number"
            raise FmtkError(
                f"--try {text}: {key}={value} is not {kind} (pairs are separated by commas)"
            ) from None
        if not distribution.low <= number <= distribution.high:
            raise FmtkError(outside)
        values[key] = number
    return values
