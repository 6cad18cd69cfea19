"""Issue 13: configuration that would silently switch protection off is refused at
start, naming the key: in Python (``option: problem``) and through a TOML file
(``mailguard check-config`` exits 2 with ``file: table.key: problem``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mailguard.cli import main
from mailguard.policies import DeviceJailPolicy, DosPolicy, InvalidLoginPolicy
from mailguard.stores.memory import MemoryStore

# (policy, table, key, Python value, TOML value, words the problem must contain)
CASES: list[tuple[type[Any], str, str, Any, str, str]] = [
    (InvalidLoginPolicy, "login", "login_paths", [], "[]", "no request would ever be a login"),
    (InvalidLoginPolicy, "login", "login_methods", [], "[]", "no request would ever be a login"),
    (InvalidLoginPolicy, "login", "failure_statuses", [], "[]", "no login would ever count"),
    (InvalidLoginPolicy, "login", "failure_interval", 0.5, '"500ms"', "at least 1 second"),
    (InvalidLoginPolicy, "login", "block_duration", 0.2, "0.2", "at least 1 second"),
    (InvalidLoginPolicy, "login", "max_failed_logins", 10_001, "10001", "<= 10000"),
    (InvalidLoginPolicy, "login", "trusted_proxies", ["0.0.0.0/0"], '["0.0.0.0/0"]', "every"),
    (InvalidLoginPolicy, "login", "trusted_proxies", ["::/0"], '["::/0"]', "every address"),
    (DosPolicy, "dos", "trusted_proxies", ["10.0.0.0/7"], '["10.0.0.0/7"]', "every address"),
    (DosPolicy, "dos", "trusted_proxies", ["2000::/3"], '["2000::/3"]', "every address"),
    (DosPolicy, "dos", "trusted_proxies", ["::ffff:0:0/96"], '["::ffff:0:0/96"]', "every"),
    (DosPolicy, "dos", "max_requests_per_sec", 1_000_001, "1000001", "<= 1000000"),
    (DeviceJailPolicy, "device", "max_requests", 10**7, "10000000", "<= 1000000"),
    (DeviceJailPolicy, "device", "time_window", 0.5, '"500ms"', "at least 1 second"),
    (DeviceJailPolicy, "device", "jail_duration", 0, "0", "> 0"),
]


@pytest.mark.parametrize(("policy", "table", "key", "value", "toml", "words"), CASES)
def test_a_silent_off_switch_is_refused_in_python(
    policy: type[Any], table: str, key: str, value: Any, toml: str, words: str
) -> None:
    with pytest.raises(ValueError) as caught:
        policy(**{key: value})
    assert str(caught.value).startswith(f"{key}: ") and words in str(caught.value)
    assert getattr(caught.value, "option", None) == key


@pytest.mark.parametrize(("policy", "table", "key", "value", "toml", "words"), CASES)
def test_a_silent_off_switch_is_refused_by_check_config(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    policy: type[Any],
    table: str,
    key: str,
    value: Any,
    toml: str,
    words: str,
) -> None:
    path = tmp_path / "mailguard.toml"
    path.write_text(f"[{table}]\n{key} = {toml}\n")
    code = main(["check-config", str(path), "--no-env"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith(f"mailguard: {path}: {table}.{key}: ") and words in err


def test_a_tiny_memory_store_is_refused_in_a_file_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "mailguard.toml"
    path.write_text("[store]\nmax_keys = 999\n[dos]\n")
    assert main(["check-config", str(path), "--no-env"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mailguard: {path}: store.max_keys: must be at least 1000")
    path.write_text("[store]\nmax_keys = 1000\n[dos]\n")
    assert main(["check-config", str(path), "--no-env"]) == 0
    capsys.readouterr()
    assert MemoryStore(max_keys=10).max_keys == 10  # Python callers (tests) may go lower


def test_what_still_works() -> None:
    """Shapes that look empty but still guard something are accepted."""
    InvalidLoginPolicy(login_paths=[], count_basic_auth=True)  # HTTP auth is counted
    InvalidLoginPolicy(preset="activesync")
    InvalidLoginPolicy(preset="zimbra")  # failure_statuses=() with is_failure
    InvalidLoginPolicy(failure_statuses=[], is_failure=lambda status, headers: status == 200)
    InvalidLoginPolicy(failure_interval=1, block_duration="1s", max_failed_logins=10_000)
    for proxies in (
        ["10.0.0.0/8"],
        ["172.16.0.0/12", "192.168.0.0/16"],
        ["fc00::/7", "fe80::/10"],
        ["2001:db8::/32"],
        ["::ffff:10.0.0.0/104"],
        ["203.0.113.7", "::1"],
    ):
        DosPolicy(trusted_proxies=proxies)
    with pytest.raises(ValueError, match=r"^auth_paths: is empty"):
        InvalidLoginPolicy(count_basic_auth=True, auth_paths=[])
