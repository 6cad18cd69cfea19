"""Issue #14 F1: idle and slow connections cannot starve ``mailguard serve``.

A real ``python -m mailguard serve`` process, raw sockets on loopback: held
idle connections and a slow-header sender neither exhaust its descriptors nor
delay Dovecot's policy request; a peer outside ``allow`` is closed before it
sends a byte.  Plus the pieces in-process: the guard's caps and the accept
error log's rate limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis_server import free_port

from mailguard.serve_conn import AcceptErrorLog, ConnectionGuard

SECRET = "conn-test-secret-0123456789"


@contextlib.contextmanager
def serve(tmp_path: Path, extra: str = "") -> Iterator[tuple[int, Path]]:
    port = free_port()
    config = tmp_path / "mailguard.toml"
    config.write_text(
        f'[serve]\nport = {port}\nsecret = "{SECRET}"\nheader_timeout = 1.5\n{extra}'
        '[store]\ntype = "memory"\n'
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mailguard", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mailguard serve did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield port, log
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def policy_request(port: int, source: str = "127.0.0.1") -> tuple[float, bytes]:
    body = json.dumps(
        {"login": "jdoe", "remote": "203.0.113.9", "protocol": "imap", "session_id": "s1"}
    ).encode()
    request = (
        b"POST /dovecot?command=allow HTTP/1.1\r\nHost: x\r\nX-Mailguard-Secret: "
        + SECRET.encode()
        + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=3, source_address=(source, 0)) as c:
        c.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:  # headers and body may come in two segments
            chunk = c.recv(4096)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = c.recv(4096)
            if not chunk:
                break
            body += chunk
        data = head + b"\r\n\r\n" + body
    return time.monotonic() - start, data


def closed(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest.mark.servers
def test_idle_and_slow_connections_do_not_starve_dovecot(tmp_path: Path) -> None:
    with serve(tmp_path) as (port, log):
        held: list[socket.socket] = []
        try:
            for _ in range(300):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            slow = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(slow)
            slow.sendall(b"POST /dovecot?command=allow HTTP/1.1\r\n")
            elapsed, reply = policy_request(port)
            assert reply.startswith(b"HTTP/1.1 200 "), reply
            assert b'"status":0' in reply
            assert elapsed < 0.5
            # slowloris: a header line every 0.5 s never completes the request
            closed_after = None
            start = time.monotonic()
            while time.monotonic() - start < 6:
                time.sleep(0.5)
                try:
                    slow.sendall(b"X-A: b\r\n")
                except OSError:
                    closed_after = time.monotonic() - start
                    break
            assert closed_after is not None and closed_after < 3.5
            assert all(closed(s) for s in held[:300])  # header_timeout closed the idle ones
            elapsed, reply = policy_request(port)
            assert reply.startswith(b"HTTP/1.1 200 ") and elapsed < 0.5
        finally:
            for s in held:
                s.close()
        text = log.read_text()
        assert "Too many open files" not in text
        assert "connections=" in text and "header_timeout=1.5s" in text


@pytest.mark.servers
def test_a_peer_outside_allow_is_closed_before_it_speaks(tmp_path: Path) -> None:
    with serve(tmp_path, 'allow = ["127.0.0.1"]\n') as (port, _):
        outsider = socket.create_connection(
            ("127.0.0.1", port), timeout=2, source_address=("127.0.0.2", 0)
        )
        try:
            start = time.monotonic()
            try:
                data = outsider.recv(1)  # no request sent: the server closes it
            except ConnectionResetError:
                data = b""
            assert data == b"" and time.monotonic() - start < 0.5
        finally:
            outsider.close()
        elapsed, reply = policy_request(port)
        assert reply.startswith(b"HTTP/1.1 200 ") and elapsed < 0.5


@pytest.mark.servers
def test_a_crowd_on_dovecots_own_address_is_displaced(tmp_path: Path) -> None:
    """A local user holds more silent connections than the per-peer cap, from
    the very address Dovecot uses: each new connection displaces the oldest
    silent one, so Dovecot's request is still answered at once."""
    with serve(tmp_path, "max_connections_per_peer = 20\n") as (port, _):
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(60)]
        try:
            elapsed, reply = policy_request(port)
            assert reply.startswith(b"HTTP/1.1 200 ") and elapsed < 0.5
            time.sleep(0.2)
            assert sum(not closed(s) for s in held) <= 20
        finally:
            for s in held:
                s.close()


class FakeConn:
    def __init__(self, peer: str) -> None:
        self.mg_peer = peer
        self.mg_counted = True
        self.closed = False

    def mg_close(self) -> None:
        self.closed = True


def test_guard_caps_and_displaces_silent_connections_only() -> None:
    guard = ConnectionGuard(
        allowed=lambda peer: peer.startswith("127."), header_timeout=2, per_peer=2, total=3
    )
    outsider = FakeConn("10.0.0.1")
    assert not guard.admit(outsider, "10.0.0.1") and guard.refused_network == 1
    a, b, c = FakeConn("127.0.0.1"), FakeConn("127.0.0.1"), FakeConn("127.0.0.1")
    assert guard.admit(a, "127.0.0.1") and guard.admit(b, "127.0.0.1")
    guard.busy(a)
    assert guard.admit(c, "127.0.0.1")  # b, silent, is displaced; a is busy
    assert b.closed and not a.closed and guard.peers["127.0.0.1"] == 2
    guard.busy(c)
    d = FakeConn("127.0.0.1")
    assert not guard.admit(d, "127.0.0.1")  # all busy: the new one is refused
    assert guard.refused_full == 1
    e, f = FakeConn("127.0.0.2"), FakeConn("127.0.0.3")
    assert guard.admit(e, "127.0.0.2")
    assert guard.count == 3
    assert guard.admit(f, "127.0.0.3")  # total cap: the oldest silent (e) goes
    assert e.closed and guard.count == 3
    guard.forget(a)
    assert guard.count == 2 and guard.peers["127.0.0.1"] == 1


def test_accept_errors_are_logged_once_a_second(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    handler = AcceptErrorLog(clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        context: dict[str, Any] = {
            "message": "socket.accept() out of system resource",
            "exception": OSError(24, "Too many open files"),
        }
        with caplog.at_level(logging.ERROR, logger="mailguard.serve"):
            for _ in range(1000):
                handler(loop, context)
            now[0] += 1.5
            handler(loop, context)
    finally:
        loop.close()
    lines = [r.getMessage() for r in caplog.records if "accept failed" in r.getMessage()]
    assert len(lines) == 2
    assert "suppressed=999" in lines[1]
