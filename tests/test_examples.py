"""Every example in examples/, driven through its real stack.

The examples are not a package: each is loaded from its file path.  ASGI
examples are called through httpx's ASGI transport, WSGI ones through
werkzeug's test client, each from chosen client addresses.  The Redis example
runs two real uvicorn workers on loopback ports against a real redis-server.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from mailguard import FakeClock, MemoryStore

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MINE = (
    "starlette_webmail",
    "fastapi_app",
    "flask_webmail",
    "django_site",
    "activesync_gateway",
    "redis_workers",
)
ATTACKER = "203.0.113.66"
USER = "192.0.2.10"


def load(relative: str) -> ModuleType:
    """Import ``examples/<relative>`` under a name of its own."""
    path = EXAMPLES / relative
    name = "example_" + relative.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_every_example_says_how_to_run_it() -> None:
    paths = sorted(p for name in MINE for p in (EXAMPLES / name).rglob("*.py"))
    assert len(paths) >= 12
    for path in paths:
        text = path.read_text()
        assert text.startswith('"""'), f"{path} has no docstring"
        doc = text.split('"""')[1]
        assert "run" in doc.lower(), f"{path}: the docstring does not say how to run it"


# ------------------------------------------------------------------ helpers
Call = tuple[str, str, dict[str, Any]]  # method, path, httpx keywords


def asgi(app: Any, calls: list[Call], client: str = USER) -> list[httpx.Response]:
    """Send ``calls`` in order through ``app`` from one client address."""

    async def go() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            return [await c.request(method, path, **kw) for method, path, kw in calls]

    return asyncio.run(go())


def form(user: str, password: str) -> Call:
    return ("POST", "/login", {"data": {"username": user, "password": password}})


def refused(response: httpx.Response | Any) -> bool:
    return response.status_code == 503 and int(response.headers["retry-after"]) >= 1


# --------------------------------------------------------------- starlette
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def test_starlette_webmail_blocks_a_guesser_not_the_user(store: MemoryStore) -> None:
    example = load("starlette_webmail/app.py")
    assert asgi(example.app, [("GET", "/", {})])[0].status_code == 200  # the module's app
    app = example.create_app(store)
    guesses = asgi(app, [form("alice", f"guess{n}") for n in range(6)], client=ATTACKER)
    assert [r.status_code for r in guesses[:5]] == [401] * 5
    assert refused(guesses[5])  # the 6th never reached the app
    right = asgi(app, [form("alice", "wonderland")], client=ATTACKER)[0]
    assert refused(right)  # the address is blocked, whatever the password
    home, inbox = asgi(app, [form("alice", "wonderland"), ("GET", "/inbox", {})])
    assert home.status_code == 302 and inbox.status_code == 200  # alice, elsewhere


def test_starlette_webmail_caps_requests_per_second(store: MemoryStore, clock: FakeClock) -> None:
    app = load("starlette_webmail/app.py").create_app(store)
    replies = asgi(app, [("GET", "/", {})] * 21, client=ATTACKER)
    assert [r.status_code for r in replies[:20]] == [200] * 20
    assert refused(replies[20])
    assert asgi(app, [("GET", "/", {})])[0].status_code == 200  # another address
    clock.advance(1.0)
    assert asgi(app, [("GET", "/", {})], client=ATTACKER)[0].status_code == 200


# ----------------------------------------------------------------- fastapi
def test_fastapi_app_blocks_json_logins_and_caps_rate(store: MemoryStore, clock: FakeClock) -> None:
    example = load("fastapi_app/app.py")
    assert asgi(example.app, [("GET", "/api/messages", {})])[0].status_code == 200
    app = example.create_app(store)

    def login(password: str) -> Call:
        return ("POST", "/api/login", {"json": {"username": "bob", "password": password}})

    guesses = asgi(app, [login(f"x{n}") for n in range(6)], client=ATTACKER)
    assert [r.status_code for r in guesses[:5]] == [401] * 5
    assert refused(guesses[5])
    ok = asgi(app, [login("builder")])[0]
    assert ok.status_code == 200 and ok.json()["token"]
    assert ok.headers["ratelimit-limit"] == "20"  # DosFilter(headers=True)

    clock.advance(1.0)
    replies = asgi(app, [("GET", "/api/messages", {})] * 21)
    assert [r.status_code for r in replies[:20]] == [200] * 20
    assert refused(replies[20])
    assert replies[19].headers["ratelimit-remaining"] == "0"


# ------------------------------------------------------------------- flask
def test_flask_webmail_through_werkzeug(store: MemoryStore, clock: FakeClock) -> None:
    example = load("flask_webmail/app.py")
    assert example.app.test_client().get("/").status_code == 200
    app = example.create_app(store)
    attacker = app.test_client()
    user = app.test_client()

    def post(client: Any, address: str, password: str) -> Any:
        data = {"username": "alice", "password": password}
        return client.post("/login", data=data, environ_base={"REMOTE_ADDR": address})

    # Flask-Login style: the form again (200) for a wrong password, the is_failure recipe
    assert example.form_re_rendered(200, {}) and not example.form_re_rendered(302, {})
    guesses = [post(attacker, ATTACKER, f"guess{n}") for n in range(6)]
    assert [r.status_code for r in guesses[:5]] == [200] * 5
    assert "Wrong user name or password" in guesses[0].get_data(as_text=True)
    assert refused(guesses[5])
    assert post(user, USER, "wonderland").status_code == 302
    assert user.get("/inbox", environ_base={"REMOTE_ADDR": USER}).status_code == 200

    clock.advance(1.0)
    replies = [attacker.get("/", environ_base={"REMOTE_ADDR": ATTACKER}) for _ in range(21)]
    assert [r.status_code for r in replies[:20]] == [200] * 20
    assert refused(replies[20])


# ------------------------------------------------------------------ django
@pytest.fixture(scope="module")
def django_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    """``(asgi application, wsgi application)`` of examples/django_site, on a fresh
    SQLite database (migrated) holding the user alice / wonderland."""
    pytest.importorskip("django")
    site = str(EXAMPLES / "django_site")
    sys.path.insert(0, site)
    os.environ["MAILSITE_DB"] = str(tmp_path_factory.mktemp("mailsite") / "db.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mailsite.settings")
    try:
        from django.conf import settings

        # a fast hasher: Django's PBKDF2 takes a second per wrong password on a busy machine
        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
        import mailsite.asgi
        import mailsite.wsgi
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        get_user_model().objects.create_user("alice", password="wonderland")
        yield mailsite.asgi.application, mailsite.wsgi.application
    finally:
        sys.path.remove(site)
        os.environ.pop("MAILSITE_DB", None)


CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found is not None, "no CSRF token in the login form"
    return found.group(1)


def test_django_wsgi_counts_wrong_passwords_not_csrf_refusals(
    django_site: tuple[Any, Any],
) -> None:
    _, application = django_site
    attacker = "203.0.113.80"
    env = {"REMOTE_ADDR": attacker}
    client = Client(application)
    token = csrf_of(client.get("/accounts/login/", environ_base=env).get_data(as_text=True))

    def guess(password: str) -> Any:
        data = {"csrfmiddlewaretoken": token, "username": "alice", "password": password}
        return client.post("/accounts/login/", data=data, environ_base=env)

    # no CSRF token: Django refuses before LoginView, no password is tried, nothing counts
    forged = Client(application, use_cookies=False)
    data = {"username": "alice", "password": "guess"}
    for _ in range(6):
        assert forged.post("/accounts/login/", data=data, environ_base=env).status_code == 403
    guesses = [guess(f"guess{n}") for n in range(8)]
    assert [r.status_code for r in guesses[:5]] == [200] * 5  # the form, re-rendered
    assert "Wrong user name or password" in guesses[0].get_data(as_text=True)
    assert all(refused(r) for r in guesses[5:])  # blocked at max_failed_logins=5
    assert "x-login-result" not in guesses[0].headers  # the signal's header stays inside
    assert refused(guess("wonderland"))  # the address is blocked, whatever the password

    user = Client(application)
    env = {"REMOTE_ADDR": "192.0.2.80"}
    token = csrf_of(user.get("/accounts/login/", environ_base=env).get_data(as_text=True))
    data = {"csrfmiddlewaretoken": token, "username": "alice", "password": "wonderland"}
    ok = user.post("/accounts/login/", data=data, environ_base=env)
    assert ok.status_code == 302 and ok.headers["location"] == "/inbox/"
    inbox = user.get("/inbox/", environ_base=env)
    assert inbox.status_code == 200 and "Inbox of alice" in inbox.get_data(as_text=True)


def test_django_asgi_counts_wrong_passwords_not_csrf_refusals(
    django_site: tuple[Any, Any],
) -> None:
    application, _ = django_site

    async def session(address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=application, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://localhost")

    async def go() -> None:
        async with await session("203.0.113.81") as attacker:
            token = csrf_of((await attacker.get("/accounts/login/")).text)
            for _ in range(6):  # no CSRF token or cookie: a 403 before the view, not counted
                forged = await attacker.post(
                    "/accounts/login/",
                    data={"username": "alice", "password": "x"},
                    headers={"cookie": ""},
                )
                assert forged.status_code == 403
            guesses = [
                await attacker.post(
                    "/accounts/login/",
                    data={"csrfmiddlewaretoken": token, "username": "alice", "password": f"g{n}"},
                )
                for n in range(8)
            ]
            assert [r.status_code for r in guesses[:5]] == [200] * 5
            assert all(refused(r) for r in guesses[5:])
            right = {"csrfmiddlewaretoken": token, "username": "alice", "password": "wonderland"}
            assert refused(await attacker.post("/accounts/login/", data=right))
        async with await session("192.0.2.81") as user:
            token = csrf_of((await user.get("/accounts/login/")).text)
            right = {"csrfmiddlewaretoken": token, "username": "alice", "password": "wonderland"}
            ok = await user.post("/accounts/login/", data=right)
            assert ok.status_code == 302 and ok.headers["location"] == "/inbox/"
            inbox = await user.get("/inbox/")
            assert inbox.status_code == 200 and "Inbox of alice" in inbox.text

    asyncio.run(go())


def test_django_signals_judge_a_json_login_that_always_answers_200(
    django_site: tuple[Any, Any],
) -> None:
    application, _ = django_site

    async def go(address: str, passwords: list[str]) -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=application, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
            await c.get("/accounts/login/")  # the CSRF cookie (login() rotates it)
            return [
                await c.post(
                    "/api/login/",
                    json={"username": "alice", "password": p},
                    headers={"x-csrftoken": c.cookies["csrftoken"]},
                )
                for p in passwords
            ]

    guesses = asyncio.run(go("203.0.113.82", [f"g{n}" for n in range(6)]))
    assert [r.status_code for r in guesses[:5]] == [200] * 5
    assert guesses[0].json() == {"ok": False} and "x-login-result" not in guesses[0].headers
    assert refused(guesses[5])  # user_login_failed said "fail" each time
    good = asyncio.run(go("192.0.2.82", ["wonderland"] * 6))
    assert [r.json() for r in good] == [{"ok": True}] * 6  # user_logged_in: "ok", never counted


def test_django_asgi_caps_requests_per_second(django_site: tuple[Any, Any]) -> None:
    application, _ = django_site
    # 20 requests/s on a real clock: 60 as fast as possible cannot all pass
    replies = asgi(application, [("GET", "/accounts/login/", {})] * 60, client="198.51.100.7")
    assert replies[0].status_code == 200
    assert any(refused(r) for r in replies)
    assert all(r.status_code in (200, 503) for r in replies)


# -------------------------------------------------------------- activesync
def sync(device: str, user: str = "alice", password: str = "wonderland") -> Call:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (
        "POST",
        f"/Microsoft-Server-ActiveSync?Cmd=Sync&User={user}&DeviceId={device}&DeviceType=iPhone",
        {"headers": {"authorization": f"Basic {token}"}},
    )


def test_activesync_gateway_jails_one_device_not_the_office(
    store: MemoryStore, clock: FakeClock
) -> None:
    app = load("activesync_gateway/app.py").create_app(store, upstream="")
    office = "198.51.100.10"
    for _ in range(150):  # 10 a second: under DosFilter, within DeviceJail's 30 s window
        assert asgi(app, [sync("loopy1")], client=office)[0].status_code == 200
        clock.advance(0.1)
    jailed = asgi(app, [sync("loopy1")], client=office)[0]
    assert refused(jailed) and int(jailed.headers["retry-after"]) == 600
    other = asgi(app, [sync("calm2", user="bob", password="builder")], client=office)[0]
    assert other.status_code == 200  # another phone behind the same NAT address
    clock.advance(600)
    assert asgi(app, [sync("loopy1")], client=office)[0].status_code == 200


def test_activesync_gateway_blocks_bad_passwords(store: MemoryStore) -> None:
    app = load("activesync_gateway/app.py").create_app(store, upstream="")
    bad = asgi(app, [sync(f"dev{n}", password="guess") for n in range(11)], client=ATTACKER)
    assert [r.status_code for r in bad[:10]] == [401] * 10
    assert refused(bad[10])
    assert refused(asgi(app, [sync("dev0")], client=ATTACKER)[0])
    assert asgi(app, [sync("dev0")])[0].status_code == 200  # the account itself still works


def test_activesync_gateway_forwards_to_the_upstream(store: MemoryStore) -> None:
    seen: list[httpx.Request] = []

    def upstream(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers={"ms-server-activesync": "16.1"}, content=b"ok")

    app = load("activesync_gateway/app.py").create_app(
        store, upstream="https://mail.internal", transport=httpx.MockTransport(upstream)
    )
    reply = asgi(app, [sync("abc123")])[0]
    assert reply.status_code == 200 and reply.content == b"ok"
    assert reply.headers["ms-server-activesync"] == "16.1"
    assert seen[0].url.path == "/Microsoft-Server-ActiveSync"
    assert seen[0].url.params["DeviceId"] == "abc123"
    assert seen[0].headers["authorization"].startswith("Basic ")


# ------------------------------------------------------------ redis workers
def test_redis_workers_share_limits() -> None:
    pytest.importorskip("redis")
    try:
        from mailguard.stores.redis import RedisStore  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"RedisStore is not importable: {exc}")
    from redis_server import RedisServer, free_port

    server = RedisServer.for_tests()  # skips when redis-server is not on PATH
    run = load("redis_workers/run.py")
    limit = 8
    env = {
        "MAILGUARD_REDIS_URL": server.url,
        "MAILGUARD_PREFIX": f"examples-{uuid.uuid4().hex[:8]}:",
        "MAILGUARD_MAX_RPS": str(limit),
        "MAILGUARD_MAX_FAILED_LOGINS": "3",
    }
    workers: list[Any] = []
    try:
        workers = run.start_workers([free_port(), free_port()], env=env)
        run.wait_ready(workers)
        urls = [w.url for w in workers]
        with httpx.Client(timeout=5.0) as http:
            pids = {http.get(url + "/").headers["x-worker"] for url in urls}  # warm up
            assert len(pids) == 2
            time.sleep(1.05)

            started = time.monotonic()
            replies = [http.get(urls[n % 2] + "/") for n in range(3 * limit)]
            elapsed = time.monotonic() - started
            served = [r for r in replies if r.status_code == 200]
            assert all(r.status_code == 200 or refused(r) for r in replies)
            assert {r.headers["x-worker"] for r in served} == pids  # both served some ...
            assert any(refused(r) for r in replies[0::2]) and any(
                refused(r) for r in replies[1::2]
            )  # ... and both refused some
            if elapsed < 1.0:  # one sliding second: the limit is global, not per worker
                assert len(served) == limit
            time.sleep(1.05)

            def guess(n: int, password: str = "nope") -> httpx.Response:
                data = {"username": "alice", "password": password}
                return http.post(urls[n % 2] + "/login", data=data)

            assert [guess(n).status_code for n in range(3)] == [401, 401, 401]
            assert refused(guess(3))  # worker 2 knows of the failures on worker 1
            assert refused(guess(4, "wonderland"))
    finally:
        run.stop_workers(workers)
        server.close()
    assert all(w.process.poll() is not None for w in workers)
