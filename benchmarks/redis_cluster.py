"""A throwaway 3-master Redis Cluster on loopback, for the benchmark.

Three ``redis-server --cluster-enabled yes`` processes (tests/redis_server.py's
:class:`RedisServer`, each in its own temporary directory) joined by
``redis-cli --cluster create`` with no replicas, then waited on until every
node reports ``cluster_state:ok``.  Stopped by PID on exit.  The failover
harness for the tests (masters with replicas, Sentinel) lives with the tests.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from processes import Managed  # type: ignore[import-not-found]
from redis_server import RedisServer  # type: ignore[import-not-found]


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20_000, 50_000)
        try:
            for candidate in (port, port + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _info(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(b"CLUSTER INFO\r\n")
        data = b""
        while b"cluster_state" not in data or not data.endswith(b"\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace")


class RedisCluster(Managed):  # type: ignore[misc]
    """``masters`` cluster masters (and ``replicas`` each) on 127.0.0.1; ``url``: redis+cluster://."""

    def __init__(self, masters: int = 3, replicas: int = 0) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisServer(
                port=cluster_port(),
                options=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 20.0) -> RedisCluster:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not on PATH")
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-yes",
                    "--cluster-replicas",
                    str(self.replicas),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout,
            )
            deadline = time.monotonic() + timeout
            while not all("cluster_state:ok" in _info(n.port) for n in self.nodes):
                if time.monotonic() > deadline:
                    raise RuntimeError("the cluster did not reach cluster_state:ok")
                time.sleep(0.05)
        except BaseException:
            self.close()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
