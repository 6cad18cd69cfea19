"""mailguard: keeps mail servers' HTTP front doors standing.

Three filters for ASGI (:mod:`mailguard.asgi`) and WSGI (:mod:`mailguard.wsgi`)
apps share one rate-limit core (:mod:`mailguard.core`) over pluggable stores:

- ``DosFilter`` caps requests per second per client address;
- ``InvalidLoginFilter`` blocks an address after repeated failed logins;
- ``DeviceJail`` jails an ActiveSync device that sends too much.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .core import Block, FakeClock, SystemClock, Verdict
from .stores import MemoryStore, Store, StoreError

if TYPE_CHECKING:
    from .stores.redis import RedisStore

__version__ = "0.1.0"

# A library logs, the application decides where it goes (see README: Logs).
logging.getLogger("mailguard").addHandler(logging.NullHandler())

__all__ = [
    "Block",
    "FakeClock",
    "MemoryStore",
    "RedisStore",
    "Store",
    "StoreError",
    "SystemClock",
    "Verdict",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # RedisStore needs the optional `redis` extra: import it only when asked for.
    if name == "RedisStore":
        from .stores.redis import RedisStore

        return RedisStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
