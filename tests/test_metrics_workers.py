"""Metrics that add up across workers: real ``uvicorn --workers 2`` in prometheus_client's
multiprocess mode, scraped several times and read with prometheus_client's own parser."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis_server import free_port

pytestmark = pytest.mark.servers

ROOT = Path(__file__).resolve().parent.parent

APP = """
import os

import mailguard.asgi
from mailguard import MemoryStore, metrics
from mailguard.config import loads

store = MemoryStore()
hook = metrics.instrument(store)  # the default registry: multiprocess mode applies
config = loads("[login]\\nmax_failed_logins = 10000\\n", env={})
scrape = metrics.asgi_app()


async def webmail(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    status = 401 if scope["path"] == "/login" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


guarded = mailguard.asgi.protect(webmail, config, store=store, on_event=hook)
PID = [(b"x-pid", str(os.getpid()).encode())]


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return

    async def tagged(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *PID]}
        await send(message)

    target = scrape if scope.get("path") == "/metrics" else guarded
    await target(scope, receive, tagged)
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "workers_app.py").write_text(APP)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    log = (tmp_path / "uvicorn.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path), "workers_app:app",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("uvicorn did not start:\n" + (tmp_path / "uvicorn.log").read_text())
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def fresh(base: str) -> httpx.Client:
    """A client opening a new connection per request, so requests spread over workers."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=base, limits=limits, headers={"connection": "close"}, timeout=10)


def failures_counted(text: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mailguard_events_total" and sample.labels == {
                "filter": "login",
                "action": "failure",
            }:
                total += sample.value
    return total


def test_two_workers_add_up_and_never_go_down(server: str) -> None:
    sent = 0
    by_pid: dict[str, int] = {}
    scraped_by: set[str] = set()
    seen: list[float] = []
    with fresh(server) as client:
        for _ in range(8):  # rounds of failures, then several scrapes
            for _ in range(25):
                response = client.post("/login", data={"user": "jdoe", "password": "x"})
                assert response.status_code == 401
                pid = response.headers["x-pid"]
                by_pid[pid] = by_pid.get(pid, 0) + 1
                sent += 1
            for _ in range(4):
                response = client.get("/metrics")
                assert response.status_code == 200
                scraped_by.add(response.headers["x-pid"])
                counted = failures_counted(response.text)
                assert counted == sent  # every worker's failures, whichever worker answers
                assert not seen or counted >= seen[-1]  # a counter never goes down
                seen.append(counted)
            if len(by_pid) == 2 and len(scraped_by) == 2 and sent >= 100:
                break
    assert len(by_pid) == 2, f"the kernel sent every request to one worker: {by_pid}"
    assert len(scraped_by) == 2, "every scrape reached one worker"
    assert seen[-1] == sent
