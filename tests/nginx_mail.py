"""A throwaway nginx mail proxy (IMAP, POP3, SMTP) for tests.

:class:`NginxMail` runs Debian's ``nginx`` with the ``mail {}`` block of
``examples/nginx-mail/nginx-mail.conf`` (the shipped example itself, so it
stays true), pointed at a given ``auth_http`` URL and secret, its three
listeners moved to free ports of 127.0.0.1.  Around the block it writes what
a whole ``nginx.conf`` needs: ``load_module`` of Debian's dynamic
``ngx_mail_module.so`` (``libnginx-mod-mail``), ``daemon off``, and the PID
file and error log in a temporary directory (``-p`` and ``-e`` keep nginx
away from /var/log/nginx too).  :meth:`stop` sends SIGTERM to the PID it
started and waits; :meth:`close` deletes the directory.

nginx asks ``auth_http`` once per login attempt and connects to the
``Auth-Server``/``Auth-Port`` it answers (the backend is mailguard's to name,
nginx has none of its own); the client's address reaches the auth server in
``Client-IP`` (``src/mail/ngx_mail_auth_http_module.c``,
``ngx_mail_auth_http_create_request``).

``for_tests`` skips the test, with the reason, when nginx or its mail module
is missing (``scripts/test.sh`` installs ``nginx-light`` and
``libnginx-mod-mail`` as root).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from processes import Managed, greets
from redis_server import free_port

__all__ = ["MAIL_EXAMPLE", "MAIL_MODULE", "NginxMail", "mail_block", "nginx_binary"]

ROOT = Path(__file__).resolve().parent.parent
MAIL_EXAMPLE = ROOT / "examples" / "nginx-mail" / "nginx-mail.conf"
"""The shipped ``mail {}`` block the proxy runs."""
SECRET_EXAMPLE = ROOT / "examples" / "nginx-mail" / "mailguard-secret.conf"
"""The root-only file holding ``auth_http_header``, included by the block."""
MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")
"""Debian's dynamic mail module (package ``libnginx-mod-mail``)."""

EXAMPLE_AUTH = "127.0.0.1:8787/nginx"
EXAMPLE_SECRET = "change-this-secret"
EXAMPLE_LISTEN = {"imap": "listen 143;", "pop3": "listen 110;", "smtp": "listen 587;"}


def nginx_binary() -> str | None:
    """The ``nginx`` binary, or None when it is not installed."""
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def mail_block(
    auth_http: str, secret: str, ports: dict[str, int], template: Path = MAIL_EXAMPLE
) -> str:
    """The example's text with its auth server, secret and listeners replaced.

    ``auth_http`` is ``HOST:PORT/PATH`` (or ``http://...``); ``ports`` maps
    ``imap``, ``pop3`` and ``smtp`` to a port on 127.0.0.1.  Raises
    ValueError when the example no longer holds what is replaced (it changed:
    the test must follow it).
    """
    text = template.read_text(encoding="utf-8")
    header = f"auth_http_header X-Mailguard-Secret {EXAMPLE_SECRET};"
    if header not in SECRET_EXAMPLE.read_text(encoding="utf-8"):
        raise ValueError(f"{SECRET_EXAMPLE} no longer holds {header!r}")
    changes = {
        f"auth_http {EXAMPLE_AUTH};": f"auth_http {auth_http};",
        # the example includes the secret from a root-only file: inlined here
        "include /etc/nginx/mailguard-secret.conf;": (
            f"auth_http_header X-Mailguard-Secret {secret};"
        ),
    }
    for protocol, listen in EXAMPLE_LISTEN.items():
        changes[listen] = f"listen 127.0.0.1:{ports[protocol]};"
    for old, new in changes.items():
        if text.count(old) != 1:
            raise ValueError(f"{template} does not contain {old!r} exactly once")
        text = text.replace(old, new)
    return text


MAIN = """\
# A private nginx mail proxy for mailguard's tests (tests/nginx_mail.py).
load_module {module};
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{
    worker_connections 256;
}}

{mail}
"""


class NginxMail(Managed):
    """nginx's mail proxy on 127.0.0.1, asking ``auth_http`` with ``secret``.

    ``imap_port``, ``pop3_port`` and ``smtp_port`` are where it listens.
    """

    def __init__(
        self,
        auth_http: str,
        secret: str,
        *,
        binary: str | None = None,
        module: Path = MAIL_MODULE,
        template: Path = MAIL_EXAMPLE,
    ) -> None:
        found = binary or nginx_binary()
        if found is None:
            raise FileNotFoundError("nginx is not installed")
        self.binary = found
        self.module = module
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.smtp_port = free_port()
        ports = {"imap": self.imap_port, "pop3": self.pop3_port, "smtp": self.smtp_port}
        self.block = mail_block(auth_http, secret, ports, template)
        self.tmp = tempfile.TemporaryDirectory(prefix="mailguard-nginx-mail-")
        self.dir = Path(self.tmp.name)
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_tests(cls, auth_http: str, secret: str) -> NginxMail:
        """A started proxy, or ``pytest.skip`` when nginx or its mail module is missing."""
        import pytest

        if nginx_binary() is None:
            pytest.skip("nginx is not installed (scripts/test.sh installs nginx-light as root)")
        if not MAIL_MODULE.exists():
            pytest.skip(
                f"{MAIL_MODULE} is missing (scripts/test.sh installs libnginx-mod-mail as root)"
            )
        proxy = cls(auth_http, secret)
        try:
            return proxy.start()
        except BaseException:
            proxy.close()
            raise

    @property
    def config_path(self) -> Path:
        return self.dir / "nginx.conf"

    def log(self, last: int = 6000) -> str:
        """The end of nginx's error log (and of its stderr), for messages."""
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)[-last:]

    def start(self, timeout: float = 15.0) -> NginxMail:
        """Start nginx (again) and wait until every listener greets."""
        if self.process is not None and self.process.poll() is None:
            return self
        text = MAIN.format(module=self.module, dir=self.dir, mail=self.block)
        self.config_path.write_text(text, encoding="utf-8")
        command = [
            self.binary,
            "-p", str(self.dir),
            "-e", str(self.dir / "error.log"),
            "-c", str(self.config_path),
        ]  # fmt: skip
        with open(self.dir / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.dir,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        for port in (self.imap_port, self.pop3_port, self.smtp_port):
            while not self.greets(port):
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise RuntimeError(f"nginx exited with {code}:\n{self.log()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"nginx did not answer on port {port}:\n{self.log()}")
                time.sleep(0.05)
        return self

    greets = staticmethod(greets)

    def cleanup(self) -> None:
        self.tmp.cleanup()
