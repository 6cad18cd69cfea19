"""Parse the query string of an Exchange ActiveSync (EAS) request.

ActiveSync clients put the request parameters (command, user, device id,
device type, ...) into the query string of ``POST /Microsoft-Server-ActiveSync``
in one of two forms ([MS-ASHTTP] 2.2.1.1.1):

* the *plain text* form, e.g. ``Cmd=Sync&User=jdoe&DeviceId=ABC123&DeviceType=iPhone``
* the *base64* form (protocol 12.1 and later), where the whole query string is
  the base64 encoding of a small binary structure, e.g.
  ``jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l``.

:func:`parse_query` reads either form and returns an :class:`ActiveSyncRequest`.
It is a pure function (no I/O, stdlib only), runs on every ActiveSync request and
never raises. A result carries a device id if and only if its ``encoding`` is not
``"none"``; whenever no usable device id can be read, the shared :data:`NO_DEVICE`
value (every field ``None``, ``encoding == "none"``) is returned.

Rules and choices
-----------------

Which form
    After dropping one leading ``?`` (if a caller passes it), a query containing
    ``&``, or containing ``=`` anywhere other than as trailing base64 padding, is
    plain text; anything else is tried as base64. A plain query whose *values*
    look like base64 is therefore never misread.

Size cap
    A query of up to :data:`MAX_QUERY_BYTES` (64 KiB) is read whole: a
    ``DeviceId`` placed after kilobytes of padding is still found. A longer
    query is not parsed at all and gives :data:`QUERY_TOO_LONG` (no device id,
    ``too_long`` true), so that the caller can count it some other way
    (:class:`~mailguard.policies.DeviceJailPolicy` counts it by address)
    instead of letting it pass unidentified. A real ActiveSync query is well
    under 1 KiB.

Plain form
    Parameter names are matched case-insensitively. Names and values are
    decoded as ``application/x-www-form-urlencoded`` (``+`` is a space,
    ``%XX`` escapes are decoded; malformed escapes are kept literally), the way
    most web stacks behind an ActiveSync endpoint read a query string, so
    mailguard sees the values the back end sees. Text values are decoded as
    UTF-8 with replacement characters.
    Repeated parameters: the first occurrence wins for ``Cmd``, ``User`` and
    ``DeviceType``. For ``DeviceId`` (the jail key) back ends disagree on which
    occurrence they use: PHP keeps the *last* one in ``$_GET`` (Z-Push,
    ``src/lib/request/request.php``, ``Request::Initialize`` reads
    ``$_GET["DeviceId"]``, which ``Request::GetDeviceID`` returns), while a Java
    servlet's ``getParameter`` returns the *first* (OBM opush,
    ``AbstractActiveSyncRequest.p``; Carbonio's ActiveSync servlet is not
    public). So ``device_id`` is the last valid occurrence (as PHP reads it) and
    ``device_ids`` holds every distinct valid one, in order of appearance, at
    most :data:`MAX_DEVICE_IDS` (the first and the last are always kept): a
    caller that counts every candidate cannot be dodged by a decoy placed
    before or after the real id.
    The plain form carries no policy key or locale in the query (they travel in
    the ``X-MS-PolicyKey`` and ``Accept-Language`` headers), so those fields are
    ``None``; ``protocol_version`` comes from the optional
    ``protocol_version_header`` argument (the ``MS-ASProtocolVersion`` header),
    kept if it looks like ``N.N`` or ``NN.N``.

Plain DeviceId normalisation
    ASCII letters are lowercased and every character that is not an ASCII
    letter or digit is dropped; the result must be 1 to
    :data:`MAX_PLAIN_DEVICE_ID_CHARS` (32) characters long.

Base64 form
    The standard alphabet is used, ``+`` being a base64 character; the escapes
    ``%2B``, ``%2F`` and ``%3D`` (either case) are accepted for ``+``, ``/``
    and ``=``; padding may be missing, but if present it must be correct. The
    decoded bytes must be exactly: protocol version (1 byte, version x 10, at
    least :data:`MIN_BASE64_PROTOCOL_VERSION` = 121, i.e. 12.1), command code
    (1 byte), locale (2 bytes, little-endian), DeviceId length (1 byte, 1 to
    :data:`MAX_BASE64_DEVICE_ID_BYTES`) and DeviceId, policy key length (1 byte,
    0 or 4) and policy key (little-endian unsigned 32-bit), DeviceType length
    (1 byte, may be 0) and DeviceType, then zero or more complete tagged
    parameters (tag byte, length byte, value). Only the ``User`` parameter
    (tag 8; first occurrence wins; an empty value means no user) is kept, every
    other tag, known or not, is skipped. Anything else (truncation, a bad
    length, leftover bytes) gives :data:`NO_DEVICE`.
    An unknown command code is still a valid parse, with ``command`` ``None``:
    the jail key does not depend on this module knowing every command.

Quick reader
    :func:`quick_plain` reads the common plain query (ASCII, at most
    :data:`QUICK_MAX_CHARS`, no ``%`` or ``+`` escapes, none of ``Cmd``,
    ``User``, ``DeviceId`` or ``DeviceType`` twice) without the general
    machinery and gives exactly what :func:`parse_query` gives; any other
    query it declines (``None``), for :func:`parse_query` to read.

Base64 DeviceId key
    The raw DeviceId bytes are keyed as their lowercase hex (so the spec's
    ``v140Device`` becomes ``"76313430446576696365"``), which is at most 64
    characters since raw ids longer than 32 bytes are refused. A device would
    therefore have different keys in the two forms; a client normally sticks
    to one form.

Commands
    ``command`` is always one of the names in :data:`COMMAND_CODES` (plain
    ``Cmd`` values are matched case-insensitively and returned in their
    canonical spelling) or ``None``; arbitrary client text never ends up there.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal
from urllib.parse import unquote_to_bytes

__all__ = [
    "COMMAND_CODES",
    "MAX_BASE64_DEVICE_ID_BYTES",
    "MAX_DEVICE_IDS",
    "MAX_PLAIN_DEVICE_ID_CHARS",
    "MAX_QUERY_BYTES",
    "MIN_BASE64_PROTOCOL_VERSION",
    "NO_DEVICE",
    "QUERY_TOO_LONG",
    "QUICK_MAX_CHARS",
    "TAG_USER",
    "ActiveSyncRequest",
    "Encoding",
    "QuickFields",
    "parse_query",
    "quick_fields",
    "quick_plain",
]

Encoding = Literal["plain", "base64", "none"]

#: A longer query string is not parsed (:data:`QUERY_TOO_LONG`).
MAX_QUERY_BYTES: Final = 65536
#: Distinct DeviceId candidates kept from one query (the first and the last always).
MAX_DEVICE_IDS: Final = 4
#: Longest plain-form DeviceId accepted, counted after normalisation.
MAX_PLAIN_DEVICE_ID_CHARS: Final = 32
#: Longest raw base64-form DeviceId accepted (its hex key is twice as long).
MAX_BASE64_DEVICE_ID_BYTES: Final = 32
#: Lowest protocol version byte of a base64 query (12.1: the form's first version).
MIN_BASE64_PROTOCOL_VERSION: Final = 121
#: Tag of the ``User`` command parameter in the base64 form.
TAG_USER: Final = 8
#: Longest query :func:`quick_plain` reads (a real one is far shorter).
QUICK_MAX_CHARS: Final = 1024

#: Command codes of the base64 form ([MS-ASHTTP] 2.2.1.1.1.1.2).
COMMAND_CODES: Final[Mapping[int, str]] = MappingProxyType(
    {
        0: "Sync",
        1: "SendMail",
        2: "SmartForward",
        3: "SmartReply",
        4: "GetAttachment",
        9: "FolderSync",
        10: "FolderCreate",
        11: "FolderDelete",
        12: "FolderUpdate",
        13: "MoveItems",
        14: "GetItemEstimate",
        15: "MeetingResponse",
        16: "Search",
        17: "Settings",
        18: "Ping",
        19: "ItemOperations",
        20: "Provision",
        21: "ResolveRecipients",
        22: "ValidateCert",
    }
)


@dataclass(frozen=True, slots=True)
class ActiveSyncRequest:
    """What the query string of one ActiveSync request says.

    ``device_id`` is the normalised jail key (``^[a-z0-9]{1,64}$``); it is
    ``None`` exactly when ``encoding`` is ``"none"``, and then every other
    field is ``None`` as well.
    """

    #: Normalised device key: plain form ``[a-z0-9]{1,32}``, base64 form the
    #: lowercase hex of the raw id (2 to 64 characters).
    device_id: str | None
    #: DeviceType as sent (``None`` if absent or empty).
    device_type: str | None
    #: User as sent, not case-folded (``None`` if absent or empty).
    user: str | None
    #: Canonical command name from :data:`COMMAND_CODES`, or ``None``.
    command: str | None
    #: ``"14.0"``-style protocol version, or ``None``.
    protocol_version: str | None
    #: Policy key (base64 form only), or ``None``.
    policy_key: int | None
    #: Locale id, e.g. ``0x0409`` (base64 form only), or ``None``.
    locale: int | None
    #: Which form the device id was read from, ``"none"`` if none was.
    encoding: Encoding
    #: Every distinct device key the query names (``device_id`` among them),
    #: at most :data:`MAX_DEVICE_IDS`; empty exactly when ``device_id`` is None
    #: (not compared: it follows from the query, as ``device_id`` does).
    device_ids: tuple[str, ...] = field(default=(), compare=False)
    #: The query was longer than :data:`MAX_QUERY_BYTES` and was not parsed.
    too_long: bool = False


#: The result for every query from which no device id can be read.
NO_DEVICE: Final = ActiveSyncRequest(
    device_id=None,
    device_type=None,
    user=None,
    command=None,
    protocol_version=None,
    policy_key=None,
    locale=None,
    encoding="none",
)

#: The result for a query longer than :data:`MAX_QUERY_BYTES`.
QUERY_TOO_LONG: Final = ActiveSyncRequest(
    None, None, None, None, None, None, None, "none", (), True
)

_DIGITS: Final = b"0123456789"
_UPPER: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_LOWER: Final = b"abcdefghijklmnopqrstuvwxyz"
_ALNUM: Final = frozenset(_DIGITS + _UPPER + _LOWER)
# bytes.translate(table, delete): delete everything but ASCII letters and
# digits, then lowercase what is left.
_NOT_ALNUM: Final = bytes(b for b in range(256) if b not in _ALNUM)
_TO_LOWER: Final = bytes.maketrans(_UPPER, _LOWER)
_B64_ALPHABET: Final = _UPPER + _LOWER + _DIGITS + b"+/"
_B64_ESCAPES: Final = (
    (b"%2B", b"+"),
    (b"%2b", b"+"),
    (b"%2F", b"/"),
    (b"%2f", b"/"),
    (b"%3D", b"="),
    (b"%3d", b"="),
)
_COMMANDS: Final[dict[int, str]] = dict(COMMAND_CODES)
_COMMANDS_BY_LOWER: Final[dict[bytes, str]] = {
    name.lower().encode("ascii"): name for name in COMMAND_CODES.values()
}
_COMMANDS_BY_LOWER_TEXT: Final[dict[str, str]] = {
    name.lower(): name for name in COMMAND_CODES.values()
}
# "12.1" for 121 and so on, for every possible version byte.
_VERSIONS: Final = tuple(f"{v // 10}.{v % 10}" for v in range(256))
_VERSION_RE: Final = re.compile(r"[0-9]{1,2}\.[0-9]", re.ASCII)
# Fixed part of a base64 query with the shortest possible fields: version,
# command, locale (2), DeviceId length + 1 byte of id, policy key length,
# DeviceType length.
_MIN_BASE64_LEN: Final = 8


def parse_query(
    query: bytes | str,
    *,
    protocol_version_header: str | bytes | None = None,
) -> ActiveSyncRequest:
    """Read the ActiveSync parameters from a raw query string.

    ``query`` is the raw (still percent-encoded) query string without the
    ``?``: the ASGI ``scope["query_string"]`` bytes, or the WSGI
    ``environ["QUERY_STRING"]`` str (decoded as latin-1 per PEP 3333, and
    encoded back the same way here). ``protocol_version_header`` is the value
    of the ``MS-ASProtocolVersion`` request header, if the caller has it; it
    is only used for the plain form.

    Never raises; returns :data:`NO_DEVICE` when no device id can be read.
    """
    try:
        if isinstance(query, str):
            try:
                raw = query.encode("latin-1")
            except UnicodeEncodeError:
                raw = query.encode("utf-8", "surrogatepass")
        elif isinstance(query, bytes | bytearray | memoryview):
            raw = bytes(query)
        else:
            return NO_DEVICE
        return _parse(raw, protocol_version_header)
    except Exception:  # the contract is "never raises": fail closed to NO_DEVICE
        return NO_DEVICE


# Single bytes are tested as ints: ``0x26 in data`` is several times faster
# than ``b"&" in data``, and this runs on every request.
_AMP: Final = 0x26  # &
_EQ: Final = 0x3D  # =
_PCT: Final = 0x25  # %
_PLUS: Final = 0x2B  # +


def _parse(query: bytes, version_header: object) -> ActiveSyncRequest:
    if query[:1] == b"?":
        query = query[1:]
    if len(query) > MAX_QUERY_BYTES:
        return QUERY_TOO_LONG  # never a silent pass: the caller counts it otherwise
    if _AMP in query or (_EQ in query and _EQ in query.rstrip(b"=")):
        return _parse_plain(query, version_header)
    return _parse_base64(query)


# --- plain form -------------------------------------------------------------


def _form_unquote(part: bytes) -> bytes:
    if _PLUS in part:
        part = part.replace(b"+", b" ")
    if _PCT in part:
        part = unquote_to_bytes(part)
    return part


def _text(raw: bytes | None) -> str | None:
    if not raw:
        return None
    return raw.decode("utf-8", "replace")


def _plain_device_id(value: bytes) -> str | None:
    # "+" (a space) is dropped anyway; only %XX escapes can add characters.
    if _PCT in value:
        value = unquote_to_bytes(value)
    key = value.translate(_TO_LOWER, _NOT_ALNUM)
    if 0 < len(key) <= MAX_PLAIN_DEVICE_ID_CHARS:
        return key.decode("ascii")
    return None


def _header_version(header: object) -> str | None:
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    if not isinstance(header, str):
        return None
    header = header.strip()
    return header if _VERSION_RE.fullmatch(header) else None


def _parse_plain(query: bytes, version_header: object) -> ActiveSyncRequest:
    found: list[str] = []
    cmd: bytes | None = None
    user: bytes | None = None
    device_type: bytes | None = None
    escaped = _PCT in query or _PLUS in query
    for pair in query.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        key = (_form_unquote(name) if escaped else name).lower()
        if key == b"deviceid":
            normalised = _plain_device_id(value)
            if normalised is not None:
                found.append(normalised)
        elif key == b"cmd" and cmd is None:
            cmd = value
        elif key == b"user" and user is None:
            user = value
        elif key == b"devicetype" and device_type is None:
            device_type = value
    if not found:
        return NO_DEVICE
    device_id = found[-1]  # as PHP's $_GET reads it
    ids = (device_id,) if len(found) == 1 else _candidates(found)
    # Positional arguments, in field order: measurably faster than keywords.
    return ActiveSyncRequest(
        device_id,
        None if device_type is None else _text(_form_unquote(device_type)),
        None if user is None else _text(_form_unquote(user)),
        None if cmd is None else _COMMANDS_BY_LOWER.get(_form_unquote(cmd).lower()),
        _header_version(version_header),
        None,  # policy_key
        None,  # locale
        "plain",
        ids,
    )


# --- quick reader -----------------------------------------------------------

# The order nearly every client writes, each name once and nothing else: one
# match reads it (names case-insensitive, ASCII only; values without & % +).
_USUAL_ORDER: Final = re.compile(
    r"(?i:cmd)=([^&%+]*)&(?i:user)=([^&%+]*)&(?i:deviceid)=([A-Za-z0-9]{1,32})"
    r"&(?i:devicetype)=([^&%+]*)",
    re.ASCII,
)

QuickFields = tuple[str | None, str | None, str | None, str | None]
"""(device id, user, command, device type), as :func:`_parse_plain` reads them."""


def quick_plain(
    query: bytes | str, *, protocol_version_header: str | bytes | None = None
) -> ActiveSyncRequest | None:
    """:func:`parse_query` of a common plain query, or None to decline it.

    Reads only an ASCII query of at most :data:`QUICK_MAX_CHARS` that
    :func:`parse_query` would read as plain text, with no ``%`` or ``+``, no
    leading ``?`` and none of ``Cmd``, ``User``, ``DeviceId`` and
    ``DeviceType`` named twice (names matched case-insensitively).  Whatever
    it does not decline, it answers exactly as :func:`parse_query` (the tests
    pin this on any input).  Never raises.
    """
    if type(query) is bytes:
        if not query.isascii():
            return None
        query = query.decode("ascii")
    elif type(query) is not str:
        return None
    fields = quick_fields(query)
    if fields is None:
        return None
    device_id, user, command, device_type = fields
    if device_id is None:
        return NO_DEVICE
    return ActiveSyncRequest(
        device_id,
        device_type,
        user,
        command,
        _header_version(protocol_version_header),
        None,  # policy_key
        None,  # locale
        "plain",
        (device_id,),
    )


def quick_fields(query: str) -> QuickFields | None:
    """The fields :func:`quick_plain` reads, or None when it declines ``query``.

    A device id of None means the query names no valid one
    (:func:`parse_query` gives :data:`NO_DEVICE`); the other fields are then
    meaningless.  The policy's fast path uses this directly: the request
    needs no :class:`ActiveSyncRequest` when it is let through.
    """
    if len(query) > QUICK_MAX_CHARS or not query.isascii():
        return None
    usual = _USUAL_ORDER.fullmatch(query)
    if usual is not None:
        found = usual.groups()  # Cmd, User, DeviceId, DeviceType
        return (
            found[2].lower(),
            found[1] or None,
            _COMMANDS_BY_LOWER_TEXT.get(found[0].lower()),
            found[3] or None,
        )
    if (
        "%" in query
        or "+" in query
        or query[:1] == "?"
        or ("&" not in query and "=" not in query.rstrip("="))  # the base64 form
    ):
        return None
    cmd: str | None = None
    user: str | None = None
    device: str | None = None
    device_type: str | None = None
    for part in query.split("&"):
        name, _, value = part.partition("=")
        name = name.lower()  # ASCII: as bytes.lower() in _parse_plain
        if name == "deviceid":
            if device is not None:
                return None  # several candidates: the full parser's rules
            device = value
        elif name == "cmd":
            if cmd is not None:
                return None
            cmd = value
        elif name == "user":
            if user is not None:
                return None
            user = value
        elif name == "devicetype":
            if device_type is not None:
                return None
            device_type = value
    if device is None:
        return (None, None, None, None)
    if device.isalnum() and len(device) <= MAX_PLAIN_DEVICE_ID_CHARS:
        device_id: str | None = device.lower()  # ASCII: isalnum is [A-Za-z0-9]
    else:
        device_id = _plain_device_id(device.encode("ascii"))
    return (
        device_id,
        user or None,
        None if cmd is None else _COMMANDS_BY_LOWER_TEXT.get(cmd.lower()),
        device_type or None,
    )


def _candidates(found: list[str]) -> tuple[str, ...]:
    """The distinct ids of ``found`` in order, at most MAX_DEVICE_IDS, first and last kept."""
    distinct = list(dict.fromkeys(found))
    if len(distinct) <= MAX_DEVICE_IDS:
        return tuple(distinct)
    last = found[-1]
    head = [d for d in distinct if d != last][: MAX_DEVICE_IDS - 1]
    return (*head, last)


# --- base64 form ------------------------------------------------------------


def _parse_base64(query: bytes) -> ActiveSyncRequest:
    if _PCT in query:
        for escaped, char in _B64_ESCAPES:
            query = query.replace(escaped, char)
    core = query.rstrip(b"=")
    padding = len(query) - len(core)
    if not core or core.translate(None, _B64_ALPHABET):
        return NO_DEVICE  # empty, or a character outside the alphabet
    if len(core) % 4 == 1:
        return NO_DEVICE  # no byte sequence encodes to this length
    if padding and (padding > 2 or (len(core) + padding) % 4):
        return NO_DEVICE  # padding present but wrong
    try:
        data = binascii.a2b_base64(core + b"=" * (-len(core) % 4))
    except binascii.Error:
        return NO_DEVICE
    return _decode_base64_layout(data)


def _decode_base64_layout(data: bytes) -> ActiveSyncRequest:
    size = len(data)
    if size < _MIN_BASE64_LEN:
        return NO_DEVICE
    version = data[0]
    if version < MIN_BASE64_PROTOCOL_VERSION:
        return NO_DEVICE
    id_len = data[4]
    if not 0 < id_len <= MAX_BASE64_DEVICE_ID_BYTES:
        return NO_DEVICE
    pos = 5 + id_len
    if pos >= size:
        return NO_DEVICE
    raw_id = data[5:pos]
    key_len = data[pos]
    pos += 1
    policy_key: int | None = None
    if key_len == 4:
        if pos + 4 > size:
            return NO_DEVICE
        policy_key = int.from_bytes(data[pos : pos + 4], "little")
        pos += 4
    elif key_len != 0:
        return NO_DEVICE
    if pos >= size:
        return NO_DEVICE
    end = pos + 1 + data[pos]
    if end > size:
        return NO_DEVICE
    device_type = data[pos + 1 : end]
    pos = end
    user: bytes | None = None
    while pos < size:
        if pos + 2 > size:
            return NO_DEVICE  # a lone tag byte
        end = pos + 2 + data[pos + 1]
        if end > size:
            return NO_DEVICE
        if data[pos] == TAG_USER and user is None:
            user = data[pos + 2 : end]
        pos = end
    key = raw_id.hex()
    return ActiveSyncRequest(
        key,
        _text(device_type),
        _text(user),
        _COMMANDS.get(data[1]),
        _VERSIONS[version],
        policy_key,
        data[2] | (data[3] << 8),  # locale
        "base64",
        (key,),
    )
