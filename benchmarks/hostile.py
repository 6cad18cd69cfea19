"""Hostile traffic: RSS and every per-process cache after N random requests.

Run:  .venv/bin/python benchmarks/hostile.py [--requests 400000] [--seed 1]

Stacks the three filters as ``protect()`` does (DosFilter -> DeviceJail ->
InvalidLoginFilter, outermost first) on one default ``MemoryStore()``, with
``trusted_proxies=["10.0.0.0/8"]`` so that forwarding headers are walked
too, and calls the stack as an ASGI app in this process (no server, no
sockets) with random hostile requests: random IPv4 and IPv6 peers (a quarter
through a trusted proxy, with a random ``X-Forwarded-For`` of up to four
entries), random paths, ActiveSync requests with random ``DeviceId`` and
``User``, and login POSTs with random form bodies (every login fails: the app
answers 401).  Prints the RSS before and after (``VmRSS``; the peak,
``VmHWM``), and for every per-process cache its entries, its bound and the
bytes it holds (a deep ``sys.getsizeof`` of its keys and values).

:func:`caches` lists the caches, with their bounds; ``tests/test_hostile.py``
runs a shorter pass and holds every cache to its bound.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import platform
import random
import sys
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

from mailguard import MemoryStore, identity
from mailguard import asgi as mg_asgi
from mailguard.policies import device as device_policy
from mailguard.policies.device import _DIGESTS_MAX as DEVICE_DIGESTS
from mailguard.policies.device import _QUICK_MAX as DEVICE_QUICK
from mailguard.policies.device import _SEEN_MAX as DEVICE_SEEN
from mailguard.policies.dos import _EPISODES_MAX as DOS_EPISODES
from mailguard.policies.login import _EPISODES_MAX as LOGIN_EPISODES
from mailguard.reading import _CACHED_PATHS

# Only the tables: mailguard's own log lines (refusals, startup) stay out of the way.
logging.getLogger("mailguard").addHandler(logging.NullHandler())

PROXY = ["10.0.0.0/8"]
REFUSAL_SHAPES = 512  # mailguard.policies.base: Policy._refusals


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """401 for POST /login (every guess fails), else 200."""
    login = scope["path"] == "/login" and scope["method"] == "POST"
    await send({"type": "http.response.start", "status": 401 if login else 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def build(store: MemoryStore | None = None) -> Any:
    """The protect()-like stack, on one store (a default MemoryStore)."""
    store = MemoryStore() if store is None else store
    options: dict[str, Any] = {"store": store, "trusted_proxies": PROXY}
    return mg_asgi.DosFilter(
        mg_asgi.DeviceJail(mg_asgi.InvalidLoginFilter(app, **options), **options), **options
    )


def _ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randrange(1, 255)) for _ in range(4))


def _ipv6(rng: random.Random) -> str:
    return "2001:db8:" + ":".join(f"{rng.getrandbits(16):x}" for _ in range(6))


def _address(rng: random.Random) -> str:
    return _ipv6(rng) if rng.random() < 0.4 else _ipv4(rng)


def _word(rng: random.Random, low: int = 4, high: int = 16) -> str:
    return "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(low, high)))


def requests(rng: random.Random, count: int) -> Iterator[tuple[dict[str, Any], bytes]]:
    """``count`` random hostile (scope, body) pairs."""
    for _ in range(count):
        headers: list[tuple[bytes, bytes]] = [(b"host", b"mail.example.com")]
        if rng.random() < 0.25:  # through our proxy, with a random forwarding header
            peer = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            hops = ", ".join(_address(rng) for _ in range(rng.randint(1, 4)))
            headers.append((b"x-forwarded-for", hops.encode()))
        else:
            peer = _address(rng)
            if rng.random() < 0.3:  # a header nobody believes
                headers.append((b"x-forwarded-for", _address(rng).encode()))
        kind = rng.random()
        body = b""
        method = "GET"
        query = b""
        if kind < 0.3:
            path = "/login"
            method = "POST"
            body = f"user={_word(rng)}%40example.com&password={_word(rng)}".encode()
            headers.append((b"content-type", b"application/x-www-form-urlencoded"))
            headers.append((b"content-length", str(len(body)).encode()))
        elif kind < 0.6:
            path = "/Microsoft-Server-ActiveSync"
            method = "POST"
            query = f"Cmd=Sync&User={_word(rng)}&DeviceId={_word(rng, 8, 32)}&DeviceType=x".encode()
        else:
            path = "/" + "/".join(_word(rng) for _ in range(rng.randint(1, 4)))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "https",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": (peer, rng.randrange(1024, 65536)),
            "server": ("127.0.0.1", 443),
        }
        yield scope, body


async def drive(stack: Any, rng: random.Random, count: int) -> dict[int, int]:
    """Send ``count`` random requests through ``stack``; count the statuses."""
    statuses: dict[int, int] = {}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses[message["status"]] = statuses.get(message["status"], 0) + 1

    for scope, body in requests(rng, count):
        sent = False

        async def receive(body: bytes = body) -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await stack(scope, receive, send)
    return statuses


def _filters(stack: Any) -> list[Any]:
    found = []
    while isinstance(stack, mg_asgi.GuardMiddleware):
        found.append(stack)
        stack = stack.app
    return found


def caches(stack: Any) -> list[tuple[str, Any, int]]:
    """Every per-process cache the stack uses: ``(name, container, bound)``.

    (A RedisStore adds its block cache, ``block_cache_size`` entries, and its
    refusal cache, ``refusal_cache_size``: 10,000 each by default.)
    """
    filters = _filters(stack)
    resolver = filters[0].policy.resolver
    found: list[tuple[str, Any, int]] = [
        ("identity: canonical_ip", identity._canonical_cache, identity.CACHE_SIZE),
        ("identity: resolver _direct", resolver._direct, identity.CACHE_SIZE),
        ("identity: resolver _trusted_peers", resolver._trusted_peers, identity.CACHE_SIZE),
        ("identity: resolver _by_address", resolver._by_address, identity.CACHE_SIZE),
        ("identity: resolver _walked", resolver._walked, identity._WALK_CACHE_SIZE),
        ("identity: resolver _once", resolver._once, identity.CACHE_SIZE),
        (
            "identity: trusted_proxies membership",
            resolver.trusted_proxies._cache,
            identity.CACHE_SIZE,
        ),
        ("identity: shared resolvers", identity._SHARED, 1),
    ]
    for f in filters:
        policy = f.policy
        kind = policy.kind
        found.append((f"{kind}: safe_ips membership", policy.safe_ips._cache, identity.CACHE_SIZE))
        found.append((f"{kind}: refusal shapes", policy._refusals, REFUSAL_SHAPES))
        for name, value in vars(policy).items():
            seen = getattr(value, "_seen", None)
            if isinstance(seen, dict):
                found.append((f"{kind}: {name} paths", seen, _CACHED_PATHS))
        if kind == "dos":
            found.append(("dos: refusal episodes", policy._episodes, DOS_EPISODES))
            found.append(("dos: delayed per client", policy._waiting, policy.max_delayed))
        if kind == "login":
            found.append(("login: refusal episodes", policy._refused, LOGIN_EPISODES))
        if kind == "device":
            found.append(("device: devices by query", policy._seen, DEVICE_SEEN))
            found.append(("device: keys by plain query", policy._quick, DEVICE_QUICK))
    if any(f.policy.kind == "device" for f in filters):
        found.append(("device: identity digests", device_policy._digests, DEVICE_DIGESTS))
    return found


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of ``obj`` and of what it holds (strings, tuples, dicts, objects)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or obj is None or isinstance(obj, (bool, type)):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (tuple, list, set, frozenset)):
        size += sum(deep_size(v, seen) for v in obj)
    elif hasattr(obj, "__slots__") and not isinstance(obj, (str, bytes, int, float)):
        size += sum(deep_size(getattr(obj, s, None), seen) for s in obj.__slots__)
    return size


def cache_bytes(container: Any) -> int:
    """A cache's bytes: the container, its keys and values (shared objects once)."""
    if hasattr(container, "data"):  # WeakValueDictionary: the registry, not the resolvers
        return sys.getsizeof(container.data)
    return deep_size(container)


def rss() -> tuple[int, int]:
    """(VmRSS, VmHWM) in bytes, from /proc/self/status."""
    found = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                name, _, value = line.partition(":")
                if name in found:
                    found[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return found["VmRSS"], found["VmHWM"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    count = max(1, min(args.requests, 10_000_000))
    print(f"python {platform.python_version()} on {platform.machine()}")
    store = MemoryStore()
    stack = build(store)
    rng = random.Random(args.seed)
    asyncio.run(drive(stack, rng, 2000))  # warm up: imports, first allocations
    gc.collect()
    before, _ = rss()
    started = time.perf_counter()
    statuses = asyncio.run(drive(stack, rng, count))
    took = time.perf_counter() - started
    gc.collect()
    after, peak = rss()
    print(f"{count:,} hostile requests in {took:.1f} s ({count / took:,.0f}/s): {statuses}")
    mib = 1 << 20
    print(
        f"RSS before {before / mib:.1f} MiB, after {after / mib:.1f} MiB"
        f" (+{(after - before) / mib:.1f} MiB), peak {peak / mib:.1f} MiB"
    )
    print(
        f"store: {len(store):,} keys of max_keys {store.max_keys:,};"
        f" counted {store.counted_bytes / mib:.1f} MiB of max_bytes {store.max_bytes / mib:.1f} MiB"
    )
    total = 0
    print(f"{'cache':42} {'entries':>9} {'bound':>9} {'MiB':>7}")
    for name, container, bound in caches(stack):
        held = cache_bytes(container)
        total += held
        print(f"{name:42} {len(container):>9,} {bound:>9,} {held / mib:>7.1f}")
    print(f"{'caches, in all':42} {'':>9} {'':>9} {total / mib:>7.1f}")


if __name__ == "__main__":
    main()
