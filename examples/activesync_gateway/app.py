"""An ActiveSync gateway: all three filters in front of Exchange ActiveSync.

Run it (from the repository root, with mailguard, httpx and uvicorn installed)::

    ACTIVESYNC_UPSTREAM=https://mail.internal.example \\
        uvicorn --app-dir examples/activesync_gateway app:app --port 8443

Without ``ACTIVESYNC_UPSTREAM`` a stub mail server answers (user ``alice``,
password ``wonderland``), so it can be tried on its own::

    uvicorn --app-dir examples/activesync_gateway app:app --port 8443
    curl -s -u alice:wonderland -X POST \\
        'localhost:8443/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=abc123&DeviceType=iPhone'

What stands in front of the mail server, outermost first:

- ``DosFilter``: at most 50 requests a second per address (an office NAT
  with a hundred phones stays far below that);
- ``DeviceJail``: a device (``DeviceId``, per account) that sends more than
  150 requests in 30 s is jailed for 10 minutes, Carbonio's defaults; the
  other devices behind the same address are not touched;
- ``InvalidLoginFilter`` with the ``activesync`` preset: every request that
  carries Basic or Bearer credentials is a login, and 10 answers of 401 in a
  row from one address block it for 15 minutes.

Every refusal is a 503 with ``Retry-After``, which ActiveSync clients back off
on.  Behind a load balancer, add ``trusted_proxies=[...]`` to every filter.
"""

from __future__ import annotations

import base64
import contextlib
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailguard import MemoryStore
from mailguard.asgi import DeviceJail, DosFilter, InvalidLoginFilter

PATH = "/Microsoft-Server-ActiveSync"
STUB_USERS = {"alice": "wonderland", "bob": "builder"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "te"}


async def stub(request: Request) -> Response:
    """A stand-in mail server: checks Basic credentials and says OK."""
    user = password = ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic":
        with contextlib.suppress(ValueError):  # broken base64 or not UTF-8
            user, _, password = base64.b64decode(token).decode().partition(":")
    if STUB_USERS.get(user) != password:
        return Response(status_code=401, headers={"www-authenticate": 'Basic realm="ActiveSync"'})
    headers = {"ms-server-activesync": "16.1", "ms-asprotocolversions": "14.1,16.0,16.1"}
    return Response(status_code=200, headers=headers)


def proxy(upstream: str, transport: Any = None) -> Any:
    """An endpoint that forwards each request to ``upstream`` with httpx."""
    import httpx  # only needed when there is an upstream

    client = httpx.AsyncClient(base_url=upstream, transport=transport, timeout=60.0)

    async def forward(request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        answer = await client.request(
            request.method,
            request.url.path,
            params=request.url.query,
            headers=headers,
            content=await request.body(),
        )
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        kept.pop("content-length", None)
        kept.pop("content-encoding", None)  # httpx has decoded the body
        return Response(answer.content, status_code=answer.status_code, headers=kept)

    return forward


def create_app(
    store: MemoryStore | None = None, upstream: str | None = None, transport: Any = None
) -> Any:
    """The gateway: the three filters on one store, around the stub or a proxy."""
    upstream = upstream if upstream is not None else os.environ.get("ACTIVESYNC_UPSTREAM")
    endpoint = proxy(upstream, transport) if upstream else stub
    app: Any = Starlette(routes=[Route(PATH, endpoint, methods=["GET", "POST", "OPTIONS"])])
    store = store if store is not None else MemoryStore()
    app = InvalidLoginFilter(
        app, preset="activesync", max_failed_logins=10, block_duration=900, store=store
    )
    app = DeviceJail(app, max_requests=150, time_window=30, jail_duration=600, store=store)
    app = DosFilter(app, max_requests_per_sec=50, store=store)
    return app


app = create_app()
