"""``refusal=``: the application chooses its refusal; Retry-After stays mailguard's.

Every variant (JSON for an API, an HTML page for webmail users, ActiveSync's
status and header) runs through the ASGI and the WSGI adapters.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

import httpx
import pytest
from werkzeug.test import Client

import mailguard.asgi
import mailguard.wsgi
from mailguard import FakeClock, MemoryStore
from mailguard.config import ConfigError, loads
from mailguard.core import Verdict
from mailguard.options import named_option
from mailguard.policies import DosPolicy, InvalidLoginPolicy, RefusalInfo

ATTACKER = "203.0.113.66"
KINDS = ("asgi", "wsgi")


# ------------------------------------------------------------------ the apps
async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """401 to POST /login, 200 to anything else."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    status = 401 if scope["method"] == "POST" and scope["path"] == "/login" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    environ["wsgi.input"].read()
    login = environ["REQUEST_METHOD"] == "POST" and environ["PATH_INFO"] == "/login"
    start_response("401 Unauthorized" if login else "200 OK", [])
    return [b"app"]


class Reply:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


def build(kind: str, adapter: str, **options: Any) -> Callable[..., Reply]:
    """``send(method, path, headers=None)`` through ``adapter`` wrapping the app."""
    if kind == "asgi":
        app = getattr(mailguard.asgi, adapter)(asgi_app, **options)

        def send_asgi(method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
            async def go() -> httpx.Response:
                transport = httpx.ASGITransport(app=app, client=(ATTACKER, 40000))
                async with httpx.AsyncClient(transport=transport, base_url="http://mail") as c:
                    return await c.request(method, path, headers=headers, content=b"x=1")

            r = asyncio.run(go())
            return Reply(r.status_code, list(r.headers.multi_items()), r.content)

        return send_asgi
    wapp = getattr(mailguard.wsgi, adapter)(wsgi_app, **options)
    client = Client(wapp)

    def send_wsgi(method: str, path: str, headers: dict[str, str] | None = None) -> Reply:
        r = client.open(
            path, method=method, headers=headers, data=b"x=1",
            environ_base={"REMOTE_ADDR": ATTACKER},
        )  # fmt: skip
        return Reply(r.status_code, list(r.headers.items()), r.get_data())

    return send_wsgi


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=FakeClock(start=1_700_000_000.0))


def json_refusal(info: RefusalInfo) -> tuple[int, dict[str, str], bytes]:
    doc = {"error": info.reason, "message": info.message, "retry_after": info.retry_after}
    headers = {"Content-Type": "application/json", "Retry-After": "0", "Content-Length": "9"}
    return 429, headers, json.dumps(doc).encode()


PAGE = "<!doctype html><title>Please wait</title><p>{message} Try again in {minutes} min.</p>"


def html_refusal(info: RefusalInfo) -> tuple[int, list[tuple[str, str]], str]:
    minutes = -(-info.retry_after // 60)
    page = PAGE.format(message=info.message.capitalize(), minutes=minutes)
    return 503, [("content-type", "text/html; charset=utf-8"), ("cache-control", "private")], page


def activesync_refusal(info: RefusalInfo) -> tuple[int, list[tuple[str, str]], bytes]:
    # what Exchange sends a throttled device: 503, X-MS-ASThrottle, no body
    return 503, [("X-MS-ASThrottle", "CommandFrequency")], b""


# ------------------------------------------------------------------ variants
@pytest.mark.parametrize("kind", KINDS)
def test_a_json_refusal_for_an_api(kind: str, store: MemoryStore) -> None:
    send = build(
        kind, "InvalidLoginFilter", max_failed_logins=2, block_duration=600,
        refusal=json_refusal, store=store,
    )  # fmt: skip
    assert [send("POST", "/login").status for _ in range(2)] == [401, 401]
    reply = send("POST", "/login")
    assert reply.status == 429
    assert reply.header("content-type") == ["application/json"]
    assert reply.header("retry-after") == ["600"]  # ours: the hook's "0" is dropped
    assert reply.header("content-length") == [str(len(reply.body))]
    assert reply.header("cache-control") == ["no-store"]
    assert json.loads(reply.body) == {
        "error": "blocked",
        "message": "too many failed logins from your address.",
        "retry_after": 600,
    }
    assert send("GET", "/inbox").status == 200  # block_scope="login"


@pytest.mark.parametrize("kind", KINDS)
def test_an_html_page_for_webmail_users(kind: str, store: MemoryStore) -> None:
    send = build(
        kind, "DosFilter", max_requests_per_sec=2, headers=True, refusal=html_refusal, store=store
    )
    assert [send("GET", "/").status for _ in range(2)] == [200, 200]
    reply = send("GET", "/")
    assert reply.status == 503
    assert reply.header("content-type") == ["text/html; charset=utf-8"]
    assert reply.header("cache-control") == ["private"]  # the hook's own wins
    assert reply.header("retry-after") == ["1"]
    assert reply.header("ratelimit-limit") == ["2"]  # DosFilter(headers=True) keeps its own
    assert reply.body.decode() == PAGE.format(
        message="Too many requests from your address.", minutes=1
    )
    head = send("HEAD", "/")
    assert head.status == 503 and head.body == b""


@pytest.mark.parametrize("kind", KINDS)
def test_activesync_status_and_header_for_a_jailed_device(kind: str, store: MemoryStore) -> None:
    send = build(
        kind, "DeviceJail", max_requests=2, jail_duration=600, refusal=activesync_refusal,
        store=store,
    )  # fmt: skip
    token = base64.b64encode(b"alice:secret").decode()
    path = "/Microsoft-Server-ActiveSync?Cmd=Ping&User=alice&DeviceId=dev1&DeviceType=iPhone"
    auth = {"authorization": f"Basic {token}"}
    assert [send("POST", path, auth).status for _ in range(2)] == [200, 200]
    reply = send("POST", path, auth)
    assert reply.status == 503 and reply.body == b""
    assert reply.header("x-ms-asthrottle") == ["CommandFrequency"]
    assert reply.header("retry-after") == ["600"]
    assert reply.header("content-type") == ["text/plain; charset=utf-8"]  # none given
    assert reply.header("content-length") == ["0"]


# ----------------------------------------------------------------- the rules
def _policy(hook: Any, **options: Any) -> InvalidLoginPolicy:
    return InvalidLoginPolicy(refusal=hook, **options)


def blocked(key: str = ATTACKER, wait: int = 100) -> Verdict:
    return Verdict(False, "blocked", key, retry_after=wait)


def test_the_hook_sees_no_client_and_is_asked_once_per_shape() -> None:
    seen: list[RefusalInfo] = []

    def hook(info: RefusalInfo) -> tuple[int, dict[str, str], str]:
        seen.append(info)
        return 403, {}, "no"

    policy = _policy(hook)
    first = policy.refusal_for(blocked("198.51.100.1", 100))
    again = policy.refusal_for(blocked("198.51.100.2", 100))
    assert first is again  # one refusal for every client of that shape
    assert seen == [RefusalInfo("login", "blocked", 100, 503, seen[0].message, ())]
    assert not any("198.51.100" in str(v) for v in vars_of(seen[0]))
    policy.refusal_for(blocked("198.51.100.1", 50))
    assert [i.retry_after for i in seen] == [100, 50]


def vars_of(info: RefusalInfo) -> list[object]:
    return [getattr(info, name) for name in info.__slots__]


@pytest.mark.parametrize(
    "answer",
    [
        (200, {}, b"ok"),  # not a refusal status
        (True, {}, b"x"),
        (429, {"x-bad": "a\r\nset-cookie: s=1"}, b"x"),  # header injection
        (429, {"x-bad": "caf\u20ac"}, b"x"),  # not Latin-1
        (429, {"bad name": "1"}, b"x"),
        (429, [("x-one",)], b"x"),
        (429, {}, 12),
        (429, {}),
        None,
    ],
)
def test_a_malformed_answer_sends_our_own_refusal(
    answer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    policy = _policy(lambda info: answer)
    with caplog.at_level(logging.ERROR, logger="mailguard"):
        made = policy.refusal_for(blocked(ATTACKER, 100))
    assert made.status == 503 and ("retry-after", "100") in made.headers
    assert made.body.startswith(b"Service Unavailable: too many failed logins")
    assert "refusal hook failed" in caplog.text


def test_a_hook_that_raises_sends_our_own_refusal(caplog: pytest.LogCaptureFixture) -> None:
    def hook(info: RefusalInfo) -> tuple[int, dict[str, str], str]:
        raise RuntimeError("template missing")

    policy = DosPolicy(max_requests_per_sec=1, refusal=hook, status_code=429)
    with caplog.at_level(logging.ERROR, logger="mailguard"):
        made = policy.refusal_for(Verdict(False, "store-error", ATTACKER, retry_after=5))
    assert made.status == 503 and "template missing" in caplog.text


def test_a_status_without_a_standard_phrase() -> None:
    policy = _policy(lambda info: (499, {}, b""))
    made = policy.refusal_for(blocked(ATTACKER, 5))
    assert made.status_line == "499 Refused"
    plain = InvalidLoginPolicy(status_code=499).refusal_for(blocked(ATTACKER, 5))
    assert plain.status_line == "499 Refused" and plain.body.startswith(b"Refused: ")


def test_a_refusal_must_be_callable_and_is_not_for_files() -> None:
    for bad in ("<p>wait</p>", 429, {"status": 429}):
        with pytest.raises(ValueError) as caught:
            DosPolicy(refusal=bad)  # type: ignore[arg-type]
        assert named_option(caught.value) is not None
        assert named_option(caught.value)[0] == "refusal"  # type: ignore[index]
    with pytest.raises(ConfigError) as error:
        loads('[dos]\nrefusal = "page.html"\n', env={})
    assert error.value.key == "dos.refusal" and "Python callable" in error.value.problem
