"""The protocol-neutral login seam: begin an attempt, end it with its outcome.

Fronts that are not HTTP middleware (Dovecot's auth policy, nginx's
``auth_http``) count logins through :meth:`InvalidLoginPolicy.begin` /
:meth:`~InvalidLoginPolicy.end`.  These tests drive the seam alone, both
faces (sync and asyncio, the latter on a store that claims I/O so the
coroutines really run), and together with the HTTP filter on one store: the
failures of every door add up per address.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response
from starlette.routing import Route

from mailguard import asgi
from mailguard.core import FakeClock, Verdict
from mailguard.events import Event
from mailguard.policies import InvalidLoginPolicy, Outcome
from mailguard.policies.login import LoginVerdict
from mailguard.stores.memory import MemoryStore

T0 = 1_700_000_000.0
ATTACKER = "203.0.113.7"
NEIGHBOUR = "203.0.113.8"


class RemoteLike(MemoryStore):
    """A MemoryStore that claims I/O, so the policy takes its coroutine faces."""

    local = False


def make(
    store: MemoryStore | None = None, **options: Any
) -> tuple[InvalidLoginPolicy, list[Event]]:
    events: list[Event] = []
    store = store if store is not None else MemoryStore(clock=FakeClock(T0))
    policy = InvalidLoginPolicy(
        store=store, max_failed_logins=3, block_duration=60, on_event=events.append, **options
    )
    return policy, events


class Face:
    """The seam through its sync or its asyncio methods."""

    def __init__(self, policy: InvalidLoginPolicy, mode: str) -> None:
        self.policy = policy
        self.mode = mode

    def begin(self, client: str, account: str | None = None, protocol: str = "imap") -> Verdict:
        if self.mode == "sync":
            return self.policy.begin(client, account, protocol)
        return asyncio.run(self.policy.abegin(client, account, protocol))

    def end(self, ticket: Verdict, outcome: Outcome | str) -> None:
        if self.mode == "sync":
            self.policy.end(ticket, outcome)
        else:
            asyncio.run(self.policy.aend(ticket, outcome))


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def store_for(mode: str) -> MemoryStore:
    clock = FakeClock(T0)
    return MemoryStore(clock=clock) if mode == "sync" else RemoteLike(clock=clock)


def test_failures_block_the_address_not_the_account(mode: str) -> None:
    policy, events = make(store_for(mode))
    face = Face(policy, mode)
    for _ in range(3):
        ticket = face.begin(ATTACKER, "victim")
        assert ticket.allowed and isinstance(ticket, LoginVerdict)
        assert ticket.protocol == "imap"
        face.end(ticket, Outcome.FAILED)
    refused = face.begin(ATTACKER, "victim")
    assert not refused.allowed and refused.reason == "blocked"
    assert 59 <= refused.retry_after <= 60
    # the right password from the blocked address is refused too; the
    # account itself is not locked: another address logs in
    assert not face.begin(ATTACKER, "someone-else").allowed
    other = face.begin(NEIGHBOUR, "victim")
    assert other.allowed
    face.end(other, "succeeded")
    blocked = [e for e in events if e.action == "blocked"]
    assert len(blocked) == 1 and blocked[0].get("protocol") == "imap"
    assert blocked[0].client == ATTACKER
    assert "protocol=imap" in blocked[0].line()


def test_attempts_under_way_count_against_the_limit(mode: str) -> None:
    """A parallel burst cannot slip past: begun attempts hold slots."""
    policy, _ = make(store_for(mode))
    face = Face(policy, mode)
    tickets = [face.begin(ATTACKER, "victim") for _ in range(10)]
    assert [t.allowed for t in tickets] == [True] * 3 + [False] * 7
    assert {t.reason for t in tickets[3:]} == {"busy"}
    # unknown outcomes give the slots back and count nothing
    for ticket in tickets:
        face.end(ticket, Outcome.UNKNOWN)
    assert all(face.begin(ATTACKER, "victim").allowed for _ in range(3))


def test_safe_addresses_and_refusals_end_harmlessly(mode: str) -> None:
    policy, events = make(store_for(mode), safe_ips=["198.51.100.0/24"])
    face = Face(policy, mode)
    for _ in range(10):
        ticket = face.begin("198.51.100.9", "victim")
        assert ticket.allowed and not isinstance(ticket, LoginVerdict)
        face.end(ticket, Outcome.FAILED)  # ignored: not a ticket
    assert events == []


def test_outcome_must_be_known() -> None:
    policy, _ = make()
    ticket = policy.begin(ATTACKER, "victim")
    with pytest.raises(ValueError):
        policy.end(ticket, "maybe")


def test_accounts_are_normalized_as_on_http() -> None:
    policy, events = make(account_tarpit=(2, 0.5))
    for name in ("Victim", "victim", "  VICTIM "):
        ticket = policy.begin(NEIGHBOUR, name, "pop3")
        assert isinstance(ticket, LoginVerdict) and ticket.account == "victim"
        policy.end(ticket, Outcome.FAILED)
        policy.store.unblock_all()
    assert any(e.action == "tarpit" and e.get("account") == "victim" for e in events)


def test_ipv6_clients_are_grouped_like_http_peers() -> None:
    policy, _ = make()
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        policy.end(policy.begin(host, "victim"), Outcome.FAILED)
    refused = policy.begin("2001:db8:1:2::99", "victim")
    assert not refused.allowed and refused.key == "2001:db8:1:2::/64"


def test_http_and_imap_failures_add_up_on_one_store(caplog: pytest.LogCaptureFixture) -> None:
    """Two failures on webmail plus one over IMAP block the address on both doors."""
    store = MemoryStore(clock=FakeClock(T0))

    async def login(request: StarletteRequest) -> Response:
        await request.body()
        return Response("no", status_code=401)

    web = asgi.InvalidLoginFilter(
        Starlette(routes=[Route("/login", login, methods=["POST"])]),
        store=store,
        max_failed_logins=3,
        block_duration=60,
    )
    mail, _ = make(store)

    async def scenario() -> tuple[int, int]:
        transport = httpx.ASGITransport(app=web, client=(ATTACKER, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://mail") as client:
            for _ in range(2):
                reply = await client.post("/login", data={"username": "victim", "password": "x"})
                assert reply.status_code == 401
            ticket = await mail.abegin(ATTACKER, "victim", "imap")
            assert ticket.allowed
            await mail.aend(ticket, Outcome.FAILED)
            web_after = await client.post("/login", data={"username": "victim", "password": "y"})
        imap_after = await mail.abegin(ATTACKER, "victim", "imap")
        return web_after.status_code, int(imap_after.allowed)

    with caplog.at_level(logging.WARNING, logger="mailguard"):
        web_status, imap_allowed = asyncio.run(scenario())
    assert web_status == 503
    assert imap_allowed == 0
    assert any("login blocked client=203.0.113.7" in r.getMessage() for r in caplog.records)
