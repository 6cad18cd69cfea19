"""Manual blocks and the audit trail of every block and lift an admin makes.

The ``mailguard block`` / ``unblock`` commands and the admin app's
``POST /block`` / ``POST /unblock`` each leave one line under the
``mailguard.audit`` logger (at WARNING), of fixed shape::

    mailguard audit block key="203.0.113.7" kind=login seconds=3600 reason="phishing run" by=alice
    mailguard audit unblock key="203.0.113.7" kind=any lifted=1 by=alice
    mailguard audit unblock key="*" kind=login lifted=3 by=admin-token from=127.0.0.1

``key`` and ``reason`` are always quoted (as :func:`mailguard.events.quote`
does), so neither can forge a field.  ``by`` is who did it: for the command,
``$SUDO_USER``, else ``$USER`` (else the login name); for the admin app,
``admin-token`` (whoever holds the token), with ``from=`` the caller's
address.  ``key="*"`` is ``--all``.  A live configuration change
(``mailguard config set``, ``POST /config``) leaves one line too, ``mailguard
audit config key="dos.max_requests_per_sec" op=set value="150" version=5
by=alice@mx1`` (:func:`audit_config`).  The same facts reach ``on_event`` hooks
as an :class:`~mailguard.events.Event` with ``filter="audit"``, ``action``
``"block"`` or ``"unblock"``, and ``client`` the caller's address (``"cli"``
for the command).
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import logging
import os
from collections.abc import Iterable, Mapping

from .events import Event, EventHook, _bare, quote
from .identity import ClientResolver, canonical_ip
from .policies.device import _normalise_id, account_key, normalise_account

__all__ = ["ALL", "AUDIT_LOGGER", "audit", "audit_config", "audit_line", "block_key", "who"]

AUDIT_LOGGER = "mailguard.audit"
ALL = "*"
"""The ``key`` of an audit line that lifted every block (``unblock --all``)."""

_log = logging.getLogger(AUDIT_LOGGER)
_QUOTED = frozenset({"key", "reason", "value"})
_MAX_DEVICE_ID = 64


def who(env: Mapping[str, str] | None = None) -> str:
    """The admin running the command: ``$SUDO_USER``, ``$USER``, else the login name."""
    environ = os.environ if env is None else env
    for name in ("SUDO_USER", "USER", "LOGNAME"):
        value = environ.get(name, "").strip()
        if value:
            return value
    try:
        return getpass.getuser()
    except Exception:  # no name for this uid (a bare container)
        return f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def audit_line(event: Event) -> str:
    """The audit line of ``event`` (see the module docstring)."""
    parts = [f"mailguard audit {event.action}"]
    for name, value in event.fields:
        text = quote(str(value)) if name in _QUOTED else _bare(value)
        parts.append(f"{name}={text}")
    if event.client != "cli":
        parts.append(f"from={_bare(event.client)}")
    return " ".join(parts)


def audit(
    action: str,
    *,
    key: str,
    kind: str | None,
    by: str,
    client: str = "cli",
    seconds: float | None = None,
    reason: str | None = None,
    lifted: int | None = None,
    hook: EventHook | None = None,
) -> Event:
    """Log one audit line and hand its event to ``hook``; return the event.

    :param action: ``"block"`` or ``"unblock"``.
    :param key: the block key (:data:`ALL` for every block).
    :param kind: the filter kind, None for every kind (``kind=any``).
    :param by: who did it (:func:`who`, or ``"admin-token"``).
    :param client: the caller's address (``"cli"`` for the command).
    """
    fields: list[tuple[str, str | int | float]] = [("key", key), ("kind", kind or "any")]
    if seconds is not None:
        fields.append(("seconds", int(seconds) if seconds == int(seconds) else seconds))
    if reason is not None:
        fields.append(("reason", reason))
    if lifted is not None:
        fields.append(("lifted", lifted))
    fields.append(("by", by))
    event = Event("audit", action, client, tuple(fields), _QUOTED)
    _log.warning("%s", audit_line(event))
    if hook is not None:
        try:
            hook(event)
        except Exception:
            _log.exception("mailguard: on_event hook failed for audit %s", action)
    return event


def audit_config(
    op: str,
    *,
    key: str,
    value: object,
    version: int,
    by: str,
    client: str = "cli",
    hook: EventHook | None = None,
) -> Event:
    """Log the audit line of a live configuration change (:mod:`mailguard.live`)::

        mailguard audit config key="dos.max_requests_per_sec" op=set value="150"
            version=5 by=alice@mx1

    ``value`` is the value given, as JSON (quoted, so it cannot forge a field).
    The event (``filter="audit"``, ``action="config"``) reaches ``hook``.
    """
    fields: list[tuple[str, str | int | float]] = [("key", key), ("op", op)]
    if op != "unset":
        fields.append(("value", json.dumps(value, ensure_ascii=True)[:512]))
    fields += [("version", version), ("by", by)]
    event = Event("audit", "config", client, tuple(fields), _QUOTED)
    _log.warning("%s", audit_line(event))
    if hook is not None:
        try:
            hook(event)
        except Exception:
            _log.exception("mailguard: on_event hook failed for audit config")
    return event


def block_key(
    text: str, kind: str, *, ipv6_prefix: int = 64, ipv6_wider: Iterable[int] = (56, 48)
) -> str:
    """The store key a filter of ``kind`` would block for ``text``, as an admin types it.

    - ``login`` and ``dos``: an address (an IPv6 address stands for its
      network of ``ipv6_prefix`` bits, the way the filters count it), or an
      IPv6 network of exactly ``ipv6_prefix`` bits (``2001:db8:1:2::/64``) or
      of one of the ``ipv6_wider`` sizes (``2001:db8:1::/48``), which
      InvalidLoginFilter also blocks;
    - ``device``: ``DEVICE`` or ``DEVICE/ACCOUNT`` (the id normalised as the
      phone's ``DeviceId`` is, the account as a login name is).  With
      ``per_account`` on (the default) the filter jails ``DEVICE/ACCOUNT``.

    Raises ``ValueError`` with a sentence for anything a filter would never look up.
    """
    text = text.strip()
    if kind == "device":
        device, slash, account = text.partition("/")
        device_id = _normalise_id(device, _MAX_DEVICE_ID)
        if device_id is None:
            raise ValueError(f"{text!r} is not a device id (letters and digits, 1 to 64)")
        if not slash:
            return device_id
        name = normalise_account(account)
        if not name:
            raise ValueError(f"{text!r}: no account after the '/'")
        return f"{device_id}/{account_key(name)}"
    resolver = ClientResolver((), ipv6_prefix=ipv6_prefix)
    address = canonical_ip(text)
    if address is not None:
        return resolver.resolve(address, ()).key
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or network") from None
    wider = tuple(p for p in ipv6_wider if p < ipv6_prefix)
    sized = network.prefixlen == ipv6_prefix or network.prefixlen in wider
    if network.version == 4 or not sized:
        sizes = ", ".join(f"/{p}" for p in (ipv6_prefix, *wider))
        raise ValueError(
            f"{text!r}: the filters count IPv4 clients per address and IPv6 clients per"
            f" {sizes}; block an address, or an IPv6 network of one of those sizes"
        )
    if network.prefixlen == ipv6_prefix:
        return resolver.resolve(str(network.network_address), ()).key
    # a wider network: its key as the resolver writes it in Client.wider
    widening = ClientResolver((), ipv6_prefix=ipv6_prefix, ipv6_wider=(network.prefixlen,))
    [key] = widening.resolve(str(network.network_address), ()).wider
    return key
