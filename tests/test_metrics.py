"""Prometheus metrics: event counters from the on_event hook, block gauges at scrape time."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from werkzeug.test import Client

import mailguard.asgi
from mailguard.config import loads
from mailguard.core import FakeClock
from mailguard.events import Event
from mailguard.metrics import MetricsCollector, PrometheusHook, asgi_app, instrument, wsgi_app
from mailguard.stores.base import StoreError
from mailguard.stores.memory import MemoryStore


def scrape(registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def test_hook_counts_events_by_filter_and_action() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    hook(Event("login", "failure", "203.0.113.7", (("account", "jdoe"),), frozenset({"account"})))
    hook(Event("login", "failure", "203.0.113.8"))
    hook(Event("login", "blocked", "203.0.113.7"))
    hook(Event("dos", "calm", "198.51.100.1", (("refused", 41),)))
    text = scrape(registry)
    assert 'mailguard_events_total{action="failure",filter="login"} 2.0' in text
    assert 'mailguard_events_total{action="blocked",filter="login"} 1.0' in text
    assert 'mailguard_events_total{action="calm",filter="dos"} 1.0' in text
    assert 'mailguard_refused_requests_total{filter="dos"} 41.0' in text
    assert "203.0.113" not in text and "jdoe" not in text  # no per-client series


def test_collector_exports_live_blocks_per_kind() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    registry = CollectorRegistry()
    registry.register(MetricsCollector(store))
    text = scrape(registry)
    for kind in ("dos", "login", "device"):
        assert f'mailguard_blocks{{kind="{kind}"}} 0.0' in text
    assert "mailguard_store_up 1.0" in text
    store.block("login", "203.0.113.7", 60, "failures")
    store.block("login", "203.0.113.8", 120, "failures")
    store.block("device", "abc/jdoe", 60, "rate")
    text = scrape(registry)
    assert 'mailguard_blocks{kind="login"} 2.0' in text
    assert 'mailguard_blocks{kind="device"} 1.0' in text
    assert "mailguard_store_keys 3.0" in text
    clock.advance(61)  # computed at scrape time: ended blocks drop out
    assert 'mailguard_blocks{kind="login"} 1.0' in scrape(registry)


def test_collector_reports_a_failing_store() -> None:
    class Broken(MemoryStore):
        def blocks(self, kind: str | None = None) -> list[Any]:
            raise StoreError("redis unavailable")

    registry = CollectorRegistry()
    registry.register(MetricsCollector(Broken()))
    text = scrape(registry)
    assert "mailguard_store_up 0.0" in text
    assert "mailguard_blocks{" not in text


def test_end_to_end_through_protect_and_the_asgi_metrics_app() -> None:
    store = MemoryStore(clock=FakeClock())
    registry = CollectorRegistry()
    hook = instrument(store, registry)
    config = loads("[dos]\nmax_requests_per_sec = 2\n", env={})

    async def ok(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    app = mailguard.asgi.protect(ok, config, store=store, on_event=hook)
    metrics = asgi_app(registry)

    async def run() -> str:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 1000))
        async with httpx.AsyncClient(transport=transport, base_url="http://mail") as client:
            statuses = [(await client.get("/")).status_code for _ in range(5)]
        assert statuses == [200, 200, 503, 503, 503]
        transport = httpx.ASGITransport(app=metrics)
        async with httpx.AsyncClient(transport=transport, base_url="http://mail") as client:
            response = await client.get("/")
        assert response.status_code == 200
        return response.text

    text = asyncio.run(run())
    # one refusal episode, however many requests it refused
    assert 'mailguard_events_total{action="refused",filter="dos"} 1.0' in text
    assert 'mailguard_blocks{kind="login"} 0.0' in text


def test_wsgi_metrics_app_serves_the_registry() -> None:
    registry = CollectorRegistry()
    hook = PrometheusHook(registry)
    hook(Event("device", "jailed", "198.51.100.2"))
    response = Client(wsgi_app(registry)).get("/")
    assert response.status_code == 200
    assert 'mailguard_events_total{action="jailed",filter="device"} 1.0' in response.get_data(
        as_text=True
    )


def test_chain_calls_the_other_hooks_too() -> None:
    registry = CollectorRegistry()
    seen: list[str] = []
    hook = PrometheusHook(registry).chain(lambda event: seen.append(event.action))
    hook(Event("login", "blocked", "203.0.113.7"))
    assert seen == ["blocked"]
    assert 'mailguard_events_total{action="blocked",filter="login"} 1.0' in scrape(registry)


def test_one_hook_per_registry() -> None:
    registry = CollectorRegistry()
    PrometheusHook(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusHook(registry)
