"""DeviceJail's fast paths, pinned to the plain code they stand in for.

``identify`` remembers the devices it found by (query, Authorization header);
``identity_of`` remembers digests; ``check``/``acheck`` make the one store
call of the common case without driving the ``_decide`` flow.  Each must
answer exactly as the code it replaces, on any input, hostile included.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mailguard.policies.device as device_module
from mailguard import FakeClock, MemoryStore
from mailguard.activesync import MAX_QUERY_BYTES, NO_DEVICE, QUICK_MAX_CHARS, parse_query
from mailguard.identity import ClientResolver
from mailguard.policies import DeviceJailPolicy
from mailguard.policies.device import (
    OVERSIZED_QUERY,
    Device,
    device_key,
    header_device_ids,
)
from mailguard.policies.steps import arun, run
from mailguard.request import AsgiRequest, Request

T0 = 1_700_000_000.0
AS = "/Microsoft-Server-ActiveSync"
RESOLVER = ClientResolver()


def reference_identify(policy: DeviceJailPolicy, request: Request) -> Device | None:
    """``DeviceJailPolicy.identify`` as it was before it remembered devices."""
    path = request.path
    on_paths = policy._paths.match(path)
    by_header = policy._header_anywhere or policy._header_paths.match(path)
    if not (on_paths or by_header or policy.device_func is not None):
        return None
    if policy.any_safe and policy.is_safe(request.client):
        return None
    parsed = parse_query(request.query) if on_paths else NO_DEVICE
    ids: tuple[str, ...] = ()
    source = "func"
    if policy.device_func is not None:
        custom = policy._custom(request)
        ids = () if custom is None else (custom,)
    if not ids and parsed.device_ids:
        ids, source = parsed.device_ids, "query"
    if not ids and by_header:
        ids, source = header_device_ids(request.header("x-device-id")), "header"
    if not ids and parsed.too_long:
        key = device_key(OVERSIZED_QUERY, request.client.key)
        return Device(key, OVERSIZED_QUERY, None, "oversized", parsed, on_paths)
    if not ids:
        return None
    account = policy.account_of(request, parsed) if policy.per_account else None
    device_id = ids[-1]
    keys = tuple(device_key(i, account) for i in (device_id, *ids[:-1]))
    return Device(keys[0], device_id, account, source, parsed, on_paths, keys)


def same(a: Device | None, b: Device | None) -> bool:
    """Equal, every field (``ActiveSyncRequest`` leaves ``device_ids`` out of ``==``)."""
    if a is None or b is None:
        return a is b
    return a == b and a.activesync.device_ids == b.activesync.device_ids


def asgi_request(
    path: str, query: bytes, headers: list[tuple[bytes, bytes]], peer: str = "192.0.2.10"
) -> AsgiRequest:
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": query,
        "headers": headers,
        "client": (peer, 40000),
    }
    return AsgiRequest(scope, RESOLVER.from_asgi(scope))


# --------------------------------------------------------------- strategies
_b64_chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=%"
_names = st.sampled_from(
    ["DeviceId", "deviceid", "DEVICEID", "Device%49d", "User", "us%65r", "Cmd", "cmd",
     "DeviceType", "Device+Type", "x", "", "DeviceId%00"]
)  # fmt: skip
_values = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40),
    st.sampled_from(["ABC123", "abc-123", "%41%42C", "%zz", "%", "a+b", "Sync", "sYNC", "%E9"]),
    st.integers(30, 70).map(lambda n: "A" * n),  # around the 32-character cap
    st.text(st.characters(min_codepoint=0x80, max_codepoint=0x2FF), max_size=8),
)
_plain = st.lists(st.tuples(_names, _values), max_size=8).map(
    lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)
)
_b64 = st.builds(
    lambda version, cmd, dev, typ, user, cut: _b64_query(version, cmd, dev, typ, user)[:cut],
    st.integers(0, 255),
    st.integers(0, 255),
    st.binary(min_size=0, max_size=40),
    st.binary(max_size=20),
    st.one_of(st.none(), st.binary(max_size=20)),
    st.integers(0, 200),
)
_queries = st.one_of(
    _plain,
    _b64,
    st.text(_b64_chars, max_size=80),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=120),
    st.sampled_from(["", "?", "?Cmd=Sync&DeviceId=AB", "DeviceId=a&DeviceId=b&DeviceId=A"]),
    # huge: just under and over the parse cap, the device id at the very end
    st.sampled_from([MAX_QUERY_BYTES - 12, MAX_QUERY_BYTES + 1]).map(
        lambda n: "x=" + "p" * (n - 13) + "&DeviceId=ZZ"
    ),
)
_auth = st.one_of(
    st.none(),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60),
    st.binary(max_size=40).map(lambda raw: "Basic " + base64.b64encode(raw).decode("ascii")),
    st.sampled_from(["Basic amRvZTpzZWNyZXQ=", "basic amRvZTpzZWNyZXQ=", "Basic !!", "Bearer x"]),
)
_header = st.one_of(
    st.none(), st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)
)
_paths = st.sampled_from([AS, AS.lower(), AS + "/x", "/service/soap", "/"])


def _b64_query(version: int, cmd: int, dev: bytes, typ: bytes, user: bytes | None) -> str:
    raw = bytearray([version, cmd, 9, 4, len(dev)]) + dev + b"\x00" + bytes([len(typ)]) + typ
    if user is not None:
        raw += bytes([8, len(user)]) + user
    return base64.b64encode(bytes(raw)).decode("ascii")


def _headers(auth: str | None, device: str | None, agent: str | None) -> list[tuple[bytes, bytes]]:
    found = []
    for name, value in ((b"authorization", auth), (b"x-device-id", device), (b"user-agent", agent)):
        if value is not None:
            found.append((name, value.encode("latin-1")))
    return found


_policies = st.sampled_from(
    [
        {},
        {"per_account": False},
        {"default_domain": "example.com"},
        {"header_paths": []},
        {"safe_ips": ["192.0.2.0/24"]},
        {"device_func": lambda request: request.header("x-device-id")},
    ]
)


@pytest.fixture
def tiny_memory(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Memories of 3 entries: hostile input starts them over all the time."""
    monkeypatch.setattr(device_module, "_SEEN_MAX", 3)
    monkeypatch.setattr(device_module, "_DIGESTS_MAX", 3)
    monkeypatch.setattr(device_module, "_digests", {})  # not what earlier tests left
    yield


# ------------------------------------------------------------- properties
@settings(max_examples=400, deadline=None, database=None)
@given(
    options=_policies,
    path=_paths,
    query=_queries,
    auth=_auth,
    auth2=_auth,
    device=_header,
    peer=st.sampled_from(["192.0.2.10", "198.51.100.7"]),
)
def test_identify_is_the_reference_on_any_request(
    options: dict[str, Any],
    path: str,
    query: str,
    auth: str | None,
    auth2: str | None,
    device: str | None,
    peer: str,
) -> None:
    policy = DeviceJailPolicy(store=MemoryStore(), **options)
    raw = query.encode("latin-1", "replace")
    headers = _headers(auth, device, None)
    want = reference_identify(policy, asgi_request(path, raw, headers, peer))
    for _ in range(2):  # found, then remembered
        assert same(policy.identify(asgi_request(path, raw, headers, peer)), want)
    # another address, X-Device-Id or account, same query: still exact
    for other_auth, other_device in ((auth, "other"), (auth2, device)):
        other = asgi_request(path, raw, _headers(other_auth, other_device, None), "198.51.100.99")
        assert same(policy.identify(other), reference_identify(policy, other))


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # a constant: nothing to reset
)
@given(
    requests=st.lists(st.tuples(_paths, _queries, _auth, _header), min_size=1, max_size=12),
)
def test_identify_stays_exact_as_a_small_memory_starts_over(
    tiny_memory: None, requests: list[tuple[str, str, str | None, str | None]]
) -> None:
    policy = DeviceJailPolicy(store=MemoryStore())
    for path, query, auth, device in requests + requests:
        request = asgi_request(
            path, query.encode("latin-1", "replace"), _headers(auth, device, None)
        )
        assert same(policy.identify(request), reference_identify(policy, request))
        assert len(policy._seen) <= 3


def test_the_memory_is_bounded_and_skips_long_queries() -> None:
    policy = DeviceJailPolicy(store=MemoryStore())
    for i in range(3 * device_module._SEEN_MAX):
        policy.identify(asgi_request(AS, f"Cmd=Sync&DeviceId=d{i}".encode(), []))
        assert len(policy._seen) <= device_module._SEEN_MAX
    policy._seen.clear()
    long = b"Cmd=Sync&DeviceId=abc&x=" + b"y" * device_module._SEEN_CHARS
    found = policy.identify(asgi_request(AS, long, []))
    assert found is not None and found.key == "abc"
    assert policy._seen == {}


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # a constant: nothing to reset
)
@given(device_type=st.one_of(st.none(), st.text(max_size=40)), agent=_header)
def test_identity_digest_is_blake2b_of_the_pair(
    tiny_memory: None, device_type: str | None, agent: str | None
) -> None:
    import hashlib

    pair = f"{device_type or ''}\n{agent or ''}"
    want = hashlib.blake2b(pair.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()
    parsed = NO_DEVICE.__class__(
        "abc", device_type, None, None, None, None, None, "plain", ("abc",)
    )
    dev = Device("abc", "abc", None, "query", parsed, True)
    request = asgi_request(AS, b"", _headers(None, None, agent))
    for _ in range(2):
        assert DeviceJailPolicy.identity_of(request, dev) == want
    assert len(device_module._digests) <= 3


@settings(max_examples=150, deadline=None, database=None)
@given(
    options=st.sampled_from(
        [{}, {"identity_changes": True, "max_identity_changes": 1}, {"enforce": False}]
    ),
    steps=st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "Cmd=Sync&DeviceId=A1",
                    "DeviceId=dec0y&DeviceId=A1",
                    "DeviceId=dec0y",
                    "DeviceId=b2",
                ]
            ),
            st.sampled_from(["ua1", "ua2"]),
            st.sampled_from([0.0, 0.2, 1.5]),
        ),
        max_size=25,
    ),
)
def test_check_answers_as_the_decide_flow(
    options: dict[str, Any], steps: list[tuple[str, str, float]]
) -> None:
    """check/acheck (the one hit made directly) against run/arun of _decide on a twin store."""
    clocks = [FakeClock(T0) for _ in range(4)]
    policies = [
        DeviceJailPolicy(
            store=MemoryStore(clock=clock), max_requests=3, time_window=1.0, jail_duration=2.0,
            **options,
        )
        for clock in clocks
    ]  # fmt: skip
    fast, slow, afast, aslow = policies
    for query, agent, pause in steps:
        for clock in clocks:
            clock.advance(pause)
        request = asgi_request(AS, query.encode(), _headers(None, None, agent))
        device = slow.identify(request)
        assert device is not None
        got = [
            fast.check(request),
            run(slow._decide(request, device), slow.store),
            asyncio.run(afast.acheck(request)),
            asyncio.run(arun(aslow._decide(request, device), aslow.store)),
        ]
        assert got[1:] == got[:-1], (query, got)
    assert len({tuple(p.jailed_devices()) for p in policies}) == 1


def test_the_memory_never_holds_a_password() -> None:
    policy = DeviceJailPolicy(store=MemoryStore())
    header = "Basic " + base64.b64encode(b"alice@example.com:hunter2-secret").decode()
    found = policy.identify(
        asgi_request(AS, b"Cmd=Sync&DeviceId=abc", _headers(header, None, None))
    )
    assert found is not None and found.account == "alice@example.com"
    assert len(policy._seen) == 1
    held = repr(policy._seen)
    assert header not in held and "hunter2" not in held and header[6:20] not in held
    # the memory is keyed by the sealed digest, which tells headers apart
    assert next(iter(policy._seen))[1] == device_module._sealed(header)
    assert device_module._sealed(header) != device_module._sealed(header + "x")


# ------------------------------------------------------------- quick_key
_usual_queries = st.builds(
    "Cmd={}&User={}&DeviceId={}&DeviceType={}".format,
    st.sampled_from(["Sync", "Ping", "x", ""]),
    st.one_of(
        st.text("abcXYZ019@._-\\+~ \t", max_size=20),
        st.integers(120, 140).map(lambda n: "Us" * (n // 2) + "r" * (n % 2)),  # around 128
    ),
    st.text("abcdefXYZ0123456789-", max_size=36),
    st.sampled_from(["iPhone", "", "Outlook"]),
)


def quick_is_identify(policy: DeviceJailPolicy, request: AsgiRequest) -> str | None:
    """quick_key(request) declines, or names identify's one and only key."""
    key = policy.quick_key(request)
    if key is not None:
        device = policy.identify(request)
        assert device is not None and device.keys == (key,) and device.source == "query"
        assert same(device, reference_identify(policy, request))
        assert not policy.watches_identity(device)
    return key


@settings(max_examples=400, deadline=None, database=None)
@given(
    options=st.one_of(_policies, st.just({"identity_changes": True})),
    path=_paths,
    query=st.one_of(_queries, _usual_queries),
    auth=_auth,
    device=_header,
    peer=st.sampled_from(["192.0.2.10", "198.51.100.7"]),
)
def test_quick_key_is_identify_on_any_request(
    options: dict[str, Any],
    path: str,
    query: str,
    auth: str | None,
    device: str | None,
    peer: str,
) -> None:
    policy = DeviceJailPolicy(store=MemoryStore(), **options)
    raw = query.encode("latin-1", "replace")
    for _ in range(2):  # read, then remembered
        quick_is_identify(policy, asgi_request(path, raw, _headers(auth, device, None), peer))


@settings(max_examples=200, deadline=None, database=None)
@given(
    options=st.sampled_from([{}, {"per_account": False}, {"default_domain": "example.com"}]),
    query=_usual_queries,
    device=_header,
    basic=st.booleans(),
)
def test_quick_key_takes_the_usual_request(
    options: dict[str, Any], query: str, device: str | None, basic: bool
) -> None:
    """With or without a Basic Authorization header, a usual query naming a device is
    never declined (unless it holds a "+")."""
    policy = DeviceJailPolicy(store=MemoryStore(), **options)
    auth = "Basic " + base64.b64encode(b"Jane.Doe@example.com:pw").decode() if basic else None
    request = asgi_request(AS, query.encode(), _headers(auth, device, None))
    key = quick_is_identify(policy, request)
    if "+" in query:  # a space in form encoding: the full parser's business
        assert key is None
    else:
        assert (key is None) == (parse_query(query).device_id is None)


def test_quick_key_declines_what_identify_must_decide() -> None:
    policy = DeviceJailPolicy(store=MemoryStore(), safe_ips=["198.51.100.0/24"])
    usual = b"Cmd=Sync&User=jdoe&DeviceId=ABC&DeviceType=iPhone"
    assert quick_is_identify(policy, asgi_request(AS, usual, [])) == "abc/jdoe"
    # the Basic user wins over the query's User, remembered by the sealed header
    basic = asgi_request(AS, usual, _headers("Basic YWxpY2U6c2VjcmV0", None, None))
    assert quick_is_identify(policy, basic) == "abc/alice"
    assert quick_is_identify(policy, basic) == "abc/alice"
    declined = [
        asgi_request(AS, usual, _headers("Basic " + "A" * 1100, None, None)),  # over 1,024
        asgi_request(AS, usual, [], peer="198.51.100.7"),  # a safe address
        asgi_request("/service/soap", usual, _headers(None, "abc", None)),  # not ActiveSync
        asgi_request(AS, b"DeviceId=decoy&DeviceId=REAL", []),  # two candidates
        asgi_request(AS, b"Cmd=Sync", _headers(None, "hdr1", None)),  # the header's device
        asgi_request(AS, b"x=" + b"p" * MAX_QUERY_BYTES + b"&DeviceId=a", []),  # too long
    ]
    for request in declined:
        assert policy.quick_key(request) is None
    assert policy._quick == {
        usual.decode(): "abc/jdoe",
        (usual.decode(), device_module._sealed("Basic YWxpY2U6c2VjcmV0")): "abc/alice",
    }
    assert "c2VjcmV0" not in repr(policy._quick)  # never the header itself
    func = DeviceJailPolicy(store=MemoryStore(), device_func=lambda request: "f1")
    assert func.quick_key(asgi_request(AS, usual, [])) is None


@settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # a constant: nothing to reset
)
@given(requests=st.lists(st.tuples(_paths, st.one_of(_queries, _usual_queries)), max_size=12))
def test_quick_key_stays_exact_as_a_small_memory_starts_over(
    monkeypatch: pytest.MonkeyPatch, requests: list[tuple[str, str]]
) -> None:
    monkeypatch.setattr(device_module, "_QUICK_MAX", 3)
    policy = DeviceJailPolicy(store=MemoryStore())
    for path, query in requests + requests:
        quick_is_identify(policy, asgi_request(path, query.encode("latin-1", "replace"), []))
        assert len(policy._quick) <= 3


def test_the_quick_memory_is_bounded() -> None:
    policy = DeviceJailPolicy(store=MemoryStore())
    for i in range(3 * device_module._QUICK_MAX):
        query = f"Cmd=Sync&User=u{i}&DeviceId=d{i}&DeviceType=t".encode()
        assert policy.quick_key(asgi_request(AS, query, [])) == f"d{i}/u{i}"
        assert len(policy._quick) <= device_module._QUICK_MAX
    # every query it holds is short, and keyed exactly
    assert all(len(q) <= QUICK_MAX_CHARS for q in policy._quick)


def test_a_quick_refusal_is_the_full_one() -> None:
    """A request the quick path counts and refuses gets identify's Device in its verdict."""
    clock = FakeClock(T0)
    policy = DeviceJailPolicy(store=MemoryStore(clock=clock), max_requests=2, jail_duration=60)
    twin = DeviceJailPolicy(store=MemoryStore(clock=clock), max_requests=2, jail_duration=60)
    query = b"Cmd=Ping&User=CORP%5CJDoe&DeviceId=AB-12&DeviceType=iPhone"  # not quick: %
    quick = b"Cmd=Ping&User=jdoe&DeviceId=AB12&DeviceType=iPhone"  # the same device, quick
    for i in range(5):
        fast_request = asgi_request(AS, quick, [])
        slow_request = asgi_request(AS, query, [])
        assert policy.quick_key(fast_request) == "ab12/jdoe"
        assert twin.quick_key(slow_request) is None
        got, want = policy.check(fast_request), twin.check(slow_request)
        assert got == want
        assert got.allowed == (i < 2)
    assert got.reason == "jailed" and got.key == "ab12/jdoe" and got.retry_after == 60
    assert [b.key for b in policy.jailed_devices()] == ["ab12/jdoe"]


@settings(max_examples=200, deadline=None, database=None)
@given(
    query=st.one_of(
        _queries,
        _usual_queries,
        st.binary(max_size=300),
        st.binary(max_size=60).map(lambda raw: base64.b64encode(raw)[:-1] + b"!"),
    ),
    auth=_auth,
)
def test_hostile_queries_never_fail_the_asgi_filter(query: str | bytes, auth: str | None) -> None:
    """Through the middleware: an answer (200, or 503 once jailed), never a 5xx of its own."""
    from mailguard.asgi import DeviceJail

    raw = query if isinstance(query, bytes) else query.encode("utf-8", "surrogatepass")
    statuses: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    jail = DeviceJail(app, store=MemoryStore(), max_requests=2, jail_duration=60)

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def go() -> None:
        for _ in range(4):
            scope = {
                "type": "http", "method": "POST", "path": AS, "query_string": raw,
                "headers": _headers(auth, None, None), "client": ("192.0.2.10", 40000),
            }  # fmt: skip
            await jail(scope, receive, send)

    asyncio.run(go())
    assert len(statuses) == 4 and set(statuses) <= {200, 503}
    named = jail.policy.identify(asgi_request(AS, raw, _headers(auth, None, None)))
    assert statuses == ([200] * 4 if named is None else [200, 200, 503, 503])


def test_the_asgi_filter_resolves_the_client_only_when_it_reads_it() -> None:
    """A request let through on its device never needs its client; a refusal, a
    safe address or an over-long query does, and gets the right one."""
    from mailguard.asgi import DeviceJail

    resolved: list[str] = []
    statuses: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    def counted(jail: DeviceJail) -> DeviceJail:
        real = jail._resolve

        def resolve(scope: Any) -> Any:
            resolved.append(scope["client"][0])
            return real(scope)

        jail._resolve = resolve
        return jail

    def call(jail: DeviceJail, query: bytes, peer: str) -> None:
        scope = {
            "type": "http", "method": "POST", "path": AS, "query_string": query,
            "headers": [], "client": (peer, 40000),
        }  # fmt: skip
        asyncio.run(jail(scope, receive, send))

    usual = b"Cmd=Sync&User=jdoe&DeviceId=abc&DeviceType=iPhone"
    jail = counted(DeviceJail(app, store=MemoryStore(), max_requests=2, jail_duration=60))
    call(jail, usual, "192.0.2.10")
    call(jail, b"DeviceId=decoy&DeviceId=abc&User=jdoe", "192.0.2.11")  # the full parser
    assert resolved == [] and statuses == [200, 200]
    call(jail, usual, "192.0.2.12")  # the third: jailed, and the log line names its client
    assert resolved == ["192.0.2.12"] and statuses[-1] == 503
    call(jail, b"x=" + b"p" * MAX_QUERY_BYTES + b"&DeviceId=a", "192.0.2.13")
    assert resolved[-1] == "192.0.2.13"  # counted by address
    assert jail.policy.store.blocks()[0].key == "abc/jdoe"

    resolved.clear()
    safe = counted(DeviceJail(app, store=MemoryStore(), max_requests=1, safe_ips=["192.0.2.9"]))
    for _ in range(3):
        call(safe, usual, "192.0.2.9")
    assert resolved == ["192.0.2.9"] * 3 and statuses[-3:] == [200, 200, 200]
    call(safe, usual, "192.0.2.8")
    call(safe, usual, "192.0.2.8")
    assert statuses[-2:] == [200, 503]
