"""AsgiRequest.header: the first read scans without a dict; every read answers
as the plain rule (lines of one name, matched ASCII-case-insensitively on the
first read, joined by ", " when there are several)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailguard.identity import ClientResolver
from mailguard.request import AsgiRequest

RESOLVER = ClientResolver()


def reference(headers: list[tuple[bytes, bytes]], names: list[str]) -> list[str | None]:
    """The answers of AsgiRequest.header before its first read lost the list."""
    answers: list[str | None] = []
    built: dict[str, str] | None = None
    first = True
    for name in names:
        if first:
            first = False
            raw = name.encode("latin-1")
            found = [v for k, v in headers if k == raw or k.lower() == raw]
            if len(found) <= 1:
                answers.append(found[0].decode("latin-1") if found else None)
                continue
        if built is None:
            built = {}
            for key, value in headers:
                k = key.decode("latin-1").lower()
                v = value.decode("latin-1")
                built[k] = f"{built[k]}, {v}" if k in built else v
        answers.append(built.get(name))
    return answers


_names = st.sampled_from(
    [b"authorization", b"Authorization", b"AUTHORIZATION", b"x-device-id", b"X-Device-ID",
     b"user-agent", b"host", b"authorizatioN", b"authorisation", b"", b"\xc0uthorization",
     b"content-length", b"abcdefghijklm"]
)  # fmt: skip
_headers = st.lists(st.tuples(_names, st.binary(max_size=12)), max_size=8)
_asked = st.lists(
    st.sampled_from(["authorization", "x-device-id", "user-agent", "host", "Authorization", ""]),
    min_size=1,
    max_size=4,
)


@settings(max_examples=1500, deadline=None, database=None)
@given(headers=_headers, names=_asked)
def test_header_reads_answer_as_the_reference(
    headers: list[tuple[bytes, bytes]], names: list[str]
) -> None:
    scope: dict[str, Any] = {"type": "http", "headers": headers, "client": ("192.0.2.1", 1)}
    request = AsgiRequest(scope, RESOLVER.from_asgi(scope))
    assert [request.header(name) for name in names] == reference(headers, names)


def test_examples() -> None:
    headers = [(b"Authorization", b"Basic a"), (b"host", b"h"), (b"authorization", b"Basic b")]
    scope: dict[str, Any] = {"type": "http", "headers": headers, "client": None}
    request = AsgiRequest(scope, RESOLVER.from_asgi(scope))
    assert request.header("authorization") == "Basic a, Basic b"
    one = AsgiRequest({"headers": [(b"X-Device-Id", b"abc")]}, RESOLVER.from_asgi({}))
    assert one.header("x-device-id") == "abc"
    assert AsgiRequest({}, RESOLVER.from_asgi({})).header("authorization") is None
