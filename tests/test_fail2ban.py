"""examples/fail2ban: the filters match mailguard's real log lines, and only at the true address.

Two ways: an emulation of what fail2ban does with a filter (always runs: read
the file with configparser's ``%(name)s`` interpolation, find and cut the
time stamp with the first ``datepattern`` that matches, replace the
``<ADDR>`` / ``<SUBNET>`` tags with address groups, and search each
``failregex`` in what is left), and the real ``fail2ban-regex`` (Debian's
``fail2ban``; scripts/test.sh installs it) on lines written by Python's own
formatters, uvicorn's and gunicorn's, behind syslog prefixes, and captured
from real uvicorn and gunicorn runs (marked ``servers``).
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from processes import private_runtime
from werkzeug.test import Client

from mailguard.events import FALLBACK_FORMAT, Event
from mailguard.wsgi import InvalidLoginFilter

HERE = Path(__file__).resolve().parent.parent / "examples" / "fail2ban"

IPV4 = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}"
IPV6 = r"(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}"
TAGS = {
    "<ADDR>": rf"\[?(?:(?P<ip4>{IPV4})|(?P<ip6>{IPV6}))\]?",
    "<HOST>": rf"\[?(?:(?P<ip4>{IPV4})|(?P<ip6>{IPV6}))\]?",  # usedns = no
    "<SUBNET>": rf"\[?(?:(?P<ip4>{IPV4})|(?P<ip6>{IPV6}))(?:/(?P<cidr>[0-9]+))?\]?",
}
DATE_PARTS = {
    "%Y": "[0-9]{4}",
    "%m": "[0-9]{2}",
    "%d": "(?:[0-9]{2}| [1-9])",
    "%b": "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)",
    "%z": "(?:[+-][0-9]{2}:?[0-9]{2}|Z)",
    "%H": "[0-9]{2}",
    "%M": "[0-9]{2}",
    "%S": "[0-9]{2}",
    "%f": "[0-9]{1,6}",
}
DEFAULT_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class Fail2banFilter:
    """One filter.d file, applied the way fail2ban applies it to a single line."""

    def __init__(self, path: Path) -> None:
        parser = configparser.ConfigParser()
        parser.read(path, encoding="utf-8")
        definition = parser["Definition"]
        self.failregex = [self._compile(r) for r in definition["failregex"].splitlines() if r]
        ignore = definition.get("ignoreregex", "").strip()
        self.ignoreregex = [self._compile(r) for r in ignore.splitlines() if r]
        self.dates = []
        for pattern in definition["datepattern"].splitlines():
            for part, regex in DATE_PARTS.items():
                pattern = pattern.replace(part, regex)
            self.dates.append(re.compile(pattern.strip()))

    @staticmethod
    def _compile(regex: str) -> re.Pattern[str]:
        for tag, replacement in TAGS.items():
            regex = regex.replace(tag, replacement)
        assert not re.search(r"<[A-Z-]+>", regex), f"unknown tag left in {regex!r}"
        return re.compile(regex)

    def address(self, line: str) -> str | None:
        """The address fail2ban would count for ``line``, or None (also: no date)."""
        found = next((m for m in (d.search(line) for d in self.dates) if m), None)
        if found is None:
            return None
        rest = line[: found.start()] + line[found.end() :] + "\n"
        if any(r.search(rest) for r in self.ignoreregex):
            return None
        for regex in self.failregex:
            match = regex.search(rest)
            if match:
                address = match.group("ip4") or match.group("ip6")
                ipaddress.ip_address(address)  # a real address, or the test fails
                cidr = match.groupdict().get("cidr")
                return f"{address}/{cidr}" if cidr else address
        return None


def logged(event: Event, fmt: str = DEFAULT_FORMAT, name: str = "mailguard.login") -> str:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, "%s", (event.line(),), None)
    return logging.Formatter(fmt).format(record)


@pytest.fixture(scope="module")
def login() -> Fail2banFilter:
    return Fail2banFilter(HERE / "filter.d" / "mailguard.conf")


@pytest.fixture(scope="module")
def dos() -> Fail2banFilter:
    return Fail2banFilter(HERE / "filter.d" / "mailguard-dos.conf")


def failure(client: str, account: str = "jdoe", streak: str = "3/10") -> Event:
    return Event(
        "login",
        "failure",
        client,
        (("account", account), ("streak", streak)),
        frozenset({"account"}),
    )


def blocked(client: str, account: str = "jdoe") -> Event:
    fields = (("account", account), ("seconds", 900), ("failures", 10))
    return Event("login", "blocked", client, fields, frozenset({"account"}))


# ------------------------------------------------------------------ matching


def test_date_is_python_loggings_asctime(login: Fail2banFilter) -> None:
    line = logged(failure("203.0.113.7"))
    assert re.match(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8},[0-9]{3} WARNING mailguard login", line)
    assert login.dates[0].match(line)


@pytest.mark.parametrize(
    "fmt",
    [
        DEFAULT_FORMAT,
        FALLBACK_FORMAT,
        "%(asctime)s %(name)s %(levelname)s %(message)s",
        "%(asctime)s %(levelname)s %(name)s: %(message)s",
        "%(asctime)s %(message)s",
    ],
)
def test_login_lines_match_at_the_client(login: Fail2banFilter, fmt: str) -> None:
    assert login.address(logged(failure("203.0.113.7"), fmt)) == "203.0.113.7"
    assert login.address(logged(blocked("198.51.100.23"), fmt)) == "198.51.100.23"


def test_ipv6_clients_are_matched_as_their_network(login: Fail2banFilter) -> None:
    line = logged(blocked("2001:db8:1:2::/64"))
    assert "client=2001:db8:1:2::/64 " in line
    assert login.address(line) == "2001:db8:1:2::/64"
    assert login.address(logged(failure("2001:db8::1"))) == "2001:db8::1"


def test_other_events_do_not_match_the_login_filter(login: Fail2banFilter) -> None:
    events = [
        Event("dos", "refused", "203.0.113.7", (("limit", "30/1s"),)),
        Event("dos", "calm", "203.0.113.7", (("refused", 40),)),
        Event("device", "jailed", "203.0.113.7", (("device", "abc"),)),
        Event("login", "refused", "203.0.113.7", (("seconds", 900),)),
        Event("login", "tarpit", "203.0.113.7", (("account", "jdoe"),), frozenset({"account"})),
        Event(  # count_repeated_password = false: a stale password, not counted
            "login",
            "repeat",
            "203.0.113.7",
            (("account", "jdoe"), ("protocol", "imap")),
            frozenset({"account"}),
        ),
    ]
    for event in events:
        assert login.address(logged(event)) is None, event.line()


def test_dos_filter_matches_refusal_episodes_only(dos: Fail2banFilter) -> None:
    refused = Event("dos", "refused", "203.0.113.7", (("key", "203.0.113.7"), ("limit", "30/1s")))
    assert dos.address(logged(refused, name="mailguard.dos")) == "203.0.113.7"
    assert dos.address(logged(Event("dos", "calm", "203.0.113.7", (("refused", 3),)))) is None
    assert dos.address(logged(failure("203.0.113.7"))) is None


def test_a_line_without_the_time_stamp_is_ignored(login: Fail2banFilter) -> None:
    assert login.address(failure("203.0.113.7").line()) is None


# ----------------------------------------------------------------- injection


@pytest.mark.parametrize(
    "account",
    [
        'x" client=1.2.3.4',
        'x" client=1.2.3.4 ',
        "x client=1.2.3.4 ",
        "\nmailguard login failure client=1.2.3.4 ",
        '" mailguard login blocked client=1.2.3.4 account="',
        "x\x00\r\n2024-01-01 00:00:00,000 WARNING mailguard login failure client=1.2.3.4 a",
    ],
)
def test_an_address_in_the_account_is_never_taken(login: Fail2banFilter, account: str) -> None:
    for event in (failure("203.0.113.7", account), blocked("203.0.113.7", account)):
        line = logged(event)
        assert "\n" not in line and "\r" not in line
        assert login.address(line) == "203.0.113.7"
    # an event the filter ignores stays ignored, whatever its account says
    tarpit = Event(
        "login", "tarpit", "203.0.113.7", (("account", account),), frozenset({"account"})
    )
    assert login.address(logged(tarpit)) is None
    jailed = Event(
        "device", "jailed", "203.0.113.7", (("account", account),), frozenset({"account"})
    )
    assert login.address(logged(jailed)) is None


def test_unanchored_regex_would_have_been_fooled() -> None:
    """The emulation is sharp enough to catch the mistake the anchoring prevents."""
    naive = Fail2banFilter.__new__(Fail2banFilter)
    naive.failregex = [Fail2banFilter._compile(r"mailguard login failure client=<ADDR> ")]
    naive.ignoreregex = []
    naive.dates = [re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8},[0-9]+")]
    event = Event(
        "login",
        "tarpit",
        "203.0.113.7",
        (("account", "x mailguard login failure client=1.2.3.4 "),),
        frozenset({"account"}),
    )
    assert naive.address(logged(event)) == "1.2.3.4"


# ------------------------------------------------------------- real filters


def _login_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("401 Unauthorized", [("content-type", "text/plain")])
    return [b"no"]


def test_lines_logged_by_the_real_filter_match(login: Fail2banFilter) -> None:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(logging.Formatter(DEFAULT_FORMAT))
    logger = logging.getLogger("mailguard")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        app = InvalidLoginFilter(_login_app, max_failed_logins=3)
        client = Client(app)
        for _ in range(3):
            client.post(
                "/login",
                data={"username": 'x" client=1.2.3.4'},
                environ_base={"REMOTE_ADDR": "192.0.2.77"},
            )
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    ours = [line for line in lines if " mailguard login " in line]
    assert any(" mailguard login failure " in line for line in ours)
    assert any(" mailguard login blocked " in line for line in ours)
    matched = [login.address(line) for line in ours]
    assert matched.count("192.0.2.77") >= 4  # three failures and the block
    assert "1.2.3.4" not in matched


# ---------------------------------------------------------------------- jail


def test_jail_file_names_the_filters() -> None:
    parser = configparser.ConfigParser()
    parser.read(HERE / "jail.d" / "mailguard.local", encoding="utf-8")
    assert parser.sections() == ["mailguard", "mailguard-dos"]
    for section in parser.sections():
        jail = parser[section]
        assert (HERE / "filter.d" / f"{jail['filter']}.conf").is_file()
        assert int(jail["maxretry"]) > 0
        assert jail["logpath"].startswith("/")
        assert jail["usedns"] == "no"
    assert parser["mailguard"]["enabled"] == "true"
    assert parser["mailguard-dos"]["enabled"] == "false"


# ------------------------------------------------- the real fail2ban-regex

FAIL2BAN_REGEX = shutil.which("fail2ban-regex")
needs_fail2ban = pytest.mark.skipif(
    FAIL2BAN_REGEX is None, reason="fail2ban-regex missing (apt-get install fail2ban)"
)
SMUGGLER = "x client=1.2.3.4"  # an account name that tries to put an address in the line
SYSLOG = "Nov 30 17:00:00 mail uvicorn[4242]: "


def fail2ban_regex(log: Path, conf: str) -> list[str]:
    """The addresses the real fail2ban-regex finds in ``log`` with filter ``conf``."""
    assert FAIL2BAN_REGEX is not None
    done = subprocess.run(
        [FAIL2BAN_REGEX, "-o", "ip", str(log), str(HERE / "filter.d" / conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.split()


def matched(log: Path, conf: str) -> list[str]:
    """The real tool's answer, or the emulation's where fail2ban is not installed."""
    if FAIL2BAN_REGEX is not None:
        return fail2ban_regex(log, conf)
    emulated = Fail2banFilter(HERE / "filter.d" / conf)
    lines = log.read_text(encoding="utf-8").splitlines()
    return [a for a in map(emulated.address, lines) if a is not None]


def _formatters() -> dict[str, logging.Formatter]:
    """The formats mailguard's lines appear in, from the real formatters."""
    made = {
        "fallback": logging.Formatter(FALLBACK_FORMAT),  # mailguard's own stderr handler
        "basicConfig": logging.Formatter(logging.BASIC_FORMAT),
        "asctime-level": logging.Formatter(DEFAULT_FORMAT),
        "plain": logging.Formatter("%(message)s"),
    }
    uvicorn_logging = pytest.importorskip("uvicorn.logging")
    made["uvicorn"] = uvicorn_logging.DefaultFormatter("%(levelprefix)s %(message)s", None, "%")
    made["uvicorn"].use_colors = False
    try:
        from gunicorn.glogging import Logger as GunicornLogger
    except ImportError:
        pass
    else:
        made["gunicorn"] = logging.Formatter(GunicornLogger.error_fmt, GunicornLogger.datefmt)
    return made


@needs_fail2ban
def test_real_fail2ban_regex_reads_every_format(tmp_path: Path) -> None:
    """Each format, as written and behind a syslog/journald prefix, gives the true address."""
    events = [
        ("mailguard.login", failure("192.0.2.77", SMUGGLER), "mailguard.conf"),
        ("mailguard.login", blocked("192.0.2.77", 'x" client=1.2.3.4'), "mailguard.conf"),
        ("mailguard.login", blocked("2001:db8:1:2::/64", SMUGGLER), "mailguard.conf"),
        (
            "mailguard.dos",
            Event("dos", "refused", "198.51.100.9", (("key", "198.51.100.9"),)),
            "mailguard-dos.conf",
        ),
    ]
    lines: dict[str, list[str]] = {"mailguard.conf": [], "mailguard-dos.conf": []}
    expected: dict[str, list[str]] = {"mailguard.conf": [], "mailguard-dos.conf": []}
    for name, formatter in _formatters().items():
        for logger_name, event, conf in events:
            record = logging.LogRecord(
                logger_name, logging.WARNING, __file__, 1, "%s", (event.line(),), None
            )
            line = formatter.format(record)
            timed = name not in ("basicConfig", "plain", "uvicorn")  # no time stamp of their own
            for prefixed in ([line] if timed else []) + [SYSLOG + line]:
                lines[conf].append(prefixed)
                expected[conf].append(event.client)
    # lines that must never match
    lines["mailguard.conf"] += [
        logged(
            Event(
                "login", "tarpit", "203.0.113.7", (("account", SMUGGLER),), frozenset({"account"})
            )
        ),
        "2026-11-30 17:00:00,000 WARNING myapp: no mailguard login failure client=1.2.3.4 x",
        SYSLOG + 'INFO:     1.2.3.4:0 - "GET /mailguard login failure client=1.2.3.4 HTTP/1.1" 401',
    ]
    for conf, text in lines.items():
        log = tmp_path / f"{conf}.log"
        log.write_text("\n".join(text) + "\n", encoding="utf-8")
        assert fail2ban_regex(log, conf) == expected[conf], text
        # the emulation agrees with the real thing
        emulated = Fail2banFilter(HERE / "filter.d" / conf)
        assert [a for a in map(emulated.address, text) if a] == expected[conf]


# ------------------------------------------------------------ real servers

DATA = Path(__file__).resolve().parent / "data"
ROOT = Path(__file__).resolve().parent.parent
ATTACKER = "192.0.2.77"
FLOODER = "198.51.100.9"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(port: int, path: str, forwarded: str, data: bytes | None) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers={"X-Forwarded-For": forwarded}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def _serve_and_attack(
    command: list[str], log: Path, workers: int, env: dict[str, str] | None = None
) -> str:
    """Run a real server, fail logins as ATTACKER (with SMUGGLER as account), flood
    as FLOODER, stop it; what it printed (stdout and stderr) is in ``log``."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(DATA)]), **(env or {})}
    env = private_runtime(env, log.parent)  # (gunicorn's control socket: the test's directory)
    with log.open("wb") as out:
        server = subprocess.Popen(
            [arg.replace("PORT", str(port)) for arg in command],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=DATA,
        )
        try:
            deadline = time.monotonic() + 8
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert server.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "server did not start"
                    time.sleep(0.05)
            form = urllib.parse.urlencode({"username": SMUGGLER}).encode()
            # max_failed_logins=3 per process: enough for every worker to block
            statuses = [_post(port, "/login", ATTACKER, form) for _ in range(3 * workers + 1)]
            assert 503 in statuses, statuses
            flood = [_post(port, "/", FLOODER, None) for _ in range(6 * workers + 6)]
            assert 503 in flood, flood
        finally:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=5)
    return log.read_text(encoding="utf-8")


def _check_capture(log: Path, text: str, workers: int = 1) -> None:
    # one startup line per filter (and worker process)
    assert text.count("mailguard login started guards=/login limit=3/300s") == workers, text
    assert text.count("mailguard dos started guards=all-requests limit=5/1s") == workers, text
    assert f"WARNING mailguard.login: mailguard login blocked client={ATTACKER} " in text
    login = matched(log, "mailguard.conf")
    assert login and set(login) == {ATTACKER}, login  # never 1.2.3.4
    dos = matched(log, "mailguard-dos.conf")
    # the attacker's quick logins may be a flood of their own: both, never 1.2.3.4
    assert FLOODER in dos and set(dos) <= {ATTACKER, FLOODER}, dos


@pytest.mark.servers
def test_uvicorn_lines_reach_stderr_and_fail2ban(tmp_path: Path) -> None:
    pytest.importorskip("uvicorn")
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "logapp:asgi", "--port", "PORT"]
    text = _serve_and_attack(command, log, workers=1)
    assert "Uvicorn running on" in text  # the server's own output, in the same capture
    _check_capture(log, text)
    # syslog / journald shape of the same captured lines
    prefixed = tmp_path / "syslog.log"
    prefixed.write_text("".join(SYSLOG + line for line in text.splitlines(True)), "utf-8")
    assert set(matched(prefixed, "mailguard.conf")) == {ATTACKER}
    assert set(matched(prefixed, "mailguard-dos.conf")) == set(matched(log, "mailguard-dos.conf"))


@pytest.mark.servers
def test_gunicorn_lines_reach_stderr_and_fail2ban(tmp_path: Path) -> None:
    pytest.importorskip("gunicorn")
    log = tmp_path / "gunicorn.log"
    command = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:PORT", "logapp:wsgi"]
    text = _serve_and_attack(command, log, workers=2)
    assert "[INFO] Booting worker" in text
    _check_capture(log, text, workers=2)
    # each worker process says it counts on its own
    assert len(set(re.findall(r"login started .* per=process pid=(\d+)", text))) == 2


@pytest.mark.servers
def test_flask_run_lines_reach_stderr(tmp_path: Path) -> None:
    pytest.importorskip("flask")
    log = tmp_path / "flask.log"
    command = [sys.executable, "-m", "flask", "--app", "logapp:flask_app", "run", "--port", "PORT"]
    text = _serve_and_attack(command, log, workers=1)
    assert "Running on http://127.0.0.1:" in text
    _check_capture(log, text)


@pytest.mark.servers
def test_django_runserver_lines_reach_stderr(tmp_path: Path) -> None:
    pytest.importorskip("django")
    log = tmp_path / "django.log"
    command = [sys.executable, "-m", "django", "runserver", "--noreload", "127.0.0.1:PORT"]
    text = _serve_and_attack(command, log, workers=1, env={"DJANGO_SETTINGS_MODULE": "logsite"})
    assert "Starting development server" in text
    _check_capture(log, text)


def test_monitor_mode_lines_are_never_a_ban(tmp_path: Path) -> None:
    """enforce=False logs ``mode=monitor`` last on every line; the filter
    skips those, and an account name cannot end a real line with it."""
    monitor = Event(
        "login",
        "failure",
        "203.0.113.7",
        (("account", "jdoe"), ("streak", "3/10"), ("mode", "monitor")),
        frozenset({"account"}),
    )
    sly = failure("198.51.100.9", account="x mode=monitor")
    log = tmp_path / "monitor.log"
    log.write_text(logged(monitor) + "\n" + logged(sly) + "\n", encoding="utf-8")
    assert matched(log, "mailguard.conf") == ["198.51.100.9"]
