"""The admin app's POST /block and the audit trail of its blocks and lifts, over ASGI and WSGI."""

from __future__ import annotations

import logging

import pytest
from test_admin import KINDS, T0, call, pick

from mailguard.admin import AdminApp
from mailguard.core import FakeClock
from mailguard.events import Event
from mailguard.stores.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=FakeClock(T0))


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mailguard.audit"]


@pytest.mark.parametrize("kind", KINDS)
def test_block_then_unblock_leave_audit_lines_and_events(
    kind: str, store: MemoryStore, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Event] = []
    app = pick(store, kind, on_event=seen.append)
    caplog.set_level(logging.WARNING, logger="mailguard.audit")
    body = {"key": "2001:db8:1:2::77", "seconds": "1h", "reason": "phishing run"}
    status, data, _ = call(app, kind, "POST", "/block", body=body)
    assert status == 200
    assert data["blocked"] == {
        "kind": "login",
        "key": "2001:db8:1:2::/64",
        "reason": "phishing run",
        "since": T0,
        "until": T0 + 3600,
        "left": 3600,
    }
    status, data, _ = call(
        app, kind, "POST", "/block", body={"key": "Appl-F17X/jdoe", "kind": "device", "seconds": 60}
    )
    assert status == 200 and data["blocked"]["key"] == "applf17x/jdoe"
    status, data, _ = call(app, kind, "POST", "/unblock", body={"key": "2001:db8:1:2::1"})
    assert (status, data) == (200, {"lifted": 1})
    status, data, _ = call(app, kind, "POST", "/unblock", body={"all": True})
    assert (status, data) == (200, {"lifted": 1})
    assert audit_lines(caplog) == [
        'mailguard audit block key="2001:db8:1:2::/64" kind=login seconds=3600'
        ' reason="phishing run" by=admin-token from=127.0.0.1',
        'mailguard audit block key="applf17x/jdoe" kind=device seconds=60'
        ' reason="manual" by=admin-token from=127.0.0.1',
        'mailguard audit unblock key="2001:db8:1:2::1" kind=any lifted=1'
        " by=admin-token from=127.0.0.1",
        'mailguard audit unblock key="*" kind=any lifted=1 by=admin-token from=127.0.0.1',
    ]
    assert [(e.filter, e.action, e.client) for e in seen] == [
        ("audit", "block", "127.0.0.1"),
        ("audit", "block", "127.0.0.1"),
        ("audit", "unblock", "127.0.0.1"),
        ("audit", "unblock", "127.0.0.1"),
    ]
    assert seen[0].get("reason") == "phishing run" and seen[3].get("lifted") == 1


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"key": "203.0.113.7"}, "seconds"),
        ({"key": "203.0.113.7", "seconds": "soon"}, "not a duration"),
        ({"key": "203.0.113.7", "seconds": 10**400}, "finite"),  # too big for a float
        ({"key": "203.0.113.7", "seconds": -(10**400)}, "finite"),
        ({"key": "203.0.113.7", "seconds": 60, "kind": "dos"}, "DosFilter keeps no blocks"),
        ({"key": "10.0.0.0/8", "seconds": 60}, "per address"),
        ({"key": "", "seconds": 60}, "key"),
        ({"key": "203.0.113.7", "seconds": 60, "reason": ""}, "reason"),
        ({"key": "203.0.113.7", "seconds": 60, "extra": 1}, "unknown field"),
        ({"key": "203.0.113.7", "seconds": 60, "ipv6_prefix": True}, "ipv6_prefix"),
        (["203.0.113.7"], "JSON object"),
    ],
)
def test_bad_block_requests_are_400_and_block_nothing(
    kind: str, body: object, message: str, store: MemoryStore
) -> None:
    status, data, _ = call(pick(store, kind), kind, "POST", "/block", body=body)
    assert status == 400 and message in data["error"]
    assert store.blocks() == []


@pytest.mark.parametrize("kind", KINDS)
def test_block_needs_the_token_and_post(kind: str, store: MemoryStore) -> None:
    app = pick(store, kind)
    body = {"key": "203.0.113.7", "seconds": 60}
    assert call(app, kind, "POST", "/block", body=body, headers={})[0] == 403
    assert call(app, kind, "POST", "/block", body=body, client="198.51.100.1")[0] == 403
    assert call(app, kind, "GET", "/block")[0] == 405
    assert store.blocks() == []
    assert call(app, kind, "POST", "/block", raw=b"x" * 70_000)[0] == 413


def test_on_event_must_be_callable(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="on_event"):
        AdminApp(store, token="s3cret-token-for-tests-0123456789", on_event="log")  # type: ignore[arg-type]
