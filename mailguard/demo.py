"""``mailguard demo``: one scripted morning at a small mail server, replayed in memory.

Run it::

    mailguard demo              # or: python -m mailguard.demo
    mailguard demo --json       # the same facts as one JSON object
    mailguard demo --plain      # plain text even on a terminal

A small webmail (a login form, an inbox, an ActiveSync endpoint) is wrapped by
all three filters on one :class:`~mailguard.MemoryStore` whose clock is a
:class:`~mailguard.FakeClock`: :class:`~mailguard.asgi.DosFilter` outermost,
then :class:`~mailguard.asgi.DeviceJail`, then
:class:`~mailguard.asgi.InvalidLoginFilter`.  Four hours of traffic, 08:00 to
12:00, are replayed as direct ASGI calls (no sockets, no sleeping) in a few
seconds, the clock jumping to each request's time.  The traffic is scripted
and seeded, so every run tells the same story:

- an office of 30 people behind one NAT address reads mail all morning,
  ten of them with phones syncing over ActiveSync, and one mistypes once;
- Erin, at home, mistypes her password twice and then logs in;
- a flooder sends 200 requests a second for half a minute;
- a guesser tries passwords for ``admin`` every six seconds for two hours;
- Dan's phone, on the office Wi-Fi, gets stuck in a sync loop for 20 minutes;
- an IPv6 attacker sprays passwords and then floods, taking a fresh address
  inside its /64 for every request.

Each request passes probes placed between the filters, so the demo knows
exactly which filter refused it; the filters' ``on_event`` hook reports the
blocks and jails.  The result is a table per filter, a table per actor, a
list of checks and the line that matters: the honest users all got through.
The exit status is 0 when every check holds and 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import parse_qs, urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from .asgi import FILTER_CLASSES, ASGIApp, Message, Receive, Scope, Send
from .core import FakeClock
from .events import Event
from .policies import FILTERS as FILTER_KINDS
from .policies import KINDS
from .stores.memory import MemoryStore

__all__ = ["DEFAULT_SEED", "LIMITS", "Report", "build_webmail", "main", "run"]

DEFAULT_SEED = 2024

# 2024-03-04 08:00:00 UTC, a Monday; the demo shows times as offsets from 08:00.
_EPOCH = 1_709_539_200.0
_HOURS = 4
_SECONDS = _HOURS * 3600

LIMITS: dict[str, dict[str, Any]] = {
    "dos": {"max_requests_per_sec": 20},
    "device": {"max_requests": 60, "time_window": 60, "jail_duration": 300},
    "login": {"max_failed_logins": 5, "failure_interval": 300, "block_duration": 900},
}
"""The options each filter gets in the demo (tighter than production defaults)."""

FILTERS = KINDS  # outermost first
_TITLES = {f.kind: f.adapter for f in FILTER_KINDS}
_BLOCK_ACTION = {f.kind: f.block_action for f in FILTER_KINDS}
_BLOCK_WORD = {f.kind: f.block_word for f in FILTER_KINDS}
_TRACE = "mailguard.demo.trace"  # scope key the probes write to

OFFICE_NAT = "198.51.100.10"
HOME = "192.0.2.44"
FLOODER = "203.0.113.99"
GUESSER = "203.0.113.66"
V6_NET = "2001:db8:bad:cafe"

OFFICE = (
    "anna", "ben", "carla", "dan", "eva", "farid", "gina", "hugo", "ines", "jon",
    "kim", "luca", "mara", "nils", "olga", "pavel", "quinn", "rosa", "sami", "tara",
    "ugo", "vera", "walt", "xena", "yann", "zoe", "amir", "bea", "cyril", "dora",
)  # fmt: skip
USERS = {name: f"{name}-secret" for name in (*OFFICE, "erin", "admin")}
USERS["admin"] = "correct horse battery staple"


# ------------------------------------------------------------------ the webmail
def build_webmail() -> Starlette:
    """The demo's webmail: ``GET /``, ``POST /login``, ``GET /inbox``,
    ``GET /message/{n}`` and an ActiveSync echo at ``/Microsoft-Server-ActiveSync``."""

    def user_of(request: Request) -> str | None:
        name = request.cookies.get("session")
        return name if name in USERS else None

    async def home(request: Request) -> Response:
        return HTMLResponse("<form method=post action=/login>...</form>")

    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0]
        password = (form.get("password") or [""])[0]
        if USERS.get(name) != password:
            return HTMLResponse("wrong user name or password", status_code=401)
        response = RedirectResponse("/inbox", status_code=302)
        response.set_cookie("session", name, httponly=True)
        return response

    async def inbox(request: Request) -> Response:
        if user_of(request) is None:
            return RedirectResponse("/", status_code=302)
        return HTMLResponse("<ul><li>Welcome back</li></ul>")

    async def message(request: Request) -> Response:
        if user_of(request) is None:
            return RedirectResponse("/", status_code=302)
        return PlainTextResponse(f"message {request.path_params['n']}")

    async def activesync(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            user = password = ""
        if not auth.startswith("Basic ") or USERS.get(user) != password:
            return Response(status_code=401, headers={"www-authenticate": 'Basic realm="mail"'})
        return PlainTextResponse(f"{request.query_params.get('Cmd', '')} ok")

    return Starlette(
        routes=[
            Route("/", home),
            Route("/login", login, methods=["POST"]),
            Route("/inbox", inbox),
            Route("/message/{n:int}", message),
            Route("/Microsoft-Server-ActiveSync", activesync, methods=["POST", "OPTIONS"]),
        ]
    )


class _Probe:
    """Writes its name into the request's trace, then calls the next app."""

    def __init__(self, name: str, app: ASGIApp) -> None:
        self.name = name
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        trace = scope.get(_TRACE)
        if trace is not None:
            trace.append(self.name)
        await self.app(scope, receive, send)


# ------------------------------------------------------------------- the script
@dataclass(slots=True)
class _Hit:
    t: float  # seconds after 08:00
    seq: int
    actor: str
    user: str  # the honest user behind it, "" for attackers and devices
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    client: str


class _Script:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.hits: list[_Hit] = []

    def add(
        self,
        t: float,
        actor: str,
        client: str,
        path: str,
        *,
        user: str = "",
        method: str = "GET",
        query: str = "",
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> None:
        if not 0.0 <= t < _SECONDS:
            return
        head = [(b"host", b"mail.example.org"), (b"user-agent", b"demo")]
        if headers:
            head.extend(headers)
        if body:
            head.append((b"content-length", str(len(body)).encode()))
        self.hits.append(
            _Hit(t, len(self.hits), actor, user, method, path, query.encode(), head, body, client)
        )

    def page(self, t: float, actor: str, client: str, path: str, user: str) -> None:
        self.add(
            t, actor, client, path, user=user, headers=[(b"cookie", f"session={user}".encode())]
        )

    def login(
        self, t: float, actor: str, client: str, account: str, password: str, user: str = ""
    ) -> None:
        body = urlencode({"username": account, "password": password}).encode()
        form = (b"content-type", b"application/x-www-form-urlencoded")
        self.add(t, actor, client, "/login", user=user, method="POST", headers=[form], body=body)

    def sync(
        self, t: float, actor: str, client: str, owner: str, device: str, cmd: str, user: str = ""
    ) -> None:
        token = base64.b64encode(f"{owner}:{USERS[owner]}".encode()).decode()
        query = urlencode({"Cmd": cmd, "User": owner, "DeviceId": device, "DeviceType": "Phone"})
        self.add(
            t,
            actor,
            client,
            "/Microsoft-Server-ActiveSync",
            user=user,
            method="POST",
            query=query,
            headers=[(b"authorization", f"Basic {token}".encode())],
        )


def _office(s: _Script) -> None:
    rng = s.rng
    for i, name in enumerate(OFFICE):
        t = rng.uniform(0, 3300)
        leave = rng.uniform(3.2 * 3600, _SECONDS)
        s.add(t, "office", OFFICE_NAT, "/", user=name)
        t += rng.uniform(4, 12)
        if i == 7:  # one person mistypes once: harmless
            s.login(t, "office", OFFICE_NAT, name, "hugo-secert", user=name)
            t += rng.uniform(5, 10)
        s.login(t, "office", OFFICE_NAT, name, USERS[name], user=name)
        t += 0.3
        while t < leave:
            s.page(t, "office", OFFICE_NAT, "/inbox", name)
            for _ in range(rng.randint(0, 3)):
                t += rng.uniform(0.05, 0.4)
                s.page(t, "office", OFFICE_NAT, f"/message/{rng.randint(1, 500)}", name)
            t += 20 + rng.expovariate(1 / 150)
        if i % 3 == 1:  # ten phones on the office Wi-Fi
            device = f"Phone{i:02d}X{rng.randint(1000, 9999)}"
            t = rng.uniform(0, 300)
            while t < _SECONDS:
                s.sync(t, "office", OFFICE_NAT, name, device, "Ping", user=name)
                if rng.random() < 0.5:
                    s.sync(
                        t + rng.uniform(0.2, 1.0), "office", OFFICE_NAT, name, device, "Sync", name
                    )
                t += rng.uniform(120, 300)


def _erin(s: _Script) -> None:
    t = 9000.0  # 10:30
    s.add(t, "erin", HOME, "/", user="erin")
    s.login(t + 10, "erin", HOME, "erin", "erin-secert", user="erin")
    s.login(t + 25, "erin", HOME, "erin", "Erin-secret", user="erin")
    s.login(t + 45, "erin", HOME, "erin", USERS["erin"], user="erin")
    t += 46
    while t < 12600:  # reads mail until 11:30
        s.page(t, "erin", HOME, "/inbox", "erin")
        s.page(
            t + s.rng.uniform(0.1, 0.5), "erin", HOME, f"/message/{s.rng.randint(1, 99)}", "erin"
        )
        t += s.rng.uniform(120, 300)


def _flooder(s: _Script) -> None:
    start, rate, seconds = 3600.0, 200, 30  # 09:00:00 - 09:00:30
    for n in range(rate * seconds):
        s.add(start + n / rate, "flooder", FLOODER, "/")


def _guesser(s: _Script) -> None:
    t = 1200.0  # 08:20
    s.add(t - 5, "guesser", GUESSER, "/")
    while t < 8400:  # 10:20
        guess = f"{s.rng.choice(('winter', 'admin', 'qwerty', 'letmein'))}{s.rng.randint(0, 99)}"
        s.login(t, "guesser", GUESSER, "admin", guess)
        t += 6 + s.rng.uniform(0, 0.5)


def _dans_phone(s: _Script) -> None:
    device = "DanPhone7Q2"
    t = s.rng.uniform(0, 120)
    while t < 5400:  # normal until 09:30
        s.sync(t, "phone", OFFICE_NAT, "dan", device, "Ping")
        t += s.rng.uniform(120, 300)
    t = 5400.0
    while t < 6600:  # stuck: two syncs a second until 09:50
        s.sync(t, "phone", OFFICE_NAT, "dan", device, "Sync")
        t += 0.5
    while t < _SECONDS:  # fixed (or restarted): normal again
        t += s.rng.uniform(120, 300)
        s.sync(t, "phone", OFFICE_NAT, "dan", device, "Ping")


def _v6_address(rng: random.Random) -> str:
    return f"{V6_NET}:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}"  # noqa: E501


def _ipv6_attacker(s: _Script) -> None:
    rng = s.rng
    t = 9900.0  # 10:45 - 11:05: spraying, one guess every 3 s
    while t < 11100:
        account = rng.choice(OFFICE)
        s.login(t, "ipv6", _v6_address(rng), account, f"{account}{rng.randint(1, 999)}")
        t += 3
    start, rate = 11400.0, 100  # 11:10:00 - 11:10:20: flooding
    for n in range(rate * 20):
        s.add(start + n / rate, "ipv6", _v6_address(rng), "/")


@dataclass(frozen=True)
class _Cast:
    name: str
    label: str
    client: str
    honest: bool
    story: str


CAST = (
    _Cast("office", "office, 30 people", OFFICE_NAT, True,
          "30 people behind one NAT address read mail; 10 phones sync; one mistypes once"),
    _Cast("erin", "Erin, mistypes twice", HOME, True,
          "mistypes her password twice at 10:30, then logs in and reads mail"),
    _Cast("flooder", "flooder", FLOODER, False,
          "200 requests/s for 30 s from 09:00"),
    _Cast("guesser", "guesser", GUESSER, False,
          "guesses the admin password every 6 s, 08:20 to 10:20"),
    _Cast("phone", "Dan's phone", OFFICE_NAT, False,
          "ActiveSync on the office Wi-Fi; stuck in a sync loop (2/s) 09:30 to 09:50"),
    _Cast("ipv6", "IPv6 rotator", f"{V6_NET}::/64", False,
          "sprays passwords 10:45 to 11:05, floods 100/s at 11:10, new address each time"),
)  # fmt: skip


def script(seed: int = DEFAULT_SEED) -> list[_Hit]:
    """Every request of the morning, in time order."""
    s = _Script(seed)
    for part in (_office, _erin, _flooder, _guesser, _dans_phone, _ipv6_attacker):
        part(s)
    s.hits.sort(key=lambda h: (h.t, h.seq))
    return s.hits


# --------------------------------------------------------------------- tallies
@dataclass
class _Actor:
    cast: _Cast
    requests: int = 0
    served: int = 0
    app_refused: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    blocks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FILTERS, 0))
    let_back: int = 0
    addresses: set[str] = field(default_factory=set)
    blocked_until: float = -1.0  # end of its latest block or jail, in demo seconds
    last_block_end: float = -1.0
    served_after_block: int = 0

    @property
    def back_text(self) -> str:
        if self.blocks["device"]:
            return "released from jail, served again"
        return "let back in after its block ended"

    def facts(self) -> dict[str, Any]:
        return {
            "name": self.cast.name,
            "label": self.cast.label,
            "client": self.cast.client,
            "honest": self.cast.honest,
            "story": self.cast.story,
            "requests": self.requests,
            "served": self.served,
            "app_refused": self.app_refused,
            "refused": dict(self.refused),
            "blocks": {"login": self.blocks["login"], "device": self.blocks["device"]},
            "dos_episodes": self.blocks["dos"],
            "let_back_in": self.let_back,
            "addresses": len(self.addresses),
        }


@dataclass
class _User:
    requests: int = 0
    refused: int = 0
    logged_in: int = 0
    pages: int = 0

    @property
    def through(self) -> bool:
        return self.refused == 0 and self.logged_in > 0 and self.pages > 0


@dataclass
class _Filter:
    requests: int = 0
    passed: int = 0
    refused: int = 0
    blocks: int = 0  # login: blocks; device: jails; dos: refusal episodes
    clients: set[str] = field(default_factory=set)  # clients (devices) it blocked or refused


@dataclass
class Report:
    """What happened: the facts behind the tables and the exit status."""

    seed: int
    wall_seconds: float = 0.0
    requests: int = 0
    filters: dict[str, _Filter] = field(default_factory=lambda: {f: _Filter() for f in FILTERS})
    actors: dict[str, _Actor] = field(default_factory=dict)
    users: dict[str, _User] = field(default_factory=dict)
    malformed_refusals: int = 0  # a mailguard refusal without 503 + Retry-After
    clients: dict[str, set[str]] = field(default_factory=dict)  # actor -> client keys seen
    checks: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok in self.checks)

    @property
    def honest_through(self) -> tuple[int, int, int]:
        """(users who got through, users, refusals of honest users' requests)."""
        through = sum(1 for u in self.users.values() if u.through)
        return through, len(self.users), sum(u.refused for u in self.users.values())

    def honest_line(self) -> str:
        through, users, refused = self.honest_through
        return f"Honest users: {through} of {users} got through ({refused} refused)"

    def facts(self) -> dict[str, Any]:
        through, users, refused = self.honest_through
        return {
            "ok": self.ok,
            "seed": self.seed,
            "simulated": {"from": "08:00", "to": f"{8 + _HOURS:02d}:00", "seconds": _SECONDS},
            "wall_seconds": round(self.wall_seconds, 3),
            "requests": self.requests,
            "limits": LIMITS,
            "filters": {
                name: {
                    "filter": _TITLES[name],
                    "requests": f.requests,
                    "passed": f.passed,
                    "refused": f.refused,
                    _BLOCK_WORD[name]: f.blocks,
                    "clients": len(f.clients),
                }
                for name, f in self.filters.items()
            },
            "actors": [a.facts() for a in self.actors.values()],
            "honest": {"users": users, "got_through": through, "refused": refused},
            "checks": [{"check": text, "ok": ok} for text, ok in self.checks],
        }


def _duration(seconds: object) -> str:
    if not isinstance(seconds, (int, float)):
        return "a while"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds) // 60} min"
    return f"{seconds:g} s"


def clock_text(t: float) -> str:
    """Seconds after 08:00 as ``HH:MM:SS``."""
    whole = int(t)
    return f"{8 + whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


# --------------------------------------------------------------------- the run
Narrate = Callable[[float, str, str], None]  # (demo seconds, filter or "", text)


class _Run:
    def __init__(self, seed: int, narrate: Narrate | None) -> None:
        self.report = Report(seed, actors={c.name: _Actor(c) for c in CAST})
        self.narrate = narrate
        self.clock = FakeClock(start=_EPOCH)
        self.store = MemoryStore(clock=self.clock)
        self.current: _Actor = self.report.actors["office"]
        self.told: set[tuple[str, str]] = set()
        app: ASGIApp = _Probe("app", build_webmail())
        for name in reversed(FILTERS):  # the innermost first
            middleware = FILTER_CLASSES[name]
            wrapped = middleware(app, store=self.store, on_event=self.on_event, **LIMITS[name])
            app = _Probe(name, wrapped)
        self.app = app

    def now(self) -> float:
        return self.clock() - _EPOCH

    def tell(self, actor: _Actor, what: str, filter_name: str, text: str) -> None:
        if self.narrate is not None and (actor.cast.name, what) not in self.told:
            self.told.add((actor.cast.name, what))
            self.narrate(self.now(), filter_name, f"{actor.cast.label}: {text}")

    def on_event(self, event: Event) -> None:
        actor = self.current  # requests run one at a time: the event is this actor's
        self.report.clients.setdefault(actor.cast.name, set()).add(event.client)
        if event.action != _BLOCK_ACTION.get(event.filter):
            return
        actor.blocks[event.filter] += 1
        self.report.filters[event.filter].blocks += 1
        who = event.get("device") if event.filter == "device" else event.client
        self.report.filters[event.filter].clients.add(str(who))
        seconds = event.get("seconds")
        if event.filter == "dos":
            self.tell(actor, "dos", "dos", f"over {event.get('limit')}, refused ({event.client})")
            return
        if isinstance(seconds, (int, float)):
            actor.blocked_until = self.now() + float(seconds)
        if event.filter == "login":
            self.tell(
                actor,
                "blocked",
                "login",
                f"blocked after {event.get('failures')} failed logins, for"
                f" {_duration(seconds)} ({event.client})",
            )
        else:
            self.tell(
                actor,
                "jailed",
                "device",
                f"device {event.get('device')} jailed for {_duration(seconds)} after"
                f" {event.get('count')} requests in {LIMITS['device']['time_window']} s",
            )

    async def call(self, hit: _Hit) -> None:
        actor = self.report.actors[hit.actor]
        self.current = actor
        trace: list[str] = []
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": hit.method,
            "scheme": "https",
            "path": hit.path,
            "raw_path": hit.path.encode(),
            "query_string": hit.query,
            "root_path": "",
            "headers": hit.headers,
            "client": (hit.client, 50000 + hit.seq % 10000),
            "server": ("mail.example.org", 443),
            _TRACE: trace,
        }
        body_sent = False
        status = 0
        retry = False

        async def receive() -> Message:
            nonlocal body_sent
            if body_sent:
                return {"type": "http.disconnect"}
            body_sent = True
            return {"type": "http.request", "body": hit.body, "more_body": False}

        async def send(message: Message) -> None:
            nonlocal status, retry
            if message["type"] == "http.response.start":
                status = message["status"]
                retry = any(k.lower() == b"retry-after" for k, _ in message.get("headers", ()))

        await self.app(scope, receive, send)
        self.tally(hit, actor, trace, status, retry)

    def tally(self, hit: _Hit, actor: _Actor, trace: list[str], status: int, retry: bool) -> None:
        report = self.report
        report.requests += 1
        actor.requests += 1
        actor.addresses.add(hit.client)
        for name in FILTERS:
            if name in trace:
                report.filters[name].requests += 1
        refused_by = trace[-1] if trace and trace[-1] != "app" else None
        for name in FILTERS:
            if name in trace and name != refused_by:
                report.filters[name].passed += 1
        user = report.users.setdefault(hit.user, _User()) if hit.user else None
        if user is not None:
            user.requests += 1
        if refused_by is not None:
            report.filters[refused_by].refused += 1
            actor.refused[refused_by] += 1
            if status != 503 or not retry:
                report.malformed_refusals += 1
            if user is not None:
                user.refused += 1
            return
        if actor.blocked_until >= 0.0 and self.now() >= actor.blocked_until:
            actor.let_back += 1  # it reached the app again once its block or jail ended
            actor.last_block_end = actor.blocked_until
            actor.blocked_until = -1.0
            self.tell(actor, "back", "", actor.back_text)
        if status >= 400:
            actor.app_refused += 1
            return
        actor.served += 1
        if actor.last_block_end >= 0.0:
            actor.served_after_block += 1
        if user is not None:
            if hit.path == "/login" and status == 302:
                user.logged_in += 1
            elif status == 200:
                user.pages += 1

    async def replay(self, hits: list[_Hit], progress: Callable[[float, int], None]) -> None:
        clock = self.clock
        tick = 0.0
        for n, hit in enumerate(hits):
            if hit.t >= tick:  # once a simulated minute
                progress(tick, n)
                tick = hit.t - hit.t % 60.0 + 60.0
            clock.set(_EPOCH + hit.t)
            await self.call(hit)
        clock.set(_EPOCH + _SECONDS)
        progress(float(_SECONDS), len(hits))


def _checks(report: Report) -> list[tuple[str, bool]]:
    a = report.actors
    office, erin, flooder, guesser, phone, v6 = (
        a["office"], a["erin"], a["flooder"], a["guesser"], a["phone"], a["ipv6"],
    )  # fmt: skip
    dos_limit = LIMITS["dos"]["max_requests_per_sec"]
    logins = LIMITS["login"]["max_failed_logins"]
    through, users, refused = report.honest_through
    v6_clients = report.clients.get("ipv6", set())
    return [
        (f"all {users} honest users got through, none refused", through == users and refused == 0),
        (
            f"the office NAT ({OFFICE_NAT}) was never refused; only Dan's phone was jailed",
            sum(office.refused.values()) == 0
            and sum(phone.refused[f] for f in ("dos", "login")) == 0,
        ),
        ("Erin's two typos did not block her", sum(erin.refused.values()) == 0 and erin.served > 0),
        (
            f"the flooder was held to {dos_limit} requests/s by DosFilter"
            f" ({flooder.refused['dos']:,} refused)",
            flooder.refused["dos"] > 0 and flooder.served <= dos_limit * 31,
        ),
        (
            f"the guesser was blocked {guesser.blocks['login']} times and let back in"
            f" {guesser.let_back} times; {guesser.app_refused} of {guesser.requests - 1:,}"
            " guesses reached the app",
            guesser.blocks["login"] >= 2
            and guesser.let_back >= 1
            and guesser.app_refused <= logins * (guesser.blocks["login"] + 1),
        ),
        (
            f"Dan's phone was jailed {phone.blocks['device']} times and released"
            f" {phone.let_back} times; it synced normally again after its loop",
            phone.blocks["device"] >= 1 and phone.served_after_block > 0,
        ),
        (
            f"the IPv6 rotator's {len(v6.addresses):,} addresses counted as one client"
            f" ({', '.join(sorted(v6_clients)) or 'none'})",
            len(v6.addresses) > 100 and len(v6_clients) == 1,
        ),
        (
            "the IPv6 rotator was blocked by InvalidLoginFilter and refused by DosFilter",
            v6.blocks["login"] >= 1 and v6.refused["dos"] > 0 and v6.refused["login"] > 0,
        ),
        (
            "every refusal was a 503 with Retry-After, and never reached the app",
            report.malformed_refusals == 0,
        ),
    ]


def run(
    seed: int = DEFAULT_SEED,
    narrate: Narrate | None = None,
    progress: Callable[[float, int], None] | None = None,
) -> Report:
    """Replay the morning and return the report (with its checks)."""
    started = time.perf_counter()
    hits = script(seed)
    demo = _Run(seed, narrate)
    asyncio.run(demo.replay(hits, progress or (lambda t, n: None)))
    report = demo.report
    report.checks = _checks(report)
    report.wall_seconds = time.perf_counter() - started
    return report


# ------------------------------------------------------------------ rendering
def _rows_filters(report: Report) -> Iterator[list[str]]:
    for name, f in report.filters.items():
        if name == "dos":
            blocks = f"{len(f.clients)} clients refused"
        else:
            blocks = f"{f.blocks} {_BLOCK_WORD[name]} of {len(f.clients)}"
            blocks += " device" if name == "device" else " client"
            blocks += "s" if len(f.clients) != 1 else ""
        yield [_TITLES[name], f"{f.requests:,}", f"{f.passed:,}", f"{f.refused:,}", blocks]


def _rows_actors(report: Report) -> Iterator[list[str]]:
    for actor in report.actors.values():
        refused = ", ".join(f"{n:,} {f}" for f, n in actor.refused.items() if n) or "0"
        blocks = ", ".join(
            f"{actor.blocks[f]} {_BLOCK_WORD[f]}" for f in ("login", "device") if actor.blocks[f]
        )
        yield [
            actor.cast.label,
            actor.cast.client,
            f"{actor.requests:,}",
            f"{actor.served:,}",
            f"{actor.app_refused:,}",
            refused,
            blocks or "-",
        ]


_FILTER_HEAD = ["filter", "requests", "passed", "refused", "blocks"]
_ACTOR_HEAD = ["actor", "client", "requests", "served", "app 4xx", "refused by", "blocks"]


def _plain_table(head: list[str], rows: list[list[str]], left: int, out: TextIO) -> None:
    """``left``: how many leading columns are text; the rest are right-aligned."""
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for row in (head, *rows):
        cells = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.write("  ".join(cells).rstrip() + "\n")


def _summary_head(report: Report) -> str:
    return (
        f"mailguard demo: 08:00-{8 + _HOURS:02d}:00 at a small mail server,"
        f" {report.requests:,} requests replayed in {report.wall_seconds:.1f} s"
        f" (seed {report.seed})"
    )


def _render_plain(report: Report, out: TextIO) -> None:
    out.write("\n" + _summary_head(report) + "\n\n")
    _plain_table(_FILTER_HEAD, list(_rows_filters(report)), 1, out)
    out.write("\n")
    _plain_table(_ACTOR_HEAD, list(_rows_actors(report)), 2, out)
    out.write("\n")
    for text, ok in report.checks:
        out.write(f"  {'ok ' if ok else 'FAIL'} {text}\n")
    out.write("\n" + report.honest_line() + "\n")


def _run_plain(seed: int, out: TextIO) -> Report:
    out.write(
        "mailguard demo: a morning at a small mail server (DosFilter, DeviceJail and"
        " InvalidLoginFilter on one in-memory store)\n"
    )
    next_hour = [3600.0]

    def narrate(t: float, filter_name: str, text: str) -> None:
        out.write(f"  {clock_text(t)}  {filter_name:<6}  {text}\n")

    def progress(t: float, n: int) -> None:
        while t >= next_hour[0]:
            out.write(f"{clock_text(next_hour[0])}  ... {n:,} requests so far\n")
            next_hour[0] += 3600.0

    report = run(seed, narrate, progress)
    _render_plain(report, out)
    return report


def _run_rich(seed: int) -> Report:
    from rich import box
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn
    from rich.table import Table

    console = Console()
    console.print(
        "[bold]mailguard demo[/]: a morning at a small mail server"
        " (DosFilter, DeviceJail and InvalidLoginFilter on one in-memory store)"
    )
    with Progress(
        TextColumn("[cyan]{task.fields[clock]}"),
        BarColumn(),
        TextColumn("{task.fields[requests]} requests"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("morning", total=_SECONDS, clock="08:00:00", requests="0")

        def narrate(t: float, filter_name: str, text: str) -> None:
            style = "green" if not filter_name else "yellow"
            bar.console.print(f"  [dim]{clock_text(t)}[/]  [{style}]{filter_name:<6}[/]  {text}")

        def progress(t: float, n: int) -> None:
            bar.update(task, completed=t, clock=clock_text(t), requests=f"{n:,}")

        report = run(seed, narrate, progress)

    console.print("\n" + _summary_head(report) + "\n", highlight=False)
    # on a terminal the client goes under the actor's name, to fit 80 columns
    actors = [[f"{r[0]}\n[dim]{r[1]}[/]", *r[2:]] for r in _rows_actors(report)]
    for head, rows in (
        (_FILTER_HEAD, list(_rows_filters(report))),
        ([_ACTOR_HEAD[0], *_ACTOR_HEAD[2:]], actors),
    ):
        table = Table(*head, box=box.SIMPLE_HEAD, pad_edge=False, highlight=False)
        for index, column in enumerate(table.columns):
            column.no_wrap = index < len(head) - 2 or head is _FILTER_HEAD
            if index:
                column.justify = "right"
        for row in rows:
            table.add_row(*row)
        console.print(table)
    for text, ok in report.checks:
        console.print(f"  {'[green]ok[/]  ' if ok else '[red]FAIL[/]'} {text}", highlight=False)
    colour = "green" if report.honest_through[0] == report.honest_through[1] else "red"
    console.print(f"\n[bold {colour}]{report.honest_line()}[/]", highlight=False)
    return report


def _has_rich() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 when the story holds, 1 when a check failed."""
    parser = argparse.ArgumentParser(
        prog="mailguard demo",
        description="Replay a scripted morning at a small mail server through all three"
        " filters, in memory, in a few seconds.",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object and no tables")
    parser.add_argument("--plain", action="store_true", help="plain text even on a terminal")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"the script's seed (default {DEFAULT_SEED})"
    )
    args = parser.parse_args(argv)
    # The demo tells its own story from the events (on its fake clock): the
    # log lines mailguard would write to stderr would only repeat it.
    quiet = logging.NullHandler()
    logging.getLogger("mailguard").addHandler(quiet)
    try:
        return _main(args)
    finally:
        logging.getLogger("mailguard").removeHandler(quiet)


def _main(args: argparse.Namespace) -> int:
    if args.json:
        report = run(args.seed)
        sys.stdout.write(json.dumps(report.facts(), indent=2) + "\n")
    elif not args.plain and sys.stdout.isatty() and _has_rich():
        report = _run_rich(args.seed)
    else:
        report = _run_plain(args.seed, sys.stdout)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
