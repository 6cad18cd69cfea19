"""nginx -> unix socket -> uvicorn / gunicorn: one client's block is not everyone's.

The issue's stack, for real: Debian's nginx (``nginx-light``; ``scripts/test.sh``
installs it) listens on a free loopback port and proxies over a unix socket in
a temporary directory to uvicorn (ASGI) or gunicorn (WSGI) running mailguard's
InvalidLoginFilter (behind a DosFilter, so the two share one resolution).
nginx writes ``X-Forwarded-For`` with ``$proxy_add_x_forwarded_for``, from the
real TCP peer: the attacker and the user connect from two different loopback
addresses (127.0.0.2 and 127.0.0.3), so nothing in the test pretends to be a
client address.

With ``trusted_proxies=["unix"]`` the attacker is blocked and the user still
reaches the application, even when the attacker writes the user's address in
an ``X-Forwarded-For`` of its own.  Without it, every client is the one key
``"unix"``: the attacker's block refuses the user, and the server logs one
warning naming ``trusted_proxies=["unix"]``.

Servers are started here, on loopback and unix sockets only, and stopped by
PID; every wait is bounded.  Marked ``servers``: ``-m "not servers"`` skips it.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from processes import private_runtime

pytestmark = pytest.mark.servers

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
ROOT = Path(__file__).resolve().parent.parent
ATTACKER = "127.0.0.2"
USER = "127.0.0.3"

APP = """
import logging
import os
from urllib.parse import parse_qs

from mailguard import asgi, wsgi

logging.basicConfig(level=logging.WARNING)  # as a deployment would: mailguard logs, never prints

COMMON = {"trusted_proxies": ["unix"] if os.environ["MG_TRUST_UNIX"] == "1" else []}


def answer(body):
    if parse_qs(body.decode()).get("password") == ["right"]:
        return "302 Found", [("location", "/inbox")], b""
    return "401 Unauthorized", [("content-type", "text/plain")], b"wrong password"


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    status, headers, content = answer(body)
    await send({
        "type": "http.response.start",
        "status": int(status.split()[0]),
        "headers": [(k.encode(), v.encode()) for k, v in headers],
    })
    await send({"type": "http.response.body", "body": content})


def wsgi_app(environ, start_response):
    size = int(environ.get("CONTENT_LENGTH") or 0)
    status, headers, content = answer(environ["wsgi.input"].read(size))
    start_response(status, headers)
    return [content]


asgi_guarded = asgi.DosFilter(
    asgi.InvalidLoginFilter(asgi_app, max_failed_logins=3, **COMMON),
    max_requests_per_sec=1000,
    **COMMON,
)
wsgi_guarded = wsgi.DosFilter(
    wsgi.InvalidLoginFilter(wsgi_app, max_failed_logins=3, **COMMON),
    max_requests_per_sec=1000,
    **COMMON,
)
"""

NGINX_CONF = """
{user}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://unix:{tmp}/app.sock:;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(check: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(150):  # 15 s at most
        if proc.poll() is not None:
            break
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    text = log.read_text(errors="replace") if log.exists() else ""
    raise AssertionError(f"{what} did not start:\n{text[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def answers(path: Path) -> bool:
    """Whether an HTTP server answers on the unix socket ``path``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        s.connect(str(path))
        s.sendall(b"GET /ready HTTP/1.0\r\nHost: ready\r\n\r\n")
        return s.recv(16).startswith(b"HTTP/")


def connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


class Stack:
    def __init__(self, tmp: Path, port: int, app_log: Path) -> None:
        self.tmp, self.port, self.app_log = tmp, port, app_log

    def login(self, source: str, password: str, spoof: str | None = None) -> int:
        """POST /login from the loopback address ``source``; the status."""
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=10, source_address=(source, 0)
        )
        try:
            headers = {"content-type": "application/x-www-form-urlencoded"}
            if spoof is not None:
                headers["x-forwarded-for"] = spoof
            body = urlencode({"user": "alice", "password": password})
            conn.request("POST", "/login", body=body, headers=headers)
            return conn.getresponse().status
        finally:
            conn.close()


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    if NGINX is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs nginx-light as root)")
    server, trust = request.param
    (tmp_path / "mg_app.py").write_text(APP)
    sock = tmp_path / "app.sock"
    env = {
        **private_runtime(dict(os.environ), tmp_path),  # (gunicorn's control socket)
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "MG_TRUST_UNIX": "1" if trust else "0",
    }
    if server == "uvicorn":
        argv = [sys.executable, "-m", "uvicorn", "--uds", str(sock), "--log-level", "warning"]
        argv += ["--no-access-log", "mg_app:asgi_guarded"]
    else:
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"unix:{sock}", "--workers", "1"]
        argv += ["--log-level", "warning", "mg_app:wsgi_guarded"]
    app_log = tmp_path / "app.log"
    port = free_port()
    user = "user root root;" if os.geteuid() == 0 else ""
    conf = tmp_path / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, tmp=tmp_path, port=port))
    nginx_log = tmp_path / "nginx-error.log"
    with open(app_log, "wb") as out:
        app = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers(sock), server, app, app_log)
        with open(tmp_path / "nginx.out", "wb") as out:
            nginx = subprocess.Popen(
                [
                    NGINX,
                    "-p",
                    str(tmp_path),
                    "-c",
                    str(conf),
                    "-e",
                    str(nginx_log),
                    "-g",
                    "daemon off;",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for(lambda: connects(port), "nginx", nginx, nginx_log)
            yield Stack(tmp_path, port, app_log)
        finally:
            stop(nginx)
    finally:
        stop(app)


BOTH = [("uvicorn", True), ("gunicorn", True)]


@pytest.mark.parametrize("stack", BOTH, indirect=True, ids=["uvicorn", "gunicorn"])
def test_behind_nginx_over_a_unix_socket_each_client_has_its_own_key(stack: Stack) -> None:
    assert [stack.login(ATTACKER, "guess") for _ in range(3)] == [401, 401, 401]
    assert stack.login(ATTACKER, "right") == 503  # blocked, even with the right password
    # the attacker writes the user's address itself: nginx appends the real one
    assert stack.login(ATTACKER, "guess", spoof=USER) == 503
    # the user, through the same nginx and the same socket, is untouched
    assert stack.login(USER, "guess") == 401
    assert stack.login(USER, "right") == 302
    assert "unix socket" not in stack.app_log.read_text(errors="replace")


@pytest.mark.parametrize(
    "stack", [("uvicorn", False), ("gunicorn", False)], indirect=True, ids=["uvicorn", "gunicorn"]
)
def test_without_unix_trusted_everyone_is_one_key_and_the_log_says_so(stack: Stack) -> None:
    assert [stack.login(ATTACKER, "guess") for _ in range(3)] == [401, 401, 401]
    assert stack.login(USER, "right") == 503  # counted, not waved through: one shared key
    log = stack.app_log.read_text(errors="replace")
    assert log.count("came over a unix socket") == 1
    assert 'trusted_proxies=["unix"]' in log
