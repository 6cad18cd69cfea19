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
from .events import FallbackHandler
from .stores import MemoryStore, Store, StoreError

if TYPE_CHECKING:
    from .stores.redis import RedisStore

__version__ = "0.1.0"

# The application decides where the lines go; while it configures no logging
# at all, they go to stderr (the rule: mailguard.events, README: Logs).
if not any(isinstance(h, FallbackHandler) for h in logging.getLogger("mailguard").handlers):
    logging.getLogger("mailguard").addHandler(FallbackHandler())

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
