"""DosPolicy: at most ``max_requests_per_sec`` requests per client per second.

The admin's model is Zimbra/Carbonio's HTTP DoS filter
(``zimbraHttpDosFilterMaxRequestsPerSec``, ``zimbraHttpDosFilterDelayMillis``,
``zimbraHttpThrottleSafeIPs``) and Jetty's DoSFilter underneath it: a request
is over the limit when it would be the ``max_requests_per_sec + 1``-th allowed
request of its client within the last second (an exact sliding window,
:func:`mailguard.core.slide`).  What happens then is ``delay_ms``:

``-1`` (default)
    refuse without calling the app: ``status_code`` (503) with
    ``Retry-After`` (whole seconds, at least 1) and a short text body;
``0``
    serve it anyway and only report it (monitor mode, for tuning a limit);
``> 0``
    hold it that many milliseconds, then serve it.  At most
    ``max_delayed`` requests wait at once, and at most
    ``max_delayed_per_client`` of one client; beyond that they are refused
    as with -1, so delay mode cannot tie up every worker or grow memory.
    Unset, these are 50 and 5 under ASGI (a held request is a paused
    coroutine) and 2 and 1 under WSGI, where a held request holds a worker
    thread: 2 leaves threads free on any threaded server (waitress has 4,
    gunicorn ``--threads N``), however many clients flood.  The budgets are
    per process.  A WSGI server with one thread per process (gunicorn's
    ``sync`` worker, wsgiref) has none to spare: use -1 there.

An IPv6 client is also counted in its wider networks (``ipv6_wider``: its
/56 at 4x the limit, its /48 at 16x, by default), narrowest first, and refused
at the first that is over (:meth:`DosPolicy.wider`).

Refusals are logged at WARNING once per client per episode: the first
refusal logs ``mailguard dos refused client=...``, the rest of the flood is
counted silently, and the episode ends (``calm`` at INFO, with how many were
refused) once the client is served with at least half its budget left, so a
steady flood that gets a few requests through each second is one episode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from ..core import ALLOW, Verdict, retry_after
from ..identity import Client
from ..options import option_error, positive_int, whole
from ..reading import PathRule
from ..request import Request
from .base import Policy, PolicyOptions, wider_limit
from .steps import Steps, arun, call, run

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["MAX_DELAY_MS", "DosOptions", "DosPolicy"]

_EPISODES_MAX = 10_000  # clients remembered as "in a refusal episode" at once
# (max_delayed, max_delayed_per_client) when unset, by front: a held ASGI
# request is a paused coroutine, a held WSGI request a worker thread
_DELAY_BUDGETS = {"asgi": (50, 5), "wsgi": (2, 1)}

KeyFunc = Callable[[Request], "str | None"]


MAX_DELAY_MS = 60_000
"""The longest ``delay_ms``: one minute."""


class DosOptions(PolicyOptions, total=False):
    """The keywords of :class:`DosPolicy` (and of the ``DosFilter`` adapters)."""

    max_requests_per_sec: int
    delay_ms: int
    max_delayed: int | None
    max_delayed_per_client: int | None
    exempt_paths: Iterable[str]
    headers: bool
    key_func: KeyFunc | None


class DosPolicy(Policy):
    """Per-client request cap.  Options as in :class:`Policy`, plus:

    :param max_requests_per_sec: allowed requests per client in any second
        (default 100, at most 1,000,000).
    :param delay_ms: -1 refuse, 0 only report, > 0 delay by that many ms (at most
        :data:`MAX_DELAY_MS`, a minute: longer holds a worker past any client's patience).
    :param max_delayed: requests waiting at once, in total (default 50
        under ASGI, 2 under WSGI, where each holds a worker thread).
    :param max_delayed_per_client: requests of one client waiting at once
        (default 5 under ASGI, 1 under WSGI).
    :param exempt_paths: paths passed untouched (health checks), as
        :class:`~mailguard.reading.PathRule` reads them, strictly: ``"/health"``
        is that path exactly (case included), ``"/assets/"`` everything below
        it, ``"/"`` the root only.
    :param headers: add ``RateLimit-Limit``, ``RateLimit-Remaining`` and
        ``RateLimit-Reset`` to every counted response.
    :param key_func: count by something else than the client address: a
        callable taking the :class:`~mailguard.request.Request` and returning
        a string, or None to leave the request uncounted.
    """

    kind = "dos"

    def __init__(
        self,
        *,
        max_requests_per_sec: int = 100,
        delay_ms: int = -1,
        max_delayed: int | None = None,
        max_delayed_per_client: int | None = None,
        exempt_paths: Iterable[str] = (),
        headers: bool = False,
        key_func: KeyFunc | None = None,
        **options: Unpack[PolicyOptions],
    ) -> None:
        super().__init__(**options)
        self.limit = whole("max_requests_per_sec", max_requests_per_sec, low=1, high=1_000_000)
        self.delay_ms = whole("delay_ms", delay_ms, low=-1, high=MAX_DELAY_MS)
        total, each = _DELAY_BUDGETS["asgi"]
        self._budget_set = (max_delayed is not None, max_delayed_per_client is not None)
        self.max_delayed = (
            total if max_delayed is None else positive_int("max_delayed", max_delayed)
        )
        self.max_delayed_per_client = (
            each
            if max_delayed_per_client is None
            else positive_int("max_delayed_per_client", max_delayed_per_client)
        )
        self.exempt_paths = PathRule("exempt_paths", exempt_paths, protective=False)
        if not isinstance(headers, bool):
            raise option_error("headers", f"must be True or False, got {headers!r}")
        self.headers = headers
        if key_func is not None and not callable(key_func):
            raise option_error("key_func", f"must be callable, got {key_func!r}")
        self.key_func = key_func
        # No exemptions and no key_func: the client alone decides.
        self.by_client = not (self.exempt_paths or key_func)
        self._episodes: dict[str, int] = {}
        self._calm_at = self.limit // 2
        self._waiting: dict[str, int] = {}
        self._waiting_total = 0
        self._waiting_lock = threading.Lock()
        self.wider_limits = tuple(wider_limit(self.limit, f) for f in self.wider_factors)

    # ---------------------------------------------------------------- rules
    def key_of(self, request: Request) -> str | None:
        """The key this request counts under, or None when it is not counted."""
        if self.exempt_paths.match(request.path):
            return None
        client = request.client
        if self.any_safe and self.is_safe(client):
            return None
        if self.key_func is None:
            return client.key
        try:
            return self.key_func(request)
        except Exception:
            logging.getLogger("mailguard.dos").exception("mailguard dos key_func failed")
            return client.key

    def judge(
        self,
        client: Client,
        key: str,
        code: int,
        remaining: int,
        wait: float,
        limit: int | None = None,
    ) -> Verdict:
        """Turn one sliding-window answer into a verdict (``limit``: the key's
        limit, when it is a wider IPv6 network's)."""
        if limit is None:
            limit, calm_at = self.limit, self._calm_at
        else:
            calm_at = limit // 2
        if code == 0:
            # An episode ends when the client has calmed down to half its
            # budget, not at the first request a steady flood gets through.
            if self._episodes and remaining >= calm_at and key in self._episodes:
                refused = self._episodes.pop(key)
                self.emit("calm", client.key, logging.INFO, key=key, refused=refused)
            if not self.headers:
                return ALLOW
            return Verdict(True, "ok", key, remaining=remaining, reset=wait, limit=limit)
        episode = self._episodes.get(key)
        if episode is None:
            if len(self._episodes) >= _EPISODES_MAX:
                self._episodes.clear()
            self._episodes[key] = 1
            mode = "reject" if self.delay_ms < 0 else ("monitor" if self.delay_ms == 0 else "delay")
            self.emit(
                "refused" if self.delay_ms < 0 else "over",
                client.key,
                key=key,
                limit=f"{limit}/1s",
                mode=mode,
            )
        else:
            self._episodes[key] = episode + 1
        if self.delay_ms == 0:
            return Verdict(True, "over", key, remaining=0, reset=wait, limit=limit)
        if self.delay_ms > 0 and self._reserve(key):
            return Verdict(
                True,
                "delayed",
                key,
                remaining=0,
                reset=wait,
                limit=limit,
                delay=self.delay_ms / 1000.0,
            )
        return Verdict(
            False,
            "rate",
            key,
            retry_after=retry_after(wait),
            remaining=0,
            reset=wait,
            limit=limit,
        )

    def hold_in_threads(self) -> None:
        """The WSGI adapter's call: a held request holds a worker thread, so the
        delay budgets left unset become the WSGI defaults (2 and 1)."""
        total, each = _DELAY_BUDGETS["wsgi"]
        if not self._budget_set[0]:
            self.max_delayed = min(self.max_delayed, total)
        if not self._budget_set[1]:
            self.max_delayed_per_client = min(self.max_delayed_per_client, each)

    def _reserve(self, key: str) -> bool:
        with self._waiting_lock:
            mine = self._waiting.get(key, 0)
            if self._waiting_total >= self.max_delayed or mine >= self.max_delayed_per_client:
                return False
            self._waiting[key] = mine + 1
            self._waiting_total += 1
            return True

    def release(self, verdict: Verdict) -> None:
        with self._waiting_lock:
            mine = self._waiting.get(verdict.key, 0)
            if mine <= 1:
                self._waiting.pop(verdict.key, None)
            else:
                self._waiting[verdict.key] = mine - 1
            self._waiting_total = max(0, self._waiting_total - 1)

    @property
    def waiting(self) -> int:
        """Requests held in delay right now."""
        return self._waiting_total

    def wider(self, client: Client) -> Steps[Verdict | None]:
        """Count a request its own network allowed in the client's wider IPv6
        networks, narrowest first, each at the limit times its factor; the
        refusal of the first that is over, or None.

        The narrowest network is counted first and a refusal stops there, so
        a wider network counts only requests every narrower one let through:
        one flooding /64 uses up its own budget, never its /48's.
        """
        for key, limit in zip(client.wider, self.wider_limits, strict=False):
            code, remaining, wait = yield call(
                "hit", self.namespace, key, limit, 1.0, 0.0, self.headers or key in self._episodes
            )
            if code != 0:
                return self.judge(client, key, code, remaining, wait, limit)
            if self._episodes and key in self._episodes:
                self.judge(client, key, code, remaining, wait, limit)  # may end its episode
        return None

    # ---------------------------------------------------------------- faces
    def check_client(self, client: Client) -> Verdict:
        if self.any_safe and self.is_safe(client):
            return ALLOW
        key = client.key
        # remaining is worked out only when headers or an episode's end need
        # it; without either, judge's answer to an allowed request is ALLOW
        detail = self.headers or key in self._episodes
        code, remaining, wait = self.store.hit(self.namespace, key, self.limit, 1.0, 0.0, detail)
        if code == 0 and not detail:
            wider = client.wider
            if not wider:
                return ALLOW
            # the flow of ``wider`` without its machinery: the IPv6 hot path
            hit = self.store.hit
            for network, limit in zip(wider, self.wider_limits, strict=False):
                answer = hit(self.namespace, network, limit, 1.0, 0.0, False)
                if answer[0]:
                    return self.judge(client, network, *answer, limit)
            return ALLOW
        if code == 0 and client.wider:
            over = run(self.wider(client), self.store)
            if over is not None:
                return over
        return self.judge(client, key, code, remaining, wait)

    async def acheck_client(self, client: Client) -> Verdict:
        if self.any_safe and self.is_safe(client):
            return ALLOW
        key = client.key
        answer = await self.store.ahit(self.namespace, key, self.limit, 1.0)
        if answer[0] == 0 and client.wider:
            over = await arun(self.wider(client), self.store)
            if over is not None:
                return over
        return self.judge(client, key, *answer)

    def check(self, request: Request) -> Verdict:
        key = self.key_of(request)
        if key is None:
            return ALLOW
        answer = self.store.hit(self.namespace, key, self.limit, 1.0)
        client = request.client
        if answer[0] == 0 and client.wider and key == client.key:
            over = run(self.wider(client), self.store)
            if over is not None:
                return over
        return self.judge(client, key, *answer)

    async def acheck(self, request: Request) -> Verdict:
        key = self.key_of(request)
        if key is None:
            return ALLOW
        answer = await self.store.ahit(self.namespace, key, self.limit, 1.0)
        client = request.client
        if answer[0] == 0 and client.wider and key == client.key:
            over = await arun(self.wider(client), self.store)
            if over is not None:
                return over
        return self.judge(client, key, *answer)

    # ------------------------------------------------------------ responses
    def allowed_headers(self, verdict: Verdict) -> list[tuple[str, str]]:
        if not self.headers or verdict.limit == 0:
            return []
        return _ratelimit_headers(verdict)

    def refusal_headers(self, verdict: Verdict) -> list[tuple[str, str]]:
        return _ratelimit_headers(verdict) if self.headers and verdict.limit else []

    def explain(self, verdict: Verdict) -> str:
        if verdict.reason == "rate":
            return "too many requests from your address."
        return super().explain(verdict)


def _ratelimit_headers(verdict: Verdict) -> list[tuple[str, str]]:
    return [
        ("ratelimit-limit", str(verdict.limit)),
        ("ratelimit-remaining", str(max(0, verdict.remaining))),
        ("ratelimit-reset", str(retry_after(verdict.reset))),
    ]
