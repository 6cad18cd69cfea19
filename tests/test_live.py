"""Live configuration (mailguard.live): the overlay over the file, checked as the
file is, swapped into running filters; the command, the admin app, SIGHUP, and
two uvicorn workers on one redis-server."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from redis_server import RedisServer, free_port

from mailguard import MemoryStore
from mailguard.admin import AdminApp
from mailguard.config import ConfigError, loads
from mailguard.live import LiveConfig
from mailguard.policies import DosPolicy
from mailguard.stores.redis import RedisStore
from mailguard.wsgi import DosFilter, protect

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t" * 32

BASE = """
[common]
safe_ips = ["10.0.0.0/8"]
[dos]
max_requests_per_sec = 30
[login]
max_failed_logins = 3
"""


def ok_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"ok"]


def memory_live(text: str = BASE) -> tuple[Any, LiveConfig, MemoryStore]:
    store = MemoryStore()
    app = protect(ok_app, loads(text, env={}), store=store, live=True, reload_on_hup=False)
    assert app.live is not None
    return app, app.live, store


def fronts(app: Any) -> list[Any]:
    found = []
    while hasattr(app, "swap"):
        found.append(app)
        app = app.app
    return found


# ------------------------------------------------------------- checking


def test_a_change_reaches_every_filter_and_names_its_version() -> None:
    app, live, _ = memory_live()
    version = live.change("set", "dos.max_requests_per_sec", 150, by="alice@mx1")
    assert version == 1 and live.version == 1
    assert app.policy.limit == 150
    [entry] = live.entries("dos.max_requests_per_sec")
    assert entry["value"] == 150 and entry["source"] == "overlay"
    assert entry["detail"].startswith("v1 set by alice@mx1 at ")
    assert live.entries("login.max_failed_logins")[0]["source"] == "file"


def test_invalid_values_change_nothing_with_the_files_message() -> None:
    app, live, store = memory_live()
    for key, value, message in [
        ("dos.max_requests_per_sec", 0, "overlay v1: dos.max_requests_per_sec: must be a whole"),
        ("login.block_duration", "soon", "overlay v1: login.block_duration: 'soon' is not a"),
        ("common.safe_ips", ["nope"], "overlay v1: common.safe_ips: 'nope' is not an IP"),
        ("dos.no_such_key", 1, "overlay v1: dos.no_such_key: unknown option"),
    ]:
        with pytest.raises(ConfigError) as caught:
            live.change("set", key, value)
        assert str(caught.value).startswith(message), str(caught.value)
    assert store.overlay_version() == 0 and live.version == 0
    assert app.policy.limit == 30


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("common.trusted_proxies", "client settings"),
        ("dos.ipv6_prefix", "client settings"),
        ("store.url", "the store is chosen at start"),
        ("serve.port", "[serve] is read"),
        ("dos.enabled", "report-only"),
        ("login.namespace", "names the blocks"),
        ("common.on_store_error", "outage handling"),
        ("mailauth.verify", "door settings"),
    ],
)
def test_keys_that_need_a_restart_are_refused(key: str, says: str) -> None:
    _, live, store = memory_live()
    with pytest.raises(ConfigError) as caught:
        live.change("set", key, [] if "proxies" in key else 1)
    text = str(caught.value)
    assert "cannot change while running" in text and says in text and "restart" in text
    assert store.overlay_version() == 0


@pytest.mark.parametrize(
    "key", ["dos.max_requests_per_sec\x1b[2J", "dos\n.delay_ms", "DOS.delay_ms", "x" * 500, 7]
)
def test_hostile_key_names_are_refused_and_never_echoed_raw(key: Any) -> None:
    _, live, store = memory_live()
    with pytest.raises(ConfigError) as caught:
        live.change("set", key, 1)
    text = str(caught.value)
    assert text.isprintable() and len(text) < 200
    assert store.overlay_version() == 0


def test_huge_values_are_refused() -> None:
    _, live, store = memory_live()
    for value in ([f"10.0.0.{i % 250}" for i in range(5000)], "x" * 100_000):
        with pytest.raises(ConfigError):
            live.change("set", "common.safe_ips", value)
    assert store.overlay_version() == 0


def test_add_and_remove_on_common_safe_ips_start_from_the_file() -> None:
    app, live, _ = memory_live()
    live.change("add", "common.safe_ips", "192.168.100.0/24")
    assert sorted(app.policy.safe_ips) == ["10.0.0.0/8", "192.168.100.0/24"]
    live.change("remove", "common.safe_ips", "10.0.0.0/8")
    assert list(app.policy.safe_ips) == ["192.168.100.0/24"]
    assert list(fronts(app)[1].policy.safe_ips) == ["192.168.100.0/24"]  # login too
    with pytest.raises(ConfigError, match="is not in the list"):
        live.change("remove", "common.safe_ips", "10.0.0.0/8")
    with pytest.raises(ConfigError, match="list key"):
        live.change("add", "dos.max_requests_per_sec", 5)
    live.change("unset", "common.safe_ips")
    assert list(app.policy.safe_ips) == ["10.0.0.0/8"]


def test_a_live_change_never_switches_a_filter_off_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, live, store = memory_live()
    for entry in ("0.0.0.0/0", "::/0", "10.0.0.0/7"):
        with pytest.raises(ConfigError, match="covers \\(nearly\\) every address"):
            live.change("add", "common.safe_ips", entry)
    with pytest.raises(ConfigError, match="covers"):
        live.change("set", "dos.safe_ips", ["192.0.2.1", "0.0.0.0/1"])
    # IPv4 in IPv6 forms matches plain IPv4 (identity._with_ipv4_view): measured so
    for entry in ("::ffff:0.0.0.0/96", "::ffff:0:0/96", "64:ff9b::/96", "::ffff:0.0.0.0/97"):
        with pytest.raises(ConfigError, match="covers \\(nearly\\) every address"):
            live.change("add", "login.safe_ips", entry)
    # and the entries together: 256 /8s (or 512 /9s) are everyone
    for size in (8, 9):
        step = 1 << (32 - size)
        many = [str(ipaddress.ip_network((i * step, size))) for i in range(1 << size)]
        with pytest.raises(ConfigError, match="together the entries cover"):
            live.change("set", "common.safe_ips", many)
    assert store.overlay_version() == 0
    # what admins do stays possible: the private ranges, loopback, a partner
    usual = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "203.0.113.0/24"]
    live.change("set", "common.safe_ips", usual)
    assert store.overlay_version() == 1
    live.change("unset", "common.safe_ips")
    with caplog.at_level("WARNING", logger="mailguard.live"):
        live.change("set", "dos.delay_ms", 0)
    assert any("dos is report-only (v3)" in r.getMessage() for r in caplog.records)


def test_blocks_and_counters_survive_a_change() -> None:
    app, live, store = memory_live()
    store.block("login", "203.0.113.9", 3600, "manual")
    for _ in range(5):
        store.hit("dos", "198.51.100.1", 30, 1.0)
    live.change("set", "login.max_failed_logins", 7)
    live.change("set", "dos.max_requests_per_sec", 31)
    assert store.get_block("login", "203.0.113.9") is not None
    assert fronts(app)[1].policy.namespace == "login" and app.policy.namespace == "dos"
    assert store.peek("dos", "198.51.100.1", 1.0) >= 5


def test_a_merge_that_fails_in_a_process_keeps_its_settings_and_logs_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a document written past the checks (by hand, or by another version)
    app, live, store = memory_live(BASE.replace("[login]", "max_delayed = 4\n[login]"))
    other = LiveConfig(store, None, watch=False)
    other.change("set", "dos.max_requests_per_sec", 99)
    wait_for(lambda: app.policy.limit == 99, 2.0)  # heard by this process's thread
    from mailguard.stores.overlay import OverlayChange

    bad = {"dos.max_requests_per_sec": 99, "dos.max_delayed": 0}
    store.write_overlay(1, bad, OverlayChange(0, "mallory", 0.0, "set", "dos.max_delayed", 0))
    with caplog.at_level("ERROR", logger="mailguard.live"):
        live.refresh()
        live.refresh(force=True)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "overlay v2: dos.max_delayed" in errors[0]
    assert "keeping v1" in errors[0]
    assert app.policy.limit == 99 and app.policy.max_delayed == 4 and live.version == 1


def test_the_swap_is_atomic_per_filter() -> None:
    """Requests under a storm of swaps: each sees one policy whole (the one
    whose check ran is the one whose refusal is sent), never a mix."""
    seen: list[str] = []

    class Tagged(DosPolicy):
        def check_client(self, client: Any) -> Any:
            if not self.by_client:
                seen.append("check_client on a policy that checks requests")
            threading.current_thread().policy = self  # type: ignore[attr-defined]
            return super().check_client(client)

        def check(self, request: Any) -> Any:
            if self.by_client:
                seen.append("check on a policy that checks clients")
            threading.current_thread().policy = self  # type: ignore[attr-defined]
            return super().check(request)

        def refusal_for(self, verdict: Any) -> Any:
            if threading.current_thread().policy is not self:  # type: ignore[attr-defined]
                seen.append("refused by another policy than the one that checked")
            return super().refusal_for(verdict)

    store = MemoryStore()
    one = Tagged(store=store, max_requests_per_sec=1)
    two = Tagged(store=store, max_requests_per_sec=1, exempt_paths=["/other"])
    front = DosFilter(ok_app, policy=one)
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            front.swap(two)
            front.swap(one)

    def client() -> None:
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "REMOTE_ADDR": "198.51.100.7"}
        for _ in range(3000):
            list(front(dict(environ), lambda *a: None))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=swapper)] + [
            threading.Thread(target=client) for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads[1:]:
            t.join()
        stop.set()
        threads[0].join()
    finally:
        sys.setswitchinterval(old)
    assert seen == []
    with pytest.raises(ValueError, match="same client settings"):
        front.swap(DosPolicy(store=store, trusted_proxies=["127.0.0.1"]))


# ------------------------------------------------------------- admin app


def call(admin: AdminApp, method: str, body: Any = None) -> tuple[int, Any]:
    data = b"" if body is None else json.dumps(body).encode()
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": "/config", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_AUTHORIZATION": f"Bearer {TOKEN}", "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": __import__("io").BytesIO(data),
    }  # fmt: skip
    status: list[str] = []
    out = b"".join(admin.wsgi(environ, lambda s, h: status.append(s)))
    return int(status[0].split()[0]), json.loads(out)


def test_admin_get_and_post_config(caplog: pytest.LogCaptureFixture) -> None:
    app, live, store = memory_live()
    admin = AdminApp(store, token=TOKEN, live=live)
    status, body = call(admin, "GET")
    assert status == 200 and body["version"] == 0 and body["live"] is True
    assert set(body) == {"version", "live", "store", "entries", "fixed"}
    assert "common.trusted_proxies" in body["fixed"]
    with caplog.at_level("WARNING", logger="mailguard.audit"):
        status, body = call(admin, "POST", {"op": "set", "key": "dos.delay_ms", "value": 0})
    assert (status, body) == (200, {"version": 1}) and app.policy.delay_ms == 0
    line = [r.getMessage() for r in caplog.records if r.name == "mailguard.audit"][-1]
    assert 'key="dos.delay_ms" op=set value="0" version=1 by=admin-token from=127.0.0.1' in line
    status, body = call(admin, "POST", {"op": "set", "key": "dos.delay_ms", "value": -5})
    assert status == 400 and body["error"].startswith("overlay v2: dos.delay_ms: must be")
    status, body = call(admin, "POST", {"op": "set", "key": "common.trusted_proxies", "value": []})
    assert status == 400 and "restart" in body["error"]
    assert live.version == 1
    entry = next(e for e in call(admin, "GET")[1]["entries"] if e["key"] == "dos.delay_ms")
    assert entry["source"] == "overlay" and "by admin-token from=127.0.0.1" in entry["detail"]
    status, body = call(AdminApp(store, token=TOKEN), "GET")
    assert status == 404 and "error" in body


# ------------------------------------------------------------- Redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


_prefixes = iter(range(1_000_000))


def wait_for(check: Any, seconds: float) -> float:
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < seconds, "timed out"
        time.sleep(0.01)
    return time.monotonic() - start


@pytest.mark.servers
def test_a_process_without_the_channel_polls_within_2_s(server: RedisServer) -> None:
    admin = redis.Redis.from_url(server.url)
    # a user that may not subscribe: its channel never comes up
    admin.execute_command(
        "ACL", "SETUSER", "nochannel", "on", ">pw-long-enough", "~*", "&*", "+@all",
        "-subscribe", "-psubscribe",
    )  # fmt: skip
    host = server.url.split("//", 1)[1]
    prefix = f"live{next(_prefixes)}:"
    store = RedisStore(f"redis://nochannel:pw-long-enough@{host}", prefix=prefix)
    app = protect(ok_app, loads(BASE, env={}), store=store)
    live = app.live
    assert live is not None
    writer = RedisStore(server.url, prefix=prefix)
    try:
        LiveConfig(writer, None, watch=False).change("set", "dos.max_requests_per_sec", 77)
        took = wait_for(lambda: app.policy.limit == 77, 2.0)
        assert not store.overlay_heard
        print(f"poll fallback applied in {took * 1000:.0f} ms")
    finally:
        live.stop()
        store.close()
        writer.close()


@pytest.mark.servers
def test_the_channel_applies_at_once_and_forged_messages_change_nothing(
    server: RedisServer,
) -> None:
    prefix = f"live{next(_prefixes)}:"
    store = RedisStore(server.url, prefix=prefix)
    app = protect(ok_app, loads(BASE, env={}), store=store)
    assert app.live is not None
    writer = RedisStore(server.url, prefix=prefix)
    client = redis.Redis.from_url(server.url)
    try:
        wait_for(lambda: store.overlay_heard, 3.0)
        client.publish(f"{prefix}channel", b'{"v":1,"op":"config","kind":null,"version":999}')
        time.sleep(0.2)
        assert app.live.version == 0 and app.policy.limit == 30
        start = time.monotonic()
        LiveConfig(writer, None, watch=False).change("set", "dos.max_requests_per_sec", 88)
        wait_for(lambda: app.policy.limit == 88, 2.0)
        print(f"channel applied in {(time.monotonic() - start) * 1000:.0f} ms")
        assert client.ttl(f"{prefix}{{config}}") == -1  # never expires
    finally:
        app.live.stop()
        store.close()
        writer.close()


APP = """
import json, os
import mailguard.asgi

async def inner(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/state":
        body = json.dumps({"pid": os.getpid(), "limit": guarded.policy.limit,
                           "version": guarded.live.version if guarded.live else None}).encode()
        status = 200
    else:
        body, status = b"no", 401 if scope["path"] == "/login" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})

guarded = mailguard.asgi.protect(inner, os.environ["LIVE_TOML"])

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    await guarded(scope, receive, send)
"""


def start_uvicorn(tmp_path: Path, toml: str, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    (tmp_path / "live_app.py").write_text(APP)
    (tmp_path / "mailguard.toml").write_text(toml)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LIVE_TOML": str(tmp_path / "mailguard.toml")}
    log = (tmp_path / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "live_app:app",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/state", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail("uvicorn did not start:\n" + (tmp_path / "uvicorn.log").read_text())
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def states(base: str, rounds: int = 40) -> dict[int, dict[str, Any]]:
    """The /state of each worker (new connection each time, so both answer)."""
    found: dict[int, dict[str, Any]] = {}
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base, limits=limits, headers={"connection": "close"}) as web:
        for _ in range(rounds):
            state = web.get("/state").json()
            found[state["pid"]] = state
    return found


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "USER": "alice"}
    return subprocess.run(
        [sys.executable, "-m", "mailguard", *args],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


@pytest.mark.servers
def test_a_cli_change_reaches_two_uvicorn_workers_within_2_s(
    server: RedisServer, tmp_path: Path
) -> None:
    prefix = f"live{next(_prefixes)}:"
    toml = f"""
[store]
type = "redis"
url = "{server.url}"
prefix = "{prefix}"
[common]
trusted_proxies = ["127.0.0.1"]
[dos]
max_requests_per_sec = 1000
[login]
max_failed_logins = 3
"""
    process, base = start_uvicorn(tmp_path, toml, workers=2)
    where = ["--redis", server.url, "--prefix", prefix]
    try:
        before = {}
        for _ in range(20):
            before.update(states(base, 10))
            if len(before) == 2:
                break
        assert len(before) == 2 and {s["limit"] for s in before.values()} == {1000}
        made = cli("block", "203.0.113.9", "--for", "1h", *where)
        assert made.returncode == 0, made.stderr
        blocked = {"x-forwarded-for": "203.0.113.9"}
        assert httpx.post(base + "/login", headers=blocked).status_code == 503

        bad = cli("config", "set", "dos.max_requests_per_sec", "0", *where)
        assert bad.returncode == 2 and bad.stdout == ""
        assert "overlay v1: dos.max_requests_per_sec: must be a whole number" in bad.stderr
        fixed = cli("config", "set", "common.trusted_proxies", "[]", *where)
        assert fixed.returncode == 2 and "restart" in fixed.stderr

        start = time.monotonic()
        done = cli("config", "set", "dos.max_requests_per_sec", "777", *where)
        assert done.returncode == 0, done.stderr
        assert "live configuration v1" in done.stdout
        assert 'audit config key="dos.max_requests_per_sec" op=set value="777"' in done.stderr
        assert "by=alice@" in done.stderr

        def applied() -> bool:
            found = states(base, 10)
            return len(found) == 2 and all(s["limit"] == 777 for s in found.values())

        wait_for(applied, 2.0)  # counted from the command's end
        print(f"two workers applied in {(time.monotonic() - start) * 1000:.0f} ms incl. the CLI")
        after = states(base)
        assert set(after) == set(before)  # the same processes: no restart
        assert httpx.post(base + "/login", headers=blocked).status_code == 503

        shown = cli("config", "get", "dos.max_requests_per_sec", *where)
        assert shown.returncode == 0
        assert "dos.max_requests_per_sec = 777  # overlay v1 set by alice@" in shown.stdout
        assert "baseline unknown" in shown.stdout
    finally:
        stop(process)


@pytest.mark.servers
def test_sighup_rereads_the_file_and_keeps_memory_blocks(tmp_path: Path) -> None:
    toml = """
[common]
trusted_proxies = ["127.0.0.1"]
[dos]
max_requests_per_sec = 1000
[login]
max_failed_logins = 2
"""
    process, base = start_uvicorn(tmp_path, toml, workers=1)
    try:
        [before] = states(base, 1).values()
        assert before["pid"] == process.pid
        who = {"x-forwarded-for": "203.0.113.5"}
        codes = [httpx.post(base + "/login", headers=who).status_code for _ in range(4)]
        assert codes[-1] == 503, codes  # blocked after two failures
        (tmp_path / "mailguard.toml").write_text(toml.replace("1000", "555"))
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: states(base, 1)[process.pid]["limit"] == 555, 2.0)
        assert process.poll() is None
        assert httpx.post(base + "/login", headers=who).status_code == 503  # still blocked
        (tmp_path / "mailguard.toml").write_text(toml.replace("1000", "0"))  # a bad file
        process.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert states(base, 1)[process.pid]["limit"] == 555  # kept
        log = (tmp_path / "uvicorn.log").read_text()
        assert "not reloaded, keeping the settings in force" in log
        assert "dos.max_requests_per_sec" in log
    finally:
        stop(process)


def test_mailguard_serve_applies_login_and_mailauth_changes_to_its_rule() -> None:
    pytest.importorskip("starlette")
    from mailguard.serve import MailGuardServer

    config = loads("[serve]\nallow_without_secret = true\n[login]\nmax_failed_logins = 4\n", env={})
    server = MailGuardServer(config, store=MemoryStore())
    assert server.live is not None and server.logins.policy.limit == 4
    server.live.change("set", "login.max_failed_logins", 6)  # [mailauth] inherits [login]
    assert server.logins.policy.limit == 6
    server.live.change("set", "mailauth.max_failed_logins", 9)
    assert server.logins.policy.limit == 9 and server.logins.policy.namespace == "login"
    with pytest.raises(ConfigError, match="door settings"):
        server.live.change("set", "mailauth.verify_timeout", 3)


@pytest.mark.servers
def test_the_command_with_a_file_starts_add_and_remove_from_it(
    server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailguard.cli import main

    prefix = f"live{next(_prefixes)}:"
    path = tmp_path / "mailguard.toml"
    path.write_text(f'[store]\ntype = "redis"\nurl = "{server.url}"\nprefix = "{prefix}"\n' + BASE)
    where = ["--config", str(path)]
    assert main(["config", "add", "common.safe_ips", "192.168.100.0/24", *where]) == 0
    assert "live configuration v1" in capsys.readouterr().out
    assert main(["config", "get", "common.safe_ips", *where]) == 0
    shown = capsys.readouterr().out
    assert 'common.safe_ips = ["10.0.0.0/8", "192.168.100.0/24"]  # overlay v1 add by ' in shown
    assert main(["config", "remove", "common.safe_ips", "172.16.0.0/12", *where]) == 2
    assert (
        "overlay v2: common.safe_ips: '172.16.0.0/12' is not in the list" in capsys.readouterr().err
    )
    assert main(["config", "add", "common.safe_ips", "0.0.0.0/0", *where]) == 2
    assert main(["config", "remove", "common.safe_ips", "10.0.0.0/8", *where]) == 0
    capsys.readouterr()
    assert main(["config", "get", *where]) == 0
    shown = capsys.readouterr().out
    assert "# live configuration v2" in shown
    assert 'common.safe_ips = ["192.168.100.0/24"]  # overlay v2 remove by ' in shown
    assert f"login.max_failed_logins = 3  # file {path}" in shown
    assert "dos.delay_ms = -1  # default" in shown
    # review of #17, F5: who made a change ($USER) never prints as a line of its own
    forged = "alice\nmailguard login blocked client=6.6.6.6"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("USER", forged)
        patch.delenv("SUDO_USER", raising=False)
        assert main(["config", "set", "dos.max_requests_per_sec", "150", *where]) == 0
    capsys.readouterr()
    assert main(["config", "get", "dos.max_requests_per_sec", *where]) == 0
    shown = capsys.readouterr().out
    assert "\nmailguard login" not in shown and "alice\\nmailguard login blocked" in shown
    # F7: a delay longer than a minute is refused (it held a worker, then overflowed)
    assert main(["config", "set", "dos.delay_ms", str(10**13), *where]) == 2
    assert "dos.delay_ms: must be a whole number <= 60000" in capsys.readouterr().err
    memory = tmp_path / "memory.toml"
    memory.write_text(BASE)
    assert main(["config", "set", "dos.delay_ms", "0", "--config", str(memory)]) == 2
    assert "SIGHUP" in capsys.readouterr().err


@pytest.mark.parametrize("front", ["asgi", "wsgi"])
def test_assigning_policy_is_deprecated_and_swaps_whole(front: str) -> None:
    import mailguard.asgi

    cls = mailguard.asgi.DosFilter if front == "asgi" else DosFilter

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never called
        raise AssertionError

    guard: Any = cls(app, max_requests_per_sec=5)
    new = DosPolicy(max_requests_per_sec=9, store=guard.policy.store)
    new.resolver = guard.policy.resolver
    with pytest.warns(DeprecationWarning, match="swap"):
        guard.policy = new
    assert guard.policy is new and guard._state.policy is new
    other = DosPolicy(max_requests_per_sec=9, trusted_proxies=["10.0.0.0/8"])  # not its resolver
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="client settings"):
        guard.policy = other
    assert guard.policy is new


def test_serve_s_failure_rule_is_listed_with_where_it_came_from() -> None:
    # mailguard serve's rule is [mailauth] over [login]: GET /config (and the
    # console) shows the value the doors use, naming the table that set it
    config = loads('[login]\nblock_duration = "20m"\n[mailauth]\nmax_failed_logins = 2\n', env={})
    live = LiveConfig(MemoryStore(), config)
    shown = {e["key"]: e for e in live.entries()}
    assert shown["mailauth.max_failed_logins"]["value"] == 2
    assert shown["mailauth.max_failed_logins"]["source"] == "file"
    assert shown["mailauth.block_duration"]["value"] == 1200.0
    assert shown["mailauth.block_duration"]["detail"].startswith("login.block_duration")
    assert "mailauth.ipv6_prefix" not in shown  # not live: not listed as if it were
    live.change("set", "login.block_duration", "30m", by="test")
    shown = {e["key"]: e for e in live.entries()}
    assert shown["mailauth.block_duration"]["value"] == 1800.0
    assert shown["mailauth.block_duration"]["source"] == "overlay"
    assert "mailauth.max_failed_logins" not in {
        e["key"] for e in LiveConfig(MemoryStore(), loads("[login]\n", env={})).entries()
    }  # a web app without [mailauth] does not list the doors' rule


def test_a_reloaded_file_changes_what_may_change_or_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # review of #17, F2/F3: a reload is checked like a live change (the keys
    # fixed while running refused), applied whole or not at all, and a filter
    # it turns report-only is said so
    path = tmp_path / "mailguard.toml"
    path.write_text(BASE, encoding="utf-8")
    store = MemoryStore()
    app = protect(ok_app, path, store=store, live=True, reload_on_hup=False)
    live: LiveConfig = app.live
    dos, login = fronts(app)
    store.block("login", "203.0.113.9", 600, "failures")
    caplog.set_level("WARNING", logger="mailguard.live")
    for extra in (
        '[login]\nmax_failed_logins = 7\nnamespace = "other"\n',  # would free every block
        "[dos]\nmax_requests_per_sec = 55\ntrusted_proxies = ['127.0.0.1']\n",
        "[dos]\nenabled = false\n",
    ):
        text = BASE.replace("[login]\nmax_failed_logins = 3\n", "").replace(
            "[dos]\nmax_requests_per_sec = 30\n", ""
        )
        path.write_text(text + "[dos]\nmax_requests_per_sec = 55\n" * ("[dos]" not in extra)
                        + "[login]\nmax_failed_logins = 3\n" * ("[login]" not in extra)
                        + extra, encoding="utf-8")  # fmt: skip
        caplog.clear()
        assert live.reload() is False, extra
        assert dos.policy.limit == 30 and login.policy.limit == 3  # nothing applied, not half
        assert login.policy.namespace == "login"
        assert (
            live.baseline is not None
            and live.baseline.filter("dos").options["max_requests_per_sec"] == 30
        )  # the baseline in force stays the old file
        errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
        assert len(errors) == 1 and "not reloaded" in errors[0], errors
    assert store.get_block("login", "203.0.113.9") is not None
    # a later live change still applies here (the process did not fall behind)
    assert live.change("set", "dos.max_requests_per_sec", 40) == 1
    assert dos.policy.limit == 40
    # a reload that turns a filter report-only says so
    path.write_text(BASE + "enforce = false\n", encoding="utf-8")
    caplog.clear()
    assert live.reload() is True
    assert login.policy.enforce is False and dos.policy.limit == 40  # overlay kept on top
    assert any("login is report-only" in r.getMessage() for r in caplog.records)


@pytest.mark.servers
def test_a_document_from_elsewhere_is_refused_without_a_traceback(server: RedisServer) -> None:
    # review of #17, F4: numbers no clock can show (1e300 s, a version of 1e400)
    prefix = f"live{next(_prefixes)}:"
    admin = redis.Redis.from_url(server.url)
    store = RedisStore(server.url, prefix=prefix)
    app = protect(ok_app, loads(BASE, env={}), store=store, live=True)
    live: LiveConfig = app.live
    transport = httpx.WSGITransport(app=AdminApp(store, token="t" * 24, live=live).wsgi)
    client = httpx.Client(transport=transport, base_url="http://a")
    bearer = {"Authorization": "Bearer " + "t" * 24}
    key = '"op":"set","key":"dos.max_requests_per_sec"'
    records = [
        (5, f'{{"version":5,"who":"x","when":1e300,{key}}}'),
        (5, f'{{"version":5,"who":"x","when":-1e300,{key}}}'),
        (5, f'{{"version":1e400,"who":"x","when":1,{key}}}'),
        ("1e400", f'{{"version":5,"who":"x","when":1,{key}}}'),
    ]
    try:
        for version, record in records:
            doc = f'{{"values":{{"dos.max_requests_per_sec":150}},"changes":[{record}]}}'
            admin.hset(f"{prefix}{{config}}", mapping={"version": version, "doc": doc})
            done = subprocess.run(
                [sys.executable, "-m", "mailguard", "config", "get", "--redis", server.url,
                 "--prefix", prefix],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
            assert "live configuration" in done.stderr
            for answer in (
                client.get("/config", headers=bearer),
                client.post(
                    "/config",
                    json={"op": "set", "key": "dos.max_requests_per_sec", "value": 120},
                    headers=bearer,
                ),
            ):  # the store's document is unusable: said so, never a crash
                assert answer.status_code in (200, 503), answer.text
                assert answer.status_code == 200 or "live configuration" in answer.text
            assert app.policy.limit == 30  # nothing of it in force
    finally:
        client.close()
        live.stop()
        store.close()
