"""Login presets against small fake apps shaped like the real webmail.

Each case gives a fake app of one shape, requests that fail a login, one
that succeeds, and requests that must never count (the login page, a bare
401 challenge, a second-factor prompt, ...).  Every case runs on ASGI and
WSGI (see ``test_login.py`` for the harness).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from test_login import (
    ATTACKER,
    KINDS,
    USER,
    Events,
    FakeRequest,
    Reply,
    Stack,
    as_json,
    basic,
    make_stack,
    urlencoded,
)

from mailguard.policies.login import InvalidLoginPolicy
from mailguard.presets import PRESETS, nextcloud_failure, preset_options, zimbra_failure

Send = Callable[[Stack, str], Any]  # (stack, ip) -> response


# ---------------------------------------------------------------- fake apps
def roundcube(req: FakeRequest) -> Reply:
    """Roundcube >= 1.4: every unauthenticated page is a 401; the body's _task wins."""
    if req.param("_task") == "login" and req.param("_action") == "login" and req.method == "POST":
        if req.param("_user") == "alice" and req.param("_pass") == "right":
            return 302, [("location", "./?_task=mail&_mbox=INBOX")], b""
        return 401, [], b"<html>Login failed</html>"
    return 401, [], b"<html>login form</html>"


def sogo(req: FakeRequest) -> Reply:
    if req.path == "/SOGo/connect" and req.method == "POST":
        form = req.form()
        if form.get("userName") == "alice" and form.get("password") == "right":
            return 200, [("set-cookie", "0xHIGHFLYxSOGo=basic%20abc; path=/SOGo/")], b"{}"
        return 403, [("content-type", "application/json")], b'{"LDAPPasswordPolicyError": 0}'
    if req.path.startswith("/SOGo/so/"):
        return 403, [], b"not logged in"  # not a login path: never counted
    return 200, [], b"<html>SOGo</html>"


class Nextcloud:
    """Nextcloud: 303 back to /login on failure; its own 429 after two from one address."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}

    def __call__(self, req: FakeRequest) -> Reply:
        if req.path in ("/login", "/index.php/login") and req.method == "POST":
            if self.failures.get(req.ip, 0) >= 2:
                return 429, [], b"Too many requests"
            form = req.form()
            if form.get("user") == "alice" and form.get("password") == "right":
                return 303, [("location", "https://cloud.example.com/apps/dashboard/")], b""
            self.failures[req.ip] = self.failures.get(req.ip, 0) + 1
            return 303, [("location", f"https://cloud.example.com{req.path}?user=x&direct=1")], b""
        return 200, [], b"<html>login form</html>"

    def forget(self) -> None:
        """Time passes: Nextcloud's own throttling decays."""
        self.failures.clear()


def zimbra(req: FakeRequest) -> Reply:
    if req.path == "/" and req.method == "POST" and req.param("loginOp") == "login":
        if req.param("username") == "alice@example.com" and req.param("password") == "right":
            return 302, [("location", "/"), ("set-cookie", "ZM_AUTH_TOKEN=0_abc; Path=/")], b""
        return (
            200,
            [("set-cookie", "ZM_TEST=true; Path=/")],
            b"<html>The username or password is incorrect.</html>",
        )
    return (
        200,
        [("set-cookie", "ZM_AUTH_TOKEN=; Expires=Thu, 01 Jan 1970 00:00:00 GMT")],
        b"<html>Zimbra</html>",
    )


def carbonio(req: FakeRequest) -> Reply:
    if req.path in ("/zx/auth/v1/login", "/zx/auth/v2/login") and req.method == "POST":
        form = req.form()
        if form.get("user") == "alice@example.com":
            if form.get("password") == "right":
                return 200, [("set-cookie", "ZM_AUTH_TOKEN=0_abc; Path=/")], b"{}"
            if form.get("password") == "right-needs-otp":
                return 403, [], b'{"2FA": true}'  # the password was right
        return 401, [], b"Credentials are not valid"
    return 200, [], b""


def basic_auth_app(good: dict[str, str], ok_status: int) -> Callable[[FakeRequest], Reply]:
    def app(req: FakeRequest) -> Reply:
        if req.headers.get("authorization") == good["authorization"]:
            return ok_status, [], b""
        return 401, [("www-authenticate", 'Basic realm="Zimbra"')], b""

    return app


# -------------------------------------------------------------------- cases
@dataclass
class Case:
    preset: str
    app: Callable[[], Callable[[FakeRequest], Reply]]
    bad: list[Send]  # cycled through; each must reach the app and fail
    good: Send
    good_status: int
    neutral: list[Send]  # never counted, whatever they answer
    account: str


def rc_login(user: str, password: str) -> dict[str, Any]:
    return urlencoded(
        {
            "_token": "t",
            "_task": "login",
            "_action": "login",
            "_timezone": "_default_",
            "_url": "",
            "_user": user,
            "_pass": password,
        }
    )


EAS = "/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=ABC123&DeviceType=iPhone"
EAS_GOOD = basic("EXAMPLE\\Alice", "right")
DAV_GOOD = basic("alice@example.com", "right")

CASES = [
    Case(
        "roundcube",
        lambda: roundcube,
        bad=[
            lambda s, ip: s.request("POST", "/?_task=login", ip=ip, **rc_login("Alice", "x")),
            # the body's _task wins in PHP: a different query must not hide the login
            lambda s, ip: s.request("POST", "/?_task=mail", ip=ip, **rc_login("alice", "x")),
            lambda s, ip: s.request(
                "POST", "/roundcube/?_task=login", ip=ip, **rc_login("alice", "y")
            ),
        ],
        good=lambda s, ip: s.request("POST", "/?_task=login", ip=ip, **rc_login("alice", "right")),
        good_status=302,
        neutral=[
            lambda s, ip: s.request("GET", "/?_task=login", ip=ip),  # the login page: 401 too
            lambda s, ip: s.request("GET", "/", ip=ip),
            lambda s, ip: s.request(
                "POST", "/?_task=mail&_action=refresh", ip=ip, **urlencoded({"_remote": "1"})
            ),
        ],
        account="alice",
    ),
    Case(
        "sogo",
        lambda: sogo,
        bad=[
            lambda s, ip: s.request(
                "POST",
                "/SOGo/connect",
                ip=ip,
                **as_json({"userName": "Alice", "password": "x", "rememberLogin": 0}),
            )
        ],
        good=lambda s, ip: s.request(
            "POST", "/SOGo/connect", ip=ip, **as_json({"userName": "alice", "password": "right"})
        ),
        good_status=200,
        neutral=[
            lambda s, ip: s.request("GET", "/SOGo/", ip=ip),
            lambda s, ip: s.request(
                "POST", "/SOGo/so/alice/Mail/view", ip=ip, **as_json({"userName": "alice"})
            ),
        ],
        account="alice",
    ),
    Case(
        "nextcloud",
        Nextcloud,
        bad=[
            lambda s, ip: s.request(
                "POST",
                "/login",
                ip=ip,
                **urlencoded({"user": "alice", "password": "x", "requesttoken": "t"}),
            ),
            lambda s, ip: s.request(
                "POST",
                "/index.php/login",
                ip=ip,
                **urlencoded({"user": "alice", "password": "y", "requesttoken": "t"}),
            ),
        ],
        good=lambda s, ip: s.request(
            "POST",
            "/login",
            ip=ip,
            **urlencoded({"user": "alice", "password": "right", "requesttoken": "t"}),
        ),
        good_status=303,
        neutral=[
            lambda s, ip: s.request("GET", "/login", ip=ip),
            lambda s, ip: s.request(
                "POST", "/apps/files/upload", ip=ip, **urlencoded({"user": "alice"})
            ),
        ],
        account="alice",
    ),
    Case(
        "zimbra",
        lambda: zimbra,
        bad=[
            lambda s, ip: s.request(
                "POST",
                "/",
                ip=ip,
                **urlencoded(
                    {
                        "loginOp": "login",
                        "username": "alice@example.com",
                        "password": "x",
                        "client": "preferred",
                        "login_csrf": "c",
                    }
                ),
            ),
            lambda s, ip: s.request(
                "POST",
                "/zimbra/",
                ip=ip,
                **urlencoded(
                    {"loginOp": "login", "username": "ALICE@example.com", "password": "y"}
                ),
            ),
        ],
        good=lambda s, ip: s.request(
            "POST",
            "/",
            ip=ip,
            **urlencoded(
                {
                    "loginOp": "login",
                    "username": "alice@example.com",
                    "password": "right",
                    "client": "preferred",
                }
            ),
        ),
        good_status=302,
        neutral=[
            lambda s, ip: s.request("GET", "/", ip=ip),  # the login page: 200 without a token
            lambda s, ip: s.request("POST", "/", ip=ip, **urlencoded({"loginOp": "logout"})),
            lambda s, ip: s.request(
                "POST", "/service/soap", ip=ip, **as_json({"username": "alice@example.com"})
            ),
        ],
        account="alice@example.com",
    ),
    Case(
        "carbonio",
        lambda: carbonio,
        bad=[
            lambda s, ip: s.request(
                "POST",
                "/zx/auth/v2/login",
                ip=ip,
                **as_json(
                    {"auth_method": "password", "user": "alice@example.com", "password": "x"}
                ),
            ),
            lambda s, ip: s.request(
                "POST",
                "/zx/auth/v1/login",
                ip=ip,
                **as_json(
                    {"auth_method": "password", "user": "alice@example.com", "password": "y"}
                ),
            ),
        ],
        good=lambda s, ip: s.request(
            "POST",
            "/zx/auth/v2/login",
            ip=ip,
            **as_json(
                {"auth_method": "password", "user": "alice@example.com", "password": "right"}
            ),
        ),
        good_status=200,
        neutral=[
            lambda s, ip: s.request(
                "POST",
                "/zx/auth/v2/login",
                ip=ip,
                **as_json(
                    {
                        "auth_method": "password",
                        "user": "alice@example.com",
                        "password": "right-needs-otp",
                    }
                ),
            ),
            lambda s, ip: s.request("GET", "/carbonio/", ip=ip),
        ],
        account="alice@example.com",
    ),
    Case(
        "activesync",
        lambda: basic_auth_app(EAS_GOOD, 200),
        bad=[
            lambda s, ip: s.request("POST", EAS, ip=ip, headers=basic("EXAMPLE\\Alice", "x")),
            lambda s, ip: s.request(
                "OPTIONS", "/Microsoft-Server-ActiveSync", ip=ip, headers=basic("alice", "y")
            ),
        ],
        good=lambda s, ip: s.request("POST", EAS, ip=ip, headers=EAS_GOOD),
        good_status=200,
        neutral=[
            lambda s, ip: s.request("POST", EAS, ip=ip),  # the challenge handshake
            lambda s, ip: s.request("OPTIONS", "/Microsoft-Server-ActiveSync", ip=ip),
            lambda s, ip: s.request(
                "GET", "/dav/alice/", ip=ip, headers=basic("alice", "x")
            ),  # not EAS
        ],
        account="alice",
    ),
    Case(
        "dav",
        lambda: basic_auth_app(DAV_GOOD, 207),
        bad=[
            lambda s, ip: s.request(
                "PROPFIND",
                "/dav/alice@example.com/Calendar/",
                ip=ip,
                headers=basic("alice@example.com", "x"),
            ),
            lambda s, ip: s.request(
                "PROPFIND", "/.well-known/caldav", ip=ip, headers=basic("Alice@Example.com", "y")
            ),
        ],
        good=lambda s, ip: s.request(
            "PROPFIND", "/dav/alice@example.com/", ip=ip, headers=DAV_GOOD
        ),
        good_status=207,
        neutral=[
            lambda s, ip: s.request("PROPFIND", "/dav/alice@example.com/", ip=ip),
            lambda s, ip: s.request(
                "GET", "/Microsoft-Server-ActiveSync", ip=ip, headers=basic("alice", "x")
            ),
        ],
        account="alice@example.com",
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=[c.preset for c in CASES])
def test_preset_against_a_fake_app_of_its_shape(kind: str, case: Case) -> None:
    events = Events()
    app = case.app()
    stack = make_stack(kind, app, preset=case.preset, max_failed_logins=3, on_event=events.append)
    for send in case.neutral * 4:
        send(stack, ATTACKER)
    assert events == [], f"{case.preset}: a neutral request was counted"
    assert case.good(stack, ATTACKER).status == case.good_status
    assert events == []
    calls = len(stack.calls)
    for n in range(3):
        case.bad[n % len(case.bad)](stack, ATTACKER)
    assert len(stack.calls) == calls + 3
    if case.preset == "nextcloud":
        assert stack.calls[-1].ip == ATTACKER  # its own throttling answered the third
    assert events.actions() == ["failure"] * 3 + ["blocked"]
    assert {e.get("account") for e in events} == {case.account}
    refused = case.bad[0](stack, ATTACKER)
    assert refused.status == 503 and int(refused.headers["retry-after"]) == 900
    assert len(stack.calls) == calls + 3  # the app was not called
    assert case.good(stack, ATTACKER).status == 503  # the address is blocked, whoever it is
    assert case.good(stack, USER).status == case.good_status  # the account is not
    stack.clock.advance(900)
    getattr(app, "forget", lambda: None)()
    assert case.good(stack, ATTACKER).status == case.good_status


@pytest.mark.parametrize("kind", KINDS)
def test_explicit_keywords_override_the_preset(kind: str) -> None:
    events = Events()
    stack = make_stack(
        kind, roundcube, preset="roundcube", login_paths=["/webmail/"], on_event=events.append
    )
    stack.request("POST", "/?_task=login", **rc_login("alice", "x"))
    assert events == []  # "/" is no longer a login path
    stack.request("POST", "/webmail/?_task=login", **rc_login("alice", "x"))
    assert events.actions() == ["failure"]
    assert stack.policy.login_fields == {"_task": "login"}  # the rest of the preset stays


def test_the_preset_account_field_ignores_decoys_in_other_fields() -> None:
    policy = InvalidLoginPolicy(preset="nextcloud")
    assert policy.account_fields == ("user",)
    policy = InvalidLoginPolicy(preset="roundcube", account_fields=["_user", "email"])
    assert policy.account_fields == ("_user", "email")


def test_every_preset_builds_and_says_what_it_is() -> None:
    assert set(PRESETS) == {c.preset for c in CASES}
    for name, preset in PRESETS.items():
        policy = InvalidLoginPolicy(preset=name)
        assert policy.preset == name and preset.summary
        assert preset_options(name.upper()) == dict(preset.options)
    with pytest.raises(ValueError, match="preset: must be one of"):
        preset_options(None)


@pytest.mark.parametrize(
    ("status", "location", "failed"),
    [
        (303, "https://cloud.example.com/login?user=a&direct=1", True),
        (303, "/index.php/login?user=a", True),
        (303, "/login/", True),
        (303, "https://cloud.example.com/apps/dashboard/", False),
        (302, "/login", False),
        (303, "http://[::1", False),  # an unparsable Location is no evidence
    ],
)
def test_nextcloud_failure(status: int, location: str, failed: bool) -> None:
    assert nextcloud_failure(status, {"location": location}) is failed


@pytest.mark.parametrize(
    ("status", "cookies", "failed"),
    [
        (200, "", True),
        (200, "ZM_TEST=true; Path=/", True),
        (200, "ZM_AUTH_TOKEN=; Expires=Thu, 01 Jan 1970 00:00:00 GMT", True),
        (200, "JSESSIONID=x; Path=/, ZM_AUTH_TOKEN=0_abc; Path=/", False),
        (302, "", False),
        (500, "", False),
    ],
)
def test_zimbra_failure(status: int, cookies: str, failed: bool) -> None:
    assert zimbra_failure(status, {"set-cookie": cookies}) is failed


def test_presets_are_read_only_data() -> None:
    with pytest.raises(TypeError):
        PRESETS["roundcube"].options["login_paths"] = ("/",)  # type: ignore[index]
    options = preset_options("zimbra")
    options["login_paths"] = ("/x",)
    assert PRESETS["zimbra"].options["login_paths"] == ("/", "/zimbra/")
    assert json.dumps(sorted(PRESETS))  # names are plain strings, usable in config files
