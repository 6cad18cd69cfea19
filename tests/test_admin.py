"""The admin app: token and network checks, list and unblock as JSON, over ASGI and WSGI."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# ------------------------------------------------------------ never a 5xx
def _asgi_status(app: AdminApp, method: str, path: str, query: bytes, body: bytes) -> int:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": [(b"authorization", AUTH["authorization"].encode())],
        "client": ("127.0.0.1", 50000),
    }
    sent: list[dict[str, Any]] = []
    chunks = [body[:7], body[7:]]

    async def receive() -> dict[str, Any]:
        chunk = chunks.pop(0) if chunks else b""
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app.asgi(scope, receive, send))
    status: int = sent[0]["status"]
    return status


def _wsgi_status(app: AdminApp, method: str, path: str, query: bytes, body: bytes) -> int:
    import io

    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query.decode("latin-1"),
        "CONTENT_LENGTH": str(len(body)),
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_AUTHORIZATION": AUTH["authorization"],
        "wsgi.input": io.BytesIO(body),
    }
    statuses: list[str] = []
    app.wsgi(environ, lambda status, headers, exc_info=None: statuses.append(status))
    return int(statuses[0].split()[0])


def _both(app: AdminApp, method: str, path: str, query: bytes, body: bytes) -> tuple[int, int]:
    return (
        _asgi_status(app, method, path, query, body),
        _wsgi_status(app, method, path, query, body),
    )


@pytest.mark.parametrize(
    ("query", "body"),
    [
        (b"limit=%C2%B2", b""),  # "²": str.isdigit() says yes, int() says no
        (b"limit=%EF%BC%93", b""),  # a full-width 3
        (b"limit=" + b"9" * 5000, b""),  # beyond int()'s digit limit
        (b"limit=" + b"1" * 20, b""),
        (b"limit=%00", b""),
        (b"limit=-1", b""),
        (b"kind=%00x", b""),
        (b"kind=" + b"k" * 100, b""),
    ],
)
def test_bad_listing_arguments_get_a_400(store: MemoryStore, query: bytes, body: bytes) -> None:
    """Issue 13: ``?limit=²`` and a 5000-digit limit raised (a 500) on both interfaces."""
    app = AdminApp(store, token=TOKEN)
    assert _both(app, "GET", "/blocks", query, body) == (400, 400)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 20_000 + b"]" * 20_000,  # deeper than the parser's recursion (under MAX_BODY)
        b'{"key": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"key": ' + b"1" * 5000 + b"}",  # an integer beyond int()'s digit limit
        b'{"key": "\\ud800"}',  # a lone surrogate
        b'{"key": "a\\u0000b"}',
        b"\xff\xfe{}",
        b'{"all": 1e999999}',
        b'{"kind": ["login"], "all": true}',
    ],
)
def test_bad_unblock_bodies_get_a_4xx(store: MemoryStore, body: bytes) -> None:
    """Issue 13: deeply nested JSON raised (a 500) on both interfaces."""
    app = AdminApp(store, token=TOKEN)
    asgi_status, wsgi_status = _both(app, "POST", "/unblock", b"", body)
    assert 400 <= asgi_status < 500 and 400 <= wsgi_status < 500
    assert len(store.blocks()) == 3  # nothing was lifted


_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**6000), max_value=10**6000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["key", "kind", "all", "x"]) | st.text(max_size=5), inner, max_size=4
        )
    ),
    max_leaves=12,
)


def _dump(value: Any) -> bytes:
    import sys

    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return json.dumps(value).encode()
    finally:
        sys.set_int_max_str_digits(old)


_bodies = st.one_of(
    _json.map(_dump),
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n * 10 + b"]" * n * 10),
    st.integers(min_value=1, max_value=5000).map(lambda n: b'{"key": ' + b"7" * n + b"}"),
)
_queries = st.one_of(
    st.binary(max_size=80),
    st.lists(
        st.tuples(
            st.sampled_from([b"limit", b"kind", b"x", b"limit[]"]),
            st.one_of(
                st.binary(max_size=12),
                st.text(max_size=8).map(lambda t: t.encode("utf-8", "surrogatepass")),
                # (bounded: str() refuses an int of over 4,300 digits, and an
                # unbounded strategy can draw one; the long value is below)
                st.integers(-(2**64), 2**64).map(lambda n: str(n).encode()),
                st.just(b"9" * 5000),
            ),
        ),
        max_size=4,
    ).map(lambda pairs: b"&".join(k + b"=" + v for k, v in pairs)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "G\u00e9T"]),
    path=st.sampled_from(["/blocks", "/stats", "/unblock", "/unblock/", "/", "/x", ""]),
    query=_queries,
    body=_bodies,
)
def test_fuzzed_admin_requests_never_get_a_5xx(
    method: str, path: str, query: bytes, body: bytes
) -> None:
    """Every bad input is a 4xx, on ASGI and WSGI alike (and the two agree)."""
    store = MemoryStore(clock=FakeClock(T0))
    store.block("login", "203.0.113.7", 900, "failures")
    app = AdminApp(store, token=TOKEN)
    asgi_status, wsgi_status = _both(app, method, path, query, body)
    assert asgi_status < 500 and wsgi_status < 500
    assert asgi_status == wsgi_status
