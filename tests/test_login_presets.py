"""Login presets against small fake apps shaped like the real webmail.

Each case gives a fake app of one shape, requests that fail a login, one
that succeeds, and requests that must never count (the login page, a bare
401 challenge, a second-factor prompt, ...).  Every case runs on ASGI and
WSGI (see ``test_login.py`` for the harness).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

import pytest
from flask.testing import FlaskClient
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
    urlencoded,
)
from test_login import (
    make_stack as _make_stack,
)

from mailguard.identity import Client
from mailguard.policies.login import InvalidLoginPolicy
from mailguard.presets import (
    PRESETS,
    carbonio_failure,
    django_failure,
    nextcloud_failure,
    preset_options,
    request_cookies,
    roundcube_login,
    soap_auth_request,
    soap_fault,
    zimbra_failure,
)
from mailguard.reading import RequestFields
from mailguard.request import AsgiRequest

Send = Callable[[Stack, str], Any]  # (stack, ip) -> response


class _HeaderCookies(FlaskClient):
    """Werkzeug's test client replaces a ``Cookie`` header with its jar: keep it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["use_cookies"] = False
        super().__init__(*args, **kwargs)


def make_stack(kind: str, logic: Callable[[FakeRequest], Reply], **options: Any) -> Stack:
    stack = _make_stack(kind, logic, **options)
    if kind == "wsgi":
        stack.app.test_client_class = _HeaderCookies
    return stack


def RecordedRequest(method: str, path: str, headers: dict[str, str], body: bytes) -> AsgiRequest:
    """A request as the filter sees it, its body buffered."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [(k.encode(), v.encode("latin-1")) for k, v in headers.items()],
    }
    req = AsgiRequest(scope, Client(ATTACKER, ATTACKER, True))
    req.body = body
    return req


# ---------------------------------------------------------------- fake apps
def php_params(text: str) -> dict[str, str]:
    """Parameters as PHP registers them: ``.`` and spaces in names become ``_``."""
    out: dict[str, str] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        out[name.lstrip(" ").replace(".", "_").replace(" ", "_")] = value
    return out


def php_cookies(req: FakeRequest) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in req.headers.get("cookie", "").split(";"):
        name, _, value = pair.partition("=")
        name = name.strip().replace(".", "_").replace(" ", "_")
        if name and name not in out:
            out[name] = unquote_plus(value.strip())
    return out


def roundcube(req: FakeRequest) -> Reply:
    """Roundcube (public_html/index.php): a login runs whenever _action is "login".

    ``_action`` comes from GET, then POST, then COOKIE (the later wins), tags
    stripped and cut to ``[a-z0-9_.-]``; ``_task`` is forced to "login" for
    anyone not logged in; ``_user``/``_pass`` are read from POST only.
    """
    get = php_params(req.query)
    ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
    post = php_params(req.body.decode()) if req.method == "POST" and "urlencoded" in ctype else {}
    action = php_cookies(req).get("_action", post.get("_action", get.get("_action", "")))
    action = re.sub(r"[^a-z0-9_.-]+", "", re.sub(r"<[^>]*>", "", action), flags=re.I)
    if action == "login":
        if post.get("_user") == "alice" and post.get("_pass") == "right":
            return 302, [("location", "./?_task=mail&_mbox=INBOX")], b""
        return 401, [], b"<html>Login failed</html>"
    return 200, [], b"<html>login form</html>"


def sogo(req: FakeRequest) -> Reply:
    """SOGoRootPage.m: connect and changePassword read a JSON body whatever its type."""
    try:
        doc = json.loads(req.body or b"{}")
    except ValueError:
        doc = {}
    if req.path == "/SOGo/connect":
        if doc.get("userName") == "alice" and doc.get("password") == "right":
            return 200, [("set-cookie", "0xHIGHFLYxSOGo=basic%20abc; path=/SOGo/")], b"{}"
        return 403, [("content-type", "application/json")], b'{"LDAPPasswordPolicyError": 0}'
    if req.path == "/SOGo/changePassword":
        if doc.get("userName") == "alice" and doc.get("oldPassword") == "right":
            return 200, [], b"{}"
        return 403, [("content-type", "application/json")], b'{"LDAPPasswordPolicyError": 0}'
    if req.path.startswith("/SOGo/so/"):
        return 403, [], b"not logged in"  # not a login path: never counted
    return 200, [], b"<html>SOGo</html>"


NC_BASIC = basic("alice", "right")


class Nextcloud:
    """Nextcloud: 303 back to /login on failure; its own 429 after two from one address;
    Basic credentials on remote.php and ocs, 401 when wrong."""

    def __init__(self) -> None:
        self.failures: dict[str, int] = {}

    def __call__(self, req: FakeRequest) -> Reply:
        if req.path in ("/login", "/index.php/login") and req.method == "POST":
            if self.failures.get(req.ip, 0) >= 2:
                return 429, [], b"Too many requests"
            form = php_params(req.body.decode())
            if form.get("user") == "alice" and form.get("password") == "right":
                return 303, [("location", "https://cloud.example.com/apps/dashboard/")], b""
            self.failures[req.ip] = self.failures.get(req.ip, 0) + 1
            return 303, [("location", f"https://cloud.example.com{req.path}?user=x&direct=1")], b""
        if req.path.startswith(("/remote.php/", "/ocs/")):
            if req.headers.get("authorization") == NC_BASIC["authorization"]:
                return 207, [], b""
            return 401, [("www-authenticate", 'Basic realm="Nextcloud"')], b""
        return 200, [], b"<html>login form</html>"

    def forget(self) -> None:
        """Time passes: Nextcloud's own throttling decays."""
        self.failures.clear()


ZM_GOOD = basic("alice@example.com", "right")


def soap_body(req: FakeRequest) -> tuple[str, str, str] | None:
    """(kind, account, password) of a SOAP AuthRequest, or None for another request."""
    text = req.body.decode("utf-8", "replace")
    if text.lstrip().startswith("{"):
        doc = json.loads(text)
        body = doc.get("Body", {})
        auth = body.get("AuthRequest") or body.get("BatchRequest", {}).get("AuthRequest")
        if auth is None:
            return None
        return "js", auth["account"]["_content"], auth["password"]["_content"]
    found = re.search(r"<AuthRequest.*?<account[^>]*>([^<]*)</account>.*?<password>([^<]*)<", text)
    if found is None:
        return None
    return "xml", found.group(1), found.group(2)


def soap_fault_reply(kind: str, code: str, status: int) -> Reply:
    ctype = "text/javascript; charset=utf-8" if kind == "js" else "text/xml; charset=utf-8"
    return status, [("content-type", ctype)], f"<soap:Fault>{code}</soap:Fault>".encode()


def zimbra_app(fault_status: int) -> Callable[[FakeRequest], Reply]:
    """Zimbra (fault 500) or Carbonio (fault 422): web login, SOAP, REST Basic."""

    def app(req: FakeRequest) -> Reply:
        if req.path.startswith("/service/soap") and req.method == "POST":
            auth = soap_body(req)
            kind = "js" if req.body.lstrip().startswith(b"{") else "xml"
            if auth is None:
                return soap_fault_reply(kind, "service.AUTH_REQUIRED", fault_status)
            kind, account, password = auth
            if account == "alice@example.com" and password == "right":
                ctype = "text/javascript" if kind == "js" else "text/xml"
                return 200, [("content-type", ctype)], b"<AuthResponse/>"
            return soap_fault_reply(kind, "account.AUTH_FAILED", fault_status)
        if req.path.startswith(("/home/", "/service/home/")):
            if req.headers.get("authorization") == ZM_GOOD["authorization"]:
                return 200, [("content-type", "text/calendar")], b"BEGIN:VCALENDAR"
            return 401, [("www-authenticate", 'Basic realm="Zimbra"')], b""
        if req.path in ("/zx/auth/v1/login", "/zx/auth/v2/login") and req.method == "POST":
            form = req.form()
            if form.get("user") == "alice@example.com":
                if form.get("password") == "right":
                    return 200, [("set-cookie", "ZM_AUTH_TOKEN=0_abc; Path=/")], b"{}"
                if form.get("password") == "right-needs-otp":
                    return 403, [], b'{"2FA": true}'  # the password was right
            return 401, [], b"Credentials are not valid"
        if (
            req.path in ("/", "/zimbra/")
            and req.method == "POST"
            and req.param("loginOp") == "login"
        ):
            if req.param("username") == "alice@example.com" and req.param("password") == "right":
                return (
                    302,
                    [("location", "/"), ("set-cookie", "ZM_AUTH_TOKEN=0_abc; Path=/")],
                    b"",
                )
            return (
                200,
                [("content-type", "text/html"), ("set-cookie", "ZM_TEST=true; Path=/")],
                b"<html>The username or password is incorrect.</html>",
            )
        return (
            200,
            [
                ("content-type", "text/html"),
                ("set-cookie", "ZM_AUTH_TOKEN=; Expires=Thu, 01 Jan 1970 00:00:00 GMT"),
            ],
            b"<html>Zimbra</html>",
        )

    return app


def basic_auth_app(good: dict[str, str], ok_status: int) -> Callable[[FakeRequest], Reply]:
    def app(req: FakeRequest) -> Reply:
        if req.headers.get("authorization") == good["authorization"]:
            return ok_status, [], b""
        return 401, [("www-authenticate", 'Basic realm="Zimbra"')], b""

    return app


DJANGO_CSRF = "csrftoken=T0KEN"


def django(req: FakeRequest) -> Reply:
    """django.contrib.auth's LoginView behind CsrfViewMiddleware.

    A POST without the CSRF cookie and token is refused (403) before the view;
    a wrong password (or a missing field) re-renders the form with 200; the
    right one redirects (302).  Other views answer 403 to anyone not logged in.
    """
    html = [("content-type", "text/html; charset=utf-8")]
    if req.path not in ("/accounts/login/", "/admin/login/"):
        return 403, html, b"<h1>403 Forbidden</h1>"
    if req.method != "POST":
        return 200, html, b"<form>...</form>"
    form = req.form()
    if DJANGO_CSRF not in req.headers.get("cookie", "") or (
        form.get("csrfmiddlewaretoken") != "T0KEN"
    ):
        return 403, html, b"<h1>Forbidden <span>(403)</span></h1><p>CSRF verification failed."
    if form.get("username") == "alice" and form.get("password") == "right":
        return 302, [("location", "/accounts/profile/")], b""
    return 200, html, b"<p>Please enter a correct username and password.</p><form>...</form>"


def django_login(path: str = "/accounts/login/", csrf: bool = True, **fields: str) -> Send:
    data = {"csrfmiddlewaretoken": "T0KEN", **fields} if csrf else fields
    sent = urlencoded(data)
    if csrf:
        sent["headers"]["cookie"] = DJANGO_CSRF
    return lambda s, ip: s.request("POST", path, ip=ip, **sent)


# -------------------------------------------------------------------- cases
@dataclass
class Case:
    preset: str
    app: Callable[[], Callable[[FakeRequest], Reply]]
    bad: list[Send]  # cycled through; each must reach the app and fail
    good: Send
    good_status: int
    neutral: list[Send]  # never counted, whatever they answer
    account: str  # the account of the first three bad shapes


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


def form(text: str, **headers: str) -> dict[str, Any]:
    return {
        "headers": {"content-type": "application/x-www-form-urlencoded", **headers},
        "body": text.encode(),
    }


def soap_xml(account: str, password: str, *, batch: bool = False) -> dict[str, Any]:
    auth = (
        '<AuthRequest xmlns="urn:zimbraAccount">'
        f'<account by="name">{account}</account><password>{password}</password></AuthRequest>'
    )
    if batch:
        auth = f'<BatchRequest xmlns="urn:zimbra">{auth}</BatchRequest>'
    envelope = (
        '<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">'
        f"<soap:Header/><soap:Body>{auth}</soap:Body></soap:Envelope>"
    )
    return {"headers": {"content-type": "application/soap+xml"}, "body": envelope.encode()}


def soap_json(account: str, password: str, *, escaped: bool = False) -> dict[str, Any]:
    doc = {
        "Header": {"context": {"_jsns": "urn:zimbra"}},
        "Body": {
            "AuthRequest": {
                "_jsns": "urn:zimbraAccount",
                "account": {"by": "name", "_content": account},
                "password": {"_content": password},
            }
        },
    }
    raw = json.dumps(doc)
    if escaped:  # the same key, spelled with a JSON escape
        raw = raw.replace('"AuthRequest"', '"\\u0041uthRequest"')
    return {"headers": {"content-type": "text/plain;charset=UTF-8"}, "body": raw.encode()}


def soap_other(kind: str) -> dict[str, Any]:
    if kind == "json":
        raw = b'{"Body": {"GetInfoRequest": {"_jsns": "urn:zimbraAccount"}}}'
        return {"headers": {"content-type": "application/json"}, "body": raw}
    raw = b'<soap:Envelope><soap:Body><GetInfoRequest xmlns="urn:zimbraAccount"/></soap:Body>'
    return {"headers": {"content-type": "text/xml"}, "body": raw + b"</soap:Envelope>"}


def zimbra_form(user: str, password: str) -> dict[str, Any]:
    return urlencoded(
        {
            "loginOp": "login",
            "username": user,
            "password": password,
            "client": "preferred",
            "login_csrf": "c",
        }
    )


def zx_login(password: str, user: str = "alice@example.com") -> dict[str, Any]:
    return as_json({"auth_method": "password", "user": user, "password": password})


def pass_only(password: str) -> str:
    return f"_token=t&_pass={password}"


EAS = "/Microsoft-Server-ActiveSync?Cmd=Sync&User=alice&DeviceId=ABC123&DeviceType=iPhone"
EAS_GOOD = basic("EXAMPLE\\Alice", "right")
DAV_GOOD = basic("alice@example.com", "right")
DAV_BAD = basic("Alice@Example.com", "x")


def dav(method: str, path: str) -> Send:
    return lambda s, ip: s.request(method, path, ip=ip, headers=DAV_BAD)


CASES = [
    Case(
        "roundcube",
        lambda: roundcube,
        bad=[
            lambda s, ip: s.request("POST", "/?_task=login", ip=ip, **rc_login("Alice", "x")),
            # _task does not matter: Roundcube forces it to "login" for a stranger
            lambda s, ip: s.request("POST", "/?_task=mail", ip=ip, **rc_login("alice", "x")),
            lambda s, ip: s.request(
                "POST", "/?_action=login&_user=alice", ip=ip, **form("_user=alice&_pass=y")
            ),
            lambda s, ip: s.request(
                "POST", "/roundcube/?_task=login", ip=ip, **rc_login("alice", "y")
            ),
            # PHP reads ".task" and ".action" as "_task" and "_action"
            lambda s, ip: s.request(
                "POST", "/", ip=ip, **form(".task=login&.action=login&_user=alice&_pass=z")
            ),
            # _action in a cookie (rcube_utils::get_input_value, INPUT_GPC)
            lambda s, ip: s.request(
                "POST", "/", ip=ip, **form("_user=alice&_pass=z", cookie="x=1; _action=login")
            ),
            lambda s, ip: s.request(
                "POST", "/", ip=ip, **form("_user=alice&_pass=z", cookie=" .action=login")
            ),
            # asciiwords() and strip_tags() make all of these "login"
            lambda s, ip: s.request(
                "POST", "/", ip=ip, **form("_action=lo%20gin&" + pass_only("z"))
            ),
            lambda s, ip: s.request(
                "POST", "/", ip=ip, **form("_action=%3Cb%3Elogin&" + pass_only("z"))
            ),
            lambda s, ip: s.request("POST", "/?_action=log%00in", ip=ip, **form(pass_only("z"))),
            # the body's type is cut as PHP cuts it
            lambda s, ip: s.request(
                "POST",
                "/",
                ip=ip,
                headers={"content-type": "application/x-www-form-urlencoded,text/plain"},
                body=b"_action=login&_user=alice&_pass=z",
            ),
        ],
        good=lambda s, ip: s.request("POST", "/?_task=login", ip=ip, **rc_login("alice", "right")),
        good_status=302,
        neutral=[
            lambda s, ip: s.request("GET", "/?_task=login", ip=ip),  # the login page
            lambda s, ip: s.request("GET", "/?_task=login&_action=login", ip=ip),  # no _pass
            lambda s, ip: s.request("GET", "/", ip=ip),
            lambda s, ip: s.request(
                "POST", "/?_task=mail&_action=refresh", ip=ip, **urlencoded({"_remote": "1"})
            ),
            lambda s, ip: s.request(
                "POST", "/?_task=login", ip=ip, **form("_action=logout&_user=alice")
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
            ),
            # SOGo reads the body as JSON whatever its type says
            lambda s, ip: s.request(
                "POST",
                "/SOGo/connect",
                ip=ip,
                headers={"content-type": "text/plain"},
                body=b'{"userName": "alice", "password": "y"}',
            ),
            lambda s, ip: s.request(
                "POST",
                "/SOGo/changePassword",
                ip=ip,
                **as_json({"userName": "alice", "oldPassword": "x", "newPassword": "n"}),
            ),
            lambda s, ip: s.request(
                "PUT", "/SOGo/connect", ip=ip, **as_json({"userName": "alice", "password": "z"})
            ),
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
                "POST", "/login", ip=ip, **form("user=alice&password=x&requesttoken=t")
            ),
            lambda s, ip: s.request(
                "POST", "/index.php/login", ip=ip, **form("user=alice&password=y&requesttoken=t")
            ),
            lambda s, ip: s.request(
                "PROPFIND", "/remote.php/dav/files/alice/", ip=ip, headers=basic("alice", "x")
            ),
            lambda s, ip: s.request(
                "PROPFIND", "/remote.php/caldav/", ip=ip, headers=basic("alice", "x")
            ),
            lambda s, ip: s.request(
                "PROPFIND", "/remote.php/carddav/", ip=ip, headers=basic("alice", "x")
            ),
            lambda s, ip: s.request(
                "PROPFIND", "/remote.php/webdav", ip=ip, headers=basic("alice", "x")
            ),
            lambda s, ip: s.request(
                "GET", "/ocs/v2.php/cloud/user?format=json", ip=ip, headers=basic("alice", "x")
            ),
            lambda s, ip: s.request(
                "GET", "/ocs/v1.php/cloud/capabilities", ip=ip, headers=basic("alice", "x")
            ),
        ],
        good=lambda s, ip: s.request(
            "POST", "/login", ip=ip, **form("user=alice&password=right&requesttoken=t")
        ),
        good_status=303,
        neutral=[
            lambda s, ip: s.request("GET", "/login", ip=ip),
            lambda s, ip: s.request(
                "POST", "/apps/files/upload", ip=ip, **urlencoded({"user": "alice"})
            ),
            lambda s, ip: s.request("PROPFIND", "/remote.php/dav/", ip=ip),  # the challenge
            lambda s, ip: s.request("PROPFIND", "/remote.php/dav/", ip=ip, headers=NC_BASIC),
        ],
        account="alice",
    ),
    Case(
        "zimbra",
        lambda: zimbra_app(500),
        bad=[
            lambda s, ip: s.request("POST", "/", ip=ip, **zimbra_form("alice@example.com", "x")),
            lambda s, ip: s.request(
                "POST",
                "/zimbra/",
                ip=ip,
                **urlencoded(
                    {"loginOp": "login", "username": "ALICE@example.com", "password": "y"}
                ),
            ),
            lambda s, ip: s.request(
                "GET", "/home/alice@example.com/Calendar?fmt=ics", ip=ip, headers=DAV_BAD
            ),
            lambda s, ip: s.request(
                "POST", "/service/soap/AuthRequest", ip=ip, **soap_xml("alice@example.com", "x")
            ),
            lambda s, ip: s.request(
                "POST", "/service/soap", ip=ip, **soap_json("alice@example.com", "x")
            ),
            lambda s, ip: s.request(
                "POST",
                "/service/soap/GetInfoRequest",  # the path says nothing
                ip=ip,
                **soap_json("alice@example.com", "x", escaped=True),
            ),
            lambda s, ip: s.request(
                "POST", "/service/soap/", ip=ip, **soap_xml("alice@example.com", "x", batch=True)
            ),
            lambda s, ip: s.request(
                "GET", "/service/home/~/inbox?fmt=json", ip=ip, headers=DAV_BAD
            ),
        ],
        good=lambda s, ip: s.request(
            "POST", "/", ip=ip, **zimbra_form("alice@example.com", "right")
        ),
        good_status=302,
        neutral=[
            lambda s, ip: s.request("GET", "/", ip=ip),  # the login page: 200 without a token
            lambda s, ip: s.request("POST", "/", ip=ip, **urlencoded({"loginOp": "logout"})),
            lambda s, ip: s.request("POST", "/service/soap", ip=ip, **soap_other("json")),
            lambda s, ip: s.request("POST", "/service/soap/", ip=ip, **soap_other("xml")),
            lambda s, ip: s.request(
                "POST", "/service/soap", ip=ip, **soap_json("alice@example.com", "right")
            ),
            lambda s, ip: s.request(
                "GET", "/home/alice@example.com/Calendar?fmt=ics", ip=ip, headers=ZM_GOOD
            ),
            lambda s, ip: s.request("GET", "/home/alice@example.com/Calendar", ip=ip),
        ],
        account="alice@example.com",
    ),
    Case(
        "carbonio",
        lambda: zimbra_app(422),
        bad=[
            lambda s, ip: s.request("POST", "/zx/auth/v2/login", ip=ip, **zx_login("x")),
            lambda s, ip: s.request("POST", "/zx/auth/v1/login", ip=ip, **zx_login("y")),
            lambda s, ip: s.request(
                "GET", "/service/home/~/Contacts?fmt=vcf", ip=ip, headers=DAV_BAD
            ),
            lambda s, ip: s.request(
                "POST", "/service/soap/AuthRequest", ip=ip, **soap_json("alice@example.com", "x")
            ),
            lambda s, ip: s.request(
                "POST", "/service/soap", ip=ip, **soap_xml("alice@example.com", "x")
            ),
        ],
        good=lambda s, ip: s.request("POST", "/zx/auth/v2/login", ip=ip, **zx_login("right")),
        good_status=200,
        neutral=[
            lambda s, ip: s.request(
                "POST", "/zx/auth/v2/login", ip=ip, **zx_login("right-needs-otp")
            ),
            lambda s, ip: s.request("GET", "/carbonio/", ip=ip),
            lambda s, ip: s.request("POST", "/service/soap", ip=ip, **soap_other("json")),
            lambda s, ip: s.request(
                "POST", "/service/soap", ip=ip, **soap_xml("alice@example.com", "right")
            ),
        ],
        account="alice@example.com",
    ),
    Case(
        "django",
        lambda: django,
        bad=[
            django_login(username="alice", password="x"),
            django_login("/admin/login/?next=/admin/", username="alice", password="y"),
            django_login(username="alice"),  # no password: a 200 all the same
        ],
        good=django_login(username="alice", password="right"),
        good_status=302,
        neutral=[
            django_login(csrf=False, username="alice", password="x"),  # CSRF 403 before the view
            django_login("/accounts/login/?csrf=1", csrf=False, username="alice", password="right"),
            lambda s, ip: s.request("GET", "/accounts/login/", ip=ip),
            django_login("/inbox/", username="alice", password="x"),  # a 403 elsewhere
            lambda s, ip: s.request("POST", "/admin/", ip=ip, **urlencoded({"username": "a"})),
        ],
        account="alice",
    ),
    Case(
        "activesync",
        lambda: basic_auth_app(EAS_GOOD, 200),
        bad=[
            lambda s, ip: s.request("POST", EAS, ip=ip, headers=basic("EXAMPLE\\Alice", "x")),
            lambda s, ip: s.request(
                "OPTIONS", "/Microsoft-Server-ActiveSync", ip=ip, headers=basic("alice", "y")
            ),
            lambda s, ip: s.request("POST", "/SOGo" + EAS, ip=ip, headers=basic("alice", "y")),
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
            dav("PROPFIND", "/dav/alice@example.com/Calendar/"),
            dav("PROPFIND", "/.well-known/caldav"),
            dav("PROPFIND", "/SOGo/dav"),
            dav("PROPFIND", "/SOGo/dav/alice/Calendar/"),
            dav("PROPFIND", "/dav"),
            dav("PROPFIND", "/principals"),
            dav("PROPFIND", "/principals/users/alice/"),
            dav("PROPFIND", "/remote.php/dav/calendars/alice/"),
            dav("PROPFIND", "/remote.php/caldav/"),
            dav("PROPFIND", "/remote.php/carddav/"),
            dav("PROPFIND", "/remote.php/webdav/"),
            dav("GET", "/ocs/v2.php/cloud/user"),
            dav("PROPFIND", "/service/dav/home/alice@example.com/"),
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
            lambda s, ip: s.request("GET", "/davx", ip=ip, headers=basic("alice", "x")),
        ],
        account="alice@example.com",
    ),
]

SHAPES = [(c, i) for c in CASES for i in range(len(c.bad))]


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
@pytest.mark.parametrize(("case", "shape"), SHAPES, ids=[f"{c.preset}-{i}" for c, i in SHAPES])
def test_a_brute_force_through_each_shape_is_blocked(kind: str, case: Case, shape: int) -> None:
    events = Events()
    app = case.app()
    stack = make_stack(kind, app, preset=case.preset, max_failed_logins=3, on_event=events.append)
    send = case.bad[shape]
    for _ in range(3):
        assert send(stack, ATTACKER).status != 503
    assert len(stack.calls) == 3
    assert events.actions() == ["failure"] * 3 + ["blocked"]
    refused = send(stack, ATTACKER)
    assert refused.status == 503 and len(stack.calls) == 3  # the app was not called
    assert case.good(stack, USER).status == case.good_status


@pytest.mark.parametrize("kind", KINDS)
def test_explicit_keywords_override_the_preset(kind: str) -> None:
    events = Events()
    stack = make_stack(
        kind, roundcube, preset="roundcube", login_paths=["/webmail/"], on_event=events.append
    )
    stack.request("POST", "/?_task=login", **rc_login("alice", "x"))
    assert events == []  # "/" is no longer a login path
    stack.request("POST", "/webmail/", **form("_user=alice&_pass=x", cookie="_action=login"))
    assert events.actions() == ["failure"]  # the rest of the preset stays: cookies too
    assert stack.policy.login_fields == {"_action": "login"}
    assert stack.policy.login_match is roundcube_login


@pytest.mark.parametrize("kind", KINDS)
def test_explicit_login_fields_replace_the_preset_test(kind: str) -> None:
    events = Events()
    stack = make_stack(
        kind, roundcube, preset="roundcube", login_fields={"_task": "login"}, on_event=events.append
    )
    assert stack.policy.login_match is None
    stack.request("POST", "/", **form("_user=alice&_pass=x", cookie="_action=login"))
    assert events == []  # no _task=login: not a login under the explicit rule
    stack.request("POST", "/?_task=login", **rc_login("alice", "x"))
    assert events.actions() == ["failure"]


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


def test_django_failure_is_the_form_re_rendered() -> None:
    html = {"content-type": "text/html; charset=utf-8"}
    assert django_failure(200, html)
    for status in (302, 303, 400, 401, 403, 405, 429, 500):
        assert not django_failure(status, html)
    policy = InvalidLoginPolicy(preset="django")
    assert policy.failure_statuses == frozenset() and policy.account_fields == ("username",)
    moved = InvalidLoginPolicy(preset="django", login_paths=["/login/"])
    assert moved.login_paths.match("/login/") and not moved.login_paths.match("/accounts/login/")
    assert moved.is_failure is django_failure


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


@pytest.mark.parametrize(
    ("status", "ctype", "failed"),
    [
        (500, "text/xml; charset=utf-8", True),  # Zimbra's SOAP fault
        (500, "application/soap+xml; charset=utf-8", True),
        (500, "text/javascript; charset=utf-8", True),  # a JSON SOAP fault
        (422, "text/javascript; charset=utf-8", True),  # Carbonio's
        (500, "text/html", False),  # a proxy's or Jetty's error page
        (502, "text/xml", False),
        (500, "", False),
        (200, "text/xml", False),  # an AuthResponse
        (200, "text/javascript", False),
    ],
)
def test_soap_fault(status: int, ctype: str, failed: bool) -> None:
    headers = {"content-type": ctype} if ctype else {}
    assert soap_fault(status, headers) is failed
    assert carbonio_failure(status, headers) is failed
    assert zimbra_failure(status, headers) is (failed or (status == 200 and not ctype))


def test_zimbra_failure_ignores_a_rest_answer_without_a_token() -> None:
    assert zimbra_failure(200, {"content-type": "text/calendar"}) is False
    assert zimbra_failure(200, {"content-type": "text/html;charset=UTF-8"}) is True


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", ["zimbra", "carbonio"])
def test_other_500s_to_an_auth_request_are_not_failures(kind: str, preset: str) -> None:
    events = Events()

    def broken(req: FakeRequest) -> Reply:
        return 500, [("content-type", "text/html")], b"<html>Internal Server Error</html>"

    stack = make_stack(kind, broken, preset=preset, max_failed_logins=3, on_event=events.append)
    for _ in range(5):
        stack.request("POST", "/service/soap", **soap_xml("alice@example.com", "x"))
    assert events == [] and len(stack.calls) == 5


@pytest.mark.parametrize("kind", KINDS)
def test_a_padded_soap_request_counts_as_an_attempt(kind: str) -> None:
    events = Events()
    stack = make_stack(
        kind, zimbra_app(500), preset="zimbra", max_failed_logins=3, on_event=events.append
    )
    padded = soap_xml("alice@example.com", "x")
    padded["body"] = padded["body"].replace(
        b"<soap:Header/>", b"<soap:Header>" + b" " * 20000 + b"</soap:Header>"
    )
    for _ in range(3):
        assert stack.request("POST", "/service/soap", **padded).status == 500
    assert events.actions() == ["failure"] * 3 + ["blocked"]


def test_soap_auth_request_reads_the_body_not_the_path() -> None:
    policy = InvalidLoginPolicy(preset="zimbra")

    def request(body: bytes, **headers: str) -> AsgiRequest:
        headers.setdefault("content-length", str(len(body)))
        return RecordedRequest("POST", "/service/soap/AuthRequest", headers, body)

    fields = RequestFields
    cases: list[tuple[bytes, dict[str, str], bool]] = [
        (soap_other("xml")["body"], {"content-type": "text/xml"}, False),
        (soap_other("json")["body"], {"content-type": "application/json"}, False),
        (soap_json("a", "b", escaped=True)["body"], {}, True),
        ("<AuthRequest/>".encode("utf-16"), {"content-type": "text/xml"}, True),
        (b'{"Body": {"AuthRequest": ', {"content-type": "application/json"}, True),
        (b"x", {"content-encoding": "gzip"}, True),
        (b'{"a":' * 100 + b"1" + b"}" * 100, {}, True),  # deeper than any real request
    ]
    for body, headers, counted in cases:
        req = request(body, **headers)
        assert soap_auth_request(req, fields(req, policy.max_body_bytes)) is counted, body[:40]
    assert policy.attempt_of(request(soap_other("xml")["body"])) is None


def test_request_cookies_read_as_php_does() -> None:
    req = RecordedRequest("GET", "/", {"cookie": " a.b=1; c=x%20y;bad; a_b=2;  d=+"}, b"")
    assert request_cookies(req) == {"a.b": ["1"], "c": ["x y"], "a_b": ["2"], "d": [" "]}
    assert request_cookies(req, php=True)["a_b"] == ["1", "2"]
    assert request_cookies(RecordedRequest("GET", "/", {}, b"")) == {}


def test_presets_are_read_only_data() -> None:
    with pytest.raises(TypeError):
        PRESETS["roundcube"].options["login_paths"] = ("/",)  # type: ignore[index]
    options = preset_options("zimbra")
    options["login_paths"] = ("/x",)
    assert PRESETS["zimbra"].options["login_paths"][:2] == ("/", "/zimbra/")
    assert json.dumps(sorted(PRESETS))  # names are plain strings, usable in config files
