"""A short pass of ``benchmarks/mailauth.py`` (the README's "IMAP, POP3 and SMTP",
"Speed"): it still starts ``mailguard serve``, the bare endpoint and the stub
backend, every answer mailguard gives is the one expected, and every process it
started is gone afterwards."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.servers

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "mailauth.py"


def bench_processes() -> set[int]:
    """PIDs of processes this benchmark starts: its stub and bare servers, and
    ``mailguard serve`` with a configuration in its temporary directory."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if str(SCRIPT).encode() in text or b"mailguard-bench-" in text:
            found.add(int(cmdline.parent.name))
    return found


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_short_run_prints_every_row_with_no_unexpected_answer() -> None:
    before = bench_processes()
    command = [sys.executable, str(SCRIPT), "--seconds", "1", "--rounds", "1"]
    command += ["--connections", "2", "--latency-logins", "100"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"^\d+ CPUs .*Python 3\.\d+.*uvicorn .*wrk ", out, re.M), out
    rows = re.findall(
        r"^((?:dovecot|nginx), .*?)\s{2,}(bare|mailguard)\s+([\d,]+)\s.*?(\d+)$", out, re.M
    )
    assert len(rows) == 10, out  # five flows, bare and mailguard each
    for flow, server, rate, bad in rows:
        assert int(rate.replace(",", "")) > 0, (flow, server)
        if server == "mailguard":
            assert bad == "0", f"{flow}: {bad} unexpected answers\n{out}"
    for label in (
        "dovecot allow (delays the login)",
        "nginx /nginx, uncached (backend)",
        "nginx /nginx, cached",
    ):
        assert re.search(rf"{re.escape(label)}\s+mailguard\s+[\d.]+ /", out), out
    assert bench_processes() - before == set(), "a process of the benchmark was left running"
