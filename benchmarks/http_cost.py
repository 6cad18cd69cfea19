"""HTTP benchmark: what each middleware adds to one request, side by side.

Run:  .venv/bin/python benchmarks/http_cost.py [--seconds 0.3] [--rounds 5]

(Not named http.py: run as a script, that name would shadow the standard
library's http package.)

Calls the ASGI and WSGI callables directly (no sockets, no server), so the
numbers are the middleware's own cost.  Each allowed row is measured twice:
with every request from one client (the setting the issue's reference
figures match: a ten-line middleware over ``limits`` about 1.5x, slowapi
about 7.7x), and with requests from 1000 client addresses in turn, which is
harder on every limiter: each request then reads per-client state that the
CPU no longer has in its caches.  Limits are high enough that no allowed
row is ever refused; the refused rows send everything from one client over a
limit of 1 per second.  Every row is measured in this run, best of
``--rounds`` rounds (the rows take turns), and reported as a ratio to the
bare app:

ASGI (a Starlette app with one route):
  bare app; an empty pass-through middleware; a ten-line middleware over
  ``limits`` (the naive floor); mailguard DosFilter, allowed and refused;
  slowapi's ASGI middleware; asgi-ratelimit.
WSGI:
  bare werkzeug app and mailguard DosFilter around it, allowed and refused;
  a Flask app bare and with Flask-Limiter, with mailguard around the same app.

"Added" is the cost on top of the bare app, in microseconds per request;
the last table compares mailguard's added cost with the peers'.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from mailguard import MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi

# Only the tables: mailguard's own log lines (refusals, startup) stay out of the way.
logging.getLogger("mailguard").addHandler(logging.NullHandler())

ALLOWED = 1_000_000  # per client per second: never reached, even by one client
PEER = ("203.0.113.7", 40000)
CLIENTS = [f"198.51.{i >> 8}.{i & 255}" for i in range(1000)]  # requests rotate over these


# ------------------------------------------------------------------ ASGI
def asgi_scope() -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/", "raw_path": b"/", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"mail.example"), (b"user-agent", b"bench")],
        "client": PEER, "server": ("127.0.0.1", 80),
    }  # fmt: skip


def starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/", home)])


class PassThrough:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


class TenLineLimits:
    """The naive floor: ten lines over ``limits``' moving window in memory."""

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

    return RateLimitMiddleware(
        starlette_app(), by_peer, MemoryBackend(), {r"^/": [Rule(second=per_second)]}
    )


def asgi_rate(app: Any, seconds: float, one_client: bool = False) -> float:
    """Requests per second through ``app``, from 1000 clients in turn (or one)."""
    scopes = []
    for client in [PEER[0]] if one_client else CLIENTS:
        scope = asgi_scope()
        scope["client"] = (client, PEER[1])
        scopes.append(scope)
    count = len(scopes)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def run() -> float:
        for i in range(200):
            await app(dict(scopes[i % count]), receive, send)
        done, start = 0, time.perf_counter()
        deadline = start + seconds
        while done < 2_000_000:
            for i in range(done, done + 500):
                await app(dict(scopes[i % count]), receive, send)
            done += 500
            if time.perf_counter() >= deadline:
                break
        return done / (time.perf_counter() - start)

    return asyncio.run(run())


# ------------------------------------------------------------------ WSGI
def werkzeug_app() -> Any:
    from werkzeug.wrappers import Request, Response

    @Request.application  # type: ignore[arg-type]
    def app(request: Request) -> Response:
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


def wsgi_rate(app: Callable[..., Any], seconds: float, one_client: bool = False) -> float:
    """Requests per second through ``app``, from 1000 clients in turn (or one)."""
    from werkzeug.test import EnvironBuilder

    environs = [
        EnvironBuilder("/", environ_base={"REMOTE_ADDR": client}).get_environ()
        for client in ([PEER[0]] if one_client else CLIENTS)
    ]
    count = len(environs)
    turn = 0

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        return None

    def once() -> None:
        nonlocal turn
        turn += 1
        result = app(dict(environs[turn % count]), start_response)
        for _ in result:
            pass
        close = getattr(result, "close", None)
        if close:
            close()

    for _ in range(200):
        once()
    done, start = 0, time.perf_counter()
    deadline = start + seconds
    while done < 1_000_000:
        for _ in range(250):
            once()
        done += 250
        if time.perf_counter() >= deadline:
            break
    return done / (time.perf_counter() - start)


Row = tuple[Callable[[], Any], bool]  # (make the app, from one client?)


def interleaved(
    rows: dict[str, Row],
    rate: Callable[[Any, float, bool], float],
    seconds: float,
    rounds: int,
) -> dict[str, float]:
    """µs per request of each row: best of ``rounds``, the rows taking turns.

    Taking turns (A, B, C, A, B, C, ...) keeps a slow spell of a shared
    machine from landing on one row; each round gets a fresh app.
    """
    fastest = dict.fromkeys(rows, 0.0)
    for _ in range(rounds):
        for name, (make, one_client) in rows.items():
            fastest[name] = max(fastest[name], rate(make(), seconds, one_client))
    return {name: 1e6 / per_second for name, per_second in fastest.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    args = parser.parse_args(argv)
    seconds = max(0.05, min(args.seconds, 5.0))
    rounds = max(1, min(args.rounds, 10))

    def dos_asgi(limit: int) -> Callable[[], Any]:
        return lambda: mg_asgi.DosFilter(
            starlette_app(), max_requests_per_sec=limit, store=MemoryStore()
        )

    def dos_wsgi(app: Callable[[], Any], limit: int) -> Callable[[], Any]:
        return lambda: mg_wsgi.DosFilter(app(), max_requests_per_sec=limit, store=MemoryStore())

    one, many = True, False
    asgi_rows: dict[str, Row] = {
        "bare Starlette app": (starlette_app, one),
        "bare Starlette app, 1000 clients": (starlette_app, many),
        "empty pass-through middleware": (lambda: PassThrough(starlette_app()), one),
        "ten-line middleware over limits": (lambda: TenLineLimits(starlette_app(), ALLOWED), one),
        "ten-line middleware over limits, 1000 clients": (
            lambda: TenLineLimits(starlette_app(), ALLOWED), many),
        "mailguard DosFilter, allowed": (dos_asgi(ALLOWED), one),
        "mailguard DosFilter, allowed, 1000 clients": (dos_asgi(ALLOWED), many),
        "mailguard DosFilter, refused": (dos_asgi(1), one),
        "slowapi ASGI middleware, allowed": (lambda: slowapi_app(ALLOWED), one),
        "slowapi ASGI middleware, allowed, 1000 clients": (lambda: slowapi_app(ALLOWED), many),
        "asgi-ratelimit, allowed": (lambda: asgi_ratelimit_app(ALLOWED), one),
    }  # fmt: skip
    wsgi_rows: dict[str, Row] = {
        "bare werkzeug app": (werkzeug_app, one),
        "bare werkzeug app, 1000 clients": (werkzeug_app, many),
        "mailguard DosFilter, allowed": (dos_wsgi(werkzeug_app, ALLOWED), one),
        "mailguard DosFilter, allowed, 1000 clients": (dos_wsgi(werkzeug_app, ALLOWED), many),
        "mailguard DosFilter, refused": (dos_wsgi(werkzeug_app, 1), one),
        "bare Flask app": (lambda: flask_app(False, ALLOWED), one),
        "Flask + mailguard DosFilter, allowed": (
            dos_wsgi(lambda: flask_app(False, ALLOWED), ALLOWED), one),
        "Flask + Flask-Limiter, allowed": (lambda: flask_app(True, ALLOWED), one),
    }  # fmt: skip

    asgi_us = interleaved(asgi_rows, asgi_rate, seconds, rounds)
    wsgi_us = interleaved(wsgi_rows, wsgi_rate, seconds, rounds)

    print(f"# mailguard HTTP benchmark — Python {platform.python_version()}, "
          f"{platform.machine()}, best of {rounds} x {seconds:g} s")  # fmt: skip

    def base(name: str, table: dict[str, float], bare: str) -> float:
        return table[f"{bare}, 1000 clients" if "1000 clients" in name else bare]

    def ref_asgi(name: str) -> float:
        return base(name, asgi_us, "bare Starlette app")

    def ref_wsgi(name: str) -> float:
        return base(name, wsgi_us, "bare Flask app" if "Flask" in name else "bare werkzeug app")

    for title, table, ref in (("ASGI", asgi_us, ref_asgi), ("WSGI", wsgi_us, ref_wsgi)):
        print(f"\n## {title}, per request\n")
        print("| stack | µs/request | vs bare | added µs |")
        print("|---|---:|---:|---:|")
        for name, us in table.items():
            print(f"| {name} | {us:.2f} | {us / ref(name):.2f}x | {us - ref(name):+.2f} |")

    def ratio(table: dict[str, float], name: str, ref: Callable[[str], float]) -> float:
        return table[name] / ref(name)

    def less(peer: float, ours: float) -> str:
        return f"{peer / ours:.1f}x" if ours > 0 else "inf"

    def added(table: dict[str, float], name: str, ref: Callable[[str], float]) -> float:
        return table[name] - ref(name)

    print("\n## Targets\n")
    checks: list[tuple[str, float, float, str]] = []  # label, value, bound, shown
    for suffix, who in (("", "one client"), (", 1000 clients", "1000 clients")):
        a = ratio(asgi_us, "mailguard DosFilter, allowed" + suffix, ref_asgi)
        w = ratio(wsgi_us, "mailguard DosFilter, allowed" + suffix, ref_wsgi)
        checks.append((f"ASGI allowed <= 1.25x bare Starlette ({who})", a, 1.25, f"{a:.2f}x"))
        checks.append((f"WSGI allowed <= 1.25x bare werkzeug ({who})", w, 1.25, f"{w:.2f}x"))
    refused = ratio(asgi_us, "mailguard DosFilter, refused", ref_asgi)
    checks.append(("ASGI refused <= 0.6x bare Starlette", refused, 0.6, f"{refused:.2f}x"))
    for suffix, who in (("", "one client"), (", 1000 clients", "1000 clients")):
        ours = added(asgi_us, "mailguard DosFilter, allowed" + suffix, ref_asgi)
        peer = added(asgi_us, "slowapi ASGI middleware, allowed" + suffix, ref_asgi)
        factor = peer / ours if ours > 0 else float("inf")
        label = f">= 10x less added cost than slowapi ({who})"
        checks.append((label, -factor, -10.0, less(peer, ours)))
    ours = added(wsgi_us, "Flask + mailguard DosFilter, allowed", ref_wsgi)
    peer = added(wsgi_us, "Flask + Flask-Limiter, allowed", ref_wsgi)
    factor = peer / ours if ours > 0 else float("inf")
    checks.append((">= 10x less added cost than Flask-Limiter", -factor, -10.0, less(peer, ours)))
    for label, value, bound, shown in checks:
        print(f"- [{'x' if value <= bound else ' '}] {label}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
