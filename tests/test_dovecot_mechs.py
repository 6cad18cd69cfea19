"""``count_repeated_password = false`` against a real Dovecot (#14 review).

Dovecot hashes the password into ``pwhash`` only for PLAIN and LOGIN
(``src/auth/auth-request.c``: only ``auth_request_verify_plain`` sets
``mech_password``; ``auth-policy.c`` ``auth_policy_create_json`` hashes it
when set).  A reviewer's real Dovecot, limit 3: eight wrong CRAM-MD5 guesses
left the streak at 1, then the right login succeeded.  Here a private Dovecot
offers CRAM-MD5 too, with the example's ``auth_policy_request_attributes``
(``mech=%{mech}``) and ``auth_policy_hash_truncate = 32``.
"""

from __future__ import annotations

import contextlib
import imaplib
from collections.abc import Iterator
from typing import Any

import pytest
from dovecot_server import DovecotServer, policy_config
from test_mail_doors import DOVECOT_TOML, LIMIT, USERS, WRONG, Serve, _Imap, example_config

pytestmark = pytest.mark.servers


@pytest.fixture(scope="module")
def doors() -> Iterator[tuple[DovecotServer, Serve]]:
    tables = example_config(
        DOVECOT_TOML,
        "mechs-secret-0123456789",
        store={"type": "memory"},
        count_repeated_password=False,
    )
    tables["mailauth"]["block_duration"] = "60s"
    closing: list[Any] = []
    try:
        serve = Serve(tables, "mechs")
        closing.append(serve)
        serve.start()
        policy = policy_config(f"http://{serve.base}/dovecot", serve.secret)
        dovecot = DovecotServer.for_tests(
            USERS, policy=policy + "\nauth_mechanisms = plain login cram-md5\n"
        )
        closing.append(dovecot)
        yield dovecot, serve
    finally:
        for thing in reversed(closing):
            with contextlib.suppress(Exception):
                thing.close()


def login(port: int, source: str, user: str, password: str, *, cram: bool) -> bool:
    client = _Imap(port, source)
    try:
        if cram:
            typ, _ = client.login_cram_md5(user, password)
        else:
            typ, _ = client.login(user, password)
        return typ == "OK"
    except imaplib.IMAP4.error:
        return False
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def test_cram_md5_guesses_all_count_and_block(doors: tuple[DovecotServer, Serve]) -> None:
    dovecot, serve = doors
    source = "127.0.9.1"
    for n in range(LIMIT + 3):  # every guess at one account: one pwhash for CRAM-MD5
        assert not login(dovecot.imap_port, source, "alice", f"{WRONG}-{n}", cram=True)
    # blocked: the right password is refused too
    assert not login(dovecot.imap_port, source, "alice", USERS["alice"], cram=False), serve.log()
    assert "mailguard login blocked client=127.0.9.1" in serve.log()
    assert "login repeat" not in serve.log()
    # another address is untouched
    assert login(dovecot.imap_port, "127.0.9.2", "alice", USERS["alice"], cram=True)


def test_a_stale_plain_password_counts_once(doors: tuple[DovecotServer, Serve]) -> None:
    dovecot, serve = doors
    source = "127.0.9.3"
    for _ in range(LIMIT + 3):  # a phone retrying its old password (IMAP LOGIN: PLAIN)
        assert not login(dovecot.imap_port, source, "bob", WRONG, cram=False)
    assert login(dovecot.imap_port, source, "bob", USERS["bob"], cram=False), serve.log()
    assert "mailguard login repeat client=127.0.9.3" in serve.log()
    assert "mailguard login blocked client=127.0.9.3" not in serve.log()
