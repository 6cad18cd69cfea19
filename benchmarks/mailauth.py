"""Login decisions per second of ``mailguard serve``, beside a bare uvicorn endpoint.

Run:  .venv/bin/python benchmarks/mailauth.py [--seconds 2] [--rounds 5] [--redis]

Needs ``wrk`` (Debian: ``apt-get install wrk``), the ``serve`` extra
(uvicorn, starlette) and, for ``--redis``, ``redis-server`` on PATH.  It
takes about 2 minutes (about 3 with ``--redis``) and sends nothing anywhere
but 127.0.0.1.

Processes, each started here on a free loopback port and stopped by its PID
at the end:

- *mailguard*: ``python -m mailguard serve --config FILE`` with a private
  configuration (memory store, a ``secret``, ``verify = "backend"`` against
  the stub below); with ``--redis`` a second one on a ``redis-server``
  started here (``tests/redis_server.py``);
- *bare*: uvicorn serving a raw ASGI app that reads the request and answers
  at once, doing nothing: ``{"status": 0, "msg": ""}`` to a POST, ``Auth-Status:
  OK`` with a server and port to a GET.  The same uvicorn, one worker, the
  same HTTP parser and event loop as ``mailguard serve`` (uvicorn's choice
  here: httptools and uvloop when installed, else h11 and asyncio);
- *stub IMAP backend*: an asyncio server that answers ``LOGIN`` at once
  (``OK`` for the right password, ``NO`` otherwise), for ``/nginx``'s
  ``verify = "backend"``.

Flows, each one login (the requests Dovecot or nginx really send):

- *dovecot, wrong password*: ``allow`` then ``report`` with ``success:
  false`` (2 requests);
- *dovecot, right password*: ``allow`` before and again after the passdb
  check, then ``report`` with ``success: true`` (3 requests; Dovecot 2.3
  ``auth-request.c``: ``auth_request_verify_plain`` and
  ``auth_request_success`` each call ``auth_policy_check``);
- *nginx, right / wrong password*: one ``GET /nginx`` on a fresh connection
  (nginx's ``auth_http`` speaks HTTP/1.0 and closes), which mailguard checks
  by logging in to the stub backend: *uncached*, a new account every login,
  so the verify cache (``[mailauth] verify_cache_ttl``) never has it; a wrong
  password is never cached;
- *nginx, right password, cached*: each wrk connection logs one account in
  again and again (a mail client reconnecting), from new addresses: after
  its first login the password is answered from the verify cache, with no
  backend login (nginx would then log in to the backend itself).

Every login comes from a client address of its own (``remote`` /
``Client-IP`` rotate through 10.0.0.0/8 and its neighbours, never repeating
across rounds) and a fresh account, so no address is ever blocked and no
account tarpitted (the cached flow's accounts only ever succeed): the rates
are of decisions, not refusals.  A wrong
password is each address's first failure.

Rates: ``wrk`` (one thread per connection, one request in flight on each,
``--connections`` of them), every (flow, server) pair for ``--seconds``, in
``--rounds`` interleaved rounds after a 1 s warm-up of each server, so a
noisy neighbour hurts them all alike. Printed per row: logins per second
(median and range over the rounds), the ratio to the bare endpoint (median
and range of each round's ratio), CPU microseconds per login of the server
(and of the stub backend, for the nginx rows), from /proc, and the bare
endpoint's CPU per login over the row's: logins per CPU second against the
bare endpoint's, which the neighbours' load hardly moves. A wrk Lua
``response`` hook checks every answer mailguard gives (``status`` 0 to
``allow``, ``Auth-Status: OK`` to a right password and an error text to a
wrong one); any other answer is counted and printed.

Latency: a blocking Python client, one login at a time (keep-alive for
Dovecot, as its HTTP client keeps connections; a fresh connection per
request for nginx), the servers taking turns login by login, after the rate
rounds. Printed: p50, p90 and p99 of one login's time on each server and the
difference, mailguard's added latency. For Dovecot the time of the ``allow``
call is what delays a login (``report`` is sent after the answer and waited
for by nobody); the pair's time is printed too. For nginx the added time
includes the backend login itself, printed on its own line as measured by
the client directly against the stub.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

from processes import stop_process  # type: ignore[import-not-found]  # noqa: E402
from redis_server import RedisServer, free_port  # type: ignore[import-not-found]  # noqa: E402

SECRET = "bench-secret-0123456789"
PASSWORD = "pa ss+w%rd"  # nginx sends it as pa%20ss+w%25rd: decoded, never form-decoded
NGINX_PASSWORD = "pa%20ss+w%25rd"
WRONG_PASSWORD = "wrong"

# ---------------------------------------------------------------- the stub backend


def _imap_strings(data: bytes) -> list[bytes]:
    """The atoms and quoted strings of an IMAP command's arguments."""
    out: list[bytes] = []
    i = 0
    while i < len(data):
        if data[i : i + 1] == b" ":
            i += 1
        elif data[i : i + 1] == b'"':
            value = bytearray()
            i += 1
            while i < len(data) and data[i : i + 1] != b'"':
                if data[i : i + 1] == b"\\":
                    i += 1
                value += data[i : i + 1]
                i += 1
            out.append(bytes(value))
            i += 1
        else:
            end = data.find(b" ", i)
            end = len(data) if end < 0 else end
            out.append(data[i:end])
            i = end
    return out


async def _imap_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One IMAP connection: greeting, CAPABILITY, LOGIN (literals too), LOGOUT."""
    writer.write(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] stub ready\r\n")
    try:
        while line := await reader.readline():
            command = line.rstrip(b"\r\n")
            # {N} literals: ask for the bytes, then read the rest of the line.
            while (match := re.search(rb"\{(\d+)\+?\}$", command)) is not None:
                if not command.endswith(b"+}"):
                    writer.write(b"+ go ahead\r\n")
                    await writer.drain()
                literal = await reader.readexactly(int(match.group(1)))
                rest = (await reader.readline()).rstrip(b"\r\n")
                quoted = literal.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
                command = command[: match.start()] + b'"' + quoted + b'"' + rest
            tag, _, rest = command.partition(b" ")
            verb, _, args = rest.partition(b" ")
            verb = verb.upper()
            if verb == b"LOGIN":
                strings = _imap_strings(args)
                ok = len(strings) == 2 and strings[1] == PASSWORD.encode()
                writer.write(
                    tag
                    + (b" OK LOGIN completed\r\n" if ok else b" NO [AUTHENTICATIONFAILED] no\r\n")
                )
            elif verb == b"CAPABILITY":
                writer.write(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + tag + b" OK done\r\n")
            elif verb == b"LOGOUT":
                writer.write(b"* BYE stub\r\n" + tag + b" OK LOGOUT completed\r\n")
                await writer.drain()
                break
            else:
                writer.write(tag + b" BAD unknown command\r\n")
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def run_stub(port: int) -> None:
    """The stub backend process: serve IMAP on 127.0.0.1:port until terminated."""

    async def main() -> None:
        server = await asyncio.start_server(_imap_session, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---------------------------------------------------------------- the bare endpoint

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_BARE_JSON = b'{"status": 0, "msg": ""}'


async def bare_app(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Answer at once, doing nothing: Dovecot's JSON to a POST, nginx's headers to a GET."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["method"] == "GET":
        headers = [(b"auth-status", b"OK"), (b"auth-server", b"127.0.0.1"), (b"auth-port", b"143")]
        body = b""
    else:
        headers = [(b"content-type", b"application/json")]
        body = _BARE_JSON
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def run_bare(port: int, http: str, loop: str) -> None:
    """The bare endpoint's process: one uvicorn worker, as ``mailguard serve`` runs."""
    import uvicorn

    uvicorn.run(
        bare_app, host="127.0.0.1", port=port, http=http, loop=loop,
        log_level="error", access_log=False, lifespan="on",
        server_header=False, date_header=False,  # as mailguard.serve.main runs it
    )  # fmt: skip


# ---------------------------------------------------------------- wrk's side

WRK_SCRIPT = r"""
-- One login after another on this thread's one connection; see benchmarks/mailauth.py.
local counter = 0
local threads = {}

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  flow, round, secret, check = args[1], tonumber(args[2]), args[3], args[4]
  n, step, unexpected = 0, 0, 0
  steps = ({dovecot_fail = 2, dovecot_ok = 3})[flow] or 1
  octet = ({dovecot_fail = 10, dovecot_ok = 11, nginx_ok = 12, nginx_fail = 13,
            nginx_cached = 15})[flow]
end

local function address()
  return string.format("%d.%d.%d.%d", octet, round * 32 + id, math.floor(n / 256) % 256, n % 256)
end

local function dovecot(command, extra)
  local body = string.format(
    '{"device_id":"","login":"user%d-%d-%d@example.com","protocol":"imap",' ..
    '"pwhash":"%04x","remote":"%s","session_id":"s%d-%d-%d","tls":false%s}',
    round, id, n, n % 65536, address(), round, id, n, extra)
  return wrk.format("POST", "/dovecot/?command=" .. command,
    {["Content-Type"] = "application/json", ["X-Mailguard-Secret"] = secret}, body)
end

function request()
  step = step + 1
  if step > steps then
    step, n = 1, n + 1
  end
  if flow == "dovecot_fail" then
    if step == 1 then return dovecot("allow", "") end
    return dovecot("report", ',"policy_reject":false,"success":false')
  elseif flow == "dovecot_ok" then
    if step < 3 then return dovecot("allow", "") end
    return dovecot("report", ',"policy_reject":false,"success":true')
  end
  local password = flow == "nginx_fail" and "WRONG" or "PASSWORD"
  -- nginx_cached: one account per connection, logging in again and again (a
  -- mail client reconnecting); the others: a new account every login
  local user = flow == "nginx_cached" and string.format("cached%d", id)
    or string.format("user%d-%d-%d", round, id, n)
  return wrk.format("GET", "/nginx", {
    ["Auth-Method"] = "plain", ["Auth-User"] = user,
    ["Auth-Pass"] = password, ["Auth-Salt"] = "", ["Auth-Protocol"] = "imap",
    ["Auth-Login-Attempt"] = "1", ["Client-IP"] = address(),
    ["Client-Host"] = "[UNAVAILABLE]", ["X-Mailguard-Secret"] = secret,
    ["Connection"] = "close"})
end

function response(status, headers, body)
  if check ~= "check" then return end
  local good = status == 200
  if flow == "dovecot_fail" or flow == "dovecot_ok" then
    if good and (step < steps) then
      good = string.find(body, '"status":%s*0%s*[,}]') ~= nil
    end
  else
    local answer = headers["Auth-Status"] or headers["auth-status"]
    if flow ~= "nginx_fail" then good = good and answer == "OK"
    else good = good and answer ~= nil and answer ~= "OK" end
  end
  if not good then unexpected = unexpected + 1 end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("unexpected") end
  io.write(string.format("unexpected answers: %d\n", total))
end
"""


@dataclass(frozen=True)
class Flow:
    name: str  # the wrk script's flow
    label: str
    requests: int  # HTTP requests per login


FLOWS = [
    Flow("dovecot_fail", "dovecot, wrong password (allow + report)", 2),
    Flow("dovecot_ok", "dovecot, right password (allow x2 + report)", 3),
    Flow("nginx_ok", "nginx, right password, uncached (backend)", 1),
    Flow("nginx_cached", "nginx, right password, cached (no backend)", 1),
    Flow("nginx_fail", "nginx, wrong password (backend, not cached)", 1),
]
REDIS_FLOWS = {"dovecot_fail", "nginx_ok", "nginx_cached"}


@dataclass
class Server:
    name: str  # "bare", "mailguard", "mailguard+redis"
    port: int
    process: subprocess.Popen[bytes]


@dataclass
class Sample:
    logins: float  # per second
    cpu: float | None  # server CPU seconds per login
    stub_cpu: float | None  # stub backend CPU seconds per login
    unexpected: int
    errors: str


@dataclass
class Row:
    flow: Flow
    server: str
    samples: list[Sample] = field(default_factory=list)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of ``pid`` so far (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    server: Server, flow: Flow, round_no: int, seconds: int, connections: int,
    script: Path, stub_pid: int, check: bool,
) -> Sample:  # fmt: skip
    """One wrk run of ``flow`` against ``server``: logins/s, CPU per login, bad answers."""
    command = [
        "wrk", f"-t{connections}", f"-c{connections}", f"-d{seconds}s", "-s", str(script),
        f"http://127.0.0.1:{server.port}/", "--",
        flow.name, str(round_no), SECRET, "check" if check else "-",
    ]  # fmt: skip
    cpu_before, stub_before = cpu_seconds(server.process.pid), cpu_seconds(stub_pid)
    out = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30).stdout
    cpu_after, stub_after = cpu_seconds(server.process.pid), cpu_seconds(stub_pid)
    total = re.search(r"(\d+) requests in", out)
    unexpected = re.search(r"unexpected answers: (\d+)", out)
    if total is None or unexpected is None:
        raise RuntimeError(f"{server.name} {flow.name}: wrk said:\n{out}")
    rate = re.search(r"Requests/sec:\s*([\d.]+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    logins = int(total.group(1)) / flow.requests

    def per_login(before: float | None, after: float | None) -> float | None:
        return None if before is None or after is None or not logins else (after - before) / logins

    return Sample(
        float(rate.group(1)) / flow.requests if rate else 0.0,
        per_login(cpu_before, cpu_after),
        per_login(stub_before, stub_after),
        int(unexpected.group(1)),
        errors.group(1) if errors else "",
    )


# ---------------------------------------------------------------- the latency client


class Client:
    """A minimal blocking HTTP/1.1 client: one request at a time, timed."""

    def __init__(self, port: int, keep_alive: bool) -> None:
        self.port = port
        self.keep_alive = keep_alive
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def send(self, request: bytes) -> tuple[float, bytes, bytes]:
        """(seconds, head, body) of one request, connecting first unless kept alive."""
        started = time.perf_counter()
        if self.sock is None:
            self.sock = self._connect()
        sock = self.sock
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the response head")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        want = int(length.group(1)) if length else 0
        while len(body) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        if not self.keep_alive:
            sock.close()
            self.sock = None
        return time.perf_counter() - started, head, body

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def dovecot_request(command: str, address: str, index: int, success: bool | None) -> bytes:
    body: dict[str, Any] = {
        "device_id": "", "login": f"lat{index}@example.com", "protocol": "imap",
        "pwhash": f"{index % 65536:04x}", "remote": address, "session_id": f"lat-{index}",
        "tls": False,
    }  # fmt: skip
    if success is not None:
        body["policy_reject"] = False
        body["success"] = success
    data = json.dumps(body, separators=(",", ":")).encode()
    return (
        f"POST /dovecot/?command={command} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nX-Mailguard-Secret: {SECRET}\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def nginx_request(address: str, index: int, password: str) -> bytes:
    # As ngx_mail_auth_http_create_request writes it (HTTP/1.0, then nginx closes).
    return (
        f"GET /nginx HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
        f"Auth-User: lat{index}\r\nAuth-Pass: {password}\r\nAuth-Protocol: imap\r\n"
        f"Auth-Login-Attempt: 1\r\nClient-IP: {address}\r\nClient-Host: [UNAVAILABLE]\r\n"
        f"X-Mailguard-Secret: {SECRET}\r\n\r\n"
    ).encode()


def status_of(body: bytes) -> Any:
    return json.loads(body)["status"]


def auth_status(head: bytes) -> str | None:
    match = re.search(rb"(?im)^auth-status:\s*(.*?)\s*$", head)
    return match.group(1).decode("latin-1") if match else None


def backend_login(port: int, password: str) -> float:
    """Seconds for one IMAP LOGIN straight to the stub: connect, greeting, LOGIN, LOGOUT."""
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        reader = sock.makefile("rb")
        reader.readline()
        sock.sendall(f'a LOGIN "lat" "{password}"\r\n'.encode())
        reader.readline()
        sock.sendall(b"b LOGOUT\r\n")
        reader.readline()
    return time.perf_counter() - started


@dataclass
class Latencies:
    allow: list[float] = field(default_factory=list)
    pair: list[float] = field(default_factory=list)
    nginx: list[float] = field(default_factory=list)
    cached: list[float] = field(default_factory=list)


def measure_latency(
    servers: list[Server], stub_port: int, logins: int, doors: set[str]
) -> tuple[dict[str, Latencies], list[float]]:
    """Per server: allow, allow+report and /nginx times, one login at a time.

    The servers take turns login by login (the order rotating), so a noisy
    neighbour's burst falls on all of them alike; the stub backend's own
    login time is taken in the same turns.
    """
    result = {server.name: Latencies() for server in servers}
    backend: list[float] = []
    keep = {server.name: Client(server.port, keep_alive=True) for server in servers}
    fresh = {server.name: Client(server.port, keep_alive=False) for server in servers}
    try:
        for index in range(1, logins + 1):
            address = f"14.{index // 65536 % 256}.{index // 256 % 256}.{index % 256}"
            shift = index % len(servers)
            for server in servers[shift:] + servers[:shift]:
                got = result[server.name]
                mailguard = server.name != "bare"
                if "dovecot" in doors:
                    allow = dovecot_request("allow", address, index, None)
                    took, _, body = keep[server.name].send(allow)
                    report = dovecot_request("report", address, index, False)
                    took2, _, _ = keep[server.name].send(report)
                    if mailguard and status_of(body) != 0:
                        raise RuntimeError(f"{server.name}: allow answered {body!r}")
                    got.allow.append(took)
                    got.pair.append(took + took2)
                if "nginx" in doors:
                    request = nginx_request(address, index, NGINX_PASSWORD)
                    took, head, _ = fresh[server.name].send(request)
                    if mailguard and auth_status(head) != "OK":
                        raise RuntimeError(f"{server.name}: /nginx answered {head!r}")
                    got.nginx.append(took)
                    # the same account again: answered from the verify cache
                    request = nginx_request(address, 0, NGINX_PASSWORD)
                    took, head, _ = fresh[server.name].send(request)
                    if mailguard and auth_status(head) != "OK":
                        raise RuntimeError(f"{server.name}: /nginx answered {head!r}")
                    if index > 1:  # the first one filled the cache
                        got.cached.append(took)
            if "nginx" in doors:
                backend.append(backend_login(stub_port, PASSWORD))
    finally:
        for client in keep.values():
            client.close()
    return result, backend


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# ---------------------------------------------------------------- processes


def wait_listening(process: subprocess.Popen[bytes], port: int, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if process.poll() is not None:
            raise RuntimeError(f"{what}: exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: did not listen on port {port}")
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, grace=10.0)


def serve_config(port: int, stub_port: int, redis_url: str | None) -> str:
    store = (
        f'type = "redis"\nurl = "{redis_url}"\nprefix = "bench:"\n'
        if redis_url
        else 'type = "memory"\n'
    )
    return (
        f"[store]\n{store}\n"
        f'[serve]\nhost = "127.0.0.1"\nport = {port}\nsecret = "{SECRET}"\n\n'
        f'[mailauth]\nverify = "backend"\nnginx_backends = {{ imap = "127.0.0.1:{stub_port}" }}\n'
    )


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


@contextlib.contextmanager
def started(
    command: list[str], port: int, what: str, **kwargs: Any
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(command, **kwargs)
    try:
        wait_listening(process, port, what)
        yield process
    finally:
        stop(process)


def spread(values: list[float], digits: int = 0) -> str:
    return f"{min(values):,.{digits}f}-{max(values):,.{digits}f}"


def micros(values: list[float | None]) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known) * 1e6:,.0f}" if known else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=int, default=2, help="per row per round (2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (8)")
    parser.add_argument("--latency-logins", type=int, default=1500, help="per server (1500)")
    parser.add_argument("--redis", action="store_true", help="add rows on a RedisStore")
    parser.add_argument("--flows", help="only flows whose name contains this (dovecot, nginx)")
    parser.add_argument("--bare", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stub", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--http", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--loop", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stub:
        run_stub(args.stub)
        return 0
    if args.bare:
        run_bare(args.bare, args.http, args.loop)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk).", file=sys.stderr)
        return 2
    if args.redis and shutil.which("redis-server") is None:
        print("redis-server is not on PATH: --redis needs it.", file=sys.stderr)
        return 2
    if not 1 <= args.seconds <= 30 or not 1 <= args.rounds <= 7 or not 1 <= args.connections <= 31:
        parser.error("--seconds must be in 1..30, --rounds in 1..7, --connections in 1..31")
    if not 100 <= args.latency_logins <= 20_000:
        parser.error("--latency-logins must be in 100..20000")

    import uvicorn

    # What uvicorn's "auto" picks, in mailguard serve and in the bare endpoint alike.
    http = "httptools" if have("httptools") else "h11"
    loop = "uvloop" if have("uvloop") else "asyncio"
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    print(
        f"{os.cpu_count()} CPUs ({cpu_model()}, {platform.machine()}), "
        f"Linux {platform.release()}; Python {platform.python_version()}, "
        f"mailguard {version('mailguard')}, uvicorn {uvicorn.__version__} ({http} "
        f"{version(http)}, {loop}), starlette {version('starlette')}, "
        f"wrk {wrk_version[1] if len(wrk_version) > 1 else '?'}"
    )
    print(
        f"one uvicorn worker per server; wrk -t{args.connections} -c{args.connections}; "
        f"{args.rounds} rounds x {args.seconds} s per row, interleaved"
    )

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mailguard-bench-")))
        script = tmp / "mailauth.lua"
        script.write_text(
            WRK_SCRIPT.replace('"PASSWORD"', f'"{NGINX_PASSWORD}"').replace(
                '"WRONG"', f'"{WRONG_PASSWORD}"'
            )
        )
        redis = None
        if args.redis:
            redis = stack.enter_context(RedisServer())
            print(f"redis-server {redis_version()} on loopback TCP")
        quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
        stub_port = free_port()
        stub = stack.enter_context(
            started(
                [sys.executable, __file__, "--stub", str(stub_port)], stub_port, "stub", **quiet
            )
        )
        servers: list[Server] = []
        port = free_port()
        bare = stack.enter_context(
            started(
                [sys.executable, __file__, "--bare", str(port), "--http", http, "--loop", loop],
                port,
                "bare uvicorn",
                **quiet,
            )
        )
        servers.append(Server("bare", port, bare))
        stores = [("mailguard", None)] + ([("mailguard+redis", redis.url)] if redis else [])
        for name, url in stores:
            port = free_port()
            config = tmp / f"{name}.toml"
            config.write_text(serve_config(port, stub_port, url))
            log = (tmp / f"{name}.log").open("wb")
            stack.callback(log.close)
            process = stack.enter_context(
                started(
                    [sys.executable, "-m", "mailguard", "serve", "--config", str(config)],
                    port,
                    name,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            servers.append(Server(name, port, process))

        rows = [
            Row(flow, server.name)
            for flow in FLOWS
            if not args.flows or args.flows in flow.name
            for server in servers
            if server.name != "mailguard+redis" or flow.name in REDIS_FLOWS
        ]
        by_name = {server.name: server for server in servers}
        warmed: set[str] = set()
        for row in rows:  # warm-up, round 0: each server once
            if row.server not in warmed:
                warmed.add(row.server)
                server = by_name[row.server]
                run_wrk(server, row.flow, 0, 1, args.connections, script, stub.pid, False)
        for round_no in range(1, args.rounds + 1):
            for row in rows:
                server = by_name[row.server]
                row.samples.append(
                    run_wrk(
                        server,
                        row.flow,
                        round_no,
                        args.seconds,
                        args.connections,
                        script,
                        stub.pid,
                        server.name != "bare",
                    )
                )
            print(f"  round {round_no}/{args.rounds} done", file=sys.stderr)
        doors = {row.flow.name.split("_")[0] for row in rows}
        latencies, backend = measure_latency(servers, stub_port, args.latency_logins, doors)

    print_rates(rows)
    print_latencies(latencies, backend)
    return 0


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\S+)", out)
    return match.group(1) if match else "?"


def print_rates(rows: list[Row]) -> None:
    bare = {row.flow.name: row for row in rows if row.server == "bare"}
    print()
    header = (
        f"{'flow':44} {'server':16} {'logins/s':>9} {'range':>15} {'x bare':>7} "
        f"{'range':>11} {'CPU us/login':>12} {'x bare CPU':>10} {'stub us':>7} {'bad':>4}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        logins = [s.logins for s in row.samples]
        base = bare[row.flow.name].samples
        ratios = [s.logins / b.logins for s, b in zip(row.samples, base, strict=True) if b.logins]
        ratio = (
            f"{statistics.median(ratios):>6.2f}x {spread(ratios, 2):>11}"
            if row.server != "bare"
            else f"{'1x':>7} {'':>11}"
        )
        stub = (
            micros([s.stub_cpu for s in row.samples]) if row.flow.name.startswith("nginx") else ""
        )
        mine = [s.cpu for s in row.samples if s.cpu]
        theirs = [s.cpu for s in base if s.cpu]
        cpu_ratio = (
            f"{statistics.median(theirs) / statistics.median(mine):>9.2f}x"
            if mine and theirs and row.server != "bare"
            else f"{'':>10}"
        )
        print(
            f"{row.flow.label:44} {row.server:16} {statistics.median(logins):>9,.0f} "
            f"{spread(logins):>15} {ratio} {micros([s.cpu for s in row.samples]):>12} "
            f"{cpu_ratio} {stub:>7} {sum(s.unexpected for s in row.samples):>4}"
        )
        errors = {s.errors for s in row.samples if s.errors}
        if errors:
            print(f"    wrk socket errors: {'; '.join(sorted(errors))}")
    print(
        "\nlogins/s: median of the rounds (range). x bare: median of each round's ratio to the "
        "bare endpoint (range).\nCPU us/login: the server process's CPU per login (median); "
        "x bare CPU: the bare endpoint's CPU per login / the row's (logins per CPU second\n"
        "against the bare endpoint's, steadier than rates on a shared machine); stub us: "
        "the stub backend's CPU per login. bad: answers other than expected (mailguard rows)."
    )


SHARES = (0.5, 0.9, 0.99)


def shares(values: list[float]) -> str:
    return " / ".join(f"{percentile(values, share) * 1e3:6.3f}" for share in SHARES)


def print_latencies(latencies: dict[str, Latencies], backend: list[float]) -> None:
    print("\nLatency, one login at a time (ms): p50 / p90 / p99")
    bare = latencies["bare"]
    for name, got in latencies.items():
        if name == "bare":
            continue
        for label, mine, base in [
            ("dovecot allow (delays the login)", got.allow, bare.allow),
            ("dovecot allow + report", got.pair, bare.pair),
            ("nginx /nginx, uncached (backend)", got.nginx, bare.nginx),
            ("nginx /nginx, cached", got.cached, bare.cached),
        ]:
            if not mine:
                continue
            added = " / ".join(
                f"{(percentile(mine, share) - percentile(base, share)) * 1e3:+6.3f}"
                for share in SHARES
            )
            print(f"  {label:34} {name:16} {shares(mine)}   bare {shares(base)}   added {added}")
    if backend:
        print(f"  {'backend login alone (stub IMAP)':34} {'client->stub':16} {shares(backend)}")


if __name__ == "__main__":
    sys.exit(main())
