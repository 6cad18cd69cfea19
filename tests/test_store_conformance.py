"""The store conformance suite: every store answers as the rules in core say.

A store keeps records and applies a rule of :mod:`mailguard.core` to one
record atomically; it decides nothing itself.  So each store is checked
against :class:`Reference`, which is nothing but those pure functions over
plain dicts: random sequences of every primitive, on one
:class:`~mailguard.FakeClock`, must get the same answers from the store and
from the reference.  The suite runs on every store and face we have:
MemoryStore, RedisStore (sync and asyncio, on a real ``redis-server``, on
Sentinel and on a 3-master + 3-replica Cluster: ``tests/redis_topologies.py``,
marked ``servers``), and a new backend joins by adding a fixture to ``FACES``.

The clock only moves forward here.  Stepped back across the end of a block or
of a swap value, stores need not agree: a MemoryStore may already have purged
the ended entry where Redis still holds it until its expiry.  Windows are
clamped in both (``test_clock_stepping_back_is_clamped``).  MemoryStore's
``expire()`` is part of the operations: purging what has expired must never
change an answer.

Below the property suite, the worked scenarios (hits, jails, logins, swaps,
admin blocks, threads) run on every store too: each exists once, here, and
the stores' own test files keep only what is theirs alone.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis_server import RedisServer
from redis_topologies import Cluster, Sentinels
from threads import run_threads

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
OP_INTERVAL = 1.5  # the login streak's interval in every settle / attempt below
OP_BLOCK_FOR = 3.0
OP_MAX_BLOCK = 10.0
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
        self.longest: dict[str, float] = {}  # the longest window each namespace was hit with

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
        self.longest[ns] = max(window, self.longest.get(ns, 0.0))
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
        # 30 s outlasts any failures block (3 s, at most 10 s): a settle must keep it
        st.tuples(st.just("block"), kinds, key, st.sampled_from([0.0, 1.0, 3.0, 30.0])),
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
        return name, ("login", key, limit, OP_INTERVAL, pending_ttl), {}
    if name == "settle":
        _, key, failed, limit, reset, factor, memory = op
        kwargs = {"reset": reset, "factor": factor, "memory": memory, "max_block": OP_MAX_BLOCK}
        return name, ("login", key, failed, limit, OP_INTERVAL, OP_BLOCK_FOR), kwargs
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


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[Cluster]:
    """3 masters + 3 replicas, started once for the module (a few seconds)."""
    with Cluster.for_tests() as running:
        yield running


@pytest.fixture(scope="module")
def redis_sentinels() -> Iterator[Sentinels]:
    with Sentinels.for_tests() as running:
        yield running


# Sentinel and Cluster start real topologies (tests/redis_topologies.py)
TOPOLOGIES = [
    pytest.param(name, marks=pytest.mark.servers)
    for name in ("sentinel-sync", "sentinel-async", "cluster-sync", "cluster-async")
]


def _redis_url(request: pytest.FixtureRequest, name: str) -> str:
    """The URL of the Redis a face or a scenario named ``name`` runs on."""
    if name.startswith("sentinel"):
        return str(request.getfixturevalue("redis_sentinels").url)
    if name.startswith("cluster"):
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_server").url)


@pytest.fixture(params=["memory", "redis-sync", "redis-async", *TOPOLOGIES])
def face(request: pytest.FixtureRequest) -> tuple[str, Maker]:
    """(how the store is called, a maker of the store on a clock)."""
    name: str = request.param
    if name == "memory":
        return "sync", lambda clock: MemoryStore(1_000_000, clock=clock)
    url = _redis_url(request, name)

    def redis_store(clock: FakeClock) -> Store:
        # (the rules are judged here, not latency: a loaded CI machine once made
        # one async batch outlast the 0.25 s default and hypothesis call it flaky)
        return RedisStore(url, prefix=f"conf{next(_prefixes)}:", clock=clock, socket_timeout=5.0)

    return name.rpartition("-")[2], redis_store


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
        longest = reference.longest.get(args[0], 0.0) if name == "peek" else 0.0
        if name == "peek" and args[2] > longest:
            # Store.peek: a window longer than any its namespace was hit with
            # may miss requests older than the longest (a store forgets a
            # counter no hit's window can count any more): between the two
            floor = reference.peek(args[0], args[1], longest) if longest else 0
            assert floor <= got <= expected, f"step {step} {op}: {floor}..{expected}, store {got}"
            continue
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
        target.attempt("login", "k", 3, OP_INTERVAL, 0.1)
    assert same(
        store.settle("login", "k", True, 3, OP_INTERVAL, OP_BLOCK_FOR),
        reference.settle("login", "k", True, 3, OP_INTERVAL, OP_BLOCK_FOR),
    )
    clock.advance(OP_INTERVAL)
    store.expire()
    assert store.settle("login", "k", True, 3, OP_INTERVAL, OP_BLOCK_FOR) == (OK, 2, 0.0)
    assert reference.settle("login", "k", True, 3, OP_INTERVAL, OP_BLOCK_FOR) == (OK, 2, 0.0)


def test_busy_means_failures_and_attempts_under_way_reach_the_limit() -> None:
    """The rule itself, spelled out once (the suite above checks stores against it)."""
    record, code, remaining, _ = begin_attempt(None, T0, 2, OP_INTERVAL, 5.0)
    assert (code, remaining) == (OK, 1)
    record, code, remaining, _ = begin_attempt(record, T0, 2, OP_INTERVAL, 5.0)
    assert (code, remaining) == (OK, 0)
    assert begin_attempt(record, T0, 2, OP_INTERVAL, 5.0)[1] == BUSY
    # a slot held past its ttl is free again
    assert begin_attempt(record, T0 + 5.0, 2, OP_INTERVAL, 5.0)[1:3] == (OK, 1)


# ------------------------------------------------------------- scenarios
#
# Worked examples, each run on every store through its sync face: a
# ``store`` on a ``clock`` (a FakeClock at T0) made by ``make``.  They used to
# exist once per store, in tests/test_memory_store.py and
# tests/test_redis_store.py.

LIMIT, INTERVAL, TTL, BLOCK_FOR = 5, 60.0, 30.0, 900.0
STORES = [
    "memory",
    "redis",
    pytest.param("sentinel", marks=pytest.mark.servers),
    pytest.param("cluster", marks=pytest.mark.servers),
]


@pytest.fixture(params=STORES)
def make(request: pytest.FixtureRequest) -> Iterator[Callable[..., Store]]:
    """A maker of the store under test on a clock; options go to RedisStore only.

    Every store made is closed at the end of the test.
    """
    made: list[Store] = []
    if request.param == "memory":

        def maker(clock: FakeClock, **redis_options: Any) -> Store:
            made.append(MemoryStore(1000, clock=clock))
            return made[-1]

    else:
        url = _redis_url(request, request.param)

        def maker(clock: FakeClock, **redis_options: Any) -> Store:
            prefix = f"conf{next(_prefixes)}:"
            made.append(RedisStore(url, prefix=prefix, clock=clock, **redis_options))
            return made[-1]

    yield maker
    for store in made:
        store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store(make: Callable[..., Store], clock: FakeClock) -> Store:
    return make(clock)


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so races have a chance to show."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def fail(store: Store, key: str = "alice", **kw: Any) -> tuple[int, int, float]:
    assert store.attempt("login", key, LIMIT, INTERVAL, TTL)[0] == OK
    return store.settle("login", key, True, LIMIT, INTERVAL, BLOCK_FOR, **kw)


# ----------------------------------------------------------------- hit


def test_hit_limit_and_window_exact(store: Store, clock: FakeClock) -> None:
    # `wait` of an allowed request: until the oldest counted one leaves
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OK, 2, 1.0)
    clock.advance(0.25)
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OK, 1, 0.75)
    clock.advance(0.25)
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OK, 0, 0.5)
    clock.advance(0.25)
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OVER, 0, 0.25)
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OVER, 0, 0.25)  # not counted
    assert store.peek("dos", "1.2.3.4", 1.0) == 3
    clock.advance(0.125)
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OVER, 0, 0.125)
    clock.advance(0.125)  # the first request leaves the window exactly now
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OK, 0, 0.25)
    assert store.hit("dos", "1.2.3.4", 3, 1.0) == (OVER, 0, 0.25)


def test_hit_waiting_the_returned_wait_always_lets_the_next_request_in(
    make: Callable[..., Store],
) -> None:
    """A client that sleeps exactly ``wait`` is allowed, even with decimal times."""
    for start in (0.0, 0.1, 1000.3, T0):
        for step in (0.1, 0.3, 0.7, 1 / 3):
            for window in (1.0, 0.3, 2.5, 60.0):
                clock = FakeClock(start)
                store = make(clock)
                for _ in range(20):
                    code, _, wait = store.hit("dos", "k", 3, window)
                    if code == OVER:
                        assert wait > 0
                        clock.advance(wait)
                        code, _, wait2 = store.hit("dos", "k", 3, window)
                        assert code == OK, (start, step, window, wait, wait2)
                    clock.advance(step)
                store.close()


def test_hit_without_jail_is_never_blocked(store: Store) -> None:
    for _ in range(2):
        assert store.hit("dos", "k", 2, 10.0)[0] == OK
    assert store.hit("dos", "k", 2, 10.0)[0] == OVER
    assert store.get_block("dos", "k") is None
    assert store.blocks() == []
    # a block made by someone else is ignored by a jail-less hit
    store.block("dos", "other", 60, "manual")
    assert store.hit("dos", "other", 2, 10.0)[0] == OK


def test_hit_namespaces_are_isolated(store: Store) -> None:
    assert store.hit("dos", "dev1", 1, 60.0) == (OK, 0, 60.0)
    assert store.hit("dos", "dev1", 1, 60.0)[0] == OVER
    # same key in another namespace has its own window
    assert store.hit("device", "dev1", 1, 60.0) == (OK, 0, 60.0)
    assert store.hit("device", "dev1", 1, 60.0, jail=30.0) == (JAILED, 0, 30.0)
    assert store.get_block("device", "dev1") is not None
    assert store.get_block("dos", "dev1") is None
    assert store.peek("dos", "dev1", 60.0) == 1
    assert store.peek("device", "dev1", 60.0) == 0  # window forgotten by the jail
    assert store.peek("nothing", "dev1", 60.0) == 0


def test_hit_jail_semantics(store: Store, clock: FakeClock) -> None:
    for left in (1, 0):
        assert store.hit("device", "phone", 2, 10.0, jail=60.0)[:2] == (OK, left)
    assert store.hit("device", "phone", 2, 10.0, jail=60.0) == (JAILED, 0, 60.0)
    block = store.get_block("device", "phone")
    assert block == Block("device", "phone", "rate", T0, T0 + 60)
    assert block is not None
    assert (block.kind, block.key, block.reason) == ("device", "phone", "rate")
    assert (block.since, block.until) == (T0, T0 + 60.0)
    waits = []
    for _ in range(5):
        clock.advance(10)
        code, remaining, wait = store.hit("device", "phone", 2, 10.0, jail=60.0)
        assert (code, remaining) == (BLOCKED, 0)
        waits.append(wait)
    assert waits == [50.0, 40.0, 30.0, 20.0, 10.0]  # decreasing: not extended
    assert store.get_block("device", "phone").until == T0 + 60.0  # type: ignore[union-attr]
    clock.advance(9.5)
    assert store.hit("device", "phone", 2, 10.0, jail=60.0) == (BLOCKED, 0, 0.5)
    clock.advance(0.5)  # released exactly at the end
    # counting starts from zero: `limit` requests allowed at once
    assert store.hit("device", "phone", 2, 10.0, jail=60.0) == (OK, 1, 10.0)
    assert store.hit("device", "phone", 2, 10.0, jail=60.0) == (OK, 0, 10.0)
    assert store.hit("device", "phone", 2, 10.0, jail=60.0) == (JAILED, 0, 60.0)
    assert store.get_block("device", "phone").since == T0 + 60.0  # type: ignore[union-attr]


def test_hit_blocked_while_admin_block_and_jail(store: Store, clock: FakeClock) -> None:
    store.block("device", "phone", 100, "manual")
    assert store.hit("device", "phone", 5, 10.0, jail=60.0) == (BLOCKED, 0, 100.0)
    clock.advance(100)
    assert store.hit("device", "phone", 5, 10.0, jail=60.0) == (OK, 4, 10.0)


def test_clock_stepping_back_is_clamped(store: Store, clock: FakeClock) -> None:
    assert store.hit("dos", "k", 2, 1.0) == (OK, 1, 1.0)
    clock.set(T0 - 5)  # NTP stepped the clock back
    assert store.hit("dos", "k", 2, 1.0) == (OK, 0, 1.0)
    assert store.hit("dos", "k", 2, 1.0) == (OVER, 0, 1.0)


def test_a_counter_outlives_the_longest_window_it_was_hit_with(
    store: Store, clock: FakeClock
) -> None:
    # A live change of a filter's window (1 s -> 2.5 s) on a key already
    # counted: expiring counters must not forget what the new window counts
    # (hypothesis found the peek form of this on a CI run).
    store.hit("device", "k", 2, 1.0, 0.0, False)
    store.hit("device", "k", 2, 2.5, 0.0, False)
    clock.advance(1.5)
    if isinstance(store, MemoryStore):
        store.expire()
    assert store.peek("device", "k", 2.5) == 2
    assert store.hit("device", "k", 2, 2.5)[0] == OVER  # two in the last 2.5 s


def test_peek(store: Store, clock: FakeClock) -> None:
    assert store.peek("dos", "k", 10.0) == 0
    for _ in range(3):
        store.hit("dos", "k", 10, 10.0)
        clock.advance(2)
    assert store.peek("dos", "k", 10.0) == 3
    assert store.peek("dos", "k", 3.0) == 1  # a shorter window sees fewer
    clock.advance(6)
    assert store.peek("dos", "k", 10.0) == 1
    clock.advance(10)
    assert store.peek("dos", "k", 10.0) == 0
    store.attempt("login", "u", 5, 60, 30)
    assert store.peek("login", "u", 10.0) == 0  # not a window


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.one_of(st.floats(min_value=0.0, max_value=10.0), st.just(T0)),
    seconds=st.floats(min_value=1e-3, max_value=100.0),
    part=st.floats(min_value=0.0, max_value=0.999),
)
@example(start=4.2339600018205665, seconds=26.497073880876023, part=0.0626179979453328)
@example(start=2.0829235213559927, seconds=97.69813788970004, part=0.28839126852293)
def test_waiting_out_a_block_exactly_ends_it(
    make: Callable[..., Store], start: float, seconds: float, part: float
) -> None:
    """``wait`` of BLOCKED is never one ulp short of the block's end."""
    clock = FakeClock(start)
    # RedisStore without its block cache: the wait is worked out by the script
    store = make(clock, block_cache_ttl=0)
    try:
        store.block("login", "alice", seconds, "failures")
        store.block("device", "phone", seconds, "rate")
        clock.advance(seconds * part)
        if store.get_block("login", "alice") is None:
            return  # `part` rounded up to the end already
        code, _, wait = store.attempt("login", "alice", 5, 60.0, 30.0)
        assert code == BLOCKED
        assert store.hit("device", "phone", 5, 10.0, jail=5.0) == (BLOCKED, 0, wait)
        assert wait > 0
        clock.advance(wait)
        assert store.get_block("login", "alice") is None
        assert store.attempt("login", "alice", 5, 60.0, 30.0)[0] == OK
        assert store.hit("device", "phone", 5, 10.0, jail=5.0)[0] == OK
    finally:
        store.close()


# ------------------------------------------------------ attempt / settle


def test_attempt_pending_slots_are_bounded(store: Store) -> None:
    for left in (4, 3, 2, 1, 0):
        assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, left, 0.0)
    code, remaining, wait = store.attempt("login", "alice", LIMIT, INTERVAL, TTL)
    assert (code, remaining, wait) == (BUSY, 0, 1.0)
    assert wait > 0
    # settling one frees one slot
    assert store.settle("login", "alice", False, LIMIT, INTERVAL, BLOCK_FOR) == (OK, 0, 0.0)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, 0, 0.0)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == BUSY
    # another address is not affected
    assert store.attempt("login", "bob", LIMIT, INTERVAL, TTL) == (OK, 4, 0.0)


def test_settle_failures_jail_then_block(store: Store, clock: FakeClock) -> None:
    for _ in range(LIMIT):
        assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == OK
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == BUSY
    for n in range(1, LIMIT):
        clock.advance(1)
        assert store.settle("login", "alice", True, LIMIT, INTERVAL, BLOCK_FOR) == (OK, n, 0.0)
    clock.advance(1)
    code, streak_now, blocked_for = store.settle("login", "alice", True, LIMIT, INTERVAL, BLOCK_FOR)
    assert (code, blocked_for) == (JAILED, BLOCK_FOR)
    assert streak_now == 0  # the streak restarts with the block
    jailed_at = clock()
    assert store.get_block("login", "alice") == Block(
        "login", "alice", "failures", jailed_at, jailed_at + BLOCK_FOR
    )
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (BLOCKED, 0, BLOCK_FOR)
    for _ in range(10):
        clock.advance(60)
        assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (
            BLOCKED,
            0,
            jailed_at + BLOCK_FOR - clock(),  # not extended
        )
    clock.set(jailed_at + BLOCK_FOR)
    # after the block the count starts over: a full set of attempts
    for left in (4, 3, 2, 1, 0):
        assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, left, 0.0)
    assert store.settle("login", "alice", True, LIMIT, INTERVAL, BLOCK_FOR) == (OK, 1, 0.0)


def test_failures_spread_out_never_block(store: Store, clock: FakeClock) -> None:
    for _ in range(20):
        assert fail(store) == (OK, 1, 0.0)
        clock.advance(INTERVAL + 0.5)  # longer pause than `interval`: restarts
    assert store.get_block("login", "alice") is None


def test_streak_continues_at_exactly_interval(store: Store, clock: FakeClock) -> None:
    for n in range(1, LIMIT):
        assert fail(store) == (OK, n, 0.0)
        clock.advance(INTERVAL)
    assert fail(store)[0] == JAILED


def test_pause_restarts_streak_mid_way(store: Store, clock: FakeClock) -> None:
    for n in range(1, LIMIT):
        assert fail(store) == (OK, n, 0.0)
    clock.advance(INTERVAL + 1)
    # the attempt sees the stale streak as gone: all slots free again
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, 4, 0.0)
    assert store.settle("login", "alice", True, LIMIT, INTERVAL, BLOCK_FOR) == (OK, 1, 0.0)


def test_attempt_busy_counts_failures_and_pending_together(store: Store, clock: FakeClock) -> None:
    for _ in range(3):
        fail(store)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, 1, 0.0)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, 0, 0.0)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == BUSY
    clock.advance(INTERVAL + 1)  # the pause restarts the streak; pending slots lapsed
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, 4, 0.0)


def test_reset_clears_streak(store: Store) -> None:
    for _ in range(LIMIT - 1):
        fail(store)
    store.attempt("login", "alice", LIMIT, INTERVAL, TTL)
    assert store.settle("login", "alice", False, LIMIT, INTERVAL, BLOCK_FOR, reset=True) == (
        OK,
        0,
        0.0,
    )
    for n in range(1, LIMIT):
        assert fail(store) == (OK, n, 0.0)
    assert store.get_block("login", "alice") is None


def test_success_does_not_reset_by_default(store: Store) -> None:
    for _ in range(LIMIT - 1):
        fail(store)
    store.attempt("login", "alice", LIMIT, INTERVAL, TTL)
    assert store.settle("login", "alice", False, LIMIT, INTERVAL, BLOCK_FOR) == (
        OK,
        LIMIT - 1,
        0.0,
    )
    assert fail(store) == (JAILED, 0, BLOCK_FOR)


def test_pending_slots_expire_after_ttl(store: Store, clock: FakeClock) -> None:
    for _ in range(LIMIT):
        assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == OK
    # the requests crashed: nobody settles
    clock.advance(TTL - 0.5)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == BUSY
    clock.advance(0.5)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, 4, 0.0)
    # a late settle of an expired slot does not free a slot it no longer holds
    clock.advance(TTL)
    assert store.settle("login", "alice", False, LIMIT, INTERVAL, BLOCK_FOR) == (OK, 0, 0.0)
    for left in (4, 3, 2, 1, 0):
        assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL) == (OK, left, 0.0)
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == BUSY


def test_settle_without_attempt_counts_failure(store: Store) -> None:
    assert store.settle("login", "x", True, 2, INTERVAL, BLOCK_FOR) == (OK, 1, 0.0)
    assert store.settle("login", "x", True, 2, INTERVAL, BLOCK_FOR) == (JAILED, 0, BLOCK_FOR)


def test_repeat_offenders_escalate_and_are_forgiven(store: Store, clock: FakeClock) -> None:
    kw: dict[str, Any] = {"factor": 2.0, "memory": 3600.0, "max_block": 2000.0}

    def jail() -> float:
        for _ in range(LIMIT - 1):
            assert fail(store, **kw)[0] == OK
        code, _, seconds = fail(store, **kw)
        assert code == JAILED
        block = store.get_block("login", "alice")
        assert block is not None
        assert block.until - block.since == seconds
        clock.advance(seconds)
        assert store.get_block("login", "alice") is None
        return seconds

    assert jail() == 900.0
    assert jail() == 1800.0  # doubled
    assert jail() == 2000.0  # 3600 capped at max_block
    assert jail() == 2000.0
    clock.advance(3600.0)  # an hour without blocks
    assert jail() == 900.0
    # another address starts from the base
    assert fail(store, key="bob", **kw) == (OK, 1, 0.0)


def test_repeat_offenders_off_by_default(store: Store, clock: FakeClock) -> None:
    for _ in range(3):
        for _ in range(LIMIT - 1):
            fail(store)
        assert fail(store) == (JAILED, 0, BLOCK_FOR)
        clock.advance(BLOCK_FOR)


def test_failure_block_never_shortens_a_longer_block(store: Store) -> None:
    """An attempt begun before an admin's day-long block must not cut it to 900 s."""
    for _ in range(3):
        assert store.attempt("login", "203.0.113.9", 3, 300.0, 30.0)[0] == OK
    store.block("login", "203.0.113.9", 86400.0, "admin")
    for _ in range(3):
        store.settle("login", "203.0.113.9", True, 3, 300.0, 900.0)
    # Asked right away, get_block differs by store: see the stores' own tests.
    store.unblock("nothing-else")  # any admin call; the block must still be the admin's
    listed = [b for b in store.blocks("login") if b.key == "203.0.113.9"]
    assert len(listed) == 1 and listed[0].reason == "admin" and listed[0].until == T0 + 86400.0


# ----------------------------------------------------------------- swap


def test_swap(store: Store, clock: FakeClock) -> None:
    assert store.swap("seen", "dev", "a", 10.0) is None
    clock.advance(5)
    assert store.swap("seen", "dev", "b", 10.0) == "a"
    assert store.swap("other", "dev", "x", 10.0) is None  # namespaces isolated
    clock.advance(9.9)
    assert store.swap("seen", "dev", "c", 10.0) == "b"
    clock.advance(10.0)  # exactly the ttl: gone
    assert store.swap("seen", "dev", "d", 10.0) is None
    assert store.swap("seen", "dev", "d", 10.0) == "d"
    # any string round-trips: spaces, empty, not ASCII
    assert store.swap("seen", "odd", "v1", 5.0) is None
    assert store.swap("seen", "odd", "v 2 with spaces", 5.0) == "v1"
    clock.advance(4.9)
    assert store.swap("seen", "odd", "", 5.0) == "v 2 with spaces"
    assert store.swap("seen", "odd", "ünïcode", 5.0) == ""
    clock.advance(5.0)  # expired
    assert store.swap("seen", "odd", "v3", 5.0) is None


# ---------------------------------------------------------------- admin


def test_admin_blocks_sorted_and_filtered(store: Store, clock: FakeClock) -> None:
    store.block("login", "alice", 300, "failures")
    store.block("device", "phone", 100, "rate")
    store.block("login", "bob", 200, "failures")
    store.block("dos", "alice", 50, "rate")
    assert [(b.kind, b.key) for b in store.blocks()] == [
        ("dos", "alice"),
        ("device", "phone"),
        ("login", "bob"),
        ("login", "alice"),
    ]
    assert [b.key for b in store.blocks("login")] == ["bob", "alice"]
    assert store.blocks("nothing") == []
    clock.advance(100)
    assert [(b.kind, b.key) for b in store.blocks()] == [("login", "bob"), ("login", "alice")]


def test_admin_get_block(store: Store, clock: FakeClock) -> None:
    made = store.block("login", "alice", 60, "failures")
    assert made == Block("login", "alice", "failures", T0, T0 + 60)
    assert store.get_block("login", "alice") == made
    assert store.get_block("device", "alice") is None
    assert store.get_block("login", "bob") is None
    clock.advance(60)
    assert store.get_block("login", "alice") is None


def test_admin_block_replaces(store: Store) -> None:
    store.block("login", "alice", 600, "failures")
    store.block("login", "alice", 60, "manual")
    block = store.get_block("login", "alice")
    assert block is not None
    assert (block.reason, block.until) == ("manual", T0 + 60)
    assert len(store.blocks()) == 1


def test_admin_unblock(store: Store, clock: FakeClock) -> None:
    store.block("login", "alice", 60, "failures")
    store.block("dos", "alice", 60, "rate")
    store.block("device", "alice", 60, "rate")
    store.block("login", "bob", 60, "failures")
    assert store.unblock("alice", "device") == 1
    assert store.get_block("device", "alice") is None
    assert store.get_block("login", "alice") is not None
    assert store.unblock("alice") == 2  # every remaining namespace
    assert store.unblock("alice") == 0
    assert [b.key for b in store.blocks()] == ["bob"]
    assert store.attempt("login", "alice", LIMIT, INTERVAL, TTL)[0] == OK
    clock.advance(60)
    assert store.unblock("bob") == 0  # already ended


def test_admin_unblock_all(store: Store, clock: FakeClock) -> None:
    for key in ("a", "b", "c"):
        store.block("login", key, 60, "failures")
    for key in ("a", "d"):
        store.block("device", key, 60, "rate")
    store.block("dos", "e", 1, "rate")
    assert store.unblock_all("device") == 2
    assert {b.kind for b in store.blocks()} == {"login", "dos"}
    clock.advance(1)
    assert store.unblock_all() == 3  # the ended dos block is not counted
    assert store.blocks() == []
    assert store.unblock_all() == 0
    for i in range(5):
        store.block("login", f"ip{i}", 100 + i, "failures")
        store.block("device", f"dev{i}", 100 + i, "rate")
    assert store.unblock_all("device") == 5
    assert {b.kind for b in store.blocks()} == {"login"}
    assert store.unblock_all() == 5
    assert store.blocks() == []


def test_block_get_blocks_unblock(store: Store, clock: FakeClock) -> None:
    made = store.block("login", "203.0.113.7", 900, "failures")
    assert made == Block("login", "203.0.113.7", "failures", T0, T0 + 900)
    store.block("device", "203.0.113.7", 60, "rate")
    store.block("device", "appl*[x]?/jdoe", 30, "rate with spaces")  # glob characters
    assert store.get_block("login", "203.0.113.7") == made
    assert [(b.kind, b.key) for b in store.blocks()] == [
        ("device", "appl*[x]?/jdoe"),
        ("device", "203.0.113.7"),
        ("login", "203.0.113.7"),
    ]
    assert store.blocks("device")[0].reason == "rate with spaces"
    assert [b.kind for b in store.blocks("login")] == ["login"]
    assert store.unblock("appl*") == 0  # a glob is a key, not a pattern
    assert store.unblock("appl*[x]?/jdoe") == 1
    assert store.unblock("203.0.113.7", "device") == 1
    assert store.unblock("203.0.113.7", "device") == 0
    assert store.get_block("login", "203.0.113.7") is not None
    store.block("device", "203.0.113.7", 60, "rate")
    assert store.unblock("203.0.113.7") == 2  # every namespace
    assert store.blocks() == []
    # replace, end, zero
    store.block("login", "a", 10, "first")
    store.block("login", "a", 20, "second")
    assert store.get_block("login", "a").reason == "second"  # type: ignore[union-attr]
    store.block("login", "a", 0, "none")  # a block that has already ended lifts it
    assert store.get_block("login", "a") is None
    store.block("login", "b", 10, "r")
    clock.advance(10)
    assert store.get_block("login", "b") is None
    assert store.blocks() == []
    assert store.unblock("b") == 0  # an ended block is not counted


def test_unblocked_jail_starts_counting_from_zero(store: Store) -> None:
    for _ in range(2):
        store.hit("device", "phone", 2, 10.0, jail=60.0)
    assert store.hit("device", "phone", 2, 10.0, jail=60.0)[0] == JAILED
    assert store.unblock("phone") == 1
    assert store.hit("device", "phone", 2, 10.0, jail=60.0)[:2] == (OK, 1)


@pytest.mark.parametrize(
    "key", ["a}b", "x}:b", "{dos:y}", "sp ace", "ünï/кod", "*[?]\\", "bad\udcff", ""]
)
def test_odd_keys_stay_apart_and_round_trip(store: Store, key: str) -> None:
    assert store.hit("dos", key, 1, 10.0) == (OK, 0, 10.0)
    assert store.hit("dos", key + "}", 1, 10.0) == (OK, 0, 10.0)
    assert store.hit("dos", key, 1, 10.0)[0] == OVER
    assert store.block("login", key, 30, "odd") == Block("login", key, "odd", T0, T0 + 30)
    assert store.get_block("login", key) == Block("login", key, "odd", T0, T0 + 30)
    assert store.swap("seen", key, key, 5.0) is None
    assert store.swap("seen", key, "v", 5.0) == key
    assert [b.key for b in store.blocks("login")] == [key]
    assert store.unblock(key) == 1
    assert store.blocks() == []


# -------------------------------------------------------------- threads


@pytest.mark.usefixtures("fast_switching")
@pytest.mark.parametrize(("threads", "each", "limit"), [(8, 1000, 100), (6, 40, 60)])
def test_threads_hit_one_key_exactly_limit(
    store: Store, threads: int, each: int, limit: int
) -> None:
    got = run_threads(threads, lambda: [store.hit("dos", "k", limit, 1.0)[0] for _ in range(each)])
    counts = Counter(got)
    assert counts[OK] == limit
    assert counts[OVER] == threads * each - limit
    assert counts == {OK: limit, OVER: threads * each - limit}


# ---------------------------------------------------------------- async


def test_async_primitives_match_sync(store: Store) -> None:
    """The coroutine face of every primitive, with the answers the sync face gives."""

    async def main() -> None:
        assert await store.ahit("dos", "k", 2, 1.0) == (OK, 1, 1.0)
        assert await store.ahit("dos", "k", 2, 1.0) == (OK, 0, 1.0)
        assert await store.ahit("dos", "k", 2, 1.0) == (OVER, 0, 1.0)
        assert await store.apeek("dos", "k", 1.0) == 2
        assert await store.ahit("dev", "d", 1, 1.0, 5.0) == (OK, 0, 1.0)
        assert await store.ahit("dev", "d", 1, 1.0, 5.0) == (JAILED, 0, 5.0)
        assert await store.ahit("dev", "d", 1, 1.0, 5.0) == (BLOCKED, 0, 5.0)
        assert await store.aattempt("login", "u", 2, 10.0, 5.0) == (OK, 1, 0.0)
        assert await store.asettle("login", "u", True, 1, 10.0, 30.0) == (JAILED, 0, 30.0)
        assert await store.aattempt("login", "u", 2, 10.0, 5.0) == (BLOCKED, 0, 30.0)
        assert await store.aswap("seen", "x", "v", 5.0) is None
        assert await store.aswap("seen", "x", "w", 5.0) == "v"
        made = await store.ablock("admin", "z", 9.0, "manual")
        assert await store.aget_block("admin", "z") == made
        assert [b.kind for b in await store.ablocks()] == ["dev", "admin", "login"]
        assert [b.key for b in await store.ablocks("login")] == ["u"]
        assert await store.aunblock("z", "admin") == 1
        assert await store.aunblock("u") == 1
        assert await store.aunblock_all() == 1
        assert await store.ablocks() == []
        assert store.hit("dos", "k", 2, 1.0)[0] == OVER  # the sync face sees the same state
        await store.aclose()

    asyncio.run(main())


# ------------------------------------------------- live configuration


def test_overlay_is_versioned_compare_and_set(store: Store, clock: FakeClock) -> None:
    from mailguard.stores.overlay import MAX_CHANGES, OverlayChange, OverlayConflict

    heard: list[int] = []
    store.watch_overlay(lambda: heard.append(1))
    assert store.read_overlay().version == 0 and store.overlay_version() == 0
    change = OverlayChange(0, "alice@mx1", T0, "set", "dos.delay_ms", 0)
    assert store.write_overlay(0, {"dos.delay_ms": 0}, change) == 1
    doc = store.read_overlay()
    assert (doc.version, dict(doc.values)) == (1, {"dos.delay_ms": 0})
    assert doc.changes[-1].version == 1 and doc.changes[-1].who == "alice@mx1"
    with pytest.raises(OverlayConflict):  # a writer that read v0 lost the race
        store.write_overlay(0, {"dos.delay_ms": 5}, change)
    assert store.read_overlay().values == {"dos.delay_ms": 0}
    for n in range(1, MAX_CHANGES + 5):
        assert store.write_overlay(n, {"dos.delay_ms": n}, change) == n + 1
    doc = store.read_overlay()
    assert len(doc.changes) == MAX_CHANGES and doc.changes[-1].version == doc.version
    with pytest.raises(ValueError):  # bounded: nothing written
        store.write_overlay(doc.version, {"common.safe_ips": ["x" * 100] * 1000}, change)
    assert store.overlay_version() == doc.version
    if isinstance(store, MemoryStore):
        assert heard  # (Redis: told through the channel, tested in tests/test_live.py)
