"""Declared options and the filter registry: one place each, read by everyone."""

from __future__ import annotations

import inspect
import pickle
import typing
from pathlib import Path
from typing import Any

import pytest

import mailguard.asgi
import mailguard.wsgi
from mailguard import MemoryStore, RedisStore
from mailguard.config import ConfigError, is_duration_key, loads
from mailguard.options import REQUIRED, declared, named_option, option_error
from mailguard.policies import (
    FILTERS,
    KINDS,
    POLICIES,
    DeviceJailPolicy,
    DeviceOptions,
    DosOptions,
    DosPolicy,
    InvalidLoginPolicy,
    LoginOptions,
    Policy,
    PolicyOptions,
    filter_kind,
)

ROOT = Path(__file__).resolve().parent.parent
OPTIONS_OF = {
    DosPolicy: DosOptions,
    InvalidLoginPolicy: LoginOptions,
    DeviceJailPolicy: DeviceOptions,
}
STORES = (MemoryStore, RedisStore)


# ----------------------------------------------------------------- registry


def test_registry_order_and_names() -> None:
    assert KINDS == ("dos", "device", "login")  # outermost first
    assert [f.adapter for f in FILTERS] == ["DosFilter", "DeviceJail", "InvalidLoginFilter"]
    assert dict(POLICIES) == {
        "dos": DosPolicy,
        "device": DeviceJailPolicy,
        "login": InvalidLoginPolicy,
    }
    assert filter_kind("login").block_action == "blocked"
    with pytest.raises(KeyError):
        filter_kind("nope")


@pytest.mark.parametrize("module", [mailguard.asgi, mailguard.wsgi])
def test_every_kind_has_its_adapter_class(module: Any) -> None:
    assert list(module.FILTER_CLASSES) == list(KINDS)
    for entry in FILTERS:
        cls = getattr(module, entry.adapter)
        assert module.FILTER_CLASSES[entry.kind] is cls
        assert cls.policy_type is entry.policy
        assert entry.kind == entry.policy.kind


# ------------------------------------------------------------- declarations


def _signature_keywords(cls: type) -> dict[str, str]:
    """{name: annotation text} of every keyword ``cls(...)`` takes, up its hierarchy."""
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind is p.KEYWORD_ONLY:
                found.setdefault(p.name, str(p.annotation))
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return found


@pytest.mark.parametrize("policy", list(OPTIONS_OF))
def test_typeddict_lists_the_same_keywords_as_the_constructor(policy: type[Policy]) -> None:
    typed: Any = OPTIONS_OF[policy]
    written = {
        name: ref.__forward_arg__ if isinstance(ref, typing.ForwardRef) else ref
        for name, ref in typed.__annotations__.items()
    }
    assert written == _signature_keywords(policy)
    assert typed.__required_keys__ == frozenset()
    assert set(PolicyOptions.__annotations__) == set(_signature_keywords(Policy))


@pytest.mark.parametrize("cls", [*POLICIES.values(), *STORES])
def test_every_option_is_declared_with_a_doc_and_default(cls: type) -> None:
    options = declared(cls)
    assert options, cls
    for option in options.values():
        assert option.doc, f"{cls.__name__}.{option.name} has no :param: line"
        assert not isinstance(option.type, str), f"{option.name}: annotation not evaluated"
        if option.name != "url":
            assert option.default is not REQUIRED


def test_durations_are_known_by_type() -> None:
    classes: list[type] = [*POLICIES.values(), *STORES]
    durations = {
        cls.__name__: {o.name for o in declared(cls).values() if o.is_duration} for cls in classes
    }
    assert durations == {
        "DosPolicy": set(),
        "DeviceJailPolicy": {"time_window", "jail_duration", "identity_window", "identity_jail"},
        "InvalidLoginPolicy": {
            "failure_interval",
            "block_duration",
            "max_block_duration",
            "offender_memory",
            "attempt_timeout",
        },
        "MemoryStore": set(),
        "RedisStore": {"socket_timeout", "connect_timeout", "breaker_cooldown", "block_cache_ttl"},
    }
    assert is_duration_key("identity_jail") and is_duration_key("breaker_cooldown")
    assert not is_duration_key("max_requests") and not is_duration_key("account_tarpit")


def test_declared_is_read_once_and_follows_options_up_the_hierarchy() -> None:
    assert declared(DosPolicy) is declared(DosPolicy)
    names = list(declared(DosPolicy))
    assert names[0] == "max_requests_per_sec" and "safe_ips" in names and "store" in names
    assert declared(DosPolicy)["store"].owner is Policy
    assert declared(DosPolicy)["key_func"].is_callable
    assert not declared(DosPolicy)["exempt_paths"].is_callable

    class Loose:
        def __init__(self, **anything: Any) -> None: ...

    with pytest.raises(TypeError, match="not declared"):
        declared(Loose)


# ------------------------------------------------------------------- errors


def test_option_error_is_a_plain_value_error_that_names_the_option() -> None:
    error = option_error("delay_ms", "must be a whole number >= -1, got -5")
    assert type(error) is ValueError
    assert str(error) == "delay_ms: must be a whole number >= -1, got -5"
    assert named_option(error) == ("delay_ms", "must be a whole number >= -1, got -5")
    assert named_option(ValueError("delay_ms: looks the same")) is None  # text is never parsed
    assert named_option(pickle.loads(pickle.dumps(error))) == named_option(error)
    with pytest.raises(ValueError) as caught:
        DosPolicy(delay_ms=-5)
    assert named_option(caught.value) == ("delay_ms", "must be a whole number >= -1, got -5")
    with pytest.raises(ValueError) as caught:
        DosPolicy(safe_ips=["10.0.0.300"])
    assert named_option(caught.value) is not None
    assert named_option(caught.value)[0] == "safe_ips"  # type: ignore[index]
    with pytest.raises(ValueError) as caught:
        MemoryStore(max_keys=0)
    assert named_option(caught.value) == ("max_keys", "must be a whole number >= 1, got 0")


def _config_error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        loads(text, source="site.toml", env={})
    return caught.value


def test_config_errors_name_the_key_from_the_error_not_its_text() -> None:
    error = _config_error('[common]\ntrusted_proxies = ["192.0.2.1/24"]\n[login]\n')
    assert (error.where, error.key) == ("site.toml", "common.trusted_proxies")
    assert "did you mean '192.0.2.0/24'?" in error.problem
    error = _config_error("[login]\nblock_duration = 600\nmax_block_duration = 60\n")
    assert error.key == "login.max_block_duration" and "at least block_duration" in error.problem
    error = _config_error('[login]\npreset = "squirrelmail"\n')
    assert error.key == "login.preset" and error.problem.startswith("must be one of")
    # an error about an option the file did not set names the table
    error = _config_error("[login]\nblock_duration = 100000\n")
    assert error.key == "[login]" and "max_block_duration" in error.problem


def test_config_reads_durations_and_python_only_options_from_the_declarations() -> None:
    config = loads('[device]\nidentity_jail = "14h"\n', env={})
    device = config.filter("device")
    assert device is not None and device.options["identity_jail"] == 50400.0
    config = loads(
        '[store]\ntype = "redis"\nurl = "redis://x"\nbreaker_cooldown = "500ms"\n', env={}
    )
    assert config.store.options["breaker_cooldown"] == 0.5  # no suffix to guess it by
    error = _config_error('[login]\nis_failure = "x"\n')
    assert error.key == "login.is_failure" and "Python callable" in error.problem
    error = _config_error('[store]\nclock = "x"\n')
    assert error.key == "store.clock"


# ------------------------------------------------------------------- typing


def test_a_misspelt_keyword_is_a_type_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """mypy (strict, the project's settings) on tests/typing_check.py: a few seconds."""
    api = pytest.importorskip("mypy.api")
    monkeypatch.chdir(ROOT)  # mypy finds this checkout's mailguard from here
    out, err, code = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), str(ROOT / "tests" / "typing_check.py")]
    )
    assert code == 0, out + err
