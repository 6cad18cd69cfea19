"""Decisions per second through RedisStore, beside `limits` and a bare EVALSHA loop.

Run ``python benchmarks/redis_store.py [--seconds 0.2] [--rounds 5]``.  The
script starts its own ``redis-server`` on a free loopback port (the binary
must be on PATH) and measures every contender for ``--seconds`` in each of
``--rounds`` rounds, the contenders taking turns, so a noisy neighbour hurts
them all alike.  It prints each contender's best and median rate, then the
ratios the project targets, each the median over the rounds of that round's
ratio:

- sync, one decision at a time: RedisStore >= 0.9x a bare redis-py EVALSHA
  loop (a trivial script, one round trip), and ahead of limits' RedisStorage;
- asyncio, 16 concurrent requests: RedisStore >= 2x limits' async Redis
  storage (``async+redis://``, its redis-py implementation);
- a blocked client refused from the local block cache >= 50x faster than the
  same refusal read from Redis (a round trip).

The RedisStore contenders run with ``refusal_cache_size=0``, so each of their
decisions is a round trip like their peers'; one more row, *hot key, refusal
cache*, shows the default store, which refuses a flooding client locally
until its next slot frees.

Workloads, all at 100 requests/s per key: *hot key* is one flooding client
(nearly every decision is a refusal), *many keys* cycles through 10,000
clients (nearly every decision is allowed and recorded).  limits is optional
(``pip install limits``): its rows are left out when it is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_server import RedisServer

from mailguard import RedisStore

LIMIT = 100
WINDOW = 1.0
HOT = "203.0.113.7"
KEYS = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(10_000)]
CONCURRENCY = 16

Decide = Callable[[], Any]
ADecide = Callable[[], Awaitable[Any]]
Close = Callable[[], Awaitable[None]]
ASetup = Callable[[], tuple[ADecide, Close | None]]  # made inside the benchmark's loop


def run_sync(decide: Decide, seconds: float) -> float:
    """Decisions per second of ``decide`` called in a loop for ``seconds``."""
    for _ in range(200):
        decide()
    done = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(100):
            decide()
        done += 100
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def run_async(setup: ASetup, seconds: float, tasks: int) -> float:
    """Decisions per second of ``tasks`` coroutines, each deciding in a loop."""

    async def main() -> float:
        decide, close = setup()
        for _ in range(50):
            await decide()
        done = 0
        stop = False

        async def worker() -> None:
            nonlocal done
            while not stop:
                await decide()
                done += 1

        start = time.perf_counter()
        workers = [asyncio.ensure_future(worker()) for _ in range(tasks)]
        await asyncio.sleep(seconds)
        stop = True
        await asyncio.gather(*workers)
        rate = done / (time.perf_counter() - start)
        if close is not None:
            await close()
        return rate

    return asyncio.run(main())


def hot() -> str:
    return HOT


def cycling() -> Callable[[], str]:
    return itertools.cycle(KEYS).__next__


class Contenders:
    """Every contender: sync ones as a call, async ones as a setup and a concurrency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sync: dict[str, Decide] = {}
        self.asyncs: dict[str, tuple[ASetup, int]] = {}
        self._ours()
        try:
            import limits  # noqa: F401
        except ImportError:
            print("limits is not installed: its rows are left out", file=sys.stderr)
        else:
            self._limits()

    def _ours(self) -> None:
        url = self.url
        bare = redis.Redis.from_url(url, socket_timeout=0.25, retry=Retry(NoBackoff(), 0))
        sha = bare.script_load("return 1")
        self.sync["bare redis-py EVALSHA (trivial script)"] = lambda: bare.evalsha(
            sha, 1, "bench:bare", "1"
        )
        store = RedisStore(url, prefix="bench:", refusal_cache_size=0)  # a round trip each
        self.sync["RedisStore.hit, hot key"] = lambda: store.hit("dos", HOT, LIMIT, WINDOW)
        cached = RedisStore(url, prefix="bench:")
        self.sync["RedisStore.hit, hot key, refusal cache"] = lambda: cached.hit(
            "dos", HOT, LIMIT, WINDOW
        )
        key = cycling()
        self.sync["RedisStore.hit, many keys"] = lambda: store.hit("dos", key(), LIMIT, WINDOW)
        store.block("device", "phone", 3600, "bench")
        self.sync["RedisStore.hit, blocked, from the cache"] = lambda: store.hit(
            "device", "phone", LIMIT, WINDOW, 600
        )
        uncached = RedisStore(url, prefix="bench:", block_cache_ttl=0)
        self.sync["RedisStore.hit, blocked, from Redis"] = lambda: uncached.hit(
            "device", "phone", LIMIT, WINDOW, 600
        )

        def ahit(keys: Callable[[], Callable[[], str]]) -> ASetup:
            def setup() -> tuple[ADecide, Close | None]:
                store = RedisStore(url, prefix="bench:", refusal_cache_size=0)
                key = keys()

                async def decide() -> Any:
                    return await store.ahit("dos", key(), LIMIT, WINDOW)

                return decide, store.aclose

            return setup

        def abare() -> tuple[ADecide, Close | None]:
            client = redis.asyncio.Redis.from_url(url, socket_timeout=0.25)

            async def decide() -> Any:
                return await client.evalsha(sha, 1, "bench:bare", "1")  # type: ignore[misc]

            return decide, client.aclose

        self.asyncs["RedisStore.ahit, hot key, 1 concurrent"] = (ahit(lambda: hot), 1)
        self.asyncs[f"RedisStore.ahit, hot key, {CONCURRENCY} concurrent"] = (
            ahit(lambda: hot),
            CONCURRENCY,
        )
        self.asyncs[f"RedisStore.ahit, many keys, {CONCURRENCY} concurrent"] = (
            ahit(cycling),
            CONCURRENCY,
        )
        self.asyncs[f"bare redis.asyncio EVALSHA, {CONCURRENCY} concurrent"] = (abare, CONCURRENCY)

    def _limits(self) -> None:
        from limits import RateLimitItemPerSecond
        from limits.aio import strategies as aio
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        item = RateLimitItemPerSecond(LIMIT)
        url = self.url.removesuffix("/0")
        storage = storage_from_string(url)
        for name, strategy in (
            ("FixedWindow", FixedWindowRateLimiter),
            ("MovingWindow", MovingWindowRateLimiter),
        ):
            limiter = strategy(storage)
            # the strategies keep different data under one key: give each its own
            self.sync[f"limits {name}, hot key"] = lambda limiter=limiter, name=name: limiter.hit(
                item, name, HOT
            )
            key = cycling()
            self.sync[f"limits {name}, many keys"] = lambda limiter=limiter, name=name, key=key: (
                limiter.hit(item, name, key())
            )

        def ahit(strategy: Any, name: str, keys: Callable[[], Callable[[], str]]) -> ASetup:
            def setup() -> tuple[ADecide, Close | None]:
                limiter = strategy(storage_from_string("async+" + url, implementation="redispy"))
                key = keys()

                async def decide() -> Any:
                    return await limiter.hit(item, name, key())

                return decide, None

            return setup

        moving = aio.MovingWindowRateLimiter
        self.asyncs["limits async MovingWindow, hot key, 1 concurrent"] = (
            ahit(moving, "MovingWindow", lambda: hot),
            1,
        )
        for name, strategy in (
            ("FixedWindow", aio.FixedWindowRateLimiter),
            ("MovingWindow", moving),
        ):
            for load, keys in (("hot key", lambda: hot), ("many keys", cycling)):
                self.asyncs[f"limits async {name}, {load}, {CONCURRENCY} concurrent"] = (
                    ahit(strategy, name, keys),
                    CONCURRENCY,
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.2, help="per contender per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (contenders take turns)")
    args = parser.parse_args()

    rates: dict[str, list[float]] = {}
    with RedisServer() as server:
        contenders = Contenders(server.url)
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds} ...", file=sys.stderr)
            for name, decide in contenders.sync.items():
                rates.setdefault(name, []).append(run_sync(decide, args.seconds))
            for name, (setup, tasks) in contenders.asyncs.items():
                rates.setdefault(name, []).append(run_async(setup, args.seconds, tasks))

    width = max(len(name) for name in rates)
    print(f"\n{'contender':<{width}}  {'best/s':>10}  {'median/s':>10}  {'us (best)':>9}")
    print("-" * (width + 37))
    for name, seen in rates.items():
        best, middle = max(seen), statistics.median(seen)
        print(f"{name:<{width}}  {best:>10,.0f}  {middle:>10,.0f}  {1e6 / best:>9.1f}")

    def ratio(label: str, top: str, bottom: str, target: float) -> None:
        if top not in rates or bottom not in rates:
            return
        paired = statistics.median(a / b for a, b in zip(rates[top], rates[bottom], strict=True))
        verdict = "ok" if paired >= target else "MISSED"
        print(f"{label:<60} {paired:8.2f}x   (target >= {target:g}x: {verdict})")

    print(f"\nratios (median over {args.rounds} rounds of the round's ratio)")
    bare = "bare redis-py EVALSHA (trivial script)"
    ratio("sync hot key / bare EVALSHA", "RedisStore.hit, hot key", bare, 0.9)
    ratio("sync many keys / bare EVALSHA", "RedisStore.hit, many keys", bare, 0.9)
    for strategy in ("FixedWindow", "MovingWindow"):
        for load in ("hot key", "many keys"):
            ratio(
                f"sync {load} / limits {strategy}",
                f"RedisStore.hit, {load}",
                f"limits {strategy}, {load}",
                1.0,
            )
    for strategy in ("FixedWindow", "MovingWindow"):
        for load in ("hot key", "many keys"):
            ratio(
                f"async {CONCURRENCY} concurrent, {load} / limits async {strategy}",
                f"RedisStore.ahit, {load}, {CONCURRENCY} concurrent",
                f"limits async {strategy}, {load}, {CONCURRENCY} concurrent",
                2.0,
            )
    ratio(
        "hot key: the default store (refusal cache) / a round trip each",
        "RedisStore.hit, hot key, refusal cache",
        "RedisStore.hit, hot key",
        10.0,
    )
    ratio(
        "blocked: refused from the local cache / from Redis",
        "RedisStore.hit, blocked, from the cache",
        "RedisStore.hit, blocked, from Redis",
        50.0,
    )


if __name__ == "__main__":
    main()
