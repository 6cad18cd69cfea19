"""HTTP servers under wrk: a Starlette app bare and behind DosFilter, on each store.

Run:  .venv/bin/python benchmarks/servers.py [--seconds 5] [--rounds 3]

Needs ``wrk`` (Debian: ``apt-get install wrk``) and, for the Redis rows,
``redis-server`` on PATH.  uvicorn uses httptools and uvloop when they are
installed (``pip install httptools uvloop``, as ``uvicorn[standard]`` does),
else its pure-Python h11 parser and asyncio; ``--http`` / ``--loop`` choose.

Every row is one uvicorn process (one worker, on a free loopback port)
serving the same one-route Starlette app, bare or wrapped in
``mailguard.asgi.DosFilter``; the Redis rows share one ``redis-server``
started here, each under its own key prefix.  One ``wrk`` process (one
thread, ``--connections`` connections) drives one row at a time, all from
127.0.0.1, so with a low limit the flood is refused; the rows take turns for
``--rounds`` rounds of ``--seconds`` each (after a short warm-up), so a noisy
neighbour hurts them all alike.  Every process started here is stopped by
its PID at the end; nothing is sent anywhere but loopback.

Printed per row: requests/s (median of the rounds, and their range), the
ratio to the bare app (the median of each round's ratio, and their range),
the share of responses refused (non-2xx), CPU per request in microseconds
(uvicorn's process and redis-server's, from /proc; blank elsewhere), and
"x bare CPU": the bare app's uvicorn CPU per request over the row's uvicorn
plus redis-server CPU per request (median of the rounds), i.e. requests per
CPU second against the bare app's.  On a machine shared with other work the
rates swing with the neighbours' load; the CPU ratio hardly does.  A refused
request never reaches the app, so a filter that refuses cheaply answers
*faster* than the bare app: ratios above 1.

Rows (add one to ``ROWS``; ``Row.wrk_script`` takes a wrk Lua script, e.g.
for fresh client addresses in X-Forwarded-For behind a trusted proxy):

- bare: the app alone;
- memory, refused / redis, refused: DosFilter at 5 requests/s, MemoryStore
  or RedisStore; the flood is refused;
- redis, refused, no refusal cache: the same with ``refusal_cache_size=0``
  (one Redis round trip per refusal, as before the refusal cache);
- memory, allowed / redis, allowed: a limit never reached, so every request
  is counted and served.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from redis_server import RedisServer, free_port  # noqa: E402

REFUSED_LIMIT = 5  # per second: a flood from one client is refused
ALLOWED_LIMIT = 1_000_000_000  # never reached


@dataclass(frozen=True)
class Row:
    """One server configuration and how wrk drives it."""

    name: str
    store: str | None = None  # None (bare app), "memory" or "redis"
    limit: int = REFUSED_LIMIT
    options: tuple[tuple[str, Any], ...] = ()  # extra RedisStore options
    wrk_script: str | None = None  # a wrk Lua script (path), e.g. to vary the client address

    @property
    def refuses(self) -> bool:
        return self.store is not None and self.limit == REFUSED_LIMIT


ROWS = [
    Row("bare"),
    Row("memory, refused", "memory"),
    Row("redis, refused", "redis"),
    Row("redis, refused, no refusal cache", "redis", options=(("refusal_cache_size", 0),)),
    Row("memory, allowed", "memory", ALLOWED_LIMIT),
    Row("redis, allowed", "redis", ALLOWED_LIMIT),
]


# ---------------------------------------------------------------- server
def serve(row_name: str, port: int, redis_url: str, prefix: str, http: str, loop: str) -> None:
    """The server process: build the row's app and run uvicorn until terminated."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from mailguard import MemoryStore, RedisStore
    from mailguard.asgi import DosFilter

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    row = next(r for r in ROWS if r.name == row_name)
    app: Any = Starlette(routes=[Route("/", home)])
    if row.store is not None:
        store: Any
        if row.store == "memory":
            store = MemoryStore()
        else:
            store = RedisStore(redis_url, prefix=prefix, **dict(row.options))
        app = DosFilter(app, max_requests_per_sec=row.limit, store=store)
    uvicorn.run(
        app, host="127.0.0.1", port=port, http=http, loop=loop, log_level="error", access_log=False
    )


@dataclass
class Server:
    row: Row
    port: int
    process: subprocess.Popen[bytes]


def start_server(row: Row, index: int, redis_url: str, http: str, loop: str) -> Server:
    port = free_port()
    command = [
        sys.executable, __file__, "--serve", row.name, "--port", str(port),
        "--redis-url", redis_url, "--prefix", f"bench{index}:", "--http", http, "--loop", loop,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return Server(row, port, process)
        if process.poll() is not None:
            raise RuntimeError(f"{row.name}: server exited with {process.returncode}")
        if time.monotonic() > deadline:
            stop(process)
            raise RuntimeError(f"{row.name}: server did not listen on port {port}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


@dataclass
class Sample:
    rate: float  # requests per second
    refused: float  # share of non-2xx responses
    app_cpu: float | None  # uvicorn CPU seconds per request
    redis_cpu: float | None  # redis-server CPU seconds per request


def run_wrk(server: Server, seconds: int, connections: int, redis_pid: int | None) -> Sample:
    command = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
        f"http://127.0.0.1:{server.port}/",
    ]  # fmt: skip
    if server.row.wrk_script:
        command[1:1] = ["-s", server.row.wrk_script]
    app_before, redis_before = cpu_seconds(server.process.pid), cpu_seconds(redis_pid)
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    app_after, redis_after = cpu_seconds(server.process.pid), cpu_seconds(redis_pid)
    total = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    if total is None or rate is None:
        raise RuntimeError(f"{server.row.name}: wrk said:\n{out}")
    count = int(total.group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    refused = int(bad.group(1)) / count if bad and count else 0.0

    def per_request(before: float | None, after: float | None) -> float | None:
        return None if before is None or after is None or not count else (after - before) / count

    return Sample(
        float(rate.group(1)),
        refused,
        per_request(app_before, app_after),
        per_request(redis_before, redis_after),
    )


def spread(values: list[float], digits: int = 0) -> str:
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def micros(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known) * 1e6:5.1f}" if known else "    -"


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def redis_for(rows: list[Row]) -> Iterator[RedisServer | None]:
    if not any(row.store == "redis" for row in rows):
        yield None
        return
    with RedisServer() as server:
        yield server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="per row per round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; rows take turns (3)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds per row, once (1)")
    parser.add_argument("--rows", help="only rows whose name contains this text")
    parser.add_argument(
        "--http", default="auto", choices=["auto", "h11", "httptools"], help="uvicorn's parser"
    )
    parser.add_argument(
        "--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="uvicorn's loop"
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", default="bench:", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.port, args.redis_url, args.prefix, args.http, args.loop)
        return 0
    if shutil.which("wrk") is None:
        print(
            "wrk is not installed: this benchmark drives the servers with it.\n"
            "Install it (Debian/Ubuntu: sudo apt-get install wrk) and run again.",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.seconds <= 60 or not 1 <= args.rounds <= 20 or not 1 <= args.warmup <= 60:
        parser.error("--seconds and --warmup must be in 1..60, --rounds in 1..20")
    rows = [r for r in ROWS if r.name == "bare" or not args.rows or args.rows in r.name]
    needs_redis = any(row.store == "redis" for row in rows)
    if needs_redis and shutil.which("redis-server") is None:
        print("redis-server is not on PATH: the Redis rows need it.", file=sys.stderr)
        return 2

    import uvicorn

    http = args.http if args.http != "auto" else ("httptools" if have("httptools") else "h11")
    loop = args.loop if args.loop != "auto" else ("uvloop" if have("uvloop") else "asyncio")
    print(
        f"Python {sys.version.split()[0]}, uvicorn {uvicorn.__version__} ({http}, {loop}), "
        "one worker; "
        f"wrk -t1 -c{args.connections}, {args.rounds} rounds x {args.seconds} s per row; "
        f"refused rows at {REFUSED_LIMIT}/s from one client"
    )
    samples: dict[str, list[Sample]] = {row.name: [] for row in rows}
    servers: list[Server] = []
    with redis_for(rows) as redis_server:
        url = redis_server.url if redis_server else ""
        redis_pid = redis_server.process.pid if redis_server and redis_server.process else None
        try:
            for index, row in enumerate(rows):
                servers.append(start_server(row, index, url, http, loop))
            for server in servers:
                run_wrk(server, args.warmup, args.connections, redis_pid)
            for round_no in range(args.rounds):
                for server in servers:
                    samples[server.row.name].append(
                        run_wrk(server, args.seconds, args.connections, redis_pid)
                    )
                print(f"  round {round_no + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for server in servers:
                stop(server.process)

    bare = samples["bare"]
    print()
    header = (
        f"{'row':34} {'req/s (median)':>14} {'range':>17} {'x bare':>7} {'range':>11} "
        f"{'refused':>8} {'app us':>7} {'redis us':>8} {'x bare CPU':>10} {'range':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        got = samples[row.name]
        rates = [s.rate for s in got]
        ratios = [s.rate / b.rate for s, b in zip(got, bare, strict=True)]
        cpu_ratios = [
            b.app_cpu / (s.app_cpu + (s.redis_cpu if row.store == "redis" else 0.0))
            for s, b in zip(got, bare, strict=True)
            if b.app_cpu and s.app_cpu and (s.redis_cpu is not None or row.store != "redis")
        ]
        cpu = (
            f"{statistics.median(cpu_ratios):>9.2f}x {spread(cpu_ratios, 2):>11}"
            if cpu_ratios
            else f"{'-':>10} {'':>11}"
        )
        print(
            f"{row.name:34} {statistics.median(rates):>14,.0f} {spread(rates):>17} "
            f"{statistics.median(ratios):>6.2f}x {spread(ratios, 2):>11} "
            f"{statistics.median(s.refused for s in got):>7.1%} "
            f"{micros([s.app_cpu for s in got]):>7} "
            f"{micros([s.redis_cpu for s in got]) if row.store == 'redis' else '':>8} {cpu}"
        )
    print(
        "\nx bare: the median of each round's ratio to the bare app in that round. "
        "app us / redis us: CPU microseconds per request of uvicorn / redis-server.\n"
        "x bare CPU: the bare app's uvicorn CPU per request / the row's uvicorn + "
        "redis-server CPU per request (median of the rounds)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
