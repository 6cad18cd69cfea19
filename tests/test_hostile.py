"""Random hostile traffic through the three stacked filters: every cache stays bounded.

A shorter pass of ``benchmarks/hostile.py`` (which measures RSS for 400k
requests; see the README's "Stores"): random IPv4/IPv6 peers, forwarding
headers, paths, DeviceIds and login bodies through DosFilter -> DeviceJail
-> InvalidLoginFilter on one MemoryStore, called as an ASGI app in process.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from mailguard import MemoryStore, identity

ROOT = Path(__file__).resolve().parent.parent


def load_hostile() -> ModuleType:
    path = ROOT / "benchmarks" / "hostile.py"
    spec = importlib.util.spec_from_file_location("mailguard_bench_hostile", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_cache_stays_within_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    hostile = load_hostile()
    # smaller bounds, so that 20k requests fill (and empty) every cache many times
    monkeypatch.setattr(identity, "CACHE_SIZE", 1000)
    monkeypatch.setattr(identity, "_WALK_CACHE_SIZE", 500)
    store = MemoryStore(max_keys=3000)
    stack = hostile.build(store)
    filters = hostile._filters(stack)
    assert [f.policy.kind for f in filters] == ["dos", "device", "login"]
    assert len({id(f.policy.resolver) for f in filters}) == 1  # one resolver, one set of caches
    statuses = asyncio.run(hostile.drive(stack, random.Random(7), 20_000))
    assert sum(statuses.values()) == 20_000
    assert statuses.get(401, 0) > 3000  # the logins reached the app and failed
    found = hostile.caches(stack)
    names = {name for name, _, _ in found}
    for expected in (
        "identity: canonical_ip",
        "identity: resolver _direct",
        "identity: resolver _trusted_peers",
        "identity: resolver _by_address",
        "identity: resolver _walked",
        "identity: resolver _once",
        "dos: refusal episodes",
        "login: refusal episodes",
        "login: refusal shapes",
    ):
        assert expected in names
    sizes = {name: len(container) for name, container, _ in found}
    for name, container, bound in found:
        if name == "identity: shared resolvers":
            continue  # one per settings in use (other tests hold theirs)
        if name.startswith("identity: ") and bound == identity.CACHE_SIZE:
            bound = 1000  # (read at its use: the patched value)
        if name == "identity: resolver _walked":
            bound = 500
        assert len(container) <= bound, (name, len(container), bound)
    # the flood filled the identity caches (and emptied them at the bound)
    assert sizes["identity: resolver _by_address"] > 0
    assert sizes["identity: resolver _once"] > 0
    assert sizes["identity: canonical_ip"] > 0
    assert len(store) <= 3000
    assert store.counted_bytes <= store.max_bytes
