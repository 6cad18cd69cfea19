"""An attacker's review of the defences built for issues #13 and #16.

Each test tries one way past a filter through a real stack (Starlette behind
httpx, Flask behind werkzeug; ``stacks.py``) or the login seam, and asserts
that the defence holds.  The holes this review found (multipart names in
single quotes or behind quoted decoys, a lone ``<`` in Roundcube's
``_action``, Nextcloud Basic guesses on any path, chunked and compressed
bodies, hostile JSON to ``POST /block``) were fixed; their tests stay here.
"""

from __future__ import annotations

import base64
import io
import random
import time
from typing import Any

import pytest
from stacks import AsgiStack, Stack, WsgiStack

from mailguard import FakeClock, MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.events import Event
from mailguard.policies import InvalidLoginPolicy, Outcome
from mailguard.policies.login import LoginVerdict

FILTERS: dict[str, Any] = {"asgi": mg_asgi, "wsgi": mg_wsgi}
STACKS: dict[str, type[Stack]] = {"asgi": AsgiStack, "wsgi": WsgiStack}
FORM = {"content-type": "application/x-www-form-urlencoded"}
ATTACKER = "203.0.113.7"


@pytest.fixture(params=sorted(STACKS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def store() -> MemoryStore:
    return MemoryStore(clock=FakeClock(start=1_700_000_000.0))


def build(kind: str, name: str, **options: Any) -> Stack:
    middleware = getattr(FILTERS[kind], name)
    return STACKS[kind](lambda app: middleware(app, **options))


def login(kind: str, events: list[Event], **options: Any) -> Stack:
    """A login filter over the echo app, whose 200 answers count as failures."""
    options.setdefault("failure_statuses", (200,))
    options.setdefault("max_failed_logins", 3)
    options.setdefault("store", store())
    return build(kind, "InvalidLoginFilter", on_event=events.append, **options)


def statuses(stack: Stack, n: int, path: str = "/login", **kw: Any) -> list[int]:
    kw.setdefault("method", "POST")
    return [stack.request(path, **kw)[0] for _ in range(n)]


def failures(events: list[Event]) -> list[str]:
    return [str(e.get("account")) for e in events if e.action == "failure"]


def multipart(*parts: tuple[str, str]) -> tuple[dict[str, str], bytes]:
    """A multipart body of (Content-Disposition parameters, value) parts."""
    body = b""
    for params, value in parts:
        body += f"--XX\r\nContent-Disposition: form-data; {params}\r\n\r\n{value}\r\n".encode()
    body += b"--XX--\r\n"
    return {"content-type": "multipart/form-data; boundary=XX"}, body


# ------------------------------------------------------- holes: multipart
def test_roundcube_multipart_single_quoted_name_is_a_login(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, preset="roundcube")
    headers, body = multipart(("name='_action'", "login"), ("name='_user'", "victim"))
    codes = statuses(stack, 5, "/", headers=headers, body=body)
    assert codes[-1] == 503, codes


def test_roundcube_multipart_quoted_filename_decoy_is_a_login(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, preset="roundcube")
    headers, body = multipart(('x="; filename=a"; name="_action"', "login"))
    codes = statuses(stack, 5, "/", headers=headers, body=body)
    assert codes[-1] == 503, codes


def test_nextcloud_multipart_decoy_name_keeps_the_account(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, preset="nextcloud", max_failed_logins=100)
    headers, body = multipart(('x="; name=decoy"; name="user"', "victim"))
    stack.request("/login", method="POST", headers=headers, body=body)
    assert failures(events) == ["victim"]


@pytest.mark.parametrize("value", ["%3C%20login", "%3C%09login", "lo%3C%20gin"])
def test_roundcube_action_with_lone_angle_bracket_is_a_login(kind: str, value: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, preset="roundcube")
    body = f"_action={value}&_user=victim".encode()
    codes = statuses(stack, 5, "/", headers=FORM, body=body)
    assert codes[-1] == 503, codes


@pytest.mark.parametrize("path", ["/index.php/apps/files/", "/apps/dashboard/", "/"])
def test_nextcloud_basic_credentials_on_any_index_php_path_are_counted(
    kind: str, path: str
) -> None:
    events: list[Event] = []
    stack = login(kind, events, preset="nextcloud")
    auth = {"authorization": "Basic " + base64.b64encode(b"victim:guess").decode()}
    codes = statuses(stack, 5, path, method="GET", headers=auth)
    assert codes[-1] == 503, codes


# --------------------------------------------------------- held: identity
def test_forged_x_forwarded_for_from_untrusted_peer_is_ignored(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events)
    codes = [
        stack.request("/login", method="POST", headers={"x-forwarded-for": f"198.51.100.{i}"})[0]
        for i in range(5)
    ]
    assert codes[-1] == 503
    assert {e.client for e in events if e.action == "failure"} == {ATTACKER}


def test_forged_forwarded_header_from_untrusted_peer_is_ignored(kind: str) -> None:
    events: list[Event] = []
    stack = login(
        kind, events, trusted_proxies=["10.0.0.0/8", "unix"], forwarded_header="forwarded"
    )
    codes = [
        stack.request("/login", method="POST", headers={"forwarded": f"for=198.51.100.{i}"})[0]
        for i in range(5)
    ]
    assert codes[-1] == 503


def test_trusted_proxy_header_walk_stops_at_first_untrusted_hop(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, trusted_proxies=["10.0.0.0/8"])
    for i in range(5):
        # the client prepends rotating junk; the proxy appends the real address
        xff = f"198.51.100.{i}, 10.9.9.9, {ATTACKER}, 10.0.0.2"
        last = stack.request(
            "/login", method="POST", client="10.0.0.1", headers={"x-forwarded-for": xff}
        )[0]
    assert last == 503
    assert {e.client for e in events if e.action == "failure"} == {ATTACKER}


def test_ipv6_rotation_across_64s_is_caught_by_the_48(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, max_failed_logins=2)  # /56 at 8, /48 at 32
    codes = [
        stack.request("/login", method="POST", client=f"2001:db8:1:{i:x}::1")[0]
        for i in range(0, 80 * 256, 256)  # a new /56 each time, one /48
    ]
    assert 503 in codes
    assert codes.count(200) <= 32


def test_ipv6_rotation_within_a_64_is_one_client(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events)
    codes = [
        stack.request("/login", method="POST", client=f"2001:db8:1:2::{i:x}")[0]
        for i in range(1, 6)
    ]
    assert codes[-1] == 503


def test_random_ipv6_flood_stays_bounded_in_time_and_memory() -> None:
    """Each IPv6 request counts three keys now: 6,000 fresh /48s must stay cheap."""
    s = store()
    rng = random.Random(13)
    policy = InvalidLoginPolicy(store=s, max_failed_logins=5)
    started = time.monotonic()
    for _ in range(6000):
        addr = ":".join(f"{rng.getrandbits(16):x}" for _ in range(8))
        ticket = policy.begin("2" + addr[1:], "victim", "imap")
        policy.end(ticket, Outcome.FAILED)
        if time.monotonic() - started > 30:
            break
    assert time.monotonic() - started < 30
    assert len(s) <= s.max_keys


def test_ipv6_flood_from_a_blocked_48_cannot_wash_out_a_streak() -> None:
    """Fresh /64s of one /48 fill a small store: another address's streak survives."""
    clock = FakeClock(start=1_700_000_000.0)
    s = MemoryStore(clock=clock, max_keys=1024)
    policy = InvalidLoginPolicy(store=s, max_failed_logins=3)

    def fail(address: str) -> bool:
        ticket = policy.begin(address, "victim", "imap")
        if ticket.allowed:
            policy.end(ticket, Outcome.FAILED)
        return ticket.allowed

    guesser = "198.51.100.9"
    allowed = 0
    for cycle in range(4):
        allowed += sum(fail(guesser) for _ in range(2))
        clock.advance(1)
        for i in range(1500):
            fail(f"2001:db8:1:{cycle * 1500 + i:x}::1")
        clock.advance(1)
    assert allowed == 3
    assert not policy.begin(guesser, "victim", "imap").allowed


# ------------------------------------------------------------- held: paths
@pytest.mark.parametrize(
    "path",
    ["/LOGIN", "/%2Flogin", "/login;jsessionid=1", "/%6Cogin", "/login/", "/x/%2E%2E/login"],
)
def test_login_path_spellings_are_counted(kind: str, path: str) -> None:
    events: list[Event] = []
    stack = login(kind, events)
    stack.request(path, method="POST", headers=FORM, body=b"username=victim")
    assert failures(events) == ["victim"]


@pytest.mark.parametrize("path", ["/static/..%2Fx", "/static//x", "/static/%2e%2e/x", "/STATIC/x"])
def test_exempt_prefix_does_not_reach_other_paths(kind: str, path: str) -> None:
    stack = build(
        kind, "DosFilter", max_requests_per_sec=2, exempt_paths=["/static/"], store=store()
    )
    codes = [stack.request(path)[0] for _ in range(6)]
    assert any(c != 200 for c in codes), codes


# ---------------------------------------------------- held: roundcube _action
@pytest.mark.parametrize(
    ("path", "headers", "body"),
    [
        ("/?_action=LOGIN", FORM, b"_user=victim"),
        ("/", FORM, b"_action=%3Cb%3Elogin%3C%2Fb%3E&_user=victim"),
        ("/", FORM, b".action=login&_user=victim"),
        ("/", FORM, b"_action[]=x&_action=login&_user=victim"),
        ("/", {"content-type": "APPLICATION/X-WWW-FORM-URLENCODED;x"}, b"_action=login"),
        ("/", {"content-type": "application/x-www-form-urlencoded,x"}, b"_action=login"),
        ("/", FORM, b"x=" + b"a" * 20000 + b"&_action=login"),
    ],
)
def test_roundcube_action_spellings_are_logins(
    kind: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    events: list[Event] = []
    stack = login(kind, events, preset="roundcube", failure_statuses=(200,))
    codes = statuses(stack, 4, path, headers=headers, body=body)
    assert codes[-1] == 503, codes


@pytest.mark.parametrize("cookie", [".action=login", "a=b; _action=login", "_action=LOG%49N"])
def test_roundcube_action_in_a_cookie_is_a_login(kind: str, cookie: str) -> None:
    events: list[Event] = []
    if kind == "asgi":
        stack = login(kind, events, preset="roundcube")
        codes = statuses(stack, 4, "/", headers={**FORM, "cookie": cookie}, body=b"_user=v")
    else:  # werkzeug's test client drops a Cookie header: speak WSGI directly
        guarded = mg_wsgi.InvalidLoginFilter(
            wsgi_app([]),
            preset="roundcube",
            failure_statuses=(200,),
            max_failed_logins=3,
            store=store(),
            on_event=events.append,
        )
        codes = [wsgi_call(guarded, b"_user=v", HTTP_COOKIE=cookie) for _ in range(4)]
    assert codes[-1] == 503, codes


def wsgi_app(seen: list[bytes]) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"no"]

    return app


def wsgi_call(guarded: Any, body: bytes, **extra: str) -> int:
    """One request through a WSGI middleware, environ built by hand; its status."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "REMOTE_ADDR": ATTACKER,
        "CONTENT_TYPE": "application/x-www-form-urlencoded",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "mail.test",
        "SERVER_PORT": "80",
        **extra,
    }
    if environ["CONTENT_LENGTH"] == "":
        del environ["CONTENT_LENGTH"]
    got: list[str] = []
    out = guarded(environ, lambda status, headers, exc=None: got.append(status))
    b"".join(out)
    getattr(out, "close", lambda: None)()
    return int(got[0].split()[0])


def test_body_one_byte_over_the_limit_is_counted(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, preset="roundcube", max_body_bytes=64)
    body = b"_action=login&pad=" + b"a" * (65 - len(b"_action=login&pad="))
    assert len(body) == 65
    codes = statuses(stack, 4, "/", headers=FORM, body=b"pad=" + body[4:])
    assert codes[-1] == 503, codes


def test_wsgi_chunked_body_without_length_is_counted() -> None:
    events: list[Event] = []
    seen: list[bytes] = []
    guarded = mg_wsgi.InvalidLoginFilter(
        wsgi_app(seen),
        preset="roundcube",
        failure_statuses=(200,),
        max_failed_logins=3,
        store=store(),
        on_event=events.append,
    )
    body = b"_user=victim&_action=login"
    codes = [
        wsgi_call(
            guarded,
            body,
            CONTENT_LENGTH="",
            HTTP_TRANSFER_ENCODING="chunked",
            **{"wsgi.input_terminated": True},  # type: ignore[arg-type]
        )
        for _ in range(4)
    ]
    assert codes[-1] == 503, codes
    assert seen and all(b == body for b in seen)
    assert failures(events)[:1] == ["victim"]


# ----------------------------------------------------------- held: accounts
@pytest.mark.parametrize(
    "spelling",
    [
        "Victim",
        "victim\x00junk",
        " victim\u200b",
        "\uff36\uff29\uff23\uff34\uff29\uff2d",
        "CORP\\victim",
    ],
)
def test_account_spellings_are_one_account(kind: str, spelling: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, max_failed_logins=100)
    from urllib.parse import urlencode

    stack.request(
        "/login", method="POST", headers=FORM, body=urlencode({"username": spelling}).encode()
    )
    assert failures(events) == ["victim"]


@pytest.mark.parametrize(
    "account", ["victim\x00", "a" * 100_000, "\ud800victim\udfff", "\x00", "\ufeff" * 5000]
)
def test_login_seam_takes_hostile_account_strings(account: str) -> None:
    policy = InvalidLoginPolicy(store=store(), max_failed_logins=3, account_tarpit=(2, 1))
    for _ in range(3):
        ticket = policy.begin(ATTACKER, account, "imap")
        assert ticket.allowed
        policy.end(ticket, Outcome.FAILED)
    assert not policy.begin(ATTACKER, account, "imap").allowed


def test_tarpit_full_lets_only_clean_addresses_through() -> None:
    """The documented bound: with the tarpit full, a guessing address is refused;
    each fresh address gets one undelayed guess (a botnet gets one per address)."""
    policy = InvalidLoginPolicy(
        store=store(), max_failed_logins=10, account_tarpit=(2, 5), max_delayed=1
    )
    for i in range(2):
        t = policy.begin(f"198.51.100.{i}", "victim", "imap")
        policy.end(t, Outcome.FAILED)
    held = policy.begin("198.51.100.50", "victim", "imap")  # fills the tarpit
    assert isinstance(held, LoginVerdict) and held.delay > 0
    guesser = policy.begin("198.51.100.0", "victim", "imap")  # has a streak
    assert not guesser.allowed
    fresh = [policy.begin(f"192.0.2.{i}", "victim", "imap") for i in range(20)]
    assert all(isinstance(t, LoginVerdict) and t.delay == 0 for t in fresh)
    for t in fresh:
        policy.end(t, Outcome.FAILED)
    again = [policy.begin(f"192.0.2.{i}", "victim", "imap") for i in range(20)]
    assert not any(t.allowed for t in again)


# -------------------------------------------------------------- held: modes
def test_monitor_mode_never_refuses_but_records(kind: str) -> None:
    events: list[Event] = []
    stack = login(kind, events, enforce=False)
    codes = statuses(stack, 8)
    assert set(codes) == {200}
    assert any(e.action == "would-block" for e in events)


# ---------------------------------------------------------- refusal hook
@pytest.mark.parametrize(
    "answer",
    [
        (200, {}, b"come in"),
        (503, {"x-evil": "a\r\nset-cookie: s=1"}, b"no"),
        (503, {"retry-after": "0"}, b"no"),
        "raise",
    ],
)
def test_refusal_hook_cannot_turn_a_refusal_into_a_pass(kind: str, answer: Any) -> None:
    def hook(info: Any) -> Any:
        if answer == "raise":
            raise RuntimeError("hook bug")
        return answer

    events: list[Event] = []
    stack = login(kind, events, refusal=hook)
    status, headers, body = [stack.request("/login", method="POST") for _ in range(4)][-1]
    assert 400 <= status < 600
    assert int(headers["retry-after"]) >= 1
    assert "set-cookie" not in headers
    assert b"ok /login" not in body


# ------------------------------------------------------------- admin app
ADMIN_TOKEN = "t" * 24


def admin_post(kind: str, path: str, body: bytes) -> int:
    """One authenticated POST to the admin app from loopback; its status (500 if it raised)."""
    from mailguard.admin import AdminApp

    app = AdminApp(store(), token=ADMIN_TOKEN)
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"}
    if kind == "wsgi":
        from werkzeug.test import Client

        try:
            r = Client(app.wsgi).post(
                path, data=body, headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"}
            )
        except Exception:
            return 500
        return r.status_code

    import asyncio

    import httpx

    async def go() -> int:
        transport = httpx.ASGITransport(app=app.asgi, client=("127.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin.test") as c:
            return (await c.post(path, content=body, headers=headers)).status_code

    try:
        return asyncio.run(go())
    except Exception:
        return 500


@pytest.mark.parametrize("body", [b'{"seconds": ' + b"1" * 5000 + b"}", b"[" * 30000])
def test_admin_block_rejects_hostile_json_with_400(kind: str, body: bytes) -> None:
    assert admin_post(kind, "/block", body) == 400


@pytest.mark.parametrize("body", [b'{"key": ' + b"1" * 5000 + b"}", b"[" * 30000])
def test_admin_unblock_rejects_hostile_json_with_400(kind: str, body: bytes) -> None:
    assert admin_post(kind, "/unblock", body) == 400


@pytest.mark.parametrize(
    "body",
    [
        b'{"key": "0.0.0.0/0", "seconds": 10}',
        b'{"key": "203.0.113.9", "seconds": 1e309}',
        b'{"key": "203.0.113.9", "seconds": -1}',
        b'{"key": "203.0.113.9", "seconds": 10, "kind": "dos"}',
        b'{"key": "203.0.113.9", "seconds": 10, "reason": ""}',
    ],
)
def test_admin_block_refuses_bad_blocks(kind: str, body: bytes) -> None:
    assert admin_post(kind, "/block", body) == 400


def test_admin_refuses_forged_forwarded_for_and_wrong_token(kind: str) -> None:
    from werkzeug.test import Client

    from mailguard.admin import AdminApp

    app = AdminApp(store(), token=ADMIN_TOKEN)
    c = Client(app.wsgi)
    forged = c.get(
        "/blocks",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "x-forwarded-for": "127.0.0.1"},
        environ_base={"REMOTE_ADDR": ATTACKER},
    )
    assert forged.status_code == 403
    wrong = c.get(
        "/blocks",
        headers={"authorization": "Bearer " + "t" * 23 + "u"},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
    )
    assert wrong.status_code == 403


def test_wsgi_chunked_body_without_input_terminated_is_counted() -> None:
    """A server that announces no end of input: the filter cannot read the body."""
    events: list[Event] = []
    seen: list[bytes] = []
    guarded = mg_wsgi.InvalidLoginFilter(
        wsgi_app(seen),
        preset="roundcube",
        failure_statuses=(200,),
        max_failed_logins=3,
        store=store(),
        on_event=events.append,
    )
    body = b"_user=victim&_action=login"
    codes = [
        wsgi_call(guarded, body, CONTENT_LENGTH="", HTTP_TRANSFER_ENCODING="chunked")
        for _ in range(4)
    ]
    assert seen == [body] * 4  # the app read every login
    assert codes[-1] == 503, codes


def test_roundcube_compressed_form_body_is_counted(kind: str) -> None:
    import gzip

    events: list[Event] = []
    stack = login(kind, events, preset="roundcube")
    headers = {**FORM, "content-encoding": "gzip"}
    body = gzip.compress(b"_action=login&_user=victim")
    codes = statuses(stack, 5, "/", headers=headers, body=body)
    assert codes[-1] == 503, codes
