"""DeviceJailPolicy: jail a runaway ActiveSync device, not the office it sits in.

The admin's model is Carbonio's mobile anti-DoS filter: a device that sends
more than ``max_requests`` requests within ``time_window`` seconds is jailed
for ``jail_duration`` seconds (Carbonio's defaults, kept here: 150 requests,
30 s, 600 s).  Counting is an exact sliding window
(:func:`mailguard.core.slide`) per *device*, not per address, so one phone
stuck in a sync loop is refused on its own while every other device behind
the same office NAT keeps working.  Requests that carry no device id pass
untouched: :class:`~mailguard.policies.DosPolicy` covers them by address.

A jailed device gets ``status_code`` (503, the status ActiveSync clients back
off on) with ``Retry-After`` set to the whole seconds of jail left (at least
1), and the app is not called.  Requests during the jail neither count nor
extend it; once it ends the device starts again from zero.  One line is
logged per jailing, none per refused request (account and device type are
request text, so they are quoted)::

    mailguard device jailed client=198.51.100.2 device=abc123 account="jdoe"
        command=Sync count=151 seconds=600 reason=rate device_type="iPhone"

(on one line; ``reason`` is ``rate`` or ``identity``, ``command`` ``-`` when
unknown).  When the store cannot answer, the default ``on_store_error="open"``
serves the request: a store outage must not take mail down.

Knowing the device
    In this order, the first that gives a device id wins:

    1. ``device_func(request)``, when given;
    2. on ``paths``: the ``DeviceId`` of the ActiveSync query, in its plain or
       base64 form (:func:`mailguard.activesync.parse_query`; a base64 id is
       keyed as the lowercase hex of its bytes);
    3. on ``header_paths``: the ``X-Device-Id`` header that Carbonio's web and
       mobile clients send, normalised like a plain ``DeviceId`` (ASCII letters
       lowercased, everything but letters and digits dropped, 1 to 32
       characters left).

    Several candidates: a query that repeats ``DeviceId`` with different
    values (``DeviceId=decoy&DeviceId=REAL``: PHP back ends such as Z-Push
    read the last, Java servlets the first), or an ``X-Device-Id`` sent on
    several lines, names every distinct candidate (at most
    :data:`~mailguard.activesync.MAX_DEVICE_IDS`, the first and the last
    always kept).  The request counts once for each candidate and is refused
    when any of them is jailed, so a decoy cannot lead a jailed device out.
    Logs and :class:`Device` name the last one (PHP's).

    A query longer than :data:`~mailguard.activesync.MAX_QUERY_BYTES` (64 KiB)
    on ``paths`` is not parsed; when nothing else names a device, it counts
    against the device ``oversizedquery`` of the client's address (the key
    ``"oversizedquery/<address>"``), so padding the query cannot let a jailed
    device through unidentified and no other device shares that count.

    Paths follow the one path rule of :mod:`mailguard.reading`, matched
    generously (clients vary in case and spelling):
    ``"/Microsoft-Server-ActiveSync"`` is that path in any case, with or
    without a trailing ``/``, and not ``/Microsoft-Server-ActiveSyncX``;
    ``"/eas/"`` is ``/eas`` and everything below it; ``"/eas*"`` a prefix.
    The query is parsed at most once per request and only on ``paths`` (the
    usual plain form by :func:`~mailguard.activesync.quick_fields`, which
    declines anything else for the full parser); any
    other request costs a path compare and, unless ``header_paths=[]``, one
    header lookup: no parsing, no store call.

Knowing the account
    The Basic-auth user of the ``Authorization`` header (broken base64 gives
    none; a user that is not UTF-8 is read as Latin-1), else the ActiveSync
    ``User`` parameter.  Both go through the one account normalizer
    (:func:`mailguard.reading.normalize_account`: NFKC, case-folded, trimmed,
    cut at a NUL, a ``DOMAIN\\`` prefix removed), so ``CORP\\JDoe``,
    ``JDOE`` and ``jdoe`` are one account.  Neither is verified here (the
    filter runs before the login), which is why the account only ever splits
    one device's jail and never joins two devices into one.

Key format
    With ``per_account=True`` (default) a device is jailed per account:
    ``"<device>/<account>"``, e.g. ``"abc123/jdoe"``, so two accounts on one
    phone, or one ``DeviceId`` claimed by two accounts, never share a jail.  The
    device part is ``[a-z0-9]`` only; the account part is percent-encoded
    (UTF-8, everything but letters, digits and ``@ . _ - ~ +`` escaped, ``/``
    and ``%`` included), so the first ``/`` always ends the device id and no
    account can pose as another.  An encoded account longer than 128
    characters is replaced by ``#`` and a 32-digit BLAKE2b hex digest (``#`` is
    never left unescaped, so a digest cannot pass for an account).  A device
    with no known account, and every device under ``per_account=False``, is
    keyed by its device id alone.

Changing identity (optional)
    [MS-ASHTTP] recommends distrusting a device whose ``User-Agent`` or
    ``DeviceType`` keeps changing.  With ``identity_changes=True`` a device
    whose pair changes more than ``max_identity_changes`` times (2) within
    ``identity_window`` seconds (24 h) is jailed for ``identity_jail`` seconds
    (14 h), in the same jail as the rate rule.  Only ActiveSync requests (on
    ``paths``) are watched: requests known by ``X-Device-Id`` alone carry no
    ``DeviceType``.  The pair is remembered as a short digest, never as text.

Admin
    :meth:`~DeviceJailPolicy.jailed_devices` lists the live jails (as
    :class:`~mailguard.core.Block` values, soonest end first),
    :meth:`~DeviceJailPolicy.release_device` lifts one (by key, or by bare
    device id for every account on that device) and
    :meth:`~DeviceJailPolicy.release_all` lifts them all; each has an ``a``
    twin for async code.

A warning: device ids and account names are text the client chose.  Anyone
who learns a device id (and its account name, with ``per_account``) can get
that device jailed by sending requests in its name, exactly as with
Carbonio's own filter; the jail ends by itself and an admin can lift it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..activesync import MAX_DEVICE_IDS, NO_DEVICE, ActiveSyncRequest, parse_query, quick_fields
from ..core import ALLOW, Block, Verdict, retry_after
from ..options import Duration, at_least_a_second, duration, option_error, positive_int, whole
from ..reading import DEFAULT_ACCOUNTS, AccountRule, PathRule
from ..request import Request
from ..stores.base import JAILED, OK, OVER
from .base import Policy, PolicyOptions
from .steps import Steps, arun, call, run

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "DEFAULT_PATHS",
    "Device",
    "DeviceJailPolicy",
    "DeviceOptions",
    "account_key",
    "basic_auth_user",
    "device_key",
    "header_device_id",
    "header_device_ids",
    "normalise_account",
]

DeviceFunc = Callable[[Request], "str | None"]

DEFAULT_PATHS: tuple[str, ...] = ("/Microsoft-Server-ActiveSync/",)
"""Where ActiveSync requests arrive."""

_MAX_HEADER_CHARS = 1024  # longer X-Device-Id / Authorization values are ignored
_MAX_HEADER_ID = 32  # like a plain DeviceId
_MAX_FUNC_ID = 64  # device_func may return a hex digest
_MAX_ACCOUNT_KEY = 128  # longer encoded accounts are hashed
_ACCOUNT_SAFE = "@+"  # kept as-is besides letters, digits and "_.-~"
_PLAIN_ACCOUNT = re.compile(rf"[A-Za-z0-9@+_.~-]{{1,{_MAX_ACCOUNT_KEY}}}", re.ASCII)
_QUOTED = frozenset({"account", "device_type"})
OVERSIZED_QUERY = "oversizedquery"
"""The device id a query too long to parse counts against (with the address)."""

_UPPER = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALNUM = frozenset(_UPPER + _UPPER.lower() + b"0123456789")
_NOT_ALNUM = bytes(b for b in range(256) if b not in _ALNUM)
_TO_LOWER = bytes.maketrans(_UPPER, _UPPER.lower())

_log = logging.getLogger("mailguard.device")

_SEEN_MAX = 2048
"""Devices a filter remembers by (query, Authorization header digest): a device
asking again with the same query is found with one dict lookup.  When full,
the memory starts over (a flood of fresh queries costs one ``clear`` per
this many).  Exact: only a device found from the query alone is remembered,
never one named by ``device_func``, the ``X-Device-Id`` header or the
address (an over-long query)."""
_SEEN_CHARS = 1024  # longest query + Authorization header remembered (bounds the memory)
_QUICK_MAX = 2048
"""Keys a filter remembers by query, for requests without an ``Authorization``
header whose query :func:`~mailguard.activesync.quick_fields` reads (at most
:data:`~mailguard.activesync.QUICK_MAX_CHARS` characters, so at most this many
entries of one query and one key each).  When full, the memory starts over.
Exact: the key is what :meth:`DeviceJailPolicy.identify` would give."""
_DIGESTS_MAX = 2048  # identity digests remembered (see identity_of), likewise
_DIGEST_CHARS = 1024  # longest (DeviceType, User-Agent) pair remembered
_UNREAD: Any = object()  # the Authorization header, not read yet
_digests: dict[str, str] = {}  # (DeviceType, User-Agent) pair -> its digest (identity_of)


_SEAL = os.urandom(32)


def _sealed(header: str) -> bytes:
    """A keyed digest of an Authorization header (the memory's key, not the header)."""
    return hashlib.blake2b(
        header.encode("utf-8", "surrogatepass"), digest_size=16, key=_SEAL
    ).digest()


def _digest(pair: str) -> str:
    """The identity digest of a (DeviceType, User-Agent) pair (see identity_of)."""
    return hashlib.blake2b(pair.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


# ------------------------------------------------------------------ identity
def _normalise_id(text: str, longest: int) -> str | None:
    """ASCII letters lowercased, all but letters and digits dropped, 1..longest left."""
    key = text.encode("latin-1", "ignore").translate(_TO_LOWER, _NOT_ALNUM)
    if 0 < len(key) <= longest:
        return key.decode("ascii")
    return None


def header_device_id(value: str | None) -> str | None:
    """The device id of an ``X-Device-Id`` header value, or None.

    Normalised like a plain ``DeviceId``.  Several header lines (joined by
    commas) must all give the same id, or there is none
    (:func:`header_device_ids` gives every candidate; the policy counts each).
    """
    found = header_device_ids(value)
    return found[0] if len(found) == 1 else None


def header_device_ids(value: str | None) -> tuple[str, ...]:
    """Every distinct device id of an ``X-Device-Id`` header value (lines joined
    by commas), in order; the first and the last are always kept, at most
    :data:`~mailguard.activesync.MAX_DEVICE_IDS`."""
    if not value or len(value) > _MAX_HEADER_CHARS:
        return ()
    if "," not in value:
        one = _normalise_id(value, _MAX_HEADER_ID)
        return () if one is None else (one,)
    ids = [i for i in (_normalise_id(p, _MAX_HEADER_ID) for p in value.split(",")) if i]
    distinct = list(dict.fromkeys(ids))
    if len(distinct) <= MAX_DEVICE_IDS:
        return tuple(distinct)
    head = [d for d in distinct if d != ids[-1]][: MAX_DEVICE_IDS - 1]
    return (*head, ids[-1])


def normalise_account(name: str | None) -> str | None:
    """``CORP\\JDoe`` -> ``jdoe``: :func:`mailguard.reading.normalize_account`."""
    return DEFAULT_ACCOUNTS.normalize(name)


def basic_auth_user(value: str | None) -> str | None:
    """The normalised user of an ``Authorization: Basic`` header, or None.

    :meth:`mailguard.reading.AccountRule.authorization` with the default rule:
    anything broken (another scheme, bad base64, no ``:``, an over-long
    header) gives None; a user that is not UTF-8 is read as Latin-1; this
    never raises.
    """
    return DEFAULT_ACCOUNTS.authorization(value)


def account_key(account: str) -> str:
    """The account part of a device key: percent-encoded, or hashed when long."""
    if _PLAIN_ACCOUNT.fullmatch(account):
        return account  # nothing to escape: the common case
    encoded = quote(account, safe=_ACCOUNT_SAFE, errors="surrogatepass")
    if len(encoded) <= _MAX_ACCOUNT_KEY:
        return encoded
    digest = hashlib.blake2b(account.encode("utf-8", "surrogatepass"), digest_size=16)
    return "#" + digest.hexdigest()


def _plain_rule(accounts: AccountRule) -> bool:
    """``accounts`` normalises a plain ASCII account (``_PLAIN_ACCOUNT``) by lowercasing it."""
    return type(accounts) is AccountRule and accounts.default_domain is None


def device_key(device_id: str, account: str | None) -> str:
    """``"<device>"`` or ``"<device>/<encoded account>"`` (see the module docs)."""
    if account is None:
        return device_id
    return f"{device_id}/{account_key(account)}"


@dataclass(frozen=True, slots=True)
class Device:
    """The device a request came from, as :meth:`DeviceJailPolicy.identify` found it.

    :ivar key: what the jail counts by (see the module docs).
    :ivar device_id: the normalised device id, ``[a-z0-9]``.
    :ivar account: the normalised account, or None (not looked up when
        ``per_account`` is off).
    :ivar source: ``"func"``, ``"query"`` or ``"header"``.
    :ivar activesync: what the query said (:data:`~mailguard.activesync.NO_DEVICE`
        off ``paths``).
    :ivar on_paths: the request came on one of ``paths``.
    :ivar keys: every key the request counts against (``key`` first): more
        than one when the request names several candidate ids.
    """

    key: str
    device_id: str
    account: str | None
    source: str
    activesync: ActiveSyncRequest
    on_paths: bool
    keys: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.keys:
            object.__setattr__(self, "keys", (self.key,))


# -------------------------------------------------------------------- policy
class DeviceOptions(PolicyOptions, total=False):
    """The keywords of :class:`DeviceJailPolicy` (and of the ``DeviceJail`` adapters)."""

    max_requests: int
    time_window: Duration
    jail_duration: Duration
    paths: Iterable[str]
    header_paths: Iterable[str] | None
    per_account: bool
    device_func: DeviceFunc | None
    identity_changes: bool
    max_identity_changes: int
    identity_window: Duration
    identity_jail: Duration
    default_domain: str | None
    enforce: bool


class DeviceJailPolicy(Policy):
    """Per-device request cap with a jail.  Options as in :class:`Policy`, plus:

    :param max_requests: requests one device may send within ``time_window``
        (default 150, at most 1,000,000); the next one jails it.
    :param time_window: the sliding window, in seconds (default 30; at least 1).
    :param jail_duration: how long a jail lasts, in seconds (default 600; at
        least 1).
    :param paths: where ActiveSync requests arrive and their query is read
        (default ``["/Microsoft-Server-ActiveSync/"]``: the endpoint and the paths below it), as
        :class:`~mailguard.reading.PathRule` reads them (generously: any
        case; end an entry with ``/`` to take everything below it too).
    :param header_paths: where an ``X-Device-Id`` header identifies a device:
        None (default) for every path, a list of paths to narrow it (as
        ``paths``), ``[]`` to ignore the header.  On ``paths`` the query's
        ``DeviceId`` wins.
    :param per_account: jail a device per account (default True); the key
        is then ``"<device>/<account>"``.
    :param device_func: a callable taking the
        :class:`~mailguard.request.Request` and returning a device id or None;
        asked first, on every request.  Its answer is normalised like a plain
        ``DeviceId`` but may be up to 64 characters; None, or nothing left
        after normalising, falls back to the query and the header.  If it
        raises, the error is logged and the fallbacks are used.
    :param identity_changes: turn on the identity rule (default False).
    :param max_identity_changes: changes of ``User-Agent`` or ``DeviceType``
        allowed within ``identity_window`` (default 2); the next one jails.
    :param identity_window: seconds the changes are counted over (default
        86400, 24 h).
    :param identity_jail: seconds an identity jail lasts (default 50400, 14 h).
    :param default_domain: when set, an account without ``@`` gets
        ``@<default_domain>``, so ``jdoe`` and ``jdoe@example.com`` are one
        account in a device's key (default None).
    :param enforce: refuse jailed devices (default True); False is the
        monitor (report-only) mode: requests are counted and jails recorded
        in the store as usual, but logged as ``would-jail`` with
        ``mode=monitor``, and nothing is ever refused.

    Durations also accept strings such as ``"30s"``, ``"10m"`` or ``"14h"``.
    """

    kind = "device"

    # The attributes a request reads, in slots: CPython 3.11 keeps up to 29
    # attributes of an instance inline, in an array its specialised reads
    # index; past that (a DeviceJailPolicy had 31) every read is a dict
    # lookup.  The others stay in the instance's dict, inline again.
    __slots__ = (
        "_header_anywhere",
        "_paths",
        "_quick",
        "any_safe",
        "device_func",
        "identity_changes",
        "jail_duration",
        "max_requests",
        "namespace",
        "per_account",
        "store",
        "time_window",
    )

    accounts: AccountRule = DEFAULT_ACCOUNTS
    """How account names are normalised (:class:`~mailguard.reading.AccountRule`)."""

    def __init__(
        self,
        *,
        max_requests: int = 150,
        time_window: Duration = 30.0,
        jail_duration: Duration = 600.0,
        paths: Iterable[str] = DEFAULT_PATHS,
        header_paths: Iterable[str] | None = None,
        per_account: bool = True,
        device_func: DeviceFunc | None = None,
        identity_changes: bool = False,
        max_identity_changes: int = 2,
        identity_window: Duration = 86400.0,
        identity_jail: Duration = 50400.0,
        default_domain: str | None = None,
        enforce: bool = True,
        **options: Unpack[PolicyOptions],
    ) -> None:
        super().__init__(**options)
        if not isinstance(enforce, bool):
            raise option_error("enforce", f"must be True or False, got {enforce!r}")
        self.enforce = enforce
        if default_domain is not None:
            self.accounts = AccountRule(
                strip_domain=self.accounts.strip_domain, default_domain=default_domain
            )
        self.max_requests = whole("max_requests", max_requests, low=1, high=1_000_000)
        self.time_window = at_least_a_second("time_window", time_window)
        self.jail_duration = at_least_a_second("jail_duration", jail_duration)
        self._paths = PathRule("paths", paths, protective=True)
        self.paths = self._paths.entries
        self._header_paths = PathRule(
            "header_paths", () if header_paths is None else header_paths, protective=True
        )
        self.header_paths = None if header_paths is None else self._header_paths.entries
        if not isinstance(per_account, bool):
            raise option_error("per_account", f"must be True or False, got {per_account!r}")
        self.per_account = per_account
        if device_func is not None and not callable(device_func):
            raise option_error("device_func", f"must be callable, got {device_func!r}")
        self.device_func = device_func
        if not isinstance(identity_changes, bool):
            raise option_error(
                "identity_changes", f"must be True or False, got {identity_changes!r}"
            )
        self.identity_changes = identity_changes
        self.max_identity_changes = positive_int("max_identity_changes", max_identity_changes)
        self.identity_window = duration("identity_window", identity_window)
        self.identity_jail = duration("identity_jail", identity_jail)
        if not self.paths and self.header_paths == () and device_func is None:
            raise option_error(
                "paths",
                "is empty while header_paths is [] and there is no device_func,"
                " so no request could ever name a device",
            )
        self._header_anywhere = self.header_paths is None
        self._ident_ns = self.namespace + "_ident"
        self._changes_ns = self.namespace + "_changes"
        self._seen: dict[tuple[str, bytes | None], Device] = {}  # see _SEEN_MAX
        # query (and sealed Authorization header) -> key, see _QUICK_MAX
        self._quick: dict[str | tuple[str, bytes], str] = {}

    # ---------------------------------------------------------------- rules
    def identify(self, request: Request) -> Device | None:
        """The device this request counts against, or None to let it pass untouched."""
        path = request.path
        on_paths = self._paths.match(path)
        by_header = self._header_anywhere or self._header_paths.match(path)
        if not (on_paths or by_header or self.device_func is not None):
            return None  # the cheap path: not ActiveSync, no header to read
        if self.any_safe and self.is_safe(request.client):
            return None
        if not on_paths or self.device_func is not None:
            if self.device_func is None and not request.header("x-device-id"):
                # _find's answer, without its steps: off ActiveSync's paths
                # only the header names a device, and there is none (a GET of
                # a web page under protect())
                return None
            return self._find(request, on_paths, by_header, _UNREAD)
        # An ActiveSync request: its device follows from the query and the
        # Authorization header alone whenever the query names one, so a
        # device that asks again (a phone syncing, or in a loop) is found
        # with one lookup (see _SEEN_MAX).
        query = request.query
        per_account = self.per_account
        auth = request.header("authorization") if per_account else None
        seen = self._seen
        # The header may carry a password (Basic): it is remembered only as a
        # digest keyed by this process's secret, useless outside of it.
        key = (query, None if auth is None else _sealed(auth))
        device = seen.get(key)
        if device is None:
            device = self._find(request, on_paths, by_header, auth, query)
            if (
                device is not None
                and device.source == "query"
                and len(query) + (0 if auth is None else len(auth)) <= _SEEN_CHARS
            ):
                if len(seen) >= _SEEN_MAX:
                    seen.clear()
                seen[key] = device
        return device

    def quick_key(self, request: Request) -> str | None:
        """The one key of the common ActiveSync request, or None for :meth:`identify`.

        The common request: on ``paths``, no ``device_func`` and no
        ``identity_changes``, not from a safe address, an ``Authorization``
        header of at most 1,024 characters if any, and a query that
        :func:`~mailguard.activesync.quick_fields` reads and that names one
        device.  Its key is then exactly ``identify(request).key`` (and its
        only key), found without a :class:`Device`; a query asked again with
        the same header is found with one lookup (see ``_QUICK_MAX``).  Any
        other request gives None, and :meth:`identify` decides.
        """
        if (
            self.device_func is not None
            or self.identity_changes  # every ActiveSync request is watched: _decide's flow
            or not self._paths.match(request.path)
        ):
            return None
        if self.any_safe and self.is_safe(request.client):
            return None
        per_account = self.per_account
        auth = request.header("authorization") if per_account else None
        query = request.query
        # A phone sends its Authorization header with every request: such a
        # request is remembered by the query and the header's sealed digest
        # (as identify's memory is: never the header, which may hold a password).
        memo: str | tuple[str, bytes]
        if auth is None:
            memo = query
        elif len(auth) > _SEEN_CHARS:
            return None
        else:
            memo = (query, _sealed(auth))
        quick = self._quick
        key = quick.get(memo)
        if key is not None:
            return key
        fields = quick_fields(query)
        if fields is None:
            return None
        device_id, user = fields[0], fields[1]
        if device_id is None:
            return None  # no device in the query: the header or nothing decides
        account = None if auth is None else self.accounts.authorization(auth)
        if account:  # the Basic user wins over the query's (as _find's "or")
            key = device_key(device_id, account)
        elif not per_account or user is None:
            key = device_id  # no account: the device alone
        elif _PLAIN_ACCOUNT.fullmatch(user) and _plain_rule(self.accounts):
            # letters, digits and "@+_.~-": normalize_account lowercases it and
            # nothing else, and account_key keeps it as it is
            key = f"{device_id}/{user.lower()}"
        else:
            key = device_key(device_id, self.accounts.normalize(user))
        if len(quick) >= _QUICK_MAX:
            quick.clear()
        quick[memo] = key  # (quick_fields reads only queries of QUICK_MAX_CHARS at most)
        return key

    def _find(
        self,
        request: Request,
        on_paths: bool,
        by_header: bool,
        auth: str | None,
        query: str | None = None,
    ) -> Device | None:
        """:meth:`identify` past its first checks, without its memory.
        ``auth`` is the ``Authorization`` header, or ``_UNREAD`` to read it
        here when needed; ``query`` the query, read here when None."""
        if query is None and on_paths:
            query = request.query
        parsed = NO_DEVICE if query is None else parse_query(query)
        ids: tuple[str, ...] = ()
        source = "func"
        if self.device_func is not None:
            custom = self._custom(request)
            ids = () if custom is None else (custom,)
        if not ids and parsed.device_ids:
            ids, source = parsed.device_ids, "query"
        if not ids and by_header:
            ids, source = header_device_ids(request.header("x-device-id")), "header"
        if not ids and parsed.too_long:
            # too long to parse: count it by address rather than let it pass unidentified
            key = device_key(OVERSIZED_QUERY, request.client.key)
            return Device(key, OVERSIZED_QUERY, None, "oversized", parsed, on_paths)
        if not ids:
            return None
        if not self.per_account:
            account = None
        elif auth is _UNREAD:
            account = self.account_of(request, parsed)
        else:
            accounts = self.accounts
            account = accounts.authorization(auth) or accounts.normalize(parsed.user)
        device_id = ids[-1]  # the one PHP back ends read
        keys = tuple(device_key(i, account) for i in (device_id, *ids[:-1]))
        return Device(keys[0], device_id, account, source, parsed, on_paths, keys)

    def _custom(self, request: Request) -> str | None:
        assert self.device_func is not None
        try:
            found = self.device_func(request)
        except Exception:
            _log.exception("mailguard device device_func failed")
            return None
        if not isinstance(found, str) or len(found) > _MAX_HEADER_CHARS:
            return None
        return _normalise_id(found, _MAX_FUNC_ID)

    def account_of(self, request: Request, parsed: ActiveSyncRequest) -> str | None:
        """The Basic-auth user, else the ActiveSync ``User``, normalised."""
        accounts = self.accounts
        return accounts.authorization(request.header("authorization")) or accounts.normalize(
            parsed.user
        )

    def watches_identity(self, device: Device) -> bool:
        return self.identity_changes and device.on_paths

    @staticmethod
    def identity_of(request: Request, device: Device) -> str:
        """A short digest of the device's (DeviceType, User-Agent) pair."""
        pair = f"{device.activesync.device_type or ''}\n{request.header('user-agent') or ''}"
        found = _digests.get(pair)
        if found is None:
            found = _digest(pair)
            if len(pair) <= _DIGEST_CHARS:
                if len(_digests) >= _DIGESTS_MAX:
                    _digests.clear()
                _digests[pair] = found
        return found

    def judge(self, request: Request, device: Device, code: int, wait: float) -> Verdict:
        """Turn the answer of the rate rule into a verdict."""
        if code == OK:
            return ALLOW
        if code == JAILED:
            self.report_jail(request, device, "rate", self.max_requests + 1, self.jail_duration)
            if not self.enforce:
                return ALLOW
            return Verdict(False, "rate", device.key, retry_after=retry_after(self.jail_duration))
        if not self.enforce:
            return ALLOW  # monitor mode: a recorded jail refuses nothing
        return Verdict(False, "jailed", device.key, retry_after=retry_after(wait))

    def identity_jailed(self, request: Request, device: Device) -> Verdict:
        """The verdict (and the log line) when the identity rule jails a device."""
        self.report_jail(
            request, device, "identity", self.max_identity_changes + 1, self.identity_jail
        )
        if not self.enforce:
            return ALLOW
        return Verdict(False, "identity", device.key, retry_after=retry_after(self.identity_jail))

    def report_jail(
        self, request: Request, device: Device, reason: str, count: int, seconds: float
    ) -> None:
        account = device.account
        if account is None and not self.per_account:
            account = self.account_of(request, device.activesync)
        monitor: dict[str, Any] = {} if self.enforce else {"mode": "monitor"}
        self.emit(
            "jailed" if self.enforce else "would-jail",
            request.client.key,
            quoted=_QUOTED,
            device=device.device_id,
            account=account or "",
            command=device.activesync.command or "-",
            count=count,
            seconds=seconds,
            reason=reason,
            device_type=device.activesync.device_type or "",
            **monitor,
        )

    # ---------------------------------------------------------------- faces
    def check(self, request: Request) -> Verdict:
        device: Device | None = None
        key = self.quick_key(request)
        if key is None:
            device = self.identify(request)
            if device is None:
                return ALLOW
            if len(device.keys) != 1 or self.watches_identity(device):
                return run(self._decide(request, device), self.store)
            key = device.key
        # _decide's one store call, made here: no flow to drive, and no detail
        # wanted unless the answer refuses (then the store gives the wait)
        code, _, wait = self.store.hit(
            self.namespace, key, self.max_requests, self.time_window, self.jail_duration, False
        )
        if code == OK:
            return ALLOW
        return self.judge(request, device or self._device_of(request, key), code, wait)

    async def acheck(self, request: Request) -> Verdict:
        device: Device | None = None
        key = self.quick_key(request)
        if key is None:
            device = self.identify(request)
            if device is None:
                return ALLOW
            if len(device.keys) != 1 or self.watches_identity(device):
                return await arun(self._decide(request, device), self.store)
            key = device.key
        code, _, wait = await self.store.ahit(
            self.namespace, key, self.max_requests, self.time_window, self.jail_duration, False
        )
        if code == OK:
            return ALLOW
        return self.judge(request, device or self._device_of(request, key), code, wait)

    def _device_of(self, request: Request, key: str) -> Device:
        """The Device of a request :meth:`quick_key` named by ``key`` (a refusal's
        log line and verdict need it): :meth:`identify`'s, which names the same key."""
        device = self.identify(request)
        if device is not None and device.key == key:
            return device
        # unreachable while quick_key is exact (the tests pin it); never fail open
        return Device(key, key.partition("/")[0], None, "query", NO_DEVICE, True)

    def _decide(self, request: Request, device: Device) -> Steps[Verdict]:
        """The store's part of ``check``: the rate rule, then the identity rule."""
        code, _, wait = yield call(
            "hit",
            self.namespace,
            device.key,
            self.max_requests,
            self.time_window,
            self.jail_duration,
        )
        for other in device.keys[1:]:  # every candidate counts; any jailed one refuses
            more, _, more_wait = yield call(
                "hit", self.namespace, other, self.max_requests, self.time_window,
                self.jail_duration,
            )  # fmt: skip
            if code == OK and more != OK:
                code, wait = more, more_wait
                device = replace(device, key=other, device_id=other.partition("/")[0])
        if code != OK or not self.watches_identity(device):
            return self.judge(request, device, code, wait)
        value = self.identity_of(request, device)
        previous = yield call("swap", self._ident_ns, device.key, value, self.identity_window)
        if previous is None or previous == value:
            return ALLOW
        code, _, _ = yield call(
            "hit",
            self._changes_ns,
            device.key,
            self.max_identity_changes,
            self.identity_window,
            self.identity_jail,
        )
        # OVER with a jail asked for: the store had no room left for this
        # namespace's blocks (see MemoryStore's block share); still a jail
        if code != JAILED and code != OVER:
            return ALLOW
        yield call("block", self.namespace, device.key, self.identity_jail, "identity")
        return self.identity_jailed(request, device)

    # ---------------------------------------------------------------- admin
    def jailed_devices(self) -> list[Block]:
        """Every live jail of this filter, soonest end first."""
        return self.store.blocks(self.namespace)

    def release_device(self, device: str) -> int:
        """Lift the jail of ``device``; return how many jails were lifted.

        ``device`` is a key as :meth:`jailed_devices` lists it
        (``"abc123/jdoe"``), or a bare device id (``"ABC123"``, normalised)
        to release that device under every account.
        """
        return run(self._release(device), self.store)

    def release_all(self) -> int:
        """Lift every jail of this filter; return how many were lifted."""
        return run(self._release_all(), self.store)

    async def ajailed_devices(self) -> list[Block]:
        return await self.store.ablocks(self.namespace)

    async def arelease_device(self, device: str) -> int:
        return await arun(self._release(device), self.store)

    async def arelease_all(self) -> int:
        return await arun(self._release_all(), self.store)

    def _release(self, device: str) -> Steps[int]:
        """The store's part of ``release_device``."""
        keys = _exact_key(device)
        if keys is None:
            jails = yield call("blocks", self.namespace)
            changes = yield call("blocks", self._changes_ns)
            keys = _keys_of(device, jails + changes)
        lifted = 0
        for key in keys:
            lifted += yield call("unblock", key, self.namespace)
            yield call("unblock", key, self._changes_ns)
        return lifted

    def _release_all(self) -> Steps[int]:
        """The store's part of ``release_all``."""
        yield call("unblock_all", self._changes_ns)
        lifted: int = yield call("unblock_all", self.namespace)
        return lifted

    # ------------------------------------------------------------ responses
    def explain(self, verdict: Verdict) -> str:
        if verdict.reason == "identity":
            return "this device changed its identity too often and is jailed."
        if verdict.reason == "rate":
            return "this device sent too many requests and is jailed."
        if verdict.reason == "jailed":
            return "this device is jailed for a while."
        return super().explain(verdict)


def _exact_key(device: object) -> list[str] | None:
    """``[device]`` for a full key, None for a bare device id (checked)."""
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"device: must be a device id or a key, got {device!r}")
    return [device] if "/" in device else None


def _keys_of(device: str, blocks: list[Block]) -> list[str]:
    """The keys of ``blocks`` that belong to the bare device id ``device``."""
    wanted = _normalise_id(device, _MAX_FUNC_ID)
    if wanted is None:
        return []
    below = wanted + "/"
    return sorted({b.key for b in blocks if b.key == wanted or b.key.startswith(below)})
