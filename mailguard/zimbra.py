"""Translate a Zimbra / Carbonio configuration dump into a mailguard.toml.

``mailguard import-zimbra FILE`` (``-`` for standard input) reads the output
of any of::

    zmprov gacf                      # Zimbra: global config, "name: value" lines
    zmprov gs mail.example.com       # one server's values (they override global)
    carbonio prov getConfig ...      # Carbonio: the same format
    carbonio config global get ...   # Carbonio mobile anti-DoS ("name value" lines)

or a JSON object of attribute names to values, and prints on standard output
a mailguard.toml with the same protection.  Names are matched without regard
to case, and ``Carbonio...`` spellings are taken for ``zimbra...`` ones.

What is translated (units converted; every line says where it came from):

- ``zimbraHttpDosFilterMaxRequestsPerSec`` -> ``[dos] max_requests_per_sec``
- ``zimbraHttpDosFilterDelayMillis`` (ms) -> ``[dos] delay_ms`` (ms)
- ``zimbraHttpThrottleSafeIPs`` (multi-valued, comma lists too) ->
  ``[common] safe_ips``, plus loopback, which Zimbra always exempts
- ``zimbraInvalidLoginFilterMaxFailedLogin`` (0 = off) ->
  ``[login] max_failed_logins`` (one more, see below)
- ``zimbraInvalidLoginFilterDelayInMinBetwnReqBeforeReinstating`` (minutes) ->
  ``[login] block_duration`` (seconds)
- ``mobileAntiDosServiceEnabled`` -> ``[device] enabled``
- ``mobileAntiDosServiceMaxRequests`` (0 = off) -> ``[device] max_requests``
- ``mobileAntiDosServiceTimeWindow`` (ms) -> ``[device] time_window`` (seconds)
- ``mobileAntiDosServiceJailDuration`` (ms) -> ``[device] jail_duration`` (seconds)
- ``zimbraMailTrustedIP`` -> ``[common] trusted_proxies``, commented out: check
  that those proxies stand in front of this app first

Zimbra suspends an address on the failure *after* ``MaxFailedLogin`` (the
11th with the default 10), while mailguard blocks on the
``max_failed_logins``-th, so the value is raised by one.  Zimbra's DoSFilter
and invalid-login filter are always on, so a dump without their attributes
gets Zimbra's defaults; Carbonio's mobile anti-DoS is off unless
``mobileAntiDosServiceEnabled`` is true.

Related attributes without an equivalent (the reinstating task's interval,
the size of the failed-IP table, IMAP/POP throttling, the proxy's login
limits, and any unknown attribute of those families) are written as
comments saying why.  Unrelated attributes are counted in one closing
comment.  The output passes ``mailguard check-config``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass, field

from .policies.dos import MAX_DELAY_MS

__all__ = ["ImportFailed", "convert", "import_text", "parse_dump"]


class ImportFailed(ValueError):
    """The input is not a dump this module can translate."""


# Zimbra defaults (zimbra-attrs.xml globalConfigValue) and Carbonio's documented ones.
DOS_MAX_DEFAULT = 30
DOS_DELAY_DEFAULT = -1
LOGIN_MAX_DEFAULT = 10
LOGIN_DELAY_MIN_DEFAULT = 15
LOGIN_SWEEP_MIN_DEFAULT = 5
DEVICE_MAX_DEFAULT = 150
DEVICE_WINDOW_MS_DEFAULT = 30_000
DEVICE_JAIL_MS_DEFAULT = 600_000


def normalise(name: str) -> str:
    """The lookup form of an attribute name: lower case, ``carbonio`` read as ``zimbra``."""
    low = name.lower()
    if low.startswith("carbonio"):
        low = "zimbra" + low[len("carbonio") :]
    return low


# Attribute names as Zimbra / Carbonio write them (notes quote them); looked up normalised.
_DOS_MAX = "zimbraHttpDosFilterMaxRequestsPerSec"
_DOS_DELAY = "zimbraHttpDosFilterDelayMillis"
_SAFE_IPS = "zimbraHttpThrottleSafeIPs"
_LOGIN_MAX = "zimbraInvalidLoginFilterMaxFailedLogin"
_LOGIN_DELAY = "zimbraInvalidLoginFilterDelayInMinBetwnReqBeforeReinstating"
_LOGIN_SWEEP = "zimbraInvalidLoginFilterReinstateIpTaskIntervalInMin"
_LOGIN_DB = "zimbraInvalidLoginFilterMaxSizeOfFailedIpDb"
_DEV_ON = "mobileAntiDosServiceEnabled"
_DEV_MAX = "mobileAntiDosServiceMaxRequests"
_DEV_WINDOW = "mobileAntiDosServiceTimeWindow"
_DEV_JAIL = "mobileAntiDosServiceJailDuration"
_TRUSTED = "zimbraMailTrustedIP"

MAPPED = frozenset(
    normalise(name)
    for name in (
        _DOS_MAX,
        _DOS_DELAY,
        _SAFE_IPS,
        _LOGIN_MAX,
        _LOGIN_DELAY,
        _DEV_ON,
        _DEV_MAX,
        _DEV_WINDOW,
        _DEV_JAIL,
        _TRUSTED,
    )
)

# Related attributes with no equivalent, and why.
NO_EQUIVALENT = {
    normalise(_LOGIN_SWEEP): "no equivalent: mailguard lifts a block exactly when it ends, with no "
    "sweeping task (Zimbra's block lasted between the delay and the delay plus this interval)",
    normalise(_LOGIN_DB): "no equivalent: mailguard bounds all counters and blocks together with "
    "[store] max_keys (memory store; default 100000)",
    "zimbrathrottlewhitelist": "no equivalent: it exempts hosts from IMAP/POP/LMTP command "
    "throttling, not HTTP; add addresses to [common] safe_ips if you meant HTTP",
    "zimbrathrottlesafeips": "no equivalent: IMAP/POP/LMTP throttling, not HTTP",
    "zimbrareverseproxyiploginlimit": "no equivalent: the nginx proxy's IMAP/POP login "
    "limit per address; mailguard guards HTTP (see [login] for web logins)",
    "zimbrareverseproxyiploginlimittime": "no equivalent: the period of the proxy's IMAP/POP "
    "login limit",
    "zimbrareverseproxyuserloginlimit": "no equivalent: the proxy's IMAP/POP login limit per "
    "account; mailguard never blocks accounts, only addresses and devices",
    "zimbrareverseproxyuserloginlimittime": "no equivalent: the period of the proxy's per-account "
    "login limit",
}

# Attribute families we speak for: an unknown member still gets a comment.
_FAMILIES = (
    "zimbrahttpdosfilter",
    "zimbrahttpthrottle",
    "zimbrainvalidloginfilter",
    "mobileantidos",
    "zimbrathrottle",
)

KNOWN = MAPPED | frozenset(NO_EQUIVALENT)

_COLON_LINE = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)\s*:\s?(.*)")
_EQUALS_LINE = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)\s*=\s*(.*)")
_SPACE_LINE = re.compile(r"([A-Za-z][A-Za-z0-9_.-]*)\s+(\S+).*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass
class Attribute:
    """One attribute of the dump: its name as written and every value, in order."""

    name: str
    values: list[str] = field(default_factory=list)

    @property
    def value(self) -> str:
        """The value in force: the last one (a later ``zmprov gs`` overrides ``gacf``)."""
        return self.values[-1]


@dataclass
class Dump:
    """A parsed dump: attributes by :func:`normalise`\\ d name, and what was skipped."""

    attributes: dict[str, Attribute] = field(default_factory=dict)
    skipped_lines: int = 0

    def add(self, name: str, value: str) -> None:
        key = normalise(name)
        attribute = self.attributes.get(key)
        if attribute is None:
            attribute = self.attributes[key] = Attribute(name)
        attribute.values.append(value.strip())

    def get(self, key: str) -> Attribute | None:
        """The attribute called ``key``, in any spelling :func:`normalise` accepts."""
        return self.attributes.get(normalise(key))


def parse_dump(text: str) -> Dump:
    """Read ``name: value`` lines (zmprov), ``name = value`` or ``name value`` lines
    (the last only for attributes mailguard knows), or a JSON object.

    Blank lines and ``#`` comments (``# name mail.example.com``) are ignored;
    any other line, such as the continuation of a multi-line value, is
    counted in :attr:`Dump.skipped_lines`.
    """
    dump = Dump()
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise ImportFailed(f"not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ImportFailed("the JSON is not an object of attribute names to values")
        for name, value in data.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, (str, int, float, bool)):
                    text_value = str(item).upper() if isinstance(item, bool) else str(item)
                    dump.add(str(name), text_value)
        return dump
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _COLON_LINE.fullmatch(line) or _EQUALS_LINE.fullmatch(line)
        if match is None:
            spaced = _SPACE_LINE.fullmatch(line)
            if spaced is not None and normalise(spaced.group(1)) in KNOWN:
                match = spaced
        if match is None:
            dump.skipped_lines += 1
            continue
        dump.add(match.group(1), match.group(2))
    return dump


# ------------------------------------------------------------------- output


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _strings(items: Iterable[str]) -> str:
    parts = [_string(item) for item in items]
    flat = "[" + ", ".join(parts) + "]"
    if len(flat) <= 72:
        return flat
    return "[\n" + "".join(f"    {part},\n" for part in parts) + "]"


def _note(text: str) -> str:
    """Text safe inside a TOML comment: one line, no control characters, bounded."""
    text = _CONTROL.sub("?", text)
    return text if len(text) <= 200 else text[:200] + "..."


def _seen(attribute: Attribute) -> str:
    return _note(f"{attribute.name}: {attribute.value}")


def _whole(attribute: Attribute) -> int | None:
    text = attribute.value.strip()
    if re.fullmatch(r"[+-]?[0-9]{1,12}", text):
        return int(text)
    return None


def _bool(attribute: Attribute) -> bool | None:
    text = attribute.value.strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    return None


def _seconds_from_ms(ms: int) -> str:
    return str(ms // 1000) if ms % 1000 == 0 else repr(ms / 1000)


def _networks(values: Iterable[str]) -> tuple[list[str], list[str]]:
    """Addresses / networks in mailguard's form, and notes on what changed or was dropped."""
    kept: list[str] = []
    notes: list[str] = []
    for value in values:
        for entry in re.split(r"[\s,]+", value):
            if not entry:
                continue
            try:
                if "/" in entry:
                    network = ipaddress.ip_network(entry, strict=False)
                    text = str(network)
                    if text != entry:
                        notes.append(f"{entry!r} written as the network {text!r}")
                else:
                    text = str(ipaddress.ip_address(entry))
            except ValueError:
                notes.append(f"{entry!r} left out: not an IP address or network")
                continue
            if text not in kept:
                kept.append(text)
    return kept, notes


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def comment(self, text: str = "") -> None:
        indent = " " * (len(text) - len(text.lstrip(" ")))
        for line in textwrap.wrap(_note(text), 86, subsequent_indent=indent) or [""]:
            self.lines.append(f"# {line}".rstrip())

    def table(self, name: str, about: str) -> None:
        if self.lines:
            self.lines.append("")
        self.lines.append(f"[{name}]")
        self.comment(about)

    def key(self, name: str, value: str, note: str = "") -> None:
        self.lines.append(f"{name} = {value}" + (f"  # {_note(note)}" if note else ""))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _read_whole(
    dump: Dump,
    name: str,
    default: int,
    *,
    low: int,
    out: _Writer,
    vendor: str = "Zimbra's default",
    missing: str | None = None,
    fallback: str | None = None,
    ms: bool = False,
) -> tuple[int, str]:
    """The whole number ``name`` holds if it is ``>= low``, else ``default``; and its note.

    The note is the attribute as seen, or without it ``"NAME not in the dump: "`` and
    ``missing`` (by default ``vendor`` and ``default``).  A value that is not a whole
    number ``>= low`` gets a comment saying ``vendor`` is used, and the note ``fallback``
    (by default ``missing``, marked as replacing an unusable value).  ``ms``: the value
    is in milliseconds.
    """
    if missing is None:
        missing = f"{vendor} {default}"
    absent = f"{name} not in the dump: {missing}"
    attribute = dump.get(name)
    if attribute is None:
        return default, absent
    value = _whole(attribute)
    if value is not None and value >= low:
        return value, _seen(attribute) + (" (ms)" if ms else "")
    what = "a whole number of ms" if ms else "a whole number"
    out.comment(f"{_seen(attribute)} is not {what} >= {low}; {vendor} used")
    return default, f"{missing} (the dump's value is unusable)" if fallback is None else fallback


def convert(dump: Dump, source: str = "-") -> str:
    """The mailguard.toml equivalent of ``dump``, as text."""
    attrs = dump.attributes
    related = [k for k in attrs if k in KNOWN or k.startswith(_FAMILIES)]
    if not related:
        raise ImportFailed(
            "no Zimbra/Carbonio HTTP DoS, invalid-login or mobile anti-DoS attribute found"
            " (expected e.g. zimbraHttpDosFilterMaxRequestsPerSec: 30)"
        )
    out = _Writer()
    out.comment(f"mailguard.toml translated by `mailguard import-zimbra` from {source}")
    out.comment("Check it with `mailguard check-config FILE`. Durations are in seconds.")
    out.comment("Options are read when the app starts; blocks can be listed and lifted live.")

    out.table("store", "Where counters and blocks live, shared by every filter.")
    out.key("type", '"memory"', "one process; several processes need Redis:")
    out.comment('type = "redis"')
    out.comment('url = "redis://127.0.0.1:6379/0"')

    _common(dump, out)
    _dos(dump, out)
    _login(dump, out)
    _device(dump, out)
    _leftovers(dump, out)
    return out.text()


def _common(dump: Dump, out: _Writer) -> None:
    out.table("common", "Applied to every filter unless the filter sets the key itself.")
    safe = dump.get(_SAFE_IPS)
    values = safe.values if safe is not None else []
    kept, notes = _networks(values)
    ips = ["127.0.0.1", "::1"] + [ip for ip in kept if ip not in ("127.0.0.1", "::1")]
    if safe is not None:
        out.comment(f"{safe.name} ({len(values)} value(s)), plus loopback, which Zimbra")
    else:
        out.comment("zimbraHttpThrottleSafeIPs is not in the dump; loopback, which Zimbra")
    out.comment("always exempts. Zimbra also exempts every mailbox server: add their addresses.")
    for note in notes:
        out.comment(f"zimbraHttpThrottleSafeIPs: {note}")
    out.key("safe_ips", _strings(ips))
    trusted = dump.get(_TRUSTED)
    if trusted is not None:
        proxies, notes = _networks(trusted.values)
        out.comment(f"{trusted.name}: Zimbra believes X-Originating-IP / X-Forwarded-For")
        out.comment("from these. Uncomment only if they sit in front of this app and write")
        out.comment("X-Forwarded-For (see forwarded_header).")
        for note in notes:
            out.comment(f"{trusted.name}: {note}")
        out.comment(f"trusted_proxies = {_strings(proxies)}")


def _dos(dump: Dump, out: _Writer) -> None:
    out.table("dos", "Zimbra's HTTP DoSFilter: requests per second per client.")
    out.comment("Zimbra counts per account, session or TCP connection; mailguard counts per")
    out.comment("client address (IPv6: per /64), so users behind one NAT share a limit.")
    out.key("enabled", "true")
    used = "Zimbra's default"
    limit, note = _read_whole(dump, _DOS_MAX, DOS_MAX_DEFAULT, low=1, out=out, fallback=used)
    out.key("max_requests_per_sec", str(limit), note)

    delay, note = _read_whole(dump, _DOS_DELAY, DOS_DELAY_DEFAULT, low=-1, out=out, fallback=used)
    if delay > MAX_DELAY_MS:
        out.comment(f"{_DOS_DELAY} {delay} ms is longer than mailguard holds a request:")
        out.comment(f"capped at {MAX_DELAY_MS} ms.")
        delay = MAX_DELAY_MS
    if delay == 0:
        out.comment("CAUTION: Zimbra's 0 still throttled over-limit requests (5 at a time, the")
        out.comment("rest refused after 30 s); mailguard's 0 serves them all and only reports")
        out.comment("them. Use -1 to refuse, or a delay in ms to slow them down.")
    elif delay > 0:
        out.comment("Over-limit requests are held this many ms, then served; at most")
        out.comment("max_delayed (50) wait at once, beyond that they are refused.")
    out.key("delay_ms", str(delay), note)
    out.comment("Jetty 9 (Zimbra 8.8 and later) refuses with 429, mailguard by default with 503:")
    out.comment("status_code = 429")


def _login(dump: Dump, out: _Writer) -> None:
    out.table("login", "Zimbra's invalid-login filter: block an address after failed logins.")
    used = f"Zimbra's default {LOGIN_MAX_DEFAULT}"
    limit, note = _read_whole(dump, _LOGIN_MAX, LOGIN_MAX_DEFAULT, low=0, out=out, fallback=used)
    if limit == 0:
        out.comment(f"{note}: 0 turns Zimbra's filter off.")
        out.key("enabled", "false")
    else:
        out.key("enabled", "true")
        out.comment(f"{note}. Zimbra suspends on the failure after that many,")
        out.comment("mailguard blocks on the max_failed_logins-th: one more.")
        out.key("max_failed_logins", str(limit + 1))

    minutes, note = _read_whole(
        dump,
        _LOGIN_DELAY,
        LOGIN_DELAY_MIN_DEFAULT,
        low=1,
        out=out,
        missing=str(LOGIN_DELAY_MIN_DEFAULT),
    )
    out.key("block_duration", str(minutes * 60), f"{note} (minutes)")
    out.comment("Zimbra never forgets a failure until it suspends; mailguard counts failures")
    out.comment("each within failure_interval of the previous one. Raise it to come closer:")
    out.comment('failure_interval = "1h"')


def _device(dump: Dump, out: _Writer) -> None:
    out.table(
        "device", "Carbonio's mobile anti-DoS: jail an ActiveSync device that sends too much."
    )
    attribute = dump.get(_DEV_ON)
    enabled = False
    if attribute is None:
        out.comment("mobileAntiDosServiceEnabled not in the dump: Carbonio's default, off.")
    else:
        flag = _bool(attribute)
        if flag is None:
            out.comment(f"{_seen(attribute)} is not true or false; left off.")
        else:
            enabled = flag
            out.comment(_seen(attribute))
    maximum, max_note = _read_whole(
        dump, _DEV_MAX, DEVICE_MAX_DEFAULT, low=0, out=out, vendor="Carbonio's default"
    )
    if maximum == 0:
        out.comment(f"{max_note}: 0 turns Carbonio's service off.")
        enabled = False
        maximum = DEVICE_MAX_DEFAULT
    out.key("enabled", "true" if enabled else "false")
    out.key("max_requests", str(maximum), max_note)
    for key, name, default in (
        ("time_window", _DEV_WINDOW, DEVICE_WINDOW_MS_DEFAULT),
        ("jail_duration", _DEV_JAIL, DEVICE_JAIL_MS_DEFAULT),
    ):
        ms, note = _read_whole(
            dump,
            name,
            default,
            low=1,
            out=out,
            vendor="default",
            ms=True,
            missing=f"Carbonio's default {default} ms",
        )
        out.key(key, _seconds_from_ms(ms), note)
    out.comment("Carbonio clears its jails only all at once, by restarting the service;")
    out.comment("`mailguard unblock DEVICE --kind device` lifts one.")


def _leftovers(dump: Dump, out: _Writer) -> None:
    unknown_related = []
    unrelated = 0
    for key, attribute in dump.attributes.items():
        if key in MAPPED:
            continue
        if key in NO_EQUIVALENT:
            unknown_related.append((attribute, NO_EQUIVALENT[key]))
        elif key.startswith(_FAMILIES):
            unknown_related.append((attribute, "not known to mailguard: no equivalent"))
        else:
            unrelated += 1
    if unknown_related:
        out.lines.append("")
        out.comment("Attributes of the dump with no mailguard equivalent:")
        for attribute, why in unknown_related:
            out.comment(f"{_seen(attribute)}")
            out.comment(f"  {why}")
    if unrelated or dump.skipped_lines:
        out.lines.append("")
        if unrelated:
            out.comment(f"{unrelated} other attribute(s) of the dump concern other services and")
            out.comment("were left out.")
        if dump.skipped_lines:
            out.comment(f"{dump.skipped_lines} line(s) were not attribute lines and were skipped.")


def import_text(text: str, source: str = "-") -> str:
    """Parse a dump and return the mailguard.toml text (raises :class:`ImportFailed`)."""
    return convert(parse_dump(text), source)
