"""The request path's objects keep their attributes where CPython reads them quickest.

CPython 3.11 keeps up to 29 attributes of an instance inline, in an array
that a specialised attribute read (``LOAD_ATTR_INSTANCE_VALUE``) indexes.
An instance with more, or one whose ``__dict__`` has been read, keeps them
in a dict instead, and every read becomes ``LOAD_ATTR_WITH_HINT``: a dict
lookup, some 30 instructions more each (callgrind: DosFilter with one client
ran 1,600 instructions a request more while the startup line read the
policy's ``__dict__``).  InvalidLoginPolicy and DeviceJailPolicy hold more
than 29 attributes, so the ones a request reads are slots.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mailguard import MemoryStore
from mailguard.policies import DeviceJailPolicy, DosPolicy, InvalidLoginPolicy

INLINE_MOST = 29


@pytest.mark.parametrize("make", [DosPolicy, InvalidLoginPolicy, DeviceJailPolicy])
def test_policies_keep_few_enough_attributes_in_their_dict(make: type) -> None:
    policy = make(store=MemoryStore())
    policy.announce()
    assert len(vars(policy)) <= INLINE_MOST


def test_a_store_has_few_enough_attributes_to_keep_them_inline() -> None:
    """A 30th made every read of one in hit() a dict lookup (about 120
    instructions a decision more under churn).  Group new ones (see
    MemoryStore._aged_as)."""
    assert len(vars(MemoryStore())) <= INLINE_MOST


_DRIVE = textwrap.dedent(
    """
    import asyncio, dis
    from mailguard import MemoryStore
    from mailguard import asgi as mg_asgi
    from mailguard.policies import base, device, dos, login

    async def app(scope, receive, send):
        if scope["method"] == "POST":
            await receive()
        status = 401 if scope["path"] == "/login" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    store = MemoryStore()
    stack = mg_asgi.DosFilter(
        mg_asgi.DeviceJail(
            mg_asgi.InvalidLoginFilter(
                app, store=store, login_paths=["/login"], max_failed_logins=10_000
            ),
            store=store, max_requests=1_000_000,
        ),
        store=store, max_requests_per_sec=1_000_000,
    )

    async def receive():
        return {"type": "http.request", "body": b"username=jdoe&password=x", "more_body": False}

    async def send(message):
        pass

    def scope(method, path, query=b"", headers=()):
        return {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
                "query_string": query, "headers": list(headers), "client": ("198.51.100.7", 5000),
                "server": ("127.0.0.1", 80), "scheme": "http", "http_version": "1.1",
                "root_path": "", "asgi": {"version": "3.0"}}

    async def main():
        form = [(b"content-type", b"application/x-www-form-urlencoded")]
        for i in range(200):
            await stack(scope("GET", "/"), receive, send)
            await stack(scope("POST", "/login", headers=form), receive, send)
            await stack(scope("POST", "/Microsoft-Server-ActiveSync",
                              b"Cmd=Sync&User=jdoe&DeviceId=abc123&DeviceType=iPhone"),
                        receive, send)

    asyncio.run(main())
    found = []
    for module in (base, device, dos, login):
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != module.__name__:
                continue
            for name, fn in vars(cls).items():
                code = getattr(fn, "__code__", None)
                if code is None:
                    continue
                for ins in dis.get_instructions(fn, adaptive=True):
                    if ins.opname.endswith("_WITH_HINT"):
                        found.append(f"{cls.__name__}.{name}: {ins.opname} {ins.argrepr}")
    print("\\n".join(found))
    """
)


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="CPython 3.11's specialised reads")
def test_a_request_reads_no_policy_attribute_through_a_dict() -> None:
    """DosFilter, DeviceJail and InvalidLoginFilter on one store, a GET, an
    ActiveSync request and a failed login 200 times each, in a fresh
    interpreter (another test's subclasses would specialise the same code):
    no attribute read or write of a policy is specialised as a dict lookup."""
    done = subprocess.run(
        [sys.executable, "-c", _DRIVE], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", done.stdout
