"""WSGI middleware: DosFilter, InvalidLoginFilter, DeviceJail.

Each class wraps a WSGI app::

    from mailguard.wsgi import DosFilter
    flask_app.wsgi_app = DosFilter(flask_app.wsgi_app, max_requests_per_sec=100)

The same policies as :mod:`mailguard.asgi`, called synchronously: no event
loop is needed, and a delay is a ``time.sleep`` in the worker (capped by the
policy so delays cannot hold every worker).  The body is never read unless
the policy asks for a bounded prefix, and then ``wsgi.input`` is replaced by a
stream that gives the app every byte unchanged.  The app's own exceptions are
never caught.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar

from .config import Config, load_policies
from .core import ALLOW, Verdict
from .events import EventHook
from .identity import Client
from .policies import FILTERS, DeviceJailPolicy, DosPolicy, InvalidLoginPolicy, Policy
from .request import WsgiRequest
from .stores.base import Store
from .stores.guard import StoreDown

if TYPE_CHECKING:
    import os

    from typing_extensions import Unpack

    from .policies import DeviceOptions, DosOptions, LoginOptions

__all__ = [
    "FILTER_CLASSES",
    "DeviceJail",
    "DosFilter",
    "GuardMiddleware",
    "InvalidLoginFilter",
    "protect",
]

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_log = logging.getLogger("mailguard")


class GuardMiddleware:
    """The shared translation from a policy's verdict to WSGI calls."""

    policy_type: ClassVar[type[Policy]] = Policy

    def __init__(self, app: WSGIApp, /, *, policy: Policy | None = None, **options: Any) -> None:
        if policy is None:
            policy = self.policy_type(**options)
        elif options:
            raise ValueError(f"pass either policy= or options, not both (got {sorted(options)})")
        self.app = app
        self.policy = policy
        policy.announce()  # the startup line (mailguard.events)
        self._resolve: Callable[[Environ], Client] = policy.resolver.from_wsgi
        if isinstance(app, GuardMiddleware) and app.policy.resolver is policy.resolver:
            # Stacked on a filter with the same client settings: the client is
            # resolved once per request, here, and the inner one reads it from
            # the request (mailguard.identity, "Stacked filters").  A lone
            # filter keeps the plain call: no cost when nothing is shared.
            self._resolve = app._resolve = policy.resolver.from_wsgi_shared
        self._reads_body = type(policy).wants_body is not Policy.wants_body
        self._by_client = policy.by_client

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        policy = self.policy
        client = self._resolve(environ)
        request = None
        try:
            if self._by_client:  # the rate limit's hot path: no request view
                verdict = policy.check_client(client)
            else:
                request = WsgiRequest(environ, client)
                wanted = self._reads_body and policy.wants_body(request)
                if wanted:
                    _buffer(request, environ, wanted)
                verdict = policy.check(request)
        except StoreDown as down:
            verdict = policy.degraded(down)
        except Exception:
            _log.exception("mailguard: %s failed on a request; serving it", policy.kind)
            verdict = ALLOW
        if verdict is ALLOW:
            return self.app(environ, start_response)
        return self._act(verdict, request or WsgiRequest(environ, client), environ, start_response)

    def _act(
        self,
        verdict: Verdict,
        request: WsgiRequest,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        policy = self.policy
        if verdict.delay > 0.0:
            try:
                time.sleep(verdict.delay)
            finally:
                policy.release(verdict)
        if not verdict.allowed:
            refusal = policy.refusal_for(verdict)
            start_response(refusal.status_line, list(refusal.headers))
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [refusal.body]
        extra = policy.allowed_headers(verdict)
        if not extra and not verdict.watch:
            return self.app(environ, start_response)
        strip = policy.strip_headers
        reported = False

        def report(status: int | None, seen: dict[str, str]) -> None:
            nonlocal reported
            reported = True
            try:
                policy.finish(request, verdict, status, seen)
            except Exception:
                _log.exception("mailguard: %s could not record a response", policy.kind)

        def watched_start(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            if verdict.watch and not reported:
                report(_status_code(status), _header_map(headers))
                if strip:
                    headers = [(k, v) for k, v in headers if k.lower() not in strip]
            writer: Callable[[bytes], object] = start_response(
                status, list(headers) + extra, exc_info
            )
            return writer

        try:
            result = self.app(environ, watched_start)
        except BaseException:
            if verdict.watch and not reported:
                report(None, {})
            raise
        if not verdict.watch or reported:
            return result
        return _Finally(result, lambda: None if reported else report(None, {}))


def _status_code(status: str) -> int | None:
    try:
        return int(status[:3])
    except (TypeError, ValueError):
        return None


def _header_map(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    seen: dict[str, str] = {}
    for key, value in headers:
        name = key.lower()
        seen[name] = f"{seen[name]}, {value}" if name in seen else value
    return seen


class _Finally:
    """An app's response iterable that runs ``last`` when the server closes it."""

    def __init__(self, inner: Iterable[bytes], last: Callable[[], object]) -> None:
        self._inner = inner
        self._last = last

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._inner)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._last()


class _Replay(io.RawIOBase):
    """``wsgi.input`` that gives back the buffered prefix, then the rest."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        got = self._head.readinto(view)
        if got:
            return got
        data = self._rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _buffer(request: WsgiRequest, environ: Environ, limit: int) -> None:
    """Read up to ``limit`` body bytes for the policy; the app still reads them all."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0 and not environ.get("wsgi.input_terminated"):
        request.body = b""
        return
    stream = environ["wsgi.input"]
    want = min(limit, length) if length > 0 else limit
    head = b""
    while len(head) < want:
        chunk = stream.read(want - len(head))
        if not chunk:
            break
        head += chunk
    request.body = head
    environ["wsgi.input"] = io.BufferedReader(_Replay(head, stream))


class DosFilter(GuardMiddleware):
    """Caps requests per second per client; options: :class:`~mailguard.policies.DosPolicy`."""

    policy_type = DosPolicy

    def __init__(
        self, app: WSGIApp, /, *, policy: Policy | None = None, **options: Unpack[DosOptions]
    ) -> None:
        super().__init__(app, policy=policy, **options)


class InvalidLoginFilter(GuardMiddleware):
    """Blocks addresses after failed logins: :class:`~mailguard.policies.InvalidLoginPolicy`."""

    policy_type = InvalidLoginPolicy

    def __init__(
        self, app: WSGIApp, /, *, policy: Policy | None = None, **options: Unpack[LoginOptions]
    ) -> None:
        super().__init__(app, policy=policy, **options)


class DeviceJail(GuardMiddleware):
    """Jails runaway ActiveSync devices; options: :class:`~mailguard.policies.DeviceJailPolicy`."""

    policy_type = DeviceJailPolicy

    def __init__(
        self, app: WSGIApp, /, *, policy: Policy | None = None, **options: Unpack[DeviceOptions]
    ) -> None:
        super().__init__(app, policy=policy, **options)


FILTER_CLASSES: Mapping[str, type[GuardMiddleware]] = MappingProxyType(
    {entry.kind: globals()[entry.adapter] for entry in FILTERS}
)
"""The class of each filter kind (:data:`mailguard.policies.FILTERS`), by kind."""


def protect(
    app: WSGIApp,
    config: str | os.PathLike[str] | Config,
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> WSGIApp:
    """Wrap ``app`` in every filter a mailguard.toml enables, outermost first.

    :param config: a path to a mailguard.toml (``MAILGUARD_*`` environment
        overrides applied), or a :class:`~mailguard.config.Config`.
    :param store: use this store instead of the one ``[store]`` describes.
    :param on_event: a hook given every event of every filter.
    :raises ~mailguard.config.ConfigError: on any mistake in the file or the
        environment, before any request is served.

    See :mod:`mailguard.config` for the file; the filters are built by
    :func:`mailguard.config.load_policies`.
    """
    for policy in reversed(load_policies(config, store=store, on_event=on_event)):
        app = FILTER_CLASSES[policy.kind](app, policy=policy)
    return app
