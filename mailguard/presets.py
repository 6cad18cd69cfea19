"""Login shapes of real webmail and groupware, for ``InvalidLoginFilter(preset=...)``.

A preset is plain data: the keyword options of
:class:`~mailguard.policies.InvalidLoginPolicy` that describe where an
application takes logins and how it answers a failed one.  Keywords given
explicitly next to ``preset=`` win over the preset's values, so
``InvalidLoginFilter(app, preset="roundcube", login_paths=["/webmail/"])``
is Roundcube's shape at another path.  Limits (``max_failed_logins``,
``block_duration``, ...) are never part of a preset.

===============  =============================================  ==================================
preset           a login attempt is                             a failure is
===============  =============================================  ==================================
``roundcube``    ``POST`` anywhere with ``_action=login`` in    401 (success is a redirect; the
                 the query, the form body *or a cookie*,        login page is a 200)
                 whatever ``_task`` says; PHP's reading of
                 names (``.action`` is ``_action``) and of
                 the value (tags and non-word characters
                 dropped: ``lo gin`` is ``login``)
``sogo``         ``/SOGo/connect`` or ``/SOGo/changePassword``  401 or 403
                 (``POST``, ``PUT``, ``PATCH`` or ``GET``;
                 JSON ``userName``, whatever the type says)
``nextcloud``    ``POST /login``, ``/index.php/login``          a 303 whose ``Location`` leads back
                 (form field ``user``, PHP names); Basic or     to ``/login``; 401; 429
                 Bearer credentials under ``/remote.php/``,     (Nextcloud's own throttling)
                 ``/ocs/``, ``/public.php/``
``zimbra``       ``POST /``, ``/zimbra/`` or                    a 200 HTML page that sets no
                 ``/public/login.jsp`` with ``loginOp=login``;  ``ZM_AUTH_TOKEN`` cookie; a SOAP
                 a SOAP ``AuthRequest`` (XML or JSON, also in   fault (500 or 422 in a SOAP
                 a ``BatchRequest``) to ``/service/soap``;      content type); 401
                 Basic credentials under ``/service/home/``,
                 ``/home/`` (REST)
``carbonio``     ``POST /zx/auth/v1/login``,                    401, a SOAP fault (403 means "a
                 ``/zx/auth/v2/login``, ``.../otp/validate``,   second factor is needed": the
                 ``/service/auth/v2/login``; SOAP and REST as   password was right)
                 ``zimbra``
``django``       ``POST /accounts/login/`` or                   a 200 (the form re-rendered); a
                 ``/admin/login/`` (``django.contrib.auth``     redirect is a success, a 403 (CSRF)
                 ``LoginView``; form field ``username``)        or 401 is no login at all
``activesync``   any request to ``/Microsoft-Server-            401 to a request that carried
                 ActiveSync`` (also under ``/SOGo/``)           credentials (a 401 challenge to one
                 carrying Basic or Bearer credentials           without them is the handshake)
``dav``          any request to ``/dav``, ``/service/dav``,     as ``activesync``
                 ``/.well-known``, ``/principals``,
                 ``/remote.php``, ``/ocs``, ``/SOGo/dav`` or
                 below, with or without the trailing slash,
                 carrying Basic or Bearer credentials
===============  =============================================  ==================================

Each preset says, in a comment beside it, which source of the application it
was read from (repository, file, function).  A body the preset needs to read
and cannot (longer than ``max_body_bytes``, cut short, compressed, JSON that
does not parse) makes the request count as an attempt.

Each preset also names the one form field that holds the account, so an
attacker cannot put a decoy in another field the application never reads.
The response predicates are ordinary functions of ``(status, headers)``
(headers a lower-case name -> value map), usable as ``is_failure=`` alone.
Where a request field alone cannot say whether a request is a login (a
cookie, a SOAP body), a preset brings its own test, ``login_match(request,
fields)`` (:data:`LoginMatch`); an explicit ``login_fields=`` replaces it.

A SOAP fault's code (``account.AUTH_FAILED``) is in the response body, which
the filter does not read: every fault to an ``AuthRequest`` counts, a 500 of
another content type (a proxy's error page) does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from .options import option_error
from .reading import PathRule, RequestFields, php_name
from .request import Request

__all__ = [
    "PRESETS",
    "LoginMatch",
    "Preset",
    "carbonio_failure",
    "carbonio_login",
    "django_failure",
    "nextcloud_failure",
    "preset_options",
    "request_cookies",
    "roundcube_login",
    "soap_auth_request",
    "soap_fault",
    "zimbra_failure",
    "zimbra_login",
]

LoginMatch = Callable[[Request, RequestFields], bool]
"""``login_match(request, fields) -> bool``: a preset's own test that a request
on a login path is a login attempt (True also when it cannot tell)."""

_ZM_AUTH_TOKEN = re.compile(r"(?:^|[\s,;])ZM_AUTH_TOKEN=[^\s;,]")


# ------------------------------------------------------------------ requests
def request_cookies(request: Request, *, php: bool = False) -> dict[str, list[str]]:
    """The cookies of ``request``'s ``Cookie`` header(s), every value kept.

    Pairs end at ``;`` (or ``,``, which joins repeated headers); names lose
    leading spaces, values are URL-decoded (as PHP's
    ``php_default_treat_data`` does for ``$_COOKIE``); with ``php=True``
    names are read as PHP reads them (:func:`mailguard.reading.php_name`).
    Both the first and any later value of a name are kept: the application
    takes one of them, the filter looks at all.
    """
    header = request.header("cookie")
    cookies: dict[str, list[str]] = {}
    if not header:
        return cookies
    for pair in re.split(r"[;,]", header[:16384]):
        name, eq, value = pair.partition("=")
        if not eq:
            continue
        name = name.lstrip(" \t")
        if php:
            name = php_name(name)
        if name:
            cookies.setdefault(name, []).append(unquote_plus(value.strip(" \t")))
    return cookies


# PHP's strip_tags starts a tag at '<' only when no white space follows it
# (ext/standard/string.c php_strip_tags_ex: "< login" stays text)
_TAG = re.compile(r"<(?!\s)[^>]*(?:>|$)")
_NOT_ASCII_WORD = re.compile(r"[^a-z0-9_.-]+")


def _roundcube_word(value: str) -> str:
    # rcube_utils::parse_input_value strips tags (strip_tags), then rcmail::startup
    # keeps only [a-z0-9_.-] (asciiwords, program/lib/Roundcube/bootstrap.php)
    return _NOT_ASCII_WORD.sub("", _TAG.sub("", value).lower())


def roundcube_login(request: Request, fields: RequestFields) -> bool:
    """Roundcube: ``_action`` is ``login`` in the query, the body or a cookie.

    roundcube/roundcubemail ``program/include/rcmail.php`` ``rcmail::startup``
    reads ``_action`` with ``rcube_utils::get_input_string('_action',
    INPUT_GPC)`` (``program/lib/Roundcube/rcube_utils.php``
    ``get_input_value``: GET, then POST, then COOKIE, the later winning) and
    ``rcmail::set_task`` forces the task to ``login`` for anyone not logged
    in, so ``public_html/index.php`` runs a login for every request with
    ``_action=login``, whatever ``_task`` says.
    """
    for source in (fields.query(), request_cookies(request, php=True)):
        if any(_roundcube_word(v) == "login" for v in source.get("_action", ())):
            return True
    if any(_roundcube_word(v) == "login" for v in fields.body().get("_action", ())):
        return True
    return not fields.complete  # the field may lie past what was read


_SOAP_PATHS = PathRule("login_paths", ("/service/soap/",), protective=True)
_AUTH_REQUEST = b"authrequest"
_MAX_JSON_DEPTH = 64


def _keys(doc: Any, depth: int = 0) -> Iterator[str]:
    if depth > _MAX_JSON_DEPTH:
        yield _AUTH_REQUEST.decode()  # deeper than any real request: cannot tell
        return
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield key
            yield from _keys(value, depth + 1)
    elif isinstance(doc, list):
        for value in doc:
            yield from _keys(value, depth + 1)


def soap_auth_request(request: Request, fields: RequestFields) -> bool:
    """A Zimbra/Carbonio SOAP request carrying an ``AuthRequest`` (XML or JSON).

    The SOAP servlet dispatches on the body's element, never on the path
    (``/service/soap`` and ``/service/soap/AuthRequest`` are one endpoint:
    zextras/carbonio-mailbox, forked from zimbra/zm-mailbox,
    ``store/src/main/java/com/zimbra/soap/SoapEngine.java`` ``dispatch``), and
    a ``BatchRequest`` may hold one.  So the body is looked at: a JSON body
    by its keys (escapes decoded), any other by the bytes ``AuthRequest`` in
    any case, NUL bytes ignored (UTF-16 XML).  A body that was not read,
    was cut short, is compressed or is JSON that does not parse counts.
    """
    raw = request.body
    if raw is None:
        return True
    encoding = (request.header("content-encoding") or "").strip().lower()
    if encoding not in ("", "identity"):
        return True
    declared = request.header("content-length")
    if len(raw) >= fields.limit or (
        declared is not None and declared.strip().isdigit() and int(declared) > len(raw)
    ):
        return True
    if raw.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            return True
        return any(k.lower() == "authrequest" for k in _keys(doc))
    return _AUTH_REQUEST in raw.replace(b"\x00", b"").lower()


def zimbra_login(request: Request, fields: RequestFields) -> bool:
    """Zimbra: a SOAP ``AuthRequest``, or the web client's ``loginOp=login``.

    The classic web client's login page (zimbra/zm-web-client
    ``WebRoot/public/login.jsp``, served at ``/`` and ``/zimbra/``) logs in
    when the request parameter ``loginOp`` (query or body, as a servlet's
    ``getParameter`` reads them) is ``login``.
    """
    if _SOAP_PATHS.match(request.path):
        return soap_auth_request(request, fields)
    for source in (fields.query(), fields.body()):
        if any(v.strip().lower() == "login" for v in source.get("loginOp", ())):
            return True
    return not fields.complete


def carbonio_login(request: Request, fields: RequestFields) -> bool:
    """Carbonio: a SOAP ``AuthRequest``, or any POST to the ``/zx/auth`` login paths."""
    if _SOAP_PATHS.match(request.path):
        return soap_auth_request(request, fields)
    return True


# ----------------------------------------------------------------- responses
_SOAP_TYPES = frozenset({"text/xml", "application/soap+xml", "text/javascript"})


def _media(headers: Mapping[str, str]) -> str:
    return re.split(r"[;,\s]", headers.get("content-type", "").strip(), maxsplit=1)[0].lower()


def soap_fault(status: int, headers: Mapping[str, str]) -> bool:
    """A SOAP fault: 500 (Zimbra, Carbonio before 2024) or 422 (Carbonio) in a SOAP type.

    zextras/carbonio-mailbox ``store/src/main/java/com/zimbra/soap/SoapServlet.java``
    ``sendResponse``: a fault is sent with status 422 (500 before commit
    7f47d06, as in zimbra/zm-mailbox) and the protocol's content type
    (``text/xml``, ``application/soap+xml``, JSON as ``text/javascript``;
    ``common/.../Soap11Protocol``, ``Soap12Protocol``, ``SoapJSProtocol``
    ``getContentType``).  A 500 of another type (a proxy's or the servlet
    container's error page) is no fault.  The fault code
    (``account.AUTH_FAILED``) is in the body, which the filter does not read:
    every fault to an ``AuthRequest`` counts (a wrong password, and rarer
    ones such as ``account.CHANGE_PASSWORD``).
    """
    return status in (422, 500) and _media(headers) in _SOAP_TYPES


def nextcloud_failure(status: int, headers: Mapping[str, str]) -> bool:
    """Nextcloud: a failed login is a 303 redirect back to the login form."""
    if status != 303:
        return False
    location = headers.get("location", "")
    try:
        path = urlsplit(location.strip()).path
    except ValueError:
        return False
    return path.rstrip("/").lower().endswith("/login")


def zimbra_failure(status: int, headers: Mapping[str, str]) -> bool:
    """Zimbra: a SOAP fault, or the web client's form re-rendered (200 HTML) without a token.

    A 200 of another type (a SOAP answer, a REST download) is no failure.
    """
    if soap_fault(status, headers):
        return True
    if status != 200 or _media(headers) not in ("", "text/html"):
        return False
    return _ZM_AUTH_TOKEN.search(headers.get("set-cookie", "")) is None


def carbonio_failure(status: int, headers: Mapping[str, str]) -> bool:
    """Carbonio: a SOAP fault to an ``AuthRequest`` (401s are ``failure_statuses``)."""
    return soap_fault(status, headers)


def django_failure(status: int, headers: Mapping[str, str]) -> bool:
    """Django: a POST to ``LoginView`` answered 200 is the login form re-rendered.

    django/django ``django/contrib/auth/views.py``: ``LoginView`` is a
    ``FormView``; ``ProcessFormView.post`` (``django/views/generic/edit.py``)
    calls ``form_invalid`` (``FormMixin.form_invalid``: ``render_to_response``,
    a 200) when ``AuthenticationForm.clean`` (``django/contrib/auth/forms.py``)
    finds no user for the credentials, and ``LoginView.form_valid`` answers a
    success with ``HttpResponseRedirect`` (302).  A POST answered 200 for
    another reason (a field missing) tried no password, but is counted all
    the same: a login form answers nothing else with 200.  A CSRF refusal
    (``django/middleware/csrf.py`` ``CsrfViewMiddleware._reject``, the
    ``csrf_failure`` view of ``django/views/csrf.py``: 403) comes before the
    view and checked no password: not a failure, nor is any other 4xx.
    """
    return status == 200


@dataclass(frozen=True)
class Preset:
    """One application's login shape: keyword options for the login policy."""

    name: str
    summary: str
    options: Mapping[str, Any]


def _preset(name: str, summary: str, **options: Any) -> Preset:
    return Preset(name, summary, MappingProxyType(options))


_FORM = ("POST",)
_ZIMBRA_REST = ("/service/home/", "/home/")  # UserServlet, nginx maps /home to it
_ZIMBRA_SOAP = ("/service/soap/",)

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            # roundcube/roundcubemail (commit 28b4441): public_html/index.php runs
            # the login when task and action are "login"; rcmail::startup and
            # rcmail::set_task (program/include/rcmail.php) make the task "login"
            # for anyone not logged in and read _action from GET, POST or COOKIE
            # (rcube_utils::get_input_value); _user/_pass are POST only, so a
            # password is only ever tried by a POST.  A failure is sent as 401
            # ("Return 401 only on failed logins (#7010)"), success a redirect.
            # PHP reads parameter names its way (php_forms: ".action" is "_action").
            _preset(
                "roundcube",
                "Roundcube: POST with _action=login (query, body or cookie), failure 401",
                login_paths=("*",),
                login_methods=_FORM,
                login_fields=MappingProxyType({"_action": "login"}),
                login_match=roundcube_login,
                account_fields=("_user",),
                failure_statuses=(401,),
                count_basic_auth=False,
                php_forms=True,
            ),
            # Alinto/sogo (commit ee2ebbb): UI/MainUI/SOGoRootPage.m connectAction
            # reads the JSON body (userName, password) whatever the method, and
            # answers a failure with 403 (_responseWithLDAPPolicyError);
            # changePasswordAction checks userName + oldPassword the same way.
            # UI/MainUI/product.plist maps both actions on the root page.  SOGo's
            # DAV (/SOGo/dav, SOGoDAVAuthenticator) and ActiveSync take Basic
            # credentials: use the "dav" and "activesync" presets for those.
            _preset(
                "sogo",
                "SOGo: /SOGo/connect and /SOGo/changePassword (JSON), failure 403",
                login_paths=("/SOGo/connect", "/SOGo/changePassword"),
                login_methods=("POST", "PUT", "PATCH", "GET"),
                login_fields=MappingProxyType({}),
                account_fields=("userName",),
                failure_statuses=(401, 403),
                count_basic_auth=False,
            ),
            # nextcloud/server (read through the search index: the repository is
            # too large to fetch): core/Controller/LoginController.php tryLogin
            # answers a failure with createLoginFailedResponse, a RedirectResponse
            # (303) to core.login.showLoginForm; lib/base.php handleLogin runs
            # for every request from a guest (OC::handleRequest, all of
            # index.php, remote.php, ocs/, public.php) and tries Basic
            # credentials (Session::tryBasicAuthLogin) on each, so Basic or
            # Bearer credentials count wherever they are sent; failures are
            # 401 (Sabre's Auth plugin, OCS's "not logged in", index.php).
            # 429 is Nextcloud's own brute-force throttle.  PHP reads the form.
            _preset(
                "nextcloud",
                "Nextcloud: POST /login (303 back to /login), Basic/Bearer anywhere (401)",
                login_paths=("/login", "/index.php/login"),
                login_methods=_FORM,
                login_fields=MappingProxyType({}),
                account_fields=("user",),
                failure_statuses=(401, 429),
                is_failure=nextcloud_failure,
                count_basic_auth=True,
                auth_paths=("*",),
                php_forms=True,
            ),
            # Zimbra: the web client's login.jsp (loginOp=login, a failure
            # re-renders the page without a ZM_AUTH_TOKEN cookie), the SOAP
            # AuthRequest (com/zimbra/cs/service/account/Auth.java; a wrong
            # password is the fault account.AUTH_FAILED, sent by SoapServlet
            # sendResponse with status 500) and REST Basic auth (UserServlet,
            # 401).  zimbra/zm-mailbox and zm-web-client cannot be fetched here:
            # read in zextras/carbonio-mailbox (commit 0385232), Zimbra's fork,
            # before its 2024 change of the fault status to 422.
            _preset(
                "zimbra",
                "Zimbra: loginOp=login form, SOAP AuthRequest fault, REST Basic 401",
                login_paths=("/", "/zimbra/", "/public/login.jsp", *_ZIMBRA_SOAP),
                login_methods=_FORM,
                login_fields=MappingProxyType({"loginOp": "login"}),
                login_match=zimbra_login,
                account_fields=("username",),
                failure_statuses=(401,),
                is_failure=zimbra_failure,
                count_basic_auth=True,
                auth_paths=_ZIMBRA_REST,
            ),
            # Carbonio: the login page (zextras/carbonio-login-ui
            # src/services/v2-service.js postV2Login, v1-service.js) POSTs JSON
            # {auth_method, user, password} to /zx/auth/v2/login (v1 alike);
            # carbonio-auth itself is not public: 401 on a wrong password, 403
            # when a second factor is needed (the password was right), as its
            # clients read it; /zx/auth/v2/otp/validate takes the second factor.
            # The SOAP AuthRequest and REST Basic auth as in Zimbra
            # (zextras/carbonio-mailbox, commit 0385232: faults are 422).
            _preset(
                "carbonio",
                "Carbonio: POST /zx/auth/v1|v2/login (JSON, 401), SOAP AuthRequest, REST Basic",
                login_paths=(
                    "/zx/auth/v1/login",
                    "/zx/auth/v2/login",
                    "/zx/auth/v2/otp/validate",
                    "/service/auth/v2/login",
                    *_ZIMBRA_SOAP,
                ),
                login_methods=_FORM,
                login_fields=MappingProxyType({}),
                login_match=carbonio_login,
                account_fields=("user",),
                failure_statuses=(401,),
                is_failure=carbonio_failure,
                count_basic_auth=True,
                auth_paths=_ZIMBRA_REST,
            ),
            # django/django (5.2): django/contrib/auth/views.py LoginView, mounted at
            # /accounts/login/ by django.contrib.auth.urls and at /admin/login/ by
            # AdminSite.login (django/contrib/admin/sites.py).  A wrong password is
            # FormMixin.form_invalid's 200 re-render (django_failure), a success
            # LoginView.form_valid's redirect; the CSRF check (CsrfViewMiddleware
            # ._reject, and csrf_protect on LoginView.dispatch) answers 403 before
            # any password is checked, so no status is a failure by itself.  The
            # account is AuthenticationForm's "username" field, whatever the user
            # model's USERNAME_FIELD (django/contrib/auth/forms.py).
            _preset(
                "django",
                "Django LoginView: POST /accounts/login/, /admin/login/; failure a 200 re-render",
                login_paths=("/accounts/login/", "/admin/login/"),
                login_methods=_FORM,
                login_fields=MappingProxyType({}),
                account_fields=("username",),
                failure_statuses=(),
                is_failure=django_failure,
                count_basic_auth=False,
            ),
            # Exchange ActiveSync (Zimbra, Carbonio, Z-Push) and SOGo's
            # /SOGo/Microsoft-Server-ActiveSync: Basic or Bearer on every request.
            _preset(
                "activesync",
                "Exchange ActiveSync: 401 to a request with Basic/Bearer credentials",
                login_paths=(),
                failure_statuses=(401,),
                count_basic_auth=True,
                auth_paths=(
                    "/Microsoft-Server-ActiveSync*",
                    "/SOGo/Microsoft-Server-ActiveSync*",
                ),
            ),
            # CalDAV/CardDAV/WebDAV: Zimbra and Carbonio /dav and /service/dav,
            # SOGo /SOGo/dav (Main/SOGo.m, SOGoDAVAuthenticator), Nextcloud
            # remote.php (dav, webdav, caldav, carddav) and ocs (app passwords),
            # generic /principals and /.well-known; each also without its
            # trailing slash.
            _preset(
                "dav",
                "CalDAV/CardDAV/WebDAV: 401 to a request with Basic/Bearer credentials",
                login_paths=(),
                failure_statuses=(401,),
                count_basic_auth=True,
                auth_paths=(
                    "/dav/",
                    "/service/dav/",
                    "/.well-known/",
                    "/principals/",
                    "/remote.php/",
                    "/ocs/",
                    "/SOGo/dav/",
                ),
            ),
        )
    }
)
"""Every preset by name."""


def preset_options(name: object) -> dict[str, Any]:
    """The options of preset ``name``; a ``ValueError`` naming ``preset`` when unknown."""
    if not isinstance(name, str) or name.lower() not in PRESETS:
        raise option_error("preset", f"must be one of {', '.join(sorted(PRESETS))}, got {name!r}")
    return dict(PRESETS[name.lower()].options)
