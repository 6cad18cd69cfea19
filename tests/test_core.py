"""Tests for mailguard.core: the counting rules, clocks, blocks and Retry-After."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import FrozenInstanceError, astuple, dataclass, fields, replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailguard.core import (
    Block,
    FakeClock,
    Log,
    SystemClock,
    Verdict,
    clamp,
    log_count,
    log_last,
    log_times,
    retry_after,
    slide,
    streak,
)

# --------------------------------------------------------------- helpers

GRID = 8  # times and windows on a 1/8 s grid are exact in binary floating point


def copy_log(log: Log) -> Log:
    """``slide`` may change its state in place: copy it before a what-if probe."""
    if log is None or isinstance(log, float):
        return log
    return copy.deepcopy(log)


def log_items(log: Log, cutoff: float = -math.inf) -> list[float]:
    """The timestamps a sliding-window state holds after ``cutoff``, oldest first."""
    return log_times(log, cutoff)


def log_slots(log: Log) -> int:
    """How many timestamps the state has room for (its memory)."""
    if log is None:
        return 0
    if isinstance(log, float):
        return 1
    return len(log) - 1  # a Ring: [pos, slots...]


class Reference:
    """Brute-force sliding window: keeps every allowed time, forgets nothing.

    Times are clamped to the newest allowed time, the documented behaviour for
    a clock that steps backwards.  A request is allowed when fewer than
    ``limit`` allowed requests lie in ``(now - window, now]``.
    """

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.allowed: list[float] = []

    def effective(self, now: float) -> float:
        return max(now, self.allowed[-1]) if self.allowed else now

    def in_window(self, now: float) -> list[float]:
        cutoff = now - self.window
        return [t for t in self.allowed if t > cutoff]

    def decide(self, now: float) -> tuple[bool, int, float, list[float]]:
        now = self.effective(now)
        inside = self.in_window(now)
        if len(inside) >= self.limit:
            return False, 0, inside[0] + self.window - now, inside
        self.allowed.append(now)
        inside.append(now)
        return True, self.limit - len(inside), inside[0] + self.window - now, inside


grid_times = st.integers(min_value=0, max_value=400).map(lambda k: k / GRID)
grid_windows = st.integers(min_value=1, max_value=80).map(lambda k: k / GRID)
limits = st.integers(min_value=1, max_value=20)
bases = st.sampled_from([0.0, 1_700_000_000.0])


def run_slide(
    times: list[float], limit: int, window: float
) -> list[tuple[float, bool, int, float, Log]]:
    """Feed ``times`` to ``slide``; return (time, allowed, remaining, reset, log copy)."""
    log: Log = None
    out = []
    for now in times:
        log, allowed, remaining, reset = slide(log, now, limit, window)
        out.append((now, allowed, remaining, reset, copy_log(log)))
    return out


def max_per_window(times: list[float], window: float) -> int:
    """Most of ``times`` inside any half-open interval [t, t + window)."""
    best = 0
    for start in times:
        best = max(best, sum(1 for t in times if start <= t < start + window))
    return best


# ------------------------------------------------------------ slide: properties


@settings(max_examples=200, deadline=None)
@given(base=bases, times=st.lists(grid_times, max_size=80), limit=limits, window=grid_windows)
def test_slide_matches_reference_model_sorted(
    base: float, times: list[float], limit: int, window: float
) -> None:
    times = sorted(base + t for t in times)
    ref = Reference(limit, window)
    log: Log = None
    allowed_times: list[float] = []
    for now in times:
        exp_allowed, exp_remaining, exp_reset, exp_inside = ref.decide(now)
        before = copy_log(log)
        log, allowed, remaining, reset = slide(log, now, limit, window)
        # (b) refused exactly when `limit` requests were allowed in (now - W, now]
        assert allowed == exp_allowed
        # (c) remaining
        assert remaining == exp_remaining
        assert remaining == (limit - len(exp_inside) if allowed else 0)
        # reset: until the oldest counted request leaves the window
        assert reset == exp_reset
        assert 0 < reset <= window
        # (e) the state holds exactly the allowed requests still in the window
        # (and may keep expired ones until their slot is reused), never more
        # than `limit` slots, a bare float while a key has been seen once
        items = log_items(log, ref.effective(now) - window)
        assert items == exp_inside
        assert log_slots(log) <= limit
        if allowed and len(ref.allowed) == 1:
            assert type(log) is float
        if allowed:
            allowed_times.append(now)
        else:
            # a refusal is not recorded: the state is left as it was
            assert log_items(before) == log_items(log)
        assert log_count(log, now, window) == len(exp_inside)
        assert log_last(log) == ref.allowed[-1]
    # (a) no half-open interval [t, t + W) holds more than `limit` allowed requests
    assert max_per_window(allowed_times, window) <= limit


@settings(max_examples=200, deadline=None)
@given(base=bases, times=st.lists(grid_times, max_size=60), limit=limits, window=grid_windows)
def test_slide_refused_reset_is_exact(
    base: float, times: list[float], limit: int, window: float
) -> None:
    """(d) after a refusal, a request at now+reset is allowed, just before it is not."""
    times = sorted(base + t for t in times)
    log: Log = None
    for now in times:
        log, allowed, remaining, reset = slide(log, now, limit, window)
        if allowed:
            continue
        assert remaining == 0
        oldest = log_items(log, now - window)[0]
        assert reset == oldest + window - now
        _, ok_at, _, _ = slide(copy_log(log), now + reset, limit, window)
        assert ok_at, "a request after waiting `reset` must be allowed"
        _, ok_before, _, _ = slide(copy_log(log), now + reset - 1 / (2 * GRID), limit, window)
        assert not ok_before, "a request before `reset` has passed must be refused"


def test_slide_refusals_happen_in_property_inputs() -> None:
    """Sanity check that the property inputs above can refuse at all."""
    results = run_slide([0.0, 0.125, 0.25], limit=2, window=1.0)
    assert [r[1] for r in results] == [True, True, False]


@settings(max_examples=400, deadline=None)
@given(
    start=st.one_of(
        st.floats(min_value=0.0, max_value=2e9),
        st.floats(min_value=1.6e9, max_value=1.8e9),
    ),
    steps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=40),
    limit=st.one_of(st.integers(min_value=1, max_value=4), limits),
    window=st.one_of(
        st.floats(min_value=1e-3, max_value=100.0),
        st.sampled_from([0.3, 0.7, 1.1, 2.5, 59.9]),
    ),
)
@example(start=0.0, steps=[2.0, 0.0], limit=1, window=2.581678874008935)
@example(start=0.0, steps=[0.2, 0.1, 0.1], limit=2, window=1.0)
@example(start=2.225073858507203e-309, steps=[0.0, 1.0], limit=1, window=1.0)
def test_slide_waiting_reset_frees_a_slot_with_arbitrary_floats(
    start: float, steps: list[float], limit: int, window: float
) -> None:
    """(d) with real-world float times: a client that waits exactly `reset` gets in.

    This is what a FakeClock test does with ``clock.advance(wait)``, so rounding
    in ``oldest + window`` must never leave the request one ulp short.
    """
    clock = FakeClock(start)
    log: Log = None
    for step in steps:
        clock.advance(step)
        now = clock()
        log, allowed, _, reset = slide(log, now, limit, window)
        if allowed:
            continue
        assert reset > 0
        probe = FakeClock(now)
        probe.advance(reset)
        _, ok, _, _ = slide(copy_log(log), probe(), limit, window)
        assert ok, f"refused again after waiting reset={reset!r}"
        if reset > 1e-3:
            _, ok_half, _, _ = slide(copy_log(log), now + reset / 2, limit, window)
            assert not ok_half


@settings(max_examples=200, deadline=None)
@given(base=bases, times=st.lists(grid_times, max_size=80), limit=limits, window=grid_windows)
def test_slide_clock_stepping_backwards(
    base: float, times: list[float], limit: int, window: float
) -> None:
    """(f) unsorted times, clamped to the newest recorded time as the stores
    do (:func:`clamp`): the limit holds."""
    times = [base + t for t in times]
    ref = Reference(limit, window)
    log: Log = None
    high = -math.inf
    allowed_at_high: list[float] = []
    for now in times:
        high = max(high, now)
        exp_allowed, exp_remaining, exp_reset, exp_inside = ref.decide(now)
        log, allowed, remaining, reset = slide(log, clamp(log, now), limit, window)
        assert allowed == exp_allowed
        assert remaining == exp_remaining
        assert reset == exp_reset
        items = log_items(log, ref.effective(now) - window)
        assert items == exp_inside
        assert log_slots(log) <= limit
        assert log_items(log) == sorted(log_items(log))
        if allowed and len(ref.allowed) == 1:
            assert type(log) is float
        if allowed:
            # an allowed request is recorded at the max-so-far time
            assert items[-1] == high
            allowed_at_high.append(high)
    assert max_per_window(allowed_at_high, window) <= limit


@settings(max_examples=200, deadline=None)
@given(base=bases, times=st.lists(grid_times, max_size=80), limit=limits, window=grid_windows)
def test_slide_without_detail_decides_the_same(
    base: float, times: list[float], limit: int, window: float
) -> None:
    """``detail=False`` changes only what an allowed answer reports, never a decision."""
    times = sorted(base + t for t in times)
    exact: Log = None
    quick: Log = None
    for now in times:
        exact, allowed, remaining, reset = slide(exact, now, limit, window)
        quick, q_allowed, q_remaining, q_reset = slide(quick, now, limit, window, detail=False)
        assert q_allowed == allowed
        assert log_items(quick) == log_items(exact)
        if not allowed or (q_remaining, q_reset) != (-1, 0.0):
            assert (q_remaining, q_reset) == (remaining, reset)


@settings(max_examples=200, deadline=None)
@given(
    base=bases,
    steps=st.lists(st.tuples(grid_times, limits), max_size=80),
    window=grid_windows,
)
def test_slide_follows_a_limit_that_changes(
    base: float, steps: list[tuple[float, int]], window: float
) -> None:
    """A ring built under a higher limit still counts exactly under a lower one."""
    steps = sorted((base + t, limit) for t, limit in steps)
    allowed_times: list[float] = []
    log: Log = None
    highest = 2
    for now, limit in steps:
        highest = max(highest, limit)
        inside = [t for t in allowed_times if t > now - window]
        log, allowed, remaining, _ = slide(log, now, limit, window)
        assert allowed == (len(inside) < limit)
        assert remaining == (limit - len(inside) - 1 if allowed else 0)
        if allowed:
            allowed_times.append(now)
        assert log_slots(log) <= highest


def test_slide_ring_grows_with_the_busiest_window_only() -> None:
    """Memory follows traffic: 3 requests a second under a limit of 1000 keep 4 slots."""
    log: Log = None
    for i in range(300):
        log, allowed, *_ = slide(log, i / 3, 1000, 1.0)
        assert allowed
    assert log_slots(log) == 4
    for i in range(50):  # a burst of 50 within one second
        log, *_ = slide(log, 100 + i / 100, 1000, 1.0)
    assert log_slots(log) == 64


@settings(max_examples=100, deadline=None)
@given(
    times=st.lists(st.integers(min_value=1_000, max_value=1_200), min_size=1, max_size=40),
    limit=limits,
    window=st.integers(min_value=1, max_value=30),
)
def test_slide_state_is_a_float_even_for_integer_times(
    times: list[int], limit: int, window: int
) -> None:
    """Whole-second times (the store turns an int clock's readings into floats)."""
    times.sort()
    ref = Reference(limit, window)
    log: Log = None
    for now in times:
        exp_allowed, _, _, exp_inside = ref.decide(now)
        log, allowed, _, _ = slide(log, float(now), limit, window)
        assert allowed == exp_allowed
        assert log_items(log, now - window) == exp_inside
        if allowed and len(ref.allowed) == 1:
            assert type(log) is float


# ------------------------------------------------------------ slide: examples


def test_slide_first_request() -> None:
    log, allowed, remaining, reset = slide(None, 100.0, 3, 10.0)
    assert (log, allowed, remaining, reset) == (100.0, True, 2, 10.0)
    assert type(log) is float


def test_slide_limit_one() -> None:
    log, allowed, remaining, reset = slide(None, 100.0, 1, 10.0)
    assert (allowed, remaining) == (True, 0)
    log, allowed, remaining, reset = slide(log, 104.0, 1, 10.0)
    assert (log, allowed, remaining, reset) == (100.0, False, 0, 6.0)
    # exactly `window` seconds old no longer counts
    log, allowed, remaining, reset = slide(log, 110.0, 1, 10.0)
    assert (log, allowed, remaining, reset) == (110.0, True, 0, 10.0)


def test_slide_limit_three_window_edge() -> None:
    results = run_slide([0.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.25], limit=3, window=1.0)
    assert [(r[1], r[2]) for r in results] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),  # 0.75: three in (-0.25, 0.75]
        (True, 0),  # 1.0: the request at 0.0 has just left
        (False, 0),  # 1.0 again: 0.25, 0.5, 1.0 in the window
        (True, 0),  # 1.25: 0.25 left
    ]
    assert results[3][3] == 0.25
    assert results[5][3] == 0.25
    assert log_items(results[-1][4], 0.25) == [0.5, 1.0, 1.25]


def test_slide_reuses_an_idle_ring_without_growing_it() -> None:
    log: Log = None
    for t in (0.0, 1.0, 2.0):
        log, *_ = slide(log, t, 5, 10.0)
    assert log.__class__ is not float
    assert log_items(log) == [0.0, 1.0, 2.0] and log_slots(log) == 4
    log, allowed, remaining, reset = slide(log, 100.0, 5, 10.0)
    assert (allowed, remaining, reset) == (True, 4, 10.0)
    assert log_items(log, 90.0) == [100.0] and log_slots(log) == 4


def test_slide_goes_back_to_one_float_when_a_lower_limit_finds_nothing_live() -> None:
    log: Log = None
    for t in (0.0, 1.0, 2.0, 3.0, 4.0):
        log, *_ = slide(log, t, 8, 10.0)
    log, allowed, remaining, _ = slide(log, 100.0, 2, 10.0)
    assert (log, allowed, remaining) == (100.0, True, 1)


def test_slide_refused_request_is_not_recorded() -> None:
    log: Log = None
    for t in (0.0, 0.5):
        log, *_ = slide(log, t, 2, 1.0)
    for t in (0.6, 0.7, 0.8, 0.9):
        log, allowed, _, _ = slide(log, t, 2, 1.0)
        assert not allowed
    assert log_items(log) == [0.0, 0.5]
    log, allowed, _, _ = slide(log, 1.0, 2, 1.0)
    assert allowed


def test_slide_backwards_step_cannot_reopen_window() -> None:
    log: Log = None
    log, allowed, *_ = slide(log, 100.0, 1, 10.0)
    assert allowed
    # the clock jumps back an hour: clamped, the request at 100 still counts
    log, allowed, _, reset = slide(log, clamp(log, 100.0 - 3600), 1, 10.0)
    assert not allowed
    assert reset == 10.0
    log, allowed, *_ = slide(log, 110.0, 1, 10.0)
    assert allowed


def test_log_count_and_last() -> None:
    assert log_count(None, 5.0, 1.0) == 0
    assert log_last(None) == -math.inf
    assert log_count(4.5, 5.0, 1.0) == 1
    assert log_count(4.0, 5.0, 1.0) == 0  # exactly a window old
    assert log_last(4.0) == 4.0
    several: Log = None
    for t in (1.0, 2.0, 3.0):
        several, *_ = slide(several, t, 5, 10.0)
    assert log_count(several, 3.5, 2.0) == 2
    assert log_count(several, 3.0, 2.0) == 2  # 1.0 is exactly a window old
    assert log_count(several, 4.0, 2.0) == 1
    assert log_count(several, 10.0, 2.0) == 0
    assert log_last(several) == 3.0


# ------------------------------------------------------------------- streak


def reference_streak(failures: list[float], interval: float) -> int:
    """Trailing run of failures each at most `interval` after the previous one."""
    if not failures:
        return 0
    run = 1
    for i in range(len(failures) - 1, 0, -1):
        if failures[i] - failures[i - 1] <= interval:
            run += 1
        else:
            break
    return run


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=40).map(lambda k: k / 4), max_size=50),
    interval=st.integers(min_value=0, max_value=40).map(lambda k: k / 4),
    start=bases,
)
def test_streak_matches_reference(gaps: list[float], interval: float, start: float) -> None:
    count, last = 0, -math.inf
    failures: list[float] = []
    now = start
    for gap in gaps:
        now += gap
        failures.append(now)
        count = streak(count, last, now, interval)
        last = now
        assert count == reference_streak(failures, interval)
        assert count >= 1


def test_streak_examples() -> None:
    assert streak(0, -math.inf, 100.0, 60.0) == 1
    assert streak(0, 99.0, 100.0, 60.0) == 1  # no streak yet, whatever `last` says
    assert streak(3, 40.0, 100.0, 60.0) == 4  # exactly `interval` later continues
    assert streak(3, 39.9, 100.0, 60.0) == 1  # a longer pause restarts
    assert streak(4, 100.0, 100.0, 0.0) == 5


# -------------------------------------------------------------- retry_after


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (math.nan, 1),
        (-math.inf, 1),
        (-5.0, 1),
        (0.0, 1),
        (1e-12, 1),
        (0.5, 1),
        (1.0, 1),
        (1.0001, 2),
        (1.5, 2),
        (2.0, 2),
        (2.5, 3),
        (59.999, 60),
        (60.0, 60),
        (86_400.0, 86_400),
    ],
)
def test_retry_after_examples(seconds: float, expected: int) -> None:
    result = retry_after(seconds)
    assert result == expected
    assert type(result) is int


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10**9))
def test_retry_after_exact_integers_not_rounded_up(n: int) -> None:
    assert retry_after(float(n)) == n


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-6, max_value=1e7))
def test_retry_after_rounds_up(seconds: float) -> None:
    result = retry_after(seconds)
    assert result >= 1
    # rounded up (a hair of float noise below an integer is tolerated) ...
    assert result >= seconds - 1e-6
    # ... but never by a whole second
    assert result - 1 < seconds or result == 1


# -------------------------------------------------------------------- clocks


def test_fake_clock_advance_and_set() -> None:
    clock = FakeClock()
    assert clock() == 1_700_000_000.0
    clock.advance(90)
    assert clock() == 1_700_000_090.0
    assert type(clock()) is float
    clock.advance(0)
    assert clock() == 1_700_000_090.0
    clock.advance(0.25)
    assert clock() == 1_700_000_090.25
    clock.set(5)
    assert clock() == 5.0
    assert type(clock()) is float
    clock.set(1.0)  # backwards is allowed
    assert clock() == 1.0
    assert "1.0" in repr(clock)


@pytest.mark.parametrize("bad", [-1, -0.001, -math.inf, math.nan])
def test_fake_clock_rejects_negative_advance(bad: float) -> None:
    clock = FakeClock(start=10)
    with pytest.raises(ValueError):
        clock.advance(bad)
    assert clock() == 10.0


def test_fake_clock_start_is_float() -> None:
    clock = FakeClock(start=7)
    assert clock() == 7.0
    assert type(clock()) is float


def test_system_clock_is_wall_time() -> None:
    before = time.time()
    now = SystemClock()()
    after = time.time()
    assert before <= now <= after
    assert repr(SystemClock()) == "SystemClock()"


# -------------------------------------------------------------------- Block


def test_block_left_and_active() -> None:
    block = Block("login", "alice@example.com", "failures", since=100.0, until=160.0)
    assert block.left(100.0) == 60.0
    assert block.left(150.5) == 9.5
    assert block.left(160.0) == 0.0
    assert block.left(1_000.0) == 0.0
    assert block.active(100.0)
    assert block.active(159.999)
    assert not block.active(160.0)  # ends at `until`
    assert not block.active(161.0)
    with pytest.raises(FrozenInstanceError):
        block.until = 0.0  # type: ignore[misc]


@settings(max_examples=100, deadline=None)
@given(
    until=st.floats(min_value=-1e9, max_value=1e9),
    now=st.floats(min_value=-1e9, max_value=1e9),
)
def test_block_left_consistent_with_active(until: float, now: float) -> None:
    block = Block("dos", "k", "rate", since=until - 1, until=until)
    assert block.left(now) >= 0
    assert (block.left(now) > 0) == block.active(now)


def test_verdict_defaults() -> None:
    verdict = Verdict(True)
    assert verdict.allowed
    assert verdict.reason == "ok"
    assert verdict.remaining == -1
    assert verdict.retry_after == 0


@dataclass(frozen=True, slots=True)
class _ReferenceVerdict:
    """Verdict as the dataclass alone would make it: its fields, its __init__."""

    allowed: bool
    reason: str = "ok"
    key: str = ""
    retry_after: int = 0
    remaining: int = -1
    reset: float = 0.0
    limit: int = 0
    delay: float = 0.0
    watch: bool = False


@settings(max_examples=200)
@given(
    st.booleans(),
    st.fixed_dictionaries(
        {},
        optional={
            "reason": st.text(max_size=8),
            "key": st.text(max_size=8),
            "retry_after": st.integers(-5, 10**6),
            "remaining": st.integers(-1, 10**6),
            "reset": st.floats(allow_nan=False),
            "limit": st.integers(0, 10**6),
            "delay": st.floats(0, 10),
            "watch": st.booleans(),
        },
    ),
)
def test_verdicts_own_init_stores_what_the_dataclass_would(
    allowed: bool, given: dict[str, object]
) -> None:
    made = Verdict(allowed, **given)  # type: ignore[arg-type]
    reference = _ReferenceVerdict(allowed, **given)  # type: ignore[arg-type]
    assert [f.name for f in fields(Verdict)] == [f.name for f in fields(_ReferenceVerdict)]
    assert [f.default for f in fields(Verdict)] == [f.default for f in fields(_ReferenceVerdict)]
    assert astuple(made) == astuple(reference)
    assert repr(made) == repr(reference).replace("_ReferenceVerdict", "Verdict")
    assert made == replace(made) and hash(made) == hash(replace(made))
    with pytest.raises(FrozenInstanceError):
        made.key = "other"  # type: ignore[misc]


class _Plain(Verdict):
    """A subclass adding nothing: Verdict's __init__ must leave it a _Plain."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, init=False)
class _WithMore(Verdict):
    """A subclass adding a slot (another layout): set through the setters."""

    more: int = 0

    def __init__(self, allowed: bool, reason: str, more: int) -> None:
        Verdict.__init__(self, allowed, reason, "k", retry_after=3)
        object.__setattr__(self, "more", more)


def test_verdicts_init_keeps_a_subclass_its_class_and_every_verdict_frozen() -> None:
    plain = _Plain(False, "rate", "k", retry_after=2)
    assert type(plain) is _Plain
    assert (plain.allowed, plain.reason, plain.key, plain.retry_after) == (False, "rate", "k", 2)
    more = _WithMore(True, "ok", 7)
    assert type(more) is _WithMore
    assert (more.reason, more.key, more.retry_after, more.more) == ("ok", "k", 3, 7)
    made = Verdict(False, "rate", "k", retry_after=1)
    assert type(made) is Verdict
    for verdict in (plain, more, made):
        with pytest.raises(FrozenInstanceError):
            verdict.reason = "other"  # type: ignore[misc]
        with pytest.raises(FrozenInstanceError):
            del verdict.key  # type: ignore[misc]
