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
    # url = "redis://127.0.0.1:6379/0"   # redis only (required)
    # prefix = "mailguard:"              # redis only

    [common]                 # applied to every filter unless the filter sets it
    safe_ips = ["127.0.0.1", "::1", "10.0.0.0/8"]
    trusted_proxies = []
    # forwarded_header = "x-forwarded-for"
    # ipv6_prefix = 64
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
  ``store``, ``on_event`` and ``key_func`` cannot be set in a file: the store
  comes from ``[store]`` and hooks are Python callables (pass
  ``on_event=`` to ``protect``).
- ``[common]`` takes ``safe_ips``, ``trusted_proxies``, ``forwarded_header``,
  ``ipv6_prefix`` and ``on_store_error``.  A filter that sets one of them
  itself replaces the common value (lists are not merged).
- Durations (keys ending in ``_duration``, ``_interval``, ``_window``,
  ``_ttl`` or ``_timeout``, and ``offender_memory``) take seconds or a string
  with a unit: ``"1500ms"``, ``"600s"``, ``"25m"``, ``"1h"``, ``"2d"``.

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
naming where it is, the key and the problem::

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

What needs a restart
====================

Filter options and the store are read once, when ``protect`` builds the
filters: a change to the file (or the environment) takes effect when the app
restarts; there is no reload.  Blocks are data in the store, not
configuration: listing and lifting them (``mailguard blocks`` /
``mailguard unblock`` for Redis, the admin app of :mod:`mailguard.admin` for
the in-memory store) takes effect without any restart (with Redis, other
processes notice a lifted block within ``block_cache_ttl``, 2 s by default).
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

from .events import EventHook
from .options import duration
from .policies import DeviceJailPolicy, DosPolicy, InvalidLoginPolicy, Policy
from .stores.base import Store
from .stores.memory import MemoryStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

if TYPE_CHECKING:
    from .asgi import ASGIApp
    from .wsgi import WSGIApp

__all__ = [
    "COMMON_KEYS",
    "ENV_PREFIX",
    "FILTERS",
    "Config",
    "ConfigError",
    "FilterSettings",
    "StoreSettings",
    "env_value",
    "is_duration_key",
    "load",
    "loads",
    "redact",
    "wrap",
]

_log = logging.getLogger("mailguard.config")

ENV_PREFIX = "MAILGUARD_"
"""Environment variables ``MAILGUARD_<TABLE>__<KEY>`` override the file."""

FILTERS: tuple[str, ...] = ("dos", "device", "login")
"""The filter tables, outermost first: the order in which they see a request."""

POLICIES: dict[str, type[Policy]] = {
    "dos": DosPolicy,
    "device": DeviceJailPolicy,
    "login": InvalidLoginPolicy,
}

_CLASS_NAMES = {"dos": "DosFilter", "device": "DeviceJail", "login": "InvalidLoginFilter"}

COMMON_KEYS: tuple[str, ...] = (
    "safe_ips",
    "trusted_proxies",
    "forwarded_header",
    "ipv6_prefix",
    "on_store_error",
)
"""Keys of ``[common]``: applied to every filter that does not set them itself."""

TABLES: tuple[str, ...] = ("store", "common", *FILTERS)

STORE_TYPES = ("memory", "redis")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")

_DURATION_SUFFIXES = ("_duration", "_interval", "_window", "_ttl", "_timeout")
_DURATION_NAMES = frozenset({"offender_memory"})

# Filter-table keys that only Python code can supply, with the reason.
_NOT_IN_FILES = {
    "store": "the store is configured once, in [store]",
    "on_event": "a hook is a Python callable: pass on_event= to protect()",
    "key_func": "a Python callable: build the filter in code to use it",
    "policy": "build the filter in code to pass a ready policy",
    "clock": "a Python callable: pass store= to protect() for a store with a clock",
}


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
    """Whether a filter option holds a duration (seconds, or a string such as ``"25m"``)."""
    return key in _DURATION_NAMES or key.endswith(_DURATION_SUFFIXES)


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
        except TypeError as exc:
            raise self._error(exc, unknown=True) from None
        except ValueError as exc:
            raise self._error(exc, unknown=False) from None

    def _origin(self, key: str) -> tuple[str, str]:
        return self.origins.get(key, ("?", f"{self.name}.{key}"))

    def _error(self, exc: Exception, *, unknown: bool) -> ConfigError:
        text = str(exc)
        if unknown:
            found = re.search(r"keyword argument '(\w+)'", text)
            if found and found.group(1) in self.options:
                where, label = self._origin(found.group(1))
                return ConfigError(
                    where, label, _unknown(found.group(1), accepted_options(self.policy_type) or ())
                )
        found = re.match(r"(\w+): (.*)", text, re.DOTALL)
        if found and found.group(1) in self.options:
            where, label = self._origin(found.group(1))
            return ConfigError(where, label, found.group(2))
        where = next(iter(self.origins.values()))[0] if self.origins else "?"
        return ConfigError(where, f"[{self.name}]", text)


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
        text = str(exc)
        found = re.match(r"(\w+): (.*)", text, re.DOTALL)
        if found and found.group(1) in self.options:
            key = found.group(1)
            return ConfigError(self.origins.get(key, "?"), f"store.{key}", found.group(2))
        where = next(iter(self.origins.values()), "?") if self.origins else "?"
        return ConfigError(where, "[store]", text)

    def describe(self) -> str:
        if self.type == "memory":
            return f"memory (max_keys {self.options.get('max_keys', 100_000)})"
        return f"redis {redact(self.url or '')} prefix {self.prefix!r}"


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

    def check(self) -> None:
        """Build every filter (enabled or not) and the store; raise on a mistake.

        Nothing connects: a RedisStore opens its connections on first use.
        """
        scratch = MemoryStore(max_keys=16)
        for settings in self.filters:
            settings.build(scratch)
        if self.store.type == "redis":
            _check_redis_options(self.store)  # names first: a clearer message
        self.store.build().close()  # a RedisStore connects on first use, not here

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
    for name in FILTERS:
        if name not in tables:
            filters.append(FilterSettings(name, False))
            continue
        filters.append(
            _filter_settings(name, tables[name], origins[name], common, common_origins, source)
        )
    config = Config(source, store, tuple(filters))
    config.check()
    return config


def _store_settings(table: dict[str, Any], origins: dict[str, str], source: str) -> StoreSettings:
    kind = table.pop("type", "memory")
    kind_from = origins.get("type", source)
    if kind not in STORE_TYPES:
        raise ConfigError(kind_from, "store.type", f'must be "memory" or "redis", got {kind!r}')
    if kind == "memory":
        for key in table:
            if key != "max_keys":
                hint = ' (set type = "redis" to use Redis)' if key in ("url", "prefix") else ""
                raise ConfigError(
                    origins[key], f"store.{key}", f"not an option of the memory store{hint}"
                )
    else:
        url = table.get("url")
        if url is None:
            raise ConfigError(kind_from, "store.url", 'required with type = "redis"')
        if not isinstance(url, str) or not url.startswith(_REDIS_SCHEMES):
            raise ConfigError(
                origins["url"],
                "store.url",
                f"must be a redis://, rediss:// or unix:// URL, got {redact(str(url))!r}",
            )
        prefix = table.setdefault("prefix", "mailguard:")
        if not isinstance(prefix, str):
            raise ConfigError(
                origins["prefix"], "store.prefix", f"must be a string, got {prefix!r}"
            )
        for key, value in list(table.items()):
            if is_duration_key(key):
                table[key] = _duration(key, value, origins.get(key, source), "store")
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
    accepted = accepted_options(POLICIES[name])
    options: dict[str, Any] = {}
    where: dict[str, tuple[str, str]] = {}
    for key, value in common.items():
        if key not in table:
            options[key] = value
            where[key] = (common_origins[key], f"common.{key}")
    for key, value in table.items():
        origin = origins.get(key, source)
        label = f"{name}.{key}"
        if key in _NOT_IN_FILES:
            raise ConfigError(origin, label, f"cannot be set here: {_NOT_IN_FILES[key]}")
        if accepted is not None and key not in accepted:
            raise ConfigError(origin, label, _unknown(key, accepted))
        options[key] = _duration(key, value, origin, name) if is_duration_key(key) else value
        where[key] = (origin, label)
    return FilterSettings(name, enabled, options, where)


def _duration(key: str, value: Any, origin: str, table: str) -> float:
    try:
        return duration(key, value, allow_zero=True)
    except ValueError as exc:
        problem = str(exc).split(": ", 1)[-1]
        raise ConfigError(origin, f"{table}.{key}", problem) from None


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


def accepted_options(cls: type) -> frozenset[str] | None:
    """The keyword options ``cls(...)`` accepts, or None when it takes any.

    Follows ``**options`` up the class hierarchy, as the policies pass their
    extra options on to :class:`~mailguard.policies.Policy`.
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass is object:
            return None
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        more = False
        for param in params:
            if param.kind is param.VAR_KEYWORD:
                more = True
            elif param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
                names.add(param.name)
        if not more:
            names.discard("self")
            return frozenset(names)
    return None


def _unknown(key: str, known: Any, what: str = "option") -> str:
    candidates = sorted(k for k in known if k not in _NOT_IN_FILES and k != "self")
    close = difflib.get_close_matches(key, candidates, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what}{hint}"


def _unknown_table(name: str) -> str:
    close = difflib.get_close_matches(name, TABLES, n=1)
    hint = f"did you mean [{close[0]}]? " if close else ""
    return f"unknown table; {hint}tables are {', '.join(f'[{t}]' for t in TABLES)}"


def redact(url: str) -> str:
    """A URL with any password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _redis_store_class(where: str) -> Callable[..., Store]:
    try:
        from .stores.redis import RedisStore
    except ImportError as exc:
        if exc.name == "redis":
            problem = "'redis' needs the redis extra: pip install 'mailguard[redis]'"
        else:
            problem = f"'redis' is not available in this installation ({exc})"
        raise ConfigError(where, "store.type", problem) from None
    return RedisStore


def _check_redis_options(settings: StoreSettings) -> None:
    cls = _redis_store_class(settings.origins.get("type", "?"))
    accepted = accepted_options(cls) if isinstance(cls, type) else None
    if accepted is None:
        return
    for key in settings.options:
        if key != "url" and key not in accepted:
            raise ConfigError(
                settings.origins.get(key, "?"), f"store.{key}", _unknown(key, accepted)
            )


# ------------------------------------------------------------------- wrapping


@overload
def wrap(
    app: ASGIApp,
    config: str | os.PathLike[str] | Config,
    interface: Literal["asgi"],
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> ASGIApp: ...


@overload
def wrap(
    app: WSGIApp,
    config: str | os.PathLike[str] | Config,
    interface: Literal["wsgi"],
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> WSGIApp: ...


def wrap(
    app: Any,
    config: str | os.PathLike[str] | Config,
    interface: Literal["asgi", "wsgi"],
    *,
    store: Store | None = None,
    on_event: EventHook | None = None,
) -> Any:
    """Wrap ``app`` with every filter ``config`` enables, outermost first.

    This is what ``mailguard.asgi.protect`` and ``mailguard.wsgi.protect``
    call.

    :param app: the ASGI or WSGI app to protect.
    :param config: a path to a mailguard.toml (environment overrides
        applied), or a :class:`Config`.
    :param interface: ``"asgi"`` or ``"wsgi"``.
    :param store: use this store instead of building the one ``[store]``
        describes (for a store with a :class:`~mailguard.FakeClock` in tests,
        or one shared with other code).
    :param on_event: a hook given every :class:`~mailguard.events.Event` of
        every filter (alerting, :class:`mailguard.metrics.PrometheusHook`).
    :raises ConfigError: on any mistake in the file or the environment.
    """
    if interface not in ("asgi", "wsgi"):
        raise ValueError(f"interface: must be 'asgi' or 'wsgi', got {interface!r}")
    cfg = config if isinstance(config, Config) else load(config)
    module = __import__(f"mailguard.{interface}", fromlist=["DosFilter"])
    shared = store if store is not None else cfg.build_store()
    policies = cfg.policies(shared, on_event)
    if not policies:
        _log.warning("mailguard: %s enables no filter; the app runs unprotected", cfg.source)
    for policy in reversed(policies):
        app = getattr(module, _CLASS_NAMES[policy.kind])(app, policy=policy)
    return app
