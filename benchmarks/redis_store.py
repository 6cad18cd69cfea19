"""Decisions per second through RedisStore, beside honest baselines and `limits`.

Run ``python benchmarks/redis_store.py [--seconds 0.2] [--rounds 5]``.  The
script starts its own ``redis-server`` on a free loopback port (the binary
must be on PATH) and measures every contender for ``--seconds`` in each of
``--rounds`` rounds, the contenders taking turns, so a noisy neighbour hurts
them all alike.  Every rate is printed as its median and min-max over the
rounds; every ratio is taken per round (both rates from the same round) and
printed as the median and min-max of those per-round ratios.

What is measured:

- Workloads, all at a limit of 100 requests per 1 s sliding window per key:
  *hot key* is one flooding client (nearly every decision is a refusal, the
  window stays full), *many keys* cycles through 10,000 clients (nearly every
  decision is allowed and recorded).
- Clock: mailguard's hit script reads the Redis server's ``TIME`` (no
  ``clock=``).  limits' FixedWindow counts with server-side expiry, its
  MovingWindow sends the client's ``time.time()``.
- Sync: one thread, one decision at a time, one connection.  Async: one
  asyncio loop, N coroutines each awaiting one decision at a time (RedisStore
  batches concurrent commands onto its connections; redis.asyncio and limits
  use a connection pool).
- Refusal cache: the RedisStore rows run with ``refusal_cache_size=0``, so
  each decision is one round trip like every baseline's; only the row named
  *refusal cache on* uses the default store, which refuses a flooding client
  locally until its next slot frees.

Baselines, each running **mailguard's own hit script** (``lua/lib.lua`` +
``lua/hit.lua``, loaded with ``SCRIPT LOAD``) with the very KEYS/ARGV
RedisStore sends (checked byte for byte at start):

- *redis-py EVALSHA*: ``redis.Redis.evalsha`` in a loop on one plain client
  (issue #15's target: RedisStore sync >= 0.9x this);
- *raw socket*: the packed command bytes (pre-packed, one per key) written to
  a socket and the reply read, no client library at all: the floor;
- *round-trip floor, trivial script*: redis-py EVALSHA of ``return 1``, for
  the cost of a round trip without the script's work.

Cluster rows: the same RedisStore on a loopback Redis Cluster of 3 masters
(``benchmarks/redis_cluster.py``, no replicas), many keys, so the decisions
spread over the masters by slot; the target is decisions/s with 64 concurrent
coroutines across the 3 masters >= 0.9x the same on the one standalone
server (routing costs little).  ``--no-cluster`` leaves them out.

limits is optional (``pip install limits``): its rows are left out when it is
missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import platform
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_cluster import RedisCluster
from redis_server import RedisServer  # type: ignore[import-not-found]

import mailguard
from mailguard import RedisStore

LIMIT = 100
WINDOW = 1.0
HOT = "203.0.113.7"
KEYS = [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}" for i in range(10_000)]
CONCURRENCY = 16
WIDE = 64  # concurrency of the cluster comparison
PREFIX = "bench:"

# The labels the ratios refer to.
TRIVIAL = "redis-py EVALSHA `return 1` (round-trip floor, trivial script)"
PY_HOT = "redis-py EVALSHA hit script, hot key"
PY_MANY = "redis-py EVALSHA hit script, many keys"
RAW_HOT = "raw socket hit script, hot key (floor)"
RAW_MANY = "raw socket hit script, many keys (floor)"
OURS_HOT = "RedisStore.hit, hot key"
OURS_MANY = "RedisStore.hit, many keys"
OURS_CACHED = "RedisStore.hit, hot key, refusal cache on"
BLOCK_CACHE = "RedisStore.hit, blocked client, block cache"
BLOCK_REDIS = "RedisStore.hit, blocked client, block cache off"
AOURS = "RedisStore.ahit, {load}, {n} concurrent"
APY = "redis.asyncio EVALSHA hit script, {load}, {n} concurrent"
ALIMITS = "limits async {strategy}, {load}, {n} concurrent"
CLUSTER_SYNC = "RedisStore.hit, many keys, cluster of 3 masters"
CLUSTER_ASYNC = "RedisStore.ahit, many keys, {n} concurrent, cluster of 3 masters"

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


def hit_script() -> bytes:
    """The text RedisStore loads for its hit script: lib.lua, a newline, hit.lua."""
    lua = Path(mailguard.__file__).resolve().parent / "stores" / "lua"
    return (lua / "lib.lua").read_bytes() + b"\n" + (lua / "hit.lua").read_bytes()


def window_key(key: str) -> str:
    """KEYS[1] of a hit without jail, as ``RedisStore._hit_command`` names it."""
    return f"{PREFIX}{{dos:{key}}}:w"


def hit_args(key: str) -> tuple[Any, ...]:
    """numkeys, KEYS, ARGV of RedisStore's hit without jail: now '' = server TIME."""
    return (1, window_key(key), "", LIMIT, WINDOW, 0)


class RawSocket:
    """Packed commands written to a socket, each reply read whole; nothing else."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, packed: bytes) -> bytes:
        """Send one command; return its bulk-string reply (``$n\\r\\n...\\r\\n``)."""
        sock = self.sock
        sock.sendall(packed)
        data = sock.recv(4096)
        while True:
            end = data.find(b"\r\n")
            if end > 0:
                if data[0] != 36:  # b"$"
                    raise RuntimeError(f"unexpected reply: {data[:200]!r}")
                size = int(data[1:end])
                if len(data) >= end + 4 + size:
                    return data[end + 2 : end + 2 + size]
            data += sock.recv(4096)


class Contenders:
    """Every contender: sync ones as a call, async ones as a setup and a concurrency."""

    def __init__(self, url: str, port: int, cluster_url: str | None) -> None:
        self.url = url
        self.port = port
        self.sync: dict[str, Decide] = {}
        self.asyncs: dict[str, tuple[ASetup, int]] = {}
        self.stores: list[RedisStore] = []  # closed before the servers stop
        self._ours()
        if cluster_url is not None:
            self._cluster(cluster_url)
        try:
            import limits  # noqa: F401
        except ImportError:
            print("limits is not installed: its rows are left out", file=sys.stderr)
        else:
            self._limits()

    def _ours(self) -> None:
        url = self.url
        bare = redis.Redis.from_url(url, socket_timeout=0.25, retry=Retry(NoBackoff(), 0))
        source = hit_script()
        sha = bare.script_load(source)
        assert sha == hashlib.sha1(source).hexdigest()
        store = RedisStore(url, prefix=PREFIX, refusal_cache_size=0)  # a round trip each
        self.stores.append(store)

        # The baselines must send what the store sends, byte for byte.
        packer = bare.connection_pool.make_connection()

        def pack(*args: Any) -> bytes:
            return b"".join(packer.pack_command(*args))  # type: ignore[no-untyped-call]

        packed = {
            key: pack("EVALSHA", sha, *store._hit_command("dos", key, LIMIT, WINDOW, 0.0))
            for key in [*KEYS, HOT]
        }
        for key in (HOT, KEYS[0]):
            by_redis_py = pack("EVALSHA", sha, *hit_args(key))
            if by_redis_py != packed[key]:
                raise SystemExit(
                    f"baseline differs from RedisStore:\n{by_redis_py!r}\n{packed[key]!r}"
                )

        trivial = bare.script_load("return 1")
        self.sync[TRIVIAL] = lambda: bare.evalsha(trivial, 1, "bench:trivial", "1")
        hot_args = hit_args(HOT)
        self.sync[PY_HOT] = lambda: bare.evalsha(sha, *hot_args)
        many_args = itertools.cycle([hit_args(key) for key in KEYS]).__next__
        self.sync[PY_MANY] = lambda: bare.evalsha(sha, *many_args())
        raw = RawSocket("127.0.0.1", self.port)
        hot_packed = packed[HOT]
        if raw.exchange(hot_packed)[:1] not in (b"0", b"1"):
            raise SystemExit("the raw-socket baseline did not get a hit reply")
        self.sync[RAW_HOT] = lambda: raw.exchange(hot_packed)
        many_packed = itertools.cycle([packed[key] for key in KEYS]).__next__
        self.sync[RAW_MANY] = lambda: raw.exchange(many_packed())

        self.sync[OURS_HOT] = lambda: store.hit("dos", HOT, LIMIT, WINDOW)
        next_key = cycling()
        self.sync[OURS_MANY] = lambda: store.hit("dos", next_key(), LIMIT, WINDOW)
        cached = RedisStore(url, prefix=PREFIX)  # the default: refusal cache on
        self.stores.append(cached)
        self.sync[OURS_CACHED] = lambda: cached.hit("dos", HOT, LIMIT, WINDOW)
        store.block("device", "phone", 3600, "bench")
        self.sync[BLOCK_CACHE] = lambda: store.hit("device", "phone", LIMIT, WINDOW, 600)
        uncached = RedisStore(url, prefix=PREFIX, refusal_cache_size=0, block_cache_ttl=0)
        self.stores.append(uncached)
        self.sync[BLOCK_REDIS] = lambda: uncached.hit("device", "phone", LIMIT, WINDOW, 600)

        def ahit(keys: Callable[[], Callable[[], str]]) -> ASetup:
            def setup() -> tuple[ADecide, Close | None]:
                store = RedisStore(url, prefix=PREFIX, refusal_cache_size=0)
                key = keys()

                async def decide() -> Any:
                    return await store.ahit("dos", key(), LIMIT, WINDOW)

                return decide, store.aclose

            return setup

        def abare(keys: Callable[[], Callable[[], str]]) -> ASetup:
            def setup() -> tuple[ADecide, Close | None]:
                client = redis.asyncio.Redis.from_url(url, socket_timeout=0.25)
                key = keys()

                async def decide() -> Any:
                    return await client.evalsha(sha, *hit_args(key()))

                return decide, client.aclose

            return setup

        self.asyncs[AOURS.format(load="hot key", n=1)] = (ahit(lambda: hot), 1)
        for load, keys in (("hot key", lambda: hot), ("many keys", cycling)):
            self.asyncs[AOURS.format(load=load, n=CONCURRENCY)] = (ahit(keys), CONCURRENCY)
            self.asyncs[APY.format(load=load, n=CONCURRENCY)] = (abare(keys), CONCURRENCY)
        self.asyncs[AOURS.format(load="many keys", n=WIDE)] = (ahit(cycling), WIDE)

    def _cluster(self, url: str) -> None:
        """The same store on a 3-master cluster: keys spread over the masters by slot."""
        store = RedisStore(url, prefix=PREFIX, refusal_cache_size=0)
        self.stores.append(store)
        key = cycling()
        self.sync[CLUSTER_SYNC] = lambda: store.hit("dos", key(), LIMIT, WINDOW)

        def setup() -> tuple[ADecide, Close | None]:
            made = RedisStore(url, prefix=PREFIX, refusal_cache_size=0)
            key = cycling()

            async def decide() -> Any:
                return await made.ahit("dos", key(), LIMIT, WINDOW)

            return decide, made.aclose

        self.asyncs[CLUSTER_ASYNC.format(n=WIDE)] = (setup, WIDE)

    def _limits(self) -> None:
        from limits import RateLimitItemPerSecond
        from limits.aio import strategies as aio
        from limits.storage import storage_from_string
        from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

        item = RateLimitItemPerSecond(LIMIT)
        url = self.url.removesuffix("/0")
        storage = storage_from_string(url)

        def hits(limiter: Any, name: str, key: Callable[[], str]) -> Callable[[], Any]:
            return lambda: limiter.hit(item, name, key())

        for name, strategy in (
            ("FixedWindow", FixedWindowRateLimiter),
            ("MovingWindow", MovingWindowRateLimiter),
        ):
            limiter = strategy(storage)
            # the strategies keep different data under one key: give each its own
            self.sync[f"limits RedisStorage {name}, hot key"] = hits(limiter, name, lambda: HOT)
            self.sync[f"limits RedisStorage {name}, many keys"] = hits(limiter, name, cycling())

        def ahit(strategy: Any, name: str, keys: Callable[[], Callable[[], str]]) -> ASetup:
            def setup() -> tuple[ADecide, Close | None]:
                limiter = strategy(storage_from_string("async+" + url, implementation="redispy"))
                key = keys()

                async def decide() -> Any:
                    return await limiter.hit(item, name, key())

                return decide, None

            return setup

        moving = aio.MovingWindowRateLimiter
        self.asyncs[ALIMITS.format(strategy="MovingWindow", load="hot key", n=1)] = (
            ahit(moving, "MovingWindow", lambda: hot),
            1,
        )
        for name, astrategy in (
            ("FixedWindow", aio.FixedWindowRateLimiter),
            ("MovingWindow", moving),
        ):
            for load, keys in (("hot key", lambda: hot), ("many keys", cycling)):
                self.asyncs[ALIMITS.format(strategy=name, load=load, n=CONCURRENCY)] = (
                    ahit(astrategy, name, keys),
                    CONCURRENCY,
                )


def spread(values: list[float], fmt: str) -> str:
    return f"{format(min(values), fmt)}-{format(max(values), fmt)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=0.2, help="per contender per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (contenders take turns)")
    parser.add_argument(
        "--no-cluster", action="store_true", help="leave out the 3-master cluster rows"
    )
    args = parser.parse_args()

    rates: dict[str, list[float]] = {}
    with contextlib.ExitStack() as running:
        server = running.enter_context(RedisServer())
        cluster = None if args.no_cluster else running.enter_context(RedisCluster(3))
        contenders = Contenders(server.url, server.port, cluster and cluster.url)

        def close_stores() -> None:
            for store in contenders.stores:
                store.close()

        running.callback(close_stores)
        info = redis.Redis.from_url(server.url).info("server")
        for round_no in range(args.rounds):
            print(f"round {round_no + 1}/{args.rounds} ...", file=sys.stderr)
            for name, decide in contenders.sync.items():
                rates.setdefault(name, []).append(run_sync(decide, args.seconds))
            for name, (setup, tasks) in contenders.asyncs.items():
                rates.setdefault(name, []).append(run_async(setup, args.seconds, tasks))

    try:
        import limits

        limits_version = f"limits {limits.__version__}"
    except ImportError:
        limits_version = "limits not installed"
    print(
        f"redis-server {info['redis_version']} on 127.0.0.1 (loopback TCP), "
        f"redis-py {redis.__version__}, {limits_version}, Python {platform.python_version()}"
    )
    print(
        f"{args.rounds} rounds x {args.seconds:g} s per contender, contenders taking turns; "
        "rates: decisions/s, median and min-max over the rounds"
    )
    print(
        f"workload: limit {LIMIT} per {WINDOW:g} s sliding window per key; hot key = one "
        f"client, nearly every decision refused; many keys = {len(KEYS):,} clients cycled, "
        "nearly every decision allowed"
    )
    print(
        "clock: mailguard's hit script reads the Redis server's TIME; limits FixedWindow: "
        "server-side expiry, MovingWindow: client time.time()"
    )
    print(
        "baselines run mailguard's own hit script (lib.lua + hit.lua) with the same "
        "KEYS/ARGV bytes RedisStore sends (checked at start)"
    )

    width = max(len(name) for name in rates)

    def table(title: str, note: str, names: list[str]) -> None:
        print(f"\n{title}\n  note: {note}")
        print(f"{'contender':<{width}}  {'median/s':>10}  {'min-max/s':>17}  {'us/decision':>11}")
        print("-" * (width + 46))
        for name in names:
            seen = rates[name]
            middle = statistics.median(seen)
            print(
                f"{name:<{width}}  {middle:>10,.0f}  {spread(seen, ',.0f'):>17}  "
                f"{1e6 / middle:>11.1f}"
            )

    table(
        "sync: one thread, one decision at a time, one connection",
        "refusal cache off (refusal_cache_size=0) except the row saying 'refusal cache on'; "
        "blocked rows: jail=600, client blocked for an hour; raw socket: commands pre-packed",
        list(contenders.sync),
    )
    table(
        "async: one asyncio loop, N coroutines each awaiting one decision at a time",
        "refusal cache off (refusal_cache_size=0); RedisStore batches concurrent "
        "commands, redis.asyncio and limits use a connection pool",
        list(contenders.asyncs),
    )

    print(
        f"\nratios: a / b taken per round (same round's rates), median and min-max over "
        f"{args.rounds} rounds; the verdict is on the median, 'n/{args.rounds}' = rounds "
        "meeting the target"
    )
    labels: list[tuple[str, str, str, float | None]] = []

    def ratio(label: str, top: str, bottom: str, target: float | None) -> None:
        if top in rates and bottom in rates:
            labels.append((label, top, bottom, target))

    ratio("sync hot key: RedisStore / redis-py EVALSHA hit script", OURS_HOT, PY_HOT, 0.9)
    ratio("sync many keys: RedisStore / redis-py EVALSHA hit script", OURS_MANY, PY_MANY, 0.9)
    ratio("sync hot key: RedisStore / raw socket hit script (floor)", OURS_HOT, RAW_HOT, None)
    ratio("sync many keys: RedisStore / raw socket hit script (floor)", OURS_MANY, RAW_MANY, None)
    ratio("sync hot key: RedisStore / trivial-script round trip", OURS_HOT, TRIVIAL, None)
    for strategy in ("FixedWindow", "MovingWindow"):
        for load, ours in (("hot key", OURS_HOT), ("many keys", OURS_MANY)):
            ratio(
                f"sync {load}: RedisStore / limits RedisStorage {strategy}",
                ours,
                f"limits RedisStorage {strategy}, {load}",
                1.0,
            )
    n = CONCURRENCY
    for load in ("hot key", "many keys"):
        ratio(
            f"async {n} concurrent, {load}: RedisStore / redis.asyncio EVALSHA",
            AOURS.format(load=load, n=n),
            APY.format(load=load, n=n),
            None,
        )
    for strategy in ("FixedWindow", "MovingWindow"):
        for load in ("hot key", "many keys"):
            ratio(
                f"async {n} concurrent, {load}: RedisStore / limits async {strategy}",
                AOURS.format(load=load, n=n),
                ALIMITS.format(strategy=strategy, load=load, n=n),
                3.0,
            )
    ratio(
        f"async {WIDE} concurrent, many keys: cluster of 3 masters / one standalone",
        CLUSTER_ASYNC.format(n=WIDE),
        AOURS.format(load="many keys", n=WIDE),
        0.9,
    )
    ratio(
        "sync many keys: cluster of 3 masters / one standalone",
        CLUSTER_SYNC,
        OURS_MANY,
        None,
    )
    ratio(
        "hot key: refusal cache on / off (a round trip each)",
        OURS_CACHED,
        OURS_HOT,
        10.0,
    )
    ratio("blocked client: block cache / block cache off (Redis)", BLOCK_CACHE, BLOCK_REDIS, 50.0)

    lw = max(len(label) for label, *_ in labels)
    print(f"{'ratio':<{lw}}  {'median':>8}  {'min-max':>15}  target")
    print("-" * (lw + 50))
    for label, top, bottom, target in labels:
        paired = [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
        middle = statistics.median(paired)
        if target is None:
            verdict = "-"
        else:
            met = sum(value >= target for value in paired)
            verdict = (
                f">= {target:g}x: {'ok' if middle >= target else 'MISSED'} ({met}/{len(paired)})"
            )
        print(f"{label:<{lw}}  {middle:>7.2f}x  {spread(paired, '.2f'):>14}x  {verdict}")


if __name__ == "__main__":
    main()
