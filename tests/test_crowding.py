"""One filter must not crowd out another on a shared MemoryStore (issue #13).

A flood of live device jails from invented device ids once filled a shared
store with blocks (which are never evicted), so that the login filter found
no room for its counters and counted nothing: a new guesser made 30 of 30
guesses.  Each namespace now has its own room (see "Room for each namespace"
in :mod:`mailguard.stores.memory`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

from mailguard import FakeClock, MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.policies.device import DeviceJailPolicy

T0 = 1_700_000_000.0
GUESSER = "203.0.113.99"
MAX_FAILED = 5
AS = "/Microsoft-Server-ActiveSync?Cmd=Sync&DeviceType=iPhone&User=jdoe&DeviceId="


def apps(calls: list[str]) -> tuple[Any, Any]:
    """An ASGI and a WSGI app: 401 for POST /login (every guess fails), else 200."""

    async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        calls.append(scope["path"])
        login = scope["path"] == "/login" and scope["method"] == "POST"
        await send({"type": "http.response.start", "status": 401 if login else 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        login = environ["PATH_INFO"] == "/login" and environ["REQUEST_METHOD"] == "POST"
        start_response("401 Unauthorized" if login else "200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return asgi_app, wsgi_app


def stack(interface: str, store: MemoryStore, calls: list[str]) -> Callable[..., int]:
    """DeviceJail over InvalidLoginFilter on one store; returns ``send(path, method, client)``."""
    asgi_app, wsgi_app = apps(calls)
    if interface == "asgi":
        app = mg_asgi.DeviceJail(
            mg_asgi.InvalidLoginFilter(asgi_app, store=store, max_failed_logins=MAX_FAILED),
            store=store,
        )
        loop = asyncio.new_event_loop()

        def send_asgi(path: str, method: str = "GET", client: str = GUESSER) -> int:
            async def go() -> int:
                transport = httpx.ASGITransport(app=app, client=(client, 40000))
                async with httpx.AsyncClient(transport=transport, base_url="http://m.test") as c:
                    return (await c.request(method, path, content=b"user=jdoe&pass=x")).status_code

            return loop.run_until_complete(go())

        return send_asgi
    werkzeug = Client(
        mg_wsgi.DeviceJail(
            mg_wsgi.InvalidLoginFilter(wsgi_app, store=store, max_failed_logins=MAX_FAILED),
            store=store,
        )
    )

    def send_wsgi(path: str, method: str = "GET", client: str = GUESSER) -> int:
        reply = werkzeug.open(
            path, method=method, data=b"user=jdoe&pass=x", environ_base={"REMOTE_ADDR": client}
        )
        return int(reply.status_code)

    return send_wsgi


@pytest.mark.parametrize("interface", ["asgi", "wsgi"])
def test_device_jails_filling_a_shared_store_leave_login_counting_on(
    interface: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(T0)
    store = MemoryStore(max_keys=2000, clock=clock)
    calls: list[str] = []
    send = stack(interface, store, calls)
    device = DeviceJailPolicy(store=store)  # the defaults the stack's DeviceJail uses
    # The flood: max_keys invented device ids, each sending max_requests + 1
    # requests (about max_keys x 151 in all), straight to the store as the
    # DeviceJail policy sends them; a few through the real stack as well.
    with caplog.at_level(logging.ERROR, logger="mailguard.store"):
        for i in range(2000):
            key = f"invented{i}/jdoe"
            for _ in range(device.max_requests + 1):
                store.hit(
                    device.namespace, key, device.max_requests, device.time_window,
                    device.jail_duration,
                )  # fmt: skip
        for i in range(3):  # and through the stack: refused, never let through
            path = AS + f"stackdev{i}"
            codes = [send(path, client=f"198.51.100.{i}") for _ in range(device.max_requests + 2)]
            assert codes[: device.max_requests] == [200] * device.max_requests
            assert codes[device.max_requests :] == [503, 503]
    jails = len(store.blocks("device"))
    assert jails == 2000 // 4  # its namespace's share: the rest were refused
    assert store.dropped >= 2000 - jails
    assert sum("blocks full ns=device" in r.getMessage() for r in caplog.records) == 1
    # A new guesser: blocked after MAX_FAILED guesses, never 30 of 30.
    calls.clear()
    codes = [send("/login", "POST") for _ in range(30)]
    assert calls.count("/login") == MAX_FAILED
    assert codes[:MAX_FAILED] == [401] * MAX_FAILED
    assert set(codes[MAX_FAILED:]) == {503}
    assert store.get_block("login", GUESSER) is not None
    assert len(store) <= 2000


def test_a_flood_of_fresh_devices_does_not_evict_a_login_streak() -> None:
    """Counters only: fresh device ids wear out the device namespace's own oldest."""
    clock = FakeClock(T0)
    store = MemoryStore(max_keys=2000, clock=clock)
    for _ in range(MAX_FAILED - 1):
        store.attempt("login", GUESSER, MAX_FAILED, 60.0, 30.0)
        store.settle("login", GUESSER, True, MAX_FAILED, 60.0, 900.0)
    for i in range(20_000):
        store.hit("device", f"fresh{i}/jdoe", 150, 30.0, 600.0)
    store.attempt("login", GUESSER, MAX_FAILED, 60.0, 30.0)
    code, _, _ = store.settle("login", GUESSER, True, MAX_FAILED, 60.0, 900.0)
    assert code == 2  # JAILED: the streak survived the flood


def test_identity_rule_still_jails_when_its_blocks_are_full() -> None:
    """The identity rule's own jail namespace at its block share: the store
    answers OVER instead of JAILED, and the device is still refused."""
    store = MemoryStore(max_keys=2000, clock=FakeClock(T0))
    policy = DeviceJailPolicy(store=store, identity_changes=True)
    for n in range(2000):  # fill the rule's namespace up to its share, and on
        store.block(policy._changes_ns, f"invented{n}", 3600.0, "identity")
    assert store.dropped > 0
    statuses: list[int] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    client = Client(mg_wsgi.DeviceJail(app, policy=policy))
    for agent in ["Apple-iPhone/1", "Apple-iPhone/2", "Apple-iPhone/1", "Apple-iPhone/2"]:
        reply = client.get(AS + "ABC123", headers={"User-Agent": agent})
        statuses.append(reply.status_code)
    assert statuses == [200, 200, 200, 503]
