"""A throwaway Dovecot (IMAP, POP3 and submission) for tests.

:class:`DovecotServer` runs Debian's ``dovecot`` (2.3) in the foreground
(``dovecot -F -c FILE``) with a configuration of its own in a temporary
directory: ``base_dir``, ``state_dir``, the log, the mail homes and a
``passwd-file`` with the given users and their ``{PLAIN}`` passwords all live
there.  IMAP, POP3 and, when ``dovecot-submissiond`` is installed, submission
listen on free ports of 127.0.0.1; plaintext logins are allowed (``ssl = no``,
``disable_plaintext_auth = no``).  The master runs as root (the tests do);
the login processes run as ``dovenull``, the internal ones as ``dovecot``,
the mail processes as ``nobody``.  :meth:`stop` sends SIGTERM to the PID it
started and waits, and :meth:`close` deletes the directory.

Dovecot's own brakes are switched off (unless ``brakes=True``) so a test's
failing logins run at full speed and only mailguard decides (each would
otherwise slow every failure from one address by half a second to seconds):

- ``auth_failure_delay = 0``: the delay before a failure is answered; even at
  0 the queue of failures is flushed by a 500 ms timer
  (``src/auth/auth-request-handler.c``, ``auth_request_handle_failure`` and
  ``auth_failure_timeout``), so a first passdb, ``static`` with
  ``noauthenticate nodelay=yes``, adds the ``nodelay`` field that answers a
  failure at once.  ``noauthenticate`` makes that passdb check no password and
  decide nothing (``src/auth/auth-request.c``,
  ``auth_request_verify_plain_callback``: its result becomes
  ``PASSDB_RESULT_NEXT``, whose fields are kept when the next passdb, the
  passwd-file, fails: ``auth_request_handle_passdb_callback``).
- the anvil ``auth penalty``: after a failure from an address, the next
  authentication from it waits 2, 4, 8 then 15 seconds
  (``src/auth/auth-penalty.c``, ``auth_penalty_to_secs``).  The auth process
  asks anvil over the socket ``anvil-auth-penalty`` and switches the penalty
  off when that socket does not exist (``auth_penalty_init``, with
  ``ANVIL_CLIENT_FLAG_HIDE_ENOENT``); a unix listener with ``mode = 0`` is not
  created at all (``src/master/service.c``, ``service_create``).

``policy`` (text added at the end of the configuration, e.g. from
:func:`policy_config`) makes the auth process ask a policy server: Dovecot's
auth policy (``src/auth/auth-policy.c``).  :func:`policy_config` reads the
shipped ``examples/dovecot/95-mailguard-policy.conf`` and points it at a given
URL and secret, so the tests drive the example itself.

Test modules build their own fixtures from it::

    with DovecotServer.for_tests({"alice": "right"}) as dovecot:
        imaplib.IMAP4("127.0.0.1", dovecot.imap_port).login("alice", "right")

``for_tests`` skips the test, with the reason, when Dovecot is not installed
(``scripts/test.sh`` installs ``dovecot-imapd``, ``dovecot-pop3d`` and
``dovecot-submissiond`` as root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from processes import Managed, greets
from redis_server import free_port

__all__ = [
    "EXAMPLE_SECRET",
    "EXAMPLE_URL",
    "POLICY_EXAMPLE",
    "DovecotServer",
    "dovecot_binary",
    "has_submission",
    "policy_config",
]

ROOT = Path(__file__).resolve().parent.parent
POLICY_EXAMPLE = ROOT / "examples" / "dovecot" / "95-mailguard-policy.conf"
"""The shipped ``conf.d`` snippet :func:`policy_config` loads."""

SECRET_EXAMPLE = ROOT / "examples" / "dovecot" / "mailguard-secret.conf.ext"
"""The root-only file holding the secret header, included by the snippet."""
SECRET_INCLUDE = "/etc/dovecot/mailguard-secret.conf.ext"
EXAMPLE_URL = "http://127.0.0.1:8787/dovecot"
"""The policy server URL written in the example, replaced by the test's."""
EXAMPLE_SECRET = "change-this-secret"
"""The secret written in the example, replaced by the test's."""

LIBEXEC = Path("/usr/lib/dovecot")
"""Where Debian puts Dovecot's service binaries (``imap-login``, ...)."""


def dovecot_binary() -> str | None:
    """The ``dovecot`` master binary, or None when Dovecot is not installed."""
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if (
        found is None
        or not (LIBEXEC / "imap-login").exists()
        or not (LIBEXEC / "pop3-login").exists()
    ):
        return None
    return found


def has_submission() -> bool:
    """Whether ``dovecot-submissiond`` (SMTP submission with AUTH) is installed."""
    return (LIBEXEC / "submission-login").exists() and (LIBEXEC / "submission").exists()


def policy_config(url: str, secret: str, template: Path = POLICY_EXAMPLE) -> str:
    """The example auth-policy snippet pointed at ``url`` with ``secret``.

    Raises ValueError when the template no longer holds the URL or secret it
    is expected to (the example changed: the test must follow it).
    """
    text = template.read_text(encoding="utf-8")
    if template == POLICY_EXAMPLE:  # the secret lives in a root-only include
        include = f"!include_try {SECRET_INCLUDE}\n"
        if text.count(include) != 1:
            raise ValueError(f"{template} no longer contains {include!r} once")
        text = text.replace(include, SECRET_EXAMPLE.read_text(encoding="utf-8"))
    for old in (EXAMPLE_URL, EXAMPLE_SECRET):
        if old not in text:
            raise ValueError(f"{template} no longer contains {old!r}")
    return text.replace(EXAMPLE_URL, url).replace(EXAMPLE_SECRET, secret)


CONFIG = """\
# A private Dovecot for mailguard's tests (tests/dovecot_server.py).
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = mailguard-test-{imap_port}
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
debug_log_path = {dir}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
verbose_proctitle = yes
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
mail_location = maildir:~/Maildir
first_valid_uid = 1
hostname = mail.test
submission_relay_host = 127.0.0.1
submission_relay_port = {relay_port}
login_greeting = Dovecot ready.
login_trusted_networks = {trusted}
{brakes_off}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={dir}/home/%u
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{submission}
"""

BRAKES_OFF = """
# Dovecot's own brakes off (see tests/dovecot_server.py's docstring)
auth_failure_delay = 0
passdb {
  # adds nodelay=yes and authenticates nobody
  driver = static
  args = noauthenticate nodelay=yes
}
service anvil {
  # no auth penalty
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}
"""

SUBMISSION = """\
service submission-login {{
  inet_listener submission {{
    address = 127.0.0.1
    port = {submission_port}
  }}
}}
"""


class DovecotServer(Managed):
    """One Dovecot on 127.0.0.1 with a passwd-file of ``users`` (name -> password).

    ``policy`` is configuration text appended at the end (auth policy
    settings, from :func:`policy_config`); ``submission`` asks for the SMTP
    submission service too (default: when it is installed); ``brakes=True``
    keeps Dovecot's own failure delay and auth penalty (off by default);
    ``trusted_networks`` is ``login_trusted_networks`` (peers that may name
    the client: IMAP ``ID x-originating-ip``, POP3 and SMTP ``XCLIENT``).
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        policy: str = "",
        submission: bool | None = None,
        brakes: bool = False,
        trusted_networks: str = "",
        binary: str | None = None,
    ) -> None:
        found = binary or dovecot_binary()
        if found is None:
            raise FileNotFoundError("dovecot (with imap-login and pop3-login) is not installed")
        self.binary = found
        self.users = dict(users)
        self.policy = policy
        self.submission = has_submission() if submission is None else submission
        self.brakes = brakes
        self.trusted_networks = trusted_networks
        self.imap_port = free_port()
        self.pop3_port = free_port()
        self.submission_port = free_port() if self.submission else 0
        self.tmp = tempfile.TemporaryDirectory(prefix="mailguard-dovecot-")
        self.dir = Path(self.tmp.name)
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_tests(cls, users: Mapping[str, str], **options: object) -> DovecotServer:
        """A started server, or ``pytest.skip`` when Dovecot is not installed."""
        import pytest

        if dovecot_binary() is None:
            pytest.skip(
                "dovecot is not installed (scripts/test.sh installs dovecot-imapd and"
                " dovecot-pop3d as root)"
            )
        if os.geteuid() != 0:
            pytest.skip("the private Dovecot runs its master as root")
        server = cls(users, **options)  # type: ignore[arg-type]
        try:
            return server.start()
        except BaseException:
            server.close()
            raise

    @property
    def config_path(self) -> Path:
        return self.dir / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "dovecot.log"

    def log(self, last: int = 6000) -> str:
        """The end of Dovecot's log (and of what it wrote on stderr), for messages."""
        parts = []
        for path in (self.dir / "stderr.log", self.log_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "".join(parts)[-last:]

    def write_config(self) -> None:
        nobody = pwd.getpwnam("nobody")
        # The mail processes (as nobody) and the auth process (as dovecot)
        # read and write below the directory: open it up (it holds nothing
        # but this test's throwaway data).
        os.chmod(self.dir, 0o755)
        for sub in ("run", "state"):
            (self.dir / sub).mkdir(exist_ok=True)
        home = self.dir / "home"
        home.mkdir(exist_ok=True)
        for user in self.users:
            (home / user).mkdir(exist_ok=True)
            os.chown(home / user, nobody.pw_uid, nobody.pw_gid)
        lines = [f"{user}:{{PLAIN}}{password}\n" for user, password in self.users.items()]
        users = self.dir / "users"
        users.write_text("".join(lines), encoding="utf-8")
        os.chmod(users, 0o644)
        protocols = "imap pop3" + (" submission" if self.submission else "")
        submission = (
            SUBMISSION.format(submission_port=self.submission_port) if self.submission else ""
        )
        text = CONFIG.format(
            dir=self.dir,
            protocols=protocols,
            imap_port=self.imap_port,
            pop3_port=self.pop3_port,
            relay_port=free_port(),  # nothing listens: submission never relays in the tests
            uid=nobody.pw_uid,
            gid=nobody.pw_gid,
            submission=submission,
            brakes_off="" if self.brakes else BRAKES_OFF,
            trusted=self.trusted_networks,
        )
        if self.policy:
            text += "\n# auth policy\n" + self.policy + "\n"
        self.config_path.write_text(text, encoding="utf-8")

    def start(self, timeout: float = 15.0) -> DovecotServer:
        """Start Dovecot (again) and wait until every listener greets."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.write_config()
        with open(self.dir / "stderr.log", "ab") as stderr:
            self.process = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                cwd=self.dir,
                start_new_session=True,  # a Ctrl-C of pytest is ours to forward
            )
        ports = [self.imap_port, self.pop3_port]
        if self.submission:
            ports.append(self.submission_port)
        deadline = time.monotonic() + timeout
        for port in ports:
            while not self.greets(port):
                if self.process.poll() is not None:
                    code = self.process.returncode
                    raise RuntimeError(f"dovecot exited with {code}:\n{self.log()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dovecot did not answer on port {port}:\n{self.log()}")
                time.sleep(0.05)
        return self

    greets = staticmethod(greets)

    def cleanup(self) -> None:
        self.tmp.cleanup()
