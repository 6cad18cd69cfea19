"""A tiny Starlette webmail behind DosFilter and InvalidLoginFilter.

Run it (from the repository root, with mailguard and uvicorn installed)::

    uvicorn --app-dir examples/starlette_webmail app:app --port 8000

then open http://127.0.0.1:8000/ and log in as ``alice`` / ``wonderland``.
Five wrong passwords in a row from one address block that address's logins
for 15 minutes (503 with Retry-After); more than 20 requests in one second
from one address are refused the same way.  Everyone else keeps working.

The filters are added as Starlette middleware; the first in the list is the
outermost, so DosFilter sees every request before anything else runs.
"""

from __future__ import annotations

from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mailguard import MemoryStore
from mailguard.asgi import DosFilter, InvalidLoginFilter

USERS = {"alice": "wonderland", "bob": "builder"}  # stand-in for your user directory

LOGIN_FORM = """<!doctype html><title>Webmail</title>
<form method="post" action="/login">
  <input name="username" placeholder="user"> <input name="password" type="password">
  <button>Log in</button>
</form>"""


async def home(request: Request) -> Response:
    return HTMLResponse(LOGIN_FORM)


async def login(request: Request) -> Response:
    # parse the form by hand so the example needs no python-multipart
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    user = form.get("username", [""])[0]
    if USERS.get(user) != form.get("password", [""])[0]:
        # a 401 on the login path is what InvalidLoginFilter counts as a failure
        return HTMLResponse("Wrong user name or password.\n" + LOGIN_FORM, status_code=401)
    response = RedirectResponse("/inbox", status_code=302)
    response.set_cookie("session", user, httponly=True)  # a real app signs its sessions
    return response


async def inbox(request: Request) -> Response:
    user = request.cookies.get("session")
    if user not in USERS:
        return RedirectResponse("/", status_code=302)
    return HTMLResponse(f"<h1>Inbox of {user}</h1><p>No new mail.</p>")


def create_app(store: MemoryStore | None = None) -> Starlette:
    """The webmail with both filters on one store (pass one to share or to test)."""
    store = store if store is not None else MemoryStore()
    return Starlette(
        routes=[
            Route("/", home),
            Route("/login", login, methods=["POST"]),
            Route("/inbox", inbox),
        ],
        middleware=[
            Middleware(DosFilter, max_requests_per_sec=20, store=store),
            Middleware(
                InvalidLoginFilter,
                max_failed_logins=5,
                failure_interval=300,
                block_duration=900,
                login_paths=["/login"],
                store=store,
            ),
        ],
    )


app = create_app()
