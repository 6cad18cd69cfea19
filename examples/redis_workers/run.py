"""Start several uvicorn workers of ``app.py`` that share their limits in Redis.

Run it (from the repository root, with mailguard[redis] and uvicorn installed,
and a Redis server running)::

    MAILGUARD_REDIS_URL=redis://127.0.0.1:6379/0 \\
        python examples/redis_workers/run.py --workers 2 --port 8001

Worker ``i`` listens on ``127.0.0.1:<port + i>`` (a load balancer would
spread users over them).  Send requests to both and watch the limit hold for
the pair::

    for i in $(seq 30); do curl -s -o /dev/null -w '%{http_code} ' \\
        localhost:$((8001 + i % 2))/; done; echo

Ctrl-C stops every worker.  (``uvicorn --workers 2`` on one port shares the
limits the same way; separate ports just make it easy to see.)
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class Worker:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_workers(
    ports: list[int], env: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> list[Worker]:
    """Start one uvicorn process of ``app:app`` per port (not waiting for them)."""
    workers: list[Worker] = []
    for port in ports:
        command = [
            sys.executable, "-m", "uvicorn", "app:app",
            "--app-dir", str(HERE),
            "--host", host,
            "--port", str(port),
            "--log-level", "warning",
        ]  # fmt: skip
        process = subprocess.Popen(command, env={**os.environ, **(env or {})})
        workers.append(Worker(port, process))
    return workers


def wait_ready(workers: list[Worker], timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Wait until every worker accepts connections; raise if one dies or is late."""
    deadline = time.monotonic() + timeout
    for worker in workers:
        while True:
            if worker.process.poll() is not None:
                raise RuntimeError(f"worker on port {worker.port} exited")
            try:
                with socket.create_connection((host, worker.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker on port {worker.port} did not start") from None
                time.sleep(0.05)


def stop_workers(workers: list[Worker]) -> None:
    """Stop every worker: SIGTERM, then SIGKILL after 5 seconds."""
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.terminate()
    for worker in workers:
        try:
            worker.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="how many (default 2)")
    parser.add_argument("--port", type=int, default=8001, help="the first port (default 8001)")
    parser.add_argument("--host", default="127.0.0.1", help="where to listen (127.0.0.1)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the workers on SIGTERM too
    workers = start_workers([args.port + i for i in range(args.workers)], host=args.host)
    try:
        wait_ready(workers, host=args.host)
        url = os.environ.get("MAILGUARD_REDIS_URL", "redis://127.0.0.1:6379/0")
        print(f"{len(workers)} workers sharing limits in {url}:")
        for worker in workers:
            print(f"  http://{args.host}:{worker.port}/  (pid {worker.process.pid})")
        print("Ctrl-C to stop.")
        while all(w.process.poll() is None for w in workers):
            time.sleep(0.5)
        return 1  # a worker died
    except KeyboardInterrupt:
        return 0
    finally:
        stop_workers(workers)


if __name__ == "__main__":
    sys.exit(main())
