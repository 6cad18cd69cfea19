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
``roundcube``    ``POST`` anywhere with ``_task=login`` in the  401 (success is a 302 to
                 query *or* the form body (PHP lets the body     ``?_task=mail``; a ``GET`` of the
                 win, so both are looked at)                      login page is also 401, and is not
                                                                  an attempt)
``sogo``         ``POST /SOGo/connect`` (JSON ``userName``)     401 or 403
``nextcloud``    ``POST /login``, ``/index.php/login``          a 303 whose ``Location`` leads back
                 (form field ``user``)                          to ``/login``; 429 (Nextcloud's own
                                                                throttling)
``zimbra``       ``POST /`` or ``/zimbra/`` with                a 200 that sets no ``ZM_AUTH_TOKEN``
                 ``loginOp=login`` (form field ``username``)    cookie (success: 302 + the cookie)
``carbonio``     ``POST /zx/auth/v1/login``,                    401 (403 means "a second factor is
                 ``/zx/auth/v2/login``, ``/service/auth/v2/``   needed": the password was right)
                 ``login`` (JSON ``user``)
``activesync``   any request to ``/Microsoft-Server-            401 to a request that carried
                 ActiveSync`` carrying Basic or Bearer          credentials (a 401 challenge to one
                 credentials                                    without them is the handshake)
``dav``          any request under ``/dav/``, ``/.well-known/``  as ``activesync``
                 ``/principals/``, ``/remote.php/dav``,
                 ``/remote.php/webdav`` or ``/SOGo/dav/``
                 carrying Basic or Bearer credentials
===============  =============================================  ==================================

Each preset also names the one form field that holds the account, so an
attacker cannot put a decoy in another field the application never reads.
The two response predicates are ordinary functions of ``(status, headers)``
(headers a lower-case name -> value map), usable as ``is_failure=`` alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .options import option_error

__all__ = ["PRESETS", "Preset", "nextcloud_failure", "preset_options", "zimbra_failure"]

_ZM_AUTH_TOKEN = re.compile(r"(?:^|[\s,;])ZM_AUTH_TOKEN=[^\s;,]")


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
    """Zimbra classic: a failed login re-renders the form (200) without a token cookie."""
    if status != 200:
        return False
    return _ZM_AUTH_TOKEN.search(headers.get("set-cookie", "")) is None


@dataclass(frozen=True)
class Preset:
    """One application's login shape: keyword options for the login policy."""

    name: str
    summary: str
    options: Mapping[str, Any]


def _preset(name: str, summary: str, **options: Any) -> Preset:
    return Preset(name, summary, MappingProxyType(options))


_FORM = ("POST",)

PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        p.name: p
        for p in (
            _preset(
                "roundcube",
                "Roundcube >= 1.4: POST ?_task=login, failure 401, success 302",
                login_paths=("*",),
                login_methods=_FORM,
                login_fields=MappingProxyType({"_task": "login"}),
                account_fields=("_user",),
                failure_statuses=(401,),
                count_basic_auth=False,
            ),
            _preset(
                "sogo",
                "SOGo: POST /SOGo/connect (JSON), failure 403",
                login_paths=("/SOGo/connect",),
                login_methods=_FORM,
                login_fields=MappingProxyType({}),
                account_fields=("userName",),
                failure_statuses=(401, 403),
                count_basic_auth=False,
            ),
            _preset(
                "nextcloud",
                "Nextcloud: POST /login, failure 303 back to /login, 429 when throttled",
                login_paths=("/login", "/index.php/login"),
                login_methods=_FORM,
                login_fields=MappingProxyType({}),
                account_fields=("user",),
                failure_statuses=(429,),
                is_failure=nextcloud_failure,
                count_basic_auth=False,
            ),
            _preset(
                "zimbra",
                "Zimbra web client: POST / loginOp=login, failure 200 without ZM_AUTH_TOKEN",
                login_paths=("/", "/zimbra/"),
                login_methods=_FORM,
                login_fields=MappingProxyType({"loginOp": "login"}),
                account_fields=("username",),
                failure_statuses=(),
                is_failure=zimbra_failure,
                count_basic_auth=False,
            ),
            _preset(
                "carbonio",
                "Carbonio: POST /zx/auth/v1|v2/login (JSON), failure 401",
                login_paths=("/zx/auth/v1/login", "/zx/auth/v2/login", "/service/auth/v2/login"),
                login_methods=_FORM,
                login_fields=MappingProxyType({}),
                account_fields=("user",),
                failure_statuses=(401,),
                count_basic_auth=False,
            ),
            _preset(
                "activesync",
                "Exchange ActiveSync: 401 to a request with Basic/Bearer credentials",
                login_paths=(),
                failure_statuses=(401,),
                count_basic_auth=True,
                auth_paths=("/Microsoft-Server-ActiveSync*",),
            ),
            _preset(
                "dav",
                "CalDAV/CardDAV/WebDAV: 401 to a request with Basic/Bearer credentials",
                login_paths=(),
                failure_statuses=(401,),
                count_basic_auth=True,
                auth_paths=(
                    "/dav/*",
                    "/.well-known/*",
                    "/principals/*",
                    "/remote.php/dav*",
                    "/remote.php/webdav*",
                    "/SOGo/dav/*",
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
