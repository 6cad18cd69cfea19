"""HTTP benchmark: what each middleware adds to one request, side by side.

Run:  .venv/bin/python benchmarks/http_cost.py

(Not named http.py: run as a script, that name would shadow the standard
library's http package.) [--seconds 0.4] [--rounds 3]

Calls the ASGI and WSGI callables directly (no sockets, no server), so the
numbers are the middleware's own cost.  Requests come from 1000 client
addresses in turn (each well under its limit: the allowed path); the refused
rows send everything from one client over a limit of 1 per second.  Every
row is measured in this run, best of ``--rounds`` rounds, and reported as a
ratio to the bare app:

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
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

from mailguard import MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi

ALLOWED = 1_000  # per client per second: never reached by the rotating clients below
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


def interleaved(
    rows: dict[str, Callable[[], Any]],
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
        for name, make in rows.items():
            fastest[name] = max(fastest[name], rate(make(), seconds, "refused" in name))
    return {name: 1e6 / per_second for name, per_second in fastest.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    args = parser.parse_args(argv)
    seconds = max(0.05, min(args.seconds, 5.0))
    rounds = max(1, min(args.rounds, 10))

    asgi_rows: dict[str, Callable[[], Any]] = {
        "bare Starlette app": starlette_app,
        "empty pass-through middleware": lambda: PassThrough(starlette_app()),
        "ten-line middleware over limits": lambda: TenLineLimits(starlette_app(), ALLOWED),
        "mailguard DosFilter, allowed": lambda: mg_asgi.DosFilter(
            starlette_app(), max_requests_per_sec=ALLOWED, store=MemoryStore()),
        "mailguard DosFilter, refused": lambda: mg_asgi.DosFilter(
            starlette_app(), max_requests_per_sec=1, store=MemoryStore()),
        "slowapi ASGI middleware, allowed": lambda: slowapi_app(ALLOWED),
        "asgi-ratelimit, allowed": lambda: asgi_ratelimit_app(ALLOWED),
    }  # fmt: skip
    wsgi_rows: dict[str, Callable[[], Any]] = {
        "bare werkzeug app": werkzeug_app,
        "mailguard DosFilter, allowed": lambda: mg_wsgi.DosFilter(
            werkzeug_app(), max_requests_per_sec=ALLOWED, store=MemoryStore()),
        "mailguard DosFilter, refused": lambda: mg_wsgi.DosFilter(
            werkzeug_app(), max_requests_per_sec=1, store=MemoryStore()),
        "bare Flask app": lambda: flask_app(False, ALLOWED),
        "Flask + mailguard DosFilter, allowed": lambda: mg_wsgi.DosFilter(
            flask_app(False, ALLOWED), max_requests_per_sec=ALLOWED, store=MemoryStore()),
        "Flask + Flask-Limiter, allowed": lambda: flask_app(True, ALLOWED),
    }  # fmt: skip

    asgi_us = interleaved(asgi_rows, asgi_rate, seconds, rounds)
    wsgi_us = interleaved(wsgi_rows, wsgi_rate, seconds, rounds)

    print(f"# mailguard HTTP benchmark — Python {platform.python_version()}, "
          f"{platform.machine()}, best of {rounds} x {seconds:g} s")  # fmt: skip
    print("\n## ASGI, per request\n")
    print("| stack | µs/request | vs bare | added µs |")
    print("|---|---:|---:|---:|")
    bare = asgi_us["bare Starlette app"]
    for name, us in asgi_us.items():
        print(f"| {name} | {us:.2f} | {us / bare:.2f}x | {us - bare:+.2f} |")
    print("\n## WSGI, per request\n")
    print("| stack | µs/request | vs bare | added µs |")
    print("|---|---:|---:|---:|")
    for name, us in wsgi_us.items():
        ref = wsgi_us["bare Flask app" if "Flask" in name else "bare werkzeug app"]
        print(f"| {name} | {us:.2f} | {us / ref:.2f}x | {us - ref:+.2f} |")

    mg_a = asgi_us["mailguard DosFilter, allowed"] - bare
    slow = asgi_us["slowapi ASGI middleware, allowed"] - bare
    fl_bare = wsgi_us["bare Flask app"]
    mg_w = wsgi_us["Flask + mailguard DosFilter, allowed"] - fl_bare
    fl = wsgi_us["Flask + Flask-Limiter, allowed"] - fl_bare

    def times(peer: float, ours: float) -> str:
        return f"{peer / ours:.1f}x" if ours > 0 else "inf"

    print("\n## Targets\n")
    checks = [
        ("ASGI allowed <= 1.25x bare Starlette",
         asgi_us["mailguard DosFilter, allowed"] / bare <= 1.25,
         f"{asgi_us['mailguard DosFilter, allowed'] / bare:.2f}x"),
        ("ASGI refused <= 0.6x bare Starlette",
         asgi_us["mailguard DosFilter, refused"] / bare <= 0.6,
         f"{asgi_us['mailguard DosFilter, refused'] / bare:.2f}x"),
        ("WSGI allowed <= 1.25x bare werkzeug",
         wsgi_us["mailguard DosFilter, allowed"] / wsgi_us["bare werkzeug app"] <= 1.25,
         f"{wsgi_us['mailguard DosFilter, allowed'] / wsgi_us['bare werkzeug app']:.2f}x"),
        (">= 10x less added cost than slowapi (ASGI)", mg_a <= 0 or slow / mg_a >= 10,
         times(slow, mg_a)),
        (">= 10x less added cost than Flask-Limiter (WSGI)", mg_w <= 0 or fl / mg_w >= 10,
         times(fl, mg_w)),
    ]  # fmt: skip
    for label, ok, value in checks:
        print(f"- [{'x' if ok else ' '}] {label}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
