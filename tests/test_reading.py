"""mailguard.reading: the one path rule, the one account normalizer, the body readers.

Unit and property tests (hypothesis) of the readers themselves; the same rules
through real ASGI and WSGI stacks are in ``test_reading_stacks.py``.
"""

from __future__ import annotations

import base64
import json
import os
import time
import unicodedata
from urllib.parse import parse_qsl, unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailguard.identity import Client
from mailguard.reading import (
    MAX_ACCOUNT,
    AccountRule,
    Fields,
    PathRule,
    _disposition,
    _unquote,
    authorization_user,
    basic_user,
    body_fields,
    form_fields,
    form_pairs,
    json_fields,
    media_kind,
    multipart_fields,
    normalize_account,
    php_name,
)
from mailguard.request import AsgiRequest

# MAILGUARD_FUZZ_EXAMPLES=20000 for a long run
FUZZ = settings(max_examples=int(os.environ.get("MAILGUARD_FUZZ_EXAMPLES", "400")), deadline=None)


# --------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    ("entries", "path", "protective", "hit"),
    [
        # one syntax: exact, "/"-ending (itself and below), "*"-ending prefix, "*"
        (["/login"], "/login", True, True),
        (["/login"], "/login/x", True, False),
        (["/dav/"], "/dav", True, True),
        (["/dav/"], "/dav/alice/cal", True, True),
        (["/dav/"], "/davx", True, False),
        (["/dav*"], "/davx", True, True),
        (["/dav/*"], "/dav", True, False),
        (["/"], "/", True, True),
        (["/"], "/x", True, False),
        (["*"], "/anything", True, True),
        # protective: every spelling the back end may take for the entry
        (["/login"], "/LOGIN", True, True),
        (["/login"], "//login//", True, True),
        (["/login"], "/login;jsessionid=1", True, True),
        (["/login"], "/x/../login", True, True),
        (["/login"], "/./login/.", True, True),
        (["/login"], "/%6Cogin", True, True),
        (["/login"], "\\login", True, True),
        (["/login"], "login", True, True),
        (["/Microsoft-Server-ActiveSync"], "/microsoft-server-activesync/", True, True),
        (["/Microsoft-Server-ActiveSync"], "/Microsoft-Server-ActiveSyncX", True, False),
        (["/.well-known/*"], "/.well-known/caldav", True, True),
        (["/Straße"], "/STRASSE", True, True),
        # strict (exempt_paths): exactly as the server decoded it
        (["/health"], "/health", False, True),
        (["/health"], "/Health", False, False),
        (["/health"], "/HEALTH", False, False),
        (["/health"], "/health/", False, False),
        (["/health"], "//health", False, False),
        (["/health/"], "/health/live", False, True),
        (["/health/"], "/health", False, False),
        (["/assets/"], "/assets/app.css", False, True),
        (["/assets/"], "/assets/../login", False, False),
        (["/assets/"], "/assets/..;/login", False, False),
        (["/assets/"], "/assets/%2e%2e/login", False, False),
        (["/assets/"], "/assets//x", False, False),
        (["/assets/"], "/ASSETS/app.css", False, False),
        (["/static*"], "/static-v2/app.js", False, True),
        (["/"], "/", False, True),
        (["/"], "/x", False, False),
        (["/"], "//", False, False),
    ],
)
def test_path_rule(entries: list[str], path: str, protective: bool, hit: bool) -> None:
    rule = PathRule("paths", entries, protective=protective)
    assert rule.match(path) is hit
    assert rule.match(path) is hit  # remembered, same answer
    assert rule.decide(path) is hit


@pytest.mark.parametrize(
    ("entries", "protective", "message"),
    [
        ("/login", True, "p: must be a list of strings, got the single string '/login'"),
        (["login"], True, "p: 'login' must start with '/' (or be '*')"),
        (["health"], False, "p: 'health' must start with '/'"),
        (["*"], False, "p: '*' would match every path and switch the filter off"),
        (["/*"], False, "p: '/*' would match every path"),
        ([3], True, "p: every entry must be a string, got 3"),
    ],
)
def test_bad_path_entries_fail_loudly(entries: object, protective: bool, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        PathRule("p", entries, protective=protective)
    assert message in str(caught.value)


def test_empty_rules_match_nothing_and_are_false() -> None:
    for protective in (True, False):
        rule = PathRule("p", [], protective=protective)
        assert not rule and not rule.match("/") and not rule.match("/x")


def test_every_kind_of_space_is_trimmed_from_accounts() -> None:
    spaces = [chr(c) for c in range(0x10000) if chr(c).isspace()]
    for space in spaces:
        assert normalize_account(space + "victim" + space) == "victim", hex(ord(space))


def test_the_cache_is_bounded_and_skips_long_paths() -> None:
    rule = PathRule("p", ["/login"], protective=True)
    for n in range(5000):
        rule.match(f"/p{n}")
    assert len(rule._seen) <= 1024
    rule._seen.clear()
    rule.match("/" + "a" * 300)
    assert not rule._seen


_segment = st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,8}", fullmatch=True)
_entry = st.lists(_segment, min_size=1, max_size=4).map(lambda s: "/" + "/".join(s))


@st.composite
def _spelling(draw: st.DrawFn, entry: str, trail: bool = True) -> str:
    """Another spelling of ``entry`` a lenient server or application reads as ``entry``."""
    out = []
    for segment in entry.strip("/").split("/"):
        chars = []
        for char in segment:
            if draw(st.booleans()):
                char = char.swapcase()
            if char.isalnum() and draw(st.integers(0, 5)) == 0:
                char = f"%{ord(char):02X}"  # escaped once more: /%6Cogin
            chars.append(char)
        text = "".join(chars)
        if draw(st.integers(0, 4)) == 0:
            text += ";jsessionid=" + draw(st.from_regex(r"[a-z0-9]{0,6}", fullmatch=True))
        lead = draw(st.sampled_from(["/", "/", "//", "///", "\\", "/./", "/x/../"]))
        out.append(lead + text)
    end = draw(st.sampled_from(["", "", "/", "//", "/."])) if trail else ""
    return "".join(out) + end


@FUZZ
@given(data=st.data(), entry=_entry)
def test_protective_rules_match_every_spelling_of_an_entry(data: st.DataObject, entry: str) -> None:
    spelling = data.draw(_spelling(entry))
    assert PathRule("p", [entry], protective=True).match(spelling), spelling
    stem = data.draw(_spelling(entry, trail=False))
    tail = data.draw(st.from_regex(r"[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}", fullmatch=True))
    below = stem + "/" + tail
    assert PathRule("p", [entry + "/"], protective=True).match(below), below
    assert PathRule("p", [entry + "/"], protective=True).match(stem), stem
    assert PathRule("p", [entry + "*"], protective=True).match(stem + tail), stem + tail
    assert PathRule("p", [entry + "*"], protective=True).match(below), below


@FUZZ
@given(data=st.data(), entry=_entry)
def test_exempt_rules_take_no_other_spelling(data: st.DataObject, entry: str) -> None:
    spelling = data.draw(_spelling(entry))
    rule = PathRule("exempt_paths", [entry, entry + "/"], protective=False)
    assert rule.match(spelling) is (spelling in (entry, entry + "/")), spelling
    assert rule.match(entry) and rule.match(entry + "/x")
    assert not rule.match(entry + "/../x") and not rule.match(entry + "/./x")


@FUZZ
@given(
    entries=st.lists(
        st.one_of(_entry, _entry.map(lambda e: e + "/"), _entry.map(lambda e: e + "*")),
        max_size=4,
    ),
    path=st.text(max_size=300),
)
@example(entries=["/a"], path="%")
@example(entries=["/a"], path="/%ff%fe/../..;/\\\x00")
def test_path_rules_never_raise(entries: list[str], path: str) -> None:
    for protective in (True, False):
        rule = PathRule("p", entries, protective=protective)
        assert rule.match(path) is rule.decide(path)
    assert not PathRule("p", ["/"], protective=False).match(path) or path == "/"


# ------------------------------------------------------------------ accounts
@pytest.mark.parametrize(
    ("text", "account"),
    [
        ("victim", "victim"),
        ("VICTIM", "victim"),
        ("\uff36\uff29\uff23\uff34\uff29\uff2d", "victim"),  # full-width letters
        ("victim\x00", "victim"),
        ("victim\x00admin", "victim"),  # a C back end stops at the NUL
        ("\u00a0\tvictim\u200b\r\n", "victim"),
        ("CORP\\Victim", "victim"),
        ("\uff23\uff2f\uff32\uff30\uff3cvictim", "victim"),  # a full-width backslash
        ("J\u00e9", "j\u00e9"),
        ("Je\u0301", "j\u00e9"),  # NFKC composes
        ("Stra\u00dfe", "strasse"),
        ('Ev"il\nx', 'ev"il\nx'),  # inner controls stay (the app sees them too)
        ("victim@Example.COM", "victim@example.com"),
        ("", None),
        ("\x00victim", None),
        ("CORP\\", None),
        ("x" * 256, "x" * 256),
        ("x" * 257, None),
        (" " * 5000 + "victim", "victim"),  # padding does not push a name out
        (None, None),
    ],
)
def test_normalize_account(text: str | None, account: str | None) -> None:
    assert normalize_account(text) == account


def test_domain_options() -> None:
    assert normalize_account("CORP\\jdoe", strip_domain=False) == "corp\\jdoe"
    rule = AccountRule(default_domain="Example.COM")
    assert rule.default_domain == "example.com"
    for spelling in ("victim", "VICTIM", "victim@example.com", "CORP\\Victim", "victim\x00"):
        assert rule.normalize(spelling) == "victim@example.com", spelling
    assert rule.normalize("victim@other.org") == "victim@other.org"
    for bad in ("", "a@b", "a b", 3, "x" * 300):
        with pytest.raises(ValueError, match="default_domain"):
            AccountRule(default_domain=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="strip_domain"):
        AccountRule(strip_domain="yes")  # type: ignore[arg-type]


@FUZZ
@given(
    text=st.one_of(st.text(max_size=400), st.text(st.characters(), max_size=40)),
    strip=st.booleans(),
    domain=st.sampled_from([None, "example.com", "\uff25xample.org"]),
)
@example(text="\u1e9b\u0323", strip=True, domain=None)
@example(text="\u0345", strip=True, domain=None)
@example(text="\u00df" * 200, strip=True, domain=None)
def test_the_normalizer_is_idempotent_bounded_and_never_raises(
    text: str, strip: bool, domain: str | None
) -> None:
    rule = AccountRule(strip_domain=strip, default_domain=domain)
    name = rule.normalize(text)
    if name is not None:
        assert 0 < len(name) <= MAX_ACCOUNT
        assert rule.normalize(name) == name
        assert "\x00" not in name and name == name.strip()
        assert unicodedata.normalize("NFKC", name) == name


_ascii_name = st.from_regex(r"[a-z0-9][a-z0-9._-]{0,30}", fullmatch=True)


def _full_width(text: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@FUZZ
@given(name=_ascii_name, data=st.data())
def test_case_width_padding_and_nul_name_one_account(name: str, data: st.DataObject) -> None:
    mixed = "".join(c.upper() if data.draw(st.booleans()) else c for c in name)
    pad = data.draw(st.sampled_from(["", " ", "\t", "\u3000", "\r\n", "\u200b"]))
    for spelling in (
        name.upper(),
        mixed,
        _full_width(name),
        _full_width(mixed),
        name + "\x00",
        pad + mixed + pad,
        "DOMAIN\\" + mixed,
    ):
        assert normalize_account(spelling) == name, repr(spelling)


def _basic(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_basic_user_decodes_utf8_else_latin1() -> None:
    assert basic_user(_basic("J\u00e9:pw".encode())) == "J\u00e9"
    assert basic_user(_basic("J\u00e9:pw".encode("latin-1"))) == "J\u00e9"
    assert basic_user(_basic(b"a:b:c")) == "a"
    assert basic_user(_basic(b"nocolon")) is None
    assert basic_user("amRvZTpwdw") is None  # missing padding
    assert basic_user("A" * 5000) is None
    assert basic_user("\u00e9\u00e9\u00e9\u00e9") is None
    assert authorization_user("basic " + _basic(b"x:y")) == "x"
    assert authorization_user("Bearer abc") is None
    assert authorization_user(None) is None


@FUZZ
@given(user=st.binary(max_size=60).filter(lambda b: b":" not in b), password=st.binary(max_size=20))
def test_basic_credentials_round_trip(user: bytes, password: bytes) -> None:
    try:
        want = user.decode("utf-8")
    except UnicodeDecodeError:
        want = user.decode("latin-1")
    assert basic_user(_basic(user + b":" + password)) == want


@FUZZ
@given(st.text(max_size=200))
def test_basic_user_never_raises(token: str) -> None:
    basic_user(token)
    authorization_user("Basic " + token)


def test_one_normalizer_for_both_filters() -> None:
    """The login filter's and DeviceJail's helpers agree (they disagreed before #12)."""
    from mailguard.policies.device import basic_auth_user, normalise_account
    from mailguard.policies.login import basic_account
    from mailguard.policies.login import normalize_account as login_normalize

    for user in (b"J\xe9", "J\u00e9".encode(), b"x" * 300, b"CORP\\Bob", b"VICTIM\x00"):
        token = _basic(user + b":pw")
        assert basic_account(token) == basic_auth_user("Basic " + token)
    for text in ("x" * 300, "J\u00e9", "\uff36ictim", "a\x00"):
        assert login_normalize(text) == normalise_account(text)


# -------------------------------------------------------------------- bodies
def test_media_kind_cuts_as_php_does() -> None:
    assert media_kind("application/x-www-form-urlencoded") == "form"
    assert media_kind("Application/X-WWW-Form-Urlencoded; charset=UTF-8") == "form"
    assert media_kind("application/x-www-form-urlencoded,text/html") == "form"
    assert media_kind("application/x-www-form-urlencoded garbage") == "form"
    assert media_kind("multipart/form-data;boundary=x") == "multipart"
    assert media_kind("application/vnd.api+json") == "json"
    assert media_kind("text/plain") == "other"
    assert media_kind(None) == "other"


def test_php_names() -> None:
    assert php_name(".task") == "_task"
    assert php_name("_task") == "_task"
    assert php_name("a b.c") == "a_b_c"
    assert php_name("  user") == "user"
    assert php_name("user[]") == "user"
    assert php_name("a[b") == "a_b"
    assert php_name("u\x00ser") == "u"
    assert php_name("[x]") == ""
    assert form_fields(".task=login&_user=a&%20x=1&[y]=2", php=True) == {
        "_task": ["login"],
        "_user": ["a"],
        "x": ["1"],
    }
    assert form_fields(".task=login") == {".task": ["login"]}
    body = b'--b\r\nContent-Disposition: form-data; name=".task"\r\n\r\nlogin\r\n--b--\r\n'
    assert multipart_fields(body, "multipart/form-data; boundary=b", php=True) == (
        {"_task": ["login"]},
        True,
    )


_field_name = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_field_value = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n-"), max_size=30
)


@FUZZ
@given(
    fields=st.lists(st.tuples(_field_name, _field_value), max_size=6),
    token=st.from_regex(r"[A-Za-z0-9'+_.-]{1,40}", fullmatch=True),
    quoted=st.one_of(
        st.none(),
        st.from_regex(r"[A-Za-z0-9'()+_,./:=? -]{0,39}[A-Za-z0-9'()+_,./:=?-]", fullmatch=True),
    ),
    eol=st.sampled_from([b"\r\n", b"\n"]),
)
def test_multipart_with_crlf_or_bare_lf(
    fields: list[tuple[str, str]], token: str, quoted: str | None, eol: bytes
) -> None:
    boundary = token if quoted is None else quoted
    b = boundary.encode()
    body = b"preamble" + eol
    for name, value in fields:
        body += b"--" + b + eol
        body += f'Content-Disposition: form-data; name="{name}"'.encode() + eol + eol
        body += value.encode() + eol
    body += b"--" + b + b"--" + eol
    param = boundary if quoted is None else f'"{boundary}"'
    ctype = f"multipart/form-data; boundary={param}"
    want: dict[str, list[str]] = {}
    for name, value in fields:
        want.setdefault(name, []).append(value)
    assert multipart_fields(body, ctype) == (want, True)
    assert body_fields(body, ctype, limit=1 << 20) == (want, True)
    # cut before its closing delimiter: never complete, and whatever was read is real
    got, complete = body_fields(body[: len(body) // 2], ctype, limit=1 << 20)
    assert not complete
    for name, values in got.items():
        assert set(values) <= set(want[name])


@FUZZ
@given(
    doc=st.dictionaries(
        _field_name, st.one_of(_field_value, st.integers(-(2**64), 2**64)), max_size=6
    ),
    ctype=st.sampled_from(
        [None, "text/plain", "text/plain; charset=utf-8", "application/octet-stream", "x/y"]
    ),
    indent=st.sampled_from([None, 2]),
)
def test_json_is_read_whatever_the_content_type(
    doc: dict[str, object], ctype: str | None, indent: int | None
) -> None:
    raw = json.dumps(doc, indent=indent).encode()
    want = {k: [v] for k, v in doc.items() if isinstance(v, str)}
    assert body_fields(raw, ctype, limit=1 << 20) == (want, True)
    assert body_fields(raw, "application/json", limit=1 << 20) == (want, True)
    # cut short, or garbled: the reader cannot tell
    assert not body_fields(raw, ctype, limit=1 << 20, declared=len(raw) + 5).complete
    assert not body_fields(raw[:-1], ctype, limit=1 << 20).complete


def test_malformed_bodies_are_cannot_tell() -> None:
    limit = 1 << 20
    assert body_fields(b'{"user": "a", ', "application/json", limit=limit) == ({}, False)
    assert body_fields(b"[" * 200_000, "application/json", limit=limit) == ({}, False)
    assert body_fields(b' {"user"', "text/plain", limit=limit) == ({}, False)
    assert body_fields(b"\xef\xbb\xbf{}", "text/plain", limit=limit) == ({}, True)
    # well-formed, but no fields the application could read
    assert body_fields(b'["user", "alice"]', "application/json", limit=limit) == ({}, True)
    assert body_fields(b"user=alice", "text/plain", limit=limit) == ({}, True)
    assert body_fields(b"", None, limit=limit) == ({}, True)
    # not buffered: complete only when no body was announced
    assert body_fields(None, "application/json", limit=limit) == ({}, True)
    assert body_fields(None, "text/plain", limit=limit, declared=3) == ({}, False)
    assert body_fields(None, None, limit=limit, chunked=True) == ({}, False)
    # a compressed body: the server may inflate it for the application
    assert body_fields(b"x", "text/plain", limit=limit, encoded=True) == ({}, False)
    assert body_fields(b"", None, limit=limit, encoded=True) == ({}, True)
    # a multipart body that never closes, or has too many parts
    part = b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\ny\r\n'
    ctype = "multipart/form-data; boundary=b"
    assert body_fields(part, ctype, limit=limit) == ({}, False)  # the part never ended
    assert body_fields(part + b"--b", ctype, limit=limit) == ({"x": ["y"]}, False)
    assert not body_fields(part * 300 + b"--b--", ctype, limit=limit).complete
    assert body_fields(part + b"--b--", ctype, limit=limit).complete
    # a form cut short keeps its whole pairs only
    assert body_fields(b"a=1&b=22", "application/x-www-form-urlencoded", limit=6) == (
        {"a": ["1"]},
        False,
    )


@pytest.mark.parametrize(
    ("value", "name", "is_file"),
    [
        ('form-data; name="user"', "user", False),
        ("form-data; name='_action'", "_action", False),  # PHP strips ' too
        ("form-data; name=user", "user", False),
        ("form-data; NAME = user", "user", False),
        ('form-data; name="a\\"b"', 'a"b', False),
        ('form-data; name="user"; filename="a.txt"', "user", True),
        ("form-data; name=user; filename*=UTF-8''a.txt", "user", True),
        ('form-data; x="; filename=a"; name="_action"', "_action", False),
        ('form-data; x="; name=decoy"; name="user"', "user", False),
        ("form-data; x='; name=decoy'; name=user", "user", False),
        ('form-data; name="first"; name="last"', "last", False),
        ('form-data; name="decoy"' + "; a=b" * 500 + '; name="last"', "last", False),
        ('form-data; name="open', "open", False),  # an unclosed quote runs to the end
        ("form-data", None, False),
    ],
)
def test_content_disposition_parameters(value: str, name: str | None, is_file: bool) -> None:
    assert _disposition(value) == (name, is_file)


def test_content_disposition_parameter_names_as_php_compares_them() -> None:
    # PHP keeps the space before "=" in the key: "name =" is not "name"
    assert _disposition('form-data; name="_action"; name ="x"', php=True) == ("_action", False)
    assert _disposition('form-data; name="a"; filename ="f"', php=True) == ("a", False)
    assert _disposition("form-data; name=a; filename*=UTF-8''f", php=True) == ("a", False)
    assert _disposition('form-data; name="a"; \xa0name="x"', php=True) == ("a", False)


_param_text = st.text(alphabet=st.sampled_from("ab=;'\" \\\t*"), max_size=30)


@FUZZ
@given(value=st.text(max_size=200), php=st.booleans())
def test_content_disposition_reader_never_raises(value: str, php: bool) -> None:
    name, is_file = _disposition(value, php=php)
    assert name is None or isinstance(name, str)
    assert isinstance(is_file, bool)


@FUZZ
@given(
    decoy=_param_text,
    quote=st.sampled_from(['"', "'"]),
    real=st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True),
    php=st.booleans(),
)
def test_a_decoy_inside_quotes_never_wins(decoy: str, quote: str, real: str, php: bool) -> None:
    # whatever a quoted value holds, it is one parameter's text
    inner = decoy.replace(quote, "").replace("\\", "")
    value = f'form-data; x={quote}{inner}; name=decoy; filename=f{quote}; name="{real}"'
    assert _disposition(value, php=php) == (real, False)
    body = f"--b\r\nContent-Disposition: {value}\r\n\r\nv\r\n--b--\r\n".encode()
    assert multipart_fields(body, "multipart/form-data; boundary=b") == ({real: ["v"]}, True)


@FUZZ
@given(
    raw=st.binary(max_size=2000),
    ctype=st.one_of(
        st.none(),
        st.text(max_size=60),
        st.sampled_from(
            [
                "application/json",
                "multipart/form-data; boundary=b",
                'multipart/form-data; boundary=""',
                "application/x-www-form-urlencoded",
                "text/plain",
            ]
        ),
    ),
    limit=st.integers(0, 3000),
    declared=st.one_of(st.none(), st.integers(-5, 4000)),
    php=st.booleans(),
)
@example(raw=b"--b\n\n--b--", ctype="multipart/form-data; boundary=b", limit=100,
         declared=None, php=False)  # fmt: skip
def test_body_readers_never_raise(
    raw: bytes, ctype: str | None, limit: int, declared: int | None, php: bool
) -> None:
    got = body_fields(raw, ctype, limit=limit, declared=declared, php=php)
    assert isinstance(got, Fields)
    for name, values in got.fields.items():
        assert isinstance(name, str) and all(isinstance(v, str) for v in values)
    json_fields(raw)
    multipart_fields(raw, ctype or "", php=php)
    form_fields(raw.decode("latin-1"), php=php)


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        ("application/json", b"[" * (1 << 20)),
        ("application/json", b'{"a":' * 200_000),
        ("text/plain", b"{" + b" " * (1 << 20)),
        ("multipart/form-data; boundary=b", b"--b\n" * 250_000),
        ("multipart/form-data; boundary=b", b"--b" * 300_000),
        ("multipart/form-data; boundary=b", b"--b\r\n" + b"\n" * (1 << 20)),
        (
            "multipart/form-data; boundary=b",
            b"--b\r\nContent-Disposition: form-data"
            + b'; x=""; name=a' * 70_000
            + b"\r\n\r\nv\r\n--b--",
        ),
        (
            "multipart/form-data; boundary=b",
            b"--b\r\nContent-Disposition: form-data" + b";" * (1 << 19) + b"\r\n\r\nv\r\n--b--",
        ),
        ("application/x-www-form-urlencoded", b"&=" * 500_000),
        ("application/x-www-form-urlencoded", b"%" * (1 << 20)),
    ],
)
def test_bounded_work_on_the_largest_body(ctype: str, body: bytes) -> None:
    started = time.perf_counter()
    body_fields(body, ctype, limit=1 << 20)  # max_body_bytes' ceiling
    assert time.perf_counter() - started < 2.0


# the urlencoded reader is parse_qsl written out for speed: it must stay parse_qsl
_FORM_TEXT = st.text(alphabet=st.sampled_from("ab=&+%25%2B%C3%A9%zz;\x00 é\u2028"), max_size=60)


@FUZZ
@given(text=st.one_of(_FORM_TEXT, st.text(max_size=80)))
@example(text="a=1&&b&=c&d==e&+=%2B&%C3%A9=%E9&%&%%=%g0")
def test_form_pairs_are_parse_qsl(text: str) -> None:
    assert form_pairs(text) == parse_qsl(text, keep_blank_values=True)
    expected: dict[str, list[str]] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        expected.setdefault(name, []).append(value)
    assert form_fields(text) == expected
    php: dict[str, list[str]] = {}
    for name, value in parse_qsl(text, keep_blank_values=True):
        if php_name(name):
            php.setdefault(php_name(name), []).append(value)
    assert form_fields(text, php=True) == php


@FUZZ
@given(text=st.one_of(_FORM_TEXT, st.text(max_size=40)))
@example(text="%C3%A9%E9%zz%%41%c3")
def test_unquote_fast_path_is_unquote(text: str) -> None:
    assert _unquote(text) == unquote(text)


# a request's headers: the first read scans the list, later ones share one dict
_HEADER_NAMES = ["content-type", "content-length", "authorization", "x-a", "x-\u00e9"]


def _spellings(name: str) -> st.SearchStrategy[bytes]:
    raw = name.encode("latin-1")
    return st.sampled_from([raw, raw.upper(), raw.title(), raw.capitalize()])


@FUZZ
@given(
    headers=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(_HEADER_NAMES).flatmap(_spellings), st.binary(max_size=4)),
            st.binary(max_size=6),
        ),
        max_size=8,
    ),
    reads=st.lists(st.sampled_from(["content-type", "content-length", "authorization", "x-a"])),
)
def test_header_reads_agree_however_many(
    headers: list[tuple[bytes, bytes]], reads: list[str]
) -> None:
    scope = {"type": "http", "headers": headers}
    shared = AsgiRequest(scope, Client("192.0.2.1", "192.0.2.1", True))
    for name in reads:
        found = [v.decode("latin-1") for k, v in headers if k.lower() == name.encode()]
        expected = ", ".join(found) if found else None
        fresh = AsgiRequest(scope, Client("192.0.2.1", "192.0.2.1", True))
        assert fresh.header(name) == expected
        assert shared.header(name) == expected
