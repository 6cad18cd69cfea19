"""Monitor (report-only) mode: ``enforce=False`` on InvalidLoginFilter and DeviceJail.

The filter counts, records and reports what it would do (``would-block``,
``would-refuse``, ``would-jail``, each with ``mode=monitor``), and never
refuses or holds a request; through ASGI and WSGI.
"""

from __future__ import annotations

import pytest
from test_device import Make, plain
from test_device import make as make
from test_login import ATTACKER, KINDS, Events, fail, succeed, zimbra_like

from mailguard.events import Event
from mailguard.policies import DeviceJailPolicy, InvalidLoginPolicy


@pytest.mark.parametrize("kind", KINDS)
def test_login_monitor_counts_and_reports_but_never_refuses(kind: str) -> None:
    events = Events()
    stack = zimbra_like(kind, events, enforce=False, block_scope="all")
    for _ in range(5):
        assert fail(stack).status == 401
        stack.clock.advance(10)
    # enforcing, this address would now be refused, even with the right password
    assert succeed(stack, ip=ATTACKER).status == 302
    assert stack.request("GET", "/inbox").status == 200
    for _ in range(3):
        assert fail(stack).status == 401
    assert len(stack.calls) == 10  # every request reached the app
    assert events.actions() == ["failure"] * 5 + ["would-block", "would-refuse"]
    would = events[5]
    assert would.get("mode") == "monitor" and would.get("seconds") == 1500
    assert "mailguard login would-block client=203.0.113.7 " in would.line()
    assert events[6].get("mode") == "monitor"
    # the would-be block is recorded, so `mailguard blocks` shows whom it would stop
    assert [b.key for b in stack.store.blocks("login")] == [ATTACKER]


@pytest.mark.parametrize("kind", KINDS)
def test_login_monitor_never_holds_a_tarpitted_attempt(kind: str) -> None:
    stack = zimbra_like(kind, enforce=False, account_tarpit=(2, 30), max_failed_logins=50)
    for _ in range(5):
        assert fail(stack).status == 401
    assert stack.policy.waiting == 0  # and the test took no 30 s hold


def test_enforce_must_be_a_bool() -> None:
    with pytest.raises(ValueError, match="enforce"):
        InvalidLoginPolicy(enforce="no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="enforce"):
        DeviceJailPolicy(enforce=0)  # type: ignore[arg-type]


def test_device_monitor_reports_would_jail_and_lets_every_request_through(make: Make) -> None:
    seen: list[Event] = []
    app, store, clock = make(max_requests=10, time_window=15, jail_duration=60, enforce=False)
    app.policy.report.hook = seen.append  # type: ignore[attr-defined]
    for _ in range(30):
        assert app.request(query=plain()).status == 200
    assert app.calls == 30
    assert [e.action for e in seen] == ["would-jail"]
    assert seen[0].get("mode") == "monitor" and seen[0].get("reason") == "rate"
    assert "mailguard device would-jail client=" in seen[0].line()
    assert [b.kind for b in store.blocks()] == ["device"]
    clock.advance(61)
    for _ in range(11):
        assert app.request(query=plain()).status == 200
    assert [e.action for e in seen] == ["would-jail", "would-jail"]


def test_device_monitor_identity_rule(make: Make) -> None:
    seen: list[Event] = []
    app, _, _ = make(identity_changes=True, max_identity_changes=1, enforce=False)
    app.policy.report.hook = seen.append  # type: ignore[attr-defined]
    for agent in ("a/1", "b/2", "c/3", "d/4"):
        assert app.request(query=plain(), headers={"user-agent": agent}).status == 200
    assert [e.action for e in seen] == ["would-jail"]
    assert seen[0].get("reason") == "identity"
