"""Tests for mailguard.identity: client addresses behind trusted proxies."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import netaddr
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailguard import identity
from mailguard.identity import (
    MAX_HEADER_LENGTH,
    MAX_HOPS,
    AddressSet,
    Client,
    ClientResolver,
    canonical_ip,
    is_unix_peer,
)

PROXY = "10.0.0.1"
TRUSTED = ["10.0.0.0/8", "2001:db8:ffff::/48"]
CLIENT = "198.51.100.7"


def asgi_scope(
    peer: str | None, headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "client": None if peer is None else (peer, 50000),
        "headers": headers or [],
    }


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", v.encode("latin-1")) for v in values]


def ip_client(address: str, key: str | None = None) -> Client:
    return Client(key or address, address, True)


# -- canonical_ip -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("  192.0.2.1\t", "192.0.2.1"),
        ("192.0.2.1:8080", "192.0.2.1"),
        ('"192.0.2.1"', "192.0.2.1"),
        ("192.0.2.1:_obfport", "192.0.2.1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ('"[2001:db8::1]:4711"', "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]:80", "fe80::1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::ffff:c000:201", "192.0.2.1"),
        ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ("::1", "::1"),
        ("::", "::"),
        ("0.0.0.0", "0.0.0.0"),
    ],
)
def test_canonical_ip_accepts(text: str, expected: str) -> None:
    assert canonical_ip(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "unknown",
        "_hidden",
        "_SEVKISEK",
        "",
        "   ",
        '""',
        "10.0.0.300",
        "01.2.3.4",
        "1.2.3",
        "mail.example.com",
        "[192.0.2.1]",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "[2001:db8::1]:",
        "192.0.2.1:",
        "192.0.2.1:http",
        "192.0.2.1%eth0",
        "fe80::1%",
        "\uff11.2.3.4",  # fullwidth digit
        "2001:db8::g",
        "192.0.2.1" + " " * 200,  # valid once stripped, but over the length cap
        "1" * 10_000,
    ],
)
def test_canonical_ip_rejects(text: str) -> None:
    assert canonical_ip(text) is None


@pytest.mark.parametrize("value", [None, 123, b"192.0.2.1", ["192.0.2.1"], object()])
def test_canonical_ip_non_strings(value: Any) -> None:
    assert canonical_ip(value) is None


def carried_ipv4(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """What canonical_ip should make of ``ip``, worked out with ipaddress."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in ipaddress.IPv6Network("64:ff9b::/96"):
        return low
    if ip in ipaddress.IPv6Network("::/96") and ip not in ipaddress.IPv6Network("::/104"):
        return low
    return ip


@given(st.ip_addresses())
def test_canonical_ip_matches_ipaddress(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    expected = carried_ipv4(ip)
    assert canonical_ip(str(ip)) == str(expected)
    assert canonical_ip(ip.exploded) == str(expected)
    if ip.version == 6:
        assert canonical_ip(f"[{ip}]:443") == str(expected)
        assert canonical_ip(f'"[{ip.exploded}]:4711"') == str(expected)
    else:
        assert canonical_ip(f"{ip}:8080") == str(expected)


@given(st.text(max_size=120))
def test_canonical_ip_never_raises_and_is_idempotent(text: str) -> None:
    result = canonical_ip(text)
    if result is not None:
        assert canonical_ip(result) == result
        ipaddress.ip_address(result)  # really an address


def reference_ip(text: str) -> str | None:
    """canonical_ip for bare addresses, done the slow way with ipaddress."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return str(carried_ipv4(ip))


octets = st.one_of(st.integers(0, 300).map(str), st.sampled_from(["00", "01", "010", "0x1", ""]))
quads = st.lists(octets, min_size=3, max_size=5).map(".".join)
hextets = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF", max_size=5), st.sampled_from(["", "0", "ffff"])
)
near_ipv6 = st.lists(st.one_of(hextets, quads), min_size=3, max_size=10).map(":".join)


@settings(max_examples=500)
@given(st.one_of(near_ipv6, quads))
def test_canonical_ip_agrees_with_ipaddress_on_near_misses(text: str) -> None:
    # The C library's inet_pton does the fast parsing; it must neither
    # accept nor spell anything differently from the ipaddress module.
    assert canonical_ip(text) == reference_ip(text)


def round_trip_quad(text: str) -> bool:
    """Whether ``text`` is what inet_ntop prints for the address inet_pton reads from it."""
    try:
        return socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, text)) == text
    except (OSError, ValueError):
        return False


near_quads = st.one_of(
    quads,
    quads.map(lambda q: q + "\n"),
    quads.map(lambda q: " " + q),
    st.text(alphabet="0123456789.\n :\x00\u0661\uff11", max_size=20),
    st.integers(0, 2**32 - 1).map(lambda n: socket.inet_ntoa(n.to_bytes(4, "big"))),
)


@settings(max_examples=1000)
@given(st.one_of(near_quads, st.text(max_size=20)))
def test_canonical_quad_is_the_round_trip(text: str) -> None:
    # The resolver's fresh-address paths check a dotted quad with a regex in
    # place of inet_pton and inet_ntop: the same strings, exactly.
    assert (identity._canonical_quad(text) is not None) is round_trip_quad(text)


@pytest.mark.parametrize(
    "text",
    ["0.0.0.0", "255.255.255.255", "198.51.100.7", "10.0.0.1", "1.2.3.4"],
)
def test_canonical_quad_accepts(text: str) -> None:
    assert identity._canonical_quad(text) and round_trip_quad(text)


@pytest.mark.parametrize(
    "text",
    ["01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3", "1.2.3.4.", "1.2.3.4\n", " 1.2.3.4",
     "1.2.3.4 ", "\u0661.2.3.4", "1..2.3", "0x1.2.3.4", "1.2.3.4\x00", "", "1.2.3.4:80"],
)  # fmt: skip
def test_canonical_quad_rejects(text: str) -> None:
    assert identity._canonical_quad(text) is None and not round_trip_quad(text)


def test_canonical_ip_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "CACHE_SIZE", 10)
    monkeypatch.setattr(identity, "_canonical_cache", {})
    for i in range(100):
        assert canonical_ip(f"192.0.2.{i}") == f"192.0.2.{i}"
    assert len(identity._canonical_cache) <= 10


# -- AddressSet ---------------------------------------------------------------


def test_address_set_membership() -> None:
    safe = AddressSet(["10.0.0.0/8", "192.168.1.5", "2001:db8::/32", "::1"])
    assert "10.200.3.4" in safe
    assert "192.168.1.5" in safe
    assert "192.168.1.6" not in safe
    assert "11.0.0.1" not in safe
    assert "2001:db8:abcd::7" in safe
    assert "2001:db9::1" not in safe
    assert "::1" in safe
    assert "::2" not in safe
    # Non-canonical spellings are canonicalised on a miss.
    assert "::ffff:10.1.2.3" in safe
    assert "[2001:db8::1]:443" in safe
    assert "10.1.2.3:8080" in safe


@pytest.mark.parametrize("value", ["testclient", "/run/app.sock", "", "unknown", "x" * 1000])
def test_address_set_non_ip_strings_are_not_members(value: str) -> None:
    everything = AddressSet(["0.0.0.0/0", "::/0"])
    assert value not in everything


@pytest.mark.parametrize("value", [None, 10, b"10.0.0.1", ["10.0.0.1"], {"a": 1}])
def test_address_set_non_strings_are_not_members(value: object) -> None:
    assert value not in AddressSet(["0.0.0.0/0", "::/0"])


def test_address_set_mapped_entries_match_ipv4() -> None:
    safe = AddressSet(["::ffff:192.0.2.0/120", "::ffff:198.51.100.9"])
    assert "192.0.2.77" in safe
    assert "::ffff:192.0.2.77" in safe
    assert "192.0.3.1" not in safe
    assert "198.51.100.9" in safe
    assert "198.51.100.10" not in safe


def test_address_set_wide_ipv6_does_not_cover_ipv4() -> None:
    all_v6 = AddressSet(["::/0"])
    assert "2001:db8::1" in all_v6
    assert "192.0.2.1" not in all_v6
    assert "::ffff:192.0.2.1" not in all_v6


def test_address_set_empty() -> None:
    empty = AddressSet()
    assert not empty
    assert len(empty) == 0
    assert "127.0.0.1" not in empty
    assert list(empty) == []


def test_address_set_len_iter_repr() -> None:
    safe = AddressSet([" 10.0.0.0/8 ", "192.0.2.1", "192.0.2.1/32", "2001:DB8::/32"])
    assert safe
    assert list(safe) == ["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"]
    assert len(safe) == 3
    assert repr(safe) == "AddressSet(['10.0.0.0/8', '192.0.2.1', '2001:db8::/32'], name='safe_ips')"
    assert "name='trusted_proxies'" in repr(AddressSet([], name="trusted_proxies"))


def test_address_set_bad_entry_message() -> None:
    with pytest.raises(ValueError) as info:
        AddressSet(["10.0.0.0/8", "10.0.0.300"])
    assert str(info.value) == "safe_ips: '10.0.0.300' is not an IP address or CIDR network"


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.300",
        "example.com",
        "",
        "10.0.0.0/33",
        "2001:db8::/129",
        "10.0.0.0/",
        "10.0.0.0/-1",
        "10.0.0.0/abc",
        "10.0.0.0/255.0.0.0",
        "10.0.0.0/" + "9" * 5000,
        "10.0.0.0/8/8",
        "fe80::1%eth0",
        "[2001:db8::1]",
        "10/8",
    ],
)
def test_address_set_rejects_bad_entries(entry: str) -> None:
    with pytest.raises(ValueError, match=r"^trusted_proxies: ") as info:
        AddressSet([entry], name="trusted_proxies")
    assert repr(entry)[:50] in str(info.value)


@pytest.mark.parametrize("entry", [None, 10, b"10.0.0.0/8", ("10.0.0.0", 8)])
def test_address_set_rejects_non_string_entries(entry: Any) -> None:
    with pytest.raises(ValueError, match=r"^safe_ips: .* is not an IP address or CIDR network"):
        AddressSet([entry])


def test_address_set_rejects_host_bits() -> None:
    with pytest.raises(ValueError, match=r"safe_ips: '192\.168\.1\.5/24'.*'192\.168\.1\.0/24'"):
        AddressSet(["192.168.1.5/24"])


@pytest.mark.parametrize("single", ["10.0.0.0/8", b"10.0.0.0/8", "10.0.0.1,10.0.0.2"])
def test_address_set_rejects_a_bare_string(single: Any) -> None:
    with pytest.raises(ValueError, match=r"^safe_ips: expected a list .* single string"):
        AddressSet(single)


def test_address_set_rejects_non_iterable() -> None:
    with pytest.raises(ValueError, match=r"^safe_ips: expected a list"):
        AddressSet(42)  # type: ignore[arg-type]


def test_address_set_accepts_any_iterable() -> None:
    def entries() -> Iterator[str]:
        yield "10.0.0.0/8"
        yield "::1"

    assert "10.9.9.9" in AddressSet(entries())
    assert "::1" in AddressSet(("::1",))
    assert "::1" in AddressSet({"::1"})


def test_address_set_cached_lookup_does_no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    safe = AddressSet(["10.0.0.0/8"])
    assert "10.1.1.1" in safe
    assert "11.1.1.1" not in safe

    def boom(*args: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(identity, "_parse_ip", boom)
    monkeypatch.setattr(socket, "inet_pton", boom)
    monkeypatch.setattr(ipaddress, "ip_address", boom)
    monkeypatch.setattr(netaddr, "IPAddress", boom)
    assert "10.1.1.1" in safe
    assert "11.1.1.1" not in safe


def test_address_set_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "CACHE_SIZE", 16)
    safe = AddressSet(["192.0.2.0/24"])
    for i in range(256):
        assert (f"192.0.2.{i}" in safe) is True
        assert (f"198.51.100.{i}" in safe) is False
    assert len(safe._cache) <= 16


MAPPED = ipaddress.ip_network("::ffff:0:0/96")
# The ranges whose addresses are canonicalised to IPv4 (mapped, NAT64, compatible).
CARRIERS = [MAPPED, ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("::/96")]


def in_carrier(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return any(ip.version == 6 and ip in c for c in CARRIERS)


def overlaps_carrier(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return any(net.version == 6 and net.overlaps(c) for c in CARRIERS)


@given(st.ip_addresses(), st.ip_addresses(), st.integers(min_value=0, max_value=128))
def test_address_set_agrees_with_ipaddress(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    other: ipaddress.IPv4Address | ipaddress.IPv6Address,
    prefix: int,
) -> None:
    # Mapped addresses and networks are special-cased; tested above.
    assume(not in_carrier(ip) and not in_carrier(other))
    network = ipaddress.ip_network(f"{ip}/{min(prefix, ip.max_prefixlen)}", strict=False)
    members = AddressSet([str(network)])
    assert str(ip) in members
    assert ip.exploded in members
    expected = other.version == network.version and other in network
    assert (str(other) in members) is expected


networks = st.builds(
    lambda ip, prefix: ipaddress.ip_network(f"{ip}/{min(prefix, ip.max_prefixlen)}", strict=False),
    st.one_of(
        st.ip_addresses(v=4),
        st.ip_addresses(v=6),
        # Cluster some in one small area so that networks overlap and touch.
        st.integers(0, 4095).map(lambda n: ipaddress.IPv4Address(0x0A000000 + n * 64)),
    ),
    st.integers(min_value=0, max_value=128),
)
probes = st.one_of(
    st.ip_addresses(),
    st.integers(0, 4095 * 64 + 63).map(lambda n: ipaddress.IPv4Address(0x0A000000 + n)),
)


@given(st.lists(networks, max_size=8), st.lists(probes, max_size=20))
def test_address_set_with_many_networks(
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network],
    addresses: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
) -> None:
    nets = [n for n in nets if not overlaps_carrier(n)]
    members = AddressSet([str(n) for n in nets])
    for address in addresses:
        if in_carrier(address):
            continue
        expected = any(address.version == n.version and address in n for n in nets)
        assert (str(address) in members) is expected, (address, nets)
    for n in nets:
        assert str(n.network_address) in members
        assert str(n.broadcast_address) in members


# -- ClientResolver configuration --------------------------------------------


@pytest.mark.parametrize("prefix", [31, 129, 0, -64, True, "64", 64.0, None])
def test_bad_ipv6_prefix(prefix: Any) -> None:
    with pytest.raises(ValueError, match=r"^ipv6_prefix: "):
        ClientResolver(ipv6_prefix=prefix)


@pytest.mark.parametrize("header", ["x-client-ip", "", "x-forwarded-for ", None, b"forwarded"])
def test_bad_forwarded_header(header: Any) -> None:
    with pytest.raises(ValueError, match=r"^forwarded_header: ") as info:
        ClientResolver(forwarded_header=header)
    assert repr(header) in str(info.value)


def test_forwarded_header_is_case_insensitive() -> None:
    resolver = ClientResolver([PROXY], forwarded_header="X-Real-IP")
    assert resolver.forwarded_header == "x-real-ip"
    scope = asgi_scope(PROXY, [(b"x-real-ip", CLIENT.encode())])
    assert resolver.from_asgi(scope) == ip_client(CLIENT)


def test_bad_trusted_proxies() -> None:
    with pytest.raises(ValueError, match=r"^trusted_proxies: '10\.0\.0\.300' is not"):
        ClientResolver(["10.0.0.300"])
    with pytest.raises(ValueError, match=r"^trusted_proxies: expected a list"):
        ClientResolver("10.0.0.0/8")


def test_resolver_repr_and_attributes() -> None:
    resolver = ClientResolver(["10.0.0.0/8"], ipv6_prefix=56, forwarded_header="Forwarded")
    assert resolver.ipv6_prefix == 56
    assert resolver.forwarded_header == "forwarded"
    assert "10.0.0.1" in resolver.trusted_proxies
    assert resolver.trusted_proxies.name == "trusted_proxies"
    assert repr(resolver) == (
        "ClientResolver(['10.0.0.0/8'], ipv6_prefix=56, forwarded_header='forwarded')"
    )


# -- keys and peers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "peer", "key"),
    [
        (64, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        (64, "2001:DB8:1:2::", "2001:db8:1:2::/64"),
        (48, "2001:db8:1:2:3:4:5:6", "2001:db8:1::/48"),
        (56, "2001:db8:1:2ff:3:4:5:6", "2001:db8:1:200::/56"),
        (32, "2001:db8:1:2:3:4:5:6", "2001:db8::/32"),
        (127, "2001:db8::7", "2001:db8::6/127"),
        (128, "2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6"),
        (64, "::1", "::/64"),
        (64, "192.0.2.1", "192.0.2.1"),
        (32, "192.0.2.1", "192.0.2.1"),
        (64, "::ffff:192.0.2.1", "192.0.2.1"),
    ],
)
def test_client_keys(prefix: int, peer: str, key: str) -> None:
    resolver = ClientResolver(ipv6_prefix=prefix)
    client = resolver.from_asgi(asgi_scope(peer))
    assert client.key == key
    assert client.address == canonical_ip(peer)
    assert client.is_ip is True
    assert resolver.from_wsgi({"REMOTE_ADDR": peer}) == client
    assert resolver.resolve(peer, []) == client


def test_ipv6_neighbours_share_a_key() -> None:
    resolver = ClientResolver()
    a = resolver.resolve("2001:db8:1:2::1", [])
    b = resolver.resolve("2001:db8:1:2:ffff::9", [])
    c = resolver.resolve("2001:db8:1:3::1", [])
    assert a.key == b.key == "2001:db8:1:2::/64"
    assert a.address != b.address
    assert c.key != a.key


@pytest.mark.parametrize("peer", ["testclient", "mail.example.com", " ", "run/app.sock"])
def test_non_ip_peers_are_keyed_by_their_string(peer: str) -> None:
    resolver = ClientResolver()
    expected = Client(peer, peer, False)
    assert resolver.from_asgi(asgi_scope(peer, xff(CLIENT))) == expected
    assert resolver.from_wsgi({"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": CLIENT}) == expected
    assert resolver.resolve(peer, [CLIENT]) == expected


def test_unix_peers_are_not_trusted_by_ip_networks() -> None:
    # Even with every address trusted, a unix socket peer's headers are ignored.
    resolver = ClientResolver(["0.0.0.0/0", "::/0"])
    assert resolver.resolve("/run/app.sock", [CLIENT]) == UNIX
    assert resolver.resolve("testclient", [CLIENT]) == Client("testclient", "testclient", False)


UNKNOWN = Client("unknown", "unknown", False)
UNIX = Client("unix", "unix", False)


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "http", "headers": []},
        {"type": "http", "client": None, "headers": xff(CLIENT)},
        {"type": "http", "client": ("", 0), "headers": []},
        {"type": "http", "client": ("<local>", 0), "headers": []},
        {"type": "http", "client": ("/run/app.sock", None), "headers": xff(CLIENT)},
    ],
)
def test_asgi_unix_socket_peer_is_unix(scope: dict[str, Any]) -> None:
    # uvicorn --uds gives no client, gunicorn "", werkzeug "<local>"
    assert ClientResolver([PROXY]).from_asgi(scope) == UNIX


@pytest.mark.parametrize(
    "environ",
    [{}, {"REMOTE_ADDR": ""}, {"REMOTE_ADDR": None}, {"REMOTE_ADDR": "<local>"}],
)
def test_wsgi_unix_socket_peer_is_unix(environ: dict[str, Any]) -> None:
    environ["HTTP_X_FORWARDED_FOR"] = CLIENT
    assert ClientResolver([PROXY]).from_wsgi(environ) == UNIX


@pytest.mark.parametrize(
    "scope",
    [
        {"type": "http", "client": (), "headers": []},
        {"type": "http", "client": [None, 0], "headers": []},
        {"type": "http", "client": 5, "headers": []},
        {"type": "http", "client": ([1], 2), "headers": []},
    ],
)
def test_asgi_without_usable_peer_is_unknown(scope: dict[str, Any]) -> None:
    assert ClientResolver([PROXY]).from_asgi(scope) == UNKNOWN


@pytest.mark.parametrize(
    "environ",
    [{"REMOTE_ADDR": ["x"]}, {"REMOTE_ADDR": 7}],
)
def test_wsgi_without_usable_peer_is_unknown(environ: dict[str, Any]) -> None:
    assert ClientResolver([PROXY]).from_wsgi(environ) == UNKNOWN


def test_resolve_without_peer_is_unix() -> None:
    resolver = ClientResolver([PROXY])
    assert resolver.resolve(None, [CLIENT]) == UNIX
    assert resolver.resolve("", [CLIENT]) == UNIX


def test_asgi_bytes_peer_is_decoded() -> None:
    resolver = ClientResolver()
    scope = {"type": "http", "client": (b"192.0.2.1", 1), "headers": []}
    assert resolver.from_asgi(scope) == ip_client("192.0.2.1")


# -- untrusted peers: headers ignored ------------------------------------------


class ExplodingHeaders(list[tuple[bytes, bytes]]):
    """A header list that fails the test if anyone reads it."""

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        raise AssertionError("headers were read")


class ExplodingEnviron(Mapping[str, Any]):
    """An environ that fails the test if a forwarding header is looked up."""

    def __init__(self, remote_addr: str) -> None:
        self._data = {"REMOTE_ADDR": remote_addr}

    def __getitem__(self, key: str) -> Any:
        if key.startswith("HTTP_"):
            raise AssertionError(f"{key} was read")
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


@pytest.mark.parametrize("trusted", [[], TRUSTED])
def test_spoofed_header_from_untrusted_peer_is_ignored(trusted: list[str]) -> None:
    resolver = ClientResolver(trusted)
    attacker = "203.0.113.66"
    spoof = "127.0.0.1, 10.0.0.2"
    assert resolver.from_asgi(asgi_scope(attacker, xff(spoof))) == ip_client(attacker)
    assert resolver.from_wsgi(
        {"REMOTE_ADDR": attacker, "HTTP_X_FORWARDED_FOR": spoof}
    ) == ip_client(attacker)
    assert resolver.resolve(attacker, [spoof]) == ip_client(attacker)


@pytest.mark.parametrize("trusted", [[], TRUSTED])
def test_untrusted_peer_headers_are_not_read(trusted: list[str]) -> None:
    resolver = ClientResolver(trusted)
    attacker = "203.0.113.66"
    scope = {"type": "http", "client": (attacker, 1), "headers": ExplodingHeaders()}
    for _ in range(2):  # both the first (uncached) and the cached request
        assert resolver.from_asgi(scope) == ip_client(attacker)
        assert resolver.from_wsgi(ExplodingEnviron(attacker)) == ip_client(attacker)


def test_untrusted_peer_is_cached_without_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = ClientResolver(TRUSTED)
    scope = asgi_scope("2001:db8:5::9", xff(CLIENT))
    first = resolver.from_asgi(scope)

    def boom(*args: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(identity, "canonical_ip", boom)
    monkeypatch.setattr(identity, "_parse_ip", boom)
    monkeypatch.setattr(ipaddress, "ip_address", boom)
    monkeypatch.setattr(socket, "inet_pton", boom)
    assert resolver.from_asgi(scope) is first
    assert resolver.from_wsgi({"REMOTE_ADDR": "2001:db8:5::9"}) is first
    assert resolver.resolve("2001:db8:5::9", [CLIENT]) is first


def test_resolver_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(identity, "CACHE_SIZE", 8)
    monkeypatch.setattr(identity, "_WALK_CACHE_SIZE", 8)
    resolver = ClientResolver(["10.0.0.0/8"])
    for i in range(100):
        peer = f"192.0.2.{i}"
        assert resolver.resolve(peer, []) == ip_client(peer)
        assert resolver.resolve(f"10.0.0.{i}", [peer]) == ip_client(peer)
        assert resolver.resolve(f"host-{i}", []).key == f"host-{i}"
    assert len(resolver._direct) <= 8
    assert len(resolver._trusted_peers) <= 8
    assert len(resolver._by_address) <= 8
    assert len(resolver._walked) <= 8
    assert resolver.resolve(None, []) == UNIX


def test_a_dotted_quad_peer_is_cached_from_its_second_request() -> None:
    """What is seen once is not kept: the first request from an address
    resolves it without caching its Client, the second caches it."""
    resolver = ClientResolver(TRUSTED)
    peer = "192.0.2.10"
    first = resolver.from_asgi(asgi_scope(peer))
    assert first == ip_client(peer) and peer not in resolver._direct
    second = resolver.from_wsgi({"REMOTE_ADDR": peer})
    assert second == first and resolver._direct[peer] is second
    assert resolver.resolve(peer, []) is second
    assert resolver.from_asgi(asgi_scope(peer)) is second


def test_a_flood_of_fresh_addresses_keeps_the_clients_that_come_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood of addresses seen once never fills the peer cache: the client
    cached before it is still cached after it, and the flood's Clients are
    not held (the admission set holds their peer strings, bounded)."""
    monkeypatch.setattr(identity, "CACHE_SIZE", 16)
    resolver = ClientResolver()
    regular = resolver.from_wsgi({"REMOTE_ADDR": "192.0.2.1"})
    regular = resolver.from_wsgi({"REMOTE_ADDR": "192.0.2.1"})
    for i in range(1000):
        peer = f"198.51.{i // 256}.{i % 256}"
        assert resolver.from_wsgi({"REMOTE_ADDR": peer}) == ip_client(peer)
        assert len(resolver._once) <= 16
    assert resolver._direct == {"192.0.2.1": regular}
    assert resolver.from_asgi(asgi_scope("192.0.2.1")) is regular


def test_a_header_value_is_cached_from_its_second_request() -> None:
    """A header that needs the walk is cached from its second request on (a
    lone dotted quad needs none and is never cached)."""
    resolver = ClientResolver(TRUSTED)
    header = f"{CLIENT}, 10.0.0.9"
    scope = asgi_scope("10.0.0.1", xff(header))
    other = asgi_scope("10.0.0.1", xff(f"{CLIENT}, 10.0.0.8"))
    assert resolver.from_asgi(scope) == ip_client(CLIENT)
    assert resolver.from_asgi(other) == ip_client(CLIENT)
    assert resolver._walked == {}  # two values, each seen once
    assert resolver.from_asgi(scope) == ip_client(CLIENT)
    assert resolver._walked == {header: ip_client(CLIENT)}


class UnreadableRequest(dict[str, Any]):
    """A scope or environ every read of which raises."""

    def get(self, key: str, default: Any = None) -> Any:
        raise RuntimeError("unreadable")

    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("unreadable")


def test_an_unreadable_scope_or_environ_is_the_unknown_client() -> None:
    """Never a raise (the cache miss path once read a name it had not bound)."""
    resolver = ClientResolver(TRUSTED)
    for resolve in (
        resolver.from_asgi, resolver.from_wsgi,
        resolver.from_asgi_shared, resolver.from_wsgi_shared,
    ):  # fmt: skip
        client = resolve(UnreadableRequest())
        assert client.key == "unknown" and not client.is_ip


def test_long_peer_is_not_cached() -> None:
    resolver = ClientResolver()
    peer = "very-long-peer-name-" + "x" * 1000
    assert resolver.resolve(peer, []) == Client(peer, peer, False)
    assert peer not in resolver._direct


# -- trusted proxies: walking X-Forwarded-For ----------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # One proxy: it appended the client's address.
        (CLIENT, CLIENT),
        # The client sent its own X-Forwarded-For; the leftmost entry is ignored.
        (f"127.0.0.1, {CLIENT}", CLIENT),
        (f"10.0.0.9, {CLIENT}", CLIENT),  # even when it names a trusted proxy
        # Several trusted hops are skipped.
        (f"6.6.6.6, {CLIENT}, 10.0.0.3, 10.0.0.2", CLIENT),
        (f"{CLIENT},10.0.0.3,10.20.30.40", CLIENT),
        # Only trusted proxies: the leftmost one.
        ("10.0.0.5, 10.0.0.3", "10.0.0.5"),
        # Garbage stops the walk at the last trusted hop.
        (f"{CLIENT}, unknown, 10.0.0.3", "10.0.0.3"),
        (f"{CLIENT}, _hidden, 10.0.0.3, 10.0.0.2", "10.0.0.3"),
        (f"{CLIENT}, unknown", PROXY),
        (f"{CLIENT}, 999.1.1.1", PROXY),
        ("garbage", PROXY),
        # Empty list elements are skipped.
        (f"{CLIENT},, 10.0.0.3 ,", CLIENT),
        (" , ", PROXY),
        ("", PROXY),
        # Ports, brackets and mapped addresses in entries.
        ("198.51.100.7:5555, 10.0.0.3:80", CLIENT),
        (f"::ffff:{CLIENT}, [::ffff:10.0.0.3]:1", CLIENT),
    ],
)
def test_xff_walk(header: str, expected: str) -> None:
    resolver = ClientResolver(TRUSTED)
    client = resolver.from_asgi(asgi_scope(PROXY, xff(header)))
    assert client == ip_client(expected)
    assert resolver.from_wsgi({"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": header}) == client
    assert resolver.resolve(PROXY, [header]) == client
    # A second, cached run gives the same answer.
    assert resolver.from_asgi(asgi_scope(PROXY, xff(header))) == client


def test_missing_header_gives_the_proxy() -> None:
    resolver = ClientResolver(TRUSTED)
    assert resolver.from_asgi(asgi_scope(PROXY, [(b"host", b"mail")])) == ip_client(PROXY)
    assert resolver.from_wsgi({"REMOTE_ADDR": PROXY}) == ip_client(PROXY)
    assert resolver.resolve(PROXY, []) == ip_client(PROXY)


def test_xff_ipv6_client_and_proxies() -> None:
    resolver = ClientResolver(TRUSTED)
    header = "2001:db8:1:2::99, [2001:db8:ffff::2]:443"
    client = resolver.resolve("2001:db8:ffff::1", [header])
    assert client == Client("2001:db8:1:2::/64", "2001:db8:1:2::99", True)


def test_mapped_peer_is_trusted() -> None:
    resolver = ClientResolver(TRUSTED)
    assert resolver.resolve("::ffff:10.0.0.1", [CLIENT]) == ip_client(CLIENT)


def test_same_header_behind_different_proxies() -> None:
    # The walk cache is keyed by header value; "the peer" must not leak.
    resolver = ClientResolver(TRUSTED)
    assert resolver.resolve("10.0.0.1", ["unknown"]) == ip_client("10.0.0.1")
    assert resolver.resolve("10.0.0.2", ["unknown"]) == ip_client("10.0.0.2")
    assert resolver.resolve("203.0.113.1", ["unknown"]) == ip_client("203.0.113.1")


def test_multiple_header_lines_are_combined_in_order() -> None:
    resolver = ClientResolver(TRUSTED)
    lines = xff("6.6.6.6", CLIENT, "203.0.113.5")
    assert resolver.from_asgi(asgi_scope(PROXY, lines)) == ip_client("203.0.113.5")
    lines = xff("6.6.6.6, 203.0.113.5", CLIENT)
    assert resolver.from_asgi(asgi_scope(PROXY, lines)) == ip_client(CLIENT)
    lines = xff(f"6.6.6.6, {CLIENT}", "", "10.0.0.3")
    assert resolver.from_asgi(asgi_scope(PROXY, lines)) == ip_client(CLIENT)
    assert resolver.resolve(PROXY, ["6.6.6.6", CLIENT, "10.0.0.3"]) == ip_client(CLIENT)


def test_only_the_configured_header_is_read() -> None:
    resolver = ClientResolver(TRUSTED)  # x-forwarded-for
    headers = [
        (b"x-real-ip", b"203.0.113.1"),
        (b"forwarded", b"for=203.0.113.2"),
        (b"x-forwarded-for", CLIENT.encode()),
        (b"x-forwarded-for-not", b"203.0.113.3"),
    ]
    assert resolver.from_asgi(asgi_scope(PROXY, headers)) == ip_client(CLIENT)
    environ = {
        "REMOTE_ADDR": PROXY,
        "HTTP_X_REAL_IP": "203.0.113.1",
        "HTTP_FORWARDED": "for=203.0.113.2",
        "HTTP_X_FORWARDED_FOR": CLIENT,
    }
    assert resolver.from_wsgi(environ) == ip_client(CLIENT)


def test_resolve_accepts_a_single_string() -> None:
    resolver = ClientResolver(TRUSTED)
    assert resolver.resolve(PROXY, f"6.6.6.6, {CLIENT}") == ip_client(CLIENT)


def test_header_bytes_are_latin1() -> None:
    resolver = ClientResolver(TRUSTED)
    headers = [(b"x-forwarded-for", b"\xff\xfe\x00garbage, " + CLIENT.encode())]
    assert resolver.from_asgi(asgi_scope(PROXY, headers)) == ip_client(CLIENT)
    headers = [(b"x-forwarded-for", CLIENT.encode() + b", \xc3\xa9")]
    assert resolver.from_asgi(asgi_scope(PROXY, headers)) == ip_client(PROXY)


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-forwarded-for", "198.51.100.7")],  # str value
        [(b"x-forwarded-for",)],
        [b"x-forwarded-for"],
        None,
        42,
    ],
)
def test_malformed_asgi_headers_give_the_proxy(headers: Any) -> None:
    scope = {"type": "http", "client": (PROXY, 1), "headers": headers}
    assert ClientResolver(TRUSTED).from_asgi(scope) == ip_client(PROXY)


# -- bounded work ---------------------------------------------------------------


def test_hop_limit() -> None:
    resolver = ClientResolver(TRUSTED)
    hops = [f"10.0.1.{i}" for i in range(MAX_HOPS + 8)]
    # Too many trusted hops: give up at the last one within the limit.
    header = ", ".join([CLIENT, *hops])
    assert resolver.resolve(PROXY, [header]) == ip_client(hops[-MAX_HOPS])
    # One entry too many: the client is just beyond reach.
    header = ", ".join([CLIENT, *hops[:MAX_HOPS]])
    assert resolver.resolve(PROXY, [header]) == ip_client(hops[0])
    # Exactly at the limit, the walk still reaches the client.
    header = ", ".join([CLIENT, *hops[: MAX_HOPS - 1]])
    assert resolver.resolve(PROXY, [header]) == ip_client(CLIENT)
    # A header of MAX_HOPS trusted proxies resolves to the leftmost.
    header = ", ".join(hops[:MAX_HOPS])
    assert resolver.resolve(PROXY, [header]) == ip_client(hops[0])


def test_empty_elements_count_towards_the_hop_limit() -> None:
    resolver = ClientResolver(TRUSTED)
    assert resolver.resolve(PROXY, [CLIENT + "," * (MAX_HOPS - 1)]) == ip_client(CLIENT)
    assert resolver.resolve(PROXY, [CLIENT + "," * MAX_HOPS]) == ip_client(PROXY)


def test_header_length_limit() -> None:
    resolver = ClientResolver(TRUSTED)
    # Whitespace-only elements are skipped, so the walk reaches the leftmost
    # entry as long as the header is within the length limit...
    within = "110.0.0.5," + " " * (MAX_HEADER_LENGTH - 100) + ",10.0.0.3"
    assert resolver.resolve(PROXY, [within]) == ip_client("110.0.0.5")
    # ...but past it, the cut falls inside "110.0.0.5", leaving "10.0.0.5":
    # a partial entry must never be believed, so the walk stops before it.
    pad = MAX_HEADER_LENGTH + 1 - len("110.0.0.5,") - len(",10.0.0.3")
    beyond = "110.0.0.5," + " " * pad + ",10.0.0.3"
    assert len(beyond) == MAX_HEADER_LENGTH + 1
    assert resolver.resolve(PROXY, [beyond]) == ip_client("10.0.0.3")


@pytest.mark.parametrize(
    "header",
    [
        "6.6.6.6" + "," * 1_000_000 + f"{CLIENT}, 10.0.0.3",
        "x" * 1_000_000 + f", {CLIENT}, 10.0.0.3",
        "6.6.6.6, " * 200_000 + f"{CLIENT}, 10.0.0.3",
    ],
)
def test_huge_headers(header: str) -> None:
    resolver = ClientResolver(TRUSTED)
    headers = [(b"x-forwarded-for", header.encode())]
    assert resolver.from_asgi(asgi_scope(PROXY, headers)) == ip_client(CLIENT)
    assert resolver.from_wsgi({"REMOTE_ADDR": PROXY, "HTTP_X_FORWARDED_FOR": header}) == (
        ip_client(CLIENT)
    )


def test_huge_single_entry_is_garbage() -> None:
    resolver = ClientResolver(TRUSTED)
    assert resolver.resolve(PROXY, ["1" * 1_000_000]) == ip_client(PROXY)
    assert resolver.resolve(PROXY, [" " * 500 + CLIENT]) == ip_client(PROXY)


# -- Forwarded (RFC 7239) -------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"for={CLIENT}", CLIENT),
        (f"for={CLIENT};proto=https;by=10.0.0.1", CLIENT),
        (f"proto=https; For = {CLIENT} ;host=mail", CLIENT),
        (f'FOR="{CLIENT}:8080"', CLIENT),
        ('for="[2001:db8:1:2::7]:4711"', "2001:db8:1:2::7"),
        ('for="[2001:db8:1:2::7]"', "2001:db8:1:2::7"),
        (f"for=6.6.6.6, for={CLIENT}, for=10.0.0.3", CLIENT),
        (f"for={CLIENT}, for=10.0.0.3;by=10.0.0.1", CLIENT),
        # Obfuscated identifiers and "unknown" are garbage.
        ("for=_hidden, for=10.0.0.3", "10.0.0.3"),
        ("for=_hidden", PROXY),
        ("for=unknown", PROXY),
        (f'for="{CLIENT}:_port"', CLIENT),
        # Elements without for= are garbage.
        ("proto=https", PROXY),
        (f"for={CLIENT}, proto=https", PROXY),
        (f"for={CLIENT}, by=10.0.0.3", PROXY),
        (f"for=6.6.6.6, {CLIENT}", PROXY),  # a bare address is not a for=
        # A repeated for= makes the element invalid.
        (f"for=6.6.6.6;for={CLIENT}", PROXY),
        # A client's quoted comma cannot shift our proxy's element.
        (f'for="6.6.6.6,for=1.1.1.1", for={CLIENT}', CLIENT),
        # Nor can an unterminated quote swallow it.
        (f'for=", for={CLIENT}', CLIENT),
        # Empty elements are skipped.
        (f"for={CLIENT},, for=10.0.0.3,", CLIENT),
    ],
)
def test_forwarded(header: str, expected: str) -> None:
    resolver = ClientResolver(TRUSTED, forwarded_header="forwarded")
    expected_client = resolver.resolve(expected, [])
    assert expected_client.address == expected
    headers = [(b"forwarded", header.encode())]
    assert resolver.from_asgi(asgi_scope(PROXY, headers)) == expected_client
    assert resolver.from_wsgi({"REMOTE_ADDR": PROXY, "HTTP_FORWARDED": header}) == (expected_client)
    # X-Forwarded-For is not read when Forwarded is configured.
    spoof = asgi_scope(PROXY, [*headers, (b"x-forwarded-for", b"203.0.113.200")])
    assert resolver.from_asgi(spoof) == expected_client


def test_forwarded_ignored_from_untrusted_peer() -> None:
    resolver = ClientResolver(TRUSTED, forwarded_header="forwarded")
    scope = asgi_scope("203.0.113.66", [(b"forwarded", b"for=127.0.0.1")])
    assert resolver.from_asgi(scope) == ip_client("203.0.113.66")


# -- X-Real-IP ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([CLIENT], CLIENT),
        ([f" {CLIENT} "], CLIENT),
        (["[2001:db8::5]:80"], "2001:db8::5"),
        (["10.0.0.3"], "10.0.0.3"),  # a trusted proxy: all entries trusted
        ([f"6.6.6.6, {CLIENT}"], PROXY),  # a list: not what our proxy wrote
        (["6.6.6.6", CLIENT], PROXY),  # several lines: same
        (["", CLIENT], CLIENT),  # an empty line is no value
        ([f"{CLIENT},"], CLIENT),  # nor is an empty element
        (["unknown"], PROXY),
        ([""], PROXY),
        ([], PROXY),
    ],
)
def test_x_real_ip(lines: list[str], expected: str) -> None:
    resolver = ClientResolver(TRUSTED, forwarded_header="x-real-ip")
    expected_client = resolver.resolve(expected, [])
    headers = [(b"x-real-ip", line.encode()) for line in lines]
    assert resolver.from_asgi(asgi_scope(PROXY, headers)) == expected_client
    environ = {"REMOTE_ADDR": PROXY}
    if lines:
        environ["HTTP_X_REAL_IP"] = ", ".join(lines)
    assert resolver.from_wsgi(environ) == expected_client
    assert resolver.resolve(PROXY, lines) == expected_client


def test_x_real_ip_ignored_from_untrusted_peer() -> None:
    resolver = ClientResolver(TRUSTED, forwarded_header="x-real-ip")
    scope = asgi_scope("203.0.113.66", [(b"x-real-ip", b"127.0.0.1")])
    assert resolver.from_asgi(scope) == ip_client("203.0.113.66")


# -- properties -----------------------------------------------------------------

HEADER_KINDS = ["x-forwarded-for", "forwarded", "x-real-ip"]
ENV_KEYS = {
    "x-forwarded-for": "HTTP_X_FORWARDED_FOR",
    "forwarded": "HTTP_FORWARDED",
    "x-real-ip": "HTTP_X_REAL_IP",
}

peers = st.one_of(
    st.none(),
    st.text(max_size=60),
    st.ip_addresses().map(str),
    st.sampled_from(["10.0.0.1", "10.255.0.9", "2001:db8:ffff::1", "::ffff:10.0.0.1"]),
)
header_bytes = st.lists(st.binary(max_size=200), max_size=4)


def expected_peer(peer: str | None) -> Client:
    if peer is None or is_unix_peer(peer):
        return UNIX
    canon = canonical_ip(peer)
    if canon is None:
        return Client(peer, peer, False)
    return ClientResolver().resolve(canon, [])


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=300)
@given(peer=peers, lines=header_bytes, kind=st.sampled_from(HEADER_KINDS))
def test_arbitrary_input_never_raises(peer: str | None, lines: list[bytes], kind: str) -> None:
    resolver = ClientResolver(TRUSTED, forwarded_header=kind)
    headers = [(kind.encode(), line) for line in lines]
    scope = {"type": "http", "client": None if peer is None else (peer, 1), "headers": headers}
    client = resolver.from_asgi(scope)
    assert isinstance(client, Client)
    texts = [line.decode("latin-1") for line in lines]
    assert resolver.resolve(peer, texts) == client
    canon = canonical_ip(peer) if peer else None
    if canon is None or canon not in resolver.trusted_proxies:
        assert client == expected_peer(peer)
    else:
        # Behind a trusted proxy: the proxy or some address from the header.
        assert client.is_ip
        candidates = {canonical_ip(piece) for piece in re.split(r"[,;=]", ",".join(texts))}
        assert client.address == canon or client.address in candidates


@given(
    peer=peers,
    lines=st.lists(st.text(max_size=80), max_size=4),
    kind=st.sampled_from(HEADER_KINDS),
)
def test_untrusted_peer_always_yields_the_peer(
    peer: str | None, lines: list[str], kind: str
) -> None:
    resolver = ClientResolver(TRUSTED, forwarded_header=kind)
    canon = canonical_ip(peer) if peer else None
    assume(canon is None or canon not in resolver.trusted_proxies)
    expected = expected_peer(peer)
    assert resolver.resolve(peer, lines) == expected
    environ: dict[str, Any] = {ENV_KEYS[kind]: ", ".join(lines)}
    if peer is not None:
        environ["REMOTE_ADDR"] = peer
    assert resolver.from_wsgi(environ) == expected


@given(st.binary(max_size=80), st.lists(st.binary(max_size=80), max_size=3))
def test_arbitrary_byte_peers_never_raise(peer: bytes, lines: list[bytes]) -> None:
    resolver = ClientResolver(["0.0.0.0/0", "::/0"])
    scope = {
        "type": "http",
        "client": (peer, 1),
        "headers": xff(*(b.decode("latin-1") for b in lines)),
    }
    client = resolver.from_asgi(scope)
    assert isinstance(client, Client)
    assert client == resolver.resolve(peer.decode("latin-1"), [b.decode("latin-1") for b in lines])


header_entries = st.one_of(
    st.sampled_from(
        [
            CLIENT,
            "10.0.0.3",
            "10.0.0.4:80",
            "2001:db8:ffff::2",
            "[2001:db8:1::5]:443",
            "::ffff:198.51.100.8",
            "unknown",
            "_hidden",
            "",
            " ",
            "garbage",
        ]
    ),
    st.ip_addresses().map(str),
)


def render(kind: str, entries: list[str]) -> str:
    if kind == "forwarded":
        return ", ".join(f'for="{e}"' if e.strip() else e for e in entries)
    return ", ".join(entries)


@given(
    peer=st.sampled_from([PROXY, "10.9.9.9", "2001:db8:ffff::1", "203.0.113.9", "testclient"]),
    lines=st.lists(st.lists(header_entries, max_size=5), max_size=3),
    kind=st.sampled_from(HEADER_KINDS),
)
def test_asgi_and_wsgi_agree(peer: str, lines: list[list[str]], kind: str) -> None:
    resolver = ClientResolver(TRUSTED, forwarded_header=kind)
    texts = [render(kind, entries) for entries in lines]
    scope = asgi_scope(peer, [(kind.encode(), t.encode("latin-1")) for t in texts])
    environ = {"REMOTE_ADDR": peer}
    if texts:
        environ[ENV_KEYS[kind]] = ", ".join(texts)
    from_asgi = resolver.from_asgi(scope)
    assert resolver.from_wsgi(environ) == from_asgi
    assert resolver.resolve(peer, texts) == from_asgi
    # A fresh resolver (cold caches) agrees with the warm one.
    assert ClientResolver(TRUSTED, forwarded_header=kind).from_wsgi(environ) == from_asgi


@given(
    client=st.ip_addresses().map(str),
    proxies=st.lists(st.sampled_from(["10.0.0.2", "10.1.2.3", "2001:db8:ffff::9"]), max_size=5),
    injected=st.lists(st.ip_addresses().map(str), max_size=3),
)
def test_walk_finds_the_real_client(client: str, proxies: list[str], injected: list[str]) -> None:
    """Whatever the client injects on the left, the first untrusted hop wins."""
    resolver = ClientResolver(TRUSTED)
    canon = canonical_ip(client)
    assert canon is not None
    assume(canon not in resolver.trusted_proxies)
    header = ", ".join([*injected, client, *proxies])
    result = resolver.resolve(PROXY, [header])
    assert result.address == canon
    assert result == resolver.resolve(client, [])


# -- issue #18's fast paths, pinned to the general ones ------------------------

_DOTTED = st.one_of(
    st.ip_addresses(v=4).map(str),
    # near misses: leading zeros, ports, spaces, short forms, huge octets, NULs
    st.builds(
        lambda parts, sep, tail: sep.join(parts) + tail,
        st.lists(st.from_regex(r"\A[0-9]{1,4}\Z"), min_size=1, max_size=5),
        st.sampled_from([".", "..", ",", " ."]),
        st.sampled_from(["", " ", ":80", "\x00", "%eth0", "\n", "."]),
    ),
    st.text(alphabet="0123456789.:xf[] \t\x00", max_size=20),
    st.ip_addresses(v=6).map(str),
)
_ENTRIES = st.lists(
    st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
        st.builds(
            lambda a, n: str(ipaddress.ip_network(f"{a}/{n}", strict=False)),
            st.ip_addresses(v=4),
            st.integers(min_value=22, max_value=32),
        ),
        st.builds(
            lambda a, n: str(ipaddress.ip_network(f"{a}/{n}", strict=False)),
            st.ip_addresses(v=6),
            st.integers(min_value=118, max_value=128),
        ),
    ),
    max_size=4,
)


@settings(max_examples=400, deadline=None)
@given(peer=_DOTTED, trusted=_ENTRIES)
def test_a_peers_client_and_trust_are_those_of_the_general_path(
    peer: str, trusted: list[str]
) -> None:
    resolver = ClientResolver(trusted)
    canon = identity.canonical_ip(peer)
    if canon is not None:
        expected = (resolver._client_for(canon), canon in resolver.trusted_proxies)
    elif peer == "" or identity.is_unix_peer(peer):
        expected = (identity.UNIX_CLIENT, False)
    else:
        expected = (Client(peer, peer, False), False)
    assert resolver._peer(peer) == expected
    assert resolver._peer(peer) == expected  # and again, from the cache
    assert type(resolver._peer(peer)[0]) is Client


@settings(max_examples=400, deadline=None)
@given(entries=_ENTRIES, probe=st.one_of(st.ip_addresses().map(str), _DOTTED))
def test_has_canonical_is_membership_of_the_canonical_address(
    entries: list[str], probe: str
) -> None:
    addresses = AddressSet(entries)
    canon = identity.canonical_ip(probe)
    assume(canon is not None)
    assert addresses.has_canonical(canon) == (probe in addresses)
    # and for the entries' own addresses and the ones just beside them
    for entry in entries:
        net = ipaddress.ip_network(entry, strict=False)
        for number in (int(net.network_address) - 1, int(net.broadcast_address) + 1):
            if 0 <= number < 2**net.max_prefixlen:
                text = identity.canonical_ip(str(ipaddress.ip_address(number)))
                assert text is not None
                assert addresses.has_canonical(text) == (text in addresses)
        first = identity.canonical_ip(str(net.network_address))
        assert first is not None and addresses.has_canonical(first)


@settings(max_examples=300, deadline=None)
@given(
    peer=_DOTTED,
    trusted=_ENTRIES,
    forwarded=st.lists(st.one_of(st.ip_addresses().map(str), _DOTTED), max_size=3),
)
def test_every_entry_point_answers_as_the_general_path(
    peer: str, trusted: list[str], forwarded: list[str]
) -> None:
    class General(ClientResolver):
        __slots__ = ()

        def _fresh_quad(self, peer: object) -> Client | None:
            return None

        def _lone_quad(self, joined: str) -> Client | None:
            return None

    fast = ClientResolver(trusted)
    slow = General(trusted)
    header = ", ".join(forwarded)
    scope = {
        "type": "http",
        "client": (peer, 1234),
        "headers": [(b"x-forwarded-for", header.encode())],
    }
    environ = {"REMOTE_ADDR": peer, "HTTP_X_FORWARDED_FOR": header}
    for _ in range(2):  # first from the parser, then from the cache
        expected = slow.from_asgi(dict(scope))
        assert fast.from_asgi(dict(scope)) == expected
        assert fast.from_asgi_shared(dict(scope)) == expected
        assert fast.from_wsgi(dict(environ)) == slow.from_wsgi(dict(environ)) == expected
        assert fast.from_wsgi_shared(dict(environ)) == expected
        assert fast.resolve(peer, [header]) == expected


_HEADER_VALUES = st.one_of(
    _DOTTED,
    st.ip_addresses().map(str),
    st.sampled_from(["", " ", "1.2.3.4 ", " 1.2.3.4", "01.2.3.4", "1.2.3.4:80", "1.2.3",
                     "255.255.255.255", "0.0.0.0", "1.2.3.4,", ",1.2.3.4", "1.2.3.4\x00",
                     "\uff11.2.3.4", "for=1.2.3.4", '"1.2.3.4"', "[1.2.3.4]", "unknown"]),
    st.text(max_size=20),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    value=_HEADER_VALUES,
    trusted=_ENTRIES,
    header=st.sampled_from(["x-forwarded-for", "x-real-ip", "forwarded"]),
)
def test_a_lone_dotted_quad_is_walked_as_the_general_path_walks_it(
    value: str, trusted: list[str], header: str
) -> None:
    # _lone_quad answers only a header holding one canonical dotted quad, and
    # then as the walk does (the entry is the client, trusted proxy or not)
    class General(ClientResolver):
        __slots__ = ()

        def _lone_quad(self, joined: str) -> Client | None:
            return None

    fast = ClientResolver(trusted, forwarded_header=header)
    slow = General(trusted, forwarded_header=header)
    quick = fast._lone_quad(value)
    proxy = fast._client_for("192.0.2.254")
    for _ in range(2):  # first walked, then from the cache
        assert fast._walk(proxy, [value]) == slow._walk(proxy, [value])
    if quick is not None:
        assert header != "forwarded"
        assert quick == slow._walk(proxy, [value]) == Client(value, value, True, ())


def test_a_lone_dotted_quad_skips_the_walk_only_where_it_may() -> None:
    xff = ClientResolver(["127.0.0.1"])
    assert xff._lone_quad("198.51.100.7") == Client("198.51.100.7", "198.51.100.7", True, ())
    assert xff._lone_quad("127.0.0.1") == Client("127.0.0.1", "127.0.0.1", True, ())
    for other in (" 198.51.100.7", "198.51.100.07", "198.51.100.7,1.2.3.4", "::1", "unknown", ""):
        assert xff._lone_quad(other) is None
    assert ClientResolver(["127.0.0.1"], forwarded_header="forwarded")._lone_quad("1.2.3.4") is None
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    assert xff.from_wsgi(environ).key == "198.51.100.7"
    assert xff.from_wsgi(environ).key == "198.51.100.7"  # the proxy now known: no fresh-quad try
