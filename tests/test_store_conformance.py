"""The store conformance suite: every store answers as the rules in core say.

A store keeps records and applies a rule of :mod:`mailguard.core` to one
record atomically; it decides nothing itself.  So each store is checked
against :class:`Reference`, which is nothing but those pure functions over
plain dicts: random sequences of every primitive, on one
:class:`~mailguard.FakeClock`, must get the same answers from the store and
from the reference.  The suite runs on every store and face we have:
MemoryStore, RedisStore (sync and asyncio, on a real ``redis-server``), and a
new backend joins by adding a fixture to ``FACES``.

The clock only moves forward here.  Stepped back across the end of a block or
of a swap value, stores need not agree: a MemoryStore may already have purged
the ended entry where Redis still holds it until its expiry.  Windows are
clamped in both (see the stores' own tests).  MemoryStore's ``expire()`` is
part of the operations: purging what has expired must never change an answer.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis_server import RedisServer

from mailguard import FakeClock, MemoryStore, RedisStore
from mailguard.core import (
    BLOCKED,
    BUSY,
    JAILED,
    OK,
    OVER,
    Block,
    Log,
    Offences,
    Streak,
    begin_attempt,
    end_attempt,
    log_count,
    outlasts,
    penalty,
    slide,
    wait_until,
)
from mailguard.stores.base import Store

T0 = 1_700_000_000.0
INTERVAL = 1.5  # the login streak's interval in every settle / attempt below
BLOCK_FOR = 3.0
MAX_BLOCK = 10.0
_prefixes = itertools.count()


class Reference:
    """The store primitives as the core rules define them, over plain dicts.

    No eviction, no expiry, no clamping (the clock only moves forward): a
    record is kept forever, and the rules themselves decide when it no
    longer counts.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.logs: dict[tuple[str, str], Log] = {}
        self.streaks: dict[tuple[str, str], Streak] = {}
        self.offences: dict[tuple[str, str], Offences] = {}
        self.swaps: dict[tuple[str, str], tuple[float, str]] = {}
        self.held: dict[tuple[str, str], Block] = {}

    def _live(self, ns: str, key: str, now: float) -> Block | None:
        found = self.held.get((ns, key))
        return found if found is not None and found.until > now else None

    def _block(self, ns: str, key: str, now: float, seconds: float, reason: str) -> Block:
        made = Block(ns, key, reason, now, now + seconds)
        self.held[(ns, key)] = made
        return made

    def hit(
        self, ns: str, key: str, limit: int, window: float, jail: float = 0.0, detail: bool = True
    ) -> tuple[int, int, float]:
        now = self.clock()
        if jail > 0.0:
            found = self._live(ns, key, now)
            if found is not None:
                return BLOCKED, 0, wait_until(found.until, now)
        log, allowed, remaining, wait = slide(self.logs.get((ns, key)), now, limit, window)
        if allowed or jail <= 0.0:
            self.logs[(ns, key)] = log
            return (OK, remaining, wait) if allowed else (OVER, 0, wait)
        self.logs.pop((ns, key), None)  # a jail forgets the window: counting restarts
        self._block(ns, key, now, jail, "rate")
        return JAILED, 0, jail

    def peek(self, ns: str, key: str, window: float) -> int:
        return log_count(self.logs.get((ns, key)), self.clock(), window)

    def attempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        now = self.clock()
        found = self._live(ns, key, now)
        if found is not None:
            return BLOCKED, 0, wait_until(found.until, now)
        record, code, remaining, wait = begin_attempt(
            self.streaks.get((ns, key)), now, limit, interval, pending_ttl
        )
        self.streaks[(ns, key)] = record
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
        now = self.clock()
        record, reached, streak = end_attempt(
            self.streaks.pop((ns, key), None), now, failed, limit, interval, reset
        )
        if record is not None:
            self.streaks[(ns, key)] = record
        if not reached:
            return OK, streak, 0.0
        offences, seconds = penalty(
            self.offences.get((ns, key)), now, block_for, factor, max_block, memory
        )
        if offences is not None:
            self.offences[(ns, key)] = offences
        held = self._live(ns, key, now)
        if outlasts(None if held is None else held.until, now, seconds):
            self._block(ns, key, now, seconds, "failures")
        return JAILED, streak, seconds

    def swap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        now = self.clock()
        before = self.swaps.get((ns, key))
        self.swaps[(ns, key)] = (now + ttl, value)
        return before[1] if before is not None and before[0] > now else None

    def block(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        return self._block(ns, key, self.clock(), seconds, reason)

    def get_block(self, ns: str, key: str) -> Block | None:
        return self._live(ns, key, self.clock())

    def blocks(self, kind: str | None = None) -> list[Block]:
        now = self.clock()
        live = [b for b in self.held.values() if b.until > now and kind in (None, b.kind)]
        return sorted(live, key=lambda b: (b.until, b.kind, b.key))

    def _lift(self, doomed: list[tuple[str, str]]) -> int:
        now = self.clock()
        return sum(self.held.pop(k).until > now for k in doomed)

    def unblock(self, key: str, kind: str | None = None) -> int:
        return self._lift([k for k in self.held if k[1] == key and kind in (None, k[0])])

    def unblock_all(self, kind: str | None = None) -> int:
        return self._lift([k for k in self.held if kind in (None, k[0])])


# ------------------------------------------------------------ operations
NS_HIT = ("dos", "device")
KEYS = [f"k{i}" for i in range(5)]


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    key = st.sampled_from(KEYS)
    kinds = st.sampled_from(("login", "device", "dos"))
    op = st.one_of(
        st.tuples(
            st.just("hit"),
            st.sampled_from(NS_HIT),
            key,
            st.integers(1, 3),
            st.sampled_from([1.0, 2.5]),
            st.sampled_from([0.0, 0.0, 4.0]),
            st.booleans(),  # detail: False takes MemoryStore's inlined fast path
        ),
        st.tuples(st.just("peek"), st.sampled_from(NS_HIT), key, st.sampled_from([1.0, 2.5])),
        st.tuples(st.just("attempt"), key, st.integers(1, 3), st.sampled_from([0.1, 2.0])),
        st.tuples(
            st.just("settle"),
            key,
            st.booleans(),
            st.integers(1, 3),
            st.booleans(),
            st.sampled_from([1.0, 2.0]),
            st.sampled_from([0.0, 7.0]),
        ),
        st.tuples(
            st.just("swap"), key, st.sampled_from(["a", "b c", ""]), st.sampled_from([0.0, 2.0])
        ),
        st.tuples(st.just("block"), kinds, key, st.sampled_from([0.0, 1.0, 3.0])),
        st.tuples(st.just("get_block"), kinds, key),
        st.tuples(st.just("blocks"), st.sampled_from([None, "login", "device"])),
        st.tuples(st.just("unblock"), key, st.sampled_from([None, "login", "device"])),
        st.tuples(st.just("unblock_all"), st.sampled_from([None, "device"])),
        st.tuples(st.just("expire")),
        # 1.5 is the interval: a streak exactly that old still continues
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 4.0])),
    )
    return draw(st.lists(op, min_size=1, max_size=60))


def arguments(op: tuple[Any, ...]) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    """``op`` as a store method's name and arguments."""
    name = op[0]
    if name == "hit":
        return name, op[1:], {}
    if name == "attempt":
        _, key, limit, pending_ttl = op
        return name, ("login", key, limit, INTERVAL, pending_ttl), {}
    if name == "settle":
        _, key, failed, limit, reset, factor, memory = op
        kwargs = {"reset": reset, "factor": factor, "memory": memory, "max_block": MAX_BLOCK}
        return name, ("login", key, failed, limit, INTERVAL, BLOCK_FOR), kwargs
    if name == "swap":
        return name, ("seen", *op[1:]), {}
    if name == "block":
        return name, (*op[1:], "manual"), {}
    return name, op[1:], {}


def same(a: Any, b: Any) -> bool:
    """Equal, floats within 1e-6 (Blocks and tuples compared field by field)."""
    if isinstance(a, Block) and isinstance(b, Block):
        return (a.kind, a.key, a.reason) == (b.kind, b.key, b.reason) and same(
            (a.since, a.until), (b.since, b.until)
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=0, abs_tol=1e-6)
        )
    return bool(a == b) and type(a) is type(b)


# ----------------------------------------------------------------- faces
Maker = Callable[[FakeClock], Store]


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


@pytest.fixture(params=["memory", "redis-sync", "redis-async"])
def face(request: pytest.FixtureRequest) -> tuple[str, Maker]:
    """(how the store is called, a maker of the store on a clock)."""
    name: str = request.param
    if name == "memory":
        return "sync", lambda clock: MemoryStore(1_000_000, clock=clock)
    server: RedisServer = request.getfixturevalue("redis_server")

    def redis_store(clock: FakeClock) -> Store:
        return RedisStore(server.url, prefix=f"conf{next(_prefixes)}:", clock=clock)

    return name.removeprefix("redis-"), redis_store


async def _drive(store: Store, ops: list[tuple[Any, ...]], clock: FakeClock, mode: str) -> None:
    reference = Reference(clock)
    for step, op in enumerate(ops):
        if op[0] == "advance":
            clock.advance(op[1])
            continue
        if op[0] == "expire":
            if isinstance(store, MemoryStore):
                store.expire()
            continue
        name, args, kwargs = arguments(op)
        expected = getattr(reference, name)(*args, **kwargs)
        if name == "hit" and not op[-1] and expected[0] == OK:
            expected = (OK, -1, 0.0)  # detail=False: an allowed answer need not count
        if mode == "sync":
            got = getattr(store, name)(*args, **kwargs)
        else:
            got = await getattr(store, "a" + name)(*args, **kwargs)
        if name == "hit" and not op[-1] and got[0] == OK and expected == (OK, -1, 0.0):
            got = expected  # a store may work the detail out anyway (Redis does)
        assert same(expected, got), f"step {step} {op}: rules say {expected!r}, store {got!r}"


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations())
def test_store_answers_as_the_rules_say(
    face: tuple[str, Maker], ops: list[tuple[Any, ...]]
) -> None:
    mode, make = face
    clock = FakeClock(T0 + 0.123456789)
    store = make(clock)

    async def run() -> None:
        try:
            await _drive(store, ops, clock, mode)
        finally:
            await store.aclose()

    asyncio.run(run())


def test_a_streak_exactly_interval_old_survives_a_purge() -> None:
    """A purge must never drop a record the rules still count: a failure
    exactly ``interval`` after the last one continues the streak."""
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    reference = Reference(clock)
    for target in (store, reference):
        target.attempt("login", "k", 3, INTERVAL, 0.1)
    assert same(
        store.settle("login", "k", True, 3, INTERVAL, BLOCK_FOR),
        reference.settle("login", "k", True, 3, INTERVAL, BLOCK_FOR),
    )
    clock.advance(INTERVAL)
    store.expire()
    assert store.settle("login", "k", True, 3, INTERVAL, BLOCK_FOR) == (OK, 2, 0.0)
    assert reference.settle("login", "k", True, 3, INTERVAL, BLOCK_FOR) == (OK, 2, 0.0)


def test_busy_means_failures_and_attempts_under_way_reach_the_limit() -> None:
    """The rule itself, spelled out once (the suite above checks stores against it)."""
    record, code, remaining, _ = begin_attempt(None, T0, 2, INTERVAL, 5.0)
    assert (code, remaining) == (OK, 1)
    record, code, remaining, _ = begin_attempt(record, T0, 2, INTERVAL, 5.0)
    assert (code, remaining) == (OK, 0)
    assert begin_attempt(record, T0, 2, INTERVAL, 5.0)[1] == BUSY
    # a slot held past its ttl is free again
    assert begin_attempt(record, T0 + 5.0, 2, INTERVAL, 5.0)[1:3] == (OK, 1)
