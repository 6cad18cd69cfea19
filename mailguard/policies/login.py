"""InvalidLoginPolicy: block the guessing address, never the account.

The admin's model is Zimbra/Carbonio's invalid-login filter
(``zimbraInvalidLoginFilterMaxFailedLogin``,
``zimbraInvalidLoginFilterDelayInMinBetwnReqBeforeReinstating``,
``zimbraInvalidLoginFilterReinstateIpTaskIntervalInMin``): an address that
fails ``max_failed_logins`` logins in a row, each failure within
``failure_interval`` seconds of the previous one, is blocked for
``block_duration`` seconds and then let back in.  A longer pause starts the
count over (:func:`mailguard.core.streak`).  The address is blocked, not the
account, so the real user keeps access from everywhere else.  Unlike Zimbra,
the block starts *at* the ``max_failed_logins``-th failure (Zimbra waits for
one more) and ends exactly ``block_duration`` seconds later (Zimbra's sweep
adds up to five minutes).

The application is not changed: the filter learns the outcome of each login
from the response.

Login attempts
    A request whose method is in ``login_methods`` to a path in
    ``login_paths`` whose parameters match ``login_fields`` (each named field
    has the given value in the query string *or* the form body: both are
    looked at, because applications disagree on which one wins).  With
    ``count_basic_auth=True``, also any request under ``auth_paths`` that
    carries HTTP ``Basic`` or ``Bearer`` credentials (ActiveSync, DAV).

    Paths follow the one path rule of :mod:`mailguard.reading`, matched
    generously (these options switch protection on): ``"/login"`` is exactly
    that path in any case and spelling (``/Login/``, ``//login``,
    ``/login;jsessionid=1``), ``"/zimbra/"`` that path and everything below
    it, ``"/dav*"`` a prefix, ``"*"`` every path; ``"/"`` is the root only.

    A preset may bring its own test instead of ``login_fields``
    (``login_match``, :data:`mailguard.presets.LoginMatch`), where a field
    alone cannot say: Roundcube also reads ``_action`` from a cookie, Zimbra
    a SOAP ``AuthRequest`` from the body.

    Fields are read from the query and from an urlencoded, multipart (CRLF or
    bare LF) or JSON body (JSON also when sent as ``text/plain``): see
    :func:`mailguard.reading.body_fields`.  When ``login_fields`` cannot be
    decided because the reader cannot tell (the body was longer than
    ``max_body_bytes``, a multipart form never closed, JSON did not parse),
    the request is counted as an attempt: padding or garbling a login must
    not dodge the filter.

Failures
    The response to an attempt is a failure when

    1. it carries the ``result_header`` (default ``X-Login-Result``) saying
       ``fail`` (or ``ok``, which makes it a success whatever the status);
       the header is removed before the response leaves;
    2. otherwise, its status is in ``failure_statuses``, or
       ``is_failure(status, headers)`` returns true (``headers`` maps
       lower-case names to values).

    A 401 that carries ``WWW-Authenticate`` in answer to a request with no
    ``Authorization`` header and no account field is the normal challenge
    handshake, never a failure.  Any other status below 400 is a success; 5xx
    and the like are neither.

Concurrency
    Attempts are counted when they start (:meth:`~mailguard.stores.Store.
    attempt`): the current streak plus the attempts under way must stay below
    ``max_failed_logins``, so a burst of parallel guesses cannot slip past the
    limit.  A refused attempt gets ``status_code`` (503) with ``Retry-After``.
    The outcome releases the slot (:meth:`~mailguard.stores.Store.settle`),
    as does a connection that ends first, and ``attempt_timeout`` for a
    response that never starts.  An attempt begins only once its body has
    arrived in full (:meth:`InvalidLoginPolicy.waits_for_body`), so a client
    that holds back the end of its bodies holds no slot, and its passwords
    are not checked until the bodies end: then they compete for the slots.
    Long-polling protocols (ActiveSync ``Ping``) hold their slot until the
    response starts or ``attempt_timeout`` passes; many devices behind one
    NAT address can therefore be told to retry: list such addresses in
    ``safe_ips`` or raise ``max_failed_logins`` for those presets.

Blocks
    A blocked address gets ``status_code`` (default 503) with
    ``Retry-After`` = the seconds left, and the app is not called.  Refused
    attempts do not extend the block.  ``block_scope="login"`` (default)
    refuses only login attempts, so other people behind the same NAT can
    still read their mail; ``"all"`` refuses every request of a blocked
    address, as Zimbra does (one extra store lookup per request).
    An IPv6 client's failures also extend the streaks of its wider networks
    (``ipv6_wider``: its /56 and /48, at 4x and 16x ``max_failed_logins`` by
    default); a block on any of them refuses the whole network.
    ``repeat_factor`` > 1 multiplies each new block of an address that was
    blocked within the last ``offender_memory`` seconds, up to
    ``max_block_duration``.

Password spraying
    The account is read from the ``account_fields`` of the body or query, else
    from ``Basic`` credentials, and normalised by the one account normalizer
    (:func:`mailguard.reading.normalize_account`: NFKC, case-folded, trimmed,
    cut at a NUL, a ``DOMAIN\\`` prefix removed), so ``Victim``,
    ``victim\\0`` and the same in full-width letters are one account.  At most
    ``max_body_bytes`` are buffered, and the app still receives every byte
    unchanged.  With ``account_tarpit=(M, D)``, once one account has seen
    ``M`` failures from any addresses within ``failure_interval``, each
    further attempt for that account is held ``D`` seconds before it reaches
    the app: slowed, never locked out.  An attempt whose account cannot be
    told (two different account values, or a body cut short before any
    account field) is held too.  At most ``max_delayed`` attempts are held
    at once, so the tarpit cannot tie up every worker.  When that many are
    already held, a further attempt is

    * let through at once when its address has no failure streak and no
      other login under way (a user logging in, or the first guess of an
      address new to this filter): the real user is slowed at most ``D``
      seconds and never refused, however many addresses spray the account;
    * otherwise refused with ``Retry-After`` = ``D`` (an address already
      guessing waits its turn).

    So a spray from many addresses is held to ``max_delayed`` attempts per
    ``D`` seconds, plus one attempt per address whose slate is clean, which
    is what any per-address limit grants an attacker with many addresses.

Logs (logger ``mailguard.login``, WARNING; format in :mod:`mailguard.events`)::

    mailguard login failure client=203.0.113.7 account="jdoe" streak=3/5
    mailguard login blocked client=203.0.113.7 account="jdoe" seconds=1500 failures=5
    mailguard login refused client=203.0.113.7 seconds=1423
    mailguard login tarpit client=198.51.100.9 account="jdoe" failures=20 delay=2

``refused`` is logged for the first refusal of a blocked address, not for
every one; ``tarpit`` when an account reaches ``M`` failures.

The store: ``on_store_error`` keeps the base default ``"open"``: while the
store is down logins are served unguarded, because the application still
checks every password, while ``"closed"`` would lock every user out of mail
for the length of the outage.  Choose ``"closed"`` or ``"memory"`` when
guessing during an outage worries you more.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core import ALLOW, Block, Verdict, retry_after
from ..identity import Client
from ..options import (
    Duration,
    at_least_a_second,
    duration,
    option_error,
    positive_int,
    strings,
    whole,
)
from ..presets import LoginMatch, preset_options
from ..reading import (
    DEFAULT_ACCOUNTS,
    AccountRule,
    PathRule,
    RequestFields,
    normalize_account,
    plain_form_values,
)
from ..request import Request
from ..stores.base import BLOCKED, JAILED, OK
from ..stores.guard import StoreDown
from .base import Policy, PolicyOptions, wider_limit
from .steps import Steps, arun, call, run

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = [
    "InvalidLoginPolicy",
    "LoginOptions",
    "LoginVerdict",
    "Outcome",
    "basic_account",
    "normalize_account",
]

_log = logging.getLogger("mailguard.login")

IsFailure = Callable[[int, Mapping[str, str]], bool]
"""``is_failure(status, headers)``: headers map lower-case names to values."""

_EPISODES_MAX = 10_000  # blocked addresses remembered as "refusal already logged"
_MAX_TARPIT_DELAY = 60.0
_MAX_DELAYED_ASGI = 50  # tarpitted attempts held at once: an await costs no thread
_MAX_DELAYED_WSGI = 2  # ... but each held WSGI request holds a worker thread
MAX_FAILED_LOGINS = 10_000
"""The highest ``max_failed_logins``: more would never block anyone."""
_FAIL_WORDS = frozenset({"fail", "failed", "failure"})
_OK_WORDS = frozenset({"ok", "success", "succeeded"})
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_METHOD = re.compile(r"[A-Z]+")
_DEFAULT_ACCOUNT_FIELDS = ("_user", "username", "user", "userName")


@dataclass(frozen=True, slots=True)
class LoginVerdict(Verdict):
    """An admitted login attempt: what :meth:`InvalidLoginPolicy.finish` needs.

    ``account`` is the account name read from the request ("" when none),
    ``credentials`` whether the request carried any (so that a bare 401
    challenge is not taken for a failure).
    """

    account: str = ""
    credentials: bool = False
    protocol: str = "http"
    wider: tuple[str, ...] = ()
    """The keys of the client's wider IPv6 networks, whose slots it holds too."""


class Outcome(str, Enum):
    """How an attempt ended, as a front tells :meth:`InvalidLoginPolicy.end`."""

    FAILED = "failed"
    """Wrong credentials: counts towards the address's block."""
    SUCCEEDED = "succeeded"
    """The login worked (resets the streak when ``reset_on_success``)."""
    UNKNOWN = "unknown"
    """Nothing to tell (the backend failed, the client went away): the slot is
    given back, nothing is counted."""


class _Blank(LoginVerdict):
    """A ticket being made: a :class:`LoginVerdict` whose slots take plain
    assignment (a frozen dataclass's ``__setattr__`` refuses it, and setting
    each slot through its descriptor costs four times as much).  The object
    becomes a LoginVerdict once every field is set (``__class__``
    assignment: the same slots, no slot added) and is never seen as a
    _Blank."""

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__


_new = object.__new__
_FIELDS = tuple(f.name for f in fields(LoginVerdict))


def _ticket(
    reason: str, key: str, delay: float, account: str, credentials: bool, protocol: str
) -> LoginVerdict:
    """``LoginVerdict(True, reason, key, delay=delay, watch=True, account=account,
    credentials=credentials, protocol=protocol)``, every other field its default
    (pinned to the constructor by tests/test_login_fast.py)."""
    verdict: Any = _new(_Blank)
    verdict.allowed = True
    verdict.reason = reason
    verdict.key = key
    verdict.retry_after = 0
    verdict.remaining = -1
    verdict.reset = 0.0
    verdict.limit = 0
    verdict.delay = delay
    verdict.watch = True
    verdict.account = account
    verdict.credentials = credentials
    verdict.protocol = protocol
    verdict.wider = ()
    verdict.__class__ = LoginVerdict
    made: LoginVerdict = verdict
    return made


# _ticket sets these, in this order: a field added to LoginVerdict must be added there
if _FIELDS != (  # pragma: no cover
    "allowed", "reason", "key", "retry_after", "remaining", "reset", "limit", "delay", "watch",
    "account", "credentials", "protocol", "wider",
):  # fmt: skip
    raise AssertionError("LoginVerdict's fields changed: update _ticket")


class _Attempt(NamedTuple):
    account: str | None
    credentials: bool
    suspect: bool  # the account could not be told: treat as a tarpitted one


_new_attempt = tuple.__new__  # _Attempt(*values) without its Python-level __new__


# ------------------------------------------------------------------ parsing
def basic_account(token: str) -> str | None:
    """The account of HTTP Basic credentials (the base64 part), or None.

    :meth:`mailguard.reading.AccountRule.basic` with the default rule.
    """
    return DEFAULT_ACCOUNTS.basic(token)


# ------------------------------------------------------------------- policy
class LoginOptions(PolicyOptions, total=False):
    """The keywords of :class:`InvalidLoginPolicy` (and of the ``InvalidLoginFilter`` adapters)."""

    max_failed_logins: int
    failure_interval: Duration
    block_duration: Duration
    preset: str | None
    login_paths: Iterable[str] | None
    login_methods: Iterable[str] | None
    login_fields: Mapping[str, str] | None
    failure_statuses: Iterable[int] | None
    is_failure: IsFailure | None
    count_basic_auth: bool | None
    auth_paths: Iterable[str] | None
    account_fields: Iterable[str] | None
    result_header: str | None
    max_body_bytes: int
    reset_on_success: bool
    block_scope: str
    repeat_factor: float
    max_block_duration: Duration
    offender_memory: Duration
    account_tarpit: tuple[int, float | str] | None
    max_delayed: int | None
    attempt_timeout: Duration
    default_domain: str | None
    enforce: bool


class InvalidLoginPolicy(Policy):
    """Blocks an address after repeated failed logins.  Options as in :class:`Policy`, plus:

    :param max_failed_logins: failures in a row that block an address
        (default 10, Zimbra's; at most 10,000).
    :param failure_interval: seconds within which each failure must follow
        the previous one to continue the streak (default 300; at least 1).
    :param block_duration: seconds an address stays blocked (default 900;
        at least 1).
    :param preset: a login shape from :mod:`mailguard.presets`
        (``"roundcube"``, ``"sogo"``, ``"nextcloud"``, ``"zimbra"``,
        ``"carbonio"``, ``"django"``, ``"activesync"``, ``"dav"``); the
        keywords below marked *shape* default to the preset's values, and
        explicit ones win.
    :param login_paths: *shape*; where logins happen (default ``["/login"]``),
        as :class:`~mailguard.reading.PathRule` reads them (generously).
    :param login_methods: *shape*; methods of a login (default ``["POST"]``).
    :param login_fields: *shape*; ``{field: value}`` a login must carry in its
        query or form body, e.g. ``{"loginOp": "login"}`` (default none).
        Values are compared without regard to case.
    :param failure_statuses: *shape*; response statuses that mean the login
        failed (default ``(401, 403)``).
    :param is_failure: *shape*; ``is_failure(status, headers) -> bool``, a
        further failure test (default none).
    :param count_basic_auth: *shape*; also count every request under
        ``auth_paths`` that carries Basic or Bearer credentials (default False).
    :param auth_paths: *shape*; where ``count_basic_auth`` looks (default
        ``["*"]``, everywhere).
    :param account_fields: *shape*; form fields holding the account name
        (default ``_user``, ``username``, ``user``, ``userName``); empty to
        never read bodies for it.
    :param result_header: a response header the application may set to
        ``fail`` or ``ok`` to say how a login went; removed from the response
        (default ``"x-login-result"``; None to ignore it).
    :param max_body_bytes: body bytes of a login buffered to read form
        fields (default 16384; 0 never reads bodies).
    :param reset_on_success: a successful login ends the address's streak
        (default False: a success does not wipe earlier failures).
    :param block_scope: ``"login"`` (default) refuses only login attempts of
        a blocked address; ``"all"`` refuses all of its requests.
    :param repeat_factor: each new block of an address blocked within
        ``offender_memory`` lasts this many times longer (default 1.0, off).
    :param max_block_duration: cap on a repeated block (default 86400).
    :param offender_memory: seconds an address's blocks are remembered for
        ``repeat_factor`` (default 86400).
    :param account_tarpit: ``(M, D)``: after ``M`` failures for one account
        within ``failure_interval``, hold each further attempt for it ``D``
        seconds (at most 60).  Default None: off.
    :param max_delayed: tarpitted attempts held at once (default 50 under
        ASGI, 2 under WSGI, where each held attempt holds a worker thread);
        when full, a login from an address with a clean slate passes
        undelayed, others are refused for ``D`` seconds.
    :param attempt_timeout: seconds an attempt keeps its slot when its
        response never starts, counted from the end of its body (default 30).
    :param default_domain: when set, an account without ``@`` gets
        ``@<default_domain>``, so ``victim`` and ``victim@example.com`` are
        one account for the tarpit (default None).
    :param enforce: refuse blocked addresses (default True); False is the
        monitor (report-only) mode: failures are counted and blocks recorded
        in the store as usual, but logged as ``would-block`` (and a blocked
        address's next attempt as ``would-refuse``) with ``mode=monitor``,
        and nothing is ever refused or held.
    """

    kind = "login"
    default_on_store_error = "open"

    # The attributes a login reads, in slots: CPython 3.11 keeps up to 29
    # attributes of an instance inline, in an array its specialised reads
    # index; past that (an InvalidLoginPolicy had 53) every read is a dict
    # lookup.  The other 29 stay in the instance's dict, inline again.
    __slots__ = (
        "_account_names",
        "_block_all",
        "_body_wanted",
        "_own_outcome",
        "_planned",
        "_quick",
        "_refused",
        "any_safe",
        "block_duration",
        "count_basic_auth",
        "failure_statuses",
        "interval",
        "limit",
        "login_methods",
        "login_paths",
        "max_block_duration",
        "max_body_bytes",
        "namespace",
        "pending_ttl",
        "repeat_factor",
        "report",
        "result_header",
        "store",
        "tarpit_after",
    )

    accounts: AccountRule = DEFAULT_ACCOUNTS
    """How account names are normalised (:class:`~mailguard.reading.AccountRule`)."""

    php_forms: bool = False
    """Read parameter names as PHP does (``.task`` is ``_task``); a preset may set
    ``php_forms=True`` (:func:`mailguard.reading.php_name`)."""

    def __init__(
        self,
        *,
        max_failed_logins: int = 10,
        failure_interval: Duration = 300.0,
        block_duration: Duration = 900.0,
        preset: str | None = None,
        login_paths: Iterable[str] | None = None,
        login_methods: Iterable[str] | None = None,
        login_fields: Mapping[str, str] | None = None,
        failure_statuses: Iterable[int] | None = None,
        is_failure: IsFailure | None = None,
        count_basic_auth: bool | None = None,
        auth_paths: Iterable[str] | None = None,
        account_fields: Iterable[str] | None = None,
        result_header: str | None = "x-login-result",
        max_body_bytes: int = 16384,
        reset_on_success: bool = False,
        block_scope: str = "login",
        repeat_factor: float = 1.0,
        max_block_duration: Duration = 86400.0,
        offender_memory: Duration = 86400.0,
        account_tarpit: tuple[int, float | str] | None = None,
        max_delayed: int | None = None,
        attempt_timeout: Duration = 30.0,
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
        shape = preset_options(preset) if preset is not None else {}
        self.preset = preset

        def pick(name: str, given: Any, default: Any) -> Any:
            return given if given is not None else shape.get(name, default)

        self.limit = whole("max_failed_logins", max_failed_logins, low=1, high=MAX_FAILED_LOGINS)
        self.interval = at_least_a_second("failure_interval", failure_interval)
        self.block_duration = at_least_a_second("block_duration", block_duration)
        self.login_paths = PathRule(
            "login_paths", pick("login_paths", login_paths, ("/login",)), protective=True
        )
        methods = strings("login_methods", pick("login_methods", login_methods, ("POST",)))
        for method in methods:
            if not _METHOD.fullmatch(method.upper()):
                raise option_error("login_methods", f"{method!r} is not an HTTP method")
        self.login_methods = frozenset(m.upper() for m in methods)
        fields = pick("login_fields", login_fields, {})
        if not isinstance(fields, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in fields.items()
        ):
            raise option_error("login_fields", f"must map field names to strings, got {fields!r}")
        self.login_fields = {k: v.strip().lower() for k, v in fields.items()}
        # a preset's own test of "is this a login" (cookies, SOAP bodies: see
        # mailguard.presets.LoginMatch); explicit login_fields replace it
        match = shape.get("login_match") if login_fields is None else None
        self.login_match: LoginMatch | None = match if callable(match) else None
        statuses = pick("failure_statuses", failure_statuses, (401, 403))
        if isinstance(statuses, (str, bytes)) or not isinstance(statuses, Iterable):
            raise option_error("failure_statuses", f"must be a list of statuses, got {statuses!r}")
        self.failure_statuses = frozenset(
            whole("failure_statuses", s, low=100, high=599) for s in statuses
        )
        check_failure = pick("is_failure", is_failure, None)
        if check_failure is not None and not callable(check_failure):
            raise option_error("is_failure", f"must be callable, got {check_failure!r}")
        self.is_failure: IsFailure | None = check_failure
        basic = pick("count_basic_auth", count_basic_auth, False)
        if not isinstance(basic, bool):
            raise option_error("count_basic_auth", f"must be True or False, got {basic!r}")
        self.count_basic_auth = basic
        self.auth_paths = PathRule(
            "auth_paths", pick("auth_paths", auth_paths, ("*",)), protective=True
        )
        self._no_silent_off_switch()
        self.php_forms = shape.get("php_forms") is True
        self.account_fields = strings(
            "account_fields", pick("account_fields", account_fields, _DEFAULT_ACCOUNT_FIELDS)
        )
        if result_header is not None and (
            not isinstance(result_header, str) or not _HEADER_NAME.fullmatch(result_header)
        ):
            raise option_error(
                "result_header", f"must be a header name or None, got {result_header!r}"
            )
        self.result_header = result_header.lower() if result_header is not None else None
        self.strip_headers = (
            frozenset({self.result_header}) if self.result_header is not None else frozenset()
        )
        self.max_body_bytes = whole("max_body_bytes", max_body_bytes, low=0, high=1 << 20)
        self._body_wanted = (
            self.max_body_bytes
            if (self.login_fields or self.account_fields or self.login_match)
            else 0
        )
        # only account fields to read, as PHP does not: the usual form may be read quickly
        self._account_names = frozenset(self.account_fields)
        self._plain_forms = bool(
            self.account_fields
            and not self.login_fields
            and self.login_match is None
            and not self.php_forms
        )
        if not isinstance(reset_on_success, bool):
            raise option_error(
                "reset_on_success", f"must be True or False, got {reset_on_success!r}"
            )
        self.reset_on_success = reset_on_success
        if block_scope not in ("login", "all"):
            raise option_error("block_scope", f"must be 'login' or 'all', got {block_scope!r}")
        self.block_scope = block_scope
        self._block_all = block_scope == "all"
        # the request body_plan last found on a login path, so that check's
        # attempt_of, asked next by the front, need not match it again; a
        # marker read once, not a cache: when another thread's request has
        # replaced it, the match is simply made again
        self._planned: Request | None = None
        if (
            isinstance(repeat_factor, bool)
            or not isinstance(repeat_factor, (int, float))
            or not 1.0 <= repeat_factor <= 100.0
        ):
            raise option_error(
                "repeat_factor", f"must be a number from 1 to 100, got {repeat_factor!r}"
            )
        self.repeat_factor = float(repeat_factor)
        self.max_block_duration = duration("max_block_duration", max_block_duration)
        if self.max_block_duration < self.block_duration:
            raise option_error(
                "max_block_duration",
                f"must be at least block_duration ({self.block_duration:g}),"
                f" got {max_block_duration!r}",
            )
        self.offender_memory = duration("offender_memory", offender_memory)
        if self.repeat_factor > 1.0 and self.offender_memory <= self.block_duration:
            raise option_error(
                "offender_memory",
                f"must be longer than block_duration ({self.block_duration:g})"
                f" for repeat_factor to matter, got {offender_memory!r}",
            )
        self.tarpit_after = 0
        self.tarpit_delay = 0.0
        if account_tarpit is not None:
            if (
                isinstance(account_tarpit, (str, bytes))
                or not isinstance(account_tarpit, (tuple, list))
                or len(account_tarpit) != 2
            ):
                raise option_error(
                    "account_tarpit",
                    f"must be (failures, delay_seconds) or None, got {account_tarpit!r}",
                )
            self.tarpit_after = positive_int("account_tarpit", account_tarpit[0])
            self.tarpit_delay = duration("account_tarpit", account_tarpit[1])
            if self.tarpit_delay > _MAX_TARPIT_DELAY:
                raise option_error(
                    "account_tarpit",
                    f"the delay must be at most {_MAX_TARPIT_DELAY:g} seconds,"
                    f" got {account_tarpit[1]!r}",
                )
        self.account_namespace = f"{self.namespace}_account"
        self._max_delayed_set = max_delayed is not None
        self.max_delayed = (
            _MAX_DELAYED_ASGI if max_delayed is None else positive_int("max_delayed", max_delayed)
        )
        self.attempt_timeout = duration("attempt_timeout", attempt_timeout)
        self.pending_ttl = self.attempt_timeout + self.tarpit_delay
        self._refused: dict[str, None] = {}
        self._own_admit = type(self).admit is InvalidLoginPolicy.admit
        # check's one-step path for the usual login form (see check): this
        # class's own rules for reading and admitting an attempt, no tarpit
        cls = type(self)
        self._own_outcome = cls.outcome is InvalidLoginPolicy.outcome
        self._quick = (
            self._plain_forms
            and self._own_admit
            and not self.tarpit_after
            and cls.attempt_of is InvalidLoginPolicy.attempt_of
            and cls._form_attempt is InvalidLoginPolicy._form_attempt
            and cls.judge_attempt is InvalidLoginPolicy.judge_attempt
        )
        self._waiting = 0
        self._waiting_lock = threading.Lock()

    def _no_silent_off_switch(self) -> None:
        """Refuse shapes under which the filter could never count a failure."""
        if not self.count_basic_auth:
            if not self.login_paths.entries:
                raise option_error(
                    "login_paths",
                    "is empty, so no request would ever be a login and the filter would"
                    " guard nothing (set count_basic_auth to count HTTP auth instead)",
                )
            if not self.login_methods:
                raise option_error(
                    "login_methods",
                    "is empty, so no request would ever be a login and the filter would"
                    ' guard nothing (logins are usually ["POST"])',
                )
        elif not self.auth_paths.entries:
            raise option_error(
                "auth_paths",
                'is empty while count_basic_auth is on, so it would count nothing (use ["*"])',
            )
        if not self.failure_statuses and self.is_failure is None:
            raise option_error(
                "failure_statuses",
                "is empty and there is no is_failure, so no login would ever count as"
                " failed and no address would ever be blocked",
            )

    # ---------------------------------------------------------------- rules
    def attempt_of(self, request: Request) -> _Attempt | None:
        """Whether ``request`` is a login attempt, and whose; None when it is not."""
        if request is self._planned:  # body_plan found it on a login path just now
            self._planned = None
            matched = True
        else:
            matched = request.method in self.login_methods and self.login_paths.match(request.path)
        if matched:
            found = self._form_attempt(request)
            if found is not None:
                return found
        return self._basic_attempt(request)

    def _basic_attempt(self, request: Request) -> _Attempt | None:
        """attempt_of's last rule: credentials sent on an ``auth_paths`` path."""
        if self.count_basic_auth and self.auth_paths.match(request.path):
            return self._credential_attempt(request)
        return None

    def _form_attempt(self, request: Request) -> _Attempt | None:
        if self._plain_forms:  # the usual login form: read the quick way, if it is that
            form = plain_form_values(request, self._account_names, self.max_body_bytes)
            if form is not None:
                return self._plain_attempt(*form)
        return self._general_form_attempt(request)

    def _general_form_attempt(self, request: Request) -> _Attempt | None:
        """:meth:`_form_attempt` of a request that is not the usual form."""
        params = RequestFields(request, self.max_body_bytes, php=self.php_forms)
        if self.login_match is not None:
            if not self.login_match(request, params):
                return None
        elif not self._fields_match(params):
            return None
        names: set[str] = set()
        complete = True
        if self.account_fields:
            normalize = self.accounts.normalize
            names = {n for n in map(normalize, params.values(self.account_fields)) if n}
            complete = params.complete
        return self._account_attempt(names, complete, request.header("authorization"))

    def _plain_attempt(self, values: list[str], auth: str | None) -> _Attempt:
        """The attempt of the usual login form, whose account fields hold ``values``."""
        normalize = self.accounts.normalize
        if len(values) == 1:  # one account field, as a login form has
            name = normalize(values[0])
            if name:  # _account_attempt({name}, True, auth)'s answer
                return _new_attempt(_Attempt, (name, True, False))
            return self._account_attempt(set(), True, auth)
        return self._account_attempt({n for n in map(normalize, values) if n}, True, auth)

    def _account_attempt(self, names: set[str], complete: bool, auth: str | None) -> _Attempt:
        """The attempt of a login whose account fields hold ``names`` (normalised);
        ``complete``: every field could be seen; ``auth``: its Authorization header."""
        account: str | None = None
        suspect = False
        if len(names) == 1:
            account = names.pop()
        elif names:
            suspect = True  # which one does the application read?
        elif not complete:
            suspect = True  # the field may lie past what we read
        if account is None and not suspect and auth:
            scheme, _, token = auth.strip().partition(" ")
            if scheme.lower() == "basic":
                account = self.accounts.basic(token)
        return _new_attempt(
            _Attempt, (account, bool(auth) or account is not None or suspect, suspect)
        )

    def _fields_match(self, params: RequestFields) -> bool:
        for name, want in self.login_fields.items():
            if any(v.strip().lower() == want for v in params.query().get(name, ())):
                continue
            if any(v.strip().lower() == want for v in params.body().get(name, ())):
                continue
            if params.complete:
                return False
            # the reader cannot tell (cut short, garbled): count it rather than be dodged
        return True

    def _credential_attempt(self, request: Request) -> _Attempt | None:
        auth = request.header("authorization")
        if not auth:
            return None
        scheme, _, token = auth.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            return _Attempt(self.accounts.basic(token), True, False)
        if scheme == "bearer":
            return _Attempt(None, True, False)
        return None

    def judge_block(self, request: Request, block: Block | None, now: float) -> Verdict:
        """A request that is not a login, under ``block_scope="all"``.

        ``block`` is what the store returned, so it was live on the store's
        clock; ``now`` only sizes ``Retry-After`` (the block's whole length
        when ``now`` falls outside it).
        """
        if block is None:
            if self._refused:
                self._refused.pop(request.client.key, None)
            return ALLOW
        if not block.since <= now < block.until:  # our clock disagrees with the store's
            now = block.since
        return self._blocked(request.client.key, block.until - now)

    def judge_attempt(self, key: str, code: int, wait: float) -> Verdict | None:
        """Turn the store's answer to an attempt into a refusal, or None to go on."""
        if code == OK:
            if self._refused:
                self._refused.pop(key, None)
            return None
        if code == BLOCKED:
            return self._blocked(key, wait)
        if not self.enforce:
            return ALLOW  # monitor mode: no slot was taken, the attempt goes unwatched
        return Verdict(False, "busy", key, retry_after=retry_after(wait))

    def _blocked(self, key: str, left: float) -> Verdict:
        wait = retry_after(left)
        if key not in self._refused:
            if len(self._refused) >= _EPISODES_MAX:
                self._refused.clear()
            self._refused[key] = None
            if self.enforce:
                self.emit("refused", key, seconds=wait)
            else:
                self.emit("would-refuse", key, seconds=wait, mode="monitor")
        if not self.enforce:
            return ALLOW
        return Verdict(False, "blocked", key, retry_after=wait)

    def admit(
        self, key: str, found: _Attempt, seen: int, protocol: str = "http", clean: bool = False
    ) -> Verdict:
        """The verdict of an attempt that got a slot; ``seen``: its account's failures;
        ``clean``: its address had no failure streak and no other attempt under way."""
        delay = 0.0
        if self.enforce and self.tarpit_after and (found.suspect or seen >= self.tarpit_after):
            if self._reserve():
                delay = self.tarpit_delay
            elif not clean:
                return Verdict(False, "tarpit", key, retry_after=retry_after(self.tarpit_delay))
            # else: the tarpit is full and this address has a clean slate (it may be
            # the real user): let it through now rather than lock the account out
        return _ticket(
            "tarpit" if delay else "attempt", key, delay, found.account or "", found.credentials,
            protocol,
        )  # fmt: skip

    def outcome(
        self, verdict: LoginVerdict, status: int | None, headers: Mapping[str, str]
    ) -> tuple[bool, bool]:
        """``(failed, succeeded)`` for the response to an attempt."""
        if status is None:
            return False, False
        if self.result_header is not None:
            said = headers.get(self.result_header)
            if said is not None:
                words = {w.strip().lower() for w in said.split(",")}
                if words & _FAIL_WORDS:
                    return True, False
                if words & _OK_WORDS:
                    return False, True
        if status == 401 and not verdict.credentials and "www-authenticate" in headers:
            return False, False  # the challenge that starts an HTTP auth handshake
        if status in self.failure_statuses:
            return True, False
        if self.is_failure is not None:
            try:
                if self.is_failure(status, headers):
                    return True, False
            except Exception:
                _log.exception("mailguard login is_failure raised; not counting a failure")
        return False, status < 400

    def _settle_args(self, succeeded: bool) -> dict[str, Any]:
        return {
            "reset": succeeded and self.reset_on_success,
            "factor": self.repeat_factor,
            "max_block": self.max_block_duration,
            "memory": self.offender_memory if self.repeat_factor > 1.0 else 0.0,
        }

    def settled(
        self,
        verdict: LoginVerdict,
        answer: tuple[int, int, float],
        account_answer: tuple[int, int, float] | None,
    ) -> None:
        """Report a failure (and a block, and an account entering the tarpit)."""
        if not self.report.heard():  # no one listens: make no events
            return
        code, streak, blocked_for = answer
        key = verdict.key
        quoted = frozenset({"account"})
        # a login that did not come over HTTP says which door it came through
        via: dict[str, Any] = {} if verdict.protocol == "http" else {"protocol": verdict.protocol}
        if not self.enforce:  # monitor mode: every line says so, last (fail2ban skips them)
            via["mode"] = "monitor"
        if code == JAILED:
            self.emit(
                "failure",
                key,
                quoted=quoted,
                account=verdict.account,
                streak=self._of(self.limit),
                **via,
            )
            self.emit(
                "blocked" if self.enforce else "would-block",
                key,
                quoted=quoted,
                account=verdict.account,
                seconds=math.ceil(blocked_for),
                failures=self.limit,
                **via,
            )
        else:
            self.emit(
                "failure",
                key,
                quoted=quoted,
                account=verdict.account,
                streak=self._of(streak),
                **via,
            )
        if account_answer is not None:
            code, remaining, _ = account_answer
            # the hit limit is 2M, so exactly M failures leave M remaining
            if code == OK and remaining == self.tarpit_after:
                self.emit(
                    "tarpit",
                    key,
                    quoted=quoted,
                    account=verdict.account,
                    failures=self.tarpit_after,
                    delay=self.tarpit_delay,
                    **via,
                )

    def _of(self, count: int) -> str:
        return f"{count}/{self.limit}"

    def _reserve(self) -> bool:
        with self._waiting_lock:
            if self._waiting >= self.max_delayed:
                return False
            self._waiting += 1
            return True

    def hold_in_threads(self) -> None:
        """The WSGI adapter's call: a tarpitted attempt holds a worker thread, so
        an unset ``max_delayed`` becomes the WSGI default (2).  A full tarpit
        still lets a clean address through, so the real user is not refused."""
        if not self._max_delayed_set:
            self.max_delayed = min(self.max_delayed, _MAX_DELAYED_WSGI)

    def release(self, verdict: Verdict) -> None:
        if verdict.reason == "tarpit" and verdict.allowed:
            with self._waiting_lock:
                self._waiting = max(0, self._waiting - 1)

    @property
    def waiting(self) -> int:
        """Attempts held in the tarpit right now."""
        return self._waiting

    # ------------------------------------------------------------- requests
    def wants_body(self, request: Request) -> int:
        if (
            not self._body_wanted
            or request.method not in self.login_methods
            or not self.login_paths.match(request.path)
            or (self.any_safe and self.is_safe(request.client))
        ):
            return 0
        return self._body_wanted

    def waits_for_body(self, request: Request) -> bool:
        """Whether ``request`` may be a login attempt, whose verdict must then
        wait until its body has arrived in full.

        The adapters check such a request once its body has ended (or its
        response starts, if the app answers without reading it all), never
        earlier: the attempt's slot is taken then, and ``attempt_timeout``
        runs from then.  A client that holds back the end of its bodies holds
        no slot, and no password is checked until the body is complete.
        """
        if self.any_safe and self.is_safe(request.client):
            return False
        if request.method in self.login_methods and self.login_paths.match(request.path):
            return True
        return (
            self.count_basic_auth
            and self.auth_paths.match(request.path)
            and bool(request.header("authorization"))
        )

    def body_plan(self, request: Request) -> tuple[int, bool]:
        """``(self.wants_body(request), self.waits_for_body(request))``, with one
        path match: what the adapters ask of every request."""
        if self.any_safe and self.is_safe(request.client):
            return 0, False
        if request.method in self.login_methods and self.login_paths.match(request.path):
            self._planned = request
            return self._body_wanted, True
        return 0, (
            self.count_basic_auth
            and self.auth_paths.match(request.path)
            and bool(request.header("authorization"))
        )

    def check(self, request: Request) -> Verdict:
        if request is self._planned and self._quick:
            # The usual login (most of them): a request body_plan found on a
            # login path (so not from a safe address), the usual form with one
            # account named.  attempt_of, then _begin_now, in one step: the
            # same store call with the same arguments, the same verdicts
            # (pinned to the general path by tests/test_login_fast.py).
            self._planned = None
            client = request.client
            form = plain_form_values(request, self._account_names, self.max_body_bytes)
            if form is None:
                found = self._general_form_attempt(request)
            else:
                values = form[0]
                name = self.accounts.normalize(values[0]) if len(values) == 1 else None
                if name and not client.wider:
                    key = client.key
                    code, _, wait = self.store.attempt(
                        self.namespace, key, self.limit, self.interval, self.pending_ttl
                    )
                    if code != OK:
                        refused = self.judge_attempt(key, code, wait)
                        if refused is not None:
                            return refused
                    elif self._refused:  # judge_attempt's OK
                        self._refused.pop(key, None)
                    return _ticket("attempt", key, 0.0, name, True, "http")
                found = self._plain_attempt(*form)
            if found is None:
                # (the form read said no: the credentials rule, as attempt_of asks it)
                found = self._basic_attempt(request)
        else:
            found = self.attempt_of(request)
        if found is None and not self._block_all:
            return ALLOW
        client = request.client
        if self.any_safe and self.is_safe(client):
            return ALLOW
        if found is not None and not client.wider:  # the common attempt: no generator
            return self._begin_now(client.key, found, "http")
        return run(self._decide(request, found, self.store.now), self.store)

    async def acheck(self, request: Request) -> Verdict:
        found = self.attempt_of(request)
        if found is None and not self._block_all:
            return ALLOW
        if self.any_safe and self.is_safe(request.client):
            return ALLOW
        # a remote store's now() is a blocking round trip: size Retry-After by local time
        clock = self.store.now if self.store.local else time.time
        return await arun(self._decide(request, found, clock), self.store)

    def _decide(
        self, request: Request, found: _Attempt | None, clock: Callable[[], float]
    ) -> Steps[Verdict]:
        """The store's part of ``check``: a login attempt, or (``found`` None)
        any request of an address under ``block_scope="all"``."""
        client = request.client
        if found is None:
            block = yield call("get_block", self.namespace, client.key)
            for network in client.wider:  # a block on a wider network refuses all of it
                if block is not None:
                    break
                block = yield call("get_block", self.namespace, network)
            return self.judge_block(request, block, 0.0 if block is None else clock())
        return (yield from self._begin(client.key, found, "http", client.wider))

    def _limits(self, key: str, wider: tuple[str, ...]) -> list[tuple[str, int]]:
        """``key`` and its wider IPv6 networks, each with its failure limit."""
        limits = [(key, self.limit)]
        for network, factor in zip(wider, self.wider_factors, strict=False):
            limits.append((network, wider_limit(self.limit, factor)))
        return limits

    def _begin(
        self, key: str, found: _Attempt, protocol: str, wider: tuple[str, ...] = ()
    ) -> Steps[Verdict]:
        """Begin a login attempt of ``key``: a slot, or a refusal.

        An IPv6 client takes a slot in each of its ``wider`` networks too,
        narrowest first, each against its own (looser) limit: a block or a
        full house on any of them refuses the attempt, and gives back the
        slots already taken.
        """
        taken: list[tuple[str, int]] = []
        clean = False
        for name, limit in self._limits(key, wider):
            code, remaining, wait = yield call(
                "attempt", self.namespace, name, limit, self.interval, self.pending_ttl
            )
            refused = self.judge_attempt(name, code, wait)
            if refused is not None:
                yield from self._give_back(taken)
                return refused
            if not taken:
                # this slot is the address's only one: no failure streak, nothing else under way
                clean = remaining == limit - 1
            taken.append((name, limit))
        seen = 0
        if self.tarpit_after and found.account:
            seen = yield call("peek", self.account_namespace, found.account, self.interval)
        verdict = self.admit(key, found, seen, protocol, clean)
        if not verdict.allowed:  # the tarpit is full: give the slots back
            yield from self._give_back(taken)
        elif wider and isinstance(verdict, LoginVerdict):
            verdict = replace(verdict, wider=wider)
        return verdict

    def _begin_now(self, key: str, found: _Attempt, protocol: str) -> Verdict:
        """``run(self._begin(key, found, protocol), self.store)`` for a client with
        no wider networks, without the generator: the store's synchronous
        methods called in the same order with the same arguments (pinned to
        :meth:`_begin` by tests/test_login_fast.py)."""
        store = self.store
        namespace, limit = self.namespace, self.limit
        code, remaining, wait = store.attempt(
            namespace, key, limit, self.interval, self.pending_ttl
        )
        if code != OK:
            refused = self.judge_attempt(key, code, wait)
            if refused is not None:
                return refused
        elif self._refused:  # judge_attempt's OK
            self._refused.pop(key, None)
        if not self.tarpit_after and self._own_admit:  # admit's verdict, without the tarpit
            return _ticket("attempt", key, 0.0, found.account or "", found.credentials, protocol)
        seen = 0
        if self.tarpit_after and found.account:
            seen = store.peek(self.account_namespace, found.account, self.interval)
        verdict = self.admit(key, found, seen, protocol, remaining == limit - 1)
        if not verdict.allowed:  # the tarpit is full: give the slot back
            store.settle(namespace, key, False, limit, self.interval, self.block_duration)
        return verdict

    def _give_back(self, taken: list[tuple[str, int]]) -> Steps[None]:
        """Release attempt slots without counting anything."""
        for name, limit in taken:
            yield call(
                "settle", self.namespace, name, False, limit, self.interval, self.block_duration
            )

    # ------------------------------------------------- any protocol's logins
    def _ticket_for(
        self, client: Client, account: str | None, credentials: bool
    ) -> _Attempt | None:
        if self.any_safe and self.is_safe(client):
            return None
        name = self.accounts.normalize(account) if account else None
        return _Attempt(name, credentials or name is not None, False)

    def client_of(self, address: Client | str | None) -> Client:
        """``address`` as this filter counts it: a :class:`Client` as given;
        an address string as the connection's peer (IPv6 grouped by
        ``ipv6_prefix``; no forwarding header is ever read)."""
        if isinstance(address, Client):
            return address
        return self.resolver.resolve(address, ())

    def begin(
        self,
        client: Client | str,
        account: str | None = None,
        protocol: str = "http",
        *,
        credentials: bool = True,
    ) -> Verdict:
        """Begin a login of ``account`` from ``client`` over ``protocol``.

        The seam for logins that are not HTTP requests (IMAP, POP3 and SMTP
        through Dovecot's auth policy or nginx's ``auth_http``): the answer is
        a refusal (``allowed`` false, with ``retry_after``), or a ticket
        (a :class:`LoginVerdict`; ``delay`` > 0 asks the caller to hold the
        login that long first, the account tarpit) to hand to :meth:`end`
        once the outcome is known.  An address in ``safe_ips`` gets a plain
        allowed verdict, which :meth:`end` ignores.  Every ticket must be
        ended, or it holds its slot for ``attempt_timeout`` seconds.
        """
        who = self.client_of(client)
        found = self._ticket_for(who, account, credentials)
        if found is None:
            return ALLOW
        if not who.wider:
            return self._begin_now(who.key, found, protocol)
        return run(self._begin(who.key, found, protocol, who.wider), self.store)

    async def abegin(
        self,
        client: Client | str,
        account: str | None = None,
        protocol: str = "http",
        *,
        credentials: bool = True,
    ) -> Verdict:
        """:meth:`begin` for asyncio."""
        who = self.client_of(client)
        found = self._ticket_for(who, account, credentials)
        if found is None:
            return ALLOW
        return await arun(self._begin(who.key, found, protocol, who.wider), self.store)

    def end(self, ticket: Verdict, outcome: Outcome | str) -> None:
        """End the attempt ``ticket`` (from :meth:`begin`) with its outcome.

        Gives the slot back and, for :attr:`Outcome.FAILED`, counts the
        failure (and blocks the address at ``max_failed_logins``).  Anything
        but a ticket (a refusal, a safe address's verdict) is ignored, so a
        front can end whatever it began.
        """
        if isinstance(ticket, LoginVerdict):
            if ticket.wider:
                run(self._end(ticket, Outcome(outcome)), self.store)
            else:
                self._end_now(ticket, Outcome(outcome))

    async def aend(self, ticket: Verdict, outcome: Outcome | str) -> None:
        """:meth:`end` for asyncio."""
        if isinstance(ticket, LoginVerdict):
            await arun(self._end(ticket, Outcome(outcome)), self.store)

    # ------------------------------------------------------------ responses
    def finish(
        self, request: Request, verdict: Verdict, status: int | None, headers: Mapping[str, str]
    ) -> None:
        if isinstance(verdict, LoginVerdict):
            if verdict.wider:
                run(self._settle(verdict, status, headers), self.store)
                return
            if (
                self._own_outcome
                and status is not None
                and (status != 401 or verdict.credentials)
                and (self.result_header is None or headers.get(self.result_header) is None)
            ):
                # outcome's answer for a response that says nothing itself and
                # is no bare challenge (most responses), without the call
                # (pinned to outcome by tests/test_login_fast.py)
                if status in self.failure_statuses:
                    self._settle_now(verdict, True, False)
                    return
                if self.is_failure is None:
                    self._settle_now(verdict, False, status < 400)
                    return
            failed, succeeded = self.outcome(verdict, status, headers)
            self._settle_now(verdict, failed, succeeded)

    async def afinish(
        self, request: Request, verdict: Verdict, status: int | None, headers: Mapping[str, str]
    ) -> None:
        if isinstance(verdict, LoginVerdict):
            await arun(self._settle(verdict, status, headers), self.store)

    def _settle(
        self, verdict: LoginVerdict, status: int | None, headers: Mapping[str, str]
    ) -> Steps[None]:
        """The store's part of ``finish``: the response told the outcome."""
        failed, succeeded = self.outcome(verdict, status, headers)
        if failed:
            return (yield from self._end(verdict, Outcome.FAILED))
        return (yield from self._end(verdict, Outcome.SUCCEEDED if succeeded else Outcome.UNKNOWN))

    def _end(self, verdict: LoginVerdict, outcome: Outcome) -> Steps[None]:
        """Release the slot, count a failure."""
        failed = outcome is Outcome.FAILED
        succeeded = outcome is Outcome.SUCCEEDED
        wider_answers: list[tuple[str, int, tuple[int, int, float]]] = []
        try:
            answer = yield call(
                "settle",
                self.namespace,
                verdict.key,
                failed,
                self.limit,
                self.interval,
                self.block_duration,
                **self._settle_args(succeeded),
            )
            # the same failure in the streak of each wider network, at its limit
            for name, limit in self._limits(verdict.key, verdict.wider)[1:]:
                said = yield call(
                    "settle",
                    self.namespace,
                    name,
                    failed,
                    limit,
                    self.interval,
                    self.block_duration,
                    **self._settle_args(succeeded),
                )
                wider_answers.append((name, limit, said))
            account_answer = None
            if failed and self.tarpit_after and verdict.account:
                account_limit = 2 * self.tarpit_after
                account_answer = yield call(
                    "hit", self.account_namespace, verdict.account, account_limit, self.interval
                )
        except StoreDown:
            return  # the outage is logged once by the store guard
        if failed:
            self.settled(verdict, answer, account_answer)
            for name, limit, (code, _, blocked_for) in wider_answers:
                if code == JAILED:
                    self.emit(
                        "blocked",
                        name,
                        quoted=frozenset({"account"}),
                        account=verdict.account,
                        seconds=math.ceil(blocked_for),
                        failures=limit,
                    )

    def _end_now(self, verdict: LoginVerdict, outcome: Outcome) -> None:
        """``run(self._end(verdict, outcome), self.store)`` for a verdict with no
        wider networks, without the generator (pinned to :meth:`_end` by
        tests/test_login_fast.py)."""
        self._settle_now(verdict, outcome is Outcome.FAILED, outcome is Outcome.SUCCEEDED)

    def _settle_now(self, verdict: LoginVerdict, failed: bool, succeeded: bool) -> None:
        """:meth:`_end_now` of the outcome ``failed`` / ``succeeded`` (neither:
        unknown), as :meth:`finish` tells it."""
        store = self.store
        factor = self.repeat_factor
        try:
            answer = store.settle(
                self.namespace,
                verdict.key,
                failed,
                self.limit,
                self.interval,
                self.block_duration,
                reset=succeeded and self.reset_on_success,
                factor=factor,
                max_block=self.max_block_duration,
                memory=self.offender_memory if factor > 1.0 else 0.0,
            )
            if failed:
                account_answer = None
                if self.tarpit_after and verdict.account:
                    account_answer = store.hit(
                        self.account_namespace,
                        verdict.account,
                        2 * self.tarpit_after,
                        self.interval,
                    )
        except StoreDown:
            return  # the outage is logged once by the store guard
        if failed:
            self.settled(verdict, answer, account_answer)

    def explain(self, verdict: Verdict) -> str:
        if verdict.reason == "blocked":
            return "too many failed logins from your address."
        if verdict.reason == "busy":
            return "too many logins from your address at once."
        if verdict.reason == "tarpit":
            return "too many logins are waiting; try again shortly."
        return super().explain(verdict)
