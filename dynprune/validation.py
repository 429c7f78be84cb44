"""Checks for config dataclasses' ``__post_init__`` (TRL style: a bad value is a ``ValueError`` naming it).

Every message names the field as ``<Class>.<field>``, what it must be and the value given, e.g.
``TrainConfig.max_steps must be >= 1, got 0``, so a user can fix the flag or the JSON key it came from.
NaN fails every numeric check (comparisons with NaN are false), and so does a value that is not a
number (a bool included).

Example::

    @dataclass(frozen=True)
    class EvalConfig:
        repeats: int = 5
        seq_len: int = 64

        def __post_init__(self) -> None:
            require_at_least(self, 1, "repeats")
            require_at_least(self, 2, "seq_len")
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["require_at_least", "require_finite", "require_in_range", "require_integer", "require_known_keys",
           "require_one_of", "require_positive"]


def _field(obj: object, name: str) -> tuple[str, Any]:
    return f"{type(obj).__name__}.{name}", getattr(obj, name)


def _number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_at_least(obj: object, low: float, *names: str) -> None:
    """Each named field of ``obj`` is ``>= low``."""
    for name in names:
        label, value = _field(obj, name)
        if not (_number(value) and value >= low):
            raise ValueError(f"{label} must be >= {low}, got {value!r}")


def require_integer(obj: object, low: int, *names: str) -> None:
    """Each named field of ``obj`` is an ``int`` (not a bool) ``>= low``."""
    for name in names:
        label, value = _field(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{label} must be an integer >= {low}, got {value!r}")


def require_positive(obj: object, *names: str) -> None:
    """Each named field of ``obj`` is a finite number ``> 0``."""
    for name in names:
        label, value = _field(obj, name)
        if not (_number(value) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{label} must be > 0 and finite, got {value!r}")


def require_finite(obj: object, *names: str) -> None:
    """Each named field of ``obj`` is a finite number (not NaN or infinite)."""
    for name in names:
        label, value = _field(obj, name)
        if not (_number(value) and math.isfinite(value)):
            raise ValueError(f"{label} must be finite, got {value!r}")


def require_in_range(obj: object, low: float, high: float, *names: str, interval: str = "[]") -> None:
    """Each named field of ``obj`` lies in the interval from ``low`` to ``high``.

    ``interval`` gives the brackets: ``"[]"`` (both ends allowed), ``"[)"``, ``"(]"`` or ``"()"``.
    """
    if interval not in ("[]", "[)", "(]", "()"):
        raise ValueError(f"interval must be one of '[]', '[)', '(]', '()', got {interval!r}")
    for name in names:
        label, value = _field(obj, name)
        if not _number(value):
            raise ValueError(f"{label} must be a number in {interval[0]}{low}, {high}{interval[1]}, got {value!r}")
        above = value >= low if interval[0] == "[" else value > low
        below = value <= high if interval[1] == "]" else value < high
        if not (above and below):
            raise ValueError(f"{label} must be in {interval[0]}{low}, {high}{interval[1]}, got {value!r}")


def require_one_of(obj: object, name: str, choices: Iterable[Any]) -> None:
    """The named field of ``obj`` is one of ``choices``."""
    label, value = _field(obj, name)
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{label} must be one of {choices}, got {value!r}")


def require_known_keys(data: Mapping[str, Any], cls: type, what: str) -> None:
    """Every key of ``data`` (a config's JSON form) is a field of the dataclass ``cls``.

    ``what`` names the settings in the message: ``unknown <what> [...]; expected some of [...]``.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} {unknown}; expected some of {sorted(known)}")
