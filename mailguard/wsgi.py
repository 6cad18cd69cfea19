"""WSGI middleware: DosFilter, InvalidLoginFilter, DeviceJail.

Each class wraps a WSGI app::

    from mailguard.wsgi import DosFilter
    flask_app.wsgi_app = DosFilter(flask_app.wsgi_app, max_requests_per_sec=100)

The same policies as :mod:`mailguard.asgi`, called synchronously: no event
loop is needed, and a delay is a ``time.sleep`` in the worker (capped by the
policy so delays cannot hold every worker: DosFilter holds at most 2 requests
at once, 1 per client, unless told otherwise).  The body is never read unless
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

from .config import Config
from .core import ALLOW, Verdict
from .events import EventHook, refused_request
from .identity import Client
from .policies import FILTERS, DeviceJailPolicy, DosPolicy, InvalidLoginPolicy, Policy, PolicyHolder
from .request import WsgiRequest
from .stores.base import Store
from .stores.guard import StoreDown
from .watch import NO_HEADERS, Watching, WsgiHeaders, body_plan, finish, watching

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

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_log = logging.getLogger("mailguard")

# int(text) of every decimal text of up to three digits: a status line's code
# and a login form's Content-Length, read without int() (which makes a copy of
# the text and parses it); int() reads any other text
_DECIMALS = {str(n): n for n in range(1000)}

# io.BytesIO as a global of this module: _buffer makes one per login form, and
# Python 3.11 specializes that read (not always the io module's attribute)
_BytesIO = io.BytesIO


class _State:
    """What a request reads of its filter's policy, read once per request:
    a live change (:meth:`GuardMiddleware.swap`) replaces the whole object
    with one assignment, so a request sees the old policy or the new one,
    never half of each."""

    __slots__ = ("adds", "by_client", "plan", "policy", "reads_body", "strip", "waits")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.reads_body = type(policy).wants_body is not Policy.wants_body
        self.by_client = policy.by_client
        hold_in_threads = getattr(policy, "hold_in_threads", None)
        if hold_in_threads is not None:  # a delay here holds a worker thread
            hold_in_threads()
        # a policy whose verdict must wait for the whole body (login slots)
        self.waits: Callable[[WsgiRequest], bool] | None = getattr(policy, "waits_for_body", None)
        # both of those with one path match (a login policy whose rules are its own)
        self.plan = body_plan(policy)
        # whether allowed responses get headers (a login's do not: no call for them)
        self.adds = type(policy).allowed_headers is not Policy.allowed_headers
        self.strip = policy.strip_headers


class GuardMiddleware(PolicyHolder):
    """The shared translation from a policy's verdict to WSGI calls."""

    policy_type: ClassVar[type[Policy]] = Policy
    _state_for = _State
    live: LiveConfig | None = None
    """The live configuration driving this filter (set by ``protect``, outermost)."""

    def __init__(self, app: WSGIApp, /, *, policy: Policy | None = None, **options: Any) -> None:
        if policy is None:
            policy = self.policy_type(**options)
        elif options:
            raise ValueError(f"pass either policy= or options, not both (got {sorted(options)})")
        self.app = app
        self._state = _State(policy)
        policy.announce()  # the startup line (mailguard.events)
        self._resolve: Callable[[Environ], Client] = policy.resolver.from_wsgi
        if isinstance(app, GuardMiddleware) and app.policy.resolver is policy.resolver:
            # Stacked on a filter with the same client settings: the client is
            # resolved once per request, here, and the inner one reads it from
            # the request (mailguard.identity, "Stacked filters").  A lone
            # filter keeps the plain call: no cost when nothing is shared.
            self._resolve = app._resolve = policy.resolver.from_wsgi_shared

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        state = self._state  # read once: a live swap never splits a request
        policy = state.policy
        # (a callable kept in an attribute of the instance is read into a local, then
        # called: Python 3.11 specializes that read, not a method call's lookup)
        resolve, app = self._resolve, self.app
        client = resolve(environ)
        request = None
        deferred = False
        try:
            if state.by_client:  # the rate limit's hot path: no request view
                verdict = policy.check_client(client)
            else:
                request = WsgiRequest(environ, client)
                plan = state.plan
                if plan is not None:
                    wanted, waits = plan(request)
                else:
                    wanted = state.reads_body and policy.wants_body(request)
                    waits = state.waits is not None and state.waits(request)
                # buffer what the policy reads; a verdict that waits for the
                # rest of the body is reached while the app reads it
                if wanted or waits:  # (bool(wanted or waits) and ..., without the call)
                    deferred = not _buffer(request, environ, wanted) and waits
                verdict = ALLOW if deferred else policy.check(request)
        except StoreDown as down:
            verdict = policy.degraded(down)
        except Exception:
            _log.exception("mailguard: %s failed on a request; serving it", policy.kind)
            verdict = ALLOW
        if deferred and request is not None:  # outside the try: the app's errors are its own
            return self._deferred(policy, request, environ, start_response)
        if verdict is ALLOW:
            return app(environ, start_response)
        request = request or WsgiRequest(environ, client)
        if verdict.delay > 0.0 or not verdict.allowed or not verdict.watch or state.adds:
            return self._act(state, verdict, request, environ, start_response)
        # _act's common case (a login attempt): an allowed verdict to watch, no
        # header to add; the same steps without the call
        # (_Watched(policy, request, verdict, start_response, (), state.strip), made
        # without the class call)
        watched = watching(_Watched, policy, request, verdict, start_response, state.strip)
        try:  # (watched.serve, without the call)
            result = app(environ, watched.start)
        except BaseException:
            watched.last()
            raise
        return result if watched.reported else _Finally(result, watched.last)

    def _act(
        self,
        state: _State,
        verdict: Verdict,
        request: WsgiRequest,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        policy = state.policy
        if verdict.delay > 0.0:
            try:
                time.sleep(verdict.delay)
            finally:
                policy.release(verdict)
        if not verdict.allowed:
            refused_request(policy.kind, verdict.reason, verdict.key)
            refusal = policy.refusal_for(verdict)
            start_response(refusal.status_line, list(refusal.headers))
            return [] if environ.get("REQUEST_METHOD") == "HEAD" else [refusal.body]
        extra = policy.allowed_headers(verdict) if state.adds else []
        watch = verdict.watch
        if not extra and not watch:
            return self.app(environ, start_response)
        strip = state.strip if watch else ()
        watched = _Watched(policy, request, verdict, start_response, extra, strip, True, watch)
        return watched.serve(self.app, environ)

    def _deferred(
        self,
        policy: Policy,
        request: WsgiRequest,
        environ: Environ,
        start_response: StartResponse,
    ) -> Iterable[bytes]:
        """Call the app before the verdict: the body has not arrived in full.

        The verdict is reached when the app reads the body's end, or when it
        starts a response without having read it, whichever comes first.  A
        refusal then stops the body (the app's read raises
        :class:`BodyRefused`) and replaces whatever the app answers.
        """
        gate = _Gate(policy, request, environ, start_response)
        stream = environ["wsgi.input"]
        if isinstance(stream, io.BufferedReader) and isinstance(stream.raw, _Replay):
            gate.replay = stream.raw
            stream.raw.at_end = gate.body_ended
        try:
            result = self.app(environ, gate.start)
        except Exception:
            if not gate.refused:
                gate.done()
                raise
            _log.debug("mailguard: the app failed on a refused body", exc_info=True)
            result = []
        if gate.refused:
            _close(result)
            gate.done()
            return gate.answer()
        return _Gated(result, gate)


class BodyRefused(ConnectionAbortedError):
    """Raised to an app reading a body whose request mailguard refused.

    The request was refused when its body ended (too many login attempts at
    once, or a blocked address): the app gets no more of it, and mailguard
    answers in its place, whatever the app then does.
    """


def _close(result: Iterable[bytes]) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _Gate:
    """One deferred request: its verdict, reached once, and its response."""

    def __init__(
        self,
        policy: Policy,
        request: WsgiRequest,
        environ: Environ,
        start_response: StartResponse,
    ) -> None:
        self.policy = policy
        self.request = request
        self.environ = environ
        self.start_response = start_response
        self.replay: _Replay | None = None
        self.verdict: Verdict | None = None
        self.refused = False
        self.answered = False
        self.reported = False

    def decide(self) -> Verdict:
        verdict = self.verdict
        if verdict is not None:
            return verdict
        policy = self.policy
        try:
            verdict = policy.check(self.request)
        except StoreDown as down:
            verdict = policy.degraded(down)
        except Exception:
            _log.exception("mailguard: %s failed on a request; serving it", policy.kind)
            verdict = ALLOW
        self.verdict = verdict
        if verdict.delay > 0.0:
            try:
                time.sleep(verdict.delay)
            finally:
                policy.release(verdict)
        self.refused = not verdict.allowed
        return verdict

    def body_ended(self) -> None:
        """The body's last bytes have arrived: decide before the app sees them."""
        if not self.decide().allowed:
            raise BodyRefused("mailguard refused this request")

    def start(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        if self.verdict is None and self.replay is not None and self.replay.short:
            # the client left before its body ended: no attempt, and no one to answer
            writer: Callable[[bytes], object] = self.start_response(status, headers, exc_info)
            return writer
        verdict = self.decide()
        if self.refused:
            self.answer()
            return _discard
        policy = self.policy
        if verdict.watch and not self.reported:
            self.report(_status_code(status), WsgiHeaders(headers))
            strip = policy.strip_headers
            if strip:
                headers = [(k, v) for k, v in headers if k.lower() not in strip]
        extra = policy.allowed_headers(verdict)
        writer = self.start_response(status, list(headers) + extra, exc_info)
        return writer

    def report(self, status: int | None, seen: Mapping[str, str]) -> None:
        self.reported = True
        verdict = self.verdict
        if verdict is None or not verdict.watch:
            return
        finish(self.policy, self.request, verdict, status, seen)

    def done(self) -> None:
        """The request is over: an attempt not yet reported ends unknown."""
        if not self.reported:
            self.report(None, NO_HEADERS)

    def answer(self) -> list[bytes]:
        """Send the refusal (once) and return its body."""
        assert self.verdict is not None
        refusal = self.policy.refusal_for(self.verdict)
        if not self.answered:
            self.answered = True
            refused_request(self.policy.kind, self.verdict.reason, self.verdict.key)
            self.start_response(refusal.status_line, list(refusal.headers))
        return [] if self.environ.get("REQUEST_METHOD") == "HEAD" else [refusal.body]


def _discard(data: bytes) -> None:
    """The ``write`` of a response mailguard replaced."""


class _Gated:
    """The app's response, or the refusal when the verdict comes during it."""

    def __init__(self, result: Iterable[bytes], gate: _Gate) -> None:
        self._result = result
        self._gate = gate
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        gate = self._gate
        try:
            for chunk in self._result:
                if gate.refused:
                    break
                yield chunk
        except Exception:
            if not gate.refused:
                raise
            _log.debug("mailguard: the app failed on a refused body", exc_info=True)
        if gate.refused:
            self.close()
            yield from gate.answer()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            _close(self._result)
        finally:
            self._gate.done()


class _Watched(Watching):
    """The ``start_response`` an allowed request's app is given: it reports
    the response's status and headers to the policy when the verdict asks
    (``watch``; ``reported`` once it has), strips ``strip``'s headers and adds
    ``extra``.  :meth:`last` reports an attempt whose response never started
    (its outcome unknown)."""

    __slots__ = ()

    def serve(self, app: WSGIApp, environ: Environ) -> Iterable[bytes]:
        """Call ``app`` with :meth:`start` as its ``start_response``."""
        try:
            result = app(environ, self.start)
        except BaseException:
            self.last()
            raise
        return result if self.reported else _Finally(result, self.last)

    def start(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], object]:
        if not self.reported:
            self.reported = True
            try:  # (watch.finish and _status_code, without the calls)
                try:
                    code: int | None = _DECIMALS.get(status[:3])
                    if code is None:
                        code = int(status[:3])
                except (TypeError, ValueError):
                    code = None
                self.policy.finish(self.request, self.verdict, code, WsgiHeaders(headers))
            except Exception:
                _log.exception("mailguard: %s could not record a response", self.policy.kind)
        strip = self.strip
        if strip:
            for k, _ in headers:
                if k.lower() in strip:  # (rarely there: look before copying)
                    headers = [(k, v) for k, v in headers if k.lower() not in strip]
                    break
        extra = self.extra
        to = self.to  # (a local, then the call: see GuardMiddleware.__call__)
        writer: Callable[[bytes], object] = to(
            status, [*headers, *extra] if extra else headers, exc_info
        )
        return writer

    def last(self) -> None:
        if not self.reported:
            self.reported = True
            finish(self.policy, self.request, self.verdict, None, NO_HEADERS)


def _status_code(status: str) -> int | None:
    try:
        code = _DECIMALS.get(status[:3])  # (int(status[:3]), usually without the call)
        return int(status[:3]) if code is None else code
    except (TypeError, ValueError):
        return None


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
    """``wsgi.input`` that gives back the buffered prefix, then the rest.

    The rest is read from the server's stream up to ``left`` bytes (the
    Content-Length) and never further: servers such as the werkzeug
    development server and wsgiref hand over the socket itself, where reading
    past the body waits for bytes that never come.  ``left`` None: the server
    marks the body's end itself (``wsgi.input_terminated``).  ``at_end`` is
    called once, when the body's last bytes have arrived and before the app
    gets them.
    """

    def __init__(self, head: bytes, rest: Any, left: int | None) -> None:
        self._head = io.BytesIO(head)
        self._rest = rest
        self._left = left
        self.at_end: Callable[[], None] | None = None
        self.short = False  # the stream ended before Content-Length: the client left

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        got = self._head.readinto(view)
        if got:
            return got
        left = self._left
        want = len(view) if left is None else min(len(view), left)
        data = self._rest.read(want) if want > 0 else b""
        if len(data) > want:  # a stream that ignores its size argument
            raise OSError("wsgi.input returned more bytes than asked for")
        if left is not None:
            self._left = left = left - len(data)
            ended = left == 0
            if not data and want > 0:
                self.short = True
        else:
            ended = not data and want > 0
        if ended and self.at_end is not None:
            at_end, self.at_end = self.at_end, None
            at_end()
        view[: len(data)] = data
        return len(data)


def _buffer(request: WsgiRequest, environ: Environ, limit: int) -> bool:
    """Read up to ``limit`` body bytes for the policy; the app still reads them all.

    Never reads past the Content-Length, and nothing when there is none and
    the server does not end the body itself (``wsgi.input_terminated``).
    Returns whether the whole body has been read.  A body of unknown length
    (``Transfer-Encoding``, or a Content-Length that is no number) on a
    server that does not end it is not read at all: ``request.body`` stays
    None ("cannot tell", counted as an attempt), never ``b""``.
    """
    text = environ.get("CONTENT_LENGTH")
    length: int | None = None
    head = b""
    if (
        text.__class__ is str
        and environ.get("HTTP_TRANSFER_ENCODING") is None
        # (one of the decimals below 1,000 is ASCII digits: no test of its characters)
        and ((length := _DECIMALS.get(text)) is not None or (text.isdigit() and text.isascii()))
    ):  # the usual: a Content-Length of ASCII digits, no transfer coding
        if length is None:  # (int(text), needed only past the table)
            length = int(text)
        if 0 < length <= limit:  # the whole body is wanted (a login form, usually)
            head = environ["wsgi.input"].read(length)
            if head.__class__ is bytes and len(head) == length:  # all of it at once
                request.body = head
                environ["wsgi.input"] = _BytesIO(head)
                return True
            head = bytes(head) if head else b""  # (what the loop below makes of it)
    else:
        text = str(text or "").strip()
        try:
            length = int(text) if text else 0
        except ValueError:
            length = None  # unknown
        if length is not None and length < 0:
            length = None
        if environ.get("HTTP_TRANSFER_ENCODING") is not None:
            length = None  # the length is the transfer coding's, not Content-Length's
    if not length:
        if not environ.get("wsgi.input_terminated"):
            if length == 0:  # no body
                request.body = b"" if limit else None
                return True
            # a body with no end we can see: not read; a verdict that waits
            # for it is reached when the app starts its response
            request.body = None
            return False
        length = None
    stream = environ["wsgi.input"]
    want = limit if length is None else min(limit, length)
    while len(head) < want:
        chunk = stream.read(want - len(head))
        if not chunk:
            break
        head += chunk
    if limit:
        request.body = head
    left = None if length is None else length - len(head)
    ended = left == 0 or (left is None and len(head) < want)
    # the whole body is in hand (a login form, usually): the app reads it from memory
    environ["wsgi.input"] = (
        io.BytesIO(head) if ended else io.BufferedReader(_Replay(head, stream, left))
    )
    return ended


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
    live: LiveConfig | bool | None = None,
    reload_on_hup: bool | None = None,
) -> WSGIApp:
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

    wrapped: WSGIApp = protect_with(
        FILTER_CLASSES, app, config, store=store, on_event=on_event, live=live,
        reload_on_hup=reload_on_hup,
    )  # fmt: skip
    return wrapped
