"""nginx's mail ``auth_http`` (``GET /nginx``) on the login seam.

What nginx sends and reads (``src/mail/ngx_mail_auth_http_module.c``):

- ``ngx_mail_auth_http_create_request``: one ``GET`` per login attempt with
  ``Auth-Method`` (``plain`` for PLAIN, LOGIN and USER/PASS, ``apop``,
  ``cram-md5``, ``external``, or ``none`` for SMTP without AUTH), ``Auth-User``,
  ``Auth-Pass``, ``Auth-Salt`` (apop, cram-md5), ``Auth-Protocol`` (``imap``,
  ``pop3``, ``smtp``), ``Auth-Login-Attempt`` (1, 2, ... on one connection),
  ``Client-IP`` (the client's address), ``Client-Host``, and for ``none``
  ``Auth-SMTP-Helo`` / ``-From`` / ``-To``; plus any ``auth_http_header``.
- ``ngx_mail_auth_http_escape`` escapes ``Auth-User`` and ``Auth-Pass`` with
  ``ngx_escape_uri(..., NGX_ESCAPE_MAIL_AUTH)``, whose table
  (``src/core/ngx_string.c``, "mail_auth is the same as memcached") escapes
  only space, ``%`` and the bytes 0x00-0x1F, as ``%XX``; every other byte
  (``+``, 8-bit UTF-8) is sent as is.  So :func:`unescape` decodes ``%XX``
  and nothing else: ``+`` stays a plus (this is not a form).  A ``%`` not
  followed by two hex digits never comes from nginx; it is kept literally.
- ``ngx_mail_auth_http_read_handler`` reads the whole answer into one
  1024-byte buffer (a longer answer is an internal error for the client);
  ``ngx_mail_auth_http_process_headers`` reads ``Auth-Status`` (``OK``, or
  an error text sent to the client: IMAP ``NO <text>``, POP3 ``-ERR <text>``,
  SMTP ``<Auth-Error-Code> <text>``, default code ``535 5.7.0``),
  ``Auth-Server`` (``ngx_parse_addr``: an IP literal, no host name) and
  ``Auth-Port``, ``Auth-Wait`` (``ngx_atoi`` seconds).  An error without
  ``Auth-Wait`` closes the client's connection (``s->quit = 1``); with it,
  nginx waits that long and lets the client try again.

Who is the client: ``Client-IP`` (never the TCP peer, which is nginx).  nginx
never reports whether the backend then took the password, so the password is
checked here (:mod:`mailguard.verify`, or ``[mailauth] verify =
"module:function"``) and the attempt ends with its outcome.

Choices
    ``Auth-Method: none`` (SMTP without AUTH) is no login: nothing is
    counted, but a blocked address is refused.  ``apop``, ``cram-md5`` and
    ``external`` carry no password a backend login could check: answered
    with an error, nothing counted (use ``plain``/``login``:
    ``imap_auth plain login;``, ``pop3_auth plain;``, ``smtp_auth plain
    login;``).  Every header we send is one of a few fixed texts, a number or
    a configured IP, never request text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import inspect
import logging
import math
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .identity import Client
from .mailauth import PROTOCOLS, Decision, MailAuthSettings, MailLogins
from .policies.login import Outcome
from .verify import has_unsafe, verify_backend

__all__ = ["NginxFront", "NginxRequest", "parse_headers", "unescape"]

_log = logging.getLogger("mailguard.nginx")

_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_CHECKABLE = frozenset({"plain", "login"})
_UNCHECKABLE = frozenset({"apop", "cram-md5", "external"})
MAX_CREDENTIAL = 4096
"""Longer user names or passwords are refused without asking the backend."""

WRONG = "Invalid login or password"
BLOCKED = "Too many failed logins from your address"
TEMPORARY = "Temporary authentication failure, try again later"
UNSUPPORTED = "Authentication method not supported, use plain or login"


def unescape(value: bytes) -> bytes:
    """``Auth-User`` / ``Auth-Pass`` as nginx escaped them: ``%XX`` decoded,
    every other byte (``+`` included, and a ``%`` without two hex digits) kept."""
    if b"%" not in value:
        return value
    return _ESCAPE.sub(lambda found: bytes([int(found.group(1), 16)]), value)


@dataclass(frozen=True, slots=True)
class NginxRequest:
    """One ``auth_http`` request's fields (raw bytes where they are credentials)."""

    method: str
    user: bytes
    password: bytes
    protocol: str
    client: str
    attempt: int


def parse_headers(headers: Mapping[str, bytes]) -> NginxRequest:
    """Read the request headers (lower-case names, raw values)."""

    def text(name: str) -> str:
        return headers.get(name, b"").decode("latin-1").strip()

    attempt_text = text("auth-login-attempt")
    # isdigit() alone takes "²" (which int() refuses): ASCII digits only
    digits = attempt_text.isascii() and attempt_text.isdigit() and len(attempt_text) < 10
    attempt = int(attempt_text) if digits else 0
    return NginxRequest(
        method=text("auth-method").lower(),
        user=unescape(headers.get("auth-user", b"")),
        password=unescape(headers.get("auth-pass", b"")),
        protocol=text("auth-protocol").lower(),
        client=text("client-ip"),
        attempt=attempt,
    )


Reply = list[tuple[str, str]]


class VerifiedCache:
    """Right passwords checked lately: ``(protocol, user, password)`` ->
    until when (``time.monotonic``), kept as an HMAC under a random key of
    this process, never the password; ``ttl`` seconds from the check (a hit
    does not extend it), at most ``size`` entries, least recently used
    dropped first.  ``ttl`` 0: nothing is kept.

    Why it is safe: nginx answers ``OK`` by logging in to the backend with
    the very same credentials, so the backend still decides; a password
    changed or an account locked there within ``ttl`` fails at the backend as
    before.  Only the duplicate check from mailguard is saved (mail clients
    reconnect all day with one password).  A wrong password is never kept, so
    guessing gains nothing from it, and a hit still ends the attempt as a
    success for the failure rule (a blocked address is refused before the
    cache is asked).
    """

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self._key = os.urandom(32)
        self._until: OrderedDict[bytes, float] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._until)

    def _digest(self, protocol: str, user: bytes, password: bytes) -> bytes:
        message = b"%s\0%d\0%s\0%s" % (protocol.encode("ascii"), len(user), user, password)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def known(self, protocol: str, user: bytes, password: bytes) -> bool:
        """Whether these credentials were checked right within ``ttl``."""
        if not self.ttl:
            return False
        key = self._digest(protocol, user, password)
        until = self._until.get(key)
        if until is None:
            self.misses += 1
            return False
        if until <= time.monotonic():
            del self._until[key]
            self.misses += 1
            return False
        self._until.move_to_end(key)
        self.hits += 1
        return True

    def remember(self, protocol: str, user: bytes, password: bytes) -> None:
        """Keep credentials the backend (or the callable) just said are right."""
        if not self.ttl:
            return
        until = self._until
        until[self._digest(protocol, user, password)] = time.monotonic() + self.ttl
        while len(until) > self.size:
            until.popitem(last=False)


class VerifyBusy(Exception):
    """Every verify thread stayed busy for the whole ``verify_timeout``."""


class VerifyThreads:
    """A sync ``verify`` callable's own bounded thread pool.

    Not asyncio's default executor (shared with everything else in the
    process, and queueing without bound): ``size`` threads, and a check runs
    only once it holds one of ``size`` places.  A place is given back when
    the call *returns*, not when the caller stops waiting for it, so calls
    that outlive ``verify_timeout`` keep their thread counted and a stuck
    directory cannot pile up work: past the deadline a caller gets
    :class:`VerifyBusy` (or :class:`asyncio.TimeoutError` when the call
    itself was too slow), which the front answers with a temporary error.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.busy = 0  # places held: calls running (or about to) on a thread
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._freed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _event(self, loop: asyncio.AbstractEventLoop) -> asyncio.Event:
        if self._freed is None or self._loop is not loop:
            self._loop, self._freed = loop, asyncio.Event()
        return self._freed

    async def run(self, timeout: float, func: Callable[..., Any], *args: Any) -> Any:
        """``func(*args)`` on a pool thread, all within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        freed = self._event(loop)
        while self.busy >= self.size:
            left = deadline - loop.time()
            if left <= 0:
                raise VerifyBusy
            freed.clear()
            try:
                await asyncio.wait_for(freed.wait(), left)
            except asyncio.TimeoutError:
                raise VerifyBusy from None
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.size, thread_name_prefix="mailguard-verify"
            )
        self.busy += 1
        try:
            future = loop.run_in_executor(self._pool, func, *args)
        except BaseException:
            self._give_back(freed)
            raise
        future.add_done_callback(lambda _: self._give_back(freed))
        # shield: a timeout stops our wait, not the call, whose place stays held
        return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))

    def _give_back(self, freed: asyncio.Event) -> None:
        self.busy -= 1
        freed.set()

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class NginxFront:
    """Translates nginx's ``auth_http`` onto :class:`MailLogins` and a password check."""

    def __init__(self, logins: MailLogins) -> None:
        self.logins = logins
        self.settings: MailAuthSettings = logins.settings
        self.wait = str(max(1, math.ceil(self.settings.auth_wait)))
        self._key = os.urandom(32)  # for the repeated-password rule's hash
        self.threads = VerifyThreads(self.settings.verify_threads)
        self.cache = VerifiedCache(self.settings.verify_cache_ttl)

    def close(self) -> None:
        """Stop the verify threads (those still running finish on their own)."""
        self.threads.close()

    # --------------------------------------------------------------- replies
    def _error(self, text: str, protocol: str, code: str, *, wait: int | None) -> Reply:
        reply = [("Auth-Status", text)]
        if protocol == "smtp":
            reply.append(("Auth-Error-Code", code))
        if wait is not None:
            reply.append(("Auth-Wait", str(wait)))
        return reply

    def temporary(self, protocol: str) -> Reply:
        return self._error(TEMPORARY, protocol, "454 4.7.0", wait=int(self.wait))

    def wrong(self, protocol: str) -> Reply:
        return self._error(WRONG, protocol, "535 5.7.8", wait=int(self.wait))

    def refused(self, decision: Decision, protocol: str) -> Reply:
        if decision.reason == "blocked":
            # no Auth-Wait: nginx closes the connection after the message
            return self._error(BLOCKED, protocol, "421 4.7.0", wait=None)
        if decision.reason == "store-error":
            return self.temporary(protocol)
        wait = max(int(self.wait), decision.retry_after)
        return self._error(decision.message(), protocol, "454 4.7.0", wait=wait)

    def ok(self, protocol: str) -> Reply:
        backend = self.settings.backends[protocol]
        return [
            ("Auth-Status", "OK"),
            ("Auth-Server", backend.server),
            ("Auth-Port", str(backend.port)),
        ]

    # --------------------------------------------------------------- the flow
    async def handle(self, headers: Mapping[str, bytes]) -> Reply:
        """The reply headers for one request already let in."""
        request = parse_headers(headers)
        protocol = request.protocol
        if protocol not in PROTOCOLS:
            _log.warning("mailguard nginx unknown-protocol (Auth-Protocol is not imap, pop3, smtp)")
            return self.temporary("imap")
        logins = self.logins
        who = logins.client(request.client)
        if who is None:
            _log.warning(
                "mailguard nginx no-client-ip protocol=%s (Client-IP is not an IP address)",
                protocol,
            )
            return self.temporary(protocol)
        if protocol not in self.settings.backends:
            _log.error(
                "mailguard nginx no-backend protocol=%s: set [mailauth] nginx_backends.%s",
                protocol,
                protocol,
            )
            return self.temporary(protocol)
        if request.method == "none":
            # SMTP without AUTH: no login; a blocked address is refused all the same
            decision = await logins.check(who, None, protocol)
            if not decision.allowed and decision.reason in ("blocked", "store-error"):
                return self.refused(decision, protocol)
            return self.ok(protocol)
        if request.method in _UNCHECKABLE or request.method not in _CHECKABLE:
            return self._error(UNSUPPORTED, protocol, "504 5.5.4", wait=int(self.wait))
        account = request.user.decode("utf-8", "replace") or None
        decision = await logins.begin(who, account, protocol, hold=True)
        if not decision.allowed:
            return self.refused(decision, protocol)
        if decision.delay > 0.0:
            try:
                await asyncio.sleep(decision.delay)
            finally:
                logins.policy.release(decision.ticket)
        right = await self.verify(request, who)
        if right is None:
            await logins.finish(decision.ticket, Outcome.UNKNOWN)
            return self.temporary(protocol)
        if right:
            await logins.finish(decision.ticket, Outcome.SUCCEEDED)
            return self.ok(protocol)
        pwhash = hmac.new(
            self._key, request.user + b"\0" + request.password, hashlib.sha256
        ).hexdigest()
        await logins.finish(decision.ticket, Outcome.FAILED, pwhash=pwhash)
        return self.wrong(protocol)

    async def verify(self, request: NginxRequest, who: Client) -> bool | None:
        """Whether the password is right (None: cannot tell)."""
        user, password = request.user, request.password
        if (
            has_unsafe(user, password)
            or len(user) > MAX_CREDENTIAL
            or len(password) > MAX_CREDENTIAL
        ):
            return False  # never sent anywhere: no command can be smuggled
        cache = self.cache
        if cache.known(request.protocol, user, password):
            return True
        logins = self.logins
        if await logins.undecided_over(who):
            # only undecided checks from this address lately: no further check
            # (issue #14 F5); a temporary refusal, never a block
            return None
        right = await self._verify(request, who)
        if right is True:
            cache.remember(request.protocol, user, password)
        elif right is None:
            await logins.undecided(who)
        return right

    async def _verify(self, request: NginxRequest, who: Client) -> bool | None:
        user, password = request.user, request.password
        settings = self.settings
        func = settings.verify_func
        if func is None:
            backend = settings.backends[request.protocol]
            return await verify_backend(
                backend, request.protocol, user, password, settings.verify_timeout, who.address
            )
        name = user.decode("utf-8", "surrogateescape")
        secret = password.decode("utf-8", "surrogateescape")
        try:
            if inspect.iscoroutinefunction(func):
                said = await asyncio.wait_for(
                    func(name, secret, request.protocol, who.address), settings.verify_timeout
                )
            else:
                said = await self.threads.run(
                    settings.verify_timeout, func, name, secret, request.protocol, who.address
                )
                if inspect.isawaitable(said):
                    said = await asyncio.wait_for(said, settings.verify_timeout)
        except VerifyBusy:
            _log.warning(
                "mailguard verify busy protocol=%s verify=%s threads=%d",
                request.protocol,
                settings.verify,
                self.threads.size,
            )
            return None
        except asyncio.TimeoutError:
            _log.warning(
                "mailguard verify timeout protocol=%s verify=%s", request.protocol, settings.verify
            )
            return None
        except Exception:
            _log.exception(
                "mailguard verify failed protocol=%s verify=%s", request.protocol, settings.verify
            )
            return None
        if isinstance(said, bool):
            return said
        _log.error(
            "mailguard verify answered %s, not True or False: not counted verify=%s",
            type(said).__name__,
            settings.verify,
        )
        return None
