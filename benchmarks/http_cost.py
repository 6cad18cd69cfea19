"""HTTP benchmark: what each middleware adds to one request, side by side.

Run:  .venv/bin/python benchmarks/http_cost.py [--clients 1,1000,100000]
                                               [--seconds 0.3] [--rounds 5]

(Not named http.py: run as a script, that name would shadow the standard
library's http package.)

Calls the ASGI and WSGI callables directly (no sockets, no server), so the
numbers are the middleware's own cost.  Every row is measured at each client
count of ``--clients`` (default 1, 1000 and 100,000; 1,000,000 allowed):
request after request comes from the next of N distinct client addresses
(``11.0.0.0/8``, precomputed, so the harness costs every row the same few
hundred nanoseconds), cycling over the N.  One client is the setting in which
a ten-line middleware over ``limits`` costs about 1.5x; with many clients
each request reads per-client state the CPU no longer has in its caches, and
past the store's ``max_keys`` (100,000 by default) every new client evicts
the least recently seen.  Each row keeps one app for all its rounds, as a
server would, and before its first round sends one request from each of the
N clients in turn (at most ``--prefill`` requests, bounded in time), so its
state is that of a process that has seen them all; the bare rows get the
same rotation.  Limits are high enough that no allowed row is ever refused;
the refused rows send everything from one client over a limit of 1 per
second.  Every row is measured in this run, best of ``--rounds`` rounds (the
rows take turns), and reported as a ratio to its bare row:

ASGI (a Starlette app with three routes):
  ``GET /``: bare app; an empty pass-through middleware; a ten-line
  middleware over ``limits`` (the naive floor); mailguard DosFilter, allowed
  and (one client) refused; ``mailguard.asgi.protect()`` with DosFilter,
  DeviceJail and InvalidLoginFilter on one MemoryStore; slowapi's ASGI
  middleware; asgi-ratelimit.
  ``POST /Microsoft-Server-ActiveSync?Cmd=Sync&User=..&DeviceId=..``: the
  bare route and DeviceJail (one device and account per client).
  ``POST /login`` with a form body: the bare route answering 200 (a right
  password) or 401 (a wrong one), and InvalidLoginFilter over each, which
  buffers and parses the body, takes an attempt slot and settles it.  One
  client failing 10,000 times in a row would be blocked (the highest
  ``max_failed_logins``), so that row gets a fresh app each round and at
  most 9,999 attempts.
WSGI:
  bare werkzeug app; mailguard DosFilter around it, allowed and refused;
  ``mailguard.wsgi.protect()``; a Flask app bare and with Flask-Limiter, with
  mailguard around the same app; ``POST /login`` as on ASGI, the werkzeug app
  reading the body, bare and under InvalidLoginFilter.

"Added" is the cost on top of the bare row, in microseconds per request.
The last tables set the issue's targets against the one-client and the
100,000-client figures (or the largest count given) and compare mailguard's
added cost with the peers'.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailguard import MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.config import loads

# Only the tables: mailguard's own log lines (refusals, failures, startup) stay out of the way.
logging.getLogger("mailguard").addHandler(logging.NullHandler())
logging.getLogger("mailguard").propagate = False

ALLOWED = 1_000_000  # per client per second (the highest allowed): never reached
MOST_FAILURES = 10_000  # the highest max_failed_logins
PORT = 40000
PEER = "203.0.113.7"
EAS = "/Microsoft-Server-ActiveSync"
LOGIN_BODY = b"username=jdoe%40example.com&password=hunter2&loginOp=login"
EAS_BODY = b"\x03\x01j\x00"  # a WBXML header; DeviceJail reads only the query

# protect(): the three filters on one store, limits never reached
PROTECT_TOML = f"""
[dos]
max_requests_per_sec = {ALLOWED}
[login]
max_failed_logins = {MOST_FAILURES}
login_paths = ["/login"]
[device]
enabled = true
max_requests = {ALLOWED}
time_window = 1
"""


def address(i: int) -> str:
    """The ``i``-th client address: distinct for i < 2**24 (11.0.0.0/8)."""
    return f"11.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"


_ADDRESSES: list[str] = []


def addresses(n: int) -> list[str]:
    """The first ``n`` client addresses (one list, grown as needed)."""
    if n == 1:
        return [PEER]
    _ADDRESSES.extend(address(i) for i in range(len(_ADDRESSES), n))
    return _ADDRESSES[:n]


# ------------------------------------------------------------------ ASGI
Scope = dict[str, Any]
Message = dict[str, Any]


def asgi_scope(method: str = "GET", path: str = "/", body: bytes = b"") -> Scope:
    headers = [(b"host", b"mail.example"), (b"user-agent", b"bench")]
    if method == "POST":
        kind = (
            b"application/x-www-form-urlencoded"
            if path == "/login"
            else (b"application/vnd.ms-sync.wbxml")
        )
        headers += [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "headers": headers, "client": (PEER, PORT),
        "server": ("127.0.0.1", 80),
    }  # fmt: skip


@dataclass
class AsgiLoad:
    """Requests from ``n`` clients in turn: ``scope(i)`` is the ``i``-th request's scope."""

    kind: str  # "get", "eas" or "login"
    n: int

    def __post_init__(self) -> None:
        clients = [(a, PORT) for a in addresses(self.n)]
        n = self.n
        body = {"get": b"", "eas": EAS_BODY, "login": LOGIN_BODY}[self.kind]
        method, path = ("GET", "/") if self.kind == "get" else ("POST", "/login")
        if self.kind == "eas":
            path = EAS
        base = asgi_scope(method, path, body)
        self.scope: Callable[[int], Scope]
        if self.kind == "eas":
            queries = [
                b"Cmd=Sync&User=user%d&DeviceId=DEV%07dX&DeviceType=iPhone" % (i, i)
                for i in range(n)
            ]

            def eas_scope(i: int) -> Scope:
                scope = base.copy()
                scope["client"] = clients[i % n]
                scope["query_string"] = queries[i % n]
                return scope

            self.scope = eas_scope
        else:

            def scope(i: int) -> Scope:
                scope = base.copy()
                scope["client"] = clients[i % n]
                return scope

            self.scope = scope

        async def receive() -> Message:
            return {"type": "http.request", "body": body, "more_body": False}

        self.receive = receive


async def _send(message: Message) -> None:
    return None


def starlette_app(login_status: int = 200) -> Any:
    """``GET /`` (ok), ``POST /login`` (``login_status``) and the EAS endpoint."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def login(request: Request) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse("ok" if login_status == 200 else "no", status_code=login_status)

    async def eas(request: Request) -> PlainTextResponse:
        await request.body()
        return PlainTextResponse("ok")

    return Starlette(
        routes=[
            Route("/", home),
            Route("/login", login, methods=["POST"]),
            Route(EAS, eas, methods=["POST", "OPTIONS"]),
        ]
    )


class PassThrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class TenLineLimits:
    """The naive floor: ten lines over ``limits``' fixed window in memory."""

    def __init__(self, app: Any, per_second: int) -> None:
        from limits import RateLimitItemPerSecond
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter

        self.app, self.item = app, RateLimitItemPerSecond(per_second)
        self.limiter = FixedWindowRateLimiter(MemoryStorage())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.limiter.hit(self.item, scope["client"][0]):
            await send({"type": "http.response.start", "status": 429, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


def slowapi_app(per_second: int) -> Any:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    app = starlette_app()
    app.state.limiter = Limiter(
        key_func=get_remote_address, default_limits=[f"{per_second}/second"]
    )
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


def asgi_ratelimit_app(per_second: int) -> Any:
    from ratelimit import RateLimitMiddleware, Rule
    from ratelimit.backends.simple import MemoryBackend

    async def by_peer(scope: Any) -> tuple[str, str]:
        # its own client_ip refuses documentation addresses; key by peer like the others
        return scope["client"][0], "default"

    backend = MemoryBackend()  # type: ignore[no-untyped-call]
    return RateLimitMiddleware(
        starlette_app(), by_peer, backend, {r"^/": [Rule(second=per_second)]}
    )


def dos_asgi(limit: int) -> Any:
    return mg_asgi.DosFilter(starlette_app(), max_requests_per_sec=limit, store=MemoryStore())


def protect_asgi() -> Any:
    config = loads(PROTECT_TOML, env={})
    return mg_asgi.protect(
        starlette_app(), config, store=MemoryStore(), live=False, reload_on_hup=False
    )


def device_asgi() -> Any:
    return mg_asgi.DeviceJail(
        starlette_app(), max_requests=ALLOWED, time_window=1, store=MemoryStore()
    )


def login_asgi(status: int) -> Any:
    return mg_asgi.InvalidLoginFilter(
        starlette_app(status),
        max_failed_logins=MOST_FAILURES,
        login_paths=["/login"],
        store=MemoryStore(),
    )


async def asgi_burst(app: Any, load: AsgiLoad, start: int, count: int) -> None:
    scope, receive, send = load.scope, load.receive, _send
    for i in range(start, start + count):
        await app(scope(i), receive, send)


# ------------------------------------------------------------------ WSGI
def werkzeug_app(login_status: int = 200) -> Any:
    """``GET /`` (ok) and ``POST /login`` (``login_status``, the body read)."""
    from werkzeug.wrappers import Request, Response

    @Request.application
    def app(request: Request) -> Response:
        if request.path == "/login":
            request.get_data()
            return Response("ok" if login_status == 200 else "no", status=login_status)
        return Response("ok")

    return app


def flask_app(with_limiter: bool, per_second: int) -> Any:
    from flask import Flask

    app = Flask("bench")

    @app.route("/")
    def home() -> str:
        return "ok"

    if with_limiter:
        from flask_limiter import Limiter
        from flask_limiter.util import get_remote_address

        Limiter(
            get_remote_address,
            app=app,
            default_limits=[f"{per_second} per second"],
            storage_uri="memory://",
        )
    return app.wsgi_app


def dos_wsgi(make: Callable[[], Any], limit: int) -> Callable[[], Any]:
    return lambda: mg_wsgi.DosFilter(make(), max_requests_per_sec=limit, store=MemoryStore())


def protect_wsgi() -> Any:
    config = loads(PROTECT_TOML, env={})
    return mg_wsgi.protect(
        werkzeug_app(), config, store=MemoryStore(), live=False, reload_on_hup=False
    )


def login_wsgi(status: int) -> Any:
    return mg_wsgi.InvalidLoginFilter(
        werkzeug_app(status),
        max_failed_logins=MOST_FAILURES,
        login_paths=["/login"],
        store=MemoryStore(),
    )


@dataclass
class WsgiLoad:
    """``GET /`` (or the login ``POST``) from ``n`` clients in turn: ``environ(i)``
    is the ``i``-th request's."""

    n: int
    login: bool = False

    def __post_init__(self) -> None:
        from werkzeug.test import EnvironBuilder

        if self.login:
            base = EnvironBuilder(
                "/login",
                method="POST",
                data=LOGIN_BODY,
                content_type="application/x-www-form-urlencoded",
                environ_base={"REMOTE_ADDR": PEER},
            ).get_environ()
        else:
            base = EnvironBuilder("/", environ_base={"REMOTE_ADDR": PEER}).get_environ()
        clients = addresses(self.n)
        n = self.n
        login = self.login

        def environ(i: int) -> dict[str, Any]:
            env = base.copy()
            env["REMOTE_ADDR"] = clients[i % n]
            if login:  # a body is read once: a fresh stream per request
                env["wsgi.input"] = io.BytesIO(LOGIN_BODY)
            return env

        self.environ = environ


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
    return None


def wsgi_burst(app: Any, load: WsgiLoad, start: int, count: int) -> None:
    environ, start_response = load.environ, _start_response
    for i in range(start, start + count):
        result = app(environ(i), start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close:
            close()


# ------------------------------------------------------------------ rows
@dataclass
class Row:
    """One stack at one client count, and the bare row it is set against."""

    name: str
    make: Callable[[], Any]
    kind: str  # "get", "eas", "login" (ASGI), "wsgi" or "wsgi-login"
    n: int
    bare: str | None  # the row it is compared with (None: it is a bare row)
    fresh: bool = False  # a fresh app each round (at most ``cap`` requests each)
    cap: int | None = None
    app: Any = None
    cursor: int = 0
    load: Any = None


class Runner:
    """Measures rows in turns; ASGI rows all run in one event loop."""

    def __init__(self, seconds: float, prefill: int, prefill_seconds: float) -> None:
        self.seconds = seconds
        self.prefill = prefill
        self.prefill_seconds = prefill_seconds
        self.loads: dict[tuple[str, int], Any] = {}

    def _load(self, row: Row) -> Any:
        key = (row.kind, row.n)
        if key not in self.loads:
            if row.kind.startswith("wsgi"):
                self.loads[key] = WsgiLoad(row.n, login=row.kind == "wsgi-login")
            else:
                self.loads[key] = AsgiLoad(row.kind, row.n)
        return self.loads[key]

    async def _burst(self, row: Row, count: int) -> None:
        if row.kind.startswith("wsgi"):
            wsgi_burst(row.app, row.load, row.cursor, count)
        else:
            await asgi_burst(row.app, row.load, row.cursor, count)
        row.cursor += count

    async def measure(self, row: Row) -> float:
        """Requests per second of one round of ``row``."""
        if row.load is None:
            row.load = self._load(row)
        if row.app is None or row.fresh:
            row.app, row.cursor = row.make(), 0
            if row.n > 1 and not row.fresh:
                # one request from each client (bounded), as a process that has seen them
                todo = min(row.n, self.prefill)
                deadline = time.perf_counter() + self.prefill_seconds
                while todo > 0 and time.perf_counter() < deadline:
                    step = min(todo, 1000)
                    await self._burst(row, step)
                    todo -= step
        cap = row.cap if row.cap is not None else 2_000_000
        warm = min(200, cap // 10)
        await self._burst(row, warm)
        cap -= warm
        batch = 250 if row.kind.startswith("wsgi") else 500
        done, start = 0, time.perf_counter()
        deadline = start + self.seconds
        while done + batch <= cap:
            await self._burst(row, batch)
            done += batch
            if time.perf_counter() >= deadline:
                break
        return done / (time.perf_counter() - start)

    async def interleaved(self, rows: list[Row], rounds: int) -> dict[str, float]:
        """µs per request of each row: best of ``rounds``, the rows taking turns.

        Taking turns (A, B, C, A, B, C, ...) keeps a slow spell of a shared
        machine from landing on one row.
        """
        fastest = {row.name: 0.0 for row in rows}
        for _ in range(rounds):
            for row in rows:
                fastest[row.name] = max(fastest[row.name], await self.measure(row))
        return {name: 1e6 / per_second for name, per_second in fastest.items()}


# The row names: the tables and the targets refer to them.
BARE = "bare Starlette, GET /"
PASS = "empty pass-through middleware"
NAIVE = "ten-line middleware over limits"
DOS = "mailguard DosFilter, allowed"
DOS_REFUSED = "mailguard DosFilter, refused"
PROTECT = "mailguard protect(), GET / (3 filters)"
SLOWAPI = "slowapi ASGI middleware, allowed"
RATELIMIT = "asgi-ratelimit, allowed"
BARE_EAS = "bare Starlette, EAS POST"
DEVICE = "mailguard DeviceJail, EAS POST"
BARE_OK = "bare Starlette, login POST -> 200"
LOGIN_OK = "mailguard InvalidLoginFilter, login -> 200"
BARE_FAIL = "bare Starlette, login POST -> 401"
LOGIN_FAIL = "mailguard InvalidLoginFilter, login -> 401"
W_BARE = "bare werkzeug, GET /"
W_DOS = "mailguard DosFilter, allowed"
W_DOS_REFUSED = "mailguard DosFilter, refused"
W_PROTECT = "mailguard protect(), GET / (3 filters)"
W_BARE_OK = "bare werkzeug, login POST -> 200"
W_LOGIN_OK = "mailguard InvalidLoginFilter, login -> 200"
W_BARE_FAIL = "bare werkzeug, login POST -> 401"
W_LOGIN_FAIL = "mailguard InvalidLoginFilter, login -> 401"
W_FLASK = "bare Flask, GET /"
W_FLASK_DOS = "Flask + mailguard DosFilter, allowed"
W_FLASK_LIMITER = "Flask + Flask-Limiter, allowed"


def asgi_rows(n: int) -> list[Row]:
    rows = [
        Row(BARE, starlette_app, "get", n, None),
        Row(PASS, lambda: PassThrough(starlette_app()), "get", n, BARE),
        Row(NAIVE, lambda: TenLineLimits(starlette_app(), ALLOWED), "get", n, BARE),
        Row(DOS, lambda: dos_asgi(ALLOWED), "get", n, BARE),
        Row(PROTECT, protect_asgi, "get", n, BARE),
        Row(SLOWAPI, lambda: slowapi_app(ALLOWED), "get", n, BARE),
        Row(RATELIMIT, lambda: asgi_ratelimit_app(ALLOWED), "get", n, BARE),
        Row(BARE_EAS, starlette_app, "eas", n, None),
        Row(DEVICE, device_asgi, "eas", n, BARE_EAS),
        Row(BARE_OK, lambda: starlette_app(200), "login", n, None),
        Row(LOGIN_OK, lambda: login_asgi(200), "login", n, BARE_OK),
        Row(BARE_FAIL, lambda: starlette_app(401), "login", n, None),
        Row(LOGIN_FAIL, lambda: login_asgi(401), "login", n, BARE_FAIL),
    ]
    if n == 1:
        rows.insert(4, Row(DOS_REFUSED, lambda: dos_asgi(1), "get", n, BARE))
        for row in rows:
            if row.name == LOGIN_FAIL:  # the 10,000th failure in a row would block it
                row.fresh, row.cap = True, MOST_FAILURES - 1
    return rows


def wsgi_rows(n: int) -> list[Row]:
    rows = [
        Row(W_BARE, werkzeug_app, "wsgi", n, None),
        Row(W_DOS, dos_wsgi(werkzeug_app, ALLOWED), "wsgi", n, W_BARE),
        Row(W_PROTECT, protect_wsgi, "wsgi", n, W_BARE),
        Row(W_FLASK, lambda: flask_app(False, ALLOWED), "wsgi", n, None),
        Row(W_FLASK_DOS, dos_wsgi(lambda: flask_app(False, ALLOWED), ALLOWED), "wsgi", n, W_FLASK),
        Row(W_FLASK_LIMITER, lambda: flask_app(True, ALLOWED), "wsgi", n, W_FLASK),
        Row(W_BARE_OK, lambda: werkzeug_app(200), "wsgi-login", n, None),
        Row(W_LOGIN_OK, lambda: login_wsgi(200), "wsgi-login", n, W_BARE_OK),
        Row(W_BARE_FAIL, lambda: werkzeug_app(401), "wsgi-login", n, None),
        Row(W_LOGIN_FAIL, lambda: login_wsgi(401), "wsgi-login", n, W_BARE_FAIL),
    ]
    if n == 1:
        rows.insert(2, Row(W_DOS_REFUSED, dos_wsgi(werkzeug_app, 1), "wsgi", n, W_BARE))
        for row in rows:
            if row.name == W_LOGIN_FAIL:  # the 10,000th failure in a row would block it
                row.fresh, row.cap = True, MOST_FAILURES - 1
    return rows


# ------------------------------------------------------------------ report
Table = dict[str, float]  # µs per request by row name


def print_table(title: str, rows: list[Row], us: Table) -> None:
    print(f"\n## {title}\n")
    print("| stack | µs/request | vs bare | added µs |")
    print("|---|---:|---:|---:|")
    for row in rows:
        mine = us[row.name]
        if row.bare is None:
            print(f"| {row.name} | {mine:.2f} | 1.00x | |")
        else:
            ref = us[row.bare]
            print(f"| {row.name} | {mine:.2f} | {mine / ref:.2f}x | {mine - ref:+.2f} |")


@dataclass
class Target:
    """One of the issue's targets: a measure at one client and at many."""

    label: str
    measure: Callable[[Table, Table], float | None]  # (ASGI, WSGI) -> value
    unit: str  # "x" (a ratio) or "us" (added microseconds) or "x less" (peer over ours)
    one: float | None  # the bound at one client (None: shown, no target)
    many: float | None  # the bound at many clients
    at_least: bool = False  # the bound is a floor, not a ceiling


def ratio(table: str, row: str, bare: str) -> Callable[[Table, Table], float | None]:
    def measure(asgi: Table, wsgi: Table) -> float | None:
        got = asgi if table == "asgi" else wsgi
        return got[row] / got[bare] if row in got and bare in got else None

    return measure


def added(table: str, row: str, bare: str) -> Callable[[Table, Table], float | None]:
    def measure(asgi: Table, wsgi: Table) -> float | None:
        got = asgi if table == "asgi" else wsgi
        return got[row] - got[bare] if row in got and bare in got else None

    return measure


def peer_over_ours(
    table: str, peer: str, ours: str, bare: str
) -> Callable[[Table, Table], float | None]:
    def measure(asgi: Table, wsgi: Table) -> float | None:
        got = asgi if table == "asgi" else wsgi
        if peer not in got or ours not in got:
            return None
        mine = got[ours] - got[bare]
        return (got[peer] - got[bare]) / mine if mine > 0 else float("inf")

    return measure


TARGETS = [
    Target("ASGI DosFilter allowed / bare Starlette", ratio("asgi", DOS, BARE), "x", 1.15, 1.5),
    Target("WSGI DosFilter allowed / bare werkzeug", ratio("wsgi", W_DOS, W_BARE), "x", 1.15, 1.5),
    Target("ASGI DosFilter refused / bare Starlette", ratio("asgi", DOS_REFUSED, BARE), "x", 0.5,
           None),
    Target("WSGI DosFilter refused / bare werkzeug", ratio("wsgi", W_DOS_REFUSED, W_BARE), "x",
           0.5, None),
    Target("ASGI protect() GET / bare Starlette", ratio("asgi", PROTECT, BARE), "x", None, 2.0),
    Target("WSGI protect() GET / bare werkzeug", ratio("wsgi", W_PROTECT, W_BARE), "x", None, 2.0),
    Target("DeviceJail EAS / bare EAS route", ratio("asgi", DEVICE, BARE_EAS), "x", None, 1.5),
    Target("ASGI login attempt added, right password (µs)", added("asgi", LOGIN_OK, BARE_OK),
           "us", 20.0, 20.0),
    Target("ASGI login attempt added, wrong password (µs)",
           added("asgi", LOGIN_FAIL, BARE_FAIL), "us", 20.0, 20.0),
    Target("WSGI login attempt added, right password (µs)",
           added("wsgi", W_LOGIN_OK, W_BARE_OK), "us", 20.0, 20.0),
    Target("WSGI login attempt added, wrong password (µs)",
           added("wsgi", W_LOGIN_FAIL, W_BARE_FAIL), "us", 20.0, 20.0),
    Target("added cost: slowapi / DosFilter", peer_over_ours("asgi", SLOWAPI, DOS, BARE),
           "x less", 10.0, 10.0, at_least=True),
    Target("added cost: Flask-Limiter / DosFilter (Flask)",
           peer_over_ours("wsgi", W_FLASK_LIMITER, W_FLASK_DOS, W_FLASK), "x less", 10.0, 10.0,
           at_least=True),
]  # fmt: skip


def show(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "us":
        return f"{value:+.2f} µs"
    return f"{value:.2f}x" if unit == "x" else f"{value:.1f}x"


def bound(limit: float | None, target: Target) -> str:
    if limit is None:
        return "-"
    sign = ">=" if target.at_least else "<="
    return f"{sign} {limit:g} µs" if target.unit == "us" else f"{sign} {limit:g}x"


def met(value: float | None, limit: float | None, target: Target) -> bool | None:
    if value is None or limit is None:
        return None
    return value >= limit if target.at_least else value <= limit


def print_summary(
    results: dict[int, tuple[Table, Table]], one: int | None, many: int | None
) -> int:
    """The targets at one client and at ``many``; returns how many were missed."""
    cols = [c for c in (one, many) if c is not None]
    names = {c: "1 client" if c == 1 else f"{c:,} clients" for c in cols}
    title = " vs ".join(names[c] for c in cols)
    print(f"\n## Targets: {title}\n")
    head = " | ".join(f"{names[c]} | target" for c in cols)
    print(f"| measure | {head} | pass/fail |")
    print("|---|" + "---:|---:|" * len(cols) + "---|")
    missed = 0
    for target in TARGETS:
        cells, verdicts = [], []
        for c in cols:
            limit = target.one if c == 1 else target.many
            value = target.measure(*results[c])
            cells.append(f"{show(value, target.unit)} | {bound(limit, target)}")
            ok = met(value, limit, target)
            if ok is not None:
                verdicts.append((names[c], ok))
        if not verdicts:
            verdict = "(no target)"
        elif all(ok for _, ok in verdicts):
            verdict = "pass"
        else:
            verdict = "FAIL (" + ", ".join(name for name, ok in verdicts if not ok) + ")"
            missed += 1
        print(f"| {target.label} | {' | '.join(cells)} | {verdict} |")
    return missed


def parse_clients(text: str) -> list[int]:
    counts = []
    for part in text.split(","):
        value = int(part.strip().replace("_", "").replace("k", "000").replace("M", "000000"))
        if not 1 <= value <= 1_000_000:
            raise argparse.ArgumentTypeError(f"client counts are 1..1000000, got {value}")
        counts.append(value)
    return sorted(set(counts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--clients",
        type=parse_clients,
        default=parse_clients("1,1000,100000"),
        help="client counts, comma-separated (1,1000,100000; up to 1000000)",
    )
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement (0.3)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept (5)")
    parser.add_argument(
        "--prefill", type=int, default=200_000, help="requests sent before a row's first round, "
        "one per client, at most (200000)"
    )  # fmt: skip
    parser.add_argument(
        "--prefill-seconds", type=float, default=30.0, help="time cap per row's prefill (30)"
    )
    args = parser.parse_args(argv)
    seconds = max(0.05, min(args.seconds, 5.0))
    rounds = max(1, min(args.rounds, 10))
    prefill = max(0, min(args.prefill, 1_000_000))
    runner = Runner(seconds, prefill, max(1.0, min(args.prefill_seconds, 300.0)))

    print(
        f"# mailguard HTTP benchmark — Python {platform.python_version()}, "
        f"{platform.machine()}, best of {rounds} x {seconds:g} s; clients "
        + ", ".join(f"{n:,}" for n in args.clients)
    )
    results: dict[int, tuple[Table, Table]] = {}
    for n in args.clients:
        a_rows, w_rows = asgi_rows(n), wsgi_rows(n)
        began = time.perf_counter()
        asgi_us = asyncio.run(runner.interleaved(a_rows, rounds))
        wsgi_us = asyncio.run(runner.interleaved(w_rows, rounds))
        results[n] = (asgi_us, wsgi_us)
        who = "1 client" if n == 1 else f"{n:,} clients in turn"
        took = time.perf_counter() - began
        print_table(f"ASGI, {who} (µs per request; {took:.0f} s for both tables)", a_rows, asgi_us)
        print_table(f"WSGI, {who}", w_rows, wsgi_us)
        del a_rows, w_rows
        runner.loads.clear()

    one = 1 if 1 in results else None
    rest = [n for n in results if n > 1]
    many = 100_000 if 100_000 in results else (max(rest) if rest else None)
    missed = print_summary(results, one, many)
    others = [n for n in rest if n != many]
    if others:
        print(f"\n(also measured: {', '.join(f'{n:,}' for n in others)} clients, above)")
    print(f"\n{missed} target(s) missed." if missed else "\nEvery target met.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
