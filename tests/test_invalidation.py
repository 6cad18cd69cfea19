"""The invalidation channel: a lift reaches every process at once.

Processes share one real ``redis-server``.  A process that has a block
cached refuses the client without a round trip; another lifts the block; the
first lets the client in within 100 ms, long before ``block_cache_ttl``.
Messages anyone could publish are parsed defensively (hypothesis): they can
only make a store forget, never refuse or trust more.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st
from redis_server import RedisServer

from mailguard import FakeClock, RedisStore
from mailguard.core import BLOCKED, OK, Block
from mailguard.stores.channel import MAX_MESSAGE, OPS, Message, encode, parse

T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


@pytest.fixture
def client(server: RedisServer) -> Iterator[redis.Redis]:
    made = redis.Redis.from_url(server.url)
    yield made
    made.close()


_prefixes = iter(range(1_000_000))


@pytest.fixture
def prefix() -> str:
    return f"inv{next(_prefixes)}:"


def wait_for(check: Any, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def evalsha_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


# ------------------------------------------------------------- messages
def test_messages_round_trip() -> None:
    for op, (kind_required, _) in OPS.items():
        if op == "config":  # carries a version, neither kind nor key
            assert parse(encode(op, version=7)) == Message(op, version=7)
            assert parse(encode(op, origin="a1", version=7)) == Message(op, None, None, "a1", 7)
            continue
        kind = "login"
        key = "203.0.113.7" if op != "unblock_all" else None
        assert parse(encode(op, kind, key)) == Message(op, kind, key)
        assert parse(encode(op, kind, key, "a1b2")) == Message(op, kind, key, "a1b2")
        if not kind_required:
            assert parse(encode(op, None, key)) == Message(op, None, key)
    # odd text survives (escaped: the message is ASCII)
    odd = "d\u00e9vice\ud800\x00"
    assert parse(encode("unblock", "device", odd)) == Message("unblock", "device", odd)
    assert encode("unblock", "device", odd).isascii()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b'"unblock"',
        b"{}",
        b'{"v":2,"op":"unblock","kind":"login","key":"k"}',  # a later version
        b'{"v":1,"op":"config","table":"dos"}',  # not the shape of the config op
        b'{"v":1,"op":"config","kind":null}',  # config carries its version
        b'{"v":1,"op":"config","kind":null,"version":0}',
        b'{"v":1,"op":"config","kind":null,"version":"7"}',
        b'{"v":1,"op":"config","kind":"dos","version":7}',
        b'{"v":1,"op":"config","kind":null,"key":"k","version":7}',
        b'{"v":1,"op":"unblock","kind":"login","key":"k","version":7}',
        b'{"v":true,"op":"unblock","kind":"login","key":"k"}',
        b'{"v":1.0,"op":"unblock","kind":"login","key":"k"}',
        b'{"v":1,"op":"block","kind":null,"key":"k"}',  # block names its kind
        b'{"v":1,"op":"unblock","kind":"login"}',  # unblock names its key
        b'{"v":1,"op":"unblock","kind":"login","key":""}',
        b'{"v":1,"op":"unblock","kind":"login","key":7}',
        b'{"v":1,"op":"unblock","kind":["login"],"key":"k"}',
        b'{"v":1,"op":"unblock_all","kind":null,"key":"k"}',
        b'{"v":1,"op":"unblock","kind":"login","key":"k","from":5}',
        b'{"v":1,"op":"unblock","kind":"login","key":NaN}',
        b'{"v":1,"op":"unblock","kind":"login","key":"' + b"k" * 5000 + b'"}',
        b"\xff\xfe{",
        b"[" * 100_000,
        ("[" * 2000 + "]" * 2000).encode(),
    ],
)
def test_bad_messages_are_ignored(data: bytes) -> None:
    assert parse(data) is None
    assert parse(data.decode("latin-1")) is None


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.text(max_size=300),
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers(-(2**64), 2**64)
            | st.floats()
            | st.text(max_size=20),
            lambda inner: (
                st.lists(inner, max_size=4)
                | st.dictionaries(
                    st.sampled_from(["v", "op", "kind", "key", "from", "x"]) | st.text(max_size=5),
                    inner,
                    max_size=6,
                )
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {
                "v": st.sampled_from([1, 1, 2, 0, "1", True, None]),
                "op": st.sampled_from([*OPS, "config", "", "BLOCK"]),
            },
            optional={
                "kind": st.none() | st.text(max_size=8) | st.integers(-(2**64), 2**64),
                "key": st.none() | st.text(max_size=8) | st.integers(-(2**64), 2**64),
                "from": st.none() | st.text(max_size=8),
            },
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_parse_never_raises_and_yields_only_valid_messages(data: Any) -> None:
    found = parse(data)
    if found is None:
        return
    assert found.op in OPS
    kind_required, key_required = OPS[found.op]
    for value, required in ((found.kind, kind_required), (found.key, key_required)):
        assert (value is None and not required) or (isinstance(value, str) and value)
    assert len(data) <= MAX_MESSAGE


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(
                lambda op, kind, key: encode(op, kind, None if op == "unblock_all" else key),
                st.sampled_from(list(OPS)),
                st.sampled_from(["device", "login", "dos"]),
                st.sampled_from(["k0", "k1", "k2", "k3"]),
            ),
            st.binary(max_size=40),
        ),
        max_size=12,
    )
)
def test_messages_only_ever_make_a_store_forget(messages: list[bytes]) -> None:
    """Whatever is published, a store's caches only shrink, and no entry is
    trusted longer than before."""
    store = RedisStore("redis://127.0.0.1:1/0", clock=FakeClock(T0))  # never connects
    store._live = True
    for i in range(4):
        store._remember(Block("device", f"k{i}", "rate", T0, T0 + 600.0), T0)
        store._refusals[("dos", f"k{i}")] = (5, 1.0, time.monotonic() + 60.0, 0.0)
    before_cache, before_refusals = dict(store._cache), dict(store._refusals)
    for data in messages:
        found = parse(data)
        if found is not None:
            store._channel_heard(found)
    assert store._cache.items() <= before_cache.items()
    assert store._refusals.items() <= before_refusals.items()


# ------------------------------------------------------- two processes
HOLDER = """
import json, sys, time
from mailguard import RedisStore
from mailguard.core import BLOCKED
store = RedisStore(sys.argv[1], prefix=sys.argv[2])
assert store.hit("device", "phone", 1, 60.0, jail=600.0)[0] == BLOCKED  # cached from here on
deadline = time.monotonic() + 5
while not store._live:
    assert time.monotonic() < deadline, "never subscribed"
    time.sleep(0.005)
print("ready", flush=True)
refused = 0
deadline = time.monotonic() + 10
while store.hit("device", "phone", 1, 60.0, jail=600.0)[0] == BLOCKED:
    refused += 1
    if refused == 1 or refused % 50 == 0:
        print("refusing", refused, flush=True)
    assert time.monotonic() < deadline, "never let in"
    time.sleep(0.001)
print(json.dumps({"let_in": time.time(), "refused": refused}), flush=True)
store.close()
"""

LIFTER = """
import json, sys, time
from mailguard import RedisStore
store = RedisStore(sys.argv[1], prefix=sys.argv[2])
store.now()  # connected before the clock starts
began = time.time()
lifted = store.unblock("phone", "device")
print(json.dumps({"began": began, "ended": time.time(), "lifted": lifted}), flush=True)
store.close()
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.mark.servers
def test_a_lift_in_one_process_lets_the_client_in_at_another_within_100_ms(
    server: RedisServer, client: redis.Redis, prefix: str
) -> None:
    admin = RedisStore(server.url, prefix=prefix)
    admin.block("device", "phone", 600, "rate")
    admin.close()
    holder = _python(HOLDER, server.url, prefix)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready", holder.stderr
        holder.stdout.readline()  # refusing 1
        client.config_resetstat()
        line = holder.stdout.readline().split()  # refusing 50: with no round trip
        assert line[0] == "refusing" and int(line[1]) == 50
        assert evalsha_calls(client) == 0  # 49 refusals, all from the cache
        lifter = _python(LIFTER, server.url, prefix)
        out, err = lifter.communicate(timeout=20)
        assert lifter.returncode == 0, err
        lift = json.loads(out)
        assert lift["lifted"] == 1
        rest, err = holder.communicate(timeout=20)
        assert holder.returncode == 0, err
        seen = json.loads(rest.strip().splitlines()[-1])
        latency = seen["let_in"] - lift["began"]
        print(f"lift seen by the other process {latency * 1000:.1f} ms after it began")
        assert 0 < latency < 0.1  # block_cache_ttl (2 s) would be 20 times more
        assert seen["refused"] >= 50
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------- the subscription
@pytest.mark.servers
def test_a_killed_subscription_falls_back_and_comes_back(
    server: RedisServer, client: redis.Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisStore(server.url, prefix=prefix, block_cache_ttl=0.5)
    other = RedisStore(server.url, prefix=prefix)
    caplog.set_level(logging.INFO, logger="mailguard.store")
    store.block("device", "phone", 600, "rate")
    wait_for(lambda: store._live)
    store._lifted_all = -1e9  # (past the race window after joining)
    assert store.get_block("device", "phone") is not None
    store._cache.clear()
    assert store.get_block("device", "phone") is not None  # remembered while live
    trusted = store._cache[("device", "phone")][1] - time.monotonic()
    assert trusted > 20  # trusted until a message says otherwise (at most 30 s)

    killed = client.client_kill_filter(_type="pubsub")
    assert killed >= 1
    wait_for(lambda: any("channel lost" in r.getMessage() for r in caplog.records))
    # fallen back: the cached block is trusted block_cache_ttl at most
    entry = store._cache[("device", "phone")]
    assert entry[1] - time.monotonic() <= 0.5
    # subscribed again (backoff from 50 ms); the line follows the flag, from the thread
    wait_for(lambda: any("channel back" in r.getMessage() for r in caplog.records))
    assert store._live
    lost = [r for r in caplog.records if "channel lost" in r.getMessage()]
    back = [r for r in caplog.records if "channel back" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelname == "WARNING"
    assert len(back) == 1 and back[0].levelname == "INFO"

    # and lifts are heard at once again
    store._lifted_all = -1e9
    store._cache.clear()
    assert store.hit("device", "phone", 1, 60.0, jail=600.0)[0] == BLOCKED
    began = time.monotonic()
    assert other.unblock("phone", "device") == 1
    wait_for(lambda: ("device", "phone") not in store._cache, 0.1)
    assert time.monotonic() - began < 0.1
    assert store.hit("device", "phone", 1, 60.0, jail=600.0)[0] == OK
    store.close()
    other.close()


@pytest.mark.servers
def test_forged_messages_only_cost_a_round_trip(
    server: RedisServer, client: redis.Redis, prefix: str
) -> None:
    store = RedisStore(server.url, prefix=prefix)
    store.block("device", "phone", 600, "rate")
    wait_for(lambda: store._live)
    channel = store.channel_name
    for junk in (b"\xff", b"{", b'{"v":1,"op":"config"}', b"[" * 50_000, b"x" * 100_000):
        client.publish(channel, junk)
    client.publish(channel, encode("unblock", "device", "phone"))  # a lie: nothing was lifted
    wait_for(lambda: ("device", "phone") not in store._cache)
    assert store._live  # still subscribed: nothing crashed the thread
    client.config_resetstat()
    assert store.hit("device", "phone", 1, 60.0, jail=600.0)[0] == BLOCKED  # Redis says so
    assert evalsha_calls(client) == 1
    store.close()


@pytest.mark.servers
def test_close_stops_the_thread_and_a_fork_starts_its_own(server: RedisServer, prefix: str) -> None:
    store = RedisStore(server.url, prefix=prefix)
    store.now()
    wait_for(lambda: store._live)
    channel = store._channel
    assert channel is not None and channel.running
    if hasattr(os, "fork"):
        context = multiprocessing.get_context("fork")
        child = context.Process(target=_child_subscribes, args=(store,))
        child.start()
        child.join(15)
        assert child.exitcode == 0
    store.close()
    assert store._channel is None and not channel.running
    assert not store._live
    names = [t.name for t in threading.enumerate()]
    assert f"mailguard-channel {store.channel_name}" not in names


def _child_subscribes(store: RedisStore) -> None:
    assert store._channel is None and not store._live  # the parent's is not here
    store.now()  # first use: a channel of its own
    deadline = time.monotonic() + 5
    while not store._live:
        if time.monotonic() > deadline:
            os._exit(1)
        time.sleep(0.01)
    store.close()
    os._exit(0)


@pytest.mark.servers
def test_connections_per_process(server: RedisServer, client: redis.Redis, prefix: str) -> None:
    """A store used from sync code and one event loop: 1 + 1 connections for
    the decisions (sequential use), 2 for the channel (subscription and its
    maintenance commands)."""

    def connected() -> int:
        return int(client.info("clients")["connected_clients"])

    base = connected()
    store = RedisStore(server.url, prefix=prefix)
    store.hit("dos", "k", 5, 1.0)
    wait_for(lambda: store._live)
    wait_for(lambda: store._checked)
    time.sleep(0.05)
    assert connected() - base == 3  # decisions (sync), subscription, maintenance

    async def main() -> None:
        for _ in range(10):
            await store.ahit("dos", "k", 5, 1.0)
        assert connected() - base == 4  # + one asyncio connection for this loop
        await store.aclose()

    asyncio.run(main())
    wait_for(lambda: connected() == base)


@pytest.mark.servers
def test_async_lifts_and_manual_blocks_are_heard(server: RedisServer, prefix: str) -> None:
    listener = RedisStore(server.url, prefix=prefix)
    listener.block("login", "a", 600, "manual")
    listener.block("login", "b", 600, "manual")
    wait_for(lambda: listener._live)
    assert {k for k in listener._cache} == {("login", "a"), ("login", "b")}

    async def admin() -> None:
        other = RedisStore(server.url, prefix=prefix)
        assert await other.aunblock("a", "login") == 1
        await other.ablock("login", "b", 5, "shorter")  # replaces a block cached elsewhere
        await other.aclose()

    asyncio.run(admin())
    wait_for(lambda: not listener._cache, 0.5)
    assert listener.get_block("login", "a") is None
    found = listener.get_block("login", "b")
    assert found is not None and found.reason == "shorter"
    listener.block("dos", "c", 600, "manual")
    asyncio.run(_aunblock_all(server.url, prefix))
    wait_for(lambda: ("dos", "c") not in listener._cache, 0.5)
    listener.close()


async def _aunblock_all(url: str, prefix: str) -> None:
    other = RedisStore(url, prefix=prefix)
    assert await other.aunblock_all() == 2
    await other.aclose()
