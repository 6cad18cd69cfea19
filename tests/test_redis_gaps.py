"""Gaps closed after review of the blocks without TTL (issue #15).

* While Redis cannot answer, a block this process cached earlier is enforced
  until it ends, not only ``block_cache_ttl``: a blocked client cannot guess
  through a failover.  A lift made meanwhile is obeyed once Redis answers.
* Every script that reads a block deletes it once it has ended (blocks have
  no TTL), so a store with only an asyncio client (no thread, no sweep)
  leaves no ended block behind that anyone reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from redis_server import RedisServer

from mailguard import RedisStore
from mailguard.core import BLOCKED, OK
from mailguard.stores.base import StoreError

pytestmark = pytest.mark.servers


@pytest.fixture
def server() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


def test_a_cached_block_holds_until_it_ends_while_redis_is_down(server: RedisServer) -> None:
    store = RedisStore(server.url, prefix="held:", block_cache_ttl=0.2, breaker_cooldown=0.1)
    try:
        store.block("login", "a", 3.0, "manual")
        store.block("login", "b", 0.6, "manual")
        assert store.attempt("login", "a", 5, 60.0, 5.0)[0] == BLOCKED  # (cached)
        assert store.attempt("login", "b", 5, 60.0, 5.0)[0] == BLOCKED
        time.sleep(0.3)  # trust ran out: the next request asks Redis again
        assert store.attempt("login", "a", 5, 60.0, 5.0)[0] == BLOCKED  # (Redis said so)
        time.sleep(0.3)
        server.stop()
        # Redis gone, trust long over: the blocks still hold, each until it ends
        code, _, wait = store.attempt("login", "a", 5, 60.0, 5.0)
        assert code == BLOCKED and 1.0 < wait <= 2.5
        assert store.hit("login", "a", 5, 60.0, jail=60.0)[0] == BLOCKED
        assert store.get_block("login", "a") is not None
        # b ended meanwhile: an outage, not an answer
        with pytest.raises(StoreError):
            store.attempt("login", "b", 5, 60.0, 5.0)
        # a key never seen blocked is not invented
        with pytest.raises(StoreError):
            store.attempt("login", "c", 5, 60.0, 5.0)

        async def asynchronous() -> None:
            assert (await store.aattempt("login", "a", 5, 60.0, 5.0))[0] == BLOCKED
            assert (await store.ahit("login", "a", 5, 60.0, jail=60.0))[0] == BLOCKED
            assert await store.aget_block("login", "a") is not None
            await store.aclose()

        asyncio.run(asynchronous())
    finally:
        store.close()


def test_a_lift_made_during_the_outage_is_obeyed_when_redis_answers(
    server: RedisServer,
) -> None:
    store = RedisStore(server.url, prefix="lift:", block_cache_ttl=0.2, breaker_cooldown=0.05)
    admin = redis.Redis.from_url(server.url)
    try:
        store.block("login", "a", 60.0, "manual")
        time.sleep(0.3)
        assert store.attempt("login", "a", 5, 60.0, 5.0)[0] == BLOCKED  # read again, cached
        time.sleep(0.3)
        server.stop()
        assert store.attempt("login", "a", 5, 60.0, 5.0)[0] == BLOCKED  # held
        server.start()
        admin.delete("lift:{login:a}:b")  # lifted behind the store's back (no message)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            try:
                if store.attempt("login", "a", 5, 60.0, 5.0)[0] == OK:
                    break
            except StoreError:
                pass  # (the breaker's cooldown)
            time.sleep(0.05)
        else:
            pytest.fail("the lift was not obeyed after Redis came back")
    finally:
        admin.close()
        store.close()


@pytest.mark.parametrize("with_clock", [False, True])
def test_an_ended_block_is_deleted_by_the_next_read(server: RedisServer, with_clock: bool) -> None:
    admin = redis.Redis.from_url(server.url)
    clock = [1_700_000_000.0]
    store = RedisStore(
        redis.asyncio.Redis.from_url(server.url),  # only an asyncio client: no thread
        prefix="lazy:",
        block_cache_ttl=0,
        clock=(lambda: clock[0]) if with_clock else None,
    )

    async def main() -> None:
        for key, read in (("a", "attempt"), ("b", "hit"), ("c", "get_block")):
            await store.ablock("login", key, 0.2, "manual")
            name = f"lazy:{{login:{key}}}:b"
            assert admin.exists(name) and admin.pttl(name) == -1  # no TTL
            if with_clock:
                clock[0] += 0.3
            else:
                await asyncio.sleep(0.3)
            assert admin.exists(name)  # ended, not swept (no thread)
            if read == "attempt":
                assert (await store.aattempt("login", key, 5, 60.0, 5.0))[0] == OK
            elif read == "hit":
                assert (await store.ahit("login", key, 5, 60.0, jail=60.0))[0] == OK
            else:
                assert await store.aget_block("login", key) is None
            assert not admin.exists(name), read
        assert store._channel is None  # (nothing started a thread)
        await store.aclose()

    try:
        asyncio.run(main())
    finally:
        admin.close()
