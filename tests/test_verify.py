"""mailguard.verify: the backend logins ``/nginx`` uses to check a password."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mail_servers import MailServer, _quoted
from redis_server import free_port

from mailguard.mailauth import Backend
from mailguard.verify import has_unsafe, imap_string, verify_backend

USERS = {b"jdoe": b'pa"ss\\word', b"x": b"\x7f~"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@settings(max_examples=300, deadline=None)
@given(value=st.binary(max_size=40).filter(lambda b: not has_unsafe(b)))
def test_imap_strings_read_back_as_sent(value: bytes) -> None:
    token, literal = imap_string(value)
    if literal is None:
        assert token.startswith(b'"') and token.endswith(b'"')
        assert _quoted(token + b" rest") == (value, b" rest")
        assert all(0x01 <= b <= 0x7F for b in value)
        assert b"\r" not in token and b"\n" not in token
    else:
        assert token == b"{%d}" % len(value) and literal == value
        assert any(b > 0x7F or b == 0 for b in value)


@settings(max_examples=200, deadline=None)
@given(user=st.binary(max_size=20), password=st.binary(max_size=20))
def test_unsafe_credentials_are_those_with_cr_lf_or_nul(user: bytes, password: bytes) -> None:
    expected = any(c in user + password for c in (b"\r", b"\n", b"\0"))
    assert has_unsafe(user, password) == expected


@pytest.mark.parametrize("protocol", ["imap", "pop3", "smtp"])
def test_quotes_and_backslashes_reach_the_backend_intact(protocol: str) -> None:
    async def scenario() -> list[bool | None]:
        async with MailServer(protocol, USERS) as server:
            backend = Backend("127.0.0.1", server.port)
            return [
                await verify_backend(backend, protocol, b"jdoe", b'pa"ss\\word', 2.0),
                await verify_backend(backend, protocol, b"jdoe", b'pa"ss\\wor', 2.0),
                await verify_backend(backend, protocol, b"x", b"\x7f~", 2.0),
            ]

    assert run(scenario()) == [True, False, True]


def test_an_unsafe_credential_opens_no_connection() -> None:
    async def scenario() -> tuple[bool | None, int]:
        async with MailServer("imap", USERS) as server:
            said = await verify_backend(
                Backend("127.0.0.1", server.port), "imap", b"jdoe", b"x\r\na2 LOGOUT", 2.0
            )
            return said, server.connections

    assert run(scenario()) == (False, 0)


def test_a_silent_backend_costs_the_timeout_and_tells_nothing() -> None:
    async def scenario() -> tuple[bool | None, float]:
        async with MailServer("imap", USERS, mode="silent") as server:
            started = time.monotonic()
            said = await verify_backend(
                Backend("127.0.0.1", server.port), "imap", b"jdoe", b"x", 0.3
            )
            return said, time.monotonic() - started

    said, took = run(scenario())
    assert said is None
    assert 0.25 <= took < 1.5


def test_a_closed_port_tells_nothing() -> None:
    said = run(verify_backend(Backend("127.0.0.1", free_port()), "pop3", b"u", b"p", 1.0))
    assert said is None


def test_an_unknown_protocol_tells_nothing() -> None:
    assert run(verify_backend(Backend("127.0.0.1", 9), "nntp", b"u", b"p", 1.0)) is None


@pytest.mark.parametrize(
    "greeting",
    [
        b"* BYE go away\r\n",
        b"garbage\r\n",
        b"* OK " + b"x" * 20_000 + b"\r\n",  # a line past the limit
        b"",  # closed at once
    ],
)
def test_a_broken_imap_server_tells_nothing(greeting: bytes) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        await writer.drain()
        writer.close()

    async def scenario() -> bool | None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await verify_backend(Backend("127.0.0.1", port), "imap", b"u", b"p", 1.0)
        finally:
            server.close()
            await server.wait_closed()

    assert run(scenario()) is None


@pytest.mark.parametrize("protocol", ["imap", "pop3"])
@pytest.mark.parametrize("mode", ["trusting", "ok"])
def test_the_client_address_is_passed_on_where_the_backend_offers_it(
    protocol: str, mode: str
) -> None:
    async def scenario() -> tuple[bool | None, bytes]:
        async with MailServer(protocol, USERS, mode=mode) as server:
            said = await verify_backend(
                Backend("127.0.0.1", server.port),
                protocol,
                b"jdoe",
                b'pa"ss\\word',
                2.0,
                "2001:db8::7",
            )
            return said, b"".join(server.lines)

    said, lines = run(scenario())
    assert said is True
    expected = {
        "imap": b'a0 ID ("x-originating-ip" "2001:db8::7")\r\n',
        "pop3": b"XCLIENT ADDR=2001:db8::7\r\n",
    }[protocol]
    assert (expected in lines) == (mode == "trusting")


def test_a_client_that_is_no_address_is_never_passed_on() -> None:
    async def scenario() -> bytes:
        async with MailServer("imap", USERS, mode="trusting") as server:
            await verify_backend(
                Backend("127.0.0.1", server.port), "imap", b"jdoe", b"x", 2.0, 'x") LOGOUT'
            )
            return b"".join(server.lines)

    assert b"ID" not in run(scenario())


@pytest.mark.servers
def test_smtp_checks_name_the_client_so_dovecots_penalty_lands_on_it() -> None:
    """Issue #14 F4: a real Dovecot submission service with its own brakes on
    (auth penalty, ``auth_failure_delay``) and mailguard's address in
    ``login_trusted_networks``.  Without XCLIENT every wrong guess made the
    penalty land on mailguard's own address, and later checks (honest users
    included) ran past ``verify_timeout``.  With ``XCLIENT ADDR`` it lands on
    each guessing client; an honest user's check stays quick."""
    from dovecot_server import DovecotServer, dovecot_binary, has_submission

    if dovecot_binary() is None or not has_submission():
        pytest.skip("Dovecot with submission is not installed")
    users = {"alice": "right", "bob": "bobpw"}
    with DovecotServer(users, brakes=True, trusted_networks="127.0.0.0/8") as dovecot:
        backend = Backend("127.0.0.1", dovecot.submission_port)

        async def check(user: str, password: str, client: str) -> tuple[bool | None, float]:
            start = time.monotonic()
            said = await verify_backend(
                backend, "smtp", user.encode(), password.encode(), 5.0, client
            )
            return said, time.monotonic() - start

        async def scenario() -> list[tuple[bool | None, float]]:
            said = [await check("alice", f"guess{n}", f"203.0.113.{n + 1}") for n in range(4)]
            said.append(await check("bob", "bobpw", "198.51.100.2"))
            said.append(await check("alice", "right", "2001:db8::9"))
            return said

        results = run(scenario())
        log = dovecot.log()
    assert [r[0] for r in results[:4]] == [False] * 4
    assert results[4][0] is True and results[4][1] < 1.5, results
    assert results[5][0] is True and results[5][1] < 1.5, results
    assert "rip=203.0.113.4" in log and "rip=2001:db8::9" in log
