"""MemoryStore.attempt and settle's inlined cases (a first attempt, a
settle that keeps or drops the attempt's own streak), pinned on any sequence
to the store's original code: core.begin_attempt and core.end_attempt over
_take, _forget and _room, as a subclass below runs them."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailguard import FakeClock, MemoryStore
from mailguard.core import Streak, begin_attempt, end_attempt, outlasts, wait_until
from mailguard.stores.base import BLOCKED, JAILED, OK
from tests.test_memory_store import counters_consistent

T0 = 1_700_000_000.0


class OriginalStore(MemoryStore):
    """attempt and settle as they were before they were inlined (with the
    counter's record as the store now holds it: ``(expires, *streak)``)."""

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
            if state is None and not self._room(ns, now, 192):
                return OK, limit - 1, 0.0
            record, code, remaining, wait = begin_attempt(
                None if state is None else Streak(*state[1:]), now, limit, interval, pending_ttl
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
        now = self._clock()
        with self._lock:
            self._space(ns, 0.0)
            state = self._take(ns, key)
            if state is not None:
                self._forget(ns, state)
            record, reached, streak_now = end_attempt(
                None if state is None else Streak(*state[1:]), now, failed, limit, interval, reset
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
                    pending = (0, 0.0) if record is None else record[2:]
                    record = Streak(limit, now, *pending)
            if record is not None and self._room(ns, now, 192):
                self._spaces[ns][key] = (record.expires(interval), *record)
            return code, streak_now, blocked_for


def held(store: MemoryStore) -> dict[str, list[tuple[str, Any]]]:
    """Every counter of every namespace, recent then aged, in order."""
    return {
        ns: [*store._spaces[ns].items(), *store._aged[ns].items()] for ns in sorted(store._spaces)
    }


Step = tuple[str, int, float, bool, bool]


@settings(max_examples=600, deadline=None, database=None)
@given(
    max_keys=st.sampled_from([6, 12, 64]),
    max_bytes=st.sampled_from([None, 1200, 2000, 2600, 3000, 6000]),
    limit=st.integers(1, 4),
    interval=st.sampled_from([0.5, 2.0, 10.0]),
    pending_ttl=st.sampled_from([0.3, 1.0, 30.0]),
    factor=st.sampled_from([1.0, 2.0]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(["attempt", "settle", "hit", "block", "fresh", "burst"]),
            st.integers(0, 9),
            st.sampled_from([0.0, 0.0, 0.1, 0.4, 1.0, 3.0]),
            st.booleans(),
            st.booleans(),
        ),
        max_size=120,
    ),
)
def test_attempt_and_settle_are_the_original_code_on_any_sequence(
    max_keys: int,
    max_bytes: int | None,
    limit: int,
    interval: float,
    pending_ttl: float,
    factor: float,
    steps: list[Step],
) -> None:
    """Same answers, same counters in the same order, same counts, same
    blocks, whatever the sequence: full stores, purges, blocks refused for
    room, other namespaces' windows, lapsed slots and streaks."""
    clock = FakeClock(T0)
    fast = MemoryStore(max_keys, max_bytes=max_bytes, clock=clock)
    slow = OriginalStore(max_keys, max_bytes=max_bytes, clock=clock)
    memory = 60.0 if factor > 1.0 else 0.0
    for op, key_no, pause, failed, reset in steps:
        clock.advance(pause)
        key = f"k{key_no % 5}"
        answers = []
        for store in (fast, slow):
            if op == "attempt":
                answers.append(store.attempt("login", key, limit, interval, pending_ttl))
            elif op == "settle":
                said = store.settle(
                    "login", key, failed, limit, interval, 5.0,
                    reset=reset, factor=factor, max_block=20.0, memory=memory,
                )  # fmt: skip
                answers.append(said)
            elif op == "hit":  # another filter's window, with rings
                answers.append(store.hit("dos", key, 3, 2.0, 0.0, failed))
            elif op == "block":  # another namespace's block
                answers.append(store.block("device", key, 4.0, "test").until)
            elif op == "burst":  # a ring that grows past max_bytes on its own
                answers.append([store.hit("dos", "big", 60, 30.0) for _ in range(12)])
            else:  # fresh keys: purges, turn-overs, eviction
                answers.append(store.hit("dos", f"f{key_no}-{clock():.1f}", 3, 1.0))
        assert answers[0] == answers[1], (op, key)
        assert held(fast) == held(slow)
        assert fast._counters == slow._counters
        assert fast._extras == slow._extras
        assert fast._purge_in == slow._purge_in
        assert fast.blocks() == slow.blocks()
        assert fast.dropped == slow.dropped
        assert counters_consistent(fast)
        assert len(fast) <= max_keys


def test_the_fast_streak_is_a_flat_tuple_of_numbers() -> None:
    """The inlined paths store a login counter as ``(expires, *streak)``, as
    the slow paths store end_attempt's Streak: one plain tuple of numbers."""
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    assert store.attempt("login", "a", 3, 10.0, 30.0) == (OK, 2, 0.0)
    record = store._spaces["login"]["a"]
    assert type(record) is tuple and record == (T0 + 30.0, 0, -float("inf"), 1, T0 + 30.0)
    assert record[0] == Streak(*record[1:]).expires(10.0)
    clock.advance(1.0)
    assert store.settle("login", "a", True, 3, 10.0, 5.0) == (OK, 1, 0.0)
    record = store._spaces["login"]["a"]
    assert type(record) is tuple and record[1:] == (1, T0 + 1.0, 0, T0 + 30.0)
    assert record[0] == Streak(*record[1:]).expires(10.0)
    assert store.attempt("login", "a", 3, 10.0, 30.0) == (OK, 1, 0.0)
    assert store.settle("login", "a", False, 3, 10.0, 5.0, reset=True) == (OK, 0, 0.0)
    assert "a" not in store._spaces["login"] and counters_consistent(store)


def test_login_counters_are_not_left_to_the_garbage_collector() -> None:
    """A held login counter is no object the collector walks: at 100,000
    clients, counters held as Streaks (a tuple subclass, which the collector
    never stops tracking) made each full collection walk 200,000 objects.
    Each way a counter is written: the inlined attempt and settle, the slow
    settle of a key with no counter, and the slow settle that keeps the
    streak at the limit when the namespace has no room for the block."""
    clock = FakeClock(T0)
    store = MemoryStore(max_keys=8, clock=clock)  # room for 2 login blocks
    store.attempt("login", "fast", 3, 10.0, 30.0)
    clock.advance(1.0)
    store.settle("login", "fast", True, 3, 10.0, 5.0)  # (inlined)
    store.settle("login", "none", True, 3, 10.0, 5.0)  # no counter: _settle_rest
    store.block("login", "x1", 100.0, "test")
    store.block("login", "x2", 100.0, "test")
    for _ in range(2):
        store.attempt("login", "full", 2, 10.0, 30.0)
        answer = store.settle("login", "full", True, 2, 10.0, 5.0)
    assert answer[0] == JAILED and store.dropped == 1  # the block had no room
    gc.collect()
    held = [store._spaces["login"][key] for key in ("fast", "none", "full")]
    assert all(type(record) is tuple and len(record) == 5 for record in held)
    assert held[2][1] == 2  # kept at the limit: refused until the interval passes
    assert not any(gc.is_tracked(record) for record in held)


def test_a_foreign_record_is_no_login_counter() -> None:
    """A login attempt on a key whose counter is another filter's (a ring of
    five items, on a namespace shared by mistake) raises, as it did when the
    counter was read as a Streak, rather than read a time as a count."""
    store = MemoryStore(clock=FakeClock(T0))
    for _ in range(4):
        store.hit("login", "k", 10, 1.0)
    ring = store._spaces["login"]["k"]
    assert type(ring) is list and len(ring) == 5
    with pytest.raises(TypeError, match="not a login counter"):
        store.attempt("login", "k", 3, 10.0, 30.0)


def test_a_settle_in_a_store_over_its_bounds_makes_room_as_the_original() -> None:
    """The store over max_bytes when an attempt settles (not reached by the
    filters: a ring past max_bytes sheds every other counter first; forced
    here by lowering the bound): _room's eviction, as the original runs it."""
    for lowered in (2 * 448, 448, 300):
        clock = FakeClock(T0)
        fast = MemoryStore(64, clock=clock)
        slow = OriginalStore(64, clock=clock)
        for store in (fast, slow):
            for i in range(4):
                assert store.attempt("login", f"k{i}", 5, 10.0, 30.0)[0] == OK
            store.max_bytes = lowered
            store._recap()
        clock.advance(1.0)
        for i in range(4):
            assert fast.settle("login", f"k{i}", True, 5, 10.0, 5.0) == slow.settle(
                "login", f"k{i}", True, 5, 10.0, 5.0
            )
            assert held(fast) == held(slow)
            assert counters_consistent(fast)


def test_a_purge_that_comes_due_in_a_settle_counts_the_streak_once() -> None:
    """A settle that keeps a streak ticks the purge count (as _room does);
    when the purge comes due there, it may turn the namespace over, while
    the streak is out of the dicts: the streak is counted out first, so the
    aged counters' bytes are exactly theirs (see MemoryStore._aged_as)."""
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)
    for i in range(600):
        assert store.attempt("login", f"u{i}", 5, 60.0, 30.0)[0] == OK
        assert store.settle("login", f"u{i}", True, 5, 60.0, 300.0) == (OK, 1, 0.0)
        clock.advance(0.01)
        if i % 50 == 49:
            assert counters_consistent(store)
    assert store._aged["login"]
