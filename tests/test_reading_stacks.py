"""The one request-reading module through real ASGI and WSGI stacks (issues #12, #13).

The three filters read a path, an account and a body the same way: each test
runs on Starlette behind httpx and on Flask behind werkzeug (``stacks.py``).
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from stacks import AsgiStack, Stack, WsgiStack

from mailguard import FakeClock, MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.events import Event

FILTERS: dict[str, Any] = {"asgi": mg_asgi, "wsgi": mg_wsgi}
STACKS: dict[str, type[Stack]] = {"asgi": AsgiStack, "wsgi": WsgiStack}
SYNC = "Cmd=Sync&DeviceId=abc&DeviceType=iPhone"
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(params=sorted(STACKS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=FakeClock(start=1_700_000_000.0))


def build(kind: str, name: str, **options: Any) -> Stack:
    middleware = getattr(FILTERS[kind], name)
    return STACKS[kind](lambda app: middleware(app, **options))


def login(kind: str, events: list[Event], **options: Any) -> Stack:
    """A login filter over the echo app, whose 200 answers count as failures here."""
    options.setdefault("failure_statuses", (200,))
    options.setdefault("max_failed_logins", 100)
    options.setdefault("store", MemoryStore(clock=FakeClock(start=1_700_000_000.0)))
    return build(kind, "InvalidLoginFilter", on_event=events.append, **options)


def failures(events: list[Event]) -> list[str]:
    return [str(e.get("account")) for e in events if e.action == "failure"]


# --------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    ("entry", "exempt", "protected"),
    [
        ("/health", "/health", ["/Health", "/HEALTH", "/health/"]),
        ("/health/", "/health/live", ["/Health/live", "/HEALTH/live"]),
    ],
)
def test_one_path_rule_in_the_three_filters(
    kind: str, store: MemoryStore, entry: str, exempt: str, protected: list[str]
) -> None:
    """Every spelling but the exact one is protected by all three filters alike."""
    dos = build(kind, "DosFilter", max_requests_per_sec=1, exempt_paths=[entry], store=store)
    assert [dos.request(exempt)[0] for _ in range(3)] == [200, 200, 200]
    for n, path in enumerate(protected):  # not exempt: another case cannot dodge the limit
        client = f"198.51.100.{n}"
        assert [dos.request(path, client=client)[0] for _ in range(2)] == [200, 503], path

    events: list[Event] = []
    guard = login(kind, events, login_paths=[entry])
    for path in [exempt, *protected]:
        guard.request(path, method="POST")
    assert len(failures(events)) == 1 + len(protected)

    jail = build(kind, "DeviceJail", max_requests=len(protected), paths=[entry])
    for path in [exempt, *protected[:-1]]:
        assert jail.request(f"{path}?{SYNC}")[0] == 200, path
    assert jail.request(f"{protected[-1]}?{SYNC}")[0] == 503  # one device, every spelling


def test_exempting_the_root_exempts_only_the_root(kind: str, store: MemoryStore) -> None:
    dos = build(kind, "DosFilter", max_requests_per_sec=1, exempt_paths=["/"], store=store)
    assert [dos.request("/")[0] for _ in range(3)] == [200, 200, 200]
    assert [dos.request("/inbox")[0] for _ in range(2)] == [200, 503]


# -------------------------------------------------------------------- bodies
@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_multipart_login_is_counted_with_either_line_end(kind: str, eol: bytes) -> None:
    events: list[Event] = []
    guard = login(kind, events, login_fields={"op": "login"})
    body = eol.join(
        [
            b"--zz",
            b'Content-Disposition: form-data; name="op"',
            b"",
            b"login",
            b"--zz",
            b'Content-Disposition: form-data; name="user"',
            b"",
            b"Alice",
            b"--zz--",
            b"",
        ]
    )
    headers = {"content-type": "multipart/form-data; boundary=zz"}
    assert guard.request("/login", method="POST", headers=headers, body=body)[0] == 200
    assert failures(events) == ["alice"]


@pytest.mark.parametrize("ctype", ["text/plain", "text/plain;charset=UTF-8", None])
def test_json_sent_as_another_type_is_counted(kind: str, ctype: str | None) -> None:
    events: list[Event] = []
    guard = login(kind, events, login_fields={"op": "login"})
    headers = {} if ctype is None else {"content-type": ctype}
    body = json.dumps({"op": "login", "user": "Alice"}).encode()
    guard.request("/login", method="POST", headers=headers, body=body)
    assert failures(events) == ["alice"]
    # garbled JSON: the filter cannot tell, so it counts the attempt (no account)
    guard.request("/login", method="POST", headers=headers, body=b'{"op": "login", "us')
    assert failures(events) == ["alice", ""]
    # a body the application would not read as fields is no login
    guard.request("/login", method="POST", headers=headers, body=b"op=login&user=bob")
    assert failures(events) == ["alice", ""]


def test_a_content_type_cut_as_php_cuts_it(kind: str) -> None:
    events: list[Event] = []
    guard = login(kind, events, login_fields={"op": "login"})
    headers = {"content-type": "application/x-www-form-urlencoded,charset=UTF-8"}
    guard.request("/login", method="POST", headers=headers, body=b"op=login&user=Alice")
    assert failures(events) == ["alice"]


# ------------------------------------------------------------------ accounts
SPELLINGS = [
    "VICTIM",
    "\uff36\uff29\uff23\uff34\uff29\uff2d",  # full-width letters
    "victim\x00",
    " Victim\t",
    "CORP\\victim",
]


def test_account_spellings_are_one_account_for_the_tarpit(kind: str) -> None:
    events: list[Event] = []
    guard = login(kind, events, account_tarpit=(len(SPELLINGS), 0.01))
    for n, user in enumerate(SPELLINGS):
        body = urlencode({"user": user, "password": "guess"}).encode()
        guard.request("/login", method="POST", headers=FORM, body=body, client=f"198.51.100.{n}")
    assert failures(events) == ["victim"] * len(SPELLINGS)
    tarpit = [e for e in events if e.action == "tarpit"]
    assert [e.get("account") for e in tarpit] == ["victim"]  # the count reached M as one


def test_basic_credentials_are_read_alike_by_both_filters(kind: str, store: MemoryStore) -> None:
    def basic(raw: bytes) -> dict[str, str]:
        return {"authorization": "Basic " + base64.b64encode(raw + b":pw").decode()}

    events: list[Event] = []
    guard = login(kind, events, count_basic_auth=True, auth_paths=["/dav/"])
    for raw in (b"J\xe9", "J\u00e9".encode(), b"VICTIM\x00", "\uff36ictim".encode()):
        guard.request("/dav/cal", headers=basic(raw))
    assert failures(events) == ["j\u00e9", "j\u00e9", "victim", "victim"]

    jail = build(kind, "DeviceJail", max_requests=1, store=store)
    path = "/Microsoft-Server-ActiveSync?" + SYNC
    assert jail.request(path, headers=basic(b"J\xe9"))[0] == 200  # Latin-1
    assert jail.request(path, headers=basic("j\u00e9".encode()))[0] == 503  # UTF-8: the same
    assert [b.key for b in store.blocks("device")] == ["abc/j%C3%A9"]


def test_activesync_user_spellings_share_one_jail(kind: str, store: MemoryStore) -> None:
    jail = build(kind, "DeviceJail", max_requests=len(SPELLINGS), store=store)
    for user in SPELLINGS:
        assert jail.request(f"/Microsoft-Server-ActiveSync?{SYNC}&User={quote(user)}")[0] == 200
    assert jail.request(f"/Microsoft-Server-ActiveSync?{SYNC}&User=victim")[0] == 503
    assert [b.key for b in store.blocks("device")] == ["abc/victim"]


def test_php_parameter_names_when_the_policy_asks(kind: str) -> None:
    """``php_forms`` (for PHP presets): ``.task`` is PHP's ``_task``, in body and query."""
    made: list[Any] = []

    def wrap(app: Any) -> Any:
        made.append(FILTERS[kind].InvalidLoginFilter(
            app, login_paths=["*"], login_fields={"_task": "login"}, failure_statuses=(200,),
            on_event=events.append, store=MemoryStore(clock=FakeClock(start=1.7e9)),
        ))  # fmt: skip
        return made[-1]

    events: list[Event] = []
    guard = STACKS[kind](wrap)
    guard.request("/", method="POST", headers=FORM, body=b".task=login&_user=Alice")
    assert failures(events) == []  # a non-PHP application sees ".task", no login
    made[-1].policy.php_forms = True
    guard.request("/", method="POST", headers=FORM, body=b".task=login&_user=Alice")
    guard.request("/?%2Etask=login", method="POST", headers=FORM, body=b"_user=Bob")
    assert failures(events) == ["alice", "bob"]


def test_a_preset_turns_php_names_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import mailguard.policies.login as login_module

    monkeypatch.setattr(login_module, "preset_options", lambda name: {"php_forms": True})
    assert login_module.InvalidLoginPolicy(preset="php-app").php_forms
    assert not login_module.InvalidLoginPolicy().php_forms
