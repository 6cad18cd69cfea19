"""examples/systemd/mailguard-serve.service: the unit the README tells admins to install.

Read as systemd reads it (``Key=value`` lines, a key may repeat), checked for the
hardening the README promises, for a command line ``mailguard serve`` accepts,
and, where ``systemd-analyze`` is installed, verified by systemd itself (with
``ExecStart`` pointed at a binary that exists here).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "examples" / "systemd" / "mailguard-serve.service"


def read_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}; comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{UNIT.name}:{number}: not Key=value: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_read_unit_keeps_repeated_keys() -> None:
    got = read_unit("[Service]\n# x=1\nA=1\nA=2\n\n[Install]\nB=\n")
    assert got == {"Service": {"A": ["1", "2"]}, "Install": {"B": [""]}}


def service() -> dict[str, list[str]]:
    return read_unit(UNIT.read_text("utf-8"))["Service"]


def test_unit_is_hardened() -> None:
    got = service()
    expected = {
        "DynamicUser": "yes",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "Restart": "always",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert got.get(key) == [value], f"{key}={got.get(key)}"
    assert got["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert "@system-service" in got["SystemCallFilter"]


def test_unit_reads_a_root_only_config_through_a_credential() -> None:
    got = service()
    # The file holds [serve] secret: root-only on disk, handed to the service as a credential.
    assert got["LoadCredential"] == ["mailguard.toml:/etc/mailguard/mailguard.toml"]
    (command,) = got["ExecStart"]
    assert command.split()[1:] == ["serve", "--config", "%d/mailguard.toml"]
    assert command.split()[0].endswith("/mailguard")


def test_unit_has_no_reload_it_cannot_honour() -> None:
    # uvicorn handles SIGINT and SIGTERM only; a SIGHUP "reload" would end the process.
    assert "ExecReload" not in service()


def test_serve_accepts_the_units_arguments() -> None:
    (command,) = service()["ExecStart"]
    verb, *options = command.split()[1:]
    done = subprocess.run(
        [sys.executable, "-m", "mailguard", verb, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    for option in options:
        if option.startswith("--"):
            assert option in done.stdout, option


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_verifies_the_unit(tmp_path: Path) -> None:
    text = UNIT.read_text("utf-8")
    (command,) = service()["ExecStart"]
    binary = command.split()[0]
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(binary, shutil.which("true") or "/bin/true"))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert UNIT.name not in done.stderr, done.stderr  # no warning about the unit
