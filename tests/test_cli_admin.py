"""mailguard block, the audit trail, exit codes, check-config in force, completion, --version."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port

from mailguard import __version__
from mailguard.audit import block_key, who
from mailguard.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_STORE, EXIT_USAGE, main
from mailguard.core import FakeClock
from mailguard.stores.memory import MemoryStore

T0 = 1_700_000_000.0
ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], capsys: pytest.CaptureFixture[str], **kw: object) -> tuple[int, str, str]:
    code = main(argv, **kw)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    return code, out, err


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mailguard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environ,
    )


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(clock=FakeClock(T0))


@pytest.fixture
def audit_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="mailguard.audit")
    return caplog


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mailguard.audit"]


# ------------------------------------------------------------------- keys


def test_block_key_is_what_the_filters_look_up() -> None:
    assert block_key("203.0.113.7", "login") == "203.0.113.7"
    assert block_key("::ffff:203.0.113.7", "login") == "203.0.113.7"
    assert block_key("2001:db8:1:2::5", "login") == "2001:db8:1:2::/64"
    assert block_key("2001:DB8:1:2::/64", "login") == "2001:db8:1:2::/64"
    assert block_key("2001:db8:1:2::5", "login", ipv6_prefix=56) == "2001:db8:1::/56"
    assert block_key("Appl-F17X", "device") == "applf17x"
    assert block_key("Appl-F17X/CORP\\JDoe", "device") == "applf17x/jdoe"
    for bad, kind in [("10.0.0.0/8", "login"), ("2001:db8::/40", "login"), ("nope", "login"),
                      ("--", "device"), ("abc/", "device")]:  # fmt: skip
        with pytest.raises(ValueError):
            block_key(bad, kind)


def test_who_prefers_sudo_user() -> None:
    assert who({"SUDO_USER": "alice", "USER": "root"}) == "alice"
    assert who({"USER": "bob"}) == "bob"
    assert who({}) != ""


# ------------------------------------------------------------------ block


def test_block_an_address_with_audit_line(
    store: MemoryStore, capsys: pytest.CaptureFixture[str], audit_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("SUDO_USER", "alice")
    code, out, _ = run(
        ["block", "203.0.113.7", "--for", "1h", "--reason", 'phishing "run"'], capsys, store=store
    )
    assert code == EXIT_OK
    assert out.startswith("blocked login 203.0.113.7 for 1h 00m")
    [block] = store.blocks()
    assert (block.kind, block.key, block.reason) == ("login", "203.0.113.7", 'phishing "run"')
    assert block.until - block.since == 3600
    assert lines(audit_log) == [
        'mailguard audit block key="203.0.113.7" kind=login seconds=3600'
        ' reason="phishing \\"run\\"" by=alice'
    ]


def test_block_ipv6_network_and_device(
    store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["block", "2001:db8:1:2::99", "--for", "30m"], capsys, store=store)[0] == 0
    assert run(["block", "Appl-F17X/jdoe", "--kind", "device", "--for", "600"], capsys,
               store=store)[0] == 0  # fmt: skip
    assert {(b.kind, b.key, b.reason) for b in store.blocks()} == {
        ("login", "2001:db8:1:2::/64", "manual"),
        ("device", "applf17x/jdoe", "manual"),
    }
    # and unblock finds them as an admin types them
    assert run(["unblock", "2001:db8:1:2::5"], capsys, store=store)[0] == 0
    assert run(["unblock", "Appl-F17X", "--kind", "device"], capsys, store=store)[0] == 0
    assert store.blocks() == []


def test_a_manual_block_refuses_at_the_filter(store: MemoryStore) -> None:
    from mailguard.policies import InvalidLoginPolicy

    assert main(["block", "203.0.113.7", "--for", "1h"], store=store) == 0
    policy = InvalidLoginPolicy(store=store)
    verdict = policy.begin("203.0.113.7", "jdoe")
    assert not verdict.allowed and verdict.reason == "blocked"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["block", "203.0.113.7"], "--for"),
        (["block", "203.0.113.7", "--for", "soon"], "is not a duration"),
        (["block", "203.0.113.7", "--for", "0"], "--for"),
        (["block", "203.0.113.7", "--for", "1h", "--kind", "dos"], "DosFilter keeps no blocks"),
        (["block", "203.0.113.7", "--for", "1h", "--kind", "nope"], "login or device"),
        (["block", "10.0.0.0/8", "--for", "1h"], "per address"),
        (["block", "mail.example", "--for", "1h"], "not an IP address"),
        (["block", "203.0.113.7", "--for", "1h", "--reason", ""], "--reason"),
        (["completion", "fish"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys, store=store)
    assert code == EXIT_USAGE and out == "" and message in err
    assert err.count("\n") == 1 and store.blocks() == []


# ------------------------------------------------------------- exit codes


def test_exit_codes_0_1_for_unblock(
    store: MemoryStore, capsys: pytest.CaptureFixture[str], audit_log: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("SUDO_USER", raising=False)
    monkeypatch.setenv("USER", "bob")
    assert run(["unblock", "203.0.113.7"], capsys, store=store)[0] == EXIT_NOT_FOUND
    assert run(["unblock", "--all"], capsys, store=store)[0] == EXIT_NOT_FOUND
    store.block("login", "203.0.113.7", 60, "failures")
    assert run(["unblock", "--all", "--kind", "device"], capsys, store=store)[0] == EXIT_NOT_FOUND
    assert run(["unblock", "--all"], capsys, store=store)[0] == EXIT_OK
    assert lines(audit_log) == [
        'mailguard audit unblock key="203.0.113.7" kind=any lifted=0 by=bob',
        'mailguard audit unblock key="*" kind=any lifted=0 by=bob',
        'mailguard audit unblock key="*" kind=device lifted=0 by=bob',
        'mailguard audit unblock key="*" kind=any lifted=1 by=bob',
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"mailguard {__version__}"


# ------------------------------------------------------------ check-config


def test_check_config_prints_values_in_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.toml"
    path.write_text(
        '[common]\nsafe_ips = ["10.0.0.0/8"]\n[dos]\nmax_requests_per_sec = 20\n'
        '[login]\nblock_duration = "25m"\nenforce = false\n[device]\nenabled = false\n'
    )
    code, out, err = run(["check-config", str(path), "--no-env"], capsys)
    assert code == 0 and err == ""
    assert f"max_requests_per_sec = 20  # {path}: dos.max_requests_per_sec" in out
    assert "delay_ms = -1  # default" in out
    assert f'safe_ips = ["10.0.0.0/8"]  # {path}: common.safe_ips' in out
    assert f"block_duration = 1500  # {path}: login.block_duration" in out
    assert f"enforce = false  # {path}: login.enforce" in out
    assert "max_failed_logins = 10  # default" in out
    assert "[device]  # off" in out
    assert "store: in-process memory" in out
    assert 'namespace = "login"  # default' in out
    path.write_text('[login]\npreset = "zimbra"\n')
    code, out, _ = run(["check-config", str(path), "--no-env"], capsys)
    assert code == 0 and 'login_fields = {loginOp = "login"}  # preset zimbra' in out
    assert "count_basic_auth = true  # preset zimbra" in out


@pytest.mark.servers
def test_check_config_tries_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dead = tmp_path / "dead.toml"
    dead.write_text(f'[store]\ntype = "redis"\nurl = "redis://127.0.0.1:{free_port()}/0"\n[dos]\n')
    code, out, err = run(["check-config", str(dead), "--no-env"], capsys)
    assert code == EXIT_STORE and "OK" in out and err.startswith("mailguard: store redis://")
    code, out, _ = run(["check-config", str(dead), "--no-env", "--no-connect"], capsys)
    assert code == EXIT_OK and "not tried" in out
    with RedisServer.for_tests() as server:
        live = tmp_path / "live.toml"
        live.write_text(f'[store]\ntype = "redis"\nurl = "{server.url}"\n[dos]\n')
        code, out, _ = run(["check-config", str(live), "--no-env"], capsys)
        assert code == EXIT_OK and "answered" in out


# ------------------------------------------------------------- real redis


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


@pytest.mark.servers
def test_block_through_redis_and_config_with_audit_on_stderr(
    server: RedisServer, tmp_path: Path
) -> None:
    from mailguard.stores.redis import RedisStore

    env = {"SUDO_USER": "carol"}
    base = ["--redis", server.url, "--prefix", "blocktest:"]
    done = cli("block", "198.51.100.4", "--for", "2h", "--reason", "manual test", *base, env=env)
    assert done.returncode == 0, done.stderr
    assert "blocked login 198.51.100.4 for 2h 00m" in done.stdout
    assert done.stderr.rstrip().endswith(
        'mailguard audit block key="198.51.100.4" kind=login seconds=7200'
        ' reason="manual test" by=carol'
    )
    config = tmp_path / "mailguard.toml"
    config.write_text(
        f'[store]\ntype = "redis"\nurl = "{server.url}"\nprefix = "blocktest:"\n'
        "[login]\nipv6_prefix = 48\n"
    )
    done = cli("block", "2001:db8:1:2::1", "--for", "60", "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    store = RedisStore(server.url, prefix="blocktest:")
    try:
        assert sorted(b.key for b in store.blocks("login")) == ["198.51.100.4", "2001:db8:1::/48"]
        done = cli("unblock", "--all", "--config", str(config), env=env)
        assert done.returncode == 0 and 'key="*" kind=any lifted=2 by=carol' in done.stderr
        assert cli("unblock", "--all", "--config", str(config)).returncode == EXIT_NOT_FOUND
    finally:
        store.unblock_all()
        store.close()


def test_store_unreachable_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = run(["block", "192.0.2.1", "--for", "1h", "--redis", url], capsys)
    assert code == EXIT_STORE and "Traceback" not in err


# ------------------------------------------------------------- completion


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_verbs_and_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(["completion", "bash"], capsys)
    assert code == 0

    def complete(*words: str) -> list[str]:
        probe = (
            f"{script}\nCOMP_WORDS=(mailguard {' '.join(words)}); "
            f'COMP_CWORD={len(words)}; _mailguard; echo "${{COMPREPLY[@]}}"'
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert complete("bl") == ["blocks", "block"]
    assert complete("block", "--f") == ["--for"]
    assert complete("unblock", "--kind", "d") == ["dos", "device"]
    assert complete("completion", "") == ["bash", "zsh", "--help"]


def test_zsh_completion_uses_bashcompinit(capsys: pytest.CaptureFixture[str]) -> None:
    code, script, _ = run(["completion", "zsh"], capsys)
    assert code == 0 and "bashcompinit" in script and "complete -o default -F _mailguard" in script
    if shutil.which("zsh"):
        done = subprocess.run(
            ["zsh", "-fc", f"{script}\nprint ok"], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_block_key_takes_the_wider_ipv6_networks_the_login_filter_blocks() -> None:
    from mailguard.audit import block_key

    assert block_key("2001:db8:1::/48", "login") == "2001:db8:1::/48"
    assert block_key("2001:db8:1:200::/56", "login") == "2001:db8:1:200::/56"
    assert block_key("2001:db8:1:2::9", "login") == "2001:db8:1:2::/64"
    with pytest.raises(ValueError, match="/64, /56, /48"):
        block_key("2001:db8::/40", "login")
