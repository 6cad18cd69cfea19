"""Blocks without TTL, the invalidation channel and the outage lines on a
real 3+3 Redis Cluster (issue #15), as ``test_redis_eviction.py``,
``test_invalidation.py`` and ``test_outage_log.py`` show them on one server.

* A flood of fresh addresses fills every master (``maxmemory-policy
  volatile-ttl``, a little room above what the blocks take): counters are
  evicted on every master, no block or jail on any.
* A lift made in one process lets the client in at another within 100 ms
  (the subscription goes through one node; ``PUBLISH`` reaches them all).
* A master killed is one "store down" line naming it and one "store up"
  line once its replica serves its slots (``cluster-require-full-coverage
  no``: the other masters answer throughout).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry
from redis_topologies import Cluster
from test_invalidation import HOLDER, LIFTER, _python
from test_outage_log import Mix, _lines, _up

from mailguard import RedisStore
from mailguard.core import BLOCKED
from mailguard.metrics import MetricsCollector
from mailguard.policies import InvalidLoginPolicy, Outcome

pytestmark = pytest.mark.servers

LOGIN_BLOCKS, JAILS, FLOOD, MAX_FAILED = 300, 60, 30_000, 5


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster.for_tests(full_coverage=False) as running:
        yield running


def _cluster_client(cluster: Cluster) -> Any:
    node = cluster.nodes[0]
    client: Any = redis.cluster.RedisCluster(host="127.0.0.1", port=node.port)
    return client


def _policy(store: RedisStore) -> InvalidLoginPolicy:
    return InvalidLoginPolicy(
        store=store, max_failed_logins=MAX_FAILED, block_duration=1500, on_store_error="closed"
    )


def _guess(policy: InvalidLoginPolicy, address: str) -> bool:
    ticket = policy.begin(address, "jdoe", "imap")
    if not ticket.allowed:
        return False
    policy.end(ticket, Outcome.FAILED)
    return True


def test_a_flood_evicts_no_block_on_any_master(cluster: Cluster) -> None:
    prefix = f"ev{os.getpid()}:"
    store = RedisStore(cluster.url, prefix=prefix)
    policy = _policy(store)
    for i in range(LOGIN_BLOCKS):
        for _ in range(MAX_FAILED):
            assert _guess(policy, f"203.0.{i >> 8}.{i & 255}")
    for i in range(JAILS):
        for _ in range(3):
            store.hit("device", f"phone{i}", 2, 60.0, jail=600.0)
    masters = cluster.masters()
    assert len(masters) == 3
    for master in masters:  # a little room above what is there: the flood fills it
        used = int(master.call("INFO", "memory").split("used_memory:")[1].split()[0])
        assert master.call("CONFIG", "SET", "maxmemory", str(used + 1_500_000)) == "OK"
        assert master.call("CONFIG", "SET", "maxmemory-policy", "volatile-ttl") == "OK"
        master.call("CONFIG", "RESETSTAT")
    try:

        async def flood() -> None:
            async def one(i: int) -> None:
                address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
                await store.ahit("dos", address, 100, 1.0)
                ticket = await policy.abegin(address, "jdoe", "imap")
                assert ticket.allowed  # Redis has room (it evicts counters): never refused
                await policy.aend(ticket, Outcome.FAILED)

            for start in range(0, FLOOD, 500):
                await asyncio.gather(*(one(i) for i in range(start, min(start + 500, FLOOD))))
            await store.aclose()

        began = time.monotonic()
        asyncio.run(flood())
        took = time.monotonic() - began
        evicted = {
            m.port: int(m.call("INFO", "stats").split("evicted_keys:")[1].split()[0])
            for m in masters
        }
        assert all(count > 1000 for count in evicted.values()), evicted  # every master full

        fresh = RedisStore(cluster.url, prefix=prefix, block_cache_ttl=0)
        assert len(fresh.blocks("login")) == LOGIN_BLOCKS
        assert len(fresh.blocks("device")) == JAILS
        checker = _policy(fresh)
        for i in range(LOGIN_BLOCKS):
            assert not checker.begin(f"203.0.{i >> 8}.{i & 255}", "jdoe", "imap").allowed
        for i in range(JAILS):
            assert fresh.hit("device", f"phone{i}", 2, 60.0, jail=600.0)[0] == BLOCKED
        allowed = [_guess(checker, "198.51.100.77") for _ in range(10)]
        assert allowed == [True] * MAX_FAILED + [False] * (10 - MAX_FAILED)
        print(f"cluster flood of {FLOOD} in {took:.1f} s, evicted per master {evicted}, 0 blocks")
        fresh.unblock_all()
        fresh.close()
    finally:
        for master in masters:
            master.call("CONFIG", "SET", "maxmemory", "0")
        store.close()


def test_ended_blocks_are_swept_on_every_master(cluster: Cluster) -> None:
    prefix = f"sw{os.getpid()}:"
    client = _cluster_client(cluster)
    store = RedisStore(cluster.url, prefix=prefix)
    try:
        for i in range(30):  # 30 keys: every master holds some
            store.block("login", f"a{i}", 0.2, "failures")
        store.block("login", "again", 0.2, "failures")
        owners = {
            client.nodes_manager.get_node_from_slot(
                client.keyslot(f"{prefix}{{login:a{i}}}:b")
            ).name
            for i in range(30)
        }
        assert len(owners) == 3
        index = f"{prefix}block-ends"
        deadline = time.monotonic() + 5
        while client.zcard(index) != 31:  # indexed by the channel's thread
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.25)
        store.block("login", "again", 600, "manual")  # the same key, a new end
        store._next_sweep = 0.0  # (due now rather than in 10 to 12 s)
        while client.zcard(index) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        left = sorted(client.scan_iter(match=f"{prefix}*", target_nodes=client.PRIMARIES))
        assert left == [index.encode(), f"{prefix}{{login:again}}:b".encode()]
    finally:
        store.close()
        client.close()


def test_a_lift_reaches_another_process_within_100_ms(cluster: Cluster) -> None:
    prefix = f"inv{os.getpid()}:"
    admin = RedisStore(cluster.url, prefix=prefix)
    admin.block("device", "phone", 600, "rate")
    admin.close()
    holder = _python(HOLDER, cluster.url, prefix)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready", holder.stderr
        holder.stdout.readline()  # refusing 1
        line = holder.stdout.readline().split()  # refusing 50, from the cache
        assert line[0] == "refusing" and int(line[1]) == 50
        lifter = _python(LIFTER, cluster.url, prefix)
        out, err = lifter.communicate(timeout=30)
        assert lifter.returncode == 0, err
        lift = json.loads(out)
        assert lift["lifted"] == 1
        rest, err = holder.communicate(timeout=30)
        assert holder.returncode == 0, err
        seen = json.loads(rest.strip().splitlines()[-1])
        latency = seen["let_in"] - lift["began"]
        print(f"cluster: lift seen by the other process {latency * 1000:.1f} ms after it began")
        assert 0 < latency < 0.1
    finally:
        holder.kill()
        holder.wait()


def test_a_master_whose_policy_can_evict_blocks_is_named(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    master = cluster.masters()[1]
    assert master.call("CONFIG", "SET", "maxmemory-policy", "allkeys-lru") == "OK"
    store = RedisStore(cluster.url, prefix=f"cfg{os.getpid()}:")
    client = store._new_sync_client()
    try:
        caplog.set_level(logging.INFO, logger="mailguard.store")
        store._check_server(client)  # (what the channel's thread does first)
        warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert len(warned) == 1 and f"node=127.0.0.1:{master.port}" in warned[0], warned
        assert "allkeys-lru" in warned[0]
    finally:
        master.call("CONFIG", "SET", "maxmemory-policy", "noeviction")
        assert client is not None
        client.close()
        store.close()


_OLD_REDIS_PY = tuple(int(p) for p in redis.__version__.split(".")[:2]) < (6, 0)


@pytest.mark.xfail(
    _OLD_REDIS_PY,
    reason="KNOWN, redis-py 5.x only, in some runs: after the promotion its asyncio cluster "
    "client, whose slot map still names the dead master, tries it once more just after the "
    "store counted up again, a second short down/up pair (0.2 s) not naming the node",
    strict=False,
)
def test_a_killed_master_is_one_pair_of_lines_naming_it(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    # (last in this module: it changes the topology)
    store = RedisStore(
        cluster.url, prefix=f"out{os.getpid()}:", breaker_cooldown=0.05, block_cache_ttl=30.0
    )
    registry = CollectorRegistry()
    registry.register(MetricsCollector(store))
    mix = Mix(store)
    store.block("device", "phone", 600, "rate")
    caplog.set_level(logging.INFO, logger="mailguard.store")
    mix.run(60)
    assert _lines(caplog) == [] and _up(registry) == 1.0

    client = _cluster_client(cluster)
    owner = client.nodes_manager.get_node_from_slot(client.keyslot(f"{store.prefix}{{dos:x}}"))
    client.close()
    victim = next(node for node in cluster.masters() if node.port == owner.port)
    replica = cluster.replica_of(victim)
    cluster.kill(victim)
    deadline = time.monotonic() + 20
    while store.health.up:  # a request on the victim's keys
        assert time.monotonic() < deadline, "the dead master was never noticed"
        with contextlib.suppress(Exception):
            store.hit("dos", "x", 1000, 1.0)
        time.sleep(0.02)
    assert _up(registry) == 0.0
    lines = _lines(caplog)
    assert len(lines) == 1, lines
    assert lines[0][0] == "WARNING" and f"node=127.0.0.1:{victim.port}" in lines[0][1]
    promoted = cluster.wait_promotion(replica)
    while not store.health.up:
        assert time.monotonic() < promoted + 10, "never counted up again"
        with contextlib.suppress(Exception):
            store.hit("dos", "x", 1000, 1.0)
        mix.run(6)
        time.sleep(0.02)
    up_after = time.monotonic() - promoted
    mix.run(60)
    # (another part failing meanwhile, here the asyncio client's slot map, is
    # one INFO line marked "(also)": not a second outage)
    lines = [line for line in _lines(caplog) if not line[1].endswith("(also)")]
    assert [level for level, _ in lines] == ["WARNING", "INFO"], lines
    assert lines[1][1].startswith("mailguard store up store=")
    assert _up(registry) == 1.0
    print(f"cluster: store counted up {up_after:.2f} s after the promotion")
    store.close()
