"""ASGI and WSGI give the same verdicts (issue #13, Tests).

Random sequences of requests (paths, methods, client addresses, login bodies,
the app's status, time passing) go through the same filter stack on Starlette
behind httpx and on Flask behind werkzeug's test client, each with its own
MemoryStore on its own FakeClock moved in step: every status code and
Retry-After must agree.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from flask import Flask, Response
from flask import request as flask_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mailguard import asgi, wsgi
from mailguard.core import FakeClock
from mailguard.stores import MemoryStore

STATUSES = [200, 302, 401, 403, 500]


def _filters(module: Any, app: Any, clock: FakeClock) -> Any:
    store = MemoryStore(clock=clock)
    app = module.InvalidLoginFilter(
        app, store=store, max_failed_logins=2, block_duration=60, failure_interval=30
    )
    return module.DosFilter(app, store=store, max_requests_per_sec=6)


def _starlette() -> Starlette:
    async def any_path(request: Request) -> PlainTextResponse:
        await request.body()
        status = int(request.headers.get("x-status", "200"))
        return PlainTextResponse("app", status_code=status)

    return Starlette(routes=[Route("/{rest:path}", any_path, methods=["GET", "POST", "PUT"])])


def _flask() -> Flask:
    app = Flask("parity")

    @app.route("/", defaults={"rest": ""}, methods=["GET", "POST", "PUT"])
    @app.route("/<path:rest>", methods=["GET", "POST", "PUT"])
    def any_path(rest: str) -> Response:
        flask_request.get_data()
        status = int(flask_request.headers.get("x-status", "200"))
        return Response("app", status=status, mimetype="text/plain")

    return app


bodies = st.one_of(
    st.just(b""),
    st.builds(lambda u, p: b"_user=%s&_pass=%s" % (u, p), st.sampled_from([b"ann", b"bob"]),
              st.binary(max_size=8).map(lambda b: b.hex().encode())),
    st.binary(max_size=40),
    st.just(b"_user=ann&pad=" + b"a" * 17_000),  # longer than max_body_bytes
)  # fmt: skip

requests = st.tuples(
    st.sampled_from(["/login", "/login", "/Login/", "/login;x=1", "/", "/mail"]),
    st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
    st.sampled_from(["203.0.113.7", "203.0.113.7", "2001:db8::1"]),
    bodies,
    st.sampled_from([*STATUSES, 401, 401, 401]),
    st.sampled_from([0.0] * 4 + [0.1] * 4 + [0.3, 1.1, 31.0, 61.0]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests, min_size=1, max_size=30))
def test_asgi_and_wsgi_agree(sequence: list[tuple[str, str, str, bytes, int, float]]) -> None:
    aclock, wclock = FakeClock(), FakeClock()
    asgi_app = _filters(asgi, _starlette(), aclock)
    flask = _flask()
    flask.wsgi_app = _filters(wsgi, flask.wsgi_app, wclock)  # type: ignore[method-assign]
    client = flask.test_client()

    async def run() -> list[tuple[int, str | None]]:
        seen = []
        for path, method, address, body, status, wait in sequence:
            aclock.advance(wait)
            transport = httpx.ASGITransport(app=asgi_app, client=(address, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as c:
                r = await c.request(
                    method,
                    path,
                    content=body,
                    headers={
                        "x-status": str(status),
                        "content-type": "application/x-www-form-urlencoded",
                    },
                )
            seen.append((r.status_code, r.headers.get("retry-after")))
        return seen

    over_asgi = asyncio.run(run())
    over_wsgi = []
    for path, method, address, body, status, wait in sequence:
        wclock.advance(wait)
        r = client.open(
            path,
            method=method,
            data=body,
            headers={"x-status": str(status), "content-type": "application/x-www-form-urlencoded"},
            environ_base={"REMOTE_ADDR": address},
        )
        over_wsgi.append((r.status_code, r.headers.get("retry-after")))
    assert over_asgi == over_wsgi
