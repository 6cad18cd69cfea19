"""``POST /dovecot``: Dovecot's auth policy through the real ASGI stack.

Dovecot (``src/auth/auth-policy.c``) posts JSON to ``?command=allow`` before
the password is checked (and, for a right one, again after) and to
``?command=report`` with the outcome.  These tests play Dovecot against the
Starlette app with httpx, on a FakeClock store, and read the store and the
events to see what was counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_kit import ATTACKER, SECRET, asgi_client, dovecot_body, make_server

from mailguard.dovecot import _STRINGS as STRINGS
from mailguard.dovecot import BadRequest, parse_request
from mailguard.events import Event
from mailguard.serve import MailGuardServer

LIMIT5 = "[login]\nmax_failed_logins = 5\nblock_duration = 600\n"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def allow(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/dovecot?command=allow", json=dovecot_body(**body))
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    # Dovecot's auth_policy_parse_response: an integer status and a string msg, always
    assert type(payload["status"]) is int
    assert type(payload["msg"]) is str
    return payload


async def report(client: httpx.AsyncClient, success: bool = False, **body: Any) -> None:
    response = await client.post(
        "/dovecot?command=report", json=dovecot_body(success=success, **body)
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"status": 0, "msg": ""}


def actions(events: list[Event], action: str) -> list[Event]:
    return [e for e in events if e.action == action]


async def failed_login(client: httpx.AsyncClient, session: str, **body: Any) -> dict[str, Any]:
    """What Dovecot sends for a wrong password: one allow, one failed report."""
    said = await allow(client, session=session, **body)
    await report(client, session=session, success=False, **body)
    return said


# ----------------------------------------------------------------- counting
def test_five_failed_reports_block_the_address() -> None:
    events: list[Event] = []
    server = make_server(LIMIT5, events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(5):
                said = await failed_login(client, f"s{n}")
                assert said == {"status": 0, "msg": ""}
            said = await allow(client, session="s9")
            assert said["status"] == -1
            assert said["msg"]  # Dovecot logs it as the reason
            # another address is untouched
            assert (await allow(client, session="t1", remote="198.51.100.2"))["status"] == 0

    run(scenario())
    assert len(actions(events, "failure")) == 5
    (block,) = actions(events, "blocked")
    assert block.client == ATTACKER
    assert block.get("protocol") == "imap"
    assert "protocol=imap" in block.line()


def test_a_right_password_calls_allow_twice_and_counts_nothing() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 2\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(10):  # ten good logins: allow, allow (after auth), report
                assert await allow(client, session=f"s{n}") == {"status": 0, "msg": ""}
                assert await allow(client, session=f"s{n}") == {"status": 0, "msg": ""}
                await report(client, session=f"s{n}", success=True)
            # nothing held, nothing counted: one failure does not block at limit 2
            await failed_login(client, "x1")
            assert (await allow(client, session="x2"))["status"] == 0

    run(scenario())
    assert [e.get("streak") for e in actions(events, "failure")] == ["1/2"]
    assert len(server.logins.sessions) == 1  # x2 is under way


def test_the_second_allow_of_a_session_begins_no_second_attempt() -> None:
    server = make_server("[login]\nmax_failed_logins = 2\n")

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for _ in range(5):
                assert (await allow(client, session="same"))["status"] == 0
            assert (await allow(client, session="other"))["status"] == 0
            # two attempts are under way: the limit of 2 is reached
            assert (await allow(client, session="third"))["status"] == -1

    run(scenario())


def test_guesses_pipelined_on_one_session_each_hold_a_slot() -> None:
    """One connection is one session_id for every login tried on it, and a
    report may come after the next attempt's allow: another password (or
    login) on a held session is a new attempt, not the second check."""
    server = make_server("[login]\nmax_failed_logins = 3\n")

    async def scenario() -> list[int]:
        async with asgi_client(server) as client:
            said = [await allow(client, session="conn", pwhash=f"{n:08x}") for n in range(6)]
            # a fresh session is held to the same limit
            said.append(await allow(client, session="fresh", pwhash="ffffffff"))
            # the reports, late, still count every guess: the address is blocked
            for n in range(3):
                await report(client, session="conn", success=False, pwhash=f"{n:08x}")
            said.append(await allow(client, session="later", pwhash="eeeeeeee"))
        return [s["status"] for s in said]

    statuses = run(scenario())
    assert statuses[:3] == [0, 0, 0]
    assert statuses[3:] == [-1, -1, -1, -1, -1]


def test_a_parallel_burst_without_reports_is_held_to_the_limit() -> None:
    server = make_server(LIMIT5, remote_like=True)

    async def scenario() -> list[int]:
        async with asgi_client(server) as client:
            answers = await asyncio.gather(*(allow(client, session=f"p{n}") for n in range(20)))
        return [a["status"] for a in answers]

    statuses = run(scenario())
    assert statuses.count(0) == 5
    assert statuses.count(-1) == 15


def test_reports_end_their_sessions_and_free_the_slots() -> None:
    events: list[Event] = []
    server = make_server(LIMIT5, events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(4):
                assert (await allow(client, session=f"s{n}"))["status"] == 0
            await report(client, session="s0", success=True)  # a slot comes back
            assert (await allow(client, session="s4"))["status"] == 0
            assert (await allow(client, session="s5"))["status"] == 0
            assert (await allow(client, session="s6"))["status"] == -1  # 5 under way
            for n in range(1, 6):
                await report(client, session=f"s{n}", success=False)
            assert (await allow(client, session="s7"))["status"] == -1  # blocked now

    run(scenario())
    assert len(actions(events, "blocked")) == 1
    assert len(server.logins.sessions) == 0


def test_a_report_without_a_known_session_still_counts() -> None:
    events: list[Event] = []
    server = make_server(LIMIT5, events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            # another instance took the allows, or they were forgotten
            for n in range(3):
                await report(client, session=f"elsewhere{n}", success=False)
            # Dovecot 2.3's default attributes carry no session_id
            for _ in range(2):
                await report(client, session=None, success=False)
            assert (await allow(client, session="s1"))["status"] == -1

    run(scenario())
    assert len(actions(events, "failure")) == 5
    assert len(actions(events, "blocked")) == 1


def test_without_session_ids_a_right_password_holds_one_slot_until_its_report() -> None:
    server = make_server("[login]\nmax_failed_logins = 2\n")

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for _ in range(10):  # right passwords, 2.3's default attributes
                assert (await allow(client, session=None))["status"] == 0
                assert (await allow(client, session=None))["status"] == 0
                await report(client, session=None, success=True)
            await report(client, session=None, success=False)
            await report(client, session=None, success=False)
            assert (await allow(client, session=None))["status"] == -1

    run(scenario())
    assert len(server.logins.sessions) == 0


def test_sessionless_parallel_guesses_are_held_to_the_limit() -> None:
    """Issue #14 F3: Postfix and Exim ask Dovecot over its SASL socket with no
    session (``xsasl_dovecot_server.c``), so ``session_id`` is empty: 100
    parallel attempts with different passwords get exactly the limit through."""
    server = make_server(LIMIT5, remote_like=True)

    async def scenario() -> list[int]:
        async with asgi_client(server) as client:
            answers = await asyncio.gather(
                *(
                    allow(client, session=None, protocol="smtp", pwhash=f"{n:08x}", mech="PLAIN")
                    for n in range(100)
                )
            )
        return [a["status"] for a in answers]

    statuses = run(scenario())
    assert statuses.count(0) == 5
    assert statuses.count(-1) == 95


def test_sessionless_reports_pop_their_attempts_and_count() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 3\n", events=events)

    async def scenario() -> list[int]:
        async with asgi_client(server) as client:
            said = []
            for n in range(3):
                said.append(await allow(client, session=None, pwhash=f"{n:08x}"))
            # a fourth different password: every slot is held
            said.append(await allow(client, session=None, pwhash="0000ffff"))
            # the same password again while held: no new guess, no new slot
            said.append(await allow(client, session=None, pwhash="00000001"))
            await report(client, session=None, success=True, pwhash="00000000")
            # the report popped its attempt: the slot came back
            said.append(await allow(client, session=None, pwhash="0000eeee"))
            for pw in ("00000001", "00000002", "0000eeee"):
                await report(client, session=None, success=False, pwhash=pw)
            said.append(await allow(client, session=None, pwhash="0000dddd"))
        return [s["status"] for s in said]

    assert run(scenario()) == [0, 0, 0, -1, 0, 0, -1]
    assert len(actions(events, "blocked")) == 1


def test_sessionless_keys_differ_by_protocol_and_login() -> None:
    server = make_server("[login]\nmax_failed_logins = 2\n")

    async def scenario() -> list[int]:
        async with asgi_client(server) as client:
            a = await allow(client, session=None, protocol="smtp", pwhash="00000001")
            b = await allow(client, session=None, protocol="imap", pwhash="00000001")
            c = await allow(client, session=None, protocol="pop3", pwhash="00000001")
        return [a["status"], b["status"], c["status"]]

    assert run(scenario()) == [0, 0, -1]


def test_a_report_while_other_attempts_hold_every_slot_still_counts() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 3\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(3):  # three attempts under way: the address is full
                assert (await allow(client, session=f"s{n}"))["status"] == 0
            # a failure reported by another instance for its own allow
            await report(client, session="elsewhere", success=False)
            assert [e.get("streak") for e in actions(events, "failure")] == ["1/3"]

    run(scenario())


def test_policy_rejects_and_internal_failures_are_not_counted() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 2\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(10):
                await allow(client, session=f"r{n}")
                await report(client, session=f"r{n}", success=False, policy_reject=True)
            for n in range(10):  # Dovecot 2.4: the passdb failed, not the client
                await allow(client, session=f"i{n}")
                await report(client, session=f"i{n}", success=False, fail_type="internal")
            # no failure was counted, but only-undecided logins are capped (#14 F5):
            # a temporary refusal, no block; another address goes on
            last = await allow(client, session="last")
            assert last["status"] == -1 and "temporarily" in last["msg"]
            assert (await allow(client, session="other", remote="198.51.100.9"))["status"] == 0

    run(scenario())
    assert actions(events, "failure") == [] and actions(events, "blocked") == []
    assert len(server.logins.sessions) == 1


def test_lower_cased_logins_are_one_account_for_the_tarpit() -> None:
    events: list[Event] = []
    server = make_server(
        '[login]\nmax_failed_logins = 50\naccount_tarpit = [2, "3s"]\n', events=events
    )

    async def scenario() -> None:
        async with asgi_client(server) as client:
            await failed_login(client, "a", remote="198.51.100.1", login="Victim@Example.COM")
            await failed_login(client, "b", remote="198.51.100.2", login="victim@example.com")
            said = await allow(
                client, session="c", remote="198.51.100.3", login="VICTIM@example.com"
            )
            assert said == {"status": 3, "msg": ""}  # held 3 s by Dovecot, then checked
            said = await allow(client, session="d", remote="198.51.100.3", login="someone")
            assert said == {"status": 0, "msg": ""}

    run(scenario())
    assert len(actions(events, "tarpit")) == 1


REPEAT3 = "[login]\nmax_failed_logins = 3\n[mailauth]\ncount_repeated_password = false\n"
STALE = "0a1b2c3d"  # auth_policy_hash_truncate = 32: eight hex digits


def test_a_stale_password_retried_counts_once_when_asked() -> None:
    events: list[Event] = []
    server = make_server(REPEAT3, events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(10):  # a phone retrying its old password
                said = await failed_login(client, f"s{n}", pwhash=STALE, mech="PLAIN")
                assert said["status"] == 0
            for n, pwhash in enumerate(("1c2d3e4f", "2e3f4a5b")):  # new guesses count
                await failed_login(client, f"g{n}", pwhash=pwhash, mech="LOGIN")
            assert (await allow(client, session="last"))["status"] == -1

    run(scenario())
    assert len(actions(events, "failure")) == 3
    repeats = actions(events, "repeat")
    assert len(repeats) == 9  # the first wrong try counted, the nine retries did not
    assert repeats[0].line() == (
        f'mailguard login repeat client={ATTACKER} account="victim" protocol=imap'
    )


def test_the_repeat_line_is_logged_at_the_default_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # no level set anywhere: the root logger's WARNING applies (a bare INFO
    # record, as before, was never even created)
    server = make_server(REPEAT3)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(2):
                await failed_login(client, f"s{n}", pwhash=STALE, mech="PLAIN")

    run(scenario())
    found = [r for r in caplog.records if "login repeat" in r.getMessage()]
    assert len(found) == 1
    record = found[0]
    assert (record.name, record.levelno) == ("mailguard.login", logging.WARNING)
    assert record.getMessage() == (
        f'mailguard login repeat client={ATTACKER} account="victim" protocol=imap'
    )
    assert getattr(record, "action", None) == "repeat"  # extra= for JSON formatters


@pytest.mark.parametrize("mech", ["CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-256", "", None])
def test_a_mechanism_without_a_hashed_password_counts_every_guess(mech: str | None) -> None:
    # Dovecot hashes no password for CRAM-MD5 & co (only auth_request_verify_plain
    # sets mech_password), so every guess at one account has the same pwhash: the
    # reviewer's real Dovecot left the streak at 1 after 8 guesses.  No mech
    # attribute at all (an old auth_policy_request_attributes) counts too.
    events: list[Event] = []
    server = make_server(REPEAT3, events=events)
    more: dict[str, Any] = {} if mech is None else {"mech": mech}

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(3):
                said = await failed_login(client, f"c{n}", pwhash=STALE, **more)
                assert said["status"] == 0
            said = await allow(client, session="right", pwhash=STALE, **more)
            assert said["status"] == -1  # blocked: the right password is refused too

    run(scenario())
    assert [e.get("streak") for e in actions(events, "failure")] == ["1/3", "2/3", "3/3"]
    assert actions(events, "repeat") == []


@pytest.mark.parametrize("pwhash", ["", "a1b", "0a1b", "0a1b2c3", "zzzzzzzz"])
def test_a_short_or_odd_pwhash_counts_every_failure(pwhash: str) -> None:
    # Dovecot's default auth_policy_hash_truncate = 12 sends 3-4 hex digits: one
    # fresh guess in 4096 would match an earlier one and go uncounted
    events: list[Event] = []
    server = make_server(REPEAT3, events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(3):
                await failed_login(client, f"h{n}", pwhash=pwhash, mech="PLAIN")
            assert (await allow(client, session="last"))["status"] == -1

    run(scenario())
    assert len(actions(events, "failure")) == 3


def test_repeated_passwords_count_by_default() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 3\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(3):
                await failed_login(client, f"s{n}", pwhash="0ab")
            assert (await allow(client, session="last"))["status"] == -1

    run(scenario())
    assert len(actions(events, "blocked")) == 1


def test_the_trailing_slash_is_served_not_redirected() -> None:
    server = make_server(LIMIT5)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            response = await client.post("/dovecot/?command=allow", json=dovecot_body())
            assert response.status_code == 200
            assert response.json() == {"status": 0, "msg": ""}
            # a url ending in "&" gets "command=" appended (auth_policy_url)
            response = await client.post(
                "/dovecot?x=1&command=report", json=dovecot_body(success=False)
            )
            assert response.status_code == 200

    run(scenario())


def test_safe_ips_are_never_counted() -> None:
    events: list[Event] = []
    server = make_server(
        '[common]\nsafe_ips = ["198.51.100.0/24"]\n[login]\nmax_failed_logins = 2\n', events=events
    )

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(5):
                await failed_login(client, f"s{n}", remote="198.51.100.9")
            await report(client, session="unknown", remote="198.51.100.9")
            assert (await allow(client, session="z", remote="198.51.100.9"))["status"] == 0

    run(scenario())
    assert events == []


# ----------------------------------------------------------------- access
def _count_store(server: MailGuardServer) -> int:
    return len(server.store)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("peer", "secret"),
    [
        ("192.0.2.50", SECRET),  # outside allow
        ("127.0.0.1", None),  # no secret
        ("127.0.0.1", "s3cret-0123456789-abcdeX"),  # a wrong one
        ("127.0.0.1", SECRET + "x"),
        ("127.0.0.1", ""),
    ],
)
def test_forbidden_callers_get_403_and_nothing_is_counted(peer: str, secret: str | None) -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 2\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server, peer=peer, secret=secret) as client:
            for n in range(5):
                for command in ("allow", "report"):
                    response = await client.post(
                        f"/dovecot?command={command}",
                        json=dovecot_body(session=f"s{n}", success=False),
                    )
                    assert response.status_code == 403
                    assert "status" not in response.json()
        async with asgi_client(server) as client:  # the real Dovecot: nothing was counted
            assert (await allow(client, session="real"))["status"] == 0

    run(scenario())
    assert events == []
    assert len(server.logins.sessions) == 1
    assert _count_store(server) == 1  # only the real allow's slot


def test_ipv6_loopback_is_allowed_by_default() -> None:
    server = make_server(LIMIT5)

    async def scenario() -> None:
        async with asgi_client(server, peer="::1") as client:
            assert (await allow(client))["status"] == 0

    run(scenario())


def test_without_a_secret_the_address_alone_decides() -> None:
    server = make_server('[serve]\nallow = ["10.1.0.0/16"]\n', secret=False)

    async def scenario() -> None:
        async with asgi_client(server, peer="10.1.2.3", secret=None) as client:
            assert (await allow(client))["status"] == 0
        async with asgi_client(server, peer="127.0.0.1", secret=None) as client:
            response = await client.post("/dovecot?command=allow", json=dovecot_body())
            assert response.status_code == 403

    run(scenario())


# ----------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b'{"login": 5, "remote": "203.0.113.7"}', 400),
        (b'{"remote": ["203.0.113.7"]}', 400),
        (b'{"remote": "not-an-address"}', 400),
        (b'{"remote": "203.0.113.7", "login": "x"}', 200),
        (b'{"remote": ""}', 200),
        (b"{}", 200),
        (b"\xff\xfe", 400),
        (b"[" * 100_000, 400),
        (b'{"remote": "203.0.113.7", "n": 1' + b"0" * 5000 + b"}", 400),
    ],
)
def test_malformed_allows_answer_well_formed_json(body: bytes, status: int) -> None:
    server = make_server(LIMIT5)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            response = await client.post(
                "/dovecot?command=allow", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == status
            payload = response.json()
            assert type(payload["status"]) is int and payload["status"] == 0
            assert type(payload["msg"]) is str

    run(scenario())
    assert len(server.store) <= 1  # type: ignore[arg-type]


def test_a_report_without_success_is_refused_and_not_counted() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 1\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for success in (None, "false", 0):
                body = dovecot_body()
                if success is not None:
                    body["success"] = success
                response = await client.post("/dovecot?command=report", json=body)
                assert response.status_code == 400
            for command in ("", "deny", "allow%00"):
                response = await client.post(f"/dovecot?command={command}", json=dovecot_body())
                assert response.status_code == 400
                assert type(response.json()["status"]) is int
            response = await client.get("/dovecot?command=allow")
            assert response.status_code == 405

    run(scenario())
    assert events == []


def test_huge_bodies_are_cut_off_and_an_allow_is_refused() -> None:
    events: list[Event] = []
    server = make_server(LIMIT5, events=events)
    huge = json.dumps(dovecot_body(login="x" * 300_000)).encode()

    async def scenario() -> None:
        async with asgi_client(server) as client:
            response = await client.post("/dovecot?command=allow", content=huge)
            assert response.status_code == 200
            assert response.json() == {"status": -1, "msg": "request too large"}
            response = await client.post("/dovecot?command=report", content=huge)
            assert response.status_code == 413

            async def chunks() -> Any:  # no Content-Length: cut off while reading
                for _ in range(100):
                    yield b" " * 4096

            response = await client.post("/dovecot?command=allow", content=chunks())
            assert response.json()["status"] == -1

    run(scenario())
    assert events == []


def test_a_long_hostile_login_is_still_counted() -> None:
    """A 10 KB account name of control characters (JSON-escaped to 60 KB) must not
    dodge the count: Dovecot lets through what a policy server fails on."""
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 2\n", events=events)
    login = '\x01\n\r"\\' * 2000

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(2):
                await failed_login(client, f"s{n}", login=login)
            assert (await allow(client, session="z", login=login))["status"] == -1

    run(scenario())
    (block,) = actions(events, "blocked")
    assert "\n" not in block.line() and "\r" not in block.line()


def test_the_protocol_in_log_lines_is_a_plain_word() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 9\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            await failed_login(client, "a", protocol="POP3")
            await failed_login(client, "b", protocol="imap client=198.51.100.1\n")

    run(scenario())
    assert [e.get("protocol") for e in actions(events, "failure")] == ["pop3", "unknown"]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)  # (bounded: json.dumps refuses an int of over 4,300 digits)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "login": json_values | st.text(max_size=50),
        "remote": json_values | st.sampled_from(["203.0.113.7", "::1", "", "2001:db8::1", "x"]),
        "session_id": json_values | st.text(max_size=20),
        "protocol": json_values | st.text(max_size=10),
        "pwhash": json_values,
        "success": json_values,
        "policy_reject": json_values,
        "fail_type": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=fields, command=st.sampled_from(["allow", "report"]))
def test_parse_request_accepts_or_refuses_cleanly(body: dict[str, Any], command: str) -> None:
    raw = json.dumps(body).encode()
    try:
        request = parse_request(raw, command)
    except BadRequest as exc:
        assert str(exc)
        return
    assert isinstance(request.login, str) and isinstance(request.remote, str)
    assert request.protocol.isascii() and " " not in request.protocol
    if command == "report":
        assert isinstance(request.success, bool)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=fields | st.binary(max_size=200).map(lambda b: {"raw": b.hex()}),
    command=st.text(max_size=8),
)
def test_any_request_gets_a_well_formed_answer_and_never_a_5xx(
    body: dict[str, Any], command: str
) -> None:
    server = make_server("[login]\nmax_failed_logins = 3\n")

    async def scenario() -> None:
        async with asgi_client(server) as client:
            response = await client.post("/dovecot", params={"command": command}, json=body)
            assert response.status_code in (200, 400)
            payload = response.json()
            assert type(payload["status"]) is int and type(payload["msg"]) is str

    run(scenario())


@settings(max_examples=80, deadline=None)
@given(raw=st.binary(max_size=300))
def test_parse_request_never_raises_anything_else(raw: bytes) -> None:
    try:
        request = parse_request(raw, "report")
    except BadRequest as exc:
        assert str(exc).split(":")[0] in ("body", "success", "policy_reject", *STRINGS)
        return
    assert isinstance(request.success, bool)


def test_an_ipv4_mapped_remote_counts_as_the_ipv4_address() -> None:
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 2\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            await failed_login(client, "a", remote="::ffff:203.0.113.7")
            await failed_login(client, "b", remote=ATTACKER)
            assert (await allow(client, session="c", remote="::ffff:203.0.113.7"))["status"] == -1

    run(scenario())
    assert {e.client for e in events} == {ATTACKER}


def test_an_address_whose_logins_only_fail_internally_is_refused_for_a_while() -> None:
    """Issue #14 F5: Dovecot 2.4's ``fail_type: internal`` (the passdb failed)
    is no failure of the client, but past ``max_failed_logins`` of them per
    ``failure_interval`` the address is refused without a password check:
    temporarily (no block), and other addresses go on."""
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 3\n", events=events)

    async def scenario() -> list[dict[str, Any]]:
        said = []
        async with asgi_client(server) as client:
            for n in range(3):
                said.append(await allow(client, session=f"i{n}"))
                await report(client, session=f"i{n}", success=False, fail_type="internal")
            said.append(await allow(client, session="i3"))
            said.append(await allow(client, session="o1", remote="198.51.100.8"))
        return said

    said = run(scenario())
    assert [s["status"] for s in said] == [0, 0, 0, -1, 0]
    assert "temporarily" in said[3]["msg"]
    assert actions(events, "failure") == [] and actions(events, "blocked") == []
    assert len(server.logins.sessions) == 1  # o1 is under way; i3 held nothing
