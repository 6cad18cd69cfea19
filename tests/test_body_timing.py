"""When a login attempt begins (issue #13, "Concurrency and bodies"), in process.

An attempt takes its slot once its body has arrived in full, so holding back
the end of a body holds no slot and checks no password; the WSGI replay never
reads past Content-Length; the WSGI DosFilter's unset delay budgets are small.
The same attacks on real servers are in tests/test_bodies.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from typing import Any
from urllib.parse import parse_qs

import pytest
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from mailguard import asgi, wsgi
from mailguard.core import FakeClock
from mailguard.policies import DosPolicy, InvalidLoginPolicy
from mailguard.stores import MemoryStore

LIMIT = 3
BIG = 20_000  # over max_body_bytes (16384)


def _policy(clock: FakeClock) -> InvalidLoginPolicy:
    return InvalidLoginPolicy(
        store=MemoryStore(clock=clock), max_failed_logins=LIMIT, attempt_timeout=30
    )


def _form(n: int, size: int = BIG) -> bytes:
    head = b"_user=victim&_pass=guess%d&pad=" % n
    return head + b"a" * (size - len(head))


# ------------------------------------------------------------------- ASGI
class _Conn:
    """One ASGI connection whose body arrives in two parts, the tail on cue."""

    def __init__(self, body: bytes, hold: int = 100) -> None:
        self.parts = [body[:-hold], body[-hold:]]
        self.tail = asyncio.Event()
        self.gone = False
        self.sent: list[dict[str, Any]] = []
        self.scope = {
            "type": "http", "method": "POST", "path": "/login", "query_string": b"",
            "client": ("203.0.113.7", 40000), "server": ("mail.test", 80), "scheme": "http",
            "headers": [(b"content-type", b"application/x-www-form-urlencoded"),
                        (b"content-length", str(len(body)).encode())],
        }  # fmt: skip

    async def receive(self) -> dict[str, Any]:
        if len(self.parts) == 2:
            return {"type": "http.request", "body": self.parts.pop(0), "more_body": True}
        await self.tail.wait()
        if self.gone or not self.parts:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": self.parts.pop(0), "more_body": False}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        assert len(starts) <= 1, self.sent
        return starts[0]["status"] if starts else None


def _starlette(checks: list[str]) -> Starlette:
    async def login(request: StarletteRequest) -> PlainTextResponse:
        form = parse_qs((await request.body()).decode())
        checks.append(form["_pass"][0])  # the password check
        return PlainTextResponse("wrong password", status_code=401)

    return Starlette(routes=[Route("/login", login, methods=["POST"])])


@pytest.mark.parametrize("size", [1000, BIG])
def test_asgi_held_back_tails_hold_no_slot_and_check_no_password(size: int) -> None:
    """Rounds of bodies held back past attempt_timeout, then every tail at
    once: at most max_failed_logins password checks (was: one per body past
    max_body_bytes)."""
    clock = FakeClock()
    checks: list[str] = []
    app = asgi.InvalidLoginFilter(_starlette(checks), policy=_policy(clock))

    async def attack() -> list[_Conn]:
        conns = [_Conn(_form(n, size)) for n in range(4 * LIMIT)]
        tasks = []
        for i, conn in enumerate(conns):
            tasks.append(asyncio.create_task(app(conn.scope, conn.receive, conn.send)))
            await asyncio.sleep(0)
            if i % LIMIT == LIMIT - 1:
                clock.advance(31)  # past attempt_timeout: a slot taken now would lapse
        await asyncio.sleep(0.01)
        assert not checks and all(c.status is None for c in conns)
        for conn in conns:
            conn.tail.set()
        await asyncio.gather(*tasks)
        return conns

    conns = asyncio.run(attack())
    assert len(checks) == LIMIT
    statuses = sorted(c.status or 0 for c in conns)
    assert statuses == [401] * LIMIT + [503] * (3 * LIMIT)


def test_asgi_refused_at_body_end_app_gets_disconnect_and_nothing_escapes() -> None:
    clock = FakeClock()
    checks: list[str] = []
    policy = _policy(clock)
    app = asgi.InvalidLoginFilter(_starlette(checks), policy=policy)
    for _ in range(LIMIT):  # block the address
        policy.finish(None, policy.begin("203.0.113.7"), 401, {})  # type: ignore[arg-type]

    async def one() -> _Conn:
        conn = _Conn(_form(0))
        conn.tail.set()
        await app(conn.scope, conn.receive, conn.send)  # Starlette's ClientDisconnect is ours
        return conn

    conn = asyncio.run(one())
    assert conn.status == 503 and not checks
    assert any(m.get("body", b"").startswith(b"Service Unavailable") for m in conn.sent)


def test_asgi_client_gone_mid_body_takes_no_slot() -> None:
    clock = FakeClock()
    policy = _policy(clock)
    app = asgi.InvalidLoginFilter(_starlette([]), policy=policy)

    async def gone() -> None:
        conn = _Conn(_form(0))
        conn.gone = True
        conn.tail.set()
        # the app's own ClientDisconnect is passed on: mailguard refused nothing
        with contextlib.suppress(Exception):
            await app(conn.scope, conn.receive, conn.send)
        assert all(m.get("status") != 503 for m in conn.sent)

    for _ in range(3 * LIMIT):
        asyncio.run(gone())
    assert policy.begin("203.0.113.7").allowed  # no slot was left taken


def test_asgi_app_that_answers_before_reading_the_tail_is_judged_then() -> None:
    """An app that answers without reading the whole body: the verdict is
    reached when its response starts, and counts its failure."""
    clock = FakeClock()
    policy = _policy(clock)

    async def hasty(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b"no"})

    app = asgi.InvalidLoginFilter(hasty, policy=policy)

    async def one() -> int | None:
        conn = _Conn(_form(0))
        await app(conn.scope, conn.receive, conn.send)
        return conn.status

    assert [asyncio.run(one()) for _ in range(LIMIT + 1)] == [401] * LIMIT + [503]


# ------------------------------------------------------------------- WSGI
class _Stream:
    """A socket-like wsgi.input: reading past its body is a hang (here, an error)."""

    def __init__(self, body: bytes) -> None:
        self.data = io.BytesIO(body)
        self.size = len(body)

    def read(self, size: int = -1) -> bytes:
        if size < 0 or self.data.tell() + size > self.size:
            raise AssertionError(f"read({size}) past the body: the client would hang")
        return self.data.read(size)


def _environ(body: bytes, stream: Any = None, **extra: Any) -> dict[str, Any]:
    env = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/login", "QUERY_STRING": "",
        "REMOTE_ADDR": "203.0.113.7", "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)), "wsgi.input": stream or _Stream(body),
        "wsgi.url_scheme": "http", "SERVER_NAME": "mail.test", "SERVER_PORT": "80",
    }  # fmt: skip
    env.update(extra)
    return env


def _call(app: Any, env: dict[str, Any]) -> tuple[str, bytes]:
    got: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
        got.append(status)
        return lambda data: None

    result = app(env, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close:
            close()
    assert len(got) == 1, got
    return got[0], body


@pytest.mark.parametrize("reader", ["read()", "read(n)", "readline", "iterate"])
@pytest.mark.parametrize("size", [10, 16384, BIG])
def test_wsgi_replay_never_reads_past_content_length(reader: str, size: int) -> None:
    body = _form(0, size) if size > 40 else b"_user=x&a"

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        if reader == "read()":
            data = stream.read()
        elif reader == "read(n)":
            data = stream.read(int(environ["CONTENT_LENGTH"]))
        elif reader == "readline":
            data = b"".join(iter(stream.readline, b""))
        else:
            data = b"".join(stream)
        assert data == body
        start_response("401 Unauthorized", [])
        return [b"no"]

    guarded = wsgi.InvalidLoginFilter(app, policy=_policy(FakeClock()))
    assert _call(guarded, _environ(body))[0].startswith("401")


def test_wsgi_without_content_length_reads_nothing() -> None:
    class Untouchable:
        def read(self, *args: Any) -> bytes:
            raise AssertionError("read without Content-Length")

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    guarded = wsgi.InvalidLoginFilter(app, policy=_policy(FakeClock()))
    env = _environ(b"", Untouchable(), CONTENT_LENGTH="")
    assert _call(guarded, env)[0].startswith("200")


def test_wsgi_slot_begins_at_the_body_end_and_a_refusal_replaces_the_answer() -> None:
    clock = FakeClock()
    policy = _policy(clock)
    seen: list[str] = []
    tickets = [policy.begin("203.0.113.7") for _ in range(LIMIT)]  # every slot taken

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        stream.read(1000)  # the start: no verdict yet
        seen.append("prefix")
        try:
            stream.read()  # the end: the verdict, which refuses
        except wsgi.BodyRefused:
            seen.append("refused")
            raise
        seen.append("checked")
        start_response("401 Unauthorized", [])
        return [b"no"]

    guarded = wsgi.InvalidLoginFilter(app, policy=policy)
    status, body = _call(guarded, _environ(_form(0)))
    assert status.startswith("503") and b"at once" in body
    assert seen == ["prefix", "refused"]
    for ticket in tickets:
        policy.end(ticket, "unknown")
    status, _ = _call(guarded, _environ(_form(1)))
    assert status.startswith("401") and seen[-1] == "checked"


def test_wsgi_client_gone_mid_body_takes_no_slot() -> None:
    policy = _policy(FakeClock())
    body = _form(0)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        data = environ["wsgi.input"].read()
        assert len(data) < len(body)  # the client left: a short body
        start_response("400 Bad Request", [])
        return [b"short"]

    guarded = wsgi.InvalidLoginFilter(app, policy=policy)
    for _ in range(3 * LIMIT):
        env = _environ(body, io.BytesIO(body[:-100]))
        assert _call(guarded, env)[0].startswith("400")
    tickets = [policy.begin("203.0.113.7") for _ in range(LIMIT)]
    assert all(t.allowed for t in tickets)  # no slot was left taken


@pytest.mark.parametrize("busy", [False, True])
def test_wsgi_chunked_body_is_judged_at_its_end(busy: bool) -> None:
    """No Content-Length, the server ends the body (``wsgi.input_terminated``)."""
    policy = _policy(FakeClock())
    tickets = [policy.begin("203.0.113.7") for _ in range(LIMIT if busy else 0)]
    checked: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        checked.append(environ["wsgi.input"].read())
        start_response("401 Unauthorized", [])
        return [b"no"]

    guarded = wsgi.InvalidLoginFilter(app, policy=policy)
    env = _environ(b"", io.BytesIO(_form(0)), CONTENT_LENGTH="")
    env["wsgi.input_terminated"] = True
    status, _ = _call(guarded, env)
    assert status.startswith("503" if busy else "401")
    assert checked == ([] if busy else [_form(0)])
    assert len(tickets) == (LIMIT if busy else 0)


# ------------------------------------------------------------ delay budgets
def test_dos_delay_budgets_unset_are_small_under_wsgi_only() -> None:
    def ok(environ: Any, start_response: Any) -> list[bytes]:
        return []

    async def aok(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert (DosPolicy().max_delayed, DosPolicy().max_delayed_per_client) == (50, 5)
    w = wsgi.DosFilter(ok, delay_ms=100)
    assert (w.policy.max_delayed, w.policy.max_delayed_per_client) == (2, 1)  # type: ignore[attr-defined]
    a = asgi.DosFilter(aok, delay_ms=100)
    assert (a.policy.max_delayed, a.policy.max_delayed_per_client) == (50, 5)  # type: ignore[attr-defined]
    chosen = wsgi.DosFilter(ok, delay_ms=100, max_delayed=8)
    assert (chosen.policy.max_delayed, chosen.policy.max_delayed_per_client) == (8, 1)  # type: ignore[attr-defined]


def test_an_app_error_in_a_deferred_request_is_the_apps_and_the_app_runs_once() -> None:
    calls: list[str] = []

    async def afail(scope: Any, receive: Any, send: Any) -> None:
        calls.append("asgi")
        raise RuntimeError("app failure")

    def wfail(environ: Any, start_response: Any) -> list[bytes]:
        calls.append("wsgi")
        raise RuntimeError("app failure")

    async def one() -> None:
        conn = _Conn(_form(0))
        conn.tail.set()
        await asgi.InvalidLoginFilter(afail, policy=_policy(FakeClock()))(
            conn.scope, conn.receive, conn.send
        )

    with pytest.raises(RuntimeError):
        asyncio.run(one())
    with pytest.raises(RuntimeError):
        wsgi.InvalidLoginFilter(wfail, policy=_policy(FakeClock()))(
            _environ(_form(0)), lambda *a: None
        )
    assert calls == ["asgi", "wsgi"]
