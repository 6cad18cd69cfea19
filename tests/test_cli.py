"""The mailguard command: in-process with capsys, against a MemoryStore and a real redis-server."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port

from mailguard import cli
from mailguard.cli import main
from mailguard.core import FakeClock
from mailguard.stores.memory import MemoryStore

SAMPLE = Path(__file__).resolve().parent / "data" / "zmprov-gacf.txt"
T0 = 1_700_000_000.0


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore(clock=FakeClock(T0))
    store.block("login", "203.0.113.7", 1500, "failures")
    store.block("login", "2001:db8:1:2::/64", 600, "failures")
    store.block("device", "appl1234/jdoe", 600, "rate")
    store.block("device", "appl1234/other", 300, "rate")
    store.block("dos", "198.51.100.9", 60, "rate")
    return store


def run(argv: list[str], capsys: pytest.CaptureFixture[str], **kw: object) -> tuple[int, str, str]:
    code = main(argv, **kw)  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------- help, usage


def test_help_lists_verbs_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for verb in ("blocks", "unblock", "stats", "check-config", "import-zimbra", "demo"):
        assert verb in out
    assert "exit codes:" in out and "3  the store could not be reached" in out


def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["frobnicate"], capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "invalid choice" in err
    code, _, err = run([], capsys)
    assert code == 2 and "usage:" in err
    code, _, err = run(["unblock", "--all", "1.2.3.4"], capsys, store=MemoryStore())
    assert code == 2 and "ADDRESS or DEVICE, or --all" in err
    code, _, err = run(["unblock"], capsys, store=MemoryStore())
    assert code == 2


def test_store_must_be_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MAILGUARD_CONFIG", raising=False)
    for name in [n for n in os.environ if n.startswith("MAILGUARD_STORE__")]:
        monkeypatch.delenv(name)
    code, _, err = run(["blocks"], capsys)
    assert code == 2 and "give --redis URL or --config FILE" in err


def test_memory_store_config_points_to_the_admin_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[dos]\n")
    code, _, err = run(["blocks", "--config", str(path)], capsys)
    assert code == 2 and "in-memory store" in err and "AdminApp" in err


# ------------------------------------------------------------ blocks, stats


def test_blocks_table(store: MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["blocks"], capsys, store=store)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "KEY", "REASON", "SINCE", "LEFT"]
    assert len(lines) == 6
    assert lines[1].split()[:3] == ["dos", "198.51.100.9", "rate"]  # soonest end first
    assert lines[1].endswith("1m 00s")
    assert lines[-1].split()[:2] == ["login", "203.0.113.7"] and lines[-1].endswith("25m 00s")
    code, out, _ = run(["blocks", "--kind", "device"], capsys, store=store)
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["appl1234/other", "appl1234/jdoe"]


def test_blocks_json(store: MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["blocks", "--json", "--kind", "login"], capsys, store=store)
    assert code == 0
    data = json.loads(out)
    assert data[-1] == {
        "kind": "login",
        "key": "203.0.113.7",
        "reason": "failures",
        "since": T0,
        "until": T0 + 1500,
        "left": 1500.0,
    }


def test_no_blocks(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["blocks"], capsys, store=MemoryStore())
    assert code == 0 and out.strip() == "no live blocks"
    code, out, _ = run(["blocks", "--json"], capsys, store=MemoryStore())
    assert json.loads(out) == []


def test_keys_from_requests_are_quoted(capsys: pytest.CaptureFixture[str]) -> None:
    store = MemoryStore()
    store.block("device", "evil\x1b[2J/x", 60, "rate")
    _, out, _ = run(["blocks"], capsys, store=store)
    assert "\x1b" not in out and '"evil\\x1b[2J/x"' in out


def test_stats(store: MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["stats"], capsys, store=store)
    assert code == 0
    assert "live blocks: 5" in out
    assert "  device  2" in out and "  login   2" in out and "  dos     1" in out
    assert "keys in store: 5" in out
    code, out, _ = run(["stats", "--json"], capsys, store=store)
    assert json.loads(out) == {"blocks": {"device": 2, "dos": 1, "login": 2}, "total": 5, "keys": 5}


# ------------------------------------------------------------------ unblock


def test_unblock_address_every_kind(store: MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    store.block("dos", "203.0.113.7", 60, "rate")
    code, out, _ = run(["unblock", "203.0.113.7"], capsys, store=store)
    assert code == 0
    assert "lifted login block on 203.0.113.7" in out and "lifted dos block" in out
    assert all(b.key != "203.0.113.7" for b in store.blocks())


def test_unblock_kind_only(store: MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    store.block("dos", "203.0.113.7", 60, "rate")
    code, _, _ = run(["unblock", "203.0.113.7", "--kind", "dos"], capsys, store=store)
    assert code == 0
    assert [b.kind for b in store.blocks() if b.key == "203.0.113.7"] == ["login"]


def test_unblock_nothing_exits_1(store: MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["unblock", "192.0.2.200"], capsys, store=store)
    assert code == 1 and out == ""
    assert err.strip() == "mailguard: no block on 192.0.2.200"
    code, _, err = run(["unblock", "203.0.113.7", "--kind", "device"], capsys, store=store)
    assert code == 1 and "no device block" in err
    assert len(store.blocks()) == 5


def test_unblock_ipv6_address_lifts_its_network(
    store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["unblock", "2001:DB8:1:2::abcd"], capsys, store=store)
    assert code == 0 and "2001:db8:1:2::/64" in out
    assert all(b.key != "2001:db8:1:2::/64" for b in store.blocks())


def test_unblock_device_id_lifts_every_account(
    store: MemoryStore, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["unblock", "APPL-1234", "--kind", "device"], capsys, store=store)
    assert code == 0 and out.count("lifted device block") == 2
    assert store.blocks("device") == []
    assert len(store.blocks()) == 3


def test_unblock_all(store: MemoryStore, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["unblock", "--all", "--kind", "login"], capsys, store=store)
    assert code == 0 and out.strip() == "lifted 2 block(s) of kind login"
    assert {b.kind for b in store.blocks()} == {"device", "dos"}
    code, out, _ = run(["unblock", "--all"], capsys, store=store)
    assert code == 0 and "lifted 3 block(s)" in out and store.blocks() == []
    code, out, err = run(["unblock", "--all"], capsys, store=store)
    assert code == 1 and out == ""  # nothing to do: exit 1, as for one key with no block
    assert "no block to lift" in err


# ------------------------------------------------------------ configuration


def test_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[dos]\nmax_requests_per_sec = 20\n[login]\nblock_duration = "25m"\n')
    code, out, err = run(["check-config", str(good), "--no-env"], capsys)
    assert code == 0 and err == ""
    assert out.startswith(f"{good}: OK: store memory") and "filters: dos, login" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[login]\nblock_duration = "soon"\n')
    code, out, err = run(["check-config", str(bad)], capsys)
    assert code == 2 and out == ""
    assert err == f"mailguard: {bad}: login.block_duration: 'soon' is not a duration" + (
        " (use seconds, or e.g. '600s', '25m', '1h')\n"
    )
    code, _, err = run(["check-config", str(tmp_path / "none.toml")], capsys)
    assert code == 2 and "cannot read" in err and "Traceback" not in err


def test_check_config_applies_env_unless_told_not_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[dos]\n")
    monkeypatch.setenv("MAILGUARD_DOS__MAX_REQUESTS_PER_SEC", "0")
    assert run(["check-config", str(path)], capsys)[0] == 2
    assert run(["check-config", str(path), "--no-env"], capsys)[0] == 0


def test_check_config_warns_when_nothing_is_enabled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "m.toml"
    path.write_text("[dos]\nenabled = false\n")
    code, _, err = run(["check-config", str(path), "--no-env"], capsys)
    assert code == 0 and "enables no filter" in err


def test_check_config_on_a_serve_only_file_shows_serve_and_mailauth(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "serve.toml"
    secret = "s3cret-0123456789-abcdef"
    path.write_text(
        f'[serve]\nport = 9797\nsecret = "{secret}"\n'
        "[mailauth]\nmax_failed_logins = 4\nverify_threads = 8\n"
        "[store]\nmax_keys = 5000\n"
    )
    code, out, err = run(["check-config", str(path), "--no-env"], capsys)
    assert code == 0 and err == ""  # no "enables no filter": it configures serve
    # issue #14 F2: check-config refuses what serve refuses (no secret)
    no_secret = tmp_path / "nosecret.toml"
    no_secret.write_text("[serve]\nport = 9797\n")
    refused = run(["check-config", str(no_secret), "--no-env"], capsys)
    assert refused[0] != 0 and "OK" not in refused[1]
    assert "[serve] secret" in refused[2] and "allow_without_secret" in refused[2]
    lines = out.splitlines()
    assert "[serve]" in lines and "[mailauth]" in lines
    assert f"port = 9797  # {path}: serve.port" in lines
    assert 'host = "127.0.0.1"  # default' in lines
    assert f"# secret set, not shown  ({path}: serve.secret)" in lines
    assert secret not in out
    assert 'admin_allow = ["127.0.0.0/8", "::1"]  # default' in lines
    assert f"max_failed_logins = 4  # {path}: mailauth.max_failed_logins" in lines
    assert f"verify_threads = 8  # {path}: mailauth.verify_threads" in lines
    assert 'on_store_error = "open"  # default' in lines
    # an empty [serve] table is a serve file too; [login] values are inherited
    path.write_text(
        '[serve]\nallow_without_secret = true\n[login]\nenabled = false\nblock_duration = "25m"\n'
    )
    code, out, err = run(["check-config", str(path), "--no-env"], capsys)
    assert code == 0 and err == ""
    assert f"block_duration = 1500  # {path}: login.block_duration" in out.splitlines()
    # a file for nothing still warns
    path.write_text("[store]\nmax_keys = 5000\n")
    code, out, err = run(["check-config", str(path), "--no-env"], capsys)
    assert code == 0 and "enables no filter" in err and "[serve]" not in out


def test_import_zimbra_output_passes_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["import-zimbra", str(SAMPLE)], capsys)
    assert code == 0 and err == ""
    assert "max_requests_per_sec = 40" in out
    target = tmp_path / "imported.toml"
    target.write_text(out)
    code, out, _ = run(["check-config", str(target), "--no-env"], capsys)
    assert code == 0 and "filters: dos, device, login" in out


def test_import_zimbra_from_stdin_and_to_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("zimbraHttpDosFilterMaxRequestsPerSec: 12\n"))
    code, out, _ = run(["import-zimbra", "-"], capsys)
    assert code == 0 and "max_requests_per_sec = 12" in out and "standard input" in out
    target = tmp_path / "out.toml"
    code, out, _ = run(["import-zimbra", str(SAMPLE), "-o", str(target)], capsys)
    assert code == 0 and "check-config" in out and "[dos]" in target.read_text()
    code, _, err = run(["import-zimbra", str(SAMPLE), "-o", str(target)], capsys)
    assert code == 2 and "--force" in err
    assert run(["import-zimbra", str(SAMPLE), "-o", str(target), "--force"], capsys)[0] == 0


def test_import_zimbra_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["import-zimbra", str(tmp_path / "missing.txt")], capsys)
    assert code == 2 and "cannot read" in err
    other = tmp_path / "other.txt"
    other.write_text("zimbraMtaMyNetworks: 127.0.0.0/8\n")
    code, _, err = run(["import-zimbra", str(other)], capsys)
    assert code == 2 and "no Zimbra/Carbonio" in err


# --------------------------------------------------------------------- demo


def test_demo_missing_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing(name: str) -> types.ModuleType:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    code, _, err = run(["demo"], capsys)
    assert code == 2 and "demo is not available" in err


def test_demo_is_delegated(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("mailguard.demo")
    fake.main = lambda argv: seen.append(argv) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mailguard.demo", fake)
    assert main(["demo", "--port", "8080"]) == 7
    assert seen == [["--port", "8080"]]


# -------------------------------------------------------------------- redis


def test_refused_connection_is_one_line_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    code, out, err = run(["blocks", "--redis", url], capsys)
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and err.startswith("mailguard: store ") and "Traceback" not in err


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.for_tests() as running:
        yield running


def test_redis_blocks_unblock_stats(
    server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailguard.stores.redis import RedisStore

    store = RedisStore(server.url, prefix="clitest:")
    try:
        store.unblock_all()
        store.block("login", "203.0.113.7", 900, "failures")
        store.block("device", "appl1234/jdoe", 600, "rate")
        base = ["--redis", server.url, "--prefix", "clitest:"]
        code, out, _ = run(["blocks", "--json", *base], capsys)
        assert code == 0
        assert sorted(b["key"] for b in json.loads(out)) == ["203.0.113.7", "appl1234/jdoe"]
        code, out, _ = run(["stats", "--json", *base], capsys)
        stats = json.loads(out)
        assert stats["total"] == 2 and stats["blocks"] == {"device": 1, "login": 1}
        assert stats["keys"] >= 2
        # another prefix sees nothing
        code, out, _ = run(["blocks", "--redis", server.url, "--prefix", "other:"], capsys)
        assert code == 0 and "no live blocks" in out
        code, out, _ = run(["unblock", "203.0.113.7", *base], capsys)
        assert code == 0 and "lifted login block on 203.0.113.7" in out
        assert [b.key for b in store.blocks()] == ["appl1234/jdoe"]
        assert run(["unblock", "203.0.113.7", *base], capsys)[0] == 1
        code, out, _ = run(["unblock", "--all", *base], capsys)
        assert code == 0 and "lifted 1 block(s)" in out
        assert store.blocks() == []
    finally:
        store.unblock_all()
        store.close()


def test_redis_store_from_config_file(
    server: RedisServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mailguard.stores.redis import RedisStore

    path = tmp_path / "mailguard.toml"
    path.write_text(f'[store]\ntype = "redis"\nurl = "{server.url}"\nprefix = "cfgtest:"\n[dos]\n')
    store = RedisStore(server.url, prefix="cfgtest:")
    try:
        store.block("login", "192.0.2.44", 900, "failures")
        code, out, _ = run(["blocks", "--config", str(path)], capsys)
        assert code == 0 and "192.0.2.44" in out
        code, _, err = run(["blocks", "--config", str(path), "--redis", server.url], capsys)
        assert code == 2 and "not both" in err
    finally:
        store.unblock_all()
        store.close()


def test_python_dash_m_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mailguard", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert "import-zimbra" in done.stdout and "exit codes:" in done.stdout
