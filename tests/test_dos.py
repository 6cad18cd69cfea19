"""DosFilter through real ASGI and WSGI stacks, with a FakeClock."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from stacks import AsgiStack, Stack, WsgiStack, flask_app, starlette_app
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from mailguard import FakeClock, MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.policies import DosPolicy

STACKS: dict[str, tuple[type[Stack], Any]] = {
    "asgi": (AsgiStack, mg_asgi.DosFilter),
    "asgi-io": (AsgiStack, mg_asgi.DosFilter),  # the awaited path a network store takes
    "wsgi": (WsgiStack, mg_wsgi.DosFilter),
}


@pytest.fixture(params=sorted(STACKS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1_700_000_000.0)


@pytest.fixture
def store(clock: FakeClock) -> MemoryStore:
    return MemoryStore(clock=clock)


def build(kind: str, calls: list[str] | None = None, **options: Any) -> Stack:
    stack_type, middleware = STACKS[kind]
    if kind == "asgi-io" and isinstance(options.get("store"), MemoryStore):
        options["store"].local = False  # make the adapter await acheck, as for Redis
    return stack_type(lambda app: middleware(app, **options), calls)


# ------------------------------------------------------------------- limits
def test_cap_then_refuse_then_let_back(kind: str, store: MemoryStore, clock: FakeClock) -> None:
    calls: list[str] = []
    stack = build(kind, calls, max_requests_per_sec=3, store=store)
    assert [stack.request()[0] for _ in range(3)] == [200, 200, 200]
    status, headers, body = stack.request()
    assert status == 503
    assert headers["retry-after"] == "1"
    assert b"too many requests" in body
    assert len(calls) == 3  # the refusal never reached the app
    clock.advance(0.5)
    assert stack.request()[0] == 503
    clock.advance(0.5)  # the first three are exactly one second old: out of the window
    assert stack.request()[0] == 200
    assert len(calls) == 4


def test_sliding_not_fixed_window(kind: str, store: MemoryStore, clock: FakeClock) -> None:
    """No double burst at a window edge: 2 at t=0.9 and 2 at t=1.1 with a limit of 2."""
    stack = build(kind, max_requests_per_sec=2, store=store)
    clock.advance(0.9)
    assert [stack.request()[0] for _ in range(2)] == [200, 200]
    clock.advance(0.2)
    assert [stack.request()[0] for _ in range(2)] == [503, 503]
    clock.advance(0.8)
    assert [stack.request()[0] for _ in range(2)] == [200, 200]


def test_status_429_and_head_has_no_body(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=1, status_code=429, store=store)
    assert stack.request()[0] == 200
    status, headers, body = stack.request(method="HEAD")
    assert status == 429
    assert body == b""
    assert headers["retry-after"] == "1"


def test_clients_counted_apart(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=1, store=store)
    assert stack.request(client="198.51.100.1")[0] == 200
    assert stack.request(client="198.51.100.2")[0] == 200
    assert stack.request(client="198.51.100.1")[0] == 503


def test_safe_ips_never_counted_and_keep_no_state(kind: str, store: MemoryStore) -> None:
    stack = build(
        kind, max_requests_per_sec=1, safe_ips=["10.0.0.0/8", "2001:db8::/32"], store=store
    )
    for _ in range(5):
        assert stack.request(client="10.1.2.3")[0] == 200
        assert stack.request(client="2001:db8:5::1")[0] == 200
    assert len(store) == 0
    assert stack.request(client="11.1.2.3")[0] == 200
    assert stack.request(client="11.1.2.3")[0] == 503


def test_exempt_paths(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=1, exempt_paths=["/health", "/assets/"], store=store)
    assert [stack.request("/health")[0] for _ in range(3)] == [200, 200, 200]
    assert [stack.request("/assets/a.css")[0] for _ in range(3)] == [200, 200, 200]
    assert stack.request("/healthz")[0] == 200
    assert stack.request("/healthz")[0] == 503


# ------------------------------------------------------------------ modes
def test_monitor_mode_serves_and_reports_once_per_episode(
    kind: str, store: MemoryStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    stack = build(kind, calls, max_requests_per_sec=2, delay_ms=0, store=store)
    with caplog.at_level(logging.INFO, logger="mailguard"):
        assert [stack.request()[0] for _ in range(10)] == [200] * 10
        clock.advance(5)
        assert stack.request()[0] == 200
    assert len(calls) == 11
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "mailguard dos over client=203.0.113.7 key=203.0.113.7 limit=2/1s mode=monitor"
    ]
    calm = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert calm == ["mailguard dos calm client=203.0.113.7 key=203.0.113.7 refused=8"]


def test_reject_logs_once_per_episode(
    kind: str, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    stack = build(kind, max_requests_per_sec=1, store=store)
    with caplog.at_level(logging.WARNING, logger="mailguard"):
        statuses = [stack.request()[0] for _ in range(50)]
    assert statuses.count(503) == 49
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "mailguard dos refused client=203.0.113.7 key=203.0.113.7 limit=1/1s mode=reject"
    ]


def test_delay_mode_holds_then_serves(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=1, delay_ms=60, store=store)
    assert stack.request()[0] == 200
    started = time.perf_counter()
    status, _, body = stack.request()
    held = time.perf_counter() - started
    assert status == 200 and body.startswith(b"ok")
    assert 0.055 <= held < 2.0


def test_delay_cap_under_concurrent_load_asgi(store: MemoryStore) -> None:
    calls: list[str] = []
    app = mg_asgi.DosFilter(
        starlette_app(calls),
        max_requests_per_sec=1,
        delay_ms=200,
        max_delayed=3,
        max_delayed_per_client=2,
        store=store,
    )
    policy = app.policy
    assert isinstance(policy, DosPolicy)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        for _ in range(40):
            peak = max(peak, policy.waiting)
            await asyncio.sleep(0.005)

    async def one(client: str) -> int:
        transport = httpx.ASGITransport(app=app, client=(client, 1))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return (await c.get("/")).status_code

    async def main() -> list[int]:
        clients = ["192.0.2.1"] * 6 + ["192.0.2.2"] * 6
        watcher = asyncio.create_task(watch())
        statuses = await asyncio.gather(*(one(c) for c in clients))
        await watcher
        return list(statuses)

    statuses = asyncio.run(main())
    # one allowed per client; of the 10 over the limit, at most 3 wait (<= 2 per client)
    assert statuses.count(200) == 2 + 3
    assert statuses.count(503) == 12 - 5
    assert peak == 3
    assert policy.waiting == 0
    assert len(calls) == 5


def test_delay_cap_under_concurrent_load_wsgi(store: MemoryStore) -> None:
    app = mg_wsgi.DosFilter(
        flask_app().wsgi_app,
        max_requests_per_sec=1,
        delay_ms=200,
        max_delayed=2,
        max_delayed_per_client=2,
        store=store,
    )
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "REMOTE_ADDR": "192.0.2.9",
            "SERVER_NAME": "t",
            "SERVER_PORT": "80",
            "wsgi.url_scheme": "http",
            "wsgi.input": None,
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        seen: list[str] = []
        b"".join(app(environ, lambda status, headers, exc=None: seen.append(status)))
        with lock:
            statuses.append(int(seen[0][:3]))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert statuses.count(200) == 1 + 2
    assert statuses.count(503) == 5


def test_ratelimit_headers(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=2, headers=True, store=store)
    _, h1, _ = stack.request()
    _, h2, _ = stack.request()
    status, h3, _ = stack.request()
    assert (h1["ratelimit-limit"], h1["ratelimit-remaining"]) == ("2", "1")
    assert h2["ratelimit-remaining"] == "0"
    assert status == 503 and h3["ratelimit-remaining"] == "0" and h3["ratelimit-reset"] == "1"


def test_no_headers_by_default(kind: str, store: MemoryStore) -> None:
    _, headers, _ = build(kind, store=store).request()
    assert not any(k.startswith("ratelimit") for k in headers)


# --------------------------------------------------------------- identity
def test_spoofed_forwarded_for_from_untrusted_peer(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=2, store=store)
    for i in range(2):
        assert stack.request(headers={"X-Forwarded-For": f"192.0.2.{i}"})[0] == 200
    assert stack.request(headers={"X-Forwarded-For": "192.0.2.99"})[0] == 503


def test_trusted_proxy_forwarded_for(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=1, trusted_proxies=["10.0.0.1"], store=store)
    proxy = "10.0.0.1"
    assert stack.request(client=proxy, headers={"X-Forwarded-For": "192.0.2.1"})[0] == 200
    assert stack.request(client=proxy, headers={"X-Forwarded-For": "192.0.2.2"})[0] == 200
    # a client-injected leftmost entry does not change who is counted
    spoof = {"X-Forwarded-For": "1.1.1.1, 192.0.2.1"}
    assert stack.request(client=proxy, headers=spoof)[0] == 503


def test_ipv6_rotation_inside_one_64(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=3, store=store)
    rotating = [f"2001:db8:1:2::{i:x}" for i in range(1, 4)]
    assert [stack.request(client=a)[0] for a in rotating] == [200, 200, 200]
    assert stack.request(client="2001:db8:1:2:ffff::9")[0] == 503
    assert stack.request(client="2001:db8:1:3::1")[0] == 200


def test_ipv4_mapped_counts_as_ipv4(kind: str, store: MemoryStore) -> None:
    stack = build(kind, max_requests_per_sec=1, store=store)
    assert stack.request(client="192.0.2.5")[0] == 200
    assert stack.request(client="::ffff:192.0.2.5")[0] == 503


def test_key_func_counts_per_account(kind: str, store: MemoryStore) -> None:
    def per_user(request: Any) -> str | None:
        return request.header("x-user")

    stack = build(kind, max_requests_per_sec=1, key_func=per_user, store=store)
    assert stack.request(headers={"X-User": "a"})[0] == 200
    assert stack.request(headers={"X-User": "b"})[0] == 200
    assert stack.request(headers={"X-User": "a"})[0] == 503
    assert stack.request()[0] == 200  # key_func said None: not counted
    assert stack.request()[0] == 200


# ---------------------------------------------------- the app is untouched
def test_app_exceptions_are_not_swallowed(kind: str, store: MemoryStore) -> None:
    if kind == "asgi":
        app = mg_asgi.DosFilter(starlette_app(), store=store, headers=True)
        client = TestClient(app, raise_server_exceptions=True)
        with pytest.raises(RuntimeError, match="app failure"):
            client.get("/boom")
    else:
        flask = flask_app()
        flask.wsgi_app = mg_wsgi.DosFilter(flask.wsgi_app, store=store)  # type: ignore[method-assign]
        flask.config["PROPAGATE_EXCEPTIONS"] = True
        with pytest.raises(RuntimeError, match="app failure"):
            flask.test_client().get("/boom")


def test_streaming_response_passes_unbuffered(store: MemoryStore) -> None:
    sent: list[dict[str, Any]] = []

    async def stream(request: Request) -> StreamingResponse:
        async def chunks() -> Any:
            for i in range(3):
                yield f"chunk{i};".encode()

        return StreamingResponse(chunks(), media_type="text/plain")

    app = mg_asgi.DosFilter(Starlette(routes=[Route("/s", stream)]), headers=True, store=store)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/s",
        "query_string": b"",
        "headers": [],
        "client": ("192.0.2.1", 1),
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http",
        "root_path": "",
        "raw_path": b"/s",
        "server": ("t", 80),
    }

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    bodies = [m.get("body", b"") for m in sent if m["type"] == "http.response.body"]
    assert b"".join(bodies) == b"chunk0;chunk1;chunk2;"
    assert len([b for b in bodies if b]) == 3  # three separate body messages, not one buffer
    start = sent[0]
    assert (b"ratelimit-limit", b"100") in start["headers"]


def test_lifespan_passes_through(store: MemoryStore) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    wrapped = mg_asgi.DosFilter(app, max_requests_per_sec=1, store=store)

    async def nothing() -> dict[str, Any]:
        return {}

    async def drop(message: Any) -> None:
        return None

    for _ in range(3):
        asyncio.run(wrapped({"type": "lifespan"}, nothing, drop))
    assert seen == ["lifespan"] * 3
    assert len(store) == 0


def test_websocket_counted_and_closed_over_limit(store: MemoryStore) -> None:
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", ws)])
    app.add_middleware(mg_asgi.DosFilter, max_requests_per_sec=1, store=store)
    client = TestClient(app)
    with client.websocket_connect("/ws") as conn:
        assert conn.receive_text() == "hi"
    with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/ws") as conn:
        conn.receive_text()
    assert refused.value.code == 1013


# ------------------------------------------------------- framework shapes
def test_fastapi_add_middleware(store: MemoryStore) -> None:
    api = FastAPI()

    @api.get("/")
    def root() -> dict[str, str]:
        return {"ok": "yes"}

    api.add_middleware(mg_asgi.DosFilter, max_requests_per_sec=2, store=store)
    client = TestClient(api)
    assert [client.get("/").status_code for _ in range(3)] == [200, 200, 503]


def test_bare_wsgi_callable(store: MemoryStore) -> None:
    def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"bare"]

    app = mg_wsgi.DosFilter(bare, max_requests_per_sec=1, store=store)
    from werkzeug.test import Client

    client = Client(app)
    assert client.get("/").status_code == 200
    refused = client.get("/")
    assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"


def test_untrusted_unix_socket_peers_are_still_counted(store: MemoryStore) -> None:
    # all under the one key "unix" (with a warning): never waved through
    stack = AsgiStack(lambda app: mg_asgi.DosFilter(app, max_requests_per_sec=1, store=store))
    assert stack.request(client="/run/webmail.sock")[0] == 200
    assert stack.request(client="/run/webmail.sock")[0] == 503


# ------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_requests_per_sec": 0}, "max_requests_per_sec"),
        ({"max_requests_per_sec": "100"}, "max_requests_per_sec"),
        ({"delay_ms": -2}, "delay_ms"),
        ({"delay_ms": 1.5}, "delay_ms"),
        ({"safe_ips": "10.0.0.0/8"}, "safe_ips"),
        ({"safe_ips": ["10.0.0.300"]}, "safe_ips"),
        ({"trusted_proxies": ["proxy.example"]}, "trusted_proxies"),
        ({"status_code": 200}, "status_code"),
        ({"exempt_paths": ["health"]}, "exempt_paths"),
        ({"headers": "yes"}, "headers"),
        ({"key_func": 5}, "key_func"),
        ({"max_delayed": 0}, "max_delayed"),
        ({"ipv6_prefix": 16}, "ipv6_prefix"),
        ({"forwarded_header": "x-client-ip"}, "forwarded_header"),
        ({"on_store_error": "ignore"}, "on_store_error"),
        ({"store": {}}, "store"),
    ],
)
def test_bad_configuration_names_the_key(options: dict[str, Any], message: str) -> None:
    for middleware in (mg_asgi.DosFilter, mg_wsgi.DosFilter):
        with pytest.raises(ValueError, match=message):
            middleware(starlette_app(), **options)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(TypeError, match="max_request_per_sec"):
        mg_asgi.DosFilter(starlette_app(), max_request_per_sec=5)


def test_policy_and_options_are_exclusive() -> None:
    with pytest.raises(ValueError, match="either policy"):
        mg_wsgi.DosFilter(flask_app().wsgi_app, policy=DosPolicy(), max_requests_per_sec=3)


def test_steady_flood_is_one_episode(
    kind: str, store: MemoryStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A flood that gets its few requests through every second still logs once."""
    stack = build(kind, max_requests_per_sec=4, store=store)
    with caplog.at_level(logging.INFO, logger="mailguard"):
        statuses = []
        for _ in range(30):  # 3 s at 10 requests/s against a limit of 4/s
            statuses.append(stack.request()[0])
            clock.advance(0.1)
        clock.advance(5)
        statuses.append(stack.request()[0])
    assert statuses.count(200) == 4 * 3 + 1 and statuses.count(503) == 30 - 12
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "mailguard dos refused client=203.0.113.7 key=203.0.113.7 limit=4/1s mode=reject",
        "mailguard dos calm client=203.0.113.7 key=203.0.113.7 refused=18",
    ]


def test_the_client_alone_decides_unless_paths_or_a_key_func_matter() -> None:
    assert DosPolicy().by_client
    assert DosPolicy(safe_ips=["10.0.0.0/8"], headers=True).by_client
    assert not DosPolicy(exempt_paths=["/health"]).by_client
    assert not DosPolicy(key_func=lambda request: "everyone").by_client


@pytest.mark.parametrize("options", [{}, {"headers": True}, {"safe_ips": ["10.0.0.0/8"]}])
def test_client_face_and_request_face_agree(options: dict[str, Any]) -> None:
    """check_client (the adapters' fast path) decides exactly as check(request)."""
    from mailguard.request import WsgiRequest

    verdicts = []
    for face in ("client", "request"):
        clock = FakeClock()
        policy = DosPolicy(max_requests_per_sec=3, store=MemoryStore(clock=clock), **options)
        seen = []
        for step in range(40):
            address = ("198.51.100.1", "198.51.100.2", "10.1.2.3")[step % 3]
            client = policy.resolver.from_wsgi({"REMOTE_ADDR": address})
            if face == "client":
                verdict = policy.check_client(client)
            else:
                verdict = policy.check(WsgiRequest({"REMOTE_ADDR": address}, client))
            seen.append(verdict)
            clock.advance(0.05 if step % 7 else 0.6)
        verdicts.append(seen)
    assert verdicts[0] == verdicts[1]
    assert any(not v.allowed for v in verdicts[0]) and any(v.allowed for v in verdicts[0])
