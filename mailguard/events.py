"""What the filters report: events, one-line log records, and hooks.

Every refusal episode, login failure, block and jail becomes an
:class:`Event`.  It is logged under the ``mailguard`` logger (``mailguard.dos``,
``mailguard.login``, ``mailguard.device``) as one line of fixed shape::

    mailguard dos refused client=203.0.113.7 key=203.0.113.7 limit=100/1s mode=reject
    mailguard login failure client=203.0.113.7 account="jdoe" streak=3/5
    mailguard login blocked client=203.0.113.7 account="jdoe" seconds=1500 failures=5
    mailguard device jailed client=198.51.100.2 device=a1b2 account="jdoe" count=151

The words before ``client=`` are fixed and the address right after it is one
the resolver produced, so a fail2ban filter anchored at the start of the
line (``examples/fail2ban/``) reads the true address.  Text that came from the
request (an account name, a device type) is always quoted, with ``"``, ``\\``,
and every character outside printable ASCII escaped, so it can never end the
line, forge a field, or put an address where a regex looks for one.

Each record also carries the event as attributes (``extra=``), for JSON
formatters: ``filter``, ``action``, ``client`` and every field by its name
(``account``, ``streak``, ``seconds``, ...), except names a
:class:`logging.LogRecord` already has.

Where the lines go (the rule)
=============================

mailguard never takes a line away from an app that configured logging, and
never stays silent in one that did not.  At import it adds one handler to the
``mailguard`` logger, a *fallback*: for each record it checks, at that moment,
whether the app has a handler of its own, on the ``mailguard`` logger, on one
of its children, or on the root logger.  If it has, the fallback does nothing
and the app's logging decides everything (levels, format, destination).  If
not (uvicorn, gunicorn, ``flask run`` and ``manage.py runserver`` all leave
the root logger bare), the fallback writes the record to stderr as::

    2024-05-01 12:00:03,123 WARNING mailguard.login: mailguard login blocked client=...

and mailguard's own lines are shown from INFO up (the startup line of each
filter, a flood's end), unless the app set a level on the ``mailguard``
logger.  To silence mailguard entirely, give its logger a handler:
``logging.getLogger("mailguard").addHandler(logging.NullHandler())``.

Hooks: pass ``on_event=callable`` to any filter to receive every
:class:`Event` (for alerting, metrics, audit).  A hook that raises is logged
and otherwise ignored: alerting must never break mail.

Listeners (process-wide): :func:`listen` ``(callback)`` receives every event
of every filter in this process, whatever its ``on_event`` (the admin console's
recorder, :mod:`mailguard.console`, is one), plus, for each refused request,
an event of action ``"request-refused"`` with a ``reason`` field that is never
logged nor passed to ``on_event`` hooks (filters report *episodes*; this
counts requests).  Listening is not logging: it adds no handler, so the rule
above is unchanged.  With nobody listening it costs one truth test per
event; a listener that raises is ignored (logged at DEBUG).  :func:`unlisten`
removes one.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "FALLBACK_FORMAT",
    "Event",
    "EventHook",
    "FallbackHandler",
    "Reporter",
    "listen",
    "quote",
    "refused_request",
    "unlisten",
]

Field = str | int | float

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@+")


_PLAIN = re.compile(r"[ !#-\[\]-~]*")
"""Printable ASCII but ``"`` and ``\\``: text that :func:`quote` leaves as it is."""
_BARE = re.compile(r"[A-Za-z0-9.\-_@+:/]+")
"""Text that :func:`_bare` leaves unquoted (``_SAFE`` and ``:/``)."""


def quote(text: str, limit: int = 128) -> str:
    """Quote request-supplied text for a log line: it cannot break out of the quotes."""
    if len(text) <= limit and _PLAIN.fullmatch(text):
        return f'"{text}"'  # nothing to escape, nothing to cut: as the loop below would
    return _quote_slowly(text, limit)


def _quote_slowly(text: str, limit: int = 128) -> str:
    """:func:`quote` character by character (the escapes, the cut)."""
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
    if _BARE.fullmatch(text):
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

_listeners: tuple[EventHook, ...] = ()
"""The process-wide listeners (a tuple, replaced whole: read without a lock)."""


def listen(callback: EventHook) -> None:
    """Give ``callback`` every event of every filter of this process (see the
    module docstring); listening twice with one callback is listening once."""
    global _listeners
    if not callable(callback):
        raise ValueError(f"listen: must be callable, got {callback!r}")
    if callback not in _listeners:
        _listeners = (*_listeners, callback)


def unlisten(callback: EventHook) -> None:
    """Stop giving events to ``callback`` (nothing happens if it was not listening)."""
    global _listeners
    _listeners = tuple(c for c in _listeners if c != callback)


def _tell(event: Event) -> None:
    for callback in _listeners:
        try:
            callback(event)
        except Exception:
            logging.getLogger("mailguard.events").debug("listener failed", exc_info=True)


def refused_request(kind: str, reason: str, key: str | None) -> None:
    """One request refused by filter ``kind`` (the adapters call it per refusal):
    an event for listeners only, never logged nor given to ``on_event``."""
    if _listeners:
        _tell(Event(kind, "request-refused", key or "-", (("reason", reason),)))


FALLBACK_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
"""The format of the lines the fallback handler writes to stderr."""

# attributes every LogRecord has: an event field of the same name is left out
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class FallbackHandler(logging.Handler):
    """Writes mailguard's records to stderr while the app configured no logging.

    Added to the ``mailguard`` logger at import (see "Where the lines go" in
    this module's docstring); decides per record, so an app that configures
    logging after importing mailguard takes over from then on.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter(FALLBACK_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if not unconfigured(logging.getLogger(record.name)):
            return
        try:
            stream = sys.stderr
            if stream is None:  # pythonw: nowhere to write
                return
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def unconfigured(logger: logging.Logger) -> bool:
    """True when no handler but mailguard's fallback would see ``logger``'s records."""
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if not isinstance(handler, FallbackHandler):
                return False
        if not node.propagate:
            return True
        node = node.parent
    return True


def _shown(logger: logging.Logger, level: int) -> bool:
    """Whether a record at ``level`` is written: the logger's own rule, or,
    while only the fallback listens and no level was set on a ``mailguard``
    logger, INFO and up."""
    if logger.isEnabledFor(level):
        return True
    if level < logging.INFO or logging.root.manager.disable >= level:
        return False
    node: logging.Logger | None = logger
    while node is not None and node is not logging.root:
        if node.level:
            return False  # the app chose a level for mailguard: it is obeyed
        node = node.parent
    return unconfigured(logger)


def _heard(logger: logging.Logger, level: int) -> bool:
    """Whether a record of ``logger`` at ``level`` could reach anything: False
    only when every handler it would reach is a plain :class:`logging.NullHandler`
    (which drops it unseen) or the fallback (which then stays silent: a
    NullHandler is the app's own handler), and no filter or record factory
    would see it made.  So the line is not even built for a silenced mailguard
    (``getLogger("mailguard").addHandler(NullHandler())``), while every
    handler that does something gets the record it always got."""
    if logger.filters or logging.getLogRecordFactory() is not logging.LogRecord:
        return True
    silenced = False
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if type(handler) is logging.NullHandler:
                silenced = True
            elif type(handler) is not FallbackHandler or (
                handler.filters and level >= handler.level
            ):
                return True
        if not node.propagate:
            break
        node = node.parent
    # no NullHandler: the fallback writes, or logging's last resort does
    return not silenced


class Reporter:
    """Logs events at the right level and hands them to the user's hook."""

    __slots__ = ("hook", "logger")

    def __init__(self, name: str, hook: EventHook | None = None) -> None:
        if hook is not None and not callable(hook):
            raise ValueError(f"on_event: must be callable, got {hook!r}")
        self.logger = logging.getLogger(f"mailguard.{name}")
        self.hook = hook

    def log(self, level: int, line: str, extra: dict[str, object]) -> None:
        """Log one line with ``extra`` attributes, under the rule above."""
        logger = self.logger
        # enabled, or below the root logger's WARNING while only the fallback
        # listens; the record is made here, not by logger.log: that would walk
        # the stack for a caller (always this method) on every line
        if (logger.isEnabledFor(level) or _shown(logger, level)) and _heard(logger, level):
            record = logger.makeRecord(
                logger.name, level, "(unknown file)", 0, "%s", (line,), None, extra=extra
            )
            logger.handle(record)

    def heard(self, level: int = logging.WARNING) -> bool:
        """Whether an event at ``level`` would reach anyone: a log handler that
        writes it (as :meth:`emit` decides), a listener, or the hook.  A filter
        may skip making an event nobody will see."""
        if self.hook is not None or _listeners:
            return True
        logger = self.logger
        # log's test, its two halves swapped (both are pure): a silenced mailguard
        # (every handler a NullHandler) is told by _heard alone; when it is heard,
        # _shown's first rule first, as log does: most often all it takes
        return _heard(logger, level) and (logger.isEnabledFor(level) or _shown(logger, level))

    def emit(self, event: Event, level: int = logging.WARNING) -> None:
        if _shown(self.logger, level) and _heard(self.logger, level):
            extra: dict[str, object] = {
                "filter": event.filter,
                "action": event.action,
                "client": event.client,
            }
            for key, value in event.fields:
                if key not in _RESERVED and key not in extra:
                    extra[key] = value
            self.log(level, event.line(), extra)
        if _listeners:
            _tell(event)
        if self.hook is not None:
            try:
                self.hook(event)
            except Exception:
                self.logger.exception("mailguard: on_event hook failed for %s", event.action)

    def started(self, fields: tuple[tuple[str, Field], ...]) -> None:
        """The startup line of a filter: ``mailguard <kind> started guards=... store=...``."""
        kind = self.logger.name.rpartition(".")[2]
        if _shown(self.logger, logging.INFO):
            parts = [f"mailguard {kind} started"]
            parts.extend(f"{key}={_bare(value)}" for key, value in fields)
            extra: dict[str, object] = {"filter": kind, "action": "started"}
            extra.update((k, v) for k, v in fields if k not in _RESERVED)
            self.log(logging.INFO, " ".join(parts), extra)
