"""What every policy shares: options, identity, the store, refusals.

A policy is sans-IO: given a :class:`~mailguard.request.Request` it returns a
:class:`~mailguard.core.Verdict`, asking its store for counts on the way.  It
has a synchronous face (``check``, ``finish``) for WSGI and an asynchronous
one (``acheck``, ``afinish``) for ASGI; the two differ only in how they call
the store, and the rules themselves sit in plain methods both faces call.
Adapters (:mod:`mailguard.asgi`, :mod:`mailguard.wsgi`) do the rest:

1. resolve the client (``policy.resolver``) and wrap the request;
2. buffer up to ``policy.wants_body(request)`` bytes of body, if asked;
3. ``verdict = policy.check(request)``, or ``policy.check_client(client)``
   when ``policy.by_client`` says the client alone decides;
4. hold the request ``verdict.delay`` seconds, then ``policy.release(verdict)``;
5. refuse with ``policy.refusal_for(verdict)`` or call the app, adding
   ``policy.allowed_headers(verdict)`` and, when ``verdict.watch`` is set,
   reporting the response status and headers to ``policy.finish``.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, TypedDict

from ..core import ALLOW, Verdict, retry_after
from ..events import Event, EventHook, Field, Reporter
from ..identity import AddressSet, Client, ClientResolver
from ..options import option_error
from ..options import status_code as check_status
from ..request import Request
from ..stores.base import Store
from ..stores.guard import STORE_ERROR_MODES, GuardedStore, StoreDown
from ..stores.memory import MemoryStore

__all__ = [
    "DEFAULT_IPV6_WIDER",
    "Policy",
    "PolicyHolder",
    "PolicyOptions",
    "Refusal",
    "RefusalHook",
    "RefusalInfo",
    "wider_limit",
]

_log = logging.getLogger("mailguard")

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # no CR, LF, NUL or other controls
_OURS = frozenset({"retry-after", "content-length", "transfer-encoding"})


@dataclass(frozen=True, slots=True)
class RefusalInfo:
    """What a ``refusal=`` hook is told about a refusal.

    Nothing of the request and nothing of the client: refusals are cached by
    shape and sent to every client of that shape, so a hook cannot echo
    request text nor leak one client's address to another.

    :ivar filter: the filter's kind: ``"dos"``, ``"device"`` or ``"login"``.
    :ivar reason: why: ``"rate"`` (DosFilter), ``"blocked"``, ``"busy"``,
        ``"tarpit"`` (InvalidLoginFilter), ``"rate"``, ``"identity"``,
        ``"jailed"`` (DeviceJail), ``"store-error"`` (any).
    :ivar retry_after: the whole seconds of ``Retry-After`` (at least 1),
        which mailguard sends whatever the hook answers.
    :ivar status: the status mailguard would send (``status_code``; 503 for
        ``"store-error"``).
    :ivar message: the sentence of mailguard's own body ("too many failed
        logins from your address.").
    :ivar headers: mailguard's other headers for this refusal (``RateLimit-*``
        of ``DosFilter(headers=True)``), sent whatever the hook answers.
    """

    filter: str
    reason: str
    retry_after: int
    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = ()


RefusalHook = Callable[
    [RefusalInfo],
    tuple[int, Mapping[str, str] | Iterable[tuple[str, str]], bytes | str],
]
"""``refusal(info) -> (status, headers, body)``: the refusal an application wants.

``status`` 400-599; ``headers`` a mapping or ``(name, value)`` pairs (a
``Content-Type`` is advised; ``Retry-After``, ``Content-Length`` and
``Transfer-Encoding`` are mailguard's and dropped); ``body`` bytes or text
(sent as UTF-8).  Without a ``Cache-Control`` the refusal gets ``no-store``."""


def _phrase(status: int) -> str:
    """The reason phrase of ``status``; one without a standard phrase (499) is "Refused"."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Refused"


DEFAULT_IPV6_WIDER: tuple[tuple[int, float], ...] = ((56, 4.0), (48, 16.0))
"""IPv6 networks counted besides the client's ``ipv6_prefix`` one, with their
limit factors: a /56 (RIPE-690's advice for a home) at 4x the limit, a /48 (a
business, or a generous home) at 16x."""


def _wider_factors(pairs: object) -> dict[int, float]:
    """``ipv6_wider`` checked: ``{prefix: factor}``."""
    problem = (
        "must be (prefix, factor) pairs such as ((56, 4.0), (48, 16.0)), a prefix from 16"
        f" to 127 and a factor from 1 to 10000, or () for none; got {pairs!r}"
    )
    if isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Iterable):
        raise option_error("ipv6_wider", problem)
    found: dict[int, float] = {}
    for pair in pairs:
        if isinstance(pair, (str, bytes)) or not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise option_error("ipv6_wider", problem)
        prefix, factor = pair
        if (
            isinstance(prefix, bool)
            or not isinstance(prefix, int)
            or not 16 <= prefix <= 127
            or isinstance(factor, bool)
            or not isinstance(factor, (int, float))
            or not 1.0 <= factor <= 10000.0
            or prefix in found
        ):
            raise option_error("ipv6_wider", problem)
        found[prefix] = float(factor)
    return found


def wider_limit(limit: int, factor: float) -> int:
    """A wider network's limit: ``limit`` times ``factor``, rounded up."""
    return max(limit, math.ceil(limit * factor))


_IPV4_WIDEST = 8  # a trusted proxy network may not be wider than a /8 ...
_IPV6_WIDEST = 16  # ... or, for IPv6, a /16 (unless it is all private)
_IPV4_IN_IPV6 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "::/96"))
_IPV6_PRIVATE = tuple(ipaddress.IPv6Network(n) for n in ("fc00::/7", "fe80::/10"))


def _not_everyone(entry: object) -> None:
    """Refuse a ``trusted_proxies`` entry that covers (nearly) every address.

    Believing the forwarding header of every peer lets any client pick its own
    address, which switches every limit off.  Refused: an IPv4 network wider
    than /8 (``0.0.0.0/0`` included), an IPv6 network wider than /16
    (``::/0`` included) that is not wholly unique-local or link-local, and an
    IPv4-mapped, NAT64 or IPv4-compatible network wider than the IPv4 /8.
    Entries that are not networks are left to the resolver to judge.
    """
    if not isinstance(entry, str) or "/" not in entry:
        return
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        return
    if isinstance(network, ipaddress.IPv4Network):
        too_wide = network.prefixlen < _IPV4_WIDEST
    elif any(network.subnet_of(v4) for v4 in _IPV4_IN_IPV6):
        too_wide = network.prefixlen - 96 < _IPV4_WIDEST
    else:
        too_wide = network.prefixlen < _IPV6_WIDEST and not any(
            network.subnet_of(private) for private in _IPV6_PRIVATE
        )
    if too_wide:
        raise option_error(
            "trusted_proxies",
            f"{entry!r} covers (nearly) every address: any client could then choose"
            " its own address and dodge every limit; list your proxies' addresses"
            f" (networks at most /{_IPV4_WIDEST} for IPv4, /{_IPV6_WIDEST} for IPv6)",
        )


class Refusal:
    """A ready refusal: status, headers (with Content-Length) and body, in
    the shapes both adapters send."""

    __slots__ = ("asgi_headers", "body", "headers", "status", "status_line")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.body = body
        self.headers = [*headers, ("content-length", str(len(body)))]
        self.status_line = f"{status} {_phrase(status)}"
        self.asgi_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers]


class PolicyOptions(TypedDict, total=False):
    """The keywords of :class:`Policy` (every filter takes them), for ``**options``."""

    store: Store | None
    safe_ips: Iterable[str]
    trusted_proxies: Iterable[str]
    forwarded_header: str
    ipv6_prefix: int
    ipv6_wider: Iterable[tuple[int, float]]
    status_code: int
    namespace: str | None
    on_store_error: str | None
    on_event: EventHook | None
    refusal: RefusalHook | None


class Policy:
    """Options every filter takes.

    :param store: where counts and blocks live; default a private
        :class:`~mailguard.MemoryStore`.  Share one store between filters,
        and use a :class:`~mailguard.RedisStore` when several processes serve
        the same users.
    :param safe_ips: addresses and CIDR networks this filter never counts.
    :param trusted_proxies: proxies whose forwarding header is believed (see
        :mod:`mailguard.identity`); a network covering nearly every address
        (wider than /8 for IPv4, /16 for IPv6) is refused.
    :param forwarded_header: the one header those proxies write:
        ``"x-forwarded-for"`` (default), ``"forwarded"`` or ``"x-real-ip"``.
    :param ipv6_prefix: IPv6 clients are counted per network of this many
        bits (default 64, 32 to 128).
    :param ipv6_wider: ``(prefix, factor)`` pairs: an IPv6 client is also
        counted in its network of each wider ``prefix``, with the filter's
        limit times ``factor`` (default ``((56, 4.0), (48, 16.0))``: one
        subscriber often holds a /56 or a /48; ``()`` counts the
        ``ipv6_prefix`` network only).  Prefixes not shorter than
        ``ipv6_prefix`` are left out.
    :param status_code: the status of a refusal (default 503).
    :param namespace: this filter's keys in the store (default: its kind);
        give two filters of one kind on one store different namespaces.
    :param on_store_error: what to do when the store cannot answer:
        ``"open"`` serves the request, ``"closed"`` refuses it with 503,
        ``"memory"`` counts in a local :class:`~mailguard.MemoryStore` until
        the store is back.
    :param on_event: a callable that receives every
        :class:`~mailguard.events.Event` this filter reports.
    :param refusal: ``refusal(info) -> (status, headers, body)``, the refusal
        this filter sends (:data:`RefusalHook`, given a :class:`RefusalInfo`):
        JSON for an API, an HTML page for people, another status for a
        protocol.  ``Retry-After`` is always mailguard's.  Called once per
        distinct refusal and the answer reused, so it should depend on
        ``info`` alone; an answer that raises or is malformed is logged and
        mailguard's own refusal sent.  Default None: a plain-text refusal.
    """

    kind: ClassVar[str] = "policy"
    default_on_store_error: ClassVar[str] = "open"

    def __init__(
        self,
        *,
        store: Store | None = None,
        safe_ips: Iterable[str] = (),
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
        ipv6_prefix: int = 64,
        ipv6_wider: Iterable[tuple[int, float]] = DEFAULT_IPV6_WIDER,
        status_code: int = 503,
        namespace: str | None = None,
        on_store_error: str | None = None,
        on_event: EventHook | None = None,
        refusal: RefusalHook | None = None,
    ) -> None:
        if store is not None and not isinstance(store, Store):
            raise option_error("store", f"must be a mailguard store, got {store!r}")
        if not isinstance(trusted_proxies, (str, bytes)) and isinstance(trusted_proxies, Iterable):
            trusted_proxies = tuple(trusted_proxies)
            for entry in trusted_proxies:
                _not_everyone(entry)
        # one resolver (and cache) per settings, shared with every filter that has them
        factors = _wider_factors(ipv6_wider)
        self.resolver = ClientResolver.shared(
            trusted_proxies,
            ipv6_prefix=ipv6_prefix,
            forwarded_header=forwarded_header,
            ipv6_wider=factors,
        )
        #: the limit factor of each of ``Client.wider``'s keys, in its order
        self.wider_factors = tuple(factors[p] for p in self.resolver.ipv6_wider)
        self.safe_ips = AddressSet(safe_ips, name="safe_ips")
        self.any_safe = bool(self.safe_ips)  # read per request: a plain bool, no call
        self.status_code = check_status("status_code", status_code)
        self.namespace = self.kind if namespace is None else namespace
        if not isinstance(self.namespace, str) or not self.namespace.isidentifier():
            raise option_error("namespace", f"must be a short identifier, got {namespace!r}")
        mode = self.default_on_store_error if on_store_error is None else on_store_error
        if mode not in STORE_ERROR_MODES:
            raise option_error(
                "on_store_error", f"must be one of {', '.join(STORE_ERROR_MODES)}, got {mode!r}"
            )
        self.on_store_error = mode
        primary = store if store is not None else MemoryStore()
        self.store: Store = (
            primary if isinstance(primary, MemoryStore) else GuardedStore(primary, mode)
        )
        self.report = Reporter(self.kind, on_event)
        self._announced = False
        if refusal is not None and not callable(refusal):
            raise option_error(
                "refusal",
                f"must be callable as refusal(info) -> (status, headers, body), got {refusal!r}",
            )
        self.refusal_hook: RefusalHook | None = refusal
        self._refusals: dict[tuple[object, ...], Refusal] = {}

    # --------------------------------------------------------------- steps
    def is_safe(self, client: Client) -> bool:
        return self.any_safe and client.is_ip and self.safe_ips.has_canonical(client.address)

    def wants_body(self, request: Request) -> int:
        """How many body bytes ``check`` needs buffered first (0: none)."""
        return 0

    def check(self, request: Request) -> Verdict:
        return ALLOW

    async def acheck(self, request: Request) -> Verdict:
        return ALLOW

    by_client: bool = False
    """True when the verdict depends on nothing but the client: the adapters
    then call ``check_client`` / ``acheck_client`` and build no request view
    (the hot path of a rate limit keyed by address)."""

    def check_client(self, client: Client) -> Verdict:
        raise NotImplementedError

    async def acheck_client(self, client: Client) -> Verdict:
        raise NotImplementedError

    def finish(
        self, request: Request, verdict: Verdict, status: int | None, headers: Mapping[str, str]
    ) -> None:
        """The response to a watched request started (``status`` None: the app failed)."""

    async def afinish(
        self, request: Request, verdict: Verdict, status: int | None, headers: Mapping[str, str]
    ) -> None:
        self.finish(request, verdict, status, headers)

    def release(self, verdict: Verdict) -> None:
        """A delayed request has finished waiting."""

    strip_headers: frozenset[str] = frozenset()
    """Response headers (lower-case) removed from watched responses."""

    def allowed_headers(self, verdict: Verdict) -> list[tuple[str, str]]:
        """Headers added to an allowed response."""
        return []

    def degraded(self, down: StoreDown) -> Verdict:
        """The verdict while the store is down and ``on_store_error`` is open or closed."""
        if down.mode == "closed":
            return Verdict(False, "store-error", retry_after=5)
        return ALLOW

    def refusal_for(self, verdict: Verdict) -> Refusal:
        """The refusal for ``verdict``, built once per distinct shape and reused.

        A flood is answered with the same few refusals over and over, so they
        are cached (bounded), already encoded for both interfaces.
        """
        shape = (verdict.reason, verdict.retry_after, verdict.remaining, verdict.limit,
                 retry_after(verdict.reset))  # fmt: skip
        made = self._refusals.get(shape)
        if made is None:
            if len(self._refusals) >= 512:
                self._refusals.clear()
            status, headers, body = self.refusal(verdict)
            made = self._refusals[shape] = Refusal(status, headers, body)
        return made

    def refusal(self, verdict: Verdict) -> tuple[int, list[tuple[str, str]], bytes]:
        """Status, headers and body of a refusal (the ``refusal=`` hook's, if given)."""
        wait = max(1, verdict.retry_after)
        status = 503 if verdict.reason == "store-error" else self.status_code
        extra = self.refusal_headers(verdict)
        message = self.explain(verdict)
        if self.refusal_hook is not None:
            info = RefusalInfo(self.kind, verdict.reason, wait, status, message, tuple(extra))
            try:
                return self._hook_refusal(info)
            except Exception:
                _log.exception(
                    "mailguard %s refusal hook failed (%s); sending the default refusal",
                    self.kind,
                    verdict.reason,
                )
        headers = [
            ("content-type", "text/plain; charset=utf-8"),
            ("retry-after", str(wait)),
            ("cache-control", "no-store"),
            *extra,
        ]
        body = f"{_phrase(status)}: {message} Retry in {wait} s.\n"
        return status, headers, body.encode()

    def _hook_refusal(self, info: RefusalInfo) -> tuple[int, list[tuple[str, str]], bytes]:
        """The ``refusal=`` hook's answer, checked; ``Retry-After`` is ours."""
        assert self.refusal_hook is not None
        answer = self.refusal_hook(info)
        if not isinstance(answer, tuple) or len(answer) != 3:
            raise TypeError(f"must return (status, headers, body), got {answer!r:.80}")
        status, given, body = answer
        status = check_status("refusal", status)
        if isinstance(body, str):
            body = body.encode()
        if not isinstance(body, bytes):
            raise TypeError(f"the body must be bytes or str, got {type(body).__name__}")
        pairs = given.items() if isinstance(given, Mapping) else given
        mine = _OURS | {name.lower() for name, _ in info.headers}
        headers: list[tuple[str, str]] = []
        for pair in pairs:
            name, value = pair
            if not isinstance(name, str) or not _TOKEN.fullmatch(name):
                raise ValueError(f"not a header name: {name!r:.80}")
            if not isinstance(value, str) or not _FIELD_VALUE.fullmatch(value):
                raise ValueError(f"header {name} has a value that cannot be sent: {value!r:.80}")
            if name.lower() not in mine:
                headers.append((name.lower(), value))
        named = {name for name, _ in headers}
        if "content-type" not in named:
            headers.append(("content-type", "text/plain; charset=utf-8"))
        headers.append(("retry-after", str(info.retry_after)))
        if "cache-control" not in named:
            headers.append(("cache-control", "no-store"))
        headers.extend(info.headers)
        return status, headers, body

    def refusal_headers(self, verdict: Verdict) -> list[tuple[str, str]]:
        return []

    def explain(self, verdict: Verdict) -> str:
        """One sentence for the refusal body (never echoes request text)."""
        if verdict.reason == "store-error":
            return "the service is temporarily unable to check this request."
        return "too many requests."

    def emit(
        self,
        action: str,
        client: str,
        level: int = logging.WARNING,
        quoted: frozenset[str] = frozenset(),
        **fields: Any,
    ) -> None:
        """Report an event; ``quoted`` names the fields that hold request text."""
        self.report.emit(Event(self.kind, action, client, tuple(fields.items()), quoted), level)

    def announce(self) -> None:
        """Log the startup line once (the adapters call it when they wrap an app)::

        mailguard login started guards=/login limit=5/300s block=900s scope=login
            store=memory per=process pid=812
        """
        if self._announced:
            return
        self._announced = True
        self.report.started(self.startup_fields())

    def startup_fields(self) -> tuple[tuple[str, Field], ...]:
        """What the startup line says: what the filter guards, its limits, its store."""

        def get(name: str, default: Any = None) -> Any:
            # (getattr, not self.__dict__: reading __dict__ makes CPython 3.11
            # give up the instance's inline attribute values for a dict, and
            # every attribute read on the request path becomes a dict lookup)
            return getattr(self, name, default)

        fields: list[tuple[str, Field]] = []
        if self.kind == "dos":
            exempt = get("exempt_paths")
            fields.append(("guards", "all-requests" if not exempt else "all-but-exempt"))
            fields.append(("limit", f"{get('limit')}/1s"))
            delay = get("delay_ms", -1)
            mode = "reject" if delay < 0 else ("monitor" if delay == 0 else "delay")
            fields.append(("mode", mode))
        elif self.kind == "login":
            paths = getattr(get("login_paths"), "entries", ())
            fields.append(("guards", ",".join(paths) or "none"))
            fields.append(("limit", f"{get('limit')}/{_secs(get('interval'))}"))
            fields.append(("block", _secs(get("block_duration"))))
            fields.append(("scope", str(get("block_scope"))))
        elif self.kind == "device":
            fields.append(("guards", ",".join(get("paths") or ()) or "none"))
            fields.append(("limit", f"{get('max_requests')}/{_secs(get('time_window'))}"))
            fields.append(("jail", _secs(get("jail_duration"))))
        if self.namespace != self.kind:
            fields.append(("namespace", self.namespace))
        if isinstance(self.store, MemoryStore):
            # every worker process has its own memory, and so its own counts
            fields.extend((("store", "memory"), ("per", "process"), ("pid", os.getpid())))
        else:
            primary = getattr(self.store, "primary", self.store)
            name = type(primary).__name__.removesuffix("Store").lower() or "custom"
            fields.extend((("store", name), ("on_store_error", self.on_store_error)))
        return tuple(fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r}, store={self.store!r})"


def _secs(value: object) -> str:
    """A duration for the startup line: ``300s``, ``1.5s``."""
    if isinstance(value, (int, float)):
        return f"{value:g}s"
    return str(value)


class PolicyHolder:
    """A front's policy in force, replaced whole by one assignment.

    A front keeps what a request reads of its policy in one immutable state
    object (``_state``, made by ``_state_for(policy)``), read once per
    request: :meth:`swap` (a live configuration change) replaces it with one
    assignment, so a request sees the old policy or the new one, never half
    of each.
    """

    _state: Any
    _state_for: ClassVar[type[Any]]  # a class taking the policy

    @property
    def policy(self) -> Policy:
        """The policy in force (a live change replaces it: :meth:`swap`)."""
        policy: Policy = self._state.policy
        return policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        # deprecated: assigning used to replace the policy but not what the
        # front had read of it at construction; swap() replaces both at once
        warnings.warn(
            "assigning filter.policy is deprecated: use filter.swap(policy)",
            DeprecationWarning,
            stacklevel=2,
        )
        self.swap(policy)

    def swap(self, policy: Policy) -> None:
        """Put ``policy`` in force for the next requests, in one assignment
        (requests under way finish with the policy they started with).

        It must be of the same kind, on the same client resolver (the client
        settings cannot change while running), so stacked filters still
        resolve a request once.
        """
        current = self.policy
        if policy.kind != current.kind or policy.resolver is not current.resolver:
            raise ValueError(
                f"swap: a {policy.kind} policy with the same client settings is needed"
                f" for this {current.kind} filter"
            )
        self._state = self._state_for(policy)
