"""The HTTP fronts by name: ``"asgi"`` and ``"wsgi"``.

For code that picks the interface at run time; everyone else calls
``mailguard.asgi.protect`` or ``mailguard.wsgi.protect`` directly.  This module
sits above both adapters and :mod:`mailguard.config`, so none of them imports
another to find its sibling.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Literal, overload

from . import asgi, wsgi
from .config import Config
from .events import EventHook
from .stores.base import Store

if TYPE_CHECKING:
    from .asgi import ASGIApp
    from .wsgi import WSGIApp

__all__ = ["INTERFACES", "wrap"]

INTERFACES = ("asgi", "wsgi")


@overload
def wrap(
    app: ASGIApp,
    config: str | os.PathLike[str] | Config,
    interface: Literal["asgi"],
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> ASGIApp: ...


@overload
def wrap(
    app: WSGIApp,
    config: str | os.PathLike[str] | Config,
    interface: Literal["wsgi"],
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> WSGIApp: ...


def wrap(
    app: Any,
    config: str | os.PathLike[str] | Config,
    interface: Literal["asgi", "wsgi"],
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> Any:
    """``mailguard.<interface>.protect(app, config, store=..., on_event=...)``.

    (Formerly ``mailguard.config.wrap``, which needed this module's imports.)

    :raises ValueError: for an interface other than ``"asgi"`` and ``"wsgi"``.
    :raises ~mailguard.config.ConfigError: on any mistake in the configuration.
    """
    if interface == "asgi":
        return asgi.protect(app, config, store=store, on_event=on_event)
    if interface == "wsgi":
        return wsgi.protect(app, config, store=store, on_event=on_event)
    raise ValueError(f"interface: must be 'asgi' or 'wsgi', got {interface!r}")
