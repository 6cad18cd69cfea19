"""One file for the store and all three filters: ``mailguard.toml``.

::

    app = mailguard.asgi.protect(app, "mailguard.toml")     # ASGI
    app = mailguard.wsgi.protect(app, "mailguard.toml")     # WSGI

wraps ``app`` with every filter the file enables, all sharing one store, the
filter that should see a request first outermost: ``DosFilter``, then
``DeviceJail``, then ``InvalidLoginFilter`` next to the app.

The file
========

.. code-block:: toml

    [store]                  # where counters and blocks live (one store for all)
    type = "memory"          # "memory" (default) or "redis"
    max_keys = 100000        # memory only: the most keys held at once
    # max_bytes = 51200000   # memory only: the most bytes counted (default 512 a key)
    # url = "redis://127.0.0.1:6379/0"   # redis only (required)
    # prefix = "mailguard:"              # redis only

    [common]                 # applied to every filter unless the filter sets it
    safe_ips = ["127.0.0.1", "::1", "10.0.0.0/8"]
    trusted_proxies = []     # ["unix"]: a proxy (nginx) reaching us over a unix socket
    # forwarded_header = "x-forwarded-for"
    # ipv6_prefix = 64
    # ipv6_wider = [[56, 4.0], [48, 16.0]]   # also count the /56 at 4x, the /48 at 16x
    # on_store_error = "open"

    [dos]                    # mailguard.policies.DosPolicy
    enabled = true
    max_requests_per_sec = 30
    delay_ms = -1

    [login]                  # mailguard.policies.InvalidLoginPolicy
    max_failed_logins = 11
    block_duration = "15m"

    [device]                 # mailguard.policies.DeviceJailPolicy
    enabled = false
    max_requests = 150
    time_window = "30s"
    jail_duration = "10m"

Rules:

- A filter runs when its table is present and does not say
  ``enabled = false``.  A disabled filter's keys are still checked, so
  switching it on later cannot surprise you.
- Every key of a filter table except ``enabled`` is passed as a keyword
  option to the filter's policy (:class:`~mailguard.policies.DosPolicy`,
  :class:`~mailguard.policies.InvalidLoginPolicy`,
  :class:`~mailguard.policies.DeviceJailPolicy`), which documents them.
  ``store``, ``on_event`` and the options that take a Python callable
  (``key_func``, ``is_failure``, ``device_func``, ``refusal``) cannot be set
  in a file: the store comes from ``[store]``, and hooks are built in code
  (pass ``on_event=`` to ``protect``).
- ``[common]`` takes ``safe_ips``, ``trusted_proxies``, ``forwarded_header``,
  ``ipv6_prefix``, ``ipv6_wider`` and ``on_store_error``.  A filter that sets one of them
  itself replaces the common value (lists are not merged).
- Durations (the options a constructor declares as
  :data:`~mailguard.options.Duration` or :data:`~mailguard.options.Seconds`,
  see :mod:`mailguard.options`) take seconds or a string with a unit:
  ``"1500ms"``, ``"600s"``, ``"25m"``, ``"1h"``, ``"2d"``.
- Which keys a table takes, and which are durations, is read from the
  constructors themselves (:func:`mailguard.options.declared`); the filter
  tables and their order come from :data:`mailguard.policies.FILTERS`.
- ``[serve]`` and ``[mailauth]`` belong to ``mailguard serve`` (the policy
  daemon for Dovecot and nginx's mail proxy, :mod:`mailguard.serve`):
  ``[serve]`` takes :class:`mailguard.mailauth.ServeSettings`' keywords,
  ``[mailauth]`` :class:`mailguard.mailauth.MailAuthSettings`' and the
  failure rule's (:data:`mailguard.mailauth.LOGIN_KEYS`), each of which
  defaults to ``[login]``'s value (then ``[common]``'s); the namespace is
  always ``[login]``'s, so one rule counts every door.  Both are checked at
  load like the filter tables.

Environment overrides
=====================

A variable ``MAILGUARD_<TABLE>__<KEY>`` (a double underscore between table
and key, any case) sets ``<key>`` in ``[<table>]`` over what the file says,
and may create the table::

    MAILGUARD_DOS__MAX_REQUESTS_PER_SEC=50
    MAILGUARD_STORE__TYPE=redis
    MAILGUARD_STORE__URL=redis://10.0.0.5:6379/0
    MAILGUARD_COMMON__SAFE_IPS='["10.0.0.0/8", "::1"]'
    MAILGUARD_LOGIN__ENABLED=false

The value is read as a TOML value when it is one (``50``, ``-1``, ``true``,
``1.5``, ``["a", "b"]``, ``"quoted"``) and as a plain string otherwise
(``redis://...``, ``25m``).  Other ``MAILGUARD_*`` variables (without a
double underscore, such as ``MAILGUARD_CONFIG``) are not overrides.

Errors
======

Every mistake raises :class:`ConfigError` (a ``ValueError``) once, at load,
naming where it is, the key and the problem (a constructor's
:func:`~mailguard.options.option_error` names the option; the key is where
that option was set)::

    mailguard.toml: dos.max_requests_per_sec: must be a whole number >= 1, got 0
    mailguard.toml: login.block_duration: 'soon' is not a duration (use ...)
    MAILGUARD_DOS__DELAY_MS (environment): dos.delay_ms: must be a whole number ...

Python-only options
===================

``protect(app, path, store=..., on_event=...)``: ``store`` replaces the store
``[store]`` describes (one you also give to :class:`mailguard.admin.AdminApp`
or :func:`mailguard.metrics.instrument`, or one with a
:class:`~mailguard.FakeClock` in tests); ``on_event`` is given every
:class:`~mailguard.events.Event` of every filter.  Alerting on blocks is a
hook that looks at ``event.action``::

    def alert(event):
        if event.action in ("blocked", "jailed"):
            send_to_chat(event.line())

    app = mailguard.asgi.protect(app, "mailguard.toml", on_event=alert)

Using it from Python
====================

The adapters wrap an app with what this module builds
(:func:`load_policies`); this module imports neither adapter::

    policies = load_policies("mailguard.toml", store=store)   # outermost first
    app = mailguard.asgi.protect(app, "mailguard.toml", store=store)

What needs a restart
====================

The store, the client settings (``trusted_proxies``, ``forwarded_header``,
``ipv6_prefix``, ``ipv6_wider``), ``on_store_error``, ``enabled``,
``namespace``, ``[serve]`` and ``[mailauth]``'s door settings are read once,
when ``protect`` (or ``mailguard serve``) builds the filters.  Every other
key can change while running: ``mailguard config set|add|remove`` keeps an
overlay over this file in the store, checked by this module
(:meth:`Config.with_values`, the overlay named as the origin:
``overlay v7: dos.delay_ms: ...``) and applied by every process on the store
within 2 s; a memory-store app re-reads the file on SIGHUP (see
:mod:`mailguard.live`).  Blocks are data in the store, not configuration:
listing and lifting them (``mailguard blocks`` / ``mailguard unblock`` for
Redis, the admin app of :mod:`mailguard.admin` for the in-memory store)
takes effect without any restart (with Redis, other processes notice a
lifted block within ``block_cache_ttl``, 2 s by default).
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .events import EventHook
from .mailauth import INHERITED_KEYS, LOGIN_KEYS, MailAuthSettings, ServeSettings, build_logins
from .options import Option, declared, named_option
from .policies import KINDS, POLICIES, Policy
from .stores.base import Store
from .stores.memory import MemoryStore
from .stores.redis_urls import parse_url
from .stores.redis_urls import redact as _redact_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from .stores.redis import RedisStore

__all__ = [
    "COMMON_KEYS",
    "ENV_PREFIX",
    "FILTERS",
    "POLICIES",
    "Config",
    "ConfigError",
    "FilterSettings",
    "StoreSettings",
    "env_value",
    "is_duration_key",
    "load",
    "load_policies",
    "loads",
    "redact",
]

_log = logging.getLogger("mailguard.config")

ENV_PREFIX = "MAILGUARD_"
"""Environment variables ``MAILGUARD_<TABLE>__<KEY>`` override the file."""

FILTERS: tuple[str, ...] = KINDS
"""The filter tables, outermost first (:data:`mailguard.policies.KINDS`)."""

COMMON_KEYS: tuple[str, ...] = (
    "safe_ips",
    "trusted_proxies",
    "forwarded_header",
    "ipv6_prefix",
    "ipv6_wider",
    "on_store_error",
)
"""Keys of ``[common]``: applied to every filter that does not set them itself."""

TABLES: tuple[str, ...] = ("store", "common", *FILTERS, "serve", "mailauth")
"""Every table a file may hold; ``[serve]`` and ``[mailauth]`` are
``mailguard serve``'s (:mod:`mailguard.mailauth`)."""

STORE_TYPES = ("memory", "redis")

# Keys that only Python code can supply, with the reason (any other option
# that takes a callable gets _CALLABLE).
_NOT_IN_FILES = {
    "store": "the store is configured once, in [store]",
    "on_event": "a hook is a Python callable: pass on_event= to protect()",
    "key_func": "a Python callable: build the filter in code to use it",
    "policy": "build the filter in code to pass a ready policy",
    "clock": "a Python callable: pass store= to protect() for a store with a clock",
}
_CALLABLE = "a Python callable: build the filter in code to use it"


class ConfigError(ValueError):
    """A configuration mistake: ``where`` (file or variable), ``key`` and ``problem``.

    ``str(error)`` is one line: ``"mailguard.toml: dos.delay_ms: must be ..."``.
    """

    def __init__(self, where: str, key: str, problem: str) -> None:
        self.where = where
        self.key = key
        self.problem = problem
        super().__init__(f"{where}: {key}: {problem}" if key else f"{where}: {problem}")


def is_duration_key(key: str) -> bool:
    """Whether a filter or store option of this name holds a duration.

    Read from the declarations (:func:`mailguard.options.declared`), not from
    the name: kept for code that asked before they existed.
    """
    classes: list[type] = [*POLICIES.values(), MemoryStore]
    try:
        from .stores.redis import RedisStore
    except ImportError:  # pragma: no cover - without the redis extra
        pass
    else:
        classes.append(RedisStore)
    return any(
        option.is_duration
        for cls in classes
        for option in declared(cls).values()
        if option.name == key
    )


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class FilterSettings:
    """One filter table, checked and ready for its policy's constructor.

    :ivar name: ``"dos"``, ``"device"`` or ``"login"``.
    :ivar enabled: whether ``protect`` installs the filter.
    :ivar options: keyword options for the policy (durations in seconds).
    :ivar origins: for each option, where it was set and under which name
        (``("mailguard.toml", "common.safe_ips")``), for error messages.
    """

    name: str
    enabled: bool
    options: Mapping[str, Any] = field(default_factory=dict)
    origins: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def policy_type(self) -> type[Policy]:
        return POLICIES[self.name]

    def build(self, store: Store, on_event: EventHook | None = None) -> Policy:
        """The policy, on ``store``; a bad option raises :class:`ConfigError`."""
        try:
            return self.policy_type(store=store, on_event=on_event, **self.options)
        except (TypeError, ValueError) as exc:
            raise self._error(exc) from None

    def _error(self, exc: Exception) -> ConfigError:
        named = named_option(exc)
        if named is not None and named[0] in self.origins:
            where, label = self.origins[named[0]]
            return ConfigError(where, label, named[1])
        where = next(iter(self.origins.values()))[0] if self.origins else "?"
        return ConfigError(where, f"[{self.name}]", str(exc))


@dataclass(frozen=True)
class StoreSettings:
    """The ``[store]`` table.

    :ivar type: ``"memory"`` or ``"redis"``.
    :ivar options: ``max_keys`` for memory; ``url``, ``prefix`` and any other
        keyword option of :class:`~mailguard.RedisStore` for redis.
    """

    type: str = "memory"
    options: Mapping[str, Any] = field(default_factory=dict)
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str | None:
        url = self.options.get("url")
        return url if isinstance(url, str) else None

    @property
    def prefix(self) -> str:
        prefix = self.options.get("prefix", "mailguard:")
        return prefix if isinstance(prefix, str) else "mailguard:"

    def build(self) -> Store:
        """A new store (for redis, a client; it connects on first use)."""
        if self.type == "memory":
            try:
                return MemoryStore(**self.options)
            except (TypeError, ValueError) as exc:
                raise self._error(exc) from None
        redis_store = _redis_store_class(self.origins.get("type", "?"))
        options = dict(self.options)
        url = options.pop("url")
        try:
            store: Store = redis_store(url, **options)
        except (TypeError, ValueError) as exc:
            raise self._error(exc) from None
        return store

    def _error(self, exc: Exception) -> ConfigError:
        named = named_option(exc)
        if named is not None and named[0] in self.options:
            key = named[0]
            return ConfigError(self.origins.get(key, "?"), f"store.{key}", named[1])
        where = next(iter(self.origins.values()), "?") if self.origins else "?"
        return ConfigError(where, "[store]", str(exc))

    def describe(self) -> str:
        if self.type == "memory":
            return f"memory (max_keys {self.options.get('max_keys', 100_000)})"
        return f"redis {redact(self.url or '')} prefix {self.prefix!r}"


@dataclass(frozen=True)
class TableSettings:
    """A table that is not a filter (``[serve]``, ``[mailauth]``): its options,
    checked at load, and where each was set (for error messages)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    origins: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def build(self, maker: Any, *args: Any, **more: Any) -> Any:
        """``maker(*args, **options, **more)``; a bad option raises :class:`ConfigError`."""
        try:
            return maker(*args, **self.options, **more)
        except (TypeError, ValueError) as exc:
            named = named_option(exc)
            if named is not None and named[0] in self.origins:
                where, label = self.origins[named[0]]
                raise ConfigError(where, label, named[1]) from None
            where = next(iter(self.origins.values()))[0] if self.origins else "?"
            raise ConfigError(where, f"[{self.name}]", str(exc)) from None


@dataclass(frozen=True)
class Config:
    """A loaded, checked configuration.  Build one with :func:`load` or :func:`loads`.

    :ivar source: the file it came from (``"<string>"`` for :func:`loads`).
    :ivar store: the ``[store]`` table.
    :ivar filters: every filter table, enabled or not, outermost first.
    """

    source: str
    store: StoreSettings
    filters: tuple[FilterSettings, ...]
    serve: TableSettings = field(default_factory=lambda: TableSettings("serve"))
    """``[serve]``: :class:`mailguard.mailauth.ServeSettings`' keywords."""
    mailauth: TableSettings = field(default_factory=lambda: TableSettings("mailauth"))
    """``[mailauth]`` over ``[login]`` over ``[common]``: the keywords of
    :func:`mailguard.mailauth.build_logins`."""
    raw: Mapping[str, Mapping[str, Any]] = field(default_factory=dict, repr=False, compare=False)
    """The tables as read (file, then environment), before checking."""
    raw_origins: Mapping[str, Mapping[str, str]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """Where each raw key was set: the file, ``MAILGUARD_X__Y (environment)``."""

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the filters ``protect`` installs, outermost first."""
        return tuple(f.name for f in self.filters if f.enabled)

    def filter(self, name: str) -> FilterSettings | None:
        for settings in self.filters:
            if settings.name == name:
                return settings
        return None

    def build_store(self) -> Store:
        """The store ``[store]`` describes."""
        return self.store.build()

    def policies(self, store: Store, on_event: EventHook | None = None) -> list[Policy]:
        """The enabled filters' policies on ``store``, outermost first."""
        return [f.build(store, on_event) for f in self.filters if f.enabled]

    def check(self, *, store: bool = True) -> None:
        """Build every filter (enabled or not) and the store; raise on a mistake.

        Nothing connects: a RedisStore opens its connections on first use.
        ``store=False`` leaves the store out (a live change never touches it).
        """
        scratch = MemoryStore(max_keys=16)
        for settings in self.filters:
            settings.build(scratch)
        self.serve.build(ServeSettings)
        self.mailauth.build(build_logins, scratch)
        if store:
            self.store.build().close()  # a RedisStore connects on first use, not here

    def with_values(self, values: Mapping[str, Any], origin: str) -> Config:
        """This configuration with ``values`` (``{"table.key": value}``) set over
        it, each from ``origin`` (``"overlay v7"``), checked exactly as a file's
        keys are (the store is not built again: it cannot change).

        :raises ConfigError: naming ``origin``, the key and the problem.
        """
        tables = {name: dict(table) for name, table in self.raw.items()}
        origins = {name: dict(where) for name, where in self.raw_origins.items()}
        for name, value in values.items():
            table, _, key = name.partition(".")
            if table not in TABLES or not key:
                raise ConfigError(origin, name, "expected TABLE.KEY such as dos.delay_ms")
            tables.setdefault(table, {})[key] = value
            origins.setdefault(table, {})[key] = origin
        for name in FILTERS:  # [common] values checked by every filter, as if it ran
            if name not in tables:
                tables[name] = {"enabled": False}
                origins[name] = {"enabled": "<not in the file>"}
        return _assemble(tables, origins, self.source, check_store=False)

    def describe(self) -> str:
        """One line for humans: the store and which filters run."""
        on = ", ".join(self.enabled) or "none"
        off = [f.name for f in self.filters if not f.enabled]
        text = f"store {self.store.describe()}; filters: {on}"
        if off:
            text += f" (off: {', '.join(off)})"
        return text


# ------------------------------------------------------------------- loading


def load(path: str | os.PathLike[str] | None, *, env: Mapping[str, str] | None = None) -> Config:
    """Read a mailguard.toml, apply ``MAILGUARD_*`` overrides, check it.

    :param path: the file; ``None`` for no file (environment only).
    :param env: the environment to read overrides from (default
        ``os.environ``; pass ``{}`` to ignore it).
    :raises ConfigError: naming the file or variable, the key and the problem.
    """
    if path is None:
        return _build({}, "<no file>", env)
    source = os.fspath(path)
    try:
        with open(source, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(source, "", f"not UTF-8 text ({exc.reason})") from None
    return loads(text, source=source, env=env)


def loads(text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None) -> Config:
    """Like :func:`load`, from TOML text; ``source`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    return _build(data, source, env)


def _build(data: dict[str, Any], source: str, env: Mapping[str, str] | None) -> Config:
    tables: dict[str, dict[str, Any]] = {}
    origins: dict[str, dict[str, str]] = {}
    for name, value in data.items():
        if not isinstance(value, dict):
            hint = " (put it under [common])" if name in COMMON_KEYS else ""
            raise ConfigError(source, name, f"expected a table such as [{name}]{hint}")
        if name not in TABLES:
            raise ConfigError(source, f"[{name}]", _unknown_table(name))
        tables[name] = dict(value)
        origins[name] = {key: source for key in value}
    for variable, (table, key, value) in _env_overrides(os.environ if env is None else env):
        tables.setdefault(table, {})[key] = value
        origins.setdefault(table, {})[key] = f"{variable} (environment)"

    return _assemble(tables, origins, source)


def _assemble(
    raw: Mapping[str, Mapping[str, Any]],
    raw_origins: Mapping[str, Mapping[str, str]],
    source: str,
    *,
    check_store: bool = True,
) -> Config:
    """Check ``raw`` tables (each key's origin in ``raw_origins``) into a Config."""
    tables = {name: dict(table) for name, table in raw.items()}
    origins = {name: dict(where) for name, where in raw_origins.items()}
    store = _store_settings(tables.get("store", {}), origins.get("store", {}), source)
    common = tables.get("common", {})
    common_origins = origins.get("common", {})
    for key in common:
        if key not in COMMON_KEYS:
            raise ConfigError(
                common_origins[key],
                f"common.{key}",
                _unknown(key, COMMON_KEYS, what="key for [common]"),
            )
    filters = []
    for name in KINDS:
        if name not in tables:
            filters.append(FilterSettings(name, False))
            continue
        filters.append(
            _filter_settings(name, tables[name], origins[name], common, common_origins, source)
        )
    serve = _table_settings(
        "serve", declared(ServeSettings), tables.get("serve", {}), origins.get("serve", {}), source
    )
    mailauth = _mailauth_settings(
        tables.get("mailauth", {}), origins.get("mailauth", {}), filters, common, common_origins,
        source,
    )  # fmt: skip
    config = Config(
        source, store, tuple(filters), serve, mailauth,
        raw={name: dict(table) for name, table in raw.items()},
        raw_origins={name: dict(where) for name, where in raw_origins.items()},
    )  # fmt: skip
    config.check(store=check_store)
    return config


def _table_settings(
    name: str,
    accepted: Mapping[str, Option],
    table: dict[str, Any],
    origins: dict[str, str],
    source: str,
    base: TableSettings | None = None,
) -> TableSettings:
    """A table of ``accepted`` options, over ``base``'s (inherited) ones."""
    options = dict(base.options) if base is not None else {}
    where = dict(base.origins) if base is not None else {}
    for key, value in table.items():
        origin = origins.get(key, source)
        label = f"{name}.{key}"
        option = _file_option(accepted, key, origin, label)
        options[key] = _parse(option, value, origin, label)
        where[key] = (origin, label)
    return TableSettings(name, options, where)


def _mailauth_settings(
    table: dict[str, Any],
    origins: dict[str, str],
    filters: list[FilterSettings],
    common: dict[str, Any],
    common_origins: dict[str, str],
    source: str,
) -> TableSettings:
    """``[mailauth]``: the failure rule defaults to ``[login]``'s (which took
    ``[common]``'s), so one rule and one namespace cover every door."""
    inherited: dict[str, Any] = {}
    where: dict[str, tuple[str, str]] = {}
    for key, value in common.items():
        if key in INHERITED_KEYS:
            inherited[key] = value
            where[key] = (common_origins[key], f"common.{key}")
    login = next((f for f in filters if f.name == "login"), None)
    if login is not None:
        for key, value in login.options.items():
            if key in INHERITED_KEYS:
                inherited[key] = value
                where[key] = login.origins.get(key, (source, f"login.{key}"))
    rule = declared(POLICIES["login"])
    accepted = {**{k: rule[k] for k in LOGIN_KEYS}, **declared(MailAuthSettings)}
    base = TableSettings("mailauth", inherited, where)
    return _table_settings("mailauth", accepted, table, origins, source, base)


MIN_MAX_KEYS = 1000
"""The smallest ``[store] max_keys`` a configuration file may set."""


def _store_settings(table: dict[str, Any], origins: dict[str, str], source: str) -> StoreSettings:
    kind = table.pop("type", "memory")
    kind_from = origins.get("type", source)
    if kind not in STORE_TYPES:
        raise ConfigError(kind_from, "store.type", f'must be "memory" or "redis", got {kind!r}')
    if kind == "memory":
        accepted = declared(MemoryStore)
        for key in table:
            if key not in accepted or key == "clock":
                hint = ' (set type = "redis" to use Redis)' if key in ("url", "prefix") else ""
                raise ConfigError(
                    origins[key], f"store.{key}", f"not an option of the memory store{hint}"
                )
        size = table.get("max_keys")
        if isinstance(size, int) and not isinstance(size, bool) and 1 <= size < MIN_MAX_KEYS:
            # MemoryStore itself takes any size >= 1 (tests use tiny ones); a deployed
            # store that small lets a handful of requests evict every count and block
            raise ConfigError(
                origins["max_keys"],
                "store.max_keys",
                f"must be at least {MIN_MAX_KEYS} (a smaller store lets a few"
                f" clients evict every count and block), got {size}",
            )
    else:
        url = table.get("url")
        if url is None:
            raise ConfigError(kind_from, "store.url", 'required with type = "redis"')
        if not isinstance(url, str):
            raise ConfigError(
                origins["url"], "store.url", f"must be a Redis URL, got {type(url).__name__}"
            )
        try:
            parse_url(url)  # the whole grammar (stores/redis_urls.py), checked at start
        except ValueError as exc:
            raise ConfigError(origins["url"], "store.url", str(exc)) from None
        prefix = table.setdefault("prefix", "mailguard:")
        if not isinstance(prefix, str):
            raise ConfigError(
                origins["prefix"], "store.prefix", f"must be a string, got {prefix!r}"
            )
        accepted = declared(_redis_store_class(kind_from))
        for key, value in list(table.items()):
            origin = origins.get(key, source)
            option = _file_option(accepted, key, origin, f"store.{key}")
            table[key] = _parse(option, value, origin, f"store.{key}")
    return StoreSettings(kind, table, {"type": kind_from, **origins})


def _filter_settings(
    name: str,
    table: dict[str, Any],
    origins: dict[str, str],
    common: dict[str, Any],
    common_origins: dict[str, str],
    source: str,
) -> FilterSettings:
    enabled = table.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(
            origins.get("enabled", source),
            f"{name}.enabled",
            f"must be true or false, got {enabled!r}",
        )
    accepted = declared(POLICIES[name])
    options: dict[str, Any] = {}
    where: dict[str, tuple[str, str]] = {}
    for key, value in common.items():
        if key not in table:
            options[key] = value
            where[key] = (common_origins[key], f"common.{key}")
    for key, value in table.items():
        origin = origins.get(key, source)
        label = f"{name}.{key}"
        option = _file_option(accepted, key, origin, label)
        options[key] = _parse(option, value, origin, label)
        where[key] = (origin, label)
    return FilterSettings(name, enabled, options, where)


def _file_option(accepted: Mapping[str, Option], key: str, origin: str, label: str) -> Option:
    """The declared option ``key`` of a table, if a file may set it."""
    if key in _NOT_IN_FILES:
        raise ConfigError(origin, label, f"cannot be set here: {_NOT_IN_FILES[key]}")
    option = accepted.get(key)
    if option is None:
        raise ConfigError(origin, label, _unknown(key, accepted))
    if option.is_callable:
        raise ConfigError(origin, label, f"cannot be set here: {_CALLABLE}")
    return option


def _parse(option: Option, value: Any, origin: str, label: str) -> Any:
    try:
        return option.parse(value)
    except ValueError as exc:
        named = named_option(exc)
        raise ConfigError(origin, label, named[1] if named else str(exc)) from None


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, tuple[str, str, Any]]]:
    found = []
    for variable in sorted(env):
        if not variable.upper().startswith(ENV_PREFIX) or "__" not in variable:
            continue
        table, _, key = variable[len(ENV_PREFIX) :].partition("__")
        table, key = table.lower(), key.lower()
        where = f"{variable} (environment)"
        if table not in TABLES:
            raise ConfigError(where, f"[{table}]", _unknown_table(table))
        if not key:
            raise ConfigError(where, f"[{table}]", "no key after the double underscore")
        found.append((variable, (table, key, env_value(env[variable]))))
    return found


def env_value(text: str) -> Any:
    """An override's value: a TOML value when it parses as one, else the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# ------------------------------------------------------------------- helpers


def _unknown(key: str, known: Any, what: str = "option") -> str:
    candidates = sorted(k for k in known if k not in _NOT_IN_FILES)
    close = difflib.get_close_matches(key, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{hint}"


def _unknown_table(name: str) -> str:
    close = difflib.get_close_matches(name, TABLES, n=1)
    hint = f"did you mean [{close[0]}]? " if close else ""
    return f"unknown table; {hint}tables are {', '.join(f'[{t}]' for t in TABLES)}"


def redact(url: str) -> str:
    """A URL with any password replaced by ``***`` (for messages and logs)."""
    return _redact_url(url)


def _redis_store_class(where: str) -> type[RedisStore]:
    try:
        from .stores.redis import RedisStore
    except ImportError as exc:
        if exc.name == "redis":
            problem = "'redis' needs the redis extra: pip install 'mailguard[redis]'"
        else:
            problem = f"'redis' is not available in this installation ({exc})"
        raise ConfigError(where, "store.type", problem) from None
    return RedisStore


# ------------------------------------------------------------------- building


def load_policies(
    config: str | os.PathLike[str] | Config,
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> list[Policy]:
    """The policies of every filter ``config`` enables, outermost first, on one store.

    This is what ``mailguard.asgi.protect`` and ``mailguard.wsgi.protect``
    wrap an app with, each in its own adapter classes.

    :param config: a path to a mailguard.toml (environment overrides
        applied), or a :class:`Config`.
    :param store: use this store instead of building the one ``[store]``
        describes (for a store with a :class:`~mailguard.FakeClock` in tests,
        or one shared with other code).
    :param on_event: a hook given every :class:`~mailguard.events.Event` of
        every filter (alerting, :class:`mailguard.metrics.PrometheusHook`).
    :raises ConfigError: on any mistake in the file or the environment.
    """
    cfg = config if isinstance(config, Config) else load(config)
    shared = store if store is not None else cfg.build_store()
    policies = cfg.policies(shared, on_event)
    if not policies:
        _log.warning("mailguard: %s enables no filter; the app runs unprotected", cfg.source)
    return policies


def __getattr__(name: str) -> Any:
    if name == "wrap":  # it needed the adapters: this module no longer imports them
        raise AttributeError(
            "mailguard.config.wrap is gone: use mailguard.asgi.protect or"
            " mailguard.wsgi.protect (or mailguard.fronts.wrap)"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
