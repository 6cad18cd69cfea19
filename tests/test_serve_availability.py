"""What the README's "IMAP, POP3 and SMTP" section says about outages, on real servers.

- nginx in front of two ``mailguard serve`` instances: the README's ``http {}``
  block (read from README.md itself, ports moved to free ones) as the one
  ``auth_http`` address, an upstream of both instances on one redis-server,
  the shipped ``mail {}`` block, and a private Dovecot standing in for Cyrus
  as the backend.  A login goes through with either instance down, failures
  sent to both instances add up to one block, and with both down nobody logs
  in (nginx fails closed, answering ``* BAD internal server error``).
- Dovecot asking a policy server that is not there, or that refuses it (a
  wrong secret): with the shipped ``auth_policy_reject_on_fail = no`` the
  right password still logs in and a wrong one is still refused by Dovecot,
  uncounted (fail open); mailguard logs the refused caller.
- Dovecot pointed at the README's ``http {}`` server reaches the second
  instance while the first is down (a brute force is still blocked).

Every process is started here on free loopback ports and stopped by its PID.
"""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dovecot_server import DovecotServer, policy_config
from nginx_mail import MAIL_MODULE, NginxMail, nginx_binary
from redis_server import RedisServer, free_port

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECRET = "test-secret-0123456789"
USERS = {"alice": "right"}
LIMIT = 3


def readme_http_block() -> str:
    """The ``http { ... }`` of the README's two-instance nginx example."""
    text = README.read_text("utf-8")
    blocks = re.findall(r"```nginx\n(.*?)```", text, re.S)
    (example,) = [b for b in blocks if "upstream mailguard" in b]
    start = example.index("http {")
    depth = 0
    for end in range(start, len(example)):
        if example[end] == "{":
            depth += 1
        elif example[end] == "}":
            depth -= 1
            if depth == 0:
                return example[start : end + 1]
    raise AssertionError("the README's http { block is not closed")


def test_readme_http_block_is_found() -> None:
    block = readme_http_block()
    assert block.startswith("http {") and block.endswith("}")
    for needed in ("127.0.0.1:8787", "127.0.0.1:8788", "listen 127.0.0.1:8786;"):
        assert block.count(needed) == 1, needed
    assert "location = /nginx" in block and "location /dovecot" in block


class Serve:
    """One ``python -m mailguard serve`` process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Serve:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mailguard", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mailguard serve did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def serve_config(port: int, redis_url: str, backend: DovecotServer) -> str:
    return (
        f'[store]\ntype = "redis"\nurl = "{redis_url}"\nprefix = "avail:"\n\n'
        f'[serve]\nport = {port}\nsecret = "{SECRET}"\n\n'
        f"[mailauth]\nmax_failed_logins = {LIMIT}\n"
        f'failure_interval = "5m"\nblock_duration = "5m"\nauth_wait = 1\n'
        f'nginx_backends = {{ imap = "127.0.0.1:{backend.imap_port}",'
        f' pop3 = "127.0.0.1:{backend.pop3_port}" }}\n'
    )


class Doors:
    def __init__(self, nginx: NginxMail, serves: list[Serve], proxy_port: int) -> None:
        self.nginx, self.serves, self.proxy_port = nginx, serves, proxy_port


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    if nginx_binary() is None or not MAIL_MODULE.exists():
        pytest.skip("nginx and libnginx-mod-mail are needed (scripts/test.sh installs them)")
    tmp = tmp_path_factory.mktemp("availability")
    with RedisServer.for_tests() as redis, DovecotServer.for_tests(USERS) as backend:
        ports = [free_port(), free_port()]
        serves = []
        for index, port in enumerate(ports):
            config = tmp / f"serve{index}.toml"
            config.write_text(serve_config(port, redis.url, backend))
            serves.append(Serve(config, port, tmp / f"serve{index}.log"))
        proxy_port = free_port()
        http = (
            readme_http_block()
            .replace("127.0.0.1:8787", f"127.0.0.1:{ports[0]}")
            .replace("127.0.0.1:8788", f"127.0.0.1:{ports[1]}")
            .replace("listen 127.0.0.1:8786;", f"listen 127.0.0.1:{proxy_port};")
        )
        nginx = NginxMail(f"127.0.0.1:{proxy_port}/nginx", SECRET)
        # Debian's compiled-in access log is /var/log/nginx/access.log: keep it private.
        private = f"http {{\n    access_log {nginx.dir}/access.log;"
        nginx.block = http.replace("http {", private, 1) + "\n" + nginx.block
        try:
            for serve in serves:
                serve.start()
            nginx.start()
            yield Doors(nginx, serves, proxy_port)
        finally:
            nginx.close()
            for serve in serves:
                serve.stop()


def imap_login(port: int, source: str, user: str, password: str) -> str:
    """``"OK"``, or the error nginx (or the backend) answered, logging in from ``source``."""

    class FromSource(imaplib.IMAP4):
        def _create_socket(self, timeout: float | None) -> socket.socket:
            return socket.create_connection(
                (self.host, self.port), timeout=timeout, source_address=(source, 0)
            )

    try:
        client = FromSource("127.0.0.1", port, timeout=20)
    except (imaplib.IMAP4.abort, OSError) as exc:
        return f"greeting: {exc}"
    try:
        client.login(user, password)
    except (imaplib.IMAP4.error, OSError) as exc:
        return str(exc)
    finally:
        with contextlib.suppress(imaplib.IMAP4.error, OSError):
            client.logout()
    return "OK"


def test_either_instance_answers(doors: Doors) -> None:
    first, second = doors.serves
    port = doors.nginx.imap_port
    assert imap_login(port, "127.0.21.1", "alice", "right") == "OK"
    first.stop()
    try:
        for _ in range(3):  # round robin would hit the stopped one: nginx moves on
            assert imap_login(port, "127.0.21.1", "alice", "right") == "OK"
    finally:
        first.start()
    second.stop()
    try:
        for _ in range(3):
            assert imap_login(port, "127.0.21.1", "alice", "right") == "OK"
    finally:
        second.start()


def test_failures_through_both_instances_add_up(doors: Doors) -> None:
    port = doors.nginx.imap_port
    source = "127.0.21.2"
    for _ in range(LIMIT):  # round robin: the failures go to both instances
        assert imap_login(port, source, "alice", "wrong") != "OK"
    refused = imap_login(port, source, "alice", "right")
    assert refused != "OK", "the address should be blocked on the shared store"
    assert imap_login(port, "127.0.21.3", "alice", "right") == "OK"  # others untouched


def test_nginx_lets_nobody_in_with_both_down(doors: Doors) -> None:
    port = doors.nginx.imap_port
    for serve in doors.serves:
        serve.stop()
    try:
        assert imap_login(port, "127.0.21.4", "alice", "right") != "OK"
        # what nginx says on the wire (ngx_mail_imap_module.c: internal_server_error)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"* OK")
            sock.sendall(b"a1 LOGIN alice right\r\n")
            said = reader.read()  # until nginx closes
        assert said == b"* BAD internal server error\r\n", said
    finally:
        for serve in doors.serves:
            serve.start()
    assert imap_login(port, "127.0.21.4", "alice", "right") == "OK"


def test_dovecot_reaches_the_other_instance_through_the_same_http_server(doors: Doors) -> None:
    url = f"http://127.0.0.1:{doors.proxy_port}/dovecot"
    with DovecotServer.for_tests(USERS, policy=policy_config(url, SECRET)) as dovecot:
        port = dovecot.imap_port
        assert imap_login(port, "127.0.21.6", "alice", "right") == "OK"
        first = doors.serves[0]
        first.stop()
        try:
            for _ in range(LIMIT):
                assert imap_login(port, "127.0.21.6", "alice", "wrong") != "OK"
            # counted by the second instance: blocked, not let through unchecked
            assert imap_login(port, "127.0.21.6", "alice", "right") != "OK"
            assert "Policy server HTTP error" not in dovecot.log()
        finally:
            first.start()
        assert imap_login(port, "127.0.21.7", "alice", "right") == "OK"


def test_a_wrong_secret_lets_dovecot_logins_through_unchecked_and_is_logged(doors: Doors) -> None:
    serve = doors.serves[0]
    url = f"http://127.0.0.1:{serve.port}/dovecot"
    policy = policy_config(url, "not-the-secret-0123456789")
    with DovecotServer.for_tests(USERS, policy=policy) as dovecot:
        for _ in range(LIMIT + 1):  # refused by mailguard: nothing counted, nothing blocked
            assert imap_login(dovecot.imap_port, "127.0.21.8", "alice", "wrong") != "OK"
        assert imap_login(dovecot.imap_port, "127.0.21.8", "alice", "right") == "OK"
        assert "Policy server HTTP error" in dovecot.log()
    assert "mailguard serve refused caller=127.0.0.1 reason=secret" in serve.log.read_text()


def test_dovecot_fails_open_without_mailguard() -> None:
    nobody = free_port()  # nothing listens here
    policy = policy_config(f"http://127.0.0.1:{nobody}/dovecot", SECRET)
    assert "auth_policy_reject_on_fail = no" in policy
    with DovecotServer.for_tests(USERS, policy=policy) as dovecot:
        assert imap_login(dovecot.imap_port, "127.0.21.5", "alice", "right") == "OK"
        assert imap_login(dovecot.imap_port, "127.0.21.5", "alice", "wrong") != "OK"
        assert "Policy server HTTP error" in dovecot.log()
