"""mailguard.activesync.quick_plain: the full parser's answer, or a refusal to answer.

For any query the quick reader either declines (None) or gives exactly what
:func:`parse_query` gives, every field included (``device_ids`` and
``too_long`` too, which ``==`` leaves out).  It must also *not* decline the
queries real clients send, or it would be useless.
"""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailguard.activesync import (
    MAX_PLAIN_DEVICE_ID_CHARS,
    MAX_QUERY_BYTES,
    NO_DEVICE,
    QUICK_MAX_CHARS,
    ActiveSyncRequest,
    parse_query,
    quick_fields,
    quick_plain,
)


def identical(a: ActiveSyncRequest, b: ActiveSyncRequest) -> bool:
    return a == b and a.device_ids == b.device_ids and a.too_long == b.too_long


def check_exact(query: str | bytes, header: str | bytes | None = None) -> ActiveSyncRequest | None:
    """quick_plain(query) declines or is parse_query(query); returns its answer."""
    quick = quick_plain(query, protocol_version_header=header)
    if quick is not None:
        full = parse_query(query, protocol_version_header=header)
        assert identical(quick, full), (query, quick, full)
    if isinstance(query, str):
        fields = quick_fields(query)
        assert (fields is None) == (quick is None), query
        if quick is not None and fields is not None:
            if quick.device_id is None:
                assert fields[0] is None
            else:
                assert fields == (quick.device_id, quick.user, quick.command, quick.device_type)
    return quick


# --------------------------------------------------------------- strategies
_names = st.sampled_from(
    ["DeviceId", "deviceid", "DEVICEID", "DeviceID", "User", "user", "USER", "Cmd", "cmd",
     "CMD", "DeviceType", "devicetype", "x", "", "Device%49d", "us%65r", "Device+Type",
     "DeviceId ", " DeviceId", "Devic\u0130d", "\u212amd", "Cm\u0130", "SaveInSent",
     "ItemId", "DeviceId=x", "?Cmd"]
)  # fmt: skip
_values = st.one_of(
    st.text(st.characters(min_codepoint=0x00, max_codepoint=0x7F), max_size=40),
    st.sampled_from(
        [
            "ABC123",
            "abc-123",
            "%41%42C",
            "%zz",
            "%",
            "a+b",
            "Sync",
            "sYNC",
            "%E9",
            "",
            "a=b",
            "==",
            "Ping",
            "FolderSync",
            "Foo",
            "iPhone",
            "CORP\\JDoe",
            "\u00e9",
            "%53ync",
            "S%79nc",
            "i+Phone",
        ]
    ),
    st.integers(30, 34).map(lambda n: "A" * n),  # around the 32-character cap
    st.text(st.characters(min_codepoint=0x80, max_codepoint=0x2FF), max_size=8),
)
_pair = st.one_of(
    st.tuples(_names, _values).map(lambda p: f"{p[0]}={p[1]}"),
    _names,  # a name alone, no "="
)
_plain = st.lists(_pair, max_size=8).map("&".join)
_usual = st.tuples(
    st.sampled_from(["Cmd", "cmd", "CMD"]),
    _values,
    st.sampled_from(["User", "user"]),
    _values,
    st.sampled_from(["DeviceId", "deviceid", "DEVICEID"]),
    _values,
    st.sampled_from(["DeviceType", "devicetype"]),
    _values,
).map(lambda t: f"{t[0]}={t[1]}&{t[2]}={t[3]}&{t[4]}={t[5]}&{t[6]}={t[7]}")
_queries = st.one_of(
    _plain,
    _usual,
    _plain.map(lambda q: "?" + q),
    _plain.map(lambda q: q + "="),
    st.text(max_size=120),
    st.text("ABCDEFabcdef0123456789+/=%&", max_size=80),
    st.binary(max_size=80).map(lambda raw: base64.b64encode(raw).decode("ascii")),
)


# --------------------------------------------------------------- properties
@settings(max_examples=3000, deadline=None, database=None)
@given(query=_queries)
def test_quick_is_the_full_parser_or_declines(query: str) -> None:
    check_exact(query)
    check_exact(query.encode("utf-8", "surrogatepass"))
    check_exact(query.encode("latin-1", "replace"))


@settings(max_examples=500, deadline=None, database=None)
@given(query=st.binary(max_size=200))
def test_quick_on_any_bytes(query: bytes) -> None:
    check_exact(query)


@settings(max_examples=300, deadline=None, database=None)
@given(
    query=_usual,
    header=st.one_of(st.none(), st.sampled_from(["14.1", " 16.0 ", "1.0.0", "x"]), st.text()),
)
def test_quick_with_a_protocol_version_header(query: str, header: str | None) -> None:
    check_exact(query, header)
    check_exact(query, None if header is None else header.encode("utf-8", "surrogatepass"))


@settings(max_examples=500, deadline=None, database=None)
@given(
    names=st.permutations(["Cmd", "User", "DeviceId", "DeviceType", "SaveInSent", "ItemId"]),
    size=st.integers(3, 6),
    device=st.text("ABCDEFXYZabcxyz0123456789", min_size=1, max_size=MAX_PLAIN_DEVICE_ID_CHARS),
    user=st.text("abcdefghijklmnopqrstuvwxyz0123456789@._-\\", max_size=30),
)
def test_quick_reads_what_clients_send(names: list[str], size: int, device: str, user: str) -> None:
    """Any order, extra parameters: never declined, and right."""
    values = {"Cmd": "Sync", "User": user, "DeviceId": device, "DeviceType": "iPhone"}
    chosen = [n for n in names[:size]] + (["DeviceId"] if "DeviceId" not in names[:size] else [])
    query = "&".join(f"{n}={values.get(n, 'T')}" for n in chosen)
    quick = check_exact(query)
    assert quick is not None, query
    assert quick.device_id == device.lower()
    assert quick.encoding == "plain" and quick.device_ids == (device.lower(),)


# --------------------------------------------------------------- examples
def test_the_usual_query() -> None:
    query = "Cmd=Sync&User=JDoe&DeviceId=ABC123def&DeviceType=iPhone"
    quick = check_exact(query)
    assert quick is not None
    assert (quick.device_id, quick.user, quick.command, quick.device_type) == (
        "abc123def", "JDoe", "Sync", "iPhone",
    )  # fmt: skip
    assert quick_fields(query) == ("abc123def", "JDoe", "Sync", "iPhone")
    assert check_exact(query.encode("ascii")) == quick


@pytest.mark.parametrize(
    "query",
    [
        # several DeviceIds: which one wins is the full parser's business (PHP's
        # last, every candidate kept); the quick reader must not guess
        "DeviceId=decoy&DeviceId=REAL",
        "Cmd=Sync&User=a&DeviceId=x&DeviceType=t&DeviceId=y",
        "deviceid=a&DEVICEID=a",
        "DeviceId=&DeviceId=real",  # an empty one then a real one
        "Cmd=Ping&Cmd=Sync&DeviceId=a",  # the first Cmd wins: declined all the same
        "Cmd&Cmd=Sync&DeviceId=a",  # a bare name counts as an (empty) first occurrence
        "User=a&user=b&DeviceId=a",
        "DeviceType=a&DeviceType=b&DeviceId=a",
        # escapes, "+", a leading "?", non-ASCII, the base64 form, too long
        "Cmd=Sync&DeviceId=%41BC",
        "Cmd=Sync&Device%49d=abc",
        "Cmd=Sync&User=a+b&DeviceId=abc",
        "?Cmd=Sync&DeviceId=abc",
        "Cmd=Sync&User=\u00e9&DeviceId=abc",
        "jAAJBAp2MTQwRGV2aWNlAApTbWFydFBob25l",
        "DeviceId=",
        "",
        "x=" + "p" * QUICK_MAX_CHARS + "&DeviceId=abc",
        "x=" + "p" * MAX_QUERY_BYTES + "&DeviceId=abc",
    ],
)
def test_quick_declines(query: str) -> None:
    assert quick_plain(query) is None
    assert quick_fields(query) is None
    parse_query(query)  # and the full parser still answers


@pytest.mark.parametrize(
    ("query", "device_id", "user", "command"),
    [
        ("Cmd=Sync&DeviceId=abc-123", "abc123", None, "Sync"),  # normalised like the full path
        ("DeviceId=" + "A" * 33, None, None, None),  # too long: no device
        ("DeviceId=---&Cmd=Sync", None, None, None),  # nothing left: no device
        ("Cmd=NoSuchCommand&User=&DeviceId=a", "a", None, None),
        ("cmd=SYNC&user=x=y&deviceid=A&devicetype=", "a", "x=y", "Sync"),
        ("Cmd=Sync&User=u&DeviceType=t", None, None, None),  # no DeviceId at all
        ("&&Cmd=Sync&&DeviceId=Q&", "q", None, "Sync"),  # empty parts skipped
        ("DeviceId=abc", "abc", None, None),  # plain without "&"
    ],
)
def test_quick_examples(
    query: str, device_id: str | None, user: str | None, command: str | None
) -> None:
    quick = check_exact(query)
    assert quick is not None
    assert (quick.device_id, quick.user, quick.command) == (device_id, user, command)
    if device_id is None:
        assert quick is NO_DEVICE


def test_hostile_inputs_never_raise() -> None:
    rng = random.Random(18)
    for _ in range(2000):
        size = rng.choice([0, 1, 5, 50, 500, QUICK_MAX_CHARS, QUICK_MAX_CHARS + 1, 5000])
        raw = bytes(rng.randrange(256) for _ in range(size))
        check_exact(raw)
        check_exact(raw.decode("latin-1"))
    for odd in (None, 42, bytearray(b"DeviceId=a&x=1"), memoryview(b"DeviceId=a&x=1"), ["a"]):
        assert quick_plain(odd) is None  # type: ignore[arg-type]
    lone = "DeviceId=a&User=\udc80"  # a lone surrogate: not ASCII, declined
    assert quick_plain(lone) is None
