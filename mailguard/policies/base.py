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

import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, TypedDict

from ..core import ALLOW, Verdict, retry_after
from ..events import Event, EventHook, Reporter
from ..identity import AddressSet, Client, ClientResolver
from ..options import option_error
from ..options import status_code as check_status
from ..request import Request
from ..stores.base import Store
from ..stores.guard import STORE_ERROR_MODES, GuardedStore, StoreDown
from ..stores.memory import MemoryStore

__all__ = ["Policy", "PolicyOptions", "Refusal", "RefusalHook", "RefusalInfo"]

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
        :mod:`mailguard.identity`).
    :param forwarded_header: the one header those proxies write:
        ``"x-forwarded-for"`` (default), ``"forwarded"`` or ``"x-real-ip"``.
    :param ipv6_prefix: IPv6 clients are counted per network of this many
        bits (default 64, 32 to 128).
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
        status_code: int = 503,
        namespace: str | None = None,
        on_store_error: str | None = None,
        on_event: EventHook | None = None,
        refusal: RefusalHook | None = None,
    ) -> None:
        if store is not None and not isinstance(store, Store):
            raise option_error("store", f"must be a mailguard store, got {store!r}")
        # one resolver (and cache) per settings, shared with every filter that has them
        self.resolver = ClientResolver.shared(
            trusted_proxies, ipv6_prefix=ipv6_prefix, forwarded_header=forwarded_header
        )
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
        if refusal is not None and not callable(refusal):
            raise option_error(
                "refusal",
                f"must be callable as refusal(info) -> (status, headers, body), got {refusal!r}",
            )
        self.refusal_hook: RefusalHook | None = refusal
        self._refusals: dict[tuple[object, ...], Refusal] = {}

    # --------------------------------------------------------------- steps
    def is_safe(self, client: Client) -> bool:
        return self.any_safe and client.is_ip and client.address in self.safe_ips

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r}, store={self.store!r})"
