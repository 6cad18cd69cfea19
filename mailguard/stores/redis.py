"""RedisStore: counters and blocks shared by every process and host.

With a :class:`~mailguard.MemoryStore` each worker counts alone, so a limit
is multiplied by the number of workers and a block on one host means nothing
on the next.  A RedisStore keeps the same state in one Redis server and gives
the answers a MemoryStore would give (the tests run random sequences of every
primitive against both on one FakeClock and compare them; a MemoryStore may
differ only when it has evicted a key for room, or when its clock stepped
back past the end of state it had already purged).  It needs the ``redis``
extra::

    store = RedisStore("redis://127.0.0.1:6379/0", prefix="mailguard:")
    store = RedisStore(redis.Redis(...))        # or a redis.asyncio.Redis
    store = RedisStore(client=sync_client, async_client=async_client)
    store = RedisStore(url, clock=FakeClock())  # tests: time from the clock

Connections
    The WSGI path uses redis-py's synchronous connections, the ASGI path
    ``redis.asyncio``.  From a URL both are made lazily, on first use, each
    with its own connection pool (one asyncio pool per event loop: an asyncio
    connection belongs to the loop that opened it), short socket timeouts
    (``socket_timeout``, default 0.25 s; an asyncio batch gets it as a
    whole) and no retries.  A client passed in lends its pool and the pool's
    settings (timeouts, TLS, credentials); a URL given too makes the client
    that was not.  Given only a synchronous
    client, the coroutines run its calls in a worker thread; given only an
    asyncio one, the synchronous methods raise ``RuntimeError``.  Clients
    made here are closed by :meth:`~RedisStore.close` (sync) and
    :meth:`~RedisStore.aclose` (this loop's and sync), e.g. at lifespan
    shutdown; clients passed in are left to their owner.  A forked child
    (``gunicorn --preload``) opens connections of its own.

    A decision is one round trip: one ``EVALSHA`` of a Lua script kept beside
    this module (``lua/<name>.lua``, each prefixed with ``lua/lib.lua`` when
    loaded).  Scripts are loaded when Redis first answers ``NOSCRIPT`` (a new
    or restarted server), then the call is repeated.  The synchronous path
    keeps a stack of idle connections taken from the pool, so a decision is
    one write and one read, without a pool lock or a health probe per call.
    The asyncio path batches: the decisions that concurrent requests ask for
    in one turn of the event loop are written as one pipeline (at most 4 in
    flight per loop; later requests wait for the next), in a task of its
    own.  A caller cancelled before its batch is written is left out of it;
    one cancelled later only loses its answer; the connection is never left
    with a reply half read.  A connection that fails is closed and handed
    back to the pool; an idle one that the server had closed meanwhile (its
    idle ``timeout``, a restart) is retried once on a new connection.

    Supported redis-py: 5.0.1 to 8.x (``scripts/test.sh`` runs the Redis
    tests against the oldest and the newest).  Only connection and pool
    methods present in all of them are used (``get_connection`` needs a
    command name before 5.3 and warns about one from 5.3: both are met).

Keys
    ``prefix + "{" + ns + ":" + key + "}:" + suffix``, e.g.
    ``mailguard:{dos:203.0.113.7}:w``.  Suffixes: ``w`` the sliding window
    (a list of the allowed requests' times, oldest first, never more than
    ``limit`` entries), ``b`` a block (a hash of ``kind``, ``key``,
    ``reason``, ``since``, ``until``), ``a`` a login streak and its attempts
    under way, ``o`` a key's recent offences (repeat offenders), ``s`` a
    :meth:`~RedisStore.swap` value.  Times are stored as ``%.17g`` text,
    which reads back as the same double.  A namespace must not contain
    ``:``, ``{`` or ``}``, nor the prefix braces (``ValueError``).  Blocks
    are listed and lifted by ``SCAN`` over ``prefix{*}:b`` (never ``KEYS``).

Redis Cluster
    All keys of one ``(ns, key)`` share the hash tag ``{ns:key}``, so every
    script touches one slot (a jailing ``hit`` reads the window and writes
    the block; a ``settle`` touches the streak, the block and the offences):
    the layout a Cluster needs.  The connections, though, go to one server
    (the URL's, or the given client's pool); a ``redis.RedisCluster`` client
    is not accepted yet: sending each call to its slot's node is the missing
    piece.

Time
    Without ``clock=``, time is the Redis server's (``TIME`` inside each
    script), so hosts with skewed clocks agree.  With a clock (a
    :class:`~mailguard.FakeClock` in tests), its reading is passed to each
    script instead.  Either clock stepping back is clamped by the sliding
    window to the newest recorded request, as in :mod:`mailguard.core`.

TTLs
    Every key expires when its state can no longer matter: a window
    ``window`` seconds after its newest request, a block at its end, a streak
    ``interval`` seconds after its last failure or when its last attempt
    under way lapses, offences after ``memory``, a swap value after its
    ``ttl``; a streak with nothing left to remember is deleted at once.
    Expiries are durations (``PEXPIRE``, ``SET PX``) in milliseconds, rounded
    up, plus 1 ms of grace on the server's clock.  Redis cannot follow an
    injected clock, so with ``clock=`` the durations run in real time and the
    grace is 1 s: a test clock that stands still never sees state vanish.

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
    closes the breaker, its failure opens it for another cooldown.  Recovery
    needs nothing: the trial reconnects and the scripts are reloaded.  A call
    that timed out may still have run on the server.

Block cache
    Once this process has seen a live block (a refused ``hit`` with ``jail``
    or ``attempt``, a jail or block it made, a ``get_block``), it keeps it in
    a local cache of at most ``block_cache_size`` entries and refuses the
    key without a round trip until the block ends or the entry is
    ``block_cache_ttl`` seconds old (default 2), whichever comes first; then
    the next request asks Redis again.  So a block lifted or shortened
    elsewhere (``mailguard unblock`` on an admin host) is obeyed by every
    process within ``block_cache_ttl`` seconds, and a lift made through this
    store at once.  On the server's clock, a cached block's end is counted on
    this host's monotonic clock from Redis's answer, so local clock skew
    does not matter.  The cache serves ``hit`` with ``jail > 0``, ``attempt``
    and ``get_block``, also while Redis is unreachable;
    ``block_cache_ttl=0`` turns it off.

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
import hashlib
import inspect
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    ConnectionError,
    InvalidResponse,
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

from ..core import Block, Clock, wait_until
from ..options import Seconds, option_error
from .base import BLOCKED, JAILED, OK, OVER, Store, StoreBug, StoreError

__all__ = ["RedisStore"]

_MAX_IDLE = 64  # idle sync connections kept; more go back to the pool
_MAX_BATCH = 512  # decisions written in one asyncio pipeline
_MAX_INFLIGHT = 4  # asyncio pipelines in flight per event loop
_SCAN_COUNT = 1000
_CHUNK = 500  # admin commands per round trip

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
_OUTAGE_REPLIES = ("MISCONF", "BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN")


# ------------------------------------------------------------------ wire
def _arg(value: Any) -> bytes:
    kind = type(value)
    if kind is str:
        data: bytes = value.encode("utf-8", "surrogatepass")  # never fails on odd request text
    elif kind is float:
        data = repr(value).encode()  # the shortest text that round-trips
    elif kind is bytes:
        data = value
    else:
        data = b"%d" % value
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _pack(*args: Any) -> bytes:
    """One command in the Redis protocol (what redis-py's packer makes, minus its layers)."""
    return b"*%d\r\n" % len(args) + b"".join([_arg(a) for a in args])


def _lua(name: str) -> bytes:
    return resources.files(__package__ or "mailguard.stores").joinpath(f"lua/{name}").read_bytes()


_LIB = _lua("lib.lua")


class _Script:
    """One Lua file beside this module (after ``lib.lua``), called by its SHA1."""

    __slots__ = ("head", "load", "name", "sha", "source")

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _LIB + b"\n" + _lua(f"{name}.lua")
        self.sha = hashlib.sha1(self.source).hexdigest()
        self.head = _arg("EVALSHA") + _arg(self.sha)
        self.load = _pack("SCRIPT", "LOAD", self.source)

    def call(self, *args: Any) -> bytes:
        """``EVALSHA sha numkeys keys... args...``, packed."""
        return b"*%d\r\n" % (len(args) + 2) + self.head + b"".join([_arg(a) for a in args])


_HIT = _Script("hit")
_PEEK = _Script("peek")
_ATTEMPT = _Script("attempt")
_SETTLE = _Script("settle")
_SWAP = _Script("swap")
_BLOCK = _Script("block")
_GET_BLOCK = _Script("get_block")
_UNBLOCK = _Script("unblock")
_SCRIPTS = (_HIT, _PEEK, _ATTEMPT, _SETTLE, _SWAP, _BLOCK, _GET_BLOCK, _UNBLOCK)
_TIME = _pack("TIME")


def _text(value: Any) -> str:
    """A reply as text: what ``_arg`` encoded reads back the same."""
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


def _safe_url(url: str) -> str:
    """``url`` with any password masked, for repr and messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<url>"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _server_time(reply: Any) -> float:
    sec, usec = reply
    return int(sec) + int(usec) / 1_000_000


# --------------------------------------------------------------- breaker
class _Breaker:
    """Fail fast for ``cooldown`` seconds after an outage, then let one call try.

    ``open_until`` is 0.0 while closed, which is all a call checks.  Once it
    has passed, the first call to come is the trial and re-arms it, so the
    others keep failing fast until the trial answers (closing the breaker) or
    fails (opening it again); a trial that never answers (cancelled) just
    lets another one try a cooldown later.  ``outages`` counts openings, so
    the lanes know when to drop idle connections that may be dead.
    """

    __slots__ = ("cooldown", "error", "lock", "open_until", "outages")

    def __init__(self, cooldown: float) -> None:
        self.cooldown = cooldown
        self.open_until = 0.0
        self.outages = 0
        self.error = ""
        self.lock = threading.Lock()

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

    def opened(self, exc: BaseException) -> None:
        with self.lock:
            self.open_until = time.monotonic() + self.cooldown
            self.outages += 1
            self.error = f"{type(exc).__name__}: {exc}"


# ----------------------------------------------------------------- lanes
def _take_args(pool: Any) -> tuple[str, ...]:
    """What ``pool.get_connection`` needs: a command name before redis-py 5.3, nothing after.

    From 5.3 any argument is deprecated (a warning per call); before, the
    command name is required (it was never used by a plain pool).
    """
    try:
        param = inspect.signature(pool.get_connection).parameters.get("command_name")
    except (TypeError, ValueError):  # no signature to read: assume the current API
        return ()
    if param is not None and param.default is inspect.Parameter.empty:
        return ("EVALSHA",)
    return ()


def _talk(conn: Any, commands: Sequence[bytes]) -> list[Any]:
    """Write ``commands`` at once on a sync connection; read their replies."""
    conn.send_packed_command(commands if len(commands) == 1 else (b"".join(commands),))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # one command's error; the others' replies follow
            replies.append(exc)
    return replies


class _SyncLane:
    """The synchronous path's connections: a LIFO stack of idle ones.

    A connection is taken from the stack for one exchange and put back after
    every reply is read, so a thread never shares one.  One that fails
    mid-exchange is closed first (it reconnects on its next use): a
    connection is never reused with a reply still in flight.  An idle
    connection the server has closed meanwhile (its ``timeout``, a restart)
    is retried once, reconnected; after an outage the idle ones are closed.
    """

    def __init__(self, client: Any, owned: bool, breaker: _Breaker) -> None:
        self.client = client
        self.owned = owned
        self.pool = client.connection_pool
        self.take_args = _take_args(self.pool)
        self.breaker = breaker
        self.outages = breaker.outages
        self.idle: list[Any] = []  # each finished its last exchange cleanly

    def exchange(self, commands: Sequence[bytes]) -> list[Any]:
        if self.outages != self.breaker.outages:
            self.outages = self.breaker.outages
            idle, self.idle = self.idle, []
            for conn in idle:
                self.drop(conn)
        try:
            conn = self.idle.pop()
            reused = True  # was open after its last exchange; the server may have closed it
        except IndexError:
            conn = self.pool.get_connection(*self.take_args)  # connected by the pool
            reused = False
        try:
            try:
                replies = _talk(conn, commands)
            except ConnectionError:
                if not reused:
                    raise
                conn.disconnect()  # closed by the server while idle: once more, anew
                replies = _talk(conn, commands)
        except BaseException:
            self.drop(conn)
            raise
        self.put(conn)
        return replies

    def drop(self, conn: Any) -> None:
        """Close ``conn`` and hand it back to the pool (which reconnects it when next taken)."""
        conn.disconnect()
        self.pool.release(conn)

    def put(self, conn: Any) -> None:
        if len(self.idle) < _MAX_IDLE:
            self.idle.append(conn)
        else:
            self.pool.release(conn)

    def close(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            self.pool.release(conn)
        if self.owned:
            self.client.close()


_Waiting = tuple[bytes, "asyncio.Future[Any]"]


class _AsyncLane:
    """One event loop's asyncio connections and its batch of waiting decisions.

    :meth:`submit` queues a packed command and returns a future; the first
    submit in a turn of the loop schedules :meth:`flush` for the end of the
    turn, which writes everything queued as one pipeline in its own task.
    Callers only ever await their future, so a cancelled caller cannot
    interrupt a pipeline half way: its command is skipped if not yet written,
    its answer dropped otherwise.
    """

    def __init__(self, store: RedisStore, client: Any, owned: bool) -> None:
        self.store = store
        self.client = client
        self.owned = owned
        # a client made here has no socket timeout of its own: the lane times each batch
        self.timeout = store.socket_timeout if owned else None
        self.pool = client.connection_pool
        self.take_args = _take_args(self.pool)
        self.loop = asyncio.get_running_loop()
        self.idle: list[Any] = []
        self.outages = store._breaker.outages
        self.queue: list[_Waiting] = []
        self.scheduled = False
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, packed: bytes) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        self.queue.append((packed, future))
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
            commands = [packed for packed, _ in batch]
            if self.timeout is None:
                replies = await self.exchange(commands)
            else:  # one deadline for the whole batch (cheaper than one per reply)
                replies = await asyncio.wait_for(self.exchange(commands), self.timeout)
        except BaseException as exc:
            error = store._failure(exc)
            if error is exc:  # the batch itself was cancelled (its loop is closing)
                error = StoreError("redis call abandoned: its batch was cancelled")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        store._success()
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                if isinstance(reply, BaseException):
                    future.set_exception(store._failure(reply))
                else:
                    future.set_result(reply)

    async def exchange(self, commands: list[bytes]) -> list[Any]:
        breaker = self.store._breaker
        if self.outages != breaker.outages:
            self.outages = breaker.outages
            idle, self.idle = self.idle, []
            for conn in idle:
                await self.drop(conn)
        try:
            conn = self.idle.pop()
            reused = True  # was open after its last exchange; the server may have closed it
        except IndexError:
            conn = await self.pool.get_connection(*self.take_args)  # connected by the pool
            reused = False
        try:
            try:
                replies = await self._write_read(conn, commands)
            except ConnectionError:
                if not reused:
                    raise
                await conn.disconnect(nowait=True)  # closed by the server: once more, anew
                replies = await self._write_read(conn, commands)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                await self._write_read(conn, [script.load for script in _SCRIPTS])
                again = await self._write_read(conn, [commands[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException:
            await self.drop(conn)
            raise
        self.idle.append(conn)  # never more than _MAX_INFLIGHT of them
        return replies

    async def drop(self, conn: Any) -> None:
        """Close ``conn`` and hand it back to the pool (which reconnects it when next taken)."""
        await conn.disconnect(nowait=True)
        await self.pool.release(conn)

    @staticmethod
    async def _write_read(conn: Any, commands: list[bytes]) -> list[Any]:
        await conn.send_packed_command(b"".join(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await conn.read_response())
            except ResponseError as exc:  # one command's error; the others' replies follow
                replies.append(exc)
        return replies

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        idle, self.idle = self.idle, []
        for conn in idle:
            await self.pool.release(conn)
        if self.owned:
            await self.client.aclose()


_STORES: weakref.WeakSet[RedisStore] = weakref.WeakSet()


def _after_fork() -> None:
    # A child must not share its parent's sockets: forget the connections
    # (without closing them: they are the parent's).
    for store in list(_STORES):
        store._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


# ----------------------------------------------------------------- store
class RedisStore(Store):
    """Counters and blocks in Redis, shared by every process that uses it.

    :param url: a ``redis://``, ``rediss://`` or ``unix://`` URL; the
        clients not given below are made from it, lazily.  A
        ``redis.Redis`` or ``redis.asyncio.Redis`` may be passed here instead
        (``RedisStore(client)``).
    :param prefix: put before every key (default ``"mailguard:"``); give
        two deployments sharing a Redis database different prefixes.
    :param client: a ready ``redis.Redis`` for the synchronous (WSGI) path.
    :param async_client: a ready ``redis.asyncio.Redis`` for the asyncio
        (ASGI) path.
    :param clock: where time comes from (default: the Redis server's
        ``TIME``); pass a :class:`~mailguard.FakeClock` in tests.
    :param socket_timeout: seconds a command may take before it fails
        (default 0.25), for clients made from ``url``.
    :param connect_timeout: seconds to open a connection (default:
        ``socket_timeout``), for clients made from ``url``.
    :param breaker_cooldown: seconds calls fail at once after an outage
        before one is tried again (default 1.0; 0 tries every call).
    :param block_cache_ttl: seconds a locally cached block is trusted
        before Redis is asked again (default 2.0; 0 turns the cache off).
        An unblock made elsewhere reaches this process within this time.
    :param block_cache_size: the most blocks cached (default 10,000).
    :param refusal_cache_size: the most refusals cached (default 10,000; 0
        turns the cache off): a key refused by ``hit`` is refused again
        without a round trip until its next slot frees (see "Refusal cache").
    """

    def __init__(
        self,
        url: str | redis.Redis | redis.asyncio.Redis | None = None,
        *,
        prefix: str = "mailguard:",
        client: redis.Redis | None = None,
        async_client: redis.asyncio.Redis | None = None,
        clock: Clock | None = None,
        socket_timeout: Seconds = 0.25,
        connect_timeout: Seconds | None = None,
        breaker_cooldown: Seconds = 1.0,
        block_cache_ttl: Seconds = 2.0,
        block_cache_size: int = 10_000,
        refusal_cache_size: int = 10_000,
    ) -> None:
        if isinstance(url, redis.asyncio.Redis):
            if async_client is not None:
                raise option_error("async_client", "given twice (as url and as async_client)")
            url, async_client = None, url
        elif isinstance(url, redis.Redis):
            if client is not None:
                raise option_error("client", "given twice (as url and as client)")
            url, client = None, url
        elif url is not None and not isinstance(url, str):
            raise option_error("url", f"must be a Redis URL or client, got {url!r}")
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise option_error(
                "url", f"must start with redis://, rediss:// or unix://, got {url!r}"
            )
        if url is None and client is None and async_client is None:
            raise ValueError("RedisStore needs a url, a client or an async_client")
        if client is not None and not isinstance(client, redis.Redis):
            raise option_error("client", f"must be a redis.Redis, got {client!r}")
        if async_client is not None and not isinstance(async_client, redis.asyncio.Redis):
            raise option_error(
                "async_client", f"must be a redis.asyncio.Redis, got {async_client!r}"
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
        self.prefix = prefix
        self.socket_timeout = float(socket_timeout)
        self.connect_timeout = float(socket_timeout if connect_timeout is None else connect_timeout)
        self.breaker_cooldown = float(breaker_cooldown)
        self.block_cache_ttl = float(block_cache_ttl)
        self.block_cache_size = block_cache_size if block_cache_ttl > 0 else 0
        self.refusal_cache_size = refusal_cache_size
        self._clock = clock
        self._client = client
        self._async_client = async_client
        # Only a sync client: the coroutines run its calls in a worker thread.
        self._threaded = async_client is None and url is None
        self._breaker = _Breaker(self.breaker_cooldown)
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()
        self._sync: _SyncLane | None = None
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncLane] = (
            weakref.WeakKeyDictionary()
        )
        # (ns, key) -> (block, trusted until, ends at): both times time.monotonic()
        self._cache: dict[tuple[str, str], tuple[Block, float, float]] = {}
        # (ns, key) -> (limit, window, until, since): see _refused
        self._refusals: OrderedDict[tuple[str, str], tuple[int, float, float, float]] = (
            OrderedDict()
        )
        self._cache_lock = threading.Lock()
        _STORES.add(self)

    def __repr__(self) -> str:
        where = _safe_url(self.url) if self.url else "client"
        return f"RedisStore({where!r}, prefix={self.prefix!r})"

    # -------------------------------------------------------- connections
    def _sync_lane(self) -> _SyncLane:
        with self._lock:
            if self._sync is None:
                if self._client is not None:
                    self._sync = _SyncLane(self._client, False, self._breaker)
                elif self.url is not None:
                    made = redis.Redis.from_url(
                        self.url,
                        socket_timeout=self.socket_timeout,
                        socket_connect_timeout=self.connect_timeout,
                        retry=Retry(NoBackoff(), 0),
                    )
                    self._sync = _SyncLane(made, True, self._breaker)
                else:
                    raise RuntimeError(
                        "RedisStore was given only an async_client: its synchronous (WSGI) "
                        "methods need a url or a client too"
                    )
            return self._sync

    def _async_lane(self) -> _AsyncLane:
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(loop)
        if lane is None:
            if self._async_client is not None:
                lane = _AsyncLane(self, self._async_client, owned=False)
            else:
                assert self.url is not None
                made = redis.asyncio.Redis.from_url(
                    self.url,
                    socket_timeout=None,  # the lane gives each batch socket_timeout instead
                    socket_connect_timeout=self.connect_timeout,
                    retry=AsyncRetry(NoBackoff(), 0),
                )
                lane = _AsyncLane(self, made, owned=True)
            self._lanes[loop] = lane
        return lane

    def _forked(self) -> None:
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._breaker.lock = threading.Lock()
        if self._sync is not None:
            self._sync.idle = []
            if self._sync.owned:
                self._sync = None
        self._lanes = weakref.WeakKeyDictionary()

    def close(self) -> None:
        """Close the synchronous connections (those made here); they reopen if used again."""
        with self._lock:
            lane, self._sync = self._sync, None
        if lane is not None:
            lane.close()

    async def aclose(self) -> None:
        """Close this event loop's connections and the synchronous ones (those made here)."""
        lane = self._lanes.pop(asyncio.get_running_loop(), None)
        if lane is not None:
            await lane.close()
        self.close()

    # ------------------------------------------------------------- calls
    def _success(self) -> None:
        if self._breaker.open_until:
            self._breaker.closed()

    def _failure(self, exc: BaseException) -> BaseException:
        """Record a failed call; return what the caller should raise."""
        if isinstance(exc, StoreError):
            return exc
        if not isinstance(exc, Exception):  # cancelled, interrupted: no verdict on the store
            return exc
        if _is_outage(exc):
            self._breaker.opened(exc)
            return StoreError(f"redis unavailable: {type(exc).__name__}: {exc}")
        if isinstance(exc, RedisError):  # the server answered, with an error
            self._success()
            return StoreError(f"redis error: {type(exc).__name__}: {exc}")
        # Neither an outage nor Redis's answer: a defect here or in redis-py
        # (an API this code misuses).  Never an outage: the breaker is left as it is.
        bug = StoreBug(f"redis store bug: {type(exc).__name__}: {exc}")
        bug.__cause__ = exc
        return bug

    def _call(self, packed: bytes) -> Any:
        """One packed command on the synchronous path: one round trip."""
        return self._call_many((packed,))[0]

    def _call_many(self, commands: Sequence[bytes]) -> list[Any]:
        """Commands written at once on the synchronous path; their replies."""
        if self._breaker.open_until:
            self._breaker.admit()
        lane = self._sync or self._sync_lane()
        try:
            replies = lane.exchange(commands)
            for reply in replies:
                if isinstance(reply, ResponseError):
                    if isinstance(reply, NoScriptError):  # a new or restarted server
                        lane.exchange([script.load for script in _SCRIPTS])
                        replies = lane.exchange(commands)
                    break
            for reply in replies:
                if isinstance(reply, ResponseError):
                    raise reply
        except BaseException as exc:
            error = self._failure(exc)
            if error is exc:
                raise
            raise error from exc
        if self._breaker.open_until:
            self._breaker.closed()
        return replies

    async def _acall(self, packed: bytes) -> Any:
        """One packed command on the asyncio path, batched with its neighbours."""
        if self._breaker.open_until:
            self._breaker.admit()
        return await self._async_lane().submit(packed)

    def _tag(self, ns: str, key: str) -> str:
        """``prefix{ns:key}``: every key of (ns, key) starts so, one hash slot."""
        if ns not in self._namespaces:
            if not isinstance(ns, str) or not ns or ":" in ns or "{" in ns or "}" in ns:
                raise ValueError(f"ns: must be a non-empty name without ':' or braces, got {ns!r}")
            self._namespaces.add(ns)
        return f"{self.prefix}{{{ns}:{key}}}"

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
            return None
        return block, left

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
            cache[name] = (block, mono + self.block_cache_ttl, mono + left)

    def _forget(self, key: str | None, kind: str | None) -> None:
        """Drop the cached blocks and refusals of ``key`` / ``kind`` (None: any)."""
        with self._cache_lock:
            for cache in (self._cache, self._refusals):
                for name in [
                    n
                    for n in cache
                    if (key is None or n[1] == key) and (kind is None or n[0] == kind)
                ]:
                    del cache[name]

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
    # Each primitive is a packed EVALSHA (built by a *_command method, shared
    # by the sync and async faces) and a reply parser (*_result).  Scripts
    # answer with one space-separated string; see the headers of lua/*.lua.
    def _blocked(self, ns: str, key: str, fields: list[Any]) -> tuple[int, int, float]:
        """A BLOCKED/JAILED reply 'code 0 wait now since until reason': cache it."""
        now = float(fields[3])
        reason = _text(fields[6]) if len(fields) > 6 else ""
        self._remember(Block(ns, key, reason, float(fields[4]), float(fields[5])), now)
        return int(fields[0]), 0, float(fields[2])

    def _hit_command(self, ns: str, key: str, limit: int, window: float, jail: float) -> bytes:
        tag = self._tag(ns, key)
        if jail > 0.0:
            return _HIT.call(
                2, tag + ":w", tag + ":b", self._now_arg(), limit, window, jail, ns, key
            )
        return _HIT.call(1, tag + ":w", self._now_arg(), limit, window, 0)

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

    def _attempt_command(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> bytes:
        tag = self._tag(ns, key)
        return _ATTEMPT.call(
            2, tag + ":a", tag + ":b", self._now_arg(), limit, interval, pending_ttl
        )

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
    ) -> bytes:
        tag = self._tag(ns, key)
        return _SETTLE.call(
            3, tag + ":a", tag + ":b", tag + ":o",
            self._now_arg(), 1 if failed else 0, limit, interval, block_for,
            1 if reset else 0, factor, max_block, memory, ns, key,
        )  # fmt: skip

    def _settle_result(self, ns: str, key: str, reply: Any) -> tuple[int, int, float]:
        fields = reply.split()
        code, streak_now, blocked_for = int(fields[0]), int(fields[1]), float(fields[2])
        kept = len(fields) > 4 and int(fields[4]) == 1
        if code == JAILED and not kept:
            # the new block is the one in force (a later block kept instead is
            # left for the next request to read from Redis, whole)
            now = float(fields[3])
            self._remember(Block(ns, key, "failures", now, now + blocked_for), now)
        return code, streak_now, blocked_for

    def _swap_command(self, ns: str, key: str, value: str, ttl: float) -> bytes:
        return _SWAP.call(1, self._tag(ns, key) + ":s", self._now_arg(), value, ttl)

    def _block_command(self, ns: str, key: str, seconds: float, reason: str) -> bytes:
        tag = self._tag(ns, key)
        return _BLOCK.call(1, tag + ":b", self._now_arg(), seconds, reason, ns, key)

    def _block_result(self, ns: str, key: str, seconds: float, reason: str, reply: Any) -> Block:
        now = float(reply)
        made = Block(ns, key, reason, now, now + seconds)
        self._remember(made, now)
        return made

    def _get_block_command(self, ns: str, key: str) -> bytes:
        return _GET_BLOCK.call(1, self._tag(ns, key) + ":b", self._now_arg())

    def _get_block_result(self, ns: str, key: str, reply: Any) -> Block | None:
        fields = reply.split(None, 3)
        if len(fields) < 3:
            self._cache.pop((ns, key), None)
            return None
        reason = _text(fields[3]) if len(fields) > 3 else ""
        found = Block(ns, key, reason, float(fields[1]), float(fields[2]))
        self._remember(found, float(fields[0]))
        return found

    def _unblock_command(self, name: Any, key: str | None) -> bytes:
        return _UNBLOCK.call(1, name, self._now_arg(), key or "")

    def _pattern(self, key: str | None, kind: str | None) -> bytes:
        """SCAN MATCH for the block keys of ``key`` / ``kind`` (None: any)."""
        if key is None and kind is None:
            inner = "*"
        else:
            inner = (
                ("*" if kind is None else _glob(kind)) + ":" + ("*" if key is None else _glob(key))
            )
        return f"{_glob(self.prefix)}{{{inner}}}:b".encode("utf-8", "surrogatepass")

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
        reply = self._call(self._hit_command(ns, key, limit, window, jail))
        if reply[0] == 48:  # b"0": allowed, the common answer
            fields = reply.split()
            return OK, int(fields[1]), float(fields[2])
        return self._hit_result(ns, key, limit, window, reply, sent)

    def peek(self, ns: str, key: str, window: float) -> int:
        tag = self._tag(ns, key)
        return int(self._call(_PEEK.call(1, tag + ":w", self._now_arg(), window)))

    def attempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return BLOCKED, 0, cached[1]
        reply = self._call(self._attempt_command(ns, key, limit, interval, pending_ttl))
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
        return self._settle_result(ns, key, self._call(command))

    def swap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        reply = self._call(self._swap_command(ns, key, value, ttl))
        return None if reply is None else _text(reply)

    # ------------------------------------------------------------- blocks
    def block(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        reply = self._call(self._block_command(ns, key, seconds, reason))
        return self._block_result(ns, key, seconds, reason, reply)

    def get_block(self, ns: str, key: str) -> Block | None:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return cached[0]
        return self._get_block_result(ns, key, self._call(self._get_block_command(ns, key)))

    # Admin operations (listing and lifting blocks) are rare: they SCAN the
    # block keys, then read or lift them in chunks of _CHUNK per round trip.
    def _scan(self, pattern: bytes) -> list[Any]:
        names: dict[Any, None] = {}  # SCAN may return a key twice
        cursor: Any = b"0"
        while True:
            cursor, found = self._call(_scan_command(cursor, pattern))
            names.update(dict.fromkeys(found))
            if int(cursor) == 0:
                return list(names)

    def blocks(self, kind: str | None = None) -> list[Block]:
        names = self._scan(self._pattern(None, kind))
        rows: list[Any] = []
        for start in range(0, len(names), _CHUNK):
            rows += self._call_many([_row_command(n) for n in names[start : start + _CHUNK]])
        now = float(self._clock()) if self._clock is not None else _server_time(self._call(_TIME))
        return _live_blocks(rows, now, kind)

    def unblock(self, key: str, kind: str | None = None) -> int:
        if kind is None:
            return self._unblock_scan(self._pattern(key, None), key, None)
        lifted = self._call(self._unblock_command(self._tag(kind, key) + ":b", key))
        self._forget(key, kind)  # after the lift: a request may have cached it meanwhile
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
        return lifted

    def now(self) -> float:
        if self._clock is not None:
            return float(self._clock())
        return _server_time(self._call(_TIME))

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
        reply = await self._acall(self._hit_command(ns, key, limit, window, jail))
        return self._hit_result(ns, key, limit, window, reply, sent)

    async def apeek(self, ns: str, key: str, window: float) -> int:
        if self._threaded:
            return await asyncio.to_thread(self.peek, ns, key, window)
        tag = self._tag(ns, key)
        return int(await self._acall(_PEEK.call(1, tag + ":w", self._now_arg(), window)))

    async def aattempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return BLOCKED, 0, cached[1]
        if self._threaded:
            return await asyncio.to_thread(self.attempt, ns, key, limit, interval, pending_ttl)
        reply = await self._acall(self._attempt_command(ns, key, limit, interval, pending_ttl))
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
        return self._settle_result(ns, key, await self._acall(command))

    async def aswap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        if self._threaded:
            return await asyncio.to_thread(self.swap, ns, key, value, ttl)
        reply = await self._acall(self._swap_command(ns, key, value, ttl))
        return None if reply is None else _text(reply)

    async def ablock(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        if self._threaded:
            return await asyncio.to_thread(self.block, ns, key, seconds, reason)
        reply = await self._acall(self._block_command(ns, key, seconds, reason))
        return self._block_result(ns, key, seconds, reason, reply)

    async def aget_block(self, ns: str, key: str) -> Block | None:
        if self._cache:
            cached = self._cached(ns, key)
            if cached is not None:
                return cached[0]
        if self._threaded:
            return await asyncio.to_thread(self.get_block, ns, key)
        reply = await self._acall(self._get_block_command(ns, key))
        return self._get_block_result(ns, key, reply)

    async def _ascan(self, pattern: bytes) -> list[Any]:
        names: dict[Any, None] = {}
        cursor: Any = b"0"
        while True:
            cursor, found = await self._acall(_scan_command(cursor, pattern))
            names.update(dict.fromkeys(found))
            if int(cursor) == 0:
                return list(names)

    async def ablocks(self, kind: str | None = None) -> list[Block]:
        if self._threaded:
            return await asyncio.to_thread(self.blocks, kind)
        names = await self._ascan(self._pattern(None, kind))
        rows: list[Any] = []
        for start in range(0, len(names), _CHUNK):  # each chunk is batched into one pipeline
            chunk = names[start : start + _CHUNK]
            rows += await asyncio.gather(*(self._acall(_row_command(n)) for n in chunk))
        if self._clock is not None:
            now = float(self._clock())
        else:
            now = _server_time(await self._acall(_TIME))
        return _live_blocks(rows, now, kind)

    async def aunblock(self, key: str, kind: str | None = None) -> int:
        if self._threaded:
            return await asyncio.to_thread(self.unblock, key, kind)
        if kind is None:
            return await self._aunblock_scan(self._pattern(key, None), key, None)
        lifted = await self._acall(self._unblock_command(self._tag(kind, key) + ":b", key))
        self._forget(key, kind)
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
                *(self._acall(self._unblock_command(name, key)) for name in chunk)
            )
            lifted += sum(int(r) for r in replies)
        self._forget(key, kind)
        return lifted


def _scan_command(cursor: Any, pattern: bytes) -> bytes:
    return _pack("SCAN", cursor, "MATCH", pattern, "COUNT", _SCAN_COUNT)


def _row_command(name: Any) -> bytes:
    return _pack("HMGET", name, "kind", "key", "reason", "since", "until")


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
