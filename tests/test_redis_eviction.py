"""A flood never evicts a live block or jail, and never turns counting off.

Each test starts its own small ``redis-server`` (``--maxmemory 2mb``), set up
as the README's "Running at scale" says (``maxmemory-policy volatile-ttl``),
or, for the warnings, as it says not to.  Blocks have no TTL, so no
``volatile-*`` policy can take them; every counter has one, so a flood of
fresh addresses evicts the flood's own counters.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_server import RedisServer

from mailguard import RedisStore
from mailguard.core import BLOCKED
from mailguard.policies import InvalidLoginPolicy, Outcome
from mailguard.stores.base import StoreError
from mailguard.stores.guard import StoreDown

pytestmark = pytest.mark.servers

RECOMMENDED = ["--maxmemory", "2mb", "--maxmemory-policy", "volatile-ttl"]  # the README's
LOGIN_BLOCKS, JAILS, FLOOD = 1000, 200, 30_000
MAX_FAILED = 5


@pytest.fixture(params=["volatile-ttl", "volatile-lru"])
def small(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """The README's setting, and the one it gave before (blocks had a TTL then,
    and this flood evicted every one of them)."""
    with RedisServer.for_tests() as running:
        running.stop()
        running.options = ["--maxmemory", "2mb", "--maxmemory-policy", request.param]
        running.start()
        yield running


def _started(options: list[str]) -> RedisServer:
    server = RedisServer.for_tests()
    server.stop()
    server.options = options
    return server.start()


def _login_policy(store: RedisStore) -> InvalidLoginPolicy:
    return InvalidLoginPolicy(
        store=store, max_failed_logins=MAX_FAILED, block_duration=1500, on_store_error="closed"
    )


def _guess(policy: InvalidLoginPolicy, address: str) -> bool:
    """One wrong password from ``address``: False when it was refused (blocked)."""
    ticket = policy.begin(address, "jdoe", "imap")
    if not ticket.allowed:
        return False
    policy.end(ticket, Outcome.FAILED)
    return True


async def _flood(store: RedisStore, policy: InvalidLoginPolicy, count: int) -> None:
    """Fresh addresses: a DoS window and a failed login (a streak) each."""

    async def one(i: int) -> None:
        address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        await store.ahit("dos", address, 100, 1.0)
        ticket = await policy.abegin(address, "jdoe", "imap")
        assert ticket.allowed  # a fresh address, and Redis has room: never refused
        await policy.aend(ticket, Outcome.FAILED)

    for start in range(0, count, 500):
        await asyncio.gather(*(one(i) for i in range(start, min(start + 500, count))))
    await store.aclose()


def test_a_flood_evicts_no_block_and_counting_goes_on(small: RedisServer) -> None:
    client = redis.Redis.from_url(small.url)
    store = RedisStore(small.url)
    policy = _login_policy(store)
    for i in range(LOGIN_BLOCKS):  # 1,000 addresses blocked by their failures
        address = f"203.0.{i >> 8}.{i & 255}"
        for _ in range(MAX_FAILED):
            assert _guess(policy, address)
    for i in range(JAILS):  # 200 devices jailed by their rate
        for _ in range(3):
            store.hit("device", f"phone{i}", 2, 60.0, jail=600.0)
    before = client.info("memory")["used_memory"]

    started = time.monotonic()
    asyncio.run(_flood(store, policy, FLOOD))
    flood_seconds = time.monotonic() - started
    stats = client.info("stats")
    assert stats["evicted_keys"] > FLOOD // 2, stats["evicted_keys"]  # the flood did fill it
    assert client.info("memory")["used_memory"] <= 2 * 1024 * 1024 + 64 * 1024
    assert before < 2 * 1024 * 1024

    # every block and jail is still there and refuses (asked of Redis: no cache)
    fresh = RedisStore(small.url, block_cache_ttl=0)
    assert len(fresh.blocks("login")) == LOGIN_BLOCKS
    assert len(fresh.blocks("device")) == JAILS
    checker = _login_policy(fresh)
    for i in range(LOGIN_BLOCKS):
        assert not checker.begin(f"203.0.{i >> 8}.{i & 255}", "jdoe", "imap").allowed
    for i in range(JAILS):
        assert fresh.hit("device", f"phone{i}", 2, 60.0, jail=600.0)[0] == BLOCKED
    # and counting still works for a new address: blocked at max_failed_logins
    allowed = [_guess(checker, "198.51.100.77") for _ in range(30)]
    assert allowed == [True] * MAX_FAILED + [False] * (30 - MAX_FAILED)
    assert client.info("stats")["evicted_keys"] >= stats["evicted_keys"]
    print(f"flood of {FLOOD} fresh addresses in {flood_seconds:.1f} s, "
          f"{stats['evicted_keys']} counters evicted, 0 blocks")  # fmt: skip
    fresh.close()
    store.close()
    client.close()


def test_a_policy_that_can_evict_blocks_is_named_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for options, expected in (
        (["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"], "allkeys-lru"),
        (["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"], "noeviction"),
        (RECOMMENDED, None),
        (["--maxmemory-policy", "noeviction"], None),  # no maxmemory: never full
    ):
        server = _started(options)
        try:
            caplog.clear()
            store = RedisStore(server.url)
            with caplog.at_level(logging.INFO, logger="mailguard.store"):
                store.hit("dos", "k", 5, 1.0)
                deadline = time.monotonic() + 5
                while not store._checked and time.monotonic() < deadline:
                    time.sleep(0.01)
                store.close()  # (joins the thread: its lines are in)
            lines = [r for r in caplog.records if "maxmemory" in r.getMessage()]
            if expected is None:
                assert lines == [], [r.getMessage() for r in lines]
            else:
                assert len(lines) == 1 and lines[0].levelname == "WARNING"
                assert f"maxmemory-policy={expected}" in lines[0].getMessage()
                assert "volatile-ttl" in lines[0].getMessage()
        finally:
            server.close()


def test_config_renamed_is_tolerated(caplog: pytest.LogCaptureFixture) -> None:
    server = _started(["--rename-command", "CONFIG", ""])  # as managed services do
    try:
        store = RedisStore(server.url)
        with caplog.at_level(logging.INFO, logger="mailguard.store"):
            assert store.hit("dos", "k", 5, 1.0)[0] == 0
            store.close()
        lines = [r for r in caplog.records if "maxmemory" in r.getMessage()]
        assert len(lines) == 1 and lines[0].levelname == "INFO"
        assert "could not read maxmemory-policy" in lines[0].getMessage()
        assert store.hit("dos", "k", 5, 1.0)[0] == 0  # and the store works on
        store.close()
    finally:
        server.close()


def test_a_full_redis_is_one_error_line_saying_so(caplog: pytest.LogCaptureFixture) -> None:
    """``noeviction`` (what the README says not to use): a full Redis refuses
    writes; that is logged once, at ERROR, as "Redis is full"."""
    server = _started(["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"])
    try:
        store = RedisStore(server.url, breaker_cooldown=0.0)
        policy = InvalidLoginPolicy(
            store=store, max_failed_logins=MAX_FAILED, on_store_error="closed"
        )
        with caplog.at_level(logging.INFO, logger="mailguard.store"):
            for i in range(100_000):
                try:
                    store.hit("dos", f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 100, 60.0)
                except StoreError:
                    break
            else:
                pytest.fail("Redis never filled up")
            assert not store.health.up
            for _ in range(20):  # more requests while full: no more lines
                with pytest.raises(StoreDown):
                    policy.store.attempt("login", "198.51.100.9", 5, 300.0, 30.0)
        full = [r for r in caplog.records if "Redis is full" in r.getMessage()]
        assert len(full) == 1 and full[0].levelname == "ERROR"
        assert "OutOfMemoryError" in full[0].getMessage()
        downs = [r for r in caplog.records if "store down" in r.getMessage()]
        assert downs == full
        store.close()
    finally:
        server.close()


def test_ended_blocks_are_swept_and_a_block_made_again_is_kept() -> None:
    server = _started(RECOMMENDED)
    try:
        client = redis.Redis.from_url(server.url)
        store = RedisStore(server.url, prefix="sweep:")
        for i in range(50):
            store.block("login", f"a{i}", 0.2, "failures")
        store.block("login", "again", 0.2, "failures")
        index = "sweep:block-ends"
        wait_until(lambda: client.zcard(index) == 51)  # indexed by the thread
        for name in client.scan_iter(match="sweep:*:b"):
            assert client.pttl(name) == -1  # no TTL: nothing evicts them
        time.sleep(0.25)
        store.block("login", "again", 600, "manual")  # the same key, a new end
        store._next_sweep = 0.0  # (due now rather than in 10 to 12 s)
        wait_until(lambda: client.zcard(index) == 1)
        left = sorted(client.scan_iter(match="sweep:*"))
        assert left == [b"sweep:block-ends", b"sweep:{login:again}:b"]
        assert store.get_block("login", "again") is not None
        assert [b.key for b in RedisStore(server.url, prefix="sweep:").blocks()] == ["again"]
        store.close()
        client.close()
    finally:
        server.close()


def wait_until(check: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
