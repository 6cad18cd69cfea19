"""Apps behind real servers for tests/test_bodies.py (run as a script or by gunicorn).

``python tests/body_servers.py SERVER PORT APP``: SERVER is ``uvicorn``,
``werkzeug`` or ``wsgiref``; APP is ``login`` (a login form behind
InvalidLoginFilter that counts the password checks it makes: ``GET /count``)
or ``delay`` (DosFilter in delay mode, addresses from X-Forwarded-For).
gunicorn loads ``body_servers:delay_wsgi`` itself.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any

from werkzeug.wrappers import Request

from mailguard import asgi, wsgi

LOGIN = {"max_failed_logins": 5, "attempt_timeout": 1, "block_duration": 60}
DELAY = {"max_requests_per_sec": 5, "delay_ms": 2000, "trusted_proxies": ["127.0.0.1"]}

_checks = 0
_lock = threading.Lock()


def _checked() -> None:
    global _checks
    with _lock:
        _checks += 1


def _login_wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    request = Request(environ)
    if request.path == "/count":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(_checks).encode()]
    request.form  # noqa: B018 - the whole body, as an app reads it
    _checked()  # the password check
    start_response("401 Unauthorized", [("Content-Type", "text/plain")])
    return [b"wrong password"]


async def _login_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/count":
        status, body = 200, str(_checks).encode()
    else:
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            more = message.get("more_body", False)
        _checked()
        status, body = 401, b"wrong password"
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _ok_wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


login_wsgi = wsgi.InvalidLoginFilter(_login_wsgi, **LOGIN)
login_asgi = asgi.InvalidLoginFilter(_login_asgi, **LOGIN)
delay_wsgi = wsgi.DosFilter(_ok_wsgi, **DELAY)


def main(server: str, port: int, which: str) -> None:
    if server == "uvicorn":
        import uvicorn

        uvicorn.run(login_asgi, host="127.0.0.1", port=port, log_level="warning")
        return
    app = login_wsgi if which == "login" else delay_wsgi
    if server == "werkzeug":
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", port, app, threaded=True)
    elif server == "wsgiref":
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        class Quiet(WSGIRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

        make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()
    else:
        raise SystemExit(f"unknown server {server!r}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
