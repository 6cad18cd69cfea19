"""A tiny Flask webmail behind the WSGI DosFilter and InvalidLoginFilter.

Run it (from the repository root, with mailguard and flask installed)::

    flask --app examples/flask_webmail/app.py run --port 8000

then open http://127.0.0.1:8000/ and log in as ``alice`` / ``wonderland``.
Five wrong passwords in a row from one address block its logins for 15
minutes; more than 20 requests a second from one address are refused.  Both
answers are 503 with ``Retry-After``, sent before Flask is called.

Behind a reverse proxy, pass ``trusted_proxies=["<proxy address>"]`` to both
filters, or every user is counted as the proxy (see the README).  With
several worker processes (gunicorn -w 4), share one ``RedisStore`` instead of
the in-memory store (see ``examples/redis_workers``).
"""

from __future__ import annotations

from flask import Flask, redirect, request, session
from werkzeug.wrappers import Response

from mailguard import MemoryStore
from mailguard.wsgi import DosFilter, InvalidLoginFilter

USERS = {"alice": "wonderland", "bob": "builder"}  # stand-in for your user directory

LOGIN_FORM = """<!doctype html><title>Webmail</title>
<form method="post" action="/login">
  <input name="username" placeholder="user"> <input name="password" type="password">
  <button>Log in</button>
</form>"""


def create_app(store: MemoryStore | None = None) -> Flask:
    """The webmail with both filters on one store (pass one to share or to test)."""
    app = Flask(__name__)
    app.secret_key = "change me"  # an example: load yours from the environment

    @app.get("/")
    def home() -> str:
        return LOGIN_FORM

    @app.post("/login")
    def login() -> Response | tuple[str, int]:
        user = request.form.get("username", "")
        if USERS.get(user) != request.form.get("password"):
            # a 401 on the login path is what InvalidLoginFilter counts as a failure
            return "Wrong user name or password.\n" + LOGIN_FORM, 401
        session["user"] = user
        return redirect("/inbox", code=302)

    @app.get("/inbox")
    def inbox() -> Response | str:
        if session.get("user") not in USERS:
            return redirect("/", code=302)
        return f"<h1>Inbox of {session['user']}</h1><p>No new mail.</p>"

    store = store if store is not None else MemoryStore()
    # the last wrapper is the outermost: DosFilter sees every request first
    app.wsgi_app = InvalidLoginFilter(  # type: ignore[method-assign]
        app.wsgi_app,
        max_failed_logins=5,
        failure_interval=300,
        block_duration=900,
        login_paths=["/login"],
        store=store,
    )
    app.wsgi_app = DosFilter(  # type: ignore[method-assign]
        app.wsgi_app, max_requests_per_sec=20, store=store
    )
    return app


app = create_app()

if __name__ == "__main__":
    app.run(port=8000)
