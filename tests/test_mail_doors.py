"""IMAP, POP3 and SMTP logins on one brain: real Dovecot and nginx asking ``mailguard serve``.

Everything here is a real program on 127.0.0.1, started by the tests in a
temporary directory of its own and stopped by PID:

- ``mailguard serve`` (``python -m mailguard serve --config FILE --port P``)
  with the shipped ``examples/dovecot/mailguard.toml`` and
  ``examples/nginx-mail/mailguard.toml``, their port, secret and durations
  overridden for the test;
- a private Dovecot (:mod:`dovecot_server`) with the shipped
  ``examples/dovecot/95-mailguard-policy.conf`` pointed at that daemon;
- nginx's mail proxy (:mod:`nginx_mail`) running the shipped
  ``examples/nginx-mail/nginx-mail.conf`` block, its ``auth_http`` pointed at
  the daemon, in front of a second Dovecot standing in for Cyrus (IMAP, POP3
  and submission: the daemon checks each password by logging in to it,
  ``verify = "backend"``);
- for the Redis cases, a redis-server (:mod:`redis_server`) shared by two
  daemons, one asked by Dovecot, the other by nginx.

Clients are :mod:`imaplib`, :mod:`poplib` and :mod:`smtplib`, each bound to a
chosen 127.x.y.z source address (all of 127.0.0.0/8 is local on Linux), so
each test's attacker and user are addresses of their own and the servers
see them as such (Dovecot's ``%{rip}``, nginx's ``Client-IP``).  Dovecot's
own failure delay and auth penalty are off in the private Dovecot, so every
refusal below is mailguard's.

Marked ``servers``: ``-m "not servers"`` skips them.  Each wait is bounded.
"""

from __future__ import annotations

import contextlib
import http.client
import imaplib
import json
import os
import poplib
import re
import secrets
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dovecot_server import (
    EXAMPLE_SECRET,
    POLICY_EXAMPLE,
    DovecotServer,
    dovecot_binary,
    has_submission,
    policy_config,
)
from nginx_mail import MAIL_EXAMPLE, MAIL_MODULE, NginxMail, mail_block, nginx_binary
from processes import Managed
from redis_server import RedisServer, free_port

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOVECOT_TOML = ROOT / "examples" / "dovecot" / "mailguard.toml"
NGINX_TOML = ROOT / "examples" / "nginx-mail" / "mailguard.toml"

LIMIT = 5  # max_failed_logins in every daemon below
BLOCK = 4.0  # block_duration, seconds (room for nginx's 1 s auth_wait on a busy machine)
NGINX_WAIT = "1s"  # auth_wait: nginx answers each refusal this much later (at least 1 s)
USERS = {
    "alice": "alice-Right-1",
    "bob": "bob+right 2",  # a plus and a space: nginx escapes, the daemon must not form-decode
    "carol": "carol-right-3",
    "dave": "dave-right-4",
    "erin": "erin-right-5",
}
WRONG = "not-the-password"
BACKEND_TRUSTS = "127.0.0.1/32"  # the backend's login_trusted_networks: the daemon and nginx

servers = pytest.mark.servers


# ------------------------------------------------------------------ clients
@dataclass(frozen=True)
class Attempt:
    """How one login ended: ``ok`` and the server's words (for messages)."""

    ok: bool
    said: str


class _Imap(imaplib.IMAP4):
    """imaplib, connecting from a chosen source address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=10)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


class _Pop(poplib.POP3):
    """poplib, connecting from a chosen source address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=10)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source, 0)
        )


def imap_login(port: int, source: str, user: str, password: str) -> Attempt:
    client = _Imap(port, source)
    try:
        typ, data = client.login(user, password)
        return Attempt(typ == "OK", repr(data))
    except imaplib.IMAP4.error as exc:
        return Attempt(False, str(exc))
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()


def pop3_login(port: int, source: str, user: str, password: str) -> Attempt:
    client = _Pop(port, source)
    try:
        client.user(user)
        said = client.pass_(password)
        return Attempt(said.startswith(b"+OK"), said.decode(errors="replace"))
    except poplib.error_proto as exc:
        return Attempt(False, str(exc))
    finally:
        with contextlib.suppress(poplib.error_proto, OSError):
            client.quit()


def smtp_login(port: int, source: str, user: str, password: str) -> Attempt:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as client:
        client.ehlo("client.test")
        # AUTH PLAIN only: smtplib's login() would try LOGIN after a refused
        # PLAIN, two attempts for one guess
        client.user, client.password = user, password
        try:
            code, said = client.auth("PLAIN", client.auth_plain)
        except smtplib.SMTPAuthenticationError as exc:
            return Attempt(False, f"{exc.smtp_code} {exc.smtp_error!r}")
        except smtplib.SMTPServerDisconnected as exc:
            return Attempt(False, f"disconnected: {exc}")
        finally:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                client.quit()
        return Attempt(code == 235, f"{code} {said!r}")


Login = Callable[[int, str, str, str], Attempt]


# ------------------------------------------------------------------ the daemon
def toml_value(value: Any) -> str:
    """One TOML value (the types mailguard.toml uses)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string for the ASCII used here
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(tables: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        lines.append("")
    return "\n".join(lines)


def example_config(
    example: Path, secret: str, *, store: dict[str, Any], **mailauth: Any
) -> dict[str, dict[str, Any]]:
    """The example file's tables, with the test's secret, short durations and store."""
    tables = tomllib.loads(example.read_text(encoding="utf-8"))
    assert tables["serve"]["secret"] == EXAMPLE_SECRET, f"{example} changed its secret"
    tables["serve"].update(secret=secret, allow=["127.0.0.1"])  # clients use 127.0.0.2 and up
    tables["mailauth"].update(
        max_failed_logins=LIMIT, failure_interval="60s", block_duration=f"{BLOCK:g}s", **mailauth
    )
    tables["store"] = store
    return dict(tables)


class Serve(Managed):
    """``python -m mailguard serve`` as a subprocess on a free loopback port."""

    def __init__(self, tables: dict[str, dict[str, Any]], name: str) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix=f"mailguard-serve-{name}-")
        self.dir = Path(self.tmp.name)
        self.config = self.dir / "mailguard.toml"
        self.config.write_text(toml_text(tables), encoding="utf-8")
        self.secret = str(tables["serve"]["secret"])
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.dir / "serve.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start(self) -> Serve:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        }
        command = [sys.executable, "-m", "mailguard", "serve", "--config", str(self.config)]
        command += ["--port", str(self.port)]
        with open(self.dir / "serve.log", "ab") as log:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.dir
            )
        deadline = time.monotonic() + 20
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mailguard serve exited:\n{self.log()}")
            try:
                status, _ = self.request("GET", "/healthz")
                if status in (200, 503):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mailguard serve did not answer:\n{self.log()}")
            time.sleep(0.05)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        source: str = "127.0.0.1",
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=10, source_address=(source, 0)
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def dovecot(
        self,
        command: str,
        payload: dict[str, Any],
        secret: str | None = "",
        source: str = "127.0.0.1",
    ) -> tuple[int, bytes]:
        """POST /dovecot as Dovecot would (``secret=""``: the right one; None: none)."""
        headers = {"Content-Type": "application/json"}
        if secret is not None:
            headers["X-Mailguard-Secret"] = secret or self.secret
        body = json.dumps(payload).encode()
        return self.request("POST", f"/dovecot?command={command}", body, headers, source)

    def cleanup(self) -> None:
        self.tmp.cleanup()


def nginx_headers(client: str, user: str, password: str, protocol: str = "imap") -> dict[str, str]:
    """What nginx's auth_http sends (``ngx_mail_auth_http_create_request``)."""
    return {
        "Auth-Method": "plain",
        "Auth-User": user,
        "Auth-Pass": password.replace("%", "%25").replace(" ", "%20"),
        "Auth-Protocol": protocol,
        "Auth-Login-Attempt": "1",
        "Client-IP": client,
        "Client-Host": "[UNAVAILABLE]",
    }


def dovecot_payload(remote: str, login: str = "alice", **more: Any) -> dict[str, Any]:
    """What Dovecot 2.3 posts (``auth_policy_request_attributes`` of the example)."""
    return {
        "device_id": "",
        "login": login,
        "protocol": "imap",
        "pwhash": "abc",
        "remote": remote,
        "session_id": secrets.token_urlsafe(9),
        "tls": False,
        **more,
    }


# ------------------------------------------------------------------ the stack
def need_servers() -> None:
    if dovecot_binary() is None:
        pytest.skip(
            "dovecot is not installed (scripts/test.sh installs dovecot-imapd, dovecot-pop3d"
            " and dovecot-submissiond as root)"
        )
    if os.geteuid() != 0:
        pytest.skip("the private Dovecot runs its master as root")
    if nginx_binary() is None or not MAIL_MODULE.exists():
        pytest.skip(
            "nginx or its mail module is missing (scripts/test.sh installs nginx-light and"
            " libnginx-mod-mail as root)"
        )


@dataclass
class Doors:
    """One set of doors on one brain (or two daemons on one Redis)."""

    dovecot: DovecotServer  # asks `dovecot_serve`
    nginx: NginxMail  # asks `nginx_serve`, proxies to `cyrus`
    cyrus: DovecotServer
    dovecot_serve: Serve
    nginx_serve: Serve

    def door(self, name: str) -> tuple[Login, int]:
        """``(login function, port)`` of a door: ``dovecot-imap``, ``nginx-smtp``..."""
        server, protocol = name.split("-")
        login = {"imap": imap_login, "pop3": pop3_login, "smtp": smtp_login}[protocol]
        if server == "dovecot":
            ports = {
                "imap": self.dovecot.imap_port,
                "pop3": self.dovecot.pop3_port,
                "smtp": self.dovecot.submission_port,
            }
        else:
            ports = {
                "imap": self.nginx.imap_port,
                "pop3": self.nginx.pop3_port,
                "smtp": self.nginx.smtp_port,
            }
        return login, ports[protocol]

    def logs(self) -> str:
        return (
            f"--- dovecot (asks mailguard):\n{self.dovecot.log(3000)}\n"
            f"--- nginx:\n{self.nginx.log(2000)}\n"
            f"--- cyrus (the backend):\n{self.cyrus.log(1500)}\n"
            f"--- mailguard serve (dovecot):\n{self.dovecot_serve.log()}\n"
            + (
                f"--- mailguard serve (nginx):\n{self.nginx_serve.log()}\n"
                if self.nginx_serve is not self.dovecot_serve
                else ""
            )
        )


@pytest.fixture(scope="module")
def cyrus() -> Iterator[DovecotServer]:
    """The mail server behind nginx (a Dovecot without any policy), trusting
    127.0.0.1 (the daemon, and nginx) to name the client."""
    need_servers()
    server = DovecotServer.for_tests(USERS, trusted_networks=BACKEND_TRUSTS)
    try:
        yield server
    finally:
        server.close()


def backends(cyrus: DovecotServer) -> dict[str, str]:
    found = {"imap": f"127.0.0.1:{cyrus.imap_port}", "pop3": f"127.0.0.1:{cyrus.pop3_port}"}
    if cyrus.submission:
        found["smtp"] = f"127.0.0.1:{cyrus.submission_port}"
    return found


def build_doors(
    cyrus: DovecotServer,
    dovecot_serve: Serve,
    nginx_serve: Serve,
    closing: list[Any],
    dovecot_path: str = "/dovecot",
) -> Doors:
    for serve in {id(dovecot_serve): dovecot_serve, id(nginx_serve): nginx_serve}.values():
        closing.append(serve)
        serve.start()
    url = f"http://{dovecot_serve.base}{dovecot_path}"
    dovecot = DovecotServer.for_tests(USERS, policy=policy_config(url, dovecot_serve.secret))
    closing.append(dovecot)
    nginx = NginxMail.for_tests(f"{nginx_serve.base}/nginx", nginx_serve.secret)
    closing.append(nginx)
    return Doors(dovecot, nginx, cyrus, dovecot_serve, nginx_serve)


@pytest.fixture(scope="module")
def memory(cyrus: DovecotServer) -> Iterator[Doors]:
    """One daemon, memory store, asked by Dovecot and by nginx."""
    closing: list[Any] = []
    try:
        tables = example_config(
            NGINX_TOML,
            secrets.token_urlsafe(18),
            store={"type": "memory"},
            nginx_backends=backends(cyrus),
            auth_wait=NGINX_WAIT,
        )
        serve = Serve(tables, "memory")
        yield build_doors(cyrus, serve, serve, closing, dovecot_path="/dovecot/")
    finally:
        for thing in reversed(closing):
            thing.close()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


@pytest.fixture(scope="module")
def shared(cyrus: DovecotServer, redis: RedisServer) -> Iterator[Doors]:
    """Two daemons on one redis-server: Dovecot asks one, nginx the other.

    Dovecot's daemon has ``on_store_error = "closed"``, nginx's ``"open"``:
    the store-down test sees both answers.
    """
    closing: list[Any] = []
    store = {"type": "redis", "url": redis.url}
    try:
        first = Serve(
            example_config(
                DOVECOT_TOML, secrets.token_urlsafe(18), store=store, on_store_error="closed"
            ),
            "redis-dovecot",
        )
        second = Serve(
            example_config(
                NGINX_TOML,
                secrets.token_urlsafe(18),
                store=store,
                nginx_backends=backends(cyrus),
                auth_wait=NGINX_WAIT,
                on_store_error="open",
            ),
            "redis-nginx",
        )
        yield build_doors(cyrus, first, second, closing)
    finally:
        for thing in reversed(closing):
            thing.close()


DOORS = ["dovecot-imap", "dovecot-pop3", "dovecot-smtp", "nginx-imap", "nginx-pop3", "nginx-smtp"]


def doors_here() -> list[str]:
    """The doors this machine has (SMTP needs dovecot-submissiond: Dovecot's own
    submission door, and the backend behind nginx's)."""
    return [d for d in DOORS if not d.endswith("smtp") or has_submission()]


def address(test: int, who: int) -> str:
    """A loopback address of one test's own: 127.<test>.<who>.1."""
    return f"127.{test}.{who}.1"


def expect(attempt: Attempt, ok: bool, what: str, doors: Doors) -> None:
    assert attempt.ok is ok, f"{what}: {attempt.said}\n{doors.logs()}"


# ------------------------------------------------------------------ 1. every door
@servers
def test_brute_force_through_each_door_blocks_the_address_until_the_block_ends(
    memory: Doors,
) -> None:
    """Each door is attacked at once, in a thread of its own (nginx answers a
    refusal only after ``auth_wait``), from addresses of its own."""
    names = doors_here()
    assert len(names) >= 4
    # bob's password has a space and a plus: through nginx's IMAP and SMTP
    # (POP3's PASS takes no space) it checks the Auth-Pass escaping end to end
    victims = {
        "dovecot-imap": "alice",
        "dovecot-pop3": "carol",
        "dovecot-smtp": "erin",  # submission: Dovecot sends protocol "submission"
        "nginx-imap": "bob",
        "nginx-pop3": "dave",
        "nginx-smtp": "bob",
    }
    started: dict[str, float] = {}
    failed: list[str] = []

    def attack(index: int, name: str) -> None:
        login, port = memory.door(name)
        attacker, user = address(10 + index, 1), address(10 + index, 2)
        victim = victims[name]
        try:
            if not login(port, attacker, victim, USERS[victim]).ok:  # a right one counts nothing
                failed.append(f"{name}: the right password before the attack")
            for n in range(LIMIT):
                if login(port, attacker, victim, WRONG).ok:
                    failed.append(f"{name}: wrong password {n + 1} let in")
            started[name] = time.monotonic()
            attempt = login(port, attacker, victim, USERS[victim])
            if attempt.ok:
                failed.append(f"{name}: the right password let in after {LIMIT} failures")
            attempt = login(port, user, victim, USERS[victim])
            if not attempt.ok:
                failed.append(f"{name}: another address refused: {attempt.said}")
        except Exception as exc:
            failed.append(f"{name}: {exc!r}")

    threads = [
        threading.Thread(target=attack, args=(index, name)) for index, name in enumerate(names)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failed, "\n".join(failed) + "\n" + memory.logs()
    assert set(started) == set(names)
    # the block ends on time: let in once it is over (and not before: above)
    time.sleep(max(0.0, max(started.values()) + BLOCK + 0.5 - time.monotonic()))
    for index, name in enumerate(names):
        login, port = memory.door(name)
        victim = victims[name]
        attempt = login(port, address(10 + index, 1), victim, USERS[victim])
        expect(attempt, True, f"{name}: after the block", memory)


# ------------------------------------------------------------------ 2. one rule for all doors
def three_and_two(doors: Doors, test: int) -> None:
    """3 wrong passwords through Dovecot and 2 through nginx block on both."""
    attacker, user = address(test, 1), address(test, 2)
    for n in range(3):
        login, port = doors.door(("dovecot-imap", "dovecot-pop3", "dovecot-imap")[n])
        expect(login(port, attacker, "carol", WRONG), False, f"dovecot wrong {n + 1}", doors)
    # not blocked yet (asked without a session_id, as Postfix's SASL does: the
    # allow holds an attempt (#14 F3), which its report, a policy reject, ends
    # without counting)
    probe = dovecot_payload(attacker, session_id="")
    status, body = doors.nginx_serve.dovecot("allow", probe)
    assert (status, json.loads(body)["status"]) == (200, 0), body
    ended = {**probe, "success": False, "policy_reject": True}
    status, body = doors.nginx_serve.dovecot("report", ended)
    assert status == 200, body
    for n in range(2):
        login, port = doors.door(("nginx-pop3", "nginx-imap")[n])
        expect(login(port, attacker, "carol", WRONG), False, f"nginx wrong {n + 1}", doors)
    for name in doors_here():
        login, port = doors.door(name)
        expect(login(port, attacker, "carol", USERS["carol"]), False, f"blocked at {name}", doors)
    for name in ("dovecot-imap", "nginx-imap"):
        login, port = doors.door(name)
        expect(login(port, user, "carol", USERS["carol"]), True, f"{name}: someone else", doors)


@servers
def test_failures_through_dovecot_and_nginx_add_up_in_one_daemon(memory: Doors) -> None:
    three_and_two(memory, 20)
    # one log, the filters' fail2ban-safe shape, naming the protocol
    log = memory.dovecot_serve.log()
    assert re.search(
        r'login failure client=127\.20\.1\.1 account="carol" streak=3/5 protocol=imap', log
    )
    assert re.search(r"login blocked client=127\.20\.1\.1 .* protocol=(imap|pop3)\n", log), log


@servers
def test_failures_through_dovecot_and_nginx_add_up_on_one_redis(shared: Doors) -> None:
    assert shared.dovecot_serve is not shared.nginx_serve
    three_and_two(shared, 21)


# ------------------------------------------------------------------ 3. parallel
def password_checks(dovecot: DovecotServer, source: str) -> tuple[int, int]:
    """``(password checks, policy refusals)`` Dovecot logged for ``source``."""
    log = dovecot.log_path.read_text(errors="replace")
    checks = len(re.findall(rf"passwd-file\([^,]*,{re.escape(source)},.*Password mismatch", log))
    refusals = len(re.findall(rf"\([^,]*,{re.escape(source)},.*due to policy server refusal", log))
    return checks, refusals


def burst(login: Login, port: int, source: str, user: str, count: int) -> list[Attempt]:
    """``count`` wrong-password logins from ``source`` at once, each on its own connection."""
    barrier = threading.Barrier(count)
    results: list[Attempt] = []
    errors: list[BaseException] = []

    def guess() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(login(port, source, user, WRONG))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guess) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, repr(errors)
    assert len(results) == count
    return results


@servers
def test_parallel_connections_through_dovecot_cannot_exceed_the_limit(memory: Doors) -> None:
    """20 wrong passwords at once: at most LIMIT reach Dovecot's password check."""
    attacker = address(30, 1)
    login, port = memory.door("dovecot-imap")
    results = burst(login, port, attacker, "dave", 20)
    assert not any(r.ok for r in results), memory.logs()
    checks, refusals = password_checks(memory.dovecot, attacker)
    assert 1 <= checks <= LIMIT, f"{checks} password checks\n{memory.logs()}"
    assert checks + refusals == 20, f"{checks} + {refusals}\n{memory.logs()}"
    expect(login(port, attacker, "dave", USERS["dave"]), False, "blocked after the burst", memory)


@servers
def test_parallel_connections_through_nginx_cannot_exceed_the_limit(memory: Doors) -> None:
    """20 wrong passwords at once through nginx: at most LIMIT backend logins.

    The daemon checks passwords by logging in to the backend, so the backend's
    log counts the checks (``erin`` is this test's own user)."""
    attacker = address(31, 1)
    login, port = memory.door("nginx-imap")
    results = burst(login, port, attacker, "erin", 20)
    assert not any(r.ok for r in results), memory.logs()
    log = memory.cyrus.log_path.read_text(errors="replace")
    checks = len(re.findall(r"passwd-file\(erin,.*Password mismatch", log))
    assert 1 <= checks <= LIMIT, f"{checks} backend password checks\n{memory.logs()}"
    # the backend trusts the daemon, which names the client (IMAP ID x-originating-ip)
    named = len(re.findall(rf"passwd-file\(erin,{re.escape(attacker)},.*Password mismatch", log))
    assert named == checks, f"{named} of {checks} checks name the client\n{memory.logs()}"
    expect(login(port, attacker, "erin", USERS["erin"]), False, "blocked after the burst", memory)
    expect(login(port, address(31, 2), "erin", USERS["erin"]), True, "someone else", memory)


# ------------------------------------------------------------------ 4. who may ask
@servers
def test_callers_outside_allow_or_without_the_secret_are_refused_and_count_nothing(
    memory: Doors,
) -> None:
    serve = memory.dovecot_serve
    victim = address(40, 1)
    # (secret, source): None is no secret header, "" the right secret
    tries: list[tuple[str | None, str]] = [
        (None, "127.0.0.1"),  # no secret
        ("x" * 24, "127.0.0.1"),  # a wrong one
        (serve.secret + "x", "127.0.0.1"),  # a longer one
    ]
    for secret, source in tries * 2:
        for command in ("report", "allow"):
            payload = dovecot_payload(victim, success=False, policy_reject=False)
            status, body = serve.dovecot(command, payload, secret, source)
            assert status == 403, (secret, source, status, body)
            assert b"status" not in body  # no verdict for a refused caller
        for password in (WRONG, USERS["alice"]):  # no oracle: the right one gets 403 too
            headers = nginx_headers(victim, "alice", password)
            if secret is not None:
                headers["X-Mailguard-Secret"] = secret or serve.secret
            status, body = serve.request("GET", "/nginx", headers=headers, source=source)
            assert status == 403, (secret, source, status, body)
            assert b"auth-status" not in body.lower()
    # the right secret from outside allow: disconnected before a byte is read
    # (issue #14 F1: no answer at all, not even a 403)
    for _ in range(2):
        for command in ("report", "allow"):
            payload = dovecot_payload(victim, success=False, policy_reject=False)
            with pytest.raises(OSError):
                serve.dovecot(command, payload, "", "127.0.0.9")
        with pytest.raises(OSError):
            headers = nginx_headers(victim, "alice", USERS["alice"])
            headers["X-Mailguard-Secret"] = serve.secret
            serve.request("GET", "/nginx", headers=headers, source="127.0.0.9")
    # nothing was counted: the victim logs in through both servers
    for name in ("dovecot-imap", "nginx-imap"):
        login, port = memory.door(name)
        expect(login(port, victim, "alice", USERS["alice"]), True, name, memory)
    status, body = serve.dovecot("allow", dovecot_payload(victim))
    assert status == 200 and json.loads(body) == {"status": 0, "msg": ""}, body


@servers
def test_a_dovecot_with_the_wrong_secret_blocks_nobody(cyrus: DovecotServer, memory: Doors) -> None:
    """Dovecot's requests are refused (403): it fails open, as configured, and nothing counts."""
    url = f"http://{memory.dovecot_serve.base}/dovecot"
    with DovecotServer(USERS, policy=policy_config(url, "w" * 24)) as stranger:
        attacker = address(41, 1)
        for _ in range(LIMIT + 2):
            attempt = imap_login(stranger.imap_port, attacker, "bob", WRONG)
            assert not attempt.ok, stranger.log()
        attempt = imap_login(stranger.imap_port, attacker, "bob", USERS["bob"])
        assert attempt.ok, stranger.log()
        assert "Policy server HTTP error" in stranger.log(), stranger.log()
    login, port = memory.door("dovecot-imap")
    expect(login(port, attacker, "bob", USERS["bob"]), True, "nothing was counted", memory)


# ------------------------------------------------------------------ 6. successes
@servers
def test_right_passwords_through_dovecot_count_nothing(memory: Doors) -> None:
    user = address(60, 1)
    for protocol in ["imap", "pop3"] * (LIMIT + 1):
        login, port = memory.door(f"dovecot-{protocol}")
        expect(login(port, user, "alice", USERS["alice"]), True, protocol, memory)
    status, body = memory.dovecot_serve.dovecot("allow", dovecot_payload(user))
    assert status == 200 and json.loads(body) == {"status": 0, "msg": ""}, body
    checks, refusals = password_checks(memory.dovecot, user)
    assert (checks, refusals) == (0, 0), memory.logs()


# ------------------------------------------------------------------ 5. the store down
@servers
def test_the_store_down_keeps_both_doors_answering(shared: Doors, redis: RedisServer) -> None:
    """Dovecot's daemon answers -1 (closed), nginx's still checks passwords (open)."""
    user = address(50, 1)
    redis.stop()
    try:
        # Dovecot's daemon: a valid JSON -1 for every login, within Dovecot's 2 s
        started = time.monotonic()
        status, body = shared.dovecot_serve.dovecot("allow", dovecot_payload(user))
        assert time.monotonic() - started < 2.0
        assert status == 200 and json.loads(body)["status"] == -1, body
        assert isinstance(json.loads(body)["msg"], str)
        status, body = shared.nginx_serve.dovecot("allow", dovecot_payload(user))  # "open"
        assert (status, json.loads(body)["status"]) == (200, 0), body
        status, body = shared.dovecot_serve.dovecot(
            "report", dovecot_payload(user, success=False, policy_reject=False)
        )
        assert status == 200 and isinstance(json.loads(body)["status"], int), body
        login, port = shared.door("dovecot-imap")
        expect(login(port, user, "alice", USERS["alice"]), False, "closed: refused", shared)
        # nginx's daemon: still checks each password against the backend
        for name in doors_here():
            if name.startswith("nginx"):
                login, port = shared.door(name)
                expect(login(port, user, "alice", WRONG), False, f"{name}: wrong", shared)
                expect(login(port, user, "alice", USERS["alice"]), True, f"{name}: right", shared)
        log = shared.dovecot.log()
        assert "Policy server HTTP error" not in log and "malformed" not in log, log
    finally:
        redis.start()
    login, port = shared.door("dovecot-imap")
    expect(login(port, user, "alice", USERS["alice"]), True, "the store is back", shared)


# ------------------------------------------------------------------ the examples
def test_the_examples_hold_what_the_tests_replace(tmp_path: Path) -> None:
    text = policy_config("http://127.0.0.1:1/dovecot", "s" * 20)
    assert "auth_policy_server_url = http://127.0.0.1:1/dovecot\n" in text
    assert "auth_policy_server_api_header = X-Mailguard-Secret:" + "s" * 20 in text
    assert "session_id=%{session}" in text
    assert re.search(r"^auth_policy_hash_nonce = \S{16,}$", text, re.M)
    block = mail_block("127.0.0.1:1/nginx", "s" * 20, {"imap": 2, "pop3": 3, "smtp": 4})
    for line in ("auth_http 127.0.0.1:1/nginx;", "listen 127.0.0.1:2;", "listen 127.0.0.1:4;"):
        assert line in block
    # an example that drifts from what the tests replace fails them loudly
    changed = tmp_path / "changed.conf"
    changed.write_text(POLICY_EXAMPLE.read_text().replace("8787", "8788"))
    with pytest.raises(ValueError, match="8787"):
        policy_config("http://x/", "s" * 20, template=changed)
    changed.write_text(MAIL_EXAMPLE.read_text().replace("listen 110;", "listen 995;"))
    with pytest.raises(ValueError, match="listen 110;"):
        mail_block("x/nginx", "s" * 20, {"imap": 2, "pop3": 3, "smtp": 4}, changed)


def test_the_example_configurations_load() -> None:
    from mailguard.config import ConfigError, load, loads

    for path in (DOVECOT_TOML, NGINX_TOML):
        # the shipped placeholder is refused (issue #14 F2), naming file and key
        with pytest.raises(ConfigError) as caught:
            load(path)
        assert str(path) in str(caught.value) and "serve.secret" in str(caught.value)
        text = path.read_text().replace(EXAMPLE_SECRET, "a-real-secret-0123456789")
        config = loads(text, source=str(path), env={})
        assert config.serve.options["secret"] == "a-real-secret-0123456789"
        assert config.mailauth.options["max_failed_logins"] == 5


def pipelined_imap_logins(port: int, source: str, user: str, passwords: list[str]) -> list[bytes]:
    """Every LOGIN sent at once on one connection; the tagged answers, in order."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        reader = s.makefile("rb")
        assert reader.readline().startswith(b"* OK")
        lines = [f'a{n} LOGIN {user} "{pw}"\r\n' for n, pw in enumerate(passwords)]
        s.sendall("".join(lines).encode())
        answers: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(answers) < len(passwords) and time.monotonic() < deadline:
            line = reader.readline()
            if not line:
                break
            if line.startswith(b"a"):
                answers.append(line.strip())
        return answers


@servers
def test_pipelined_logins_on_one_dovecot_connection_cannot_exceed_the_limit(
    memory: Doors,
) -> None:
    """One connection, so one Dovecot ``session_id`` for every attempt, and 13
    LOGINs sent at once (the last with the right password): each attempt's
    ``allow`` may reach the daemon next to the previous one's ``report``."""
    attacker = address(32, 1)
    passwords = [f"{WRONG}-{n}" for n in range(12)] + [USERS["alice"]]
    answers = pipelined_imap_logins(memory.dovecot.imap_port, attacker, "alice", passwords)
    checks, refusals = password_checks(memory.dovecot, attacker)
    assert len(answers) == len(passwords), f"{answers}\n{memory.logs()}"
    assert 1 <= checks <= LIMIT, f"{checks} password checks\n{memory.logs()}"
    assert checks + refusals == len(passwords), f"{checks} + {refusals}\n{memory.logs()}"
    assert not any(b" OK " in answer for answer in answers), answers  # the last one is right


@servers
def test_a_backend_with_its_own_brakes_slows_the_guesser_not_everyone(
    cyrus: DovecotServer,
) -> None:
    """A stock Dovecot behind nginx (its auth penalty on: 2 to 15 s for an
    address after failures) trusting the daemon's address: each check names
    the client, so a guess slows the guesser's next check and not an honest
    user's login (untrusted, the backend would slow everyone's: 4 s measured)."""
    backend = DovecotServer(USERS, brakes=True, trusted_networks=BACKEND_TRUSTS)
    serve: Serve | None = None
    nginx: NginxMail | None = None
    try:
        backend.start()
        tables = example_config(
            NGINX_TOML,
            secrets.token_urlsafe(18),
            store={"type": "memory"},
            nginx_backends=backends(backend),
            auth_wait=NGINX_WAIT,
        )
        serve = Serve(tables, "brakes").start()
        nginx = NginxMail.for_tests(f"{serve.base}/nginx", serve.secret)
        attacker, user = address(70, 1), address(70, 2)
        for protocol, login, port in (
            ("imap", imap_login, nginx.imap_port),
            ("pop3", pop3_login, nginx.pop3_port),
        ):
            assert not login(port, attacker, "alice", WRONG).ok, backend.log()
            started = time.monotonic()
            assert login(port, user, "carol", USERS["carol"]).ok, backend.log()
            took = time.monotonic() - started
            assert took < 1.5, f"{protocol}: the honest login took {took:.1f} s\n{backend.log()}"
        log = backend.log_path.read_text(errors="replace")
        assert len(re.findall(rf"\(alice,{re.escape(attacker)},.*Password mismatch", log)) == 2, log
    finally:
        for thing in (nginx, serve, backend):
            if thing is not None:
                thing.close()
