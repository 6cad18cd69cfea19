"""``mailguard serve``: the policy daemon for Dovecot and nginx's mail proxy.

::

    mailguard serve --config mailguard.toml [--host H] [--port P]

One process (uvicorn, one worker, the ``serve`` extra: ``pip install
'mailguard[serve]'``) answers on one port:

``POST /dovecot`` and ``POST /dovecot/`` (``?command=allow|report``)
    Dovecot's auth policy (:mod:`mailguard.dovecot`).
``GET /nginx``
    nginx's mail ``auth_http`` (:mod:`mailguard.nginx_auth`).
``GET /blocks``, ``POST /unblock``, ``POST /block``, ``GET /stats``
    the admin endpoints of :class:`mailguard.admin.AdminApp` (same token
    rules), when ``[serve] admin_token`` is set; 404 otherwise.
``GET /console``, ``GET /refusals``, ``GET /series``
    the admin console (:mod:`mailguard.console`) and its data, on the same
    terms (the page itself needs no token, only ``admin_allow``).
``GET /metrics``
    Prometheus text (the ``prometheus`` extra), for callers in ``allow`` or
    ``admin_allow``.
``GET /healthz``
    200 ``{"ok": true, "store": "up"}`` when the store answers; 503
    ``{"ok": false, "store": "down", "on_store_error": "open"}`` when it does
    not (the mail endpoints keep answering by ``on_store_error`` meanwhile).
    For callers in ``allow`` or ``admin_allow``.

Who may call
    ``/dovecot`` and ``/nginx`` answer only a TCP peer in ``[serve] allow``
    (loopback by default; no forwarding header is ever read) that sends
    ``secret`` in ``X-Mailguard-Secret`` (required unless
    ``allow_without_secret = true``).  A caller with the wrong secret gets
    403 before anything is read, counted or verified; a peer outside
    ``allow`` and ``admin_allow`` is disconnected as it connects
    (:mod:`mailguard.serve_conn`, which also times out slow headers and caps
    connections): the port is never a password oracle nor a way to block
    addresses.

The failure rule is ``[mailauth]`` over ``[login]`` over ``[common]``
(:mod:`mailguard.mailauth`), in the store of ``[store]`` and the namespace of
the HTTP InvalidLoginFilter, so failures through every door add up per
address.  Log lines have the filters' shape, with ``protocol=``::

    mailguard login failure client=203.0.113.7 account="jdoe" streak=3/5 protocol=imap
    mailguard login blocked client=203.0.113.7 account="jdoe" seconds=900 failures=5 protocol=imap

SIGTERM or SIGINT stop the server gracefully (uvicorn's handling; exit 0).

Wiring it up (tested against Dovecot 2.3.19 and nginx 1.22's mail module)::

    # Dovecot, e.g. conf.d/95-mailguard.conf
    auth_policy_server_url = http://127.0.0.1:8787/dovecot
    # in a root-only (0600) file, included: conf.d is world-readable
    !include_try /etc/dovecot/mailguard-secret.conf.ext
    #   auth_policy_server_api_header = X-Mailguard-Secret:<[serve] secret>
    auth_policy_hash_nonce = <a random string>
    # always explicit: the default differs by version (the auth policy exists
    # since 2.2.25; session_id is in the default only since 2.3.11; mech in
    # none).  session_id pairs an allow with its report, so parallel attempts
    # count; mech tells whether pwhash hashes a password (PLAIN/LOGIN only)
    auth_policy_request_attributes = login=%{requested_username} pwhash=%{hashed_password} \
        remote=%{rip} device_id=%{client_id} protocol=%s session_id=%{session} mech=%{mech}
    auth_policy_hash_truncate = 32  # for count_repeated_password = false

    # nginx
    mail {
        auth_http 127.0.0.1:8787/nginx;
        include /etc/nginx/mailguard-secret.conf;  # 0600, root:
        #   auth_http_header X-Mailguard-Secret "<[serve] secret>";
        imap_auth plain login;  pop3_auth plain;  smtp_auth plain login;
    }

A Dovecot behind nginx sees mailguard's password checks come from
mailguard's address; list that address in its ``login_trusted_networks`` and
mailguard passes the client's address on (IMAP ``ID x-originating-ip``, POP3
``XCLIENT``), so the backend's own penalty and logs count the client.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .admin import read_asgi_body
from .config import Config, ConfigError, load, redact
from .dovecot import MAX_BODY as DOVECOT_MAX_BODY
from .dovecot import OK, DovecotFront, answer
from .events import EventHook, Reporter
from .identity import AddressSet, ClientResolver
from .mailauth import MailLogins, ServeSettings, build_logins, secret_problem
from .nginx_auth import NginxFront
from .stores.base import Store, StoreError
from .stores.guard import StoreDown

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from .serve_conn import ConnectionGuard

__all__ = ["MailGuardServer", "MissingExtra", "build_app", "main", "need_extra"]

_log = logging.getLogger("mailguard.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SECRET_HEADER = "x-mailguard-secret"
_CONSOLE_PATHS = ("/console", "/console/", "/console.js", "/console.css", "/refusals", "/series")
_REFUSAL_LOG_EVERY = 60.0  # seconds between two "refused" lines for one caller
_REFUSAL_LOG_GAP = 1.0  # seconds between two "refused" lines, whoever the caller
_REFUSALS_MAX = 4096


class MissingExtra(RuntimeError):
    """The ``serve`` extra (uvicorn, starlette) is not installed."""


def need_extra() -> None:
    """Raise :class:`MissingExtra`, naming the extra, when uvicorn or starlette is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise MissingExtra(
            f"mailguard serve needs {exc.name or 'uvicorn and starlette'}:"
            " pip install 'mailguard[serve]'"
        ) from None


class _Endpoint:
    """An ASGI app as an object, so Starlette's ``Route`` passes it the raw
    scope (a bound method would be called as a request handler)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class MailGuardServer:
    """What ``mailguard serve`` serves, built from a :class:`~mailguard.config.Config`.

    :param config: a loaded configuration, or the path of a mailguard.toml.
    :param store: use this store instead of ``[store]``'s (tests: a store with
        a :class:`~mailguard.FakeClock`).
    :param on_event: a hook given every event of the failure rule.
    :param host: listen here instead of ``[serve] host``.
    :param port: listen here instead of ``[serve] port``.
    :param live: follow the live configuration (:mod:`mailguard.live`):
        ``[login]`` / ``[mailauth]`` changes reach the failure rule.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str],
        *,
        store: Store | None = None,
        on_event: EventHook | None = None,
        host: str | None = None,
        port: int | None = None,
        live: bool = True,
    ) -> None:
        cfg = config if isinstance(config, Config) else load(config)
        self.config = cfg
        self.settings: ServeSettings = cfg.serve.build(ServeSettings)
        problem = secret_problem(self.settings)
        if problem is not None:
            raise ConfigError(cfg.source, "[serve] secret", problem)
        self.host = host if host is not None else self.settings.host
        self.port = port if port is not None else self.settings.port
        self.own_store = store is None
        self.store = store if store is not None else cfg.build_store()
        self.registry: Any = None
        hook = on_event
        try:
            from prometheus_client import CollectorRegistry

            from . import metrics
        except ImportError:  # no prometheus extra: /metrics answers 404
            pass
        else:
            self.registry = CollectorRegistry()
            prometheus = metrics.instrument(self.store, self.registry)
            hook = prometheus if on_event is None else prometheus.chain(on_event)
        self.logins: MailLogins = cfg.mailauth.build(
            build_logins, self.store, on_event=hook, max_sessions=self.settings.max_sessions
        )
        self.policy = self.logins.policy
        self.live: Any = None  # mailguard.live: [login] / [mailauth] changes reach the rule
        if live:
            from .live import LiveConfig

            path = None if isinstance(config, Config) else config
            try:
                self.live = LiveConfig(self.store, cfg, path=path, on_event=hook)
            except NotImplementedError:  # a store given that keeps no overlay
                self.live = None
            else:
                self.live.attach_logins(self.logins)
        self.dovecot = DovecotFront(self.logins)
        self.nginx = NginxFront(self.logins)
        self.allow = self.settings.allow
        self.watchers = AddressSet(
            (*self.settings.allow_entries, *self.settings.admin_allow), name="admin_allow"
        )
        self.peers = ClientResolver((), ipv6_prefix=128)
        self._secret = (
            self.settings.secret.encode("ascii") if self.settings.secret is not None else None
        )
        self.admin: Any = None
        if self.settings.admin_token is not None:
            from .admin import AdminApp

            self.admin = AdminApp(
                self.store,
                token=self.settings.admin_token,
                allow=self.settings.admin_allow,
                on_event=on_event,
                live=self.live,
            )
        self._refused: dict[str, float] = {}
        self._allowed: dict[str, bool] = {}  # peer address -> in [serve] allow
        self._refusal_line = -_REFUSAL_LOG_GAP  # when the last "refused" line was written
        self._unlogged = 0  # refusals since that line that wrote none
        self._clock = time.monotonic
        self.report = Reporter("serve")
        self.max_connections = self.settings.max_connections
        self.nofile: tuple[int, int] | None = None  # (soft, hard) once raised by main()

    # ----------------------------------------------------------- access
    def caller_ok(self, scope: Scope) -> tuple[bool, str]:
        """Whether the request's TCP peer may call the mail endpoints."""
        peer = self.peers.from_asgi(scope)
        allowed = self._allowed.get(peer.address)
        if allowed is None:
            allowed = peer.is_ip and peer.address in self.allow
            if len(self._allowed) >= _REFUSALS_MAX:
                self._allowed.clear()
            self._allowed[peer.address] = allowed
        if not allowed:
            self._refuse(peer.address, "network")
            return False, peer.address
        if self._secret is not None:
            presented = b""
            for name, value in scope.get("headers") or ():
                if name == b"x-mailguard-secret":
                    presented = value.strip()
            if not hmac.compare_digest(presented, self._secret):
                self._refuse(peer.address, "secret")
                return False, peer.address
        return True, peer.address

    def watcher_ok(self, scope: Scope) -> bool:
        """Whether the peer may read ``/metrics`` and ``/healthz``."""
        peer = self.peers.from_asgi(scope)
        return peer.is_ip and peer.address in self.watchers

    def _refuse(self, address: str, why: str) -> None:
        """Log a refused caller: at most once a minute per address, and at most
        one line a second in all (an exposed port reached from many addresses
        cannot flood the log); a line says how many refusals went unlogged
        since the one before (``suppressed=N``)."""
        now = self._clock()
        last = self._refused.get(address)
        if (last is not None and now - last < _REFUSAL_LOG_EVERY) or (
            now - self._refusal_line < _REFUSAL_LOG_GAP
        ):
            self._unlogged += 1
            return
        if len(self._refused) >= _REFUSALS_MAX:
            self._refused.clear()
        self._refused[address] = now
        self._refusal_line = now
        unlogged, self._unlogged = self._unlogged, 0
        # "serve" lines never match the fail2ban filter: a refused caller is
        # not a login failure (and the address may be a proxy)
        if unlogged:
            _log.warning(
                "mailguard serve refused caller=%s reason=%s suppressed=%d",
                _printable(address),
                why,
                unlogged,
            )
        else:
            _log.warning("mailguard serve refused caller=%s reason=%s", _printable(address), why)

    def connection_guard(self) -> ConnectionGuard:
        """Who may hold a connection, and for how long (:mod:`mailguard.serve_conn`)."""
        from .serve_conn import ConnectionGuard

        watchers, peers = self.watchers, self.peers

        def allowed(address: str) -> bool:
            peer = peers.from_asgi({"client": (address, 0)})
            return peer.is_ip and peer.address in watchers

        return ConnectionGuard(
            allowed=allowed,
            header_timeout=self.settings.header_timeout,
            per_peer=self.settings.max_connections_per_peer,
            total=self.max_connections,
        )

    # ----------------------------------------------------------- dovecot
    async def dovecot_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /dovecot``: plain ASGI, the hot path (one allow and one report per login)."""
        ok, _ = self.caller_ok(scope)
        if not ok:
            await _send_json(send, 403, _FORBIDDEN)
            return
        command = _query_value(scope.get("query_string") or b"", b"command")
        body = await read_asgi_body(scope, receive, DOVECOT_MAX_BODY)
        if body is None:
            if command == "allow":  # Dovecot never sends this much: refuse, never trust
                await _send_json(send, 200, _encode(answer(-1, "request too large")))
            else:
                await _send_json(send, 413, _encode(answer(0, "request too large")))
            return
        try:
            status, payload = await self.dovecot.handle(command, body)
        except Exception:
            _log.exception("mailguard serve: /dovecot failed; answering by on_store_error")
            closed = self.policy.on_store_error == "closed"
            status, payload = 200, answer(-1 if closed else 0, "")
        await _send_json(send, status, _OK if payload == OK else _encode(payload))

    # ----------------------------------------------------------- nginx
    async def nginx_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /nginx``: plain ASGI; the answer is headers only, in nginx's spelling."""
        ok, _ = self.caller_ok(scope)
        if not ok:
            await _send_headers(send, 403, [("Auth-Status", "Forbidden")])
            return
        headers: dict[str, bytes] = {}
        twice = False
        for name, value in scope.get("headers") or ():
            key = name.decode("latin-1").lower()
            twice = twice or (key in headers and key in _ONCE)
            headers[key] = value
        try:
            if twice:  # nginx sends each once: which one would the backend see?
                _log.warning("mailguard nginx malformed: a credential header sent twice")
                reply = self.nginx.temporary(headers.get("auth-protocol", b"").decode("latin-1"))
            else:
                reply = await self.nginx.handle(headers)
        except Exception:
            _log.exception("mailguard serve: /nginx failed; answering a temporary error")
            reply = self.nginx.temporary(headers.get("auth-protocol", b"").decode("latin-1"))
        await _send_headers(send, 200, reply)

    # ----------------------------------------------------------- watching
    async def healthz_endpoint(self, request: Request) -> Response:
        from starlette.responses import JSONResponse

        if not self.watcher_ok(request.scope):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        primary = getattr(self.policy.store, "primary", self.policy.store)
        try:
            await primary.apeek(self.policy.namespace, "-healthz-", 1.0)
        except (StoreError, StoreDown, OSError):
            return JSONResponse(
                {"ok": False, "store": "down", "on_store_error": self.policy.on_store_error},
                status_code=503,
            )
        return JSONResponse({"ok": True, "store": "up"})

    async def metrics_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        from starlette.responses import JSONResponse

        if not self.watcher_ok(scope):
            response: Any = JSONResponse({"error": "forbidden"}, status_code=403)
        elif self.registry is None:
            response = JSONResponse(
                {"error": "metrics need prometheus-client: pip install 'mailguard[prometheus]'"},
                status_code=404,
            )
        else:
            from . import metrics

            await metrics.asgi_app(self.registry)(scope, receive, send)
            return
        await response(scope, receive, send)

    async def admin_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.admin is None:
            from starlette.responses import JSONResponse

            response = JSONResponse(
                {"error": "not found: set [serve] admin_token to use the admin endpoints"},
                status_code=404,
            )
            await response(scope, receive, send)
            return
        await self.admin.asgi(scope, receive, send)

    # ----------------------------------------------------------- the app
    def app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI app: ``/dovecot``, ``/dovecot/`` and ``/nginx`` answered
        directly (the hot paths: no router, no middleware), everything else
        (other paths, other methods, the lifespan) by :meth:`starlette_app`."""
        rest = self.starlette_app()
        dovecot, nginx = self.dovecot_endpoint, self.nginx_endpoint

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                path, method = scope.get("path"), scope.get("method")
                if method == "POST" and (path == "/dovecot" or path == "/dovecot/"):
                    await dovecot(scope, receive, send)
                    return
                if method == "GET" and path == "/nginx":
                    await nginx(scope, receive, send)
                    return
            await rest(scope, receive, send)

        return app

    def starlette_app(self) -> Starlette:
        """The Starlette app of every endpoint (no redirects: Dovecot refuses them)."""
        need_extra()
        from starlette.applications import Starlette
        from starlette.routing import Route

        admin = _Endpoint(self.admin_endpoint)
        dovecot = _Endpoint(self.dovecot_endpoint)
        routes = [
            Route("/dovecot", dovecot, methods=["POST"]),
            Route("/dovecot/", dovecot, methods=["POST"]),
            Route("/nginx", _Endpoint(self.nginx_endpoint), methods=["GET"]),
            Route("/healthz", self.healthz_endpoint, methods=["GET", "HEAD"]),
            Route("/metrics", _Endpoint(self.metrics_endpoint), methods=["GET", "HEAD"]),
            Route("/blocks", admin, methods=["GET", "HEAD"]),
            Route("/stats", admin, methods=["GET", "HEAD"]),
            Route("/unblock", admin, methods=["POST"]),
            Route("/block", admin, methods=["POST"]),
            Route("/config", admin, methods=["GET", "HEAD", "POST"]),
            *(Route(path, admin, methods=["GET", "HEAD"]) for path in _CONSOLE_PATHS),
        ]
        starlette = Starlette(routes=routes, lifespan=self._lifespan)
        starlette.router.redirect_slashes = False
        return starlette

    def _lifespan(self, app: Any) -> Any:
        from contextlib import asynccontextmanager

        @asynccontextmanager
        async def span(app: Any) -> Any:
            import asyncio

            from .serve_conn import AcceptErrorLog

            asyncio.get_running_loop().set_exception_handler(AcceptErrorLog())
            self.announce()
            try:
                yield
            finally:
                self.nginx.close()
                if self.own_store:
                    await _aclose(self.store)

        return span(app)

    def endpoints(self) -> list[str]:
        served = ["/dovecot", "/nginx"]
        if self.admin is not None:
            served += ["/blocks", "/unblock", "/block", "/stats", "/console"]
            if self.live is not None:
                served.append("/config")
        served.append("/healthz")
        if self.registry is not None:
            served.append("/metrics")
        return served

    def announce(self) -> None:
        """The startup line: what is served, where, and the store (redacted)."""
        store = self.config.store
        where = (
            f"redis:{redact(store.url or '')}"
            if store.type == "redis" and self.own_store
            else "memory"
            if self.own_store
            else type(self.store).__name__
        )
        policy = self.policy
        self.report.started(
            (
                ("listen", f"{self.host}:{self.port}"),
                ("endpoints", ",".join(self.endpoints())),
                ("limit", f"{policy.limit}/{policy.interval:g}s"),
                ("block", f"{policy.block_duration:g}s"),
                ("namespace", policy.namespace),
                ("store", where),
                ("on_store_error", policy.on_store_error),
                ("secret", "set" if self._secret is not None else "none"),
                (
                    "connections",
                    f"{self.max_connections}/{self.settings.max_connections_per_peer}-per-peer",
                ),
                ("header_timeout", f"{self.settings.header_timeout:g}s"),
                ("nofile", "/".join(map(str, self.nofile)) if self.nofile else "unchanged"),
                ("pid", os.getpid()),
            )
        )


async def _aclose(store: Store) -> None:
    closer = getattr(store, "aclose", None)
    try:
        if closer is not None:
            await closer()
        else:
            store.close()
    except Exception:  # closing at shutdown must not fail the exit
        _log.debug("mailguard serve: closing the store failed", exc_info=True)


def _query_value(query: bytes, name: bytes) -> str:
    """The last value of ``name`` in a query string ("" when absent), %-decoded."""
    found = ""
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name:
            found = unquote(value.decode("latin-1"), encoding="latin-1")
    return found


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


_OK = _encode(OK)
_FORBIDDEN = _encode({"error": "forbidden"})


_ONCE = frozenset({"auth-user", "auth-pass", "auth-protocol", "auth-method", "client-ip"})


async def _send_headers(send: Send, status: int, headers: list[tuple[str, str]]) -> None:
    """An empty response with ``headers`` (ASCII texts we wrote, never request text)."""
    raw = [(k.encode("ascii"), v.encode("ascii")) for k, v in headers]
    raw.append((b"content-length", b"0"))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b""})


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _printable(text: str) -> str:
    return "".join(ch if "!" <= ch <= "~" else "?" for ch in text[:64]) or "unknown"


def build_app(
    config: Config | str | os.PathLike[str],
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The ``mailguard serve`` app for ``config`` (for tests and custom servers)."""
    return MailGuardServer(config, store=store, on_event=on_event).app()


def main(config_path: str, host: str | None = None, port: int | None = None) -> int:
    """Run the daemon until SIGTERM / SIGINT; the exit code."""
    need_extra()
    import uvicorn
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from .serve_conn import BACKLOG, connection_budget, guarded_protocol, raise_nofile

    server = MailGuardServer(config_path, host=host, port=port)
    server.nofile = raise_nofile()
    server.max_connections = connection_budget(server.settings.max_connections, server.nofile[0])
    app = server.app()
    guard = server.connection_guard()
    uv_config = uvicorn.Config(
        app,
        http=guarded_protocol(AutoHTTPProtocol, guard),
        backlog=BACKLOG,
        ws="none",  # no WebSocket endpoint: an Upgrade never swaps the guarded protocol out
        host=server.host,
        port=server.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=5,
    )
    uv_server = uvicorn.Server(uv_config)

    def stop(signum: int, frame: object) -> None:
        # before uvicorn's own handlers are in place, and after: newer uvicorn
        # raises the signal again once it has shut down gracefully, which would
        # end the process "killed by SIGTERM" instead of exiting 0
        uv_server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uv_server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0 if uv_server.started else 1
