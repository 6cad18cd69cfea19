"""Read by mypy, not run: the adapters' and policies' keywords are typed.

``tests/test_options.py`` runs mypy (strict, the project's settings) on this
file.  Each line marked ``type: ignore[...]`` must be an error, because the
project sets ``warn_unused_ignores``: were a misspelt keyword accepted, its
ignore would be unused and mypy would fail.  Every other line must pass.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from starlette.applications import Starlette

from mailguard import MemoryStore, asgi, wsgi
from mailguard.policies import DeviceJailPolicy, DosPolicy, InvalidLoginPolicy, RefusalInfo


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    return None


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    return [b""]


store = MemoryStore()


def json_refusal(info: RefusalInfo) -> tuple[int, dict[str, str], str]:
    return 429, {"content-type": "application/json"}, json.dumps({"error": info.reason})


def eas_refusal(info: RefusalInfo) -> tuple[int, list[tuple[str, str]], bytes]:
    return 503, [("x-ms-asthrottle", "CommandFrequency")], b""


# Right keywords: no error.
asgi.DosFilter(asgi_app, max_requests_per_sec=5, safe_ips=["10.0.0.0/8"], store=store)
wsgi.DosFilter(wsgi_app, max_requests_per_sec=5, delay_ms=0)
asgi.InvalidLoginFilter(asgi_app, max_failed_logins=5, block_duration="25m", preset="sogo")
wsgi.DeviceJail(wsgi_app, max_requests=150, time_window=30, jail_duration=600)
DosPolicy(max_requests_per_sec=5, trusted_proxies=["192.0.2.1"])
Starlette().add_middleware(asgi.DosFilter, max_requests_per_sec=100)
asgi.InvalidLoginFilter(asgi_app, preset="django", refusal=json_refusal)
wsgi.DeviceJail(wsgi_app, refusal=eas_refusal)

# Misspelt or misplaced keywords: each an error.
asgi.DosFilter(asgi_app, max_request_per_sec=5)  # type: ignore[call-arg]
wsgi.DosFilter(wsgi_app, max_request_per_sec=5)  # type: ignore[call-arg]
asgi.InvalidLoginFilter(asgi_app, max_failed_login=5)  # type: ignore[call-arg]
wsgi.DeviceJail(wsgi_app, jail_duraton=600)  # type: ignore[call-arg]
asgi.DeviceJail(asgi_app, max_failed_logins=5)  # type: ignore[call-arg]
DosPolicy(max_request_per_sec=5)  # type: ignore[call-arg]
InvalidLoginPolicy(safe_ip=["10.0.0.0/8"])  # type: ignore[call-arg]
DeviceJailPolicy(max_requests="150")  # type: ignore[arg-type]
asgi.DosFilter(asgi_app, max_requests_per_sec="5")  # type: ignore[arg-type]
Starlette().add_middleware(asgi.DosFilter, max_request_per_sec=100)  # type: ignore[call-arg]
asgi.DosFilter(asgi_app, refusal="<p>wait</p>")  # type: ignore[arg-type]
