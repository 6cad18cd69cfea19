"""mailguard.toml: loading, environment overrides, errors, and protect() for ASGI and WSGI."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from stacks import AsgiStack, Stack, WsgiStack
from werkzeug.test import Client

import mailguard.asgi
import mailguard.wsgi
from mailguard.config import Config, ConfigError, env_value, load, loads
from mailguard.core import FakeClock
from mailguard.fronts import wrap
from mailguard.policies import DeviceJailPolicy, DosPolicy, InvalidLoginPolicy
from mailguard.stores.memory import MemoryStore

FULL = """
[store]
type = "memory"
max_keys = 5000

[common]
safe_ips = ["10.0.0.0/8"]
trusted_proxies = ["192.0.2.1"]

[dos]
max_requests_per_sec = 3
delay_ms = -1

[login]
max_failed_logins = 3
failure_interval = "10m"
block_duration = "25m"

[device]
max_requests = 20
time_window = "30s"
jail_duration = 600
safe_ips = []
"""


def write(tmp_path: Path, text: str, name: str = "mailguard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="mailguard.toml", env=env or {})
    return caught.value


# ------------------------------------------------------------------ loading


def test_full_file_loads_with_converted_durations(tmp_path: Path) -> None:
    config = load(write(tmp_path, FULL), env={})
    assert config.enabled == ("dos", "device", "login")  # outermost first
    login = config.filter("login")
    assert login is not None
    assert login.options["block_duration"] == 1500.0  # "25m"
    assert login.options["failure_interval"] == 600.0
    assert login.options["safe_ips"] == ["10.0.0.0/8"]  # from [common]
    device = config.filter("device")
    assert device is not None
    assert device.options["time_window"] == 30.0
    assert device.options["safe_ips"] == []  # the table's own value wins
    assert device.options["trusted_proxies"] == ["192.0.2.1"]
    store = config.build_store()
    assert isinstance(store, MemoryStore)
    assert store.max_keys == 5000
    assert "filters: dos, device, login" in config.describe()


def test_policies_get_every_option_and_share_one_store(tmp_path: Path) -> None:
    config = load(write(tmp_path, FULL), env={})
    store = MemoryStore()
    dos, device, login = config.policies(store)
    assert isinstance(dos, DosPolicy) and dos.limit == 3
    assert isinstance(device, DeviceJailPolicy) and device.jail_duration == 600.0
    assert isinstance(login, InvalidLoginPolicy)
    assert "10.1.2.3" in dos.safe_ips and "10.1.2.3" not in device.safe_ips
    # filters other than memory are wrapped in a GuardedStore; memory is used as is
    assert dos.store is device.store is login.store is store


def test_absent_table_means_filter_off_and_enabled_false_too() -> None:
    config = loads("[dos]\n[login]\nenabled = false\n", env={})
    assert config.enabled == ("dos",)
    assert "(off: device, login)" in config.describe()


def test_defaults_without_a_file_use_the_environment_only() -> None:
    config = load(None, env={"MAILGUARD_DOS__MAX_REQUESTS_PER_SEC": "12"})
    assert config.enabled == ("dos",)
    dos = config.filter("dos")
    assert dos is not None and dos.options == {"max_requests_per_sec": 12}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("25m", 1500.0), ("600s", 600.0), ("1h", 3600.0), ("1500ms", 1.5), (90, 90.0)],
)
def test_durations_accept_units(text: object, seconds: float) -> None:
    value = f'"{text}"' if isinstance(text, str) else str(text)
    config = loads(f"[login]\nblock_duration = {value}\n", env={})
    login = config.filter("login")
    assert login is not None and login.options["block_duration"] == seconds


# -------------------------------------------------------------- environment


def test_env_overrides_win_over_the_file_and_create_tables(tmp_path: Path) -> None:
    env = {
        "MAILGUARD_DOS__MAX_REQUESTS_PER_SEC": "50",
        "mailguard_login__block_duration": "1h",  # any case
        "MAILGUARD_COMMON__SAFE_IPS": '["192.168.0.0/16", "::1"]',
        "MAILGUARD_DEVICE__ENABLED": "false",
        "MAILGUARD_CONFIG": "/etc/mailguard.toml",  # not an override: no "__"
        "PATH": "/usr/bin",
    }
    config = load(write(tmp_path, FULL), env=env)
    dos, login = config.filter("dos"), config.filter("login")
    assert dos is not None and login is not None
    assert dos.options["max_requests_per_sec"] == 50
    assert login.options["block_duration"] == 3600.0
    assert dos.options["safe_ips"] == ["192.168.0.0/16", "::1"]
    assert config.enabled == ("dos", "login")


def test_env_store_override_switches_to_redis_without_connecting(tmp_path: Path) -> None:
    env = {"MAILGUARD_STORE__TYPE": "redis", "MAILGUARD_STORE__URL": "redis://127.0.0.1:1/0"}
    config = load(write(tmp_path, "[dos]\n"), env=env)
    assert config.store.type == "redis"
    assert config.store.url == "redis://127.0.0.1:1/0"
    assert config.store.prefix == "mailguard:"
    assert "redis redis://127.0.0.1:1/0" in config.describe()


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("50", 50),
        ("-1", -1),
        ("1.5", 1.5),
        ("true", True),
        ('["a", "b"]', ["a", "b"]),
        ('"quoted"', "quoted"),
        ("25m", "25m"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("", ""),
    ],
)
def test_env_values_are_toml_when_they_parse(text: str, value: object) -> None:
    assert env_value(text) == value


def test_env_errors_name_the_variable() -> None:
    error = error_of("[dos]\n", {"MAILGUARD_DOS__MAX_REQUESTS_PER_SEC": "0"})
    assert str(error).startswith("MAILGUARD_DOS__MAX_REQUESTS_PER_SEC (environment): ")
    assert error.key == "dos.max_requests_per_sec"
    assert ">= 1" in error.problem
    error = error_of("", {"MAILGUARD_DSO__X": "1"})
    assert error.where == "MAILGUARD_DSO__X (environment)"
    assert "did you mean [dos]?" in str(error)


# ------------------------------------------------------------------- errors


def test_error_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    path = write(tmp_path, "[dos]\nmax_request_per_sec = 5\n", "site.toml")
    with pytest.raises(ConfigError) as caught:
        load(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: dos.max_request_per_sec: unknown option")
    assert "did you mean 'max_requests_per_sec'?" in message
    assert isinstance(caught.value, ValueError)


def test_error_bad_duration_names_file_and_key() -> None:
    error = error_of('[login]\nblock_duration = "soon"\n')
    assert str(error).startswith("mailguard.toml: login.block_duration: 'soon' is not a duration")


def test_error_bad_type_comes_from_the_policy_with_the_key() -> None:
    error = error_of('[dos]\nmax_requests_per_sec = "many"\n')
    assert str(error) == (
        "mailguard.toml: dos.max_requests_per_sec: must be a whole number, got 'many'"
    )
    error = error_of("[dos]\nenabled = 1\n")
    assert error.key == "dos.enabled" and "true or false" in error.problem


def test_error_unknown_table_and_stray_keys() -> None:
    error = error_of("[logins]\n")
    assert error.key == "[logins]" and "did you mean [login]?" in error.problem
    error = error_of('safe_ips = ["10.0.0.0/8"]\n')
    assert error.key == "safe_ips" and "[common]" in error.problem
    error = error_of("[common]\nmax_requests_per_sec = 3\n")
    assert error.key == "common.max_requests_per_sec"


def test_error_in_common_names_the_common_table() -> None:
    error = error_of('[common]\nsafe_ips = ["10.0.0.300"]\n[dos]\n')
    assert error.key == "common.safe_ips"
    assert "10.0.0.300" in error.problem


def test_disabled_filter_is_still_checked_and_not_installed() -> None:
    error = error_of("[device]\nenabled = false\nmax_requests = 0\n")
    assert error.key == "device.max_requests"
    config = loads("[dos]\n[device]\nenabled = false\nmax_requests = 5\n", env={})
    app = wrap(_asgi_ok, config, "asgi")
    assert isinstance(app, mailguard.asgi.DosFilter)
    assert app.app is _asgi_ok  # no DeviceJail in between


def test_python_only_options_are_refused_in_files() -> None:
    error = error_of('[dos]\nstore = "x"\n')
    assert error.key == "dos.store" and "[store]" in error.problem
    error = error_of('[login]\non_event = "alert"\n')
    assert "on_event=" in error.problem


def test_store_errors() -> None:
    assert error_of('[store]\ntype = "disk"\n').key == "store.type"
    error = error_of('[store]\nurl = "redis://x"\n')
    assert error.key == "store.url" and 'type = "redis"' in error.problem
    assert "required" in error_of('[store]\ntype = "redis"\n').problem
    error = error_of('[store]\ntype = "redis"\nurl = "http://x"\n')
    assert "redis://" in error.problem
    assert error_of("[store]\nmax_keys = 0\n").key == "store.max_keys"
    error = error_of('[store]\ntype = "redis"\nurl = "redis://x"\nsocket_timout = 1\n')
    assert error.key == "store.socket_timout" and "socket_timeout" in error.problem


def test_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml", env={})
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load(write(tmp_path, "[dos\n", "bad.toml"), env={})


# -------------------------------------------------------------- protect()


async def _asgi_ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
    status = 401 if scope["path"] == "/login" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _wsgi_ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    status = "401 Unauthorized" if environ["PATH_INFO"] == "/login" else "200 OK"
    start_response(status, [("content-type", "text/plain")])
    return [b"ok"]


def _stack(kind: str, path: Path, store: MemoryStore) -> Stack:
    if kind == "asgi":
        return AsgiStack(lambda app: mailguard.asgi.protect(app, path, store=store))
    return WsgiStack(lambda app: mailguard.wsgi.protect(app, path, store=store))


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_protect_enforces_the_file_dos_limit(kind: str, tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    clock = FakeClock()
    stack = _stack(kind, path, MemoryStore(clock=clock))
    statuses = [stack.request("/inbox")[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 503]
    assert stack.request("/inbox", client="10.1.2.3")[0] == 200  # common safe_ips
    clock.advance(1.0)
    assert stack.request("/inbox")[0] == 200


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_protect_wraps_in_order_on_one_store(kind: str, tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    module: Any = mailguard.asgi if kind == "asgi" else mailguard.wsgi
    inner = _asgi_ok if kind == "asgi" else _wsgi_ok
    app = module.protect(inner, path)
    assert isinstance(app, module.DosFilter)
    assert isinstance(app.app, module.DeviceJail)
    assert isinstance(app.app.app, module.InvalidLoginFilter)
    assert app.app.app.app is inner
    stores = {id(f.policy.store) for f in (app, app.app, app.app.app)}
    assert len(stores) == 1
    assert isinstance(app.policy.store, MemoryStore)
    assert app.policy.store.max_keys == 5000  # built from [store]


def test_protect_login_block_asgi(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.replace("max_requests_per_sec = 3", "max_requests_per_sec = 100"))
    store = MemoryStore(clock=FakeClock())
    events: list[str] = []
    app = mailguard.asgi.protect(
        _asgi_ok, path, store=store, on_event=lambda e: events.append(e.action)
    )

    async def run() -> list[int]:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://mail.test") as client:
            return [(await client.post("/login")).status_code for _ in range(4)]

    statuses = asyncio.run(run())
    assert statuses[:3] == [401, 401, 401]
    assert statuses[3] == 503
    [block] = store.blocks("login")
    assert block.key == "203.0.113.9"
    assert block.until - block.since == 1500.0  # block_duration = "25m"
    assert events.count("failure") == 3 and "blocked" in events


def test_protect_login_block_wsgi(tmp_path: Path) -> None:
    path = write(tmp_path, FULL.replace("max_requests_per_sec = 3", "max_requests_per_sec = 100"))
    store = MemoryStore(clock=FakeClock())
    client = Client(mailguard.wsgi.protect(_wsgi_ok, path, store=store))
    environ = {"REMOTE_ADDR": "203.0.113.9"}
    statuses = [client.post("/login", environ_base=environ).status_code for _ in range(4)]
    assert statuses == [401, 401, 401, 503]
    assert [b.key for b in store.blocks("login")] == ["203.0.113.9"]


def test_protect_accepts_a_config_object_and_rejects_bad_interface() -> None:
    config = loads("[dos]\nmax_requests_per_sec = 1\n", env={})
    assert isinstance(config, Config)
    app = mailguard.wsgi.protect(_wsgi_ok, config)
    assert isinstance(app, mailguard.wsgi.DosFilter) and app.policy.limit == 1
    with pytest.raises(ValueError, match="interface"):
        wrap(_wsgi_ok, config, "cgi")  # type: ignore[call-overload]


def test_protect_without_filters_warns(caplog: pytest.LogCaptureFixture) -> None:
    config = loads("[dos]\nenabled = false\n", env={})
    with caplog.at_level(logging.WARNING, logger="mailguard.config"):
        app = mailguard.asgi.protect(_asgi_ok, config)
    assert app is _asgi_ok
    assert "enables no filter" in caplog.text


def test_protect_reports_errors_before_serving(tmp_path: Path) -> None:
    path = write(tmp_path, "[dos]\ndelay_ms = -5\n")
    with pytest.raises(ConfigError, match=r"dos\.delay_ms: must be a whole number >= -1"):
        mailguard.asgi.protect(_asgi_ok, path)


def test_sample_file_in_examples_is_valid() -> None:
    sample = Path(__file__).resolve().parent.parent / "examples" / "mailguard.toml"
    config = load(sample, env={})
    assert config.enabled == ("dos", "login")
    login = config.filter("login")
    assert login is not None and login.options["block_duration"] == 900.0
