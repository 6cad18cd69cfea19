"""MemoryStore: the embedded default, bounded, thread-safe, no timers.

Layout
    *Counters* of each namespace live in two plain dicts, both in least-
    recently-seen order: the *recent* dict, into which every new or touched
    key goes (popped and put back at the end, which CPython dicts do in
    O(1)), and the *aged* dict, the keys not seen since the two last turned
    over.  When the aged dict runs empty, the recent one becomes the aged
    one and a queue of its keys, in order, is taken once.  The least recently
    seen counter of a namespace is then the first key of that queue still in
    the aged dict: found in O(1) amortised.  (Walking a dict from its front
    would not do: a dict deletes by leaving a dummy slot, and its iterator
    steps over every dummy left since the dict last resized, so each new key
    would cost time in proportion to the recent churn.)  A key seen once
    costs one dict entry and one float; see :mod:`mailguard.core` for the
    sliding-window state.
    *Blocks* live in a :class:`cachetools.TLRUCache` whose per-item expiry is
    the block's end, so ended blocks drop out by themselves.

Bounds
    ``max_keys`` caps counters and blocks together; ``max_bytes`` caps the
    bytes counted for them: :data:`KEY_BYTES` (256) per counter; for a busy
    key's ring, :data:`RING_BYTES` (96) plus :data:`SLOT_BYTES` (32) per
    item (a slot holds a float: 8 bytes in the list, 24 for the float; a
    ring has at most its limit slots, plus one item for its index); for a
    login streak, an offence count or a remembered value,
    :data:`STATE_BYTES` (192) plus the remembered string's size; and
    :data:`BLOCK_BYTES` (512) per block.  These are upper bounds of what
    Python allocates for them (tracemalloc, keys of up to 64 characters;
    the process's RSS grows by up to about 1.2 times as much, the
    allocator's own overhead).  By default ``max_bytes`` is 512 per key of
    ``max_keys``, at least 1 MiB: 51.2 MB for 100,000 keys.

    So the worst case an admin plans for is ``max_bytes``, whatever the
    limits: a key seen once counts 256 bytes (it holds about 115-190); a key
    that sends its whole limit L inside one window counts 384 + 32 L bytes
    (3.6 KB at a limit of 100), so the default store keeps about 14,000 such
    keys and evicts the least recently seen beyond that.  (Measured with
    ``benchmarks/core.py``: 20,000 keys sending 100 requests each in one
    window leave 14,285 keys held in 47.4 MiB, RSS up 58 MiB; before this
    bound, 100,000 such keys took 417 MiB.)

    When a new key needs room, expired counters go first, then the least
    recently seen counters of the namespace counted the most bytes (so a
    flood against one filter, of fresh addresses or of busy ones, wears out
    that filter's own oldest counters and cannot wash out another filter's
    login streaks).  A flood of new keys into a full store evicts a few at a
    time (one per 1,024 of ``max_keys``, at most 64), so it then holds up to
    that many fewer.  When a ring grows past ``max_bytes``, least recently
    seen counters go the same way, never that ring; a single ring larger
    than ``max_bytes`` is the one thing that takes the store over it, until
    the next new key needs room (size ``max_bytes`` for many rings of your
    highest limit).

Room for each namespace (filters sharing one store)
    A live block is never evicted, so blocks are capped instead: the live
    blocks of one namespace take at most a quarter of the store
    (:data:`BLOCK_SHARE`: ``max_keys // 4`` blocks, and ``max_bytes // 4``
    of their bytes), and all blocks together at most three quarters.  So
    counters always keep at least a quarter of ``max_keys`` and
    ``max_bytes``, and three namespaces (``login``, ``device``,
    ``device_changes``) can each fill their quarter without touching
    another's.  A block past its namespace's cap (or the total) is refused:
    counted in :attr:`dropped` and logged at ERROR once per flood (again
    only after the namespace has come down to half its cap).  The request
    that made it is still refused, and so are the key's next ones for a
    while: ``hit`` keeps the key's window and answers OVER (a rate limit
    instead of a jail: ``limit`` requests per ``window``), ``settle``
    answers JAILED and keeps the streak at ``limit``, so that ``attempt``
    answers BUSY until ``interval`` has passed.
    Counters are evicted only from the namespace counted the most bytes, so
    a namespace's counters are never evicted, for another namespace's keys
    or blocks, while it holds fewer bytes than that one: a flood of device
    jails or of fresh addresses cannot switch login counting off.

Time
    Every decision reads the store's clock (``time.time`` by default), so a
    :class:`~mailguard.FakeClock` given here drives every filter on the store.

Nothing runs in the background: expired counters are dropped as new keys
come and need room, by :meth:`MemoryStore.expire`, and ended blocks when
blocks are listed.  Every 128 new keys of a namespace, its aged counters go
together once the latest of them has expired, if they are all windows: then
none is looked at one by one, and an expired window stays for at most two of
the namespace's longest windows (plus the time its next 256 new keys take).
Otherwise (a login state, an offence count or a remembered value among them,
which end at their own time) those expired and first in line go, up to 256.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from cachetools import Cache, TLRUCache

from ..core import (
    Block,
    Clock,
    FakeClock,
    Log,
    Ring,
    Streak,
    SystemClock,
    begin_attempt,
    end_attempt,
    log_count,
    log_last,
    outlasts,
    penalty,
    slide,
    wait_until,
)
from ..options import option_error
from .base import BLOCKED, BUSY, JAILED, OK, OVER, Store
from .overlay import Overlay, OverlayChange, OverlayConflict
from .overlay import decode as overlay_decode
from .overlay import encode as overlay_encode

__all__ = [
    "BLOCK_BYTES",
    "BLOCK_SHARE",
    "DEFAULT_BYTES_PER_KEY",
    "KEY_BYTES",
    "RING_BYTES",
    "SLOT_BYTES",
    "STATE_BYTES",
    "MemoryStore",
]

_TAKEN: tuple[int, int, float] = (OK, -1, 0.0)  # hit's answer when a slot was taken, no detail
_PURGE_EVERY = 128  # new keys between two purges of expired counters,
_PURGE_MOST = 2 * _PURGE_EVERY  # up to this many of them
_EVICT_BATCH = 64  # the most counters evicted at a time when a new key finds the store full,
_EVICT_BATCH_PER = 1024  # one for each this many of max_keys (so 1 below 2048)

# What max_bytes counts (see "Bounds" above, and the README for the
# measurements these are upper bounds of).
KEY_BYTES = 256
"""Bytes counted for each counter: its share of the namespace's dicts and
queue, its key (a string of up to 64 ASCII characters) and one float."""
SLOT_BYTES = 32
"""Bytes counted for each slot of a busy key's ring: a list item and a float."""
RING_BYTES = 96
"""Bytes counted for a ring's list, on top of its slots."""
STATE_BYTES = 192
"""Bytes counted for a login streak, an offence count or a remembered value
(a tuple and its floats), on top of the remembered string's own size."""
BLOCK_BYTES = 512
"""Bytes counted for each block (a :class:`~mailguard.core.Block` in a TLRU cache)."""
DEFAULT_BYTES_PER_KEY = 512
"""``max_bytes`` by default: this many bytes per key of ``max_keys``, at least 1 MiB."""
BLOCK_SHARE = 4
"""The live blocks of one namespace take at most ``1 / BLOCK_SHARE`` of the
store (of ``max_keys`` and of ``max_bytes``), all blocks together at most
``(BLOCK_SHARE - 1) / BLOCK_SHARE``: see "Room for each namespace" above."""

_log = logging.getLogger("mailguard.store")

_RING_OF_TWO = RING_BYTES + 3 * SLOT_BYTES  # _extra of a ring of two slots ([pos, t, t])
_INF = math.inf
_NO_FAILURE = -math.inf  # a login streak's ``last`` before any failure
_nextafter = math.nextafter  # (Streak.expires, inlined in attempt and settle)
_NO_RING: Ring = []  # MemoryStore._hot_ring when there is no hot key (never written to)


def _streak(state: Any) -> Streak:
    """The :class:`~mailguard.core.Streak` a login counter holds.

    A login's counter is one flat tuple, ``(expires, failures, last, pending,
    pending_until)``: the end :meth:`Streak.expires` gives, then the streak's
    fields.  A plain tuple of numbers, not a Streak (a tuple subclass) inside
    a tuple: the garbage collector stops tracking a plain tuple of numbers the
    first time it sees one, and never a subclass's, so 100,000 counters held
    as Streaks were 200,000 objects that every full collection walked (about
    30 ms each; 0.8 µs per login in all, 0.5 since, in a long run of
    benchmarks/http_cost.py's ASGI login at 100,000 clients).
    It is also one object per counter instead of two.  Any other record (a
    ring, a remembered value: another kind of filter on this namespace)
    raises :class:`TypeError`, as it did when it was read as a Streak.
    """
    if state.__class__ is not tuple or len(state) != 5:
        raise TypeError(f"not a login counter: a {type(state).__name__}")
    return Streak._make(state[1:])


def _extra(value: Any) -> int:
    """The bytes counted for a counter holding ``value`` beyond KEY_BYTES."""
    kind = value.__class__
    if kind is float:
        return 0
    if kind is list:
        return RING_BYTES + SLOT_BYTES * len(value)
    remembered = value[1]  # (a streak's failure count: see _streak)
    return STATE_BYTES + (sys.getsizeof(remembered) if remembered.__class__ is str else 0)


def _float_clock(clock: Clock) -> Clock:
    """The clock as given when it is known to return floats, else wrapped to."""
    if isinstance(clock, (FakeClock, SystemClock)):
        return clock
    return lambda: float(clock())


def _block_end(_key: object, block: Block, _now: float) -> float:
    return block.until


class _Blocks(TLRUCache[tuple[str, str], Block]):
    """The blocks, each dropped at its end, with a count per namespace
    (ended blocks included until they are dropped, as ``len``)."""

    def __init__(self, maxsize: int, timer: Clock) -> None:
        super().__init__(maxsize=maxsize, ttu=_block_end, timer=timer)
        self.held: dict[str, int] = {}

    def _count(self, ns: str, change: int) -> None:
        held = self.held.get(ns, 0) + change
        if held:
            self.held[ns] = held
        else:
            self.held.pop(ns, None)

    def __setitem__(self, key: tuple[str, str], value: Block) -> None:
        self.expire()
        was = Cache.__contains__(self, key)  # held, live or ended
        super().__setitem__(key, value)
        now = Cache.__contains__(self, key)
        if now != was:
            self._count(key[0], 1 if now else -1)

    def __delitem__(self, key: tuple[str, str]) -> None:
        was = Cache.__contains__(self, key)
        try:
            super().__delitem__(key)
        finally:
            if was and not Cache.__contains__(self, key):
                self._count(key[0], -1)

    def expire(self, time: float | None = None) -> list[tuple[tuple[str, str], Block]]:
        gone: list[tuple[tuple[str, str], Block]] = super().expire(time)
        for (ns, _), _block in gone:
            self._count(ns, -1)
        return gone

    def clear(self) -> None:
        super().clear()
        self.held.clear()


class MemoryStore(Store):
    """Counters and blocks in this process's memory.

    :param max_keys: the most counters and blocks held at once (default
        100,000).  Never exceeded.
    :param max_bytes: the most bytes counted for them (default 512 per key
        of ``max_keys``, at least 1 MiB: 51.2 MB for the default
        ``max_keys``), whatever the limits.  What is counted is an upper
        bound of what Python allocates for them (see "Bounds" in
        :mod:`mailguard.stores.memory`); only a single ring larger than
        ``max_bytes`` on its own takes the store over it.
    :param clock: where time comes from (default ``time.time``); pass a
        :class:`~mailguard.FakeClock` in tests.
    """

    local = True

    def __init__(
        self,
        max_keys: int = 100_000,
        *,
        max_bytes: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise option_error("max_keys", f"must be a whole number >= 1, got {max_keys!r}")
        if max_bytes is None:
            max_bytes = max(DEFAULT_BYTES_PER_KEY * max_keys, 1 << 20)
        elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise option_error("max_bytes", f"must be a whole number >= 1, got {max_bytes!r}")
        if clock is not None and not callable(clock):
            raise option_error("clock", f"must be a callable returning seconds, got {clock!r}")
        self.max_keys = max_keys
        self.max_bytes = max_bytes
        self._clock: Clock = time.time if clock is None else _float_clock(clock)
        self._lock = threading.Lock()
        # Per namespace: the recent and the aged counters, the aged keys in
        # least-recently-seen order (some since seen again or dropped: those
        # are skipped), the longest window seen, and the bytes counted for
        # its counters beyond KEY_BYTES each (rings, login states).
        self._spaces: dict[str, dict[str, Any]] = {}
        self._aged: dict[str, dict[str, Any]] = {}
        self._queue: dict[str, deque[str]] = {}
        self._ttl: dict[str, float] = {}
        self._extras: dict[str, int] = {}
        # Per namespace, what its aged counters go together by (see _sweep):
        # [extras, seen], the bytes counted for them beyond KEY_BYTES each
        # (part of _extras), and the latest time any of them was seen (the
        # store's latest clock reading when they were turned over) if they
        # are all windows, else inf (a login state, an offence count or a
        # remembered value ends at its own time).  Once ``seen`` has left the
        # namespace's longest window, every one of them has expired.
        # (One attribute for both: CPython 3.11 keeps up to 29 attributes of
        # an instance in an array that its specialised attribute reads index,
        # and with a 30th every read of one in hit() is a dict lookup.)
        self._aged_as: dict[str, list[Any]] = {}
        self._counters = 0
        self._extra = 0  # the extras of all namespaces
        self._blocks = _Blocks(max_keys, self._clock)
        # the most live blocks of one namespace, and of all together
        most_blocks = min(max_keys, max_bytes // BLOCK_BYTES)
        self._block_caps = (
            max(1, most_blocks // BLOCK_SHARE),
            max(1, most_blocks * (BLOCK_SHARE - 1) // BLOCK_SHARE),
        )
        self._full: set[str] = set()  # namespaces whose refused blocks were logged
        self._nblocks = 0  # blocks held, ended ones included until dropped (cheap to read)
        # The store is full for a new counter of KEY_BYTES once it holds _cap
        # counters (max_keys and max_bytes in one number; see _recap).
        self._cap = 0
        self._recap()
        self._purge_in = _PURGE_EVERY  # new keys until the next purge
        # counters evicted at a time when a new key finds the store full
        self._batch = max(1, min(_EVICT_BATCH, max_keys // _EVICT_BATCH_PER))
        self._latest = -math.inf  # the latest clock reading hit() has used
        # The busy key hit() last took through its ring case, while it is
        # still the most recently seen counter of its namespace and holds
        # that very ring: its next request needs no dict (popping and putting
        # back the newest key changes nothing).  Anything else that changes a
        # recent dict forgets it first (hit, and _cool: _take, _turn, expire,
        # _forget_counters), ring included, so that a ring dropped from the
        # store is not held here.
        self._hot_key: str | None = None
        self._hot_ns = ""
        self._hot_ring = _NO_RING
        self._hot_slots = 0  # len(_hot_ring) - 1: they do not change while it is hot
        self._hot_window = 0.0  # the window it was made hot with (the ttl covers it)
        self._overlay = Overlay()
        self._overlay_lock = threading.Lock()
        self._overlay_watchers: list[Callable[[], None]] = []
        self.dropped = 0
        """Blocks refused: their namespace (or all blocks) held as many live
        blocks as it may (see "Room for each namespace" in
        :mod:`mailguard.stores.memory`), or no counter was left to make room."""

    # ------------------------------------------------- live configuration
    def read_overlay(self) -> Overlay:
        with self._overlay_lock:
            return self._overlay

    def overlay_version(self) -> int:
        return self._overlay.version

    def write_overlay(self, expected: int, values: Mapping[str, Any], change: OverlayChange) -> int:
        with self._overlay_lock:
            current = self._overlay
            if current.version != expected:
                raise OverlayConflict(
                    f"live configuration is at v{current.version}, not v{expected}"
                )
            version = expected + 1
            record = replace(change, version=version)
            changes = (*current.changes, record)
            data = overlay_encode(values, changes)  # bounded, storable (ValueError)
            self._overlay = overlay_decode(version, data)
            watchers = list(self._overlay_watchers)
        for callback in watchers:
            try:
                callback()
            except Exception:
                _log.exception("mailguard: a live configuration watcher failed")
        return version

    def watch_overlay(self, callback: Callable[[], None]) -> None:
        with self._overlay_lock:
            self._overlay_watchers.append(callback)

    @property
    def overlay_heard(self) -> bool:
        return True  # one process: every change is made here

    # ------------------------------------------------------------ helpers
    def __len__(self) -> int:
        with self._lock:
            self._drop_ended(self._clock())
            return self._counters + self._nblocks

    def __repr__(self) -> str:
        return (
            f"MemoryStore(max_keys={self.max_keys}, max_bytes={self.max_bytes}, keys={len(self)})"
        )

    @property
    def counted_bytes(self) -> int:
        """Bytes counted now for the counters and blocks held (see ``max_bytes``)."""
        with self._lock:
            self._drop_ended(self._clock())
            return self._bytes()

    def now(self) -> float:
        return self._clock()

    def _bytes(self) -> int:
        return KEY_BYTES * self._counters + self._extra + BLOCK_BYTES * self._nblocks

    def _recap(self) -> None:
        """Work out ``_cap`` again, after blocks or extras changed: a new
        counter of KEY_BYTES fits while ``_counters < _cap``, that is, while
        ``_counters + _nblocks < max_keys`` and ``_bytes() + KEY_BYTES <=
        max_bytes``."""
        self._cap = min(
            self.max_keys - self._nblocks,
            (self.max_bytes - self._extra - BLOCK_BYTES * self._nblocks) // KEY_BYTES,
        )

    def _space(self, ns: str, ttl: float) -> dict[str, Any]:
        """The recent counters of ``ns`` (made when new); ``ttl`` is a window
        of its, the longest of which says when its counters have expired."""
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = {}
            self._aged[ns] = {}
            self._queue[ns] = deque()
            self._ttl[ns] = ttl
            self._extras[ns] = 0
            self._aged_as[ns] = [0, _INF]
        elif ttl > self._ttl[ns]:
            self._ttl[ns] = ttl
        return space

    def _cool(self) -> None:
        """Forget hit()'s hot key (see ``_hot_key``), before a recent dict changes."""
        self._hot_key = None
        self._hot_ring = _NO_RING

    def _take(self, ns: str, key: str) -> Any:
        """Pop the counter of ``key`` from ``ns`` (None when it has none); it
        is still counted (see :meth:`_forget` and :meth:`_recount`)."""
        self._cool()
        found = self._spaces[ns].pop(key, None)
        if found is None:
            aged = self._aged[ns]
            if aged:
                found = aged.pop(key, None)
                if found is not None and found.__class__ is not float:
                    self._aged_as[ns][0] -= _extra(found)
        return found

    def _forget(self, ns: str, value: Any) -> None:
        """Stop counting a counter that was taken out (holding ``value``)."""
        self._counters -= 1
        extra = _extra(value)
        if extra:
            self._extra -= extra
            self._extras[ns] -= extra
            self._recap()

    def _recount(self, ns: str, before: Any, after: Any) -> int:
        """Count a counter's change from ``before`` to ``after``; return the
        bytes it grew by."""
        grown = _extra(after) - _extra(before)
        if grown:
            self._extra += grown
            self._extras[ns] += grown
            self._recap()
        return grown

    def _over(self) -> bool:
        """Whether the store is over ``max_bytes``."""
        return self._bytes() > self.max_bytes

    def _heaviest(self, spare: str = "") -> str:
        """The namespace whose counters are counted the most bytes (the
        first made, on a tie), leaving out ``spare`` when it holds one
        counter; "" when there is none."""
        best, most = "", 0
        for ns, recent in self._spaces.items():
            held = len(recent) + len(self._aged[ns])
            if held and not (ns == spare and held == 1):
                weight = KEY_BYTES * held + self._extras[ns]
                if weight > most:
                    best, most = ns, weight
        return best

    @staticmethod
    def _expired(value: Any, now: float, ttl: float) -> bool:
        """Whether a counter holding ``value`` is as good as none: a login
        state past its end, or a window whose every time has left the
        longest window of its namespace (the test core.slide applies)."""
        if value.__class__ is tuple:
            return bool(value[0] <= now)
        return log_last(value) <= now - ttl

    def _turn(self, ns: str) -> bool:
        """Make the recent counters of ``ns`` the aged ones, when it has no
        aged counters left; False when it holds no counter at all.  (Whoever
        holds the recent dict must fetch it again.)"""
        if self._aged[ns]:
            return True
        recent = self._spaces[ns]
        if not recent:
            return False
        self._cool()
        self._aged[ns] = recent
        self._spaces[ns] = {}
        self._queue[ns] = deque(recent)
        aged_as = self._aged_as[ns]
        aged_as[0] = self._extras[ns]  # (all of them were recent)
        # (only hit() writes windows, at its reading of the clock, which it
        # keeps in _latest; every other counter is a tuple)
        aged_as[1] = self._latest if tuple not in set(map(type, recent.values())) else _INF
        return True

    def _sweep(self, ns: str, now: float) -> None:
        """Drop expired counters of ``ns``: every :data:`_PURGE_EVERY` new keys.

        When the aged counters are all windows, they go together once the
        latest of them has expired (so none is looked at one by one, and an
        expired window is held for at most two of the namespace's longest
        windows); else those expired and first in line go, up to
        :data:`_PURGE_MOST`."""
        aged = self._aged[ns]
        aged_as = self._aged_as[ns]
        if aged and aged_as[1] < _INF:
            if aged_as[1] > now - self._ttl[ns]:  # (the test _expired applies)
                return
            self._counters -= len(aged)
            self._aged[ns] = {}
            self._queue[ns] = deque()  # (their keys: let go of them now)
            if aged_as[0]:
                self._count_out(ns, aged_as[0])
            self._turn(ns)
            return
        self._purge(ns, now, _PURGE_MOST)

    def _purge(self, ns: str, now: float, most: int) -> int:
        """Drop up to ``most`` expired counters first in line in ``ns``;
        return how many went."""
        cutoff = now - self._ttl[ns]  # as _expired works it out
        gone = 0
        freed = 0  # their bytes beyond KEY_BYTES
        aged = self._aged[ns]
        queue = self._queue[ns]
        take = aged.pop
        first = queue.popleft
        float_ = float
        while gone < most:
            try:
                key = first()
            except IndexError:  # so aged is empty too (each of its keys is queued)
                if aged:
                    break
                if freed:  # (counted out first: the recent counters become aged)
                    self._count_out(ns, freed)
                    freed = 0
                if not self._turn(ns):
                    break
                aged = self._aged[ns]
                queue = self._queue[ns]
                take = aged.pop
                first = queue.popleft
                continue
            value = take(key, None)
            # (_expired and _extra, inlined: this runs for every key under churn)
            if value.__class__ is float_:
                if value > cutoff:
                    # first in line again (popped and put back: only the
                    # queue's order matters, not the aged dict's)
                    aged[key] = value
                    queue.appendleft(key)
                    break
            elif value is None:  # seen again since (so recent now), or dropped
                continue
            elif value.__class__ is list:
                pos = value[0]
                if (value[pos - 1] if pos > 1 else value[-1]) > cutoff:  # core.log_last
                    aged[key] = value
                    queue.appendleft(key)
                    break
                freed += RING_BYTES + SLOT_BYTES * len(value)
            elif value[0] > now:  # a login state, an offence count, a remembered value
                aged[key] = value
                queue.appendleft(key)
                break
            else:
                freed += _extra(value)
            gone += 1
        if gone:
            self._counters -= gone
            if freed:
                self._count_out(ns, freed)
        return gone

    def _count_out(self, ns: str, freed: int) -> None:
        """Stop counting ``freed`` bytes of aged counters of ``ns`` that went."""
        self._extra -= freed
        self._extras[ns] -= freed
        self._aged_as[ns][0] -= freed
        self._recap()

    def _evict(self, ns: str, most: int, room: int) -> None:
        """Evict the least recently seen counters of ``ns`` until the store
        holds fewer than ``most`` counters and at most ``room`` bytes, or
        ``ns`` has none left.

        O(1) amortised per counter: each key is queued once per turn-over,
        and leaves the queue once."""
        counters = self._counters
        extra = self._extra
        freed = 0
        room -= BLOCK_BYTES * self._nblocks
        aged = self._aged[ns]
        queue = self._queue[ns]
        while counters >= most or KEY_BYTES * counters + extra > room:
            if not aged:
                if freed:  # (counted out first: the recent counters become aged)
                    self._count_out(ns, freed)
                    freed = 0
                if not self._turn(ns):
                    break
                aged = self._aged[ns]
                queue = self._queue[ns]
            value = aged.pop(queue.popleft(), None)
            if value is None:  # seen again since (so recent now), or dropped
                continue
            counters -= 1
            if value.__class__ is not float:
                cost = _extra(value)
                extra -= cost
                freed += cost
        self._counters = counters
        if freed:
            self._count_out(ns, freed)

    def _room(self, ns: str, now: float, extra: int) -> bool:
        """Make room for a new counter of ``KEY_BYTES + extra`` bytes in
        ``ns``, and count it; False if impossible.

        Every few new keys, drops the expired counters first in line in
        ``ns``.  When the store is full: an expired counter first in line in
        ``ns``, else the least recently seen counters of the heaviest
        namespace.  May turn ``ns`` over: fetch its recent dict afterwards.
        (:meth:`hit` has its own copy, for counters of KEY_BYTES.)
        """
        self._purge_in -= 1
        if self._purge_in <= 0:
            self._purge_in = _PURGE_EVERY
            self._sweep(ns, now)
        if (
            self._counters >= self._cap
            or (extra and self._bytes() + KEY_BYTES + extra > self.max_bytes)
        ) and not self._make_room(ns, now, extra):
            return False
        self._counters += 1
        if extra:
            self._extra += extra
            self._extras[ns] += extra
            self._recap()
        return True

    def _make_room(self, ns: str, now: float, extra: int) -> bool:
        """:meth:`_room` when the store is full."""
        # _nblocks counts ended blocks not yet dropped: cheap, and on the safe
        # side; they are dropped for real before a counter is evicted.
        if self._nblocks:
            self._drop_ended(now)
        most = self.max_keys - self._nblocks  # counters, the new one included
        room = self.max_bytes - KEY_BYTES - extra  # bytes for the rest
        if self._counters < most and self._bytes() <= room:
            return True  # ended blocks made room
        # Room for this counter and, as a flood goes on, for the next few:
        # evicting a few at a time costs a new key less than one at a time.
        spare = self._batch - 1
        most -= spare
        room -= KEY_BYTES * spare
        while self._counters and (self._counters >= most or self._bytes() > room):
            heaviest = ns if len(self._spaces) == 1 else self._heaviest()
            if heaviest != ns and self._purge(ns, now, 1):
                continue
            self._evict(heaviest, most, room)
        return self._counters < most + spare and self._bytes() <= room + KEY_BYTES * spare

    def _shed(self, ns: str) -> None:
        """Evict least recently seen counters until the store is within
        ``max_bytes`` again, after a ring of ``ns`` grew; never that ring,
        the most recent counter of ``ns`` (which may stay over on its own)."""
        while self._over():
            heaviest = self._heaviest(ns)
            if not heaviest:
                return
            if heaviest == ns:  # one at a time: the last one there is the ring
                self._evict(ns, self._counters, self._bytes() - 1)
            else:
                self._evict(heaviest, self._counters + 1, self.max_bytes)

    def _drop_ended(self, now: float) -> None:
        self._blocks.expire(now)
        if self._nblocks != len(self._blocks):
            self._nblocks = len(self._blocks)
            self._recap()

    def _live_block(self, ns: str, key: str, now: float) -> Block | None:
        if not self._nblocks:
            return None
        found = self._blocks.get((ns, key))
        if found is not None and found.until > now:
            return found
        return None

    def _put_block(
        self, ns: str, key: str, now: float, seconds: float, reason: str
    ) -> tuple[Block, bool]:
        """Record a block; ``(block, False)`` when it was refused (counted in
        :attr:`dropped`)."""
        made = Block(ns, key, reason, now, now + seconds)
        if (ns, key) not in self._blocks:
            self._drop_ended(now)
            held = self._blocks.held.get(ns, 0)
            ns_most, all_most = self._block_caps
            if held >= ns_most or self._nblocks >= all_most:
                self._refuse(ns, held)
                return made, False
            if held < ns_most // 2:
                self._full.discard(ns)
            # room for one more block: a key, and BLOCK_BYTES
            most = self.max_keys - 1
            room = self.max_bytes - BLOCK_BYTES
            while self._counters + self._nblocks > most or self._bytes() > room:
                heaviest = self._heaviest()
                if not heaviest:
                    self._refuse(ns, held)
                    return made, False
                self._evict(heaviest, most - self._nblocks + 1, room)
            self._nblocks += 1
            self._recap()
        self._blocks[(ns, key)] = made
        return made, True

    def _refuse(self, ns: str, held: int) -> None:
        """Count a refused block; log the first of a namespace's flood."""
        self.dropped += 1
        if ns not in self._full:
            self._full.add(ns)
            _log.error(
                "mailguard store blocks full ns=%s blocks=%d all_blocks=%d max_keys=%d:"
                " a flood of blocks; new blocks of this namespace are refused (the"
                " requests that make them are still refused) until some end",
                ns,
                held,
                self._nblocks,
                self.max_keys,
            )

    # ----------------------------------------------------------- counting
    def hit(
        self,
        ns: str,
        key: str,
        limit: int,
        window: float,
        jail: float = 0.0,
        detail: bool = True,
    ) -> tuple[int, int, float]:
        clock = self._clock  # (a local: a call of an instance attribute is not specialised)
        now = clock()
        lock = self._lock
        lock.acquire()  # not ``with``: this runs on every request, and costs half as much
        try:
            # Windows see time move forwards only (see core.slide): a clock
            # that steps back is held at the latest reading.
            if now < self._latest:
                now = self._latest
            else:
                self._latest = now
            if jail > 0.0 and self._nblocks:
                found = self._live_block(ns, key, now)
                if found is not None:
                    return BLOCKED, 0, wait_until(found.until, now)
            if (
                not detail
                and key == self._hot_key
                and ns == self._hot_ns
                and window <= self._hot_window
            ):
                # The busy key of the last request again, still the most
                # recently seen counter of its namespace, its ring unchanged
                # (see _hot_key), at a window its namespace's ttl covers:
                # the ring case below without the dict.
                ring = self._hot_ring
                pos = ring[0]
                slots = self._hot_slots
                if ring[pos] <= now - window and slots <= limit:
                    ring[pos] = now
                    ring[0] = pos + 1 if pos < slots else 1
                    return _TAKEN
            if self._hot_key is not None:  # every way on below may move or change counters
                self._hot_key = None  # (_cool, inlined)
                self._hot_ring = _NO_RING
            before: Log
            try:
                space = self._spaces[ns]
            except KeyError:  # a new namespace
                space = self._space(ns, window)
                before = None
            else:
                # popped and put back: the dicts stay in least-recently-seen order
                before = space.pop(key, None)
                if before is None:
                    aged = self._aged[ns]  # not seen since the namespace turned over?
                    if aged:
                        before = aged.pop(key, None)
                        if before is not None and before.__class__ is not float:
                            self._aged_as[ns][0] -= _extra(before)  # (recent now)
                if window > self._ttl[ns]:  # (a key seen before too: its counter
                    self._ttl[ns] = window  # must outlive the longest window)
            if before is None:
                # A new key: make room and count it (_room, inlined: this
                # is the whole work of a flood of fresh addresses), then
                # record this request, as core.slide records a first one.
                purge_in = self._purge_in - 1
                if purge_in and self._counters < self._cap:
                    self._purge_in = purge_in
                    self._counters += 1
                    space[key] = now
                    return OK, limit - 1, window
                if purge_in:
                    self._purge_in = purge_in
                else:
                    self._purge_in = _PURGE_EVERY
                    self._sweep(ns, now)
                if self._counters >= self._cap and not self._make_room(ns, now, 0):
                    return OK, limit - 1, window
                self._counters += 1
                # (fetched again: purging or making room may have turned
                # the namespace over)
                self._spaces[ns][key] = now
                return OK, limit - 1, window
            if type(before) is float:
                if before <= now - window:  # expired: this request starts again
                    space[key] = now
                    return OK, limit - 1, window
                if limit > 1:
                    # core.slide's second allowed request, inlined: under churn
                    # it is most requests of a key seen before (the same rule,
                    # same tests; property-tested against slide)
                    space[key] = [1, before, now]
                    # a ring made: count its bytes (_recount, _recap and
                    # _over, inlined)
                    extra = self._extra + _RING_OF_TWO
                    self._extra = extra
                    self._extras[ns] += _RING_OF_TWO
                    nblocks = self._nblocks
                    fit = (self.max_bytes - extra - BLOCK_BYTES * nblocks) // KEY_BYTES
                    most = self.max_keys - nblocks
                    self._cap = fit if fit < most else most
                    if self._counters > fit:  # over max_bytes
                        self._shed(ns)
                    return OK, limit - 2, before + window - now
            elif type(before) is list and not detail:
                # The O(1) case of core.slide, inlined because it is the whole
                # work of most requests from a busy client: the oldest slot has
                # expired, so it takes this request.  (Same rule, same tests;
                # core.Ring: item 0 is the oldest slot's index, slots from 1.)
                pos = before[0]
                end = len(before)
                if before[pos] <= now - window and end <= limit + 1:
                    before[pos] = now
                    pos += 1
                    before[0] = 1 if pos == end else pos
                    space[key] = before
                    # the most recently seen counter now: the next request
                    # of this key may skip the dict (see _hot_key)
                    self._hot_key = key
                    self._hot_ns = ns
                    self._hot_ring = before
                    self._hot_slots = end - 1
                    self._hot_window = window
                    return _TAKEN
            log, allowed, remaining, wait = slide(before, now, limit, window, detail)
            if allowed or jail <= 0.0:
                space[key] = log
                if not allowed:
                    return OVER, 0, wait
                # a ring made, grown, shrunk or given up: count its bytes
                if (
                    log is not before
                    and (type(log) is list or type(before) is list)
                    and self._recount(ns, before, log) > 0
                    and self._over()
                ):
                    self._shed(ns)
                return OK, remaining, wait
            # The block replaces the counter (as in settle): counted out first,
            # so that no counter held out of the dicts is counted while room
            # is made for the block (which may turn the namespace over).
            self._forget(ns, before)
            if self._put_block(ns, key, now, jail, "rate")[1]:
                return JAILED, 0, jail
            # No room for the jail: still refused, and the window is kept, so
            # the key stays limited to ``limit`` per window (see "Room for
            # each namespace"): counted again.  (Fetched again: the namespace
            # may have turned.)
            self._spaces[ns][key] = log
            self._counters += 1
            extra = _extra(log)
            if extra:
                self._extra += extra
                self._extras[ns] += extra
                self._recap()
                if extra > _extra(before) and self._over():
                    self._shed(ns)
            return OVER, 0, wait
        finally:
            lock.release()

    def peek(self, ns: str, key: str, window: float) -> int:
        now = self._clock()
        with self._lock:
            space = self._spaces.get(ns)
            if space is None:
                return 0
            value = space.get(key)
            if value is None:
                value = self._aged[ns].get(key)
            if value is None or value.__class__ is tuple:
                return 0
            return log_count(value, now, window)

    def attempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        # (the clock read into a local, then called: Python 3.11 specializes
        # that read of an instance's own attribute, not a method call's lookup)
        clock = self._clock
        now = clock()
        lock = self._lock
        lock.acquire()  # not ``with``: this runs on every login
        try:
            if self._nblocks:
                found = self._live_block(ns, key, now)
                if found is not None:
                    return BLOCKED, 0, wait_until(found.until, now)
            space = self._spaces.get(ns)
            if space is None:
                space = self._space(ns, 0.0)
            # (_take, inlined; a namespace of login states needs no ttl)
            self._hot_key = None  # (_cool: a recent dict changes)
            self._hot_ring = _NO_RING
            state = space.pop(key, None)
            if state is None:
                aged = self._aged[ns]
                if aged:
                    state = aged.pop(key, None)
                    if state is not None and state.__class__ is not float:
                        self._aged_as[ns][0] -= _extra(state)  # (taken out)
            if state is None:
                if limit < 1:
                    return self._attempt_rest(ns, key, now, None, limit, interval, pending_ttl)
                # A first attempt (most logins): _room(ns, now, STATE_BYTES),
                # then core.begin_attempt's answer for no record, inlined.
                self._purge_in -= 1
                if self._purge_in <= 0:
                    self._purge_in = _PURGE_EVERY
                    self._sweep(ns, now)
                if (
                    self._counters >= self._cap
                    or KEY_BYTES * self._counters + self._extra + BLOCK_BYTES * self._nblocks
                    > self.max_bytes - KEY_BYTES - STATE_BYTES
                ) and not self._make_room(ns, now, STATE_BYTES):
                    return OK, limit - 1, 0.0
                self._counters += 1
                extra = self._extra = self._extra + STATE_BYTES
                self._extras[ns] += STATE_BYTES
                blocks = self._nblocks  # (_recap, inlined)
                most = self.max_keys - blocks
                fit = (self.max_bytes - extra - BLOCK_BYTES * blocks) // KEY_BYTES
                self._cap = fit if fit < most else most  # (min(), without the call)
                until = now + pending_ttl
                # Streak(0, -inf, 1, until), which expires at ``until``
                # (fetched again: making room may have turned the namespace over)
                self._spaces[ns][key] = (until, 0, _NO_FAILURE, 1, until)
                return OK, limit - 1, 0.0
            if state.__class__ is not tuple or len(state) != 5:  # not a streak (_streak)
                return self._attempt_rest(ns, key, now, state, limit, interval, pending_ttl)
            # The key's streak (a login after a failure): core.begin_attempt, inlined.
            _, count, last, pending, pending_until = state
            if now - last > interval:
                count = 0
            if pending and now >= pending_until:
                pending = 0
            if count + pending >= limit:
                code, remaining, wait = BUSY, 0, 1.0
            else:
                pending += 1
                pending_until = now + pending_ttl
                code, remaining, wait = OK, limit - count - pending, 0.0
            # Streak.expires, inlined
            ends = last + interval
            while ends - last <= interval:  # rounding: step up until it has lapsed
                ends = _nextafter(ends, _INF)
            held = pending_until if pending else _NO_FAILURE
            space[key] = (ends if ends > held else held, count, last, pending, pending_until)
            return code, remaining, wait
        finally:
            lock.release()

    def _attempt_rest(
        self,
        ns: str,
        key: str,
        now: float,
        state: Any,
        limit: int,
        interval: float,
        pending_ttl: float,
    ) -> tuple[int, int, float]:
        """:meth:`attempt` once the key's counter (``state``, None when it
        has none) has been taken out."""
        if state is None and not self._room(ns, now, STATE_BYTES):
            return OK, limit - 1, 0.0
        record, code, remaining, wait = begin_attempt(
            None if state is None else _streak(state), now, limit, interval, pending_ttl
        )
        self._spaces[ns][key] = (record.expires(interval), *record)
        return code, remaining, wait

    def settle(
        self,
        ns: str,
        key: str,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        *,
        reset: bool = False,
        factor: float = 1.0,
        max_block: float = 0.0,
        memory: float = 0.0,
    ) -> tuple[int, int, float]:
        clock = self._clock  # (a local, then the call: see attempt)
        now = clock()
        lock = self._lock
        lock.acquire()  # not ``with``: this runs on every login
        try:
            space = self._spaces.get(ns)
            if space is None:
                self._space(ns, 0.0)
                return self._settle_rest(
                    ns, key, now, None, failed, limit, interval, block_for,
                    reset, factor, max_block, memory,
                )  # fmt: skip
            # (_take, inlined; a namespace of login states needs no ttl)
            self._hot_key = None  # (_cool: a recent dict changes)
            self._hot_ring = _NO_RING
            state = space.pop(key, None)
            if state is None:
                aged = self._aged[ns]
                if aged:
                    state = aged.pop(key, None)
                    if state is not None and state.__class__ is not float:
                        self._aged_as[ns][0] -= _extra(state)  # (taken out)
            if state is None or state.__class__ is not tuple or len(state) != 5:  # (_streak)
                return self._settle_rest(
                    ns, key, now, state, failed, limit, interval, block_for,
                    reset, factor, max_block, memory,
                )  # fmt: skip
            # The attempt's own streak (most logins): core.end_attempt, inlined
            # until it is known that no block is due.
            _, count, last, pending, pending_until = state
            if pending and now < pending_until:
                pending -= 1
            else:
                pending = 0
            if reset or now - last > interval:
                count = 0
            if failed:
                # core.streak, inlined
                count = count + 1 if count > 0 and now - last <= interval else 1
                if count >= limit:  # a block is due
                    return self._settle_rest(
                        ns, key, now, state, failed, limit, interval, block_for,
                        reset, factor, max_block, memory,
                    )  # fmt: skip
                last = now
            if not count and not pending:  # nothing left to remember: _forget, inlined
                self._counters -= 1
                extra = self._extra = self._extra - STATE_BYTES
                self._extras[ns] -= STATE_BYTES
                blocks = self._nblocks  # (_recap, inlined)
                most = self.max_keys - blocks
                fit = (self.max_bytes - extra - BLOCK_BYTES * blocks) // KEY_BYTES
                self._cap = fit if fit < most else most  # (min(), without the call)
                return OK, 0, 0.0
            # The same counter kept, of the same bytes: _forget, then _room,
            # which needs no room then unless the store was already full, and
            # does nothing else unless it is time to purge.
            purge_in = self._purge_in - 1
            if purge_in and self._counters <= self._cap:
                self._purge_in = purge_in
            else:
                # (counted out first: a purge may turn the namespace over,
                # and no counter held out of the dicts may be counted then)
                self._forget(ns, state)
                if not self._room(ns, now, STATE_BYTES):
                    return OK, count, 0.0
            # Streak.expires, inlined
            ends = last + interval
            while ends - last <= interval:  # rounding: step up until it has lapsed
                ends = _nextafter(ends, _INF)
            held = pending_until if pending else _NO_FAILURE
            # (fetched again: the purge may have turned the namespace over)
            self._spaces[ns][key] = (
                ends if ends > held else held,
                count,
                last,
                pending,
                pending_until,
            )
            return OK, count, 0.0
        finally:
            lock.release()

    def _settle_rest(
        self,
        ns: str,
        key: str,
        now: float,
        state: Any,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        reset: bool,
        factor: float,
        max_block: float,
        memory: float,
    ) -> tuple[int, int, float]:
        """:meth:`settle` once the key's counter (``state``, None when it
        has none) has been taken out."""
        if state is not None:
            self._forget(ns, state)
        record, reached, streak_now = end_attempt(
            None if state is None else _streak(state), now, failed, limit, interval, reset
        )
        code, blocked_for = OK, 0.0
        if reached:
            code = JAILED
            blocked_for = self._penalty(ns, key, now, block_for, factor, max_block, memory)
            held = self._live_block(ns, key, now)
            if (
                outlasts(None if held is None else held.until, now, blocked_for)
                and not self._put_block(ns, key, now, blocked_for, "failures")[1]
            ):
                # No room for the block: keep the streak at the limit, so
                # that attempts are refused (BUSY) for ``interval`` more.
                pending = (0, 0.0) if record is None else record[2:]
                record = Streak(limit, now, *pending)
        if record is not None and self._room(ns, now, STATE_BYTES):
            self._spaces[ns][key] = (record.expires(interval), *record)
        return code, streak_now, blocked_for

    def _penalty(
        self, ns: str, key: str, now: float, base: float, factor: float, cap: float, memory: float
    ) -> float:
        if factor <= 1.0 or memory <= 0.0:
            return base
        ns += "!offences"
        self._space(ns, memory)
        record = self._take(ns, key)
        if record is None and not self._room(ns, now, STATE_BYTES):
            return base
        record, seconds = penalty(record, now, base, factor, cap, memory)
        self._spaces[ns][key] = record
        return seconds

    def swap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        now = self._clock()
        with self._lock:
            self._space(ns, 0.0)
            state = self._take(ns, key)
            after = (now + ttl, value)
            if state is None:
                if not self._room(ns, now, _extra(after)):
                    return None
                self._spaces[ns][key] = after
                return None
            previous = state[1] if state[0] > now else None
            self._spaces[ns][key] = after
            if self._recount(ns, state, after) > 0 and self._over():
                self._shed(ns)
            return previous

    # ------------------------------------------------------------- blocks
    def block(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        now = self._clock()
        with self._lock:
            return self._put_block(ns, key, now, seconds, reason)[0]

    def get_block(self, ns: str, key: str) -> Block | None:
        now = self._clock()
        with self._lock:
            return self._live_block(ns, key, now)

    def blocks(self, kind: str | None = None) -> list[Block]:
        now = self._clock()
        with self._lock:
            self._drop_ended(now)
            found = [b for b in self._blocks.values() if kind is None or b.kind == kind]
        return sorted((b for b in found if b.until > now), key=lambda b: (b.until, b.kind, b.key))

    def unblock(self, key: str, kind: str | None = None) -> int:
        with self._lock:
            doomed = [k for k in self._blocks if k[1] == key and (kind is None or k[0] == kind)]
            # pop, not del: a block that ends meanwhile makes ``del`` raise KeyError
            return self._lift(doomed)

    def unblock_all(self, kind: str | None = None) -> int:
        with self._lock:
            doomed = [k for k in self._blocks if kind is None or k[0] == kind]
            return self._lift(doomed)

    def _lift(self, doomed: list[tuple[str, str]]) -> int:
        lifted = sum(self._blocks.pop(k, None) is not None for k in doomed)
        self._nblocks = len(self._blocks)
        self._recap()
        return lifted

    def expire(self) -> int:
        """Drop every expired counter and ended block now; return how many went."""
        now = self._clock()
        gone = 0
        with self._lock:
            self._cool()
            for ns, recent in self._spaces.items():
                ttl = self._ttl[ns]
                aged = self._aged[ns]
                for space in (recent, aged):
                    dead = [k for k, v in space.items() if self._expired(v, now, ttl)]
                    for k in dead:
                        value = space.pop(k)
                        self._forget(ns, value)
                        if space is aged:
                            self._aged_as[ns][0] -= _extra(value)
                    gone += len(dead)
                # let go of the dropped keys' strings now
                self._queue[ns] = deque(k for k in self._queue[ns] if k in aged)
            gone += len(self._blocks.expire(now))  # len() would expire them first
            self._nblocks = len(self._blocks)
            self._recap()
        return gone

    def clear_counters(self) -> None:
        """Forget every counter; keep the blocks."""
        with self._lock:
            self._forget_counters()
            self._recap()

    def clear(self) -> None:
        """Forget every counter and block."""
        with self._lock:
            self._forget_counters()
            self._blocks.clear()
            self._nblocks = 0
            self._recap()

    def _forget_counters(self) -> None:
        """Drop every counter (the caller holds the lock and recaps)."""
        self._cool()
        self._spaces.clear()
        self._aged.clear()
        self._queue.clear()
        self._ttl.clear()
        self._extras.clear()
        self._aged_as.clear()
        self._counters = 0
        self._extra = 0

    # -------------------------------------------------------------- async
    # Memory operations take microseconds and never wait on I/O, so the
    # coroutines run them in place: no thread hop, no event-loop blocking.
    async def ahit(
        self,
        ns: str,
        key: str,
        limit: int,
        window: float,
        jail: float = 0.0,
        detail: bool = True,
    ) -> tuple[int, int, float]:
        return self.hit(ns, key, limit, window, jail, detail)

    async def apeek(self, ns: str, key: str, window: float) -> int:
        return self.peek(ns, key, window)

    async def aattempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        return self.attempt(ns, key, limit, interval, pending_ttl)

    async def asettle(
        self,
        ns: str,
        key: str,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        *,
        reset: bool = False,
        factor: float = 1.0,
        max_block: float = 0.0,
        memory: float = 0.0,
    ) -> tuple[int, int, float]:
        return self.settle(
            ns,
            key,
            failed,
            limit,
            interval,
            block_for,
            reset=reset,
            factor=factor,
            max_block=max_block,
            memory=memory,
        )

    async def aswap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        return self.swap(ns, key, value, ttl)

    async def ablock(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        return self.block(ns, key, seconds, reason)

    async def aget_block(self, ns: str, key: str) -> Block | None:
        return self.get_block(ns, key)

    async def ablocks(self, kind: str | None = None) -> list[Block]:
        return self.blocks(kind)

    async def aunblock(self, key: str, kind: str | None = None) -> int:
        return self.unblock(key, kind)

    async def aunblock_all(self, kind: str | None = None) -> int:
        return self.unblock_all(kind)
