"""A small mail login behind mailguard, served by real servers in tests/test_fail2ban.py.

``asgi`` for uvicorn, ``wsgi`` for gunicorn, ``flask_app`` for ``flask run``
(``logsite`` beside it is the Django site): a wrong password is a 401 on
``POST /login``; behind a proxy on 127.0.0.1 (X-Forwarded-For is believed).
The app configures no logging: what the servers print is what users see.
Each is built on first use, once, so its filters log one startup line each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi

OPTIONS: dict[str, Any] = {"trusted_proxies": ["127.0.0.1"]}


async def _asgi_login(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


def _wsgi_login(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("401 Unauthorized", [("content-type", "text/plain")])
    return [b"no"]


def guard_wsgi(app: Any) -> Any:
    return mg_wsgi.DosFilter(
        mg_wsgi.InvalidLoginFilter(app, max_failed_logins=3, **OPTIONS),
        max_requests_per_sec=5,
        **OPTIONS,
    )


def _asgi() -> Any:
    return mg_asgi.DosFilter(
        mg_asgi.InvalidLoginFilter(_asgi_login, max_failed_logins=3, **OPTIONS),
        max_requests_per_sec=5,
        **OPTIONS,
    )


def _flask() -> Any:
    from flask import Flask

    app = Flask("logapp")

    @app.post("/login")
    def login() -> tuple[str, int]:
        return "no", 401

    app.wsgi_app = guard_wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


_BUILD: dict[str, Callable[[], Any]] = {
    "asgi": _asgi,
    "wsgi": lambda: guard_wsgi(_wsgi_login),
    "flask_app": _flask,
}
_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    if name not in _BUILD:
        raise AttributeError(name)
    if name not in _built:
        _built[name] = _BUILD[name]()
    return _built[name]
