"""Typed values from the command line: ``--set key=value`` text parsed by the type of what it sets
(int, float, bool, str, X | None, keyword arguments, lists), and values from Python checked by it."""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from fmtk.errors import FmtkError


def parse_value(key: str, value: Any, kind: Any) -> Any:
    """One value for a field of type ``kind`` (int, float, bool, str, or X | None): a string is
    parsed, anything else must already have the type (an int does for a float)."""
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    if typing.get_origin(kind) is dict:
        return parse_arguments(key, value)
    if not isinstance(value, str):
        return typed(key, value, kind)
    text = value
    if type(None) in allowed and text.strip().lower() in ("none", "null"):
        return None
    target = next(t for t in allowed if t is not type(None))
    try:
        if target is bool:
            return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}[
                text.strip().lower()
            ]
        return target(text)
    except (KeyError, ValueError):
        raise FmtkError(f"--set {key}={text}: expected {_names(allowed)}") from None


def parse_arguments(key: str, value: Any) -> dict[str, Any]:
    """Keyword arguments: a dict, or ``name:value`` pairs separated by commas, each value a bool
    (true/false), a number, a tuple of them separated by ``/`` (``betas:0.9/0.99``) or text."""
    if isinstance(value, Mapping):
        return dict(value)
    if not isinstance(value, str):
        raise FmtkError(f"{key}={value!r}: expected a dict of keyword arguments")
    arguments = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, colon, text = item.partition(":")
        if not colon or not name.strip().isidentifier():
            raise FmtkError(
                f"--set {key}={value}: expected name:value pairs, e.g. momentum:0.9,nesterov:true"
            )
        arguments[name.strip()] = argument_value(text.strip())
    return arguments


def argument_value(text: str) -> Any:
    """One keyword argument's value from text: a bool, a number, a ``/``-separated tuple, or text."""
    if "/" in text:
        return tuple(argument_value(part.strip()) for part in text.split("/"))
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_option(key: str, value: Any, default: Any) -> Any:
    """A recipe option's new value, typed like its default: a list or tuple default takes
    comma-separated items of its first item's type (``--set layers=64,32`` → ``[64, 32]``); a None
    default takes a number, true/false, none or text as the text reads (``--set drop=0.3`` → 0.3)."""
    if default is None:  # no type to follow: the value as it reads (a number, true/false, none or text)
        if not isinstance(value, str):
            return typed(key, value, int | float | bool | str | None)
        text = value.strip()
        return None if text.lower() in ("none", "null") else text if "/" in text else argument_value(text)
    if not isinstance(default, list | tuple):
        return parse_value(key, value, type(default))
    kind = type(default[0]) if default else str
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
        try:
            return type(default)(parse_value(key, item, kind) for item in items)
        except FmtkError:  # the whole value named, not its first item that is wrong
            example = ",".join(map(str, default)) or "a,b"
            raise FmtkError(f"--set {key}={value}: expected {kind.__name__} items separated by commas, e.g. "
                            f"{key}={example}") from None  # fmt: skip
    if not isinstance(value, list | tuple):
        raise FmtkError(f"{key}={value!r}: expected a list of {kind.__name__}")
    return type(default)(typed(key, item, kind) for item in value)


def typed(key: str, value: Any, kind: Any) -> Any:
    """``value`` if it has the type ``kind`` (an int does for a float, and becomes one); else FmtkError."""
    allowed = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    allowed = tuple(typing.get_origin(t) or t for t in allowed)  # dict[str, Any] → dict
    if float in allowed and type(value) is int:
        return float(value)
    if not any(value is None if t is type(None) else type(value) is t for t in allowed):
        raise FmtkError(f"{key}={value!r}: expected {_names(allowed)}")
    return value


def _names(kinds: tuple[type, ...]) -> str:
    """``int or none``: the types a value may have, as a user writes them."""
    return " or ".join("none" if kind is type(None) else kind.__name__ for kind in kinds)


def one_or_more(given: Any, name: str, single: tuple[type, ...], what: str) -> list[Any]:
    """``given`` (a keyword argument from Python) as a list: one value (a string, a path, a
    function…) is a list of one, not a sequence of letters."""
    if isinstance(given, single) or callable(given):
        return [given]
    if not isinstance(given, Iterable):
        raise FmtkError(f"{name}={given!r}: expected {what}, one or a list")
    return list(given)


# The checks of the Python API's keyword arguments: a wrong type is one line naming the keyword,
# not a TypeError from deep inside (pathlib's "expected str, bytes or os.PathLike object").


def check_paths(**paths: Any) -> None:
    """Each given path is a str or an ``os.PathLike`` (None: not given)."""
    for name, value in paths.items():
        if value is not None:
            check_path(name, value)


def check_path(name: str, value: Any) -> None:
    """``value`` is a path: a str or an ``os.PathLike`` (None too is refused: it is needed)."""
    if not isinstance(value, str | os.PathLike):
        raise FmtkError(f"{name}={value!r}: expected a path (a str or a pathlib.Path)")


def check_flags(**flags: Any) -> None:
    """Each given flag is True or False (None: the default)."""
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise FmtkError(f"{name}={value!r}: expected True or False")


def check_count(name: str, value: Any, least: int = 1, what: str = "") -> None:
    """``value`` is a whole number, ``least`` or more (``what``: what it counts, said in the error)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        counted = f" ({what})" if what else ""
        raise FmtkError(f"{name}={value!r}: expected a whole number, {least} or more{counted}")
