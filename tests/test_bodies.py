"""Slow bodies, WSGI over-read and WSGI delay mode, on real loopback servers.

Issue #13, "Concurrency and bodies".  Every server is started here on a free
127.0.0.1 port (PYTHONPATH set so it imports this tree's mailguard), stopped
by its PID, and every loop is bounded in count and time.  Marked ``servers``:
``pytest -m "not servers"`` skips them.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from processes import private_runtime

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

pytestmark = pytest.mark.servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _server(argv: list[str], port: int) -> Iterator[None]:
    runtime = tempfile.TemporaryDirectory(prefix="mailguard-runtime-")
    env = private_runtime(dict(os.environ), runtime.name)  # (gunicorn's control socket)
    env["PYTHONPATH"] = os.pathsep.join([env.get("PYTHONPATH", ""), str(ROOT), str(HERE)])
    proc = subprocess.Popen(
        argv, cwd=HERE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"server {argv} did not start: {err[-2000:]}")
                time.sleep(0.05)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stderr:
            proc.stderr.close()
        runtime.cleanup()


@contextmanager
def _script(server: str, app: str) -> Iterator[int]:
    port = _free_port()
    with _server([sys.executable, str(HERE / "body_servers.py"), server, str(port), app], port):
        yield port


def _checks(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/count")
        return int(conn.getresponse().read())
    finally:
        conn.close()


BODY = 20_000  # larger than max_body_bytes (16384): the filter cannot buffer it all
HOLD = 200  # the tail held back


def _head(port: int, n: int) -> bytes:
    body_start = b"_user=victim&_pass=guess" + str(n).encode() + b"&pad="
    return (
        (
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % (port, BODY)
        )
        + body_start
        + b"a" * (BODY - HOLD - len(body_start))
    )


def _status(sock: socket.socket) -> int:
    data = b""
    deadline = time.monotonic() + 8
    while b"\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0


@pytest.mark.parametrize("server", ["uvicorn", "werkzeug"])
def test_slow_bodies_get_no_more_password_checks_than_the_limit(server: str) -> None:
    """Three rounds of five login bodies, each round held back past
    attempt_timeout (1 s), then every tail at once: at most
    max_failed_logins (5) passwords are checked.  (Before: 15 of 15.)"""
    with _script(server, "login") as port:
        socks: list[socket.socket] = []
        try:
            for _round in range(3):
                for _ in range(5):
                    s = socket.create_connection(("127.0.0.1", port), timeout=8)
                    s.sendall(_head(port, len(socks)))
                    socks.append(s)
                time.sleep(1.3)  # past attempt_timeout: a slot taken then has lapsed
            for s in socks:
                s.sendall(b"b" * HOLD)
            statuses = [_status(s) for s in socks]
        finally:
            for s in socks:
                s.close()
        checks = _checks(port)
    assert checks <= 5, (checks, statuses)
    assert statuses.count(401) == checks
    assert all(code in (401, 503) for code in statuses), statuses


@pytest.mark.parametrize("server", ["werkzeug", "wsgiref"])
def test_wsgi_login_body_over_max_body_bytes_does_not_hang(server: str) -> None:
    """A login POST larger than max_body_bytes, the connection kept open: the
    answer comes (the replay reads no further than Content-Length)."""
    with _script(server, "login") as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(_head(port, 0).replace(b"Connection: close", b"Connection: keep-alive"))
            s.sendall(b"b" * HOLD)
            started = time.monotonic()
            status = _status(s)
            took = time.monotonic() - started
        assert status == 401 and took < 3, (status, took)
        assert _checks(port) == 1


def test_gunicorn_delay_mode_leaves_threads_for_a_bystander() -> None:
    """gunicorn --threads 8, DosFilter(delay_ms=2000, 5/s): four flooding
    addresses (twenty connections each) do not hold every thread, so a
    bystander's median latency stays low.  (Before: max_delayed=50 and 5 per
    client held all 8 threads, and the bystander waited seconds.)"""
    pytest.importorskip("gunicorn")
    port = _free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "--threads", "8", "-w", "1",
        "-b", f"127.0.0.1:{port}", "--log-level", "warning", "body_servers:delay_wsgi",
    ]  # fmt: skip
    done = threading.Event()
    with _server(argv, port):
        hard_stop = time.monotonic() + 20.0

        def flood(address: str) -> None:
            for _ in range(1000):  # bounded in count and time
                if done.is_set() or time.monotonic() > hard_stop:
                    return
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                try:
                    conn.request("GET", "/", headers={"X-Forwarded-For": address})
                    conn.getresponse().read()
                except OSError:
                    pass
                finally:
                    conn.close()

        attackers = [
            threading.Thread(target=flood, args=(f"198.51.100.{a}",), daemon=True)
            for a in range(1, 5)
            for _ in range(20)
        ]
        for t in attackers:
            t.start()
        try:
            time.sleep(0.5)  # the flood is under way
            latencies = []
            for _ in range(8):
                started = time.monotonic()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                try:
                    conn.request("GET", "/", headers={"X-Forwarded-For": "192.0.2.1"})
                    assert conn.getresponse().status == 200
                    latencies.append(time.monotonic() - started)
                except TimeoutError:
                    latencies.append(float("inf"))
                finally:
                    conn.close()
                time.sleep(0.25)  # the bystander stays under 5/s
        finally:
            done.set()
            for t in attackers:
                t.join(10)
    assert statistics.median(latencies) < 0.2, latencies
