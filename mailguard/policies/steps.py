"""One flow, two interfaces: policy steps written once, run sync or async.

A policy whose decision needs several store calls writes it once, as a
generator that *yields* each call and receives its answer::

    def decide(self, request):
        code, remaining, wait = yield call("hit", ns, key, limit, window)
        if code == OK:
            return ALLOW
        ...

:func:`run` drives such a generator against a store's synchronous methods
(WSGI), :func:`arun` against its coroutines (ASGI); the rules themselves never
say ``await``, so the two interfaces cannot drift apart.  A store call that
raises is thrown back into the flow at its ``yield``, so a flow may catch
(say) :class:`~mailguard.stores.guard.StoreDown` where it wants to.  A flow
that finishes without yielding costs one generator and no store call.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

from ..stores.base import Store

__all__ = ["Call", "Steps", "arun", "call", "run"]

T = TypeVar("T")

Call = tuple[str, tuple[Any, ...], dict[str, Any]]
"""A store method's name, its positional and its keyword arguments."""

Steps = Generator[Call, Any, T]
"""A flow: yields store calls, receives their answers, returns its result."""


def call(method: str, *args: Any, **kwargs: Any) -> Call:
    """One store call, e.g. ``call("hit", ns, key, limit, window)``."""
    return method, args, kwargs


def run(steps: Steps[T], store: Store) -> T:
    """Run a flow against the store's synchronous methods."""
    try:
        method, args, kwargs = next(steps)
        while True:
            try:
                answer = getattr(store, method)(*args, **kwargs)
            except Exception as exc:
                method, args, kwargs = steps.throw(exc)
            else:
                method, args, kwargs = steps.send(answer)
    except StopIteration as done:
        result: T = done.value
        return result


async def arun(steps: Steps[T], store: Store) -> T:
    """Run a flow against the store's coroutines (``a`` + method name)."""
    try:
        method, args, kwargs = next(steps)
        while True:
            try:
                answer = await getattr(store, "a" + method)(*args, **kwargs)
            except Exception as exc:
                method, args, kwargs = steps.throw(exc)
            else:
                method, args, kwargs = steps.send(answer)
    except StopIteration as done:
        result: T = done.value
        return result
