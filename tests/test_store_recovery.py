"""Blocks across a Redis outage and a Redis restart (issue #13), on a real redis-server.

* ``on_store_error="memory"``: the blocks made in the local MemoryStore while
  Redis was down are enforced until they end, and copied into Redis when it
  answers again (so every worker, and the admin, see them).
* A restart without persistence lifts every block; with ``appendonly yes``
  the blocks survive it (the README's "Redis persistence").
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from redis_server import RedisServer
from werkzeug.test import Client

from mailguard import FakeClock, MemoryStore, RedisStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.stores.base import StoreError
from mailguard.stores.guard import HANDOVER_BATCH, GuardedStore

T0 = 1_700_000_000.0
GUESSER = "203.0.113.7"
MAX_FAILED = 3
BLOCK = 600.0
_prefixes = itertools.count()

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not on PATH"
)


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    status = 401 if scope["path"] == "/login" and scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    login = environ["PATH_INFO"] == "/login" and environ["REQUEST_METHOD"] == "POST"
    start_response("401 Unauthorized" if login else "200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def login_stack(interface: str, store: RedisStore) -> tuple[Any, Callable[[], int]]:
    """An InvalidLoginFilter in memory mode; returns (its policy, ``guess()``)."""
    options: dict[str, Any] = {
        "store": store,
        "max_failed_logins": MAX_FAILED,
        "block_duration": BLOCK,
        "on_store_error": "memory",
    }
    if interface == "asgi":
        app = mg_asgi.InvalidLoginFilter(asgi_app, **options)
        loop = asyncio.new_event_loop()

        def guess_asgi() -> int:
            async def go() -> int:
                transport = httpx.ASGITransport(app=app, client=(GUESSER, 40000))
                async with httpx.AsyncClient(transport=transport, base_url="http://m.test") as c:
                    return (await c.post("/login", content=b"user=jdoe&pass=x")).status_code

            return loop.run_until_complete(go())

        return app.policy, guess_asgi
    wsgi = mg_wsgi.InvalidLoginFilter(wsgi_app, **options)
    client = Client(wsgi)

    def guess_wsgi() -> int:
        reply = client.post(
            "/login", data=b"user=jdoe&pass=x", environ_base={"REMOTE_ADDR": GUESSER}
        )
        return int(reply.status_code)

    return wsgi.policy, guess_wsgi


@needs_redis
@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_blocks_made_in_memory_mode_outlive_the_outage(interface: str) -> None:
    with RedisServer.for_tests() as own:
        clock = FakeClock(T0)
        prefix = f"r{next(_prefixes)}:"
        store = RedisStore(own.url, prefix=prefix, clock=clock, breaker_cooldown=0.2)
        policy, guess = login_stack(interface, store)
        guarded = policy.store
        assert isinstance(guarded, GuardedStore)
        own.stop()
        # counted in this process while Redis is down: blocked after MAX_FAILED
        assert [guess() for _ in range(MAX_FAILED + 2)] == [401] * MAX_FAILED + [503] * 2
        assert guarded.down
        own.start()  # empty: no persistence
        deadline = time.monotonic() + 10
        codes = []
        while guarded.down and time.monotonic() < deadline:
            codes.append(guess())  # the breaker lets a trial through after its cooldown
            time.sleep(0.05)
        assert not guarded.down, "Redis never came back"
        codes += [guess() for _ in range(3)]
        assert set(codes) == {503}  # the local block held through the recovery
        # ... and is now in Redis, with the time it had left, for every worker
        other = RedisStore(own.url, prefix=prefix, clock=clock)
        try:
            found = other.get_block("login", GUESSER)
            assert found is not None
            assert found.until == pytest.approx(T0 + BLOCK)
            assert [b.key for b in other.blocks("login")] == [GUESSER]
        finally:
            other.close()
        assert not guarded.held  # handed over: nothing local is left
        clock.advance(BLOCK)
        assert guess() == 401  # it ends when it was due to
        if interface == "asgi":
            asyncio.run(store.aclose())
        store.close()


@needs_redis
def test_a_local_block_is_consulted_until_it_is_copied() -> None:
    """Copying may fail (Redis down again): the local block still refuses."""
    with RedisServer.for_tests() as own:
        clock = FakeClock(T0)
        store = RedisStore(own.url, prefix=f"r{next(_prefixes)}:", clock=clock)
        guarded = GuardedStore(store, "memory")
        own.stop()
        guarded.block("login", "a", 100.0, "failures")
        assert guarded.down and guarded.held
        own.start()
        # a call that answers from Redis: the local block is still in force, and listed
        deadline = time.monotonic() + 10
        while guarded.down and time.monotonic() < deadline:
            guarded.peek("dos", "x", 1.0)
            time.sleep(0.05)
        assert guarded.attempt("login", "a", 3, 60.0, 30.0)[0] == 3  # BLOCKED
        assert guarded.get_block("login", "a") is not None
        assert store.get_block("login", "a") is not None  # handed over by then
        assert guarded.unblock("a", "login") == 1
        assert guarded.get_block("login", "a") is None
        store.close()


@needs_redis
@pytest.mark.parametrize("persist", [False, True])
def test_a_redis_restart_keeps_blocks_only_with_appendonly(persist: bool) -> None:
    options = ["--appendonly", "yes", "--appendfsync", "everysec"] if persist else []
    with RedisServer(options=options) as own:
        clock = FakeClock(T0)
        prefix = f"r{next(_prefixes)}:"
        store = RedisStore(own.url, prefix=prefix, clock=clock, block_cache_ttl=0)
        store.block("login", GUESSER, BLOCK, "failures")
        own.stop()  # SIGTERM: with appendonly the log is flushed first
        own.start()
        deadline = time.monotonic() + 10
        found = None
        while time.monotonic() < deadline:
            try:
                found = store.get_block("login", GUESSER)
                break
            except Exception:  # the breaker, until the first trial answers
                time.sleep(0.05)
        assert (found is not None) is persist
        store.close()


class Flaky:
    """A MemoryStore that fails every call while ``down`` (a stand-in for Redis)."""

    def __init__(self, clock: FakeClock) -> None:
        self.store = MemoryStore(clock=clock)
        self._clock = clock
        self.down = False
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.down:
                raise StoreError("down")
            return method(*args, **kwargs)

        return call


def test_many_local_blocks_are_handed_over_a_few_per_call() -> None:
    clock = FakeClock(T0)
    flaky = Flaky(clock)
    guarded = GuardedStore(flaky, "memory")  # type: ignore[arg-type]
    flaky.down = True
    for i in range(50):
        guarded.block("device", f"d{i}", 100.0 + i, "rate")
    flaky.store.block("device", "d7", 1000.0, "manual")  # the store holds a longer one
    clock.advance(10.0)
    assert guarded.unblock("d3", "device") == 1  # lifted locally during the outage
    flaky.down = False
    calls = 0
    while guarded.held and calls < 100:
        flaky.calls = 0
        assert guarded.hit("device", "d5", 150, 30.0, 600.0)[0] == 3  # BLOCKED, until copied
        assert flaky.calls <= 2 * HANDOVER_BATCH + 2  # a few round trips per call
        calls += 1
    assert not guarded.held
    assert calls <= 50 // HANDOVER_BATCH + 2
    held = {b.key: b for b in flaky.store.blocks("device")}
    assert set(held) == {f"d{i}" for i in range(50)} - {"d3"}  # the lifted one stays lifted
    assert held["d7"].until == T0 + 1000.0  # a longer block is kept
    assert held["d9"].until == T0 + 109.0  # with the time it had left
    assert guarded.blocks("device") == flaky.store.blocks("device")
