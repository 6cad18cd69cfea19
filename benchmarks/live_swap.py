"""What a live configuration change costs: the swap itself, and a whole apply.

Run:  .venv/bin/python benchmarks/live_swap.py

- ``swap``: one ``GuardMiddleware.swap(policy)`` (what a request can ever
  wait for: nothing, it is one assignment; this is its cost on the applying
  thread);
- ``apply``: ``LiveConfig.apply`` of a new overlay (merge with the file,
  the file's checks, three new policies, three swaps);
- ``change``: ``LiveConfig.change`` on a MemoryStore (read, check, write,
  audit line, apply in this process).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mailguard import MemoryStore
from mailguard.config import loads
from mailguard.live import LiveConfig
from mailguard.policies import DosPolicy
from mailguard.stores.overlay import Overlay
from mailguard.wsgi import protect

logging.getLogger("mailguard").addHandler(logging.NullHandler())
logging.getLogger("mailguard").propagate = False

TOML = "[common]\nsafe_ips = ['10.0.0.0/8']\n[dos]\n[login]\n[device]\n"


def app(environ: object, start_response: object) -> list[bytes]:
    return [b""]


def best(run: object, n: int) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            run()  # type: ignore[operator]
        times.append((time.perf_counter() - start) / n)
    return min(times)


def main() -> None:
    store = MemoryStore()
    front: Any = protect(app, loads(TOML, env={}), store=store, live=False)
    one, two = front.policy, DosPolicy(store=store, max_requests_per_sec=5, safe_ips=["10.0.0.0/8"])
    flip = [one, two]

    def swap() -> None:
        flip.reverse()
        front.swap(flip[0])

    print(f"swap:   {best(swap, 20000) * 1e6:8.2f} µs")
    live = LiveConfig(store, loads(TOML, env={}), watch=False)
    wrapped: Any = protect(app, loads(TOML, env={}), store=store, live=live)
    assert wrapped.live is live
    n = [0]

    def apply() -> None:
        n[0] += 1
        live.apply(Overlay(n[0], {"dos.max_requests_per_sec": 100 + n[0] % 7}))

    print(f"apply:  {best(apply, 200) * 1e3:8.2f} ms")

    def change() -> None:
        n[0] += 1
        live.change("set", "dos.max_requests_per_sec", 100 + n[0] % 7, by="bench")

    logging.getLogger("mailguard.audit").disabled = True
    print(f"change: {best(change, 100) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
