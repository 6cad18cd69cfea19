"""InvalidLoginFilter on real stacks: Starlette over httpx, and Flask's test client.

Every scenario runs on three stacks: ASGI with a memory store (the adapter
calls the synchronous policy faces), ASGI with a store that claims I/O (the
coroutine faces), and WSGI.  Time is a FakeClock shared by the store.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import pytest
from flask import Flask
from flask import Response as FlaskResponse
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.routing import Route

from mailguard import asgi, wsgi
from mailguard.core import ALLOW, Block, FakeClock, Verdict
from mailguard.events import Event
from mailguard.identity import ClientResolver
from mailguard.policies.login import (
    InvalidLoginPolicy,
    LoginVerdict,
    basic_account,
    normalize_account,
)
from mailguard.reading import PathRule, json_fields, multipart_fields, request_body_fields
from mailguard.request import AsgiRequest, Request
from mailguard.stores.memory import MemoryStore

T0 = 1_700_000_000.0
ATTACKER = "203.0.113.7"
USER = "198.51.100.20"
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"]
KINDS = ["asgi", "asgi-async", "wsgi"]

Reply = tuple[int, list[tuple[str, str]], bytes]


# ------------------------------------------------------------------ harness
@dataclass
class FakeRequest:
    """What a fake application saw (the same for Starlette and Flask)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    ip: str = ""

    def form(self) -> dict[str, str]:
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/x-www-form-urlencoded":
            return dict(parse_qsl(self.body.decode("utf-8", "replace")))
        if ctype == "application/json":
            try:
                doc = json.loads(self.body)
            except ValueError:
                return {}
            return (
                {k: v for k, v in doc.items() if isinstance(v, str)}
                if isinstance(doc, dict)
                else {}
            )
        return {}

    def param(self, name: str) -> str | None:
        """A request parameter, the body winning over the query (as PHP does)."""
        found = self.form().get(name)
        return found if found is not None else dict(parse_qsl(self.query)).get(name)


Logic = Callable[[FakeRequest], Reply]


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes


class AsyncMemoryStore(MemoryStore):
    """A memory store that says it does I/O, so the ASGI adapter awaits acheck/afinish."""

    local = False


@dataclass
class Stack:
    kind: str
    clock: FakeClock
    store: MemoryStore
    policy: InvalidLoginPolicy
    app: Any
    calls: list[FakeRequest] = field(default_factory=list)

    def request(
        self,
        method: str,
        path: str,
        *,
        ip: str = ATTACKER,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Resp:
        if self.kind == "wsgi":
            r = self.app.test_client().open(
                path,
                method=method,
                headers=headers or {},
                data=body,
                environ_base={"REMOTE_ADDR": ip},
            )
            return Resp(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.get_data())
        return asyncio.run(self.arequest(method, path, ip=ip, headers=headers, body=body))

    async def arequest(
        self,
        method: str,
        path: str,
        *,
        ip: str = ATTACKER,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Resp:
        transport = httpx.ASGITransport(app=self.app, client=(ip, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as client:
            r = await client.request(method, path, headers=headers, content=body)
        return Resp(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def post(self, path: str, fields: dict[str, str], *, ip: str = ATTACKER) -> Resp:
        return self.request("POST", path, ip=ip, **urlencoded(fields))


def starlette_app(logic: Logic, calls: list[FakeRequest]) -> Starlette:
    async def endpoint(request: StarletteRequest) -> Response:
        body = await request.body()
        fake = FakeRequest(
            request.method,
            request.url.path,
            request.url.query,
            dict(request.headers),
            body,
            request.client.host if request.client else "",
        )
        calls.append(fake)
        status, headers, out = logic(fake)
        response = Response(out, status_code=status)
        for name, value in headers:
            response.headers.append(name, value)
        return response

    return Starlette(routes=[Route("/{path:path}", endpoint, methods=METHODS)])


def flask_app(logic: Logic, calls: list[FakeRequest]) -> Flask:
    app = Flask("fake_webmail")

    def view(path: str = "") -> FlaskResponse:
        fake = FakeRequest(
            flask_request.method,
            flask_request.path,
            flask_request.query_string.decode("latin-1"),
            {k.lower(): v for k, v in flask_request.headers.items()},
            flask_request.get_data(),
            flask_request.remote_addr or "",
        )
        calls.append(fake)
        status, headers, out = logic(fake)
        return FlaskResponse(out, status=status, headers=headers)

    app.add_url_rule("/", "root", view, methods=METHODS, defaults={"path": ""})
    app.add_url_rule("/<path:path>", "any", view, methods=METHODS)
    return app


def make_stack(kind: str, logic: Logic, **options: Any) -> Stack:
    clock = FakeClock(T0)
    store = (AsyncMemoryStore if kind == "asgi-async" else MemoryStore)(clock=clock)
    options.setdefault("store", store)
    calls: list[FakeRequest] = []
    app: Any
    if kind == "wsgi":
        app = flask_app(logic, calls)
        app.wsgi_app = guard = wsgi.InvalidLoginFilter(app.wsgi_app, **options)
        policy = guard.policy
    else:
        app = asgi.InvalidLoginFilter(starlette_app(logic, calls), **options)
        policy = app.policy
    assert isinstance(policy, InvalidLoginPolicy)
    return Stack(kind, clock, store, policy, app, calls)


def urlencoded(fields: dict[str, str]) -> dict[str, Any]:
    return {
        "headers": {"content-type": "application/x-www-form-urlencoded"},
        "body": urlencode(fields).encode(),
    }


def as_json(doc: object) -> dict[str, Any]:
    return {"headers": {"content-type": "application/json"}, "body": json.dumps(doc).encode()}


def multipart(fields: list[tuple[str, bytes]], boundary: str = "b0undary") -> dict[str, Any]:
    chunks = []
    for name, value in fields:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value
            + b"\r\n"
        )
    chunks.append(f"--{boundary}--\r\n".encode())
    return {
        "headers": {"content-type": f"multipart/form-data; boundary={boundary}"},
        "body": b"".join(chunks),
    }


def basic(user: str | bytes, password: str = "pw") -> dict[str, str]:
    raw = user if isinstance(user, bytes) else user.encode()
    return {"authorization": "Basic " + base64.b64encode(raw + b":" + password.encode()).decode()}


def login_logic(req: FakeRequest) -> Reply:
    """A small webmail: POST /login, password "right" wins; /explode crashes."""
    if req.path == "/explode":
        raise RuntimeError("the app fell over")
    if req.path == "/login" and req.method == "POST":
        if req.form().get("password") == "right":
            return 302, [("location", "/inbox")], b""
        return 401, [], b"wrong password"
    return 200, [], b"inbox"


def fail(stack: Stack, ip: str = ATTACKER, user: str = "alice") -> Resp:
    return stack.post("/login", {"user": user, "password": "guess"}, ip=ip)


def succeed(stack: Stack, ip: str = USER, user: str = "alice") -> Resp:
    return stack.post("/login", {"user": user, "password": "right"}, ip=ip)


class Events(list[Event]):
    def actions(self) -> list[str]:
        return [e.action for e in self]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def events() -> Events:
    return Events()


def zimbra_like(kind: str, events: Events | None = None, **options: Any) -> Stack:
    """The issue's scenario: 5 failures within 5 minutes, then a 25-minute block."""
    options.setdefault("max_failed_logins", 5)
    options.setdefault("failure_interval", 300)
    options.setdefault("block_duration", 1500)
    if events is not None:
        options["on_event"] = events.append
    return make_stack(kind, login_logic, **options)


# ---------------------------------------------------------------- the model
def test_five_failures_block_for_25_minutes_then_let_back_in(kind: str, events: Events) -> None:
    stack = zimbra_like(kind, events)
    for _ in range(5):
        assert fail(stack).status == 401
        stack.clock.advance(60)
    assert len(stack.calls) == 5
    refused = succeed(stack, ip=ATTACKER)  # even the right password
    assert refused.status == 503
    assert 1500 - 60 - 1 <= int(refused.headers["retry-after"]) <= 1500
    assert refused.headers["cache-control"] == "no-store"
    assert b"failed logins" in refused.body
    assert len(stack.calls) == 5  # the app was not called
    # attempts during the block do not extend it
    stack.clock.advance(1000)
    again = fail(stack)
    assert again.status == 503
    assert int(again.headers["retry-after"]) == 1500 - 60 - 1000
    stack.clock.advance(1500 - 60 - 1000)
    assert succeed(stack, ip=ATTACKER).status == 302
    assert len(stack.calls) == 6
    assert events.actions() == ["failure"] * 5 + ["blocked", "refused"]
    blocked = events[5]
    assert blocked.get("seconds") == 1500 and blocked.get("failures") == 5


def test_block_starts_exactly_at_the_limit_with_full_retry_after(kind: str) -> None:
    stack = zimbra_like(kind)
    for _ in range(5):
        fail(stack)
    refused = fail(stack)
    assert refused.status == 503
    assert refused.headers["retry-after"] == "1500"


def test_a_pause_longer_than_the_interval_starts_over(kind: str) -> None:
    stack = zimbra_like(kind)
    for _ in range(4):
        assert fail(stack).status == 401
        stack.clock.advance(299)  # each within the interval of the previous one
    stack.clock.advance(2)  # now 301 s since the 4th failure
    for _ in range(4):
        assert fail(stack).status == 401
    assert fail(stack).status == 401  # the 5th of the new streak reaches the app...
    assert fail(stack).status == 503  # ...and blocks
    assert len(stack.calls) == 9


def test_the_real_user_elsewhere_is_unaffected(kind: str) -> None:
    stack = zimbra_like(kind)
    for _ in range(5):
        fail(stack)
    assert fail(stack).status == 503
    assert succeed(stack, ip=USER).status == 302  # same account, another address
    assert fail(stack, ip=USER).status == 401  # and the user's own failures are their own
    # block_scope="login": the blocked address may still read mail (people behind its NAT)
    assert stack.request("GET", "/inbox").status == 200


def test_block_scope_all_refuses_every_request_of_the_address(kind: str) -> None:
    stack = zimbra_like(kind, block_scope="all")
    assert stack.request("GET", "/inbox").status == 200
    for _ in range(5):
        fail(stack)
    page = stack.request("GET", "/inbox")
    assert page.status == 503
    assert page.headers["retry-after"] == "1500"
    assert stack.request("GET", "/inbox", ip=USER).status == 200
    stack.clock.advance(1500)
    assert stack.request("GET", "/inbox").status == 200
    assert stack.calls[-1].path == "/inbox"


def test_block_scope_all_sizes_retry_after_without_trusting_a_foreign_clock() -> None:
    policy = InvalidLoginPolicy(block_scope="all")
    raw = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": (ATTACKER, 1)}
    request = AsgiRequest(raw, policy.resolver.from_asgi(raw))
    block = Block("login", ATTACKER, "failures", since=T0, until=T0 + 900)
    assert policy.judge_block(request, block, T0 + 600).retry_after == 300
    assert policy.judge_block(request, block, T0 + 5000).retry_after == 900
    assert policy.judge_block(request, block, T0 - 5000).retry_after == 900
    assert policy.judge_block(request, None, T0) is ALLOW


@pytest.mark.parametrize("reset", [False, True])
def test_a_success_wipes_failures_only_with_reset_on_success(kind: str, reset: bool) -> None:
    stack = zimbra_like(kind, reset_on_success=reset)
    for _ in range(4):
        fail(stack)
    assert succeed(stack, ip=ATTACKER).status == 302
    assert fail(stack).status == 401
    if reset:
        for _ in range(3):
            assert fail(stack).status == 401  # streak 4 of 5 after the reset
        assert fail(stack).status == 401
        assert fail(stack).status == 503
    else:
        assert fail(stack).status == 503  # 5 failures, the success did not wipe them


def test_repeat_offenders_get_longer_blocks_up_to_the_cap(kind: str) -> None:
    stack = make_stack(
        kind,
        login_logic,
        max_failed_logins=2,
        block_duration=100,
        repeat_factor=2.0,
        max_block_duration=300,
        offender_memory=3600,
    )
    seen = []
    for _ in range(4):
        fail(stack)
        fail(stack)
        refused = fail(stack)
        assert refused.status == 503
        seen.append(int(refused.headers["retry-after"]))
        stack.clock.advance(seen[-1])
    assert seen == [100, 200, 300, 300]
    # forgotten after offender_memory: back to the base block
    stack.clock.advance(3600)
    fail(stack)
    fail(stack)
    assert fail(stack).headers["retry-after"] == "100"


def test_repeat_factor_is_off_by_default(kind: str) -> None:
    stack = make_stack(kind, login_logic, max_failed_logins=1, block_duration=100)
    for _ in range(3):
        fail(stack)
        refused = fail(stack)
        assert refused.headers["retry-after"] == "100"
        stack.clock.advance(100)


def test_safe_ips_are_never_counted(kind: str, events: Events) -> None:
    stack = zimbra_like(kind, events, safe_ips=["203.0.113.0/24"])
    for _ in range(12):
        assert fail(stack).status == 401
    assert events == []
    assert fail(stack, ip="192.0.2.1").status == 401
    assert events.actions() == ["failure"]


def test_trusted_proxies_block_the_client_not_the_proxy(kind: str) -> None:
    stack = zimbra_like(kind, trusted_proxies=["10.0.0.0/8"])

    def via_proxy(client: str, password: str) -> Resp:
        form = urlencoded({"user": "alice", "password": password})
        form["headers"]["x-forwarded-for"] = client
        return stack.request("POST", "/login", ip="10.0.0.1", **form)

    for _ in range(5):
        assert via_proxy(ATTACKER, "guess").status == 401
    assert via_proxy(ATTACKER, "guess").status == 503
    assert via_proxy(USER, "right").status == 302


def test_app_crash_releases_the_slot(kind: str) -> None:
    stack = make_stack(kind, login_logic, max_failed_logins=2, login_paths=["/login", "/explode"])
    if kind == "wsgi":
        stack.app.testing = True  # let the exception out of Flask
    with pytest.raises(RuntimeError):
        stack.request("POST", "/explode", **urlencoded({"user": "alice"}))
    assert fail(stack).status == 401
    # a leaked slot would make this BUSY (1 failure + 1 pending >= 2)
    assert fail(stack).status == 401
    assert fail(stack).status == 503


# --------------------------------------------------------------- the outcome
def result_header_logic(req: FakeRequest) -> Reply:
    said = req.form().get("say", "")
    status = int(req.form().get("status", "200"))
    return status, [("X-Login-Result", said)] if said else [], b"page"


def test_result_header_decides_and_is_stripped(kind: str, events: Events) -> None:
    stack = make_stack(kind, result_header_logic, max_failed_logins=2, on_event=events.append)
    ok = stack.post("/login", {"user": "a", "say": "ok", "status": "401"})
    assert ok.status == 401
    assert "x-login-result" not in ok.headers
    assert events == []  # "ok" wins over a failure status
    bad = stack.post("/login", {"user": "a", "say": "fail", "status": "200"})
    assert bad.status == 200
    assert "x-login-result" not in bad.headers
    assert events.actions() == ["failure"]
    stack.post("/login", {"user": "a", "say": "FAIL", "status": "200"})
    assert stack.post("/login", {"user": "a", "status": "200"}).status == 503


def test_result_header_can_be_renamed(kind: str, events: Events) -> None:
    def logic(req: FakeRequest) -> Reply:
        return 200, [("X-Auth-Outcome", "failed"), ("X-Login-Result", "keep me")], b""

    stack = make_stack(kind, logic, result_header="X-Auth-Outcome", on_event=events.append)
    resp = stack.post("/login", {"user": "a"})
    assert "x-auth-outcome" not in resp.headers
    assert resp.headers["x-login-result"] == "keep me"
    assert events.actions() == ["failure"]


def test_is_failure_predicate(kind: str, events: Events) -> None:
    def logic(req: FakeRequest) -> Reply:
        return 200, [("x-error", "bad-password")], b""

    stack = make_stack(
        kind,
        logic,
        is_failure=lambda status, headers: headers.get("x-error") == "bad-password",
        on_event=events.append,
    )
    stack.post("/login", {"user": "a"})
    assert events.actions() == ["failure"]


def test_a_raising_is_failure_never_breaks_the_request(kind: str, events: Events) -> None:
    def broken(status: int, headers: Any) -> bool:
        raise KeyError("oops")

    stack = make_stack(kind, login_logic, is_failure=broken, on_event=events.append)
    assert stack.post("/login", {"user": "a", "password": "x"}).status == 401  # status counts
    assert stack.request("POST", "/login", **as_json({"user": "a"})).status == 401
    assert events.actions() == ["failure", "failure"]


def test_bare_challenge_is_not_a_failure_but_a_credentialed_401_is(
    kind: str, events: Events
) -> None:
    def dav(req: FakeRequest) -> Reply:
        if req.headers.get("authorization") != basic("alice", "right")["authorization"]:
            return 401, [("www-authenticate", 'Basic realm="mail"')], b""
        return 207, [], b"<multistatus/>"

    stack = make_stack(
        kind,
        dav,
        max_failed_logins=3,
        count_basic_auth=True,
        login_paths=["/dav/*"],
        login_methods=["PROPFIND"],
        on_event=events.append,
    )
    for _ in range(10):  # the handshake, every time: never counted
        assert stack.request("PROPFIND", "/dav/alice/").status == 401
    assert events == []
    assert stack.request("PROPFIND", "/dav/alice/", headers=basic("alice", "right")).status == 207
    for _ in range(3):
        assert stack.request("PROPFIND", "/dav/alice/", headers=basic("alice")).status == 401
    assert stack.request("PROPFIND", "/dav/alice/", headers=basic("alice")).status == 503
    assert events.actions() == ["failure"] * 3 + ["blocked", "refused"]
    assert events[0].get("account") == "alice"


# --------------------------------------------------------------- concurrency
@pytest.mark.parametrize("store_kind", [MemoryStore, AsyncMemoryStore])
def test_a_burst_of_parallel_guesses_reaches_the_app_at_most_limit_times(
    store_kind: type[MemoryStore],
) -> None:
    async def scenario() -> tuple[int, list[int]]:
        gate = asyncio.Event()
        entered = 0

        async def endpoint(request: StarletteRequest) -> Response:
            nonlocal entered
            entered += 1
            await request.body()
            await gate.wait()
            return Response(b"no", status_code=401)

        app = asgi.InvalidLoginFilter(
            Starlette(routes=[Route("/login", endpoint, methods=["POST"])]),
            max_failed_logins=5,
            store=store_kind(clock=FakeClock(T0)),
        )
        transport = httpx.ASGITransport(app=app, client=(ATTACKER, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as client:
            form = urlencoded({"user": "alice", "password": "guess"})
            tasks = [
                asyncio.ensure_future(
                    client.post("/login", content=form["body"], headers=form["headers"])
                )
                for _ in range(100)
            ]
            deadline = time.monotonic() + 10
            while sum(t.done() for t in tasks) < 95 or entered < 5:
                assert time.monotonic() < deadline, "the burst never settled"
                await asyncio.sleep(0.001)
            gate.set()
            responses = await asyncio.gather(*tasks)
            after = await client.post("/login", content=form["body"], headers=form["headers"])
        return entered, [r.status_code for r in [*responses, after]]

    entered, statuses = asyncio.run(scenario())
    assert entered == 5
    assert statuses.count(401) == 5
    assert statuses.count(503) == 96  # 95 busy, then the block


def test_a_threaded_wsgi_burst_reaches_the_app_at_most_limit_times() -> None:
    gate = threading.Event()
    entered = 0
    lock = threading.Lock()
    flask = Flask("burst")

    @flask.post("/login")
    def login() -> tuple[str, int]:
        nonlocal entered
        with lock:
            entered += 1
        gate.wait(timeout=10)
        return "no", 401

    flask.wsgi_app = wsgi.InvalidLoginFilter(  # type: ignore[method-assign]
        flask.wsgi_app, max_failed_logins=5, store=MemoryStore(clock=FakeClock(T0))
    )
    statuses: list[int] = []

    def guess() -> None:
        r = flask.test_client().post(
            "/login",
            data={"user": "alice", "password": "guess"},
            environ_base={"REMOTE_ADDR": ATTACKER},
        )
        with lock:
            statuses.append(r.status_code)

    threads = [threading.Thread(target=guess) for _ in range(30)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while True:
        with lock:
            if len(statuses) >= 25 and entered >= 5:
                break
        assert time.monotonic() < deadline, "the burst never settled"
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(timeout=10)
    assert entered == 5
    assert sorted(statuses) == [401] * 5 + [503] * 25


# ------------------------------------------------------------------- bodies
def echo_hash(req: FakeRequest) -> Reply:
    return 401, [("x-body-sha256", hashlib.sha256(req.body).hexdigest())], b""


def big_multipart() -> dict[str, Any]:
    return multipart(
        [
            ("note", b"x" * 100_000),
            ("bin", bytes(range(256)) * 40),
            ("user", "Zoë".encode()),
        ]
    )


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(
            lambda: urlencoded({"user": "alice", "password": "pä ss&=", "x": "y" * 50_000}),
            id="urlencoded",
        ),
        pytest.param(
            lambda: as_json({"user": "alice", "password": "p\u00e4ss", "pad": "z" * 40_000}),
            id="json",
        ),
        pytest.param(big_multipart, id="multipart"),
        pytest.param(
            lambda: multipart([("user", b"bob"), ("password", b"\x00\xff\r\n--")]),
            id="multipart-small",
        ),
    ],
)
def test_the_app_receives_the_body_byte_for_byte(
    kind: str, shape: Callable[[], dict[str, Any]]
) -> None:
    stack = make_stack(kind, echo_hash, max_body_bytes=4096)
    spec = shape()
    resp = stack.request("POST", "/login", **spec)
    assert resp.headers["x-body-sha256"] == hashlib.sha256(spec["body"]).hexdigest()
    assert stack.calls[-1].body == spec["body"]


def test_ten_megabytes_with_a_small_limit(kind: str, events: Events) -> None:
    stack = make_stack(kind, echo_hash, max_body_bytes=1024, on_event=events.append)
    body = b"password=x&pad=" + b"p" * (10 * 1024 * 1024) + b"&user=alice"
    resp = stack.request(
        "POST", "/login", headers={"content-type": "application/x-www-form-urlencoded"}, body=body
    )
    assert resp.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
    assert events.actions() == ["failure"]
    assert events[0].get("account") == ""  # the field lay past the limit: no account


def test_garbage_bodies_never_crash_nor_invent_accounts(kind: str, events: Events) -> None:
    stack = make_stack(kind, echo_hash, max_body_bytes=1 << 20, on_event=events.append)
    garbage = [
        ("application/json", b'{"user": "alice", '),  # invalid JSON
        ("application/json", b"[" * 200_000),  # deeper than any parser recursion
        ("application/json", b'["user", "alice"]'),  # not an object
        ("application/json", b'{"user": ["alice"], "username": 7}'),  # not strings
        (
            "multipart/form-data; boundary=zz",
            b'--zz\r\nContent-Disposition: form-data; name="user"\r\n\r\nali',
        ),
        ("multipart/form-data", b"--zz\r\n\r\n"),  # no boundary parameter
        (
            "multipart/form-data; boundary=zz",
            b'--zz\r\nContent-Disposition: form-data; name="user"; filename="user"\r\n\r\n'
            b"alice\r\n--zz--",
        ),
        ("application/x-www-form-urlencoded", b"\xff\xfe%%%&&==user"),
        ("text/plain", b"user=alice"),  # not a form: the app would not read it either
    ]
    for ctype, body in garbage:
        resp = stack.request("POST", "/login", headers={"content-type": ctype}, body=body)
        assert resp.status == 401
        assert resp.headers["x-body-sha256"] == hashlib.sha256(body).hexdigest()
    assert len(events) == len(garbage)
    assert {e.get("account") for e in events} == {""}


def test_truncated_multipart_keeps_the_complete_parts(kind: str, events: Events) -> None:
    stack = make_stack(kind, echo_hash, on_event=events.append)
    body = (
        b'--zz\r\nContent-Disposition: form-data; name="user"\r\n\r\nalice\r\n'
        b'--zz\r\nContent-Disposition: form-data; name="password"\r\n\r\nhal'
    )
    stack.request(
        "POST", "/login", headers={"content-type": "multipart/form-data; boundary=zz"}, body=body
    )
    assert events[0].get("account") == "alice"


def test_garbage_credentials_never_crash_nor_invent_accounts(
    kind: str, events: Events, caplog: pytest.LogCaptureFixture
) -> None:
    def logic(req: FakeRequest) -> Reply:
        return 401, [("www-authenticate", "Basic")], b""

    stack = make_stack(
        kind, logic, max_failed_logins=100, count_basic_auth=True, on_event=events.append
    )
    caplog.set_level(logging.WARNING, logger="mailguard.login")
    cases = [
        ("Basic !!!not base64!!!", ""),
        ("Basic " + base64.b64encode(b"no colon here").decode(), ""),
        ("Basic " + base64.b64encode(b"\xff\xfeadmin:pw").decode(), "\xff\xfeadmin"),
        ("Basic " + "QUFB" * 30_000, ""),  # a huge token
        ("Basic ", ""),
        ("Bearer eyJhbGciOi.bad.token", ""),
        ("basic " + base64.b64encode(b'EXAMPLE\\Ev"il\nx:pw').decode(), 'ev"il\nx'),
    ]
    for header, _ in cases:
        assert (
            stack.request(
                "GET", "/Microsoft-Server-ActiveSync", headers={"authorization": header}
            ).status
            == 401
        )
    assert [e.get("account") for e in events] == [account for _, account in cases]
    # schemes that are not Basic/Bearer, and no credentials at all, are not attempts
    stack.request("GET", "/x", headers={"authorization": "Negotiate abc"})
    stack.request("GET", "/x")
    assert len(events) == len(cases)
    lines = [r.getMessage() for r in caplog.records]
    assert (
        'mailguard login failure client=203.0.113.7 account="\\xff\\xfeadmin" streak=3/100' in lines
    )
    assert (
        'mailguard login failure client=203.0.113.7 account="ev\\"il\\x0ax" streak=7/100' in lines
    )
    assert all("\n" not in line for line in lines)


# -------------------------------------------------------------------- logs
FAIL2BAN = re.compile(
    r'^mailguard login (?:failure|blocked) client=(?P<addr>[0-9a-f.:]+) account="(?:[^"\\]|\\.)*"'
    r"(?: streak=\d+/\d+| seconds=\d+ failures=\d+)$"
)


def test_log_lines_are_fixed_and_anchored(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    stack = zimbra_like(kind, max_failed_logins=2)
    caplog.set_level(logging.INFO, logger="mailguard")
    stack.post("/login", {"user": 'x" client=6.6.6.6', "password": "no"})
    stack.post("/login", {"user": "Alice", "password": "no"})
    for _ in range(3):
        stack.post("/login", {"user": "alice", "password": "no"})
    lines = [r.getMessage() for r in caplog.records if r.name == "mailguard.login"]
    assert lines == [
        'mailguard login failure client=203.0.113.7 account="x\\" client=6.6.6.6" streak=1/2',
        'mailguard login failure client=203.0.113.7 account="alice" streak=2/2',
        'mailguard login blocked client=203.0.113.7 account="alice" seconds=1500 failures=2',
        "mailguard login refused client=203.0.113.7 seconds=1500",
    ]
    for line in lines[:3]:
        match = FAIL2BAN.match(line)
        assert match is not None and match["addr"] == ATTACKER


# ---------------------------------------------------------- account tarpit
def test_account_tarpit_slows_a_sprayed_account_and_never_locks_it(
    kind: str, events: Events
) -> None:
    stack = make_stack(kind, login_logic, account_tarpit=(3, 0.05), on_event=events.append)
    for n in range(3):  # three addresses, one failure each: no address is near its limit
        fail(stack, ip=f"192.0.2.{n + 1}")
    assert "tarpit" in events.actions()
    started = time.perf_counter()
    assert fail(stack, ip="192.0.2.50").status == 401  # slowed, still served
    assert time.perf_counter() - started >= 0.05
    started = time.perf_counter()
    assert succeed(stack, ip=USER).status == 302  # the real user too: slowed, not locked out
    assert time.perf_counter() - started >= 0.05
    started = time.perf_counter()
    assert fail(stack, ip="192.0.2.51", user="bob").status == 401  # other accounts: not slowed
    assert time.perf_counter() - started < 0.05
    assert stack.policy.waiting == 0
    assert events.actions().count("tarpit") == 1


SPRAY_DELAY = 0.25
SPRAY_SECONDS = 1.2


def spray(stack: Stack, addresses: int, per_address: int) -> tuple[list[int], Resp, float, float]:
    """``addresses`` x ``per_address`` concurrent guessers for ``SPRAY_SECONDS`` (asyncio
    tasks on ASGI, threads on WSGI); the real user logs in once the tarpit is full.

    Returns the attackers' statuses, the user's response, how long it took,
    and how long the spray really lasted (from the first guesser's start to
    the last one's end: guesses under way when it is told to stop still end,
    and on a loaded machine starting 80 threads takes a while).
    """
    began = time.perf_counter()
    ips = [f"192.0.2.{100 + n}" for n in range(addresses)]
    form = urlencoded({"user": "Victim", "password": "guess"})
    right = urlencoded({"user": "victim@example.com", "password": "right"})
    statuses: list[int] = []
    user: list[tuple[Resp, float]] = []

    def full() -> bool:
        return stack.policy.waiting >= stack.policy.max_delayed

    if stack.kind == "wsgi":
        stop = threading.Event()
        lock = threading.Lock()

        def guesser(ip: str) -> None:
            while not stop.is_set():
                r = stack.request("POST", "/login", ip=ip, **form)
                with lock:
                    statuses.append(r.status)
                if r.status == 503:
                    time.sleep(0.01)

        def real_user() -> None:
            deadline = time.monotonic() + SPRAY_SECONDS / 2
            while not full() and time.monotonic() < deadline:
                time.sleep(0.005)
            started = time.perf_counter()
            r = stack.request("POST", "/login", ip=USER, **right)
            user.append((r, time.perf_counter() - started))

        threads = [
            threading.Thread(target=guesser, args=(ip,)) for ip in ips for _ in range(per_address)
        ]
        threads.append(threading.Thread(target=real_user))
        for t in threads:
            t.start()
        time.sleep(SPRAY_SECONDS)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    else:

        async def scenario() -> None:
            stop = asyncio.Event()

            async def guesser(ip: str) -> None:
                while not stop.is_set():
                    r = await stack.arequest("POST", "/login", ip=ip, **form)
                    statuses.append(r.status)
                    await asyncio.sleep(0.01 if r.status == 503 else 0)

            async def real_user() -> None:
                deadline = time.monotonic() + SPRAY_SECONDS / 2
                while not full() and time.monotonic() < deadline:
                    await asyncio.sleep(0.005)
                started = time.perf_counter()
                r = await stack.arequest("POST", "/login", ip=USER, **right)
                user.append((r, time.perf_counter() - started))

            tasks = [asyncio.ensure_future(guesser(ip)) for ip in ips for _ in range(per_address)]
            tasks.append(asyncio.ensure_future(real_user()))
            await asyncio.sleep(SPRAY_SECONDS)
            stop.set()
            await asyncio.gather(*tasks)

        asyncio.run(scenario())
    assert len(user) == 1
    return statuses, *user[0], time.perf_counter() - began


def test_a_40_way_spray_slows_the_account_and_never_refuses_the_real_user(kind: str) -> None:
    """Issue 13: during a 40-way spray the real user's correct login was refused."""
    stack = make_stack(
        kind,
        login_logic,
        account_tarpit=(3, SPRAY_DELAY),
        max_delayed=8,
        max_failed_logins=1000,
        default_domain="Example.COM",
    )
    for n in range(3):  # the account is in the tarpit
        fail(stack, ip=f"192.0.2.{n + 1}", user="victim")
    statuses, answer, took, lasted = spray(stack, addresses=40, per_address=2)
    assert answer.status == 302  # the real user got in: never refused ...
    assert took < SPRAY_DELAY + 0.75  # ... and slowed at most D (plus scheduling)
    assert stack.policy.waiting == 0
    # the spray was slowed: at most max_delayed guesses per D, plus one first
    # guess per address with a clean slate; the rest were refused
    guesses = statuses.count(401)
    assert guesses <= 8 * (lasted / SPRAY_DELAY + 2) + 40
    assert statuses.count(503) > guesses
    # "Victim" and "victim@example.com" were one account (default_domain)
    assert stack.store.peek("login_account", "victim@example.com", 300) == 2 * 3  # capped at 2M
    assert stack.store.peek("login_account", "victim", 300) == 0


def request_for(
    policy: InvalidLoginPolicy, ip: str, spec: dict[str, Any], path: str = "/login"
) -> Request:
    headers = [(k.encode(), v.encode()) for k, v in spec.get("headers", {}).items()]
    headers.append((b"content-length", str(len(spec.get("body", b""))).encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": headers,
        "client": (ip, 1),
    }
    request = AsgiRequest(scope, policy.resolver.from_asgi(scope))
    if policy.wants_body(request):
        request.body = spec.get("body", b"")
    return request


def test_tarpit_verdicts_directly() -> None:
    clock = FakeClock(T0)
    policy = InvalidLoginPolicy(
        store=MemoryStore(clock=clock), account_tarpit=(2, "2s"), max_delayed=1
    )
    form = urlencoded({"user": "carol", "password": "x"})

    def failed(ip: str) -> None:
        req = request_for(policy, ip, form)
        verdict = policy.check(req)
        assert isinstance(verdict, LoginVerdict) and verdict.delay == 0.0
        policy.finish(req, verdict, 401, {})

    failed("192.0.2.1")
    failed("192.0.2.2")
    first = policy.check(request_for(policy, "192.0.2.3", form))
    assert first.allowed and first.delay == 2.0 and first.reason == "tarpit"
    # max_delayed=1: an address that already failed is refused for now, and gives
    # its slot back ...
    second = policy.check(request_for(policy, "192.0.2.1", form))
    assert not second.allowed and second.retry_after == 2
    assert policy.store.attempt("login", "192.0.2.1", 2, 300, 30)[0] == 0  # no slot held
    # ... while an address with a clean slate (maybe the real user) passes, undelayed
    clean = policy.check(request_for(policy, "192.0.2.4", form))
    assert clean.allowed and clean.delay == 0.0 and isinstance(clean, LoginVerdict)
    assert policy.waiting == 1
    policy.release(clean)
    assert policy.waiting == 1
    policy.release(first)
    assert policy.waiting == 0
    policy.finish(request_for(policy, "192.0.2.3", form), first, 302, {})
    # the account's failures leave the window: no longer slowed
    clock.advance(301)
    assert policy.check(request_for(policy, "192.0.2.5", form)).delay == 0.0


def test_an_account_that_cannot_be_told_is_tarpitted() -> None:
    policy = InvalidLoginPolicy(
        store=MemoryStore(clock=FakeClock(T0)), account_tarpit=(5, 1), max_body_bytes=64
    )
    decoy = {
        "headers": {"content-type": "application/x-www-form-urlencoded"},
        "body": b"_user=decoy&user=victim",
    }
    assert policy.check(request_for(policy, "192.0.2.1", decoy)).delay == 1.0
    padded = urlencoded({"pad": "x" * 100, "user": "victim"})
    assert policy.check(request_for(policy, "192.0.2.2", padded)).delay == 1.0
    plain = urlencoded({"user": "victim"})
    assert policy.check(request_for(policy, "192.0.2.3", plain)).delay == 0.0


# ------------------------------------------------------------------ costs
class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__(clock=FakeClock(T0))
        self.calls = 0

    def get_block(self, ns: str, key: str) -> Any:
        self.calls += 1
        return super().get_block(ns, key)

    def attempt(self, *args: Any) -> tuple[int, int, float]:
        self.calls += 1
        return super().attempt(*args)


@pytest.mark.parametrize(
    ("method", "path", "scope", "calls"),
    [
        ("GET", "/inbox", "login", 0),
        ("POST", "/api/send", "login", 0),
        ("GET", "/login", "login", 0),
        ("GET", "/inbox", "all", 1),
        ("POST", "/login", "login", 1),
    ],
)
def test_requests_that_are_not_logins_cost_nothing(
    method: str, path: str, scope: str, calls: int
) -> None:
    store = CountingStore()
    policy = InvalidLoginPolicy(store=store, block_scope=scope)
    raw = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(b"content-type", b"application/x-www-form-urlencoded")],
        "client": (ATTACKER, 1),
    }
    request = AsgiRequest(raw, policy.resolver.from_asgi(raw))
    assert policy.wants_body(request) == (16384 if calls and scope == "login" else 0)
    verdict = policy.check(request)
    assert store.calls == calls
    assert isinstance(verdict, Verdict) and verdict.allowed


# ----------------------------------------------------------------- matching
@pytest.mark.parametrize(
    ("path", "hit"),
    [
        ("/login", True),
        ("/Login/", True),
        ("//login", True),
        ("/login;jsessionid=ab", True),
        ("/login2", False),
        ("/log", False),
        ("/dav/alice/cal", True),
        ("/dav", False),
        ("/", True),
        ("/x/", False),
    ],
)
def test_path_matching(path: str, hit: bool) -> None:
    assert PathRule("login_paths", ["/login", "/dav/*", "/"], protective=True).match(path) is hit


def test_star_matches_every_path_and_empty_matches_none() -> None:
    assert PathRule("p", ["*"], protective=True).match("/anything/at/all")
    assert not PathRule("p", [], protective=True).match("/login")


@pytest.mark.parametrize(
    ("text", "account"),
    [
        ("alice", "alice"),
        ("  Alice@Example.COM ", "alice@example.com"),
        ("EXAMPLE\\Bob", "bob"),
        ("", None),
        ("   ", None),
        ("x" * 257, None),
    ],
)
def test_normalize_account(text: str, account: str | None) -> None:
    assert normalize_account(text) == account


def test_basic_account() -> None:
    assert basic_account(base64.b64encode(b"CORP\\Dave:p:w").decode()) == "dave"
    assert basic_account(base64.b64encode("jürgen:pw".encode()).decode()) == "jürgen"
    assert basic_account("bm9wYXNz") is None  # "nopass": no colon
    assert basic_account("é") is None
    assert basic_account("A" * 5000) is None


def test_json_and_multipart_parsers_directly() -> None:
    assert json_fields(b'{"user": "a", "user": "b"}') == ({"user": ["a", "b"]}, True)
    # malformed (here: deeper than any parser recursion) is "cannot tell" (issue #13)
    assert json_fields(b"[" * 100_000) == ({}, False)
    fields, closed = multipart_fields(
        b"--q\r\nContent-Disposition: form-data; name=user\r\n\r\nx\r\n--q--",
        'multipart/form-data; boundary="q"',
    )
    assert fields == {"user": ["x"]} and closed


def test_body_not_buffered_counts_as_unseen() -> None:
    policy = InvalidLoginPolicy()
    raw = {
        "type": "http",
        "method": "POST",
        "path": "/login",
        "query_string": b"",
        "client": (ATTACKER, 1),
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"10")],
    }
    request = AsgiRequest(raw, policy.resolver.from_asgi(raw))
    assert request_body_fields(request, 100) == ({}, False)


def test_login_fields_match_the_query_or_the_body(kind: str, events: Events) -> None:
    stack = make_stack(
        kind, login_logic, login_paths=["*"], login_fields={"op": "Login"}, on_event=events.append
    )
    stack.request("POST", "/login?op=login", **urlencoded({"user": "a"}))
    stack.request("POST", "/login?op=other", **urlencoded({"user": "b", "op": "LOGIN"}))
    stack.request("POST", "/login?op=other", **urlencoded({"user": "c"}))  # not a login
    stack.request("POST", "/login", **urlencoded({"user": "d", "op": "x", "pad": "y" * 200}))
    assert [e.get("account") for e in events] == ["a", "b"]
    # a body cut short before the field could be seen still counts (even with op=x
    # first: a later duplicate op=login would win in PHP)
    stack.request("POST", "/login", **urlencoded({"pad": "y" * 20_000, "op": "login", "user": "e"}))
    stack.request("POST", "/login", **urlencoded({"user": "f", "op": "x", "pad": "y" * 20_000}))
    assert [e.get("account") for e in events] == ["a", "b", "", "f"]


# ------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_failed_logins": 0}, "max_failed_logins: must be a whole number >= 1, got 0"),
        ({"max_failed_logins": True}, "max_failed_logins: must be a whole number, got True"),
        ({"failure_interval": "soon"}, "failure_interval: 'soon' is not a duration"),
        ({"block_duration": -5}, "block_duration: must be a finite number of seconds > 0, got -5"),
        (
            {"preset": "squirrelmail"},
            "preset: must be one of activesync, carbonio, dav, django, nextcloud, roundcube,"
            " sogo, zimbra, got 'squirrelmail'",
        ),
        (
            {"login_paths": "/login"},
            "login_paths: must be a list of strings, got the single string '/login'",
        ),
        ({"login_paths": ["login"]}, "login_paths: 'login' must start with '/'"),
        ({"auth_paths": [3]}, "auth_paths: every entry must be a string, got 3"),
        ({"login_methods": ["GE T"]}, "login_methods: 'GE T' is not an HTTP method"),
        ({"login_fields": {"op": 1}}, "login_fields: must map field names to strings"),
        (
            {"failure_statuses": [401, 99]},
            "failure_statuses: must be a whole number >= 100, got 99",
        ),
        ({"failure_statuses": 401}, "failure_statuses: must be a list of statuses, got 401"),
        ({"is_failure": "yes"}, "is_failure: must be callable, got 'yes'"),
        ({"count_basic_auth": "yes"}, "count_basic_auth: must be True or False, got 'yes'"),
        ({"account_fields": "user"}, "account_fields: must be a list of strings"),
        (
            {"result_header": "X Login"},
            "result_header: must be a header name or None, got 'X Login'",
        ),
        ({"max_body_bytes": -1}, "max_body_bytes: must be a whole number >= 0, got -1"),
        ({"reset_on_success": 1}, "reset_on_success: must be True or False, got 1"),
        ({"block_scope": "everything"}, "block_scope: must be 'login' or 'all', got 'everything'"),
        ({"repeat_factor": 0.5}, "repeat_factor: must be a number from 1 to 100, got 0.5"),
        (
            {"max_block_duration": 60},
            "max_block_duration: must be at least block_duration (900), got 60",
        ),
        (
            {"repeat_factor": 2, "offender_memory": 600},
            "offender_memory: must be longer than block_duration (900)",
        ),
        ({"account_tarpit": 5}, "account_tarpit: must be (failures, delay_seconds) or None, got 5"),
        ({"account_tarpit": (0, 1)}, "account_tarpit: must be a whole number >= 1, got 0"),
        (
            {"account_tarpit": (3, 600)},
            "account_tarpit: the delay must be at most 60 seconds, got 600",
        ),
        ({"max_delayed": 0}, "max_delayed: must be a whole number >= 1, got 0"),
        ({"attempt_timeout": "forever"}, "attempt_timeout: 'forever' is not a duration"),
        ({"status_code": 200}, "status_code: must be a whole number >= 400, got 200"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_options_fail_loudly_naming_the_key(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        InvalidLoginPolicy(**options)
    assert message in str(caught.value)


def test_both_adapters_validate_at_construction() -> None:
    with pytest.raises(ValueError, match="max_failed_logins"):
        asgi.InvalidLoginFilter(starlette_app(login_logic, []), max_failed_logins=-1)
    with pytest.raises(ValueError, match="block_scope"):
        wsgi.InvalidLoginFilter(flask_app(login_logic, []).wsgi_app, block_scope="ip")


def test_defaults_are_zimbras() -> None:
    policy = InvalidLoginPolicy()
    assert (policy.limit, policy.interval, policy.block_duration) == (10, 300.0, 900.0)
    assert policy.login_paths.exact == frozenset({"/login"})
    assert policy.login_methods == frozenset({"POST"})
    assert policy.failure_statuses == frozenset({401, 403})
    assert policy.on_store_error == "open"
    assert policy.block_scope == "login" and not policy.reset_on_success
    assert policy.strip_headers == frozenset({"x-login-result"})
    assert policy.tarpit_after == 0 and policy.repeat_factor == 1.0
    assert isinstance(policy.resolver, ClientResolver)


def test_durations_accept_config_file_strings() -> None:
    policy = InvalidLoginPolicy(
        failure_interval="5m", block_duration="25m", account_tarpit=(3, "500ms")
    )
    assert (policy.interval, policy.block_duration, policy.tarpit_delay) == (300.0, 1500.0, 0.5)


def test_release_ignores_verdicts_it_did_not_delay() -> None:
    policy = InvalidLoginPolicy()
    policy.release(Verdict(True, "ok"))
    assert policy.waiting == 0


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before


def test_default_domain_joins_user_and_user_at_domain_for_the_seam() -> None:
    policy = InvalidLoginPolicy(
        store=MemoryStore(clock=FakeClock(T0)), account_tarpit=(2, 1), default_domain="example.com"
    )
    for ip, account in (("192.0.2.1", "victim"), ("192.0.2.2", "VICTIM@Example.com")):
        ticket = policy.begin(ip, account)
        assert isinstance(ticket, LoginVerdict) and ticket.account == "victim@example.com"
        policy.end(ticket, "failed")
    assert policy.begin("192.0.2.3", "victim").delay == 1.0  # one account, now in the tarpit
    with pytest.raises(ValueError, match=r"^default_domain: must be a domain"):
        InvalidLoginPolicy(default_domain="a@b")


def test_tarpit_budget_leaves_wsgi_threads_free() -> None:
    """Under WSGI a tarpitted attempt holds a worker thread: an unset
    ``max_delayed`` is 2 there (50 under ASGI); a value given is kept."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    async def aapp(scope: Any, receive: Any, send: Any) -> None:
        return None

    assert wsgi.InvalidLoginFilter(app, account_tarpit=(3, 1)).policy.max_delayed == 2
    assert asgi.InvalidLoginFilter(aapp, account_tarpit=(3, 1)).policy.max_delayed == 50
    given = wsgi.InvalidLoginFilter(app, account_tarpit=(3, 1), max_delayed=8)
    assert given.policy.max_delayed == 8
