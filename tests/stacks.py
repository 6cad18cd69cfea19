"""Real ASGI and WSGI stacks for filter tests: one call shape for both.

``Stack.request(...)`` sends one request through the real stack (Starlette
behind httpx's ASGI transport, or Flask behind werkzeug's test client) from a
chosen peer address and returns ``(status, headers, body)``.  Tests written
against :class:`Stack` run unchanged on both interfaces, which is how we check
that the ASGI and WSGI adapters make the same decisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
from flask import Flask, Response, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

Reply = tuple[int, dict[str, str], bytes]


class Stack:
    kind = ""

    def request(
        self,
        path: str = "/",
        *,
        client: str = "203.0.113.7",
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        raise NotImplementedError


def starlette_app(calls: list[str] | None = None) -> Starlette:
    async def echo(req: Request) -> PlainTextResponse:
        if calls is not None:
            calls.append(req.url.path)
        return PlainTextResponse(f"ok {req.url.path}")

    async def boom(req: Request) -> PlainTextResponse:
        raise RuntimeError("app failure")

    return Starlette(
        routes=[
            Route("/boom", boom),
            Route("/{rest:path}", echo, methods=["GET", "POST", "HEAD"]),
        ]
    )


def flask_app(calls: list[str] | None = None) -> Flask:
    app = Flask("stack")

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("app failure")

    @app.route("/", defaults={"rest": ""}, methods=["GET", "POST", "HEAD"])
    @app.route("/<path:rest>", methods=["GET", "POST", "HEAD"])
    def echo(rest: str) -> Response:
        if calls is not None:
            calls.append(request.path)
        return Response(f"ok {request.path}", mimetype="text/plain")

    return app


class AsgiStack(Stack):
    kind = "asgi"

    def __init__(self, wrap: Callable[[Any], Any], calls: list[str] | None = None) -> None:
        self.app = wrap(starlette_app(calls))

    async def arequest(
        self,
        path: str = "/",
        *,
        client: str = "203.0.113.7",
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        transport = httpx.ASGITransport(app=self.app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as c:
            r = await c.request(method, path, headers=headers, content=body)
            return r.status_code, dict(r.headers), r.content

    def request(self, path: str = "/", **kw: Any) -> Reply:
        return asyncio.run(self.arequest(path, **kw))


class WsgiStack(Stack):
    kind = "wsgi"

    def __init__(self, wrap: Callable[[Any], Any], calls: list[str] | None = None) -> None:
        flask = flask_app(calls)
        flask.wsgi_app = wrap(flask.wsgi_app)  # type: ignore[method-assign]
        self.client = flask.test_client()

    def request(
        self,
        path: str = "/",
        *,
        client: str = "203.0.113.7",
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Reply:
        r = self.client.open(
            path, method=method, headers=headers, data=body, environ_base={"REMOTE_ADDR": client}
        )
        return r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_data()
