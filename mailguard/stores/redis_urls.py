"""One URL grammar for every way to reach Redis (or Valkey).

:func:`parse_url` reads the URL a :class:`~mailguard.RedisStore`, the TOML
``[store] url`` and every ``--redis`` option take, and checks all of it at
once: a malformed URL is refused at start with a ``ValueError`` naming the
problem, never half-understood (an unknown query parameter, a typo in
``sentinel_password``, is an error, not silently dropped).  The module needs
no ``redis`` package, so the configuration can check URLs without it::

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]              # plain TCP, port 6379
    rediss://...                                            # the same over TLS
    unix://[[USER]:PASSWORD@]/PATH/redis.sock[?db=N]        # a unix socket
    redis+sentinel://[[USER]:PASSWORD@]H1[:26379],H2.../SERVICE[/DB]
        [?sentinel_username=U&sentinel_password=P]
    redis+cluster://[[USER]:PASSWORD@]H1[:6379],H2...[/0]   # Redis Cluster
    rediss+sentinel://, rediss+cluster://                   # the same over TLS

``valkey``, ``valkeys``, ``valkey+sentinel``, ``valkey+cluster`` (and
``valkeys+...``) are the same schemes spelled for Valkey.  Credentials in the
URL are the data nodes' (the masters and replicas that hold the keys): for
Sentinel they are sent to the master, and the sentinels themselves are asked
with ``sentinel_username`` / ``sentinel_password`` (none by default: a
sentinel usually has no password, or another one).  Cluster nodes listed are
only where discovery starts; the client learns the rest from ``CLUSTER
SLOTS``.  A cluster has only database 0.  Percent-escapes (``%40`` for ``@``)
are decoded in the user, password, service name, socket path and query
values.  TLS schemes also take ``ssl_cert_reqs`` (``required``, the default,
``optional`` or ``none``), ``ssl_ca_certs``, ``ssl_certfile`` and
``ssl_keyfile``.

:func:`redact` masks the passwords of a URL (well-formed or not) for messages
and logs.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import unquote

__all__ = ["DEFAULT_PORT", "SENTINEL_PORT", "RedisTarget", "parse_url", "redact"]

DEFAULT_PORT = 6379
SENTINEL_PORT = 26379

# scheme -> (topology, TLS)
_SCHEMES: dict[str, tuple[str, bool]] = {}
for _brand in ("redis", "valkey"):
    _SCHEMES[_brand] = ("standalone", False)
    _SCHEMES[_brand + "s"] = ("standalone", True)
    for _kind in ("sentinel", "cluster"):
        _SCHEMES[f"{_brand}+{_kind}"] = (_kind, False)
        _SCHEMES[f"{_brand}s+{_kind}"] = (_kind, True)
_SCHEMES["unix"] = ("unix", False)
SCHEMES = tuple(f"{scheme}://" for scheme in _SCHEMES)

_TLS_PARAMS = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = ("required", "optional", "none")
_HOSTNAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]{0,252})\Z")
_MAX_DB = 2**31 - 1
_MAX_HOSTS = 64


@dataclass(frozen=True)
class RedisTarget:
    """What a URL says: where the data lives and how to log in.

    :ivar topology: ``"standalone"``, ``"unix"``, ``"sentinel"`` or ``"cluster"``.
    :ivar hosts: ``(host, port)`` pairs: the server, the sentinels, or the
        cluster nodes discovery starts from (empty for ``unix``).
    :ivar path: the socket path (``unix`` only).
    :ivar service: the master's name in Sentinel (``sentinel`` only).
    :ivar tls_options: ``ssl_*`` keywords for redis-py (TLS schemes only).
    """

    scheme: str
    topology: str
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    path: str | None = None
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    service: str | None = None
    sentinel_username: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls_options: tuple[tuple[str, str], ...] = ()


def _problem(url: str, problem: str) -> ValueError:
    return ValueError(f"Redis URL {redact(url)!r}: {problem}")


def _decode(url: str, text: str, what: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _problem(url, f"the {what} has a percent-escape that is not UTF-8") from None


def _host(url: str, text: str, default_port: int) -> tuple[str, int]:
    if not text:
        raise _problem(url, "a host is empty (nothing between the commas, or no host at all)")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise _problem(url, f"the IPv6 address in {text!r} has no closing ']'")
        name, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            raise _problem(url, f"{name!r} is not an IPv6 address") from None
        if "%" in name:
            raise _problem(url, f"{name!r}: IPv6 zone ids are not supported")
        if rest and not rest.startswith(":"):
            raise _problem(url, f"unexpected {rest!r} after the IPv6 address")
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text_found = text.partition(":")
        port_text = port_text_found if colon else None
        if not _HOSTNAME.match(name):
            raise _problem(
                url, f"{name!r} is not a host name or address (letters, digits, '.', '-', '_')"
            )
    if port_text is None:
        return name, default_port
    if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise _problem(url, f"the port of {text!r} must be a number from 1 to 65535")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _problem(url, f"the port of {text!r} must be a number from 1 to 65535")
    return name, port


def _db(url: str, text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10 or int(text) > _MAX_DB:
        raise _problem(url, f"the database must be a whole number >= 0, got {text!r}")
    return int(text)


def _query(url: str, text: str, known: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, str] = {}
    if not text:
        return found
    for pair in text.split("&"):
        name, equals, value = pair.partition("=")
        name = _decode(url, name, "query")
        if not equals:
            raise _problem(url, f"query parameter {name!r} has no value (write {name}=...)")
        if name not in known:
            allowed = ", ".join(known) if known else "none"
            raise _problem(
                url, f"unknown query parameter {name!r} for this scheme (known: {allowed})"
            )
        if name in found:
            raise _problem(url, f"query parameter {name!r} is given twice")
        found[name] = _decode(url, value, f"value of {name}")
    return found


def parse_url(url: object) -> RedisTarget:
    """Read a Redis URL (see the module docstring); ``ValueError`` names what is wrong."""
    if not isinstance(url, str):
        raise ValueError(f"a Redis URL must be a string, got {type(url).__name__}")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise _problem(url, "contains spaces or control characters")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise _problem(url, f"unknown scheme; use one of {', '.join(SCHEMES)}")
    topology, tls = _SCHEMES[scheme]
    if "#" in rest:
        raise _problem(url, "a fragment ('#...') means nothing here (write '#' as %23)")
    rest, _, query_text = rest.partition("?")

    if topology == "unix":
        userinfo = ""
        if not rest.startswith("/"):
            userinfo, at, rest = rest.rpartition("@")
            if not at or not rest.startswith("/"):
                raise _problem(url, "a unix socket URL is unix:///absolute/path/to/redis.sock")
        path = _decode(url, rest, "socket path")
        if path.rstrip("/") == "" or path.endswith("/"):
            raise _problem(url, "no socket path (unix:///absolute/path/to/redis.sock)")
        if "\x00" in path:
            raise _problem(url, "the socket path contains a NUL")
        params = _query(url, query_text, ("db", "password"))
        username, password = _userinfo(url, userinfo)
        if "password" in params:
            if password is not None:
                raise _problem(url, "the password is given twice (in the URL and as ?password=)")
            password = params["password"]
        return RedisTarget(
            scheme=scheme,
            topology=topology,
            tls=False,
            path=path,
            db=_db(url, params["db"]) if "db" in params else 0,
            username=username,
            password=password,
        )

    authority, slash, path_text = rest.partition("/")
    userinfo, at, hostlist = authority.rpartition("@")
    if at and not hostlist:
        raise _problem(url, "no host after the '@'")
    username, password = _userinfo(url, userinfo) if at else (None, None)
    if not hostlist:
        raise _problem(url, "no host")
    default = SENTINEL_PORT if topology == "sentinel" else DEFAULT_PORT
    names = hostlist.split(",")
    if topology == "standalone" and len(names) > 1:
        raise _problem(
            url,
            f"{scheme}:// takes one host; several are for {scheme.rstrip('s')}+sentinel:// "
            f"or {scheme.rstrip('s')}+cluster://",
        )
    if len(names) > _MAX_HOSTS:
        raise _problem(url, f"more than {_MAX_HOSTS} hosts")
    hosts = tuple(_host(url, name, default) for name in names)

    segments = path_text.split("/") if slash else []
    if segments and segments[-1] == "":
        segments.pop()  # one trailing slash is harmless
    known: tuple[str, ...] = _TLS_PARAMS if tls else ()
    service = None
    db = 0
    if topology == "standalone":
        if len(segments) > 1:
            raise _problem(url, "the path is the database number only (redis://host:6379/0)")
        if segments:
            db = _db(url, segments[0])
    elif topology == "sentinel":
        if not segments or not segments[0]:
            raise _problem(url, "no service name: redis+sentinel://H1:26379,H2:26379/SERVICE/DB")
        if len(segments) > 2:
            raise _problem(url, "the path is /SERVICE_NAME or /SERVICE_NAME/DB")
        service = _decode(url, segments[0], "service name")
        if len(segments) == 2:
            db = _db(url, segments[1])
        known += ("sentinel_username", "sentinel_password")
    else:  # cluster
        if len(segments) > 1 or (segments and _db(url, segments[0]) != 0):
            raise _problem(url, "Redis Cluster has only database 0 (leave the path out or use /0)")
    params = _query(url, query_text, known)
    cert_reqs = params.get("ssl_cert_reqs")
    if cert_reqs is not None and cert_reqs not in _CERT_REQS:
        raise _problem(url, f"ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    return RedisTarget(
        scheme=scheme,
        topology=topology,
        tls=tls,
        hosts=hosts,
        db=db,
        username=username,
        password=password,
        service=service,
        sentinel_username=params.get("sentinel_username"),
        sentinel_password=params.get("sentinel_password"),
        tls_options=tuple((k, v) for k, v in params.items() if k in _TLS_PARAMS),
    )


def _userinfo(url: str, text: str) -> tuple[str | None, str | None]:
    """``user:password`` -> (user or None, password or None); ``user`` alone has no password."""
    if not text:
        return None, None
    user, colon, password = text.partition(":")
    username = _decode(url, user, "user name") or None
    return username, (_decode(url, password, "password") if colon else None)


_USERINFO = re.compile(r"(://[^:/@?#]*:).*@", re.DOTALL)
_SECRET_PARAM = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with every password replaced by ``***`` (for messages and logs).

    Works on any text, parsed or not: the user-info password (up to the last
    ``@``, so an unescaped ``@`` or ``/`` in it is masked too) and the value
    of every query parameter whose name ends in ``password``.
    """
    return _SECRET_PARAM.sub(r"\1***", _USERINFO.sub(r"\1***@", url))
