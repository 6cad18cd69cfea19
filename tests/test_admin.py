"""The admin app: token and network checks, list and unblock as JSON, over ASGI and WSGI."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from werkzeug.test import Client

from mailguard.admin import AdminApp, keys_to_lift
from mailguard.core import FakeClock
from mailguard.stores.memory import MemoryStore

TOKEN = "s3cret-token-for-tests-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
T0 = 1_700_000_000.0


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore(clock=FakeClock(T0))
    store.block("login", "203.0.113.7", 900, "failures")
    store.block("login", "2001:db8:1:2::/64", 600, "failures")
    store.block("device", "appl1234/jdoe", 300, "rate")
    return store


Reply = tuple[int, Any, dict[str, str]]


def call(
    app: Any,
    kind: str,
    method: str,
    path: str,
    *,
    client: str = "127.0.0.1",
    headers: dict[str, str] | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> Reply:
    headers = dict(AUTH if headers is None else headers)
    content = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if kind == "asgi":

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=app, client=(client, 50000))
            async with httpx.AsyncClient(transport=transport, base_url="http://admin") as c:
                return await c.request(method, path, headers=headers, content=content)

        response = asyncio.run(go())
        data = response.json() if response.content else None
        return response.status_code, data, dict(response.headers)
    result = Client(app).open(
        path, method=method, headers=headers, data=content, environ_base={"REMOTE_ADDR": client}
    )
    data = json.loads(result.get_data()) if result.get_data() else None
    return result.status_code, data, {k.lower(): v for k, v in result.headers.items()}


def both(store: MemoryStore, **options: Any) -> list[tuple[str, Any]]:
    admin = AdminApp(store, token=TOKEN, **options)
    return [("asgi", admin.asgi), ("wsgi", admin.wsgi)]


KINDS = ["asgi", "wsgi"]


def pick(store: MemoryStore, kind: str, **options: Any) -> Any:
    return dict(both(store, **options))[kind]


# ------------------------------------------------------------ construction


@pytest.mark.parametrize("token", ["", "short", "               x", None, 12345])
def test_token_is_required_and_long(token: Any) -> None:
    with pytest.raises(ValueError, match="token"):
        AdminApp(MemoryStore(), token=token)


def test_bad_store_and_allow_are_refused() -> None:
    with pytest.raises(ValueError, match="store"):
        AdminApp({}, token=TOKEN)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allow"):
        AdminApp(MemoryStore(), token=TOKEN, allow=["not-an-address"])


# ------------------------------------------------------------------ access


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_network_is_403_even_with_the_token(
    kind: str, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    app = pick(store, kind)
    with caplog.at_level(logging.WARNING, logger="mailguard.admin"):
        status, data, _ = call(app, kind, "GET", "/blocks", client="203.0.113.50")
    assert status == 403 and data == {"error": "forbidden"}
    assert "mailguard admin refused client=203.0.113.50 reason=network" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong-token-wrong-token-wrong"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": "Bearer"},
    ],
)
def test_missing_or_wrong_token_is_403(
    kind: str, headers: dict[str, str], store: MemoryStore
) -> None:
    status, data, _ = call(
        pick(store, kind), kind, "POST", "/unblock", headers=headers, body={"all": True}
    )
    assert status == 403 and data == {"error": "forbidden"}
    assert len(store.blocks()) == 3  # nothing lifted


@pytest.mark.parametrize("kind", KINDS)
def test_ipv6_loopback_allowed_and_scheme_case_insensitive(kind: str, store: MemoryStore) -> None:
    status, _, _ = call(
        pick(store, kind), kind, "GET", "/blocks", client="::1",
        headers={"authorization": f"bearer {TOKEN}"},
    )  # fmt: skip
    assert status == 200


@pytest.mark.parametrize("kind", KINDS)
def test_forwarded_headers_ignored_unless_from_a_trusted_proxy(
    kind: str, store: MemoryStore
) -> None:
    forged = {**AUTH, "x-forwarded-for": "127.0.0.1"}
    status, _, _ = call(
        pick(store, kind), kind, "GET", "/blocks", client="203.0.113.50", headers=forged
    )
    assert status == 403
    app = pick(store, kind, trusted_proxies=["10.0.0.1"])
    assert call(app, kind, "GET", "/blocks", client="10.0.0.1", headers=forged)[0] == 200
    outside = {**AUTH, "x-forwarded-for": "203.0.113.50"}
    assert call(app, kind, "GET", "/blocks", client="10.0.0.1", headers=outside)[0] == 403


@pytest.mark.parametrize("kind", KINDS)
def test_custom_allow_list(kind: str, store: MemoryStore) -> None:
    app = pick(store, kind, allow=["192.0.2.0/24"])
    assert call(app, kind, "GET", "/blocks", client="192.0.2.77")[0] == 200
    assert call(app, kind, "GET", "/blocks", client="127.0.0.1")[0] == 403


# ------------------------------------------------------------------- lists


@pytest.mark.parametrize("kind", KINDS)
def test_list_blocks(kind: str, store: MemoryStore) -> None:
    status, data, headers = call(pick(store, kind), kind, "GET", "/blocks")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert headers["cache-control"] == "no-store"
    assert data["now"] == T0 and data["count"] == 3
    assert [b["key"] for b in data["blocks"]] == [
        "appl1234/jdoe",
        "2001:db8:1:2::/64",
        "203.0.113.7",
    ]
    assert data["blocks"][2] == {
        "kind": "login",
        "key": "203.0.113.7",
        "reason": "failures",
        "since": T0,
        "until": T0 + 900,
        "left": 900.0,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_list_filters_and_limits(kind: str, store: MemoryStore) -> None:
    app = pick(store, kind)
    _, data, _ = call(app, kind, "GET", "/blocks?kind=device")
    assert [b["key"] for b in data["blocks"]] == ["appl1234/jdoe"]
    _, data, _ = call(app, kind, "GET", "/blocks?limit=1")
    assert data["count"] == 3 and len(data["blocks"]) == 1
    status, data, _ = call(app, kind, "GET", "/blocks?limit=0")
    assert status == 400 and "limit" in data["error"]


@pytest.mark.parametrize("kind", KINDS)
def test_stats(kind: str, store: MemoryStore) -> None:
    status, data, _ = call(pick(store, kind), kind, "GET", "/stats")
    assert status == 200
    assert data == {"blocks": {"device": 1, "login": 2}, "total": 3, "keys": 3}


# ----------------------------------------------------------------- unblock


@pytest.mark.parametrize("kind", KINDS)
def test_unblock_key(kind: str, store: MemoryStore, caplog: pytest.LogCaptureFixture) -> None:
    app = pick(store, kind)
    with caplog.at_level(logging.WARNING, logger="mailguard.admin"):
        status, data, _ = call(app, kind, "POST", "/unblock", body={"key": "203.0.113.7"})
    assert (status, data) == (200, {"lifted": 1})
    assert [b.key for b in store.blocks("login")] == ["2001:db8:1:2::/64"]
    assert (
        'mailguard admin unblock client=127.0.0.1 key="203.0.113.7" kind=any lifted=1'
        in caplog.text
    )
    status, data, _ = call(app, kind, "POST", "/unblock", body={"key": "203.0.113.7"})
    assert (status, data) == (200, {"lifted": 0})


@pytest.mark.parametrize("kind", KINDS)
def test_unblock_ipv6_address_and_device_id(kind: str, store: MemoryStore) -> None:
    app = pick(store, kind)
    _, data, _ = call(
        app, kind, "POST", "/unblock", body={"key": "2001:db8:1:2::99", "kind": "login"}
    )
    assert data == {"lifted": 1}
    _, data, _ = call(app, kind, "POST", "/unblock", body={"key": "Appl1234", "kind": "login"})
    assert data == {"lifted": 0}  # wrong kind
    _, data, _ = call(app, kind, "POST", "/unblock", body={"key": "Appl1234"})
    assert data == {"lifted": 1}
    assert [b.key for b in store.blocks()] == ["203.0.113.7"]


@pytest.mark.parametrize("kind", KINDS)
def test_unblock_all(kind: str, store: MemoryStore) -> None:
    app = pick(store, kind)
    _, data, _ = call(app, kind, "POST", "/unblock", body={"all": True, "kind": "device"})
    assert data == {"lifted": 1} and len(store.blocks()) == 2
    _, data, _ = call(app, kind, "POST", "/unblock", body={"all": True})
    assert data == {"lifted": 2} and store.blocks() == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "expected JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", '"key" or "all"'),
        (b'{"key": "1.2.3.4", "all": true}', '"key" or "all"'),
        (b'{"key": ""}', "key:"),
        (b'{"key": 5}', "key:"),
        (b'{"all": "yes"}', "all:"),
        (b'{"all": true, "kind": "no such"}', "kind:"),
        (b'{"all": true, "extra": 1}', "unknown field"),
    ],
)
def test_unblock_bad_bodies_are_400(
    kind: str, body: bytes, needle: str, store: MemoryStore
) -> None:
    status, data, _ = call(pick(store, kind), kind, "POST", "/unblock", raw=body)
    assert status == 400 and needle in data["error"]
    assert len(store.blocks()) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_routing_errors(kind: str, store: MemoryStore) -> None:
    app = pick(store, kind)
    status, _, headers = call(app, kind, "GET", "/unblock")
    assert status == 405 and headers["allow"] == "POST"
    assert call(app, kind, "DELETE", "/blocks")[0] == 405
    assert call(app, kind, "GET", "/nothing")[0] == 404
    assert call(app, kind, "GET", "/blocks/")[0] == 200
    assert call(app, kind, "POST", "/unblock", raw=b" " * (70 * 1024))[0] == 413


def test_mounted_under_a_prefix_in_starlette(store: MemoryStore) -> None:
    admin = AdminApp(store, token=TOKEN)
    app = Starlette(routes=[Mount("/mailguard", app=admin.asgi)])
    status, data, _ = call(app, "asgi", "GET", "/mailguard/blocks")
    assert status == 200 and data["count"] == 3
    status, data, _ = call(app, "asgi", "POST", "/mailguard/unblock", body={"all": True})
    assert (status, data) == (200, {"lifted": 3})


def test_keys_to_lift_rules(store: MemoryStore) -> None:
    blocks = store.blocks()
    assert keys_to_lift(blocks, "::ffff:203.0.113.7") == ["203.0.113.7"]
    assert keys_to_lift(blocks, "2001:db8:1:2:0:0:0:1") == ["2001:db8:1:2::1", "2001:db8:1:2::/64"]
    assert keys_to_lift(blocks, "2001:db8:9::1") == ["2001:db8:9::1"]
    assert keys_to_lift(blocks, "APPL-1234") == ["APPL-1234", "appl1234/jdoe"]
    assert keys_to_lift(blocks, "appl1234/jdoe") == ["appl1234/jdoe"]
