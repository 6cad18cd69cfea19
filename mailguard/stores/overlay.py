"""A small versioned document a store keeps for the live configuration.

The store knows nothing of what the document means: it is a flat mapping of
names to JSON values (``{"dos.max_requests_per_sec": 150}``), an integer
version that every write raises by one, and the last few change records
(who, when, what).  :mod:`mailguard.live` gives it its meaning.

A write is a compare-and-set on the version: it names the version it read
and fails with :class:`OverlayConflict` when another writer got there first
(one Lua script in Redis, a lock section in memory), so two admins changing
two keys at once cannot lose either change.

The document is bounded (:data:`MAX_DOCUMENT` bytes of JSON, at most
:data:`MAX_CHANGES` change records) and read defensively: whoever can write
to the store could write anything there, so :func:`decode` refuses what is
not exactly this shape (:class:`OverlayCorrupt`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import StoreError

__all__ = [
    "MAX_CHANGES",
    "MAX_DOCUMENT",
    "Overlay",
    "OverlayChange",
    "OverlayConflict",
    "OverlayCorrupt",
    "decode",
    "encode",
]

MAX_DOCUMENT = 64 * 1024
"""The most bytes of JSON a document may take (values and change records)."""

MAX_CHANGES = 20
"""Change records kept: the newest ones."""

_MAX_NAME = 128


class OverlayConflict(StoreError):
    """The document changed since it was read: read it again and retry."""


class OverlayCorrupt(StoreError):
    """The stored document is not one this version wrote."""


@dataclass(frozen=True, slots=True)
class OverlayChange:
    """One change: the version it made, who, when (store clock, epoch
    seconds), ``op`` (``set``, ``add``, ``remove``, ``unset``), the name and
    the value given (None for ``unset``)."""

    version: int
    who: str
    when: float
    op: str
    key: str
    value: Any = None

    def as_json(self) -> dict[str, Any]:
        return {"version": self.version, "who": self.who, "when": self.when,
                "op": self.op, "key": self.key, "value": self.value}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Overlay:
    """The document: ``values`` by name, its ``version`` (0: never written) and
    the newest ``changes``, oldest first."""

    version: int = 0
    values: Mapping[str, Any] = field(default_factory=dict)
    changes: tuple[OverlayChange, ...] = ()

    def last_change(self, key: str) -> OverlayChange | None:
        """The newest change record naming ``key`` (None: none kept)."""
        for change in reversed(self.changes):
            if change.key == key:
                return change
        return None


def _json_value(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, str, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list) and depth < 3:
        return all(_json_value(item, depth + 1) for item in value)
    return False


def encode(values: Mapping[str, Any], changes: tuple[OverlayChange, ...]) -> bytes:
    """The document's JSON (without its version, kept beside it); raises
    ``ValueError`` when it is not storable or too large."""
    for name, value in values.items():
        if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
            raise ValueError(f"not a storable name: {name!r:.80}")
        if not _json_value(value):
            raise ValueError(f"{name}: not a storable value (numbers, text, lists)")
    kept = changes[-MAX_CHANGES:]
    body = {"values": dict(values), "changes": [c.as_json() for c in kept]}
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
    if len(data) > MAX_DOCUMENT:
        raise ValueError(f"the live configuration would exceed {MAX_DOCUMENT} bytes")
    return data


MAX_VERSION = 2**53
"""The highest version a document may carry (JSON numbers are exact below it)."""
_LATEST = 253402300799.0  # 9999-12-31T23:59:59Z: a change record is no later


def _no_constants(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def decode(version: int, data: bytes | str | None) -> Overlay:
    """The document stored as ``data`` at ``version``; :class:`OverlayCorrupt`
    when it is not one :func:`encode` writes."""
    if data is None or version == 0:
        if version != 0:
            raise OverlayCorrupt(f"live configuration v{version} has no document")
        return Overlay()
    if len(data) > MAX_DOCUMENT:
        raise OverlayCorrupt("live configuration document too large")
    try:
        body = json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError, TypeError) as exc:
        raise OverlayCorrupt(f"live configuration document is not JSON: {exc}") from None
    if type(body) is not dict or type(body.get("values")) is not dict:
        raise OverlayCorrupt("live configuration document has no values")
    values = body["values"]
    for name, value in values.items():
        if not name or len(name) > _MAX_NAME or not _json_value(value):
            raise OverlayCorrupt(f"live configuration document: bad entry {name!r:.80}")
    changes: list[OverlayChange] = []
    for item in body.get("changes") or ():
        try:
            change = OverlayChange(
                int(item["version"]), str(item["who"]), float(item["when"]),
                str(item["op"]), str(item["key"]), item.get("value"),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, OverflowError):
            raise OverlayCorrupt("live configuration document: bad change record") from None
        if not (0 <= change.version <= MAX_VERSION and 0.0 <= change.when <= _LATEST):
            # (1e300 would overflow every clock function asked to show it)
            raise OverlayCorrupt("live configuration document: bad change record")
        changes.append(change)
    return Overlay(version, values, tuple(changes[-MAX_CHANGES:]))
