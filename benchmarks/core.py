"""Core benchmark: decisions per second and bytes per key, mailguard vs limits.

Run:  .venv/bin/python benchmarks/core.py [--clients 1000,100000,1000000]
                    [--seconds 2.0] [--rounds 3] [--budget 60]

Prints tables, every row measured in this run (contenders take turns, round
after round; each cell is the best round, with the spread over the rounds),
and the ratios the issues set as targets:

- *one hot key*: decisions/s of ``MemoryStore.hit`` against ``limits``'
  ``FixedWindowRateLimiter`` and ``MovingWindowRateLimiter`` over
  ``MemoryStorage`` (a limit of 100 per second: the hot key is refused most of
  the time, the case a flood produces); and the same key kept under its limit
  (every decision allowed and recorded);
- *N distinct keys*, for each N of ``--clients`` from 1000 up (default 1,000,
  100,000 and 1,000,000), each key seen once at a limit of 100 per 60 s (so
  every key stays live): decisions/s with ``MemoryStore()`` as shipped
  (``max_keys`` 100,000: past that, new keys evict the least recently seen),
  with ``MemoryStore(max_keys=N + 10)`` (no eviction), and with ``limits``
  (unbounded); the new-key cost of the default store over the first and the
  last 10% of the keys; and the memory held per key (tracemalloc, key
  strings included);
- *churn*: 20,000 requests a second (simulated clock, 1 s window, limit
  100/s) from each N of ``--clients`` picked at random, ``MemoryStore()``
  against a plain-dict floor (a function that reads the clock and stores it
  in a dict under the client's key: what any per-client store must at least
  do, with no bound and no expiry);
- *busy keys*: bytes held per key when every key sends its limit (100 in one
  1 s window), with ``MemoryStore()`` as shipped (tracemalloc), against the
  bytes it counts and its ``max_bytes``.

A table by client count puts the churn ratio, the distinct-keys ratios and
the bytes per key side by side; the targets (1,000,000 distinct keys >= 10x
``limits``' fixed window at <= 120 bytes per key; churn <= 3x the dict floor
at 100,000 and 1,000,000 clients) are checked when those counts are run.
Every pass is bounded by count and by ``--budget`` seconds (a pass that hits
the budget is reported over the keys it got through, and marked).
"""

from __future__ import annotations

import argparse
import gc
import platform
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

from mailguard import MemoryStore
from mailguard.core import FakeClock


def rate(fn: Callable[[], object], seconds: float, batch: int = 2000) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (bounded)."""
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while done < 50_000_000:
        for _ in range(batch):
            fn()
        done += batch
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start)


def spread(values: list[float], fmt: str = "{:,.0f}") -> str:
    """``lo-hi`` of a row's rounds, for the tables."""
    return f"{fmt.format(min(values))}-{fmt.format(max(values))}"


def hot_key(seconds: float, limit: int, rounds: int) -> dict[str, list[float]]:
    """Decisions/s of each contender in each of ``rounds`` interleaved rounds.

    Interleaving (A, B, C, A, B, C, ...) and keeping each one's best round
    keeps a slow spell of this shared machine from landing on one contender.
    """
    from limits import RateLimitItemPerSecond
    from limits.storage import MemoryStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

    item = RateLimitItemPerSecond(limit)
    store = MemoryStore()
    fixed = FixedWindowRateLimiter(MemoryStorage())
    moving = MovingWindowRateLimiter(MemoryStorage())
    hit = store.hit
    contenders: dict[str, Callable[[], object]] = {
        "mailguard MemoryStore": lambda: hit("dos", "203.0.113.7", limit, 1.0),
        "limits FixedWindow": lambda: fixed.hit(item, "203.0.113.7"),
        "limits MovingWindow": lambda: moving.hit(item, "203.0.113.7"),
    }
    got: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            got[name].append(rate(fn, seconds / rounds))
    return got


def address(i: int) -> str:
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


class ManyKeys:
    """N distinct keys, each hit once: speed rounds, then one memory pass."""

    CHUNKS = 10  # the default store's pass is timed in tenths (new-key cost)

    def __init__(self, n: int, budget: float) -> None:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        self.n = n
        self.budget = budget
        self.keys = [address(i) for i in range(n)]
        item = RateLimitItemPerSecond(100, 60)  # 100 per 60 s: every key stays live

        def mg_default() -> Callable[[str], object]:
            hit = MemoryStore().hit
            return lambda key: hit("dos", key, 100, 60.0)

        def mg_roomy() -> Callable[[str], object]:
            hit = MemoryStore(max_keys=n + 10).hit
            return lambda key: hit("dos", key, 100, 60.0)

        def fixed() -> Callable[[str], object]:
            limiter = FixedWindowRateLimiter(MemoryStorage())
            return lambda key: limiter.hit(item, key)

        def moving() -> Callable[[str], object]:
            limiter = MovingWindowRateLimiter(MemoryStorage())
            return lambda key: limiter.hit(item, key)

        self.default_name = "mailguard MemoryStore() (max_keys 100,000)"
        self.roomy_name = f"mailguard MemoryStore(max_keys={n + 10:,})"
        self.makers: dict[str, Callable[[], Callable[[str], object]]] = {
            self.default_name: mg_default,
            self.roomy_name: mg_roomy,
            "limits FixedWindow": fixed,
            "limits MovingWindow": moving,
        }
        self.rates: dict[str, list[float]] = {name: [] for name in self.makers}
        self.capped: set[str] = set()
        self.tenths: list[list[float]] = []  # per round: µs per key in each tenth
        self.memory: dict[str, tuple[float, int]] = {}  # bytes per held key, keys held

    def flat(self) -> list[float]:
        """Per round: the new-key cost over the last 10% / over the first 10%."""
        return [t[-1] / t[0] for t in self.tenths if len(t) == self.CHUNKS]

    def speed_round(self) -> None:
        n = self.n
        step = n // self.CHUNKS
        for name, make in self.makers.items():
            decide = make()
            keys = self.keys
            done = 0
            tenths: list[float] = []
            start = time.perf_counter()
            deadline = start + self.budget
            for c in range(self.CHUNKS):
                lo, hi = c * step, (n if c == self.CHUNKS - 1 else (c + 1) * step)
                t0 = time.perf_counter()
                for k in keys[lo:hi]:
                    decide(k)
                t1 = time.perf_counter()
                tenths.append((t1 - t0) / (hi - lo) * 1e6)
                done = hi
                if t1 >= deadline and hi < n:
                    self.capped.add(name)
                    break
            elapsed = time.perf_counter() - start
            self.rates[name].append(done / elapsed)
            if name.startswith("mailguard MemoryStore()"):
                self.tenths.append(tenths)
            del decide
            gc.collect()

    def memory_pass(self) -> None:
        """Bytes held per key, every key string made inside the traced region
        (each store is charged for whatever it keeps, key strings included)."""
        n = self.n
        for name, make in self.makers.items():
            if name.startswith("mailguard MemoryStore()"):
                store = MemoryStore()
                gc.collect()
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
                hit = store.hit
                deadline = time.perf_counter() + self.budget
                for i in range(min(n, 300_000)):  # three times max_keys: steady state
                    hit("dos", address(i), 100, 60.0)
                    if i & 0xFFFF == 0 and time.perf_counter() > deadline:
                        break
                gc.collect()
                after = tracemalloc.get_traced_memory()[0]
                tracemalloc.stop()
                held = len(store)
                self.memory[name] = ((after - before) / held, held)
                del store, hit
                gc.collect()
                continue
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            decide = make()
            deadline = time.perf_counter() + self.budget * 3
            done = n
            for i in range(n):
                decide(address(i))
                if i & 0xFFFF == 0 and time.perf_counter() > deadline:
                    done = i + 1
                    break
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
            tracemalloc.stop()
            self.memory[name] = ((after - before) / done, done)
            del decide
            gc.collect()


class SimClock(FakeClock):
    """A :class:`FakeClock` the benchmark moves by assignment (cheaper than a
    method call per request, so the loop costs both contenders little)."""

    __slots__ = ("now",)

    def __init__(self, start: float) -> None:
        super().__init__(start)
        self.now = start

    def __call__(self) -> float:
        return self.now


def churn(clients: list[int], rounds: int, budget: float) -> dict[int, dict[str, list[float]]]:
    """µs per decision under churn: 20k req/s (simulated), 1 s window, limit
    100/s, each request from a client picked at random among ``n``."""
    per_second = 20_000
    warm, timed = 40_000, 200_000  # 2 s of simulated traffic, then 10 s timed
    got: dict[int, dict[str, list[float]]] = {}
    for n in clients:
        names = [address(i) for i in range(n)]
        rng = random.Random(19)
        seq = [names[rng.randrange(n)] for _ in range(warm + timed)]
        del names
        t0 = 1_700_000_000.0
        times = [t0 + i / per_second for i in range(warm + timed)]
        got[n] = {"mailguard MemoryStore()": [], "plain dict floor": []}
        for _ in range(rounds):
            for name in got[n]:
                clock = SimClock(t0)
                if name == "plain dict floor":
                    spaces: dict[str, dict[str, float]] = {"dos": {}}

                    def floor(
                        ns: str,
                        key: str,
                        limit: int,
                        window: float,
                        spaces: dict[str, dict[str, float]] = spaces,
                        clock: SimClock = clock,
                    ) -> object:
                        spaces[ns][key] = clock()
                        return None

                    hit: Callable[[str, str, int, float], object] = floor
                else:
                    hit = MemoryStore(clock=clock).hit
                for i in range(warm):
                    clock.now = times[i]
                    hit("dos", seq[i], 100, 1.0)
                start = time.perf_counter()
                deadline = start + budget
                done = timed
                for i in range(warm, warm + timed):
                    clock.now = times[i]
                    hit("dos", seq[i], 100, 1.0)
                    if i & 0x3FFF == 0 and time.perf_counter() > deadline:
                        done = i + 1 - warm
                        break
                got[n][name].append((time.perf_counter() - start) / done * 1e6)
                del hit
                gc.collect()
    return got


def busy_keys(count: int, limit: int = 100) -> tuple[int, float, float, float]:
    """(keys held, bytes held, bytes counted, max_bytes) for ``MemoryStore()``
    after ``count`` keys each send ``limit`` requests inside one window
    (``limit`` per second)."""
    clock = SimClock(1_700_000_000.0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store = MemoryStore(clock=clock)
    hit = store.hit
    t = 1_700_000_000.0
    step = 0.5 / (count * limit)  # the whole flood inside half a window
    for i in range(count):
        key = address(i)
        for _ in range(limit):
            t += step
            clock.now = t
            hit("dos", key, limit, 1.0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    held = len(store)
    counted = float(getattr(store, "counted_bytes", "nan"))
    most = float(getattr(store, "max_bytes", "nan"))
    del store, hit
    gc.collect()
    return held, after - before, counted, most


def bounded(max_keys: int, n: int) -> int:
    store = MemoryStore(max_keys=max_keys)
    most = 0
    for i in range(n):
        store.hit("dos", f"k{i}", 100, 60.0)
        if i % 97 == 0:
            most = max(most, len(store))
    return max(most, len(store))


def parse_clients(text: str) -> list[int]:
    """``"1000,100000,1M"`` -> ``[1000, 100000, 1000000]`` (1 to 5,000,000 each)."""
    counts = []
    for part in text.split(","):
        word = part.strip().replace("_", "")
        scale = {"k": 1_000, "M": 1_000_000}.get(word[-1:], 1)
        value = int(word[:-1] if scale > 1 else word) * scale
        if not 1 <= value <= 5_000_000:
            raise argparse.ArgumentTypeError(f"client counts are 1..5000000, got {value}")
        counts.append(value)
    return sorted(set(counts))


def print_many(many: ManyKeys) -> None:
    """The distinct-keys table of one count, and its new-key cost line."""
    n = many.n
    print(f"\n## {n:,} distinct keys, each seen once (100 per 60 s)\n")
    print("| store | decisions/s | ratio | bytes per held key | keys held |")
    print("|---|---:|---:|---:|---:|")
    base_r = max(many.rates["limits FixedWindow"])
    base_b = many.memory["limits FixedWindow"][0]
    for name, rates in many.rates.items():
        r = max(rates)
        b, held = many.memory[name]
        mark = " (capped)" if name in many.capped else ""
        print(
            f"| {name} | {r:,.0f} ({spread(rates)}){mark} | {r / base_r:.2f}x "
            f"| {b:,.0f} ({b / base_b:.2f}x) | {held:,} |"
        )
    firsts = [t[0] for t in many.tenths]
    lasts = [t[-1] for t in many.tenths if len(t) == ManyKeys.CHUNKS]
    print(
        "\nNew-key cost of `MemoryStore()` (µs per key, best round (spread)): "
        f"first 10% {min(firsts):.2f} ({spread(firsts, '{:.2f}')}), "
        + (
            f"last 10% {min(lasts):.2f} ({spread(lasts, '{:.2f}')}), "
            f"last/first {statistics.median(many.flat()):.2f}x median "
            f"({spread(many.flat(), '{:.2f}')})"
            if lasts
            else "last 10% not reached within the budget"
        )
    )
    print("Per tenth (µs per key, round 1): " + " ".join(f"{x:.2f}" for x in many.tenths[0]))


@dataclass
class Distinct:
    """What the targets need from one distinct-keys count."""

    flood: float  # MemoryStore() decisions/s over limits FixedWindow's
    roomy: float  # MemoryStore(max_keys=N + 10) over limits FixedWindow's
    roomy_bytes: float  # bytes per key held, MemoryStore(max_keys=N + 10)
    default_bytes: float  # bytes per key held, MemoryStore()
    flat: float  # new-key cost, last 10% over first 10% (median of the rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--clients",
        type=parse_clients,
        default=parse_clients("1000,100000,1000000"),
        help="client counts for the distinct-keys and churn sections, comma-separated "
        "(1000,100000,1000000; distinct keys from 1000 up)",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="time per hot-key row (2.0)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per row (3)")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds cap per pass (60)")
    parser.add_argument("--busy", type=int, default=20_000, help="busy keys (20000)")
    args = parser.parse_args(argv)
    counts: list[int] = args.clients
    seconds = max(0.1, min(args.seconds, 10.0))
    rounds = max(1, min(args.rounds, 10))
    budget = max(1.0, min(args.budget, 600.0))
    busy = max(100, min(args.busy, 200_000))

    print(
        f"# mailguard core benchmark — Python {platform.python_version()}, "
        f"{platform.machine()}, {platform.system()}; {rounds} rounds, best (spread); "
        "clients " + ", ".join(f"{n:,}" for n in counts)
    )
    over = hot_key(seconds, 100, rounds)
    under = hot_key(seconds, 1_000_000, rounds)
    print("\n## One hot key (decisions/s)\n")
    print("| store | limit 100/s (flood) | ratio | under limit | ratio |")
    print("|---|---:|---:|---:|---:|")
    base_o = max(over["limits FixedWindow"])
    base_u = max(under["limits FixedWindow"])
    for name in over:
        o, u = max(over[name]), max(under[name])
        print(
            f"| {name} | {o:,.0f} ({spread(over[name])}) | {o / base_o:.2f}x "
            f"| {u:,.0f} ({spread(under[name])}) | {u / base_u:.2f}x |"
        )

    distinct: dict[int, Distinct] = {}
    for n in (c for c in counts if c >= 1000):
        many = ManyKeys(n, budget)
        for _ in range(rounds):
            many.speed_round()
        many.memory_pass()
        print_many(many)
        base_r = max(many.rates["limits FixedWindow"])
        flat = many.flat()
        distinct[n] = Distinct(
            flood=max(many.rates[many.default_name]) / base_r,
            roomy=max(many.rates[many.roomy_name]) / base_r,
            roomy_bytes=many.memory[many.roomy_name][0],
            default_bytes=many.memory[many.default_name][0],
            flat=statistics.median(flat) if flat else float("inf"),
        )
        del many
        gc.collect()

    ch = churn(counts, rounds, budget)
    print("\n## Churn: 20k req/s simulated, 1 s window, limit 100/s (µs per decision)\n")
    print("| clients | mailguard MemoryStore() | plain dict floor | ratio |")
    print("|---:|---:|---:|---:|")
    churn_ratio: dict[int, float] = {}
    for size, row in ch.items():
        mg, fl = min(row["mailguard MemoryStore()"]), min(row["plain dict floor"])
        churn_ratio[size] = mg / fl
        print(
            f"| {size:,} | {mg:.2f} ({spread(row['mailguard MemoryStore()'], '{:.2f}')}) "
            f"| {fl:.2f} ({spread(row['plain dict floor'], '{:.2f}')}) | {mg / fl:.2f}x |"
        )

    held, total, counted, most_bytes = busy_keys(busy)
    print(f"\n## Busy keys: {busy:,} keys x 100 requests in one window, limit 100/s\n")
    print(
        f"`MemoryStore()` holds {held:,} keys in {total / 2**20:,.1f} MiB (tracemalloc): "
        f"{total / held:,.0f} bytes per held key; counted {counted / 2**20:,.1f} MiB, "
        f"max_bytes {most_bytes / 2**20:,.1f} MiB"
    )

    cap = 10_000
    most = bounded(cap, 50_000)
    print(f"\nMemoryStore(max_keys={cap:,}) after 50,000 fresh keys: at most {most:,} keys held")

    print("\n## By client count\n")
    print(
        "| clients | churn / dict floor | distinct keys: MemoryStore() / limits FixedWindow "
        "| no eviction / limits | bytes per key, no eviction | bytes per key, MemoryStore() |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        d = distinct.get(n)
        cells = (
            [
                f"{d.flood:.2f}x",
                f"{d.roomy:.2f}x",
                f"{d.roomy_bytes:,.0f}",
                f"{d.default_bytes:,.0f}",
            ]
            if d
            else ["-"] * 4
        )
        print(f"| {n:,} | {churn_ratio[n]:.2f}x | " + " | ".join(cells) + " |")

    mg_o = max(over["mailguard MemoryStore"]) / base_o
    checks: list[tuple[str, bool | None, str]] = [
        ("hot key >= 4x limits FixedWindow", mg_o >= 4.0, f"{mg_o:.2f}x")
    ]
    million = 1_000_000
    if million in distinct:
        d = distinct[million]
        checks += [
            (
                "1,000,000 distinct keys, default max_keys: >= 10x limits FixedWindow",
                d.flood >= 10.0,
                f"{d.flood:.2f}x",
            ),
            (
                "1,000,000 distinct keys, no eviction: >= 10x limits FixedWindow",
                d.roomy >= 10.0,
                f"{d.roomy:.2f}x",
            ),
            (
                "1,000,000 distinct keys: <= 120 bytes per key (no eviction)",
                d.roomy_bytes <= 120,
                f"{d.roomy_bytes:.0f} B",
            ),
        ]
    else:
        checks.append(("1,000,000 distinct keys (>= 10x limits, <= 120 B/key)", None, "not run"))
    if distinct:
        largest = max(distinct)
        steady = distinct[largest].flat
        checks.append(
            (
                f"new-key cost flat over {largest:,} keys: last 10% <= 1.5x first 10%",
                steady <= 1.5,
                f"{steady:.2f}x",
            )
        )
    for n in (100_000, million):
        if n in churn_ratio:
            checks.append(
                (
                    f"churn <= 3x the plain-dict floor at {n:,} clients",
                    churn_ratio[n] <= 3.0,
                    f"{churn_ratio[n]:.2f}x",
                )
            )
        else:
            checks.append((f"churn <= 3x the plain-dict floor at {n:,} clients", None, "not run"))
    checks += [
        ("max_keys never exceeded", most <= cap, f"{most:,} <= {cap:,}"),
        (
            "busy keys held within max_bytes (tracemalloc)",
            total <= most_bytes,
            f"{total / 2**20:,.1f} MiB <= {most_bytes / 2**20:,.1f} MiB",
        ),
    ]
    print("\n## Targets\n")
    print("| target | measured | pass/fail |")
    print("|---|---:|---|")
    for label, ok, value in checks:
        verdict = "-" if ok is None else ("pass" if ok else "FAIL")
        print(f"| {label} | {value} | {verdict} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
