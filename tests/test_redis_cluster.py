"""RedisStore on a real Redis Cluster: 3 masters + 3 replicas on loopback (issue #15).

The cluster (``tests/redis_topologies.py``) starts once for the module.  The
store conformance suite runs on it too (``tests/test_store_conformance.py``);
here is what only a cluster has: keys on three masters, each with its own
scripts and its own clock, and admin verbs that must reach all of them.
Failover is in ``tests/test_redis_failover.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_server import free_port
from redis_topologies import Cluster, key_slot, scan_keys, wait_for
from stacks import WsgiStack

from mailguard import RedisStore
from mailguard import wsgi as mg_wsgi
from mailguard.core import OK, OVER, Block
from mailguard.stores.base import StoreBug, StoreError

pytestmark = pytest.mark.servers

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster.for_tests() as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"cl{os.getpid()}x{next(_prefixes)}:"


def addresses() -> Iterator[str]:
    return (f"198.51.{i // 250}.{i % 250 + 1}" for i in range(60_000))


def redis_key(prefix: str, ns: str, key: str, suffix: str) -> str:
    """The documented key layout (``mailguard/stores/redis.py``, "Keys")."""
    return f"{prefix}{{{ns}:{key}}}:{suffix}"


# ------------------------------------------------------------------ harness


@settings(max_examples=60, deadline=None)
@given(key=st.text(max_size=12) | st.sampled_from(["{a}b", "x{}y{z}", "{{a}}", "}{b}"]))
def test_the_harness_slots_keys_as_the_cluster_does(cluster: Cluster, key: str) -> None:
    """The tests place keys on masters with ``key_slot``: it must be CLUSTER KEYSLOT."""
    assert key_slot(key) == cluster.keyslot(key)


# ------------------------------------------------------- exact across processes

LIMIT = 100
EACH = 60  # hits per key per process: 240 in all against a limit of 100
WORKER = textwrap.dedent(
    """
    import asyncio, json, sys
    from mailguard import RedisStore
    from mailguard.core import OK

    url, prefix, face, keys, limit, each = json.loads(sys.argv[1])
    store = RedisStore(url, prefix=prefix)
    allowed = dict.fromkeys(keys, 0)
    answers = []

    def count(key, code):
        allowed[key] += code == OK
        answers.append(code)

    if face == "sync":
        for key in keys:
            store.peek("dos", key, 60.0)  # connected to every master before the start
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(each):
            for key in keys:
                count(key, store.hit("dos", key, limit, 60.0)[0])
        store.close()
    else:
        async def main():
            for key in keys:
                await store.apeek("dos", key, 60.0)
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            for _ in range(each):  # every key at once: one batch per master
                codes = await asyncio.gather(*(store.ahit("dos", k, limit, 60.0) for k in keys))
                for key, answer in zip(keys, codes):
                    count(key, answer[0])
            await store.aclose()

        asyncio.run(main())
    print(json.dumps({"allowed": allowed, "answers": len(answers)}), flush=True)
    """
)


def test_limits_are_exact_across_four_processes(cluster: Cluster, prefix: str) -> None:
    """4 processes (2 sync, 2 asyncio) hammer 6 keys on 3 masters: exactly LIMIT each."""
    placed = cluster.keys_on_masters(lambda key: redis_key(prefix, "dos", key, "w"), 2, addresses())
    keys = [key for group in placed.values() for key in group]
    assert len(placed) == 3 and len(keys) == 6
    for port, group in placed.items():  # CLUSTER KEYSLOT agrees: 2 keys on each master
        for key in group:
            slot = cluster.keyslot(redis_key(prefix, "dos", key, "w"))
            assert cluster.master_of(slot).port == port
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                json.dumps([cluster.url, prefix, face, keys, LIMIT, EACH]),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for face in ("sync", "async", "sync", "async")
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None and worker.stdin is not None
            line = worker.stdout.readline()
            assert line == "ready\n", (line, worker.stderr.read() if worker.stderr else "")
        for worker in workers:  # all four start at once
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        results = []
        for worker in workers:
            out, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    totals = {key: sum(r["allowed"][key] for r in results) for key in keys}
    assert totals == dict.fromkeys(keys, LIMIT)  # 0 overshoot, 0 undershoot
    assert [r["answers"] for r in results] == [EACH * len(keys)] * 4
    # the windows really are on three masters, two each
    for port, group in placed.items():
        held = scan_keys(port, f"{prefix}*")
        assert held == {redis_key(prefix, "dos", key, "w") for key in group}


# ------------------------------------------------------------- admin verbs


def _spread_blocks(cluster: Cluster, store: RedisStore, prefix: str) -> dict[int, list[Block]]:
    """2 login blocks and 1 device block on each master: port -> blocks."""
    logins = cluster.keys_on_masters(
        lambda key: redis_key(prefix, "login", key, "b"), 2, addresses()
    )
    devices = cluster.keys_on_masters(
        lambda key: redis_key(prefix, "device", key, "b"),
        1,
        (f"ApplDEV{i}" for i in range(10_000)),
    )
    made: dict[int, list[Block]] = {}
    for port in logins:
        made[port] = [
            *(
                store.block("login", key, 600.0 + i, "failures")
                for i, key in enumerate(logins[port])
            ),
            store.block("device", devices[port][0], 300.0, "rate"),
        ]
    return made


def _block_keys(cluster: Cluster, prefix: str) -> dict[int, set[str]]:
    return {node.port: scan_keys(node.port, f"{prefix}*:b") for node in cluster.masters()}


def test_blocks_unblock_and_unblock_all_reach_every_master(cluster: Cluster, prefix: str) -> None:
    store = RedisStore(cluster.url, prefix=prefix)
    try:
        made = _spread_blocks(cluster, store, prefix)
        every = [block for blocks in made.values() for block in blocks]
        held = _block_keys(cluster, prefix)
        assert all(len(keys) == 3 for keys in held.values()), held  # 3 on each master
        listed = store.blocks()
        assert sorted(listed, key=lambda b: (b.kind, b.key)) == sorted(
            every, key=lambda b: (b.kind, b.key)
        )
        assert [b.until for b in listed] == sorted(b.until for b in listed)  # one order
        assert {b.key for b in store.blocks("device")} == {
            blocks[-1].key for blocks in made.values()
        }
        # one lift per master, each answered by the master that holds it
        for blocks in made.values():
            assert store.unblock(blocks[0].key) == 1
            assert store.get_block("login", blocks[0].key) is None
        assert store.unblock_all("device") == 3
        assert {b.kind for b in store.blocks()} == {"login"}
        assert store.unblock_all() == 3
        assert store.blocks() == []
        assert _block_keys(cluster, prefix) == {port: set() for port in made}
    finally:
        store.unblock_all()
        store.close()


def test_async_admin_verbs_reach_every_master(cluster: Cluster, prefix: str) -> None:
    store = RedisStore(cluster.url, prefix=prefix)
    made = _spread_blocks(cluster, store, prefix)
    every = {(b.kind, b.key) for blocks in made.values() for b in blocks}

    async def main() -> None:
        try:
            assert {(b.kind, b.key) for b in await store.ablocks()} == every
            assert len(await store.ablocks("login")) == 6
            for blocks in made.values():
                assert await store.aunblock(blocks[1].key) == 1
            assert await store.aunblock_all("login") == 3
            assert await store.aunblock_all() == 3
            assert await store.ablocks() == []
        finally:
            await store.aclose()

    try:
        asyncio.run(main())
        assert _block_keys(cluster, prefix) == {port: set() for port in made}
    finally:
        store.unblock_all()
        store.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(
        [sys.executable, "-m", "mailguard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_the_admin_command_lists_and_lifts_blocks_on_every_master(
    cluster: Cluster, prefix: str
) -> None:
    store = RedisStore(cluster.url, prefix=prefix, block_cache_ttl=0)
    try:
        made = _spread_blocks(cluster, store, prefix)
        where = ["--redis", cluster.url, "--prefix", prefix]
        done = cli("blocks", "--json", *where)
        assert done.returncode == 0, done.stderr
        rows: list[dict[str, Any]] = json.loads(done.stdout)
        assert sorted((r["kind"], r["key"]) for r in rows) == sorted(
            (b.kind, b.key) for blocks in made.values() for b in blocks
        )
        for blocks in made.values():  # an address whose block is on each master
            done = cli("unblock", blocks[0].key, *where)
            assert done.returncode == 0, done.stderr
            assert store.get_block("login", blocks[0].key) is None
        done = cli("unblock", "--all", *where)
        assert done.returncode == 0, done.stderr
        assert store.blocks() == []
        assert cli("unblock", "--all", *where).returncode == 1  # nothing left anywhere
        assert _block_keys(cluster, prefix) == {port: set() for port in made}
    finally:
        store.unblock_all()
        store.close()


# ------------------------------------------------------------ unreachable


def _all_faces(store: RedisStore) -> dict[str, BaseException | None]:
    """A decision and an admin listing through each face: what each raised."""

    async def async_calls() -> dict[str, BaseException | None]:
        found: dict[str, BaseException | None] = {}
        for name, call in (("ahit", store.ahit("dos", "k", 5, 1.0)), ("ablocks", store.ablocks())):
            try:
                await call
                found[name] = None
            except Exception as exc:
                found[name] = exc
        await store.aclose()
        return found

    found: dict[str, BaseException | None] = {}
    for name, sync_call in (
        ("hit", lambda: store.hit("dos", "k", 5, 1.0)),
        ("blocks", store.blocks),
    ):
        try:
            sync_call()
            found[name] = None
        except Exception as exc:
            found[name] = exc
    found.update(asyncio.run(async_calls()))
    return found


def test_a_cluster_no_seed_answers_is_a_store_error(prefix: str) -> None:
    """The client is made on first use: a cluster down then is an outage, not a crash."""
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    store = RedisStore(url, prefix=prefix)
    try:
        raised = _all_faces(store)
    finally:
        store.close()
    done = cli("blocks", "--redis", url)  # exit 3: "the store could not be reached"
    assert (done.returncode, "Traceback" in done.stderr) == (3, False), done.stderr
    wrong = {
        name: repr(exc)
        for name, exc in raised.items()
        if not isinstance(exc, StoreError) or isinstance(exc, StoreBug)
    }
    assert wrong == {}


def test_a_flask_app_on_an_unreachable_cluster_fails_open(prefix: str) -> None:
    store = RedisStore(f"redis+cluster://127.0.0.1:{free_port()}", prefix=prefix)

    def wrap(app: Any) -> Any:
        login = mg_wsgi.InvalidLoginFilter(app, store=store, on_store_error="open")
        return mg_wsgi.DosFilter(login, store=store, on_store_error="open")

    stack = WsgiStack(wrap)
    try:
        statuses = [stack.request("/login", method="POST")[0] for _ in range(3)]
        assert statuses == [200, 200, 200]  # "open": let through, never a 500
    finally:
        store.close()


def test_a_cluster_started_after_the_store_is_used_once_it_answers(prefix: str) -> None:
    late = Cluster()  # ports chosen, nothing started yet
    store = RedisStore(late.url, prefix=prefix, breaker_cooldown=0.1)
    try:
        with pytest.raises(StoreError):
            store.hit("dos", "k", 5, 60.0)
        late.start()
        served = wait_for(
            "the store served by the cluster that came up",
            lambda: _served(store),
            5.0,
            0.1,
        )
        assert served == [OK, OK]
        assert [b.key for b in store.blocks()] == []
    finally:
        store.close()
        late.close()


def _served(store: RedisStore) -> list[int] | None:
    async def once() -> int:
        code = (await store.ahit("dos", "k", 5, 60.0))[0]
        await store.aclose()
        return code

    try:
        return [store.hit("dos", "k", 5, 60.0)[0], asyncio.run(once())]
    except StoreError:
        return None


# ------------------------------------------------------------ given clients


def test_given_cluster_clients_route_every_key_and_reach_every_master(
    cluster: Cluster, prefix: str
) -> None:
    import redis.asyncio.cluster
    import redis.cluster

    keys = [
        group[0]
        for group in cluster.keys_on_masters(
            lambda key: redis_key(prefix, "dos", key, "w"), 1, addresses()
        ).values()
    ]
    node: Any = redis.cluster.ClusterNode  # untyped in redis-py
    sync_client = redis.cluster.RedisCluster(startup_nodes=[node("127.0.0.1", cluster.ports[0])])

    async def main() -> None:
        async_client = redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode("127.0.0.1", cluster.ports[1])]
        )
        store = RedisStore(client=sync_client, async_client=async_client, prefix=prefix)
        try:
            for key in keys:  # one key on each master, through both faces
                assert store.hit("dos", key, 2, 60.0)[:2] == (OK, 1)
                assert (await store.ahit("dos", key, 2, 60.0))[:2] == (OK, 0)
                assert store.hit("dos", key, 2, 60.0)[0] == OVER
                assert (await store.ahit("dos", key, 2, 60.0))[0] == OVER
                store.block("login", key, 60.0, "manual")
            assert sorted(b.key for b in await store.ablocks()) == sorted(keys)
            assert sorted(b.key for b in store.blocks("login")) == sorted(keys)
            assert await store.aunblock_all() == 3
            assert store.blocks() == []
        finally:
            await store.aclose()
            store.close()
            await async_client.aclose()  # the owner closes given clients

    try:
        asyncio.run(main())
    finally:
        sync_client.close()
