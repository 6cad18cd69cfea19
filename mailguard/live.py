"""Live configuration: change limits and safe lists without a restart.

The file (and its ``MAILGUARD_*`` environment overrides, exactly as
:func:`mailguard.config.load` reads them) is the *baseline*.  Over it lies an
*overlay*, a small versioned document kept in the store
(:mod:`mailguard.stores.overlay`): ``{"dos.max_requests_per_sec": 150,
"common.safe_ips": [...]}``.  Every process on that store merges the two and
runs what the merge says::

    mailguard config set dos.max_requests_per_sec 150 --redis redis://10.0.0.5/0
    mailguard config add common.safe_ips 192.168.100.0/24 --config /etc/mailguard.toml
    mailguard config get dos.max_requests_per_sec --config /etc/mailguard.toml

Checking
    A merge is checked by the very code that checks the file
    (:meth:`mailguard.config.Config.with_values`), the overlay named as the
    origin of its keys: ``overlay v7: dos.max_requests_per_sec: must be a
    whole number >= 1, got 0``.  A change that fails is refused before
    anything is written (the command exits 2, the admin app answers 400).
    A process whose own file makes a written overlay fail (a filter-level
    key of its file overriding a common one, say) keeps the settings it has
    and logs one ERROR line naming the key, once per version.

Applying
    A process builds new policies on the *same* store (blocks, jails and
    counters live there under each filter's namespace, which cannot change)
    and the same client resolver, and swaps each into its running filter in
    one assignment (:meth:`mailguard.asgi.GuardMiddleware.swap`): a request
    sees the old settings or the new, never half.  With Redis, a change is
    announced on the store's channel (a ``config`` message carrying only the
    version: each process reads the document itself, so a forged message
    costs one read and changes nothing); each process also polls the version
    (one ``HGET``) every :data:`POLL` seconds while the channel is down, and
    every :data:`SAFETY_POLL` seconds while it is up.  So a change reaches
    every process within 2 s.

Keys
    Live: every key of ``[common]``, ``[dos]``, ``[login]``, ``[device]`` and
    the failure rule of ``[mailauth]`` (:data:`mailguard.mailauth.LOGIN_KEYS`)
    except those of :func:`fixed_reason`: limits, windows, durations,
    ``safe_ips``, ``exempt_paths``, ``delay_ms``, ``enforce``, login paths
    and fields, ``status_code``...  Report-only is ``dos.delay_ms = 0`` or
    ``login.enforce = false`` / ``device.enforce = false``.  Not live (refused,
    naming the reason): all of ``[store]`` and ``[serve]``; the client
    settings ``trusted_proxies``, ``forwarded_header``, ``ipv6_prefix``,
    ``ipv6_wider`` (one resolver shared by every filter);
    ``on_store_error``; ``X.enabled`` (a filter not built at start cannot
    appear); ``X.namespace`` (the keys of blocks and counters);
    ``[mailauth]``'s door settings (backends, verification).  ``[common]``
    keys apply to every filter that does not set them itself, the file's
    own rule.

Memory store
    One process: changes come through the admin app (``POST /config``,
    :mod:`mailguard.admin`) and, when :meth:`LiveConfig.install_sighup` was
    called (``protect`` does it for a memory store read from a file, in the
    main thread, when nobody else handles SIGHUP), by ``kill -HUP`` re-reading
    the file.  Blocks are kept.  Under gunicorn or ``uvicorn --workers N``,
    SIGHUP sent to the master restarts the workers (losing memory-store
    blocks); send it to each worker instead, or use Redis.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import signal
import socket
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .audit import audit_config, who
from .config import (
    COMMON_KEYS,
    FILTERS,
    TABLES,
    Config,
    ConfigError,
    load,
    load_policies,
    loads,
)
from .events import EventHook
from .mailauth import LOGIN_KEYS, MailLogins, build_logins
from .options import declared
from .policies import POLICIES, Policy
from .stores.base import Store
from .stores.overlay import Overlay, OverlayChange, OverlayConflict
from .stores.overlay import _json_value as _storable

__all__ = [
    "MAX_LIST",
    "MAX_VALUE",
    "OPS",
    "POLL",
    "SAFETY_POLL",
    "LiveConfig",
    "check_name",
    "fixed_keys",
    "fixed_reason",
    "wire",
]

_log = logging.getLogger("mailguard.live")

POLL = 0.5
"""Seconds between two reads of the version while the store's channel is down."""

SAFETY_POLL = 30.0
"""Seconds between two reads of the version while the channel is up."""

MAX_VALUE = 16 * 1024
"""The most bytes of JSON one value may take."""

MAX_LIST = 1000
"""The most entries of a list value (``safe_ips``, ``exempt_paths``)."""

OPS = ("set", "add", "remove", "unset")
"""What a change does: set a value, add to or remove from a list, drop the key."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}\.[a-z][a-z0-9_]{0,63}")
_CLIENT_KEYS = ("trusted_proxies", "forwarded_header", "ipv6_prefix", "ipv6_wider")
_RESTART = "restart mailguard (or the app) after changing it in the file"


def fixed_reason(name: str) -> str | None:
    """Why ``name`` (``table.key``) cannot change live, or None when it can."""
    table, _, key = name.partition(".")
    if table == "store":
        return f"the store is chosen at start; {_RESTART}"
    if table == "serve":
        return f"[serve] is read when mailguard serve starts; {_RESTART}"
    if key in _CLIENT_KEYS:
        return f"the client settings build one resolver shared by every filter; {_RESTART}"
    if key == "on_store_error":
        return f"the store's outage handling is set up at start; {_RESTART}"
    if key == "enabled":
        return (
            "a filter not built at start cannot appear nor vanish; for report-only set"
            f" dos.delay_ms = 0 or login.enforce / device.enforce = false, else {_RESTART}"
        )
    if key == "namespace":
        return f"the namespace names the blocks and counters in the store; {_RESTART}"
    if table == "mailauth" and key not in LOGIN_KEYS:
        return f"[mailauth]'s door settings are read at start; {_RESTART}"
    return None


def fixed_keys() -> list[str]:
    """The keys that cannot change live (``store.*``: every key of ``[store]``)."""
    found = ["store.*", "serve.*"]
    found += [f"common.{key}" for key in COMMON_KEYS if fixed_reason(f"common.{key}")]
    for name in FILTERS:
        found.append(f"{name}.enabled")
        found += [f"{name}.{k}" for k in declared(POLICIES[name]) if fixed_reason(f"{name}.{k}")]
    found.append("mailauth.* (but the failure rule's keys)")
    return found


class _Front(Protocol):
    """A running filter: an ASGI or WSGI ``GuardMiddleware``."""

    @property
    def policy(self) -> Policy: ...

    def swap(self, policy: Policy) -> None: ...


def _shown(name: object) -> str:
    """A key as a message may show it: never a control character, never long."""
    text = repr(name)
    return text if len(text) <= 60 else text[:57] + "..."


def check_name(name: object, origin: str = "overlay") -> str:
    """``name`` if it is a key the overlay may hold, else :class:`ConfigError`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            origin, _shown(name), "not a key: expected TABLE.KEY such as dos.max_requests_per_sec"
        )
    table = name.partition(".")[0]
    if table not in TABLES:
        tables = ", ".join(t for t in TABLES if t not in ("store", "serve"))
        raise ConfigError(origin, name, f"unknown table; live tables are {tables}")
    reason = fixed_reason(name)
    if reason is not None:
        raise ConfigError(origin, name, f"cannot change while running: {reason}")
    return name


def _check_value(name: str, value: Any, origin: str) -> None:
    if not _storable(value):
        raise ConfigError(origin, name, "must be a number, text, true/false or a list of them")
    if isinstance(value, list) and len(value) > MAX_LIST:
        raise ConfigError(origin, name, f"at most {MAX_LIST} entries, got {len(value)}")
    if len(json.dumps(value)) > MAX_VALUE:
        raise ConfigError(origin, name, f"larger than {MAX_VALUE} bytes")


_WIDEST_V4 = 2**24  # one entry: at most a /8
_WIDEST_V6 = 2**112  # a /16
_ALL_V4 = 2**26  # all entries together: at most four /8s (1/64 of IPv4)
_ALL_V6 = 2**114


def _not_everyone(name: str, entries: Any, origin: str) -> None:
    """A live ``safe_ips`` may not cover (nearly) everyone: that would switch
    the filters off for every client, from one command or one admin call.

    Measured as the filters will use it: every entry parsed as ``AddressSet``
    parses it, IPv4 written in an IPv6 form (``::ffff:0:0/96``,
    ``64:ff9b::/96``) counted as the IPv4 it also matches
    (``identity._with_ipv4_view``), and the entries taken together (256 /8s
    are everyone too).  Live, one entry may be at most a /8 (IPv6: a /16),
    and all of them together at most four /8s (the private ranges, loopback
    and a few partners fit; IPv6: four /16s); a file may say more.
    """
    from .identity import _parse_network, _with_ipv4_view

    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    for entry in entries if isinstance(entries, list) else [entries]:
        try:
            network = _parse_network(entry, name)
        except ValueError:
            continue  # not a network: the file's check names it
        for view in _with_ipv4_view(network):
            parsed = ipaddress.ip_network(str(view.cidr))
            if parsed.num_addresses > (_WIDEST_V4 if parsed.version == 4 else _WIDEST_V6):
                _everyone(name, origin, f"{_shown(entry)} covers (nearly) every address")
            if isinstance(parsed, ipaddress.IPv4Network):
                v4.append(parsed)
            else:
                v6.append(parsed)
    covered4 = sum(n.num_addresses for n in ipaddress.collapse_addresses(v4))
    covered6 = sum(n.num_addresses for n in ipaddress.collapse_addresses(v6))
    if covered4 > _ALL_V4 or covered6 > _ALL_V6:
        _everyone(name, origin, "together the entries cover (nearly) every address")


def _everyone(name: str, origin: str, what: str) -> None:
    raise ConfigError(
        origin, name,
        f"{what}: no client would be counted; live, one entry at most a /8 (IPv6 /16),"
        " all together at most four /8s (four /16s); put it in the file if you mean it",
    )  # fmt: skip


def _report_only(policy: Policy) -> bool:
    """Whether ``policy`` counts but refuses nobody (monitor mode)."""
    return getattr(policy, "enforce", True) is False or getattr(policy, "delay_ms", -1) == 0


def _fixed_changes(old: Config, fresh: Config) -> list[str]:
    """The keys that cannot change while running (:func:`fixed_reason`) whose
    value differs between two versions of the file (``[store]`` aside)."""
    changed: list[str] = []
    for before in old.filters:
        after = fresh.filter(before.name)
        if after is None or after.enabled != before.enabled:
            changed.append(f"{before.name}.enabled")
            continue
        for key in sorted({*before.options, *after.options}):
            if fixed_reason(f"{before.name}.{key}") is None:
                continue
            if before.options.get(key, _NONE) != after.options.get(key, _NONE):
                changed.append(f"{before.name}.{key}")
    if dict(old.serve.options) != dict(fresh.serve.options):
        changed.append("serve.*")
    for key in sorted({*old.mailauth.options, *fresh.mailauth.options}):
        if fixed_reason(f"mailauth.{key}") is None:
            continue
        if old.mailauth.options.get(key, _NONE) != fresh.mailauth.options.get(key, _NONE):
            changed.append(f"mailauth.{key}")
    return changed


def _host_who() -> str:
    return f"{who()}@{socket.gethostname().split('.')[0]}"


def _stamp(when: float) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    except (OverflowError, OSError, ValueError):  # (a document from elsewhere)
        return "?"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, (list, tuple, frozenset, set)):
        return [_jsonable(v) for v in value]
    entries = getattr(value, "entries", None)
    if entries is not None:
        return [_jsonable(v) for v in entries]
    return str(value)


_NONE = object()
_UNKNOWN_BASELINE: Config | None = None


def _defaults() -> Config:
    """A baseline of defaults only (no file, no environment)."""
    global _UNKNOWN_BASELINE
    if _UNKNOWN_BASELINE is None:
        _UNKNOWN_BASELINE = loads("", source="<defaults>", env={})
    return _UNKNOWN_BASELINE


class LiveConfig:
    """The baseline and the store's overlay, merged, and the running filters
    they drive.

    :param store: the store every filter uses (the overlay lives there; for
        Redis, every process on it shares the overlay).
    :param baseline: the :class:`~mailguard.config.Config` read at start
        (file and environment); None when unknown (the command with
        ``--redis`` alone: changes are checked against the defaults).
    :param path: the file ``baseline`` came from, for :meth:`reload` (SIGHUP).
    :param on_event: the hook the filters were built with (given to new
        policies) and the audit events of changes made here.
    :param watch: follow the overlay (processes that serve; not the
        command): a thread reading it for Redis, at once for a memory store.
    """

    def __init__(
        self,
        store: Store,
        baseline: Config | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        on_event: EventHook | None = None,
        watch: bool = True,
    ) -> None:
        if not isinstance(store, Store):
            raise ValueError(f"store: must be a mailguard store, got {store!r}")
        self.store = store
        self.baseline = baseline
        self.path = None if path is None else os.fspath(path)
        self.on_event = on_event
        self.overlay = Overlay()
        """The overlay in force (version 0: none)."""
        self.config = baseline
        """The merged configuration in force."""
        self._fronts: list[_Front] = []
        self._logins: list[MailLogins] = []
        self._lock = threading.RLock()
        self._failed: int | None = None  # the version whose failure was logged (None: none)
        self._wake = threading.Event()
        self._reload = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        me = weakref.ref(self)

        def heard() -> None:
            live = me()
            if live is None:
                return
            if store.local:  # written in this process: apply now, in the writer's thread
                live._refresh_logged()
            else:
                live._wake.set()

        if watch:  # follow: a memory store tells at once, others through the thread
            store.watch_overlay(heard)
            if not store.local:
                self.start()
        else:
            if type(store).read_overlay is Store.read_overlay:
                raise NotImplementedError(f"{type(store).__name__} keeps no live configuration")
        _ALL.add(self)

    def __repr__(self) -> str:
        return f"LiveConfig({self.store!r}, version={self.version})"

    @property
    def version(self) -> int:
        """The overlay version in force in this process."""
        return self.overlay.version

    # ----------------------------------------------------------- fronts
    def attach(self, fronts: Iterable[Any]) -> None:
        """Drive these running filters (``protect``'s), and apply the overlay now."""
        with self._lock:
            for front in fronts:
                if not callable(getattr(front, "swap", None)):
                    raise ValueError(f"not a mailguard filter: {front!r}")
                self._fronts.append(front)
        self._refresh_logged(force=True)

    def attach_logins(self, logins: MailLogins) -> None:
        """Drive ``mailguard serve``'s login rule (``[mailauth]`` over ``[login]``)."""
        with self._lock:
            self._logins.append(logins)
        self._refresh_logged(force=True)

    # ----------------------------------------------------------- follow
    def start(self) -> None:
        """Start the thread that follows the overlay (once per process)."""
        if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mailguard-live", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following the overlay (the settings in force stay)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                if self._reload.is_set():
                    self._reload.clear()
                    self.reload()
                self.refresh()
                if failing:
                    _log.info("mailguard live: reading the overlay again store=%r", self.store)
                failing = False
            except Exception as exc:
                if not failing:
                    _log.warning(
                        "mailguard live: cannot read the overlay store=%r error=%s: kept v%d,"
                        " trying again", self.store, exc, self.version,
                    )  # fmt: skip
                failing = True
            heard = getattr(self.store, "overlay_heard", False)
            self._wake.wait(SAFETY_POLL if heard else POLL)
            self._wake.clear()
            self._stop.wait(0.02)  # a flood of messages costs at most 50 reads a second

    def refresh(self, *, force: bool = False) -> bool:
        """Read the overlay's version and, when it moved, apply the document.
        Returns whether new settings were put in force."""
        if not force and self.store.overlay_version() == self.overlay.version:
            return False
        return self.apply(self.store.read_overlay(), force=force)

    def _refresh_logged(self, *, force: bool = False) -> None:
        try:
            self.refresh(force=force)
        except Exception as exc:  # the thread tries again
            _log.warning(
                "mailguard live: cannot read the overlay store=%r error=%s", self.store, exc
            )
            self._wake.set()

    def merged(self, values: Mapping[str, Any], version: int) -> Config:
        """The baseline with ``values`` over it, checked (:class:`ConfigError`)."""
        base = self.baseline if self.baseline is not None else _defaults()
        return base.with_values(values, f"overlay v{version}")

    def apply(self, overlay: Overlay, *, force: bool = False) -> bool:
        """Put ``overlay`` over the baseline in force, or keep the settings in
        force and log one ERROR line when the merge fails."""
        with self._lock:
            if not force and overlay.version == self.overlay.version:
                return False
            try:
                for name in overlay.values:
                    check_name(name, f"overlay v{overlay.version}")
                merged = self.merged(overlay.values, overlay.version)
                policies = [self._build(merged, front.policy.kind) for front in self._fronts]
                for front, policy in zip(self._fronts, policies, strict=True):
                    # every policy checked before any is swapped: all or nothing
                    if policy.resolver is not front.policy.resolver:
                        raise ConfigError(
                            merged.source, f"[{policy.kind}]",
                            f"the client settings differ from those in force; {_RESTART}",
                        )  # fmt: skip
                logins = None
                if self._logins:
                    logins = merged.mailauth.build(build_logins, self.store, on_event=self.on_event)
            except ConfigError as exc:
                if self._failed != overlay.version:
                    self._failed = overlay.version
                    _log.error(
                        "mailguard live: not applied, keeping v%d: %s", self.overlay.version, exc
                    )
                return False
            before_policies = [front.policy for front in self._fronts]
            for front, policy in zip(self._fronts, policies, strict=True):
                front.swap(policy)
            for rule in self._logins:
                assert logins is not None
                rule.policy = logins.policy
            before, after = self.overlay.values, overlay.values
            changed = sorted(
                {k for k in {*before, *after} if before.get(k, _NONE) != after.get(k, _NONE)}
            )
            self.overlay, self.config = overlay, merged
        if overlay.version or changed:
            _log.warning(
                "mailguard live: v%d in force pid=%d filters=%d changed=%s",
                overlay.version, os.getpid(), len(policies), ",".join(changed) or "-",
            )  # fmt: skip
        for policy, was in zip(policies, before_policies, strict=True):
            # (after every change, and whenever a reload turns a filter report-only)
            if _report_only(policy) and (overlay.version or changed or not _report_only(was)):
                _log.warning(
                    "mailguard live: %s is report-only (v%d): it counts and refuses nobody",
                    policy.kind, overlay.version,
                )  # fmt: skip
        return True

    def _build(self, merged: Config, kind: str) -> Policy:
        settings = merged.filter(kind)
        if settings is None:  # pragma: no cover - every kind has a table
            raise ConfigError(merged.source, kind, "no such filter")
        return settings.build(self.store, self.on_event)

    # ----------------------------------------------------------- change
    def change(
        self,
        op: str,
        name: str,
        value: Any = None,
        *,
        by: str | None = None,
        client: str = "cli",
    ) -> int:
        """Change the overlay (checked first: :class:`ConfigError`, nothing
        written); returns the new version.  Logs an audit line.

        :param op: ``set``, ``add`` / ``remove`` (list keys), ``unset``.
        :param by: who (default ``user@host`` of this process).
        :param client: the caller's address (``"cli"`` for the command).
        """
        if op not in OPS:
            raise ConfigError("overlay", _shown(name), f"op must be one of {', '.join(OPS)}")
        check_name(name)
        who_ = by if by is not None else _host_who()
        for _ in range(5):
            current = self.store.read_overlay()
            version = current.version + 1
            origin = f"overlay v{version}"
            values = dict(current.values)
            if op == "unset":
                if name not in values:
                    raise ConfigError(origin, name, "not set in the overlay")
                del values[name]
            else:
                _check_value(name, value, origin)
                values[name] = self._new_value(op, name, value, current, origin)
                _check_value(name, values[name], origin)
            for other in values:
                check_name(other, origin)
            if name.endswith(".safe_ips") and op != "unset":
                _not_everyone(name, values[name], origin)
            self.merged(values, version)  # raises ConfigError, nothing written
            recorded = who_ if client == "cli" else f"{who_} from={client}"
            record = OverlayChange(version, recorded, self.store.now(), op, name, value)
            try:
                made = self.store.write_overlay(current.version, values, record)
            except OverlayConflict:
                continue
            except ValueError as exc:
                raise ConfigError(origin, name, str(exc)) from None
            audit_config(op, key=name, value=value, version=made, by=who_, client=client,
                         hook=self.on_event)  # fmt: skip
            if self._fronts or self._logins:
                self._refresh_logged()
            return made
        raise ConfigError("overlay", name, "changed by others meanwhile; try again")

    def _new_value(self, op: str, name: str, value: Any, current: Overlay, origin: str) -> Any:
        if op == "set":
            return value
        if name in current.values:
            present = current.values[name]
        elif self.baseline is None:
            raise ConfigError(
                origin, name,
                f"{op} needs the value in force, and the baseline is unknown: give --config FILE,"
                " or set the whole list",
            )  # fmt: skip
        else:
            present = self._in_force(name, self.merged(current.values, current.version))
        if not isinstance(present, list):
            raise ConfigError(origin, name, f"{op} works on a list key such as common.safe_ips")
        given = value if isinstance(value, list) else [value]
        if op == "add":
            return present + [v for v in given if v not in present]
        missing = [v for v in given if v not in present]
        if missing:
            raise ConfigError(origin, name, f"{_shown(missing[0])} is not in the list")
        return [v for v in present if v not in given]

    # ------------------------------------------------------------ reading
    @staticmethod
    def _in_force(name: str, config: Config) -> Any:
        """The raw value of ``name`` in force in ``config`` (None: the default)."""
        table, _, key = name.partition(".")
        raw = config.raw.get(table, {})
        if key in raw:
            return _jsonable(raw[key])
        if table in FILTERS and key in COMMON_KEYS:
            common = config.raw.get("common", {})
            if key in common:
                return _jsonable(common[key])
        if table in FILTERS or table == "common":
            option = declared(POLICIES[table if table in FILTERS else "dos"]).get(key)
            if option is not None and option.default is not None:
                return _jsonable(option.default)
        return None

    def entries(self, only: str | None = None) -> list[dict[str, Any]]:
        """Each live key in force: ``key``, ``value``, ``source`` (``file``,
        ``env``, ``overlay``, ``default``) and ``detail``."""
        overlay = self.overlay
        config = self.config if self.config is not None else _defaults()
        names: list[str] = []
        tables = ["common", *FILTERS]
        for table in tables:
            keys = COMMON_KEYS if table == "common" else tuple(
                k for k, o in declared(POLICIES[table]).items() if not o.is_callable
                and k != "store"
            )  # fmt: skip
            names += [f"{table}.{k}" for k in keys if fixed_reason(f"{table}.{k}") is None]
        if self._logins or config.raw.get("mailauth"):
            names += [f"mailauth.{k}" for k in LOGIN_KEYS if fixed_reason(f"mailauth.{k}") is None]
        names += [n for n in overlay.values if n not in names]
        if only is not None:
            names = [only]
        rows = []
        for name in names:
            rows.append(self._entry(name, config, overlay))
        return rows

    def _entry(self, name: str, config: Config, overlay: Overlay) -> dict[str, Any]:
        table, _, key = name.partition(".")
        value = self._in_force(name, config)
        if name in overlay.values:
            change = overlay.last_change(name)
            detail = f"v{overlay.version}"
            if change is not None:
                detail = f"v{change.version} {change.op} by {change.who} at {_stamp(change.when)}"
            return {"key": name, "value": _jsonable(overlay.values[name]), "source": "overlay",
                    "detail": detail}  # fmt: skip
        if table == "mailauth":  # over [login] over [common]: say which one set it
            value = _jsonable(config.mailauth.options.get(key))
            where, label = config.mailauth.origins.get(key, ("", name))
            if not where:
                rule = declared(POLICIES["login"]).get(key)
                value = _jsonable(rule.default) if rule is not None else None
                return {"key": name, "value": value, "source": "default", "detail": ""}
            source, detail = self._source(where, overlay)
            if label != name:
                detail = f"{label} ({detail})"
            return {"key": name, "value": value, "source": source, "detail": detail}
        origin = config.raw_origins.get(table, {}).get(key)
        if origin is None and table in FILTERS and key in COMMON_KEYS:
            common = config.raw_origins.get("common", {}).get(key)
            if common is not None:
                source, detail = self._source(common, overlay)
                return {"key": name, "value": value, "source": source,
                        "detail": f"common.{key} ({detail})"}  # fmt: skip
        if origin is None:
            unknown = self.baseline is None
            return {"key": name, "value": value, "source": "default",
                    "detail": "baseline unknown" if unknown else ""}  # fmt: skip
        source, detail = self._source(origin, overlay)
        return {"key": name, "value": value, "source": source, "detail": detail}

    @staticmethod
    def _source(origin: str, overlay: Overlay) -> tuple[str, str]:
        if origin.endswith(" (environment)"):
            return "env", origin.removesuffix(" (environment)")
        if origin.startswith("overlay v"):
            return "overlay", origin.removeprefix("overlay ")
        return "file", origin

    def describe(self) -> dict[str, Any]:
        """What ``GET /config`` answers (see :mod:`mailguard.admin`)."""
        described = getattr(self.config, "store", None)
        store = described.describe() if described is not None else repr(self.store)
        return {
            "version": self.overlay.version,
            "live": True,
            "store": store,
            "entries": self.entries(),
            "fixed": fixed_keys(),
        }

    # ------------------------------------------------------------ reload
    def reload(self) -> bool:
        """Read the file again (the baseline) and put it, with the overlay
        over it, in force; a file that fails keeps the settings in force and
        logs one ERROR line.  Returns whether new settings are in force."""
        if self.path is None:
            _log.error("mailguard live: reload asked, but no file to read")
            return False
        try:
            fresh = load(self.path)
        except ConfigError as exc:
            _log.error("mailguard live: %s not reloaded, keeping the settings in force: %s",
                       self.path, exc)  # fmt: skip
            return False
        old = self.baseline
        if old is not None and fresh.store != old.store:
            _log.error(
                "mailguard live: %s: [store] changed; %s", self.path, fixed_reason("store.x")
            )
            return False
        fixed = _fixed_changes(old, fresh) if old is not None else []
        if fixed:
            _log.error(
                "mailguard live: %s not reloaded, keeping the settings in force: %s changed,"
                " which cannot change while running; %s",
                self.path, ",".join(fixed), _RESTART,
            )  # fmt: skip
            return False
        with self._lock:
            self.baseline = fresh
            applied = False
            self._failed = None  # (a file that fails is logged, whatever failed before)
            try:
                applied = self.apply(self.store.read_overlay(), force=True)
            except Exception as exc:  # whatever failed, the file in force stays the old one
                _log.error("mailguard live: %s not reloaded, keeping the settings in force: %s",
                           self.path, exc)  # fmt: skip
            finally:
                if not applied:
                    self.baseline = old
            if not applied:
                return False
        _log.warning("mailguard live: %s reloaded pid=%d", self.path, os.getpid())
        return True

    def install_sighup(self) -> bool:
        """Reload the file on SIGHUP (:meth:`reload`, in this object's thread).

        Only from the main thread and only when nobody else handles SIGHUP
        (its handler is the default); returns whether it was installed.
        """
        if not hasattr(signal, "SIGHUP") or self.path is None:
            return False
        if threading.current_thread() is not threading.main_thread():
            return False
        if signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL:
            return False
        me = weakref.ref(self)

        def hup(signum: int, frame: object) -> None:
            live = me()
            if live is not None:
                live._reload.set()
                live._wake.set()

        signal.signal(signal.SIGHUP, hup)
        self.start()
        return True


def _after_fork() -> None:  # a forked child (gunicorn --preload): follow again there
    for live in list(_ALL):
        if live._thread is not None:
            live._thread = None
            live.start()


_ALL: weakref.WeakSet[LiveConfig] = weakref.WeakSet()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def protect_with(
    classes: Mapping[str, Any],
    app: Any,
    config: str | os.PathLike[str] | Config,
    *,
    store: Store | None,
    on_event: EventHook | None,
    live: LiveConfig | bool | None,
    reload_on_hup: bool | None,
) -> Any:
    """``protect()`` for either front: ``classes`` are its filter classes by kind
    (``mailguard.asgi.FILTER_CLASSES`` or ``mailguard.wsgi``'s)."""
    cfg = config if isinstance(config, Config) else load(config)
    shared = store if store is not None else cfg.build_store()
    fronts: list[Any] = []
    for policy in reversed(load_policies(cfg, store=shared, on_event=on_event)):
        app = classes[policy.kind](app, policy=policy)
        fronts.append(app)
    path = None if isinstance(config, Config) else config
    follower = wire(fronts, cfg, shared, path=path, on_event=on_event, live=live,
                    reload_on_hup=reload_on_hup)  # fmt: skip
    if fronts:
        fronts[-1].live = follower
    return app


def wire(
    fronts: list[Any],
    config: Config,
    store: Store,
    *,
    path: str | os.PathLike[str] | None,
    on_event: EventHook | None,
    live: LiveConfig | bool | None,
    reload_on_hup: bool | None,
) -> LiveConfig | None:
    """What ``protect`` does for live configuration (``fronts`` innermost first).

    ``live``: a :class:`LiveConfig` to attach to; True or None (automatic) to
    make one when the store is shared (not in this process's memory) or the
    configuration came from a file; False for none.  ``reload_on_hup``: install
    the SIGHUP handler (None: for a memory store read from a file).
    """
    if live is False or not fronts:
        return None
    if isinstance(live, LiveConfig):
        follower = live
    else:
        if live is None and store.local and path is None:
            return None
        try:
            follower = LiveConfig(store, config, path=path, on_event=on_event)
        except NotImplementedError:
            _log.info("mailguard live: %r keeps no live configuration", store)
            return None
    follower.attach(fronts)
    hup = reload_on_hup if reload_on_hup is not None else (store.local and path is not None)
    if hup and follower.install_sighup():
        _log.info("mailguard live: SIGHUP reloads %s pid=%d", follower.path, os.getpid())
    return follower
