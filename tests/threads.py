"""Run one piece of work in many threads at once, for the stores' concurrency tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["run_threads"]


def run_threads(n: int, work: Callable[[], list[Any]]) -> list[Any]:
    barrier = threading.Barrier(n)
    results: list[list[Any]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return [r for rs in results for r in rs]
