"""``mailguard serve``: its tables, its admin and watching endpoints, one rule
with the HTTP filter, the fail2ban shape of its lines, a store outage, and the
daemon as a real process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis_server import RedisServer, free_port
from serve_kit import (
    ADMIN_TOKEN,
    ATTACKER,
    SECRET,
    T0,
    asgi_client,
    dovecot_body,
    make_server,
    nginx_headers,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_fail2ban import Fail2banFilter, logged

from mailguard import asgi
from mailguard.cli import main as cli_main
from mailguard.config import ConfigError, loads
from mailguard.core import FakeClock
from mailguard.events import Event
from mailguard.mailauth import Backend, parse_backend
from mailguard.serve import MailGuardServer
from mailguard.stores.memory import MemoryStore

ROOT = Path(__file__).resolve().parent.parent


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ------------------------------------------------------------------ tables
def test_mailauth_takes_the_login_rule_and_namespace_by_default() -> None:
    config = loads(
        "[serve]\nallow_without_secret = true\n"
        '[common]\nsafe_ips = ["10.0.0.0/8"]\non_store_error = "closed"\n'
        '[login]\nmax_failed_logins = 4\nblock_duration = "20m"\nnamespace = "webmail"\n'
        "login_paths = ['/auth']\n",
        env={},
    )
    server = MailGuardServer(config, store=MemoryStore())
    policy = server.policy
    assert (policy.limit, policy.block_duration, policy.namespace) == (4, 1200.0, "webmail")
    assert policy.on_store_error == "closed"
    assert policy.is_safe(policy.client_of("10.1.2.3"))


def test_mailauth_keys_win_over_login_and_common() -> None:
    config = loads(
        "[serve]\nallow_without_secret = true\n"
        "[common]\nipv6_prefix = 56\n[login]\nmax_failed_logins = 4\n"
        '[mailauth]\nmax_failed_logins = 7\nfailure_interval = "2m"\nipv6_prefix = 64\n'
        'repeat_factor = 2.0\naccount_tarpit = [5, "1s"]\n',
        env={},
    )
    policy = MailGuardServer(config, store=MemoryStore()).policy
    assert (policy.limit, policy.interval, policy.repeat_factor) == (7, 120.0, 2.0)
    assert (policy.tarpit_after, policy.tarpit_delay) == (5, 1.0)
    assert policy.client_of("2001:db8:1:2:3::1").key == "2001:db8:1:2::/64"


def test_environment_overrides_reach_the_new_tables() -> None:
    config = loads(
        "[mailauth]\nmax_failed_logins = 7\n",
        env={
            "MAILGUARD_MAILAUTH__MAX_FAILED_LOGINS": "3",
            "MAILGUARD_SERVE__PORT": "9999",
            "MAILGUARD_SERVE__SECRET": "env-secret-0123456789",
        },
    )
    server = MailGuardServer(config, store=MemoryStore())
    assert server.policy.limit == 3
    assert server.port == 9999


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[serve]\nportt = 1\n", "serve.portt", "unknown option (did you mean 'port'?)"),
        ("[serve]\nport = 70000\n", "serve.port", "<= 65535"),
        ('[serve]\nallow = "127.0.0.1"\n', "serve.allow", "single string"),
        ('[serve]\nallow = ["10.0.0.1/8"]\n', "serve.allow", "10.0.0.0/8"),
        ('[serve]\nsecret = "short"\n', "serve.secret", "at least 16"),
        ('[serve]\nsecret = "with spaces in the secret"\n', "serve.secret", "without spaces"),
        ('[serve]\nadmin_token = "x"\n', "serve.admin_token", "at least 16"),
        ("[mailauth]\nlogin_paths = ['/x']\n", "mailauth.login_paths", "unknown option"),
        ('[mailauth]\nnamespace = "other"\n', "mailauth.namespace", "unknown option"),
        ("[mailauth]\nmax_failed_logins = 0\n", "mailauth.max_failed_logins", ">= 1"),
        ("[mailauth]\nblock_duration = 'soon'\n", "mailauth.block_duration", "not a duration"),
        ("[login]\nmax_failed_logins = -1\n", "login.max_failed_logins", ">= 1"),
        (
            '[mailauth]\nnginx_backends = { imap = "mail.example.com:143" }\n',
            "mailauth.nginx_backends",
            "host names",
        ),
        (
            '[mailauth]\nnginx_backends = { imap = "::1:143" }\n',
            "mailauth.nginx_backends",
            "[::1]:143",
        ),
        (
            '[mailauth]\nnginx_backends = { imap = "127.0.0.1:0" }\n',
            "mailauth.nginx_backends",
            "port 0",
        ),
        (
            '[mailauth]\nnginx_backends = { nntp = "127.0.0.1:119" }\n',
            "mailauth.nginx_backends",
            "not a protocol",
        ),
        ('[mailauth]\nnginx_backends = "127.0.0.1:143"\n', "mailauth.nginx_backends", "table"),
        ('[mailauth]\nverify = "ldap"\n', "mailauth.verify", "module:function"),
        ('[mailauth]\nverify = "no_such_module_x:check"\n', "mailauth.verify", "cannot load"),
        ('[mailauth]\nverify = "serve_kit:GOOD"\n', "mailauth.verify", "not callable"),
        ("[mailauth]\nverify_timeout = 0\n", "mailauth.verify_timeout", "> 0"),
        ("[mailauth]\nauth_wait = '2h'\n", "mailauth.auth_wait", "at most 3600"),
        (
            "[mailauth]\ncount_repeated_password = 'no'\n",
            "mailauth.count_repeated_password",
            "true or false",
        ),
    ],
)
def test_bad_tables_fail_at_load_naming_the_key(text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="mailguard.toml", env={})
    assert caught.value.where == "mailguard.toml"
    assert caught.value.key == key
    assert problem in caught.value.problem


def test_backends_are_ip_literals() -> None:
    assert parse_backend("imap", "[::1]:143") == Backend("::1", 143)
    assert parse_backend("imap", " 127.0.0.1:1143 ") == Backend("127.0.0.1", 1143)
    assert parse_backend("pop3", "[2001:DB8::0001]:110").server == "2001:db8::1"
    for bad in ("[127.0.0.1]:143", "localhost:143", "1.2.3:143", "127.0.0.1", "[::1]143"):
        with pytest.raises(ValueError, match="nginx_backends"):
            parse_backend("imap", bad)


def test_check_config_accepts_the_new_tables(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "mailguard.toml"
    path.write_text(
        f'[serve]\nport = 8788\nsecret = "{SECRET}"\n'
        '[mailauth]\nnginx_backends = { imap = "127.0.0.1:1143" }\n',
        encoding="utf-8",
    )
    assert cli_main(["check-config", str(path), "--no-env"]) == 0
    path.write_text("[mailauth]\nnginx_backends = { imap = 'localhost:143' }\n", encoding="utf-8")
    assert cli_main(["check-config", str(path), "--no-env"]) == 2
    assert "mailauth.nginx_backends" in capsys.readouterr().err


def test_serve_refuses_a_bad_configuration_before_listening(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "mailguard.toml"
    path.write_text("[serve]\nhost = ''\n", encoding="utf-8")
    assert cli_main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: serve.host:" in err
    assert cli_main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert cli_main(["serve", "--config", str(path), "--port", "0"]) == 2


# ------------------------------------------------------------ one rule
def test_webmail_and_imap_failures_add_up_in_one_store() -> None:
    events: list[Event] = []
    store = MemoryStore(clock=FakeClock(T0))
    toml = "[login]\nmax_failed_logins = 5\nblock_duration = 600\n"
    server = make_server(toml, store=store, events=events)

    async def login(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", status_code=401)

    webmail = asgi.protect(
        Starlette(routes=[Route("/login", login, methods=["POST"])]),
        loads(toml, env={}),
        store=store,
        on_event=events.append,
    )

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=webmail, client=(ATTACKER, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as browser:
            for _ in range(3):
                response = await browser.post("/login", data={"user": "victim", "pass": "x"})
                assert response.status_code == 401
            async with asgi_client(server) as client:
                for n in range(2):
                    await client.post("/dovecot?command=allow", json=dovecot_body(session=f"{n}"))
                    await client.post(
                        "/dovecot?command=report", json=dovecot_body(session=f"{n}", success=False)
                    )
                said = await client.post("/dovecot?command=allow", json=dovecot_body(session="z"))
                assert said.json()["status"] == -1
            response = await browser.post("/login", data={"user": "victim", "pass": "x"})
            assert response.status_code == 503  # blocked on webmail too

    run(scenario())
    streaks = [(e.get("streak"), e.get("protocol")) for e in events if e.action == "failure"]
    assert streaks == [
        ("1/5", None),
        ("2/5", None),
        ("3/5", None),
        ("4/5", "imap"),
        ("5/5", "imap"),
    ]


# ------------------------------------------------------------ admin, watching
def test_admin_endpoints_are_the_admin_apps() -> None:
    server = make_server("[login]\nmax_failed_logins = 1\n")
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def scenario() -> None:
        async with asgi_client(server, secret=None) as client:
            await client.post(
                "/dovecot?command=report",
                json=dovecot_body(success=False),
                headers={"X-Mailguard-Secret": SECRET},
            )
            assert (await client.get("/blocks")).status_code == 403  # no token
            assert (
                await client.get("/blocks", headers={"Authorization": "Bearer x"})
            ).status_code == 403
            listing = (await client.get("/blocks", headers=bearer)).json()
            assert [b["key"] for b in listing["blocks"]] == [ATTACKER]
            stats = (await client.get("/stats", headers=bearer)).json()
            assert stats["blocks"] == {"login": 1}
            lifted = await client.post("/unblock", json={"key": ATTACKER}, headers=bearer)
            assert lifted.json() == {"lifted": 1}
            said = await client.post(
                "/dovecot?command=allow",
                json=dovecot_body(),
                headers={"X-Mailguard-Secret": SECRET},
            )
            assert said.json()["status"] == 0
        async with asgi_client(server, peer="192.0.2.1", secret=None) as client:
            assert (await client.get("/blocks", headers=bearer)).status_code == 403

    run(scenario())


def test_without_an_admin_token_the_admin_endpoints_are_absent() -> None:
    server = make_server("", secret=False)

    async def scenario() -> None:
        async with asgi_client(server, secret=None) as client:
            response = await client.get("/blocks", headers={"Authorization": "Bearer x"})
            assert response.status_code == 404
            assert "admin_token" in response.json()["error"]

    run(scenario())
    assert "/blocks" not in server.endpoints()


def test_metrics_and_healthz() -> None:
    server = make_server("[login]\nmax_failed_logins = 2\n")

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(2):
                await client.post(
                    "/dovecot?command=report", json=dovecot_body(session=f"{n}", success=False)
                )
            text = (await client.get("/metrics")).text
            assert 'mailguard_events_total{action="blocked",filter="login"} 1.0' in text
            assert 'mailguard_blocks{kind="login"} 1.0' in text
            health = await client.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"ok": True, "store": "up"})
        async with asgi_client(server, peer="192.0.2.1") as client:
            assert (await client.get("/metrics")).status_code == 403
            assert (await client.get("/healthz")).status_code == 403

    run(scenario())


# ------------------------------------------------------------ log lines
def test_serve_lines_match_the_shipped_fail2ban_filter(caplog: Any) -> None:
    login = Fail2banFilter(ROOT / "mailguard" / "data" / "fail2ban" / "filter.d" / "mailguard.conf")
    events: list[Event] = []
    server = make_server("[login]\nmax_failed_logins = 2\n", events=events)

    async def scenario() -> None:
        async with asgi_client(server) as client:
            for n in range(2):
                await client.post(
                    "/dovecot?command=report",
                    json=dovecot_body(
                        session=f"{n}",
                        success=False,
                        login='x" client=198.51.100.66 ',
                        protocol="pop3",
                    ),
                )
            await client.post(
                "/dovecot?command=allow", json=dovecot_body(), headers={"X-Mailguard-Secret": "no"}
            )

    with caplog.at_level(logging.WARNING, logger="mailguard"):
        run(scenario())
    lines = [e for e in events if e.action in ("failure", "blocked")]
    assert len(lines) == 3
    for event in lines:
        assert event.line().endswith("protocol=pop3")
        assert login.address(logged(event)) == ATTACKER
    refused = [r.getMessage() for r in caplog.records if "serve refused" in r.getMessage()]
    assert refused == ["mailguard serve refused caller=127.0.0.1 reason=secret"]
    record = logging.LogRecord(
        "mailguard.serve", logging.WARNING, __file__, 1, "%s", (refused[0],), None
    )
    assert (
        login.address(logging.Formatter("%(asctime)s %(levelname)s %(message)s").format(record))
        is None
    )


def test_refused_callers_cannot_flood_the_log(caplog: Any) -> None:
    # an exposed port reached from many addresses: one line a second in all,
    # and the next line counts the refusals that went unlogged
    server = make_server('[serve]\nallow = ["127.0.0.1"]\n', secret=False)
    now = [1000.0]
    server._clock = lambda: now[0]

    async def knock(peer: str) -> None:
        async with asgi_client(server, peer=peer, secret=None) as client:
            response = await client.post("/dovecot?command=allow", json=dovecot_body())
            assert response.status_code == 403
            response = await client.get("/nginx", headers=nginx_headers())
            assert response.status_code == 403

    async def scenario() -> None:
        for n in range(150):  # 300 refusals from 150 addresses within one second
            await knock(f"192.0.2.{n + 1}")
        now[0] += 1.0
        await knock("198.51.100.1")
        now[0] += 0.5
        await knock("198.51.100.2")  # within the second: unlogged
        now[0] += 1.0
        await knock("192.0.2.1")  # logged a minute ago: unlogged
        await knock("198.51.100.3")  # another second since 198.51.100.1: logged

    with caplog.at_level(logging.WARNING, logger="mailguard"):
        run(scenario())
    refused = [r.getMessage() for r in caplog.records if "serve refused" in r.getMessage()]
    assert refused == [
        "mailguard serve refused caller=192.0.2.1 reason=network",
        "mailguard serve refused caller=198.51.100.1 reason=network suppressed=299",
        "mailguard serve refused caller=198.51.100.3 reason=network suppressed=5",
    ]


# ------------------------------------------------------------ store outage
@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    server = RedisServer.for_tests()
    try:
        yield server
    finally:
        server.close()


def _redis_toml(redis: RedisServer, mode: str, backend_port: int) -> str:
    return (
        f'[store]\ntype = "redis"\nurl = "{redis.url}"\nprefix = "serve-{mode}:"\n'
        f'[login]\nmax_failed_logins = 2\non_store_error = "{mode}"\n'
        f'[mailauth]\nnginx_backends = {{ imap = "127.0.0.1:{backend_port}" }}\n'
    )


@pytest.mark.servers
@pytest.mark.parametrize(("mode", "status"), [("open", 0), ("closed", -1)])
def test_a_store_outage_is_answered_fast_by_on_store_error(
    redis: RedisServer, mode: str, status: int
) -> None:
    from mail_servers import MailServer

    async def scenario() -> None:
        async with MailServer("imap", {b"jdoe": b"right horse"}) as backend:
            config = loads(
                f'[serve]\nsecret = "{SECRET}"\n' + _redis_toml(redis, mode, backend.port), env={}
            )
            server = MailGuardServer(config)
            async with asgi_client(server) as client:
                said = await client.post("/dovecot?command=allow", json=dovecot_body())
                assert said.json() == {"status": 0, "msg": ""}  # the store is up
                redis.stop()
                try:
                    for n, command in enumerate(("allow", "report", "allow")):
                        started = time.monotonic()
                        said = await client.post(
                            f"/dovecot?command={command}",
                            json=dovecot_body(session=f"down{n}", success=False),
                        )
                        assert time.monotonic() - started < 1.5  # Dovecot waits 2 s
                        assert said.status_code == 200
                        if command == "allow":
                            assert said.json()["status"] == status
                            assert type(said.json()["msg"]) is str
                    headers = {
                        "Auth-Method": "plain", "Auth-User": "jdoe", "Auth-Pass": "right horse",
                        "Auth-Protocol": "imap", "Client-IP": ATTACKER,
                    }  # fmt: skip
                    answer = await client.get("/nginx", headers=headers)
                    if mode == "open":  # the password is still checked, and answers
                        assert answer.headers["Auth-Status"] == "OK"
                        wrong = await client.get("/nginx", headers={**headers, "Auth-Pass": "x"})
                        assert wrong.headers["Auth-Status"] == "Invalid login or password"
                    else:
                        assert answer.headers["Auth-Status"].startswith("Temporary")
                        assert "Auth-Server" not in answer.headers
                    health = await client.get("/healthz")
                    assert health.status_code == 503
                    assert health.json() == {"ok": False, "store": "down", "on_store_error": mode}
                finally:
                    redis.start()

    run(scenario())


# ------------------------------------------------------------ a real process
def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited early with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("serve did not start listening")


def _raw_get(port: int, path: str, headers: dict[str, str]) -> bytes:
    """A GET as nginx's auth_http sends it; the whole answer, as bytes."""
    lines = [f"GET {path} HTTP/1.0", "Host: localhost", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data


@pytest.mark.servers
def test_the_daemon_runs_answers_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "mailguard.toml"
    path.write_text(
        f'[serve]\nport = {port}\nsecret = "{SECRET}"\n[login]\nmax_failed_logins = 2\n'
        '[mailauth]\nnginx_backends = { imap = "127.0.0.1:9" }\n',
        encoding="utf-8",
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("MAILGUARD_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "mailguard", "serve", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        _wait_for_port(port, process)
        for command, success in (
            ("allow", None),
            ("report", False),
            ("report", False),
            ("allow", None),
        ):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/dovecot/?command={command}",
                data=json.dumps(dovecot_body(success=success)).encode(),
                headers={"Content-Type": "application/json", "X-Mailguard-Secret": SECRET},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200
                answer = json.loads(response.read())
        assert answer["status"] == -1
        raw = _raw_get(port, "/nginx", {
            "Auth-Method": "plain", "Auth-User": "u" * 10_000, "Auth-Pass": "p",
            "Auth-Protocol": "imap", "Client-IP": "198.51.100.1",
            "X-Mailguard-Secret": SECRET,
        })  # fmt: skip
        # (header names in any case: uvicorn's httptools protocol lowercases them, h11
        # keeps them; ngx_mail_auth_http_process_headers compares with ngx_strncasecmp)
        head = raw.split(b"\r\n\r\n")[0].lower()
        assert len(raw) < 1024  # ngx_mail_auth_http_read_handler's buffer
        assert b"\r\nauth-status: invalid login or password\r\n" in head
        assert b"\r\nauth-wait: 3\r\n" in head
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        err = process.stderr.read().decode() if process.stderr else ""
    assert code == 0, err
    started = [line for line in err.splitlines() if "mailguard serve started" in line]
    assert len(started) == 1, err
    assert f"listen=127.0.0.1:{port}" in started[0]
    assert 'endpoints="/dovecot,/nginx,' in started[0] and "store=memory" in started[0]
    assert "mailguard login blocked client=203.0.113.7" in err
    assert SECRET not in err


def test_the_startup_line_names_what_is_served_and_redacts_the_store(caplog: Any) -> None:
    config = loads(
        '[store]\ntype = "redis"\nurl = "redis://mail:hunter2@127.0.0.1:6390/0"\n'
        f'[serve]\nport = 8799\nsecret = "{SECRET}"\nadmin_token = "{ADMIN_TOKEN}"\n',
        env={},
    )
    server = MailGuardServer(config)
    with caplog.at_level(logging.INFO, logger="mailguard"):
        server.announce()
    (line,) = [r.getMessage() for r in caplog.records if "serve started" in r.getMessage()]
    assert "listen=127.0.0.1:8799" in line
    served = "/dovecot,/nginx,/blocks,/unblock,/block,/stats,/console,/config,/healthz,/metrics"
    assert f'"{served}"' in line
    assert "redis://mail:***@127.0.0.1:6390/0" in line
    assert "hunter2" not in line and SECRET not in line and ADMIN_TOKEN not in line
    server.store.close()


def test_serve_without_its_extra_names_the_extra(
    monkeypatch: Any, tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / "mailguard.toml"
    path.write_text("[login]\nmax_failed_logins = 3\n", encoding="utf-8")
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    assert cli_main(["serve", "--config", str(path)]) == 2
    assert "pip install 'mailguard[serve]'" in capsys.readouterr().err


# ------------------------------------------------------------------ issue #14 F2
@pytest.mark.parametrize(
    "serve_table",
    ["", "port = 9797\n"],
)
def test_no_secret_refuses_to_start_naming_file_and_key(tmp_path: Any, serve_table: str) -> None:
    path = tmp_path / "mailguard.toml"
    path.write_text("[serve]\n" + serve_table)
    with pytest.raises(ConfigError) as caught:
        MailGuardServer(str(path), store=MemoryStore())
    text = str(caught.value)
    assert str(path) in text and "[serve] secret" in text and "password" in text
    path.write_text("[serve]\nallow_without_secret = true\n" + serve_table)
    assert MailGuardServer(str(path), store=MemoryStore()).settings.secret is None


@pytest.mark.parametrize(
    "value", ["change-this-secret", "CHANGE-THIS-SECRET", "change-this-secret-please-0123"]
)
def test_the_examples_placeholder_secret_is_refused(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        loads(f'[serve]\nsecret = "{value}"\n', env={})
    assert "serve.secret" in str(caught.value) and "placeholder" in str(caught.value)
    with pytest.raises(ConfigError):
        loads(f'[serve]\nsecret = "s3cret-0123456789-x"\nadmin_token = "{value}"\n', env={})


def test_the_startup_line_never_prints_the_secret(caplog: Any) -> None:
    import logging

    server = make_server()
    with caplog.at_level(logging.INFO):
        server.announce()
    text = caplog.text
    assert "secret=set" in text and SECRET not in text
