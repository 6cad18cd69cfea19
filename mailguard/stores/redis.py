"""RedisStore: counters and blocks shared by every process and host.

With a :class:`~mailguard.MemoryStore` each worker counts alone, so a limit
is multiplied by the number of workers and a block on one host means nothing
on the next.  A RedisStore keeps the same state in Redis (or Valkey: one
server, a Sentinel-managed master, or a Cluster) and gives the answers a
MemoryStore would give (the tests run random sequences of every primitive
against both on one FakeClock and compare them; a MemoryStore may differ
only when it has evicted a key for room, or when its clock stepped back past
the end of state it had already purged).  It needs the ``redis`` extra::

    store = RedisStore("redis://127.0.0.1:6379/0", prefix="mailguard:")
    store = RedisStore("redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster/0")
    store = RedisStore("redis+cluster://10.0.0.1:7000,10.0.0.2:7000")
    store = RedisStore(redis.Redis(...))        # or asyncio Redis, RedisCluster,
                                                # a Sentinel master_for() client
    store = RedisStore(client=sync_client, async_client=async_client)
    store = RedisStore(url, clock=FakeClock())  # tests: time from the clock

Connections
    All traffic goes through redis-py's own clients, which know Sentinel,
    Cluster (slot routing, ``MOVED`` / ``ASK``), TLS and unix sockets.  The
    URL grammar is :mod:`mailguard.stores.redis_urls` (``redis://``,
    ``rediss://``, ``unix://``, ``redis+sentinel://``, ``redis+cluster://``,
    the same spelled ``valkey``); a malformed URL is a ``ValueError`` at
    construction.  The WSGI path uses a synchronous client, the ASGI path
    an asyncio one.  From a URL both are made lazily, on first use (one
    asyncio client per event loop: an asyncio connection belongs to the loop
    that opened it), with short socket timeouts (``socket_timeout``, default
    0.25 s; an asyncio batch gets it as a whole, per node in a cluster) and no
    connection retries, so a dead node costs about one timeout (then the
    breaker, below, fails fast).  A cluster client keeps redis-py's
    redirection handling (``MOVED`` refreshes its slot map, ``ASK`` is
    followed) and works on partial slot coverage, so the masters that are up
    keep answering while one fails over.  A client passed in is used as it
    is (its timeouts, retries, TLS, credentials); a URL given too makes the
    client that was not.  Given only a synchronous client, the coroutines run
    its calls in a worker thread; given only an asyncio one, the synchronous
    methods raise ``RuntimeError``.  Clients made here are closed by
    :meth:`~RedisStore.close` (sync) and :meth:`~RedisStore.aclose` (this
    loop's and sync), e.g. at lifespan shutdown; clients passed in are left
    to their owner.  A forked child (``gunicorn --preload``) opens
    connections of its own (redis-py's pools notice the new process id and
    start afresh; the store forgets its asyncio clients and locks).

    A decision is one round trip: one ``EVALSHA`` of a Lua script kept beside
    this module (``lua/<name>.lua``, each prefixed with ``lua/lib.lua``),
    sent to the node that owns its keys.  When that node answers
    ``NOSCRIPT`` (a new, restarted or promoted server), the same call is sent
    once more as ``EVAL`` with the script's text, which runs it and leaves it
    in that node's script cache.  The asyncio path batches: the decisions
    that concurrent requests ask for in one turn of the event loop are sent
    together, in one round trip, in a task of its own (at most 4 batches in
    flight per loop; later requests wait for the next): written at once on
    a connection taken from the client's pool for that exchange, packed and
    read by redis-py, as its pipeline does (in a cluster, one such exchange
    per master, concurrently).  A caller cancelled before its batch is
    written is left out of it; one cancelled later only loses its answer;
    a connection is never reused with a reply half read.  Versions differ
    in what ``get_connection`` takes (a command name, required before 5.3,
    deprecated after): the pool's signature is read once.

    Supported redis-py: 5.0.1 to 8.x (``scripts/test.sh`` runs the Redis
    tests against the oldest and the newest).  Where they differ (cluster
    retry settings: ``cluster_error_retry_attempts`` before 6, ``retry``
    from 6; ``get_connection``), the one installed is followed.
    One piece below the public API is used, the same in all of them: an
    asyncio cluster batch, already grouped by master, is written with
    ``ClusterNode.execute_pipeline`` (what redis-py's cluster pipeline does
    per node) rather than routed a second time by the cluster pipeline,
    which cost a third more client CPU per decision.

Keys
    ``prefix + "{" + ns + ":" + key + "}:" + suffix``, e.g.
    ``mailguard:{dos:203.0.113.7}:w``.  Suffixes: ``w`` the sliding window
    (a list of the allowed requests' times, oldest first, never more than
    ``limit`` entries), ``b`` a block (a hash of ``kind``, ``key``,
    ``reason``, ``since``, ``until``; see "Blocks"), ``a`` a login streak and
    its attempts under way, ``o`` a key's recent offences (repeat offenders),
    ``s`` a :meth:`~RedisStore.swap` value.  Beside them, per prefix:
    ``prefix + "block-ends"``, the index of block ends, and the pub/sub
    channel ``prefix + "channel"``.  Times are stored as ``%.17g`` text,
    which reads back as the same double.  A namespace must not contain
    ``:``, ``{`` or ``}``, nor the prefix braces (``ValueError``).  Blocks
    are listed and lifted by ``SCAN`` over ``prefix{*}:b`` (never ``KEYS``).

Redis Cluster
    All keys of one ``(ns, key)`` share the hash tag ``{ns:key}``, so every
    script touches one slot (a jailing ``hit`` reads the window and writes
    the block; a ``settle`` touches the streak, the block and the offences)
    and redis-py's cluster client sends it to that slot's master.  Listing
    and lifting blocks (``blocks``, ``unblock``, ``unblock_all``) and
    :meth:`~RedisStore.count_keys` ``SCAN`` every master (never a replica,
    which holds the same keys), then read or lift each block on the node that
    owns it.  ``now()`` asks one master's ``TIME``; without ``clock=``, each
    script reads its own node's ``TIME``, so keep the nodes' clocks in sync
    (NTP) as you would for any replicated Redis.

    script), so hosts with skewed clocks agree.  With a clock (a
    :class:`~mailguard.FakeClock` in tests), its reading is passed to each
    script instead.  Either clock stepping back is clamped by the sliding
    window to the newest recorded request, as in :mod:`mailguard.core`.

TTLs
    Every counter expires when its state can no longer matter: a window
    ``window`` seconds after its newest request, a streak ``interval``
    seconds after its last failure or when its last attempt under way
    lapses, offences after ``memory``, a swap value after its ``ttl``; a
    streak with nothing left to remember is deleted at once.  Blocks are the
    one exception (below).
    Expiries are durations (``PEXPIRE``, ``SET PX``) in milliseconds, rounded
    up, plus 1 ms of grace on the server's clock.  Redis cannot follow an
    injected clock, so with ``clock=`` the durations run in real time and the
    grace is 1 s: a test clock that stands still never sees state vanish.

Blocks
    A block (or jail) hash has **no TTL**: its end is the ``until`` in its
    value, which every script reads.  So no ``volatile-*`` eviction policy
    can take a live block, however hard a flood of fresh addresses fills
    Redis: with ``maxmemory-policy volatile-ttl`` (the README's advice) a
    full Redis evicts counters, the shortest-lived first, and counting goes
    on.  An ``allkeys-*`` policy could evict blocks and ``noeviction`` stops
    every decision when Redis is full, so at its first connection the store
    reads ``CONFIG GET maxmemory*`` and logs a WARNING naming the risk (an
    INFO line when CONFIG is renamed or forbidden); a full Redis answering
    ``OOM`` is logged once per outage, at ERROR, as "Redis is full".

    Ended blocks are removed by a sweep.  Each block made through a store
    (a jail, a failures block, :meth:`~RedisStore.block`) is added, by the
    store's channel thread within 0.1 s, to the sorted set
    ``prefix + "block-ends"`` (member ``"until key"``, score ``until``; a
    separate ``ZADD``, as a script may touch only its own slot in a
    cluster).  Every ``_SWEEP_EVERY`` (10 to 12) seconds, each running store
    reads the entries that have ended (up to 10,000 per sweep, 500 per round
    trip) and deletes each hash that still holds that very end
    (``lua/sweep.lua``, by ``EVAL``), then the entries.  So an ended block
    stays at most about 12 s after its end while any mailguard process with
    a synchronous connection runs (more only when over 10,000 blocks end
    within 12 s: the next sweeps take the rest).  Besides, every script that
    reads a block (``hit`` with a jail, ``attempt``, ``get_block``) deletes
    it once it has ended, so a key that comes back finds no ended block.
    Not covered by the sweep: a block made by a process killed within 0.1 s
    of making it (never indexed), and a store given only an asyncio client
    (it starts no thread, so indexes nothing; give it a url or a sync client
    too).  Such a block stays, ended and harmless, until its key is read
    again or it is lifted: at most one hash (about 300 bytes) per key ever
    blocked that never came back.  Live blocks cost memory that nothing
    evicts: plan ``maxmemory`` for the most blocks you expect (about 400
    bytes each, with their index entry).

    In a Redis Cluster the blocks live on every master (each by its key's
    slot) and the index is one key on one master: ``ZADD`` goes there, the
    sweep's ``EVAL`` of each ended block to its own master (redis-py's
    cluster pipeline routes each command by its key).  While the index's
    master is unreachable, new ends wait in the process (at most 100,000)
    and sweeps are skipped.

Failures
    Every connection, timeout or server failure raises
    :class:`~mailguard.StoreError`, never a redis-py exception, for the
    filters' ``on_store_error``.  An error reply that does not mean an
    outage (someone else's key of the wrong type) raises StoreError too.  Any
    other exception (``AttributeError``, ``TypeError``...: a defect here, or
    a redis-py this code does not fit) raises
    :class:`~mailguard.stores.StoreBug`, a StoreError that the filters log at
    ERROR every time; it is never taken for an outage.  A circuit breaker
    keeps an outage from costing a timeout per request:
    after a failed call every call fails at once for ``breaker_cooldown``
    seconds (default 1), then one trial call goes through; its success
    closes the breaker, its failure opens it for another cooldown.  In a
    cluster each master has its own breaker, so one master failing leaves
    the others' keys answered.  ``health`` (the one "store down" / "store
    up" pair of log lines per outage, and ``mailguard_store_up``) counts a
    cluster as down while any master that failed has not answered again:
    the down line names it (``node=host:port``); a master replaced by its
    promoted replica stops counting once the slot map no longer has it.
    Recovery needs nothing: the trial goes through redis-py, which finds
    the new master (a Sentinel pool asks the sentinels when it connects; a
    connection to a demoted master is dropped on its first ``READONLY``) or
    the new slot map (a cluster client asks again after a failure; ``MOVED``
    updates it), and the scripts are loaded there on ``NOSCRIPT``.
    Measured on loopback (3 sentinels, or
    3 masters + 3 replicas; a master killed mid-flood): decisions served
    again 0.1-1.3 s after the promotion, sync and asyncio, on redis-py 5.0.1
    and 8.1; no exception but StoreError.  A call that timed out may still
    have run on the server; an asyncio batch that failed on a connection
    closed by the server is sent once more on a new one (the only retry).

Block cache
    Once this process has seen a live block (a refused ``hit`` with ``jail``
    or ``attempt``, a jail or block it made, a ``get_block``), it keeps it in
    a local cache of at most ``block_cache_size`` entries and refuses the
    key without a round trip until the block ends or the entry is
    ``block_cache_ttl`` seconds old (default 2), whichever comes first; then
    the next request asks Redis again.  While the invalidation channel is
    live (below), an entry is trusted for 30 s instead: a lift is heard.
    On the server's clock, a cached block's end is counted on this host's
    monotonic clock from Redis's answer, so local clock skew does not
    matter.  The cache serves ``hit`` with ``jail > 0``, ``attempt`` and
    ``get_block``; ``block_cache_ttl=0`` turns it off.  While Redis cannot
    answer (an outage, a failover), a cached block whose trust ran out is
    still enforced until it *ends*: the request asks Redis, and only when
    that fails is the block answered from the cache, so a blocked client
    cannot guess through a failover, and a lift made meanwhile is obeyed by
    the first answer Redis gives.  A block never seen by this process is
    not known here: for it the filter's ``on_store_error`` decides.

Invalidation channel
    :meth:`~RedisStore.unblock`, :meth:`~RedisStore.unblock_all` and
    :meth:`~RedisStore.block` publish what they changed on ``prefix +
    "channel"``; every store listens there from a daemon thread started at
    its first connection (:mod:`mailguard.stores.channel`: one subscription
    connection, one for its maintenance commands; a forked child starts its
    own; ``close()`` / ``aclose()`` stop it), and drops the cached blocks
    and refusals a message names.  So a block lifted or replaced elsewhere
    (``mailguard unblock`` on an admin host) is obeyed by every process
    within milliseconds (measured: about 5 ms between two processes), while a
    blocked client is refused from the cache with no round trip for 30 s at
    a time.  A lift made some other way (``redis-cli DEL``, a flush, an
    older mailguard) is seen within those 30 s.  If the subscription drops
    (a restart, ``CLIENT KILL``, no answer to a PING within 2 s), the cached
    entries fall back to ``block_cache_ttl`` at once, one WARNING line says
    so, and the thread subscribes again (backoff 50 ms to 2 s; one INFO line
    when it is back).  A block read while a lift of it may have been under
    way (within 10 s of one heard, or of subscribing) is trusted only
    ``block_cache_ttl``.  Messages are parsed defensively: whatever anyone
    publishes there can only make a store ask Redis again.  Automatic
    blocks (a jail, a failures block) are not announced: no cache can hold a
    block they make wrong (a cache holds only live blocks, which a jail or a
    failures block never shortens).  Without the channel (only an asyncio
    client given), lifts made elsewhere are obeyed within
    ``block_cache_ttl`` seconds, as the cache's only bound.

Refusal cache
    A ``hit`` without jail that Redis answers ``OVER`` says exactly when the
    key's next slot frees: when the request it names leaves the window.
    Until then the store refuses the same ``(ns, key, limit, window)``
    locally, without a round trip, with the wait left, so a flood from one
    client costs Redis one call per freed slot, not one per request.  This
    is exact, not a guess: a refusal records nothing, and other processes
    can only add requests to the window, never free a slot earlier (only
    time does; ``unblock`` leaves windows alone).  The end is counted on
    this host's monotonic clock from the moment the call was *sent*, so the
    cache never refuses after the slot has freed on the server's clock;
    with ``clock=`` it is kept in store time and the answer is the very one
    Redis would give (a clock stepped back asks Redis).  Outside this model,
    and so able to free a slot early: a ``hit`` with ``jail > 0`` on the same
    key, which empties the window (one made through this store drops the
    entry; mailguard's filters never mix the two in one namespace), and
    Redis losing the window (a restart without persistence, a flush, an
    eviction), noticed within ``window`` seconds.  The cache answers also
    while Redis is unreachable.  It holds ``refusal_cache_size`` keys
    (default 10,000; the oldest go first; 0 turns it off), one limit and
    window each (another limit or window asks Redis); ``unblock`` and
    ``unblock_all`` through this store drop the matching entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import math
import os
import random
import re
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from importlib import resources
from typing import Any, TypeAlias, TypeVar

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterError,
    ConnectionError,
    InvalidResponse,
    MovedError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)
from redis.retry import Retry

try:  # one command of redis-py's cluster pipeline (5.0.1 to 8.x): see _node_pipeline
    from redis.asyncio.cluster import PipelineCommand as _PipelineCommand
except ImportError:  # pragma: no cover - a redis-py without it
    _PipelineCommand = None  # type: ignore[assignment,misc]

from ..core import Block, Clock, wait_until
from ..options import Seconds, option_error
from .base import BLOCKED, JAILED, OK, OVER, Store, StoreBug, StoreError
from .channel import Channel, Message, encode
from .guard import StoreHealth
from .overlay import MAX_VERSION, Overlay, OverlayChange, OverlayConflict, OverlayCorrupt
from .overlay import decode as overlay_decode
from .overlay import encode as overlay_encode
from .redis_urls import RedisTarget, parse_url, redact

__all__ = ["RedisStore"]

SyncClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster
AsyncClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster
_T = TypeVar("_T")

_REDIS_PY = tuple(int(part) for part in redis.__version__.split(".")[:2] if part.isdigit())
_MAX_BATCH = 512  # decisions sent in one asyncio pipeline
_MAX_INFLIGHT = 4  # asyncio batches in flight per event loop
_SCAN_COUNT = 1000
_CHUNK = 500  # admin commands per round trip

# The channel, the index of block ends and the sweep (see "Blocks" above)
_CHANNEL_TRUST = 30.0  # seconds a cached block is trusted while the channel is live
_RACE = 10.0  # a block read this soon after a lift of it (or a join) is trusted briefly
_MAX_LIFTED = 4096  # lifts remembered for _RACE; more: every block is trusted briefly
_SWEEP_EVERY = 10.0  # seconds between two sweeps of ended blocks, per process
_JITTER = random.Random()  # the sweeps' jitter: its own generator, so the global one is left alone
_SWEEP_BATCH = 500  # ended blocks removed per round trip ...
_SWEEP_ROUNDS = 20  # ... and round trips per sweep, at most
_INDEX_BACKLOG = 100_000  # block ends waiting to be indexed (Redis down), at most
_log = logging.getLogger("mailguard.store")

# Failures that say "the store is not answering", which open the breaker.
# Other error replies (a bug, a foreign key of the wrong type) raise StoreError
# without opening it: the server itself is fine.
_OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    InvalidResponse,
    ReadOnlyError,
    OutOfMemoryError,
    ClusterError,
    TryAgainError,
    RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)
# Replies a cluster command is sent again for, alone, through the cluster client.
_REDIRECTS = (MovedError, AskError, TryAgainError, NoScriptError)
_OUTAGE_REPLIES = ("MISCONF", "BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN")


# --------------------------------------------------------------- scripts
def _lua(name: str) -> bytes:
    return resources.files(__package__ or "mailguard.stores").joinpath(f"lua/{name}").read_bytes()


_LIB = _lua("lib.lua")


class _Script:
    """One Lua file beside this module (after ``lib.lua``), called by its SHA1."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _LIB + b"\n" + _lua(f"{name}.lua")
        self.sha = hashlib.sha1(self.source).hexdigest()


_HIT = _Script("hit")
_PEEK = _Script("peek")
_ATTEMPT = _Script("attempt")
_SETTLE = _Script("settle")
_SWAP = _Script("swap")
_BLOCK = _Script("block")
_GET_BLOCK = _Script("get_block")
_UNBLOCK = _Script("unblock")
_OVERLAY = _Script("overlay")

# A command: a script and its ``numkeys, KEYS..., ARGV...`` (sent as EVALSHA,
# then EVAL on NOSCRIPT), or None and a plain command (``HMGET name ...``).
# Either way args[1] is the first key, which is what a cluster routes by.
_Command = tuple[_Script | None, tuple[Any, ...]]


def _wire(script: _Script | None, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return args if script is None else ("EVALSHA", script.sha, *args)


def _enc(text: str) -> bytes:
    """Text as Redis bytes; never fails on odd request text (lone surrogates)."""
    return text.encode("utf-8", "surrogatepass")


_SWEEP_SOURCE = _lua("sweep.lua")  # sent with EVAL by the channel thread (rare)


def _text(value: Any) -> str:
    """A reply as text: what ``_enc`` encoded reads back the same."""
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:  # not written by us
        return value.decode("utf-8", "replace")


def _glob(text: str) -> str:
    """``text`` with Redis glob characters escaped, for SCAN MATCH."""
    for special in "\\*?[]":
        text = text.replace(special, "\\" + special)
    return text


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGES):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith(_OUTAGE_REPLIES)


def _server_time(reply: Any) -> float:
    if isinstance(reply, dict):  # a cluster client answers per node
        reply = next(iter(reply.values()))
    sec, usec = reply
    return int(sec) + int(usec) / 1_000_000


def _scan_reply(reply: Any) -> tuple[int, list[Any]]:
    """``(cursor, names)`` from SCAN, whichever shape the client gives it."""
    cursor, found = reply
    if isinstance(cursor, dict):  # a cluster client: {node: cursor}
        cursor = next(iter(cursor.values()), 0)
    return int(cursor), list(found)


# --------------------------------------------------------------- breaker
class _Breaker:
    """Fail fast for ``cooldown`` seconds after an outage, then let one call try.

    ``open_until`` is 0.0 while closed, which is all a call checks.  Once it
    has passed, the first call to come is the trial and re-arms it, so the
    others keep failing fast until the trial answers (closing the breaker) or
    fails (opening it again); a trial that never answers (cancelled) just
    lets another one try a cooldown later.  ``outages`` counts openings.
    The trial goes through redis-py's client like any call, so it finds the
    new master (a Sentinel pool asks the sentinels on connect) or the new
    slot map (a cluster client refreshes it after a failure or ``MOVED``).
    """

    __slots__ = ("cooldown", "error", "health", "lock", "open_until", "outages", "part")

    def __init__(self, cooldown: float, health: StoreHealth | None = None, part: str = "") -> None:
        self.cooldown = cooldown
        self.part = part  # what the health lines name: a cluster master, or "" for all
        self.open_until = 0.0
        self.outages = 0
        self.error = ""
        self.lock = threading.Lock()
        # told when the breaker opens from closed (a real call failed) and when
        # it closes (a real call answered): an answer from a cache is neither
        self.health = health

    def admit(self) -> None:
        """Called when ``open_until`` is set: raise, or let this call be the trial."""
        with self.lock:
            if not self.open_until:
                return
            now = time.monotonic()
            if now < self.open_until:
                raise StoreError(f"redis unavailable (circuit open): {self.error}")
            self.open_until = now + self.cooldown

    def closed(self) -> None:
        with self.lock:
            self.open_until = 0.0
        if self.health is not None:
            self.health.answered(self.part)

    def opened(self, exc: BaseException, report: bool = True) -> None:
        with self.lock:
            self.open_until = time.monotonic() + self.cooldown
            self.outages += 1
            self.error = f"{type(exc).__name__}: {exc}"
        if self.health is not None and report:
            self.health.failed(self.error, self.part)


# --------------------------------------------------------------- clients
_SENTINEL: Any = redis.sentinel.Sentinel  # untyped in redis-py
_ASYNC_SENTINEL: Any = redis.asyncio.sentinel.Sentinel
_CLUSTER_NODE: Any = redis.cluster.ClusterNode


def _connection_options(target: RedisTarget) -> dict[str, Any]:
    """Credentials and TLS for the data nodes, as redis-py keywords."""
    options: dict[str, Any] = {}
    if target.username is not None:
        options["username"] = target.username
    if target.password is not None:
        options["password"] = target.password
    if target.tls:
        options["ssl"] = True
        options.update(target.tls_options)
    return options


def _sync_client(target: RedisTarget, timeout: float, connect: float) -> SyncClient:
    """A redis-py client for the synchronous path: short timeouts, no retries."""
    options = _connection_options(target)
    common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect}
    if target.topology == "cluster":
        cluster = redis.cluster
        if _REDIS_PY < (6, 0):  # cluster retries: their own knob before 6, `retry` after
            options["cluster_error_retry_attempts"] = 0
        return cluster.RedisCluster(
            startup_nodes=[_CLUSTER_NODE(host, port) for host, port in target.hosts],
            require_full_coverage=False,
            retry=Retry(NoBackoff(), 0),
            **common,
            **options,
        )
    if target.topology == "sentinel":
        assert target.service is not None
        sentinel: Any = _SENTINEL(
            list(target.hosts),
            sentinel_kwargs=_sentinel_options(target, timeout, connect, Retry(NoBackoff(), 0)),
            retry=Retry(NoBackoff(), 0),
            db=target.db,
            **common,
            **options,
        )
        master: redis.Redis = sentinel.master_for(target.service, redis_class=redis.Redis)
        return master
    if target.topology == "unix":
        options["unix_socket_path"] = target.path
    else:
        options["host"], options["port"] = target.hosts[0]
    return redis.Redis(db=target.db, retry=Retry(NoBackoff(), 0), **common, **options)


def _async_client(target: RedisTarget, connect: float) -> AsyncClient:
    """A redis-py asyncio client (no socket timeout: a batch is timed as a whole)."""
    options = _connection_options(target)
    common: dict[str, Any] = {"socket_timeout": None, "socket_connect_timeout": connect}
    if target.topology == "cluster":
        cluster = redis.asyncio.cluster
        if _REDIS_PY < (6, 0):
            # 5.x pipelines make `cluster_error_retry_attempts` attempts (not 1 +),
            # so 1 here is one attempt; no connection retries either
            options["cluster_error_retry_attempts"] = 1
            options["connection_error_retry_attempts"] = 0
        return cluster.RedisCluster(
            startup_nodes=[cluster.ClusterNode(host, port) for host, port in target.hosts],
            require_full_coverage=False,
            retry=AsyncRetry(NoBackoff(), 0),
            **common,
            **options,
        )
    if target.topology == "sentinel":
        assert target.service is not None
        sentinel: Any = _ASYNC_SENTINEL(
            list(target.hosts),
            sentinel_kwargs=_sentinel_options(target, connect, connect, AsyncRetry(NoBackoff(), 0)),
            retry=AsyncRetry(NoBackoff(), 0),
            db=target.db,
            **common,
            **options,
        )
        master: redis.asyncio.Redis = sentinel.master_for(
            target.service, redis_class=redis.asyncio.Redis
        )
        return master
    if target.topology == "unix":
        options["unix_socket_path"] = target.path
    else:
        options["host"], options["port"] = target.hosts[0]
    return redis.asyncio.Redis(db=target.db, retry=AsyncRetry(NoBackoff(), 0), **common, **options)


def _sentinel_options(
    target: RedisTarget, timeout: float, connect: float, retry: Any
) -> dict[str, Any]:
    """How the sentinels themselves are asked: their own credentials, the same TLS,
    short timeouts and no retries.  redis-py makes each sentinel's client from
    these alone (redis ``sentinel.py``, ``Sentinel.__init__``); without a
    ``retry`` it would get ``Redis.__init__``'s default (from 6.0: 3 retries
    with backoff, seconds per dead sentinel)."""
    options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect,
        "retry": retry,
    }
    if target.sentinel_username is not None:
        options["username"] = target.sentinel_username
    if target.sentinel_password is not None:
        options["password"] = target.sentinel_password
    if target.tls:
        options["ssl"] = True
        options.update(target.tls_options)
    return options


def _is_cluster(client: Any) -> bool:
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))


# ---------------------------------------------------------------- asyncio
_Waiting = tuple[_Command, "asyncio.Future[Any]"]


_TAKE_ARGS: dict[type, tuple[str, ...]] = {}


def _take_args(pool: Any) -> tuple[str, ...]:
    """What ``pool.get_connection`` needs: a command name before redis-py 5.3, nothing after.

    From 5.3 any argument is deprecated (a warning per call); before, the
    command name is required (a plain pool never uses it).  Read once per
    pool class.
    """
    kind = type(pool)
    found = _TAKE_ARGS.get(kind)
    if found is None:
        try:
            param = inspect.signature(pool.get_connection).parameters.get("command_name")
        except (TypeError, ValueError):  # no signature to read: assume the current API
            param = None
        required = param is not None and param.default is inspect.Parameter.empty
        found = _TAKE_ARGS[kind] = ("EVALSHA",) if required else ()
    return found


def _pack(args: tuple[Any, ...]) -> bytes:
    """One command as RESP bytes, exactly as redis-py packs it (its
    ``Encoder.encode``: bytes as they are, str as UTF-8, int and float as
    ``repr``; anything else refused) for our own script calls: about 2.5 µs
    less client CPU per decision than redis-py's packer.  Pinned to
    redis-py's output by a property test (``tests/test_redis_pack.py``)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis: {arg!r}")
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def _pack_all(commands: Sequence[_Command]) -> bytes:
    return b"".join([_pack(_wire(script, args)) for script, args in commands])


async def _exchange(client: Any, commands: Sequence[_Command]) -> list[Any]:
    """``commands`` written at once on one of the client's connections; their replies.

    A failed command's reply is its error.  This is what redis-py's
    pipeline does (``Pipeline._execute_pipeline``: its pool, its
    connection's reader; the bytes packed by :func:`_pack`), without the
    pipeline's bookkeeping, which cost a sixth of the client CPU per
    decision.  The connection comes from the
    client's pool for this one exchange (a Sentinel pool's connection asks
    the sentinels for the master when it connects) and goes back after every
    reply is read; one that fails, or whose exchange is cancelled, is
    disconnected first, so it is never reused with a reply half read.

    A connection the server had closed while it sat idle in the pool (its
    ``timeout``, a restart) fails as ConnectionError: the batch is sent once
    more, on a new connection (asyncio notices a closed socket only when it
    reads it).  Other connection failures and timeouts raise.
    """
    pool = client.connection_pool
    take = _take_args(pool)
    packed = None
    for again in (False, True):
        conn = await pool.get_connection(*take)
        try:
            if packed is None:  # (the bytes only: the connection, pool and reader are redis-py's)
                packed = _pack_all(commands)
            await conn.send_packed_command(packed)
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(await conn.read_response())
                except ResponseError as exc:  # this command's error; the others' replies follow
                    replies.append(exc)
        except ConnectionError:
            await conn.disconnect()
            if again:
                raise
            continue
        except BaseException:  # cancelled (a batch timed out) or a defect
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
        return replies
    raise AssertionError("unreachable")  # pragma: no cover


async def _pipeline(client: Any, commands: Sequence[_Command]) -> list[Any]:
    """``commands`` in one round trip (see :func:`_exchange`); a NOSCRIPT is
    sent again as EVAL in a second one, which loads the script there."""
    replies = await _exchange(client, commands)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        loads: list[_Command] = []
        for i in missing:
            script, args = commands[i]
            assert script is not None
            loads.append((None, ("EVAL", script.source, *args)))
        for i, reply in zip(missing, await _exchange(client, loads), strict=True):
            replies[i] = reply
    return replies


async def _node_pipeline(client: Any, node: Any, commands: Sequence[_Command]) -> list[Any]:
    """A cluster master's share of a batch, written at once on one of its connections.

    The batch is already grouped by slot owner, so it goes straight to the
    node (``ClusterNode.execute_pipeline``, what redis-py's own cluster
    pipeline does per node, the same in 5.0.1 and 8.x), without the cluster
    pipeline routing every command again.  A command redirected meanwhile
    (``MOVED``, ``ASK``, ``TRYAGAIN``: a slot migrating or failed over) is
    sent again alone through the cluster client, which follows the
    redirection and updates its slot map; a NOSCRIPT is sent again as EVAL
    the same way.  Connection failures raise.
    """
    if _PipelineCommand is None:  # a redis-py without it: its cluster pipeline
        pipe = client.pipeline()
        for script, args in commands:
            pipe.execute_command(*_wire(script, args))
        return list(await pipe.execute(raise_on_error=False))
    for again in (False, True):
        sent = [
            _PipelineCommand(i, *_wire(script, args)) for i, (script, args) in enumerate(commands)
        ]
        try:
            await node.execute_pipeline(sent)
        except ConnectionError:  # could not connect or write
            if again:
                raise
        else:
            # A connection that fails on reading fails each command instead
            # (and the node keeps it as it is): one the server closed while it
            # sat idle (its `timeout`, CLIENT KILL), or a node gone.
            if again or not all(isinstance(c.result, ConnectionError) for c in sent):
                break
        # Close the node's connections (they reconnect when next used: what
        # redis-py's cluster client does itself after a connection error) and
        # send the batch once more.
        with contextlib.suppress(Exception):
            await node.disconnect()
    replies = [command.result for command in sent]
    redirected = [i for i, reply in enumerate(replies) if isinstance(reply, _REDIRECTS)]
    if redirected:
        resent = []
        for i in redirected:
            script, args = commands[i]
            if isinstance(replies[i], NoScriptError) and script is not None:
                resent.append(client.execute_command("EVAL", script.source, *args))
            else:
                resent.append(client.execute_command(*_wire(script, args)))
        answers = await asyncio.gather(*resent, return_exceptions=True)
        for i, answer in zip(redirected, answers, strict=True):
            replies[i] = answer
    return replies


class _Batcher:
    """One event loop's asyncio client and its batch of waiting decisions.

    :meth:`submit` queues a command and returns a future; the first submit
    in a turn of the loop schedules :meth:`flush` for the end of the turn,
    which sends everything queued as one pipeline (one per node in a
    cluster) in a task of its own.  Callers only ever await their future, so
    a cancelled caller cannot interrupt a pipeline half way: its command is
    skipped if not yet written, its answer dropped otherwise.
    """

    def __init__(self, store: RedisStore, client: AsyncClient, owned: bool) -> None:
        self.store = store
        self.client = client
        self.owned = owned
        self.cluster = _is_cluster(client)
        self.stale = False  # a cluster's slot map needs asking again
        # a client made here has no socket timeout of its own: each batch is timed
        self.timeout = store.socket_timeout if owned else None
        self.loop = asyncio.get_running_loop()
        self.queue: list[_Waiting] = []
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, command: _Command) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self.queue.append((command, future))
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)
        return future

    def flush(self) -> None:
        self.scheduled = False
        while self.queue and len(self.tasks) < _MAX_INFLIGHT:
            batch = [item for item in self.queue[:_MAX_BATCH] if not item[1].done()]
            del self.queue[:_MAX_BATCH]
            if batch:
                task = self.loop.create_task(self.send(batch))
                self.tasks.add(task)
                task.add_done_callback(self.sent)

    def sent(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if self.queue and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    async def send(self, batch: list[_Waiting]) -> None:
        store = self.store
        try:
            commands = [command for command, _ in batch]
            if self.cluster:
                replies = await self.by_node(commands)
            else:
                replies = await self.timed(_pipeline(self.client, commands))
        except BaseException as exc:
            error = store._failure(exc, None if self.cluster else store._breaker)
            if not isinstance(exc, Exception):  # the batch was cancelled (its loop closing)
                error = StoreError("redis call abandoned: its batch was cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        if not self.cluster:
            store._success(store._breaker)
        for (_, future), reply in zip(batch, replies, strict=True):
            if isinstance(reply, BaseException):
                error = store._failure(reply, None if self.cluster else store._breaker)
                if not future.done():
                    future.set_exception(error)
            elif not future.done():
                future.set_result(reply)

    async def timed(self, work: Awaitable[_T]) -> _T:
        if self.timeout is None:
            return await work
        return await _within(work, self.timeout)

    async def by_node(self, commands: list[_Command]) -> list[Any]:
        """A cluster: one pipeline per master, concurrently, each timed on its own.

        A failing node fails only its own commands; redis-py's pipeline still
        follows MOVED / ASK for each command.
        """
        client: Any = self.client
        whole = self.store._breaker  # a cluster's own: no slot map to be had at all
        manager = client.nodes_manager
        known = bool(getattr(manager, "slots_cache", None))  # a slot map from before
        try:
            if whole.open_until:
                whole.admit()
            try:
                await self.timed(client.initialize())  # a no-op once the slot map is known
            except Exception as exc:
                if known or not _is_outage(exc):
                    raise
                await self.again(exc)
        except StoreError:
            if not known:
                raise
        except Exception as exc:
            if not known or not _is_outage(exc):
                raise self.store._failure(exc, whole) from exc
            # redis-py asks for the map again after a connection failure, which
            # fails while that master is dead: keep the map there is (the dead
            # master's breaker, not the whole store, says it is down) and ask
            # again after a cooldown
            whole.opened(exc, report=False)
            self.stale = True
        else:
            if whole.open_until:
                whole.closed()
        if self.stale:
            # A master failed: ask the cluster who serves its slots now.  redis-py
            # refreshes its map by itself on MOVED, but a dead master answers
            # nothing, and without retries its pipelines do not refresh (8.x).
            # At most once per failure, and failures per master are kept to one
            # per breaker_cooldown by its breaker.
            self.stale = False
            try:
                await self.timed(manager.initialize())
            except Exception:  # no node answered yet: keep the old map, ask again
                self.stale = True
        groups: dict[str, list[int]] = {}
        nodes: dict[str, Any] = {}
        replies: list[Any] = [None] * len(commands)
        for i, (_, args) in enumerate(commands):
            try:
                node = manager.get_node_from_slot(key_slot(args[1]))
            except RedisError as exc:  # a slot nobody serves right now
                replies[i] = exc
                continue
            nodes[node.name] = node
            groups.setdefault(node.name, []).append(i)
        if not groups:
            return replies
        store = self.store
        names = list(groups)
        results = await asyncio.gather(
            *(self.node(nodes[name], [commands[i] for i in groups[name]]) for name in names),
            return_exceptions=True,
        )
        for name, result in zip(names, results, strict=True):
            for n, i in enumerate(groups[name]):
                replies[i] = result if isinstance(result, BaseException) else result[n]
            if isinstance(result, Exception):
                self.stale = self.stale or _is_outage(result)
                error = store._failure(result, store._node_breaker(name))
                for i in groups[name]:
                    replies[i] = error
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled: the batch is abandoned
        if not store.health.up:
            store._prune(client)
        return replies

    async def again(self, exc: Exception) -> None:
        """A new client's first ``initialize`` failed on a master its new slot
        map names: ask once more, and blame that master if it fails again.

        During a failover a node not yet told of the promotion can answer
        ``CLUSTER SLOTS`` with the dead master; redis-py then makes it the
        default node and fails on it (``AsyncCommandsParser.initialize`` sends
        it ``COMMAND``), and its ``RedisCluster.initialize`` then closes the
        nodes manager, which forgets the default node but keeps the map.  It
        shuffles the nodes it asks, so a second try is likely to ask one that
        knows; a failure is that master's (a master already replaced is then
        no new outage: :class:`StoreHealth`), not the whole cluster's.  An
        error that names no master of the map is raised as it is.
        """
        client: Any = self.client
        dead = _named_master(client.nodes_manager, exc)
        if dead is None:
            raise exc
        try:
            await self.timed(client.initialize())
        except Exception as second:
            if not _is_outage(second):
                raise
            blamed = _named_master(client.nodes_manager, second) or dead
            raise self.store._failure(second, self.store._node_breaker(blamed)) from second

    async def node(self, node: Any, commands: list[_Command]) -> list[Any]:
        """One master's share of a batch, behind that master's own breaker."""
        breaker = self.store._node_breaker(node.name)
        if breaker.open_until:
            breaker.admit()
        replies = await self.timed(_node_pipeline(self.client, node, commands))
        for reply in replies:  # a command's own error may still say the node is gone
            if isinstance(reply, Exception) and _is_outage(reply):
                breaker.opened(reply)
                self.stale = True
                break
        else:
            if breaker.open_until:
                breaker.closed()
        return replies

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.owned:
            await self.client.aclose()


def _named_master(manager: Any, exc: BaseException) -> str | None:
    """The master of a cluster client's slot map that ``exc`` names (redis-py's
    ``Error 111 connecting to host:port``), else None.

    Read from the map (``slots_cache``: a slot's first node is its master),
    not from ``default_node``: redis-py sets that to None when the
    ``initialize`` that failed on it closes the nodes manager.
    """
    slots = getattr(manager, "slots_cache", None)
    if not slots:
        return None
    text = str(exc)
    masters = {getattr(nodes[0], "name", None) for nodes in slots.values() if nodes}
    for name in masters:
        if isinstance(name, str) and name and re.search(re.escape(name) + r"(?![0-9])", text):
            return name
    return None


_LATE_TURNS = 4  # turns of the loop a call gets past its deadline, to read what came


async def _within(work: Awaitable[_T], seconds: float) -> _T:
    """``work``'s answer, or :class:`asyncio.TimeoutError` if it has none after
    ``seconds``; unlike ``asyncio.wait_for``, an answer that came while the event
    loop was held up is not thrown away.

    When a loop wakes from a stall (a blocking call in the application, a
    process the OS did not run), it handles its readable sockets and its due
    timers in the same turn.  From Python 3.12 ``wait_for`` is a
    ``timeouts.timeout`` whose timer cancels the call although its reply was
    read in that very turn: every decision in flight then fails at once and
    the store is reported down (``tests/test_redis_store.py`` holds a loop
    up 0.6 s with Redis answering at 0.1 s: "TimeoutError" on 3.12; 3.11's
    ``wait_for`` gave the call one turn and kept it).  Here the call gets a few
    turns of the loop past the deadline, each reading whatever has arrived,
    and only a call still unanswered then times out: a server that does not
    answer fails as late as before plus those turns.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait((task,), timeout=seconds)
        for _ in range(_LATE_TURNS):
            if task.done():
                break
            await asyncio.sleep(0)
    except BaseException:  # cancelled: the call goes with its caller
        task.cancel()
        raise
    if not task.done():
        task.cancel()
        task.add_done_callback(_retrieve)
        raise asyncio.TimeoutError(f"no answer within {seconds:g} s")
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Take a dropped call's outcome, so asyncio does not log it as unseen."""
    if not task.cancelled():
        task.exception()


_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _after_fork() -> None:
    # A child must not share its parent's sockets: redis-py's pools start
    # afresh in a new process; forget the asyncio clients and the locks.
    # Nor its jitter: forked workers would sweep in step (random reseeds only
    # its global generator in a child).
    _JITTER.seed()
    for store in list(_STORES):
        store._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# ----------------------------------------------------------------- store
class RedisStore(Store):
    """Counters and blocks in Redis, shared by every process that uses it.

    :param url: a Redis URL (``redis://``, ``rediss://``, ``unix://``,
        ``redis+sentinel://``, ``redis+cluster://``, or the same spelled
        ``valkey``: see :mod:`mailguard.stores.redis_urls`); the clients not
        given below are made from it, lazily.  A client may be passed here
        instead (``RedisStore(client)``): a ``redis.Redis`` (also a Sentinel
        ``master_for()`` client), ``redis.asyncio.Redis``,
        ``redis.cluster.RedisCluster`` or ``redis.asyncio.cluster.RedisCluster``.
    :param prefix: put before every key (default ``"mailguard:"``); give
        two deployments sharing a Redis database different prefixes.
    :param client: a ready synchronous client (``redis.Redis`` or
        ``redis.cluster.RedisCluster``) for the WSGI path.
    :param async_client: a ready asyncio client (``redis.asyncio.Redis`` or
        ``redis.asyncio.cluster.RedisCluster``) for the ASGI path.
    :param clock: where time comes from (default: the Redis server's
        ``TIME``); pass a :class:`~mailguard.FakeClock` in tests.
    :param socket_timeout: seconds a command may take before it fails
        (default 0.25), for clients made from ``url``.
    :param connect_timeout: seconds to open a connection (default:
        ``socket_timeout``), for clients made from ``url``.
    :param breaker_cooldown: seconds calls fail at once after an outage
        before one is tried again (default 1.0; 0 tries every call).  In a
        cluster each master has a breaker of its own.
    :param block_cache_ttl: seconds a locally cached block is trusted
        before Redis is asked again (default 2.0; 0 turns the cache off).
        An unblock made elsewhere reaches this process at once through the
        invalidation channel (which trusts a cached block up to 30 s), and
        within this time whenever the channel is down.
    :param block_cache_size: the most blocks cached (default 10,000).
    :param refusal_cache_size: the most refusals cached (default 10,000; 0
        turns the cache off): a key refused by ``hit`` is refused again
        without a round trip until its next slot frees (see "Refusal cache").
    """

    def __init__(
        self,
        url: str | SyncClient | AsyncClient | None = None,
        *,
        prefix: str = "mailguard:",
        client: SyncClient | None = None,
        async_client: AsyncClient | None = None,
        clock: Clock | None = None,
        socket_timeout: Seconds = 0.25,
        connect_timeout: Seconds | None = None,
        breaker_cooldown: Seconds = 1.0,
        block_cache_ttl: Seconds = 2.0,
        block_cache_size: int = 10_000,
        refusal_cache_size: int = 10_000,
    ) -> None:
        if isinstance(url, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)):
            if async_client is not None:
                raise option_error("async_client", "given twice (as url and as async_client)")
            url, async_client = None, url
        elif isinstance(url, (redis.Redis, redis.cluster.RedisCluster)):
            if client is not None:
                raise option_error("client", "given twice (as url and as client)")
            url, client = None, url
        elif url is not None and not isinstance(url, str):
            raise option_error("url", f"must be a Redis URL or client, got {url!r}")
        target = None
        if url is not None:
            try:
                target = parse_url(url)
            except ValueError as exc:
                raise option_error("url", str(exc)) from None
        if url is None and client is None and async_client is None:
            raise ValueError("RedisStore needs a url, a client or an async_client")
        if client is not None and not isinstance(client, (redis.Redis, redis.cluster.RedisCluster)):
            raise option_error(
                "client", f"must be a redis.Redis or redis.cluster.RedisCluster, got {client!r}"
            )
        if async_client is not None and not isinstance(
            async_client, (redis.asyncio.Redis, redis.asyncio.cluster.RedisCluster)
        ):
            raise option_error(
                "async_client",
                "must be a redis.asyncio.Redis or redis.asyncio.cluster.RedisCluster,"
                f" got {async_client!r}",
            )
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            raise option_error("prefix", f"must be a string without braces, got {prefix!r}")
        if clock is not None and not callable(clock):
            raise option_error("clock", f"must be a callable returning seconds, got {clock!r}")
        _seconds("socket_timeout", socket_timeout, zero=False)
        if connect_timeout is not None:
            _seconds("connect_timeout", connect_timeout, zero=False)
        _seconds("breaker_cooldown", breaker_cooldown, zero=True)
        _seconds("block_cache_ttl", block_cache_ttl, zero=True)
        for name, size in (
            ("block_cache_size", block_cache_size),
            ("refusal_cache_size", refusal_cache_size),
        ):
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise option_error(name, f"must be a whole number >= 0, got {size!r}")

        self.url = url
        self.target = target
        self.prefix = prefix
        self.socket_timeout = float(socket_timeout)
        self.connect_timeout = float(socket_timeout if connect_timeout is None else connect_timeout)
        self.breaker_cooldown = float(breaker_cooldown)
        self.block_cache_ttl = float(block_cache_ttl)
        self.block_cache_size = block_cache_size if block_cache_ttl > 0 else 0
        self.refusal_cache_size = refusal_cache_size
        self._clock = clock
        self._client = client
        self._owns_client = False
        kinds = {_is_cluster(c) for c in (client, async_client) if c is not None}
        if target is not None:
            kinds.add(target.topology == "cluster")
        if len(kinds) > 1:
            raise option_error(
                "client", "a cluster and a non-cluster client (or URL) given together"
            )
        self._cluster = kinds == {True}
        self._async_client = async_client
        # Only a sync client: the coroutines run its calls in a worker thread.
        self._threaded = async_client is None and url is None
        self.health = StoreHealth(repr(self))
        """Whether Redis answered the last real round trip (see GuardedStore)."""
        self._breaker = _Breaker(self.breaker_cooldown, self.health)
        self._breakers: dict[str, _Breaker] = {}  # a cluster's, by node name
        self._pruned_at = -math.inf  # see _prune
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Batcher] = (
            weakref.WeakKeyDictionary()
        )
        # (ns, key) -> (block, trusted until, ends at): both times time.monotonic()
        self._cache: dict[tuple[str, str], tuple[Block, float, float]] = {}
        # (ns, key) -> (limit, window, until, since): see _refused
        self._refusals: OrderedDict[tuple[str, str], tuple[int, float, float, float]] = (
            OrderedDict()
        )
        self._cache_lock = threading.Lock()
        # (ns, key) -> a _cache entry whose trust ran out before its block ended
        self._stale: dict[tuple[str, str], tuple[Block, float, float]] = {}
        # ---- the invalidation channel, the index of block ends (see "Blocks")
        self.channel_name = f"{prefix}channel"
        """The pub/sub channel of this prefix's lifts (see mailguard.stores.channel)."""
        self.index_name = f"{prefix}block-ends"
        """The sorted set of block ends ('until key' by until) the sweep reads."""
        self._channel: Channel | None = None
        self._channel_lock = threading.Lock()
        self._live = False  # the channel is subscribed: cached blocks are trusted longer
        self._lost_logged = False
        self._lifted: dict[tuple[str | None, str], float] = {}  # lifts heard: mono time
        self._lifted_all = -math.inf  # the last unblock_all heard, or join
        self._origin = os.urandom(6).hex()  # names this store's own messages
        self._to_index: deque[tuple[bytes, float]] = deque(maxlen=_INDEX_BACKLOG)
        self._next_sweep = 0.0
        self._checked = False
        self.overlay_name = f"{prefix}{{config}}"
        """The hash of the live configuration document (no expiry; mailguard.live)."""
        self._overlay_watchers: list[Callable[[], None]] = []
        _STORES.add(self)

    def __repr__(self) -> str:
        where = redact(self.url) if self.url else "client"
        return f"RedisStore({where!r}, prefix={self.prefix!r})"

    # -------------------------------------------------------- connections
    def _sync(self) -> Any:
        """The synchronous client (made from the URL on first use)."""
        with self._lock:
            if self._client is None:
                if self.target is None:
                    raise RuntimeError(
                        "RedisStore was given only an async_client: its synchronous (WSGI) "
                        "methods need a url or a client too"
                    )
                if self._cluster and self._breaker.open_until:  # a cluster not reached
                    self._breaker.admit()  # (a made cluster client has per-node breakers)
                try:
                    made = _sync_client(self.target, self.socket_timeout, self.connect_timeout)
                except Exception as exc:  # a cluster client asks for the slot map at once
                    error = self._failure(exc, self._breaker)  # (else: a StoreBug)
                    raise error from exc
                self._client, self._owns_client = made, True
                self._success(self._breaker)  # (a trial that made the client)
            client = self._client
        if self._channel is None:
            self._start_channel()  # (a client given too: its first use here)
        return client

    def _client_now(self) -> Any:
        """The synchronous client (the channel's thread started at its first use)."""
        client = self._client
        if client is None or self._channel is None:
            client = self._sync()
        return client

    def _batcher(self) -> _Batcher:
        loop = asyncio.get_running_loop()
        batcher = self._batchers.get(loop)
        if batcher is None:
            if self._async_client is not None:
                batcher = _Batcher(self, self._async_client, owned=False)
            else:
                assert self.target is not None
                try:
                    made = _async_client(self.target, self.connect_timeout)
                except Exception as exc:  # a redis-py that does not take these options
                    raise self._failure(exc) from exc
                batcher = _Batcher(self, made, owned=True)
            self._batchers[loop] = batcher
            self._start_channel()
        return batcher

    def _node_breaker(self, name: str) -> _Breaker:
        breaker = self._breakers.get(name)
        if breaker is None:
            with self._lock:
                if len(self._breakers) > 1000:  # nodes come and go: never grow without bound
                    self._breakers.clear()
                breaker = self._breakers.setdefault(
                    name, _Breaker(self.breaker_cooldown, self.health, name)
                )
        return breaker

    def _breaker_of(self, client: Any, key: Any) -> _Breaker:
        """The breaker of the node a call on ``key`` goes to (one for all unless a cluster)."""
        if not self._cluster:
            return self._breaker
        try:
            node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
        except Exception:  # no slot map to ask: the call itself will say what is wrong
            return self._breaker
        return self._node_breaker(node.name)

    def _new_sync_client(self, socket_timeout: float | None = None) -> SyncClient | None:
        """A new synchronous client made from the URL like the store's own (any
        scheme), for a helper that needs connections of its own (pub/sub in a
        thread); its owner closes it.  None when the store was given clients."""
        if self.target is None:
            return None
        timeout = self.socket_timeout if socket_timeout is None else socket_timeout
        return _sync_client(self.target, timeout, self.connect_timeout)

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._forked_channel()
        for breaker in (self._breaker, *self._breakers.values()):
            breaker.lock = threading.Lock()
        self._batchers = weakref.WeakKeyDictionary()

    def close(self) -> None:
        """Close the synchronous connections (those made here) and stop the
        channel's thread; they reopen if used again."""
        self._stop_channel()
        with self._lock:
            made = self._client if self._owns_client else None
            if made is not None:
                self._client, self._owns_client = None, False
        if made is not None:
            made.close()

    async def aclose(self) -> None:
        """Close this event loop's connections and the synchronous ones (those made here)."""
        batcher = self._batchers.pop(asyncio.get_running_loop(), None)
        if batcher is not None:
            await batcher.close()
        await asyncio.to_thread(self._stop_channel)  # (joins a thread: not on the loop)
        self.close()

    # ------------------------------------------------------------- calls
    def _success(self, breaker: _Breaker) -> None:
        if breaker.open_until:
            breaker.closed()

    def _failure(self, exc: BaseException, breaker: _Breaker | None = None) -> BaseException:
        """Record a failed call on ``breaker`` (None: no node to blame); what to raise."""
        if isinstance(exc, StoreError):
            return exc
        if not isinstance(exc, Exception):  # cancelled, interrupted: no verdict on the store
            return exc
        if _is_outage(exc):
            if breaker is not None:
                breaker.opened(exc)
            return StoreError(f"redis unavailable: {type(exc).__name__}: {exc}")
        if isinstance(exc, RedisError):  # the server answered, with an error
            if breaker is not None:
                self._success(breaker)
            if str(exc).startswith(("MOVED", "ASK")) and not self._cluster:
                return StoreError(
                    f"redis error: {exc} (this server is a Redis Cluster node: "
                    "use a redis+cluster:// URL or a RedisCluster client)"
                )
            return StoreError(f"redis error: {type(exc).__name__}: {exc}")
        # Neither an outage nor Redis's answer: a defect here or in redis-py
        # (an API this code misuses).  Never an outage: the breaker is left as it is.
        bug = StoreBug(f"redis store bug: {type(exc).__name__}: {exc}")
        bug.__cause__ = exc
        return bug

    def _call(self, script: _Script, args: tuple[Any, ...]) -> Any:
        """One script on the synchronous path: EVALSHA (EVAL on NOSCRIPT), one round trip."""
        client: Any = self._client_now()
        breaker = self._breaker_of(client, args[1]) if self._cluster else self._breaker
        if breaker.open_until:
            breaker.admit()
        try:
            try:
                reply = client.execute_command("EVALSHA", script.sha, *args)
            except NoScriptError:  # a new, restarted or promoted server: load it there
                reply = client.execute_command("EVAL", script.source, *args)
        except BaseException as exc:
            error = self._failure(exc, breaker)
            if error is exc:
                raise
            raise error from exc
        if breaker.open_until:
            breaker.closed()
        if self._cluster and not self.health.up:
            self._prune(client)
        return reply

    def _prune(self, client: Any) -> None:
        """A cluster is counted down while a master that failed has not answered
        again; a master replaced meanwhile (its replica promoted, in the slot
        map now) never will: it no longer counts (asked at most every 0.5 s)."""
        mono = time.monotonic()
        if mono < self._pruned_at + 0.5:
            return
        self._pruned_at = mono
        try:
            slots = client.nodes_manager.slots_cache
            serving = {nodes[0].name for nodes in list(slots.values()) if nodes}
        except Exception:  # no slot map to read: leave it to the next call
            return
        gone = {part for part in self.health.parts_down if part and part not in serving}
        if gone:
            self.health.dropped(gone)

    def _plain(self, *args: Any, **options: Any) -> Any:
        """A plain command on the synchronous path (admin: SCAN, TIME)."""
        client: Any = self._client_now()
        breaker = self._breaker
        if breaker.open_until and not self._cluster:
            breaker.admit()
        try:
            reply = client.execute_command(*args, **options)
        except BaseException as exc:
            error = self._failure(exc, None if self._cluster else breaker)
            if error is exc:
                raise
            raise error from exc
        self._success(breaker)
        return reply

    def _call_many(self, commands: Sequence[_Command]) -> list[Any]:
        """Commands as one pipeline on the synchronous path (per node in a cluster)."""
        client: Any = self._client_now()
        if self._breaker.open_until and not self._cluster:
            self._breaker.admit()
        try:
            pipe = client.pipeline(transaction=False)
            for script, args in commands:
                pipe.execute_command(*_wire(script, args))
            replies: list[Any] = pipe.execute(raise_on_error=False)
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):
                    script, args = commands[i]
                    assert script is not None
                    replies[i] = client.execute_command("EVAL", script.source, *args)
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        except BaseException as exc:
            error = self._failure(exc, None if self._cluster else self._breaker)
            if error is exc:
                raise
            raise error from exc
        self._success(self._breaker)
        return replies

    async def _acall(self, script: _Script | None, args: tuple[Any, ...]) -> Any:
        """One command on the asyncio path, batched with its neighbours."""
        if self._breaker.open_until and not self._cluster:
            self._breaker.admit()
        return await self._batcher().submit((script, args))

    def _tag(self, ns: str, key: str) -> bytes:
        """``prefix{ns:key}``: every key of (ns, key) starts so, one hash slot."""
        if ns not in self._namespaces:
            if not isinstance(ns, str) or not ns or ":" in ns or "{" in ns or "}" in ns:
                raise ValueError(f"ns: must be a non-empty name without ':' or braces, got {ns!r}")
            self._namespaces.add(ns)
        return f"{self.prefix}{{{ns}:{key}}}".encode("utf-8", "surrogatepass")

    def _now_arg(self) -> str | float:
        return "" if self._clock is None else self._clock()

    # ------------------------------------------------------- block cache
    def _cached(self, ns: str, key: str) -> tuple[Block, float] | None:
        """The cached live block of (ns, key) and the seconds it has left."""
        entry = self._cache.get((ns, key))
        if entry is None:
            return None
        block, trusted_until, ends = entry
        mono = time.monotonic()
        if self._clock is None:
            left = ends - mono
        else:  # exactly what Redis (and a MemoryStore) would answer
            now = float(self._clock())
            left = wait_until(block.until, now) if block.until > now else 0.0
        if mono >= trusted_until or left <= 0.0:
            self._cache.pop((ns, key), None)
            if left > 0.0:  # kept for an outage: see _held
                stale = self._stale
                if len(stale) >= self.block_cache_size:
                    stale.pop(next(iter(stale), (ns, key)), None)
                stale[(ns, key)] = entry
            return None
        return block, left

    def _held(self, ns: str, key: str) -> tuple[Block, float] | None:
        """A block cached earlier, no longer trusted but not ended, while Redis
        cannot answer: still enforced until it ends (a failover must not let a
        blocked client guess).  The first answer from Redis replaces it."""
        entry = self._stale.get((ns, key))
        if entry is None:
            return None
        block, _, ends = entry
        if self._clock is None:
            left = ends - time.monotonic()
        else:
            now = float(self._clock())
            left = wait_until(block.until, now) if block.until > now else 0.0
        if left <= 0.0:
            self._stale.pop((ns, key), None)
            return None
        return block, left

    def _answered(self, ns: str, key: str) -> None:
        """Redis answered for (ns, key): what it says replaces a held block."""
        self._stale.pop((ns, key), None)

    def _remember(self, block: Block, now: float) -> None:
        """Cache ``block``, seen in Redis at store time ``now``."""
        if not self.block_cache_size:
            return
        name = (block.kind, block.key)
        left = block.until - now
        if left <= 0.0:
            self._cache.pop(name, None)
            return
        mono = time.monotonic()
        with self._cache_lock:
            cache = self._cache
            cache.pop(name, None)
            if len(cache) >= self.block_cache_size:
                for old in [n for n, e in cache.items() if e[1] <= mono or e[2] <= mono]:
                    del cache[old]
                while len(cache) >= self.block_cache_size:
                    del cache[next(iter(cache))]
            cache[name] = (block, self._trusted_until(name, mono), mono + left)

    def _forget(self, key: str | None, kind: str | None) -> None:
        """Drop the cached blocks and refusals of ``key`` / ``kind`` (None: any),
        lifted or changed, and remember the lift for a while (see _trusted_until)."""
        mono = time.monotonic()
        with self._cache_lock:
            if key is None or len(self._lifted) >= _MAX_LIFTED:
                self._lifted.clear()
                self._lifted_all = mono
            else:
                self._lifted[(kind, key)] = mono
            for cache in (self._cache, self._refusals, self._stale):
                for name in [
                    n
                    for n in cache
                    if (key is None or n[1] == key) and (kind is None or n[0] == kind)
                ]:
                    del cache[name]

    # ------------------------------------------------- live configuration
    # (mailguard.stores.overlay: one hash, hash-tagged, no expiry)
    def read_overlay(self) -> Overlay:
        version, data = self._plain("HMGET", self.overlay_name, "version", "doc")
        return overlay_decode(_version(version), data)

    def overlay_version(self) -> int:
        return _version(self._plain("HGET", self.overlay_name, "version"))

    def write_overlay(self, expected: int, values: Mapping[str, Any], change: OverlayChange) -> int:
        current = self.read_overlay()
        if current.version != expected:
            raise OverlayConflict(f"live configuration is at v{current.version}, not v{expected}")
        version = expected + 1
        data = overlay_encode(values, (*current.changes, replace(change, version=version)))
        done, now_at = self._call(_OVERLAY, (1, _enc(self.overlay_name), self._now_arg(),
                                             expected, data))  # fmt: skip
        if not int(done):
            raise OverlayConflict(f"live configuration is at v{int(now_at)}, not v{expected}")
        self._announce("config", None, None, version)
        return version

    def watch_overlay(self, callback: Callable[[], None]) -> None:
        self._overlay_watchers.append(callback)

    @property
    def overlay_heard(self) -> bool:
        return self._live

    # ------------------------------------- channel, block index, server check
    # (the invalidation channel and the sweep of ended blocks: see "Blocks")
    def _channel_client(self) -> Any:
        """A sync client for the channel's thread: made from the URL (closed by
        the thread), or the client given (left to its owner)."""
        if self.target is not None:  # (no retries: a reconnection is a gap the thread must see)
            return self._new_sync_client(socket_timeout=max(self.socket_timeout, 1.0))
        return self._client

    def _start_channel(self) -> None:
        """Start the channel's thread (at the first connection; once per process).
        Not with only an asyncio client: cached blocks then live block_cache_ttl."""
        if self._channel is not None or (self.target is None and self._client is None):
            return
        with self._channel_lock:
            if self._channel is not None:
                return
            me = weakref.ref(self)  # the thread must not keep the store alive

            def connect() -> Any:
                store = me()
                if store is None:
                    raise RuntimeError("the store is gone")
                return store._channel_client()

            self._channel = Channel(self.channel_name, connect, self, owned=self.target is not None)
            self._channel.start()

    def _stop_channel(self) -> None:
        with self._channel_lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.stop()
        self._channel_lost("")

    def _forked_channel(self) -> None:
        """In a forked child: the parent's thread is not here, nor its messages."""
        self._channel_lock = threading.Lock()
        self._channel = None  # (its connections are the parent's: left alone)
        self._live = False
        self._cache = {}  # trusted while the parent listened: not here
        self._origin = os.urandom(6).hex()
        self._to_index.clear()  # the parent indexes its own

    def _trusted_until(self, name: tuple[str, str], mono: float) -> float:
        """Until when a block of ``name`` read now may answer from the cache
        (called under ``_cache_lock``): long while the channel is live, unless
        a lift of it (or a join) was heard so recently that this reply may
        predate it."""
        if self._live and mono - self._lifted_all > _RACE:
            heard = self._lifted.get(name)
            if heard is None:
                heard = self._lifted.get((None, name[1]))
            if heard is None or mono - heard > _RACE:
                return mono + max(self.block_cache_ttl, _CHANNEL_TRUST)
        return mono + self.block_cache_ttl

    def _index(self, block: Block) -> None:
        """Queue a block made here for the index of block ends (the thread adds it)."""
        until = f"{block.until:.17g}"
        name = self._tag(block.kind, block.key) + b":b"
        self._to_index.append((until.encode() + b" " + name, block.until))

    def _announce(
        self, op: str, kind: str | None, key: str | None, version: int | None = None
    ) -> None:
        """Publish a change of blocks (or of the live configuration) on the channel."""
        try:
            message = encode(op, kind, key, self._origin, version)
            if self._cluster:  # PUBLISH names no key: sent to the channel name's slot owner
                client: Any = self._client_now()
                node = client.nodes_manager.get_node_from_slot(client.keyslot(self.channel_name))
                self._plain("PUBLISH", self.channel_name, message, target_nodes=node)
            else:
                self._plain("PUBLISH", self.channel_name, message)
        except StoreError as exc:
            self._unannounced(op, kind, key, exc)

    async def _aannounce(self, op: str, kind: str | None, key: str | None) -> None:
        try:
            message = encode(op, kind, key, self._origin)
            await self._acall(None, ("PUBLISH", self.channel_name.encode(), message))
        except StoreError as exc:
            self._unannounced(op, kind, key, exc)

    def _unannounced(self, op: str, kind: str | None, key: str | None, exc: Exception) -> None:
        _log.warning(
            "mailguard store channel: %s kind=%s key=%r made but not announced (%s): "
            "other processes see it within %g s",
            op, kind, key, exc, max(self.block_cache_ttl, _CHANNEL_TRUST),
        )  # fmt: skip

    # called by the channel's thread (mailguard.stores.channel.Listener)
    def _channel_heard(self, message: Message) -> None:
        if message.op == "config":  # a hint only: the watchers read the document
            for callback in list(self._overlay_watchers):
                try:
                    callback()
                except Exception:
                    _log.exception("mailguard: a live configuration watcher failed")
            return
        if message.origin != self._origin:  # (this store did it, and forgot already)
            self._forget(message.key, message.kind)

    def _channel_joined(self) -> None:
        with self._cache_lock:
            self._live = True
            self._lifted.clear()
            self._lifted_all = time.monotonic()  # a lift may have passed unheard just now
            # (entries cached meanwhile are trusted block_cache_ttl: they stay)
            back, self._lost_logged = self._lost_logged, False
        if back:
            _log.info("mailguard store channel back store=%r", self)

    def _channel_lost(self, error: str) -> None:
        with self._cache_lock:
            was, self._live = self._live, False
            if was:  # trusted for long on messages that may now be missed: as without
                mono = time.monotonic()
                short = mono + self.block_cache_ttl
                cache = self._cache
                for name, entry in list(cache.items()):
                    if entry[1] > short and cache.get(name) is entry:
                        cache[name] = (entry[0], short, entry[2])
            log = bool(error) and was and not self._lost_logged
            if log:
                self._lost_logged = True
        if log:
            _log.warning(
                "mailguard store channel lost store=%r error=%s: lifts made elsewhere reach "
                "this process within block_cache_ttl=%gs until it is back",
                self, error, self.block_cache_ttl,
            )  # fmt: skip

    def _channel_tick(self, client: Any) -> None:
        """The thread's turn: check the server once, index new blocks, sweep ended ones."""
        if not self._checked:
            self._check_server(client)  # (a connection failure raises: tried again next tick)
            self._checked = True
        if self._to_index:
            batch: dict[bytes, float] = {}
            while self._to_index and len(batch) < _SWEEP_BATCH:
                member, until = self._to_index.popleft()
                batch[member] = until
            try:
                client.zadd(self.index_name, batch)
            except BaseException:
                self._to_index.extendleft(batch.items())  # (reversed: order does not matter)
                raise
        mono = time.monotonic()
        if mono >= self._next_sweep:
            self._next_sweep = mono + _SWEEP_EVERY * (1.0 + 0.2 * _JITTER.random())
            self._sweep(client)

    def _sweep(self, client: Any) -> int:
        """Remove ended blocks named by the index (a bounded number); how many."""
        now = float(self._clock()) if self._clock is not None else _server_time(client.time())
        removed = 0
        for _ in range(_SWEEP_ROUNDS):
            ended = client.zrangebyscore(self.index_name, "-inf", now, start=0, num=_SWEEP_BATCH)
            if not ended:
                break
            pipe = client.pipeline(transaction=False)
            for member in ended:
                raw = member if isinstance(member, bytes) else str(member).encode()
                until, _, name = raw.partition(b" ")
                # (execute_command: a cluster pipeline has no eval(); it routes
                # EVAL by its key, redis-py cluster.py RedisCluster.determine_slot)
                pipe.execute_command("EVAL", _SWEEP_SOURCE, 1, name, until)
            pipe.zrem(self.index_name, *ended)
            replies = pipe.execute()
            removed += sum(1 for reply in replies[:-1] if reply == 1)
            if len(ended) < _SWEEP_BATCH:
                break
        return removed

    def _check_server(self, client: Any) -> None:
        """Warn about a ``maxmemory-policy`` that can evict blocks or stop counting."""
        try:
            if _is_cluster(client):  # every master holds blocks: each is checked
                primaries = redis.cluster.RedisCluster.PRIMARIES
                per_node = client.config_get("maxmemory*", target_nodes=primaries)
            else:
                per_node = {"": client.config_get("maxmemory*")}
        except ResponseError as exc:  # CONFIG renamed or forbidden (managed Redis): say so once
            _log.info(
                "mailguard store could not read maxmemory-policy (%s): make sure it is "
                "volatile-ttl (see the README, Running at scale)",
                exc,
            )
            return
        if not all(isinstance(v, dict) for v in per_node.values()):  # one node's answer
            per_node = {"": per_node}
        for node, answer in sorted(per_node.items()):
            found = {_text(k): _text(v) for k, v in answer.items()}
            if self._policy_warned(found, f" node={node}" if node else ""):
                return  # (one line is enough: the same advice for every node)

    def _policy_warned(self, found: dict[str, str], where: str) -> bool:
        policy = found.get("maxmemory-policy", "")
        limited = found.get("maxmemory", "0") not in ("", "0")
        if policy.startswith("allkeys-"):
            _log.warning(
                "mailguard store redis%s maxmemory-policy=%s: a full Redis may evict live "
                "blocks and jails (a flood of fresh addresses frees the blocked); "
                "use maxmemory-policy volatile-ttl (see the README, Running at scale)",
                where,
                policy,
            )
            return True
        if policy == "noeviction" and limited:
            _log.warning(
                "mailguard store redis%s maxmemory-policy=noeviction: a full Redis refuses "
                "every decision and counting stops (on_store_error decides); "
                "use maxmemory-policy volatile-ttl (see the README, Running at scale)",
                where,
            )
            return True
        return False

    # ----------------------------------------------------- refusal cache
    def _refused(self, ns: str, key: str, limit: int, window: float) -> float | None:
        """The wait of a cached refusal of this hit that still holds, else None."""
        name = (ns, key)
        entry = self._refusals.get(name)
        if entry is None or entry[0] != limit or entry[1] != window:
            return None
        _, _, until, since = entry
        if self._clock is None:  # until: time.monotonic() when the slot frees, or earlier
            left = until - time.monotonic()
            if left > 0.0:
                return left
        else:  # store time: exactly what Redis (and a MemoryStore) would answer
            now = float(self._clock())
            if since <= now < until:  # a clock stepped back asks Redis
                return wait_until(until, now)
        self._refusals.pop(name, None)
        return None

    def _refuse(
        self, ns: str, key: str, limit: int, window: float, fields: list[Any], sent: float
    ) -> None:
        """Cache an OVER reply 'code 0 wait until t', asked at ``time.monotonic()`` ``sent``."""
        name = (ns, key)
        if self._clock is None:
            # Counted from before the request was sent, so never later than
            # the slot frees on the server's clock.
            entry = (limit, window, sent + float(fields[2]), 0.0)
        else:
            entry = (limit, window, float(fields[3]), float(fields[4]))
        with self._cache_lock:
            refusals = self._refusals
            refusals.pop(name, None)
            while len(refusals) >= self.refusal_cache_size:
                refusals.popitem(last=False)  # the oldest
            refusals[name] = entry

    # ------------------------------------------------- commands and replies
    # Each primitive is a script and its arguments (built by a *_command
    # method, shared by the sync and async faces) and a reply parser
    # (*_result).  Scripts answer with one space-separated string; see the
    # headers of lua/*.lua.
    def _blocked(self, ns: str, key: str, fields: list[Any]) -> tuple[int, int, float]:
        """A BLOCKED/JAILED reply 'code 0 wait now since until reason': cache it."""
        now = float(fields[3])
        reason = _text(fields[6]) if len(fields) > 6 else ""
        block = Block(ns, key, reason, float(fields[4]), float(fields[5]))
        self._remember(block, now)
        code = int(fields[0])
        if code == JAILED:
            self._index(block)
        return code, 0, float(fields[2])

    def _hit_command(
        self, ns: str, key: str, limit: int, window: float, jail: float
    ) -> tuple[Any, ...]:
        tag = self._tag(ns, key)
        if jail > 0.0:
            return (2, tag + b":w", tag + b":b", self._now_arg(), limit, window, jail,
                    _enc(ns), _enc(key))  # fmt: skip
        return (1, tag + b":w", self._now_arg(), limit, window, 0)

    def _hit_result(
        self, ns: str, key: str, limit: int, window: float, reply: Any, sent: float
    ) -> tuple[int, int, float]:
        fields = reply.split(None, 6)
        code = int(fields[0])
        if code >= JAILED:
            if code == JAILED and self._refusals:  # the jail emptied the window
                self._refusals.pop((ns, key), None)
            return self._blocked(ns, key, fields)
        if code == OVER and self.refusal_cache_size:
            self._refuse(ns, key, limit, window, fields, sent)
        return code, int(fields[1]), float(fields[2])

    def _peek_command(self, ns: str, key: str, window: float) -> tuple[Any, ...]:
        return (1, self._tag(ns, key) + b":w", self._now_arg(), window)

    def _attempt_command(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[Any, ...]:
        tag = self._tag(ns, key)
        return (2, tag + b":a", tag + b":b", self._now_arg(), limit, interval, pending_ttl)

    def _attempt_result(self, ns: str, key: str, reply: Any) -> tuple[int, int, float]:
        fields = reply.split(None, 6)
        code = int(fields[0])
        if code == BLOCKED:
            return self._blocked(ns, key, fields)
        return code, int(fields[1]), float(fields[2])

    def _settle_command(
        self,
        ns: str,
        key: str,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        reset: bool,
        factor: float,
        max_block: float,
        memory: float,
    ) -> tuple[Any, ...]:
        tag = self._tag(ns, key)
        return (
            3, tag + b":a", tag + b":b", tag + b":o",
            self._now_arg(), 1 if failed else 0, limit, interval, block_for,
            1 if reset else 0, factor, max_block, memory, _enc(ns), _enc(key),
        )  # fmt: skip

    def _settle_result(self, ns: str, key: str, reply: Any) -> tuple[int, int, float]:
        fields = reply.split()
        code, streak_now, blocked_for = int(fields[0]), int(fields[1]), float(fields[2])
        kept = len(fields) > 4 and int(fields[4]) == 1
        if code == JAILED and not kept:
            # the new block is the one in force (a later block kept instead is
            # left for the next request to read from Redis, whole)
            now = float(fields[3])
            made = Block(ns, key, "failures", now, now + blocked_for)
            self._remember(made, now)
            self._index(made)
        return code, streak_now, blocked_for

    def _swap_command(self, ns: str, key: str, value: str, ttl: float) -> tuple[Any, ...]:
        return (1, self._tag(ns, key) + b":s", self._now_arg(), _enc(value), ttl)

    def _block_command(self, ns: str, key: str, seconds: float, reason: str) -> tuple[Any, ...]:
        tag = self._tag(ns, key)
        return (1, tag + b":b", self._now_arg(), seconds, _enc(reason), _enc(ns), _enc(key))

    def _block_result(self, ns: str, key: str, seconds: float, reason: str, reply: Any) -> Block:
        now = float(reply)
        made = Block(ns, key, reason, now, now + seconds)
        self._remember(made, now)
        self._index(made)
        return made

    def _get_block_command(self, ns: str, key: str) -> tuple[Any, ...]:
        return (1, self._tag(ns, key) + b":b", self._now_arg())

    def _get_block_result(self, ns: str, key: str, reply: Any) -> Block | None:
        fields = reply.split(None, 3)
        if len(fields) < 3:
            self._cache.pop((ns, key), None)
            return None
        reason = _text(fields[3]) if len(fields) > 3 else ""
        found = Block(ns, key, reason, float(fields[1]), float(fields[2]))
        self._remember(found, float(fields[0]))
        return found

    def _unblock_command(self, name: Any, key: str | None) -> _Command:
        return _UNBLOCK, (1, name, self._now_arg(), _enc(key or ""))

    def _pattern(self, key: str | None, kind: str | None) -> bytes:
        """SCAN MATCH for the block keys of ``key`` / ``kind`` (None: any)."""
        if key is None and kind is None:
            inner = "*"
        else:
            inner = (
                ("*" if kind is None else _glob(kind)) + ":" + ("*" if key is None else _glob(key))
            )
        return _enc(f"{_glob(self.prefix)}{{{inner}}}:b")

    # ----------------------------------------------------------- counting
    def _answer_locally(
        self, ns: str, key: str, limit: int, window: float, jail: float
    ) -> tuple[int, int, float] | None:
        """A ``hit`` answered from this process: a cached block (with a jail)
        or a cached refusal (without); None when Redis must be asked."""
        if jail > 0.0:
            if self._cache:
                cached = self._cached(ns, key)
                if cached is not None:
                    return BLOCKED, 0, cached[1]
        elif self._refusals:
            wait = self._refused(ns, key, limit, window)
            if wait is not None:
                return OVER, 0, wait
        return None

    def hit(
        self,
        ns: str,
        key: str,
        limit: int,
        window: float,
        jail: float = 0.0,
        detail: bool = True,  # the script always works out remaining and wait
    ) -> tuple[int, int, float]:
        if self._cache or self._refusals:
            local = self._answer_locally(ns, key, limit, window, jail)
            if local is not None:
                return local
        sent = time.monotonic()
        try:
            reply = self._call(_HIT, self._hit_command(ns, key, limit, window, jail))
        except StoreError:
            held = self._held(ns, key) if jail > 0.0 and self._stale else None
            if held is None:
                raise
            return BLOCKED, 0, held[1]
        if self._stale:
            self._answered(ns, key)
        if reply[0] == 48:  # b"0": allowed, the common answer
            fields = reply.split()
            return OK, int(fields[1]), float(fields[2])
        return self._hit_result(ns, key, limit, window, reply, sent)

    def peek(self, ns: str, key: str, window: float) -> int:
        return int(self._call(_PEEK, self._peek_command(ns, key, window)))

    def attempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return BLOCKED, 0, cached[1]
        try:
            reply = self._call(
                _ATTEMPT, self._attempt_command(ns, key, limit, interval, pending_ttl)
            )
        except StoreError:
            held = self._held(ns, key) if self._stale else None
            if held is None:
                raise
            return BLOCKED, 0, held[1]
        if self._stale:
            self._answered(ns, key)
        return self._attempt_result(ns, key, reply)

    def settle(
        self,
        ns: str,
        key: str,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        *,
        reset: bool = False,
        factor: float = 1.0,
        max_block: float = 0.0,
        memory: float = 0.0,
    ) -> tuple[int, int, float]:
        command = self._settle_command(
            ns, key, failed, limit, interval, block_for, reset, factor, max_block, memory
        )
        return self._settle_result(ns, key, self._call(_SETTLE, command))

    def swap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        reply = self._call(_SWAP, self._swap_command(ns, key, value, ttl))
        return None if reply is None else _text(reply)

    # ------------------------------------------------------------- blocks
    def block(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        reply = self._call(_BLOCK, self._block_command(ns, key, seconds, reason))
        made = self._block_result(ns, key, seconds, reason, reply)
        self._announce("block", ns, key)  # it may replace a block cached elsewhere
        return made

    def get_block(self, ns: str, key: str) -> Block | None:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return cached[0]
        try:
            reply = self._call(_GET_BLOCK, self._get_block_command(ns, key))
        except StoreError:
            held = self._held(ns, key) if self._stale else None
            if held is None:
                raise
            return held[0]
        if self._stale:
            self._answered(ns, key)
        return self._get_block_result(ns, key, reply)

    # Admin operations (listing and lifting blocks) are rare: they SCAN the
    # block keys (on every master of a cluster), then read or lift them in
    # chunks of _CHUNK per round trip, each on the node that owns it.
    def _masters(self) -> list[Any]:
        """The nodes to SCAN: a cluster's masters, or [None] (the one server)."""
        if not self._cluster:
            return [None]
        client: Any = self._client_now()
        try:
            return list(client.get_primaries())
        except BaseException as exc:
            error = self._failure(exc)
            if error is exc:
                raise
            raise error from exc

    def _scan(self, pattern: bytes) -> list[Any]:
        names: dict[Any, None] = {}  # SCAN may return a key twice
        for node in self._masters():
            where = {} if node is None else {"target_nodes": node}
            cursor = 0
            while True:
                reply = self._plain("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT, **where)
                cursor, found = _scan_reply(reply)
                names.update(dict.fromkeys(found))
                if cursor == 0:
                    break
        return list(names)

    def blocks(self, kind: str | None = None) -> list[Block]:
        names = self._scan(self._pattern(None, kind))
        rows: list[Any] = []
        for start in range(0, len(names), _CHUNK):
            rows += self._call_many([_row_command(n) for n in names[start : start + _CHUNK]])
        return _live_blocks(rows, self.now(), kind)

    def unblock(self, key: str, kind: str | None = None) -> int:
        if kind is None:
            return self._unblock_scan(self._pattern(key, None), key, None)
        name = self._tag(kind, key) + b":b"
        lifted = self._call(_UNBLOCK, self._unblock_command(name, key)[1])
        self._forget(key, kind)  # after the lift: a request may have cached it meanwhile
        self._announce("unblock", kind, key)
        return int(lifted)

    def unblock_all(self, kind: str | None = None) -> int:
        return self._unblock_scan(self._pattern(None, kind), None, kind)

    def _unblock_scan(self, pattern: bytes, key: str | None, kind: str | None) -> int:
        names = self._scan(pattern)
        lifted = 0
        for start in range(0, len(names), _CHUNK):
            chunk = [self._unblock_command(n, key) for n in names[start : start + _CHUNK]]
            lifted += sum(int(reply) for reply in self._call_many(chunk))
        self._forget(key, kind)
        self._announce("unblock" if key is not None else "unblock_all", kind, key)
        return lifted

    def count_keys(self) -> int:
        """How many keys this store holds under its prefix (``SCAN``, every master),
        not counting the index of block ends (see "Blocks")."""
        index = _enc(self.index_name)
        return sum(1 for name in self._scan(_enc(_glob(self.prefix) + "*")) if name != index)

    def now(self) -> float:
        if self._clock is not None:
            return float(self._clock())
        masters = self._masters()
        where = {} if masters[0] is None else {"target_nodes": masters[0]}
        return _server_time(self._plain("TIME", **where))

    # -------------------------------------------------------------- async
    async def ahit(
        self,
        ns: str,
        key: str,
        limit: int,
        window: float,
        jail: float = 0.0,
        detail: bool = True,  # the script always works out remaining and wait
    ) -> tuple[int, int, float]:
        if self._cache or self._refusals:
            local = self._answer_locally(ns, key, limit, window, jail)
            if local is not None:
                return local
        if self._threaded:
            return await asyncio.to_thread(self.hit, ns, key, limit, window, jail)
        sent = time.monotonic()
        try:
            reply = await self._acall(_HIT, self._hit_command(ns, key, limit, window, jail))
        except StoreError:
            held = self._held(ns, key) if jail > 0.0 and self._stale else None
            if held is None:
                raise
            return BLOCKED, 0, held[1]
        if self._stale:
            self._answered(ns, key)
        return self._hit_result(ns, key, limit, window, reply, sent)

    async def apeek(self, ns: str, key: str, window: float) -> int:
        if self._threaded:
            return await asyncio.to_thread(self.peek, ns, key, window)
        return int(await self._acall(_PEEK, self._peek_command(ns, key, window)))

    async def aattempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return BLOCKED, 0, cached[1]
        if self._threaded:
            return await asyncio.to_thread(self.attempt, ns, key, limit, interval, pending_ttl)
        command = self._attempt_command(ns, key, limit, interval, pending_ttl)
        try:
            reply = await self._acall(_ATTEMPT, command)
        except StoreError:
            held = self._held(ns, key) if self._stale else None
            if held is None:
                raise
            return BLOCKED, 0, held[1]
        if self._stale:
            self._answered(ns, key)
        return self._attempt_result(ns, key, reply)

    async def asettle(
        self,
        ns: str,
        key: str,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        *,
        reset: bool = False,
        factor: float = 1.0,
        max_block: float = 0.0,
        memory: float = 0.0,
    ) -> tuple[int, int, float]:
        if self._threaded:
            return await asyncio.to_thread(
                lambda: self.settle(
                    ns,
                    key,
                    failed,
                    limit,
                    interval,
                    block_for,
                    reset=reset,
                    factor=factor,
                    max_block=max_block,
                    memory=memory,
                )
            )
        command = self._settle_command(
            ns, key, failed, limit, interval, block_for, reset, factor, max_block, memory
        )
        return self._settle_result(ns, key, await self._acall(_SETTLE, command))

    async def aswap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        if self._threaded:
            return await asyncio.to_thread(self.swap, ns, key, value, ttl)
        reply = await self._acall(_SWAP, self._swap_command(ns, key, value, ttl))
        return None if reply is None else _text(reply)

    async def ablock(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        if self._threaded:
            return await asyncio.to_thread(self.block, ns, key, seconds, reason)
        reply = await self._acall(_BLOCK, self._block_command(ns, key, seconds, reason))
        made = self._block_result(ns, key, seconds, reason, reply)
        await self._aannounce("block", ns, key)
        return made

    async def aget_block(self, ns: str, key: str) -> Block | None:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return cached[0]
        if self._threaded:
            return await asyncio.to_thread(self.get_block, ns, key)
        try:
            reply = await self._acall(_GET_BLOCK, self._get_block_command(ns, key))
        except StoreError:
            held = self._held(ns, key) if self._stale else None
            if held is None:
                raise
            return held[0]
        if self._stale:
            self._answered(ns, key)
        return self._get_block_result(ns, key, reply)

    async def _aplain(self, *args: Any, **options: Any) -> Any:
        """A plain command on the asyncio path (admin: SCAN, TIME), not batched."""
        client: Any = self._batcher().client
        try:
            if self._breaker.open_until and not self._cluster:
                self._breaker.admit()
            reply = await asyncio.wait_for(client.execute_command(*args, **options), 5.0)
        except BaseException as exc:
            error = self._failure(exc, None if self._cluster else self._breaker)
            if error is exc:
                raise
            raise error from exc
        self._success(self._breaker)
        return reply

    async def _amasters(self) -> list[Any]:
        if not self._cluster:
            return [None]
        client: Any = self._batcher().client
        try:
            await client.initialize()
            return list(client.get_primaries())
        except BaseException as exc:
            error = self._failure(exc)
            if error is exc:
                raise
            raise error from exc

    async def _ascan(self, pattern: bytes) -> list[Any]:
        names: dict[Any, None] = {}
        for node in await self._amasters():
            where = {} if node is None else {"target_nodes": node}
            cursor = 0
            while True:
                reply = await self._aplain(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT, **where
                )
                cursor, found = _scan_reply(reply)
                names.update(dict.fromkeys(found))
                if cursor == 0:
                    break
        return list(names)

    async def anow(self) -> float:
        """:meth:`now` for the asyncio path."""
        if self._clock is not None:
            return float(self._clock())
        masters = await self._amasters()
        where = {} if masters[0] is None else {"target_nodes": masters[0]}
        return _server_time(await self._aplain("TIME", **where))

    async def ablocks(self, kind: str | None = None) -> list[Block]:
        if self._threaded:
            return await asyncio.to_thread(self.blocks, kind)
        names = await self._ascan(self._pattern(None, kind))
        rows: list[Any] = []
        for start in range(0, len(names), _CHUNK):  # each chunk is batched into one pipeline
            chunk = names[start : start + _CHUNK]
            rows += await asyncio.gather(*(self._acall(*_row_command(n)) for n in chunk))
        return _live_blocks(rows, await self.anow(), kind)

    async def aunblock(self, key: str, kind: str | None = None) -> int:
        if self._threaded:
            return await asyncio.to_thread(self.unblock, key, kind)
        if kind is None:
            return await self._aunblock_scan(self._pattern(key, None), key, None)
        name = self._tag(kind, key) + b":b"
        lifted = await self._acall(*self._unblock_command(name, key))
        self._forget(key, kind)
        await self._aannounce("unblock", kind, key)
        return int(lifted)

    async def aunblock_all(self, kind: str | None = None) -> int:
        if self._threaded:
            return await asyncio.to_thread(self.unblock_all, kind)
        return await self._aunblock_scan(self._pattern(None, kind), None, kind)

    async def _aunblock_scan(self, pattern: bytes, key: str | None, kind: str | None) -> int:
        names = await self._ascan(pattern)
        lifted = 0
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            replies = await asyncio.gather(
                *(self._acall(*self._unblock_command(name, key)) for name in chunk)
            )
            lifted += sum(int(r) for r in replies)
        self._forget(key, kind)
        await self._aannounce("unblock" if key is not None else "unblock_all", kind, key)
        return lifted


def _version(reply: Any) -> int:
    """The live configuration's version as stored (absent: 0)."""
    if reply is None:
        return 0
    try:
        version = int(reply)
    except (TypeError, ValueError):
        raise OverlayCorrupt(f"live configuration version is not a number: {reply!r:.40}") from None
    if not 0 <= version <= MAX_VERSION:
        raise OverlayCorrupt(f"live configuration version out of range: {str(version)[:40]}")
    return version


def _row_command(name: Any) -> _Command:
    return None, ("HMGET", name, "kind", "key", "reason", "since", "until")


def _live_blocks(rows: Iterable[Any], now: float, kind: str | None) -> list[Block]:
    """Blocks from HMGET rows (kind, key, reason, since, until), live ones, soonest end first."""
    found = []
    for row in rows:
        if row is None or row[0] is None or row[1] is None or row[4] is None:
            continue  # vanished between SCAN and HMGET
        block = Block(
            _text(row[0]),
            _text(row[1]),
            "" if row[2] is None else _text(row[2]),
            0.0 if row[3] is None else float(row[3]),
            float(row[4]),
        )
        if block.until > now and (kind is None or block.kind == kind):
            found.append(block)
    found.sort(key=lambda b: (b.until, b.kind, b.key))
    return found


def _seconds(name: str, value: float, *, zero: bool) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    if not ok or not (value >= 0 if zero else value > 0):
        bound = ">= 0" if zero else "> 0"
        raise option_error(name, f"must be a number of seconds {bound}, got {value!r}")
