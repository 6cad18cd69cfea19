"""Who is the client (issue #13): unix-socket peers, IPv6 wider than /64, NAT64.

Each attack from the issue runs here through the real ASGI and WSGI stacks and
must fail: rotating one /64 per request inside one /48 is stopped at the wider
limits (DosFilter and InvalidLoginFilter) while a neighbour /48 is untouched;
an admin sees and lifts the wider block; addresses that carry an IPv4 address
are that address; a unix-socket peer is never silently one key.  The nginx
stack over a real unix socket is in ``test_nginx_unix.py``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_dos import STACKS, build
from test_login import KINDS, Events, fail, zimbra_like

from mailguard import FakeClock, MemoryStore
from mailguard.admin import keys_to_lift
from mailguard.cli import main
from mailguard.identity import UNIX_CLIENT, Client, ClientResolver, canonical_ip
from mailguard.policies import DosPolicy, InvalidLoginPolicy

# ------------------------------------------------------------ the address parser


def rotate_56s(count: int, base: str = "2001:db8:1") -> list[str]:
    """One address in each of ``count`` different /56s (and so /64s) of one /48."""
    return [f"{base}:{i << 8:x}::1" for i in range(count)]


def rotate_64s(count: int, base: str = "2001:db8:1:7") -> list[str]:
    """One address in each of ``count`` different /64s of one /56."""
    return [f"{base}{i:02x}::1" for i in range(count)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64:ff9b::c000:201", "192.0.2.1"),
        ("64:ff9b::192.0.2.1", "192.0.2.1"),
        ("[64:ff9b::c000:201]:443", "192.0.2.1"),
        ("::192.0.2.1", "192.0.2.1"),
        ("::c000:201", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        # ::/104 is not IPv4-compatible: the unspecified and loopback addresses stay
        ("::", "::"),
        ("::1", "::1"),
        ("::0.0.255.255", "::ffff"),
        # local-use NAT64 (RFC 8215): stays IPv6
        ("64:ff9b:1::c000:201", "64:ff9b:1::c000:201"),
        # outside the /96: ordinary IPv6
        ("64:ff9b:0:1::c000:201", "64:ff9b:0:1::c000:201"),
    ],
)
def test_addresses_carrying_ipv4(text: str, expected: str) -> None:
    assert canonical_ip(text) == expected


def test_nat64_clients_are_told_apart() -> None:
    resolver = ClientResolver(ipv6_wider=(56, 48))
    a = resolver.resolve("64:ff9b::c000:201", [])
    b = resolver.resolve("64:ff9b::c633:6407", [])
    assert a == Client("192.0.2.1", "192.0.2.1", True)
    assert b.key == "198.51.100.7" and b.wider == ()
    # the local-use prefix: each address its own key, no wider networks
    c = resolver.resolve("64:ff9b:1::c000:201", [])
    d = resolver.resolve("64:ff9b:1::c000:202", [])
    assert c.key == "64:ff9b:1::c000:201" != d.key
    assert c.wider == d.wider == ()


def test_trusted_proxies_written_in_nat64_form_match_ipv4() -> None:
    resolver = ClientResolver(["64:ff9b::a00:0/104"])
    assert "10.1.2.3" in resolver.trusted_proxies
    assert resolver.resolve("64:ff9b::10.0.0.1", ["192.0.2.9"]).key == "192.0.2.9"
    # a wide IPv6 network holding the compatible range grants no IPv4 trust
    assert "10.1.2.3" not in ClientResolver(["::/64"]).trusted_proxies


ipv4s = st.ip_addresses(v=4)
texts = st.one_of(
    st.text(max_size=60),
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: ip.exploded),
    ipv4s.map(lambda ip: f"64:ff9b::{ip}"),
    ipv4s.map(lambda ip: f"[::{ip}]:80"),
)


@given(texts)
def test_parser_never_raises_and_is_idempotent(text: str) -> None:
    canon = canonical_ip(text)
    assert canon is None or isinstance(canon, str)
    if canon is not None:
        assert canonical_ip(canon) == canon
        ipaddress.ip_address(canon)  # a plain address, no port, brackets or zone


@given(ipv4s)
def test_every_form_of_one_ipv4_address_agrees(ip: ipaddress.IPv4Address) -> None:
    packed = int(ip)
    forms = [
        str(ip),
        f"::ffff:{ip}",
        f"64:ff9b::{ip}",
        str(ipaddress.IPv6Address((0x64FF9B << 96) | packed)),
        f"[64:ff9b::{ip}]:8080",
        f'"[::ffff:{ip}]"',
    ]
    if packed >> 24:  # outside 0.0.0.0/8, the IPv4-compatible form carries it too
        forms += [f"::{ip}", str(ipaddress.IPv6Address(packed))]
    assert {canonical_ip(f) for f in forms} == {str(ip)}


@given(st.ip_addresses(v=6))
def test_wider_keys_hold_the_client(ip: ipaddress.IPv6Address) -> None:
    client = ClientResolver(ipv6_wider=(48, 56)).resolve(str(ip), [])
    if not client.address.count(":") or client.address.startswith("64:ff9b:1:"):
        assert client.wider == ()  # carried IPv4, or local-use NAT64
        return
    assert len(client.wider) == 2
    for key, prefix in zip(client.wider, (56, 48), strict=True):
        network = ipaddress.ip_network(key)
        assert network.prefixlen == prefix and ip in network
        assert str(network) == key  # the canonical spelling admins see


@pytest.mark.parametrize(
    "wider", ["56", [56], [(56, 0.5)], [(8, 4.0)], [(56, 4.0), (56, 8.0)], [(56.0, 4)], None]
)
def test_bad_ipv6_wider_names_the_option(wider: Any) -> None:
    with pytest.raises(ValueError, match=r"^ipv6_wider: "):
        DosPolicy(ipv6_wider=wider)


def test_wider_prefixes_not_wider_than_ipv6_prefix_are_left_out() -> None:
    policy = DosPolicy(ipv6_prefix=48)
    assert policy.resolver.ipv6_wider == () and policy.wider_factors == ()
    client = policy.resolver.resolve("2001:db8:1:2::1", [])
    assert client.key == "2001:db8:1::/48" and client.wider == ()
    off = DosPolicy(ipv6_wider=())
    assert off.resolver.resolve("2001:db8:1:2::1", []).wider == ()
    assert DosPolicy().resolver.resolve("192.0.2.1", []).wider == ()


# ---------------------------------------------------------------- DosFilter
@pytest.fixture(params=sorted(STACKS))
def dos_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_dos_one_64_per_request_inside_one_48_is_stopped(dos_kind: str) -> None:
    store = MemoryStore(clock=FakeClock(1_700_000_000.0))
    stack = build(dos_kind, max_requests_per_sec=2, store=store)
    # the /48 allows 2 x 16 = 32 requests a second, whatever /64 or /56 they use
    codes = [stack.request(client=a)[0] for a in rotate_56s(40)]
    assert codes == [200] * 32 + [503] * 8
    # a neighbour /48 is untouched
    assert stack.request(client="2001:db8:2::1")[0] == 200


def test_dos_one_64_per_request_inside_one_56_is_stopped(dos_kind: str) -> None:
    store = MemoryStore(clock=FakeClock(1_700_000_000.0))
    stack = build(dos_kind, max_requests_per_sec=2, store=store)
    codes = [stack.request(client=a)[0] for a in rotate_64s(10)]
    assert codes == [200] * 8 + [503] * 2  # the /56: 2 x 4
    assert stack.request(client="2001:db8:1:800::1")[0] == 200  # another /56 of the /48


def test_dos_a_flooding_64_does_not_spend_its_48s_budget(dos_kind: str) -> None:
    store = MemoryStore(clock=FakeClock(1_700_000_000.0))
    stack = build(dos_kind, max_requests_per_sec=2, store=store)
    flood = [stack.request(client="2001:db8:1:700::1")[0] for _ in range(30)]
    assert flood == [200, 200] + [503] * 28
    # its refused requests were never counted in the /56: 3 neighbours get their 2 each
    neighbours = rotate_64s(4)[1:]
    assert [stack.request(client=a)[0] for a in neighbours for _ in range(2)] == [200] * 6


def test_dos_wider_refusal_logs_the_network(caplog: pytest.LogCaptureFixture) -> None:
    policy = DosPolicy(max_requests_per_sec=1, ipv6_wider=((48, 2.0),))
    clients = [policy.resolver.resolve(a, []) for a in rotate_56s(3)]
    with caplog.at_level(logging.WARNING, logger="mailguard"):
        verdicts = [policy.check_client(c) for c in clients]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert verdicts[2].key == "2001:db8:1::/48" and verdicts[2].limit == 2
    assert "key=2001:db8:1::/48" in caplog.text


# ------------------------------------------------------- InvalidLoginFilter
@pytest.fixture(params=KINDS)
def login_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_login_one_64_per_guess_inside_one_48_is_blocked(login_kind: str) -> None:
    events = Events()
    stack = zimbra_like(login_kind, events, max_failed_logins=3)
    # the /56s are rotated too; the /48 allows 3 x 16 = 48 failures
    statuses = [fail(stack, ip=a).status for a in rotate_56s(60)]
    assert statuses == [401] * 48 + [503] * 12
    assert len(stack.calls) == 48
    blocked = [e for e in events if e.action == "blocked"]
    assert [e.client for e in blocked] == ["2001:db8:1::/48"]
    # the whole /48 is refused, even a /64 that never failed
    assert fail(stack, ip="2001:db8:1:ff00::9").status == 503
    # a neighbour /48 is untouched
    assert fail(stack, ip="2001:db8:2::1").status == 401


def test_login_one_64_per_guess_inside_one_56_is_blocked(login_kind: str) -> None:
    stack = zimbra_like(login_kind, max_failed_logins=3)
    statuses = [fail(stack, ip=a).status for a in rotate_64s(14)]
    assert statuses == [401] * 12 + [503] * 2  # the /56: 3 x 4
    assert fail(stack, ip="2001:db8:1:800::1").status == 401  # another /56


def test_login_ipv4_and_a_lone_64_count_as_before(login_kind: str) -> None:
    stack = zimbra_like(login_kind, max_failed_logins=3)
    assert [fail(stack, ip="2001:db8:1:2::1").status for _ in range(4)] == [401] * 3 + [503]
    assert [fail(stack, ip="192.0.2.1").status for _ in range(4)] == [401] * 3 + [503]
    assert fail(stack, ip="2001:db8:1:3::1").status == 401  # the /64 next door
    keys = {b.key for b in stack.store.blocks()}
    assert keys == {"2001:db8:1:2::/64", "192.0.2.1"}


def test_login_wider_block_refuses_every_request_under_block_scope_all() -> None:
    stack = zimbra_like("wsgi", max_failed_logins=1, block_scope="all", ipv6_wider=((48, 2.0),))
    assert fail(stack, ip="2001:db8:1:1::1").status == 401
    assert fail(stack, ip="2001:db8:1:2::1").status == 401  # the /48's second: blocked
    assert stack.request("GET", "/inbox", ip="2001:db8:1:3::1").status == 503
    assert stack.request("GET", "/inbox", ip="2001:db8:2::1").status == 200


def test_login_slots_given_back_when_a_wider_network_refuses() -> None:
    store = MemoryStore(clock=FakeClock(1_700_000_000.0))
    policy = InvalidLoginPolicy(store=store, max_failed_logins=2, ipv6_wider=((48, 1.0),))
    store.block("login", "2001:db8:1::/48", 600, "admin")
    refused = policy.begin("2001:db8:1:2::1", "alice")
    assert not refused.allowed and refused.key == "2001:db8:1::/48"
    # the /64's slot was given back: once the block is lifted, two attempts fit
    store.unblock("2001:db8:1::/48")
    tickets = [policy.begin("2001:db8:1:2::1", "alice") for _ in range(2)]
    assert all(t.allowed for t in tickets)


# -------------------------------------------------------------- the admin
def test_admin_sees_and_lifts_the_wider_block(capsys: pytest.CaptureFixture[str]) -> None:
    stack = zimbra_like("asgi", max_failed_logins=1, ipv6_wider=((48, 2.0),))
    for address in ("2001:db8:1:1::1", "2001:db8:1:2::1"):
        fail(stack, ip=address)
    assert main(["blocks"], store=stack.store) == 0
    listing = capsys.readouterr().out
    assert "2001:db8:1::/48" in listing
    # an address inside it names the block too
    assert "2001:db8:1::/48" in keys_to_lift(stack.store.blocks(), "2001:db8:1:99::5")
    assert main(["unblock", "2001:db8:1::/48"], store=stack.store) == 0
    assert "2001:db8:1::/48" not in {b.key for b in stack.store.blocks()}
    assert fail(stack, ip="2001:db8:1:3::1").status == 401


# ------------------------------------------------------ unix-socket peers
def test_unix_peers_share_one_key_and_say_what_to_set(
    caplog: pytest.LogCaptureFixture,
) -> None:
    resolver = ClientResolver(["10.0.0.0/8"])
    with caplog.at_level(logging.WARNING, logger="mailguard"):
        for peer in (None, "", "<local>", "/run/app.sock", None):
            assert resolver.resolve(peer, ["192.0.2.1"]) == UNIX_CLIENT
    warnings = [r for r in caplog.records if "unix socket" in r.getMessage()]
    assert len(warnings) == 1  # once per resolver
    assert 'trusted_proxies=["unix"]' in warnings[0].getMessage()


def test_trusted_unix_peers_have_their_header_believed() -> None:
    resolver = ClientResolver(["unix", "10.0.0.0/8"])
    assert resolver.trust_unix and "unix" in repr(resolver)
    assert resolver.resolve(None, ["192.0.2.1"]).key == "192.0.2.1"
    assert resolver.resolve("", ["203.0.113.9, 192.0.2.2"]).key == "192.0.2.2"
    scope = {"client": None, "headers": [(b"x-forwarded-for", b"192.0.2.3")]}
    assert resolver.from_asgi(scope).key == "192.0.2.3"
    assert resolver.from_wsgi({"HTTP_X_FORWARDED_FOR": "2001:db8::1"}).key == "2001:db8::/64"
    assert resolver.from_wsgi({"REMOTE_ADDR": "<local>", "HTTP_X_FORWARDED_FOR": "x"}) == (
        UNIX_CLIENT
    )
    # an IP peer is still trusted only when listed
    assert resolver.resolve("192.0.2.50", ["192.0.2.1"]).key == "192.0.2.50"
    # "unix" is a spelling of its own, not an address: other sets refuse it
    with pytest.raises(ValueError, match=r"^safe_ips: 'unix'"):
        DosPolicy(safe_ips=["unix"])


def test_unix_entry_is_part_of_the_shared_settings() -> None:
    a = ClientResolver.shared(["10.0.0.0/8"])
    b = ClientResolver.shared([" UNIX ", "10.0.0.0/8"])
    assert a is not b and b is ClientResolver.shared(["10.0.0.0/8", "unix"])


def test_a_dos_block_behind_a_unix_socket_proxy_is_per_client(dos_kind: str) -> None:
    store = MemoryStore(clock=FakeClock(1_700_000_000.0))
    stack = build(dos_kind, max_requests_per_sec=1, trusted_proxies=["unix"], store=store)
    sock = "/run/mailguard.sock"  # the peer a server reports for a unix socket
    assert stack.request(client=sock, headers={"X-Forwarded-For": "192.0.2.1"})[0] == 200
    assert stack.request(client=sock, headers={"X-Forwarded-For": "192.0.2.1"})[0] == 503
    assert stack.request(client=sock, headers={"X-Forwarded-For": "192.0.2.2"})[0] == 200


def test_dos_wider_limit_in_ratelimit_headers(dos_kind: str) -> None:
    store = MemoryStore(clock=FakeClock(1_700_000_000.0))
    stack = build(dos_kind, max_requests_per_sec=1, headers=True, store=store)
    replies = [stack.request(client=a) for a in rotate_56s(17)]
    assert [r[0] for r in replies] == [200] * 16 + [503]
    assert replies[-1][1]["ratelimit-limit"] == "16"  # the /48's limit refused it
    assert replies[0][1]["ratelimit-limit"] == "1"  # an allowed one shows its own /64's


def test_unblock_names_a_network_in_any_spelling() -> None:
    store = MemoryStore()
    store.block("login", "2001:db8:1::/48", 600, "failures")
    assert main(["unblock", "2001:0db8:0001:0000::/48"], store=store) == 0
    assert store.blocks() == []
