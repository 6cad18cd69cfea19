"""Throwaway Redis Cluster and Sentinel topologies for tests, on real ``redis-server``.

:class:`Cluster` runs 3 masters and 3 replicas (``--cluster-enabled yes``,
joined by ``redis-cli --cluster create ... --cluster-replicas 1``);
:class:`Sentinels` runs a master, one replica (``--replicaof``) and three
sentinels watching it as ``mymaster`` with a quorum of 2.  Every process
listens on a free loopback port, keeps its files (``nodes.conf``, the
sentinel's own conf file, which it rewrites, and a log) in a private
temporary directory, and is stopped by its PID (``SIGKILL`` for a crash,
``SIGTERM`` at the end).  A process started here also dies with the thread
that started it (``PR_SET_PDEATHSIG``), so a test run that is itself killed
leaves no server behind: start and restart nodes from the test's main thread.

The failover helpers return ``time.monotonic()`` readings so a test can
measure, e.g., from a replica's promotion to the first decision served again::

    with Cluster.for_tests() as cluster:
        master = cluster.master_of(slot)
        replica = cluster.replica_of(master)
        cluster.kill(master)
        promoted_at = cluster.wait_promotion(replica)
        cluster.restart(master)  # it rejoins as a replica

Commands to the nodes go through :func:`command`, a few lines of RESP over a
socket of its own: the harness does not depend on the redis-py under test.
Timings (``cluster-node-timeout 1000``, sentinel ``down-after-milliseconds
1000``) make a failover take a few seconds.  Without ``redis-server`` and
``redis-cli`` on PATH, ``for_tests`` skips the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from processes import stop_process
from redis_server import free_port

__all__ = [
    "Cluster",
    "ClusterNode",
    "Decision",
    "Flood",
    "Node",
    "ReplyError",
    "Sentinels",
    "command",
    "key_slot",
    "scan_keys",
    "wait_for",
]

HOST = "127.0.0.1"
SLOTS = 16384
SERVICE = "mymaster"
T = TypeVar("T")


# ------------------------------------------------------------------ RESP
class ReplyError(Exception):
    """An error reply (``-ERR ...``) from a node."""


def _encode(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _parse(stream: Any) -> Any:
    line = stream.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed mid-reply")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = stream.read(size + 2)
        return data[:-2].decode()
    if kind == b"*":
        size = int(rest)
        return None if size < 0 else [_parse(stream) for _ in range(size)]
    raise ConnectionError(f"unexpected reply {line!r}")


def command(port: int, *args: Any, timeout: float = 2.0) -> Any:
    """Send one command to ``127.0.0.1:port`` on a new connection; its reply.

    Strings come back decoded; an error reply raises :class:`ReplyError`
    (inside an array it is returned in place); no answer raises ``OSError``.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(_encode(args))
        with sock.makefile("rb") as stream:
            reply = _parse(stream)
    if isinstance(reply, ReplyError):
        raise reply
    return reply


def scan_keys(port: int, pattern: str) -> set[str]:
    """Every key matching ``pattern`` on one node, by SCAN (never KEYS)."""
    found: set[str] = set()
    cursor = "0"
    while True:
        cursor, batch = command(port, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        found.update(batch)
        if cursor == "0":
            return found


def commands(port: int, *batch: Sequence[Any], timeout: float = 2.0) -> list[Any]:
    """Several commands on one connection (so ``WAIT`` sees the writes before it)."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(b"".join(_encode(args) for args in batch))
        with sock.makefile("rb") as stream:
            return [_parse(stream) for _ in batch]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.01) -> T:
    """Poll ``probe`` until it returns something other than None (or False).

    A probe that raises ``OSError`` or :class:`ReplyError` (a node still
    starting, a dead one) counts as "not yet".  After ``timeout`` seconds,
    ``TimeoutError`` names ``what``.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            found = probe()
        except (OSError, ReplyError) as exc:
            found, last = None, exc
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s (last error: {last!r})")
        time.sleep(interval)


def key_slot(key: str | bytes) -> int:
    """Redis Cluster's slot of ``key``: CRC16 (XMODEM) of its hash tag, mod 16384.

    As ``keyHashSlot`` in redis ``src/cluster.c``: the tag is what lies
    between the first ``{`` and the first ``}`` after it, if not empty.
    The tests check it against ``CLUSTER KEYSLOT``.
    """
    data = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % SLOTS


# ------------------------------------------------------------------ nodes
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In the child before exec: SIGKILL it when the thread that forked it ends."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(libc_name).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Node:
    """One ``redis-server`` process on ``127.0.0.1:port`` with a directory of its own.

    ``argv`` is everything after the binary; ``start`` may be called again
    after ``kill``/``stop`` (same port, same directory, same files).
    """

    def __init__(self, name: str, port: int, directory: Path, argv: Sequence[str]) -> None:
        self.name = name
        self.port = port
        self.dir = directory
        self.argv = list(argv)
        self.log = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"<{self.name} :{self.port} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self) -> None:
        """Start the process; :meth:`wait_up` waits until it answers."""
        if self.alive:
            return
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.process = subprocess.Popen(
            [binary, *self.argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
            preexec_fn=_die_with_parent,  # started from the test's main thread
        )

    def wait_up(self, timeout: float = 10.0) -> None:
        def up() -> bool:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise RuntimeError(f"{self.name} exited ({code}): {self.log_tail()}")
            return bool(command(self.port, "PING", timeout=0.5) == "PONG")

        wait_for(f"{self.name} answering PING", up, timeout)

    def start(self, timeout: float = 10.0) -> Node:
        self.spawn()
        self.wait_up(timeout)
        return self

    def kill(self) -> float:
        """SIGKILL by PID (a crash: nothing is flushed); the time just before
        the signal (an answer seen before it came from a live server)."""
        process = self.process
        if process is None:
            raise RuntimeError(f"{self.name} is not running")
        killed = time.monotonic()
        process.kill()
        process.wait()
        return killed

    def stop(self) -> None:
        """SIGTERM by PID, then SIGKILL after 5 s."""
        process, self.process = self.process, None
        stop_process(process, grace=5.0)

    def call(self, *args: Any, timeout: float = 2.0) -> Any:
        return command(self.port, *args, timeout=timeout)

    def role(self) -> str:
        """``master``, ``slave`` or ``sentinel`` (ROLE's first field)."""
        return str(self.call("ROLE")[0])

    def replica_linked(self) -> bool:
        """A replica whose link to its master is up (ROLE says ``connected``)."""
        reply = self.call("ROLE")
        return bool(reply[0] == "slave" and reply[3] == "connected")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])


def _server_argv(port: int, directory: Path, *more: str) -> list[str]:
    return [
        "--port", str(port),
        "--bind", HOST,
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--daemonize", "no",
        "--loglevel", "notice",
        "--logfile", str(directory / "redis.log"),
        # replicas sync at once (the default waits 5 s for more replicas to join)
        "--repl-diskless-sync-delay", "0",
        *more,
    ]  # fmt: skip


def _needs(*binaries: str) -> None:
    import pytest

    for binary in binaries:
        if shutil.which(binary) is None:
            pytest.skip(f"{binary} is not on PATH (install the redis-server / redis-tools package)")


class _Topology:
    nodes: list[Node]

    def __init__(self, prefix: str) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=prefix)
        self.root = Path(self._tmp.name)

    def close(self) -> None:
        """Stop every process by PID and remove the files."""
        for node in self.nodes:
            node.stop()
        self._tmp.cleanup()

    def logs(self) -> str:
        """The last lines of every node's log (for a failure message)."""
        return "\n".join(f"{node!r}: {node.log_tail(8)}" for node in self.nodes)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------- cluster
@dataclass(frozen=True)
class ClusterNode:
    """One line of ``CLUSTER NODES``."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slots: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags and not self.flags & {"fail", "fail?", "noaddr"}


def parse_cluster_nodes(text: str) -> list[ClusterNode]:
    """``CLUSTER NODES``: ``id ip:port@cport flags master ping pong epoch link slot...``."""
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0]
        port = int(address.rsplit(":", 1)[1]) if ":" in address else 0
        ranges = []
        for part in fields[8:]:
            if part.startswith("["):  # a slot being migrated
                continue
            low, _, high = part.partition("-")
            ranges.append((int(low), int(high or low)))
        found.append(
            ClusterNode(
                id=fields[0],
                port=port,
                flags=frozenset(fields[2].split(",")),
                master_id=None if fields[3] == "-" else fields[3],
                slots=tuple(ranges),
            )
        )
    return found


class Cluster(_Topology):
    """3 masters + 3 replicas of Redis Cluster on loopback (``masters`` x (1 + replicas))."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        *,
        full_coverage: bool = True,
    ) -> None:
        """``full_coverage=False``: ``cluster-require-full-coverage no``, so the
        masters that are up keep answering while one is down (the default,
        yes, makes every node refuse with CLUSTERDOWN until the failover)."""
        super().__init__("mailguard-cluster-")
        self.replicas = replicas
        self.nodes = []
        for i in range(masters * (1 + replicas)):
            port, bus = free_port(), free_port()
            directory = self.root / f"node{i}"
            argv = _server_argv(
                port,
                directory,
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms),
                # the bus port is ours too: port + 10000 may be taken or out of range
                "--cluster-port", str(bus),
                "--cluster-require-full-coverage", "yes" if full_coverage else "no",
            )  # fmt: skip
            self.nodes.append(Node(f"cluster node{i}", port, directory, argv))

    @classmethod
    def for_tests(cls, *, full_coverage: bool = True) -> Cluster:
        """A started cluster, or ``pytest.skip`` without redis-server / redis-cli."""
        _needs("redis-server", "redis-cli")
        return cls(full_coverage=full_coverage).start()

    def __enter__(self) -> Cluster:
        return self

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node as a seed."""
        return "redis+cluster://" + ",".join(f"{HOST}:{port}" for port in self.ports)

    def start(self, timeout: float = 30.0) -> Cluster:
        try:
            for node in self.nodes:
                node.spawn()
            for node in self.nodes:
                node.wait_up()
            began = time.monotonic()
            addresses = [f"{HOST}:{port}" for port in self.ports]
            replicas = ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            create = subprocess.run(
                ["redis-cli", "--cluster", "create", *addresses, *replicas],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if create.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {create.stdout[-2000:]}")
            self.create_seconds = time.monotonic() - began
            self.wait_ok(timeout)
        except BaseException:
            self.close()
            raise
        return self

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def node(self, port: int) -> Node:
        return next(node for node in self.nodes if node.port == port)

    def topology(self) -> list[ClusterNode]:
        """``CLUSTER NODES`` as the first live node that answers sees it."""
        last: BaseException | None = None
        for node in self.live():
            try:
                return parse_cluster_nodes(node.call("CLUSTER", "NODES"))
            except (OSError, ReplyError) as exc:
                last = exc
        raise RuntimeError(f"no cluster node answers CLUSTER NODES ({last!r})")

    def _state_ok(self, replicated: bool) -> bool:
        """Every live node: ``cluster_state:ok``, all slots served (and replicas linked)."""
        for node in self.live():
            info = dict(
                line.split(":", 1)
                for line in node.call("CLUSTER", "INFO").splitlines()
                if ":" in line
            )
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            if node.role() == "slave" and not node.replica_linked():
                return False
        seen = self.topology()
        masters = [n for n in seen if n.is_master and n.slots]
        covered = sum(high - low + 1 for n in masters for low, high in n.slots)
        live_ports = {node.port for node in self.live()}
        linked = all(
            any(r.master_id == m.id and r.port in live_ports for r in seen) for m in masters
        )
        return covered == SLOTS and (linked or not replicated or self.replicas == 0)

    def wait_ok(self, timeout: float = 30.0, *, replicated: bool = True) -> None:
        """Until every live node says the cluster is ok and serves every slot; with
        ``replicated``, until every master has a live replica too."""
        try:
            wait_for(
                "cluster_state:ok on every node",
                lambda: self._state_ok(replicated),
                timeout,
                0.05,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def keyslot(self, key: str) -> int:
        """``CLUSTER KEYSLOT key``, asked of a live node."""
        return int(self.live()[0].call("CLUSTER", "KEYSLOT", key))

    def masters(self) -> list[Node]:
        """The nodes serving slots now, by their first slot."""
        seen = sorted(
            (n for n in self.topology() if n.is_master and n.slots), key=lambda n: n.slots[0]
        )
        return [self.node(n.port) for n in seen]

    def master_of(self, slot: int) -> Node:
        return self.owners()(slot)

    def owners(self) -> Callable[[int], Node]:
        """Slot -> the master serving it, as the cluster says now (one round trip)."""
        ranges = [
            (low, high, self.node(n.port))
            for n in self.topology()
            if n.is_master
            for low, high in n.slots
        ]

        def owner(slot: int) -> Node:
            for low, high, node in ranges:
                if low <= slot <= high:
                    return node
            raise LookupError(f"no master serves slot {slot}")

        return owner

    def keys_on_masters(
        self, name: Callable[[str], str], per_master: int, candidates: Iterable[str]
    ) -> dict[int, list[str]]:
        """``per_master`` of ``candidates`` for each master, by the slot of ``name(key)``
        (the full Redis key): master port -> keys."""
        owner = self.owners()
        found: dict[int, list[str]] = {node.port: [] for node in self.masters()}
        for key in candidates:
            port = owner(key_slot(name(key))).port
            if len(found[port]) < per_master:
                found[port].append(key)
            if all(len(keys) == per_master for keys in found.values()):
                return found
        raise LookupError(f"too few candidates for {per_master} keys on every master")

    def replica_of(self, master: Node) -> Node:
        seen = self.topology()
        ident = next(n.id for n in seen if n.port == master.port)
        for n in seen:
            if n.master_id == ident and "fail" not in n.flags:
                return self.node(n.port)
        raise LookupError(f"{master!r} has no replica")

    def kill(self, node: Node) -> float:
        """SIGKILL ``node`` by PID; the time just before the signal."""
        return node.kill()

    def wait_promotion(self, replica: Node, timeout: float = 20.0) -> float:
        """Until ``replica`` says it is a master (ROLE); the time it was first seen so."""
        return wait_for(
            f"{replica!r} promoted",
            lambda: time.monotonic() if replica.role() == "master" else None,
            timeout,
        )

    def restart(self, node: Node, timeout: float = 20.0) -> float:
        """Start a killed node again (its ``nodes.conf`` is kept): it rejoins as a
        replica of whoever took its slots.  Returns when its replication link
        is up, with that time."""
        node.start()
        return wait_for(
            f"{node!r} rejoined as a replica",
            lambda: time.monotonic() if node.replica_linked() else None,
            timeout,
        )

    def wait_written(self, master: Node, timeout_ms: int = 1000) -> int:
        """Wait until ``master``'s replica has every write made on it so far.

        ``WAIT`` counts only the writes of its own connection, so this writes
        a key of a slot ``master`` serves and waits for that one: the
        replication stream is in order, so every earlier write (the store's,
        on other connections) has reached the replica too.  Returns the
        number of replicas that acknowledged.
        """
        tag = _key_on(self, master)
        reply = commands(
            master.port,
            ("SET", tag, "1", "PX", "60000"),
            ("WAIT", 1, timeout_ms),
            timeout=timeout_ms / 1000 + 2,
        )
        if isinstance(reply[1], ReplyError):
            raise reply[1]
        return int(reply[1])


def _key_on(cluster: Cluster, master: Node) -> str:
    names = (f"harness:wait:{i}" for i in range(10_000))
    return cluster.keys_on_masters(lambda key: key, 1, names)[master.port][0]


# --------------------------------------------------------------- sentinel
class Sentinels(_Topology):
    """A master, one replica and three sentinels (quorum 2) watching ``mymaster``."""

    def __init__(self, sentinels: int = 3, down_after_ms: int = 1000) -> None:
        super().__init__("mailguard-sentinel-")
        port = free_port()
        self.master = Node("master", port, self.root / "master", [])
        self.master.argv = _server_argv(port, self.master.dir)
        replica_port = free_port()
        self.replica = Node("replica", replica_port, self.root / "replica", [])
        self.replica.argv = _server_argv(
            replica_port, self.replica.dir, "--replicaof", HOST, str(port)
        )
        self.sentinels: list[Node] = []
        for i in range(sentinels):
            s_port = free_port()
            directory = self.root / f"sentinel{i}"
            directory.mkdir(parents=True)
            conf = directory / "sentinel.conf"  # sentinel rewrites its conf: one each
            conf.write_text(
                f"port {s_port}\n"
                f"bind {HOST}\n"
                "daemonize no\n"
                f'dir "{directory}"\n'
                f'logfile "{directory / "redis.log"}"\n'
                "sentinel resolve-hostnames no\n"
                f"sentinel monitor {SERVICE} {HOST} {port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
            )
            self.sentinels.append(
                Node(f"sentinel{i}", s_port, directory, [str(conf), "--sentinel"])
            )
        self.nodes = [self.master, self.replica, *self.sentinels]

    @classmethod
    def for_tests(cls) -> Sentinels:
        """Started and agreed, or ``pytest.skip`` without redis-server."""
        _needs("redis-server")
        return cls().start()

    def __enter__(self) -> Sentinels:
        return self

    @property
    def url(self) -> str:
        """``redis+sentinel://`` with every sentinel, the service and db 0."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 30.0) -> Sentinels:
        try:
            self.master.start()
            self.replica.start()
            for node in self.sentinels:
                node.spawn()
            for node in self.sentinels:
                node.wait_up()
            self.wait_agreed(self.master, timeout)
        except BaseException:
            self.close()
            raise
        return self

    def master_addr(self, sentinel: Node) -> int | None:
        """The master's port as ``sentinel`` answers get-master-addr-by-name."""
        reply = sentinel.call("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE, timeout=0.5)
        return None if reply is None else int(reply[1])

    def _agreed(self, master: Node) -> bool:
        replicas = [n for n in (self.master, self.replica) if n is not master and n.alive]
        if master.role() != "master" or not all(n.replica_linked() for n in replicas):
            return False
        for sentinel in self.sentinels:
            if self.master_addr(sentinel) != master.port:
                return False
            fields = sentinel.call("SENTINEL", "MASTER", SERVICE)
            info = dict(zip(fields[::2], fields[1::2], strict=True))
            # quorum needs the sentinels to know each other (hello messages, every 2 s)
            if (
                info["flags"] != "master"
                or int(info["num-other-sentinels"]) < len(self.sentinels) - 1
            ):
                return False
            known = sentinel.call("SENTINEL", "REPLICAS", SERVICE)
            ports = set()
            for row in known:
                entry = dict(zip(row[::2], row[1::2], strict=True))
                if "s_down" not in entry["flags"] and "disconnected" not in entry["flags"]:
                    ports.add(int(entry["port"]))
            if not {n.port for n in replicas} <= ports:
                return False
        return True

    def wait_agreed(self, master: Node, timeout: float = 30.0) -> None:
        """Until every sentinel names ``master`` and knows the live replica and
        the other sentinels."""
        try:
            wait_for(f"sentinels agreed on {master!r}", lambda: self._agreed(master), timeout, 0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def current_master(self) -> Node:
        port = wait_for(
            "a sentinel naming the master",
            lambda: next(
                (p for s in self.sentinels if s.alive and (p := self.master_addr(s))), None
            ),
            5.0,
        )
        return next(n for n in (self.master, self.replica) if n.port == port)

    def other(self, node: Node) -> Node:
        return self.replica if node is self.master else self.master

    def kill(self, node: Node) -> float:
        """SIGKILL ``node`` (the master, say) by PID; the time just before the signal."""
        return node.kill()

    def wait_promotion(self, old: Node, timeout: float = 30.0) -> float:
        """Until a sentinel names a master other than ``old``; the time first seen."""

        def moved() -> float | None:
            for sentinel in self.sentinels:
                with contextlib.suppress(OSError, ReplyError):
                    port = self.master_addr(sentinel)
                    if port is not None and port != old.port:
                        return time.monotonic()
            return None

        try:
            return wait_for(f"sentinels promoting a replica of {old!r}", moved, timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def restart(self, node: Node, timeout: float = 30.0) -> float:
        """Start a killed node again with its old arguments: a former master
        comes back as a master with no data, and the sentinels turn it into a
        replica of the new one, about 8 s later (redis ``src/sentinel.c``,
        ``sentinelRefreshInstanceInfo``: an instance reporting "master" where
        the sentinel expects a replica is sent ``REPLICAOF`` only after
        ``SENTINEL_PUBLISH_PERIOD*4`` without a role change or a down state).
        Returns when its replication link is up, with that time."""
        node.start()
        try:
            return wait_for(
                f"{node!r} rejoined as a replica",
                lambda: time.monotonic() if node.replica_linked() else None,
                timeout,
                0.05,
            )
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.logs()}") from None

    def wait_written(self, master: Node, timeout_ms: int = 1000) -> int:
        """Wait until the replica has every write ``master`` took so far (see
        :meth:`Cluster.wait_written`); the number of replicas that acknowledged."""
        reply = commands(
            master.port,
            ("SET", "harness:wait", "1", "PX", "60000"),
            ("WAIT", 1, timeout_ms),
            timeout=timeout_ms / 1000 + 2,
        )
        if isinstance(reply[1], ReplyError):
            raise reply[1]
        return int(reply[1])


# ------------------------------------------------------------------ flood
@dataclass(frozen=True)
class Decision:
    """One answer seen during a flood: when (``time.monotonic()``), on which
    lane, for which key or client, and what came back (``"ok"``, an HTTP
    status, ``"StoreError"`` or the repr of any other exception; ``detail``
    may say more)."""

    at: float
    lane: str
    key: str
    outcome: str
    detail: str = ""  # e.g. the error's message


@dataclass
class Flood:
    """Run each lane over and over, each in a thread of its own, until :meth:`stop`.

    A lane is a callable ``step(i) -> list[Decision]`` that catches what it
    expects itself; anything it raises ends that lane and is raised again
    by :meth:`stop`.  Bounded: at most ``max_seconds`` and ``max_steps`` per
    lane, with ``pause`` seconds between steps so the servers keep a core.
    """

    lanes: dict[str, Callable[[int], list[Decision]]]
    pause: float = 0.001
    max_seconds: float = 60.0
    max_steps: int = 200_000
    decisions: list[Decision] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _errors: list[BaseException] = field(default_factory=list)

    def _run(self, step: Callable[[int], list[Decision]]) -> None:
        deadline = time.monotonic() + self.max_seconds
        try:
            for i in range(self.max_steps):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                self.decisions.extend(step(i))  # list.extend is atomic under the GIL
                time.sleep(self.pause)
        except BaseException as exc:
            self._errors.append(exc)

    def start(self) -> Flood:
        for name, step in self.lanes.items():
            thread = threading.Thread(target=self._run, args=(step,), name=f"flood-{name}")
            thread.start()
            self._threads.append(thread)
        return self

    def seen(self, lane: str, since: float, keys: Sequence[str], outcome: str = "ok") -> bool:
        """Has ``lane`` got ``outcome`` for one of ``keys`` at or after ``since``?"""
        wanted = set(keys)
        return any(
            d.lane == lane and d.at >= since and d.key in wanted and d.outcome == outcome
            for d in list(self.decisions)
        )

    def stop(self) -> list[Decision]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self._errors:
            raise self._errors[0]
        return sorted(self.decisions, key=lambda d: d.at)
