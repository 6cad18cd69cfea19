"""Small real IMAP, POP3 and SMTP servers (asyncio, loopback) for the password checks.

They speak just enough of each protocol for :mod:`mailguard.verify`: an IMAP
greeting, ``LOGIN`` with quoted strings and synchronizing literals,
``LOGOUT``; POP3 ``CAPA``, ``USER``, ``PASS``, ``QUIT``; SMTP ``EHLO``,
``AUTH PLAIN``, ``QUIT``.  Every line received is recorded (``lines``), so a
test can check what was, and was not, sent.  Start one inside the test's event
loop::

    async with MailServer("imap", {b"jdoe": b"secret"}) as server:
        ... server.port ...
"""

from __future__ import annotations

import asyncio
import base64
import re
from types import TracebackType

__all__ = ["MailServer"]

_LITERAL = re.compile(rb"\{(\d+)\}$")


class MailServer:
    """One protocol on 127.0.0.1, a free port, users ``{name: password}``.

    :param mode: ``"ok"`` (normal), ``"logindisabled"`` (IMAP advertises it),
        ``"nouser"`` (POP3 CAPA without USER), ``"noauth"`` (SMTP without AUTH
        PLAIN), ``"trusting"`` (IMAP offers ``ID``, POP3 ``XCLIENT``, as Dovecot
        does to ``login_trusted_networks``), ``"unavailable"`` (IMAP ``NO [UNAVAILABLE]``, POP3
        ``-ERR [SYS/TEMP]``, SMTP 454), ``"silent"`` (never greets).
    """

    def __init__(self, protocol: str, users: dict[bytes, bytes], mode: str = "ok") -> None:
        self.protocol = protocol
        self.users = users
        self.mode = mode
        self.lines: list[bytes] = []
        self.connections = 0
        self.closed = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> MailServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.mode == "silent":
                await reader.read()  # until the client gives up
                return
            handler = {"imap": self._imap, "pop3": self._pop3, "smtp": self._smtp}
            await handler[self.protocol](reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed += 1
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        line = await reader.readuntil(b"\n")
        self.lines.append(line)
        return line.rstrip(b"\r\n")

    # ------------------------------------------------------------------ IMAP
    async def _imap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caps = b"IMAP4rev1 LOGINDISABLED" if self.mode == "logindisabled" else b"IMAP4rev1 IDLE"
        if self.mode == "trusting":  # RFC 2971 ID, as Dovecot offers it
            caps += b" ID"
        writer.write(b"* OK [CAPABILITY " + caps + b"] test ready\r\n")
        while True:
            line = await self._read(reader)
            tag, _, rest = line.partition(b" ")
            command, _, args = rest.partition(b" ")
            if command.upper() == b"LOGOUT":
                writer.write(b"* BYE bye\r\n" + tag + b" OK LOGOUT done\r\n")
                await writer.drain()
                return
            if command.upper() == b"ID":
                writer.write(b'* ID ("name" "test")\r\n' + tag + b" OK ID completed\r\n")
                continue
            if command.upper() != b"LOGIN":
                writer.write(tag + b" BAD unknown\r\n")
                continue
            values: list[bytes] = []
            while len(values) < 2:
                args = args.lstrip(b" ")
                literal = _LITERAL.match(args)
                if literal is not None:
                    writer.write(b"+ go ahead\r\n")
                    await writer.drain()
                    size = int(literal.group(1))
                    data = await reader.readexactly(size)
                    self.lines.append(data)
                    values.append(data)
                    args = await self._read(reader)
                    continue
                if args.startswith(b'"'):
                    value, args = _quoted(args)
                    values.append(value)
                    continue
                word, _, args = args.partition(b" ")
                values.append(word)
            if self.mode == "unavailable":
                writer.write(tag + b" NO [UNAVAILABLE] try later\r\n")
            elif self.mode == "logindisabled":
                writer.write(tag + b" NO [PRIVACYREQUIRED] use TLS\r\n")
            elif self.users.get(values[0]) == values[1]:
                writer.write(tag + b" OK [CAPABILITY IMAP4rev1] Logged in\r\n")
            else:
                writer.write(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
            await writer.drain()

    # ------------------------------------------------------------------ POP3
    async def _pop3(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK test ready\r\n")
        user = b""
        while True:
            line = await self._read(reader)
            command, _, arg = line.partition(b" ")
            command = command.upper()
            if command == b"CAPA":
                caps = b"TOP\r\nUIDL\r\n" + (b"" if self.mode == "nouser" else b"USER\r\n")
                if self.mode == "trusting":  # Dovecot offers it to login_trusted_networks
                    caps += b"XCLIENT\r\n"
                writer.write(b"+OK\r\n" + caps + b".\r\n")
            elif command == b"XCLIENT" and self.mode == "trusting":
                writer.write(b"+OK\r\n")
            elif command == b"USER":
                user = arg
                writer.write(b"+OK\r\n")
            elif command == b"PASS":
                if self.mode == "unavailable":
                    writer.write(b"-ERR [SYS/TEMP] try later\r\n")
                elif self.users.get(user) == arg:
                    writer.write(b"+OK Logged in.\r\n")
                else:
                    writer.write(b"-ERR [AUTH] Authentication failed.\r\n")
            elif command == b"QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"-ERR unknown\r\n")
            await writer.drain()

    # ------------------------------------------------------------------ SMTP
    async def _smtp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 test ESMTP ready\r\n")
        while True:
            line = await self._read(reader)
            command, _, arg = line.partition(b" ")
            command = command.upper()
            if command == b"EHLO":
                auth = (
                    b"250-AUTH LOGIN\r\n" if self.mode == "noauth" else b"250-AUTH PLAIN LOGIN\r\n"
                )
                writer.write(b"250-test\r\n250-PIPELINING\r\n" + auth + b"250 8BITMIME\r\n")
            elif command == b"AUTH":
                mechanism, _, token = arg.partition(b" ")
                parts = base64.b64decode(token).split(b"\0")
                if self.mode == "unavailable":
                    writer.write(b"454 4.7.0 try later\r\n")
                elif (
                    mechanism.upper() == b"PLAIN"
                    and len(parts) == 3
                    and self.users.get(parts[1]) == parts[2]
                ):
                    writer.write(b"235 2.7.0 Authentication successful\r\n")
                else:
                    writer.write(b"535 5.7.8 Authentication failed\r\n")
            elif command == b"QUIT":
                writer.write(b"221 2.0.0 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 5.5.2 unknown\r\n")
            await writer.drain()


def _quoted(args: bytes) -> tuple[bytes, bytes]:
    """An IMAP quoted string at the start of ``args``: ``(value, rest)``."""
    out = bytearray()
    i = 1
    while i < len(args):
        ch = args[i]
        if ch == 0x5C:  # backslash
            out.append(args[i + 1])
            i += 2
            continue
        if ch == 0x22:
            return bytes(out), args[i + 1 :]
        out.append(ch)
        i += 1
    raise ValueError("unterminated quoted string")
