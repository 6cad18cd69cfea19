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
    ``max_keys`` caps counters and blocks together.  When a new key needs
    room, expired counters go first, then the least recently seen counter of
    the largest namespace (so a flood of fresh addresses against one filter
    wears out that filter's own oldest counters and cannot wash out another
    filter's login streaks).  A live block is never evicted: when every key
    is a live block, a new block is refused and counted in :attr:`dropped`.
    Memory: about 120 bytes per key seen once (measured by
    ``benchmarks/core.py``); a busier key holds a ring of at most its limit
    slots, 8 bytes a slot plus 24 per recorded time (see
    :data:`mailguard.core.Ring`).

Time
    Every decision reads the store's clock (``time.time`` by default), so a
    :class:`~mailguard.FakeClock` given here drives every filter on the store.

Nothing runs in the background: expired keys are dropped as new keys need
room, by :meth:`MemoryStore.expire`, and when blocks are listed.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

from cachetools import TLRUCache

from ..core import (
    Block,
    Clock,
    FakeClock,
    Log,
    SystemClock,
    log_count,
    log_last,
    slide,
    streak,
    wait_until,
)
from .base import BLOCKED, BUSY, JAILED, OK, OVER, Store

__all__ = ["MemoryStore"]

_PURGE_EVERY = 32  # new keys between two purges of expired counters (up to twice as many)


def _float_clock(clock: Clock) -> Clock:
    """The clock as given when it is known to return floats, else wrapped to."""
    if isinstance(clock, (FakeClock, SystemClock)):
        return clock
    return lambda: float(clock())


def _block_end(_key: object, block: Block, _now: float) -> float:
    return block.until


class MemoryStore(Store):
    """Counters and blocks in this process's memory.

    :param max_keys: the most counters and blocks held at once (default
        100,000, about 12-20 MB when most keys are seen once).  Never
        exceeded.
    :param clock: where time comes from (default ``time.time``); pass a
        :class:`~mailguard.FakeClock` in tests.
    """

    local = True

    def __init__(self, max_keys: int = 100_000, *, clock: Clock | None = None) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ValueError(f"max_keys: must be a whole number >= 1, got {max_keys!r}")
        if clock is not None and not callable(clock):
            raise ValueError(f"clock: must be a callable returning seconds, got {clock!r}")
        self.max_keys = max_keys
        self._clock: Clock = time.time if clock is None else _float_clock(clock)
        self._lock = threading.Lock()
        # Per namespace: the recent and the aged counters, the aged keys in
        # least-recently-seen order (some since seen again or dropped: those
        # are skipped), the longest window seen, and how many counters it holds.
        self._spaces: dict[str, dict[str, Any]] = {}
        self._aged: dict[str, dict[str, Any]] = {}
        self._queue: dict[str, deque[str]] = {}
        self._ttl: dict[str, float] = {}
        self._sizes: dict[str, int] = {}
        self._counters = 0
        self._blocks: TLRUCache[tuple[str, str], Block] = TLRUCache(
            maxsize=max_keys, ttu=_block_end, timer=self._clock
        )
        self._nblocks = 0  # blocks held, ended ones included until dropped (cheap to read)
        self._purge_in = _PURGE_EVERY  # new keys until the next purge
        self._latest = -math.inf  # the latest clock reading hit() has used
        self.dropped = 0
        """Blocks that could not be recorded because every key was a live block."""

    # ------------------------------------------------------------ helpers
    def __len__(self) -> int:
        with self._lock:
            self._drop_ended(self._clock())
            return self._counters + self._nblocks

    def __repr__(self) -> str:
        return f"MemoryStore(max_keys={self.max_keys}, keys={len(self)})"

    def now(self) -> float:
        return self._clock()

    def _space(self, ns: str, ttl: float) -> dict[str, Any]:
        """The recent counters of ``ns`` (made when new); ``ttl`` is a window
        of its, the longest of which says when its counters have expired."""
        space = self._spaces.get(ns)
        if space is None:
            space = self._spaces[ns] = {}
            self._aged[ns] = {}
            self._queue[ns] = deque()
            self._ttl[ns] = ttl
            self._sizes[ns] = 0
        elif ttl > self._ttl[ns]:
            self._ttl[ns] = ttl
        return space

    def _take(self, ns: str, key: str) -> Any:
        """Pop the counter of ``key`` from ``ns`` (None when it has none)."""
        found = self._spaces[ns].pop(key, None)
        if found is None:
            aged = self._aged[ns]
            if aged:
                found = aged.pop(key, None)
        return found

    @staticmethod
    def _expired(value: Any, now: float, ttl: float) -> bool:
        if value.__class__ is tuple:
            return bool(value[0] <= now)
        return log_last(value) + ttl <= now

    def _turn(self, ns: str) -> bool:
        """Make the recent counters of ``ns`` the aged ones, when it has no
        aged counters left; False when it holds no counter at all.  (Whoever
        holds the recent dict must fetch it again.)"""
        if self._aged[ns]:
            return True
        recent = self._spaces[ns]
        if not recent:
            return False
        self._aged[ns] = recent
        self._spaces[ns] = {}
        self._queue[ns] = deque(recent)
        return True

    def _evict(self, ns: str) -> None:
        """Drop the least recently seen counter of ``ns``, which has one.

        O(1) amortised: each key is queued once per turn-over, and leaves
        the queue once."""
        aged = self._aged[ns]
        if not aged:
            self._turn(ns)
            aged = self._aged[ns]
        queue = self._queue[ns]
        # (a counter is never None; a key no longer aged was seen again or dropped)
        while aged.pop(queue.popleft(), None) is None:
            pass
        self._counters -= 1
        self._sizes[ns] -= 1

    def _purge(self, ns: str, now: float, most: int) -> int:
        """Drop up to ``most`` expired counters first in line in ``ns``;
        return how many went."""
        ttl = self._ttl[ns]
        gone = 0
        while gone < most and self._turn(ns):
            aged = self._aged[ns]
            queue = self._queue[ns]
            while queue[0] not in aged:
                queue.popleft()
            if not self._expired(aged[queue[0]], now, ttl):
                break
            del aged[queue.popleft()]
            gone += 1
        self._counters -= gone
        self._sizes[ns] -= gone
        return gone

    def _room(self, ns: str, now: float) -> bool:
        """Make room for one new counter in ``ns``; False if impossible.

        Every few new keys, drops the expired counters first in line in
        ``ns``.  When the store is full: an expired counter first in line
        in ``ns``, else the least recently seen counter of the largest
        namespace.  May turn ``ns`` over: fetch its recent dict afterwards.
        """
        self._purge_in -= 1
        if self._purge_in <= 0:
            self._purge_in = _PURGE_EVERY
            self._purge(ns, now, 2 * _PURGE_EVERY)
        if self._counters + self._nblocks >= self.max_keys:
            # _nblocks counts ended blocks not yet dropped: cheap, and on the
            # safe side; they are dropped for real before a counter is evicted.
            if self._nblocks:
                self._drop_ended(now)
            while self._counters + self._nblocks >= self.max_keys:
                if self._counters == 0:
                    return False
                sizes = self._sizes
                largest = ns if len(sizes) == 1 else max(sizes, key=sizes.__getitem__)
                if largest != ns and self._purge(ns, now, 1):
                    continue
                aged = self._aged[largest]
                if not aged:
                    self._turn(largest)
                    aged = self._aged[largest]
                queue = self._queue[largest]  # _evict(largest), inlined: this is a flood
                while aged.pop(queue.popleft(), None) is None:
                    pass
                self._counters -= 1
                sizes[largest] -= 1
        return True

    def _drop_ended(self, now: float) -> None:
        self._blocks.expire(now)
        self._nblocks = len(self._blocks)

    def _live_block(self, ns: str, key: str, now: float) -> Block | None:
        if not self._nblocks:
            return None
        found = self._blocks.get((ns, key))
        if found is not None and found.until > now:
            return found
        return None

    def _put_block(self, ns: str, key: str, now: float, seconds: float, reason: str) -> Block:
        made = Block(ns, key, reason, now, now + seconds)
        if (
            ns,
            key,
        ) not in self._blocks and self._counters + self._nblocks >= self.max_keys:
            self._drop_ended(now)
            while self._counters + self._nblocks >= self.max_keys:
                if not self._counters:
                    self.dropped += 1
                    return made
                sizes = self._sizes
                self._evict(max(sizes, key=sizes.__getitem__))
        if (ns, key) not in self._blocks:
            self._nblocks += 1
        self._blocks[(ns, key)] = made
        return made

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
        now = self._clock()
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
            space = self._spaces.get(ns)
            # popped and put back: the dicts stay in least-recently-seen order
            before: Log = None
            if space is not None:
                before = space.pop(key, None)
                if before is None:
                    aged = self._aged[ns]
                    if aged:
                        before = aged.pop(key, None)
            if type(before) is list and not detail:
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
                    space[key] = before  # type: ignore[index]
                    return OK, -1, 0.0
            if before is None:  # a new key (or a new namespace): make room first
                if space is None:
                    self._space(ns, window)
                elif window > self._ttl[ns]:
                    self._ttl[ns] = window
                if not self._room(ns, now):
                    return OK, limit - 1, window
                space = self._spaces[ns]  # _room may have turned the namespace over
                self._counters += 1
                self._sizes[ns] += 1
            log, allowed, remaining, wait = slide(before, now, limit, window, detail)
            if allowed or jail <= 0.0:
                space[key] = log  # type: ignore[index]
                return (OK, remaining, wait) if allowed else (OVER, 0, wait)
            self._counters -= 1
            self._sizes[ns] -= 1
            self._put_block(ns, key, now, jail, "rate")
            return JAILED, 0, jail
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
        now = self._clock()
        with self._lock:
            found = self._live_block(ns, key, now)
            if found is not None:
                return BLOCKED, 0, wait_until(found.until, now)
            self._space(ns, 0.0)
            state = self._take(ns, key)
            if state is None:
                if not self._room(ns, now):
                    return OK, limit - 1, 0.0
                self._counters += 1
                self._sizes[ns] += 1
                count, last, pending, pending_until = 0, -math.inf, 0, 0.0
            else:
                _, count, last, pending, pending_until = state
            if now - last > interval:
                count = 0
            if pending and now >= pending_until:
                pending = 0
            space = self._spaces[ns]
            if count + pending >= limit:
                space[key] = (
                    max(last + interval, pending_until),
                    count,
                    last,
                    pending,
                    pending_until,
                )
                return BUSY, 0, 1.0
            pending += 1
            pending_until = now + pending_ttl
            space[key] = (max(last + interval, pending_until), count, last, pending, pending_until)
            return OK, limit - count - pending, 0.0

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
        now = self._clock()
        with self._lock:
            self._space(ns, 0.0)
            state = self._take(ns, key)
            if state is None:
                count, last, pending, pending_until = 0, -math.inf, 0, 0.0
            else:
                self._counters -= 1
                self._sizes[ns] -= 1
                _, count, last, pending, pending_until = state
            if pending and now < pending_until:
                pending -= 1
            else:
                pending = 0
            if reset or now - last > interval:  # a streak that has lapsed counts 0
                count = 0
            code, blocked_for = OK, 0.0
            if failed:
                count = streak(count, last, now, interval)
                last = now
                if count >= limit:
                    code, blocked_for = (
                        JAILED,
                        self._penalty(ns, key, now, block_for, factor, max_block, memory),
                    )
                    held = self._live_block(ns, key, now)
                    if held is None or held.until < now + blocked_for:  # never shorten one
                        self._put_block(ns, key, now, blocked_for, "failures")
                    count, last = 0, -math.inf
            streak_now = count
            if (count or pending) and self._room(ns, now):
                self._counters += 1
                self._sizes[ns] += 1
                self._spaces[ns][key] = (
                    max(last + interval, pending_until if pending else -math.inf),
                    count,
                    last,
                    pending,
                    pending_until,
                )
            return code, streak_now, blocked_for

    def _penalty(
        self, ns: str, key: str, now: float, base: float, factor: float, cap: float, memory: float
    ) -> float:
        if factor <= 1.0 or memory <= 0.0:
            return base
        ns += "!offences"
        self._space(ns, memory)
        state = self._take(ns, key)
        if state is None:
            earlier = 0
            if not self._room(ns, now):
                return base
            self._counters += 1
            self._sizes[ns] += 1
        else:
            earlier = state[1] if state[0] > now else 0
        self._spaces[ns][key] = (now + memory, earlier + 1)
        seconds = base * factor**earlier
        return min(seconds, cap) if cap > 0 else seconds

    def swap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        now = self._clock()
        with self._lock:
            self._space(ns, 0.0)
            state = self._take(ns, key)
            if state is None:
                if not self._room(ns, now):
                    return None
                self._counters += 1
                self._sizes[ns] += 1
                previous = None
            else:
                previous = state[1] if state[0] > now else None
            self._spaces[ns][key] = (now + ttl, value)
            return previous

    # ------------------------------------------------------------- blocks
    def block(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        now = self._clock()
        with self._lock:
            return self._put_block(ns, key, now, seconds, reason)

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
        return lifted

    def expire(self) -> int:
        """Drop every expired counter and ended block now; return how many went."""
        now = self._clock()
        gone = 0
        with self._lock:
            for ns, recent in self._spaces.items():
                ttl = self._ttl[ns]
                aged = self._aged[ns]
                for space in (recent, aged):
                    dead = [k for k, v in space.items() if self._expired(v, now, ttl)]
                    for k in dead:
                        del space[k]
                    gone += len(dead)
                    self._sizes[ns] -= len(dead)
                # let go of the dropped keys' strings now
                self._queue[ns] = deque(k for k in self._queue[ns] if k in aged)
            self._counters -= gone
            gone += len(self._blocks.expire(now))  # len() would expire them first
            self._nblocks = len(self._blocks)
        return gone

    def clear(self) -> None:
        """Forget every counter and block."""
        with self._lock:
            self._spaces.clear()
            self._aged.clear()
            self._queue.clear()
            self._sizes.clear()
            self._counters = 0
            self._blocks.clear()
            self._nblocks = 0

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
