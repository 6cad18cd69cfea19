"""A read-only view of one HTTP request, the same for ASGI and WSGI.

Policies see requests only through :class:`Request`, so no policy knows which
interface it serves.  Nothing here consumes the request: headers are read from
the ASGI scope or the WSGI environ on demand, and a body is present only when
an adapter buffered it for a policy that asked (see
:meth:`mailguard.policies.Policy.wants_body`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .identity import Client

__all__ = ["AsgiRequest", "Request", "WsgiRequest"]


class Request:
    """What a policy may know about a request.

    :ivar client: who is asking (see :mod:`mailguard.identity`).
    :ivar body: the buffered body, or ``None`` when it was not read.
    """

    __slots__ = ("body", "client")

    def __init__(self, client: Client) -> None:
        self.client = client
        self.body: bytes | None = None

    @property
    def method(self) -> str:
        """Upper-case method (``"GET"``; ``"WEBSOCKET"`` for a handshake)."""
        raise NotImplementedError

    @property
    def path(self) -> str:
        """The URL path, decoded."""
        raise NotImplementedError

    @property
    def query(self) -> str:
        """The raw query string, undecoded (``+`` still a plus)."""
        raise NotImplementedError

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (lower-case), lines joined by ``", "``."""
        raise NotImplementedError

    def headers(self, names: tuple[str, ...]) -> list[str | None]:
        """``[self.header(name) for name in names]`` (an adapter may read them in one pass)."""
        return [self.header(name) for name in names]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.path} from {self.client.key}>"


_POSITIONS: dict[tuple[str, ...], dict[bytes, int]] = {}  # AsgiRequest.headers' lookups


class AsgiRequest(Request):
    """A :class:`Request` over an ASGI scope; fields are read when first used."""

    __slots__ = ("_headers", "_scope")

    def __init__(self, scope: Mapping[str, Any], client: Client) -> None:
        # Built on every request: keep it to a few stores, read the rest lazily.
        self.client = client
        self.body = None
        self._scope = scope
        # None: no header read yet; False: one read; then every header by name
        self._headers: dict[str, str] | bool | None = None

    # (``x if x.__class__ is str else str(x)``: str() of a str is the str
    # itself, and the call to the type costs more than the test)
    @property
    def method(self) -> str:
        scope = self._scope
        if scope["type"] == "websocket":
            return "WEBSOCKET"
        method = scope.get("method", "GET")
        return method if method.__class__ is str else str(method)

    @property
    def path(self) -> str:
        path = self._scope.get("path", "/")
        return path if path.__class__ is str else str(path)

    @property
    def query(self) -> str:
        raw = self._scope.get("query_string", b"")
        return (raw if raw.__class__ is bytes else bytes(raw)).decode("latin-1")

    def header(self, name: str) -> str | None:
        headers = self._headers
        if headers is None:  # the first read: one scan, no dict built
            raw = name.encode("latin-1")
            size = len(raw)  # bytes.lower() keeps the length: most names need no lower()
            found = None
            for k, v in self._scope.get("headers", ()):
                if len(k) == size and (k == raw or k.lower() == raw):
                    if found is not None:  # several lines: joined, in the dict
                        return self._header_dict().get(name)
                    found = v
            self._headers = False  # a second read builds the dict
            return None if found is None else found.decode("latin-1")
        if not isinstance(headers, dict):  # read again (a login reads six): one dict
            headers = self._header_dict()
        return headers.get(name)

    def headers(self, names: tuple[str, ...]) -> list[str | None]:
        """``[self.header(name) for name in names]`` (lower-case ``names``), in one
        scan that decodes only the lines asked for."""
        headers = self._headers
        if isinstance(headers, dict):
            return [headers.get(name) for name in names]
        wanted = _POSITIONS.get(names)
        if wanted is None:
            wanted = {name.encode("latin-1"): i for i, name in enumerate(names)}
            if len(_POSITIONS) < 64:  # the few tuples the readers ask with
                _POSITIONS[names] = wanted
        found: list[str | None] = [None] * len(names)
        for key, value in self._scope.get("headers", ()):
            i = wanted.get(key)
            if i is None:
                if key.islower():  # (servers send lower-case names) no other spelling
                    continue
                i = wanted.get(key.lower())
                if i is None:
                    continue
            text = value.decode("latin-1")
            seen = found[i]
            found[i] = text if seen is None else f"{seen}, {text}"
        return found

    def _header_dict(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        for key, value in self._scope.get("headers", ()):
            k = key.decode("latin-1").lower()
            v = value.decode("latin-1")
            headers[k] = f"{headers[k]}, {v}" if k in headers else v
        self._headers = headers
        return headers


# a header's name -> its environ key (CGI's two without ``HTTP_``)
_ENVIRON_KEYS: dict[str, str] = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


_KEY_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}  # WsgiRequest.headers' lookups


def _environ_key(name: str) -> str:
    """Header ``name``'s environ key (``user-agent`` -> ``HTTP_USER_AGENT``)."""
    key = _ENVIRON_KEYS.get(name)
    if key is None:
        key = "HTTP_" + name.upper().replace("-", "_")
        if len(_ENVIRON_KEYS) < 256:  # the few names policies read
            _ENVIRON_KEYS[name] = key
    return key


class WsgiRequest(Request):
    """A :class:`Request` over a WSGI environ; fields are read when first used."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, Any], client: Client) -> None:
        self.client = client
        self.body = None
        self._environ = environ

    # (``x if x.__class__ is str else str(x)``, as AsgiRequest's)
    @property
    def method(self) -> str:
        method = self._environ.get("REQUEST_METHOD", "GET")
        return method if method.__class__ is str else str(method)

    @property
    def path(self) -> str:
        environ = self._environ
        script = environ.get("SCRIPT_NAME", "")
        if script.__class__ is not str:
            script = str(script)
        info = environ.get("PATH_INFO", "")
        if info.__class__ is not str:
            info = str(info)
        path = script + info
        if not path.isascii():  # WSGI carries the path's bytes as latin-1 text; undo that
            try:
                path = path.encode("latin-1").decode("utf-8")
            except UnicodeError:
                return path
        return path or "/"

    @property
    def query(self) -> str:
        query = self._environ.get("QUERY_STRING", "")
        return query if query.__class__ is str else str(query)

    def header(self, name: str) -> str | None:
        key = _ENVIRON_KEYS.get(name)
        if key is None:
            key = _environ_key(name)
        value = self._environ.get(key)
        return value if value else None

    def headers(self, names: tuple[str, ...]) -> list[str | None]:
        keys = _KEY_TUPLES.get(names)
        if keys is None:
            keys = tuple(_environ_key(name) for name in names)
            if len(_KEY_TUPLES) < 64:  # the few tuples the readers ask with
                _KEY_TUPLES[names] = keys
        # (a loop, not a comprehension: that would make a closure over
        # ``get`` on every call)
        get = self._environ.get
        found: list[str | None] = []
        for key in keys:
            found.append(get(key) or None)
        return found
