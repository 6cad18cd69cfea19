"""Work out who is asking: the client address of an HTTP request.

Every limit mailguard enforces (requests per address, failed logins per
address, ``safe_ips`` exemptions) is keyed by the address of the client.
Getting that address wrong is worse than not limiting at all: if a client
can choose the address it is counted under, it can dodge every limit, and
it can lock other people out by failing logins in their name.

Trust model
===========

The TCP peer (``scope["client"]`` in ASGI, ``REMOTE_ADDR`` in WSGI) is the
only address the server has seen for itself.  It cannot be forged beyond
what a TCP handshake allows.

When the application sits behind a reverse proxy or load balancer, the peer
is that proxy, and the real client can only be learnt from a header the
proxy adds: ``X-Forwarded-For``, ``Forwarded`` (RFC 7239) or ``X-Real-IP``.
Headers, however, are just text sent by whoever opened the connection.  A
client can send ``X-Forwarded-For: 127.0.0.1`` itself, and a proxy that
appends to the header keeps the client's text in front of its own entry.
So the rules are:

* **Headers are read only when the peer is a trusted proxy.**  When nobody
  is configured as trusted, or the peer is not one of them, the headers are
  ignored altogether and the peer is the client.  This is also the cheap
  path: its result is cached per peer string, so it costs one dict lookup.

* **A unix socket is trusted only when named.**  A proxy that reaches us
  over a unix socket (nginx ``proxy_pass http://unix:/run/app.sock``) has
  no address; servers report no peer (uvicorn), an empty ``REMOTE_ADDR``
  (gunicorn), ``<local>`` (werkzeug) or the socket's path
  (:func:`is_unix_peer`).  ``trusted_proxies=["unix"]`` trusts such peers:
  their forwarding header is walked as a trusted proxy's.  Without it they
  are not trusted, and every one of them is the client ``"unix"``: one key
  for all, logged once per resolver at WARNING naming the setting.  They
  are counted, not waved through: failing open would let anyone behind the
  socket guess without limit; one shared key at least still stops a flood,
  its cost (one client's block refuses everybody) is loud in the log, and
  the fix is one setting.

* **Only the header your proxy writes may be believed.**  If the proxy sets
  ``X-Real-IP`` but we read ``X-Forwarded-For``, that header reaches us
  exactly as the client wrote it.  ``forwarded_header`` must name the one
  header the proxies in front of the application actually write (and they
  should be configured to overwrite or append to it, never to pass it
  through untouched).

* **The header is walked from the right.**  Each proxy appends the address
  it received the connection from, so the rightmost entry was written by
  the nearest proxy, the one before it by the next proxy out, and so on.
  Everything to the left of what the outermost trusted proxy wrote came
  from the client and may be invented.  We step leftwards past entries
  that are themselves trusted proxies and stop at the first entry that is
  not: that is the address the outermost trusted proxy saw, the client.

* **The leftmost entry is never trusted for being leftmost.**  It is the
  one most likely to have been supplied by the client.  It is used only
  when every entry in the header is a trusted proxy, in which case it is
  an address one of our own proxies vouched for.

* **Garbage stops the walk.**  If, while stepping left, we meet an entry
  that is not an IP address (``unknown``, an RFC 7239 obfuscated
  identifier such as ``_hidden``, a Forwarded element without ``for=``,
  or any other rubbish), we do not guess past it.  The client becomes the
  last trusted hop we saw (the peer itself if the rightmost entry is
  rubbish).  That address is certainly true, and failing towards a proxy
  address is safer than failing towards text the client chose; the cost
  is that a misconfigured proxy makes every request look as if it came
  from that proxy, which shows up quickly instead of silently.

* **Work on hostile headers is bounded.**  Only the rightmost
  :data:`MAX_HEADER_LENGTH` characters of the combined header and at most
  :data:`MAX_HOPS` entries are looked at.  Walking past either limit counts
  as meeting garbage.  Empty list elements (``a,,b``) are skipped, as
  the HTTP list syntax asks, but count towards :data:`MAX_HOPS`.  No
  input, however malformed, makes the resolver raise.

Clients and keys
================

The result is a :class:`Client`.  Its ``key`` is what limits count by.  An
IPv4 client is keyed by its address.  An IPv6 client is keyed by the network
of ``ipv6_prefix`` bits that contains it, because a single subscriber is
usually handed a whole ``/64`` (or more) and can hop between its addresses
at will.  Wider networks count too: with ``ipv6_wider`` (the filters
pass ``(56, 48)`` by default) the client's :attr:`Client.wider` holds the keys
of its ``/56`` and ``/48`` as well, for the policies to count with looser
limits, since one subscriber often holds a whole ``/56`` or ``/48``.

IPv6 addresses that carry an IPv4 address are that IPv4 address:
IPv4-mapped (``::ffff:192.0.2.1``), NAT64's well-known prefix
(``64:ff9b::c000:201``, RFC 6052) and the deprecated IPv4-compatible form
(``::192.0.2.1``; ``::``, ``::1`` and the rest of ``::/104`` stay IPv6).
Addresses in NAT64's local-use prefix ``64:ff9b:1::/48`` (RFC 8215) are keyed
by the whole address, neither grouped nor unpacked: where the IPv4 address
sits depends on the prefix length the operator chose, but each IPv4 client
has an address of its own, and the prefix is not routed on the internet.

A peer that is a unix socket is the client ``"unix"`` (see above).  Any other
peer that is not an IP address (the ``"testclient"`` name of a test client)
is keyed by its own string, and a peer that cannot be read at all by
``"unknown"``.

Classes
=======

:class:`AddressSet`
    A set of addresses and CIDR networks, used for ``safe_ips`` and for
    ``trusted_proxies``.  Membership tests are cached.

:class:`ClientResolver`
    Resolves the :class:`Client` of an ASGI scope
    (:meth:`~ClientResolver.from_asgi`), a WSGI environ
    (:meth:`~ClientResolver.from_wsgi`), or a peer string plus header
    values (:meth:`~ClientResolver.resolve`).

:func:`canonical_ip`
    Parses one address as it appears in a peer name or header entry.

All caches are bounded: a cache is emptied when it reaches
:data:`CACHE_SIZE` entries (fewer for the cache of header walks), so a
flood of distinct addresses or headers costs some parsing but never
unbounded memory: about 18 MiB for all of them, full (measured with
``benchmarks/hostile.py``; see the README's "Stores").

Stacked filters: one resolution per request
===========================================

Filters with the same settings (``trusted_proxies``, ``ipv6_prefix``,
``forwarded_header``) share one resolver, and so one set of caches:
:meth:`ClientResolver.shared` hands out the same instance for the same
settings.  When such filters are stacked directly (``protect`` stacks
``DosFilter`` -> ``DeviceJail`` -> ``InvalidLoginFilter``), the outermost
resolves the client once and leaves it in the request for the ones inside
(:meth:`~ClientResolver.from_asgi_shared`, :meth:`~ClientResolver.from_wsgi_shared`):
``scope["mailguard.client"]`` in ASGI, ``environ["mailguard.client"]`` in
WSGI (:data:`SHARED_KEY`).  A peer whose headers are never read (no trusted
proxy) needs no sharing once it is cached: each filter finds it with one
lookup in the shared cache, which is all resolving it costs.  (A dotted quad
is cached from its second request on: on its first, it is shared through the
request like any other.)

What is stored there is ``(resolver, peer, client)``: the resolver object
itself and the very peer object (``scope["client"]``,
``environ["REMOTE_ADDR"]``) the client was resolved from.  A filter takes the
stored client only when the resolver *is* its own (an identity test, not an
equality) and the peer is still that same object, so nothing a request sends
can ever be taken for a resolved client (a header never becomes that key,
and no request can produce our resolver object), a value an upstream
middleware left there is ignored unless it holds our resolver, and filters
with other settings never use each other's result: they resolve for
themselves.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import Any, Final, NamedTuple

import netaddr

from .options import option_error

__all__ = [
    "CACHE_SIZE",
    "MAX_ADDRESS_LENGTH",
    "MAX_HEADER_LENGTH",
    "MAX_HOPS",
    "SHARED_KEY",
    "UNIX",
    "UNIX_CLIENT",
    "AddressSet",
    "Client",
    "ClientResolver",
    "canonical_ip",
    "is_unix_peer",
]

#: Number of entries after which a cache is emptied and starts over (a full
#: cache of clients holds about 4.5 MiB).
CACHE_SIZE: Final = 16384

#: Only this many characters (from the right) of a forwarding header are read.
MAX_HEADER_LENGTH: Final = 8192

#: At most this many header entries are walked before giving up.
MAX_HOPS: Final = 32

#: Strings longer than this are never taken for an IP address.  The longest
#: legitimate form, a quoted, bracketed IPv6 address with an embedded IPv4
#: part, a zone id and a port, is well below it.
MAX_ADDRESS_LENGTH: Final = 100

#: Peer strings longer than this are resolved every time instead of cached,
#: so that the cache's memory stays bounded by entry count times this.
_MAX_CACHED_PEER_LENGTH: Final = 256

#: Header values up to this long have the result of their walk cached, in a
#: cache of at most _WALK_CACHE_SIZE entries (a few megabytes at worst).
_MAX_CACHED_HEADER_LENGTH: Final = 256
_WALK_CACHE_SIZE: Final = 8192

_UNKNOWN: Final = "unknown"

#: An AddressSet of at most this many addresses also keeps them as texts.
_SINGLES_MAX: Final = 256

#: The ``trusted_proxies`` entry for proxies that reach us over a unix
#: socket, and the key of unix-socket clients when those are not trusted.
UNIX: Final = "unix"

# Stands in for a header entry that was cut off by a limit; never an address.
_GARBAGE: Final = "\x00"

# A port after an address: decimal digits, or an RFC 7239 obfuscated port.
_PORT_RE: Final = re.compile(r"[0-9]{1,5}|_[A-Za-z0-9._-]+")
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero
#: Whether a whole string is a dotted quad in canonical form, the form
#: ``inet_ntop`` prints (``198.51.100.7``; not ``198.051.100.7``, ``1.2.3``
#: or ``1.2.3.4 ``): the same answer as ``inet_ntop(inet_pton(text)) == text``
#: (property-tested against it), in one call of the regex engine, a third
#: quicker than the round trip, whose ``inet_ntop`` formats with ``sprintf``.
#: ASCII digits only; ``fullmatch``, so no trailing newline slips through.
_canonical_quad: Final = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}").fullmatch

# IPv4-mapped IPv6 range ::ffff:0:0/96, as integers.
_MAPPED_FIRST: Final = 0xFFFF_0000_0000
_MAPPED_LAST: Final = 0xFFFF_FFFF_FFFF
# The IPv6 ranges whose addresses are canonicalised to the IPv4 address in
# their last 32 bits, as (first, last) integers: IPv4-mapped, NAT64's
# well-known prefix, IPv4-compatible (outside ::/104).
_IPV4_CARRIERS: Final = (
    (_MAPPED_FIRST, _MAPPED_LAST),
    (0x64FF9B << 96, (0x64FF9B << 96) | 0xFFFF_FFFF),
    (1 << 24, 0xFFFF_FFFF),
)

_HEADERS: Final = {
    # name -> (ASGI header name, WSGI environ key)
    "x-forwarded-for": (b"x-forwarded-for", "HTTP_X_FORWARDED_FOR"),
    "forwarded": (b"forwarded", "HTTP_FORWARDED"),
    "x-real-ip": (b"x-real-ip", "HTTP_X_REAL_IP"),
}

#: The scope / environ key under which stacked filters share a resolved client.
SHARED_KEY: Final = "mailguard.client"

_canonical_cache: dict[str, str | None] = {}


def canonical_ip(text: str) -> str | None:
    """Return the canonical form of one IP address, or ``None``.

    *text* is an address as it appears as a connection's peer or as one
    entry of a forwarding header.  Surrounding whitespace and double quotes
    (``Forwarded: for="..."``) are removed, then any of these is accepted:

    * ``192.0.2.1`` and ``192.0.2.1:8080`` (the port is dropped);
    * ``2001:db8::1``, ``[2001:db8::1]`` and ``[2001:db8::1]:443``;
    * an IPv6 zone id, ``fe80::1%eth0``, which is dropped;
    * an RFC 7239 obfuscated port, ``192.0.2.1:_abc``, which is dropped.

    IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``) come back as the IPv4
    address.  IPv6 addresses come back in compressed lower-case form.

    ``None`` is returned for anything that is not an IP address: ``unknown``,
    RFC 7239 obfuscated identifiers (``_hidden``), host names, empty strings,
    strings longer than :data:`MAX_ADDRESS_LENGTH` (without parsing them),
    and non-strings.  This function never raises.  Results are cached.
    """
    if not isinstance(text, str) or len(text) > MAX_ADDRESS_LENGTH:
        return None
    cache = _canonical_cache
    if text in cache:  # not try/except: raising KeyError costs more than a lookup
        return cache[text]
    result = _parse_ip(text)
    if result == text:
        # Keep the caller's object: a client's key is then the very string its
        # address was looked up by, one object less to read per request.
        result = text
    if len(cache) >= CACHE_SIZE:
        cache.clear()
    cache[text] = result
    return result


def _parse_ip(text: str) -> str | None:
    """Uncached body of :func:`canonical_ip`."""
    s = text.strip()
    if len(s) >= 2 and s[0] == '"' and s[-1] == '"':
        s = s[1:-1]
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            return None
        host, rest = s[1:end], s[end + 1 :]
        if rest and not (rest[0] == ":" and _PORT_RE.fullmatch(rest, 1)):
            return None
        if ":" not in host:  # brackets are for IPv6 only
            return None
    elif s.count(":") == 1:
        host, _, port = s.partition(":")
        if not _PORT_RE.fullmatch(port):
            return None
    else:
        host = s
    zone = host.find("%")
    if zone >= 0:
        if ":" not in host or zone == len(host) - 1:
            return None
        host = host[:zone]
    # The C library's parser is several times quicker than ipaddress, which
    # only gets the cases it leaves in doubt.
    if ":" in host:
        try:
            return _ipv6_text(socket.inet_pton(socket.AF_INET6, host))
        except (OSError, ValueError):
            pass
    else:
        # A dotted quad is taken only in canonical form (no leading zeros,
        # whatever this platform's inet_pton tolerates).
        if _canonical_quad(host):
            return host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return _ipv6_text(ip.packed)
    return str(ip)


_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"
# NAT64's well-known prefix 64:ff9b::/96 (RFC 6052) and the IPv4-compatible
# ::/96 (RFC 4291, deprecated): an IPv4 address in the last 32 bits.
_NAT64_PREFIX: Final = b"\x00\x64\xff\x9b" + b"\x00" * 8
_COMPAT_PREFIX: Final = b"\x00" * 12
# NAT64's local-use 64:ff9b:1::/48 (RFC 8215): where the IPv4 address sits
# depends on the prefix length the operator chose, so it is not unpacked.
_NAT64_LOCAL: Final = b"\x00\x64\xff\x9b\x00\x01"


def _ipv6_text(packed: bytes) -> str:
    """Canonical text of a packed IPv6 address: the IPv4 address when it
    carries one (IPv4-mapped, NAT64 well-known prefix, IPv4-compatible)."""
    head = packed[:12]
    if head in (_MAPPED_PREFIX, _NAT64_PREFIX):
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    if head == _COMPAT_PREFIX and packed[12]:
        # ::a.b.c.d with a > 0: ``::``, ``::1`` and the rest of ::/104 stay IPv6
        return socket.inet_ntop(socket.AF_INET, packed[12:])
    return _network_text(packed)


def _network_text(packed: bytes) -> str:
    """Compressed lower-case text of 16 packed bytes, never turned into IPv4."""
    text = socket.inet_ntop(socket.AF_INET6, packed)
    if "." in text:  # some C libraries write a dotted tail; ipaddress never does
        text = str(ipaddress.IPv6Address(packed))
    return text


def _parse_network(entry: object, name: str) -> netaddr.IPNetwork:
    """Parse one configuration entry into a network, or raise ValueError."""
    if not isinstance(entry, str):
        raise option_error(
            name,
            f"{entry!r} is not an IP address or CIDR network "
            f"(expected a string, got {type(entry).__name__})",
        )
    text = entry.strip()
    address, slash, prefix = text.partition("/")
    try:
        if "%" in address:  # ipaddress accepts zone ids; a set cannot use them
            raise ValueError(address)
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise option_error(name, f"{entry!r} is not an IP address or CIDR network") from None
    if not slash:
        return netaddr.IPNetwork(f"{ip}/{ip.max_prefixlen}")
    if (
        not (prefix.isascii() and prefix.isdigit())
        or len(prefix) > 3
        or int(prefix) > ip.max_prefixlen
    ):
        raise option_error(
            name,
            f"{entry!r} is not an IP address or CIDR network "
            f"(the prefix length must be a number from 0 to {ip.max_prefixlen})",
        )
    network = netaddr.IPNetwork(f"{ip}/{int(prefix)}")
    if network.ip != network.network:
        raise option_error(
            name,
            f"{entry!r} has bits set after the /{network.prefixlen} prefix;"
            f" did you mean '{network.cidr}'?",
        )
    return network


def _describe(network: netaddr.IPNetwork) -> str:
    """The form an entry is shown in: a bare address for /32 and /128."""
    if network.prefixlen == (32 if network.version == 4 else 128):
        return str(network.ip)
    return str(network.cidr)


def _with_ipv4_view(network: netaddr.IPNetwork) -> list[netaddr.IPNetwork]:
    """*network*, plus its IPv4 equivalent if it is written in a form carrying IPv4.

    Addresses are canonicalised before membership tests, so a client at
    ``::ffff:192.0.2.1`` (or ``64:ff9b::192.0.2.1``, ``::192.0.2.1``) is looked
    up as ``192.0.2.1``.  An entry written in one of those forms (inside
    ``::ffff:0:0/96``, ``64:ff9b::/96``, or ``::/96`` above ``::/104``)
    therefore also has to match the plain IPv4 addresses.  A wider IPv6
    network that merely contains such a range, such as ``::/0``, is taken to
    mean IPv6 only: these sets
    grant privileges, and granting IPv4-wide trust by accident is worse
    than having to list ``0.0.0.0/0`` explicitly.
    """
    result = [network]
    if network.version == 6:
        first, last = network.first, network.last
        for low, high in _IPV4_CARRIERS:
            if first >= low and last <= high:
                v4 = netaddr.IPAddress(first - (low & ~0xFFFF_FFFF), 4)
                result.append(netaddr.IPNetwork(f"{v4}/{network.prefixlen - 96}"))
    return result


class AddressSet:
    """A set of IP addresses and CIDR networks (``safe_ips``, ``trusted_proxies``).

    :param entries: An iterable of strings, each an address (``"192.0.2.7"``,
        ``"::1"``) or a CIDR network (``"10.0.0.0/8"``, ``"2001:db8::/32"``).
        Surrounding whitespace is ignored.  Networks must be written with
        their host bits clear: ``"192.168.1.5/24"`` is rejected (the message
        suggests ``'192.168.1.0/24'``) because it is as likely a typo for
        ``/32`` as for the network, and guessing wrong in a list of trusted
        addresses is a security hole.  Entries in IPv4-mapped IPv6 form
        (``"::ffff:192.0.2.0/120"``) also match the plain IPv4 addresses;
        wider IPv6 networks such as ``"::/0"`` match IPv6 addresses only.
        A single string, rather than a list of strings, is rejected: iterating
        ``"10.0.0.0/8"`` would yield its characters, and a comma-separated
        string is not a supported format either.  Write ``["10.0.0.0/8"]``.
        An empty iterable gives an empty set, which contains nothing.
    :param name: The configuration key the entries came from, used in error
        messages and in :func:`repr`.

    Any mistake raises :class:`ValueError` naming *name* and the bad value,
    for example ``safe_ips: '10.0.0.300' is not an IP address or CIDR
    network``.

    Membership (``address in addresses``) takes an address string, ideally
    in the canonical form :func:`canonical_ip` returns; other forms (ports,
    brackets) are canonicalised first.  Anything that is not an IP address,
    including non-strings, is simply not a member; membership never raises.
    Results are cached, so repeating a lookup costs one dict access.

    ``len()`` is the number of distinct entries and iterating yields them in
    normalised form (``"192.0.2.7"``, ``"10.0.0.0/8"``).
    """

    __slots__ = ("_cache", "_ends", "_entries", "_singles", "_starts", "name")

    def __init__(self, entries: Iterable[str] = (), *, name: str = "safe_ips") -> None:
        self.name = name
        if isinstance(entries, (str, bytes, bytearray)):
            raise option_error(
                name,
                f"expected a list of IP addresses or CIDR networks, got the"
                f" single string {entries!r}; write [{entries!r}] instead",
            )
        try:
            items = list(entries)
        except TypeError:
            raise option_error(
                name,
                f"expected a list of IP addresses or CIDR networks, got {type(entries).__name__}",
            ) from None
        shown: dict[str, None] = {}
        networks: list[netaddr.IPNetwork] = []
        for entry in items:
            network = _parse_network(entry, name)
            shown[_describe(network)] = None
            networks.extend(_with_ipv4_view(network))
        self._entries: tuple[str, ...] = tuple(shown)
        # netaddr merges the networks into disjoint ranges; a miss then
        # costs a binary search over their bounds, not an IPSet lookup.
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        for span in sorted(
            netaddr.IPSet(networks).iter_ipranges(), key=lambda r: (r.version, r.first)
        ):
            self._starts[span.version].append(span.first)
            self._ends[span.version].append(span.last)
        self._cache: dict[object, bool] = {}
        # A set of a few addresses (the usual safe list: ``127.0.0.1``, ``::1``)
        # also keeps their canonical texts: a canonical address is then a
        # member by one frozenset lookup, with nothing to cache.
        self._singles: frozenset[str] | None = None
        spans = [
            (v, a, b) for v in (4, 6) for a, b in zip(self._starts[v], self._ends[v], strict=True)
        ]
        if sum(b - a + 1 for _, a, b in spans) <= _SINGLES_MAX:
            self._singles = frozenset(
                socket.inet_ntop(socket.AF_INET, n.to_bytes(4, "big"))
                if v == 4
                else _network_text(n.to_bytes(16, "big"))
                for v, a, b in spans
                for n in range(a, b + 1)
            )

    def __contains__(self, address: object) -> bool:
        try:
            found = self._cache.get(address)
        except TypeError:  # unhashable
            return False
        if found is not None:
            return found
        if not isinstance(address, str) or len(address) > MAX_ADDRESS_LENGTH:
            return False
        canon = canonical_ip(address)
        found = canon is not None and self._lookup(canon)
        cache = self._cache
        if len(cache) >= CACHE_SIZE:
            cache.clear()
        cache[address] = found
        return found

    def has_canonical(self, address: str) -> bool:
        """Membership of an address already in :func:`canonical_ip`'s form
        (:attr:`Client.address` of an IP client): no parsing, no cache, so
        as quick for the millionth distinct address as for the first."""
        singles = self._singles
        if singles is not None:
            return address in singles
        return self._lookup(address)

    def _lookup(self, canon: str) -> bool:
        """Uncached membership of a canonical address."""
        version, family = (6, socket.AF_INET6) if ":" in canon else (4, socket.AF_INET)
        try:
            number = int.from_bytes(socket.inet_pton(family, canon), "big")
        except (OSError, ValueError):  # not expected for canonical input
            return False
        index = bisect_right(self._starts[version], number) - 1
        return index >= 0 and number <= self._ends[version][index]

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __repr__(self) -> str:
        return f"AddressSet({list(self._entries)!r}, name={self.name!r})"


class Client(NamedTuple):
    """Who a request came from, as resolved by :class:`ClientResolver`."""

    #: What limits count by: an IPv4 address (``"192.0.2.1"``); for IPv6,
    #: the containing network in CIDR form (``"2001:db8:1:2::/64"``), or the
    #: bare address when the grouping prefix is 128; for a peer that is not
    #: an IP address, the peer string itself; ``"unknown"`` when there is no
    #: peer at all.
    key: str
    #: The single resolved address in canonical form; for a peer that is not
    #: an IP address, the peer string; ``"unknown"`` when there is no peer.
    address: str
    #: Whether :attr:`address` is an IP address.
    is_ip: bool
    #: For IPv6, the keys of the wider networks that also count this client,
    #: narrowest first (``("2001:db8:1::/56", "2001:db8:1::/48")``), one per
    #: prefix of the resolver's ``ipv6_wider``; empty for everything else.
    wider: tuple[str, ...] = ()


_UNKNOWN_CLIENT: Final = Client(_UNKNOWN, _UNKNOWN, False)
# What Client(...) does, without NamedTuple's Python-level __new__ (half the cost).
_new_client: Final = tuple.__new__
#: The client of a unix-socket peer whose headers are not believed (or say nothing).
UNIX_CLIENT: Final = Client(UNIX, UNIX, False)
_log = logging.getLogger("mailguard.identity")


def is_unix_peer(peer: str) -> bool:
    """Whether a peer string names a unix-socket connection.

    What servers report for one: nothing (uvicorn gives ``scope["client"]``
    None, its WSGI mode no ``REMOTE_ADDR``; callers pass ``""``), ``""``
    (gunicorn's ``REMOTE_ADDR``), ``"<local>"`` (werkzeug), or a socket path
    (``/run/app.sock``, an abstract ``@name``, ``unix:/run/app.sock``).
    """
    return not peer or peer == "<local>" or peer.startswith(("/", "@", "unix:"))


class ClientResolver:
    """Resolve the client of a request, believing trusted proxies only.

    See the module documentation for the trust model.

    :param trusted_proxies: Addresses and CIDR networks of the reverse
        proxies in front of the application, in the form :class:`AddressSet`
        accepts (a list of strings; errors name ``trusted_proxies``).  Only
        when the connection's peer is one of them is the forwarding header
        read at all.  Leave empty (the default) when clients connect
        directly; the header is then never read.  The entry ``"unix"``
        trusts peers that are unix sockets (:func:`is_unix_peer`).
    :param ipv6_prefix: How many leading bits of an IPv6 address identify
        one client, from 32 to 128; default 64, the usual size of a single
        subscriber's network.  IPv6 clients are keyed by this network, so
        a client cannot escape its limits by rotating through its
        addresses.  128 keys each address separately.  IPv4 is never
        grouped.  Anything else raises :class:`ValueError` naming
        ``ipv6_prefix``.
    :param ipv6_wider: Wider prefix lengths (16 to 127) whose networks an
        IPv6 client is also keyed by, in :attr:`Client.wider`, narrowest
        first; lengths not shorter than ``ipv6_prefix`` are left out.
        Default none.
    :param forwarded_header: The header the trusted proxies write, compared
        case-insensitively:

        * ``"x-forwarded-for"`` (default): a comma-separated list of
          addresses, to which each proxy appends the address it received
          the request from;
        * ``"forwarded"``: the RFC 7239 header; the ``for=`` parameter of
          each comma-separated element is used (names are
          case-insensitive, values may be quoted and carry a port), and an
          element without exactly one ``for=`` counts as garbage;
        * ``"x-real-ip"``: a single address set by the proxy.  More than
          one non-empty entry (a comma-separated list, or several header
          lines) means the proxy did not overwrite what the client sent,
          so nothing in it is believed and the client is the peer.  A
          single entry that is itself a trusted proxy is the client, as
          for a list made only of trusted proxies.

        Anything else raises :class:`ValueError` naming ``forwarded_header``.
        Choose the header your proxy actually writes: a header it does not
        write reaches the application exactly as the client sent it, and
        the client then decides what address it is counted under.

    Header values are split at every comma, without regard to quoting.
    Legitimate ``for=`` values never contain commas, and a quote-aware
    split would let an unterminated quote from the client swallow the
    elements our proxies appended after it.  Empty list elements are
    ignored (RFC 9110 list syntax), though they count towards
    :data:`MAX_HOPS`.

    Results are cached per peer string, per address and per (short)
    header value, in bounded caches, so that a repeated request does no
    address parsing (a dotted-quad peer, and a header value, from its
    second request on: what is seen once, as in a flood of fresh
    addresses, is not kept).  An instance is safe to share between threads and
    tasks.
    """

    __slots__ = (
        "__weakref__",
        "_asgi_name",
        "_by_address",
        "_direct",
        "_ipv6_mask",
        "_once",
        "_pairs",
        "_trusted_peers",
        "_walked",
        "_warned_unix",
        "_wider_masks",
        "_wsgi_key",
        "forwarded_header",
        "ipv6_prefix",
        "ipv6_wider",
        "trust_unix",
        "trusted_proxies",
    )

    def __init__(
        self,
        trusted_proxies: Iterable[str] = (),
        *,
        ipv6_prefix: int = 64,
        forwarded_header: str = "x-forwarded-for",
        ipv6_wider: Iterable[int] = (),
    ) -> None:
        if (
            isinstance(ipv6_prefix, bool)
            or not isinstance(ipv6_prefix, int)
            or not 32 <= ipv6_prefix <= 128
        ):
            raise option_error(
                "ipv6_prefix", f"{ipv6_prefix!r} is not a prefix length from 32 to 128"
            )
        header = forwarded_header.lower() if isinstance(forwarded_header, str) else None
        if header not in _HEADERS:
            raise option_error(
                "forwarded_header",
                f"{forwarded_header!r} is not one of {', '.join(repr(h) for h in _HEADERS)}",
            )
        entries, self.trust_unix = _split_unix(trusted_proxies)
        self.trusted_proxies = AddressSet(entries, name="trusted_proxies")
        self.ipv6_prefix = ipv6_prefix
        self.ipv6_wider = _wider_prefixes(ipv6_wider, ipv6_prefix)
        self.forwarded_header = header
        self._asgi_name, self._wsgi_key = _HEADERS[header]
        self._ipv6_mask = _mask(ipv6_prefix)
        self._wider_masks = tuple((p, _mask(p)) for p in self.ipv6_wider)
        self._warned_unix = False
        # Raw peer -> Client, for peers whose headers are never read.
        self._direct: dict[str | None, Client] = {}
        # Raw peer -> Client of the peer itself, for trusted proxies.
        self._trusted_peers: dict[str, Client] = {}
        # Canonical address -> Client.
        self._by_address: dict[str, Client] = {}
        # Short header value -> the client it names (None: the peer itself).
        self._walked: dict[str, Client | None] = {}
        # Dotted-quad peers and header values seen once and not cached yet
        # (see _admit).
        self._once: set[str] = set()
        self._pairs = header == "forwarded"  # entries are for= pairs, not addresses

    @classmethod
    def shared(
        cls,
        trusted_proxies: Iterable[str] = (),
        *,
        ipv6_prefix: int = 64,
        forwarded_header: str = "x-forwarded-for",
        ipv6_wider: Iterable[int] = (),
    ) -> ClientResolver:
        """The resolver for these settings, one instance (and one set of caches) for all.

        Takes and checks the same arguments as the constructor.  Settings are
        the same when the proxies are the same entries in any order, the
        prefix the same number and the header the same name in any case.
        An instance lives as long as someone uses it.
        """
        fresh = cls(
            trusted_proxies,
            ipv6_prefix=ipv6_prefix,
            forwarded_header=forwarded_header,
            ipv6_wider=ipv6_wider,
        )
        key = (
            cls,
            frozenset(fresh.trusted_proxies),
            fresh.trust_unix,
            fresh.ipv6_prefix,
            fresh.ipv6_wider,
            fresh.forwarded_header,
        )
        with _SHARED_LOCK:
            found = _SHARED.get(key)
            if found is None:
                _SHARED[key] = found = fresh
        return found

    def __repr__(self) -> str:
        trusted = [*self.trusted_proxies, *([UNIX] if self.trust_unix else [])]
        wider = f" ipv6_wider={self.ipv6_wider!r}," if self.ipv6_wider else ""
        return (
            f"ClientResolver({trusted!r},"
            f" ipv6_prefix={self.ipv6_prefix!r},{wider}"
            f" forwarded_header={self.forwarded_header!r})"
        )

    # -- entry points --------------------------------------------------------

    def from_asgi(self, scope: Mapping[str, Any]) -> Client:
        """Resolve the client of an ASGI HTTP or WebSocket *scope*.

        The peer is ``scope["client"][0]`` (``scope["client"]`` may be
        ``None``).  The header values are those of the configured header in
        ``scope["headers"]``, whose names the ASGI specification requires to
        be lower-case; values are decoded as latin-1, and several lines are
        taken in order.  Headers are looked at only when the peer is a
        trusted proxy.  This method does not raise on malformed scopes: a
        missing or unreadable peer resolves to the ``"unknown"`` client, and
        unreadable headers to the peer itself.
        """
        try:
            client = scope.get("client")
            hit = self._direct.get("" if client is None else client[0])
        except Exception:  # an unreadable scope or peer: the general path
            return self._from_asgi_peer(scope)
        if hit is not None:
            return hit
        # A fresh address, or a proxy's request: a flood of fresh addresses
        # runs this, directly or through a proxy (_from_asgi_peer's first
        # steps, without its calls; a tuple here has an item 0, read above).
        if type(client) is tuple:
            address = client[0]
            if type(address) is str:
                proxy = self._trusted_peers.get(address)
                if proxy is not None:
                    return self._from_asgi_proxy(scope, proxy)
                hit = self._fresh_quad(address)
                if hit is not None:
                    return hit
        return self._from_asgi_peer(scope)

    def _from_asgi_peer(self, scope: Mapping[str, Any]) -> Client:
        """:meth:`from_asgi` once the peer is known not to be in the cache."""
        peer = _asgi_peer(scope)
        hit = self._trusted_peers.get(peer) if peer is not None else None
        if hit is None:
            hit, trusted = self._peer(peer)
            if not trusted:
                return hit
        return self._from_asgi_proxy(scope, hit)

    def _from_asgi_proxy(self, scope: Mapping[str, Any], proxy: Client) -> Client:
        """The client named in the headers of a request from the trusted ``proxy``."""
        values: list[str] = []
        name = self._asgi_name
        try:
            for key, value in scope.get("headers") or ():
                if key == name:
                    values.append(value.decode("latin-1"))
        except Exception:
            # Headers that cannot be read count as garbage: the proxy itself.
            return proxy
        return self._walk(proxy, values)

    def from_asgi_shared(self, scope: MutableMapping[str, Any]) -> Client:
        """:meth:`from_asgi`, once per request for every filter on this resolver.

        A peer in this resolver's cache costs one lookup, as with
        :meth:`from_asgi`, and nothing is stored.  Otherwise (a fresh
        address, which is not cached on its first request, or a proxy's
        request) the first call for a request resolves the client and stores
        ``(self, scope["client"], client)`` under ``scope["mailguard.client"]``;
        later calls with the same resolver and the same peer object return
        it.  Anything else found there is ignored and replaced.
        """
        try:
            peer = scope.get("client")
            hit = self._direct.get("" if peer is None else peer[0])
        except Exception:  # an unreadable scope or peer: resolved on its own
            return self._from_asgi_peer(scope)
        if hit is not None:
            return hit
        return self._shared(scope, peer, self.from_asgi)

    def from_wsgi_shared(self, environ: MutableMapping[str, Any]) -> Client:
        """:meth:`from_wsgi`, once per request: as :meth:`from_asgi_shared`, in
        ``environ["mailguard.client"]``, tied to ``environ["REMOTE_ADDR"]``."""
        try:
            peer = environ.get("REMOTE_ADDR")
            hit = self._direct.get(peer)
        except Exception:  # an unreadable environ or peer: resolved on its own
            return self._from_wsgi_peer(environ)
        if hit is not None:
            return hit
        return self._shared(environ, peer, self.from_wsgi)

    def _shared(
        self,
        holder: MutableMapping[str, Any],
        peer: object,
        resolve: Callable[[Any], Client],
    ) -> Client:
        """The client an outer filter of this resolver left in ``holder`` for
        this very ``peer`` object, or ``resolve(holder)``, left there in turn."""
        held = holder.get(SHARED_KEY)
        if held is not None:
            try:
                if held[0] is self and held[1] is peer:
                    client: Client = held[2]
                    return client
            except Exception:  # not ours: resolve and replace it
                pass
        client = resolve(holder)
        holder[SHARED_KEY] = (self, peer, client)
        return client

    def from_wsgi(self, environ: Mapping[str, Any]) -> Client:
        """Resolve the client of a WSGI *environ*.

        The peer is ``environ["REMOTE_ADDR"]``.  The header is the matching
        ``HTTP_*`` key (``HTTP_X_FORWARDED_FOR``, ``HTTP_FORWARDED`` or
        ``HTTP_X_REAL_IP``), in which the server has already joined several
        header lines with commas; it is looked at only when the peer is a
        trusted proxy.  This method does not raise on malformed environs.
        """
        try:
            peer = environ.get("REMOTE_ADDR")
            hit = self._direct.get(peer)
        except Exception:
            return self._from_wsgi_peer(environ)
        if hit is not None:
            return hit
        # A fresh address, or a proxy's request (_from_wsgi_peer's first
        # steps, without its calls: a flood of fresh addresses runs this)
        if type(peer) is str:
            proxy = self._trusted_peers.get(peer)
            if proxy is not None:
                return self._from_wsgi_proxy(environ, proxy)
            hit = self._fresh_quad(peer)
            if hit is not None:
                return hit
        return self._from_wsgi_peer(environ)

    def _from_wsgi_peer(self, environ: Mapping[str, Any]) -> Client:
        """:meth:`from_wsgi` once the peer is known not to be in the cache."""
        try:
            peer: object = environ.get("REMOTE_ADDR")
        except Exception:
            return _UNKNOWN_CLIENT
        client, trusted = self._peer("" if peer is None else _as_text(peer))
        if not trusted:
            return client
        return self._from_wsgi_proxy(environ, client)

    def _from_wsgi_proxy(self, environ: Mapping[str, Any], proxy: Client) -> Client:
        """The client named in the header of a request from the trusted ``proxy``."""
        try:
            value: object = environ.get(self._wsgi_key)
        except Exception:
            return _UNKNOWN_CLIENT
        text = _as_text(value)
        return self._walk(proxy, [text] if text is not None else [])

    def resolve(self, peer: str | None, header_values: Sequence[str]) -> Client:
        """Resolve the client from a *peer* string and forwarding header values.

        This is the logic :meth:`from_asgi` and :meth:`from_wsgi` share, for
        servers and frameworks that expose the request differently.

        :param peer: The connection's peer address as the server reports it,
            or ``None`` when there is none.  An empty string counts as
            ``None``.  A peer that is not an IP address is returned as a
            client keyed by its own string.
        :param header_values: Every value of the configured header, in the
            order the lines arrived; they are combined as if joined by
            commas.  A single string is taken as one value.  Read only when
            *peer* is a trusted proxy.
        """
        try:
            hit = self._direct.get(peer)
        except Exception:
            hit = None
        if hit is not None:
            return hit
        client, trusted = self._peer("" if peer is None else _as_text(peer))
        if not trusted:
            return client
        if isinstance(header_values, (str, bytes, bytearray)):
            header_values = [header_values]
        try:
            values = [t for t in map(_as_text, header_values) if t is not None]
        except Exception:
            return client
        return self._walk(client, values)

    # -- internals -----------------------------------------------------------

    def _peer(self, peer: str | None) -> tuple[Client, bool]:
        """The peer's own Client, and whether the peer is a trusted proxy.

        ``peer`` None is a peer that could not be read (``"unknown"``);
        ``""`` is a connection without a peer address: a unix socket.
        """
        if peer is None:
            return _UNKNOWN_CLIENT, False
        known = self._trusted_peers.get(peer)
        if known is not None:
            return known, True
        made = self._fresh_quad(peer)
        if made is not None:
            return made, False
        canon = canonical_ip(peer) if peer else None
        if canon is not None:
            client = self._client_for(canon)
            trusted = canon in self.trusted_proxies
        elif is_unix_peer(peer):
            client = UNIX_CLIENT
            trusted = self.trust_unix
            if not trusted and not self._warned_unix:
                self._warned_unix = True
                _log.warning(
                    "mailguard: a request came over a unix socket (peer %r) and"
                    ' trusted_proxies does not name "unix": every client is counted'
                    ' under the one key "unix", so one client\'s block refuses everyone.'
                    " If a proxy (nginx) forwards requests over this socket, set"
                    ' trusted_proxies=["unix"] and forwarded_header to the header it'
                    " writes (X-Forwarded-For by default).",
                    peer,
                )
        else:
            client = Client(peer, peer, False)
            trusted = False
        self._remember(peer, client, trusted)
        return client, trusted

    def _fresh_quad(self, peer: object) -> Client | None:
        """The Client of ``peer`` when it is a dotted quad in canonical form and
        not a trusted proxy (then remembered with the direct peers from its
        second request on, see :meth:`_admit`), else None.

        The usual peer, without the general parser, its caches or a named
        tuple's constructor: what a first request from an address costs, and
        a flood of fresh addresses is nothing but first requests.  The same
        Client as :meth:`_client_for`'s, and the same answer as ``in
        trusted_proxies`` (``tests/test_identity.py`` pins both)."""
        if type(peer) is not str or not _canonical_quad(peer):
            return None
        if self.trusted_proxies.has_canonical(peer):
            return None
        made: Client = _new_client(Client, (peer, peer, True, ()))
        once = self._once  # (_admit, inlined: a flood of fresh addresses runs this)
        if peer in once:
            once.discard(peer)
            direct = self._direct
            if len(direct) >= CACHE_SIZE:
                direct.clear()
            direct[peer] = made  # (a dotted quad is far below _MAX_CACHED_PEER_LENGTH)
        else:
            if len(once) >= CACHE_SIZE:
                once.clear()
            once.add(peer)
        return made

    def _admit(self, text: str) -> bool:
        """Whether a new entry for ``text`` (a peer or a header value) goes
        into its cache: not on its first sighting, on its second (until
        :data:`CACHE_SIZE` others have been seen once in between).

        A client comes back, and is cached then.  An address seen once, as
        in a flood of fresh IPv4 addresses, is not: it does not push out the
        clients that do come back (each cache is emptied when full), and its
        :class:`Client` does not outlive the request.  A Client is a named
        tuple, an object the garbage collector walks for as long as it lives
        (it never untracks a tuple subclass), and a cached one outlived the
        young generations: at 100,000 rotating addresses every request left
        one more for the full collections.  Not caching them took DosFilter
        there from 1.47x to 1.40x bare Starlette, the collector's time from
        0.25 to 0.01 µs per request (200,000 requests of
        benchmarks/http_cost.py's rotating clients in a row).

        Only dotted quads and header values go through here.  Other peers,
        IPv6 ones included, are cached on their first request, as are the
        clients of ``_by_address``; and an address sent twice is cached like
        any client's.  The caches stay bounded either way: this saves time,
        it bounds nothing.  Dotted quads are admitted by :meth:`_fresh_quad`
        itself (inlined).
        """
        once = self._once
        if text in once:
            once.discard(text)
            return True
        if len(once) >= CACHE_SIZE:
            once.clear()
        once.add(text)
        return False

    def _remember(self, peer: str, client: Client, trusted: bool) -> None:
        if len(peer) <= _MAX_CACHED_PEER_LENGTH:
            cache: dict[Any, Client] = self._trusted_peers if trusted else self._direct
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[peer] = client

    def _client_for(self, canon: str) -> Client:
        """The Client of a canonical IP address."""
        cache = self._by_address
        client = cache.get(canon)
        if client is None:
            key = canon
            wider: tuple[str, ...] = ()
            if ":" in canon:
                packed = socket.inet_pton(socket.AF_INET6, canon)
                # a local-use NAT64 address stands for one IPv4 client: the whole of it
                if packed[:6] != _NAT64_LOCAL:
                    number = int.from_bytes(packed, "big")
                    if self.ipv6_prefix < 128:
                        key = f"{_net_key(number, self._ipv6_mask)}/{self.ipv6_prefix}"
                    wider = tuple(f"{_net_key(number, m)}/{p}" for p, m in self._wider_masks)
            client = Client(key, canon, True, wider)
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[canon] = client
        return client

    def _walk(self, peer: Client, values: list[str]) -> Client:
        """Walk the header from the right, starting at the trusted *peer*."""
        if not values:
            return peer
        joined = values[0] if len(values) == 1 else ",".join(values)
        walked = self._walked
        if joined in walked:
            found = walked[joined]
        elif (found := self._lone_quad(joined)) is None:
            entries = _split_header(joined)
            if self.forwarded_header == "x-real-ip":
                # One address, or nothing to believe: a list (or several
                # header lines) means something other than our proxy wrote it.
                entries = [e for e in entries if e and not e.isspace()]
                found = self._walk_entries(entries) if len(entries) == 1 else None
            else:
                found = self._walk_entries(entries)
            if len(joined) <= _MAX_CACHED_HEADER_LENGTH and self._admit(joined):
                if len(walked) >= _WALK_CACHE_SIZE:
                    walked.clear()
                walked[joined] = found
        return peer if found is None else found

    def _lone_quad(self, joined: str) -> Client | None:
        """The client a header naming one dotted quad in canonical form names
        (``X-Forwarded-For: 198.51.100.7``), else None (then walk it).

        A lone entry is the client whether or not it is a trusted proxy
        itself: the walk from the right stops at it, or runs out of entries
        after it, and :meth:`_walk_entries` answers ``_client_for(it)``
        either way.  So a flood of fresh addresses through a trusted proxy
        needs neither the split, the general parser nor the trusted-proxy
        lookup.  Not for ``Forwarded``, whose entries are ``for=`` pairs.
        Pinned to the walk by ``tests/test_identity.py``."""
        if len(joined) > 15 or self._pairs or not _canonical_quad(joined):
            return None
        made: Client = _new_client(Client, (joined, joined, True, ()))
        return made

    def _walk_entries(self, entries: list[str]) -> Client | None:
        """The client named by *entries*, or None for the trusted peer itself.

        The answer depends on the header alone (when the rightmost entry is
        garbage it is "the peer", whichever that is), so it can be cached by
        header value.
        """
        forwarded = self.forwarded_header == "forwarded"
        canonical = _canonical_cache
        trusted = self.trusted_proxies
        known = trusted._cache
        last: str | None = None
        for entry in reversed(entries):
            if not entry or entry.isspace():
                continue  # empty list element
            if forwarded:
                entry = _forwarded_for(entry)
            canon = canonical[entry] if entry in canonical else canonical_ip(entry)
            if canon is None:
                break  # garbage: fall back to the last trusted hop
            last = canon
            is_trusted = known.get(canon)
            if is_trusted is None:
                is_trusted = canon in trusted
            if not is_trusted:
                break
        return None if last is None else self._client_for(last)


# ClientResolver.shared: one resolver per settings, while anyone uses it.
_SHARED: weakref.WeakValueDictionary[tuple[object, ...], ClientResolver] = (
    weakref.WeakValueDictionary()
)
_SHARED_LOCK = threading.Lock()


def _mask(prefix: int) -> int:
    """The 128-bit netmask of an IPv6 prefix length."""
    return ((1 << prefix) - 1) << (128 - prefix)


def _net_key(number: int, mask: int) -> str:
    """The text of the network of ``mask`` that holds the address ``number``."""
    return _network_text((number & mask).to_bytes(16, "big"))


def _split_unix(entries: Iterable[str]) -> tuple[Iterable[str], bool]:
    """``trusted_proxies`` without its ``"unix"`` entries, and whether it had one."""
    if isinstance(entries, (str, bytes, bytearray)):
        return entries, False  # AddressSet explains why a single string is wrong
    try:
        items = list(entries)
    except TypeError:
        return entries, False
    rest = [e for e in items if not (isinstance(e, str) and e.strip().lower() == UNIX)]
    return rest, len(rest) != len(items)


def _wider_prefixes(prefixes: Iterable[int], narrowest: int) -> tuple[int, ...]:
    """The wider prefix lengths, checked, narrowest first, those not wider
    than ``narrowest`` left out."""
    try:
        items = list(prefixes)
    except TypeError:
        raise option_error("ipv6_wider", f"expected prefix lengths, got {prefixes!r}") from None
    for p in items:
        if isinstance(p, bool) or not isinstance(p, int) or not 16 <= p <= 127:
            raise option_error("ipv6_wider", f"{p!r} is not a prefix length from 16 to 127")
    return tuple(sorted({p for p in items if p < narrowest}, reverse=True))


def _split_header(joined: str) -> list[str]:
    """Split a list header into entries, within the length and hop limits.

    An entry that the limits cut short or leave unread is replaced by a
    marker that is never an address, so the walk stops there as it does at
    garbage.
    """
    if len(joined) > MAX_HEADER_LENGTH:
        entries = joined[-MAX_HEADER_LENGTH:].rsplit(",", MAX_HOPS)
        entries[0] = _GARBAGE
    else:
        entries = joined.rsplit(",", MAX_HOPS)
        if len(entries) > MAX_HOPS:
            entries[0] = _GARBAGE
    return entries


def _forwarded_for(element: str) -> str:
    """The ``for=`` value of one RFC 7239 element, or ``""`` (garbage)."""
    found = ""
    seen = False
    for pair in element.split(";"):
        name, eq, value = pair.partition("=")
        if eq and name.strip().lower() == "for":
            if seen:  # a repeated parameter makes the element invalid
                return ""
            seen = True
            found = value
    return found


def _as_text(value: object) -> str | None:
    """A peer or header value as text; None when it is neither str nor bytes."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")
    return None


def _asgi_peer(scope: Mapping[str, Any]) -> str | None:
    """``scope["client"][0]`` as text; ``""`` when there is no client (a unix
    socket); None when it is malformed."""
    try:
        client = scope.get("client")
        if client is None:
            return ""
        if isinstance(client, (tuple, list)) and client:
            return _as_text(client[0])
    except Exception:
        pass
    return None
