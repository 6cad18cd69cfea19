"""Checking a password by logging in to the mail server behind nginx.

nginx's mail proxy asks ``auth_http`` once per login and never says whether
the backend then accepted the password, so ``/nginx`` checks it first
(``[mailauth] verify = "backend"``): one short connection to the protocol's
backend, a login, a logout, asyncio streams, every step under one deadline.

- IMAP (RFC 9051 / 3501): the greeting, ``a1 LOGIN user password`` (each a
  quoted string when it is 7-bit, else a synchronizing literal ``{n}``),
  ``a2 LOGOUT``.  A greeting that advertises ``LOGINDISABLED`` (plain text
  refused without TLS) cannot check anything.
- POP3 (RFC 1939, 2449): the greeting, ``CAPA`` (``USER`` must be listed),
  ``USER``, ``PASS``, ``QUIT``.
- SMTP submission (RFC 5321, 4954): the greeting, ``EHLO``, ``AUTH PLAIN``
  (RFC 4616: ``authzid NUL authcid NUL passwd``, base64) when the reply lists
  it, ``QUIT``.

Credentials with CR, LF or NUL are refused before anything is sent: no
command can be smuggled into the session.

The answer is ``True`` (right), ``False`` (wrong) or ``None`` (cannot tell:
the backend is unreachable, too slow, refuses plain text, or answered
something else).  ``None`` is never counted against the client.  Responses
that say the server, not the password, failed (IMAP ``[UNAVAILABLE]``,
``[SERVERBUG]``, ``[PRIVACYREQUIRED]``...; POP3 ``[SYS/...]``,
``[IN-USE]``; SMTP 4xx, 534, 538) answer ``None`` too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable

from .mailauth import Backend

__all__ = ["MAX_LINE", "UNSAFE", "has_unsafe", "imap_string", "verify_backend"]

_log = logging.getLogger("mailguard.verify")

MAX_LINE = 8192
"""The longest server line read (a longer one is a broken server)."""

UNSAFE = frozenset(b"\r\n\x00")
"""Bytes never sent inside a credential."""

_IMAP_NOT_THE_PASSWORD = frozenset(
    {b"UNAVAILABLE", b"SERVERBUG", b"PRIVACYREQUIRED", b"LIMIT", b"INUSE", b"CONTACTADMIN"}
)
_POP3_NOT_THE_PASSWORD = (b"[SYS/", b"[IN-USE]")
_CODE = re.compile(rb"\[([A-Za-z-]+)")
_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}")  # an IP address as the resolver wrote it


class _Unsure(Exception):
    """The backend cannot tell whether the password is right."""


def has_unsafe(*values: bytes) -> bool:
    """Whether any value holds CR, LF or NUL."""
    return any(byte in UNSAFE for value in values for byte in value)


def imap_string(value: bytes) -> tuple[bytes, bytes | None]:
    """``(token, literal)``: a quoted string for 7-bit text (``"`` and ``\\``
    escaped), else ``{n}`` and the literal's bytes to send after the
    server's continuation."""
    if all(0x01 <= byte <= 0x7F for byte in value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"', None
    return b"{%d}" % len(value), value


async def _line(reader: asyncio.StreamReader) -> bytes:
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError:
        raise _Unsure("a line longer than the limit") from None
    except asyncio.IncompleteReadError:
        raise _Unsure("the connection closed") from None
    return line.rstrip(b"\r\n")


async def _imap(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: bytes,
    password: bytes,
    client: bytes,
) -> bool:
    greeting = await _line(reader)
    if not greeting.startswith(b"* OK"):
        raise _Unsure(f"greeting {greeting[:60]!r}")
    if b"LOGINDISABLED" in greeting.upper():
        raise _Unsure("LOGINDISABLED: the backend refuses plain-text logins here")
    if client and b"ID" in greeting.upper().split(b"]")[0].split():
        # RFC 2971 ID: a backend that trusts us (Dovecot's login_trusted_networks)
        # then counts this login (its penalty, its logs) for the client, not for us;
        # any other server ignores the field
        writer.write(b'a0 ID ("x-originating-ip" "' + client + b'")\r\n')
    parts: list[tuple[bytes, bytes | None]] = [imap_string(user), imap_string(password)]
    command = b"a1 LOGIN"
    for token, literal in parts:
        writer.write(command + b" " + token)
        command = b""
        if literal is not None:
            writer.write(b"\r\n")
            await writer.drain()
            while True:  # wait for the continuation request
                line = await _line(reader)
                if line.startswith(b"+"):
                    break
                if line.startswith(b"a1 "):
                    raise _Unsure(f"literal refused: {line[:60]!r}")
            writer.write(literal)
    writer.write(b"\r\n")
    await writer.drain()
    while True:
        line = await _line(reader)
        if line.startswith(b"* ") and b"LOGINDISABLED" in line.upper():
            raise _Unsure("LOGINDISABLED")
        if not line.startswith(b"a1 "):
            continue
        status = line[3:6].upper()
        break
    writer.write(b"a2 LOGOUT\r\n")
    if status.startswith(b"OK"):
        return True
    if status.startswith(b"NO"):
        code = _CODE.search(line)
        if code is not None and code.group(1).upper() in _IMAP_NOT_THE_PASSWORD:
            raise _Unsure(f"answer {line[:80]!r}")
        return False
    raise _Unsure(f"answer {line[:80]!r}")


async def _pop3(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: bytes,
    password: bytes,
    client: bytes,
) -> bool:
    greeting = await _line(reader)
    if not greeting.startswith(b"+OK"):
        raise _Unsure(f"greeting {greeting[:60]!r}")
    writer.write(b"CAPA\r\n")
    await writer.drain()
    first = await _line(reader)
    capabilities: set[bytes] = set()
    if first.startswith(b"+OK"):
        while True:
            line = await _line(reader)
            if line == b".":
                break
            capabilities.add(line.split(b" ", 1)[0].upper())
        if b"USER" not in capabilities:
            raise _Unsure("USER is not offered: the backend refuses plain-text logins here")
        # Dovecot offers XCLIENT in its greeting, "+OK [XCLIENT] ...", and never in
        # CAPA (2.3: src/pop3-login/client.c, pop3_client_notify_auth_ready; its own
        # proxy reads it there: pop3-proxy.c, pop3_proxy_parse_line)
        offered = b"XCLIENT" in capabilities or greeting[3:].lstrip().startswith(b"[XCLIENT]")
        if client and offered:
            # offered only to a trusted peer (Dovecot's login_trusted_networks): the
            # backend then counts this login for the client, not for us
            writer.write(b"XCLIENT ADDR=" + client + b"\r\n")
            await writer.drain()
            said = await _line(reader)
            if not said.startswith(b"+OK"):
                raise _Unsure(f"XCLIENT answered {said[:60]!r}")
    writer.write(b"USER " + user + b"\r\n")
    await writer.drain()
    answer = await _line(reader)
    if answer.startswith(b"+OK"):
        writer.write(b"PASS " + password + b"\r\n")
        await writer.drain()
        answer = await _line(reader)
    writer.write(b"QUIT\r\n")
    if answer.startswith(b"+OK"):
        return True
    if answer.startswith(b"-ERR"):
        if any(code in answer.upper() for code in _POP3_NOT_THE_PASSWORD):
            raise _Unsure(f"answer {answer[:80]!r}")
        return False
    raise _Unsure(f"answer {answer[:80]!r}")


async def _smtp_reply(reader: asyncio.StreamReader) -> tuple[int, list[bytes]]:
    lines: list[bytes] = []
    while True:
        line = await _line(reader)
        if len(line) < 3 or not line[:3].isdigit():
            raise _Unsure(f"reply {line[:60]!r}")
        lines.append(line[4:])
        if len(lines) > 100:
            raise _Unsure("a reply of too many lines")
        if line[3:4] != b"-":
            return int(line[:3]), lines


async def _smtp_ehlo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> list[bytes]:
    writer.write(b"EHLO mailguard.invalid\r\n")
    await writer.drain()
    code, lines = await _smtp_reply(reader)
    if code != 250:
        raise _Unsure(f"EHLO answered {code}")
    return lines


async def _smtp(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    user: bytes,
    password: bytes,
    client: bytes,
) -> bool:
    code, _ = await _smtp_reply(reader)
    if code != 220:
        raise _Unsure(f"greeting {code}")
    lines = await _smtp_ehlo(reader, writer)
    if client and any(line.upper().split()[:1] == [b"XCLIENT"] for line in lines):
        # offered only to a trusted peer (Postfix: smtpd_authorized_xclient_hosts;
        # Dovecot submission-login: login_trusted_networks): the backend then
        # counts this login, and its auth penalty, for the client, not for us.
        # ADDR is IPv4 as is, IPv6 as "IPV6:..." (Postfix's XCLIENT_README;
        # Dovecot src/lib-smtp/smtp-server-cmd-xclient.c, cmd_xclient_recheck
        # and the ADDR parsing, reads that prefix); success is a new 220
        # greeting, after which the session starts again with EHLO
        addr = b"IPV6:" + client if b":" in client else client
        writer.write(b"XCLIENT ADDR=" + addr + b"\r\n")
        await writer.drain()
        code, _ = await _smtp_reply(reader)
        if code != 220:
            raise _Unsure(f"XCLIENT answered {code}")
        lines = await _smtp_ehlo(reader, writer)
    mechanisms: set[bytes] = set()
    for line in lines:
        words = line.upper().split()
        if words and words[0] in (b"AUTH", b"AUTH="):
            mechanisms.update(words[1:])
    if b"PLAIN" not in mechanisms:
        raise _Unsure("AUTH PLAIN is not offered (the backend may want TLS first)")
    token = base64.b64encode(b"\0" + user + b"\0" + password)
    writer.write(b"AUTH PLAIN " + token + b"\r\n")
    await writer.drain()
    code, lines = await _smtp_reply(reader)
    writer.write(b"QUIT\r\n")
    if code == 235:
        return True
    if code == 535:
        return False
    raise _Unsure(f"AUTH answered {code}")


_DIALOGUES = {"imap": _imap, "pop3": _pop3, "smtp": _smtp}


async def verify_backend(
    backend: Backend,
    protocol: str,
    user: bytes,
    password: bytes,
    timeout: float,
    client: str = "",
) -> bool | None:
    """Log in to ``backend`` over ``protocol``: True, False, or None (cannot tell).

    ``client`` (an IP address) is passed on where the backend takes it from a
    trusted peer: IMAP ``ID x-originating-ip``, POP3 and SMTP ``XCLIENT ADDR``.
    """
    dialogue = _DIALOGUES.get(protocol)
    if dialogue is None:
        return None
    if has_unsafe(user, password):
        return False  # never sent: such credentials cannot be right
    try:
        address = client.encode("ascii") if _ADDRESS.fullmatch(client) else b""
        session = _session(backend, dialogue, user, password, address)
        return await asyncio.wait_for(session, timeout)
    except _Unsure as exc:
        reason = str(exc)[:120].encode("ascii", "backslashreplace").decode("ascii")
        _log.warning(
            "mailguard verify unsure protocol=%s backend=%s:%d reason=%s",
            protocol, backend.host, backend.port, reason,
        )  # fmt: skip
        return None
    except (OSError, asyncio.TimeoutError) as exc:
        _log.warning(
            "mailguard verify backend-down protocol=%s backend=%s:%d error=%s",
            protocol, backend.host, backend.port, type(exc).__name__,
        )  # fmt: skip
        return None


async def _session(
    backend: Backend,
    dialogue: Callable[
        [asyncio.StreamReader, asyncio.StreamWriter, bytes, bytes, bytes], Awaitable[bool]
    ],
    user: bytes,
    password: bytes,
    client: bytes,
) -> bool:
    reader, writer = await asyncio.open_connection(backend.host, backend.port, limit=MAX_LINE)
    try:
        result = await dialogue(reader, writer, user, password, client)
        with contextlib.suppress(OSError):
            await writer.drain()  # the LOGOUT / QUIT
        return result
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
