"""Checks for filter options: bad configuration fails loudly, once, at construction.

Every check names the option and the bad value in its ``ValueError``, e.g.
``max_requests_per_sec: must be a whole number >= 1, got 0``.  Durations are
seconds; strings such as ``"600s"``, ``"25m"``, ``"1h"``, ``"2d"`` and
``"1500ms"`` are accepted too, as in configuration files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

__all__ = ["duration", "paths", "positive_int", "status_code", "strings", "whole"]

_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|min|m|h|d|)\s*", re.IGNORECASE)


def whole(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be a whole number, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name}: must be a whole number >= {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name}: must be a whole number <= {high}, got {value!r}")
    return value


def positive_int(name: str, value: object) -> int:
    return whole(name, value, low=1)


def duration(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Seconds, from a number or a string like ``"25m"``; finite and > 0 (or >= 0)."""
    seconds: float
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise ValueError(
                f"{name}: {value!r} is not a duration (use seconds, or e.g. '600s', '25m', '1h')"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ValueError(f"{name}: must be a number of seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: must be a finite number of seconds {bound}, got {value!r}")
    return seconds


def status_code(name: str, value: object) -> int:
    """An HTTP status a refusal may use (400-599)."""
    return whole(name, value, low=400, high=599)


def strings(name: str, value: object) -> tuple[str, ...]:
    """A list of strings; a lone string is refused (it would iterate characters)."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name}: must be a list of strings, got the single string {value!r}")
    if not isinstance(value, Iterable):
        raise ValueError(f"{name}: must be a list of strings, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{name}: every entry must be a string, got {item!r}")
    return items


def paths(name: str, value: object) -> tuple[str, ...]:
    """URL paths: each must start with '/'."""
    items = strings(name, value)
    for item in items:
        if not item.startswith("/"):
            raise ValueError(f"{name}: {item!r} must start with '/'")
    return items
