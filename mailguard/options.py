"""Options: declared once, checked once, at construction.

Where an option is declared
===========================

A filter's or a store's options are the keyword parameters of its class's
``__init__``: each has a type and a default there, and is checked in the body
of that ``__init__``, where a bad value raises a ``ValueError`` made by
:func:`option_error`: its text names the option
(``max_requests_per_sec: must be a whole number >= 1, got 0``) and its
``option`` and ``problem`` attributes hold the two parts
(:func:`named_option` reads them).  The class
docstring documents each one with a ``:param name:`` line.  Nothing else
lists them: :func:`declared` reads them back as :class:`Option` objects, and
that is all :mod:`mailguard.config` knows about options (which names a table
accepts, which values are durations, which error belongs to which key).

Durations
=========

A duration is declared by type: :data:`Duration` (seconds as a number, or a
string such as ``"600s"``, ``"25m"``, ``"1h"``, ``"2d"`` or ``"1500ms"``;
:func:`duration` reads both) or :data:`Seconds` (a number of seconds only, for
Python callers; a configuration file may still use units, which
:meth:`Option.parse` turns into seconds).  No name suffix is guessed at.

The checks
==========

The helpers below (:func:`whole`, :func:`positive_int`, :func:`duration`,
:func:`status_code`, :func:`strings`, :func:`paths`) raise
:func:`option_error` naming the option they were given.
"""

from __future__ import annotations

import collections.abc
import inspect
import math
import re
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Union

__all__ = [
    "DURATION",
    "REQUIRED",
    "Duration",
    "Option",
    "Seconds",
    "at_least_a_second",
    "declared",
    "duration",
    "named_option",
    "option_error",
    "paths",
    "positive_int",
    "status_code",
    "strings",
    "whole",
]


def option_error(option: str, problem: str) -> ValueError:
    """The error a check raises: ``ValueError("<option>: <problem>")`` carrying both parts.

    The error has ``option`` and ``problem`` attributes (read them with
    :func:`named_option`), so a caller such as :mod:`mailguard.config` can
    tell which option was wrong without reading the text.  It is a plain
    ``ValueError``, as option errors have always been, not a subclass.
    """
    error = ValueError(f"{option}: {problem}")
    error.__dict__.update(option=option, problem=problem)
    return error


def named_option(error: BaseException) -> tuple[str, str] | None:
    """``(option, problem)`` of an error :func:`option_error` made; None for any other error."""
    option = getattr(error, "option", None)
    problem = getattr(error, "problem", None)
    if isinstance(error, ValueError) and isinstance(option, str) and isinstance(problem, str):
        return option, problem
    return None


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DURATION: Final = _Marker("DURATION")
"""The mark :data:`Duration` and :data:`Seconds` carry in their ``Annotated`` metadata."""

Duration = Annotated[float | str, DURATION]
"""Seconds, or a string with a unit (``"25m"``): read with :func:`duration`."""

Seconds = Annotated[float, DURATION]
"""Seconds as a number (configuration files may still write ``"250ms"``)."""

_UNITS = {"ms": 0.001, "s": 1.0, "": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|min|m|h|d|)\s*", re.IGNORECASE)


# -------------------------------------------------------------------- checks


def whole(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """An int (not a bool) within ``low..high``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise option_error(name, f"must be a whole number, got {value!r}")
    if low is not None and value < low:
        raise option_error(name, f"must be a whole number >= {low}, got {value!r}")
    if high is not None and value > high:
        raise option_error(name, f"must be a whole number <= {high}, got {value!r}")
    return value


def positive_int(name: str, value: object) -> int:
    return whole(name, value, low=1)


def duration(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Seconds, from a number or a string like ``"25m"``; finite and > 0 (or >= 0)."""
    seconds: float
    if isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match is None:
            raise option_error(
                name, f"{value!r} is not a duration (use seconds, or e.g. '600s', '25m', '1h')"
            )
        seconds = float(match.group(1)) * _UNITS[match.group(2).lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value) if abs(value) <= 1e308 else math.inf  # an int past any float
    else:
        raise option_error(name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise option_error(name, f"must be a finite number of seconds {bound}, got {value!r}")
    return seconds


def at_least_a_second(name: str, value: object) -> float:
    """A :func:`duration` of at least one second: a shorter window or block
    would switch its protection off without saying so."""
    seconds = duration(name, value)
    if seconds < 1.0:
        raise option_error(
            name, f"must be at least 1 second (shorter switches protection off), got {value!r}"
        )
    return seconds


def status_code(name: str, value: object) -> int:
    """An HTTP status a refusal may use (400-599)."""
    return whole(name, value, low=400, high=599)


def strings(name: str, value: object) -> tuple[str, ...]:
    """A list of strings; a lone string is refused (it would iterate characters)."""
    if isinstance(value, (str, bytes)):
        raise option_error(name, f"must be a list of strings, got the single string {value!r}")
    if not isinstance(value, Iterable):
        raise option_error(name, f"must be a list of strings, got {value!r}")
    items = tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise option_error(name, f"every entry must be a string, got {item!r}")
    return items


def paths(name: str, value: object) -> tuple[str, ...]:
    """URL paths: each must start with '/'."""
    items = strings(name, value)
    for item in items:
        if not item.startswith("/"):
            raise option_error(name, f"{item!r} must start with '/'")
    return items


# -------------------------------------------------------------- declarations


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final[Any] = _Required()
"""The :attr:`Option.default` of an option that has none."""


@dataclass(frozen=True)
class Option:
    """One declared option, as :func:`declared` reads it from a constructor.

    :ivar name: the keyword (``"block_duration"``).
    :ivar type: its annotation, evaluated (``Duration``); the annotation's text
        when it cannot be evaluated.
    :ivar default: its default, or :data:`REQUIRED`.
    :ivar doc: its ``:param:`` text in the class docstring ("" when none).
    :ivar owner: the class whose ``__init__`` declares it.
    """

    name: str
    type: Any
    default: Any
    doc: str
    owner: type

    @property
    def is_duration(self) -> bool:
        """Whether the option holds a duration: its type is :data:`Duration` or :data:`Seconds`."""
        return _marked(self.type, DURATION)

    @property
    def is_callable(self) -> bool:
        """Whether the option takes a Python callable (a hook, a key function)."""
        return _has_callable(self.type)

    def parse(self, value: object) -> Any:
        """A value as a configuration file wrote it, for the constructor.

        A duration becomes seconds (a string with a unit is read; the
        constructor decides whether 0 is allowed); anything else is passed on
        for the constructor to check.  An :func:`option_error` on a bad duration.
        """
        if self.is_duration and value is not None:
            return duration(self.name, value, allow_zero=True)
        return value


def declared(cls: type) -> Mapping[str, Option]:
    """The options ``cls(...)`` accepts, by name, in the order they are declared.

    Reads ``cls.__init__``'s keyword parameters and, where it passes
    ``**options`` on, those of the base class it passes them to, up the class
    hierarchy (as the policies pass the common options to
    :class:`~mailguard.policies.Policy`).  ``TypeError`` when a class takes
    arbitrary keywords that no class declares.  Read once per class.
    """
    known = _declared.get(cls)
    if known is None:
        known = _declared[cls] = _read(cls)
    return known


_declared: weakref.WeakKeyDictionary[type, Mapping[str, Option]] = weakref.WeakKeyDictionary()


def _read(cls: type) -> Mapping[str, Option]:
    found: dict[str, Option] = {}
    docs: dict[str, str] = {}
    for klass in cls.__mro__:
        docs = {**_param_docs(klass.__doc__ or ""), **docs}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            raise TypeError(f"{cls.__name__} takes any keyword: its options are not declared")
        more = False
        for param in inspect.signature(init).parameters.values():
            if param.kind is param.VAR_KEYWORD:
                more = True
            elif (
                param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD)
                and param.name != "self"
                and param.name not in found
            ):
                found[param.name] = Option(
                    param.name,
                    _evaluate(param.annotation, init),
                    REQUIRED if param.default is param.empty else param.default,
                    docs.get(param.name, ""),
                    klass,
                )
        if not more:
            break
    return types.MappingProxyType(found)


def _evaluate(annotation: Any, function: Any) -> Any:
    """An annotation as an object (they are strings under ``from __future__``)."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(
            annotation, getattr(function, "__globals__", {})
        )  # our own source, as typing.get_type_hints does
    except Exception:
        return annotation


def _marked(hint: Any, marker: object) -> bool:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return any(meta is marker for meta in hint.__metadata__)
    if origin is Union or origin is types.UnionType:
        return any(_marked(arg, marker) for arg in typing.get_args(hint))
    return False


def _has_callable(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is collections.abc.Callable or hint is Callable:
        return True
    if origin is Annotated:
        return _has_callable(typing.get_args(hint)[0])
    if origin is Union or origin is types.UnionType:
        return any(_has_callable(arg) for arg in typing.get_args(hint))
    return False


_PARAM = re.compile(r":param (\w+):(.*)")


def _param_docs(docstring: str) -> dict[str, str]:
    """``{name: text}`` of the ``:param name: text`` entries of a docstring."""
    docs: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in inspect.cleandoc(docstring).splitlines():
        found = _PARAM.match(line.strip()) if line.startswith(":") else None
        if found is not None:
            current = docs.setdefault(found.group(1), [])
            current.append(found.group(2).strip())
        elif current is not None and line.startswith(" ") and line.strip():
            current.append(line.strip())
        else:
            current = None
    return {name: " ".join(words) for name, words in docs.items()}
