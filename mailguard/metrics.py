"""Prometheus metrics (the ``prometheus`` extra: ``pip install 'mailguard[prometheus]'``).

Count the filters' events with the hook :func:`instrument` returns, and serve
``/metrics`` next to (not inside) the protected app, so scrapes are neither
counted nor refused.  With Starlette (any ASGI framework that mounts apps):

>>> from prometheus_client import CollectorRegistry
>>> from starlette.applications import Starlette
>>> from starlette.responses import PlainTextResponse
>>> from starlette.routing import Mount, Route
>>> import mailguard.asgi
>>> from mailguard import MemoryStore, metrics
>>> from mailguard.config import loads
>>> registry = CollectorRegistry()  # leave it out for prometheus_client's default
>>> store = MemoryStore()
>>> hook = metrics.instrument(store, registry)
>>> async def inbox(request):
...     return PlainTextResponse("inbox")
>>> config = loads("[dos]\\nmax_requests_per_sec = 50\\n")  # or "mailguard.toml"
>>> webmail = Starlette(routes=[Route("/", inbox)])
>>> webmail = mailguard.asgi.protect(webmail, config, store=store, on_event=hook)
>>> scrape = Route("/metrics", metrics.asgi_app(registry))
>>> app = Starlette(routes=[scrape, Mount("/", webmail)])

and with Flask (any WSGI app), werkzeug's dispatcher does the mounting:

>>> from flask import Flask
>>> from werkzeug.middleware.dispatcher import DispatcherMiddleware
>>> import mailguard.wsgi
>>> flask_app = Flask("webmail")
>>> guarded = mailguard.wsgi.protect(flask_app.wsgi_app, config, store=store, on_event=hook)
>>> flask_app.wsgi_app = DispatcherMiddleware(guarded, {"/metrics": metrics.wsgi_app(registry)})

Both serve the same registry:

>>> from starlette.testclient import TestClient
>>> with TestClient(app) as client:
...     print(client.get("/").text, client.get("/metrics").status_code)
inbox 200
>>> text = flask_app.test_client().get("/metrics").get_data(as_text=True)
>>> 'mailguard_blocks{kind="login"} 0.0' in text
True

Several worker processes
========================

Under ``uvicorn --workers N``, gunicorn or any pre-fork server each worker
counts in its own memory, and a scrape reaches one worker at random: the
totals jump between workers' counts, which Prometheus takes for counter
resets.  prometheus_client's multiprocess mode adds them up.  Point
``PROMETHEUS_MULTIPROC_DIR`` at an empty directory, writable by the workers,
before the server starts (clear it at each start; the variable must be set
before ``prometheus_client`` is imported, so set it in the environment, not in
the app)::

    rm -rf /run/mailguard-metrics && mkdir -p /run/mailguard-metrics
    PROMETHEUS_MULTIPROC_DIR=/run/mailguard-metrics uvicorn app:app --workers 4

and call :func:`instrument` and :func:`asgi_app` / :func:`wsgi_app` *without*
a registry: the counters then live in files in that directory and every
worker's ``/metrics`` answers the sum over all workers (the events of workers
that have exited included, so the totals never go down).  The block gauges
are read from the store at each scrape, so they agree across workers when
the store is shared (:class:`~mailguard.RedisStore`); a
:class:`~mailguard.MemoryStore` is per process, and so are its blocks.
(Passing your own ``registry`` in multiprocess mode is up to you: add
``prometheus_client.multiprocess.MultiProcessCollector(registry)`` to it.)

Metrics
=======

``mailguard_events_total{filter, action}`` (counter)
    every :class:`~mailguard.events.Event` the filters report, by filter
    (``dos``, ``login``, ``device``) and action (``refused``, ``over``,
    ``calm``, ``failure``, ``blocked``, ``jailed``, ...).  These are the
    same events as the log lines.  Note that DosFilter reports one
    ``refused`` event per *episode* (the first refused request of a flood),
    not one per refused request: see the next counter.
``mailguard_refused_requests_total{filter}`` (counter)
    requests refused, added up from the ``refused=N`` field of the event
    that ends an episode (DosFilter's ``calm``), so it grows when a flood
    ends, not while it lasts.
``mailguard_blocks{kind}`` (gauge)
    live blocks in the store per kind, read from ``store.blocks()`` at each
    scrape (for Redis that is one scan of the blocks: fine for thousands of
    blocks, think twice at millions).
``mailguard_store_up`` (gauge)
    1 while the store is up, 0 while it is down: 0 when it failed that
    scrape, or when the store (or the guard of the filters using it) counts
    an outage that no real round trip has ended yet
    (:class:`~mailguard.stores.guard.StoreHealth`, the state behind the one
    "store down" / "store up" pair of log lines per outage).  An answer from
    a :class:`~mailguard.RedisStore`'s local block cache does not make it 1.
``mailguard_store_keys`` (gauge, memory store only)
    keys held by the in-memory store (its bound is ``max_keys``).

Allowed requests are not counted: the filters report events, not verdicts,
and counting every request belongs to the HTTP server's own metrics.
Labels never carry an address, account or device, so the number of series
stays fixed whatever the traffic.

Alerting on blocks needs no metrics at all: any ``on_event`` hook can filter
``event.action`` (``"blocked"``, ``"jailed"``, ``"refused"``), e.g.::

    def alert(event):
        if event.action in ("blocked", "jailed"):
            notify(event.line())
"""

from __future__ import annotations

import os
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .events import Event, EventHook
from .policies import KINDS as FILTER_KINDS
from .stores.base import Store, StoreError
from .stores.guard import StoreHealth
from .stores.memory import MemoryStore

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter
    from prometheus_client import make_asgi_app as _make_asgi_app
    from prometheus_client import make_wsgi_app as _make_wsgi_app
    from prometheus_client.core import GaugeMetricFamily
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise ImportError(
        "mailguard.metrics needs prometheus-client: pip install 'mailguard[prometheus]'"
    ) from exc

__all__ = [
    "MetricsCollector",
    "PrometheusHook",
    "asgi_app",
    "instrument",
    "multiprocess_dir",
    "served_registry",
    "wsgi_app",
]

KINDS = FILTER_KINDS
"""The filter kinds whose blocks are always exported (:data:`mailguard.policies.KINDS`)."""


class PrometheusHook:
    """An ``on_event`` hook counting events by filter and action.

    Create one per registry and give it to every filter (``protect(...,
    on_event=hook)`` does).  To also send events elsewhere, wrap it::

        def on_event(event):
            hook(event)
            my_alerting(event)

    :param registry: where the counters live (default: prometheus_client's
        global registry).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        where = REGISTRY if registry is None else registry
        self.events = Counter(
            "mailguard_events",
            "Events reported by mailguard filters, by filter and action.",
            ["filter", "action"],
            registry=where,
        )
        self.refused = Counter(
            "mailguard_refused_requests",
            "Requests refused, counted when a refusal episode ends.",
            ["filter"],
            registry=where,
        )

    def __call__(self, event: Event) -> None:
        self.events.labels(event.filter, event.action).inc()
        refused = event.get("refused")
        if isinstance(refused, int) and not isinstance(refused, bool) and refused > 0:
            self.refused.labels(event.filter).inc(refused)

    def chain(self, *others: EventHook) -> EventHook:
        """A hook that counts, then calls ``others`` in turn."""

        def both(event: Event) -> None:
            self(event)
            for other in others:
                other(event)

        return both


class MetricsCollector:
    """A collector computing ``mailguard_blocks{kind}`` (and store health) at scrape time.

    Register it once: ``registry.register(MetricsCollector(store))``.

    :param store: the store the filters use.
    :param kinds: kinds always exported, with 0 when they have no block.
    """

    def __init__(self, store: Store, kinds: Iterable[str] = KINDS) -> None:
        self.store = store
        self.kinds = tuple(kinds)

    def _up(self) -> bool:
        """The store's own health, when it keeps one (a blocks() answered from
        a local cache, or by a guard's fallback, does not say Redis is up)."""
        health = getattr(self.store, "health", None)
        if isinstance(health, StoreHealth):
            return health.up
        return True

    def _families(self) -> tuple[Any, Any, Any]:
        blocks = GaugeMetricFamily(
            "mailguard_blocks", "Live blocks in the store, by kind.", labels=["kind"]
        )
        up = GaugeMetricFamily(
            "mailguard_store_up", "1 while the store is up (answering real round trips), else 0."
        )
        keys = GaugeMetricFamily("mailguard_store_keys", "Keys held by the in-memory store.")
        return blocks, up, keys

    def describe(self) -> Iterator[Any]:
        """The metric names, without asking the store (used at registration)."""
        yield from self._families()

    def collect(self) -> Iterator[Any]:
        blocks, up, keys = self._families()
        try:
            found = self.store.blocks()
        except (StoreError, OSError):
            up.add_metric([], 0.0)
            yield up
            return
        per_kind = Tally(block.kind for block in found)
        for kind in sorted(set(self.kinds) | set(per_kind)):
            blocks.add_metric([kind], float(per_kind.get(kind, 0)))
        up.add_metric([], 1.0 if self._up() else 0.0)
        yield blocks
        yield up
        if isinstance(self.store, MemoryStore):
            keys.add_metric([], float(len(self.store)))
            yield keys


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, or None when it is off."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


_default_collectors: list[MetricsCollector] = []
"""The store collectors :func:`instrument` put on the default registry."""


class _StoreCollectors:
    """Every collector of :data:`_default_collectors`, read at each scrape."""

    def describe(self) -> Iterator[Any]:
        return iter(())  # names are known only at scrape time: register without checks

    def collect(self) -> Iterator[Any]:
        for collector in list(_default_collectors):
            yield from collector.collect()


def instrument(store: Store, registry: CollectorRegistry | None = None) -> PrometheusHook:
    """Register a :class:`MetricsCollector` for ``store`` and return a :class:`PrometheusHook`.

    Pass the hook as ``on_event`` to the filters (or to ``protect``).
    """
    where = REGISTRY if registry is None else registry
    collector = MetricsCollector(store)
    where.register(collector)
    if registry is None:
        _default_collectors.append(collector)
    return PrometheusHook(where)


def served_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """What a ``/metrics`` app serves: ``registry`` when given; else the default
    registry, or, in multiprocess mode (:func:`multiprocess_dir`), a registry
    adding up every worker's counters plus the store gauges of :func:`instrument`."""
    if registry is not None:
        return registry
    if multiprocess_dir() is None:
        return REGISTRY
    from prometheus_client import multiprocess

    served = CollectorRegistry()
    collector: Any = multiprocess.MultiProcessCollector  # untyped in some releases
    collector(served)
    served.register(_StoreCollectors())
    return served


class _AsgiApp:
    """prometheus_client's ASGI app as an object, not a function, so that
    ``starlette.routing.Route("/metrics", app)`` takes it for an ASGI app
    (a plain function would be called as a request endpoint)."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def asgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """An ASGI app serving the metrics in Prometheus' text format: a route's
    endpoint (``Route("/metrics", asgi_app())``) or mounted (``Mount``)."""
    return _AsgiApp(_make_asgi_app(served_registry(registry)))


def wsgi_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """A WSGI app serving the metrics in Prometheus' text format (mount it at /metrics)."""
    app: Callable[..., Any] = _make_wsgi_app(served_registry(registry))
    return app
