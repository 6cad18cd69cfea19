"""An admin app to list and lift blocks from inside the app's process.

The in-memory store lives in the process that serves mail, so no outside
command can reach it.  Mount this small JSON app next to the protected app
instead (the ``mailguard`` command does the same for a Redis store)::

    from mailguard import MemoryStore
    from mailguard.admin import AdminApp

    store = MemoryStore()
    admin = AdminApp(store, token=os.environ["MAILGUARD_ADMIN_TOKEN"])
    # Starlette / FastAPI:  app.mount("/mailguard", admin.asgi)
    # Flask (werkzeug):     DispatcherMiddleware(flask_app.wsgi_app, {"/mailguard": admin.wsgi})

Every filter must use that same ``store``, e.g. ``protect(app, "mailguard.toml",
store=store)``.

Endpoints (paths relative to where the app is mounted)
======================================================

``GET /blocks[?kind=login][&limit=1000]``
    ``{"now": 1700000000.0, "count": 2, "blocks": [{"kind": "login",
    "key": "203.0.113.7", "reason": "failures", "since": ..., "until": ...,
    "left": 1412.5}, ...]}``: live blocks, soonest end first (at most
    ``limit``, default 1000; ``count`` is the total).
``POST /unblock`` with ``{"key": "203.0.113.7", "kind": "login"}``
    lifts the blocks on an address or device (``kind`` optional: every
    kind).  An address also lifts a block on every network that holds it
    (IPv6 clients are blocked per /64, and per /56 and /48 with
    ``ipv6_wider``); a network (``2001:db8:1::/48``) is named as itself.
    Answers ``{"lifted": 1}``; a key with no block answers
    ``{"lifted": 0}``, status 200 all the same.
``POST /unblock`` with ``{"all": true}`` (and optional ``"kind"``)
    lifts every block.
``GET /stats``
    ``{"blocks": {"login": 2}, "total": 2, "keys": 1234}``.
``GET /config`` (with ``live=``)
    the live configuration in force (:mod:`mailguard.live`): ``{"version": 4,
    "live": true, "store": "...", "entries": [{"key": "dos.max_requests_per_sec",
    "value": 150, "source": "overlay", "detail": "v4 set by alice@mx1 at
    2026-12-01T03:40:00Z"}, ...], "fixed": ["store.*", ...]}``; ``source`` is
    ``file``, ``env``, ``overlay`` or ``default``.  Without ``live``: 404.
``POST /config`` with ``{"op": "set", "key": "dos.max_requests_per_sec", "value": 150}``
    changes it (``op`` ``set``, ``add`` / ``remove`` on a list key,
    ``unset``), checked as the file's keys are: ``{"version": 5}``, or 400
    with ``{"error": "<the message mailguard config prints>"}`` and nothing
    changed.  Audited ``by=admin-token from=<caller>``.
``POST /block`` with ``{"key": "203.0.113.7", "seconds": "1h", "reason": "phishing run"}``
    a manual block, as ``mailguard block`` makes: ``kind`` ``"login"``
    (default) or ``"device"``; ``key`` an address (an IPv6 address stands for
    its network of ``ipv6_prefix`` bits, default 64), an IPv6 network of that
    size, or ``DEVICE[/ACCOUNT]`` for a device; ``seconds`` a number or a
    duration such as ``"30m"``; ``reason`` optional (``"manual"``).  Answers
    ``{"blocked": {...}}``, the block as ``GET /blocks`` shows it.
``GET /refusals[?limit=100]``, ``GET /series``
    this process's last refusals and refused requests per filter and minute
    (:mod:`mailguard.console`), unless ``console=False``.
``GET /console`` (and ``/console.js``, ``/console.css``)
    the admin console, a web page using the endpoints above
    (:mod:`mailguard.console`): ``allow`` applies, the token is typed into
    the page.  Unless ``console=False``.

Access
======

Both conditions must hold, or the answer is ``403`` (the same for both, so a
caller cannot tell which one failed):

- the client's address is in ``allow`` (loopback only by default).  The
  address is the TCP peer; forwarding headers are believed only from
  ``trusted_proxies``, exactly as the filters do (see
  :mod:`mailguard.identity`);
- the request carries ``Authorization: Bearer <token>``, compared in
  constant time.

Lifting a block is logged at WARNING as
``mailguard admin unblock client=127.0.0.1 key="203.0.113.7" kind=login lifted=1``
and a refused call as ``mailguard admin refused client=...``.  Every block and
lift also leaves an audit line (:mod:`mailguard.audit`), ``by=admin-token``
``from=<caller>``, and its event reaches ``on_event``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qs

from . import console as _console
from .audit import ALL, audit, block_key
from .core import Block
from .events import Event, EventHook
from .identity import AddressSet, Client, ClientResolver, canonical_ip
from .options import duration
from .stores.base import Store, StoreError
from .stores.memory import MemoryStore

if TYPE_CHECKING:
    from .live import LiveConfig

__all__ = ["AdminApp", "block_record", "keys_to_lift"]

_log = logging.getLogger("mailguard.admin")

MIN_TOKEN_LENGTH = 16
MAX_BODY = 64 * 1024
MAX_LIST = 100_000

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
Reply = tuple[int, dict[str, Any], list[tuple[str, str]]]
Headers = list[tuple[str, str]]


def block_record(block: Block, now: float) -> dict[str, Any]:
    """A block as JSON: kind, key, reason, since/until (epoch seconds), left (seconds)."""
    return {
        "kind": block.kind,
        "key": block.key,
        "reason": block.reason,
        "since": block.since,
        "until": block.until,
        "left": round(block.left(now), 3),
    }


def keys_to_lift(blocks: Iterable[Block], key: str) -> list[str]:
    """The block keys that ``key``, as an admin types it, names.

    - an address: itself (canonical form), and any network block holding it
      (IPv6 clients are blocked per network, ``2001:db8:1:2::/64``, and their
      wider networks, ``2001:db8:1::/48``);
    - a network: itself, in any spelling (``2001:0db8:0001::/48``);
    - a bare device id (``Appl-F17X``): every device block of it, whatever
      the account (DeviceJail keys devices as ``<device>/<account>``, the id
      lower-cased with only letters and digits kept);
    - anything else (a full key such as ``abc123/jdoe``): itself.
    """
    address = canonical_ip(key)
    if address is not None:
        keys = [address]
        ip = ipaddress.ip_address(address)
        for block in blocks:
            if "/" in block.key and block.key not in keys:
                try:
                    network = ipaddress.ip_network(block.key, strict=False)
                except ValueError:
                    continue
                if ip in network:
                    keys.append(block.key)
        return keys
    keys = [key]
    if "/" in key:
        try:  # a network in any spelling: 2001:0db8:0001::/48 is 2001:db8:1::/48
            spelled = str(ipaddress.ip_network(key.strip(), strict=True))
        except ValueError:
            return keys
        return keys if spelled == key else [key, spelled]
    device = re.sub(r"[^a-z0-9]", "", key.lower())
    for block in blocks:
        if block.key in keys or not device:
            continue
        if block.key == device or block.key.split("/", 1)[0] == device:
            keys.append(block.key)
    return keys


_LIMIT = re.compile(r"[0-9]{1,9}", re.ASCII)


def _printable(text: str) -> bool:
    """Printable text that encodes as UTF-8 (no lone surrogates, no controls)."""
    if not text.isprintable():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad(status: int, message: str) -> Reply:
    return status, {"error": message}, []


class _Answer(Exception):
    """Stop handling a request and send this error reply."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.reply = _bad(status, message)


class AdminApp:
    """List and lift blocks of ``store`` over HTTP, as ASGI (:attr:`asgi`) or WSGI (:attr:`wsgi`).

    :param store: the store the filters use (any store; made for
        :class:`~mailguard.MemoryStore`).
    :param token: the shared secret callers send as ``Authorization: Bearer
        <token>``; at least 16 characters.  Required.
    :param allow: addresses and CIDR networks allowed to call (default
        loopback: ``["127.0.0.0/8", "::1"]``).
    :param trusted_proxies: proxies whose forwarding header is believed for
        the caller's address (default none: the TCP peer is the caller).
    :param forwarded_header: the header those proxies write (see
        :class:`~mailguard.identity.ClientResolver`).
    :param on_event: a callable receiving the audit
        :class:`~mailguard.events.Event` of every block and lift.
    :param live: the :class:`~mailguard.live.LiveConfig` that ``GET`` /
        ``POST /config`` read and change (``protect(...).live``).
    :param console: serve the admin console (``/console``, ``/refusals``,
        ``/series``; :mod:`mailguard.console`), whose recorder then listens to
        this process's events (default True).
    """

    def __init__(
        self,
        store: Store,
        *,
        token: str,
        allow: Iterable[str] = ("127.0.0.0/8", "::1"),
        trusted_proxies: Iterable[str] = (),
        forwarded_header: str = "x-forwarded-for",
        on_event: EventHook | None = None,
        live: LiveConfig | None = None,
        console: bool = True,
    ) -> None:
        self.live = live
        self.console = bool(console)
        if self.console:
            _console.install()
        if on_event is not None and not callable(on_event):
            raise ValueError(f"on_event: must be callable, got {on_event!r}")
        self.on_event = on_event
        if not isinstance(store, Store):
            raise ValueError(f"store: must be a mailguard store, got {store!r}")
        if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"token: must be a secret of at least {MIN_TOKEN_LENGTH} characters"
                " (e.g. python -c 'import secrets; print(secrets.token_urlsafe())')"
            )
        self.store = store
        self._token = token.encode("utf-8")
        self.allow = AddressSet(allow, name="allow")
        self.resolver = ClientResolver(
            trusted_proxies, ipv6_prefix=128, forwarded_header=forwarded_header
        )

    def __repr__(self) -> str:
        return f"AdminApp({self.store!r}, allow={list(self.allow)!r})"

    # ------------------------------------------------------------- shared
    def _refuse(self, client: str, why: str) -> Reply:
        _log.warning("%s", Event("admin", "refused", client, (("reason", why),)).line())
        return _bad(403, "forbidden")

    def _admit(self, address: str, is_ip: bool, authorization: str | None) -> Reply | None:
        """None when the caller may proceed, else the 403 reply."""
        if not (is_ip and address in self.allow):
            return self._refuse(address, "network")
        scheme, _, presented = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode("utf-8", "surrogateescape"), self._token
        ):
            return self._refuse(address, "token")
        return None

    def _page(
        self, method: str, path: str, caller: Callable[[], Client]
    ) -> tuple[int, Headers, bytes] | None:
        """The console's page or static file (``allow`` applies, no token), else None."""
        if not self.console or path.rstrip("/") not in _console.PAGES:
            return None
        client = caller()
        if not (client.is_ip and client.address in self.allow):
            status, payload, extra = self._refuse(client.address, "network")
            return status, _headers(payload, extra), _encode(payload)
        if method not in ("GET", "HEAD"):
            payload = {"error": "method not allowed"}
            return 405, _headers(payload, [("allow", "GET, HEAD")]), _encode(payload)
        if path.endswith("/"):  # relative links need /console, not /console/
            name = path.rstrip("/").rpartition("/")[2]
            return 308, [("location", "../" + name), ("content-length", "0")], b""
        kind, data = _console.static(path)
        return 200, [("content-type", kind), ("content-length", str(len(data))),
                     ("cache-control", "no-cache"), *_console.SECURITY_HEADERS], data  # fmt: skip

    def _console_data(self, name: str, query: str) -> dict[str, Any]:
        """The body of ``GET /refusals`` or ``GET /series``."""
        if not self.console:
            raise _Answer(404, "not found: the console is off (console=False)")
        limit = parse_qs(query).get("limit", ["100"])[-1].strip()
        if not _LIMIT.fullmatch(limit) or not 1 <= int(limit) <= _console.KEEP:
            raise _Answer(400, f"limit: must be a whole number from 1 to {_console.KEEP}")
        return _console.answer(name, int(limit))

    @staticmethod
    def _route(method: str, path: str) -> tuple[str, Reply | None]:
        """The endpoint name, or an error reply (404 / 405)."""
        path = path.rstrip("/") or "/"
        allowed = {"/blocks": ("GET", "HEAD"), "/stats": ("GET", "HEAD"), "/unblock": ("POST",)}
        allowed["/block"] = ("POST",)
        allowed["/refusals"] = allowed["/series"] = ("GET", "HEAD")
        methods = allowed.get(path)
        if methods is None:
            return "", _bad(404, "not found: use GET /blocks, POST /unblock or GET /stats")
        if method not in methods:
            return "", (405, {"error": "method not allowed"}, [("allow", ", ".join(methods))])
        return path[1:], None

    @staticmethod
    def _list_args(query: str) -> tuple[str | None, int]:
        """``(kind, limit)`` from the query string."""
        args = parse_qs(query)
        kind = args.get("kind", [""])[-1] or None
        limit_text = args.get("limit", ["1000"])[-1].strip()
        # ASCII digits only, and few of them: str.isdigit() takes "²", which int()
        # refuses, and int() refuses (or takes long over) thousands of digits
        if not _LIMIT.fullmatch(limit_text) or not 1 <= int(limit_text) <= MAX_LIST:
            raise _Answer(400, f"limit: must be a whole number from 1 to {MAX_LIST}")
        if kind is not None and (len(kind) > 64 or not kind.isidentifier()):
            raise _Answer(400, "kind: must be a filter name such as login, device or dos")
        return kind, int(limit_text)

    @staticmethod
    def _unblock_args(body: bytes | None) -> tuple[str | None, str | None]:
        """``(key, kind)`` from the body; key None means every block."""
        if body is None:
            raise _Answer(413, f"body: larger than {MAX_BODY} bytes")
        try:
            data = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            # ValueError: not UTF-8, not JSON, or an integer of too many digits;
            # RecursionError: nesting too deep for the parser
            raise _Answer(
                400, 'body: expected JSON such as {"key": "203.0.113.7"} or {"all": true}'
            ) from None
        if not isinstance(data, dict):
            raise _Answer(400, "body: expected a JSON object")
        unknown = sorted(set(data) - {"key", "kind", "all"})
        if unknown:
            raise _Answer(400, f"body: unknown field(s) {', '.join(unknown)}")
        kind = data.get("kind")
        if kind is not None and (not isinstance(kind, str) or not kind.isidentifier()):
            raise _Answer(400, "kind: must be a filter name such as login, device or dos")
        everything = data.get("all", False)
        if not isinstance(everything, bool):
            raise _Answer(400, "all: must be true or false")
        key = data.get("key")
        if everything == (key is not None):
            raise _Answer(400, 'body: give "key" or "all": true (one of them)')
        if key is not None and (
            not isinstance(key, str) or not key or len(key) > 256 or not _printable(key)
        ):
            raise _Answer(400, "key: must be a non-empty string (an address or a device id)")
        return key, kind

    @staticmethod
    def _listing(now: float, found: list[Block], limit: int) -> dict[str, Any]:
        return {
            "now": now,
            "count": len(found),
            "blocks": [block_record(b, now) for b in found[:limit]],
        }

    def _stats(self, found: list[Block]) -> dict[str, Any]:
        per_kind = Counter(b.kind for b in found)
        keys = len(self.store) if isinstance(self.store, MemoryStore) else None
        return {"blocks": dict(sorted(per_kind.items())), "total": len(found), "keys": keys}

    @staticmethod
    def _audit(client: str, key: str | None, kind: str | None, lifted: int) -> None:
        fields: list[tuple[str, str | int]] = []
        if key is not None:
            fields.append(("key", key))
        fields += [("kind", kind or "any"), ("lifted", lifted)]
        quoted = frozenset({"key"})
        _log.warning("%s", Event("admin", "unblock", client, tuple(fields), quoted).line())

    # ------------------------------------------------------ manual blocks
    @staticmethod
    def _block_args(body: bytes | None) -> _Manual:
        """The block a ``POST /block`` body asks for."""
        data = _json_object(body, '{"key": "203.0.113.7", "seconds": "1h"}')
        unknown = sorted(set(data) - {"key", "kind", "seconds", "reason", "ipv6_prefix"})
        if unknown:
            raise _Answer(400, f"body: unknown field(s) {', '.join(unknown)}")
        kind = data.get("kind", "login")
        if kind not in ("login", "device"):
            raise _Answer(400, "kind: must be login or device (DosFilter keeps no blocks)")
        try:
            seconds = duration("seconds", data.get("seconds"))
        except ValueError as exc:
            raise _Answer(400, str(exc)) from None
        reason = data.get("reason", "manual")
        if not isinstance(reason, str) or not 0 < len(reason.strip()) <= 200:
            raise _Answer(400, "reason: must be a string of 1 to 200 characters")
        prefix = data.get("ipv6_prefix", 64)
        if isinstance(prefix, bool) or not isinstance(prefix, int) or not 32 <= prefix <= 128:
            raise _Answer(400, "ipv6_prefix: must be a whole number from 32 to 128")
        key = data.get("key")
        if not isinstance(key, str) or not key or len(key) > 256:
            raise _Answer(400, "key: must be a non-empty string (an address or a device id)")
        try:
            key = block_key(key, kind, ipv6_prefix=prefix)
        except ValueError as exc:
            raise _Answer(400, f"key: {exc}") from None
        return _Manual(key, kind, seconds, reason.strip())

    def _blocked(self, client: str, manual: _Manual, made: Block) -> Reply:
        audit(
            "block",
            key=manual.key,
            kind=manual.kind,
            seconds=manual.seconds,
            reason=manual.reason,
            by="admin-token",
            client=client,
            hook=self.on_event,
        )
        return 200, {"blocked": block_record(made, made.since)}, []

    def _audit_lift(self, client: str, key: str | None, kind: str | None, lifted: int) -> None:
        key = ALL if key is None else key
        audit("unblock", key=key, kind=kind, lifted=lifted, by="admin-token", client=client,
              hook=self.on_event)  # fmt: skip

    # --------------------------------------------------------------- WSGI
    def wsgi(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
        """The WSGI app."""
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        page = self._page(method, path, lambda: self.resolver.from_wsgi(environ))
        if page is not None:
            start_response(f"{page[0]} {HTTPStatus(page[0]).phrase}", page[1])
            return [b"" if method == "HEAD" else page[2]]
        status, payload, headers = self._wsgi_reply(environ)
        body = b"" if environ.get("REQUEST_METHOD") == "HEAD" else _encode(payload)
        start_response(f"{status} {HTTPStatus(status).phrase}", _headers(payload, headers))
        return [body]

    def _wsgi_reply(self, environ: Environ) -> Reply:
        client = self.resolver.from_wsgi(environ)
        denied = self._admit(client.address, client.is_ip, environ.get("HTTP_AUTHORIZATION"))
        if denied is not None:
            return denied
        if environ.get("PATH_INFO", "").rstrip("/") == "/config":
            method = environ.get("REQUEST_METHOD", "GET")
            body = _read_wsgi(environ) if method == "POST" else b""
            return self._config(client.address, method, body)
        name, error = self._route(
            environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "")
        )
        if error is not None:
            return error
        store = self.store
        try:
            if name == "blocks":
                kind, limit = self._list_args(environ.get("QUERY_STRING", ""))
                return 200, self._listing(store.now(), store.blocks(kind), limit), []
            if name == "stats":
                return 200, self._stats(store.blocks()), []
            if name in ("refusals", "series"):
                return 200, self._console_data(name, environ.get("QUERY_STRING", "")), []
            if name == "block":
                manual = self._block_args(_read_wsgi(environ))
                made = store.block(manual.kind, manual.key, manual.seconds, manual.reason)
                return self._blocked(client.address, manual, made)
            key, kind = self._unblock_args(_read_wsgi(environ))
            if key is None:
                lifted = store.unblock_all(kind)
            else:
                keys = keys_to_lift(store.blocks(kind), key)
                lifted = sum(store.unblock(k, kind) for k in keys)
        except _Answer as answer:
            return answer.reply
        except StoreError as exc:
            return _bad(503, f"store unavailable: {exc}")
        self._audit(client.address, key, kind, lifted)
        self._audit_lift(client.address, key, kind, lifted)
        return 200, {"lifted": lifted}, []

    # --------------------------------------------------------------- ASGI
    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app."""
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        page = self._page(
            scope.get("method", "GET"),
            path[len(root) :] if root and path.startswith(root) else path,
            lambda: self.resolver.from_asgi(scope),
        )
        if page is not None:
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in page[1]]
            await send({"type": "http.response.start", "status": page[0], "headers": raw})
            body = b"" if scope.get("method") == "HEAD" else page[2]
            await send({"type": "http.response.body", "body": body})
            return
        status, payload, headers = await self._asgi_reply(scope, receive)
        body = b"" if scope.get("method") == "HEAD" else _encode(payload)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in _headers(payload, headers)]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _asgi_reply(self, scope: Scope, receive: Receive) -> Reply:
        client = self.resolver.from_asgi(scope)
        authorization = None
        for key, value in scope.get("headers") or ():
            if key.lower() == b"authorization":
                authorization = value.decode("latin-1")
        denied = self._admit(client.address, client.is_ip, authorization)
        if denied is not None:
            return denied
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path.rstrip("/") == "/config":
            method = scope.get("method", "GET")
            body = await read_asgi_body(scope, receive, MAX_BODY) if method == "POST" else b""
            return await asyncio.to_thread(self._config, client.address, method, body)
        name, error = self._route(scope.get("method", "GET"), path)
        if error is not None:
            return error
        store = self.store
        try:
            if name == "blocks":
                kind, limit = self._list_args(scope.get("query_string", b"").decode("latin-1"))
                found = await store.ablocks(kind)
                return 200, self._listing(store.now(), found, limit), []
            if name == "stats":
                return 200, self._stats(await store.ablocks()), []
            if name in ("refusals", "series"):
                query = scope.get("query_string", b"").decode("latin-1")
                return 200, self._console_data(name, query), []
            if name == "block":
                manual = self._block_args(await read_asgi_body(scope, receive, MAX_BODY))
                made = await store.ablock(manual.kind, manual.key, manual.seconds, manual.reason)
                return self._blocked(client.address, manual, made)
            key, kind = self._unblock_args(await read_asgi_body(scope, receive, MAX_BODY))
            if key is None:
                lifted = await store.aunblock_all(kind)
            else:
                lifted = 0
                for k in keys_to_lift(await store.ablocks(kind), key):
                    lifted += await store.aunblock(k, kind)
        except _Answer as answer:
            return answer.reply
        except StoreError as exc:
            return _bad(503, f"store unavailable: {exc}")
        self._audit(client.address, key, kind, lifted)
        self._audit_lift(client.address, key, kind, lifted)
        return 200, {"lifted": lifted}, []

    # --------------------------------------------- live configuration
    def _config(self, caller: str, method: str, body: bytes | None) -> Reply:
        """``GET /config`` and ``POST /config`` (see the module docstring)."""
        from .config import ConfigError

        live = self.live
        if live is None:
            return _bad(404, "no live configuration here (AdminApp(..., live=...))")
        if method in ("GET", "HEAD"):
            return 200, live.describe(), []
        if method != "POST":
            return 405, {"error": "method not allowed"}, [("allow", "GET, HEAD, POST")]
        try:
            data = _json_object(body, '{"op": "set", "key": "dos.delay_ms", "value": 0}')
            unknown = sorted(set(data) - {"op", "key", "value"})
            if unknown:
                raise _Answer(400, f"body: unknown field(s) {', '.join(unknown)[:200]}")
            op, key = data.get("op"), data.get("key")
            if not isinstance(op, str) or not isinstance(key, str):
                raise _Answer(400, 'body: give "op" and "key" (and "value" but for unset)')
            if op != "unset" and "value" not in data:
                raise _Answer(400, f'body: "value" is needed for {op[:20]!r}')
            version = live.change(op, key, data.get("value"), by="admin-token", client=caller)
        except _Answer as answer:
            return answer.reply
        except ConfigError as exc:
            return _bad(400, str(exc))
        except StoreError as exc:
            return _bad(503, f"store unavailable: {exc}")
        return 200, {"version": version}, []


class _Manual(NamedTuple):
    key: str
    kind: str
    seconds: float
    reason: str


def _json_object(body: bytes | None, example: str) -> dict[str, Any]:
    if body is None:
        raise _Answer(413, f"body: larger than {MAX_BODY} bytes")
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # bad UTF-8 or JSON, huge numbers, deep nesting
        raise _Answer(400, f"body: expected JSON such as {example}") from None
    if not isinstance(data, dict):
        raise _Answer(400, "body: expected a JSON object")
    return data


def _encode(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=1) + "\n").encode("utf-8")


def _headers(payload: dict[str, Any], extra: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        ("content-type", "application/json"),
        ("content-length", str(len(_encode(payload)))),
        ("cache-control", "no-store"),
        *_console.SECURITY_HEADERS,
        *extra,
    ]


def _read_wsgi(environ: Environ) -> bytes | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY:
        return None
    if length <= 0:
        return b""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    data: bytes = stream.read(length)
    return data


async def read_asgi_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request body, or None when it is longer than ``limit`` (reading
    stops there; a ``Content-Length`` over it is refused before reading)."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length" and value.strip().isdigit() and int(value) > limit:
            return None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
