"""``mailguard demo``: the story holds, the output says so, the exit status follows."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from mailguard import demo


@pytest.fixture(scope="module")
def report() -> demo.Report:
    return demo.run()


def test_the_story_holds(report: demo.Report) -> None:
    failed = [text for text, ok in report.checks if not ok]
    assert failed == []
    assert report.ok
    assert report.honest_through == (31, 31, 0)
    actors = report.actors
    assert actors["flooder"].refused["dos"] > 0
    assert actors["guesser"].blocks["login"] >= 2 and actors["guesser"].let_back >= 1
    assert actors["phone"].blocks["device"] >= 1 and actors["phone"].served_after_block > 0
    v6 = actors["ipv6"]
    assert len(v6.addresses) > 100 and report.clients["ipv6"] == {"2001:db8:bad:cafe::/64"}
    assert v6.refused["dos"] > 0 and v6.blocks["login"] >= 1
    # each filter refused only the attackers it is there for
    assert sum(actors["office"].refused.values()) == 0
    assert sum(actors["erin"].refused.values()) == 0
    assert actors["phone"].refused["dos"] == actors["phone"].refused["login"] == 0
    assert actors["guesser"].refused["login"] > 0
    # the per-filter numbers add up: what one filter passes, the next one sees
    f = report.filters
    assert f["dos"].requests == report.requests
    assert f["dos"].passed + f["dos"].refused == f["dos"].requests
    assert f["device"].requests == f["dos"].passed
    assert f["login"].requests == f["device"].passed
    assert sum(a.requests for a in actors.values()) == report.requests


def test_fast_enough(report: demo.Report) -> None:
    assert report.wall_seconds < 30
    assert report.requests > 10_000


def test_plain_output(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.perf_counter()
    assert demo.main([]) == 0
    assert time.perf_counter() - started < 30
    out = capsys.readouterr().out
    assert "Honest users: 31 of 31 got through (0 refused)" in out
    for word in ("DosFilter", "DeviceJail", "InvalidLoginFilter", "flooder", "guesser"):
        assert word in out
    assert "FAIL" not in out
    assert "\x1b[" not in out  # no terminal codes when stdout is not a terminal
    assert "blocked after 5 failed logins" in out  # the story is told as it happens


def test_json_output(capsys: pytest.CaptureFixture[str], report: demo.Report) -> None:
    assert demo.main(["--json"]) == 0
    facts: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert facts["ok"] is True
    assert facts["honest"] == {"users": 31, "got_through": 31, "refused": 0}
    assert set(facts["filters"]) == {"dos", "device", "login"}
    assert facts["filters"]["login"]["blocks"] == report.filters["login"].blocks
    assert facts["filters"]["device"]["jails"] >= 1
    names = [a["name"] for a in facts["actors"]]
    assert names == ["office", "erin", "flooder", "guesser", "phone", "ipv6"]
    assert all(check["ok"] for check in facts["checks"])
    # deterministic: a second run tells exactly the same story
    expected = report.facts()
    facts.pop("wall_seconds")
    expected.pop("wall_seconds")
    assert facts == json.loads(json.dumps(expected))


def test_rich_output_on_a_terminal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "Honest users: 31 of 31 got through (0 refused)" in out
    assert "InvalidLoginFilter" in out


def test_exit_status_1_when_the_story_breaks(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # a DoS limit far too low for the office NAT: honest users get refused
    monkeypatch.setitem(demo.LIMITS, "dos", {"max_requests_per_sec": 1})
    assert demo.main(["--plain"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out
    assert "Honest users: 31 of 31" not in out


def test_webmail_answers_like_a_webmail() -> None:
    async def go() -> list[int]:
        transport = httpx.ASGITransport(app=demo.build_webmail())
        async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as c:
            bad = await c.post("/login", data={"username": "anna", "password": "x"})
            good = await c.post("/login", data={"username": "anna", "password": "anna-secret"})
            inbox = await c.get("/inbox")
            sync = await c.post("/Microsoft-Server-ActiveSync?Cmd=Ping")
            return [bad.status_code, good.status_code, inbox.status_code, sync.status_code]

    assert asyncio.run(go()) == [401, 302, 200, 401]
