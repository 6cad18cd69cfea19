"""The invalidation channel: a lift made in one process, heard by all at once.

Every :class:`~mailguard.RedisStore` keeps the blocks it has seen in a local
cache, so a blocked client is refused without a round trip.  A block lifted
(``mailguard unblock``) or replaced elsewhere must reach those caches at
once: the process that changes a block publishes a short message on a Redis
pub/sub channel under the store's prefix (``mailguard:channel``), and every
process listens on it through :class:`Channel`, a daemon thread with
connections of its own, which drops the cached entries a message names.

Messages
    One JSON object, at most :data:`MAX_MESSAGE` bytes, versioned::

        {"v": 1, "op": "unblock", "kind": "login", "key": "203.0.113.7"}
        {"v": 1, "op": "unblock", "kind": null, "key": "203.0.113.7"}   # every kind
        {"v": 1, "op": "unblock_all", "kind": null}                     # or one kind
        {"v": 1, "op": "block", "kind": "login", "key": "203.0.113.7"}  # made or replaced
        {"v": 1, "op": "config", "kind": null, "version": 7}            # live configuration

    plus ``"from"``, a token naming the sending store object in its process
    (it ignores its own messages: it has already done what they say).
    ``v`` is the envelope's version; ``op`` says what the other fields are
    (:data:`OPS`).  ``config`` says the live configuration document has
    changed (:mod:`mailguard.live`): it carries the new version only, and
    every process reads the document from the store itself, so a forged one
    costs a read and changes nothing.  A new operation is one more entry
    there; a listener that does not know an operation, or a
    later version, ignores the message.  Anyone who can reach Redis can
    publish, so :func:`parse` trusts nothing: a message that is not exactly
    one of these shapes is ignored, and a valid one can only make a process
    *forget* cached entries (ask Redis again), never refuse or trust more.

The thread
    Started lazily (by the store, at its first connection), a daemon; a
    forked child starts its own.  It subscribes through one connection and
    keeps a second (the same client's pool) for the store's small
    maintenance commands (:meth:`Listener._channel_tick`).  It sends a
    ``PING`` on the subscription every :data:`PING_EVERY` seconds; no answer
    within :data:`PONG_DEADLINE`, a closed connection (``CLIENT KILL TYPE
    pubsub``, a restart) or any error counts as lost: the listener is told
    (and falls back to trusting cached blocks ``block_cache_ttl`` seconds, as
    without a channel), and the thread subscribes again with a backoff from
    50 ms to 2 s.  A connection that redis-py re-established by itself (a
    client with retries) counts as lost and found again: messages may have
    been missed in between.  The thread holds only a weak reference to its
    listener and ends when the listener is gone or :meth:`Channel.stop` is
    called (``close()`` / ``aclose()``).

Redis Cluster broadcasts ``PUBLISH`` to every node, so one subscription
through any node hears every message (classic, not sharded, pub/sub).  With
a cluster client, the subscription goes through the node serving the
channel name's slot; when it fails, the thread asks the cluster for its slot
map again before subscribing anew (so it moves to a live node).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "MAX_MESSAGE",
    "OPS",
    "PING_EVERY",
    "PONG_DEADLINE",
    "VERSION",
    "Channel",
    "Listener",
    "Message",
    "encode",
    "parse",
]

VERSION = 1
"""The envelope version this code writes and reads."""

MAX_MESSAGE = 4096
"""Longer messages are ignored unread."""

_MAX_FIELD = 1024  # characters in a kind or key

OPS: dict[str, tuple[bool, bool]] = {
    # op: (kind required, key required); a field not required may be null
    "block": (True, True),
    "unblock": (False, True),
    "unblock_all": (False, False),
    "config": (False, False),
}
"""The operations understood, and which of ``kind`` / ``key`` each needs."""

TICK = 0.1
"""Seconds between the thread's turns (waiting for a message meanwhile)."""

PING_EVERY = 1.0
"""Seconds between two PINGs on the subscription."""

PONG_DEADLINE = 2.0
"""Seconds a PING may go unanswered before the subscription counts as lost."""

_BACKOFF = (0.05, 2.0)  # first and longest wait between two subscription attempts

_log = logging.getLogger("mailguard.store")


@dataclass(frozen=True, slots=True)
class Message:
    """A parsed message: ``op`` and the block it names (None: any)."""

    op: str
    kind: str | None = None
    key: str | None = None
    origin: str | None = None
    version: int | None = None
    """``config`` only: the document version announced (a hint: each process
    reads the document itself, see :mod:`mailguard.live`)."""


_MAX_VERSION = 2**53


def encode(
    op: str,
    kind: str | None = None,
    key: str | None = None,
    origin: str | None = None,
    version: int | None = None,
) -> bytes:
    """A message as published: compact JSON (ASCII, so odd keys survive as escapes)."""
    if op not in OPS:
        raise ValueError(f"unknown channel operation {op!r}")
    body: dict[str, Any] = {"v": VERSION, "op": op, "kind": kind}
    if op == "config":
        body["version"] = version
    elif op != "unblock_all":
        body["key"] = key
    if origin is not None:
        body["from"] = origin
    return json.dumps(body, separators=(",", ":")).encode("ascii")


def _field(body: dict[str, Any], name: str, required: bool) -> tuple[bool, str | None]:
    """(valid, value) of an optional-or-required short string field."""
    value = body.get(name)
    if value is None:
        return not required, None
    if type(value) is not str or not value or len(value) > _MAX_FIELD:
        return False, None
    return True, value


def _no_constants(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")  # NaN, Infinity: refused


def parse(data: object) -> Message | None:
    """The message in ``data`` (bytes or text from the channel), or None when
    it is not one this version understands exactly.  Never raises."""
    try:
        if isinstance(data, (bytes, bytearray, memoryview)):
            if len(data) > MAX_MESSAGE:
                return None
            text = bytes(data).decode("utf-8")
        elif isinstance(data, str):
            if len(data) > MAX_MESSAGE:
                return None
            text = data
        else:
            return None
        body = json.loads(text, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError, TypeError):
        return None
    if type(body) is not dict:
        return None
    version = body.get("v")
    op = body.get("op")
    if type(version) is not int or version != VERSION or type(op) is not str or op not in OPS:
        return None
    kind_required, key_required = OPS[op]
    ok_kind, kind = _field(body, "kind", kind_required)
    ok_key, key = _field(body, "key", key_required)
    ok_origin, origin = _field(body, "from", False)
    if not (ok_kind and ok_key and ok_origin):
        return None
    if op in ("unblock_all", "config") and "key" in body:
        return None  # not a shape this version writes
    version = None
    if op == "config":
        version = body.get("version")
        if type(version) is not int or not 0 < version < _MAX_VERSION or kind is not None:
            return None
    elif "version" in body:
        return None
    return Message(op, kind, key, origin, version)


class Listener(Protocol):
    """What a :class:`Channel` reports to (a RedisStore)."""

    def _channel_heard(self, message: Message) -> None: ...

    def _channel_joined(self) -> None: ...

    def _channel_lost(self, error: str) -> None: ...

    def _channel_tick(self, client: Any) -> None: ...


class Channel:
    """A daemon thread subscribed to ``name``, reporting to ``listener``.

    :param name: the channel.
    :param connect: makes the synchronous redis-py client the thread uses
        (its pool gives one connection to the subscription, one to the
        commands of :meth:`Listener._channel_tick`); called again after a
        failure.  Make it with no retries of its own where you can.
    :param listener: told of messages, of the subscription's state, and
        ticked every :data:`TICK` seconds; held weakly.
    :param owned: close the client ``connect`` made when the thread ends
        (False for a client lent by its owner).
    """

    def __init__(
        self, name: str, connect: Callable[[], Any], listener: Listener, *, owned: bool = True
    ) -> None:
        self.name = name
        self._connect = connect
        self._owned = owned
        self._listener = weakref.ref(listener)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._client: Any = None
        self._connects = 0  # connections of the current subscription
        self.live = False
        """Subscribed, and answering PINGs."""

    def start(self) -> None:
        """Start the thread (again after :meth:`stop`); once per process."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._run, name=f"mailguard-channel {self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread and close its connections (made by ``connect``)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------ thread
    def _run(self) -> None:
        backoff = _BACKOFF[0]
        while not self._stop.is_set():
            if self._listener() is None:
                break
            subscribed = False
            pubsub: Any = None
            conn: Any = None
            try:
                if self._client is None:
                    self._client = self._connect()
                else:  # subscribing again, after a failure
                    _refresh(self._client)  # a cluster: the node subscribed to may be gone
                pubsub = self._client.pubsub()
                self._connects = 0
                pubsub.subscribe(self.name)
                conn = getattr(pubsub, "connection", None)
                if hasattr(conn, "register_connect_callback"):
                    self._connects = 1
                    conn.register_connect_callback(self._reconnected)
                subscribed = self._serve(pubsub)
            except Exception as exc:  # any failure: lost, try again later
                self._lose(f"{type(exc).__name__}: {exc}")
            finally:
                if hasattr(conn, "deregister_connect_callback"):
                    conn.deregister_connect_callback(self._reconnected)
                _close(pubsub)
            if subscribed:
                backoff = _BACKOFF[0]
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, _BACKOFF[1])
        listener = self._listener()
        if listener is not None and self._client is not None:
            try:
                listener._channel_tick(self._client)  # a last turn: index what is queued
            except Exception as exc:
                _log.debug("mailguard store channel: last tick failed: %s", exc)
        del listener
        self._lose("")  # stopped: no line
        client, self._client = self._client, None
        if client is not None and self._owned and os.getpid() == self._pid:
            _close(client)

    def _reconnected(self, conn: Any) -> None:
        """redis-py (re)connected the subscription: the first time is expected."""
        self._connects += 1

    def _serve(self, pubsub: Any) -> bool:
        """Read messages until the subscription fails or the thread stops.
        Returns whether it was ever subscribed (raises on failure)."""
        subscribed = False
        sent_ping = 0.0  # time.monotonic() of the PING not yet answered, or 0
        last_ping = time.monotonic()
        while not self._stop.is_set():
            message = pubsub.get_message(timeout=TICK)
            listener = self._listener()
            if listener is None:
                return subscribed
            if self._connects > 1:  # redis-py reconnected on its own: a gap
                raise ConnectionError("the subscription was reconnected")
            if message is not None:
                kind = message.get("type")
                if kind == "subscribe":
                    subscribed = True
                    if not self.live:
                        self.live = True
                        listener._channel_joined()
                elif kind == "message":
                    found = parse(message.get("data"))
                    if found is not None:
                        listener._channel_heard(found)
                elif kind == "pong":
                    sent_ping = 0.0
                elif kind in ("unsubscribe", "punsubscribe"):
                    raise ConnectionError("unsubscribed")
            now = time.monotonic()
            if sent_ping:
                if now - sent_ping > PONG_DEADLINE:
                    raise ConnectionError(f"no answer to PING within {PONG_DEADLINE:g} s")
            elif now - last_ping >= PING_EVERY:
                sent_ping = last_ping = now
                pubsub.ping()
            try:
                listener._channel_tick(self._client)
            except Exception as exc:  # maintenance failed (Redis down?): the next tick retries
                _log.debug("mailguard store channel tick failed: %s", exc)
            del listener
        return subscribed

    def _lose(self, error: str) -> None:
        """The subscription is gone (``error`` empty: stopped on purpose)."""
        if not self.live:
            return
        self.live = False
        listener = self._listener()
        if listener is not None:
            listener._channel_lost(error)


def _refresh(client: Any) -> None:
    """Ask a cluster client for the slot map again (a no-op for other clients).

    A cluster client's ``pubsub()`` subscribes through the node serving the
    channel name's slot (redis-py ``cluster.py``, ``ClusterPubSub.execute_command``,
    the same in 5.0.1 and 8.x), read from its slot map; after that node died,
    the map must be asked again or the thread would try the dead node forever.
    ``PUBLISH`` reaches every node of a cluster, so any node will do.
    """
    manager = getattr(client, "nodes_manager", None)
    if manager is None:
        return
    try:
        manager.initialize()
    except Exception as exc:  # nobody answered yet: the next attempt asks again
        _log.debug("mailguard store channel: slot map not refreshed: %s", exc)


def _close(thing: Any) -> None:
    if thing is None:
        return
    try:
        thing.close()
    except Exception:  # closing what may already be broken
        _log.debug("mailguard store channel: close failed", exc_info=True)
