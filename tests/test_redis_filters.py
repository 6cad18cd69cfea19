"""The filters over a shared RedisStore: several apps, processes and interfaces, one limit.

Each app here has its own RedisStore instance (its own connections), as
separate workers or hosts would; they share only the Redis server and the key
prefix.  A FakeClock shared by the instances of one test keeps the windows
still while the test runs (two processes use the same frozen clock).
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from redis_server import RedisServer, free_port
from werkzeug.test import Client

from mailguard import FakeClock, RedisStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi

T0 = 1_700_000_000.0
ATTACKER = "203.0.113.7"
AS = "/Microsoft-Server-ActiveSync?Cmd=Sync&DeviceId=ABC123&DeviceType=iPhone&User=jdoe"
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"f{next(_prefixes)}:"


# --------------------------------------------------------------- the apps


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """200 "ok", except 401 for POST /login (every login fails)."""
    if scope["type"] != "http":
        return
    status = 401 if scope["path"] == "/login" and scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    login = environ["PATH_INFO"] == "/login" and environ["REQUEST_METHOD"] == "POST"
    start_response("401 Unauthorized" if login else "200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class AsgiApp:
    """An ASGI filter on its own event loop, driven synchronously."""

    def __init__(self, middleware: Any, store: RedisStore, **options: Any) -> None:
        self.store = store
        self.app = middleware(asgi_app, store=store, **options)
        self.loop = asyncio.new_event_loop()

    def request(self, path: str = "/", method: str = "GET", client: str = ATTACKER) -> int:
        async def send() -> int:
            transport = httpx.ASGITransport(app=self.app, client=(client, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as c:
                return (await c.request(method, path)).status_code

        return self.loop.run_until_complete(send())

    def close(self) -> None:
        self.loop.run_until_complete(self.store.aclose())
        self.loop.close()


class WsgiApp:
    def __init__(self, middleware: Any, store: RedisStore, **options: Any) -> None:
        self.store = store
        self.client = Client(middleware(wsgi_app, store=store, **options))

    def request(self, path: str = "/", method: str = "GET", client: str = ATTACKER) -> int:
        return int(
            self.client.open(path, method=method, environ_base={"REMOTE_ADDR": client}).status_code
        )

    def close(self) -> None:
        self.store.close()


# ------------------------------------------------------------------ sharing


def test_an_asgi_and_a_wsgi_app_share_one_limit(server: RedisServer, prefix: str) -> None:
    clock = FakeClock(T0)
    front = AsgiApp(
        mg_asgi.DosFilter,
        RedisStore(server.url, prefix=prefix, clock=clock),
        max_requests_per_sec=6,
    )
    back = WsgiApp(
        mg_wsgi.DosFilter,
        RedisStore(server.url, prefix=prefix, clock=clock),
        max_requests_per_sec=6,
    )
    try:
        codes = [app.request() for _ in range(5) for app in (front, back)]
        assert codes == [200] * 6 + [503] * 4  # 6 in all, not 6 each
        assert front.request(client="198.51.100.1") == 200  # another client is unaffected
        clock.advance(1.0)
        assert [front.request(), back.request()] == [200, 200]
    finally:
        front.close()
        back.close()


WORKER = textwrap.dedent(
    """
    import sys
    from werkzeug.test import Client
    from mailguard import RedisStore
    from mailguard.wsgi import DosFilter

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = RedisStore(url, prefix=prefix, clock=lambda: 1_700_000_000.0)  # time stands still
    client = Client(DosFilter(app, max_requests_per_sec=10, store=store))
    sys.stdin.readline()  # start together
    codes = [client.get("/", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code
             for _ in range(count)]
    print(" ".join(map(str, codes)))
    """
)


def test_two_worker_processes_share_one_limit(server: RedisServer, prefix: str) -> None:
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, server.url, prefix, "15"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [w.communicate("go\n", timeout=60)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0]
    codes = Counter(int(c) for out in outputs for c in out.split())
    assert codes == {200: 10, 503: 20}


def test_a_login_block_holds_on_every_instance(server: RedisServer, prefix: str) -> None:
    clock = FakeClock(T0)
    options = {"max_failed_logins": 4, "failure_interval": 60, "block_duration": 600}
    one = AsgiApp(
        mg_asgi.InvalidLoginFilter, RedisStore(server.url, prefix=prefix, clock=clock), **options
    )
    two = WsgiApp(
        mg_wsgi.InvalidLoginFilter, RedisStore(server.url, prefix=prefix, clock=clock), **options
    )
    try:
        assert [app.request("/login", "POST") for app in (one, two, one, two)] == [401] * 4
        # blocked everywhere: the next guess never reaches either app
        assert one.request("/login", "POST") == 503
        assert two.request("/login", "POST") == 503
        assert two.request("/login", "POST", client="198.51.100.20") == 401  # the real user
        clock.advance(600)
        assert one.request("/login", "POST") == 401
    finally:
        one.close()
        two.close()


def test_a_device_jail_holds_on_every_instance(server: RedisServer, prefix: str) -> None:
    clock = FakeClock(T0)
    options = {"max_requests": 5, "time_window": 30, "jail_duration": 60}
    one = WsgiApp(mg_wsgi.DeviceJail, RedisStore(server.url, prefix=prefix, clock=clock), **options)
    two = AsgiApp(mg_asgi.DeviceJail, RedisStore(server.url, prefix=prefix, clock=clock), **options)
    try:
        codes = [app.request(AS, "POST") for _ in range(3) for app in (one, two)]
        assert codes == [200] * 5 + [503]  # the 6th request in 30 s jails the device
        assert one.request(AS, "POST") == 503
        assert two.request(AS.replace("ABC123", "OTHER1"), "POST") == 200
        clock.advance(60)
        assert [one.request(AS, "POST"), two.request(AS, "POST")] == [200, 200]
    finally:
        one.close()
        two.close()


# ------------------------------------------------- every redis-py, both paths


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
@pytest.mark.parametrize("time_from", ["server", "clock"])
def test_dos_filter_on_redis_limits_a_burst(
    server: RedisServer, prefix: str, interface: str, time_from: str, caplog: Any
) -> None:
    """50 requests at a limit of 5/s: 5 served, 45 refused, nothing logged as an error.

    Under redis-py 5 to 7 the synchronous path once failed on every call
    (it read an attribute only redis-py 8 has; before 5.3 taking a pooled
    connection failed too), and the default on_store_error="open" served all
    50.  ``scripts/test.sh`` runs this on the oldest redis-py allowed as well
    as the newest.
    """
    import redis as redis_py

    clock = FakeClock(T0) if time_from == "clock" else None
    store = RedisStore(server.url, prefix=prefix, clock=clock)
    middleware = mg_wsgi.DosFilter if interface == "wsgi" else mg_asgi.DosFilter
    wrapper = WsgiApp if interface == "wsgi" else AsgiApp
    app = wrapper(middleware, store, max_requests_per_sec=5)
    try:
        started = time.monotonic()
        codes = [app.request() for _ in range(50)]
        took = time.monotonic() - started
    finally:
        app.close()
    version = f"redis-py {redis_py.__version__}"
    errors = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    if clock is None and took >= 0.9 and codes.count(200) > 5:
        pytest.skip(f"50 requests took {took:.2f} s: too slow to stay in one window")
    assert codes == [200] * 5 + [503] * 45, f"{version}: {errors}"
    assert errors == [], version


@pytest.mark.parametrize("interface", ["wsgi", "asgi"])
def test_a_store_bug_is_logged_every_time(
    server: RedisServer,
    prefix: str,
    interface: str,
    caplog: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A programming error is never a quiet outage: one ERROR line per failed decision."""
    from mailguard.stores import redis as mg_redis

    store = RedisStore(server.url, prefix=prefix, clock=FakeClock(T0))
    if interface == "wsgi":

        def broken(*args: Any, **options: Any) -> Any:
            raise AttributeError("'Connection' object has no attribute 'is_connected'")

        monkeypatch.setattr(store._sync(), "execute_command", broken)
    else:

        async def broken_batch(client: Any, commands: Any) -> Any:
            raise AttributeError("'Connection' object has no attribute 'is_connected'")

        monkeypatch.setattr(mg_redis, "_pipeline", broken_batch)
    middleware = mg_wsgi.DosFilter if interface == "wsgi" else mg_asgi.DosFilter
    wrapper = WsgiApp if interface == "wsgi" else AsgiApp
    app = wrapper(middleware, store, max_requests_per_sec=5)
    try:
        with caplog.at_level("ERROR", logger="mailguard.store"):
            codes = [app.request() for _ in range(4)]
    finally:
        app.close()
    assert codes == [200] * 4  # on_store_error="open" still applies...
    bugs = [r for r in caplog.records if r.name == "mailguard.store" and r.levelname == "ERROR"]
    assert len(bugs) == 4  # ...but each one is logged
    assert all("bug" in r.getMessage() and "AttributeError" in r.getMessage() for r in bugs)
    assert bugs[0].exc_info is not None and bugs[1].exc_info is None  # one traceback
    assert store._breaker.open_until == 0.0


# ----------------------------------------------------------- store outages


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
@pytest.mark.parametrize("mode", ["open", "closed", "memory"])
def test_on_store_error_with_redis_unreachable(interface: str, mode: str) -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", breaker_cooldown=5)  # nobody there
    middleware = mg_asgi.DosFilter if interface == "asgi" else mg_wsgi.DosFilter
    wrapper = AsgiApp if interface == "asgi" else WsgiApp
    app = wrapper(middleware, store, max_requests_per_sec=3, on_store_error=mode)
    try:
        codes = [app.request() for _ in range(5)]
    finally:
        app.close()
    expected = {
        "open": [200] * 5,  # serve: an outage must not take mail down
        "closed": [503] * 5,  # refuse while nobody counts
        "memory": [200] * 3 + [503] * 2,  # count in this process until Redis is back
    }
    assert codes == expected[mode]


def test_outage_mid_run_serves_then_limits_again(prefix: str) -> None:
    with RedisServer.for_tests() as own:
        clock = FakeClock(T0)
        store = RedisStore(own.url, prefix=prefix, clock=clock, breaker_cooldown=0.2)
        app = WsgiApp(mg_wsgi.DosFilter, store, max_requests_per_sec=2)
        try:
            assert [app.request() for _ in range(3)] == [200, 200, 503]
            own.stop()
            assert app.request() == 503  # the refusal still holds: it is cached, and exact
            clock.advance(1.0)  # the client's slots free
            started = time.perf_counter()
            assert [app.request() for _ in range(20)] == [200] * 20  # open: served
            assert time.perf_counter() - started < 2.0  # no timeout per request
            own.start()  # empty: the counts were lost with the server
            deadline = time.monotonic() + 5
            while app.request() == 200 and time.monotonic() < deadline:
                time.sleep(0.05)  # served until the breaker lets the trial through...
            assert app.request() == 503  # ...then limited again, on the new server
        finally:
            app.close()


# ------------------------------------------------------- IPv6 wider networks


@pytest.mark.parametrize("side", ["asgi", "wsgi"])
def test_one_64_per_request_inside_one_48_is_stopped_on_redis(
    server: RedisServer, prefix: str, side: str
) -> None:
    clock = FakeClock(T0)
    rotate = [f"2001:db8:1:{i << 8:x}::1" for i in range(20)]  # a new /56 and /64 each time
    make = AsgiApp if side == "asgi" else WsgiApp
    mg = mg_asgi if side == "asgi" else mg_wsgi
    dos = make(mg.DosFilter, RedisStore(server.url, prefix=prefix, clock=clock),
               max_requests_per_sec=1)  # fmt: skip
    login = make(mg.InvalidLoginFilter, RedisStore(server.url, prefix=prefix, clock=clock),
                 max_failed_logins=1)  # fmt: skip
    try:
        assert [dos.request(client=a) for a in rotate] == [200] * 16 + [503] * 4  # the /48: 16
        statuses = [login.request("/login", "POST", client=a) for a in rotate]
        assert statuses == [401] * 16 + [503] * 4
        assert "2001:db8:1::/48" in {b.key for b in login.store.blocks("login")}
        assert login.request("/login", "POST", client="2001:db8:2::1") == 401  # next /48
    finally:
        dos.close()
        login.close()
