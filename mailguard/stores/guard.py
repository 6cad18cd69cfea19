"""What a filter does when its store cannot answer: ``on_store_error``.

:class:`GuardedStore` wraps a store that can fail (Redis) and applies the
filter's chosen mode to each failed call:

``"open"``
    raise :class:`StoreDown`; the filter serves the request (the default for
    DosFilter and DeviceJail: an outage must not take mail down).
``"closed"``
    raise :class:`StoreDown`; the filter refuses with 503 (a sensible choice
    for logins: no guessing while nobody counts).
``"memory"``
    answer from a local :class:`~mailguard.MemoryStore` until the store is
    back: limits hold per process instead of globally.

One line is logged when an outage starts and one when it ends.  The store
itself keeps its socket timeouts short and opens a circuit breaker, so an
outage costs a failed call, not a timeout, on each request.

A :class:`~mailguard.stores.base.StoreBug` (a programming error in the
store or an incompatible client library, not an outage) gets the same mode,
but is logged at ERROR every time it happens, the first time with its
traceback: a defect must not pass for an outage that nobody notices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .base import Store, StoreBug, StoreError
from .memory import MemoryStore

__all__ = ["STORE_ERROR_MODES", "GuardedStore", "StoreDown"]

STORE_ERROR_MODES = ("open", "closed", "memory")

_log = logging.getLogger("mailguard.store")


class StoreDown(Exception):
    """The store failed and the mode says the filter must decide without it."""

    def __init__(self, mode: str, cause: BaseException) -> None:
        super().__init__(f"store unavailable ({mode}): {cause}")
        self.mode = mode
        self.cause = cause


def _sync(name: str) -> Callable[..., Any]:
    def call(self: GuardedStore, *args: Any, **kwargs: Any) -> Any:
        try:
            result = getattr(self.primary, name)(*args, **kwargs)
        except StoreError as exc:
            return getattr(self.fallback_for(exc), name)(*args, **kwargs)
        if self.down:
            self.recovered()
        return result

    call.__name__ = name
    return call


def _async(name: str) -> Callable[..., Any]:
    async def call(self: GuardedStore, *args: Any, **kwargs: Any) -> Any:
        try:
            result = await getattr(self.primary, name)(*args, **kwargs)
        except StoreError as exc:
            return await getattr(self.fallback_for(exc), name)(*args, **kwargs)
        if self.down:
            self.recovered()
        return result

    call.__name__ = name
    return call


class GuardedStore(Store):
    """``primary`` with the ``on_store_error`` mode applied to its failures."""

    def __init__(self, primary: Store, mode: str) -> None:
        if mode not in STORE_ERROR_MODES:
            raise ValueError(f"on_store_error: must be one of {STORE_ERROR_MODES}, got {mode!r}")
        self.primary = primary
        self.mode = mode
        self.down = False
        self.bugs = 0  # StoreBugs seen
        self._memory: MemoryStore | None = None

    def fallback_for(self, exc: StoreError) -> Store:
        if isinstance(exc, StoreBug):
            self.bug(exc)
        elif not self.down:
            self.down = True
            _log.error("mailguard store down mode=%s error=%s", self.mode, exc)
        if self.mode != "memory":
            raise StoreDown(self.mode, exc) from exc
        if self._memory is None:
            self._memory = MemoryStore()
        return self._memory

    def bug(self, exc: StoreBug) -> None:
        """Log a defect at ERROR, every time (with the traceback the first time)."""
        self.bugs += 1
        _log.error(
            "mailguard store bug (not an outage) mode=%s error=%s",
            self.mode,
            exc,
            exc_info=exc if self.bugs == 1 else None,
        )

    def recovered(self) -> None:
        self.down = False
        _log.warning("mailguard store up mode=%s", self.mode)

    def now(self) -> float:
        try:
            return self.primary.now()
        except StoreBug as exc:
            self.bug(exc)
            return time.time()
        except StoreError:
            return time.time()

    def close(self) -> None:
        self.primary.close()

    async def aclose(self) -> None:
        await self.primary.aclose()

    def __repr__(self) -> str:
        return f"GuardedStore({self.primary!r}, mode={self.mode!r})"

    hit = _sync("hit")
    peek = _sync("peek")
    attempt = _sync("attempt")
    settle = _sync("settle")
    swap = _sync("swap")
    block = _sync("block")
    get_block = _sync("get_block")
    blocks = _sync("blocks")
    unblock = _sync("unblock")
    unblock_all = _sync("unblock_all")
    ahit = _async("ahit")
    apeek = _async("apeek")
    aattempt = _async("aattempt")
    asettle = _async("asettle")
    aswap = _async("aswap")
    ablock = _async("ablock")
    aget_block = _async("aget_block")
    ablocks = _async("ablocks")
    aunblock = _async("aunblock")
    aunblock_all = _async("aunblock_all")
