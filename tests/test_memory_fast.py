"""MemoryStore.hit's inlined cases (a key's second request, the purge),
pinned to core.slide and to the store's own byte counts on any sequence."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mailguard import FakeClock, MemoryStore
from mailguard.core import Log, slide
from mailguard.stores.base import OK, OVER
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
        now = clock()
        log, allowed, remaining, wait = slide(logs.get(key), now, limit, window, detail)
        got = store.hit("dos", key, limit, window, 0.0, detail)
        if allowed:
            logs[key] = log
            assert got == (OK, remaining, wait)
        else:
            assert got == (OVER, 0, wait)
        assert counters_consistent(store)
        assert len(store) <= 64


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
