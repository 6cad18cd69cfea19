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
approximation.  The state of one key is the log of its latest allowed
requests, never more than ``limit`` of them: one bare ``float`` while a key
has a single request in its window (the common case for the millions of
addresses seen once), a :data:`Ring` of timestamps above that.
A request is allowed when the ring has room or its oldest slot has left the
window, and then overwrites that slot: O(1) whatever the limit and the
traffic.

*Streak* (:func:`streak`), Zimbra's invalid-login rule: failures count as
consecutive while each comes within ``interval`` seconds of the previous one;
a longer pause starts the count over.

*Blocks* (:class:`Block`): a key is refused until an end time, with a reason.

Timestamps are seconds as floats from a *clock*, a zero-argument callable.  A
clock that steps backwards (wall time under NTP) is clamped to the newest
timestamp already recorded (by the stores, or :func:`clamp`), so a step back
can never reopen a window.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

__all__ = [
    "BLOCKED",
    "BUSY",
    "JAILED",
    "NO_STREAK",
    "OK",
    "OVER",
    "Block",
    "Clock",
    "FakeClock",
    "Log",
    "Offences",
    "Ring",
    "Streak",
    "SystemClock",
    "Verdict",
    "begin_attempt",
    "clamp",
    "end_attempt",
    "log_count",
    "log_last",
    "log_times",
    "outlasts",
    "penalty",
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


Ring = list[Any]
"""A busy key's log: ``[pos, t, t, ...]``.

A plain list, because CPython reads and writes list items without converting
anything (an ``array('d')`` costs a float conversion per access, and made this
the slowest step of a request).  Items 1 and up are the slots, a ring of
timestamps: read from index ``pos`` round to ``pos - 1`` they ascend, the
oldest being ``ring[pos]`` and the newest the slot before it.  Slots whose
time has left the window are not cleared: a new request overwrites the
oldest slot once that one has expired, so a decision reads one recorded time
and writes one, whatever the limit.  (Reading as little as that matters more
than the arithmetic: in a busy server each read of a key's state is a cache
miss.)  Unused slots hold ``-inf``, expired from the start.

The ring holds the clock's own float objects (8 bytes a slot, plus 24 for
each recorded time).  It starts with 2 slots and doubles (4, 8, ... never more
than the limit) only when every slot is inside the window, so its size
follows the busiest window its key has had while the key stays in use (a
key idle for a window is among the first a store drops for room).
"""

_FIRST = 1  # index of the first slot of a Ring
_UNUSED = -math.inf  # an unused slot


Log = None | float | Ring
"""State of one sliding-window key: no request, one timestamp, or a :data:`Ring`."""


def slide(
    log: Log, now: float, limit: int, window: float, detail: bool = True
) -> tuple[Log, bool, int, float]:
    """Decide one request against a sliding window and return the new state.

    Returns ``(log, allowed, remaining, reset)``:

    - ``allowed``: fewer than ``limit`` requests were allowed in the
      ``window`` seconds before ``now`` (a request exactly ``window`` seconds
      old no longer counts), so this one is allowed and recorded;
    - ``remaining``: how many more requests would be allowed right now;
    - ``reset``: seconds until the oldest counted request leaves the window,
      which for a refused request is exactly how long the caller must wait.

    The decision costs O(1).  Counting ``remaining`` costs O(log limit), so
    with ``detail=False`` an allowed request may come back with
    ``remaining=-1`` and ``reset=0.0`` (not worked out); a refusal always
    carries both.

    ``now`` must not be earlier than the newest time already recorded: a
    clock that steps back is clamped by the caller (:func:`clamp`; the
    stores do it), so a step back can never reopen a window.  ``log`` may be
    changed in place; always keep the returned one.  A refused request is
    not recorded.  ``limit`` must be at least 1.
    """
    if type(log) is list:  # a busy key; None or one float go on below
        ring: Ring = log
        cutoff = now - window
        pos = ring[0]
        oldest = ring[pos]
        end = len(ring)
        if oldest <= cutoff:
            if end - _FIRST <= limit:  # the oldest slot has expired: reuse it
                ring[pos] = now
                pos += 1
                ring[0] = _FIRST if pos == end else pos
                if not detail:
                    return ring, True, -1, 0.0
                count, first = _live(ring, cutoff)
                return ring, True, limit - count, first + window - now
        elif end - _FIRST == limit:  # every slot is inside the window: refused (a flood)
            until = oldest + window
            wait = until - now
            if until - window < oldest or now + wait < until:
                wait = wait_until(_leaves(oldest, window), now)
            return ring, False, 0, wait
        return _regrow(ring, now, limit, window, cutoff)
    if log is None:
        return now, True, limit - 1, window
    single: float = log  # type: ignore[assignment]
    if single <= now - window:
        return now, True, limit - 1, window
    if limit <= 1:
        return single, False, 0, _wait(single, window, now)
    return [_FIRST, single, now], True, limit - 2, single + window - now


def clamp(log: Log, now: float) -> float:
    """``now``, or the newest time of ``log`` when the clock has stepped back
    before it (see :func:`slide`)."""
    last = log_last(log)
    return last if now < last else now


def _regrow(
    ring: Ring, now: float, limit: int, window: float, cutoff: float
) -> tuple[Log, bool, int, float]:
    """:func:`slide` when no slot can be reused: every slot is inside the
    window (grow the ring), the limit went down since the ring was built
    (refuse, or rebuild it smaller), or every time has expired (one float
    again).  O(limit), and rare."""
    live = log_times(ring, cutoff)
    count = len(live)
    if count >= limit:  # the request that frees a slot is the first of the last `limit`
        return ring, False, 0, _wait(live[count - limit], window, now)
    if not count:
        return now, True, limit - 1, window
    size = min(limit, 2 * count)
    grown = [0, *live, now, *[_UNUSED] * (size - count - 1)]
    grown[0] = _FIRST if count + 1 == size else _FIRST + count + 1
    return grown, True, limit - count - 1, live[0] + window - now


def _live(ring: Ring, cutoff: float) -> tuple[int, float]:
    """How many times in ``ring`` are later than ``cutoff``, and the oldest of
    them (``inf`` when there is none): a binary search in each of the ring's
    two ascending runs."""
    pos = ring[0]
    end = len(ring)
    if pos > _FIRST and ring[end - 1] > cutoff:  # the oldest live time is in the older run
        i = bisect_right(ring, cutoff, pos, end)
        return end - i + pos - _FIRST, ring[i]
    stop = pos if pos > _FIRST else end
    i = bisect_right(ring, cutoff, _FIRST, stop)
    return (stop - i, ring[i]) if i < stop else (0, math.inf)


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


def log_times(log: Log, after: float = -math.inf) -> list[float]:
    """The recorded times of ``log`` later than ``after``, oldest first."""
    if isinstance(log, float):
        return [log] if log > after else []
    if log is None:
        return []
    pos = log[0]
    return [t for t in (*log[pos:], *log[_FIRST:pos]) if t > after]


def log_count(log: Log, now: float, window: float) -> int:
    """How many recorded requests of ``log`` are still inside the window."""
    if isinstance(log, list):
        return _live(log, now - window)[0]
    return len(log_times(log, now - window))


def log_last(log: Log) -> float:
    """Time of the newest recorded request (``-inf`` for an empty log)."""
    if isinstance(log, float):
        return log
    if log is None:
        return -math.inf
    pos = log[0]
    return float(log[pos - 1] if pos > _FIRST else log[-1])


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


@dataclass(frozen=True, slots=True, init=False)
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

    def __init__(
        self,
        allowed: bool,
        reason: str = "ok",
        key: str = "",
        retry_after: int = 0,
        remaining: int = -1,
        reset: float = 0.0,
        limit: int = 0,
        delay: float = 0.0,
        watch: bool = False,
    ) -> None:
        # What the dataclass would write, at a quarter of its cost: its
        # __init__ for a frozen class sets each field through
        # object.__setattr__ (0.85 us for these nine, a quarter of a refused
        # request's whole cost).  A Verdict takes plain slot stores as its
        # mutable twin (_Unfrozen: the same slots, object's __setattr__) and
        # is a Verdict again after; a subclass's instance (whose slots may
        # differ) goes through the slots' own setters.  tests/test_core.py
        # pins both to the dataclass's.
        if self.__class__ is Verdict:
            _SET_CLASS(self, "__class__", _Unfrozen)
            unfrozen: Any = self
            unfrozen.allowed = allowed
            unfrozen.reason = reason
            unfrozen.key = key
            unfrozen.retry_after = retry_after
            unfrozen.remaining = remaining
            unfrozen.reset = reset
            unfrozen.limit = limit
            unfrozen.delay = delay
            unfrozen.watch = watch
            unfrozen.__class__ = Verdict
            return
        _SET_ALLOWED(self, allowed)
        _SET_REASON(self, reason)
        _SET_KEY(self, key)
        _SET_RETRY_AFTER(self, retry_after)
        _SET_REMAINING(self, remaining)
        _SET_RESET(self, reset)
        _SET_LIMIT(self, limit)
        _SET_DELAY(self, delay)
        _SET_WATCH(self, watch)


(
    _SET_ALLOWED,
    _SET_REASON,
    _SET_KEY,
    _SET_RETRY_AFTER,
    _SET_REMAINING,
    _SET_RESET,
    _SET_LIMIT,
    _SET_DELAY,
    _SET_WATCH,
) = (Verdict.__dict__[field.name].__set__ for field in fields(Verdict))  # in __init__'s order


class _Unfrozen(Verdict):
    """A Verdict while its __init__ runs: no slot of its own, object's setattr."""

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


_SET_CLASS = object.__setattr__

ALLOW = Verdict(True)
"""The verdict for a request a filter has nothing to say about."""


# ------------------------------------------------------------ login rules
# The answers of a store's primitives (see mailguard.stores.base, which
# re-exports them): what a rule decided, as a small int a Lua script returns too.
OK = 0
"""Allowed (and, for an attempt, a slot was taken)."""
OVER = 1
"""Over the limit; the wait is the time until a slot frees."""
JAILED = 2
"""Over the limit, and this decision made a block."""
BLOCKED = 3
"""A live block refused it; the wait is the time the block has left."""
BUSY = 4
"""An attempt: enough are failed or under way that one more could pass the limit."""


class Streak(NamedTuple):
    """One key's failure streak and its attempts under way (a login's record).

    ``failures`` failures, the latest at ``last`` (``-inf``: none), each within
    the interval of the one before; ``pending`` attempts have begun and not
    ended, the latest of them holding its slot until ``pending_until``.
    """

    failures: int = 0
    last: float = -math.inf
    pending: int = 0
    pending_until: float = 0.0

    def expires(self, interval: float) -> float:
        """The first time at which this record no longer matters: its streak
        has lapsed (a failure then would start a new one) and no slot is held.
        A store may forget the record from then on."""
        held = self.pending_until if self.pending else -math.inf
        ends = self.last + interval
        while ends - self.last <= interval:  # rounding: step up until it has lapsed
            ends = math.nextafter(ends, math.inf)
        return ends if ends > held else held


NO_STREAK = Streak()


def begin_attempt(
    record: Streak | None, now: float, limit: int, interval: float, pending_ttl: float
) -> tuple[Streak, int, int, float]:
    """Begin a guarded attempt (a login): ``(record, code, remaining, wait)``.

    A streak that has lapsed (its last failure more than ``interval`` ago)
    counts 0, and so do slots whose ``pending_until`` has passed.  When the
    failures plus the attempts under way already reach ``limit`` the answer is
    ``BUSY`` (wait 1 s: an attempt under way may end any moment); otherwise
    the attempt takes a slot, held for ``pending_ttl`` seconds at most, and
    ``remaining`` is how many more could begin now.  A live block is checked
    by the store before this rule (blocks are records of their own).
    """
    count, last, pending, pending_until = NO_STREAK if record is None else record
    if now - last > interval:
        count = 0
    if pending and now >= pending_until:
        pending = 0
    if count + pending >= limit:
        return Streak(count, last, pending, pending_until), BUSY, 0, 1.0
    pending += 1
    return Streak(count, last, pending, now + pending_ttl), OK, limit - count - pending, 0.0


def end_attempt(
    record: Streak | None,
    now: float,
    failed: bool,
    limit: int,
    interval: float,
    reset: bool = False,
) -> tuple[Streak | None, bool, int]:
    """End an attempt begun by :func:`begin_attempt`: ``(record, reached, streak)``.

    The slot is given back (a slot already lapsed is not given back twice).
    ``reset`` (a success, when successes reset) or a lapsed streak starts the
    count over; a failure extends the streak (:func:`streak`).  ``reached``
    says the streak has just reached ``limit``: the caller blocks the key
    (for :func:`penalty` seconds, never shortening a later block, see
    :func:`outlasts`) and the streak starts over, so ``streak`` is then 0.
    The record is None when nothing is left to remember.
    """
    count, last, pending, pending_until = NO_STREAK if record is None else record
    if pending and now < pending_until:
        pending -= 1
    else:
        pending = 0
    if reset or now - last > interval:
        count = 0
    reached = False
    if failed:
        count = streak(count, last, now, interval)
        last = now
        if count >= limit:
            reached = True
            count, last = 0, -math.inf
    if not count and not pending:
        return None, reached, 0
    return Streak(count, last, pending, pending_until), reached, count


Offences = tuple[float, int]
"""A key's recent blocks: ``(expires, count)``, the chain of blocks each begun
within the memory of the one before."""


def penalty(
    record: Offences | None,
    now: float,
    base: float,
    factor: float,
    cap: float,
    memory: float,
) -> tuple[Offences | None, float]:
    """A repeat offender's block: ``(record, seconds)``.

    ``base * factor ** earlier``, where ``earlier`` counts the key's blocks in
    an unbroken chain, each begun within ``memory`` seconds of the one before;
    capped at ``cap`` when ``cap > 0``.  With ``factor <= 1`` or no memory the
    record is not kept (returned as given) and the block is ``base``.
    """
    if factor <= 1.0 or memory <= 0.0:
        return record, base
    earlier = record[1] if record is not None and record[0] > now else 0
    seconds = base * factor**earlier
    if cap > 0 and seconds > cap:
        seconds = cap
    return (now + memory, earlier + 1), seconds


def outlasts(held_until: float | None, now: float, seconds: float) -> bool:
    """Whether a new block of ``seconds`` from ``now`` should replace the one
    held until ``held_until`` (None: none): a live block that ends later (an
    admin's, say) is never shortened."""
    return held_until is None or held_until <= now or held_until < now + seconds
