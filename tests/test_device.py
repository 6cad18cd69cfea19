"""Tests for DeviceJail: the policy through real Starlette and Flask stacks."""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import mailguard.activesync
import mailguard.asgi
import mailguard.policies.device as device_module
import mailguard.wsgi
from mailguard import FakeClock, MemoryStore
from mailguard.activesync import MAX_QUERY_BYTES, parse_query
from mailguard.events import Event
from mailguard.policies import DeviceJailPolicy
from mailguard.policies.device import (
    OVERSIZED_QUERY,
    account_key,
    basic_auth_user,
    device_key,
    header_device_id,
    normalise_account,
)
from mailguard.request import Request

T0 = 1_700_000_000.0
AS = "/Microsoft-Server-ActiveSync"
ADDR = "192.0.2.10"
SPEC_EXAMPLE = "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l"


# ------------------------------------------------------------------ queries
def plain(device: str = "ABC123", user: str | None = "jdoe", cmd: str = "Sync") -> str:
    query = f"Cmd={cmd}&DeviceId={device}&DeviceType=iPhone"
    return query if user is None else f"{query}&User={user}"


def b64query(
    device_id: bytes,
    *,
    user: bytes | None = None,
    device_type: bytes = b"SmartPhone",
    command: int = 0,
    version: int = 141,
) -> str:
    """A base64-form ActiveSync query ([MS-ASHTTP] 2.2.1.1.1.1)."""
    raw = bytearray([version, command]) + struct.pack("<H", 0x0409)
    raw += bytes([len(device_id)]) + device_id
    raw += b"\x00"  # no policy key
    raw += bytes([len(device_type)]) + device_type
    if user is not None:
        raw += bytes([8, len(user)]) + user  # tag 8: User
    return base64.b64encode(bytes(raw)).decode("ascii")


def basic(user: str, password: str = "secret") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


# ------------------------------------------------------------------ stacks
@dataclass
class Reply:
    status: int
    retry_after: str | None
    text: str


class Harness:
    """One protected app, an ASGI or a WSGI one, driven by plain method calls."""

    kind = ""

    def __init__(self, policy: DeviceJailPolicy) -> None:
        self.policy = policy
        self.calls = 0  # how often the app itself ran

    def request(
        self,
        path: str = AS,
        query: str = "",
        headers: dict[str, str] | None = None,
        client: str = ADDR,
        method: str = "POST",
    ) -> Reply:
        raise NotImplementedError

    def close(self) -> None:
        pass


class AsgiHarness(Harness):
    kind = "asgi"

    def __init__(self, policy: DeviceJailPolicy) -> None:
        super().__init__(policy)

        async def ok(request: StarletteRequest) -> PlainTextResponse:
            self.calls += 1
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST", "OPTIONS"])])
        self.app = mailguard.asgi.DeviceJail(app, policy=policy)
        self.loop = asyncio.new_event_loop()
        self.clients: dict[str, httpx.AsyncClient] = {}

    def request(
        self,
        path: str = AS,
        query: str = "",
        headers: dict[str, str] | None = None,
        client: str = ADDR,
        method: str = "POST",
    ) -> Reply:
        http = self.clients.get(client)
        if http is None:
            transport = httpx.ASGITransport(app=self.app, client=(client, 50000))
            http = self.clients[client] = httpx.AsyncClient(transport=transport)
        raw = query.replace("#", "%23").encode("latin-1")  # httpx refuses a bare '#'
        url = httpx.URL("http://mail.example.com" + path, query=raw)
        sent = {k.encode(): v.encode("latin-1") for k, v in (headers or {}).items()}
        response = self.loop.run_until_complete(http.request(method, url, headers=sent))
        return Reply(response.status_code, response.headers.get("retry-after"), response.text)

    def close(self) -> None:
        for http in self.clients.values():
            self.loop.run_until_complete(http.aclose())
        self.loop.close()


class WsgiHarness(Harness):
    kind = "wsgi"

    def __init__(self, policy: DeviceJailPolicy) -> None:
        super().__init__(policy)
        app = Flask(__name__)

        def ok(path: str) -> str:
            self.calls += 1
            return "ok"

        methods = ["GET", "POST", "OPTIONS"]
        app.add_url_rule("/", "ok", ok, defaults={"path": ""}, methods=methods)
        app.add_url_rule("/<path:path>", "ok", ok, methods=methods)
        app.wsgi_app = mailguard.wsgi.DeviceJail(app.wsgi_app, policy=policy)  # type: ignore[method-assign]
        self.client = app.test_client()

    def request(
        self,
        path: str = AS,
        query: str = "",
        headers: dict[str, str] | None = None,
        client: str = ADDR,
        method: str = "POST",
    ) -> Reply:
        response = self.client.open(
            path,
            method=method,
            query_string=query,
            headers=headers or {},
            environ_base={"REMOTE_ADDR": client},
        )
        return Reply(response.status_code, response.headers.get("Retry-After"), response.text)


Make = Callable[..., tuple[Harness, MemoryStore, FakeClock]]


class CoroutineStore(MemoryStore):
    """A MemoryStore the ASGI adapter must await, as it awaits Redis: so the
    ASGI runs exercise ``acheck`` while the WSGI runs exercise ``check``."""

    local = False


@pytest.fixture(params=["asgi", "wsgi"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """make(**options) -> (harness, store, clock); the same scenario on ASGI and WSGI."""
    made: list[Harness] = []

    def build(**options: Any) -> tuple[Harness, MemoryStore, FakeClock]:
        clock = FakeClock(T0)
        store = (CoroutineStore if request.param == "asgi" else MemoryStore)(10_000, clock=clock)
        policy = DeviceJailPolicy(store=store, **options)
        harness: Harness = (AsgiHarness if request.param == "asgi" else WsgiHarness)(policy)
        made.append(harness)
        return harness, store, clock

    yield build
    for harness in made:
        harness.close()


@pytest.fixture
def events() -> list[Event]:
    return []


# ---------------------------------------------------------------- scenarios
def test_more_than_100_within_15s_jails_for_a_minute(make: Make) -> None:
    """The issue's example: max_requests=100, time_window=15, jail_duration=60."""
    app, _, clock = make(max_requests=100, time_window=15, jail_duration=60)
    for _ in range(100):
        assert app.request(query=plain()).status == 200
    assert app.calls == 100
    jailed = app.request(query=plain())
    assert (jailed.status, jailed.retry_after) == (503, "60")
    assert "jailed" in jailed.text and "jdoe" not in jailed.text  # never echoes request text
    assert app.calls == 100  # the app was not called
    clock.advance(59.5)
    assert (app.request(query=plain()).status, app.calls) == (503, 100)
    clock.advance(0.5)
    assert app.request(query=plain()).status == 200
    assert app.calls == 101


def test_steady_ten_per_second_is_jailed_by_its_101st_request(make: Make) -> None:
    app, _, clock = make(max_requests=100, time_window=15, jail_duration=60)
    statuses = []
    for _ in range(101):
        statuses.append(app.request(query=plain()).status)
        clock.advance(0.1)
    assert statuses == [200] * 100 + [503]


def test_seven_per_second_stays_under_100_in_15s(make: Make) -> None:
    """Just under the limit (100 in any 15 s) is never jailed: the window slides exactly."""
    app, _, clock = make(max_requests=100, time_window=15, jail_duration=60)
    for _ in range(300):
        assert app.request(query=plain()).status == 200
        clock.advance(0.15)  # 100 requests take exactly 15 s: the oldest has just left


def test_other_devices_of_the_same_user_and_address_are_unaffected(make: Make) -> None:
    app, _, _ = make(max_requests=3)
    for _ in range(3):
        assert app.request(query=plain("PHONE1")).status == 200
    assert app.request(query=plain("PHONE1")).status == 503
    assert app.request(query=plain("TABLET2")).status == 200  # same user, same NAT address
    assert app.request(query=plain("PHONE1"), client="192.0.2.99").status == 503  # per device
    assert app.request(path="/service/soap").status == 200  # the rest of the office


def test_one_device_id_under_two_accounts_never_shares_a_jail(make: Make) -> None:
    app, _, _ = make(max_requests=2)
    for _ in range(2):
        assert app.request(query=plain(user="jdoe")).status == 200
    assert app.request(query=plain(user="jdoe")).status == 503
    assert app.request(query=plain(user="alice")).status == 200
    # Basic auth wins over the User parameter, lowercased and without DOMAIN\
    headers = {"Authorization": basic("CORP\\JDoe")}
    assert app.request(query=plain(user="alice"), headers=headers).status == 503
    keys = [block.key for block in app.policy.jailed_devices()]
    assert keys == ["abc123/jdoe"]


def test_per_account_off_shares_the_jail(make: Make) -> None:
    app, _, _ = make(max_requests=2, per_account=False)
    assert app.request(query=plain(user="jdoe")).status == 200
    assert app.request(query=plain(user="alice")).status == 200
    assert app.request(query=plain(user="bob")).status == 503
    assert [block.key for block in app.policy.jailed_devices()] == ["abc123"]


def test_base64_spec_example_is_device_v140device_in_hex(make: Make) -> None:
    app, _, _ = make(max_requests=2)
    assert b64query(b"v140Device", version=140) == SPEC_EXAMPLE
    assert app.request(query=SPEC_EXAMPLE).status == 200
    assert app.request(query=SPEC_EXAMPLE).status == 200
    assert app.request(query=SPEC_EXAMPLE).status == 503
    assert [b.key for b in app.policy.jailed_devices()] == [b"v140Device".hex()]
    # the base64 User parameter makes it per account
    query = b64query(b"v140Device", user=b"DOMAIN\\Jane")
    assert app.request(query=query).status == 200
    assert app.request(query=query).status == 200
    assert app.request(query=query).status == 503
    keys = sorted(b.key for b in app.policy.jailed_devices())
    assert keys == [b"v140Device".hex(), b"v140Device".hex() + "/jane"]


def test_base64_and_plain_forms_both_count(make: Make) -> None:
    app, _, _ = make(max_requests=1)
    assert app.request(query=b64query(b"\x01\x02\xff", command=18)).status == 200
    assert app.request(query=b64query(b"\x01\x02\xff", command=0)).status == 503
    assert app.request(query=plain("Dev-42", user=None)).status == 200
    assert app.request(query=plain("DEV42", user=None)).status == 503  # same normalised id
    assert [b.key for b in app.policy.jailed_devices()] == ["0102ff", "dev42"]


def test_x_device_id_header_counts_on_any_path_by_default(make: Make) -> None:
    app, _, _ = make(max_requests=2)
    header = {"X-Device-Id": "Web-Client-7"}
    assert app.request(path="/service/soap", headers=header).status == 200
    assert app.request(path="/home/jdoe/inbox", headers=header, method="GET").status == 200
    assert app.request(path="/service/soap", headers={"X-Device-Id": "webclient7"}).status == 503
    assert [b.key for b in app.policy.jailed_devices()] == ["webclient7"]
    # on ActiveSync paths the header stands in when the query has no device id
    assert app.request(query="Cmd=Sync", headers=header).status == 503


def test_x_device_id_with_basic_auth_is_per_account(make: Make) -> None:
    app, _, _ = make(max_requests=1)
    alice = {"X-Device-Id": "w1", "Authorization": basic("alice")}
    bob = {"X-Device-Id": "w1", "Authorization": basic("bob")}
    assert app.request(path="/service/soap", headers=alice).status == 200
    assert app.request(path="/service/soap", headers=alice).status == 503
    assert app.request(path="/service/soap", headers=bob).status == 200


def test_header_paths_narrow_or_switch_off_the_header(make: Make) -> None:
    app, store, _ = make(max_requests=1, header_paths=["/service/"])
    header = {"X-Device-Id": "w1"}
    assert app.request(path="/home/x", headers=header).status == 200
    assert app.request(path="/home/x", headers=header).status == 200
    assert len(store) == 0
    assert app.request(path="/SERVICE/soap", headers=header).status == 200
    assert app.request(path="/service/soap", headers=header).status == 503

    off, store, _ = make(max_requests=1, header_paths=[])
    for _ in range(3):
        assert off.request(path="/service/soap", headers=header).status == 200
        assert off.request(query="Cmd=Sync", headers=header).status == 200
    assert len(store) == 0


def test_header_device_id_normalisation() -> None:
    assert header_device_id("AB-c:1") == "abc1"
    assert header_device_id("A" * 32) == "a" * 32
    assert header_device_id("A" * 33) is None
    assert header_device_id("---") is None
    assert header_device_id("") is None
    assert header_device_id(None) is None
    assert header_device_id("x" * 5000) is None
    assert header_device_id("abc, ABC") == "abc"  # repeated lines that agree
    assert header_device_id("abc, def") is None  # ... or that do not
    assert header_device_id("\u00e9t\u00e9\u2603X") == "tx"


def test_requests_without_a_device_pass_and_leave_no_state(make: Make) -> None:
    app, store, _ = make(max_requests=1)
    queries = [
        "",
        "Cmd=Sync&User=jdoe&DeviceType=iPhone",
        "DeviceId=&Cmd=Sync",
        "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25",  # a truncated base64 query
        "%%%",
    ]
    for query in queries:
        for _ in range(3):
            assert app.request(query=query).status == 200
    for _ in range(3):
        assert app.request(path="/", method="GET").status == 200
        assert app.request(path="/service/soap", query=plain()).status == 200  # not ActiveSync
        assert app.request(path="/Microsoft-Server-ActiveSyncX", query=plain()).status == 200
        assert app.request(headers={"X-Device-Id": "-"}).status == 200
    assert app.calls == 3 * len(queries) + 12
    assert len(store) == 0
    assert app.policy.jailed_devices() == []


def test_a_decoy_device_id_does_not_lead_a_jailed_device_out(make: Make) -> None:
    """Issue 13: ``DeviceId=decoy&DeviceId=REAL`` (PHP reads the last) escaped a jail."""
    app, _, _ = make(max_requests=3)
    for _ in range(3):
        assert app.request(query=plain("REAL")).status == 200
    assert app.request(query=plain("REAL")).status == 503  # jailed
    calls = app.calls
    for decoy in ("decoy", "decoy2", "x1"):
        # REAL last, as PHP (Z-Push) reads it; REAL first, as a Java servlet reads it
        assert app.request(query=f"DeviceId={decoy}&" + plain("REAL")).status == 503
        assert app.request(query=plain("REAL") + f"&DeviceId={decoy}").status == 503
    # many decoys before it: the last is always a candidate
    decoys = "&".join(f"DeviceId=d{n}" for n in range(20))
    assert app.request(query=f"{decoys}&" + plain("REAL")).status == 503
    assert app.calls == calls  # the app never saw any of them
    # X-Device-Id on several lines: the same rule
    for _ in range(3):
        assert app.request(path="/", headers={"X-Device-Id": "HDEV"}).status == 200
    assert app.request(path="/", headers={"X-Device-Id": "other, HDEV"}).status == 503


def test_every_candidate_counts(make: Make) -> None:
    app, _, _ = make(max_requests=2, per_account=False)
    for _ in range(2):
        assert app.request(query="DeviceId=one&DeviceId=two").status == 200
    # both candidates reached their limit: each is now jailed on its own
    assert app.request(query="DeviceId=one").status == 503
    assert app.request(query="DeviceId=two").status == 503
    assert app.request(query="DeviceId=three").status == 200


def test_a_device_id_after_8_kib_of_query_does_not_escape_a_jail(make: Make) -> None:
    """Issue 13: a DeviceId placed after 8 KiB of query escaped an existing jail."""
    app, _, _ = make(max_requests=3)
    for _ in range(3):
        assert app.request(query=plain("REAL")).status == 200
    assert app.request(query=plain("REAL")).status == 503
    padded = "pad=" + "x" * 9000 + "&" + plain("REAL")
    assert app.request(query=padded).status == 503
    assert app.request(query="pad=" + "x" * 40_000 + "&" + plain("REAL")).status == 503


def test_a_query_too_long_to_parse_counts_by_address(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    # httpx refuses URLs over 64 KiB: lower the bound to exercise the rule on both stacks
    monkeypatch.setattr(mailguard.activesync, "MAX_QUERY_BYTES", 20_000)
    app, _, _ = make(max_requests=2)
    huge = "pad=" + "x" * 20_000 + "&" + plain("REAL")
    assert len(huge) < MAX_QUERY_BYTES
    for _ in range(2):
        assert app.request(query=huge).status == 200
    refused = app.request(query=huge)
    assert refused.status == 503  # counted against this address's oversized queries
    assert [b.key for b in app.policy.jailed_devices()] == [f"{OVERSIZED_QUERY}/{ADDR}"]
    assert app.request(query=huge, client="192.0.2.11").status == 200  # another address
    assert app.request(query=plain("REAL")).status == 200  # the real device is its own
    assert app.policy.release_device(OVERSIZED_QUERY) == 1


def test_paths_are_case_insensitive_segment_prefixes(make: Make) -> None:
    app, _, _ = make(max_requests=1, paths=["/Microsoft-Server-ActiveSync", "/eas/"])
    assert app.request(path="/microsoft-server-activesync", query=plain()).status == 200
    assert app.request(path="/MICROSOFT-SERVER-ACTIVESYNC/", query=plain()).status == 503
    assert app.request(path="/EAS", query=plain("other")).status == 200
    assert app.request(path="/eas/sub", query=plain("other")).status == 503
    assert app.request(path="/easy", query=plain("third")).status == 200
    assert app.request(path="/easy", query=plain("third")).status == 200


def test_non_activesync_request_is_never_parsed(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    quick: list[str] = []
    real, real_quick = parse_query, device_module.quick_fields

    def counting(query: str) -> Any:
        parsed.append(query)
        return real(query)

    def counting_quick(query: str) -> Any:
        quick.append(query)
        return real_quick(query)

    monkeypatch.setattr(device_module, "parse_query", counting)
    monkeypatch.setattr(device_module, "quick_fields", counting_quick)
    app, store, _ = make()
    for _ in range(5):
        assert app.request(path="/service/soap", query=plain()).status == 200
    assert parsed == [] and quick == [] and len(store) == 0
    assert app.request(query=plain()).status == 200
    assert (len(quick), len(parsed)) == (1, 0)  # read once, by the quick reader
    assert app.request(query="DeviceId=decoy&" + plain()).status == 200
    assert (len(quick), len(parsed)) == (2, 1)  # declined by it, parsed once


def test_jail_is_not_extended_by_requests_during_it(make: Make) -> None:
    app, _, clock = make(max_requests=2, time_window=10, jail_duration=60)
    for _ in range(2):
        app.request(query=plain())
    assert app.request(query=plain()).retry_after == "60"
    for step in range(59):
        clock.advance(1)
        reply = app.request(query=plain())
        assert (reply.status, reply.retry_after) == (503, str(59 - step))
    clock.advance(1)  # exactly 60 s after the jailing
    assert app.request(query=plain()).status == 200


def test_after_release_counting_starts_from_zero(make: Make) -> None:
    app, _, clock = make(max_requests=3, time_window=100, jail_duration=10)
    for _ in range(3):
        app.request(query=plain())
    assert app.request(query=plain()).status == 503
    clock.advance(10)  # released while the old requests would still be in the window
    for _ in range(3):
        assert app.request(query=plain()).status == 200
    assert app.request(query=plain()).status == 503


@pytest.mark.parametrize(
    ("elapsed", "expected"), [(0.0, "600"), (0.4, "600"), (1.0, "599"), (598.5, "2"), (599.9, "1")]
)
def test_retry_after_is_the_jail_left_in_whole_seconds(
    make: Make, elapsed: float, expected: str
) -> None:
    app, _, clock = make(max_requests=1)
    app.request(query=plain())
    assert app.request(query=plain()).retry_after == "600"
    clock.advance(elapsed)
    assert app.request(query=plain()).retry_after == expected


def test_custom_status_code(make: Make) -> None:
    app, _, _ = make(max_requests=1, status_code=429)
    app.request(query=plain())
    reply = app.request(query=plain())
    assert (reply.status, reply.retry_after) == (429, "600")


# ------------------------------------------------------------------- admin
def test_admin_list_release_one_release_all(make: Make) -> None:
    app, _, clock = make(max_requests=1)
    policy = app.policy
    for user in ("jdoe", "alice"):
        app.request(query=plain("PHONE", user=user))
        app.request(query=plain("PHONE", user=user))
        clock.advance(1)
    app.request(query=plain("TABLET", user=None))
    app.request(query=plain("TABLET", user=None))
    blocks = policy.jailed_devices()
    assert [b.key for b in blocks] == ["phone/jdoe", "phone/alice", "tablet"]  # soonest end first
    assert all(b.kind == "device" and b.reason == "rate" for b in blocks)
    assert blocks[0].until == T0 + 600

    assert policy.release_device("phone/alice") == 1  # an exact key
    assert app.request(query=plain("PHONE", user="alice")).status == 200
    assert app.request(query=plain("PHONE", user="jdoe")).status == 503
    assert policy.release_device("phone/alice") == 0
    assert policy.release_device("PHONE") == 1  # a bare device id: every account
    assert app.request(query=plain("PHONE", user="jdoe")).status == 200
    assert [b.key for b in policy.jailed_devices()] == ["tablet"]
    assert policy.release_all() == 1
    assert policy.jailed_devices() == []
    assert app.request(query=plain("TABLET", user=None)).status == 200


def test_admin_async_twins() -> None:
    clock = FakeClock(T0)
    policy = DeviceJailPolicy(store=MemoryStore(clock=clock), max_requests=1)
    store = policy.store
    store.block("device", "a1/jdoe", 600, "rate")
    store.block("device", "a1/bob", 600, "rate")
    store.block("device", "a10", 600, "rate")  # not a1's, though it starts like it
    store.block("device", "b2", 300, "rate")
    store.block("dos", "a1", 600, "rate")  # another filter's block
    store.block("device_changes", "a1/jdoe", 600, "rate")  # the identity rule's counter jail
    store.block("device_changes", "z9", 600, "rate")

    async def run() -> None:
        assert [b.key for b in await policy.ajailed_devices()] == [
            "b2",
            "a1/bob",
            "a1/jdoe",
            "a10",
        ]  # ties by key
        assert await policy.arelease_device("b2") == 1
        assert await policy.arelease_device("A1") == 2
        assert [b.key for b in await policy.ajailed_devices()] == ["a10"]
        assert [b.key for b in store.blocks("device_changes")] == ["z9"]
        assert await policy.arelease_device("a1/jdoe") == 0
        assert await policy.arelease_all() == 1
        assert await policy.ajailed_devices() == []
        assert store.blocks("device_changes") == []

    asyncio.run(run())
    assert [b.key for b in store.blocks()] == ["a1"]  # the DosFilter block stays


def test_release_device_rejects_nonsense() -> None:
    policy = DeviceJailPolicy()
    with pytest.raises(ValueError, match="device"):
        policy.release_device("  ")
    assert policy.release_device("---") == 0


# ------------------------------------------------------------------ events
def test_one_log_line_per_jailing(make: Make, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[Event] = []
    app, _, _ = make(max_requests=2, jail_duration=60, on_event=seen.append)
    with caplog.at_level(logging.INFO, logger="mailguard"):
        for _ in range(10):
            app.request(query=plain("ABC123", user='Evil" client=6.6.6.6', cmd="Ping"))
    lines = [r.getMessage() for r in caplog.records if r.name == "mailguard.device"]
    assert len(lines) == 1 and len(seen) == 1
    line = lines[0]
    assert line.startswith(f"mailguard device jailed client={ADDR} device=abc123 ")
    assert 'account="evil\\" client=6.6.6.6"' in line  # request text is quoted
    assert "command=Ping count=3 seconds=60 reason=rate" in line
    assert 'device_type="iPhone"' in line
    event = seen[0]
    assert (event.filter, event.action, event.get("count")) == ("device", "jailed", 3)


def test_log_names_the_account_even_when_not_per_account(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    app, _, _ = make(max_requests=1, per_account=False)
    with caplog.at_level(logging.WARNING, logger="mailguard"):
        app.request(query=plain(user="jdoe"), headers={"Authorization": basic("Bob")})
        app.request(query=plain(user="jdoe"), headers={"Authorization": basic("Bob")})
    assert any('account="bob"' in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------- identity rule
def test_identity_changes_are_ignored_by_default(make: Make) -> None:
    app, store, _ = make()
    for n in range(10):
        agent = {"User-Agent": f"Apple-iPhone/{n}"}
        assert app.request(query=plain(), headers=agent).status == 200
    assert len(store) == 1  # one window, no identity keys


def test_identity_changes_jail_the_device_for_14_hours(make: Make) -> None:
    seen: list[Event] = []
    app, _, clock = make(identity_changes=True, on_event=seen.append)
    agents = ["Apple-iPhone/1", "Apple-iPhone/2", "Apple-iPhone/1", "Apple-iPhone/1"]
    for agent in agents:  # two changes so far
        assert app.request(query=plain(), headers={"User-Agent": agent}).status == 200
        clock.advance(600)
    reply = app.request(query=plain("ABC123").replace("iPhone", "Android"))  # the third
    assert (reply.status, reply.retry_after) == (503, "50400")
    assert "identity" in reply.text
    [block] = app.policy.jailed_devices()
    assert (block.key, block.reason, block.until) == ("abc123/jdoe", "identity", clock() + 50400)
    assert [e.get("reason") for e in seen] == ["identity"]
    assert seen[0].get("count") == 3
    clock.advance(50399)
    assert app.request(query=plain()).retry_after == "1"
    clock.advance(1)
    assert app.request(query=plain()).status == 200
    assert app.policy.jailed_devices() == []


def test_identity_changes_outside_the_window_do_not_add_up(make: Make) -> None:
    app, _, clock = make(identity_changes=True, max_identity_changes=2, identity_window="1h")
    for n in range(12):  # a change every 31 minutes: never three within an hour
        assert app.request(query=plain(), headers={"User-Agent": f"UA/{n}"}).status == 200
        clock.advance(31 * 60)


def test_identity_rule_is_per_device_and_released_by_admin(make: Make) -> None:
    app, _, _ = make(identity_changes=True, max_identity_changes=1, identity_jail=100)
    for n in range(2):
        assert app.request(query=plain("other"), headers={"User-Agent": "same"}).status == 200
        assert app.request(query=plain(), headers={"User-Agent": f"UA/{n}"}).status == 200
    assert app.request(query=plain(), headers={"User-Agent": "UA/9"}).status == 503
    assert app.request(query=plain("other"), headers={"User-Agent": "same"}).status == 200
    assert app.policy.release_device("abc123") == 1
    assert app.request(query=plain(), headers={"User-Agent": "UA/9"}).status == 200
    # the changes jail went too: a new change counts from zero
    assert app.request(query=plain(), headers={"User-Agent": "UA/10"}).status == 200
    assert app.request(query=plain(), headers={"User-Agent": "UA/11"}).status == 503
    assert app.policy.release_all() == 1
    assert app.request(query=plain(), headers={"User-Agent": "UA/12"}).status == 200
    assert app.request(query=plain(), headers={"User-Agent": "UA/13"}).status == 503


def test_identity_rule_watches_activesync_paths_only(make: Make) -> None:
    app, _, _ = make(identity_changes=True, max_identity_changes=1)
    for n in range(5):
        headers = {"X-Device-Id": "web1", "User-Agent": f"Browser/{n}"}
        assert app.request(path="/service/soap", headers=headers).status == 200


# -------------------------------------------------------------- device_func
def test_device_func_comes_first_and_falls_back(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    def from_mdm(request: Request) -> str | None:
        value = request.header("x-mdm") or ""
        if value == "boom":
            raise RuntimeError("bad header")
        return value.removeprefix("dev=") or None

    app, _, _ = make(max_requests=1, device_func=from_mdm, per_account=False)
    assert app.request(path="/x", headers={"X-Mdm": "dev=" + "F" * 64}).status == 200
    assert app.request(path="/y", headers={"X-Mdm": "dev=" + "f" * 64}).status == 503
    assert app.request(query=plain("q1")).status == 200  # None: the query decides
    assert app.request(query=plain("q1")).status == 503
    with caplog.at_level(logging.ERROR, logger="mailguard"):
        reply = app.request(query=plain("q2"), headers={"X-Mdm": "boom"})
    assert reply.status == 200
    assert app.request(query=plain("q2")).status == 503
    assert "device_func failed" in caplog.text
    assert sorted(b.key for b in app.policy.jailed_devices()) == ["f" * 64, "q1", "q2"]


def test_safe_ips_are_never_jailed(make: Make) -> None:
    app, store, _ = make(max_requests=1, safe_ips=["192.0.2.0/24"])
    for _ in range(3):
        assert app.request(query=plain()).status == 200
    assert len(store) == 0
    assert app.request(query=plain(), client="198.51.100.1").status == 200
    assert app.request(query=plain(), client="198.51.100.1").status == 503


def test_starlette_add_middleware_with_options() -> None:
    clock = FakeClock(T0)
    store = MemoryStore(clock=clock)

    async def ok(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route(AS, ok, methods=["POST"])])
    # ignore: Starlette's factory protocol wants `app` positional-only (see asgi.py)
    app.add_middleware(mailguard.asgi.DeviceJail, max_requests=1, store=store)  # type: ignore[arg-type]

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=(ADDR, 1234))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return [(await http.post(AS + "?" + plain())).status_code for _ in range(3)]

    assert asyncio.run(run()) == [200, 503, 503]
    assert [b.key for b in store.blocks("device")] == ["abc123/jdoe"]


# ------------------------------------------------------------ key helpers
def test_basic_auth_user_is_decoded_safely() -> None:
    assert basic_auth_user(basic("JDoe")) == "jdoe"
    assert basic_auth_user(basic("CORP\\JDoe")) == "jdoe"
    assert basic_auth_user("basic " + base64.b64encode(b"J\xc3\xa9:pw").decode()) == "j\u00e9"
    assert basic_auth_user(basic("a:b", "c")) == "a"  # the user ends at the first colon
    # not UTF-8: read as Latin-1, as the login filter reads it (issue #12; was None)
    latin1 = "Basic " + base64.b64encode(b"\xff\xfe:pw").decode()
    assert basic_auth_user(latin1) == "\u00ff\u00fe"
    bad = [
        None,
        "",
        "Bearer abc",
        "Basic",
        "Basic !!!!",
        "Basic " + base64.b64encode(b"nocolon").decode(),
        "Basic " + base64.b64encode(b":pw").decode(),
        "Basic " + base64.b64encode(b"CORP\\:pw").decode(),
        "Basic amRvZTpwdw",  # missing padding
        "Basic \u00e9\u00e9\u00e9\u00e9",
        basic("jdoe") + ", " + basic("bob"),  # two header lines
        "Basic " + "A" * 5000,
    ]
    for value in bad:
        assert basic_auth_user(value) is None, value


def test_account_normalisation() -> None:
    assert normalise_account("DOMAIN\\JDoe") == "jdoe"
    assert normalise_account(" JDoe@Example.COM ") == "jdoe@example.com"
    assert normalise_account("") is None
    assert normalise_account(None) is None
    assert normalise_account("DOMAIN\\") is None


def test_device_keys_cannot_be_confused() -> None:
    assert device_key("abc", None) == "abc"
    assert device_key("abc", "jdoe@example.com") == "abc/jdoe@example.com"
    tricky = ["x/y", "x%2Fy", "x%2fy", "x y", "#deadbeef", "\u00e9", "a\nb", "x%y"]
    keys = [device_key("abc", account) for account in tricky]
    assert len(set(keys)) == len(keys)
    for key in keys:
        assert key.count("/") == 1 and key.isascii() and key.isprintable()
    long_a, long_b = "a" * 200, "a" * 199 + "b"
    assert account_key(long_a) != account_key(long_b)
    assert account_key(long_a).startswith("#") and len(account_key(long_a)) == 33
    assert all(not account_key(a).startswith("#") for a in tricky)


@settings(max_examples=200, database=None)
@given(account=st.text(max_size=150))
def test_account_key_round_trips_or_hashes(account: str) -> None:
    key = account_key(account)
    assert "/" not in key and key.isascii()
    if key.startswith("#"):
        assert len(key) == 33
    else:
        assert unquote(key, errors="surrogatepass") == account  # so no two accounts meet


# ------------------------------------------------------------------ options
def test_defaults() -> None:
    policy = DeviceJailPolicy()
    assert (policy.max_requests, policy.time_window, policy.jail_duration) == (150, 30.0, 600.0)
    # the endpoint and everything below it (Z-Push behind an alias serves both)
    assert policy.paths == ("/Microsoft-Server-ActiveSync/",)
    for path in (
        "/Microsoft-Server-ActiveSync",
        "/microsoft-server-activesync/",
        "/Microsoft-Server-ActiveSync/x",
    ):
        assert policy._paths.match(path), path
    assert not policy._paths.match("/Microsoft-Server-ActiveSyncX")
    assert policy.header_paths is None and policy.per_account is True
    assert policy.identity_changes is False
    assert (policy.max_identity_changes, policy.identity_window, policy.identity_jail) == (
        2,
        86400.0,
        50400.0,
    )
    assert (policy.status_code, policy.namespace, policy.kind) == (503, "device", "device")
    strings = DeviceJailPolicy(time_window="1m", jail_duration="10m", identity_jail="14h")
    assert (strings.time_window, strings.jail_duration, strings.identity_jail) == (
        60.0,
        600.0,
        50400.0,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_requests": 0}, "max_requests: must be a whole number >= 1, got 0"),
        ({"max_requests": 1.5}, "max_requests: must be a whole number, got 1.5"),
        ({"max_requests": True}, "max_requests"),
        ({"time_window": 0}, "time_window: must be a finite number of seconds > 0, got 0"),
        ({"time_window": "soon"}, "time_window: 'soon' is not a duration"),
        ({"jail_duration": -5}, "jail_duration: must be a finite number of seconds > 0, got -5"),
        ({"jail_duration": float("inf")}, "jail_duration"),
        ({"paths": "/Microsoft-Server-ActiveSync"}, "paths: must be a list of strings"),
        ({"paths": ["Microsoft-Server-ActiveSync"]}, "paths: 'Microsoft-Server-ActiveSync'"),
        ({"header_paths": ["service"]}, "header_paths: 'service' must start with '/'"),
        ({"paths": [], "header_paths": []}, "paths: is empty"),
        ({"per_account": "yes"}, "per_account: must be True or False, got 'yes'"),
        ({"device_func": "x-device-id"}, "device_func: must be callable, got 'x-device-id'"),
        ({"identity_changes": 1}, "identity_changes: must be True or False, got 1"),
        ({"max_identity_changes": 0}, "max_identity_changes: must be a whole number >= 1"),
        ({"identity_window": "forever"}, "identity_window: 'forever' is not a duration"),
        ({"identity_jail": 0}, "identity_jail: must be a finite number of seconds > 0"),
        ({"status_code": 200}, "status_code: must be a whole number >= 400, got 200"),
        ({"max_request": 5}, "max_request"),
    ],
)
def test_bad_options_raise_naming_key_and_value(options: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(")) as caught:
        DeviceJailPolicy(**options)
    if "max_request" not in options:
        assert caught.type is ValueError
    with pytest.raises((ValueError, TypeError)):
        mailguard.wsgi.DeviceJail(lambda e, s: [], **options)


def test_empty_paths_are_fine_with_a_device_func() -> None:
    policy = DeviceJailPolicy(paths=[], header_paths=[], device_func=lambda r: "x")
    assert policy.paths == ()


# ------------------------------------------------------------------- fuzz
_b64_chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=%"
_queries = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=120),
    st.text(_b64_chars, max_size=80),
    st.binary(max_size=60).map(lambda raw: base64.b64encode(raw).decode("ascii")),
    st.builds(
        lambda version, cmd, dev, typ: b64query(dev, device_type=typ, command=cmd, version=version),
        st.integers(0, 255),
        st.integers(0, 255),
        st.binary(min_size=1, max_size=40),
        st.binary(max_size=20),
    ).map(lambda q: q[: len(q) // 2] if len(q) % 3 == 0 else q),
    st.lists(
        st.tuples(
            st.sampled_from(["DeviceId", "deviceid", "User", "Cmd", "DeviceType", "x", ""]),
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
        ),
        max_size=6,
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
)
_header_values = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=80)


def test_fuzzed_requests_never_break_the_stack() -> None:
    """Random queries and headers through real Starlette: the app answers every one."""
    clock = FakeClock(T0)
    policy = DeviceJailPolicy(
        store=CoroutineStore(clock=clock),  # through acheck; the next test goes through check
        max_requests=10_000,
        identity_changes=True,  # exercised, never reached
        max_identity_changes=10_000,
    )
    harness = AsgiHarness(policy)

    @settings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        query=_queries,
        device=_header_values,
        auth=st.one_of(_header_values, st.binary(max_size=40).map(basic_from_bytes)),
        agent=_header_values,
        path=st.sampled_from([AS, AS.lower(), AS + "/x", "/service/soap", "/"]),
    )
    def run(query: str, device: str, auth: str, agent: str, path: str) -> None:
        headers = {"X-Device-Id": device, "Authorization": auth, "User-Agent": agent}
        before = harness.calls
        reply = harness.request(path=path, query=query, headers=headers)
        assert reply.status == 200, (query, headers)
        assert harness.calls == before + 1
        clock.advance(0.01)

    try:
        run()
    finally:
        harness.close()
    assert policy.jailed_devices() == []


def basic_from_bytes(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode("ascii")


def test_fuzzed_jail_is_only_ever_its_own_503() -> None:
    """With a tiny limit, every answer is the app's 200 or the jail's 503 + Retry-After."""
    clock = FakeClock(T0)
    policy = DeviceJailPolicy(store=MemoryStore(clock=clock), max_requests=2)
    harness = AsgiHarness(policy)

    @settings(max_examples=150, deadline=None, database=None)
    @given(device=st.sampled_from(["a", "B", "c-1", "", "--"]), query=_queries)
    def run(device: str, query: str) -> None:
        reply = harness.request(query=query, headers={"X-Device-Id": device})
        assert reply.status in (200, 503)
        if reply.status == 503:
            assert reply.retry_after is not None and int(reply.retry_after) >= 1
            assert "jailed" in reply.text

    try:
        run()
    finally:
        harness.close()


def test_default_domain_makes_user_and_user_at_domain_one_account(make: Make) -> None:
    app, _, _ = make(max_requests=2, default_domain="Example.com")
    assert app.request(query=plain(user="jdoe")).status == 200
    assert app.request(query=plain(user="JDOE@example.com")).status == 200
    assert app.request(query=plain(user="jdoe")).status == 503  # one device, one account
    assert [b.key for b in app.policy.jailed_devices()] == ["abc123/jdoe@example.com"]
    with pytest.raises(ValueError, match=r"^default_domain: must be a domain"):
        DeviceJailPolicy(default_domain="not a domain")
