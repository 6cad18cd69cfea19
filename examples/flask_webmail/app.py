"""A tiny Flask webmail behind the WSGI DosFilter and InvalidLoginFilter.

Run it (from the repository root, with mailguard and flask installed)::

    flask --app examples/flask_webmail/app.py run --port 8000

then open http://127.0.0.1:8000/ and log in as ``alice`` / ``wonderland``.
Five wrong passwords in a row from one address block its logins for 15
minutes; more than 20 requests a second from one address are refused.  Both
answers are 503 with ``Retry-After``, sent before Flask is called.

The login answers as Flask-Login apps usually do: a wrong password shows the
form again (a 200, with a message), a right one redirects.  No status says
"failed", so the filter is told what does, the recipe for such apps::

    InvalidLoginFilter(app.wsgi_app, login_paths=["/login"],
                       failure_statuses=(), is_failure=form_re_rendered)

``form_re_rendered`` (below) calls a 200 to a POST on a login path a failure;
a redirect is a success, and nothing else (a 400 for a missing CSRF token, a
405) counts.  A POST answered with the form for another reason (a field
missing) tried no password but counts all the same: only guessers send those.
Or let the view say it: a response header ``X-Login-Result: fail`` (or
``ok``) wins over the status, and the filter removes it.

Behind a reverse proxy, pass ``trusted_proxies=["<proxy address>"]`` to both
filters, or every user is counted as the proxy (see the README).  With
several worker processes (gunicorn -w 4), share one ``RedisStore`` instead of
the in-memory store (see ``examples/redis_workers``).
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask, redirect, request, session
from werkzeug.wrappers import Response

from mailguard import MemoryStore
from mailguard.wsgi import DosFilter, InvalidLoginFilter

USERS = {"alice": "wonderland", "bob": "builder"}  # stand-in for your user directory

LOGIN_FORM = """<!doctype html><title>Webmail</title>{message}
<form method="post" action="/login">
  <input name="username" placeholder="user"> <input name="password" type="password">
  <button>Log in</button>
</form>"""


def form_re_rendered(status: int, headers: Mapping[str, str]) -> bool:
    """``is_failure`` for a login that answers a wrong password with its form again.

    Only asked about POSTs to ``login_paths`` (the filter's login attempts): a
    200 there is the form shown again, so the password was wrong.  A redirect
    (302, 303) is below 400 and not a failure: a success.
    """
    return status == 200


def create_app(store: MemoryStore | None = None) -> Flask:
    """The webmail with both filters on one store (pass one to share or to test)."""
    app = Flask(__name__)
    app.secret_key = "change me"  # an example: load yours from the environment

    @app.get("/")
    def home() -> str:
        return LOGIN_FORM.format(message="")

    @app.post("/login")
    def login() -> Response | str:
        user = request.form.get("username", "")
        if USERS.get(user) != request.form.get("password"):
            # the form again, as a 200: form_re_rendered tells the filter it failed
            return LOGIN_FORM.format(message="<p>Wrong user name or password.</p>")
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
        failure_statuses=(),  # no status means "failed" here ...
        is_failure=form_re_rendered,  # ... the form shown again does
        store=store,
    )
    app.wsgi_app = DosFilter(  # type: ignore[method-assign]
        app.wsgi_app, max_requests_per_sec=20, store=store
    )
    return app


app = create_app()

if __name__ == "__main__":
    app.run(port=8000)
