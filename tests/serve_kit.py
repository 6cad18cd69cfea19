"""What the ``mailguard serve`` tests share: a server on a FakeClock store, and
an httpx client through the real ASGI stack (Starlette routing, the app's own
body reading) with a chosen peer address."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from mailguard.config import loads
from mailguard.core import FakeClock
from mailguard.events import Event
from mailguard.serve import MailGuardServer
from mailguard.stores.base import Store
from mailguard.stores.memory import MemoryStore

__all__ = [
    "ATTACKER",
    "SECRET",
    "T0",
    "asgi_client",
    "dovecot_body",
    "make_server",
    "nginx_escape",
    "nginx_headers",
]

T0 = 1_700_000_000.0
SECRET = "s3cret-0123456789-abcdef"
ATTACKER = "203.0.113.7"
ADMIN_TOKEN = "admin-token-0123456789"


class RemoteLike(MemoryStore):
    """A MemoryStore that claims I/O, so the policy takes its coroutine faces."""

    local = False


def make_server(
    toml: str = "",
    *,
    store: Store | None = None,
    events: list[Event] | None = None,
    secret: bool = True,
    remote_like: bool = False,
) -> MailGuardServer:
    """A server for ``toml`` (``[serve] secret`` added unless ``secret=False``)."""
    text = toml
    if secret and "secret" not in text:
        text = f'[serve]\nsecret = "{SECRET}"\nadmin_token = "{ADMIN_TOKEN}"\n' + text
    if not secret:
        text = (
            text.replace("[serve]\n", "[serve]\nallow_without_secret = true\n", 1)
            if "[serve]\n" in text
            else "[serve]\nallow_without_secret = true\n" + text
        )
    config = loads(text, env={})
    if store is None:
        clock = FakeClock(T0)
        store = RemoteLike(clock=clock) if remote_like else MemoryStore(clock=clock)
    hook = events.append if events is not None else None
    return MailGuardServer(config, store=store, on_event=hook)


@asynccontextmanager
async def asgi_client(
    server: MailGuardServer, peer: str = "127.0.0.1", *, secret: str | None = SECRET
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``server``'s app as ``peer``, sending ``secret``."""
    transport = httpx.ASGITransport(app=server.app(), client=(peer, 40000))
    headers = {"X-Mailguard-Secret": secret} if secret is not None else {}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://mailguard.test", headers=headers
    ) as client:
        yield client


def dovecot_body(
    remote: str = ATTACKER,
    login: str = "victim",
    session: str | None = "s1",
    *,
    success: bool | None = None,
    policy_reject: bool = False,
    pwhash: str = "a1b",
    protocol: str = "imap",
    **more: Any,
) -> dict[str, Any]:
    """A request body as Dovecot builds it (``auth_policy_create_json``)."""
    body: dict[str, Any] = {
        "login": login,
        "pwhash": pwhash,
        "remote": remote,
        "device_id": "",
        "protocol": protocol,
    }
    if session is not None:
        body["session_id"] = session
    if success is not None:
        body["success"] = success
        body["policy_reject"] = policy_reject
    body["tls"] = False
    body.update(more)
    return body


# ------------------------------------------------- verify = "serve_kit:..."
GOOD = {"jdoe": "right horse", "jörg": "pässword"}
CALLS: list[tuple[str, str, str, str]] = []


def sync_verify(user: str, password: str, protocol: str, client: str) -> bool:
    CALLS.append((user, password, protocol, client))
    return GOOD.get(user) == password


async def async_verify(user: str, password: str, protocol: str, client: str) -> bool:
    CALLS.append((user, password, protocol, client))
    return GOOD.get(user) == password


def raising_verify(user: str, password: str, protocol: str, client: str) -> bool:
    raise ConnectionError("the directory is down")


def vague_verify(user: str, password: str, protocol: str, client: str) -> Any:
    return 1  # not True: never taken for a right password


def slow_verify(user: str, password: str, protocol: str, client: str) -> bool:
    import time

    time.sleep(1.0)
    return True


NAPS: list[str] = []  # threads that ran sleepy_verify


def sleepy_verify(user: str, password: str, protocol: str, client: str) -> bool:
    """Sleeps as many seconds as the password says ("0.4"), then says yes."""
    import threading
    import time

    NAPS.append(threading.current_thread().name)
    time.sleep(float(password))
    return True


def nginx_headers(
    user: str = "jdoe",
    password: str = "right horse",
    protocol: str = "imap",
    client: str = ATTACKER,
    method: str = "plain",
    attempt: int = 1,
) -> dict[str, str]:
    """What ngx_mail_auth_http_create_request sends (values already escaped)."""
    return {
        "Auth-Method": method,
        "Auth-User": user,
        "Auth-Pass": password,
        "Auth-Protocol": protocol,
        "Auth-Login-Attempt": str(attempt),
        "Client-IP": client,
        "Client-Host": "[UNAVAILABLE]",
    }


def nginx_escape(raw: bytes) -> bytes:
    """``ngx_escape_uri(..., NGX_ESCAPE_MAIL_AUTH)``: space, % and 0x00-0x1F as %XX."""
    return b"".join(
        b"%%%02X" % byte if byte <= 0x20 or byte == 0x25 else bytes([byte]) for byte in raw
    )
