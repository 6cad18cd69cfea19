"""Kill the master mid-flood, on Sentinel and on a 3+3 Cluster (issue #15).

While a bounded flood of decisions runs (in two threads: the store's sync
face plus a Flask stack, and its asyncio face plus a Starlette stack, each
stack with DosFilter and InvalidLoginFilter on a RedisStore in the default
"open" mode), the master holding some of the keys is SIGKILLed.  Then:

* nothing but :class:`~mailguard.StoreError` is ever raised, and no stack
  answers 5xx except the 503 of a block;
* within 5 s of the promotion (a replica seen as master: ``ROLE`` in a
  cluster, ``SENTINEL get-master-addr-by-name`` with Sentinel) decisions on
  the dead master's keys are served by Redis again;
* blocks made before the kill (and replicated: ``WAIT 1 1000`` after them,
  as an admin relying on replication would) are refused again, by the
  stacks and by a fresh store;
* with ``cluster-require-full-coverage no``, the keys of the masters that
  stay up are served throughout (the store's breaker is per node);
* the old master restarted rejoins as a replica, and decisions keep being
  served for seconds after that: nobody is stuck on ``MOVED`` or on a
  connection to a replica;
* ``blocks``, ``unblock`` and ``unblock_all`` list and lift the blocks on the
  new set of masters.

Each test starts its own topology (a failover changes it) and prints what
it measured (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis_topologies import Cluster, Decision, Flood, Node, Sentinels, scan_keys, wait_for
from stacks import AsgiStack, WsgiStack

from mailguard import RedisStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.stores.base import StoreError

pytestmark = pytest.mark.servers

RECOVERY = 5.0  # seconds from the promotion to the first decision served again
BLOCK = 600.0
CACHE_TTL = 2.0  # RedisStore's default block_cache_ttl
# The flood's stores wait up to 1 s for a reply, not the default 0.25 s: on a
# 2-core CI machine running six redis-servers and four flood lanes, one async
# batch once took longer than 0.25 s on all three masters at once, 3.7 s after
# the rejoin (redis-py 8.1; not reproduced here in 4 runs).  What this test
# proves does not hang on that timeout: a killed master's connections are
# reset and its port refuses at once, so a timeout is never how a death is
# seen; RedisStore's timeouts have tests of their own (test_redis_store.py).
REPLY_TIMEOUT = 1.0
LOGIN_NS = "login"  # InvalidLoginFilter's namespace (checked below)
FLOOD_NS = "flood"
_prefixes = itertools.count()


@dataclass
class Scene:
    """A topology seen the same way for both kinds: where keys live, who dies."""

    kind: str
    url: str
    place: Callable[[Callable[[str], str], int, Iterable[str]], dict[int, list[str]]]
    masters: Callable[[], list[Node]]
    wait_written: Callable[[Node], int]
    victim: Node
    successor: Node
    kill: Callable[[], float]
    wait_promotion: Callable[[], float]
    restart: Callable[[], float]
    others_answer: bool = False  # the masters that are up answer throughout


def cluster_scene(cluster: Cluster, kind: str) -> Scene:
    victim = cluster.masters()[0]
    successor = cluster.replica_of(victim)
    return Scene(
        kind=kind,
        url=cluster.url,
        place=cluster.keys_on_masters,
        masters=cluster.masters,
        wait_written=cluster.wait_written,
        victim=victim,
        successor=successor,
        kill=lambda: cluster.kill(victim),
        wait_promotion=lambda: cluster.wait_promotion(successor),
        restart=lambda: cluster.restart(victim),
        others_answer=kind == "cluster-partial-coverage",
    )


def sentinel_scene(sentinels: Sentinels) -> Scene:
    victim = sentinels.current_master()
    successor = sentinels.other(victim)

    def place(
        name: Callable[[str], str], per_master: int, candidates: Iterable[str]
    ) -> dict[int, list[str]]:
        # one master holds everything; as many keys as a 3-master cluster gets
        return {victim.port: list(itertools.islice(candidates, 3 * per_master))}

    return Scene(
        kind="sentinel",
        url=sentinels.url,
        place=place,
        masters=lambda: [sentinels.current_master()],
        wait_written=sentinels.wait_written,
        victim=victim,
        successor=successor,
        kill=lambda: sentinels.kill(victim),
        wait_promotion=lambda: sentinels.wait_promotion(victim),
        restart=lambda: sentinels.restart(victim),
    )


_OLD_REDIS_PY = tuple(int(p) for p in redis.__version__.split(".")[:2]) < (6, 0)


_KNOWN_OLD = pytest.mark.xfail(
    _OLD_REDIS_PY,
    reason="KNOWN, redis-py 5.0.1 only, in some runs: 0.2-0.5 s after the old master "
    "rejoins, the asyncio batches to every master time out at once (then each master's "
    "breaker fails its keys for a cooldown: 300-1,800 decisions in open mode); "
    "suspected: the event loop starved by a sync thread (cause not proven)",
    strict=False,
)


@pytest.fixture(
    params=[
        "sentinel",
        pytest.param("cluster", marks=_KNOWN_OLD),
        pytest.param("cluster-partial-coverage", marks=_KNOWN_OLD),
    ]
)
def scene(request: pytest.FixtureRequest) -> Iterator[Scene]:
    """Sentinel; a cluster as configured by default; one that keeps serving the
    slots of the masters that are up (``cluster-require-full-coverage no``)."""
    if request.param.startswith("cluster"):
        partial = request.param == "cluster-partial-coverage"
        with Cluster.for_tests(full_coverage=not partial) as cluster:
            yield cluster_scene(cluster, request.param)
    else:
        with Sentinels.for_tests() as sentinels:
            yield sentinel_scene(sentinels)


def redis_key(prefix: str, ns: str, key: str, suffix: str) -> str:
    """The documented key layout (``mailguard/stores/redis.py``, "Keys")."""
    return f"{prefix}{{{ns}:{key}}}:{suffix}"


def addresses(first: int) -> Iterator[str]:
    return (f"203.0.{i // 250}.{i % 250 + 1}" for i in itertools.count(first))


def wrap(middleware: Any, store: RedisStore) -> Callable[[Any], Any]:
    """DosFilter over InvalidLoginFilter, both on ``store``, "open" on outages."""

    def wrapped(app: Any) -> Any:
        login = middleware.InvalidLoginFilter(app, store=store, on_store_error="open")
        assert login.policy.namespace == LOGIN_NS
        return middleware.DosFilter(
            login, store=store, max_requests_per_sec=100_000, on_store_error="open"
        )

    return wrapped


def first_ok(decisions: list[Decision], lane: str, keys: set[str], since: float) -> float | None:
    """When ``lane`` was first served for one of ``keys`` at or after ``since``."""
    for d in decisions:
        if d.lane == lane and d.key in keys and d.at >= since and d.outcome == "ok":
            return d.at
    return None


def test_decisions_resume_after_the_master_is_killed_mid_flood(scene: Scene) -> None:
    prefix = f"fo{next(_prefixes)}:"
    blocked = scene.place(lambda a: redis_key(prefix, LOGIN_NS, a, "b"), 2, addresses(0))
    flood_keys = scene.place(lambda k: redis_key(prefix, FLOOD_NS, k, "w"), 2, addresses(5000))
    clients = scene.place(lambda a: redis_key(prefix, LOGIN_NS, a, "b"), 1, addresses(10_000))
    victim_keys = set(flood_keys[scene.victim.port])
    every_key = [k for keys in flood_keys.values() for k in keys]
    blocked_set = {a for group in blocked.values() for a in group}
    visitors = [*blocked_set, *(a for group in clients.values() for a in group)]

    # blocks made before the kill, replicated before it
    admin = RedisStore(scene.url, prefix=prefix)
    made = {a: admin.block(LOGIN_NS, a, BLOCK, "failures") for a in sorted(blocked_set)}
    admin.close()
    for master in scene.masters():
        assert scene.wait_written(master) == 1

    direct = RedisStore(scene.url, prefix=prefix, socket_timeout=REPLY_TIMEOUT)
    adirect = RedisStore(scene.url, prefix=prefix, socket_timeout=REPLY_TIMEOUT)
    wsgi_store = RedisStore(scene.url, prefix=prefix, socket_timeout=REPLY_TIMEOUT)
    asgi_store = RedisStore(scene.url, prefix=prefix, socket_timeout=REPLY_TIMEOUT)
    flask = WsgiStack(wrap(mg_wsgi, wsgi_store))
    starlette = AsgiStack(wrap(mg_asgi, asgi_store))
    loop = asyncio.new_event_loop()

    def sync_step(i: int) -> list[Decision]:
        key = every_key[i % len(every_key)]
        detail = ""
        try:
            direct.hit(FLOOD_NS, key, 1_000_000, 1.0)
            outcome = "ok"
        except StoreError as exc:
            outcome, detail = "StoreError", str(exc)[:200]
        except Exception as exc:
            outcome = repr(exc)
        first = Decision(time.monotonic(), "sync", key, outcome, detail)
        client = visitors[i % len(visitors)]
        try:
            status = str(flask.request("/login", client=client, method="POST")[0])
        except Exception as exc:
            status = repr(exc)
        return [first, Decision(time.monotonic(), "wsgi", client, status)]

    async def async_round(i: int) -> list[Decision]:
        answers = await asyncio.gather(
            *(adirect.ahit(FLOOD_NS, key, 1_000_000, 1.0) for key in every_key),
            return_exceptions=True,
        )
        now = time.monotonic()
        found = []
        for key, answer in zip(every_key, answers, strict=True):
            outcome = (
                "ok"
                if not isinstance(answer, BaseException)
                else "StoreError"
                if isinstance(answer, StoreError)
                else repr(answer)
            )
            detail = str(answer)[:200] if isinstance(answer, BaseException) else ""
            found.append(Decision(now, "async", key, outcome, detail))
        client = visitors[i % len(visitors)]
        try:
            status = str((await starlette.arequest("/login", client=client, method="POST"))[0])
        except Exception as exc:
            status = repr(exc)
        found.append(Decision(time.monotonic(), "asgi", client, status))
        return found

    def async_step(i: int) -> list[Decision]:
        return loop.run_until_complete(async_round(i))

    flood = Flood({"sync": sync_step, "async": async_step}, pause=0.002, max_seconds=50.0)
    flood.start()
    try:
        wait_for(
            "the flood under way",
            lambda: all(flood.seen(lane, 0.0, every_key) for lane in ("sync", "async")),
            10.0,
            0.05,
        )
        time.sleep(0.5)
        killed = scene.kill()
        promoted = scene.wait_promotion()
        # until both faces are served again (the bound is asserted below, with figures)
        for lane in ("sync", "async"):
            wait_for(
                f"{lane} decisions served again",
                functools.partial(flood.seen, lane, promoted, list(victim_keys)),
                RECOVERY + 10.0,
                0.05,
            )
        time.sleep(CACHE_TTL + 0.5)  # cached blocks are asked for again
        rejoined = scene.restart()
        # seconds of decisions after the rejoin, and after the recovery bound
        time.sleep(max(3.0, promoted + RECOVERY + 2.0 - time.monotonic()))
        stopped = time.monotonic()
    finally:
        decisions = flood.stop()
        loop.run_until_complete(adirect.aclose())
        loop.run_until_complete(asgi_store.aclose())
        loop.close()
        for store in (direct, wsgi_store):
            store.close()

    figures: dict[str, Any] = {
        "kind": scene.kind,
        "promotion_after_kill_s": round(promoted - killed, 2),
        "rejoined_after_kill_s": round(rejoined - killed, 2),
        "decisions": len(decisions),
    }
    try:
        # 1. nothing but StoreError, no status other than the app's 200 and a block's 503
        odd = [d for d in decisions if d.outcome not in ("ok", "StoreError", "200", "503")]
        assert odd == [], odd[:5]
        assert not [d for d in decisions if d.outcome == "503" and d.key not in blocked_set]

        # 2. before the kill: every decision served, every block refused
        def expected(d: Decision) -> str:
            return "503" if d.key in blocked_set else "ok" if d.lane in ("sync", "async") else "200"

        before = [d for d in decisions if d.at < killed]
        assert {d.lane for d in before} == {"sync", "async", "wsgi", "asgi"}
        assert [d for d in before if d.outcome != expected(d)] == [], figures
        # 3. served again within RECOVERY seconds of the promotion, on both faces
        for lane in ("sync", "async"):
            back = first_ok(decisions, lane, victim_keys, promoted)
            assert back is not None
            figures[f"{lane}_served_after_promotion_s"] = round(back - promoted, 3)
            failed = [d for d in decisions if d.lane == lane and d.outcome == "StoreError"]
            figures[f"{lane}_store_errors"] = len(failed)
            figures[f"{lane}_store_errors_other_masters"] = sum(
                d.key not in victim_keys for d in failed
            )
            assert back - promoted <= RECOVERY, figures
            if scene.others_answer:  # one master down is no outage for the others' keys
                others = [d for d in failed if d.key not in victim_keys]
                assert others == [], (others[:3], figures)
        # blocked addresses let through while the store could not answer ("open" mode)
        let_through = [d for d in decisions if d.key in blocked_set and d.outcome == "200"]
        figures["blocked_guesses_let_through"] = len(let_through)
        for lane in ("wsgi", "asgi"):  # the last one, in seconds after the promotion
            last = max((d.at for d in let_through if d.lane == lane), default=promoted)
            figures[f"{lane}_last_let_through_after_promotion_s"] = round(last - promoted, 3)
        # 4. blocks made before the kill are refused again, by both stacks
        settled = promoted + RECOVERY
        for lane in ("wsgi", "asgi"):
            late = [
                d for d in decisions if d.lane == lane and d.key in blocked_set and d.at >= settled
            ]
            assert {d.key for d in late} == blocked_set, lane  # each asked after recovery
            assert {d.outcome for d in late} == {"503"}, [d for d in late if d.outcome != "503"][:5]
        # 5. after the old master rejoined as a replica: every decision served, for seconds
        after = [d for d in decisions if d.at >= rejoined]
        assert stopped - rejoined >= 2.0
        assert {d.lane for d in after} == {"sync", "async", "wsgi", "asgi"}
        bad = [
            (round(d.at - rejoined, 3), d.lane, d.key, d.key in victim_keys, d.outcome, d.detail)
            for d in after
            if d.outcome != expected(d)
        ]
        figures["decisions_after_rejoin"] = len(after)
        if bad:  # how many, from when to when (seconds after the rejoin), the first few
            figures["failed_after_rejoin"] = (len(bad), bad[0][0], bad[-1][0])
            figures["flood_after_rejoin_s"] = round(stopped - rejoined, 3)
        assert bad == [], (bad[:3], figures)  # (seconds after the rejoin, lane, key, ...)
    finally:
        print(f"\nfailover figures: {figures}")

    # 6. a fresh process sees every block, once, on the new masters
    fresh = RedisStore(scene.url, prefix=prefix, block_cache_ttl=0)
    try:
        for address, block in made.items():
            assert fresh.get_block(LOGIN_NS, address) == block
        listed = fresh.blocks(LOGIN_NS)
        assert sorted(b.key for b in listed) == sorted(made)  # each once: no replica twice
        # 7. ... and lifts them there: one per master by name, then the rest
        groups = list(blocked.values())
        for group in groups:
            assert fresh.unblock(group[0]) == 1
        assert fresh.unblock_all() == len(made) - len(groups)
        assert fresh.blocks() == []
        for master in scene.masters():
            assert scan_keys(master.port, f"{prefix}*:b") == set()
    finally:
        fresh.close()
