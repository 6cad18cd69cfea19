"""Tests for MemoryStore: counting, jails, logins, bounds, admin and threads."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import random
import sys
import threading
import time
import tracemalloc
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any

import pytest
from cachetools import Cache
from hypothesis import given, settings
from hypothesis import strategies as st
from threads import run_threads

from mailguard.core import FakeClock, log_last
from mailguard.stores.base import BLOCKED, BUSY, JAILED, OK, OVER, Store
from mailguard.stores.memory import (
    BLOCK_BYTES,
    KEY_BYTES,
    RING_BYTES,
    SLOT_BYTES,
    STATE_BYTES,
    MemoryStore,
    _extra,
)

T0 = 1_700_000_000.0


def make(max_keys: int = 1000, start: float = T0) -> tuple[MemoryStore, FakeClock]:
    clock = FakeClock(start)
    return MemoryStore(max_keys, clock=clock), clock


def counters_consistent(store: MemoryStore) -> bool:
    """The store's running counts (counters, the bytes counted beyond
    KEY_BYTES per namespace and in all, and the cap they make) match what its
    namespaces hold."""
    held = {ns: [*store._spaces[ns].values(), *store._aged[ns].values()] for ns in store._spaces}
    extras = {ns: sum(map(_extra, values)) for ns, values in held.items()}
    cap = min(
        store.max_keys - store._nblocks,
        (store.max_bytes - store._extra - BLOCK_BYTES * store._nblocks) // KEY_BYTES,
    )
    blocks = Counter(ns for ns, _ in Cache.__iter__(store._blocks))  # ended ones too
    aged_extras = {ns: sum(map(_extra, aged.values())) for ns, aged in store._aged.items()}
    return (
        store._counters == sum(map(len, held.values()))
        and store._blocks.held == dict(blocks)
        and store._extras == extras
        and store._extra == sum(extras.values())
        and {ns: aged_as[0] for ns, aged_as in store._aged_as.items()} == aged_extras
        and all(aged_windows_sound(store, ns) for ns in store._aged)
        and store._cap == cap
    )


def aged_windows_sound(store: MemoryStore, ns: str) -> bool:
    """When the aged counters of ``ns`` are marked all windows (to go
    together, see MemoryStore._sweep), they are, and none was seen after
    the time recorded for them: so they have all expired once it has."""
    turned = store._aged_as[ns][1]
    if turned == math.inf:
        return True
    return all(
        value.__class__ is not tuple and log_last(value) <= turned
        for value in store._aged[ns].values()
    )


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads often, so races have a chance to show."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def test_is_a_store() -> None:
    store, clock = make()
    assert isinstance(store, Store)
    assert store.now() == clock()
    clock.advance(5)
    assert store.now() == T0 + 5
    assert "max_keys=1000" in repr(store)
    store.close()


# ----------------------------------------------------------------- hit
# The scenarios every store shares (hits, jails, logins, swaps, admin blocks)
# are in tests/test_store_conformance.py; here only what is MemoryStore's own.


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.integers(min_value=0, max_value=400), max_size=80),
    limit=st.integers(min_value=1, max_value=12),
    window=st.integers(min_value=1, max_value=80),
    detail=st.booleans(),
)
def test_hit_is_exact_even_when_the_clock_steps_back(
    times: list[int], limit: int, window: int, detail: bool
) -> None:
    """Readings in any order: the store holds time at its latest reading, and
    every decision is the brute-force one at that time (with or without detail)."""
    store, clock = make()
    span = window / 8
    allowed: list[float] = []
    latest = -1e300
    for step in times:
        clock.set(T0 + step / 8)
        now = max(latest, clock())
        latest = now
        inside = [t for t in allowed if t > now - span]
        code, remaining, wait = store.hit("dos", "k", limit, span, 0.0, detail)
        if len(inside) < limit:
            allowed.append(now)
            assert code == OK
            if detail or remaining != -1:
                assert remaining == limit - len(inside) - 1
        else:
            assert (code, remaining) == (OVER, 0)
            assert wait == inside[len(inside) - limit] + span - now
    assert counters_consistent(store)


# ------------------------------------------------------ attempt / settle


LIMIT, INTERVAL, TTL, BLOCK_FOR = 5, 60.0, 30.0, 900.0


def fail(store: MemoryStore, key: str = "alice", **kw: Any) -> tuple[int, int, float]:
    code, _, _ = store.attempt("login", key, LIMIT, INTERVAL, TTL)
    assert code == OK
    return store.settle("login", key, True, LIMIT, INTERVAL, BLOCK_FOR, **kw)


def test_idle_login_state_disappears() -> None:
    store, clock = make()
    fail(store)
    assert len(store) == 1
    store.attempt("login", "alice", LIMIT, INTERVAL, TTL)
    store.settle("login", "alice", False, LIMIT, INTERVAL, BLOCK_FOR, reset=True)
    assert len(store) == 0  # nothing left to remember
    fail(store)
    clock.advance(INTERVAL + 1)
    assert store.expire() == 1
    assert len(store) == 0


def test_failure_block_never_shortens_a_longer_block_asked_at_once() -> None:
    """The scenario is in the conformance suite.  Here, get_block right after
    the settles: MemoryStore has no block cache, so it already answers with the
    admin's block (RedisStore's local block cache does not: see its tests)."""
    store, _ = make()
    for _ in range(3):
        assert store.attempt("login", "203.0.113.9", 3, 300.0, 30.0)[0] == OK
    store.block("login", "203.0.113.9", 86400.0, "admin")
    for _ in range(3):
        store.settle("login", "203.0.113.9", True, 3, 300.0, 900.0)
    held = store.get_block("login", "203.0.113.9")
    assert held is not None and held.reason == "admin" and held.until == T0 + 86400.0


# ---------------------------------------------------------- concurrency


@pytest.mark.usefixtures("fast_switching")
def test_threads_hit_with_jail_one_jail() -> None:
    store, _ = make()
    got = run_threads(8, lambda: [store.hit("dev", "k", 50, 1.0, 60)[0] for _ in range(500)])
    counts = Counter(got)
    assert counts[OK] == 50
    assert counts[JAILED] == 1
    assert counts[BLOCKED] == 4000 - 51


@pytest.mark.usefixtures("fast_switching")
def test_threads_attempt_exactly_limit() -> None:
    store, _ = make()
    got = run_threads(100, lambda: [store.attempt("login", "alice", 5, INTERVAL, TTL)[0]])
    counts = Counter(got)
    assert counts[OK] == 5
    assert counts[BUSY] == 95


@pytest.mark.usefixtures("fast_switching")
def test_threads_many_keys_stay_bounded() -> None:
    store, _ = make(max_keys=50)

    def work() -> list[int]:
        name = threading.current_thread().name
        return [store.hit("dos", f"{name}-{i}", 3, 10.0)[0] for i in range(500)]

    got = run_threads(8, work)
    assert set(got) == {OK}
    assert len(store) == 50
    assert counters_consistent(store)


# --------------------------------------------------------------- bounds


def test_eviction_takes_least_recently_seen() -> None:
    store, _ = make(max_keys=3)
    for key in ("a", "b", "c"):
        store.hit("dos", key, 5, 60.0)
    store.hit("dos", "a", 5, 60.0)  # a is now the most recently seen
    store.hit("dos", "d", 5, 60.0)  # needs room: b goes
    assert len(store) == 3
    assert store.peek("dos", "a", 60.0) == 2
    assert store.peek("dos", "b", 60.0) == 0
    assert store.peek("dos", "c", 60.0) == 1
    assert store.peek("dos", "d", 60.0) == 1
    store.hit("dos", "e", 5, 60.0)  # then c
    assert store.peek("dos", "c", 60.0) == 0
    assert store.peek("dos", "a", 60.0) == 2


@settings(max_examples=200, deadline=None)
@given(
    max_keys=st.integers(min_value=1, max_value=12),
    ops=st.lists(
        st.tuples(st.sampled_from(["dos", "dos", "dev"]), st.integers(min_value=0, max_value=20)),
        max_size=300,
    ),
)
def test_eviction_is_exactly_least_recently_seen(max_keys: int, ops: list[tuple[str, int]]) -> None:
    """Against a model (one OrderedDict per namespace, least recently seen
    first): the store holds exactly the model's keys, with the model's counts,
    through every turn-over of its recent and aged counters."""
    store, clock = make(max_keys=max_keys)
    model: dict[str, OrderedDict[str, int]] = {}
    slots = {0: 0, 1: 0, 2: 2, 3: 4, 4: 4, 5: 5}  # ring slots at a limit of 5 (core.slide)

    def weight(ns: str) -> int:
        held = model[ns].values()
        return sum(
            KEY_BYTES + (RING_BYTES + SLOT_BYTES * (slots[c] + 1) if c > 1 else 0) for c in held
        )

    for ns, i in ops:
        clock.advance(0.001)  # within the window: nothing expires
        key = f"k{i}"
        space = model.setdefault(ns, OrderedDict())
        if key in space:
            space.move_to_end(key)
        else:
            if sum(map(len, model.values())) >= max_keys:
                # the heaviest namespace (the first made, on a tie) loses its oldest
                heaviest = max(model, key=weight)
                model[heaviest].popitem(last=False)
            space[key] = 0
        code, _, _ = store.hit(ns, key, 5, 600.0)
        if space[key] < 5:
            assert code == OK
            space[key] += 1
        else:
            assert code == OVER
        assert counters_consistent(store)
        for name, held in model.items():
            for j in range(21):
                assert store.peek(name, f"k{j}", 600.0) == held.get(f"k{j}", 0)


def test_flood_in_one_namespace_spares_another_namespaces_streak() -> None:
    store, _ = make(max_keys=20)
    for _ in range(LIMIT - 1):
        fail(store)
    for i in range(1000):
        store.hit("dos", f"10.0.{i // 256}.{i % 256}", 5, 60.0)
        assert len(store) <= 20
    assert fail(store)[0] == JAILED  # the streak survived the flood


def test_flood_never_evicts_live_blocks() -> None:
    store, clock = make(max_keys=24)  # a namespace may hold 24 // 4 = 6 live blocks
    ends = {}
    for i in range(6):
        block = store.block("login", f"user{i}", 10.0 * (i + 1), "failures")
        ends[f"user{i}"] = block.until
    for i in range(3000):
        clock.advance(0.02)
        store.hit("dos", f"ip{i}", 2, 5.0)
        assert len(store) <= 24
        if i % 50 == 0:
            listed = {b.key for b in store.blocks("login")}
            assert listed == {k for k, until in ends.items() if clock() < until}
    assert store.dropped == 0
    clock.set(T0 + 60.0)
    assert store.blocks() == []
    assert len(store) <= 24


def test_a_namespace_full_of_blocks_refuses_its_next_block_and_still_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, clock = make(max_keys=12)  # 3 live blocks a namespace, 9 in all
    for key in ("a", "b", "c"):
        store.block("login", key, 100.0, "failures")
    assert store.dropped == 0
    with caplog.at_level(logging.ERROR, logger="mailguard.store"):
        store.block("login", "d", 100.0, "failures")
        store.block("login", "e", 100.0, "failures")
    assert store.dropped == 2
    assert [r.message.split(":")[0] for r in caplog.records] == [
        "mailguard store blocks full ns=login blocks=3 all_blocks=3 max_keys=12"
    ]  # once for the flood, not once per block
    assert store.get_block("login", "d") is None
    assert [b.key for b in store.blocks()] == ["a", "b", "c"]
    # another namespace has its own room: for counters and for blocks
    assert store.hit("dev", "x", 1, 10.0, jail=5)[0] == OK
    assert store.hit("dev", "x", 1, 10.0, jail=5)[0] == JAILED
    assert store.get_block("dev", "x") is not None
    for key in ("y", "z"):
        store.hit("dev", key, 1, 10.0, jail=5)
        store.hit("dev", key, 1, 10.0, jail=5)
    # a jail that cannot be recorded still refuses: the window is kept (OVER)
    assert store.hit("dev", "w", 1, 10.0, jail=5)[0] == OK
    assert store.hit("dev", "w", 1, 10.0, jail=5) == (OVER, 0, 10.0)
    clock.advance(4.0)
    assert store.hit("dev", "w", 1, 10.0, jail=5) == (OVER, 0, 6.0)  # never OK in the window
    assert store.get_block("dev", "w") is None
    assert store.dropped == 4
    clock.advance(6.0)
    assert store.hit("dev", "w", 1, 10.0, jail=5)[0] == OK  # the limit per window
    # a login block that cannot be recorded keeps the streak at the limit: BUSY
    for key in ("d", "e"):
        store.attempt("login", key, 1, 30.0, 5.0)
        assert store.settle("login", key, True, 1, 30.0, 100.0)[0] == JAILED
        assert store.get_block("login", key) is None
        assert store.attempt("login", key, 1, 30.0, 5.0)[0] == BUSY
    clock.advance(31.0)
    assert store.attempt("login", "d", 1, 30.0, 5.0)[0] == OK
    assert store.dropped == 6
    # replacing a live block does not need room
    store.block("login", "a", 200.0, "manual")
    assert store.dropped == 6
    assert store.get_block("login", "a").reason == "manual"  # type: ignore[union-attr]
    clock.advance(100.0)
    store.block("login", "d", 100.0, "failures")
    assert store.get_block("login", "d") is not None
    assert store.dropped == 6


def test_all_blocks_together_leave_counters_a_quarter() -> None:
    store, _ = make(max_keys=40)  # 10 blocks a namespace, 30 in all
    for ns in ("n1", "n2", "n3", "n4"):
        for i in range(10):
            store.block(ns, f"k{i}", 100.0, "test")
    assert len(store.blocks()) == 30
    assert store.dropped == 10
    for i in range(100):
        store.hit("dos", f"ip{i}", 5, 60.0)
    assert len(store) == 40
    assert store.peek("dos", "ip99", 60.0) == 1


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    keys = st.integers(min_value=0, max_value=15).map(lambda i: f"k{i}")
    op = st.one_of(
        st.tuples(st.just("hit"), st.sampled_from(["dos", "device"]), keys, st.booleans()),
        st.tuples(
            st.just("block"),
            st.sampled_from(["login", "device"]),
            keys,
            st.sampled_from([1.0, 5.0, 30.0]),
        ),
        st.tuples(st.just("attempt"), keys),
        st.tuples(st.just("unblock"), st.sampled_from(["login", "device", None]), keys),
        st.tuples(st.just("settle"), keys, st.booleans()),
        st.tuples(st.just("swap"), keys),
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 2.0, 10.0])),
        st.tuples(st.just("expire")),
    )
    return draw(st.lists(op, max_size=120))


@settings(max_examples=200, deadline=None)
@given(
    max_keys=st.integers(min_value=1, max_value=8),
    max_bytes=st.sampled_from([None, 1500, 2500, 4000]),
    ops=operations(),
)
def test_bounds_hold_under_random_interleavings(
    max_keys: int, max_bytes: int | None, ops: list[tuple[Any, ...]]
) -> None:
    clock = FakeClock(T0)
    store = MemoryStore(max_keys, max_bytes=max_bytes, clock=clock)
    live: dict[tuple[str, str], float] = {}  # blocks we know were recorded
    for op in ops:
        kind = op[0]
        touched: tuple[str, str] | None = None
        if kind == "hit":
            _, ns, key, jail = op
            code, _, _ = store.hit(ns, key, 2, 3.0, 5.0 if jail else 0.0)
            if code == JAILED:
                touched = (ns, key)
        elif kind == "block":
            _, ns, key, seconds = op
            dropped = store.dropped
            store.block(ns, key, seconds, "test")
            touched = (ns, key)
            if store.get_block(ns, key) is None:
                assert store.dropped == dropped + 1
                # only when its namespace or all blocks hold as many as they may
                most = min(max_keys, store.max_bytes // BLOCK_BYTES)
                held = len(store.blocks(ns))
                assert held >= max(1, most // 4) or len(store.blocks()) >= max(1, most * 3 // 4)
        elif kind == "attempt":
            store.attempt("login", op[1], 3, 10.0, 5.0)
        elif kind == "unblock":
            store.unblock(op[2], op[1])
            for ns in ("login", "device") if op[1] is None else (op[1],):
                live.pop((ns, op[2]), None)
        elif kind == "settle":
            code, _, _ = store.settle(
                "login", op[1], op[2], 3, 10.0, 4.0, factor=2.0, memory=60.0, max_block=20.0
            )
            if code == JAILED:
                touched = ("login", op[1])
        elif kind == "swap":
            store.swap("seen", op[1], "v", 4.0)
        elif kind == "advance":
            clock.advance(op[1])
        else:
            store.expire()
        if touched is not None:
            found = store.get_block(*touched)
            if found is not None:
                live[touched] = found.until
            else:
                live.pop(touched, None)
        assert len(store) <= max_keys
        assert store.counted_bytes <= store.max_bytes
        assert counters_consistent(store)
        now = clock()
        for (ns, key), until in list(live.items()):
            if now < until:
                found = store.get_block(ns, key)
                assert found is not None, "a live block was evicted"
                assert found.until == until
            else:
                assert store.get_block(ns, key) is None
                del live[(ns, key)]
        assert len(store.blocks()) == len(live)


# ---------------------------------------------------------------- bytes


def test_max_bytes_default_and_validation() -> None:
    assert MemoryStore().max_bytes == 512 * 100_000
    assert MemoryStore(10).max_bytes == 1 << 20  # at least 1 MiB
    assert MemoryStore(max_bytes=5000).max_bytes == 5000
    assert "max_bytes=5000" in repr(MemoryStore(max_bytes=5000))
    for bad in (0, -1, 1.5, True, "1"):
        with pytest.raises(ValueError, match="max_bytes"):
            MemoryStore(max_bytes=bad)  # type: ignore[arg-type]


def test_counted_bytes_follow_what_is_held() -> None:
    store, clock = make()
    assert store.counted_bytes == 0
    store.hit("dos", "a", 100, 1.0)
    assert store.counted_bytes == KEY_BYTES  # one float
    store.hit("dos", "a", 100, 1.0)
    ring = RING_BYTES + SLOT_BYTES * 3  # two slots and the index
    assert store.counted_bytes == KEY_BYTES + ring
    store.attempt("login", "alice", 5, 60.0, 30.0)
    assert store.counted_bytes == 2 * KEY_BYTES + ring + STATE_BYTES
    store.block("login", "mallory", 10.0, "r")
    assert store.counted_bytes == 2 * KEY_BYTES + ring + STATE_BYTES + BLOCK_BYTES
    clock.advance(30.0)
    assert store.expire() == 3
    assert store.counted_bytes == 0
    assert counters_consistent(store)


def test_flood_of_busy_keys_stays_within_max_bytes() -> None:
    """Issue #19: every key sends its limit inside one window, so each holds a
    full ring.  The store evicts the least recently seen ones and stays
    within max_bytes, as counted and as tracemalloc measures it."""
    limit, keys = 100, 3000  # 300,000 decisions; 4 MiB hold about 1,100 such keys
    clock = FakeClock(T0)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        store = MemoryStore(100_000, max_bytes=4 << 20, clock=clock)
        most = 0
        for i in range(keys):
            key = f"198.51.{i >> 8}.{i & 255}"
            for _ in range(limit):
                clock.advance(1e-6)  # a new float each time, as time.time() gives
                store.hit("dos", key, limit, 1.0)
            if i % 100 == 99:
                most = max(most, tracemalloc.get_traced_memory()[0] - start)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert max(most, held) <= store.max_bytes
    assert store.counted_bytes <= store.max_bytes
    assert 1000 < len(store) < keys
    # the most recent keys are still counted exactly
    assert store.peek("dos", key, 1.0) == limit
    assert store.hit("dos", key, limit, 1.0)[0] == OVER
    assert counters_consistent(store)


def test_a_busy_namespace_pays_for_its_own_rings() -> None:
    """Room for rings is made in the namespace counted the most bytes, not
    the one with the most keys: a flood of busy keys against one filter
    does not wash out another filter's login streaks."""
    store = MemoryStore(100_000, max_bytes=256 * 1024, clock=FakeClock(T0))
    for i in range(200):
        store.settle("login", f"user{i}", True, 5, 60.0, 900.0)  # 200 streaks of 1
    for i in range(300):
        for _ in range(100):
            store.hit("dos", f"10.0.{i >> 8}.{i & 255}", 100, 60.0)
        assert store.counted_bytes <= store.max_bytes
    assert len(store._spaces["dos"]) + len(store._aged["dos"]) < 300
    for i in range(200):  # every streak is still there
        assert store.settle("login", f"user{i}", True, 2, 60.0, 900.0)[0] == JAILED
    assert counters_consistent(store)


def test_a_ring_larger_than_max_bytes_stays_exact_on_its_own() -> None:
    store = MemoryStore(1000, max_bytes=8 * 1024, clock=FakeClock(T0))
    for i in range(10):
        store.hit("dos", f"idle{i}", 1000, 60.0)
    for _ in range(150):  # the ring doubles to 256 slots: over 8 KiB alone
        assert store.hit("dos", "busy", 1000, 60.0)[0] == OK
    assert store.peek("dos", "busy", 60.0) == 150
    assert all(store.peek("dos", f"idle{i}", 60.0) == 0 for i in range(10))
    assert store.counted_bytes > store.max_bytes  # the one exception to the bound
    assert len(store) == 1
    assert counters_consistent(store)


def test_expired_counters_are_purged_as_new_keys_come() -> None:
    """Under churn the store holds at most about two windows of keys, not
    max_keys: the aged windows go together once the latest of them has
    expired (checked every 128 new keys), and then the store is down to
    about one window."""
    store, clock = make(max_keys=10_000)
    held = []
    for i in range(20_000):  # 1,000 new keys a second, 1 s window
        clock.advance(0.001)
        store.hit("dos", f"k{i}", 5, 1.0)
        held.append(len(store))
        assert held[-1] <= 2 * (1000 + 128)
    assert min(held[5000:]) <= 1000 + 128  # (they do go)
    assert sum(held[5000:]) / 15_000 < 1600
    assert counters_consistent(store)


def test_idle_keys_expire() -> None:
    store, clock = make()
    for i in range(5):
        store.hit("dos", f"ip{i}", 3, 1.0)
    store.swap("seen", "dev", "v", 2.0)
    store.block("login", "alice", 3.0, "failures")
    assert len(store) == 7
    assert store.expire() == 0
    clock.advance(1.0)
    assert store.expire() == 5  # the windows are over
    assert len(store) == 2
    clock.advance(1.0)
    assert store.expire() == 1  # the swap's ttl
    assert len(store) == 1
    assert [b.key for b in store.blocks()] == ["alice"]
    clock.advance(1.0)
    assert store.blocks() == []
    assert len(store) == 0
    assert store.expire() == 0


def test_expire_counts_ended_blocks() -> None:
    store, clock = make()
    store.block("login", "a", 1.0, "r")
    store.block("login", "b", 2.0, "r")
    clock.advance(1.5)
    assert store.expire() == 1
    assert len(store) == 1


def test_expired_counter_is_fresh_again() -> None:
    store, clock = make(max_keys=2)
    store.hit("dos", "a", 1, 1.0)
    clock.advance(1.0)
    assert store.hit("dos", "a", 1, 1.0) == (OK, 0, 1.0)


def test_clear() -> None:
    store, _ = make()
    store.hit("dos", "a", 1, 10.0)
    store.block("login", "b", 10.0, "r")
    store.clear()
    assert len(store) == 0
    assert store.blocks() == []
    assert store.hit("dos", "a", 1, 10.0)[0] == OK


# ---------------------------------------------------------------- async


def test_async_methods_answer_like_sync() -> None:
    sync_store, sync_clock = make(max_keys=50)
    async_store, async_clock = make(max_keys=50)

    def script_sync() -> list[Any]:
        s, c = sync_store, sync_clock
        out: list[Any] = []
        for _ in range(4):
            out.append(s.hit("dev", "p", 2, 10.0, 30.0))
            out.append(s.peek("dev", "p", 10.0))
        for _ in range(3):
            out.append(s.attempt("login", "u", 2, 60.0, 30.0))
            out.append(s.settle("login", "u", True, 2, 60.0, 100.0, factor=2.0, memory=600.0))
        out.append(s.swap("seen", "k", "v", 5.0))
        out.append(s.swap("seen", "k", "w", 5.0))
        out.append(s.block("dos", "ip", 20.0, "manual"))
        out.append(s.get_block("dos", "ip"))
        c.advance(1)
        out.append(s.blocks())
        out.append(s.blocks("login"))
        out.append(s.unblock("u"))
        out.append(s.unblock_all())
        return out

    async def script_async() -> list[Any]:
        s, c = async_store, async_clock
        out: list[Any] = []
        for _ in range(4):
            out.append(await s.ahit("dev", "p", 2, 10.0, 30.0))
            out.append(await s.apeek("dev", "p", 10.0))
        for _ in range(3):
            out.append(await s.aattempt("login", "u", 2, 60.0, 30.0))
            out.append(
                await s.asettle("login", "u", True, 2, 60.0, 100.0, factor=2.0, memory=600.0)
            )
        out.append(await s.aswap("seen", "k", "v", 5.0))
        out.append(await s.aswap("seen", "k", "w", 5.0))
        out.append(await s.ablock("dos", "ip", 20.0, "manual"))
        out.append(await s.aget_block("dos", "ip"))
        c.advance(1)
        out.append(await s.ablocks())
        out.append(await s.ablocks("login"))
        out.append(await s.aunblock("u"))
        out.append(await s.aunblock_all())
        await s.aclose()
        return out

    expected = script_sync()
    assert asyncio.run(script_async()) == expected
    assert (JAILED, 0, 30.0) in expected  # the script does exercise jails
    assert len(async_store) == len(sync_store)


# ------------------------------------------------------- constructor


@pytest.mark.parametrize("bad", [0, -1, True, False, "10", 1.5, None])
def test_max_keys_validation(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryStore(bad)


def test_clock_validation() -> None:
    with pytest.raises(ValueError, match="clock"):
        MemoryStore(clock=42)  # type: ignore[arg-type]
    store = MemoryStore(1)
    assert store.max_keys == 1
    assert abs(store.now() - time.time()) < 5


def test_integer_clock() -> None:
    store = MemoryStore(clock=lambda: 1000)
    assert store.hit("dos", "k", 5, 10.0)[0] == OK
    assert store.hit("dos", "k", 5, 10.0)[:2] == (OK, 3)


# ------------------------------------------ a clock that moves between calls


class TickingClock:
    """Moves forward a little on every read, like a real clock between two reads."""

    def __init__(self, start: float = T0, tick: float = 1e-3) -> None:
        self.now = start
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.mark.parametrize("operation", ["get_block", "hit", "attempt", "blocks", "unblock"])
def test_blocks_ending_between_two_clock_reads_do_not_raise(operation: str) -> None:
    """A block may end while the store is looking at it: no KeyError may escape.

    With a real clock, time moves between the reads a single call makes; a
    block ending in between must read as ended, not crash the request.
    """
    rng = random.Random(1)
    clock = TickingClock(tick=1e-3)
    store = MemoryStore(100, clock=clock)
    lifted = 0
    for _ in range(300):
        store.block("login", "k", rng.uniform(0.5, 6) * 1e-3, "failures")
        for _ in range(10):
            if operation == "get_block":
                store.get_block("login", "k")
            elif operation == "hit":
                store.hit("login", "k", 5, 1.0, jail=1e-4)
            elif operation == "attempt":
                store.attempt("login", "k", 5, 60.0, 30.0)
            elif operation == "blocks":
                store.blocks()
            else:
                lifted += store.unblock("k") + store.unblock_all("login")
    assert lifted <= 300
    clock.now += 10
    assert store.blocks() == []
