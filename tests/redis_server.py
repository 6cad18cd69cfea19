"""A throwaway ``redis-server`` for tests and benchmarks.

:class:`RedisServer` runs the ``redis-server`` binary on a free loopback port,
without persistence (``--save "" --appendonly no``; ``options`` may turn it
on: ``["--appendonly", "yes"]``), in a temporary
directory, and waits until it answers ``PING``.  It can be stopped and
started again on the same port, which is how the tests simulate an outage.

Test modules define their own fixtures from it (``tests/conftest.py`` belongs
to other tests)::

    @pytest.fixture(scope="module")
    def server() -> Iterator[RedisServer]:
        with RedisServer.for_tests() as running:
            yield running

``for_tests`` skips the test, with the reason, when ``redis-server`` is not
on PATH (CI installs it).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence

from processes import Managed, stop_process

__all__ = ["RedisServer", "free_port"]


def _ephemeral_low() -> int:
    """The first port the system gives outgoing connections (0: unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


_EPHEMERAL_LOW = _ephemeral_low()
_HANDED: set[int] = set()  # ports given out by this process, never twice
_PICK = random.Random()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now.

    Picked below the range the system gives outgoing connections when it
    says which that is: a port from that range can be taken by some client's
    connection between the pick and the server's bind (a CI run saw a
    cluster node's bus port taken so, "Address already in use").
    """
    if _EPHEMERAL_LOW > 12_000:
        for _ in range(500):
            port = _PICK.randrange(10_000, _EPHEMERAL_LOW)
            if port in _HANDED:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            if len(_HANDED) > 10_000:
                _HANDED.clear()
            _HANDED.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer(Managed):
    """One ``redis-server`` process on 127.0.0.1; ``url`` points at db 0."""

    def __init__(
        self, binary: str | None = None, port: int | None = None, options: Sequence[str] = ()
    ) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = found
        self.port = port or free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="mailguard-redis-")
        self.process: subprocess.Popen[bytes] | None = None
        self.options = list(options)  # more arguments, after (so over) the defaults

    @classmethod
    def for_tests(cls) -> RedisServer:
        """A started server, or ``pytest.skip`` when there is no redis-server."""
        import pytest

        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not on PATH (install the redis-server package)")
        return cls().start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server (again) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return self
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self.dir.name,
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", "",
            *self.options,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir.name
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.01)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server (data is lost: nothing is persisted)."""
        process, self.process = self.process, None
        stop_process(process, grace=5.0)

    def cleanup(self) -> None:
        self.dir.cleanup()
