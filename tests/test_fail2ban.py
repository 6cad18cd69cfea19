"""examples/fail2ban: the filters match mailguard's real log lines, and only at the true address.

fail2ban is not installed here, so this emulates what it does with a filter:
read the file with configparser's ``%(name)s`` interpolation, find and cut the
time stamp with ``datepattern``, replace the ``<ADDR>`` / ``<SUBNET>`` tags with
address groups, and search each ``failregex`` in what is left.
"""

from __future__ import annotations

import configparser
import ipaddress
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from werkzeug.test import Client

from mailguard.events import Event
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
    "%d": "[0-9]{2}",
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
        pattern = definition["datepattern"]
        for part, regex in DATE_PARTS.items():
            pattern = pattern.replace(part, regex)
        self.date = re.compile(pattern)

    @staticmethod
    def _compile(regex: str) -> re.Pattern[str]:
        for tag, replacement in TAGS.items():
            regex = regex.replace(tag, replacement)
        assert "<" not in regex.replace("(?P<", ""), f"unknown tag left in {regex!r}"
        return re.compile(regex)

    def address(self, line: str) -> str | None:
        """The address fail2ban would count for ``line``, or None (also: no date)."""
        found = self.date.search(line)
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
    assert login.date.match(line)


@pytest.mark.parametrize(
    "fmt",
    [
        DEFAULT_FORMAT,
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
    naive.date = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8},[0-9]+")
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
