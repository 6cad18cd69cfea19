"""What the filters report: events, one-line log records, and hooks.

Every refusal episode, login failure, block and jail becomes an
:class:`Event`.  It is logged under the ``mailguard`` logger (``mailguard.dos``,
``mailguard.login``, ``mailguard.device``) as one line of fixed shape::

    mailguard dos refused client=203.0.113.7 count=101 limit=100/1s
    mailguard login failure client=203.0.113.7 account="jdoe" streak=3/5
    mailguard login blocked client=203.0.113.7 account="jdoe" seconds=1500 failures=5
    mailguard device jailed client=198.51.100.2 device=a1b2 account="jdoe" count=151

The words before ``client=`` are fixed and the address right after it is one
the resolver produced, so a fail2ban filter anchored at the start of the
line (``examples/fail2ban/``) reads the true address.  Text that came from the
request (an account name, a device type) is always quoted, with ``"``, ``\\``,
and every character outside printable ASCII escaped, so it can never end the
line, forge a field, or put an address where a regex looks for one.

Hooks: pass ``on_event=callable`` to any filter to receive every
:class:`Event` (for alerting, metrics, audit).  A hook that raises is logged
and otherwise ignored: alerting must never break mail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Event", "EventHook", "Reporter", "quote"]

Field = str | int | float

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@+")


def quote(text: str, limit: int = 128) -> str:
    """Quote request-supplied text for a log line: it cannot break out of the quotes."""
    out = ['"']
    for ch in text[:limit]:
        if ch in _SAFE:
            out.append(ch)
        elif ch == '"' or ch == "\\":
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    if len(text) > limit:
        out.append("...")
    out.append('"')
    return "".join(out)


def _bare(value: Field) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    text = str(value)
    if text and all(ch in _SAFE or ch in ":/" for ch in text):
        return text
    return quote(text)


@dataclass(frozen=True, slots=True)
class Event:
    """One thing a filter did.

    :ivar filter: ``"dos"``, ``"login"`` or ``"device"``.
    :ivar action: ``"refused"``, ``"calm"``, ``"failure"``, ``"blocked"``,
        ``"jailed"``, ``"store-down"``, ``"store-up"``, ...
    :ivar client: the client address key (see :mod:`mailguard.identity`).
    :ivar fields: further facts, in the order they are logged.  Keys in
        ``quoted`` are request-supplied text and always quoted.
    """

    filter: str
    action: str
    client: str
    fields: tuple[tuple[str, Field], ...] = ()
    quoted: frozenset[str] = frozenset()

    def get(self, name: str, default: Field | None = None) -> Field | None:
        for key, value in self.fields:
            if key == name:
                return value
        return default

    def line(self) -> str:
        """The log line (see the module docstring)."""
        parts = [f"mailguard {self.filter} {self.action} client={_bare(self.client)}"]
        for key, value in self.fields:
            text = quote(str(value)) if key in self.quoted else _bare(value)
            parts.append(f"{key}={text}")
        return " ".join(parts)


EventHook = Callable[[Event], None]


class Reporter:
    """Logs events at the right level and hands them to the user's hook."""

    __slots__ = ("hook", "logger")

    def __init__(self, name: str, hook: EventHook | None = None) -> None:
        if hook is not None and not callable(hook):
            raise ValueError(f"on_event: must be callable, got {hook!r}")
        self.logger = logging.getLogger(f"mailguard.{name}")
        self.hook = hook

    def emit(self, event: Event, level: int = logging.WARNING) -> None:
        if self.logger.isEnabledFor(level):
            self.logger.log(level, "%s", event.line())
        if self.hook is not None:
            try:
                self.hook(event)
            except Exception:
                self.logger.exception("mailguard: on_event hook failed for %s", event.action)
