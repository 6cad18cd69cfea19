"""The admin console: a small web page over :class:`mailguard.admin.AdminApp`.

:class:`~mailguard.admin.AdminApp` serves it (``console=True``, the default),
and so does ``mailguard serve`` when ``[serve] admin_token`` is set.  Paths
are relative to where the admin app is mounted:

``GET /console``, ``GET /console.js``, ``GET /console.css``
    the page and its script and style (package files under
    ``mailguard/data/console/``).  They hold no data, so they need no token
    (a browser's navigation cannot send one), but they obey ``allow`` like
    every admin endpoint.  No external asset: it works on a server without
    internet.  Every answer carries a strict ``Content-Security-Policy``
    (:data:`SECURITY_HEADERS`: no inline script or style, nothing from another
    origin, no framing).
``GET /refusals[?limit=100]`` (token)
    ``{"now": ..., "pid": 812, "count": 3, "refusals": [{"time": ...,
    "filter": "login", "action": "blocked", "client": "203.0.113.7",
    "fields": {"account": "jdoe", "seconds": 900, ...}}, ...]}``: the last
    refusal events (actions :data:`REFUSAL_ACTIONS`: a flood's first refused
    request, a block, a jail, and their monitor-mode ``would-*`` twins),
    newest first, at most ``limit`` (1 to :data:`KEEP`).
``GET /series`` (token)
    ``{"now": ..., "pid": 812, "minutes": 60, "start": <epoch of the oldest
    minute>, "filters": {"dos": [0, 0, ..., 12], "login": [...], "device":
    [...]}, "totals": {"dos": 12, ...}}``: refused *requests* per filter and
    per minute, oldest minute first, the last one the minute under way.

What the page shows: the live blocks and jails (``GET /blocks``: from the
store, so every process and host sharing it agrees), with a search box and a
lift button per row (``POST /unblock``) and a "lift all" behind a
confirmation; a manual block form (``POST /block``); the chart and the last
refusals (from this module's :class:`Recorder`); the configuration in force
with its source (``GET /config`` where the admin app has it; "configuration
not available" otherwise).  The token is typed into a form and kept in the
tab's ``sessionStorage``, sent as ``Authorization: Bearer`` on each call (no
cookie, so no cross-site request can use it); a 403 goes back to the form.

**Refusals and the chart are this process's view.**  The recorder listens to
the events of the filters of its own process (:func:`mailguard.events.listen`):
under several workers each worker's console shows its own refusals, whereas
blocks come from the store and are the same everywhere.

Counting: the chart counts refused requests, one per refused request, at the
moment it is refused (every filter, every door: HTTP through the ASGI and
WSGI adapters and the mail logins of ``mailguard serve``).  Prometheus'
``mailguard_refused_requests_total`` counts the same requests for DosFilter
but adds them up when a flood ends; the list holds events, one per episode
(the first refused request of a flood, a block with its account, a jail with
its device), as the log lines do.
"""

from __future__ import annotations

import os
import time
from collections import deque
from functools import cache
from importlib import resources
from typing import Any

from .events import Event, Field, listen
from .policies import KINDS

__all__ = [
    "KEEP",
    "MINUTES",
    "RECORDER",
    "REFUSAL_ACTIONS",
    "SECURITY_HEADERS",
    "Recorder",
    "install",
    "static",
]

KEEP = 200
"""Refusal events kept for ``GET /refusals``."""

MINUTES = 60
"""One-minute buckets kept per filter for ``GET /series``."""

MAX_FILTERS = 16
"""Filter names given a series (the three kinds, and a few others at most)."""

MAX_TEXT = 256
"""Characters kept of a text field (an account name, a device type)."""

REFUSAL_ACTIONS = frozenset(
    {"refused", "over", "blocked", "jailed", "would-refuse", "would-block", "would-jail"}
)
"""The event actions the list keeps."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
)
"""Sent with every answer of the admin app, page and data alike."""

_FILES = {
    "/console": ("console.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
PAGES = frozenset(_FILES)
"""The paths of the page and its static files."""


@cache
def static(path: str) -> tuple[str, bytes]:
    """``(content type, bytes)`` of ``/console``, ``/console.js`` or ``/console.css``."""
    name, content_type = _FILES[path]
    data = resources.files("mailguard").joinpath(f"data/console/{name}").read_bytes()
    return content_type, data


class Recorder:
    """The last refusals and the refused requests per minute, of this process.

    Fed by :func:`mailguard.events.listen` (see :func:`install`).  Bounded:
    at most :data:`KEEP` events (each a small dict; text fields cut to
    :data:`MAX_TEXT` characters, so at worst some 4 kB an event and about
    1 MB in all, typically 0.3 kB and 60 kB) and, per filter name (at most
    :data:`MAX_FILTERS`), :data:`MINUTES` pairs of ints (about 5 kB).  A
    refused request costs a few list operations (about 0.5 µs) and takes no
    lock: a request never waits for another thread here (an asyncio loop
    must not wait for a WSGI worker thread).  The operations used are
    atomic under the GIL, except the ``+= 1`` of a minute's count: with
    threads, a thread switch right inside it loses that one increment, which
    a chart can afford; the asyncio and one-thread cases are exact.

    :param keep: events kept.
    :param minutes: one-minute buckets per filter.
    :param clock: epoch seconds (``time.time``).
    """

    def __init__(self, keep: int = KEEP, minutes: int = MINUTES, clock: Any = time.time) -> None:
        self.keep = keep
        self.minutes = minutes
        self.clock = clock
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._counts: dict[str, list[int]] = {}
        self._stamps: dict[str, list[int]] = {}
        for kind in KINDS:
            self._series(kind)

    def _series(self, name: str) -> tuple[list[int], list[int]] | None:
        counts = self._counts.get(name)
        if counts is None:
            if len(self._counts) >= MAX_FILTERS:
                return None
            self._stamps[name] = [-1] * self.minutes  # first: readers go by _counts
            counts = self._counts[name] = [0] * self.minutes
        return counts, self._stamps[name]

    def __call__(self, event: Event) -> None:
        """Take one event (a listener: see :func:`mailguard.events.listen`)."""
        if event.action == "request-refused":
            minute = int(self.clock() // 60)
            slot = minute % self.minutes
            pair = self._series(event.filter)
            if pair is None:
                return
            counts, stamps = pair
            if stamps[slot] != minute:
                stamps[slot] = minute
                counts[slot] = 0
            counts[slot] += 1
            return
        if event.action not in REFUSAL_ACTIONS:
            return
        fields: dict[str, Field] = {}
        for key, value in event.fields:
            fields[key] = value[:MAX_TEXT] if isinstance(value, str) else value
        record = {
            "time": round(self.clock(), 3),
            "filter": event.filter[:MAX_TEXT],
            "action": event.action,
            "client": event.client[:MAX_TEXT],
            "fields": fields,
        }
        self._events.append(record)  # atomic, bounded by maxlen

    def refusals(self, limit: int = KEEP) -> list[dict[str, Any]]:
        """The last ``limit`` refusal events, newest first."""
        newest = self._events.copy()  # one C call: no append can come in between
        newest.reverse()
        return list(newest)[:limit]

    def series(self) -> dict[str, Any]:
        """Refused requests per filter and minute, oldest first (the ``GET /series`` body)."""
        now = self.clock()
        current = int(now // 60)
        first = current - self.minutes + 1
        filters: dict[str, list[int]] = {}
        for name, counts in list(self._counts.items()):
            counts, stamps = counts[:], self._stamps[name][:]
            row = []
            for minute in range(first, current + 1):
                slot = minute % self.minutes
                row.append(counts[slot] if stamps[slot] == minute else 0)
            filters[name] = row
        return {
            "now": now,
            "pid": os.getpid(),
            "minutes": self.minutes,
            "start": first * 60,
            "filters": filters,
            "totals": {name: sum(row) for name, row in filters.items()},
        }

    def clear(self) -> None:
        """Forget everything (tests)."""
        self._events.clear()
        for name in list(self._counts):
            self._counts[name][:] = [0] * self.minutes
            self._stamps[name][:] = [-1] * self.minutes


RECORDER = Recorder()
"""The process's recorder, listening once an admin app with the console exists."""


def install() -> Recorder:
    """Make :data:`RECORDER` listen to this process's events (again: no effect)."""
    listen(RECORDER)
    return RECORDER


def answer(name: str, limit: int) -> dict[str, Any]:
    """The body of ``GET /refusals`` (``name`` ``"refusals"``) or ``GET /series``."""
    if name == "series":
        return RECORDER.series()
    found = RECORDER.refusals(limit)
    return {"now": time.time(), "pid": os.getpid(), "count": len(found), "refusals": found}
