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
    back: limits hold per process instead of globally.  The blocks made
    there outlive the outage: when the store answers again, they are copied
    into it with the time they have left (:data:`HANDOVER_BATCH` per call,
    so recovery costs no request more than a few round trips; a block the
    store already holds that ends later is kept; the store's clock and this
    process's are taken to agree), and until each is copied or ends it is
    still consulted first (``hit`` with a jail, ``attempt``, ``get_block``,
    ``blocks``; ``unblock`` lifts it too).  The local counters are dropped:
    the store counts again.  (A Redis restart without persistence loses
    the blocks it held: see "Redis persistence" in the README.)

One line is logged when an outage starts (WARNING) and one when it ends
(INFO), per store and process, however many filters share the store and
whatever the mix of requests: :class:`StoreHealth` holds that state (and
:mod:`mailguard.metrics` exports it as ``mailguard_store_up``).  A store that
reports its own health (a :class:`~mailguard.RedisStore`, as ``.health``)
says "down" when a real round trip fails as an outage and "up" only when one
answers again: an answer from its local block cache is no evidence either
way.  For any other store the guard decides: a failed call is down, a
successful one up.  The store itself keeps its socket timeouts short and
opens a circuit breaker, so an outage costs a failed call, not a timeout, on
each request.

A :class:`~mailguard.stores.base.StoreBug` (a programming error in the
store or an incompatible client library, not an outage) gets the same mode,
but is logged at ERROR every time it happens, the first time with its
traceback: a defect must not pass for an outage that nobody notices.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from ..core import Block
from ..events import Reporter
from .base import BLOCKED, Store, StoreBug, StoreError
from .memory import MemoryStore

__all__ = ["HANDOVER_BATCH", "STORE_ERROR_MODES", "GuardedStore", "StoreDown", "StoreHealth"]

STORE_ERROR_MODES = ("open", "closed", "memory")

HANDOVER_BATCH = 8
"""Local blocks copied into the recovered store per successful call."""

_log = logging.getLogger("mailguard.store")
_lines = Reporter("store")  # (INFO lines reach stderr while the app configured no logging)


class StoreHealth:
    """Whether a store is up, as its last real round trip said: one line per change.

    :meth:`failed` (an outage) and :meth:`answered` (a round trip that came
    back) log only when the state changes, so an outage gives exactly one
    WARNING line when it starts and one INFO line when it ends, whatever the
    number of requests, threads or filters in between.  An outage that is
    Redis answering ``OOM`` is logged at ERROR instead, as "Redis is full":
    it is a sizing problem, not a network one.  ``up`` is read by the
    ``mailguard_store_up`` gauge.

    A store made of parts that fail on their own (the masters of a Redis
    Cluster) names the part: the store is down while any part is (the down
    line names the first, ``node=``), and up again only when every part
    that failed has answered, or was :meth:`dropped` (a master replaced by
    its promoted replica).  Still one pair of lines per outage; a second
    part failing meanwhile is logged at INFO only.  A part dropped that way
    failing again is not a new outage: a client whose slot map is older
    than the failover asked the dead master once more (it counts again
    once it has answered, as a master rejoining does).

    :param name: how the lines name the store (no password: a ``repr``).
    """

    __slots__ = (
        "__weakref__",
        "_down",
        "_lock",
        "_replaced",
        "down_since",
        "name",
        "outages",
        "up",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = True
        self.outages = 0  # down transitions seen
        self.down_since = 0.0  # time.monotonic() of the last one
        self._down: set[str] = set()  # the parts down ("": the store as a whole)
        self._replaced: set[str] = set()  # parts dropped while down and not heard since
        self._lock = threading.Lock()

    @property
    def parts_down(self) -> frozenset[str]:
        """The parts that failed and have not answered since ("" the whole store)."""
        with self._lock:
            return frozenset(self._down)

    def failed(self, error: BaseException | str, part: str = "") -> None:
        """A real call failed as an outage: log once when this starts one."""
        with self._lock:
            if part in self._down or part in self._replaced:
                return
            self._down.add(part)
            if not self.up:
                first = False
            else:
                first = True
                self.up = False
                self.outages += 1
                self.down_since = time.monotonic()
        where = f" node={part}" if part else ""
        text = str(error)
        if not first:
            _log.info("mailguard store down store=%s%s error=%s (also)", self.name, where, text)
        elif text.startswith("OOM") or "OutOfMemoryError" in text or " OOM " in text:
            _log.error(
                "mailguard store down store=%s%s error=Redis is full: %s "
                "(maxmemory reached and nothing left to evict: see the README, Running at scale)",
                self.name,
                where,
                text,
            )
        else:
            _log.warning("mailguard store down store=%s%s error=%s", self.name, where, text)

    def answered(self, part: str = "") -> None:
        """A real round trip came back: log once when this ends an outage."""
        with self._lock:
            self._replaced.discard(part)
            if self.up:
                return
            self._down.discard(part)
            if self._down:
                return
            self.up = True
            lasted = time.monotonic() - self.down_since
        line = f"mailguard store up store={self.name} after={lasted:.1f}s"
        _lines.log(logging.INFO, line, {})  # shown like the startup lines

    def dropped(self, parts: set[str]) -> None:
        """Parts that no longer serve (a master replaced): no longer waited for."""
        with self._lock:
            gone = self._down & parts
            if len(self._replaced) > 256:  # nodes come and go: never grow without bound
                self._replaced.clear()
        for part in gone:
            self.answered(part)
        with self._lock:
            self._replaced |= {part for part in gone if part}


# The health of stores that do not report their own, shared by every guard of
# one store (each filter wraps the store it is given in a GuardedStore of its own).
_SHARED: weakref.WeakKeyDictionary[Store, StoreHealth] = weakref.WeakKeyDictionary()
_SHARED_LOCK = threading.Lock()


def health_of(store: Store) -> tuple[StoreHealth, bool]:
    """``store``'s health and whether the store reports it itself."""
    own = getattr(store, "health", None)
    if isinstance(own, StoreHealth):
        return own, True
    with _SHARED_LOCK:
        try:
            found = _SHARED.get(store)
            if found is None:
                found = _SHARED[store] = StoreHealth(repr(store))
        except TypeError:  # not weakly referenceable: a health of its own
            found = StoreHealth(repr(store))
    return found, False


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
            self.answered()
        if self.held:
            self.hand_over()
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
            self.answered()
        if self.held:
            await self.ahand_over()
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
        self.health, self._reported = health_of(primary)
        """The store's :class:`StoreHealth`, shared with every guard of it."""
        self.down = False
        """Whether this guard has answered from its mode since the store last
        answered for real (the local store's counters are dropped when it does)."""
        self.bugs = 0  # StoreBugs seen
        self._last_refusal_log = -60.0
        self._memory: MemoryStore | None = None
        self._queue: deque[Block] = deque()  # local blocks to copy, soonest end first
        self.held = False
        """Whether the local store holds blocks made while the store was
        down, not yet copied into it: they are still consulted."""

    def fallback_for(self, exc: StoreError) -> Store:
        if isinstance(exc, StoreBug):
            self.bug(exc)
        else:
            self.down = True
            if not self._reported:
                self.health.failed(exc)
            elif self.health.up:
                self.refused_while_up(exc)
        if self.mode != "memory":
            raise StoreDown(self.mode, exc) from exc
        if self._memory is None:
            # on the primary's clock, when it has one (a FakeClock in tests)
            self._memory = MemoryStore(clock=getattr(self.primary, "_clock", None))
        self.held = True  # (checked when the store answers again)
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

    def refused_while_up(self, exc: StoreError) -> None:
        """A failure the store does not count as an outage (an error reply
        about one key, say): logged at ERROR at most once a minute per guard."""
        now = time.monotonic()
        if now - self._last_refusal_log >= 60.0:
            self._last_refusal_log = now
            _log.error("mailguard store error (not an outage) mode=%s error=%s", self.mode, exc)

    def answered(self) -> None:
        """A call through this guard succeeded while it was down."""
        if not self._reported:
            self.health.answered()
        elif not self.health.up:
            return  # answered from the store's local cache: Redis may still be down
        self.recovered()

    def recovered(self) -> None:
        """The store answers again: drop the counters kept locally meanwhile."""
        self.down = False
        if not self._reported:
            self.health.answered()
        if self._memory is not None:
            self._memory.clear_counters()

    # ------------------------------------------------- blocks made locally
    def _local(self, ns: str, key: str) -> Block | None:
        """The live local block on ``key``, while local blocks are held."""
        if not self.held or self._memory is None:
            return None
        return self._memory.get_block(ns, key)

    def _batch(self) -> list[Block]:
        """The next local blocks to copy, still live and not lifted; clears
        ``held`` when none is left.  (The local blocks are listed once, then
        taken from that list a few at a time.)"""
        memory = self._memory
        if memory is None:
            self.held = False
            return []
        queue = self._queue
        if not queue:
            queue.extend(memory.blocks())
            if not queue:
                self.held = False
                return []
        found: list[Block] = []
        while len(found) < HANDOVER_BATCH:
            try:
                block = queue.popleft()
            except IndexError:  # (another thread took the last ones)
                break
            if memory.get_block(block.kind, block.key) == block:
                found.append(block)
        return found

    def _copied(self, block: Block) -> None:
        assert self._memory is not None
        self._memory.unblock(block.key, block.kind)

    def hand_over(self) -> None:
        """Copy the next local blocks into the recovered store."""
        memory = self._memory
        try:
            for block in self._batch():
                assert memory is not None
                left = block.until - memory.now()
                if left > 0:
                    held = self.primary.get_block(block.kind, block.key)
                    if held is None or held.until < block.until:
                        self.primary.block(block.kind, block.key, left, block.reason)
                self._copied(block)
        except StoreError:
            return  # down again: the rest stay local, and are still consulted

    async def ahand_over(self) -> None:
        memory = self._memory
        try:
            for block in self._batch():
                assert memory is not None
                left = block.until - memory.now()
                if left > 0:
                    held = await self.primary.aget_block(block.kind, block.key)
                    if held is None or held.until < block.until:
                        await self.primary.ablock(block.kind, block.key, left, block.reason)
                self._copied(block)
        except StoreError:
            return

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

    _hit = _sync("hit")
    peek = _sync("peek")
    _attempt = _sync("attempt")
    settle = _sync("settle")
    swap = _sync("swap")
    block = _sync("block")
    _get_block = _sync("get_block")
    _blocks = _sync("blocks")
    _unblock = _sync("unblock")
    _unblock_all = _sync("unblock_all")
    _ahit = _async("ahit")
    apeek = _async("apeek")
    _aattempt = _async("aattempt")
    asettle = _async("asettle")
    aswap = _async("aswap")
    ablock = _async("ablock")
    _aget_block = _async("aget_block")
    _ablocks = _async("ablocks")
    _aunblock = _async("aunblock")
    _aunblock_all = _async("aunblock_all")

    # The calls that consult the local blocks first, while any are held.  A
    # local block answers; while the store is down, it is asked all the same
    # (a read without side effects), so that its return is noticed.
    def _refusal(self, found: Block) -> tuple[int, int, float]:
        assert self._memory is not None
        return BLOCKED, 0, max(0.0, found.until - self._memory.now())

    def _jail(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float:
        """The ``jail`` of a ``hit`` call (after ``ns`` and ``key``)."""
        return float(args[2] if len(args) > 2 else kwargs.get("jail", 0.0))

    def _held_block(self, ns: str, key: str) -> Block | None:
        found = self._local(ns, key)
        if found is not None and self.down:
            self._get_block(ns, key)
        return found

    async def _aheld_block(self, ns: str, key: str) -> Block | None:
        found = self._local(ns, key)
        if found is not None and self.down:
            await self._aget_block(ns, key)
        return found

    def hit(self, ns: str, key: str, *args: Any, **kwargs: Any) -> tuple[int, int, float]:
        found = self._held_block(ns, key) if self.held and self._jail(args, kwargs) > 0 else None
        if found is None:
            answer: tuple[int, int, float] = self._hit(ns, key, *args, **kwargs)
            return answer
        return self._refusal(found)

    async def ahit(self, ns: str, key: str, *args: Any, **kwargs: Any) -> tuple[int, int, float]:
        found = None
        if self.held and self._jail(args, kwargs) > 0:
            found = await self._aheld_block(ns, key)
        if found is None:
            answer: tuple[int, int, float] = await self._ahit(ns, key, *args, **kwargs)
            return answer
        return self._refusal(found)

    def attempt(self, ns: str, key: str, *args: Any, **kwargs: Any) -> tuple[int, int, float]:
        found = self._held_block(ns, key) if self.held else None
        if found is None:
            answer: tuple[int, int, float] = self._attempt(ns, key, *args, **kwargs)
            return answer
        return self._refusal(found)

    async def aattempt(
        self, ns: str, key: str, *args: Any, **kwargs: Any
    ) -> tuple[int, int, float]:
        found = await self._aheld_block(ns, key) if self.held else None
        if found is None:
            answer: tuple[int, int, float] = await self._aattempt(ns, key, *args, **kwargs)
            return answer
        return self._refusal(found)

    def get_block(self, ns: str, key: str) -> Block | None:
        found = self._held_block(ns, key) if self.held else None
        if found is None:
            block: Block | None = self._get_block(ns, key)
            return block
        return found

    async def aget_block(self, ns: str, key: str) -> Block | None:
        found = await self._aheld_block(ns, key) if self.held else None
        if found is None:
            block: Block | None = await self._aget_block(ns, key)
            return block
        return found

    def _with_local(self, found: list[Block], kind: str | None) -> list[Block]:
        if not self.held or self._memory is None or self.down:
            return found  # (while down, the answer came from the local store)
        mine = {(b.kind, b.key) for b in found}
        extra = [b for b in self._memory.blocks(kind) if (b.kind, b.key) not in mine]
        if not extra:
            return found
        return sorted([*found, *extra], key=lambda b: (b.until, b.kind, b.key))

    def blocks(self, kind: str | None = None) -> list[Block]:
        return self._with_local(self._blocks(kind), kind)

    async def ablocks(self, kind: str | None = None) -> list[Block]:
        return self._with_local(await self._ablocks(kind), kind)

    def _lift_local(self, key: str | None, kind: str | None) -> int:
        if not self.held or self._memory is None or self.down:
            return 0
        if key is None:
            return self._memory.unblock_all(kind)
        return self._memory.unblock(key, kind)

    def unblock(self, key: str, kind: str | None = None) -> int:
        lifted: int = self._unblock(key, kind)
        return lifted + self._lift_local(key, kind)

    async def aunblock(self, key: str, kind: str | None = None) -> int:
        lifted: int = await self._aunblock(key, kind)
        return lifted + self._lift_local(key, kind)

    def unblock_all(self, kind: str | None = None) -> int:
        lifted: int = self._unblock_all(kind)
        return lifted + self._lift_local(None, kind)

    async def aunblock_all(self, kind: str | None = None) -> int:
        lifted: int = await self._aunblock_all(kind)
        return lifted + self._lift_local(None, kind)
