"""The store protocol: where counters and blocks live.

A store keeps records and applies a rule to one of them atomically; it
decides nothing itself.  Each primitive is one lock section in
:class:`~mailguard.MemoryStore` and one Lua script (one round trip) in
:class:`~mailguard.RedisStore`, applying a pure function of
:mod:`mailguard.core` to the key's record: :func:`~mailguard.core.slide`
(``hit``, ``peek``), :func:`~mailguard.core.begin_attempt` (``attempt``),
:func:`~mailguard.core.end_attempt` with :func:`~mailguard.core.penalty` and
:func:`~mailguard.core.outlasts` (``settle``).  Besides that a store keeps
blocks and swap values with their expiry, and lists and lifts blocks.  It
knows nothing of logins, devices or HTTP: the policies compose these
primitives, and ``tests/test_store_conformance.py`` holds every store to the
core functions (a new store must pass it).

Every primitive takes a namespace ``ns`` (one per filter: ``"dos"``,
``"login"``, ``"device"``, ...) and a ``key`` inside it, so several filters
share one store without their keys ever colliding.  Each has a synchronous
form for WSGI and an ``a``-prefixed coroutine for ASGI.

Result codes (the first item of most results):

=========  ==  ==========================================================
``OK``      0  allowed (and, for :meth:`Store.attempt`, a slot was taken)
``OVER``    1  over the limit; ``wait`` is the time until a slot frees
``JAILED``  2  over the limit, and this decision created a block
``BLOCKED`` 3  a live block refused it; ``wait`` is the time it has left
``BUSY``    4  :meth:`Store.attempt` only: enough attempts are already
               failed or under way that one more could pass the limit
=========  ==  ==========================================================
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..core import BLOCKED, BUSY, JAILED, OK, OVER, Block

if TYPE_CHECKING:
    from .overlay import Overlay, OverlayChange

__all__ = ["BLOCKED", "BUSY", "JAILED", "OK", "OVER", "Store", "StoreBug", "StoreError"]


class StoreError(Exception):
    """A store could not answer (for Redis: connection lost, timeout, ...)."""


class StoreBug(StoreError):
    """A store call failed by a defect, not an outage.

    A programming error (``AttributeError``, ``TypeError``, ...) in mailguard
    or an incompatible client library: the cause is chained.  It is a
    :class:`StoreError`, so the filter's ``on_store_error`` still applies,
    but it is never taken for an outage: a filter logs every one at ERROR.
    """


class Store(ABC):
    """What every store offers.  Times are seconds on the store's clock."""

    local: bool = False
    """True when every call answers from this process's memory without waiting
    on I/O: the ASGI adapter may then call the synchronous methods directly,
    which saves two coroutine hops per request."""

    # ----------------------------------------------------------- counting
    @abstractmethod
    def hit(
        self,
        ns: str,
        key: str,
        limit: int,
        window: float,
        jail: float = 0.0,
        detail: bool = True,
    ) -> tuple[int, int, float]:
        """Count one request in a sliding window; return ``(code, remaining, wait)``.

        ``code`` is ``OK`` or ``OVER`` (see :func:`mailguard.core.slide`).
        With ``jail > 0`` a live block on the key refuses first (``BLOCKED``,
        not counted, not extended), and a request over the limit blocks the
        key for ``jail`` seconds (``JAILED``) and forgets its window, so that
        counting starts from zero after the release.  With ``detail=False``
        the caller needs only the decision: an ``OK`` answer may then carry
        ``remaining=-1`` and ``wait=0.0`` (a store may work them out anyway).
        """

    @abstractmethod
    def peek(self, ns: str, key: str, window: float) -> int:
        """How many requests of ``key`` lie in the last ``window`` seconds.

        A counter is kept as long as the longest window its namespace was
        :meth:`hit` with can count it: a longer ``window`` here may miss the
        requests older than that (the filters peek with the window they hit with).
        """

    @abstractmethod
    def attempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]:
        """Begin a guarded attempt (a login); return ``(code, remaining, wait)``.

        A live block refuses (``BLOCKED``).  Otherwise the current failure
        streak (failures each within ``interval`` s of the previous one) plus
        the attempts still under way must stay below ``limit``, or ``BUSY``;
        an allowed attempt takes a slot, held until :meth:`settle` or for
        ``pending_ttl`` seconds at most.
        """

    @abstractmethod
    def settle(
        self,
        ns: str,
        key: str,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        *,
        reset: bool = False,
        factor: float = 1.0,
        max_block: float = 0.0,
        memory: float = 0.0,
    ) -> tuple[int, int, float]:
        """End an attempt begun by :meth:`attempt`; return ``(code, streak, blocked_for)``.

        Releases the slot.  ``reset`` ends the streak first (a success, when
        the filter says successes reset).  A failure extends the streak by
        :func:`mailguard.core.streak`; when it reaches ``limit`` the key is
        blocked (``JAILED``) for ``block_for`` seconds, times ``factor`` for
        each earlier block of the same key in an unbroken chain of blocks each
        begun within ``memory`` seconds of the one before, capped at
        ``max_block`` (when > 0), and the streak restarts.  A live block on
        the key that ends later (an admin's, say) is kept as it is.
        """

    @abstractmethod
    def swap(self, ns: str, key: str, value: str, ttl: float) -> str | None:
        """Remember ``value`` for ``ttl`` seconds; return the value it replaced."""

    # ------------------------------------------------------------- blocks
    @abstractmethod
    def block(self, ns: str, key: str, seconds: float, reason: str) -> Block:
        """Block ``key`` for ``seconds`` (replacing any block it has)."""

    @abstractmethod
    def get_block(self, ns: str, key: str) -> Block | None:
        """The live block on ``key``, if any."""

    @abstractmethod
    def blocks(self, kind: str | None = None) -> list[Block]:
        """Every live block (of one namespace when ``kind`` is given), soonest end first."""

    @abstractmethod
    def unblock(self, key: str, kind: str | None = None) -> int:
        """Lift the blocks on ``key`` (in every namespace, or ``kind``); return how many."""

    @abstractmethod
    def unblock_all(self, kind: str | None = None) -> int:
        """Lift every block (of ``kind``); return how many were lifted."""

    @abstractmethod
    def now(self) -> float:
        """The store's current time."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections (nothing to do for memory)."""

    # ------------------------------------------------ live configuration
    # A small versioned document (mailguard.stores.overlay); the store knows
    # nothing of what it means.  Optional: a store without it cannot carry
    # a live configuration (mailguard.live).

    def read_overlay(self) -> Overlay:
        """The live configuration document (version 0 and empty: none yet)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no live configuration")

    def overlay_version(self) -> int:
        """The document's version alone (a cheap read, for polling)."""
        return self.read_overlay().version

    def write_overlay(self, expected: int, values: Mapping[str, Any], change: OverlayChange) -> int:
        """Replace the document's values if its version is still ``expected``;
        keep ``change`` among the newest records and tell every process
        (:meth:`watch_overlay`).  Returns the new version (``expected + 1``).

        :raises ~mailguard.stores.overlay.OverlayConflict: the version moved.
        :raises ValueError: the document would not be storable or too large.
        """
        raise NotImplementedError(f"{type(self).__name__} keeps no live configuration")

    def watch_overlay(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (from any thread) when the document may have changed."""
        raise NotImplementedError(f"{type(self).__name__} keeps no live configuration")

    @property
    def overlay_heard(self) -> bool:
        """Whether changes made elsewhere reach :meth:`watch_overlay` now (False:
        poll :meth:`overlay_version` often)."""
        return False

    # -------------------------------------------------------------- async
    @abstractmethod
    async def ahit(
        self,
        ns: str,
        key: str,
        limit: int,
        window: float,
        jail: float = 0.0,
        detail: bool = True,
    ) -> tuple[int, int, float]: ...

    @abstractmethod
    async def apeek(self, ns: str, key: str, window: float) -> int: ...

    @abstractmethod
    async def aattempt(
        self, ns: str, key: str, limit: int, interval: float, pending_ttl: float
    ) -> tuple[int, int, float]: ...

    @abstractmethod
    async def asettle(
        self,
        ns: str,
        key: str,
        failed: bool,
        limit: int,
        interval: float,
        block_for: float,
        *,
        reset: bool = False,
        factor: float = 1.0,
        max_block: float = 0.0,
        memory: float = 0.0,
    ) -> tuple[int, int, float]: ...

    @abstractmethod
    async def aswap(self, ns: str, key: str, value: str, ttl: float) -> str | None: ...

    @abstractmethod
    async def ablock(self, ns: str, key: str, seconds: float, reason: str) -> Block: ...

    @abstractmethod
    async def aget_block(self, ns: str, key: str) -> Block | None: ...

    @abstractmethod
    async def ablocks(self, kind: str | None = None) -> list[Block]: ...

    @abstractmethod
    async def aunblock(self, key: str, kind: str | None = None) -> int: ...

    @abstractmethod
    async def aunblock_all(self, kind: str | None = None) -> int: ...

    async def aclose(self) -> None:
        self.close()
