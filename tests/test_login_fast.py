"""The login filter's fast paths (#18), pinned to the general code they stand in for.

* ``_begin_now`` / ``_end_now``: an attempt and its settling as direct store
  calls, against ``run(_begin(...))`` / ``run(_end(...))`` / ``run(_settle(...))``;
* ``check``'s one step for the usual login (``attempt_of`` then ``_begin_now``),
  against ``check`` without it; ``finish``'s own reading of a plain response,
  against ``outcome``;
* ``body_plan``: ``wants_body`` and ``waits_for_body`` with one path match;
* ``AsgiRequest.headers``: several headers in one scan, against ``header``;
* :class:`~mailguard.watch.AsgiHeaders` / :class:`~mailguard.watch.WsgiHeaders`:
  the response's headers read by name, against the dict the fronts built;
* ``reading._unquote``: the ASCII-escape table, against ``urllib.parse.unquote``;
* the fronts end to end: the same hostile requests through ASGI with a local
  store (the direct path), ASGI with a store that says it does I/O (the
  coroutine path) and WSGI give the same answers and leave the same blocks.

Each must answer exactly as the code it replaces, on any input, hostile included.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterable
from dataclasses import FrozenInstanceError
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailguard import FakeClock, MemoryStore
from mailguard import asgi as mg_asgi
from mailguard import wsgi as mg_wsgi
from mailguard.events import Event
from mailguard.identity import ClientResolver
from mailguard.policies import InvalidLoginPolicy
from mailguard.policies.login import LoginVerdict, Outcome, _Attempt
from mailguard.policies.steps import run
from mailguard.reading import _unquote, form_pairs, plain_form_values
from mailguard.request import AsgiRequest, WsgiRequest
from mailguard.watch import AsgiHeaders, WsgiHeaders, body_plan

T0 = 1_700_000_000.0
RESOLVER = ClientResolver()
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------ the attempt flow
def _redirect_to_login(status: int, headers: Any) -> bool:
    """An ``is_failure`` hook: a redirect back to the login page failed."""
    return status == 302 and headers.get("location") == "/login"


_accounts = st.sampled_from(
    [None, "", "jdoe", "JDoe", "victim@example.com", "CORP\\jdoe", "x\x00y", "\u00e9t\u00e9"]
)
_options = st.fixed_dictionaries(
    {
        "max_failed_logins": st.integers(1, 4),
        "failure_interval": st.sampled_from([5.0, 60.0]),
        "block_duration": st.sampled_from([10.0, 100.0]),
        "account_tarpit": st.one_of(
            st.none(), st.tuples(st.integers(1, 3), st.sampled_from([0.5, 1.5]))
        ),
        "max_delayed": st.integers(1, 2),
        "enforce": st.booleans(),
        "reset_on_success": st.booleans(),
        "repeat_factor": st.sampled_from([1.0, 2.0]),
        "result_header": st.sampled_from(["x-login-result", None]),
        "failure_statuses": st.sampled_from([[401, 403], [403], [302, 401]]),
        "is_failure": st.sampled_from([None, _redirect_to_login]),
    }
)
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("begin"), st.integers(0, 2), _accounts, st.booleans(), st.booleans()),
        st.tuples(
            st.just("end"),
            st.integers(0, 20),
            st.sampled_from(list(Outcome)),
            st.none(),
            st.none(),
        ),
        st.tuples(
            st.just("finish"),
            st.integers(0, 20),
            st.sampled_from([None, 200, 302, 401, 403, 500]),
            st.sampled_from(
                [
                    {},
                    {"x-login-result": "fail"},
                    {"x-login-result": "OK"},
                    {"www-authenticate": "Basic"},
                    {"location": "/login"},
                ]
            ),
            st.none(),
        ),
        st.tuples(
            st.just("advance"),
            st.sampled_from([0.5, 3.0, 30.0, 200.0]),
            st.none(),
            st.none(),
            st.none(),
        ),
    ),
    max_size=40,
)


def _policy(options: dict[str, Any], events: list[Event], clock: FakeClock) -> InvalidLoginPolicy:
    extra: dict[str, Any] = {}
    if options["repeat_factor"] > 1.0:
        extra["offender_memory"] = 1000.0
    return InvalidLoginPolicy(
        store=MemoryStore(clock=clock), on_event=events.append, **options, **extra
    )


@FAST
@given(_options, _ops)
def test_direct_attempts_answer_as_the_flow(options: dict[str, Any], ops: list[Any]) -> None:
    fast_events: list[Event] = []
    flow_events: list[Event] = []
    clocks = [FakeClock(T0), FakeClock(T0)]
    fast = _policy(options, fast_events, clocks[0])
    flow = _policy(options, flow_events, clocks[1])
    tickets: list[tuple[Any, Any]] = []
    keys = ["192.0.2.1", "192.0.2.2", "198.51.100.7"]
    for op, a, b, c, d in ops:
        if op == "begin":
            found = _Attempt(fast.accounts.normalize(b), c, d)
            got = fast._begin_now(keys[a], found, "http")
            want = run(flow._begin(keys[a], found, "http"), flow.store)
            assert got == want
            assert type(got) is type(want)
            if got.delay > 0.0:  # the adapter holds it, then lets the tarpit seat go
                fast.release(got)
                flow.release(want)
            tickets.append((got, want))
        elif op in ("end", "finish") and tickets:
            got, want = tickets[a % len(tickets)]
            if not isinstance(got, LoginVerdict):
                continue
            if op == "end":
                fast._end_now(got, b)
                run(flow._end(want, b), flow.store)
            else:
                fast.finish(AsgiRequest({}, RESOLVER.resolve(got.key, ())), got, b, c)
                run(flow._settle(want, b, c), flow.store)
        elif op == "advance":
            for clock in clocks:
                clock.advance(a)
        assert fast_events == flow_events
        assert fast.waiting == flow.waiting
        assert fast.store.blocks() == flow.store.blocks()
    for key in keys:  # what the next attempt of each address would meet
        found = _Attempt(None, True, False)
        assert fast._begin_now(key, found, "http") == run(
            flow._begin(key, found, "http"), flow.store
        )


def test_begin_and_end_take_the_direct_path_for_ipv4_and_the_flow_for_ipv6() -> None:
    events: list[Event] = []
    policy = InvalidLoginPolicy(max_failed_logins=2, store=MemoryStore(), on_event=events.append)
    for address in ("192.0.2.9", "2001:db8::9"):
        for _ in range(2):
            ticket = policy.begin(address, "jdoe", "imap")
            assert isinstance(ticket, LoginVerdict)
            policy.end(ticket, "failed")
        refused = policy.begin(address, "jdoe", "imap")
        assert not refused.allowed and refused.reason == "blocked"
    assert [e.action for e in events].count("blocked") >= 2


# ------------------------------------------------------------------ body plan
_paths = st.sampled_from(["/login", "/Login/", "//login", "/login;x=1", "/other", "/dav/x", "/"])
_methods = st.sampled_from(["POST", "GET", "PUT", "WEBSOCKET"])
_auth = st.sampled_from([None, "Basic amRvZTpw", "Bearer x", "", "basic", "Digest a"])
_peers = st.sampled_from(["192.0.2.1", "10.0.0.5", "2001:db8::1"])


@FAST
@given(
    _paths,
    _methods,
    _auth,
    _peers,
    st.booleans(),
    st.sampled_from([["/login"], ["/login", "/dav/"], ["*"]]),
    st.sampled_from([16384, 0]),
)
def test_body_plan_is_wants_body_and_waits_for_body(
    path: str,
    method: str,
    auth: str | None,
    peer: str,
    basic: bool,
    paths: list[str],
    body_bytes: int,
) -> None:
    policy = InvalidLoginPolicy(
        login_paths=paths,
        count_basic_auth=basic,
        auth_paths=["/dav/"],
        safe_ips=["10.0.0.0/8"],
        max_body_bytes=body_bytes,
    )
    headers = [] if auth is None else [(b"authorization", auth.encode())]
    scope = {"type": "http", "method": method, "path": path, "headers": headers,
             "client": (peer, 1)}  # fmt: skip
    request = AsgiRequest(scope, RESOLVER.from_asgi(scope))
    plan = body_plan(policy)
    assert plan is not None
    assert plan(request) == (policy.wants_body(request), policy.waits_for_body(request))
    # the login-path match the plan remembers only spares check's attempt_of
    # the same match: it answers as for a request no plan has seen
    assert plan(request) == (policy.wants_body(request), policy.waits_for_body(request))
    unplanned = AsgiRequest(scope, request.client)
    assert policy.attempt_of(request) == policy.attempt_of(unplanned)
    assert policy.attempt_of(request) == policy.attempt_of(unplanned)  # (read once)


def test_a_planned_login_path_is_not_taken_for_another_request() -> None:
    policy = InvalidLoginPolicy(login_paths=["/login"])
    login = {"type": "http", "method": "POST", "path": "/login", "headers": [],
             "client": ("192.0.2.1", 1)}  # fmt: skip
    other = {**login, "path": "/inbox"}
    planned = AsgiRequest(login, RESOLVER.from_asgi(login))
    plan = body_plan(policy)
    assert plan is not None and plan(planned)[1]
    assert policy.attempt_of(AsgiRequest(other, planned.client)) is None
    assert policy.attempt_of(planned) is not None


def test_body_plan_steps_aside_for_a_subclass_with_its_own_rules() -> None:
    class Custom(InvalidLoginPolicy):
        def waits_for_body(self, request: Any) -> bool:
            return False

    assert body_plan(Custom()) is None
    assert body_plan(InvalidLoginPolicy()) is not None


# -------------------------------------------------------------- request headers
_names = st.sampled_from(
    [b"content-type", b"Content-Type", b"CONTENT-LENGTH", b"content-length", b"content-encoding",
     b"transfer-encoding", b"Transfer-Encoding", b"authorization", b"x-other", b"content-typ\xc9",
     b"123", b"AUTHORIZATION", b"content-length2"]
)  # fmt: skip
_values = st.binary(max_size=12)
_header_lists = st.lists(st.tuples(_names, _values), max_size=8)
_WANTED = (
    "content-length",
    "content-encoding",
    "content-type",
    "transfer-encoding",
    "authorization",
)


@FAST
@given(_header_lists, st.integers(0, 2))
def test_asgi_request_headers_read_as_header_does(
    headers: list[tuple[bytes, bytes]], reads_before: int
) -> None:
    scope = {"type": "http", "headers": headers, "client": ("192.0.2.1", 1)}
    fast = AsgiRequest(scope, RESOLVER.from_asgi(scope))
    plain = AsgiRequest(scope, RESOLVER.from_asgi(scope))
    for _ in range(reads_before):  # the request's cache in each of its states
        fast.header("authorization")
        plain.header("authorization")
    assert fast.headers(_WANTED) == [plain.header(name) for name in _WANTED]


def test_wsgi_request_headers_read_as_header_does() -> None:
    environ = {"CONTENT_TYPE": "a/b", "CONTENT_LENGTH": "3", "HTTP_CONTENT_ENCODING": "gzip"}
    request = WsgiRequest(environ, RESOLVER.resolve("192.0.2.1", ()))
    assert request.headers(_WANTED) == [request.header(name) for name in _WANTED]


# ------------------------------------------------------------- response headers
def _asgi_map(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """The dict the ASGI front built before the view (``asgi._header_map``)."""
    seen: dict[str, str] = {}
    for key, value in headers:
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        seen[name] = f"{seen[name]}, {text}" if name in seen else text
    return seen


def _wsgi_map(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The dict the WSGI front built before the view (``wsgi._header_map``)."""
    seen: dict[str, str] = {}
    for key, value in headers:
        name = key.lower()
        seen[name] = f"{seen[name]}, {value}" if name in seen else value
    return seen


_response_names = st.sampled_from(
    [b"x-login-result", b"X-Login-Result", b"www-authenticate", b"WWW-Authenticate",
     b"content-type", b"x-\xc0", b"x-\xe0", b"set-cookie"]
)  # fmt: skip
_asked = st.sampled_from(
    ["x-login-result", "X-Login-Result", "www-authenticate", "content-type", "x-\xe0", "x-\xc0",
     "set-cookie", "missing", "x-\u0100"]
)  # fmt: skip


@FAST
@given(st.lists(st.tuples(_response_names, _values), max_size=8), st.lists(_asked, max_size=4))
def test_response_header_views_read_as_the_dicts(
    lines: list[tuple[bytes, bytes]], asked: list[str]
) -> None:
    text_lines = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in lines]
    for view, want in (
        (AsgiHeaders(lines), _asgi_map(lines)),
        (WsgiHeaders(text_lines), _wsgi_map(text_lines)),
    ):
        for name in asked:
            assert view.get(name) == want.get(name)
            assert (name in view) == (name in want)
        assert dict(view) == want
        assert len(view) == len(want)
        for name in asked:  # once materialised too
            assert view.get(name, "?") == want.get(name, "?")


# --------------------------------------------------------------------- reading
_escapes = st.lists(
    st.one_of(
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=4),
        st.integers(0, 255).map(lambda b: f"%{b:02x}"),
        st.integers(0, 255).map(lambda b: f"%{b:02X}"),
        st.sampled_from(
            ["%", "%4", "%zz", "%4g", "%%41", "+", "%C3%A9", "%e9", "\u00e9", "%u0041", "%40"]
        ),
    ),
    max_size=10,
).map("".join)


@FAST
@given(_escapes)
def test_unquote_is_urllib_unquote(text: str) -> None:
    assert _unquote(text) == unquote(text)


@FAST
@given(_escapes, _escapes)
def test_form_pairs_is_parse_qsl(a: str, b: str) -> None:
    from urllib.parse import parse_qsl

    text = f"username={a}&{b}=x&password={b}"
    assert form_pairs(text) == parse_qsl(text, keep_blank_values=True)


# ------------------------------------------------------------------ end to end
class _IOMemoryStore(MemoryStore):
    """A memory store that says it does I/O: the ASGI front awaits acheck/afinish."""

    local = False


_bodies = st.one_of(
    st.sampled_from(
        [
            b"username=jdoe%40example.com&password=hunter2",
            b"username=JDoe&password=x",
            b"user=a&user=b",
            b"username=%zz%4&password=%",
            b"username=%C3%A9t%C3%A9",
            b"username=\xff\xfe&password=\x00",
            b"username=victim%00&x",
            b"",
            b"&&&==",
            b"username=" + b"A" * 300,
            b"username=x&" + b"p=" + b"y" * 20000,
            b'{"username": "jdoe"}',
            b"username=a+b%2Bc",
        ]
    ),
    st.binary(max_size=64),
)
_requests = st.lists(
    st.tuples(
        st.sampled_from(["192.0.2.1", "192.0.2.2"]),
        st.sampled_from(["/login", "/Login/", "/home"]),
        _bodies,
        st.sampled_from(
            [
                b"application/x-www-form-urlencoded",
                b"Application/X-WWW-Form-Urlencoded",
                b"text/plain",
                b"application/json",
            ]
        ),
        st.integers(1, 3),  # body messages (a slow body)
        st.sampled_from([200, 302, 401, 403]),
        st.sampled_from([None, b"fail", b"OK", b"Fail, ok"]),
        st.booleans(),  # the app reads the body
    ),
    min_size=1,
    max_size=12,
)


def _app_answer(status: int, said: bytes | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"text/plain")]
    if said is not None:
        headers.append((b"X-Login-Result", said))
    return headers


def _asgi_app(status: int, said: bytes | None, reads: bool) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if reads:
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False) and message["type"] == "http.request"
        await send({"type": "http.response.start", "status": status,
                    "headers": _app_answer(status, said)})  # fmt: skip
        await send({"type": "http.response.body", "body": b"x"})

    return app


class _Switch:
    """One app for the whole stack whose answer each request sets."""

    def __init__(self) -> None:
        self.status, self.said, self.reads = 200, None, True

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        await _asgi_app(self.status, self.said, self.reads)(scope, receive, send)

    def wsgi(self, environ: Any, start_response: Any) -> list[bytes]:
        if self.reads:
            environ["wsgi.input"].read()
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in _app_answer(self.status, self.said)]  # fmt: skip
        start_response(f"{self.status} X", headers)
        return [b"x"]


async def _asgi_call(app: Any, peer: str, path: str, body: bytes, kind: bytes, parts: int) -> Any:
    size = max(1, len(body) // parts + 1)
    chunks = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "query_string": b"",
             "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
             "client": (peer, 1)}  # fmt: skip
    await app(scope, receive, send)
    start = sent[0]
    return start["status"], sorted(
        (k.lower(), v) for k, v in start.get("headers", ()) if k.lower() != b"content-length"
    )


def _wsgi_call(app: Any, peer: str, path: str, body: bytes, kind: bytes) -> Any:
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
               "CONTENT_TYPE": kind.decode("latin-1"), "CONTENT_LENGTH": str(len(body)),
               "REMOTE_ADDR": peer, "wsgi.input": io.BytesIO(body)}  # fmt: skip
    answer: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        answer[:] = [int(status[:3]), headers]
        return lambda data: None

    result = app(environ, start_response)
    for _ in result:
        pass
    close = getattr(result, "close", None)
    if close is not None:
        close()
    status, headers = answer
    return status, sorted(
        (k.lower().encode("latin-1"), v.encode("latin-1"))
        for k, v in headers
        if k.lower() != "content-length"
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests)
def test_the_fronts_agree_on_hostile_logins(requests: list[Any]) -> None:
    options: dict[str, Any] = {"max_failed_logins": 2, "block_duration": 60,
                               "failure_interval": 30, "max_body_bytes": 256}  # fmt: skip
    switch = _Switch()
    stacks: list[tuple[str, Any, MemoryStore]] = []
    for kind, store in (
        ("local", MemoryStore(clock=FakeClock(T0))),
        ("io", _IOMemoryStore(clock=FakeClock(T0))),
        ("wsgi", MemoryStore(clock=FakeClock(T0))),
    ):
        if kind == "wsgi":
            app: Any = mg_wsgi.InvalidLoginFilter(switch.wsgi, store=store, **options)
        else:
            app = mg_asgi.InvalidLoginFilter(switch.asgi, store=store, **options)
        stacks.append((kind, app, store))
    for peer, path, body, kind, parts, status, said, reads in requests:
        switch.status, switch.said, switch.reads = status, said, reads
        answers = {}
        for name, app, _ in stacks:
            if name == "wsgi":
                answers[name] = _wsgi_call(app, peer, path, body, kind)
            else:
                answers[name] = asyncio.run(_asgi_call(app, peer, path, body, kind, parts))
        assert answers["local"] == answers["io"] == answers["wsgi"], answers
        assert answers["local"][0] in (status, 503)
        if path != "/home":  # a login: the result header never leaves
            assert all(k != b"x-login-result" for k, _ in answers["local"][1])
        blocks = [store.blocks() for _, _, store in stacks]
        assert blocks[0] == blocks[1] == blocks[2]


# ------------------------------------------------------------ the usual form
_FORM_KIND = b"application/x-www-form-urlencoded"


def _general_attempt(policy: InvalidLoginPolicy, request: Any) -> Any:
    """``_form_attempt`` without the quick read of the usual form."""
    policy._plain_forms = False
    try:
        return policy._form_attempt(request)
    finally:
        policy._plain_forms = True


_form_bodies = st.one_of(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "username",
                    "user",
                    "_user",
                    "userName",
                    "password",
                    "us%65r",
                    "user+",
                    "user%5Fx",
                    "",
                    "USERNAME",
                    "loginOp",
                ]
            ),
            _escapes,
        ),
        max_size=5,
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs).encode("latin-1", "replace")),
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"username=jdoe%40example.com&password=hunter2&loginOp=login",
            b"username=J%40a%40b&x=%40",
            b"username=j%40%41b",
            b"username=j%40%4",
            b"username=j%4040",
            b"username=a&username=b",
            b"user=A&userName=a",
            b"username=%ff%fe",
            b"username=%00victim",
            b"username=" + b"x" * 300,
            b"&=&username&",
            b"username=\xe9",
            b"username==x",
            b"a=1;username=x",
        ]
    ),
)


@FAST
@given(
    _form_bodies,
    st.sampled_from(
        [
            b"application/x-www-form-urlencoded",
            b"application/x-www-form-urlencoded; x",
            b"Application/x-www-form-urlencoded",
            b"text/plain",
            None,
        ]
    ),
    st.sampled_from(["exact", "none", "short", "long", "spaced", "junk"]),
    st.sampled_from([b"", b"username=other", b"x=1"]),
    st.sampled_from([None, b"gzip", b"identity"]),
    st.booleans(),
    st.sampled_from([None, b"Basic amRvZTpw", b"Bearer t", b"basic " + b"=" * 3]),
    st.sampled_from([16384, 64, 8]),
    st.booleans(),
)
def test_the_usual_form_is_read_as_the_general_reader_reads_it(
    body: bytes,
    kind: bytes | None,
    length: str,
    query: bytes,
    encoding: bytes | None,
    chunked: bool,
    auth: bytes | None,
    limit: int,
    usual: bool,
) -> None:
    policy = InvalidLoginPolicy(max_body_bytes=limit)
    assert policy._plain_forms
    if usual:  # every header as the quick read wants it: only the body varies
        kind, length, query, encoding, chunked = _FORM_KIND, "exact", b"", None, False
    declared = {
        "exact": str(len(body)),
        "none": None,
        "short": str(max(0, len(body) - 1)),
        "long": str(len(body) + 5),
        "spaced": f" {len(body)}",
        "junk": "x",
    }[length]
    headers = []
    if kind is not None:
        headers.append((b"content-type", kind))
    if declared is not None:
        headers.append((b"content-length", declared.encode()))
    if encoding is not None:
        headers.append((b"content-encoding", encoding))
    if chunked:
        headers.append((b"transfer-encoding", b"chunked"))
    if auth is not None:
        headers.append((b"authorization", auth))
    scope = {"type": "http", "method": "POST", "path": "/login", "query_string": query,
             "headers": headers, "client": ("192.0.2.1", 1)}  # fmt: skip
    for buffered in (body[:limit], body, None):
        fast = AsgiRequest(scope, RESOLVER.from_asgi(scope))
        plain = AsgiRequest(scope, RESOLVER.from_asgi(scope))
        fast.body = plain.body = buffered
        assert policy._form_attempt(fast) == _general_attempt(policy, plain)
        QUICK.append(plain_form_values(fast, policy._account_names, limit) is not None)


QUICK: list[bool] = []  # whether each case above took the quick read


# ----------------------------------------------------------- check, in one step
def _general_check(policy: InvalidLoginPolicy, request: Any) -> Any:
    """``check`` without its one step for the usual login."""
    policy._quick = False
    try:
        return policy.check(request)
    finally:
        policy._quick = True


_login_requests = st.lists(
    st.tuples(
        _form_bodies,
        st.sampled_from(["192.0.2.1", "192.0.2.2", "10.0.0.5", "2001:db8::1"]),
        st.sampled_from(["/login", "/other", "/dav/x"]),
        st.sampled_from([b"", b"username=other"]),
        st.sampled_from([None, b"Basic amRvZTpw", b"Bearer t"]),
        st.sampled_from([True, False]),  # through body_plan (as the fronts do) or not
        st.sampled_from([None, 200, 401, 403]),  # the response, or none yet
    ),
    max_size=25,
)


@FAST
@given(
    _login_requests,
    st.integers(1, 3),
    st.booleans(),
    st.sampled_from(["login", "all"]),
    st.booleans(),
)
def test_the_one_step_check_answers_as_the_general_path(
    requests: list[Any], limit: int, enforce: bool, scope_of_block: str, basic: bool
) -> None:
    made = []
    events: list[list[Event]] = [[], []]
    for i in range(2):
        made.append(
            InvalidLoginPolicy(
                max_failed_logins=limit,
                enforce=enforce,
                block_scope=scope_of_block,
                count_basic_auth=basic,
                auth_paths=["/dav/"],
                safe_ips=["10.0.0.0/8"],
                store=MemoryStore(clock=FakeClock(T0)),
                on_event=events[i].append,
            )
        )
    quick, general = made
    assert quick._quick
    took = False
    for body, peer, path, query, auth, planned, status in requests:
        headers = [(b"content-type", _FORM_KIND), (b"content-length", str(len(body)).encode())]
        if auth is not None:
            headers.append((b"authorization", auth))
        scope = {"type": "http", "method": "POST", "path": path, "query_string": query,
                 "headers": headers, "client": (peer, 1)}  # fmt: skip
        answers = []
        for policy in made:
            request = AsgiRequest(scope, RESOLVER.from_asgi(scope))
            request.body = body
            if planned:
                policy.body_plan(request)
            took = took or (policy is quick and request is quick._planned and quick._quick)
            verdict = policy.check(request) if policy is quick else _general_check(policy, request)
            if status is not None:
                policy.finish(request, verdict, status, AsgiHeaders([]))
            answers.append(verdict)
        assert answers[0] == answers[1]
        assert type(answers[0]) is type(answers[1])
        assert events[0] == events[1]
        assert quick.store.blocks() == general.store.blocks()
        assert quick._planned is None or not planned
    if any(r[5] and r[2] == "/login" and r[1] != "10.0.0.5" for r in requests):
        assert took


def test_the_cases_above_took_both_ways() -> None:
    if QUICK:  # (when run after it)
        assert any(QUICK) and not all(QUICK)


def test_the_quick_read_is_only_for_account_fields_read_as_sent() -> None:
    assert InvalidLoginPolicy()._plain_forms
    assert not InvalidLoginPolicy(login_fields={"loginOp": "login"})._plain_forms
    assert not InvalidLoginPolicy(account_fields=[])._plain_forms
    assert not InvalidLoginPolicy(preset="roundcube")._plain_forms  # PHP names, a login_match


# --------------------------------------------------------------------- tickets
@FAST
@given(
    st.sampled_from(["attempt", "tarpit"]),
    st.text(max_size=8),
    st.sampled_from([0.0, 1.5]),
    st.text(max_size=8),
    st.booleans(),
    st.sampled_from(["http", "imap"]),
)
def test_a_ticket_is_the_verdict_the_constructor_makes(
    reason: str, key: str, delay: float, account: str, credentials: bool, protocol: str
) -> None:
    from dataclasses import astuple

    from mailguard.policies.login import _ticket

    made = LoginVerdict(True, reason, key, delay=delay, watch=True, account=account,
                        credentials=credentials, protocol=protocol)  # fmt: skip
    ticket = _ticket(reason, key, delay, account, credentials, protocol)
    assert type(ticket) is LoginVerdict
    assert astuple(ticket) == astuple(made)
    assert ticket == made and hash(ticket) == hash(made)
    assert repr(ticket) == repr(made)
    # made through a mutable twin, the ticket is as frozen as the constructor's
    with pytest.raises(FrozenInstanceError):
        ticket.key = "203.0.113.9"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del ticket.account  # type: ignore[misc]
    assert ticket.key == key


# ---------------------------------------------------------------------- heard
def test_a_failure_nobody_hears_makes_no_event_and_one_somebody_hears_does(
    caplog: Any, monkeypatch: Any
) -> None:
    import logging

    import mailguard.events

    monkeypatch.setattr(mailguard.events, "_listeners", ())  # whatever other tests left
    factory = logging.getLogRecordFactory()  # (one a test may have left: a listener too)
    logging.setLogRecordFactory(logging.LogRecord)
    quiet = logging.getLogger("mailguard.login")
    policy = InvalidLoginPolicy(max_failed_logins=3, store=MemoryStore())
    handler = logging.NullHandler()
    quiet.addHandler(handler)
    quiet.propagate = False
    try:
        assert not policy.report.heard()
        made: list[Any] = []
        original = policy.emit
        policy.emit = lambda *a, **k: made.append(a)  # type: ignore[method-assign]
        ticket = policy.begin("192.0.2.5", "jdoe")
        policy.end(ticket, "failed")
        assert made == []  # not even built
        policy.emit = original  # type: ignore[method-assign]
        heard: list[Event] = []
        hooked = InvalidLoginPolicy(max_failed_logins=3, store=MemoryStore(), on_event=heard.append)
        assert hooked.report.heard()
        hooked.end(hooked.begin("192.0.2.5", "jdoe"), "failed")
        assert [e.action for e in heard] == ["failure"]
    finally:
        quiet.removeHandler(handler)
        quiet.propagate = True
        logging.setLogRecordFactory(factory)
    with caplog.at_level(logging.WARNING, logger="mailguard.login"):
        assert policy.report.heard()
        policy.end(policy.begin("192.0.2.6", "jdoe"), "failed")
    assert "mailguard login failure client=192.0.2.6" in caplog.text


# -------------------------------------------------------------------- accounts
@FAST
@given(
    st.one_of(
        st.text(st.characters(min_codepoint=0x00, max_codepoint=0x7F), max_size=12),
        st.text(max_size=8),
        st.sampled_from(
            [
                "jdoe@example.com",
                " jdoe",
                "jdoe ",
                "CORP\\jdoe",
                "a" * 256,
                "a" * 257,
                "x" * 250 + "@",
                "J\x00doe",
                "\x7fjdoe",
                "JDoe",
            ]
        ),
    ),
    st.booleans(),
    st.sampled_from([None, "example.com"]),
)
def test_the_plain_ascii_account_is_normalised_as_normalize_account_does(
    text: str, strip_domain: bool, default_domain: str | None
) -> None:
    from mailguard.reading import AccountRule, normalize_account

    rule = AccountRule(strip_domain=strip_domain, default_domain=default_domain)
    assert rule.normalize(text) == normalize_account(
        text, strip_domain=strip_domain, default_domain=rule.default_domain
    )


def test_a_wsgi_login_response_closed_twice_reports_once() -> None:
    """An app that starts its response only while its iterable is iterated
    (a generator) gets a wrapper whose ``close`` reports the attempt, its
    outcome unknown when nothing started; a server that closes it twice (or
    closes it after an error path did) must not report twice."""
    reports: list[int | None] = []

    class Counting(InvalidLoginPolicy):
        def finish(self, request: Any, verdict: Any, status: Any, headers: Any) -> None:
            reports.append(status)
            super().finish(request, verdict, status, headers)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read()
        start_response("401 Unauthorized", [("Content-Type", "text/plain")])
        yield b"no"

    store = MemoryStore(clock=FakeClock(T0))
    policy = Counting(max_failed_logins=3, login_paths=["/login"], store=store)
    guarded = mg_wsgi.InvalidLoginFilter(app, policy=policy)
    body = b"username=jdoe&password=x"
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/login", "SCRIPT_NAME": "",
               "QUERY_STRING": "", "CONTENT_TYPE": "application/x-www-form-urlencoded",
               "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "192.0.2.9",
               "wsgi.input": io.BytesIO(body)}  # fmt: skip
    result = guarded(environ, lambda status, headers, exc=None: None)
    assert reports == []  # nothing started yet: the generator has not run
    result.close()  # type: ignore[attr-defined]
    result.close()  # type: ignore[attr-defined]
    assert reports == [None]  # once, outcome unknown
    # the slot it took is given back: the next attempt is this address's only one
    assert store.attempt(policy.namespace, "192.0.2.9", 3, 300.0, 60.0)[1] == 2


def test_a_redirect_after_a_login_is_a_success_that_resets_the_streak() -> None:
    # finish's own reading of a response with no result header: below 400 and
    # not a failure status is a success (outcome's last rule)
    policy = InvalidLoginPolicy(
        max_failed_logins=2, reset_on_success=True, store=MemoryStore(clock=FakeClock(T0))
    )
    scope = {"type": "http", "method": "POST", "path": "/login", "query_string": b"",
             "headers": [(b"content-type", _FORM_KIND), (b"content-length", b"10")],
             "client": ("192.0.2.1", 1)}  # fmt: skip
    for status in (401, 302, 401):
        request = AsgiRequest(scope, RESOLVER.from_asgi(scope))
        request.body = b"user=jdoe&"
        policy.body_plan(request)
        verdict = policy.check(request)
        assert verdict.allowed and isinstance(verdict, LoginVerdict)
        policy.finish(request, verdict, status, AsgiHeaders([]))
    assert policy.store.blocks() == []


# ------------------------------------------------------- the WSGI body buffer
def _reference_buffer(request: Any, environ: dict[str, Any], limit: int) -> bool:
    """wsgi._buffer as it was before its one-read path for the usual body."""
    text = str(environ.get("CONTENT_LENGTH") or "").strip()
    length: int | None
    try:
        length = int(text) if text else 0
    except ValueError:
        length = None
    if length is not None and length < 0:
        length = None
    if environ.get("HTTP_TRANSFER_ENCODING") is not None:
        length = None
    if not length:
        if not environ.get("wsgi.input_terminated"):
            if length == 0:
                request.body = b"" if limit else None
                return True
            request.body = None
            return False
        length = None
    stream = environ["wsgi.input"]
    want = limit if length is None else min(limit, length)
    head = b""
    while len(head) < want:
        chunk = stream.read(want - len(head))
        if not chunk:
            break
        head += chunk
    if limit:
        request.body = head
    left = None if length is None else length - len(head)
    ended = left == 0 or (left is None and len(head) < want)
    environ["wsgi.input"] = (
        io.BytesIO(head) if ended else io.BufferedReader(mg_wsgi._Replay(head, stream, left))
    )
    return ended


class _Trickle(io.RawIOBase):
    """A body that arrives at most ``step`` bytes per read (a slow client)."""

    def __init__(self, data: bytes, step: int, kind: type) -> None:
        self.data, self.step, self.kind = data, step, kind

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> Any:
        n = self.step if size < 0 else min(size, self.step)
        out, self.data = self.data[:n], self.data[n:]
        return self.kind(out)


@FAST
@given(
    st.binary(max_size=60),
    st.sampled_from([None, "exact", "short", "long", "0", " 12", "x", "-3", "\u0661\u0662", "007"]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([1, 3, 1000]),
    st.sampled_from([bytes, bytearray]),
    st.sampled_from([0, 8, 16384]),
)
def test_the_wsgi_body_buffer_reads_as_before(
    body: bytes,
    declared: str | None,
    chunked: bool,
    terminated: bool,
    step: int,
    kind: type,
    limit: int,
) -> None:
    length = {"exact": str(len(body)), "short": str(max(0, len(body) - 2)),
              "long": str(len(body) + 4)}.get(declared or "", declared)  # fmt: skip
    answers = []
    for buffer in (mg_wsgi._buffer, _reference_buffer):
        environ: dict[str, Any] = {"wsgi.input": _Trickle(body, step, kind)}
        if length is not None:
            environ["CONTENT_LENGTH"] = length
        if chunked:
            environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        if terminated:
            environ["wsgi.input_terminated"] = True
        request = WsgiRequest(environ, RESOLVER.resolve("192.0.2.1", ()))
        ended = buffer(request, environ, limit)
        seen = request.body
        rest = environ["wsgi.input"].read()
        answers.append((ended, type(seen), seen, bytes(rest or b"")))
    assert answers[0] == answers[1]


def test_a_watch_made_without_its_class_call_is_the_one_init_makes() -> None:
    # Both fronts make a login attempt's watch with watch.watching, which
    # sets each slot of Watching itself: a slot added to Watching must be set
    # there too, to what __init__ sets.
    from mailguard.asgi import _Watch
    from mailguard.watch import Watching, watching
    from mailguard.wsgi import _Watched

    policy: Any = object()
    verdict: Any = object()
    for cls in (_Watch, _Watched):
        made = watching(cls, policy, "request", verdict, "to", ("x-login-result",))
        init = cls(policy, "request", verdict, "to", (), ("x-login-result",))
        assert type(made) is cls
        for slot in Watching.__slots__:
            assert getattr(made, slot) == getattr(init, slot), slot
