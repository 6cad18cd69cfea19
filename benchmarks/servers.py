"""HTTP servers under wrk: uvicorn and gunicorn, bare and behind mailguard, side by side.

Run:  .venv/bin/python benchmarks/servers.py [--quick] [--seconds 5] [--rounds 3]

Needs ``wrk`` (Debian: ``apt-get install wrk``) and, for the Redis rows,
``redis-server`` on PATH; the gunicorn rows need gunicorn (the test extra).
uvicorn uses httptools and uvloop when they are installed (``pip install
httptools uvloop``, as ``uvicorn[standard]`` does), else its pure-Python h11
parser and asyncio; ``--http`` / ``--loop`` choose.

Every row is one server (on a free loopback port) serving the same app, bare
or wrapped in mailguard: a one-route Starlette app under uvicorn (one worker,
or four for the ``4 workers`` rows), a one-route werkzeug app under gunicorn
(one ``gthread`` worker with 4 threads).  The Redis rows share one
``redis-server`` started here, each under its own key prefix.  One ``wrk``
process drives one row at a time (``-t1 -c16``; ``-t2 -c64`` for four
workers), all from 127.0.0.1; the rows take turns for ``--rounds`` rounds of
``--seconds`` each (after a short warm-up), so a noisy neighbour hurts them
all alike.  Every process started here (servers, their workers, redis-server,
wrk) is stopped by its PID at the end; nothing is sent anywhere but loopback,
and every wrk run is bounded by ``--seconds`` (and a timeout).

Printed per row: requests/s (median of the rounds, and their range), the
ratio to the row's bare reference (the median of each round's ratio, and
their range), the share of responses refused (non-2xx), CPU per request in
microseconds (the server's processes and redis-server's, from /proc; blank
elsewhere), and "x bare CPU": the reference's server CPU per request over the
row's server plus redis-server CPU per request (median of the rounds), i.e.
requests per CPU second against the reference's.  On a machine shared with
other work the rates swing with the neighbours' load; the CPU ratio hardly
does.  A refused request never reaches the app, so a filter that refuses
cheaply answers *faster* than the bare app: ratios above 1.

Rows (``ROWS``; each names its reference, ``bare`` unless said):

- bare: the Starlette app alone under uvicorn;
- memory, allowed (one client): DosFilter on MemoryStore, a limit never
  reached, every request from 127.0.0.1;
- bare, fresh XFF / memory, allowed, fresh XFF: every request names a new
  client in ``X-Forwarded-For`` (a wrk Lua script counting up from an offset
  that moves on every run, so no address comes twice), the filter built with
  ``trusted_proxies=["127.0.0.1/32"]``; set against the bare app under the
  same script.  uvicorn runs as shipped in every row but these two, where
  its ``proxy_headers`` is off, so the filter reads the header itself;
- bare, fresh XFF, uvicorn resolves / memory, allowed, fresh XFF, uvicorn
  resolves: the same traffic with uvicorn's ``proxy_headers`` on (its
  default, trusting 127.0.0.1 and ::1): uvicorn rewrites ``scope["client"]`` to the
  header's address before the app, so the filter (with no
  ``trusted_proxies``) sees a fresh peer on every request;
- peer: pass-through, one client / peer: limits, allowed, one client: no
  mailguard, for scale: the empty pass-through middleware and the ten-line
  middleware over ``limits`` (keyed by the peer, a limit never reached) of
  ``http_cost.py``;
- peer: limits, allowed, fresh peer from uvicorn: that ten-line middleware
  on the traffic of the row above, each request a new key for it too;
- protect(), allowed: ``mailguard.asgi.protect()`` with DosFilter, DeviceJail
  and InvalidLoginFilter on one MemoryStore, limits never reached;
- memory, refused / redis, refused: DosFilter at 5 requests/s, MemoryStore
  or RedisStore; the flood from one client is refused;
- redis, refused, no refusal cache: the same with ``refusal_cache_size=0``
  (one Redis round trip per refusal);
- redis, allowed: RedisStore, a limit never reached;
- gunicorn bare / gunicorn memory, allowed / gunicorn memory, refused: the
  werkzeug app under gunicorn, bare and behind ``mailguard.wsgi.DosFilter``;
- 4 workers bare / 4 workers redis, allowed: ``uvicorn --workers 4``, the
  filter's workers sharing one RedisStore.  uvicorn's supervisor is given a
  listening socket made with ``IPPROTO_TCP``: the one ``uvicorn.run(workers=4)``
  makes leaves asyncio's connections without ``TCP_NODELAY``, so each
  keep-alive request past the first waits ~40 ms for a delayed ACK
  (Kludex/uvicorn#3149; ``--workers-as-shipped`` shows it).

``--restart`` starts every row's server anew for each round (with its
warm-up).  One server process keeps its memory layout for a whole run, and
that alone can move a row by a tenth: the same code's one-client row read
0.87x to 0.98x in four runs of one morning, each run steady within itself.
With it, each round samples a new layout, and the medians are over layouts.

``--inside`` times each one-worker uvicorn row from within: a timer around
the whole app and one around the Starlette app inside the filter (the
request's scope carries the inner time out), read over HTTP before and
after each wrk run at a path the outer timer answers itself.  Printed per
row: the filter's own microseconds per request (the whole less the app;
for a bare row, what the two timers cost, about 0.5 µs), the app's, and
the app's against its reference's: how much slower the same app runs
behind the filter.  The timers cost time of their own, so such a run's
rates are not the table's to quote.

The targets (the last table): DosFilter never reached >= 0.95x bare; a fresh
address per request >= 0.85x bare (either way of resolving it); 4 workers
sharing a RedisStore >= 0.7x bare 4 workers.  ``--quick`` (2 s rounds) keeps
a full run near two and a half minutes; the default (5 s) near five.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from http_cost import PassThrough, TenLineLimits  # noqa: E402  (the same peers as in process)
from processes import stop_process  # type: ignore[import-not-found]  # noqa: E402
from redis_server import RedisServer, free_port  # type: ignore[import-not-found]  # noqa: E402

REFUSED_LIMIT = 5  # per second: a flood from one client is refused
ALLOWED_LIMIT = 1_000_000  # the highest mailguard takes: never reached
PROXY = (("trusted_proxies", ("127.0.0.1/32",)),)
FRESH_SPAN = 1 << 22  # addresses per wrk run of the fresh-client script
INSIDE_PATH = "/__mailguard_bench_inside"  # --inside: the timers' totals, answered outermost
INNER_KEY = "mailguard.bench.inner_ns"  # --inside: the app's time, carried out in the scope

# protect(): the three filters on one store, limits never reached
PROTECT_TOML = f"""
[dos]
max_requests_per_sec = {ALLOWED_LIMIT}
[login]
max_failed_logins = 10000
login_paths = ["/login"]
[device]
enabled = true
max_requests = {ALLOWED_LIMIT}
time_window = 1
"""

# A new client address in X-Forwarded-For on every request: 11.0.0.0 and up,
# from the offset given after "--" (each run starts where the last one ended).
FRESH_LUA = """
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  counter = (tonumber(args[1]) or 0) + id * 1048576
end
function request()
  counter = counter + 1
  local a = 184549376 + counter
  local ip = string.format("%d.%d.%d.%d", math.floor(a / 16777216) % 256,
    math.floor(a / 65536) % 256, math.floor(a / 256) % 256, a % 256)
  return wrk.format(nil, nil, {["X-Forwarded-For"] = ip})
end
"""


@dataclass(frozen=True)
class Row:
    """One server configuration and how wrk drives it."""

    name: str
    store: str | None = None  # None (bare app), "memory" or "redis"
    limit: int = REFUSED_LIMIT
    options: tuple[tuple[str, Any], ...] = ()  # extra RedisStore options
    filter_options: tuple[tuple[str, Any], ...] = ()  # extra DosFilter options
    # "dos" (DosFilter), "protect" (the three filters), or a peer without
    # mailguard: "pass" (an empty pass-through middleware), "limits" (a
    # ten-line middleware over limits' fixed window, keyed by the peer)
    stack: str = "dos"
    server: str = "uvicorn"  # "uvicorn" (Starlette) or "gunicorn" (werkzeug, gthread)
    workers: int = 1
    fresh: bool = False  # a new client address in X-Forwarded-For on every request
    proxy_headers: bool = True  # uvicorn resolves X-Forwarded-For itself (its default)
    ref: str = "bare"  # the row it is set against
    target: float | None = None  # x ref at least (the issue's targets)

    @property
    def refuses(self) -> bool:
        return self.store is not None and self.limit == REFUSED_LIMIT


ROWS = [
    Row("bare"),
    Row("memory, allowed (one client)", "memory", ALLOWED_LIMIT, target=0.95),
    Row("bare, fresh XFF", fresh=True, proxy_headers=False),
    Row(
        "memory, allowed, fresh XFF",
        "memory",
        ALLOWED_LIMIT,
        filter_options=PROXY,
        fresh=True,
        proxy_headers=False,
        ref="bare, fresh XFF",
        target=0.85,
    ),
    Row("bare, fresh XFF, uvicorn resolves", fresh=True),
    Row(
        "memory, allowed, fresh XFF, uvicorn resolves",
        "memory",
        ALLOWED_LIMIT,
        fresh=True,
        ref="bare, fresh XFF, uvicorn resolves",
        target=0.85,
    ),
    Row("peer: pass-through, one client", stack="pass"),
    Row("peer: limits, allowed, one client", limit=ALLOWED_LIMIT, stack="limits"),
    Row(
        "peer: limits, allowed, fresh peer from uvicorn",
        limit=ALLOWED_LIMIT,
        stack="limits",
        fresh=True,
        ref="bare, fresh XFF, uvicorn resolves",
    ),
    Row("protect(), allowed", "memory", ALLOWED_LIMIT, stack="protect"),
    Row("memory, refused", "memory"),
    Row("redis, refused", "redis"),
    Row("redis, refused, no refusal cache", "redis", options=(("refusal_cache_size", 0),)),
    Row("redis, allowed", "redis", ALLOWED_LIMIT),
    Row("gunicorn bare", server="gunicorn", ref="gunicorn bare"),
    Row("gunicorn memory, allowed", "memory", ALLOWED_LIMIT, server="gunicorn",
        ref="gunicorn bare"),
    Row("gunicorn memory, refused", "memory", server="gunicorn", ref="gunicorn bare"),
    Row("4 workers bare", workers=4, ref="4 workers bare"),
    Row("4 workers redis, allowed", "redis", ALLOWED_LIMIT, workers=4, ref="4 workers bare",
        target=0.7),
]  # fmt: skip


# ---------------------------------------------------------------- server
def asgi_app(row: Row, redis_url: str, prefix: str, inside: bool = False) -> Any:
    """The row's ASGI app: a one-route Starlette app, bare or wrapped (with
    ``inside``, each timed as the module docs say)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from mailguard import asgi

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app: Any = Starlette(routes=[Route("/", home)])
    if not inside:
        return wrap(row, app, asgi, redis_url, prefix)
    return timed_outer(wrap(row, timed_inner(app), asgi, redis_url, prefix))


def timed_inner(app: Any) -> Any:
    """``app``, its time per request left in the scope (``--inside``)."""
    clock = time.perf_counter_ns

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        start = clock()
        try:
            await app(scope, receive, send)
        finally:
            scope[INNER_KEY] = clock() - start

    return inner


def timed_outer(app: Any) -> Any:
    """``app`` (the filter, or the bare app) timed as a whole, with the inner
    time its scope brings back; ``GET INSIDE_PATH`` answers the totals as
    JSON (``--inside``)."""
    clock = time.perf_counter_ns
    totals = {"count": 0, "outer_ns": 0, "inner_ns": 0}

    async def outer(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        if scope["path"] == INSIDE_PATH:
            body = json.dumps(totals).encode()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})  # fmt: skip
            await send({"type": "http.response.body", "body": body})
            return
        start = clock()
        try:
            await app(scope, receive, send)
        finally:
            totals["outer_ns"] += clock() - start
            totals["inner_ns"] += scope.get(INNER_KEY, 0)  # (none for a refused request)
            totals["count"] += 1

    return outer


def wsgi_app(row: Row, redis_url: str, prefix: str) -> Any:
    """The row's WSGI app: a one-route werkzeug app, bare or wrapped."""
    from werkzeug.wrappers import Request, Response

    from mailguard import wsgi

    @Request.application
    def app(request: Request) -> Response:
        return Response("ok")

    return wrap(row, app, wsgi, redis_url, prefix)


def wrap(row: Row, app: Any, front: Any, redis_url: str, prefix: str) -> Any:
    from mailguard import MemoryStore, RedisStore
    from mailguard.config import loads

    # mailguard's log lines (a refusal, a calm) are made, then dropped: no stderr noise
    logging.getLogger("mailguard").addHandler(logging.NullHandler())
    logging.getLogger("mailguard").propagate = False

    if row.stack == "pass":
        return PassThrough(app)
    if row.stack == "limits":
        return TenLineLimits(app, row.limit)
    if row.store is None:
        return app
    store: Any
    if row.store == "memory":
        store = MemoryStore()
    else:
        store = RedisStore(redis_url, prefix=prefix, **dict(row.options))
    if row.stack == "protect":
        config = loads(PROTECT_TOML, env={})
        return front.protect(app, config, store=store, live=False, reload_on_hup=False)
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in row.filter_options}
    return front.DosFilter(app, max_requests_per_sec=row.limit, store=store, **options)


def app_from_env() -> Any:
    """uvicorn's factory for the worker processes of ``--workers`` rows."""
    row = row_named(os.environ["MAILGUARD_BENCH_ROW"])
    return asgi_app(row, os.environ["MAILGUARD_BENCH_REDIS"], os.environ["MAILGUARD_BENCH_PREFIX"])


def row_named(name: str) -> Row:
    return next(r for r in ROWS if r.name == name)


def serve(
    row_name: str, port: int, redis_url: str, prefix: str, http: str, loop: str,
    inside: bool = False,
) -> None:  # fmt: skip
    """The server process: build the row's app and serve it until terminated."""
    row = row_named(row_name)
    if row.server == "gunicorn":
        serve_gunicorn(row, port, redis_url, prefix)
        return
    import uvicorn

    common: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "http": http, "loop": loop, "log_level": "error",
        "access_log": False,
        # uvicorn's own X-Forwarded-For handling, on by default for a peer at
        # 127.0.0.1, rewrites scope["client"] before the app: off in the rows
        # whose filter is to read the header itself (else it would see fresh
        # peers and never the header it is configured to trust)
        "proxy_headers": row.proxy_headers,
    }  # fmt: skip
    if row.workers > 1:
        os.environ.update(
            MAILGUARD_BENCH_ROW=row.name, MAILGUARD_BENCH_REDIS=redis_url,
            MAILGUARD_BENCH_PREFIX=prefix,
        )  # fmt: skip
        if os.environ.get("MAILGUARD_BENCH_AS_SHIPPED"):
            uvicorn.run("servers:app_from_env", factory=True, workers=row.workers, **common)
            return
        # What `uvicorn --workers N` does, but with a listening socket made for
        # TCP: uvicorn's own has proto 0, so asyncio never sets TCP_NODELAY on
        # the connections it accepts and every keep-alive request past the
        # first waits ~40 ms for a delayed ACK (Kludex/uvicorn#3149, open).
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config("servers:app_from_env", factory=True, workers=row.workers, **common)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.set_inheritable(True)
        Multiprocess(config, sockets=[sock]).run()
    else:
        uvicorn.run(asgi_app(row, redis_url, prefix, inside), **common)


def serve_gunicorn(row: Row, port: int, redis_url: str, prefix: str) -> None:
    from gunicorn.app.base import BaseApplication  # type: ignore[import-untyped]

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": f"127.0.0.1:{port}", "workers": row.workers, "worker_class": "gthread",
                "threads": 4, "loglevel": "error", "accesslog": None, "keepalive": 5,
            }  # fmt: skip
            if "control_socket_disable" in self.cfg.settings:  # gunicorn 25.1+: no socket
                settings["control_socket_disable"] = True  # in ~/.gunicorn, nor a fight over it
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return wsgi_app(row, redis_url, prefix)

    Server().run()


@dataclass
class Server:
    row: Row
    port: int
    process: subprocess.Popen[bytes]
    pids: set[int]  # the server and every process it started (workers), by PID


def descendants(pid: int) -> set[int]:
    """``pid`` and every live process below it (Linux /proc)."""
    found, todo = {pid}, [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def timed_inside(row: Row) -> bool:
    """Whether ``--inside`` times ``row``: a one-worker uvicorn row."""
    return row.server == "uvicorn" and row.workers == 1


def start_servers(
    rows: list[Row], redis_url: str, http: str, loop: str, inside: bool = False
) -> list[Server]:
    """One server per row, all launched at once, each back when it listens."""
    launched: list[tuple[Row, int, subprocess.Popen[bytes]]] = []
    try:
        for index, row in enumerate(rows):
            port = free_port()
            while any(port == taken for _, taken, _ in launched):  # (none listens yet)
                port = free_port()
            command = [
                sys.executable, __file__, "--serve", row.name, "--port", str(port),
                "--redis-url", redis_url, "--prefix", f"bench{index}:", "--http", http,
                "--loop", loop,
            ]  # fmt: skip
            if inside and timed_inside(row):
                command.append("--inside")
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, start_new_session=True)
            launched.append((row, port, process))
        return [listening(row, port, process) for row, port, process in launched]
    except BaseException:
        for row, port, process in launched:
            stop(Server(row, port, process, descendants(process.pid)))
        raise


def listening(row: Row, port: int, process: subprocess.Popen[bytes]) -> Server:
    """The server once it listens on ``port`` (and its workers are up)."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            server = Server(row, port, process, {process.pid})
            settle = time.monotonic() + 5  # until every worker is up
            while len(descendants(process.pid)) < 1 + row.workers and time.monotonic() < settle:
                time.sleep(0.1)
            server.pids = descendants(process.pid)
            return server
        if process.poll() is not None:
            raise RuntimeError(f"{row.name}: server exited with {process.returncode}")
        if time.monotonic() > deadline:
            stop(Server(row, port, process, descendants(process.pid)))
            raise RuntimeError(f"{row.name}: server did not listen on port {port}")
        time.sleep(0.05)


def stop(server: Server) -> None:
    """SIGTERM the server by PID (SIGKILL after 5 s), then any worker still there."""
    pids = server.pids | descendants(server.process.pid)
    stop_process(server.process, grace=5.0)
    for pid in sorted(pids - {server.process.pid}):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------ measuring
def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of ``pid`` so far (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_cpu(server: Server) -> float | None:
    """CPU seconds of the server's processes (master and workers) so far."""
    times = [cpu_seconds(pid) for pid in server.pids]
    known = [t for t in times if t is not None]
    return sum(known) if known else None


@dataclass
class Sample:
    rate: float  # requests per second
    refused: float  # share of non-2xx responses
    app_cpu: float | None  # server CPU seconds per request
    redis_cpu: float | None  # redis-server CPU seconds per request
    own: float | None = None  # --inside: the filter's own seconds per request
    app: float | None = None  # --inside: the app's seconds per request


@dataclass
class Wrk:
    connections: int
    script: str  # the fresh-client Lua script's path
    runs: int = 0  # fresh-client runs so far: each starts past the last one's addresses
    inside: bool = False  # --inside: read the servers' timers around each run

    def command(self, server: Server, seconds: int) -> list[str]:
        threads, connections = (2, self.connections * 4) if server.row.workers > 1 else (
            1, self.connections)  # fmt: skip
        command = [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
            f"http://127.0.0.1:{server.port}/",
        ]  # fmt: skip
        if server.row.fresh:
            self.runs += 1
            command[1:1] = ["-s", self.script]
            command += ["--", str(self.runs * FRESH_SPAN)]
        return command


def inside_totals(server: Server) -> dict[str, int] | None:
    """The timers' totals of a server run with ``--inside`` (None for a row it
    does not time)."""
    if not timed_inside(server.row):
        return None
    url = f"http://127.0.0.1:{server.port}{INSIDE_PATH}"
    with urllib.request.urlopen(url, timeout=5) as answer:  # (loopback only)
        totals: dict[str, int] = json.loads(answer.read())
    return totals


def run_wrk(server: Server, seconds: int, wrk: Wrk, redis_pid: int | None) -> Sample:
    command = wrk.command(server, seconds)
    before = inside_totals(server) if wrk.inside else None
    app_before, redis_before = server_cpu(server), cpu_seconds(redis_pid)
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    app_after, redis_after = server_cpu(server), cpu_seconds(redis_pid)
    after = inside_totals(server) if wrk.inside else None
    total = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if total is None or rate is None:
        raise RuntimeError(f"{server.row.name}: wrk said:\n{out}")
    count = int(total.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    refused = int(bad.group(1)) / count if bad and count else 0.0

    def per_request(before: float | None, after: float | None) -> float | None:
        return None if before is None or after is None or not count else (after - before) / count

    own = app = None
    if before is not None and after is not None and after["count"] > before["count"]:
        timed = after["count"] - before["count"]
        whole = (after["outer_ns"] - before["outer_ns"]) / timed / 1e9
        app = (after["inner_ns"] - before["inner_ns"]) / timed / 1e9
        own = whole - app
    return Sample(
        float(rate.group(1)),
        refused,
        per_request(app_before, app_after),
        per_request(redis_before, redis_after),
        own,
        app,
    )


def spread(values: list[float], digits: int = 0) -> str:
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}" if values else "-"


def micros(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known) * 1e6:5.1f}" if known else "    -"


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def redis_for(rows: list[Row]) -> Iterator[Any]:
    if not any(row.store == "redis" for row in rows):
        yield None
        return
    with RedisServer() as server:
        yield server


def cpu_ratio(row: Row, sample: Sample, ref: Sample) -> float | None:
    """The reference's server CPU per request over the row's (plus redis-server's)."""
    if not ref.app_cpu or not sample.app_cpu:
        return None
    extra = 0.0
    if row.store == "redis":
        if sample.redis_cpu is None:
            return None
        extra = sample.redis_cpu
    return ref.app_cpu / (sample.app_cpu + extra)


def report(rows: list[Row], samples: dict[str, list[Sample]]) -> int:
    """The table and the targets; returns how many targets were missed."""
    print()
    width = max(len(row.name) for row in rows)
    header = (
        f"{'row':{width}} {'req/s (median)':>14} {'range':>17} {'x ref':>7} {'range':>11} "
        f"{'refused':>8} {'app us':>7} {'redis us':>8} {'x ref CPU':>10} {'range':>11}  ref"
    )
    print(header)
    print("-" * len(header))
    ratio_of: dict[str, float] = {}
    for row in rows:
        got, ref = samples[row.name], samples[row.ref]
        rates = [s.rate for s in got]
        ratios = [s.rate / b.rate for s, b in zip(got, ref, strict=True)]
        ratio_of[row.name] = statistics.median(ratios)
        cpus = [c for s, b in zip(got, ref, strict=True) if (c := cpu_ratio(row, s, b))]
        cpu = (
            f"{statistics.median(cpus):>9.2f}x {spread(cpus, 2):>11}"
            if cpus
            else f"{'-':>10} {'':>11}"
        )
        print(
            f"{row.name:{width}} {statistics.median(rates):>14,.0f} {spread(rates):>17} "
            f"{statistics.median(ratios):>6.2f}x {spread(ratios, 2):>11} "
            f"{statistics.median(s.refused for s in got):>7.1%} "
            f"{micros([s.app_cpu for s in got]):>7} "
            f"{micros([s.redis_cpu for s in got]) if row.store == 'redis' else '':>8} {cpu}"
            f"  {row.ref if row.ref != row.name else ''}"
        )
    print(
        "\nx ref: the median of each round's ratio to the row's reference (ref) in that round. "
        "app us / redis us: CPU microseconds per request of the server's processes / "
        "redis-server.\nx ref CPU: the reference's server CPU per request / the row's server + "
        "redis-server CPU per request (median of the rounds)."
    )
    timed = [row for row in rows if any(s.own is not None for s in samples[row.name])]
    if timed:
        print("\n| row (--inside) | own µs | app µs | app µs over its ref's |")
        print("|---|---:|---:|---:|")
        for row in timed:
            got, ref = samples[row.name], samples[row.ref]
            over = [
                s.app - b.app for s, b in zip(got, ref, strict=True)
                if s.app is not None and b.app is not None
            ]  # fmt: skip
            print(
                f"| {row.name} | {micros([s.own for s in got]).strip()} "
                f"| {micros([s.app for s in got]).strip()} "
                f"| {(f'{statistics.median(over) * 1e6:+.1f}' if over else '-')} |"
            )
        print(
            "own: the whole app's time less the app's inside the filter (for a bare row, "
            "the timers' own cost); app: the Starlette app's; medians of the rounds."
        )
    targeted = [row for row in rows if row.target is not None]
    missed = 0
    if targeted:
        print("\n| target | req/s, x ref | pass/fail |")
        print("|---|---:|---|")
        for row in targeted:
            assert row.target is not None
            ok = ratio_of[row.name] >= row.target
            missed += not ok
            print(
                f"| {row.name} >= {row.target:g}x {row.ref} | {ratio_of[row.name]:.2f}x "
                f"| {'pass' if ok else 'FAIL'} |"
            )
    return missed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per row per round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; rows take turns (3)")
    parser.add_argument(
        "--quick", action="store_true", help="2 s per row per round (about two minutes in all)"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds per row, once (1)")
    parser.add_argument("--rows", help="only rows whose name contains this text (and their refs)")
    parser.add_argument(
        "--http", default="auto", choices=["auto", "h11", "httptools"], help="uvicorn's parser"
    )
    parser.add_argument(
        "--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="uvicorn's loop"
    )
    parser.add_argument(
        "--workers-as-shipped",
        action="store_true",
        help="run the 4-worker rows with uvicorn.run(workers=4) as it is (no TCP_NODELAY with "
        "asyncio: Kludex/uvicorn#3149)",
    )
    parser.add_argument(
        "--inside",
        action="store_true",
        help="time the filter's own part and the app's inside each one-worker uvicorn row "
        "(timers cost about 0.5 µs: the rates of such a run are not the table's)",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start every row's server anew for each round (a process's memory layout can "
        "move a row by 10%%: this samples it once a round instead of once a run)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench:", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(
            args.serve, args.port, args.redis_url, args.prefix, args.http, args.loop,
            args.inside,
        )  # fmt: skip
        return 0
    if args.quick:
        args.seconds = min(args.seconds, 2)
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: this benchmark drives the servers with it.\n"
            "Install it (Debian/Ubuntu: sudo apt-get install wrk) and run again.",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.seconds <= 60 or not 1 <= args.rounds <= 20 or not 1 <= args.warmup <= 60:
        parser.error("--seconds and --warmup must be in 1..60, --rounds in 1..20")
    if not 1 <= args.connections <= 256:
        parser.error("--connections must be in 1..256")
    chosen = [r for r in ROWS if not args.rows or args.rows in r.name]
    wanted = {r.name for r in chosen} | {r.ref for r in chosen}
    rows = [r for r in ROWS if r.name in wanted]
    if not have("gunicorn"):
        print("gunicorn is not installed (the test extra has it): its rows are left out.",
              file=sys.stderr)  # fmt: skip
        rows = [r for r in rows if r.server != "gunicorn"]
    needs_redis = any(row.store == "redis" for row in rows)
    if needs_redis and shutil.which("redis-server") is None:
        print("redis-server is not on PATH: the Redis rows need it.", file=sys.stderr)
        return 2

    import uvicorn

    http = args.http if args.http != "auto" else ("httptools" if have("httptools") else "h11")
    loop = args.loop if args.loop != "auto" else ("uvloop" if have("uvloop") else "asyncio")
    gunicorn = ""
    if have("gunicorn"):
        import gunicorn as gunicorn_module  # type: ignore[import-untyped]

        gunicorn = f", gunicorn {gunicorn_module.__version__} (gthread, 1 worker x 4 threads)"
    warmups = args.rounds if args.restart else 1
    estimate = len(rows) * (args.warmup * warmups + args.rounds * args.seconds)
    print(
        f"Python {sys.version.split()[0]}, uvicorn {uvicorn.__version__} ({http}, {loop})"
        f"{gunicorn}; "
        f"wrk -t1 -c{args.connections} (4 workers: -t2 -c{args.connections * 4}), "
        f"{args.rounds} rounds x {args.seconds} s per row, {len(rows)} rows (about "
        f"{estimate // 60} min {estimate % 60} s of load); refused rows at {REFUSED_LIMIT}/s "
        f"from one client; {os.cpu_count()} CPUs"
        + ("; servers started anew each round" if args.restart else "")
    )
    if args.workers_as_shipped:
        os.environ["MAILGUARD_BENCH_AS_SHIPPED"] = "1"  # read by the server processes
    samples: dict[str, list[Sample]] = {row.name: [] for row in rows}
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="mailguard-wrk-") as scratch:
        script = Path(scratch) / "fresh.lua"
        script.write_text(FRESH_LUA)
        wrk = Wrk(args.connections, str(script), inside=args.inside)
        with redis_for(rows) as redis_server:
            url = redis_server.url if redis_server else ""
            redis_pid = redis_server.process.pid if redis_server and redis_server.process else None
            try:
                for round_no in range(args.rounds):
                    if round_no == 0 or args.restart:
                        while servers:
                            stop(servers.pop())
                        servers.extend(start_servers(rows, url, http, loop, args.inside))
                        for server in servers:
                            run_wrk(server, args.warmup, wrk, redis_pid)
                    for server in servers:
                        samples[server.row.name].append(
                            run_wrk(server, args.seconds, wrk, redis_pid)
                        )
                    print(f"  round {round_no + 1}/{args.rounds} done", file=sys.stderr)
            finally:
                for server in servers:
                    stop(server)

    report(rows, samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
