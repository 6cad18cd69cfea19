"""Stores: where counters and blocks live (see :mod:`mailguard.stores.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import BLOCKED, BUSY, JAILED, OK, OVER, Store, StoreBug, StoreError
from .memory import MemoryStore

if TYPE_CHECKING:
    from .redis import RedisStore

__all__ = [
    "BLOCKED",
    "BUSY",
    "JAILED",
    "OK",
    "OVER",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreBug",
    "StoreError",
]


def __getattr__(name: str) -> Any:
    # RedisStore needs the optional `redis` extra: import it only when asked for.
    if name == "RedisStore":
        from .redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
