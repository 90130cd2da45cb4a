"""What a recipe's regression test is: a short run (epochs, ``--set`` values, a preset, the data
folder) and the figures it must reach, e.g. ``{"test_accuracy": ">= 0.97"}``."""

from __future__ import annotations

import operator
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fmtk.errors import FmtkError, user_code_place

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq,
}  # fmt: skip
EXPECTATION = re.compile(r"\s*(>=|<=|==|>|<)\s*([-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*")

# The figures a check can expect, from the run's metrics.json and metrics.csv; <m>: accuracy, loss
# or one of the recipe's own metrics.
FIGURES = {
    "test_<m>": "the best checkpoint's test figure",
    "last_test_<m>": "the last checkpoint's test figure",
    "valid_<m>": "the valid figure of the best checkpoint's epoch",
    "best_valid_accuracy": "the highest valid accuracy of any epoch",
    "epochs_run": "the epochs trained (fewer than asked: stopped early)",
    "train_seconds": "the training loop's wall time",
}


@dataclass(frozen=True)
class Expectation:
    """``figure comparator value``, e.g. ``test_accuracy >= 0.97``."""

    figure: str
    comparator: str
    value: float

    @classmethod
    def parse(cls, figure: str, text: str) -> Expectation:
        match = EXPECTATION.fullmatch(str(text))
        if match is None:
            raise FmtkError(
                f"expect {figure}: '{text}' is not a comparison; write one of {', '.join(COMPARATORS)} and a "
                "number, e.g. '>= 0.95'"
            )
        return cls(figure, match.group(1), float(match.group(2)))

    def holds(self, got: float | None) -> bool:
        return got is not None and COMPARATORS[self.comparator](got, self.value)

    def __str__(self) -> str:
        return f"{self.comparator} {self.value:g}"


@dataclass(frozen=True)
class Check:
    """A recipe's regression test: the short run CI can afford and what it must reach.

    Args:
        expect: ``{figure: "comparator value"}``, e.g. ``{"test_accuracy": ">= 0.97"}``; the
            figures are those of :data:`FIGURES`.
        epochs: the epochs to train (None: the recipe's, or its preset's).
        settings: values set on the recipe as with ``--set`` (e.g. ``{"image_size": 32}``).
        preset: one of the recipe's presets, applied before ``settings``.
        data: a folder under the data root to train on (the ``images`` recipe's photos), else the
            data root itself.
        name: how the table names this check (default: the preset's name, else ``default``).

    Example::

        Check(epochs=2, expect={"test_accuracy": ">= 0.95", "valid_loss": "<= 0.2"},
              settings={"image_size": 32})
    """

    expect: Mapping[str, str]
    epochs: int | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)
    preset: str | None = None
    data: str | None = None
    name: str | None = None
    # Where the check was written (``my_recipe.py:40``) for the errors found once its recipe is known.
    written_at: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "written_at", user_code_place(traceback.extract_stack()))
        for name, form in (("expect", "{figure: '>= value'}"), ("settings", "{key: value}")):
            if not isinstance(getattr(self, name), Mapping):
                raise FmtkError(f"a check's {name} is a mapping, {form}, got {getattr(self, name)!r}")
        if not self.expect:
            raise FmtkError("a check expects nothing: give expect={figure: '>= value'}")
        for expectation in self.expectations():  # a bad comparison is one line when the recipe loads
            if expectation.figure.endswith("accuracy") and not 0 <= expectation.value <= 1:
                raise FmtkError(
                    f"expect {expectation.figure}: '{self.expect[expectation.figure]}': an accuracy is a "
                    f"fraction from 0 to 1 (0.9 for 90%)"
                )
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise FmtkError(f"a check's epochs must be a whole number >= 1, got {self.epochs!r}")

    @property
    def label(self) -> str:
        return self.name or self.preset or "default"

    def expectations(self) -> list[Expectation]:
        return [Expectation.parse(figure, text) for figure, text in self.expect.items()]

    def overrides(self) -> dict[str, Any]:
        """The ``--set`` values of the check's run, its epochs included."""
        return {**self.settings, **({"epochs": self.epochs} if self.epochs is not None else {})}


def recipe_checks(
    given: Check | tuple[Check, ...] | list[Check] | None, recipe_name: str
) -> tuple[Check, ...]:
    """A recipe's ``check`` field as a tuple of checks (one, several, or none)."""
    checks = () if given is None else (given,) if isinstance(given, Check) else tuple(given)
    if not all(isinstance(check, Check) for check in checks):
        raise FmtkError(f"recipe {recipe_name}: check must be a fmtk.Check or a list of them")
    labels = [check.label for check in checks]
    if len(set(labels)) < len(labels):
        raise FmtkError(
            f"recipe {recipe_name}: two checks named alike ({', '.join(labels)}); give each a name"
        )
    return checks
