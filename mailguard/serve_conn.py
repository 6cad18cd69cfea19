"""Connection guarding for ``mailguard serve``: who may hold a socket, and how long.

uvicorn accepts every TCP connection and waits for its request headers
forever (it has no header timeout; ``timeout_keep_alive`` only covers the
quiet time after a response, and the first byte of the next request cancels
it: ``H11Protocol.data_received`` -> ``_unset_keepalive_if_required``).  An
idle or slowly-talking caller therefore holds a file descriptor for as long
as it likes, and ``[serve] allow`` is only read once the headers are complete.
:func:`guarded_protocol` wraps uvicorn's HTTP protocol class (given to
``uvicorn.Config(http=...)``) so that:

- a peer outside ``allow`` and ``admin_allow`` is closed in
  ``connection_made``, before a byte is read;
- request headers must be complete within ``header_timeout`` of the connect,
  or of the first byte of the next request on a kept-alive connection;
- connections are capped per peer address and in total.  Past a cap the
  oldest connection that has not sent a complete request yet is closed (then
  the oldest idle keep-alive one); busy ones are never closed, and when all
  are busy the new connection is.  So a local user holding sockets open on
  the loopback address Dovecot and nginx share cannot keep them out: their
  fresh connection displaces the oldest silent one.

:class:`AcceptErrorLog` keeps asyncio's "socket.accept() out of system
resource" line to one a second.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

__all__ = ["AcceptErrorLog", "ConnectionGuard", "guarded_protocol", "raise_nofile"]

_log = logging.getLogger("mailguard.serve")

_FD_RESERVE = 256
"""File descriptors kept back from ``max_connections``: up to :data:`BACKLOG`
sockets asyncio accepts in one go before any ``connection_made`` can close
them (``BaseSelectorEventLoop._accept_connection`` loops ``backlog`` times),
the store's sockets, the log files, the verifier's connections to the mail
backends."""

BACKLOG = 128
"""uvicorn's ``backlog`` (the listen queue, and how many connections asyncio
accepts per wake-up): small enough to fit in :data:`_FD_RESERVE`."""


class ConnectionGuard:
    """The shared state of every guarded connection of one server."""

    def __init__(
        self,
        *,
        allowed: Callable[[str], bool],
        header_timeout: float,
        per_peer: int,
        total: int,
    ) -> None:
        self.allowed = allowed
        self.header_timeout = header_timeout
        self.per_peer = per_peer
        self.total = total
        self.count = 0
        self.peers: dict[str, int] = {}
        # no complete request yet, oldest first; idle between requests, oldest first
        self.fresh: dict[Any, str] = {}
        self.idle: dict[Any, str] = {}
        self.refused_network = 0
        self.refused_full = 0
        self.displaced = 0
        self.timed_out = 0

    def admit(self, conn: Any, peer: str) -> bool:
        """Whether ``conn`` from ``peer`` may stay (another may be closed for it)."""
        if not self.allowed(peer):
            self.refused_network += 1
            return False
        if self.peers.get(peer, 0) >= self.per_peer and not self._displace(peer):
            self.refused_full += 1
            return False
        if self.count >= self.total and not self._displace(None):
            self.refused_full += 1
            return False
        self.count += 1
        self.peers[peer] = self.peers.get(peer, 0) + 1
        self.fresh[conn] = peer
        return True

    def _displace(self, peer: str | None) -> bool:
        """Close the oldest silent connection (of ``peer``, or any); whether one was."""
        for table in (self.fresh, self.idle):
            for conn, owner in table.items():
                if peer is None or owner == peer:
                    self.forget(conn)
                    conn.mg_close()
                    self.displaced += 1
                    return True
        return False

    def busy(self, conn: Any) -> None:
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)

    def quiet(self, conn: Any, peer: str) -> None:
        if conn not in self.fresh:
            self.idle.pop(conn, None)
            self.idle[conn] = peer

    def forget(self, conn: Any) -> None:
        self.fresh.pop(conn, None)
        self.idle.pop(conn, None)
        if not conn.mg_counted:
            return
        conn.mg_counted = False
        self.count -= 1
        left = self.peers.get(conn.mg_peer, 1) - 1
        if left > 0:
            self.peers[conn.mg_peer] = left
        else:
            self.peers.pop(conn.mg_peer, None)


def _peer_of(transport: asyncio.BaseTransport) -> str:
    name = transport.get_extra_info("peername")
    if isinstance(name, (tuple, list)) and name and isinstance(name[0], str):
        return name[0]
    return ""


def guarded_protocol(
    base: type[asyncio.Protocol], guard: ConnectionGuard
) -> type[asyncio.Protocol]:
    """A subclass of uvicorn's ``base`` (``H11Protocol`` or ``HttpToolsProtocol``)
    whose connections ``guard`` admits, times and caps.

    It relies on what both have had since uvicorn 0.29: ``connection_made``,
    ``data_received``, ``connection_lost``, ``on_response_complete`` and the
    ``cycle`` attribute (the request being answered, with ``response_complete``).
    """
    base_any: Any = base

    class Guarded(base_any):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.mg_counted = False
            self.mg_peer = ""
            self.mg_transport: asyncio.Transport | None = None
            self.mg_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            self.mg_transport = transport
            peer = _peer_of(transport)
            self.mg_peer = peer
            self.mg_counted = True  # admit may displace, which reads it
            if not guard.admit(self, peer):
                self.mg_counted = False
                transport.abort()  # nothing read, nothing answered
                return
            super().connection_made(transport)
            self.mg_arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self.mg_disarm()
            if self.transport is None:
                return  # refused in connection_made: uvicorn never saw it
            guard.forget(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.mg_settle(data_came=True)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.mg_settle(data_came=False)

        # ---------------------------------------------------------------
        def mg_settle(self, *, data_came: bool) -> None:
            if self.mg_transport is None or self.mg_transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                guard.busy(self)
                self.mg_disarm()
                return
            guard.quiet(self, self.mg_peer)
            if data_came:
                self.mg_arm()  # the next request's headers have begun: their clock runs

        def mg_arm(self) -> None:
            if self.mg_deadline is None:
                self.mg_deadline = self.loop.call_later(guard.header_timeout, self.mg_expire)

        def mg_disarm(self) -> None:
            if self.mg_deadline is not None:
                self.mg_deadline.cancel()
                self.mg_deadline = None

        def mg_expire(self) -> None:
            self.mg_deadline = None
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                return
            guard.timed_out += 1
            self.mg_close()

        def mg_close(self) -> None:
            self.mg_disarm()
            transport = self.mg_transport
            if transport is not None and not transport.is_closing():
                transport.abort()

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


def raise_nofile() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; ``(soft, hard)`` after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, hard
    return target, hard


def connection_budget(configured: int, soft: int) -> int:
    """``max_connections`` lowered to the descriptor limit less a reserve."""
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft - _FD_RESERVE))


_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptErrorLog:
    """A loop exception handler: asyncio's accept errors (out of descriptors)
    logged at most once a second, with how many were not; everything else
    handed to the loop's default handler."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last = -1e9
        self.unlogged = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if not ("accept" in message or (isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS)):
            loop.default_exception_handler(context)
            return
        now = self.clock()
        if now - self.last < 1.0:
            self.unlogged += 1
            return
        self.last = now
        unlogged, self.unlogged = self.unlogged, 0
        _log.error(
            "mailguard serve accept failed: %s (%s) suppressed=%d",
            message or "error",
            exc,
            unlogged,
        )
