"""ASGI middleware: DosFilter, InvalidLoginFilter, DeviceJail.

Each class is a pure ASGI app wrapping another::

    from mailguard.asgi import DosFilter
    app = DosFilter(app, max_requests_per_sec=100)
    # Starlette / FastAPI:
    app.add_middleware(DosFilter, max_requests_per_sec=100)

The options are those of the matching policy in :mod:`mailguard.policies`;
``policy=`` takes a ready policy instead.  Options are checked once, here:
a bad one raises ``ValueError`` naming it.  A request travels adapter ->
identity -> policy -> store -> policy -> adapter; this module only translates
the verdict: call the app, hold the request, or answer for it.

Lifespan and other non-HTTP scopes pass straight through.  A websocket
handshake is counted like a request and refused with a close (code 1013,
"try again later").  The body is never read unless the policy asks for a
bounded prefix of it, and then the app receives every message unchanged.
The app's own exceptions are never caught.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from .config import Config
from .core import ALLOW, Verdict
from .events import EventHook, refused_request
from .identity import Client
from .policies import FILTERS, DeviceJailPolicy, DosPolicy, InvalidLoginPolicy, Policy, PolicyHolder
from .request import AsgiRequest, Request
from .stores.base import Store
from .stores.guard import StoreDown
from .watch import NO_HEADERS, AsgiHeaders, Watching, afinish, body_plan, finish, watching

if TYPE_CHECKING:
    import os

    from typing_extensions import Unpack

    from .live import LiveConfig
    from .policies import DeviceOptions, DosOptions, LoginOptions

__all__ = [
    "FILTER_CLASSES",
    "DeviceJail",
    "DosFilter",
    "GuardMiddleware",
    "InvalidLoginFilter",
    "protect",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("mailguard")


class _State:
    """What a request reads of its filter's policy, read once per request:
    a live change (:meth:`GuardMiddleware.swap`) replaces the whole object
    with one assignment, so a request sees the old policy or the new one,
    never half of each."""

    __slots__ = (
        "adds",
        "by_client",
        "local",
        "plan",
        "policy",
        "quick",
        "reads_body",
        "strip",
        "waits",
    )

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.reads_body = type(policy).wants_body is not Policy.wants_body
        # a policy whose verdict must wait for the whole body (login slots)
        self.waits: Callable[[AsgiRequest], bool] | None = getattr(policy, "waits_for_body", None)
        # both of those with one path match (a login policy whose rules are its own)
        self.plan = body_plan(policy)
        # whether allowed responses get headers (a login's do not: no call for them)
        self.adds = type(policy).allowed_headers is not Policy.allowed_headers
        self.local = policy.store.local
        self.by_client = policy.by_client
        # the rate limit on a memory store: decided by client alone, with no
        # I/O to wait for (GuardMiddleware.__call__'s first lines)
        self.quick = self.by_client and self.local
        self.strip = frozenset(name.encode("latin-1") for name in policy.strip_headers)


class GuardMiddleware(PolicyHolder):
    """The shared translation from a policy's verdict to ASGI messages."""

    policy_type: ClassVar[type[Policy]] = Policy
    _state_for = _State
    live: LiveConfig | None = None
    """The live configuration driving this filter (set by ``protect``, outermost)."""

    def __init__(self, app: ASGIApp, *, policy: Policy | None = None, **options: Any) -> None:
        if policy is None:
            policy = self.policy_type(**options)
        elif options:
            raise ValueError(f"pass either policy= or options, not both (got {sorted(options)})")
        self.app = app
        self._state = _State(policy)
        policy.announce()  # the startup line (mailguard.events)
        self._resolve: Callable[[Scope], Client] = policy.resolver.from_asgi
        if isinstance(app, GuardMiddleware) and app.policy.resolver is policy.resolver:
            # Stacked on a filter with the same client settings: the client is
            # resolved once per request, here, and the inner one reads it from
            # the request (mailguard.identity, "Stacked filters").  A lone
            # filter keeps the plain call: no cost when nothing is shared.
            self._resolve = app._resolve = policy.resolver.from_asgi_shared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        state = self._state  # read once: a live swap never splits a request
        policy = state.policy
        # (a callable kept in an attribute of the instance is read into a local, then
        # called: Python 3.11 specializes that read, not a method call's lookup)
        resolve, app = self._resolve, self.app
        client = resolve(scope)
        if state.quick:  # the rate limit's hot path: no request view, no coroutine hop
            try:
                verdict = policy.check_client(client)
            except StoreDown as down:
                verdict = policy.degraded(down)
            except Exception:
                _log.exception("mailguard: %s failed on a request; serving it", policy.kind)
                verdict = ALLOW
            if verdict is ALLOW:
                await app(scope, receive, send)
            elif not verdict.allowed and verdict.delay <= 0.0:  # (as below)
                await _refuse(policy, verdict, scope, send)
            else:
                await self._act(state, verdict, AsgiRequest(scope, client), scope, receive, send)
            return
        request = None
        deferred = False
        try:
            if state.by_client:  # no request view
                verdict = await policy.acheck_client(client)
            else:
                request = AsgiRequest(scope, client)
                plan = state.plan
                if plan is not None:
                    wanted, waits = plan(request)
                    waits = waits and kind == "http"
                else:
                    wanted = state.reads_body and policy.wants_body(request)
                    waits = kind == "http" and state.waits is not None and state.waits(request)
                if wanted or waits:
                    first = await receive()
                    if first.get("type") == "http.request" and not first.get("more_body", False):
                        # the whole body in one message (a login form, usually):
                        # what _buffer does with it, without its coroutine
                        if wanted:
                            request.body = _body_of(first)
                        receive = _replay(first, receive)
                    else:
                        receive, ended = await _buffer(request, receive, wanted, first)
                        deferred = waits and not ended  # the verdict waits for the rest
                if deferred:
                    verdict = ALLOW
                elif state.local:
                    verdict = policy.check(request)
                else:
                    verdict = await policy.acheck(request)
        except StoreDown as down:
            verdict = policy.degraded(down)
        except Exception:
            _log.exception("mailguard: %s failed on a request; serving it", policy.kind)
            verdict = ALLOW
        if deferred and request is not None:  # outside the try: the app's errors are its own
            await self._deferred(state, request, scope, receive, send)
            return
        if verdict is ALLOW:
            await app(scope, receive, send)
        elif not verdict.allowed and verdict.delay <= 0.0:  # _act's first step, no request view
            await _refuse(policy, verdict, scope, send)
        else:
            request = request or AsgiRequest(scope, client)
            if verdict.delay > 0.0 or not verdict.watch or state.adds or not state.local:
                await self._act(state, verdict, request, scope, receive, send)
                return
            # _act's common case without its coroutine (a login attempt): an
            # allowed verdict to watch, no header to add, a local store
            # (_Watch(policy, request, verdict, send, (), state.strip, True), made
            # without the class call)
            watch = watching(_Watch, policy, request, verdict, send, state.strip)
            try:
                await app(scope, receive, watch.send)
            finally:
                if not watch.reported:
                    finish(policy, request, verdict, None, NO_HEADERS)

    async def _act(
        self,
        state: _State,
        verdict: Verdict,
        request: AsgiRequest,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        policy = state.policy
        if verdict.delay > 0.0:
            try:
                await asyncio.sleep(verdict.delay)
            finally:
                policy.release(verdict)
        if not verdict.allowed:
            await _refuse(policy, verdict, scope, send)
            return
        added = policy.allowed_headers(verdict) if state.adds else None
        watch = verdict.watch
        if not added and not watch:
            await self.app(scope, receive, send)
            return
        extra = [(k.encode(), v.encode()) for k, v in added] if added else []
        strip = state.strip if watch else frozenset()
        local = state.local
        watched = _Watch(policy, request, verdict, send, extra, strip, local, watch)
        try:
            await self.app(scope, receive, watched.send)
        finally:
            if watch and not watched.reported:
                if local:
                    finish(policy, request, verdict, None, NO_HEADERS)
                else:
                    await afinish(policy, request, verdict, None, NO_HEADERS)

    async def _deferred(
        self, state: _State, request: AsgiRequest, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Call the app before the verdict: the body has not arrived in full.

        The verdict is reached when the body's last message arrives (before
        the app gets it), or when the app starts a response without having
        read it all, whichever comes first.  A refusal is sent in the app's
        place: the app then receives ``http.disconnect``, what it sends is
        dropped, and what it raises because of that is not passed on.
        """
        policy = state.policy
        verdict: Verdict | None = None
        refused = False
        reported = False
        gone = False  # the client left before its body ended: no attempt
        strip = state.strip

        async def decide() -> Verdict:
            nonlocal verdict, refused
            if verdict is not None:
                return verdict
            try:
                if state.local:
                    decided = policy.check(request)
                else:
                    decided = await policy.acheck(request)
            except StoreDown as down:
                decided = policy.degraded(down)
            except Exception:
                _log.exception("mailguard: %s failed on a request; serving it", policy.kind)
                decided = ALLOW
            verdict = decided
            if decided.delay > 0.0:
                try:
                    await asyncio.sleep(decided.delay)
                finally:
                    policy.release(decided)
            if not decided.allowed:
                refused = True
                await _refuse(policy, decided, scope, send)
            return decided

        async def report(status: int | None, seen: Mapping[str, str]) -> None:
            nonlocal reported
            reported = True
            if verdict is None or not verdict.watch:
                return
            if state.local:
                finish(policy, request, verdict, status, seen)
            else:
                await afinish(policy, request, verdict, status, seen)

        async def gated_receive() -> Message:
            nonlocal gone
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if verdict is None and not gone:
                kind = message.get("type")
                if kind == "http.request" and not message.get("more_body", False):
                    await decide()
                    if refused:
                        return {"type": "http.disconnect"}
                elif kind == "http.disconnect":
                    gone = True
            return message

        async def gated_send(message: Message) -> None:
            if refused:
                return
            if message["type"] == "http.response.start" and not (gone and verdict is None):
                decided = await decide()
                if refused:
                    return
                headers = list(message.get("headers") or ())
                if decided.watch and not reported:
                    await report(message.get("status"), AsgiHeaders(headers))
                    if strip:
                        headers = [(k, v) for k, v in headers if k.lower() not in strip]
                extra = [(k.encode(), v.encode()) for k, v in policy.allowed_headers(decided)]
                message = {**message, "headers": headers + extra}
            await send(message)

        try:
            await self.app(scope, gated_receive, gated_send)
        except Exception:
            if not refused:
                raise
            _log.debug("mailguard: the app failed on a refused body", exc_info=True)
        finally:
            if not reported:
                await report(None, NO_HEADERS)


class _Watch(Watching):
    """The ``send`` an allowed request's app is given: it reports the response's
    status and headers to the policy when the verdict asks (``watch``), strips
    ``strip``'s headers and adds ``extra`` (``reported`` once it has)."""

    __slots__ = ()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            lines = message.get("headers") or ()
            if not isinstance(lines, (list, tuple)):
                lines = list(lines)
            if not self.reported:
                self.reported = True
                seen = AsgiHeaders(lines)
                if self.local:  # (watch.finish, without the call)
                    policy = self.policy
                    try:
                        policy.finish(self.request, self.verdict, message.get("status"), seen)
                    except Exception:
                        _log.exception("mailguard: %s could not record a response", policy.kind)
                else:
                    await afinish(
                        self.policy, self.request, self.verdict, message.get("status"), seen
                    )
            extra = self.extra
            changed = False
            if extra:  # (changed = bool(extra), without the call)
                changed = True
            strip = self.strip
            if strip:
                for k, _ in lines:
                    if k.lower() in strip:  # (rarely there: look before copying)
                        lines = [(k, v) for k, v in lines if k.lower() not in strip]
                        changed = True
                        break
            if changed:  # else the app's own message goes out as it was
                message = {**message, "headers": [*lines, *extra]}
        to = self.to  # (a local, then the call: see GuardMiddleware.__call__)
        await to(message)


async def _refuse(policy: Policy, verdict: Verdict, scope: Scope, send: Send) -> None:
    refused_request(policy.kind, verdict.reason, verdict.key)
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1013, "reason": "Try Again Later"})
        return
    refusal = policy.refusal_for(verdict)
    await send(
        {"type": "http.response.start", "status": refusal.status,
         "headers": list(refusal.asgi_headers)}
    )  # fmt: skip
    body = b"" if scope.get("method") == "HEAD" else refusal.body
    await send({"type": "http.response.body", "body": body})


async def _buffer(
    request: AsgiRequest, receive: Receive, limit: int, message: Message
) -> tuple[Receive, bool]:
    """Read up to ``limit`` body bytes for the policy (with ``limit`` 0, the
    first message), ``message`` being the first; replay them to the app
    unchanged.

    Returns the app's ``receive`` and whether the body has ended (or the
    client has gone) within what was read.
    """
    held: list[Message] = [message]
    more = message.get("type") == "http.request"
    if more:
        size = len(message.get("body", b""))
        more = bool(message.get("more_body", False))
        while more and size < limit:
            message = await receive()
            held.append(message)
            if message.get("type") != "http.request":
                more = False
                break
            size += len(message.get("body", b""))
            more = bool(message.get("more_body", False))
    if limit:
        request.body = b"".join(m.get("body", b"") for m in held if m.get("type") == "http.request")

    async def replay() -> Message:
        if held:
            return held.pop(0)
        return await receive()

    return replay, not more


def _body_of(message: Message) -> bytes:
    """The body of one ``http.request`` message, as bytes."""
    body = message.get("body", b"")
    return body if body.__class__ is bytes else b"".join((body,))


def _replay(message: Message, receive: Receive) -> Receive:
    """The app's ``receive``: ``message`` (already read), then ``receive``'s."""
    held = [message]

    async def replay() -> Message:
        if held:
            return held.pop()
        return await receive()

    return replay


class DosFilter(GuardMiddleware):
    """Caps requests per second per client; options: :class:`~mailguard.policies.DosPolicy`."""

    policy_type = DosPolicy

    def __init__(
        self, app: ASGIApp, *, policy: Policy | None = None, **options: Unpack[DosOptions]
    ) -> None:
        super().__init__(app, policy=policy, **options)


class InvalidLoginFilter(GuardMiddleware):
    """Blocks addresses after failed logins: :class:`~mailguard.policies.InvalidLoginPolicy`."""

    policy_type = InvalidLoginPolicy

    def __init__(
        self, app: ASGIApp, *, policy: Policy | None = None, **options: Unpack[LoginOptions]
    ) -> None:
        super().__init__(app, policy=policy, **options)


class DeviceJail(GuardMiddleware):
    """Jails runaway ActiveSync devices; options: :class:`~mailguard.policies.DeviceJailPolicy`."""

    policy_type = DeviceJailPolicy

    def __init__(
        self, app: ASGIApp, *, policy: Policy | None = None, **options: Unpack[DeviceOptions]
    ) -> None:
        super().__init__(app, policy=policy, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # GuardMiddleware's, for an HTTP request to a policy that reads no body
        # and is not decided by the client alone, as DeviceJailPolicy is; but
        # the client is resolved only when something reads it, which a request
        # let through on its query's device (DeviceJailPolicy.quick_key) never does.
        state = self._state  # read once: a live swap never splits a request
        if scope["type"] != "http" or state.by_client or state.reads_body or state.waits:
            await super().__call__(scope, receive, send)
            return
        policy = state.policy
        request = _UnresolvedRequest(scope, self._resolve)
        try:
            if state.local:
                verdict = policy.check(request)
            else:
                verdict = await policy.acheck(request)
        except StoreDown as down:
            verdict = policy.degraded(down)
        except Exception:
            _log.exception("mailguard: %s failed on a request; serving it", policy.kind)
            verdict = ALLOW
        if verdict is ALLOW:
            app = self.app  # (a local, then the call: see GuardMiddleware.__call__)
            await app(scope, receive, send)
        elif not verdict.allowed and verdict.delay <= 0.0:
            await _refuse(policy, verdict, scope, send)
        else:
            await self._act(state, verdict, request, scope, receive, send)


_CLIENT_SLOT: Any = Request.__dict__["client"]  # Request's slot, under the property below


class _UnresolvedRequest(AsgiRequest):
    """An :class:`~mailguard.request.AsgiRequest` whose client is resolved
    (by ``resolve``, the filter's own) when first read, if ever."""

    __slots__ = ("_resolve",)

    def __init__(self, scope: Scope, resolve: Callable[[Any], Client]) -> None:
        self.body = None
        self._scope = scope
        self._headers = None
        self._resolve = resolve

    @property
    def client(self) -> Client:
        try:
            found: Client = _CLIENT_SLOT.__get__(self, Request)
        except AttributeError:  # not read yet
            found = self._resolve(self._scope)
            _CLIENT_SLOT.__set__(self, found)
        return found

    @client.setter
    def client(self, value: Client) -> None:
        _CLIENT_SLOT.__set__(self, value)


FILTER_CLASSES: Mapping[str, type[GuardMiddleware]] = MappingProxyType(
    {entry.kind: globals()[entry.adapter] for entry in FILTERS}
)
"""The class of each filter kind (:data:`mailguard.policies.FILTERS`), by kind."""


def protect(
    app: ASGIApp,
    config: str | os.PathLike[str] | Config,
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
    live: LiveConfig | bool | None = None,
    reload_on_hup: bool | None = None,
) -> ASGIApp:
    """Wrap ``app`` in every filter a mailguard.toml enables, outermost first.

    :param config: a path to a mailguard.toml (``MAILGUARD_*`` environment
        overrides applied), or a :class:`~mailguard.config.Config`.
    :param store: use this store instead of the one ``[store]`` describes.
    :param on_event: a hook given every event of every filter.
    :param live: follow the live configuration (:mod:`mailguard.live`): by
        default (None) when the store is shared (Redis) or ``config`` is a
        file; a :class:`~mailguard.live.LiveConfig` to attach the filters to
        (give the same one to :class:`~mailguard.admin.AdminApp`); False for
        never.  The outermost filter's ``live`` attribute holds it.
    :param reload_on_hup: re-read the file on SIGHUP (default: for a memory
        store read from a file; only from the main thread, and only when
        nothing else handles SIGHUP).
    :raises ~mailguard.config.ConfigError: on any mistake in the file or the
        environment, before any request is served.

    See :mod:`mailguard.config` for the file; the filters are built by
    :func:`mailguard.config.load_policies`.
    """
    from .live import protect_with

    wrapped: ASGIApp = protect_with(
        FILTER_CLASSES, app, config, store=store, on_event=on_event, live=live,
        reload_on_hup=reload_on_hup,
    )  # fmt: skip
    return wrapped
