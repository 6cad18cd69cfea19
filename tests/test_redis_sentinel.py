"""RedisStore through Redis Sentinel: a master, a replica, three sentinels (issue #15).

The topology (``tests/redis_topologies.py``) starts once for the module.  The
store conformance suite runs on it too (``tests/test_store_conformance.py``)
and failover is in ``tests/test_redis_failover.py``; here is what only
Sentinel has: the service name and database in the URL, sentinels that are
down, a service no sentinel knows.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis_server import free_port
from redis_topologies import SERVICE, Sentinels, commands

from mailguard import RedisStore
from mailguard.core import OK, OVER
from mailguard.stores.base import StoreBug, StoreError

pytestmark = pytest.mark.servers

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def sentinels() -> Iterator[Sentinels]:
    with Sentinels.for_tests() as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"se{next(_prefixes)}:"


def hosts(sentinels: Sentinels) -> str:
    return ",".join(f"127.0.0.1:{node.port}" for node in sentinels.sentinels)


def keys_in_db(port: int, db: int, pattern: str) -> list[str]:
    reply = commands(port, ("SELECT", db), ("SCAN", 0, "MATCH", pattern, "COUNT", 10_000))
    assert reply[0] == "OK"
    # (the index of block ends, written by the store's thread, is not per-key state)
    return sorted(name for name in reply[1][1] if not name.endswith("block-ends"))


def test_the_url_names_the_service_and_the_database(sentinels: Sentinels, prefix: str) -> None:
    store = RedisStore(f"redis+sentinel://{hosts(sentinels)}/{SERVICE}/3", prefix=prefix)
    try:
        assert store.hit("dos", "a", 1, 60.0)[0] == OK
        assert store.hit("dos", "a", 1, 60.0)[0] == OVER
        store.block("login", "a", 60.0, "failures")
        master = sentinels.current_master().port
        assert keys_in_db(master, 3, f"{prefix}*") == [
            f"{prefix}{{dos:a}}:w",
            f"{prefix}{{login:a}}:b",
        ]
        assert keys_in_db(master, 0, f"{prefix}*") == []
        assert [b.key for b in store.blocks()] == ["a"]
        assert store.unblock_all() == 1
    finally:
        store.close()  # (its thread's last turn indexes what it made: in database 3)
    reply = commands(
        sentinels.current_master().port, ("SELECT", 3), ("EXISTS", f"{prefix}block-ends")
    )
    assert reply == ["OK", 1]


def decide(store: RedisStore, face: str, key: str, limit: int) -> tuple[list[int], float]:
    """Three hits on ``key`` through ``face``: their codes, and the seconds the first took."""

    async def three() -> tuple[list[int], float]:
        began = time.monotonic()
        codes = [(await store.ahit("dos", key, limit, 60.0))[0]]
        took = time.monotonic() - began
        codes += [(await store.ahit("dos", key, limit, 60.0))[0] for _ in range(2)]
        await store.aclose()
        return codes, took

    if face == "async":
        return asyncio.run(three())
    began = time.monotonic()
    codes = [store.hit("dos", key, limit, 60.0)[0]]
    took = time.monotonic() - began
    codes += [store.hit("dos", key, limit, 60.0)[0] for _ in range(2)]
    return codes, took


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_dead_sentinel_in_the_list_is_passed_over(
    sentinels: Sentinels, prefix: str, face: str
) -> None:
    """One sentinel host down (listed first) costs a connect timeout, not seconds.

    redis-py builds each sentinel's client from ``sentinel_kwargs``
    (redis ``sentinel.py``, ``Sentinel.__init__``); without a ``retry`` there,
    it gets redis-py's default (redis ``client.py``, ``Redis.__init__``: 3
    retries, exponential backoff), about 4 s per dead sentinel, longer than
    an asyncio batch may take.
    """
    url = f"redis+sentinel://127.0.0.1:{free_port()},{hosts(sentinels)}/{SERVICE}/0"
    store = RedisStore(url, prefix=prefix, breaker_cooldown=0)
    try:
        codes, took = decide(store, face, "b", 2)
        assert codes == [OK, OK, OVER]
        assert took < 1.0
    finally:
        store.close()


def test_an_unknown_service_is_a_store_error_not_a_crash(sentinels: Sentinels) -> None:
    store = RedisStore(f"redis+sentinel://{hosts(sentinels)}/nosuchservice/0", prefix="x:")
    try:
        for _ in range(2):  # the first call and the breaker's quick refusal
            with pytest.raises(StoreError) as caught:
                store.hit("dos", "c", 1, 60.0)
            assert not isinstance(caught.value, StoreBug)  # an outage, not a defect
    finally:
        store.close()


@pytest.mark.parametrize("face", ["sync", "async"])
def test_no_sentinel_answering_is_a_store_error_within_a_timeout(prefix: str, face: str) -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/{SERVICE}/0"
    store = RedisStore(url, prefix=prefix)
    began = time.monotonic()
    try:
        with pytest.raises(StoreError) as caught:
            decide(store, face, "d", 1)
        assert not isinstance(caught.value, StoreBug)
        assert time.monotonic() - began < 1.0  # a request is not held for seconds
    finally:
        store.close()


def test_given_sentinel_master_clients_are_used(sentinels: Sentinels, prefix: str) -> None:
    import redis.asyncio.sentinel
    import redis.sentinel

    sentinel: Any = redis.sentinel.Sentinel  # untyped in redis-py
    async_sentinel: Any = redis.asyncio.sentinel.Sentinel
    where = [("127.0.0.1", node.port) for node in sentinels.sentinels]
    sync_client = sentinel(where, socket_timeout=1.0).master_for(SERVICE)

    async def main() -> None:
        async_client = async_sentinel(where, socket_timeout=1.0).master_for(SERVICE)
        store = RedisStore(client=sync_client, async_client=async_client, prefix=prefix)
        try:
            assert store.hit("dos", "e", 2, 60.0)[:2] == (OK, 1)
            assert (await store.ahit("dos", "e", 2, 60.0))[:2] == (OK, 0)
            assert store.hit("dos", "e", 2, 60.0)[0] == OVER
            store.block("login", "e", 60.0, "manual")
            assert [b.key for b in await store.ablocks()] == ["e"]
            assert await store.aunblock("e") == 1
        finally:
            await store.aclose()
            store.close()
            await async_client.aclose()

    try:
        asyncio.run(main())
        master = sentinels.current_master().port
        assert keys_in_db(master, 0, f"{prefix}*") == [f"{prefix}{{dos:e}}:w"]
    finally:
        sync_client.close()
