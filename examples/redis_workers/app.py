"""One worker of a multi-process deployment: limits shared through Redis.

Don't run this module alone: ``run.py`` beside it starts the workers::

    redis-server --port 6379 --save "" --appendonly no &      # or your Redis
    MAILGUARD_REDIS_URL=redis://127.0.0.1:6379/0 python examples/redis_workers/run.py

Every worker process builds its own ``RedisStore`` on the same URL, so the
limits hold for the whole deployment: 10 requests a second per address across
all workers (not 10 per worker), and an address that fails 5 logins, on any
mix of workers, is blocked on all of them.  Each answer names the worker that
gave it (``X-Worker``).

Environment: ``MAILGUARD_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``),
``MAILGUARD_PREFIX`` (default ``mailguard:``), ``MAILGUARD_MAX_RPS`` (10),
``MAILGUARD_MAX_FAILED_LOGINS`` (5).
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mailguard import RedisStore
from mailguard.asgi import DosFilter, InvalidLoginFilter

USERS = {"alice": "wonderland"}
WORKER = str(os.getpid())

store = RedisStore(
    os.environ.get("MAILGUARD_REDIS_URL", "redis://127.0.0.1:6379/0"),
    prefix=os.environ.get("MAILGUARD_PREFIX", "mailguard:"),
)


async def home(request: Request) -> Response:
    return PlainTextResponse("hello\n", headers={"x-worker": WORKER})


async def login(request: Request) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    ok = USERS.get(form.get("username", [""])[0]) == form.get("password", [""])[0]
    return PlainTextResponse(
        "welcome\n" if ok else "wrong password\n",
        status_code=200 if ok else 401,
        headers={"x-worker": WORKER},
    )


app = Starlette(
    routes=[Route("/", home), Route("/login", login, methods=["POST"])],
    middleware=[
        Middleware(
            DosFilter,
            max_requests_per_sec=int(os.environ.get("MAILGUARD_MAX_RPS", "10")),
            store=store,
        ),
        Middleware(
            InvalidLoginFilter,
            max_failed_logins=int(os.environ.get("MAILGUARD_MAX_FAILED_LOGINS", "5")),
            block_duration=900,
            login_paths=["/login"],
            store=store,
        ),
    ],
)
