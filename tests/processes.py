"""Real servers the tests and benchmarks start, and how they are stopped.

Every server a test runs (redis-server, Dovecot, nginx, ``mailguard serve``)
is a child process started on a free loopback port with its files in a
temporary directory, and stopped by its PID: SIGTERM, then SIGKILL after a
grace period (to the whole process group when the server runs in its own
session, so a master's children go too).  :class:`Managed` gives each
harness the same ``stop`` / ``close`` / ``with`` behaviour; a harness
defines ``start`` (returning itself) and ``cleanup`` (its files).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from types import TracebackType
from typing import TypeVar

_M = TypeVar("_M", bound="Managed")


def private_runtime(env: dict[str, str], directory: str | os.PathLike[str]) -> dict[str, str]:
    """``env`` with ``XDG_RUNTIME_DIR`` set to ``directory``, a temporary one.

    gunicorn 25.1 and later open a control socket (for ``gunicornc``) in
    ``$XDG_RUNTIME_DIR``, else in ``~/.gunicorn``: a file in the user's home,
    and one that two gunicorns at once fight over ("Control server error:
    Address ... already in use").  Older gunicorns ignore the variable."""
    return {**env, "XDG_RUNTIME_DIR": os.fspath(directory)}


def stop_process(process: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM ``process`` by its PID; SIGKILL after ``grace`` seconds.

    A process that leads its own session (``start_new_session=True``) is
    killed with its group, so the workers of a master that ignored SIGTERM
    do not outlive the test.
    """
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            leads = os.getpgid(process.pid) == process.pid
        except ProcessLookupError:
            leads = False
        if leads:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait(timeout=grace)


def greets(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a mail server on ``port`` sends its greeting (IMAP, POP3 or SMTP)."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            return sock.recv(200).startswith((b"* OK", b"+OK", b"220"))
    except OSError:
        return False


class Managed:
    """A server process a harness started: stopped by PID, usable in ``with``."""

    process: subprocess.Popen[bytes] | None = None
    grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL."""

    def start(self: _M) -> _M:  # pragma: no cover - every harness defines it
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove the harness's files (its temporary directory)."""

    def stop(self) -> None:
        """Stop the process (see :func:`stop_process`); it can be started again."""
        process, self.process = self.process, None
        stop_process(process, self.grace)

    def close(self) -> None:
        self.stop()
        self.cleanup()

    def __enter__(self: _M) -> _M:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
