"""Stacked filters resolve the client once per request, with one cache, and decide as before."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from stacks import AsgiStack, Stack, WsgiStack

import mailguard.asgi
import mailguard.wsgi
from mailguard.core import FakeClock
from mailguard.identity import SHARED_KEY, ClientResolver
from mailguard.policies import KINDS, DeviceJailPolicy, DosPolicy, InvalidLoginPolicy
from mailguard.stores.memory import MemoryStore

PROXY = "192.0.2.1"
COMMON: dict[str, Any] = {"trusted_proxies": [PROXY], "ipv6_prefix": 56}
OPTIONS: dict[str, dict[str, Any]] = {
    "dos": {"max_requests_per_sec": 4},
    "device": {"max_requests": 3, "time_window": 60, "jail_duration": 600},
    "login": {"max_failed_logins": 3},
}
AS = "/Microsoft-Server-ActiveSync?Cmd=Sync&User=jdoe&DeviceId=abc123&DeviceType=iPhone"


class PassThrough:
    """A middleware between two filters, so that they are not stacked directly."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, *args: Any) -> Any:
        return self.app(*args)


def build(kind: str, store: MemoryStore, *, apart: bool) -> Callable[[Any], Any]:
    module: Any = mailguard.asgi if kind == "asgi" else mailguard.wsgi

    def wrap(app: Any) -> Any:
        for name in reversed(KINDS):
            app = module.FILTER_CLASSES[name](app, store=store, **COMMON, **OPTIONS[name])
            if apart:
                app = PassThrough(app)
        return app

    return wrap


def stack_of(kind: str, wrap: Callable[[Any], Any]) -> Stack:
    return AsgiStack(wrap) if kind == "asgi" else WsgiStack(wrap)


SCRIPT: list[tuple[str, str, dict[str, str]]] = [
    # (path, peer, headers): direct clients, one behind our proxy, one lying about itself
    *[("/inbox", "203.0.113.7", {}) for _ in range(6)],
    *[("/inbox", PROXY, {"x-forwarded-for": "198.51.100.9"}) for _ in range(6)],
    *[("/inbox", "203.0.113.8", {"x-forwarded-for": "198.51.100.9"}) for _ in range(3)],
    *[(AS, "2001:db8:1:2::7", {}) for _ in range(5)],
    *[(AS, PROXY, {"x-forwarded-for": "2001:db8:1:3::9, 192.0.2.1"}) for _ in range(5)],
    ("/login", PROXY, {"x-forwarded-for": "unknown"}),
]


def run_script(stack: Stack) -> list[int]:
    return [stack.request(path, client=peer, headers=headers)[0] for path, peer, headers in SCRIPT]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts every full resolution (past the cache of direct peers), however it is reached."""
    counted = {"asgi": 0, "wsgi": 0}
    real_asgi, real_wsgi = ClientResolver._from_asgi_peer, ClientResolver._from_wsgi_peer
    real_asgi_proxy = ClientResolver._from_asgi_proxy
    real_wsgi_proxy = ClientResolver._from_wsgi_proxy
    inside = [0]  # in a counted _from_*_peer, whose proxy step is not counted again

    def from_asgi(self: ClientResolver, scope: Any) -> Any:
        counted["asgi"] += 1
        inside[0] += 1
        try:
            return real_asgi(self, scope)
        finally:
            inside[0] -= 1

    def from_wsgi(self: ClientResolver, environ: Any) -> Any:
        counted["wsgi"] += 1
        inside[0] += 1
        try:
            return real_wsgi(self, environ)
        finally:
            inside[0] -= 1

    # a trusted proxy's request, which from_asgi / from_wsgi walk directly
    def asgi_proxy(self: ClientResolver, scope: Any, proxy: Any) -> Any:
        counted["asgi"] += 0 if inside[0] else 1
        return real_asgi_proxy(self, scope, proxy)

    def wsgi_proxy(self: ClientResolver, environ: Any, proxy: Any) -> Any:
        counted["wsgi"] += 0 if inside[0] else 1
        return real_wsgi_proxy(self, environ, proxy)

    real_quad = ClientResolver._fresh_quad

    def fresh_quad(self: ClientResolver, peer: object) -> Any:
        found = real_quad(self, peer)  # a direct peer's resolution, without a walk
        if found is not None:
            caller = inspect.stack()[1].function.lstrip("_")
            counted["asgi" if caller.startswith("from_asgi") else "wsgi"] += 1
        return found

    monkeypatch.setattr(ClientResolver, "_from_asgi_peer", from_asgi)
    monkeypatch.setattr(ClientResolver, "_from_wsgi_peer", from_wsgi)
    monkeypatch.setattr(ClientResolver, "_fresh_quad", fresh_quad)
    monkeypatch.setattr(ClientResolver, "_from_asgi_proxy", asgi_proxy)
    monkeypatch.setattr(ClientResolver, "_from_wsgi_proxy", wsgi_proxy)
    return counted


# ------------------------------------------------------------------ sharing


def test_same_settings_share_one_resolver() -> None:
    dos = DosPolicy(trusted_proxies=["192.0.2.1", "10.0.0.0/8"], ipv6_prefix=56)
    login = InvalidLoginPolicy(trusted_proxies=["10.0.0.0/8", "192.0.2.1"], ipv6_prefix=56)
    device = DeviceJailPolicy(
        trusted_proxies=["192.0.2.1", "10.0.0.0/8"],
        ipv6_prefix=56,
        forwarded_header="X-Forwarded-For",
    )
    assert dos.resolver is login.resolver is device.resolver
    assert DosPolicy(trusted_proxies=["192.0.2.1"]).resolver is not dos.resolver
    assert DosPolicy(trusted_proxies=["192.0.2.1", "10.0.0.0/8"]).resolver is not dos.resolver
    assert (
        DosPolicy(
            trusted_proxies=["192.0.2.1", "10.0.0.0/8"],
            ipv6_prefix=56,
            forwarded_header="forwarded",
        ).resolver
        is not dos.resolver
    )
    with pytest.raises(ValueError, match="ipv6_prefix"):
        ClientResolver.shared(ipv6_prefix=8)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_stacked_filters_resolve_once_per_request(kind: str, calls: dict[str, int]) -> None:
    stack = stack_of(kind, build(kind, MemoryStore(clock=FakeClock()), apart=False))
    for n in range(1, 4):  # behind our proxy: the header is walked once a request
        stack.request("/inbox", client=PROXY, headers={"x-forwarded-for": f"198.51.100.{n}"})
        assert calls[kind] == n
    # a direct peer: each filter finds it with one lookup in the one shared cache
    peer = "203.0.113.98" if kind == "asgi" else "203.0.113.99"  # new to the shared cache
    stack.request(AS, client=peer)
    assert calls[kind] == 4  # its first request resolved it, once, for all three
    stack.request(AS, client=peer)
    assert calls[kind] == 5  # so did its second, which cached it (ClientResolver._admit)
    for _ in range(3):
        stack.request(AS, client=peer)
    assert calls[kind] == 5


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_filters_apart_resolve_each(kind: str, calls: dict[str, int]) -> None:
    stack = stack_of(kind, build(kind, MemoryStore(clock=FakeClock()), apart=True))
    stack.request("/inbox", client=PROXY, headers={"x-forwarded-for": "198.51.100.9"})
    # the ASGI DeviceJail resolves the client only when it reads it (a safe
    # address to check, an over-long query, a jailing), which a request it lets
    # through on its device or with none does not
    assert calls[kind] == (2 if kind == "asgi" else 3)
    stack.request(
        "/inbox", client=PROXY,
        headers={"x-forwarded-for": "198.51.100.9", "x-device-id": "abc123"},
    )  # fmt: skip
    assert calls[kind] == (4 if kind == "asgi" else 6)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_protect_resolves_once(kind: str, calls: dict[str, int], tmp_path: Any) -> None:
    path = tmp_path / "mailguard.toml"
    path.write_text('[common]\ntrusted_proxies = ["192.0.2.1"]\n[dos]\n[device]\n[login]\n')
    module: Any = mailguard.asgi if kind == "asgi" else mailguard.wsgi
    stack = stack_of(kind, lambda app: module.protect(app, path, store=MemoryStore()))
    stack.request("/login", client=PROXY, headers={"x-forwarded-for": "198.51.100.9"})
    assert calls[kind] == 1


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_stacked_decisions_equal_unstacked(kind: str) -> None:
    stacked_store, apart_store = MemoryStore(clock=FakeClock()), MemoryStore(clock=FakeClock())
    stacked = run_script(stack_of(kind, build(kind, stacked_store, apart=False)))
    apart = run_script(stack_of(kind, build(kind, apart_store, apart=True)))
    assert stacked == apart
    assert 503 in stacked and 200 in stacked  # the script does reach the limits
    assert sorted((b.kind, b.key) for b in stacked_store.blocks()) == sorted(
        (b.kind, b.key) for b in apart_store.blocks()
    )
    assert len(stacked_store) == len(apart_store)


# ------------------------------------------------------------------- trust


def _asgi_call(app: Any, scope: dict[str, Any]) -> int:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return int(sent[0]["status"])


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _scope(peer: str, **extra: Any) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/", "query_string": b"",
            "headers": [], "client": (peer, 1234), **extra}  # fmt: skip


def test_a_value_left_in_the_scope_by_someone_else_is_never_trusted() -> None:
    store = MemoryStore(clock=FakeClock())
    inner = mailguard.asgi.InvalidLoginFilter(_ok, store=store, trusted_proxies=[PROXY])
    app = mailguard.asgi.DosFilter(
        inner, max_requests_per_sec=1, store=store, trusted_proxies=[PROXY]
    )
    resolver = app.policy.resolver
    assert inner.policy.resolver is resolver
    fake = resolver.from_asgi(_scope("198.51.100.200"))
    peer = (PROXY, 1234)
    forged: list[Any] = [
        (object(), peer, fake),  # not our resolver
        ("mailguard", peer, fake),
        (resolver, tuple([PROXY, 1234]), fake),  # ours, but another peer object
        42,
        (),
        "198.51.100.200",
    ]
    statuses = []
    for value in forged:
        scope = _scope(PROXY, client=peer, headers=[(b"x-forwarded-for", b"203.0.113.7")])
        scope[SHARED_KEY] = value
        statuses.append(_asgi_call(app, scope))
        assert scope[SHARED_KEY][0] is resolver and scope[SHARED_KEY][2].key == "203.0.113.7"
    # every request counted against the real client, none against the fake address
    assert statuses == [200] + [503] * (len(forged) - 1)


def test_different_settings_in_one_stack_do_not_share() -> None:
    store = MemoryStore(clock=FakeClock())
    seen: list[tuple[str, str]] = []

    class Spy(DosPolicy):
        def check_client(self, client: Any) -> Any:
            seen.append((self.namespace, client.key))
            return super().check_client(client)

    inner = mailguard.asgi.DosFilter(_ok, policy=Spy(store=store, namespace="inner"))
    outer = mailguard.asgi.DosFilter(
        inner, policy=Spy(store=store, namespace="outer", trusted_proxies=[PROXY])
    )
    scope = _scope(PROXY, headers=[(b"x-forwarded-for", b"198.51.100.9")])
    assert _asgi_call(outer, scope) == 200
    assert seen == [("outer", "198.51.100.9"), ("inner", PROXY)]
