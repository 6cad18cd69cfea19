"""The rate-limit core: time, counting rules, blocks and verdicts.

Everything here is pure: no I/O, no locks, no globals.  The stores call these
functions under their own lock (``MemoryStore``) or mirror them in Lua
(``RedisStore``); the policies turn their results into :class:`Verdict` values
that the ASGI and WSGI adapters translate into responses.

Three counting rules are shared by the three filters:

*Sliding window* (:func:`slide`), the rule of Jetty's DoSFilter and of
Carbonio's mobile anti-DoS: a request is over the limit when it would be the
``limit + 1``-th *allowed* request within the last ``window`` seconds.  There
are no fixed windows, so no double burst at a window edge, and no
approximation.  The state of one key is the log of the allowed requests still
inside the window, oldest first, and never more than ``limit`` of them: one
bare ``float`` while a key has a single request in its window (the common case
for the millions of addresses seen once), a :class:`Window` ring of 8-byte
timestamps above that.  A decision skips the expired entries and writes one,
so it costs O(1) amortised whatever the limit and the traffic.

*Streak* (:func:`streak`), Zimbra's invalid-login rule: failures count as
consecutive while each comes within ``interval`` seconds of the previous one;
a longer pause starts the count over.

*Blocks* (:class:`Block`): a key is refused until an end time, with a reason.

Timestamps are seconds as floats from a *clock*, a zero-argument callable.  A
clock that steps backwards (wall time under NTP) is clamped to the newest
timestamp already recorded, so a step back can never reopen a window.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "Block",
    "Clock",
    "FakeClock",
    "Log",
    "SystemClock",
    "Verdict",
    "Window",
    "log_count",
    "log_last",
    "retry_after",
    "slide",
    "streak",
    "wait_until",
]

Clock = Callable[[], float]
"""A clock is any zero-argument callable returning seconds as a float."""


class SystemClock:
    """Wall-clock time (``time.time``): the default clock of every store."""

    __slots__ = ()

    def __call__(self) -> float:
        return time.time()

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A clock that moves only when told to, for tests that must not sleep.

    >>> clock = FakeClock(start=1_700_000_000.0)
    >>> clock.advance(90)
    >>> clock()
    1700000090.0
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (which must not be negative)."""
        if seconds < 0 or math.isnan(seconds):
            raise ValueError(f"FakeClock.advance: seconds must be >= 0, got {seconds!r}")
        self._now += seconds

    def set(self, now: float) -> None:
        """Jump to an absolute time (backwards too: stores clamp it)."""
        self._now = float(now)

    def __repr__(self) -> str:
        return f"FakeClock(start={self._now!r})"


class Window:
    """The recorded requests of one key with two or more in its window.

    A ring buffer of timestamps, oldest at ``start``, holding ``count``
    entries, the newest being ``last``.  Its capacity doubles as a key sends
    more (2, 4, 8, ... never more than the limit), so memory follows the
    traffic actually seen, and expired entries are skipped by moving
    ``start``: nothing is ever shifted, and each decision costs O(1)
    amortised whatever the limit.
    """

    __slots__ = ("buf", "count", "last", "start")

    def __init__(self, buf: array[float], start: int, count: int) -> None:
        self.buf = buf
        self.start = start
        self.count = count
        self.last = buf[(start + count - 1) % len(buf)]

    def __len__(self) -> int:
        return self.count

    def times(self) -> list[float]:
        """The recorded timestamps, oldest first."""
        buf, cap = self.buf, len(self.buf)
        return [buf[(self.start + i) % cap] for i in range(self.count)]

    def __repr__(self) -> str:
        return f"Window({self.times()!r})"


Log = None | float | Window
"""State of one sliding-window key: no request, one timestamp, or a :class:`Window`."""


def slide(log: Log, now: float, limit: int, window: float) -> tuple[Log, bool, int, float]:
    """Decide one request against a sliding window and return the new state.

    Returns ``(log, allowed, remaining, reset)``:

    - ``allowed``: fewer than ``limit`` requests were allowed in the
      ``window`` seconds before ``now`` (a request exactly ``window`` seconds
      old no longer counts), so this one is allowed and recorded;
    - ``remaining``: how many more requests would be allowed right now;
    - ``reset``: seconds until the oldest counted request leaves the window,
      which for a refused request is exactly how long the caller must wait.

    ``log`` may be changed in place; always keep the returned one.  A refused
    request is not recorded.  ``limit`` must be at least 1.
    """
    if type(log) is not Window:  # None or one float; a Window (a busy key) goes on below
        if log is None:
            return now, True, limit - 1, window
        last: float = log  # type: ignore[assignment]
        if now < last:
            now = last
        elif last <= now - window:
            return now, True, limit - 1, window
        if limit <= 1:
            return log, False, 0, _wait(last, window, now)
        return Window(array("d", (last, now)), 0, 2), True, limit - 2, last + window - now
    ring: Window = log
    last = ring.last
    if now < last:
        now = last
    cutoff = now - window
    if last <= cutoff:  # the whole window has passed: back to one float
        return now, True, limit - 1, window
    buf = ring.buf
    start = ring.start
    count = ring.count
    if buf[start] <= cutoff:  # skip what expired; ``last`` is live, so this stops
        cap = len(buf)
        while True:
            start += 1
            count -= 1
            if start == cap:
                start = 0
            if buf[start] > cutoff:
                break
        ring.start = start
        ring.count = count
    if count >= limit:  # refused: the flood's path, so _wait's fast check is inlined
        first = buf[start]
        until = first + window
        wait = until - now
        if until - window < first or now + wait < until:
            wait = wait_until(_leaves(first, window), now)
        return ring, False, 0, wait
    cap = len(buf)
    if count == cap:  # full: grow, oldest first, doubling up to the limit
        grown = array("d", buf[start:])
        grown.extend(buf[:start])
        grown.extend(array("d", bytes(8 * (min(limit, cap * 2) - cap))))
        buf = ring.buf = grown
        cap = len(grown)
        start = ring.start = 0
    end = start + count
    buf[end - cap if end >= cap else end] = now
    ring.count = count + 1
    ring.last = now
    return ring, True, limit - count - 1, buf[start] + window - now


def _wait(first: float, window: float, now: float) -> float:
    """Seconds from ``now`` until a request recorded at ``first`` stops counting.

    Exact to the last bit (see :func:`_leaves` and :func:`wait_until`); the
    plain sum is checked first, since it is right all but a few times in a
    hundred and this runs on every refusal of a flood.
    """
    until = first + window
    wait = until - now
    if until - window >= first and now + wait >= until:
        return wait
    return wait_until(_leaves(first, window), now)


def _leaves(first: float, window: float) -> float:
    """The first time at which a request recorded at ``first`` no longer counts.

    ``first + window`` can round below the time at which ``now - window``
    reaches ``first`` (the test :func:`slide` applies), so step up to it.
    """
    until = first + window
    while until - window < first:
        until = math.nextafter(until, math.inf)
    return until


def wait_until(until: float, now: float) -> float:
    """Seconds from ``now`` to ``until``, such that ``now + wait >= until``.

    Plain ``until - now`` can be one ulp short, so that a caller (or a
    :class:`FakeClock`) that waits exactly that long arrives just too early.
    """
    wait = until - now
    while now + wait < until:
        wait = math.nextafter(wait, math.inf)
    return wait


def log_count(log: Log, now: float, window: float) -> int:
    """How many recorded requests of ``log`` are still inside the window."""
    if log is None:
        return 0
    cutoff = now - window
    if type(log) is float:
        return 1 if log > cutoff else 0
    ring: Window = log  # type: ignore[assignment]
    return sum(1 for t in ring.times() if t > cutoff)


def log_last(log: Log) -> float:
    """Time of the newest recorded request (``-inf`` for an empty log)."""
    if log is None:
        return -math.inf
    if type(log) is float:
        return log
    ring: Window = log  # type: ignore[assignment]
    return ring.last


def streak(count: int, last: float, now: float, interval: float) -> int:
    """Length of the failure streak after one more failure at ``now``.

    ``count`` failures, the latest at ``last``, are consecutive; the new one
    continues the streak when it comes at most ``interval`` seconds after
    ``last``, and starts a new streak of 1 otherwise.
    """
    if count > 0 and now - last <= interval:
        return count + 1
    return 1


def retry_after(seconds: float) -> int:
    """Whole seconds for a ``Retry-After`` header: rounded up, at least 1."""
    if not seconds > 1.0:  # also catches NaN
        return 1
    return math.ceil(seconds - 1e-9)


@dataclass(frozen=True, slots=True)
class Block:
    """A key refused until ``until`` (seconds on the store's clock).

    ``kind`` is the namespace of the filter that made it (``"login"``,
    ``"device"``, ...), ``key`` what it blocks (an address or a device), and
    ``reason`` a short word for humans and logs.
    """

    kind: str
    key: str
    reason: str
    since: float
    until: float

    def left(self, now: float) -> float:
        """Seconds of the block still to run (0 once it has ended)."""
        return max(0.0, self.until - now)

    def active(self, now: float) -> bool:
        return now < self.until


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a policy decided about one request; adapters translate it.

    ``allowed`` says whether the app may be called.  When it may not,
    ``retry_after`` is the whole number of seconds for ``Retry-After``.
    ``delay`` asks the adapter to hold an allowed request for that many
    seconds first.  ``remaining`` / ``reset`` / ``limit`` feed the optional
    ``RateLimit-*`` headers (``remaining`` is -1 when unknown).  ``watch``
    asks the adapter to report the response's status and headers back to the
    policy (how a login filter learns whether a login failed).
    """

    allowed: bool
    reason: str = "ok"
    key: str = ""
    retry_after: int = 0
    remaining: int = -1
    reset: float = 0.0
    limit: int = 0
    delay: float = 0.0
    watch: bool = False


ALLOW = Verdict(True)
"""The verdict for a request a filter has nothing to say about."""
