"""Mail logins on the login seam: the ``[serve]`` and ``[mailauth]`` tables.

``mailguard serve`` (:mod:`mailguard.serve`) answers Dovecot's auth policy
(:mod:`mailguard.dovecot`) and nginx's mail ``auth_http``
(:mod:`mailguard.nginx_auth`).  Both translate their protocol into
:meth:`InvalidLoginPolicy.begin <mailguard.policies.InvalidLoginPolicy.begin>`
/ ``end`` through one :class:`MailLogins`, which holds what the two doors
share and the HTTP filter has no need of:

- the policy itself, built from ``[mailauth]`` over ``[login]`` over
  ``[common]`` (so one failure rule, in the ``login`` namespace of one store,
  covers webmail, IMAP, POP3 and SMTP);
- the map from a Dovecot session to its ticket (:class:`Sessions`), which
  lets an ``allow`` hold its slot until its ``report`` ends it;
- the opt-in repeated-password rule (``count_repeated_password = false``).

The options
===========

:class:`ServeSettings` declares ``[serve]``, :class:`MailAuthSettings` the
keys of ``[mailauth]`` that are not the failure rule; the failure rule's keys
are :data:`LOGIN_KEYS`, options of
:class:`~mailguard.policies.InvalidLoginPolicy` read through the same
declarations as ``[login]`` (:func:`mailguard.options.declared`).  This
module does not import :mod:`mailguard.config`; it raises
:func:`~mailguard.options.option_error` errors, which the configuration
turns into messages naming the file and the key.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import ipaddress
import logging
import pkgutil
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .core import ALLOW, Verdict
from .events import EventHook, refused_request
from .identity import AddressSet, Client
from .options import Duration, duration, option_error, whole
from .policies.login import InvalidLoginPolicy, LoginVerdict, Outcome
from .stores.base import Store
from .stores.guard import StoreDown

__all__ = [
    "INHERITED_KEYS",
    "LOGIN_KEYS",
    "PROTOCOLS",
    "Backend",
    "Decision",
    "MailAuthSettings",
    "MailLogins",
    "ServeSettings",
    "Sessions",
    "VerifyFunc",
    "build_logins",
    "parse_backend",
    "protocol_name",
    "split_options",
]

_log = logging.getLogger("mailguard.mailauth")

LOGIN_KEYS: tuple[str, ...] = (
    "max_failed_logins",
    "failure_interval",
    "block_duration",
    "reset_on_success",
    "repeat_factor",
    "max_block_duration",
    "offender_memory",
    "account_tarpit",
    "max_delayed",
    "attempt_timeout",
    "default_domain",
    "enforce",
    "safe_ips",
    "ipv6_prefix",
    "ipv6_wider",
    "on_store_error",
)
"""The :class:`~mailguard.policies.InvalidLoginPolicy` options ``[mailauth]``
takes; each defaults to ``[login]``'s value, then ``[common]``'s.  The
namespace is always ``[login]``'s, so the HTTP filter and the mail doors
count in one place."""

INHERITED_KEYS: tuple[str, ...] = (*LOGIN_KEYS, "namespace")
"""What ``[mailauth]`` inherits from ``[login]``: :data:`LOGIN_KEYS` and the namespace."""

PROTOCOLS = ("imap", "pop3", "smtp")
"""The protocols nginx's mail proxy asks about (``Auth-Protocol``)."""

_PROTOCOL = re.compile(r"[a-z][a-z0-9-]{0,15}")
_BACKEND = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>[0-9]{1,5})")
VerifyFunc = Callable[[str, str, str, str], "bool | Awaitable[bool]"]
"""``verify(user, password, protocol, client) -> bool``, sync or async."""


def protocol_name(text: object) -> str:
    """A protocol name fit for a log line: ``imap``, ``pop3``, ``submission``...;
    ``"unknown"`` for anything else (it came from the caller)."""
    if isinstance(text, str):
        lowered = text.strip().lower()
        if _PROTOCOL.fullmatch(lowered):
            return lowered
    return "unknown"


# ------------------------------------------------------------------ settings
class ServeSettings:
    """``[serve]``: where ``mailguard serve`` listens and who may call it.

    :param host: the address to listen on (default ``"127.0.0.1"``).
    :param port: the TCP port (default 8787).
    :param allow: addresses and CIDR networks that may call ``/dovecot`` and
        ``/nginx`` (default loopback: ``["127.0.0.0/8", "::1"]``).  Anyone
        else gets 403 and nothing is counted or verified.
    :param secret: when set, callers must also send it in the header
        ``X-Mailguard-Secret`` (Dovecot:
        ``auth_policy_server_api_header = X-Mailguard-Secret:<secret>``;
        nginx: ``auth_http_header X-Mailguard-Secret "<secret>";``); compared
        in constant time.  At least 16 characters.  Default none.
    :param admin_token: the bearer token of the admin endpoints (``/blocks``,
        ``/unblock``, ``/stats``, as :class:`mailguard.admin.AdminApp`); at
        least 16 characters.  Without one those endpoints answer 404.
    :param admin_allow: addresses that may call the admin endpoints (default
        ``allow``'s).
    :param max_sessions: Dovecot sessions remembered at once between their
        ``allow`` and their ``report`` (default 100000).
    :param header_timeout: seconds a connection has to send complete request
        headers, from its connect or from the first byte of its next request
        (default 2); an idle keep-alive connection is closed after uvicorn's
        ``timeout_keep_alive`` (5 s).
    :param max_connections_per_peer: open connections one address may hold
        (default 256: Dovecot's auth policy client opens up to 100 per auth
        process, ``auth-policy.c`` ``http_client_set.max_parallel_connections``,
        and nginx one per login being checked, both from the same loopback
        address).  Past it the peer's oldest connection that has not sent a
        request yet is closed (then its oldest idle one); when all are busy
        the new one is.
    :param max_connections: open connections in all (default 1024; lowered
        to the file descriptor limit less a reserve at start).
    :param allow_without_secret: start without ``secret`` (default false:
        without one any local user can guess passwords through ``/nginx`` and
        block addresses through ``/dovecot``).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8787,
        allow: Iterable[str] = ("127.0.0.0/8", "::1"),
        secret: str | None = None,
        admin_token: str | None = None,
        admin_allow: Iterable[str] | None = None,
        max_sessions: int = 100_000,
        header_timeout: Duration = 2.0,
        max_connections_per_peer: int = 256,
        max_connections: int = 1024,
        allow_without_secret: bool = False,
    ) -> None:
        if not isinstance(host, str) or not host.strip():
            raise option_error("host", f"must be an address to listen on, got {host!r}")
        self.host = host.strip()
        self.port = whole("port", port, low=1, high=65535)
        self.allow = AddressSet(allow, name="allow")
        self.allow_entries = tuple(allow)
        self.secret = _secret("secret", secret)
        self.admin_token = _secret("admin_token", admin_token)
        self.admin_allow = tuple(admin_allow) if admin_allow is not None else self.allow_entries
        AddressSet(self.admin_allow, name="admin_allow")
        self.max_sessions = whole("max_sessions", max_sessions, low=1, high=10_000_000)
        self.header_timeout = duration("header_timeout", header_timeout)
        if self.header_timeout > 60.0:
            raise option_error(
                "header_timeout", f"must be at most 60 seconds, got {header_timeout!r}"
            )
        self.max_connections_per_peer = whole(
            "max_connections_per_peer", max_connections_per_peer, low=1, high=1_000_000
        )
        self.max_connections = whole("max_connections", max_connections, low=1, high=1_000_000)
        if not isinstance(allow_without_secret, bool):
            raise option_error(
                "allow_without_secret", f"must be true or false, got {allow_without_secret!r}"
            )
        self.allow_without_secret = allow_without_secret


def secret_problem(settings: ServeSettings) -> str | None:
    """Why ``mailguard serve`` must not start with ``settings`` (None: it may).

    Without a secret any local user reaches the port (``allow`` is loopback):
    ``/nginx`` with a new ``Client-IP`` per request is an unlimited password
    oracle, and ``/dovecot`` reports block any address.  So a missing secret
    is refused unless ``allow_without_secret = true`` says the admin accepts it.
    """
    if settings.secret is None and not settings.allow_without_secret:
        return (
            "is required: without it any local user can guess passwords through /nginx"
            " and block any address through /dovecot; set a random one of at least 16"
            " characters (python -c 'import secrets; print(secrets.token_urlsafe())'),"
            " or [serve] allow_without_secret = true to accept that risk"
        )
    return None


PLACEHOLDER_SECRETS = frozenset(
    {
        "change-this-secret",
        "change-this-secret-please",
        "change-me-to-a-long-random-secret",
        "change-this-admin-token",
        "<[serve] secret>",
    }
)
"""Placeholders our examples and README ship: refused as a ``secret`` or
``admin_token`` (everyone who read the examples knows them)."""


def _secret(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str) and (
        value.strip().lower() in PLACEHOLDER_SECRETS or "change-this" in value.lower()
    ):
        raise option_error(
            name,
            "is the placeholder of the examples: set a random one"
            " (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')",
        )
    if not isinstance(value, str) or len(value.strip()) < 16:
        raise option_error(
            name,
            "must be a secret of at least 16 characters"
            " (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')",
        )
    if any(ord(ch) < 0x21 or ord(ch) > 0x7E for ch in value):
        # it travels in an HTTP header: printable ASCII, no spaces
        raise option_error(name, "must be printable ASCII without spaces")
    return value


class Backend(NamedTuple):
    """One mail server behind nginx: an IP literal and a port."""

    host: str
    port: int

    @property
    def server(self) -> str:
        """``Auth-Server``'s value: the bare IP (nginx parses it with
        ``ngx_parse_addr``: no brackets, no name)."""
        return self.host


def parse_backend(protocol: str, text: object) -> Backend:
    """``"127.0.0.1:143"`` or ``"[::1]:143"`` as a :class:`Backend`; an
    :func:`option_error` naming ``nginx_backends`` otherwise."""
    name = "nginx_backends"
    if not isinstance(text, str):
        raise option_error(name, f"{protocol}: must be a string such as '127.0.0.1:143'")
    found = _BACKEND.fullmatch(text.strip())
    problem = (
        f"{protocol}: {text!r} must be an IP literal and a port, such as '127.0.0.1:143'"
        " or '[::1]:143' (nginx refuses host names in Auth-Server)"
    )
    if found is None:
        raise option_error(name, problem)
    host = found.group("v6") or found.group("v4")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise option_error(name, problem) from None
    if found.group("v6") is not None and address.version != 6:
        raise option_error(name, problem)
    port = int(found.group("port"))
    if not 1 <= port <= 65535:
        raise option_error(name, f"{protocol}: port {port} is not from 1 to 65535")
    return Backend(address.compressed, port)


class MailAuthSettings:
    """``[mailauth]``, besides the failure rule (:data:`LOGIN_KEYS`).

    :param nginx_backends: ``{"imap": "127.0.0.1:1143", "pop3": ...,
        "smtp": ...}``: the server nginx proxies each protocol to, an IP
        literal and a port (IPv6 as ``"[::1]:143"``).  Required for
        ``/nginx``; a protocol without one is answered with a temporary error.
    :param verify: how ``/nginx`` checks a password: ``"backend"`` (log in to
        the protocol's backend: IMAP ``LOGIN``, POP3 ``USER``/``PASS``, SMTP
        ``AUTH PLAIN``) or ``"module:function"``, a callable
        ``(user, password, protocol, client) -> bool``, sync (run in a
        thread) or async (default ``"backend"``).
    :param verify_timeout: seconds a check may take before the attempt is
        answered with a temporary error, counted as nothing (default 5).
    :param verify_threads: the threads a sync ``verify`` callable runs on,
        a pool of mailguard's own (default 16).  When all are busy, a check
        waits for one within ``verify_timeout`` and otherwise gets a
        temporary error, counted as nothing: a slow directory never queues
        checks without bound.
    :param verify_cache_ttl: seconds a right password checked for ``/nginx``
        is remembered (default 60; 0 turns the cache off).  Within them the
        same protocol, user and password are answered without asking again:
        nginx then logs in to the backend with them itself, so a password
        changed meanwhile still fails there.  Kept as keyed hashes (HMAC, a
        random key per process), never the password; at most 10000 entries,
        the least recently used dropped first.  A wrong password is never
        remembered.
    :param auth_wait: seconds nginx waits before its next ``auth_http``
        request after a wrong password (``Auth-Wait``; default 3).
    :param count_repeated_password: count every failure (default true);
        false: a client retrying one stale password (the same address,
        account and password hash) counts once while ``repeat_memory`` lasts.
    :param repeat_memory: how long a failed password is remembered for
        ``count_repeated_password = false`` (default 3600).
    """

    def __init__(
        self,
        *,
        nginx_backends: Mapping[str, str] | None = None,
        verify: str = "backend",
        verify_timeout: Duration = 5.0,
        verify_threads: int = 16,
        verify_cache_ttl: Duration = 60.0,
        auth_wait: Duration = 3.0,
        count_repeated_password: bool = True,
        repeat_memory: Duration = 3600.0,
    ) -> None:
        backends: dict[str, Backend] = {}
        if nginx_backends is not None:
            if not isinstance(nginx_backends, Mapping):
                raise option_error(
                    "nginx_backends",
                    'must be a table such as { imap = "127.0.0.1:1143", pop3 = "127.0.0.1:1110" }',
                )
            for protocol, text in nginx_backends.items():
                if protocol not in PROTOCOLS:
                    raise option_error(
                        "nginx_backends",
                        f"{protocol!r} is not a protocol of nginx's mail proxy"
                        f" ({', '.join(PROTOCOLS)})",
                    )
                backends[protocol] = parse_backend(protocol, text)
        self.backends = backends
        if not isinstance(verify, str) or not (
            verify == "backend" or re.fullmatch(r"[\w.]+:[\w.]+", verify)
        ):
            raise option_error("verify", f'must be "backend" or "module:function", got {verify!r}')
        self.verify = verify
        self.verify_func: VerifyFunc | None = None
        if verify != "backend":
            self.verify_func = _load_callable(verify)
        self.verify_timeout = duration("verify_timeout", verify_timeout)
        if self.verify_timeout > 60:
            raise option_error(
                "verify_timeout", f"must be at most 60 seconds, got {verify_timeout!r}"
            )
        self.verify_threads = whole("verify_threads", verify_threads, low=1, high=1024)
        self.verify_cache_ttl = duration("verify_cache_ttl", verify_cache_ttl, allow_zero=True)
        if self.verify_cache_ttl > 3600:
            raise option_error(
                "verify_cache_ttl", f"must be at most 3600 seconds, got {verify_cache_ttl!r}"
            )
        self.auth_wait = duration("auth_wait", auth_wait)
        if self.auth_wait > 3600:
            raise option_error("auth_wait", f"must be at most 3600 seconds, got {auth_wait!r}")
        if not isinstance(count_repeated_password, bool):
            raise option_error(
                "count_repeated_password",
                f"must be true or false, got {count_repeated_password!r}",
            )
        self.count_repeated_password = count_repeated_password
        self.repeat_memory = duration("repeat_memory", repeat_memory)


def _load_callable(spec: str) -> VerifyFunc:
    """The callable ``"module:function"`` names (:func:`pkgutil.resolve_name`)."""
    try:
        target = pkgutil.resolve_name(spec)
    except (ImportError, AttributeError, ValueError) as exc:
        raise option_error("verify", f"cannot load {spec!r}: {exc}") from None
    except Exception as exc:  # whatever the module raised while it was imported
        raise option_error("verify", f"importing {spec!r} failed: {exc!r}") from None
    if not callable(target):
        raise option_error("verify", f"{spec!r} is not callable")
    func: VerifyFunc = target
    return func


# ------------------------------------------------------------------ sessions
class _Held(NamedTuple):
    ticket: Verdict
    until: float  # time.monotonic() after which the entry is dropped


class Sessions:
    """Dovecot sessions between their ``allow`` and their ``report``.

    Bounded (``size`` entries, the oldest dropped first) and timed (an entry
    lives ``ttl`` seconds).  A dropped entry is not ended: its slot lapses in
    the store after the policy's ``attempt_timeout``, and a late ``report``
    for it still counts (:meth:`MailLogins.report`).
    """

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._held: OrderedDict[tuple[str, str, bytes], _Held] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def _prune(self, now: float) -> None:
        held = self._held
        while held:
            first = next(iter(held.values()))
            if first.until > now:
                break
            held.popitem(last=False)

    def has(self, key: tuple[str, str, bytes]) -> bool:
        self._prune(time.monotonic())
        return key in self._held

    def put(self, key: tuple[str, str, bytes], ticket: Verdict) -> None:
        now = time.monotonic()
        self._prune(now)
        held = self._held
        held.pop(key, None)
        while len(held) >= self.size:
            held.popitem(last=False)
        held[key] = _Held(ticket, now + self.ttl)

    def pop(self, key: tuple[str, str, bytes]) -> Verdict | None:
        found = self._held.pop(key, None)
        if found is None or found.until <= time.monotonic():
            return None
        return found.ticket


_UNSEEN = object()
_CLIENTS_MAX = 4096


# ------------------------------------------------------------------ decisions
@dataclass(frozen=True, slots=True)
class Decision:
    """What a door answers at the start of a login.

    :ivar allowed: whether the login may go on.
    :ivar reason: ``"ok"``, ``"blocked"``, ``"busy"``, ``"tarpit"``,
        ``"store-error"``.
    :ivar delay: seconds to hold the login first (the account tarpit).
    :ivar retry_after: for a refusal, seconds until a retry may work.
    :ivar ticket: what :meth:`MailLogins.finish` ends.
    """

    allowed: bool
    reason: str = "ok"
    delay: float = 0.0
    retry_after: int = 0
    ticket: Verdict = ALLOW

    def message(self) -> str:
        """A short sentence for the client (never request text)."""
        if self.reason == "blocked":
            return "Too many failed logins from your address"
        if self.reason == "busy":
            return "Too many logins from your address at once"
        if self.reason == "store-error":
            return "Login temporarily unavailable"
        if self.reason == "tarpit":
            return "Too many logins are waiting"
        if self.reason == "undecided":
            return "Login temporarily unavailable, try again later"
        return ""


class MailLogins:
    """The mail doors' use of one :class:`~mailguard.policies.InvalidLoginPolicy`.

    :param policy: the failure rule, on the shared store and namespace.
    :param settings: ``[mailauth]``'s other keys.
    :param max_sessions: Dovecot sessions remembered at once.
    """

    def __init__(
        self,
        policy: InvalidLoginPolicy,
        settings: MailAuthSettings | None = None,
        *,
        max_sessions: int = 100_000,
    ) -> None:
        self.policy = policy
        self.settings = settings if settings is not None else MailAuthSettings()
        self.sessions = Sessions(max_sessions, policy.pending_ttl)
        self.repeat_namespace = f"{policy.namespace}_pw"
        self.undecided_namespace = f"{policy.namespace}_undecided"
        self._salt = hashlib.sha256(policy.namespace.encode()).digest()
        self._clients: dict[str, Client | None] = {}

    @property
    def store(self) -> Store:
        return self.policy.store

    def client(self, address: str) -> Client | None:
        """The client an address string counts as, or None when it is no IP.

        Remembered for the last few thousand addresses: an ``allow`` and its
        ``report`` name the same one, and resolving it is pure."""
        known = self._clients.get(address, _UNSEEN)
        if known is not _UNSEEN:
            return known  # type: ignore[return-value]
        who = self.policy.client_of(address)
        found = who if who.is_ip else None
        clients = self._clients
        if len(clients) >= _CLIENTS_MAX:
            clients.clear()
        clients[address] = found
        return found

    # -------------------------------------------------------------- begin
    async def begin(
        self, who: Client, account: str | None, protocol: str, *, hold: bool = False
    ) -> Decision:
        """Begin a login: a refusal, or a ticket (perhaps with a tarpit delay).

        ``hold``: the caller waits out the delay itself and then calls
        ``policy.release(decision.ticket)`` (so ``max_delayed`` bounds the
        logins held at once); otherwise the mail server waits and the
        tarpit's place is given back at once.
        """
        try:
            verdict = await self.policy.abegin(who, account, protocol)
        except StoreDown as down:
            if down.mode == "closed":
                return Decision(False, "store-error", retry_after=5)
            return Decision(True)
        if not verdict.allowed:
            refused_request(self.policy.kind, verdict.reason, verdict.key)
            return Decision(False, verdict.reason, retry_after=max(1, verdict.retry_after))
        if verdict.delay > 0.0:
            if not hold:  # the mail server holds the login, not us: nothing is tied up
                self.policy.release(verdict)
            return Decision(True, "tarpit", delay=verdict.delay, ticket=verdict)
        return Decision(True, ticket=verdict)

    async def check(self, who: Client, account: str | None, protocol: str) -> Decision:
        """What :meth:`begin` would answer, without holding a slot."""
        decision = await self.begin(who, account, protocol)
        await self.finish(decision.ticket, Outcome.UNKNOWN)
        return decision

    # -------------------------------------------------------------- end
    async def finish(
        self,
        ticket: Verdict,
        outcome: Outcome,
        *,
        pwhash: str | None = None,
    ) -> None:
        """End ``ticket`` with ``outcome``; ``pwhash`` feeds the repeated-password rule."""
        if (
            outcome is Outcome.FAILED
            and pwhash
            and isinstance(ticket, LoginVerdict)
            and await self.repeated(ticket, pwhash)
        ):
            outcome = Outcome.UNKNOWN
        try:
            await self.policy.aend(ticket, outcome)
        except Exception:
            _log.exception("mailguard mailauth could not record a login's outcome")

    async def repeated(self, ticket: LoginVerdict, pwhash: str) -> bool:
        """Whether this failed password of this address and account was seen
        within ``repeat_memory`` (``count_repeated_password = false``)."""
        settings = self.settings
        if settings.count_repeated_password:
            return False
        digest = hmac.new(
            self._salt,
            "\0".join((ticket.key, ticket.account, pwhash[:512])).encode("utf-8", "replace"),
            hashlib.sha256,
        ).hexdigest()[:32]
        try:
            before = await self.store.aswap(
                self.repeat_namespace, digest, "1", settings.repeat_memory
            )
        except Exception:  # StoreDown, or a store error: count it
            return False
        if before is not None:
            # through the failure rule's reporter, in the filters' fixed shape:
            #   mailguard login repeat client=203.0.113.7 account="jdoe" protocol=imap
            # a WARNING like the failures it stands for (shown by default), and
            # an action fail2ban's filter never matches (nothing was counted)
            via: dict[str, Any] = {} if ticket.protocol == "http" else {"protocol": ticket.protocol}
            self.policy.emit(
                "repeat",
                ticket.key,
                quoted=frozenset({"account"}),
                account=ticket.account,
                **via,
            )
            return True
        return False

    # -------------------------------------------------------------- undecided
    async def undecided_over(self, who: Client) -> bool:
        """Whether ``who``'s undecided attempts (a check that timed out, a
        backend ``NO [UNAVAILABLE]``, an SMTP 4xx, Dovecot 2.4's ``fail_type:
        internal``) reached ``max_failed_logins`` within ``failure_interval``.

        An undecided attempt is no failure, but an address whose attempts
        only ever come back undecided must not guess for ever: past the cap
        it gets a temporary refusal without a check (never a block).  Counted
        with the store's sliding window (:meth:`~mailguard.stores.base.Store.hit`)
        in a namespace of its own, ``<namespace>_undecided``; a store error
        answers False (the failure rule's own ``on_store_error`` still holds)."""
        policy = self.policy
        if policy.is_safe(who):
            return False
        try:
            seen = await self.store.apeek(self.undecided_namespace, who.key, policy.interval)
        except Exception:  # StoreDown or a store error: the failure rule still applies
            return False
        return seen >= policy.limit

    async def undecided(self, who: Client) -> None:
        """Count one undecided attempt of ``who`` (see :meth:`undecided_over`)."""
        policy = self.policy
        if policy.is_safe(who):
            return
        try:
            await self.store.ahit(self.undecided_namespace, who.key, policy.limit, policy.interval)
        except Exception:
            _log.debug("mailguard mailauth could not count an undecided attempt", exc_info=True)

    def unpaired(self, who: Client, account: str | None, protocol: str) -> Verdict:
        """A ticket for a login whose start this process did not see.

        Dovecot's ``report`` of a session whose ``allow`` went to another
        instance (or was forgotten): that ``allow`` took a slot in the store,
        so ending this ticket gives one slot back and counts the outcome, as
        ending the original ticket would.  No failure is lost.  A safe
        address gets a plain verdict, which ending ignores.
        """
        policy = self.policy
        if policy.is_safe(who):
            return ALLOW
        name = policy.accounts.normalize(account) if account else None
        return LoginVerdict(
            True,
            "attempt",
            who.key,
            watch=True,
            account=name or "",
            credentials=True,
            protocol=protocol,
            wider=who.wider,
        )


def split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``[mailauth]``'s options as ``(own, policy)``: :class:`MailAuthSettings`
    keywords and :class:`~mailguard.policies.InvalidLoginPolicy` keywords."""
    own_names = set(inspect.signature(MailAuthSettings.__init__).parameters) - {"self"}
    own = {k: v for k, v in options.items() if k in own_names}
    policy = {k: v for k, v in options.items() if k not in own_names}
    return own, policy


def build_logins(
    store: Store,
    *,
    on_event: EventHook | None = None,
    max_sessions: int = 100_000,
    **options: Any,
) -> MailLogins:
    """The mail doors' :class:`MailLogins` from ``[mailauth]``'s merged options.

    Raises the options' ``ValueError`` (:func:`~mailguard.options.option_error`)
    on a bad value.
    """
    own, policy_options = split_options(options)
    settings = MailAuthSettings(**own)
    policy = InvalidLoginPolicy(store=store, on_event=on_event, **policy_options)
    return MailLogins(policy, settings, max_sessions=max_sessions)
