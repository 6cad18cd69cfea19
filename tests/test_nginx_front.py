"""``GET /nginx``: nginx's mail ``auth_http`` through the real ASGI stack.

nginx (``src/mail/ngx_mail_auth_http_module.c``) asks once per login attempt
and never says whether the backend then took the password, so mailguard
checks it: here against small real IMAP, POP3 and SMTP servers
(``tests/mail_servers.py``) on loopback, or a configured callable.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import serve_kit
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mail_servers import MailServer
from serve_kit import (
    ATTACKER,
    asgi_client,
    dovecot_body,
    make_server,
    nginx_escape,
    nginx_headers,
)

from mailguard.events import Event
from mailguard.nginx_auth import BLOCKED, WRONG, VerifiedCache, unescape
from mailguard.serve import MailGuardServer

USERS = {b"jdoe": b"right horse", "jörg".encode(): "pässword".encode()}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def config(
    backends: dict[str, MailServer], extra: str = "", limit: int = 3, timeout: float = 1.0
) -> str:
    table = ", ".join(f'{p} = "{s.address}"' for p, s in backends.items())
    return (
        f"[login]\nmax_failed_logins = {limit}\nblock_duration = 600\n"
        f"[mailauth]\nnginx_backends = {{ {table} }}\nverify_timeout = {timeout}\n{extra}"
    )


async def ask(http: httpx.AsyncClient, **headers: Any) -> httpx.Response:
    raw = headers.pop("raw", None)
    sent = nginx_headers(**headers)
    if raw:
        sent.update(raw)
    response = await http.get("/nginx", headers=sent)
    assert response.status_code == 200
    wire = f"HTTP/1.1 {response.status_code} OK\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in response.headers.items()
    )
    # ngx_mail_auth_http_read_handler reads the whole answer into 1024 bytes
    assert len(wire.encode()) + 2 < 1024
    assert all("\r" not in v and "\n" not in v for v in response.headers.values())
    return response


def failures(events: list[Event]) -> list[Event]:
    return [e for e in events if e.action == "failure"]


def served(
    protocols: tuple[str, ...],
    scenario: Callable[[MailGuardServer, dict[str, MailServer], httpx.AsyncClient], Any],
    *,
    extra: str = "",
    limit: int = 3,
    events: list[Event] | None = None,
    mode: str = "ok",
    timeout: float = 1.0,
) -> None:
    """Run ``scenario`` with backends for ``protocols`` and a server asking them."""

    async def main() -> None:
        backends: dict[str, MailServer] = {}
        for protocol in protocols:
            backends[protocol] = await MailServer(protocol, USERS, mode).__aenter__()
        try:
            server = make_server(config(backends, extra, limit, timeout), events=events)
            async with asgi_client(server) as client:
                await scenario(server, backends, client)
        finally:
            for backend in backends.values():
                await backend.__aexit__(None, None, None)

    run(main())


# ------------------------------------------------------------ right, wrong
@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_a_right_password_is_sent_to_the_backend(protocol: str) -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        response = await ask(client, protocol=protocol)
        backend = backends[protocol]
        assert response.headers["Auth-Status"] == "OK"
        assert response.headers["Auth-Server"] == "127.0.0.1"
        assert response.headers["Auth-Port"] == str(backend.port)
        assert "Auth-Wait" not in response.headers
        await asyncio.sleep(0.05)
        assert backend.connections == backend.closed == 1  # logged out and closed
        said = b"".join(backend.lines)
        assert said.rstrip().endswith(b"LOGOUT" if protocol == "imap" else b"QUIT")
        if protocol == "smtp":  # RFC 4616: authzid NUL authcid NUL passwd, base64
            token = said.split(b"AUTH PLAIN ")[1].split(b"\r\n")[0]
            assert base64.b64decode(token) == b"\0jdoe\0right horse"
        else:
            assert b"right horse" in said

    served((protocol,), scenario, events=events)
    assert failures(events) == []


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_wrong_passwords_are_counted_and_block_the_address(protocol: str) -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for _ in range(3):
            response = await ask(client, protocol=protocol, password="guess")
            assert response.headers["Auth-Status"] == "Invalid login or password"
            assert response.headers["Auth-Wait"] == "3"
            if protocol == "smtp":
                assert response.headers["Auth-Error-Code"] == "535 5.7.8"
            else:
                assert "Auth-Error-Code" not in response.headers
        before = backends[protocol].connections
        # blocked: even the right password, and the backend is not asked
        response = await ask(client, protocol=protocol)
        assert response.headers["Auth-Status"] == "Too many failed logins from your address"
        assert "Auth-Wait" not in response.headers  # nginx closes the connection
        assert "Auth-Server" not in response.headers
        assert backends[protocol].connections == before
        # another address is untouched
        response = await ask(client, protocol=protocol, client="198.51.100.2")
        assert response.headers["Auth-Status"] == "OK"

    served((protocol,), scenario, events=events)
    assert [e.get("protocol") for e in failures(events)] == [protocol] * 3
    (block,) = [e for e in events if e.action == "blocked"]
    assert block.client == ATTACKER and "protocol=" + protocol in block.line()


def test_failures_through_dovecot_and_nginx_add_up() -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for n in range(3):
            await client.post("/dovecot?command=allow", json=dovecot_body(session=f"d{n}"))
            await client.post(
                "/dovecot?command=report", json=dovecot_body(session=f"d{n}", success=False)
            )
        for _ in range(2):
            await ask(client, password="guess")
        response = await ask(client)
        assert response.headers["Auth-Status"] == "Too many failed logins from your address"
        said = await client.post("/dovecot?command=allow", json=dovecot_body(session="x"))
        assert said.json()["status"] == -1

    served(("imap",), scenario, events=events, limit=5)
    assert [e.get("protocol") for e in failures(events)] == ["imap"] * 5


# ------------------------------------------------------------ credentials
def test_percent_escapes_are_decoded_and_plus_stays_a_plus() -> None:
    users = {b"a+b@example.com": b"p+ss %41 100%", b"x": b"%zz"}

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        backends["imap"].users.update(users)
        for user, password in users.items():
            response = await ask(
                client,
                user=nginx_escape(user).decode(),
                password=nginx_escape(password).decode(),
            )
            assert response.headers["Auth-Status"] == "OK", (user, password)
        # a form decoder would have turned "+" into a space: that is another password
        response = await ask(client, user="a+b@example.com", password="p ss %2541 100%25")
        assert response.headers["Auth-Status"] == "Invalid login or password"

    served(("imap",), scenario, limit=9)


def test_eight_bit_credentials_go_as_imap_literals() -> None:
    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        raw = {"Auth-User": "jörg".encode(), "Auth-Pass": "pässword".encode()}
        response = await ask(client, raw=raw)
        assert response.headers["Auth-Status"] == "OK"
        assert b"{5}\r\n" in b"".join(backends["imap"].lines)  # j\xc3\xb6rg: a literal

    served(("imap",), scenario)


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
@pytest.mark.parametrize("password", ["a%0D%0Aa2 LOGOUT", "x%0Ay", "x%00y", "%0D", "ok%0D%0AQUIT"])
def test_cr_lf_and_nul_are_never_sent_to_the_backend(protocol: str, password: str) -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        response = await ask(client, protocol=protocol, password=password)
        assert response.headers["Auth-Status"] == "Invalid login or password"
        response = await ask(client, protocol=protocol, user="jd%0D%0Aoe", password="x")
        assert response.headers["Auth-Status"] == "Invalid login or password"
        assert backends[protocol].connections == 0

    served((protocol,), scenario, events=events, limit=9)
    assert len(failures(events)) == 2


def test_a_hostile_ten_kilobyte_account_keeps_every_header_short() -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        hostile = "%0D%0AAuth-Status: OK%0D%0A" * 400  # ~10 KB once decoded
        for protocol in ("imap", "smtp"):
            response = await ask(client, protocol=protocol, user=hostile, password="x")
            assert response.headers["Auth-Status"] == "Invalid login or password"
        response = await ask(client, user="u" * 10_000)  # checked (too long), counted
        assert response.headers["Auth-Status"] == "Invalid login or password"
        response = await ask(client, user=hostile)
        assert response.headers["Auth-Status"] == "Too many failed logins from your address"

    served(("imap", "smtp"), scenario, events=events)
    for event in events:
        assert "\n" not in event.line() and "\r" not in event.line()
        assert len(event.line()) < 400


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=64))
def test_unescape_inverts_nginx_escaping(raw: bytes) -> None:
    assert unescape(nginx_escape(raw)) == raw


@settings(max_examples=300, deadline=None)
@given(text=st.binary(max_size=64))
def test_unescape_decodes_only_percent_hex_pairs(text: bytes) -> None:
    out = unescape(text)
    assert out.count(b"+") >= text.count(b"+")  # a plus is never a space
    if b"%" not in text:
        assert out == text
    assert len(out) >= len(text) - 2 * text.count(b"%")


def test_broken_escapes_are_kept_literally() -> None:
    assert unescape(b"%zz%4") == b"%zz%4"
    assert unescape(b"%2B+%2b") == b"+++"
    assert unescape(b"%%41") == b"%A"


# ------------------------------------------------------------ not counted
@pytest.mark.parametrize("method", ["cram-md5", "apop", "external", "digest-md5", ""])
def test_unverifiable_methods_get_an_error_and_nothing_is_counted(method: str) -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for _ in range(5):
            response = await ask(client, method=method, password="whatever")
            assert response.headers["Auth-Status"].startswith("Authentication method not")
        assert backends["imap"].connections == 0
        assert (await ask(client)).headers["Auth-Status"] == "OK"

    served(("imap",), scenario, events=events, limit=2)
    assert failures(events) == []


def test_smtp_without_auth_is_no_login_but_a_blocked_address_is_refused() -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for _ in range(5):  # relaying mail: no login, nothing counted
            response = await ask(client, protocol="smtp", method="none", user="", password="")
            assert response.headers["Auth-Status"] == "OK"
            assert response.headers["Auth-Port"] == str(backends["smtp"].port)
        assert backends["smtp"].connections == 0
        for _ in range(2):
            await ask(client, protocol="smtp", password="guess")
        response = await ask(client, protocol="smtp", method="none", user="", password="")
        assert response.headers["Auth-Status"] == "Too many failed logins from your address"
        assert response.headers["Auth-Error-Code"] == "421 4.7.0"

    served(("smtp",), scenario, events=events, limit=2)
    assert len(failures(events)) == 2


@pytest.mark.parametrize("mode", ["silent", "unavailable", "logindisabled", "nouser", "noauth"])
def test_a_backend_that_cannot_tell_is_no_failure_of_the_client(mode: str) -> None:
    events: list[Event] = []
    protocol = {"logindisabled": "imap", "nouser": "pop3", "noauth": "smtp"}.get(mode, "imap")

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for _ in range(4):
            response = await ask(client, protocol=protocol, password="guess")
            assert response.headers["Auth-Status"].startswith("Temporary authentication failure")
            assert response.headers["Auth-Wait"] == "3"

    served((protocol,), scenario, events=events, limit=2, mode=mode)
    assert failures(events) == []


def test_an_unreachable_backend_answers_a_temporary_error() -> None:
    events: list[Event] = []
    port = serve_kit_free_port()
    server = make_server(
        "[login]\nmax_failed_logins = 2\n"
        f'[mailauth]\nnginx_backends = {{ pop3 = "127.0.0.1:{port}" }}\n',
        events=events,
    )

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for _ in range(3):
                response = await ask(client, protocol="pop3")
                assert response.headers["Auth-Status"].startswith("Temporary")
            # imap has no backend configured: a temporary error, named in the log
            response = await ask(client, protocol="imap")
            assert response.headers["Auth-Status"].startswith("Temporary")
            response = await ask(client, protocol="nntp")
            assert response.headers["Auth-Status"].startswith("Temporary")

    run(scenario())
    assert failures(events) == []


def serve_kit_free_port() -> int:
    from redis_server import free_port

    return free_port()


@pytest.mark.parametrize("client_ip", ["", "unknown", "nginx.example", "203.0.113.7, 1.2.3.4"])
def test_a_request_without_a_client_address_is_not_counted(client_ip: str) -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for _ in range(3):
            response = await ask(client, client=client_ip, password="guess")
            assert response.headers["Auth-Status"].startswith("Temporary")
        assert backends["imap"].connections == 0

    served(("imap",), scenario, events=events, limit=2)
    assert failures(events) == []


@pytest.mark.parametrize(
    ("peer", "secret"), [("192.0.2.9", serve_kit.SECRET), ("127.0.0.1", None), ("127.0.0.1", "x")]
)
def test_forbidden_callers_are_no_password_oracle(peer: str, secret: str | None) -> None:
    events: list[Event] = []

    async def main() -> None:
        async with MailServer("imap", USERS) as backend:
            server = make_server(config({"imap": backend}, limit=2), events=events)
            async with asgi_client(server, peer=peer, secret=secret) as client:
                for password in ("right horse", "guess", "guess", "guess"):
                    response = await client.get("/nginx", headers=nginx_headers(password=password))
                    assert response.status_code == 403
                    assert "Auth-Server" not in response.headers
            assert backend.connections == 0
            async with asgi_client(server) as client:  # nginx itself: nothing was counted
                assert (await ask(client)).headers["Auth-Status"] == "OK"

    run(main())
    assert events == []


# ------------------------------------------------------------ callables
@pytest.mark.parametrize("func", ["sync_verify", "async_verify"])
def test_a_configured_callable_checks_the_password(func: str) -> None:
    events: list[Event] = []
    serve_kit.CALLS.clear()

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        response = await ask(
            client, raw={"Auth-User": "jörg".encode(), "Auth-Pass": "pässword".encode()}
        )
        assert response.headers["Auth-Status"] == "OK"
        assert response.headers["Auth-Port"] == str(backends["imap"].port)
        response = await ask(client, password="wrong")
        assert response.headers["Auth-Status"] == "Invalid login or password"
        assert backends["imap"].connections == 0  # the callable decided

    served(("imap",), scenario, extra=f'verify = "serve_kit:{func}"\n', events=events)
    assert serve_kit.CALLS == [
        ("jörg", "pässword", "imap", ATTACKER),
        ("jdoe", "wrong", "imap", ATTACKER),
    ]
    assert len(failures(events)) == 1


@pytest.mark.parametrize("func", ["raising_verify", "vague_verify", "slow_verify"])
def test_a_callable_that_fails_is_no_failure_of_the_client(func: str) -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for _ in range(3):
            response = await ask(client)
            assert response.headers["Auth-Status"].startswith("Temporary")

    served(
        ("imap",),
        scenario,
        extra=f'verify = "serve_kit:{func}"\n',
        timeout=0.3,
        events=events,
        limit=2,
    )
    assert failures(events) == []


def test_sync_callables_run_on_a_bounded_pool_of_their_own() -> None:
    # [mailauth] verify_threads = 2: two slow checks hold both threads; a third
    # waits for one within verify_timeout and, finding none, gets a temporary
    # error, counted as nothing (never a queue growing behind a stuck directory)
    events: list[Event] = []
    serve_kit.NAPS.clear()

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        threads = server.nginx.threads
        loop = asyncio.get_running_loop()
        slow = [
            asyncio.create_task(ask(client, password="0.8", client=f"198.51.100.{n}"))
            for n in (1, 2)
        ]
        await asyncio.sleep(0.1)
        assert threads.busy == 2
        started = loop.time()
        third = await ask(client, password="0", client="198.51.100.3")
        assert third.headers["Auth-Status"].startswith("Temporary")
        assert 0.25 <= loop.time() - started < 0.6  # waited verify_timeout, no longer
        # the slow two passed their deadline: temporary errors, but their
        # threads are still taken until the calls return
        for response in await asyncio.gather(*slow):
            assert response.headers["Auth-Status"].startswith("Temporary")
        assert threads.busy == 2
        for _ in range(100):  # the calls return (0.8 s) and give their threads back
            if threads.busy == 0:
                break
            await asyncio.sleep(0.05)
        assert threads.busy == 0
        ok = await ask(client, password="0", client="198.51.100.4")
        assert ok.headers["Auth-Status"] == "OK"
        # a waiting check gets a thread freed within its deadline
        first = asyncio.create_task(ask(client, password="0.2", client="198.51.100.5"))
        second = asyncio.create_task(ask(client, password="0.2", client="198.51.100.6"))
        await asyncio.sleep(0.05)
        waited = await ask(client, password="0", client="198.51.100.7")
        assert waited.headers["Auth-Status"] == "OK"
        for response in await asyncio.gather(first, second):
            assert response.headers["Auth-Status"] == "OK"

    served(
        ("imap",),
        scenario,
        extra='verify = "serve_kit:sleepy_verify"\nverify_threads = 2\nverify_cache_ttl = 0\n',
        timeout=0.3 + 0.1,
        events=events,
        limit=2,
    )
    assert failures(events) == []
    assert serve_kit.NAPS and all(n.startswith("mailguard-verify") for n in serve_kit.NAPS)
    # the two slow calls, then four more: the refused third never ran
    assert len(serve_kit.NAPS) == 6


# ------------------------------------------------------------ verify cache
def test_a_right_password_is_checked_once_within_verify_cache_ttl() -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        backend = backends["imap"]
        for n in range(5):  # a phone reconnecting, from changing addresses
            response = await ask(client, client=f"198.51.100.{n + 1}")
            assert response.headers["Auth-Status"] == "OK"
        await asyncio.sleep(0.05)
        assert backend.connections == 1  # the first check only
        assert len(server.nginx.cache) == 1
        # another protocol, another user, or another password is checked anew
        response = await ask(
            client, raw={"Auth-User": "jörg".encode(), "Auth-Pass": "pässword".encode()}
        )
        assert response.headers["Auth-Status"] == "OK"
        for _ in range(3):  # wrong passwords are never remembered
            response = await ask(client, password="right horse!")
            assert response.headers["Auth-Status"] == WRONG
        await asyncio.sleep(0.05)
        assert backend.connections == 5
        # a blocked address is refused before the cache is asked
        response = await ask(client)
        assert response.headers["Auth-Status"] == BLOCKED
        await asyncio.sleep(0.05)
        assert backend.connections == 5
        # what is kept: keyed hashes, never a password
        kept = list(server.nginx.cache._until)
        assert all(len(key) == 32 and b"right horse" not in key for key in kept)
        await asyncio.sleep(0.35)  # past verify_cache_ttl: checked again
        response = await ask(client, client="198.51.100.77")
        assert response.headers["Auth-Status"] == "OK"
        await asyncio.sleep(0.05)
        assert backend.connections == 6

    served(("imap",), scenario, extra="verify_cache_ttl = 0.3\n", events=events, limit=3)
    assert len(failures(events)) == 3


def test_verify_cache_ttl_zero_checks_every_login() -> None:
    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for n in range(3):
            response = await ask(client, client=f"198.51.100.{n + 1}")
            assert response.headers["Auth-Status"] == "OK"
        await asyncio.sleep(0.05)
        assert backends["imap"].connections == 3
        assert len(server.nginx.cache) == 0

    served(("imap",), scenario, extra="verify_cache_ttl = 0\n")


def test_the_verify_cache_is_bounded_least_recently_used_first() -> None:
    cache = VerifiedCache(60.0, size=3)
    for n in range(3):
        cache.remember("imap", b"u%d" % n, b"pw")
    assert cache.known("imap", b"u0", b"pw")  # u0 used: u1 is now the oldest
    cache.remember("imap", b"u3", b"pw")
    assert len(cache) == 3
    assert not cache.known("imap", b"u1", b"pw")
    assert all(cache.known("imap", b"u%d" % n, b"pw") for n in (0, 2, 3))
    # the fields cannot run into each other
    assert not cache.known("imap", b"u0p", b"w") and not cache.known("pop3", b"u0", b"pw")


def test_the_account_tarpit_holds_the_check() -> None:
    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for n in range(2):
            await ask(client, password="guess", client=f"198.51.100.{n + 1}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await ask(client, client="198.51.100.9")
        assert response.headers["Auth-Status"] == "OK"
        assert loop.time() - started >= 0.5
        assert server.policy.waiting == 0

    _tarpit(scenario)


def _tarpit(scenario: Any) -> None:
    async def main() -> None:
        async with MailServer("imap", USERS) as backend:
            text = config({"imap": backend}, limit=9).replace(
                "block_duration = 600\n", 'block_duration = 600\naccount_tarpit = [2, "500ms"]\n'
            )
            server = make_server(text)
            async with asgi_client(server) as client:
                await scenario(server, {"imap": backend}, client)

    run(main())


def test_a_credential_header_sent_twice_is_not_guessed_at() -> None:
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        for twice in ("Auth-Pass", "Auth-User", "Client-IP"):
            headers = list(nginx_headers(password="guess").items())
            headers.append((twice, "198.51.100.4" if twice == "Client-IP" else "jdoe"))
            response = await client.get("/nginx", headers=headers)
            assert response.headers["Auth-Status"].startswith("Temporary")
        assert backends["imap"].connections == 0

    served(("imap",), scenario, events=events, limit=2)
    assert failures(events) == []


header_values = st.binary(max_size=80) | st.sampled_from(
    [b"plain", b"none", b"cram-md5", b"imap", b"pop3", b"smtp", b"203.0.113.7", b"::1", b"%0D%0A"]
)


@settings(max_examples=150, deadline=None)
# "\xb2" is "²" in latin-1: str.isdigit() takes it, int() does not
@example(values={"auth-method": b"", "auth-login-attempt": b"\xb2"})
@given(
    values=st.fixed_dictionaries(
        {},
        optional={
            name: header_values
            for name in (
                "auth-method",
                "auth-user",
                "auth-pass",
                "auth-protocol",
                "client-ip",
                "auth-login-attempt",
            )
        },
    )
)
def test_any_headers_get_a_short_well_formed_answer(values: dict[str, bytes]) -> None:
    server = make_server(
        "[login]\nmax_failed_logins = 3\n[mailauth]\n"
        'nginx_backends = { imap = "127.0.0.1:143", pop3 = "[::1]:110", smtp = "127.0.0.1:25" }\n'
        'verify = "serve_kit:sync_verify"\n'
    )
    reply = run(server.nginx.handle(values))
    names = [name for name, _ in reply]
    assert names[0] == "Auth-Status"
    assert len(names) == len(set(names))
    for _, value in reply:
        assert value.isascii() and value.isprintable() and len(value) < 100
    if reply[0][1] == "OK":
        assert ("Auth-Server", "127.0.0.1") in reply or ("Auth-Server", "::1") in reply


def test_an_address_whose_checks_only_come_back_undecided_stops_being_checked() -> None:
    """Issue #14 F5: an undecided check is no failure, but an address whose
    checks only ever come back undecided (here a backend answering
    ``NO [UNAVAILABLE]``) gets ``max_failed_logins`` of them per
    ``failure_interval``; past that a temporary refusal without a check, and
    never a block.  Another address is still checked."""
    events: list[Event] = []

    async def scenario(server: Any, backends: dict[str, MailServer], client: Any) -> None:
        backend = backends["imap"]
        for n in range(5):
            response = await ask(client, password=f"guess{n}")
            assert response.headers["Auth-Status"].startswith("Temporary")
        logins = b"".join(backend.lines).count(b" LOGIN ")
        assert logins == 2
        response = await ask(client, password="guess9", client="198.51.100.4")
        assert response.headers["Auth-Status"].startswith("Temporary")
        assert b"".join(backend.lines).count(b" LOGIN ") == 3
        assert server.store.peek("login_undecided", ATTACKER, 600.0) == 2

    served(("imap",), scenario, events=events, limit=2, mode="unavailable")
    assert failures(events) == []
    assert [e for e in events if e.action == "blocked"] == []
