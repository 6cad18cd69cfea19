"""Reading a request the way the application behind will: paths, accounts, bodies.

Every filter reads requests through this module, so a rule is written once:
one path rule for every path option of every filter, one account normalizer,
and one set of bounded body readers.  Everything here is pure, never raises on
request text, and does a bounded amount of work per request.

Paths
    Every path option (``exempt_paths``, ``login_paths``, ``auth_paths``,
    DeviceJail's ``paths`` and ``header_paths``) takes the same entries:

    ``"/login"``
        exactly that path;
    ``"/dav/"``
        that path and everything below it (``/dav/alice/cal``); ``"/"`` alone
        is the exact root, never every path;
    ``"/remote.php/dav*"``
        every path that starts with ``/remote.php/dav`` (a plain prefix);
    ``"*"``
        every path.

    How a request's path is compared depends on what the option does, because
    an attacker picks the spelling that helps them:

    * options that switch protection **on** (``login_paths``, ``auth_paths``,
      ``paths``, ``header_paths``) match *generously*, every spelling a server
      or an application may take for the entry: without regard to case, with
      runs of ``/`` folded, ``;`` path parameters dropped from each segment
      (``/login;jsessionid=1``), ``\\`` read as ``/``, ``.`` and ``..``
      segments resolved, ``%XX`` escapes decoded once more (the server decoded
      them once already) and a trailing ``/`` ignored.  So ``/Login/``,
      ``//login``, ``/x/../login`` and ``/%6Cogin`` are all ``/login``.
    * options that switch protection **off** (``exempt_paths``) match
      *strictly*: the path exactly as the server decoded it, case included.
      A path below an ``"/assets/"`` or ``"/static*"`` entry is exempt only
      when it is already in plain form (no ``//``, no ``.`` or ``..``
      segment, no ``;``, ``\\`` or ``%``), so an exempt prefix cannot be used
      to reach another path.  ``"*"`` and ``"/*"`` are refused there: they
      would switch the filter off.

    So ``/HEALTH`` is never exempt by ``"/health"``, while ``/Login`` is a
    login under ``"/login"``.

Accounts
    :func:`normalize_account` is the one account normalizer (the login
    filter's form fields and Basic credentials, DeviceJail's ActiveSync
    ``User`` and Basic user): the text is cut at the first NUL (C back ends
    stop there), trimmed of whitespace, control and zero-width characters,
    put in Unicode NFKC form and case-folded (``Victim``, ``victim\\0`` and the
    same in full-width letters are one account), loses a ``DOMAIN\\`` prefix
    (``strip_domain``, on by default) and, when ``default_domain`` is set,
    gains ``@default_domain`` if it has no ``@``.  A result longer than 256
    characters, or an input longer than 1024 after trimming, is no account
    (None), as is an empty one.  Basic credentials (:func:`basic_user`) are
    decoded as UTF-8, or as Latin-1 when they are not UTF-8.

Bodies
    :func:`body_fields` reads the form fields of a buffered body: urlencoded,
    multipart (CRLF or bare LF line ends) or JSON (an object's string
    members; also when sent as ``text/plain`` or any other type, if the body
    is a JSON object).  The media type is cut at the first ``;``, ``,`` or
    space, as PHP does.  With ``php=True`` parameter names are read as PHP
    reads them (``.`` and spaces become ``_``).  When the reader cannot tell
    what the application will see (the body was cut short or not buffered, a
    multipart body never closed, JSON that does not parse), it says so
    (``complete`` False), and the login filter then counts the request as an
    attempt.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import unquote, unquote_to_bytes

from .options import option_error, strings
from .request import Request

__all__ = [
    "DEFAULT_ACCOUNTS",
    "AccountRule",
    "Fields",
    "PathRule",
    "RequestFields",
    "authorization_user",
    "basic_user",
    "body_fields",
    "form_fields",
    "form_pairs",
    "json_fields",
    "media_kind",
    "multipart_fields",
    "normalize_account",
    "php_name",
    "plain_form_values",
    "request_body_fields",
]


# --------------------------------------------------------------------- paths
_SLASHES = re.compile(r"/{2,}")
_PARAMS = re.compile(r";[^/]*")
_CACHED_PATHS = 1024  # answers remembered per rule (a busy site asks for few paths)
_CACHED_PATH = 256  # longer paths are decided every time, never remembered


def _canonical(path: str) -> str:
    """The spelling a lenient server or application may give ``path``."""
    if path[:1] != "/":
        path = "/" + path
    if "%" in path:
        path = unquote(path)  # the back end may decode once more
    if "\\" in path:
        path = path.replace("\\", "/")
    if ";" in path:
        path = _PARAMS.sub("", path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        out: list[str] = []
        for segment in path.split("/")[1:]:
            if segment == "..":
                if out:
                    out.pop()
            elif segment != ".":
                out.append(segment)
        path = "/" + "/".join(out)
    return path


def _fold(path: str) -> str:
    """A path as protective rules compare it (before the trailing ``/`` is dropped)."""
    if (
        path[:1] != "/"
        or "%" in path
        or "\\" in path
        or ";" in path
        or "//" in path
        or "/." in path
    ):
        path = _canonical(path)
    return path.lower() if path.isascii() else path.casefold()


def _plain(path: str) -> bool:
    """Whether ``path`` has no spelling that could lead somewhere else."""
    return not ("//" in path or "/." in path or ";" in path or "\\" in path or "%" in path)


class PathRule:
    """One path option, matched as the module docstring says.

    :param name: the option's name, for error messages.
    :param entries: the option's entries (each starts with ``/``, or is ``*``).
    :param protective: True for an option that switches protection on
        (matched generously), False for one that switches it off (strictly).

    ``exact`` holds the exact paths (and the roots of ``/``-ending entries)
    as compared, ``prefixes`` the prefixes.
    """

    __slots__ = ("_seen", "any", "entries", "exact", "name", "prefixes", "protective")

    def __init__(self, name: str, entries: object, *, protective: bool) -> None:
        self.name = name
        self.protective = protective
        self.entries = strings(name, entries)
        self.any = False
        exact: set[str] = set()
        prefixes: list[str] = []
        for entry in self.entries:
            if entry == "*" or (not protective and entry == "/*"):
                if not protective:
                    raise option_error(
                        name, f"{entry!r} would match every path and switch the filter off"
                    )
                self.any = True
                continue
            if not entry.startswith("/"):
                extra = " (or be '*')" if protective else ""
                raise option_error(name, f"{entry!r} must start with '/'{extra}")
            if entry.endswith("*"):
                prefixes.append(_fold(entry[:-1]) if protective else entry[:-1])
            elif entry == "/" or not entry.endswith("/"):
                exact.add(self._exact(entry))
            elif protective:  # "/dav/": the path itself and everything below it
                root = self._exact(entry)
                exact.add(root)
                prefixes.append(root + "/")
            else:
                prefixes.append(entry)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self._seen: dict[str, bool] = {}

    def _exact(self, entry: str) -> str:
        if not self.protective:
            return entry
        folded = _fold(entry)
        return folded.rstrip("/") or "/"

    def __bool__(self) -> bool:
        return self.any or bool(self.exact) or bool(self.prefixes)

    def match(self, path: str) -> bool:
        """Whether ``path`` (as the server decoded it) is one of the entries."""
        seen = self._seen.get(path)
        if seen is not None:
            return seen
        found = self.decide(path)
        if len(path) <= _CACHED_PATH:
            if len(self._seen) >= _CACHED_PATHS:
                self._seen.clear()
            self._seen[path] = found
        return found

    def decide(self, path: str) -> bool:
        """:meth:`match` without the cache: the rule itself."""
        if not self.protective:
            if path in self.exact:
                return True
            return bool(self.prefixes) and path.startswith(self.prefixes) and _plain(path)
        if self.any:
            return True
        p = _fold(path)
        if self.prefixes and p.startswith(self.prefixes):
            return True
        if len(p) > 1 and p.endswith("/"):
            p = p.rstrip("/") or "/"
        return p in self.exact

    def __repr__(self) -> str:
        kind = "protective" if self.protective else "strict"
        return f"PathRule({self.name!r}, {list(self.entries)!r}, {kind})"


# ------------------------------------------------------------------ accounts
MAX_ACCOUNT = 256
"""Longest account name, in characters after normalising; longer is no account."""

_MAX_ACCOUNT_INPUT = 4 * MAX_ACCOUNT  # longer inputs are not normalised at all
_MAX_CREDENTIALS = 4096  # longer Basic tokens are not decoded

# Trimmed from both ends of an account: every character str.isspace() knows,
# the C0 and C1 controls, and the zero-width and direction marks.
_TRIM = (
    "".join(map(chr, range(0x21)))
    + "".join(map(chr, range(0x7F, 0xA1)))
    + "\u00ad\u1680\u180e"
    + "".join(map(chr, range(0x2000, 0x2010)))
    + "\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u202f\u205f"
    + "\u2060\u2061\u2062\u2063\u2064\u3000\ufeff"
)


def _normal_form(text: str) -> str:
    """NFKC and case folding, to a fixed point (at most a few rounds)."""
    for _ in range(4):
        folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
        if folded == text:
            break
        text = folded
    return text


def normalize_account(
    text: str | None, *, strip_domain: bool = True, default_domain: str | None = None
) -> str | None:
    """An account name as counted, or None when there is none (see the module docs).

    ``default_domain`` must already be normalised (:class:`AccountRule` does it).
    """
    if not text:
        return None
    if "\x00" in text:
        text = text.partition("\x00")[0]
    name = text.strip(_TRIM)
    if len(name) > _MAX_ACCOUNT_INPUT:
        return None
    name = name.lower() if name.isascii() else _normal_form(name).strip(_TRIM)
    if strip_domain and "\\" in name:
        name = name.rpartition("\\")[2].strip(_TRIM)
    if not name:
        return None
    if default_domain and "@" not in name:
        name = f"{name}@{default_domain}"
    return name if len(name) <= MAX_ACCOUNT else None


def basic_user(token: str) -> str | None:
    """The user of HTTP Basic credentials (the base64 part), decoded, not normalised.

    UTF-8, else Latin-1.  Broken base64, a missing ``:`` or a token over 4096
    characters give None; never raises.
    """
    token = token.strip()
    if not token or len(token) > _MAX_CREDENTIALS:
        return None
    try:
        raw = base64.b64decode(token, validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        return None
    user, colon, _ = raw.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8")
    except UnicodeDecodeError:
        return user.decode("latin-1")


def authorization_user(value: str | None) -> str | None:
    """The user of an ``Authorization: Basic ...`` header value (decoded, not normalised)."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    return basic_user(token)


@dataclass(frozen=True, slots=True)
class AccountRule:
    """The account normalizer with its options (see :func:`normalize_account`).

    :param strip_domain: ``CORP\\jdoe`` -> ``jdoe`` (default True).
    :param default_domain: when set, ``jdoe`` -> ``jdoe@<default_domain>``,
        so ``jdoe`` and ``jdoe@example.com`` are one account.
    """

    strip_domain: bool = True
    default_domain: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.strip_domain, bool):
            raise option_error("strip_domain", f"must be True or False, got {self.strip_domain!r}")
        domain = self.default_domain
        if domain is None:
            return
        folded = normalize_account(domain, strip_domain=False) if isinstance(domain, str) else None
        if folded is None or any(c in folded for c in "@\\/ ") or len(folded) > 200:
            raise option_error(
                "default_domain", f"must be a domain such as 'example.com', got {domain!r}"
            )
        object.__setattr__(self, "default_domain", folded)

    def normalize(self, text: str | None) -> str | None:
        """The account ``text`` names, or None."""
        if (
            text
            and len(text) <= MAX_ACCOUNT
            and text.isascii()
            and text.isprintable()
            and "\\" not in text
            and text[0] != " "
            and text[-1] != " "
        ):
            # plain ASCII (jdoe@example.com): nothing to cut, trim or fold but the case
            name = text.lower()
            domain = self.default_domain
            if domain and "@" not in name:
                name = f"{name}@{domain}"
                return name if len(name) <= MAX_ACCOUNT else None
            return name
        return normalize_account(
            text, strip_domain=self.strip_domain, default_domain=self.default_domain
        )

    def basic(self, token: str) -> str | None:
        """The account of Basic credentials (the base64 part), or None."""
        return self.normalize(basic_user(token))

    def authorization(self, value: str | None) -> str | None:
        """The account of an ``Authorization`` header value (Basic only), or None."""
        return self.normalize(authorization_user(value))


DEFAULT_ACCOUNTS = AccountRule()
"""The rule every filter uses unless told otherwise."""


# -------------------------------------------------------------------- bodies
MAX_PARTS = 200
"""Multipart parts looked at; a body with more is read as "cannot tell"."""

_C_SPACE = " \t\n\r\x0b\x0c"  # C isspace(): what PHP skips around parameters

_MEDIA_END = re.compile(r"[;,\s]")
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
_BOUNDARY = re.compile(r'[;,\s]boundary\s*=\s*(?:"([^"]*)"|([^;,\s]*))', re.IGNORECASE)
_JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*\{")


class Fields(NamedTuple):
    """Form fields read from a request part, and whether the reader could tell.

    ``complete`` False means the application may see fields the reader did not
    (a body cut short or not buffered, a multipart body that never closed,
    JSON that does not parse).
    """

    fields: dict[str, list[str]]
    complete: bool


_NOTHING = Fields({}, True)


def php_name(name: str) -> str:
    """A parameter name as PHP registers it (``main/php_variables.c``).

    Leading spaces dropped, the name ends at a NUL, ``.`` and spaces become
    ``_``; ``a[x]`` is the array ``a``; an unmatched ``[`` becomes ``_``.
    """
    if "\x00" in name:
        name = name.partition("\x00")[0]
    name = name.lstrip(" ")
    head, bracket, rest = name.partition("[")
    head = head.replace(" ", "_").replace(".", "_")
    if not bracket or not head:
        return head
    return head if "]" in rest else f"{head}_{rest}"


def _add(fields: dict[str, list[str]], name: str, value: str, php: bool) -> None:
    if php:
        name = php_name(name)
        if not name:
            return
    fields.setdefault(name, []).append(value)


# every escape of an ASCII character, in any mix of hex case: "%40" and "%4a"/"%4A"
_ASCII_ESCAPES = {
    f"{a}{b}": chr(i)
    for i in range(0x80)
    for a in {f"{i:02x}"[0], f"{i:02X}"[0]}
    for b in {f"{i:02x}"[1], f"{i:02X}"[1]}
}


def _unquote(text: str) -> str:
    """``unquote(text)``: ASCII text is one run of escapes and plain characters,
    which ``unquote`` decodes as ``unquote_to_bytes(run).decode("utf-8", "replace")``.

    When every escape is of an ASCII character (``jdoe%40example.com``) the
    bytes are ASCII, so the decoded text is the escapes' characters put in
    place: done here with a table, without the bytes.
    """
    if not text.isascii():
        return unquote(text)
    parts = text.split("%")
    if len(parts) == 2:  # one escape (jdoe%40example.com)
        tail = parts[1]
        char = _ASCII_ESCAPES.get(tail[:2])
        if char is not None:
            return parts[0] + char + tail[2:]
    out = [parts[0]]
    for part in parts[1:]:
        char = _ASCII_ESCAPES.get(part[:2])
        if char is None:  # not an escape, or one of a byte >= 0x80: the general way
            return unquote_to_bytes(text).decode("utf-8", "replace")
        out.append(char)
        out.append(part[2:])
    return "".join(out)


def form_pairs(text: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of an urlencoded text, in order.

    Exactly ``urllib.parse.parse_qsl(text, keep_blank_values=True)``: split at
    ``&``, empty pairs skipped, a pair without ``=`` has the value ``""``,
    ``+`` is a space and ``%XX`` escapes are decoded as UTF-8 (``replace``).
    Written out because it runs on every login: the common pair (no ``+``, no
    ``%``) costs one ``partition``.
    """
    pairs: list[tuple[str, str]] = []
    for pair in text.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if "+" in name:
            name = name.replace("+", " ")
        if "%" in name:
            name = _unquote(name)
        if "+" in value:
            value = value.replace("+", " ")
        if "%" in value:
            value = _unquote(value)
        pairs.append((name, value))
    return pairs


def form_fields(text: str, *, php: bool = False) -> dict[str, list[str]]:
    """The fields of an urlencoded query or body (``+`` a space, every value kept)."""
    fields: dict[str, list[str]] = {}
    if php:
        for name, value in form_pairs(text):
            _add(fields, name, value, php)
    else:
        for name, value in form_pairs(text):
            if name in fields:
                fields[name].append(value)
            else:
                fields[name] = [value]
    return fields


class _Pairs(list[tuple[str, Any]]):
    """A JSON object kept as its list of pairs (repeated keys stay visible)."""


def json_fields(raw: bytes) -> Fields:
    """The string members of a JSON object; not ``complete`` when it does not parse."""
    try:
        doc = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return Fields({}, False)
    fields: dict[str, list[str]] = {}
    if isinstance(doc, _Pairs):
        for name, value in doc:
            if isinstance(value, str):
                fields.setdefault(name, []).append(value)
    return Fields(fields, True)


def _boundary(content_type: str) -> bytes | None:
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    value = found.group(1) if found.group(1) is not None else found.group(2)
    if not 1 <= len(value) <= 200:
        return None
    return value.encode("latin-1", "replace")


def _stop(text: str, pos: int, stop: str) -> int:
    """The index of the first ``stop`` at or after ``pos`` outside quotes (or the end).

    As PHP's ``php_ap_getword``: a ``"`` or ``'`` anywhere opens a quote that
    runs to the same character (a backslash before it escapes it) or to the end.
    """
    end = len(text)
    while pos < end:
        char = text[pos]
        if char == stop:
            return pos
        pos += 1
        if char == '"' or char == "'":
            while pos < end and text[pos] != char:
                pos += 2 if text[pos] == "\\" and text[pos + 1 : pos + 2] == char else 1
            pos += 1
    return end


def _words(text: str, stop: str) -> list[str]:
    """``text`` split at ``stop`` outside quotes; a run of ``stop`` is one."""
    words: list[str] = []
    pos, end = 0, len(text)
    while pos < end:
        at = _stop(text, pos, stop)
        words.append(text[pos:at])
        while at < end and text[at] == stop:
            at += 1
        pos = at
    return words


def _param_value(text: str) -> str:
    """A parameter's value, as PHP's ``php_ap_getword_conf`` reads it.

    Leading space skipped; ``"..."`` or ``'...'`` is the text up to the same
    quote (or the end), else the text up to the first space; a backslash
    escapes a backslash or the quote.
    """
    text = text.lstrip(_C_SPACE)
    quote = text[:1] if text[:1] in ('"', "'") else ""
    if quote:
        text = text[1:]
    out: list[str] = []
    pos, end = 0, len(text)
    while pos < end:
        char = text[pos]
        if (quote and char == quote) or (not quote and char in _C_SPACE):
            break
        if char == "\\" and pos + 1 < end and text[pos + 1] in ("\\", quote or "\\"):
            pos += 1
            char = text[pos]
        out.append(char)
        pos += 1
    return "".join(out)


def _disposition(value: str, *, php: bool = False) -> tuple[str | None, bool]:
    """The ``name`` of a Content-Disposition value, and whether it names a file.

    Parameters are split at ``;`` outside quotes and read by name (the last
    one wins), so a ``name=`` or ``filename=`` inside another parameter's
    quoted value is text.  With ``php`` a parameter name is compared as PHP
    compares it (``name =`` is not ``name``; ``filename*`` is no file name);
    otherwise spaces around ``=`` are allowed and ``filename*`` is a file.
    """
    name: str | None = None
    is_file = False
    for pair in _words(value, ";"):
        at = _stop(pair, 0, "=")
        if at == len(pair):
            continue
        key, rest = pair[:at], pair[at:]
        key = key.lstrip(_C_SPACE).lower() if php else key.strip(_C_SPACE).lower()
        if key == "name":
            name = _param_value(rest.lstrip("="))
        elif key == "filename" or (not php and key == "filename*"):
            is_file = True
    return name, is_file


def _part_name(head: bytes, php: bool = False) -> str | None:
    """The field name of a part's headers; None for a file or a part without one."""
    for line in head.decode("latin-1").split("\n"):
        key, colon, rest = line.partition(":")
        if colon and key.strip().lower() == "content-disposition":
            name, is_file = _disposition(rest.strip(), php=php)
            return None if is_file else name
    return None


def multipart_fields(raw: bytes, content_type: str, *, php: bool = False) -> Fields:
    """The text fields of a multipart body; ``complete`` once its closing boundary is seen.

    Lines may end in CRLF or a bare LF; file parts are skipped; at most
    :data:`MAX_PARTS` parts are looked at.
    """
    boundary = _boundary(content_type)
    if boundary is None:
        return _NOTHING  # no boundary: the application cannot read fields either
    pieces = raw.split(b"--" + boundary)
    fields: dict[str, list[str]] = {}
    last = len(pieces) - 1
    # pieces[0] is the preamble; a piece counts only when a delimiter follows it
    for index in range(1, min(last, MAX_PARTS) + 1):
        piece = pieces[index]
        if piece.startswith(b"--"):
            return Fields(fields, True)
        if index == last:
            break  # cut short: the part never ended
        blank = _BLANK_LINE.search(piece)
        if blank is None:
            continue
        name = _part_name(piece[: blank.start()], php)
        if name is None:
            continue
        value = piece[blank.end() :]
        if value.endswith(b"\n"):  # the line end before the next delimiter
            value = value[:-2] if value.endswith(b"\r\n") else value[:-1]
        _add(fields, name, value.decode("utf-8", "replace"), php)
    return Fields(fields, False)


def media_kind(content_type: str | None) -> str:
    """``"form"``, ``"multipart"``, ``"json"`` or ``"other"`` (cut as PHP cuts it)."""
    if content_type == "application/x-www-form-urlencoded":  # the usual login form
        return "form"
    if not content_type:
        return "other"
    media = _MEDIA_END.split(content_type.strip(), 1)[0].lower()
    if media == "application/x-www-form-urlencoded":
        return "form"
    if media == "multipart/form-data":
        return "multipart"
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return "json"
    return "other"


def body_fields(
    raw: bytes | None,
    content_type: str | None,
    *,
    limit: int,
    declared: int | None = None,
    chunked: bool = False,
    encoded: bool = False,
    php: bool = False,
) -> Fields:
    """The form fields of a body, of which ``raw`` is what was buffered.

    :param raw: the buffered body, None when it was not buffered.
    :param limit: how many bytes the caller meant to buffer; a longer body is
        read up to ``limit``, and is not ``complete``.
    :param declared: the ``Content-Length``, when one was sent.
    :param chunked: a body was announced without a length
        (``Transfer-Encoding``, or a ``Content-Length`` that is no number).
    :param encoded: the body has a ``Content-Encoding`` other than
        ``identity``: a server may inflate it before the application reads
        it, so a non-empty body is "cannot tell".
    :param php: read parameter names as PHP does (:func:`php_name`).

    A body of another media type is read as JSON when it is a JSON object
    (many applications parse JSON whatever the type says); otherwise it has no
    fields, as for the application.
    """
    if raw is None:  # not buffered
        return Fields({}, not declared and not chunked)
    if encoded and raw:
        return Fields({}, False)
    kind = media_kind(content_type)
    cut = (
        len(raw) > limit
        or (declared is not None and declared > len(raw))
        or (declared is None and len(raw) >= limit)
    )
    raw = raw[:limit]
    if kind == "form":
        text = raw.decode("utf-8", "replace")
        if cut:  # the last pair may end mid-value
            text = text[: max(0, text.rfind("&"))]
        return Fields(form_fields(text, php=php), not cut)
    if kind == "multipart":
        fields, closed = multipart_fields(raw, content_type or "", php=php)
        return Fields(fields, closed and not cut)
    if kind == "other" and not _JSON_START.match(raw):
        return _NOTHING
    if cut:
        return Fields({}, False)
    return json_fields(raw)


def _declared_length(length: str) -> int | None:
    if not length:
        return None
    try:
        return int(length)
    except ValueError:
        return None


_BODY_HEADERS = ("content-length", "content-encoding", "content-type", "transfer-encoding")


def request_body_fields(request: Request, limit: int, *, php: bool = False) -> Fields:
    """:func:`body_fields` of ``request``'s buffered body."""
    length, encoding, content_type, transfer = request.headers(_BODY_HEADERS)
    length = (length or "").strip()
    declared = _declared_length(length)
    encoding = (encoding or "").strip().lower()
    return body_fields(
        request.body,
        content_type,
        limit=limit,
        declared=declared,
        chunked=transfer is not None or (declared is None and bool(length)),
        encoded=encoding not in ("", "identity"),
        php=php,
    )


_FORM = "application/x-www-form-urlencoded"
_DECIMAL_TEXTS = tuple(str(n) for n in range(1000))  # str(n), by n
_LOGIN_HEADERS = (*_BODY_HEADERS, "authorization")


def plain_form_values(
    request: Request, names: frozenset[str], limit: int
) -> tuple[list[str], str | None] | None:
    """The values of the fields ``names`` in the usual login form, and the
    ``Authorization`` header; None when ``request`` is not that form (then read
    it with :class:`RequestFields`).

    The usual form: no query string; a buffered, ASCII, urlencoded body of at
    most ``limit`` bytes whose ``Content-Length`` is its length (no coding, no
    transfer coding); and no field name with an escape or a ``+``.  Then the
    values are exactly those :class:`RequestFields` reads (body first, in
    order, the query having none), and the body is ``complete``.
    """
    raw = request.body
    if raw is None:
        return None
    size = len(raw)
    if size > limit or not raw.isascii() or request.query:
        return None
    length, encoding, content_type, transfer, auth = request.headers(_LOGIN_HEADERS)
    if (
        content_type != _FORM
        or encoding is not None
        or transfer is not None
        # (str(size), without the call for a body under 1,000 bytes)
        or length != (_DECIMAL_TEXTS[size] if size < 1000 else str(size))
    ):
        return None
    values: list[str] = []
    for pair in raw.decode("ascii").split("&"):
        name, _, value = pair.partition("=")
        if "%" in name or "+" in name:
            return None  # an escaped name: the general reader decodes it
        if name in names:
            if "+" in value:
                value = value.replace("+", " ")
            if "%" in value:
                # (_unquote(value); an e-mail address's one escape, %40, the usual
                # one: every escape a %40 is every %40 an "@")
                decoded = value.replace("%40", "@")
                value = decoded if "%" not in decoded else _unquote(value)
            values.append(value)
    return values, auth


class RequestFields:
    """The query and body fields of one request, each read on first use."""

    __slots__ = ("_body", "_query", "limit", "php", "request")

    def __init__(self, request: Request, limit: int, *, php: bool = False) -> None:
        self.request = request
        self.limit = limit
        self.php = php
        self._query: dict[str, list[str]] | None = None
        self._body: Fields | None = None

    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            query = self.request.query
            self._query = form_fields(query, php=self.php) if query else {}
        return self._query

    def body(self) -> dict[str, list[str]]:
        return self._read().fields

    @property
    def complete(self) -> bool:
        """Whether every body field could be seen."""
        return self._read().complete

    def _read(self) -> Fields:
        if self._body is None:
            self._body = request_body_fields(self.request, self.limit, php=self.php)
        return self._body

    def values(self, names: Iterable[str]) -> list[str]:
        """Every value of the fields ``names``, body first, then query."""
        body, query = self.body(), self.query()
        return [v for name in names for v in (*body.get(name, ()), *query.get(name, ()))]
