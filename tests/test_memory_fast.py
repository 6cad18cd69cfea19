"""MemoryStore.hit's inlined cases (a key's second request, the purge),
pinned to core.slide and to the store's own byte counts on any sequence."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mailguard import FakeClock, MemoryStore
from mailguard.core import Log, slide
from mailguard.stores.base import JAILED, OK, OVER
from tests.test_memory_store import counters_consistent

T0 = 1_700_000_000.0


@settings(max_examples=300, deadline=None, database=None)
@given(
    limit=st.integers(1, 4),
    window=st.sampled_from([0.5, 1.0, 3.0]),
    detail=st.booleans(),
    steps=st.lists(
        st.tuples(st.integers(0, 39), st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5]), st.booleans()),
        max_size=150,
    ),
)
def test_hit_is_slide_on_any_sequence(
    limit: int, window: float, detail: bool, steps: list[tuple[int, float, bool]]
) -> None:
    clock = FakeClock(T0)
    store = MemoryStore(64, clock=clock)  # room for all 46 keys: never evicts
    logs: dict[str, Log] = {}
    for key_no, pause, fresh in steps:
        clock.advance(pause)
        key = f"f{key_no}" if fresh else f"k{key_no % 6}"  # 40 "fresh" keys: purges
        _hit_is_slide(store, logs, key, clock(), limit, window, detail)
        assert counters_consistent(store)
        assert len(store) <= 64


def _hit_is_slide(
    store: MemoryStore,
    logs: dict[str, Log],
    key: str,
    now: float,
    limit: int,
    window: float,
    detail: bool,
) -> None:
    """The store's answer for ``key`` is core.slide's on the key's log
    (kept in ``logs``)."""
    log, allowed, remaining, wait = slide(logs.get(key), now, limit, window, detail)
    got = store.hit("dos", key, limit, window, 0.0, detail)
    if allowed:
        logs[key] = log
        assert got == (OK, remaining, wait)
    else:
        assert got == (OVER, 0, wait)


def test_the_purge_counts_out_expired_rings_and_states() -> None:
    clock = FakeClock(T0)
    store = MemoryStore(10_000, clock=clock)
    for i in range(200):  # rings of 2 and of 4 slots, and login states
        for _ in range(1 + i % 4):
            store.hit("dos", f"r{i}", 10, 1.0)
        store.swap("dos", f"s{i}", "v" * (i % 7), 0.5)
        clock.advance(0.001)
    store.hit("dos", "turn", 10, 1.0)
    clock.advance(2.0)
    for i in range(1000):  # new keys: the purge drops the expired ones first in line
        store.hit("dos", f"n{i}", 10, 1.0)
        assert counters_consistent(store)
    assert len(store) < 1000 + 128


_sweep_step = st.one_of(
    st.tuples(st.just("fresh"), st.integers(0, 300)),  # that many new keys, once each
    st.tuples(st.just("key"), st.integers(0, 5), st.sampled_from([0.5, 1.0, 3.0])),
    st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 1.0, 2.5, 4.0])),
    st.tuples(st.just("swap"), st.integers(0, 2), st.sampled_from([0.5, 5.0])),
)


@settings(max_examples=60, deadline=None, database=None)
@given(
    limit=st.integers(1, 3),
    detail=st.booleans(),
    swaps=st.booleans(),
    steps=st.lists(_sweep_step, max_size=40),
)
def test_windows_that_go_together_had_all_expired(
    limit: int, detail: bool, swaps: bool, steps: list[tuple[object, ...]]
) -> None:
    """The purge every 128 new keys drops a namespace's aged windows all at
    once (MemoryStore._sweep): whatever the windows (the longest one can
    grow after they were turned over), the keys seen again since, and
    remembered values in the same namespace (which end at their own time),
    every decision is still core.slide's, and every value still swap's."""
    clock = FakeClock(T0)
    store = MemoryStore(1_000_000, clock=clock)  # never full: only purges drop counters
    logs: dict[str, Log] = {}
    kept: dict[str, tuple[float, str]] = {}  # remembered values: (until, value)
    fresh = 0
    for step in steps:
        now = clock()
        if step[0] == "advance":
            clock.advance(float(step[1]))  # type: ignore[arg-type]
            continue
        if step[0] == "swap":
            if not swaps:
                continue
            key, ttl = f"s{step[1]}", float(step[2])  # type: ignore[arg-type]
            until, value = kept.get(key, (0.0, ""))
            assert store.swap("dos", key, str(now), ttl) == (value if until > now else None)
            kept[key] = (now + ttl, str(now))
            continue
        if step[0] == "fresh":
            todo = [(f"f{fresh + i}", 1.0) for i in range(int(step[1]))]  # type: ignore[call-overload]
            fresh += len(todo)
        else:
            todo = [(f"k{step[1]}", float(step[2]))]  # type: ignore[arg-type]
        for key, window in todo:
            _hit_is_slide(store, logs, key, now, limit, window, detail)
        assert counters_consistent(store)


def _flood(store: MemoryStore, start: int, count: int) -> None:
    """``count`` new keys in ``dos``, once each (a purge every 128)."""
    for i in range(start, start + count):
        assert store.hit("dos", f"f{i}", 5, 1.0)[0] == OK


def test_windows_go_together_only_once_the_longest_window_is_over() -> None:
    clock = FakeClock(T0)
    store = MemoryStore(1_000_000, clock=clock)
    store.hit("dos", "long", 1, 3.0)  # a 3 s window
    store.hit("dos", "short", 1, 1.0)
    _flood(store, 0, 200)  # the first purge turns them all over
    assert store._aged["dos"] and store._aged_as["dos"][1] < math.inf
    clock.advance(2.0)
    _flood(store, 200, 300)  # 1 s windows over, the 3 s one not: all are kept
    assert "long" in store._aged["dos"]
    assert store.hit("dos", "long", 1, 3.0)[0] == OVER
    assert store.hit("dos", "short", 1, 3.0)[0] == OVER  # (3 s now covers it too)
    clock.advance(3.5)
    _flood(store, 500, 300)  # every aged window over: they go together
    assert "f0" not in store._aged["dos"] and "f199" in store._aged["dos"]
    assert store.hit("dos", "f0", 1, 3.0)[0] == OK
    clock.advance(3.5)
    _flood(store, 800, 300)  # and so do the rest, a turn-over later
    held = {*store._spaces["dos"], *store._aged["dos"]}
    assert not held & {f"f{i}" for i in range(1, 500)}
    assert counters_consistent(store)


def test_windows_that_go_together_leave_nothing_behind() -> None:
    """The purge is due every 128 new keys of any namespace, and drops the
    expired counters of the one whose key made it due: there the aged
    windows can go while nothing is recent, and then neither their counters
    nor their keys' strings are held anywhere."""
    clock = FakeClock(T0)
    store = MemoryStore(1_000_000, clock=clock)
    _flood(store, 0, 127)
    assert store.hit("dos", "j", 1, 1.0, 5.0)[0] == OK  # the 128th: they turn over
    assert store.hit("dos", "j", 1, 1.0, 5.0)[0] == JAILED  # (its window goes: a block)
    assert len(store._aged["dos"]) == 127 and not store._spaces["dos"]
    clock.advance(2.0)
    for i in range(127):
        store.hit("dev", f"d{i}", 5, 1.0)
    store.hit("dos", "last", 5, 1.0)  # makes the purge due: the aged windows go
    assert not store._aged["dos"] and not store._queue["dos"]
    assert list(store._spaces["dos"]) == ["last"]
    assert len(store) == 127 + 1 + 1  # (and the block)
    assert counters_consistent(store)


def test_remembered_values_keep_a_namespace_on_the_one_by_one_purge() -> None:
    """A remembered value (or a login state) ends at its own time, however
    short the namespace's windows: aged counters with one among them are
    purged one by one, first in line, as long as they have expired."""
    clock = FakeClock(T0)
    store = MemoryStore(1_000_000, clock=clock)
    _flood(store, 0, 100)
    store.swap("dos", "seen", "v", 60.0)
    _flood(store, 100, 100)  # the first purge turns them all over
    assert "seen" in store._aged["dos"] and store._aged_as["dos"][1] == math.inf
    clock.advance(2.0)
    _flood(store, 200, 400)
    aged = store._aged["dos"]
    assert not aged.keys() & {f"f{i}" for i in range(100)}  # expired, ahead of it: gone
    assert "f100" in aged  # (behind it in line: kept for now)
    assert store.swap("dos", "seen", "w", 60.0) == "v"
    assert counters_consistent(store)


class _NoHotKey(MemoryStore):
    """MemoryStore with hit()'s hot-key case switched off: every request
    pops its key and puts it back (the general way)."""

    def hit(
        self,
        ns: str,
        key: str,
        limit: int,
        window: float,
        jail: float = 0.0,
        detail: bool = True,
    ) -> tuple[int, int, float]:
        try:
            return super().hit(ns, key, limit, window, jail, detail)
        finally:
            self._hot_key = None


def hot_key_held(store: MemoryStore) -> bool:
    """hit()'s hot key, if any, is the newest counter of its namespace and
    holds the very ring remembered (with its slot count); else no ring is
    remembered (none dropped from the store is kept alive)."""
    key = store._hot_key
    if key is None:
        return store._hot_ring == []
    space = store._spaces[store._hot_ns]
    return (
        next(reversed(space)) == key
        and space[key] is store._hot_ring
        and store._hot_slots == len(store._hot_ring) - 1
    )


def _state(store: MemoryStore) -> object:
    """Everything a decision or an eviction reads, in order."""
    return (
        {ns: list(space.items()) for ns, space in store._spaces.items()},
        {ns: sorted(aged.items()) for ns, aged in store._aged.items()},
        {ns: [k for k in queue if k in store._aged[ns]] for ns, queue in store._queue.items()},
        store._ttl,
        store._counters,
        store._extra,
        store._cap,
        sorted((b.kind, b.key, b.until) for b in store.blocks()),
    )


_op = st.one_of(
    st.tuples(
        st.just("hit"),
        st.sampled_from(["dos", "dos", "dev"]),
        st.integers(0, 4),
        st.integers(1, 5),
        st.sampled_from([0.5, 1.0, 3.0]),
        st.sampled_from([0.0, 0.0, 5.0]),
        st.booleans(),
    ),
    # bursts from one key, detail off (as DosFilter asks): most of the ops
    *[st.tuples(st.just("hot"), st.integers(1, 6), st.sampled_from([0.0, 0.4, 0.4, 1.1]))] * 4,
    st.tuples(st.just("fresh"), st.integers(1, 8)),  # new keys: evictions, turn-overs
    st.tuples(st.just("advance"), st.sampled_from([0.0, 0.001, 0.1, 0.5, 1.0, 2.5])),
    st.tuples(st.just("back"), st.sampled_from([0.001, 0.3])),  # the clock steps back
    st.tuples(st.just("swap"), st.integers(0, 2)),
    st.tuples(st.just("login"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("block"), st.integers(0, 4)),
    st.tuples(st.just("unblock"), st.integers(0, 4)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("clear_counters")),
)


@settings(max_examples=400, deadline=None, database=None)
@given(
    max_keys=st.sampled_from([3, 6, 64]),
    max_bytes=st.sampled_from([None, 2500]),
    ops=st.lists(_op, min_size=10, max_size=80),
)
def test_the_hot_key_case_is_the_general_case(
    max_keys: int, max_bytes: int | None, ops: list[tuple[object, ...]]
) -> None:
    """hit() skips the dict for the busy key it last took through its ring
    case; on any interleaving of requests, logins, values, blocks, expiry,
    turn-overs, evictions and clock steps, it answers and holds exactly what
    it does when every request pops its key and puts it back."""
    clocks = (FakeClock(T0), FakeClock(T0))
    stores = (
        MemoryStore(max_keys, max_bytes=max_bytes, clock=clocks[0]),
        _NoHotKey(max_keys, max_bytes=max_bytes, clock=clocks[1]),
    )
    for step, op in enumerate(ops):
        got = []
        for store, clock in zip(stores, clocks, strict=True):
            kind = op[0]
            if kind == "hit":
                _, ns, k, limit, window, jail, detail = op
                got.append(store.hit(str(ns), f"k{k}", int(limit), window, jail, detail))  # type: ignore[arg-type]
            elif kind == "hot":
                for _ in range(int(op[1])):  # type: ignore[call-overload]
                    got.append(store.hit("dos", "k0", 3, 1.0, 0.0, False))
                    clock.advance(op[2])  # type: ignore[arg-type]
            elif kind == "fresh":
                for i in range(int(op[1])):  # type: ignore[call-overload]
                    got.append(store.hit("dos", f"n{step}.{i}", 3, 1.0))
            elif kind == "advance":
                clock.advance(op[1])  # type: ignore[arg-type]
            elif kind == "back":
                clock.set(clock() - op[1])  # type: ignore[operator]
            elif kind == "swap":
                got.append(store.swap("dos", f"s{op[1]}", "v", 2.0))
            elif kind == "login":
                got.append(store.attempt("dos", f"l{op[1]}", 3, 10.0, 5.0))
                got.append(store.settle("dos", f"l{op[1]}", bool(op[2]), 3, 10.0, 4.0))
            elif kind == "block":
                got.append(store.block("dos", f"k{op[1]}", 3.0, "test").until)
            elif kind == "unblock":
                got.append(store.unblock(f"k{op[1]}"))
            elif kind == "expire":
                got.append(store.expire())
            else:
                store.clear_counters()
        assert got[: len(got) // 2] == got[len(got) // 2 :]
        assert _state(stores[0]) == _state(stores[1])
        assert counters_consistent(stores[0])
        assert hot_key_held(stores[0])


def test_the_hot_key_stays_exact_when_a_block_turns_its_namespace_over() -> None:
    """A new block in a full store evicts counters, which may turn the hot
    key's namespace over (its recent dict becomes the aged one): its next
    request must move it back among the recent ones, as the general case does."""
    clocks = (FakeClock(T0), FakeClock(T0))
    stores = (MemoryStore(4, clock=clocks[0]), _NoHotKey(4, clock=clocks[1]))
    for store, clock in zip(stores, clocks, strict=True):
        store.hit("dos", "a", 3, 1.0)
        store.hit("dos", "b", 3, 1.0)
        for _ in range(5):  # k0's ring case: the hot key
            store.hit("dos", "k0", 3, 1.0, 0.0, False)
            clock.advance(0.4)
        store.hit("dos", "c", 3, 10.0)  # full: 4 counters
        for _ in range(2):
            store.hit("dos", "k0", 3, 1.0, 0.0, False)
            clock.advance(0.4)
        store.block("dev", "x", 5.0, "test")  # evicts a, turning "dos" over
        assert store._aged["dos"]
        for _ in range(3):
            store.hit("dos", "k0", 3, 1.0, 0.0, False)
            clock.advance(0.4)
        assert "k0" in store._spaces["dos"]
    assert _state(stores[0]) == _state(stores[1])
    assert counters_consistent(stores[0])
    assert hot_key_held(stores[0])
