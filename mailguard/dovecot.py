"""Dovecot's auth policy (``POST /dovecot?command=allow|report``) on the login seam.

What Dovecot sends and how it reads the answer (Dovecot 2.3,
``src/auth/auth-policy.c``; 2.4 is the same where it matters here):

- ``auth_policy_check`` posts ``?command=allow`` (``auth_policy_url``
  appends ``?command=`` or, after a trailing ``&``, ``command=``) with a JSON
  object built from ``auth_policy_request_attributes``.  Its default
  (``src/auth/auth-settings.c``) differs by version: the auth policy exists
  since 2.2.25 (``login``, ``pwhash``, ``remote``), 2.2.29 added
  ``device_id`` and ``protocol``, 2.3.11 ``session_id=%{session}``, 2.4
  ``fail_type``; no version sends the mechanism.  So the documentation always
  sets it explicitly, with ``session_id=%{session} mech=%{mech}`` (2.4:
  ``%{mechanism}``).
  Every value is a JSON string (``auth_policy_escape_function``), and
  ``auth_policy_create_json`` adds ``"tls": true|false``.
  ``auth_policy_report`` posts ``?command=report`` with the same object plus
  ``"success"`` and ``"policy_reject"`` (booleans).  ``pwhash`` is
  ``auth_policy_hash_mech(nonce + login + "\\0" + password)``, truncated to
  ``auth_policy_hash_truncate`` bits (12 by default); for a mechanism other
  than PLAIN and LOGIN there is no password in it (:data:`PLAINTEXT_MECHS`).
- A right password calls ``allow`` twice with the same JSON: before the
  passdb lookup (``auth_request_verify_plain``) and after it succeeded
  (``auth_request_success``, ``policy_check_after_auth``), then ``report``
  (``auth-request-handler.c``).  A wrong one calls ``allow`` once, then
  ``report`` with ``success: false``.
- ``auth_policy_process_response``: any status but 2xx (a redirect too) is
  logged as "Policy server HTTP error" and the login goes on with the default
  result, 0, or -1 with ``auth_policy_reject_on_fail = yes``.
- ``auth_policy_parse_response``: ``status`` must be a JSON number that
  ``str_to_int`` takes (``-1.0`` and ``"-1"`` are not), ``msg`` a JSON string
  (``null`` is not); anything else is "malformed" and gets the same default.
  A status < 0 fails the login (``msg`` becomes the reason), > 0 delays it
  that many seconds (``auth_request_policy_check_callback``), 0 lets it go on.
- The request has ``auth_policy_server_timeout_msecs`` (2000) to complete.

So every answer of ours is a 2xx with ``{"status": <int>, "msg": <str>}``,
except where the request itself is broken (not JSON, wrong types: a
configuration mistake, not something a client can cause), which gets a 400
that Dovecot logs as an error and then follows its own
``auth_policy_reject_on_fail``: the admin sees it and the admin's choice
applies.  A request we cannot count (no client address: ``remote`` empty,
as for a login over a local socket) answers status 0 and counts nothing.

Pairing: an ``allow`` begins an attempt (holding a slot, so a parallel
burst is held to the limit, as on HTTP) and its ``report`` ends it.  They are
paired by ``session_id``, login and ``pwhash``; without ``session_id``
(Postfix/Exim SASL, Dovecot before 2.3.11 with its default attributes) by
remote address, login, ``pwhash`` and protocol (:func:`_session_key`).

The repeated-password rule (``count_repeated_password = false``) reads
``pwhash`` only when ``mech`` is PLAIN or LOGIN and the hash has at least 32
bits (:meth:`DovecotRequest.repeat_hash`); any other failure counts.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .mailauth import Decision, MailLogins, protocol_name
from .policies.login import LoginVerdict, Outcome

__all__ = ["MAX_BODY", "DovecotFront", "DovecotRequest", "parse_request"]

MAX_BODY = 256 * 1024
"""The largest request body read.  Dovecot's auth protocol lines are at most
16 KiB (``AUTH_CLIENT_MAX_LINE_LENGTH``), and JSON escaping at most
multiplies a login by six, so a real request is always far smaller."""

MAX_SESSION_ID = 256
_STRINGS = (
    "login",
    "pwhash",
    "remote",
    "protocol",
    "session_id",
    "device_id",
    "fail_type",
    "mech",
)
PLAINTEXT_MECHS = frozenset({"PLAIN", "LOGIN"})
"""The mechanisms whose password Dovecot hashes into ``pwhash``.

Only ``auth_request_verify_plain`` (``src/auth/auth-request.c``, Dovecot
2.3/2.4) sets ``request->mech_password``, and ``auth_policy_create_json``
(``src/auth/auth-policy.c``) hashes ``nonce + login + "\\0"`` and then the
password only when it is set.  CRAM-MD5, DIGEST-MD5, SCRAM-* and the other
``lookup_credentials`` mechanisms never set it, so every guess at one account
has the same ``pwhash``: the repeated-password rule must not read it."""
MIN_PWHASH_HEX = 8
"""``pwhash`` shorter than this (32 bits, ``auth_policy_hash_truncate = 32``)
is not used by the repeated-password rule: with Dovecot's default of 12 bits
one fresh guess in 4096 would look like a repeat and go uncounted."""
_HEX = frozenset("0123456789abcdefABCDEF")


class BadRequest(ValueError):
    """The request is not what Dovecot sends: answered with a 400."""


@dataclass(frozen=True, slots=True)
class DovecotRequest:
    """One request's fields, checked."""

    login: str
    pwhash: str
    remote: str
    protocol: str
    session_id: str
    success: bool | None
    policy_reject: bool
    fail_type: str
    mech: str = ""

    def repeat_hash(self) -> str | None:
        """``pwhash`` when it can tell one password from another: a plaintext
        mechanism (``mech`` PLAIN or LOGIN) and at least 32 bits; else None,
        and the failure counts as any other (see :data:`PLAINTEXT_MECHS`)."""
        pwhash = self.pwhash
        if self.mech.upper() not in PLAINTEXT_MECHS or len(pwhash) < MIN_PWHASH_HEX:
            return None
        if not all(ch in _HEX for ch in pwhash):
            return None
        return pwhash


def parse_request(body: bytes, command: str) -> DovecotRequest:
    """Read a request body; :class:`BadRequest` when it is not Dovecot's JSON."""
    try:
        data = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        # ValueError: not UTF-8, not JSON, a number of too many digits; RecursionError: nesting
        raise BadRequest("body: expected a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequest("body: expected a JSON object")
    get = data.get
    text: dict[str, str] = {}
    for name in _STRINGS:
        value = get(name)
        if value.__class__ is not str:  # json gives exact types: a str, or not one
            if value is not None:
                raise BadRequest(f"{name}: expected a string")
            value = ""
        text[name] = value
    success = get("success")
    reject = get("policy_reject", False)
    if command == "report":
        if not isinstance(success, bool):
            raise BadRequest("success: expected true or false in a report")
        if not isinstance(reject, bool):
            raise BadRequest("policy_reject: expected true or false")
    else:
        success, reject = None, False
    session = text["session_id"]
    return DovecotRequest(
        login=text["login"],
        pwhash=text["pwhash"],
        remote=text["remote"].strip(),
        protocol=protocol_name(text["protocol"] or "unknown"),
        session_id=session if len(session) <= MAX_SESSION_ID else "",
        success=success,
        policy_reject=bool(reject),
        fail_type=text["fail_type"],
        mech=text["mech"].strip()[:32],
    )


def answer(status: int, msg: str = "") -> dict[str, Any]:
    """The one shape Dovecot reads: an integer status and a string msg."""
    return {"status": int(status), "msg": str(msg)}


OK = answer(0)


class DovecotFront:
    """Translates Dovecot's ``allow`` and ``report`` onto :class:`MailLogins`."""

    def __init__(self, logins: MailLogins) -> None:
        self.logins = logins

    async def handle(self, command: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``(http_status, json)`` for one request already let in."""
        if command not in ("allow", "report"):
            return 400, answer(0, "command: expected allow or report")
        try:
            request = parse_request(body, command)
        except BadRequest as exc:
            return 400, answer(0, str(exc))
        if not request.remote:
            return 200, OK  # no network address (a local socket): nothing to count by
        who = self.logins.client(request.remote)
        if who is None:
            return 400, answer(0, "remote: expected an IP address")
        if command == "allow":
            return 200, await self.allow(request, who)
        await self.report(request, who)
        return 200, OK

    async def allow(self, request: DovecotRequest, who: Any) -> dict[str, Any]:
        logins = self.logins
        login = request.login or None
        key = _session_key(request, who.key)
        if logins.sessions.has(key):
            # the second allow of a login that passed (policy_check_after_auth):
            # the same session, login and password hash as the first.  Without
            # a session (Postfix/Exim SASL) it may also be the same password
            # tried again in parallel: no new guess, and its report still counts
            return OK
        decision = await logins.begin(who, login, request.protocol)
        if decision.allowed and await logins.undecided_over(who):
            # only undecided checks (fail_type internal) from this address of late:
            # refused without a password check, and no block (issue #14 F5)
            await logins.finish(decision.ticket, Outcome.UNKNOWN)
            return answer(-1, "Login temporarily unavailable, try again later")
        if isinstance(decision.ticket, LoginVerdict):
            logins.sessions.put(key, decision.ticket)
        return _reply(decision)

    async def report(self, request: DovecotRequest, who: Any) -> None:
        logins = self.logins
        ticket = logins.sessions.pop(_session_key(request, who.key))
        if request.policy_reject:
            # we refused it: it held no slot and is no failure of the client
            if ticket is not None:
                await logins.finish(ticket, Outcome.UNKNOWN)
            return
        if request.success:
            outcome = Outcome.SUCCEEDED
        elif request.fail_type == "internal":
            outcome = Outcome.UNKNOWN  # Dovecot 2.4: the passdb failed, not the client
            await logins.undecided(who)
        else:
            outcome = Outcome.FAILED
        login = request.login or None
        if ticket is None:
            if outcome is Outcome.UNKNOWN:
                return
            # no allow of ours began it: begin and end at once, so no failure is lost
            decision = await logins.begin(who, login, request.protocol)
            if decision.reason in ("busy", "tarpit"):  # other attempts hold the places
                ticket = logins.unpaired(who, login, request.protocol)
            elif not decision.allowed:
                return  # blocked already (or the store is down and closed)
            else:
                ticket = decision.ticket
        await logins.finish(ticket, outcome, pwhash=request.repeat_hash())


def _session_key(request: DovecotRequest, client: str) -> tuple[str, str, bytes]:
    """Which held attempt an ``allow`` or ``report`` belongs to.

    One Dovecot connection is one ``session_id`` for every login tried on
    it, and a ``report`` may reach us after the next attempt's ``allow``
    (both are HTTP requests of their own).  Only an ``allow`` with the same
    login and password hash as the held one is that login's second check
    (``auth_request_success`` repeats the very JSON of the first); any other
    begins an attempt of its own, so pipelined guesses on one connection
    each hold a slot.  Login and hash are kept as a 16-byte digest: the map
    holds up to ``max_sessions`` entries whatever the logins' length.

    Without a ``session_id`` (Postfix and Exim over Dovecot's SASL socket:
    ``xsasl_dovecot_server.c`` sends ``AUTH ... service=smtp nologin lip=
    rip=`` and no ``session``; Dovecot before 2.3.11 with its default
    attributes) the key is the remote address, login, ``pwhash`` and
    protocol: each different password holds a slot, so a parallel burst is
    held to the limit; the same password again while one is held is no new
    guess and holds none (its report still counts, unpaired).  The gap: a
    mechanism whose ``pwhash`` hashes no password (CRAM-MD5 & co over SASL,
    :data:`PLAINTEXT_MECHS`) gives every guess at one account the same key,
    so parallel guesses there are counted by their reports but not held.
    """
    parts = [request.login, request.pwhash]
    if not request.session_id:
        parts.append(request.protocol)
    digest = hashlib.blake2b(
        b"\0".join(part.encode("utf-8", "surrogatepass") for part in parts),
        digest_size=16,
    ).digest()
    return (request.session_id, client, digest)


def _reply(decision: Decision) -> dict[str, Any]:
    if not decision.allowed:
        return answer(-1, decision.message())
    if decision.delay > 0.0:
        return answer(max(1, math.ceil(decision.delay)))
    return OK
