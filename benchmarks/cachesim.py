"""Counts per request under a cache simulator: instructions and L1 misses.

Run:  .venv/bin/python benchmarks/cachesim.py [--clients 1,20000]
                                              [--requests 1000] [--jobs 2]

Needs valgrind (Debian's ``valgrind``) and a Python whose binary has its
symbols (pyenv's and python.org's builds do; Debian's ``python3`` keeps them
in ``python3-dbg``).  A full run takes about a quarter of an hour on two
cores (``--rows`` picks rows); a row whose counted requests run for over an
hour is stopped.

Wall-clock figures on a shared VM move by 10% and more between runs (see the
README); these counts do not.  Each row runs in its own process under
``valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no
--collect-atstart=no --toggle-collect=functools_reduce``.  The process builds
the row's app and sends two rotations of requests from its N clients (at
least 2,000 requests: the warm-up, and a store that has filled and turned
over), with valgrind's instrumentation off (about eight to fifteen times
slower than without valgrind, rather than some three hundred).  Then
``callgrind_control`` switches it on, and the process sends ``--requests``
more (with N clients, at least N: one whole rotation, so that what the store
does once a rotation, turning its recent counters into aged ones, and the
collector's full collections are counted at their share) inside one
``functools.reduce`` call: only what runs inside that call is counted, not
start-up, imports or the warm-up.  The simulated caches start empty then,
and the first counted requests refill them.  ``PYTHONHASHSEED`` is fixed,
and the stores' clock is simulated.  With one client it advances 8 µs a
reading, about the pace of these rows without valgrind (a login reads it
twice); with N clients, 2 / N seconds a reading, so that each client comes
back after two seconds or more and finds its one-second windows expired, as
in most of ``http_cost.py``'s 100,000-client rows (a login's streak lasts minutes
and is still there).  So two runs of one code give the same counts.
Between two codes, a row the change does not touch moves by up to 1%: the
garbage collector runs at other moments, and lookups of special methods
can miss the interpreter's type-attribute cache, which depends on where
objects happen to lie (seen as 500-1,000 instructions a request between
two codes whose Python work was the same, bytecode for bytecode).
The many-clients count, 20,000 by default, is past the 16,384 entries of
the client-address caches, which then keep emptying and refilling as at
100,000; 100,000 clients work too, but a whole rotation of them takes about
a quarter of an hour a row.

Per request: instructions executed (``Ir``), level-1 instruction-cache misses
(``I1mr``) and level-1 data-cache misses (reads and writes, ``D1mr + D1mw``),
as the simulator's caches (those of the machine it runs on, as valgrind
detects them) see them.  A level-1 miss that the next level holds costs about
a dozen cycles, so on the two-vCPU machine of the README a thousand misses
are a few microseconds: the count to watch beside the instructions.  The bare
rows show what the app costs alone; "added" is the row minus its bare row.
The rows are those of ``http_cost.py``'s #18 targets: DosFilter and
``protect()`` on ``GET /``, DeviceJail on the EAS route, and
InvalidLoginFilter on a wrong password, under Starlette (ASGI) and werkzeug
(WSGI).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import http_cost as h

from mailguard.stores import memory

EVENTS = ("Ir", "I1mr", "D1mr", "D1mw")
WARM = 2_000  # requests before the counted ones, at least (one per client when more)
MOST_LOGIN_REQUESTS = 7_000  # one client: 2,000 + this stay below max_failed_logins (10,000)
STEP = 8e-6  # seconds the stores' clock advances a reading with one client (see _step_clock)
ROTATION = 2.0  # seconds a rotation of the clients takes at least, with more than one
ROW_SECONDS = 3600  # the most one row's counted requests may take under valgrind


@dataclass(frozen=True)
class Row:
    name: str
    front: str  # "asgi" or "wsgi"
    load: str  # "get", "eas" or "login"
    make: Callable[[], Any]
    bare: str | None  # the key of its bare row


ROWS: dict[str, Row] = {
    "a-bare": Row("bare Starlette, GET /", "asgi", "get", h.starlette_app, None),
    "a-dos": Row("Starlette + DosFilter, allowed", "asgi", "get",
                 lambda: h.dos_asgi(h.ALLOWED), "a-bare"),
    "a-protect": Row("Starlette + protect() (3 filters), GET", "asgi", "get",
                     h.protect_asgi, "a-bare"),
    "a-bare-eas": Row("bare Starlette, EAS POST", "asgi", "eas", h.starlette_app, None),
    "a-device": Row("Starlette + DeviceJail, EAS POST", "asgi", "eas",
                    h.device_asgi, "a-bare-eas"),
    "a-bare-login": Row("bare Starlette, login -> 401", "asgi", "login",
                        lambda: h.starlette_app(401), None),
    "a-login": Row("Starlette + InvalidLoginFilter, login -> 401", "asgi", "login",
                   lambda: h.login_asgi(401), "a-bare-login"),
    "w-bare": Row("bare werkzeug, GET /", "wsgi", "get", h.werkzeug_app, None),
    "w-dos": Row("werkzeug + DosFilter, allowed", "wsgi", "get",
                 h.dos_wsgi(h.werkzeug_app, h.ALLOWED), "w-bare"),
    "w-protect": Row("werkzeug + protect(), GET", "wsgi", "get", h.protect_wsgi, "w-bare"),
    "w-bare-login": Row("bare werkzeug, login -> 401", "wsgi", "login",
                        lambda: h.werkzeug_app(401), None),
    "w-login": Row("werkzeug + InvalidLoginFilter, login -> 401", "wsgi", "login",
                   lambda: h.login_wsgi(401), "w-bare-login"),
}  # fmt: skip


def _step_clock(clients: int) -> Any:
    """What ``mailguard.stores.memory`` sees as its ``time`` module in a row's
    process: ``time()`` advances :data:`STEP` seconds a reading with one
    client, and :data:`ROTATION` seconds over ``clients`` readings with more
    (so each client comes back after that long at least, its one-second
    windows expired), from C (``itertools.count``).  The windows a row's
    store keeps then do not depend on valgrind's speed."""
    step = STEP if clients == 1 else max(STEP, ROTATION / clients)
    return types.SimpleNamespace(time=itertools.count(1_700_000_000.0, step).__next__)


def child(key: str, clients: int, requests: int) -> None:
    """Run one row: the warm-up uncounted, then ``requests`` inside reduce()."""
    row = ROWS[key]
    memory.time = _step_clock(clients)  # type: ignore[attr-defined]  # (before the store is made)
    app = row.make()
    warm = max(2 * clients, WARM)  # two rotations: the store has turned over since it filled
    counted: Callable[[], None]
    if row.front == "wsgi":
        wload = h.WsgiLoad(clients, login=row.load == "login")
        h.wsgi_burst(app, wload, 0, warm)
        counted = functools.partial(h.wsgi_burst, app, wload, warm, requests)
    else:
        aload = h.AsgiLoad(row.load, clients)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(h.asgi_burst(app, aload, 0, warm))

        def counted_asgi() -> None:
            loop.run_until_complete(h.asgi_burst(app, aload, warm, requests))

        counted = counted_asgi

    # valgrind has run this process uninstrumented so far (fast): the parent
    # turns instrumentation on, then the one call --toggle-collect counts
    print("ready", flush=True)
    sys.stdin.readline()
    functools.reduce(lambda _, __: counted(), [None], None)


def measure(key: str, clients: int, requests: int, scratch: str) -> dict[str, float]:
    """Per-request counts of one row at one client count (a valgrind run)."""
    out = os.path.join(scratch, f"{key}.{clients}.out")
    command = [
        "valgrind", "--tool=callgrind", "--cache-sim=yes", "--instr-atstart=no",
        "--collect-atstart=no", "--toggle-collect=functools_reduce",
        f"--callgrind-out-file={out}", sys.executable, os.path.abspath(__file__),
        "--child", key, "--clients", str(clients), "--requests", str(requests),
    ]  # fmt: skip
    env = dict(os.environ, PYTHONHASHSEED="0")
    with subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as run:
        assert run.stdout is not None
        ready = run.stdout.readline().strip() == "ready"
        if ready:  # the warm-up is done: count from here
            switch = subprocess.run(
                ["callgrind_control", "--instr=on", str(run.pid)],
                capture_output=True,
                text=True,
                check=False,
            )
            ready = switch.returncode == 0
        try:
            _, errors = run.communicate("go\n" if ready else "", timeout=ROW_SECONDS)
        except subprocess.TimeoutExpired:
            run.kill()
            raise RuntimeError(f"{key} at {clients}: over {ROW_SECONDS} s, stopped") from None
        code = run.returncode
    if not ready or code != 0:
        raise RuntimeError(f"{key} at {clients}: valgrind exited {code}:\n{errors}")
    with open(out) as f:
        text = f.read()
    events = re.search(r"^events: (.*)$", text, re.M)
    totals = re.search(r"^(?:summary|totals): (.*)$", text, re.M)
    if events is None or totals is None:
        raise RuntimeError(f"{key} at {clients}: no totals in {out}")
    counts = dict(zip(events.group(1).split(), map(int, totals.group(1).split()), strict=False))
    if not counts.get("Ir"):
        raise RuntimeError(
            "nothing was counted: this Python's binary has no symbol functools_reduce"
            " (use a build with symbols: pyenv, python.org, or Debian's python3-dbg)"
        )
    return {event: counts.get(event, 0) / requests for event in EVENTS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,20000", help="client counts (1,20000)")
    parser.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="requests counted per row, at least (1000; with N clients, at least N)",
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="valgrind runs at once"
    )
    parser.add_argument("--rows", default=",".join(ROWS), help="row keys, comma-separated")
    parser.add_argument(
        "--keep", help="a folder to keep callgrind's files in (for callgrind_annotate)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    counts = h.parse_clients(args.clients)
    if args.child:
        child(args.child, counts[0], args.requests)
        return 0
    if shutil.which("valgrind") is None:
        print("cachesim.py needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    if not 1 <= args.requests <= MOST_LOGIN_REQUESTS:
        parser.error(f"--requests: from 1 to {MOST_LOGIN_REQUESTS} (one client's logins)")
    keys = [k for k in args.rows.split(",") if k]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        parser.error(f"--rows: unknown {unknown}; known: {', '.join(ROWS)}")
    for key in list(keys):  # every row's bare row too
        bare = ROWS[key].bare
        if bare is not None and bare not in keys:
            keys.append(bare)
    jobs = [(k, n) for n in counts for k in keys]
    counted = {n: max(args.requests, n) for n in counts}  # a whole rotation of the clients
    with tempfile.TemporaryDirectory() as scratch, ThreadPoolExecutor(max(1, args.jobs)) as pool:
        folder = args.keep or scratch
        os.makedirs(folder, exist_ok=True)
        results = dict(
            zip(jobs, pool.map(lambda j: measure(j[0], j[1], counted[j[1]], folder), jobs),
                strict=True)
        )  # fmt: skip
    print(
        f"# mailguard cache-simulator counts: Python {platform.python_version()},"
        f" {platform.machine()}, valgrind callgrind; requests counted per row: "
        + ", ".join(f"{counted[n]:,} with {n:,} client{'s' if n > 1 else ''}" for n in counts)
        + "\n"
    )
    for n in counts:
        print(f"## {n:,} client{'s' if n > 1 else ''}\n")
        print(
            "| row | instructions | x bare | I1 misses | D1 misses"
            " | added instructions | added I1 misses | added D1 misses |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for key in keys:
            row, got = ROWS[key], results[(key, n)]
            d1 = got["D1mr"] + got["D1mw"]
            cells = [f"{got['Ir']:,.0f}", "", f"{got['I1mr']:,.0f}", f"{d1:,.0f}", "", "", ""]
            if row.bare is not None:
                base = results[(row.bare, n)]
                base_d1 = base["D1mr"] + base["D1mw"]
                cells[1] = f"{got['Ir'] / base['Ir']:.2f}x"
                cells[4] = f"{got['Ir'] - base['Ir']:+,.0f}"
                cells[5] = f"{got['I1mr'] - base['I1mr']:+,.0f}"
                cells[6] = f"{d1 - base_d1:+,.0f}"
            print(f"| {row.name} | " + " | ".join(cells) + " |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
