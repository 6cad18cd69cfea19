"""Tests for mailguard.activesync.parse_query."""

from __future__ import annotations

import base64
import re
import struct
import timeit
from dataclasses import FrozenInstanceError, fields
from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailguard.activesync import (
    COMMAND_CODES,
    MAX_DEVICE_IDS,
    MAX_QUERY_BYTES,
    NO_DEVICE,
    QUERY_TOO_LONG,
    TAG_USER,
    ActiveSyncRequest,
    parse_query,
)

SPEC_EXAMPLE = "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l"
DEVICE_ID_RE = re.compile(r"[a-z0-9]{1,64}")
# at DeviceId's offset in encode_raw() output, these bytes encode with '+' and '/'
PLUS_SLASH_ID = b"\x03\xef\xbf\xff" * 3


# --- helpers -----------------------------------------------------------------


def encode_raw(
    *,
    version: int = 141,
    command: int = 0,
    locale: int = 0x0409,
    device_id: bytes = b"v140Device",
    policy_key: bytes | None = None,
    device_type: bytes = b"SmartPhone",
    params: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """Build the binary structure of a base64-form query."""
    out = bytearray([version, command])
    out += struct.pack("<H", locale)
    out += bytes([len(device_id)]) + device_id
    if policy_key is None:
        out.append(0)
    else:
        out += bytes([len(policy_key)]) + policy_key
    out += bytes([len(device_type)]) + device_type
    for tag, value in params:
        out += bytes([tag, len(value)]) + value
    return bytes(out)


def b64(raw: bytes, *, pad: bool = True, percent: bool = False) -> bytes:
    text = base64.b64encode(raw)
    if not pad:
        text = text.rstrip(b"=")
    if percent:
        text = text.replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
    return text


def header_len(raw: bytes) -> int:
    """Length of the fixed part (up to and including DeviceType) of ``raw``."""
    pos = 5 + raw[4]
    pos += 1 + raw[pos]
    return pos + 1 + raw[pos]


def assert_well_typed(result: ActiveSyncRequest) -> None:
    assert isinstance(result, ActiveSyncRequest)
    assert result.encoding in ("plain", "base64", "none")
    for name in ("device_id", "device_type", "user", "command", "protocol_version"):
        assert isinstance(getattr(result, name), str | None)
    for name in ("policy_key", "locale"):
        value = getattr(result, name)
        assert value is None or (type(value) is int and value >= 0)
    if result.encoding == "none":
        assert result == NO_DEVICE
    else:
        assert result.device_id is not None
        assert DEVICE_ID_RE.fullmatch(result.device_id)
    assert result.command is None or result.command in COMMAND_CODES.values()
    if result.encoding == "plain":
        assert result.policy_key is None and result.locale is None


# --- the spec example ----------------------------------------------------------


def test_spec_example() -> None:
    result = parse_query(SPEC_EXAMPLE)
    assert result == ActiveSyncRequest(
        device_id=b"v140Device".hex(),
        device_type="SmartPhone",
        user=None,
        command="Sync",
        protocol_version="14.0",
        policy_key=None,
        locale=0x0409,
        encoding="base64",
    )
    assert parse_query(SPEC_EXAMPLE.encode()) == result
    assert encode_raw(version=140) == base64.b64decode(SPEC_EXAMPLE)


def test_result_is_frozen() -> None:
    result = parse_query(SPEC_EXAMPLE)
    with pytest.raises(FrozenInstanceError):
        result.device_id = "x"  # type: ignore[misc]
    assert not hasattr(result, "__dict__")


def test_no_device_shape() -> None:
    assert NO_DEVICE.encoding == "none"
    assert all(
        getattr(NO_DEVICE, f.name) is None
        for f in fields(NO_DEVICE)
        if f.name not in ("encoding", "device_ids", "too_long")
    )
    assert NO_DEVICE.device_ids == () and NO_DEVICE.too_long is False


# --- plain form ----------------------------------------------------------------


def test_plain_basic() -> None:
    result = parse_query(b"Cmd=Sync&User=jdoe&DeviceId=ABC123&DeviceType=iPhone")
    assert result == ActiveSyncRequest(
        device_id="abc123",
        device_type="iPhone",
        user="jdoe",
        command="Sync",
        protocol_version=None,
        policy_key=None,
        locale=None,
        encoding="plain",
    )


def test_plain_str_and_leading_question_mark() -> None:
    q = "Cmd=Ping&User=jdoe&DeviceId=ABC123&DeviceType=iPhone"
    assert parse_query(q) == parse_query(q.encode())
    assert parse_query("?" + q) == parse_query(q)


def test_plain_mixed_case_names() -> None:
    result = parse_query(b"cMD=ping&USER=JDoe&deviceid=Abc&DEVICETYPE=Android")
    assert result.device_id == "abc"
    assert result.command == "Ping"
    assert result.user == "JDoe"  # not case-folded
    assert result.device_type == "Android"


def test_plain_command_canonical_or_none() -> None:
    assert parse_query(b"Cmd=foldersync&DeviceId=a").command == "FolderSync"
    assert parse_query(b"Cmd=Bogus&DeviceId=a").command is None
    assert parse_query(b"Cmd=&DeviceId=a").command is None
    assert parse_query(b"DeviceId=a").command is None
    assert parse_query(b"DeviceId=a").encoding == "plain"


def test_plain_percent_encoding() -> None:
    result = parse_query(
        b"Cmd=Sync&User=DOMAIN%5Cj%C3%A9r%C3%B4me&Device%49d=AB%2DC%20d&DeviceType=Smart+Phone"
    )
    assert result.user == "DOMAIN\\j\u00e9r\u00f4me"
    assert result.device_id == "abcd"
    assert result.device_type == "Smart Phone"  # form semantics: + is a space


def test_plain_bad_escapes_and_bad_utf8_do_not_raise() -> None:
    result = parse_query(b"User=%ZZ%&DeviceId=x%zz%4&DeviceType=%FF%FE")
    assert result.device_id == "xzz4"
    assert result.user == "%ZZ%"
    assert result.device_type == "\ufffd\ufffd"


def test_plain_missing_device_id() -> None:
    assert parse_query(b"Cmd=Sync&User=jdoe&DeviceType=iPhone") is NO_DEVICE
    assert parse_query(b"Cmd=Sync&DeviceId=&DeviceType=iPhone") is NO_DEVICE
    assert parse_query(b"Cmd=Sync&DeviceId&DeviceType=iPhone") is NO_DEVICE
    assert parse_query(b"Cmd=Sync&DeviceId=-_.~%2D") is NO_DEVICE


def test_plain_device_id_normalisation_and_length() -> None:
    assert parse_query(b"DeviceId=" + b"A" * 32).device_id == "a" * 32
    assert parse_query(b"DeviceId=" + b"A" * 33) is NO_DEVICE
    # length is counted after normalisation
    assert parse_query(b"DeviceId=" + b"a-" * 32).device_id == "a" * 32
    assert parse_query("DeviceId=\u00e9t\u00e9%C3%A9X").device_id == "tx"
    assert parse_query(b"DeviceId=%00%FFab").device_id == "ab"


def test_plain_repeated_parameters() -> None:
    result = parse_query(b"Cmd=Ping&Cmd=Sync&User=a&User=b&DeviceType=x&DeviceType=y&DeviceId=d")
    assert (result.command, result.user, result.device_type) == ("Ping", "a", "x")
    # first wins even when the first is empty
    assert parse_query(b"User=&User=b&DeviceId=d").user is None
    # repeated DeviceIds that agree (after normalisation) are one candidate ...
    same = parse_query(b"DeviceId=ABC&DeviceId=a-b-c")
    assert (same.device_id, same.device_ids) == ("abc", ("abc",))
    # ... otherwise every candidate is named; device_id is the last (PHP's $_GET)
    two = parse_query(b"DeviceId=decoy&DeviceId=REAL")
    assert (two.device_id, two.device_ids) == ("real", ("decoy", "real"))
    # an empty or invalid occurrence names no device
    assert parse_query(b"DeviceId=abc&DeviceId=").device_ids == ("abc",)
    assert parse_query(b"DeviceId=&DeviceId=abc").device_ids == ("abc",)
    # at most MAX_DEVICE_IDS candidates, the first and the last always kept
    many = "&".join(f"DeviceId=d{n}" for n in range(10)).encode()
    assert parse_query(many).device_ids == ("d0", "d1", "d2", "d9")
    assert len(parse_query(many).device_ids) == MAX_DEVICE_IDS


def test_plain_empty_pairs_and_unknown_parameters() -> None:
    result = parse_query(b"&&Foo=bar&=x&DeviceId=abc&&SaveInSent=T&")
    assert result.device_id == "abc"
    assert result.encoding == "plain"


def test_plain_protocol_version_header() -> None:
    q = b"Cmd=Sync&DeviceId=abc"
    assert parse_query(q, protocol_version_header="14.1").protocol_version == "14.1"
    assert parse_query(q, protocol_version_header=b" 2.5 ").protocol_version == "2.5"
    assert parse_query(q, protocol_version_header="16.1").protocol_version == "16.1"
    for bad in ("", "14", "14.1.2", "abc", "\u0661\u0664.\u0660", "140.1"):
        assert parse_query(q, protocol_version_header=bad).protocol_version is None
    assert parse_query(q).protocol_version is None
    # the base64 form carries its own version and ignores the header
    assert parse_query(SPEC_EXAMPLE, protocol_version_header="2.5").protocol_version == "14.0"


def test_plain_value_that_looks_like_base64_is_not_misread() -> None:
    assert parse_query("DeviceId=" + SPEC_EXAMPLE) is NO_DEVICE  # 36 chars > 32
    result = parse_query("Cmd=Sync&DeviceId=abc&x=" + SPEC_EXAMPLE)
    assert result.encoding == "plain" and result.device_id == "abc"
    short = "jAAJBAp2MTQwRGV2aWNl"
    result = parse_query("DeviceId=" + short)
    assert result.encoding == "plain"
    assert result.device_id == short.lower()
    # a padded base64 query is not taken for the plain form
    padded = b64(encode_raw(device_type=b"Phone"))
    assert padded.endswith(b"=")
    assert parse_query(padded).encoding == "base64"


def test_plain_size_cap() -> None:
    head = b"Cmd=Sync&DeviceId=abc&User=jdoe"
    # a DeviceId after 8 KiB (and more) of padding is still read
    padded = b"x=" + b"y" * 8192 + b"&DeviceId=abc"
    assert parse_query(padded).device_id == "abc"
    filler = b"&x=" + b"y" * (MAX_QUERY_BYTES - len(head) - 3)
    assert len(head + filler) == MAX_QUERY_BYTES
    result = parse_query(head + filler)
    assert (result.device_id, result.user) == ("abc", "jdoe")
    # beyond MAX_QUERY_BYTES nothing is parsed, and the result says so
    assert parse_query(head + filler + b"&") is QUERY_TOO_LONG
    assert QUERY_TOO_LONG.too_long and QUERY_TOO_LONG.device_id is None
    assert not NO_DEVICE.too_long
    assert parse_query(b"A" * (MAX_QUERY_BYTES + 4)) is QUERY_TOO_LONG
    assert parse_query(b"DeviceId=abc" + b"d" * MAX_QUERY_BYTES) is QUERY_TOO_LONG


# --- base64 form ---------------------------------------------------------------


def test_base64_round_trip_all_fields() -> None:
    raw = encode_raw(
        version=161,
        command=20,
        locale=0x0407,
        device_id=bytes(range(16)),
        policy_key=struct.pack("<I", 3_000_000_123),
        device_type=b"iPhone",
        params=((1, b"INBOX"), (TAG_USER, b"jdoe@example.com"), (7, b"\x01")),
    )
    result = parse_query(b64(raw))
    assert result == ActiveSyncRequest(
        device_id=bytes(range(16)).hex(),
        device_type="iPhone",
        user="jdoe@example.com",
        command="Provision",
        protocol_version="16.1",
        policy_key=3_000_000_123,
        locale=0x0407,
        encoding="base64",
    )


@pytest.mark.parametrize(("code", "name"), sorted(COMMAND_CODES.items()))
def test_base64_command_codes(code: int, name: str) -> None:
    assert parse_query(b64(encode_raw(command=code))).command == name


@pytest.mark.parametrize("code", [5, 6, 7, 8, 23, 99, 255])
def test_base64_unknown_command_is_still_valid(code: int) -> None:
    result = parse_query(b64(encode_raw(command=code)))
    assert result.encoding == "base64"
    assert result.command is None
    assert result.device_id == b"v140Device".hex()


@pytest.mark.parametrize(
    ("byte", "version"), [(121, "12.1"), (140, "14.0"), (141, "14.1"), (160, "16.0"), (161, "16.1")]
)
def test_base64_versions(byte: int, version: str) -> None:
    assert parse_query(b64(encode_raw(version=byte))).protocol_version == version


@pytest.mark.parametrize("byte", [0, 25, 120])
def test_base64_versions_before_12_1_are_refused(byte: int) -> None:
    assert parse_query(b64(encode_raw(version=byte))) is NO_DEVICE


def test_base64_padding_optional() -> None:
    for device_type in (b"Phone", b"Phone1", b"Phone12"):  # three padding variants
        raw = encode_raw(device_type=device_type)
        padded, bare = b64(raw), b64(raw, pad=False)
        expected = parse_query(padded)
        assert expected.device_type == device_type.decode()
        assert parse_query(bare) == expected
    raw = encode_raw(device_type=b"Phone1")  # 22 bytes -> one '='
    assert b64(raw).endswith(b"=") and not b64(raw).endswith(b"==")
    assert parse_query(b64(raw, pad=False) + b"==") is NO_DEVICE  # wrong padding
    assert parse_query(b64(raw) + b"===") is NO_DEVICE


def test_base64_plus_and_slash() -> None:
    device_id = PLUS_SLASH_ID
    raw = encode_raw(device_id=device_id)
    text = b64(raw)
    assert b"+" in text and b"/" in text
    result = parse_query(text)
    assert result.device_id == device_id.hex()
    assert parse_query(text.decode()) == result
    # '+' is a base64 character, not a space
    assert parse_query(text.replace(b"+", b" ")) is NO_DEVICE


def test_base64_percent_escapes() -> None:
    raw = encode_raw(device_id=PLUS_SLASH_ID)
    expected = parse_query(b64(raw))
    assert expected.encoding == "base64"
    escaped = b64(raw, percent=True)
    assert b"%2B" in escaped and b"%2F" in escaped and b"%3D" in escaped
    assert parse_query(escaped) == expected
    lower_escapes = escaped.replace(b"%2B", b"%2b").replace(b"%2F", b"%2f").replace(b"%3D", b"%3d")
    assert parse_query(lower_escapes) == expected
    # any other escape is not base64
    assert parse_query(b64(raw).replace(b"A", b"%41", 1)) is NO_DEVICE


def test_base64_policy_key() -> None:
    no_key = parse_query(b64(encode_raw(policy_key=None)))
    assert no_key.encoding == "base64" and no_key.policy_key is None
    assert parse_query(b64(encode_raw(policy_key=b"\x00" * 4))).policy_key == 0
    key = parse_query(b64(encode_raw(policy_key=b"\x01\x02\x03\x04")))
    assert key.policy_key == 0x04030201  # little-endian
    assert parse_query(b64(encode_raw(policy_key=b"\xff" * 4))).policy_key == 0xFFFFFFFF
    for bad in (b"\x01", b"\x01\x02", b"\x01\x02\x03", b"\x01" * 5, b"\x01" * 8):
        assert parse_query(b64(encode_raw(policy_key=bad))) is NO_DEVICE


def test_base64_device_id_lengths() -> None:
    assert parse_query(b64(encode_raw(device_id=b"\x00"))).device_id == "00"
    longest = parse_query(b64(encode_raw(device_id=b"\xab" * 32)))
    assert longest.device_id == "ab" * 32
    assert parse_query(b64(encode_raw(device_id=b"\xab" * 33))) is NO_DEVICE
    assert parse_query(b64(encode_raw(device_id=b""))) is NO_DEVICE


def test_base64_device_type_and_user() -> None:
    result = parse_query(b64(encode_raw(device_type=b"")))
    assert result.encoding == "base64" and result.device_type is None
    result = parse_query(b64(encode_raw(params=((TAG_USER, b"DOMAIN\\JDoe"),))))
    assert result.user == "DOMAIN\\JDoe"
    result = parse_query(b64(encode_raw(params=((TAG_USER, b"\xff\xfe"),))))
    assert result.user == "\ufffd\ufffd"
    # first User wins, an empty User means none
    first = encode_raw(params=((TAG_USER, b"a"), (TAG_USER, b"b")))
    assert parse_query(b64(first)).user == "a"
    empty = encode_raw(params=((TAG_USER, b""), (TAG_USER, b"b")))
    assert parse_query(b64(empty)).user is None


def test_base64_other_tags_skipped() -> None:
    params = tuple((tag, bytes([tag]) * tag) for tag in (0, 1, 2, 3, 4, 5, 6, 7, 9, 200))
    result = parse_query(b64(encode_raw(params=(*params, (TAG_USER, b"u")))))
    assert result.user == "u"
    assert parse_query(b64(encode_raw(params=params))).user is None
    long_value = parse_query(b64(encode_raw(params=((0, b"x" * 255), (TAG_USER, b"u")))))
    assert long_value.user == "u"


@pytest.mark.parametrize(
    "garbage", [b"\x08", b"\x08\x05abc", b"\x00\xff", b"\x01\x02x", b"\x08\x01"]
)
def test_base64_trailing_garbage(garbage: bytes) -> None:
    raw = encode_raw(params=((TAG_USER, b"jdoe"),))
    assert parse_query(b64(raw)).user == "jdoe"
    assert parse_query(b64(raw + garbage)) is NO_DEVICE


def test_base64_truncated_at_every_offset() -> None:
    raw = encode_raw(
        device_id=b"dev-0123456789",
        policy_key=b"\x10\x20\x30\x40",
        params=((1, b"INBOX"), (TAG_USER, b"jdoe"), (3, b"12345")),
    )
    full = parse_query(b64(raw))
    assert full.user == "jdoe" and full.policy_key == 0x40302010
    fixed = header_len(raw)
    boundaries = {fixed, fixed + 7, fixed + 13, len(raw)}
    for cut in range(len(raw) + 1):
        for text in (b64(raw[:cut]), b64(raw[:cut], pad=False)):
            result = parse_query(text)
            assert_well_typed(result)
            if cut < fixed:
                assert result is NO_DEVICE, cut
            elif cut in boundaries:
                assert result.device_id == full.device_id, cut
                assert result.policy_key == full.policy_key
                assert result.user == (full.user if cut >= fixed + 13 else None)
            else:
                assert result is NO_DEVICE, cut


def test_base64_invalid_text() -> None:
    for bad in (b"", b"=", b"==", b"A", b"AB", b"ABC", b"A===", b"!!!!", b"jAAJ BAp2", b"ab\xffcd"):
        assert parse_query(bad) is NO_DEVICE
    # a character removed from a valid query (length 1 mod 4, or a shifted layout)
    assert parse_query(SPEC_EXAMPLE[:-3]) is NO_DEVICE
    assert parse_query(SPEC_EXAMPLE[1:]) is NO_DEVICE


def test_odd_inputs_never_raise() -> None:
    for query in (None, 5, 1.5, object(), ["DeviceId=a"], b"\x00" * 10, "\ud800", "\U0001f600"):
        assert parse_query(query) is NO_DEVICE  # type: ignore[arg-type]
    # other bytes-like objects are accepted at run time
    assert parse_query(bytearray(SPEC_EXAMPLE.encode())).encoding == "base64"  # type: ignore[arg-type]
    assert parse_query(memoryview(b"DeviceId=abc")).device_id == "abc"  # type: ignore[arg-type]
    assert parse_query("DeviceId=\ud800abc\U0001f600").device_id == "abc"


def test_wsgi_latin1_str() -> None:
    # PEP 3333: QUERY_STRING bytes arrive decoded as latin-1
    raw = b"User=j\xc3\xa9&DeviceId=abc"
    assert parse_query(raw.decode("latin-1")).user == "j\u00e9"


# --- property tests -------------------------------------------------------------

_params = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=4).map(tuple)


@settings(max_examples=300)
@given(
    version=st.integers(121, 255),
    command=st.integers(0, 255),
    locale=st.integers(0, 0xFFFF),
    device_id=st.binary(min_size=1, max_size=32),
    policy_key=st.none() | st.binary(min_size=4, max_size=4),
    device_type=st.binary(max_size=40),
    params=_params,
    pad=st.booleans(),
    percent=st.booleans(),
)
def test_base64_round_trip_property(
    version: int,
    command: int,
    locale: int,
    device_id: bytes,
    policy_key: bytes | None,
    device_type: bytes,
    params: tuple[tuple[int, bytes], ...],
    pad: bool,
    percent: bool,
) -> None:
    raw = encode_raw(
        version=version,
        command=command,
        locale=locale,
        device_id=device_id,
        policy_key=policy_key,
        device_type=device_type,
        params=params,
    )
    result = parse_query(b64(raw, pad=pad, percent=percent))
    assert_well_typed(result)
    users = [value for tag, value in params if tag == TAG_USER]
    assert result == ActiveSyncRequest(
        device_id=device_id.hex(),
        device_type=device_type.decode("utf-8", "replace") or None,
        user=(users[0].decode("utf-8", "replace") or None) if users else None,
        command=COMMAND_CODES.get(command),
        protocol_version=f"{version // 10}.{version % 10}",
        policy_key=None if policy_key is None else int.from_bytes(policy_key, "little"),
        locale=locale,
        encoding="base64",
    )


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_base64_encoded(data: bytes) -> None:
    for text in (b64(data), b64(data, pad=False), b64(data, percent=True)):
        assert_well_typed(parse_query(text))


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_fuzz_raw_bytes(data: bytes) -> None:
    assert_well_typed(parse_query(data))


@settings(max_examples=500)
@given(st.text(max_size=300))
def test_fuzz_text(text: str) -> None:
    assert_well_typed(parse_query(text))
    assert_well_typed(parse_query(text, protocol_version_header=text))


_names = st.sampled_from(
    ["Cmd", "cmd", "User", "USER", "DeviceId", "deviceid", "DeviceType", "Foo", "", "Device%49d"]
)
_values = st.text(alphabet="abcAZ09-_.%+=/&2BFD3 \u00e9\u0000", max_size=40)


@settings(max_examples=500)
@given(st.lists(st.tuples(_names, _values), max_size=8), st.booleans())
def test_fuzz_query_strings(pairs: list[tuple[str, str]], as_bytes: bool) -> None:
    query = "&".join(f"{name}={value}" for name, value in pairs)
    result = parse_query(query.encode() if as_bytes else query)
    assert_well_typed(result)
    if result.encoding == "plain":
        assert result.device_id is not None and len(result.device_id) <= 32


@settings(max_examples=300)
@given(st.from_regex(rb"\A[A-Za-z0-9+/%=&]{0,120}\Z"))
def test_fuzz_base64ish_strings(query: bytes) -> None:
    assert_well_typed(parse_query(query))


# --- timing (informational) -------------------------------------------------------


def test_timing_report(capsys: pytest.CaptureFixture[str]) -> None:
    plain = b"Cmd=Sync&User=jdoe%40example.com&DeviceId=ABCDEF0123456789&DeviceType=iPhone"
    encoded = b64(
        encode_raw(
            device_id=bytes(range(16)),
            policy_key=b"\x01\x02\x03\x04",
            device_type=b"iPhone",
            params=((TAG_USER, b"jdoe@example.com"),),
        )
    )
    lines = []
    for label, query in (("plain", plain), ("base64", encoded), ("spec", SPEC_EXAMPLE)):
        number = 20_000
        best = min(timeit.repeat(partial(parse_query, query), number=number, repeat=3))
        lines.append(f"parse_query {label}: {best / number * 1e6:.2f} us/call")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
