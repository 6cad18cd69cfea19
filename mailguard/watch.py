"""The response watch shared by the HTTP fronts (:mod:`mailguard.asgi`, :mod:`mailguard.wsgi`).

A verdict with ``watch`` asks the front to tell the policy how the response
began (:meth:`~mailguard.policies.Policy.finish`): how a login filter learns
whether a login failed.  The fronts share here

* :func:`finish` / :func:`afinish`: the report, logged and swallowed when the
  policy fails (a response is never lost to a policy's error);
* :class:`Watching`: what each front's wrapper of the app's ``send`` /
  ``start_response`` holds for one request;
* :class:`AsgiHeaders` / :class:`WsgiHeaders`: the response's headers as the
  policy reads them (lower-case names, repeated lines joined by ``", "``),
  without decoding every header of every watched response: a login filter
  asks for one or two by name, and only a user's ``is_failure`` test sees them
  all (then they are decoded once).

(Not in :mod:`mailguard.fronts`, which imports both fronts.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .policies import InvalidLoginPolicy

if TYPE_CHECKING:
    from .core import Verdict
    from .policies import Policy
    from .request import Request

__all__ = [
    "NO_HEADERS",
    "AsgiHeaders",
    "Watching",
    "WsgiHeaders",
    "afinish",
    "body_plan",
    "finish",
    "watching",
]

_log = logging.getLogger("mailguard")

_UNSEEN = object()

NO_HEADERS: Mapping[str, str] = {}
"""The headers of a response that never began."""


def body_plan(policy: Policy) -> Callable[[Request], tuple[int, bool]] | None:
    """``policy.body_plan`` (``wants_body`` and ``waits_for_body`` with one path
    match), when ``policy`` is a login policy whose class keeps those two rules
    as :class:`~mailguard.policies.InvalidLoginPolicy` writes them; else None
    (the front then asks the two rules themselves)."""
    if not isinstance(policy, InvalidLoginPolicy):
        return None
    cls = type(policy)
    if (
        cls.wants_body is InvalidLoginPolicy.wants_body
        and cls.waits_for_body is InvalidLoginPolicy.waits_for_body
        and cls.body_plan is InvalidLoginPolicy.body_plan
    ):
        return policy.body_plan
    return None


def finish(
    policy: Policy,
    request: Request,
    verdict: Verdict,
    status: int | None,
    headers: Mapping[str, str],
) -> None:
    """``policy.finish(...)``; an exception is logged, never raised."""
    try:
        policy.finish(request, verdict, status, headers)
    except Exception:
        _log.exception("mailguard: %s could not record a response", policy.kind)


class Watching:
    """One allowed request's watch over its response, as both fronts keep it:
    the ``policy``, the ``request`` and its ``verdict``, where the response
    goes (``to``: the ASGI ``send`` or the WSGI ``start_response``), the
    headers to add (``extra``) and to strip (``strip``) in the front's own
    form, whether the policy's store answers without I/O (``local``, so the
    report needs no coroutine), and whether the response has been reported
    (``reported``: at once when the verdict asks for no report).  Each front
    subclasses it with the wrapper the app is given."""

    __slots__ = ("extra", "local", "policy", "reported", "request", "strip", "to", "verdict")

    def __init__(
        self,
        policy: Policy,
        request: Any,
        verdict: Verdict,
        to: Any,
        extra: Any,
        strip: Any,
        local: bool = True,
        watch: bool = True,
    ) -> None:
        self.policy = policy
        self.request = request
        self.verdict = verdict
        self.to = to
        self.extra = extra
        self.strip = strip
        self.local = local
        self.reported = not watch  # (nothing to report: as if done)


_W = TypeVar("_W", bound=Watching)
_new = object.__new__


def watching(
    cls: type[_W], policy: Policy, request: Any, verdict: Verdict, to: Any, strip: Any
) -> _W:
    """``cls(policy, request, verdict, to, (), strip)``: a watch with no header to
    add, a local store and a response to report (a login attempt's, on every
    login), made without the call to the class and its ``__init__`` (about 45
    ns less); every slot of :class:`Watching` is set, as ``__init__`` sets it
    (``tests/test_login_fast.py`` pins both)."""
    made: _W = _new(cls)
    made.policy = policy
    made.request = request
    made.verdict = verdict
    made.to = to
    made.extra = ()
    made.strip = strip
    made.local = True
    made.reported = False
    return made


async def afinish(
    policy: Policy,
    request: Request,
    verdict: Verdict,
    status: int | None,
    headers: Mapping[str, str],
) -> None:
    """``await policy.afinish(...)``; an exception is logged, never raised."""
    try:
        await policy.afinish(request, verdict, status, headers)
    except Exception:
        _log.exception("mailguard: %s could not record a response", policy.kind)


class _Headers(Mapping[str, str]):
    """A read-only view of a response's header lines by lower-case name."""

    __slots__ = ("_all", "_lines")
    _wanted: ClassVar[dict[str, Any]]  # each subclass's: names asked for, as lines spell them

    def __init__(self, lines: Iterable[tuple[Any, Any]]) -> None:
        self._lines = lines
        self._all: dict[str, str] | None = None

    def _name(self, name: str) -> Any:
        raise NotImplementedError

    def _text(self, raw: Any) -> str:
        raise NotImplementedError

    def get(self, name: str, default: Any = None) -> Any:
        """The value of header ``name`` (lower-case), or ``default``."""
        if self._all is None:
            want = self._wanted.get(name, _UNSEEN)
            if want is _UNSEEN:
                want = self._want(name)
            if want is not None:
                found: str | None = None
                size = len(want)  # lower() keeps the length: most lines need no lower()
                for key, value in self._lines:
                    if len(key) == size and (key == want or key.lower() == want):
                        text = self._text(value)
                        found = text if found is None else f"{found}, {text}"
                return default if found is None else found
        return self._map().get(name, default)

    def _want(self, name: str) -> Any:
        """A line's name as ``name`` compares with it, or None when only the
        decoded, lower-cased names can tell (the whole map is made then)."""
        if not isinstance(name, str) or not name.isascii() or name.lower() != name:
            return None
        want = self._name(name)
        if len(self._wanted) < 256:  # the few names policies ask for
            self._wanted[name] = want
        return want

    def __getitem__(self, name: str) -> str:
        found = self.get(name)
        if found is None:
            raise KeyError(name)
        value: str = found
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def _map(self) -> dict[str, str]:
        found = self._all
        if found is None:
            found = {}
            for key, value in self._lines:
                name = self._text(key).lower()
                text = self._text(value)
                found[name] = f"{found[name]}, {text}" if name in found else text
            self._all = found
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._map()!r})"


class AsgiHeaders(_Headers):
    """ASGI response headers (``(bytes, bytes)`` pairs) read as Latin-1 text."""

    __slots__ = ()
    _wanted: ClassVar[dict[str, Any]] = {}

    def _name(self, name: str) -> Any:
        return name.encode("ascii")

    def _text(self, raw: Any) -> str:
        text: str = raw.decode("latin-1")
        return text


class WsgiHeaders(_Headers):
    """WSGI response headers (``(str, str)`` pairs)."""

    __slots__ = ()
    _wanted: ClassVar[dict[str, Any]] = {}

    def _name(self, name: str) -> Any:
        return name

    def _text(self, raw: Any) -> str:
        text: str = raw
        return text
