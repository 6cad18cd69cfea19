"""Where mailguard's lines go (mailguard.events, "Where the lines go"), and what they carry.

Inside pytest the root logger has pytest's own handlers, so each test here
takes them away for its duration: the state of an app under uvicorn, gunicorn,
``flask run`` or ``manage.py runserver``, none of which configures the root
logger (tests/test_fail2ban.py checks the real servers).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from mailguard import MemoryStore, StoreError, events
from mailguard.events import Event, FallbackHandler, _bare, _quote_slowly, quote, unconfigured
from mailguard.stores.guard import GuardedStore, StoreDown
from mailguard.wsgi import DosFilter, InvalidLoginFilter

LINE = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9:]{8},[0-9]{3} "
    r"(INFO|WARNING) mailguard\.(login|dos): mailguard "
)


def _login_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("401 Unauthorized", [("content-type", "text/plain")])
    return [b"no"]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def bare_logging() -> Iterator[None]:
    """No handler anywhere but mailguard's fallback, no level set: a fresh server.

    pytest adds its own handlers to the root logger at each phase of a test,
    after fixtures are set up: tests take those away with :func:`bare`.
    """
    root = logging.getLogger()
    ours = logging.getLogger("mailguard")
    saved = (root.level, ours.handlers[:], ours.level, ours.propagate)
    root.setLevel(logging.WARNING)
    ours.handlers[:] = [h for h in ours.handlers if isinstance(h, FallbackHandler)]
    ours.setLevel(logging.NOTSET)
    ours.propagate = True
    assert ours.handlers, "mailguard adds its fallback handler at import"
    try:
        yield
    finally:
        root.setLevel(saved[0])
        ours.handlers[:] = saved[1]
        ours.setLevel(saved[2])
        ours.propagate = saved[3]


@contextlib.contextmanager
def bare() -> Iterator[None]:
    """Inside a test: the root logger without pytest's handlers."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers[:] = []
    try:
        yield
    finally:
        root.handlers[:] = saved


def _attack() -> None:
    app = InvalidLoginFilter(_login_app, max_failed_logins=2)
    client = Client(app)
    for _ in range(3):
        client.post("/login", data={"username": "jdoe"}, environ_base={"REMOTE_ADDR": "192.0.2.7"})


def test_without_logging_config_lines_reach_stderr_with_a_time_stamp(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with bare():
        _attack()
        err = capsys.readouterr().err.splitlines()
        assert err, "nothing on stderr"
        assert all(LINE.match(line) for line in err), err
        assert "INFO mailguard.login: mailguard login started guards=/login limit=2/300s" in err[0]
        assert "store=memory per=process pid=" in err[0]
        assert any(
            "WARNING mailguard.login: mailguard login blocked client=192.0.2.7 " in x for x in err
        )


def test_an_app_that_configures_the_root_logger_keeps_control(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with bare():
        mine = Collect()
        logging.getLogger().addHandler(mine)
        _attack()
        assert capsys.readouterr().err == ""  # the fallback stood aside
        # the app's level (root WARNING) is obeyed: no INFO startup line
        assert {r.levelno for r in mine.records} == {logging.WARNING}
        assert [r.getMessage().split()[2] for r in mine.records][:3] == [
            "failure",
            "failure",
            "blocked",
        ]


def test_a_handler_on_mailguard_opts_out(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with bare():
        logging.getLogger("mailguard").addHandler(logging.NullHandler())
        assert not unconfigured(logging.getLogger("mailguard.login"))
        _attack()
        assert capsys.readouterr().err == ""


def test_a_level_set_on_mailguard_is_obeyed_by_the_fallback(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with bare():
        logging.getLogger("mailguard").setLevel(logging.WARNING)
        _attack()
        err = capsys.readouterr().err
        assert " started " not in err
        assert "WARNING mailguard.login: mailguard login blocked" in err


def test_logging_configured_after_import_takes_over(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with bare():
        app = InvalidLoginFilter(_login_app, max_failed_logins=5)  # startup line on stderr
        assert " started " in capsys.readouterr().err
        mine = Collect()
        logging.getLogger().addHandler(mine)  # e.g. logging.basicConfig() in a later import
        Client(app).post("/login", environ_base={"REMOTE_ADDR": "192.0.2.8"})
        assert capsys.readouterr().err == ""
        assert len(mine.records) == 1


def test_records_carry_the_event_for_json_formatters(bare_logging: None) -> None:
    with bare():
        mine = Collect()
        logging.getLogger().addHandler(mine)
        app = DosFilter(InvalidLoginFilter(_login_app, max_failed_logins=2), max_requests_per_sec=2)
        client = Client(app)
        for _ in range(3):
            client.post(
                "/login",
                data={"username": 'x" client=1.2.3.4'},
                environ_base={"REMOTE_ADDR": "192.0.2.9"},
            )
        by_action = {getattr(r, "action", None): r for r in mine.records}
        blocked = by_action["blocked"]
        assert (blocked.filter, blocked.client, blocked.account) == (  # type: ignore[attr-defined]
            "login",
            "192.0.2.9",
            'x" client=1.2.3.4',  # the raw value: the JSON encoder escapes it
        )
        assert blocked.seconds == 900 and blocked.failures == 2  # type: ignore[attr-defined]
        refused = by_action["refused"]
        assert (refused.filter, refused.client, refused.limit) == ("dos", "192.0.2.9", "2/1s")  # type: ignore[attr-defined]
        assert refused.name == "mailguard.dos"  # a field never overwrites the record's own


def test_the_startup_line_is_logged_once_per_filter(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with bare():
        inner = InvalidLoginFilter(_login_app)
        InvalidLoginFilter(_login_app, policy=inner.policy)  # the same policy wrapped again
        err = capsys.readouterr().err
        assert err.count("mailguard login started ") == 1


def test_a_store_outage_reaches_stderr(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with bare():
        guarded = GuardedStore(MemoryStore(), "open")
        with pytest.raises(StoreDown):
            guarded.fallback_for(StoreError("redis unavailable"))
        guarded.recovered()
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2, err
        assert re.match(
            r"^[0-9-]{10} [0-9:,]{12} WARNING mailguard\.store: mailguard store down ", err[0]
        )
        assert " INFO mailguard.store: mailguard store up store=" in err[1]


def test_the_startup_line_names_a_shared_store(
    bare_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    class Remote(MemoryStore):
        local = False

    with bare():
        policy = InvalidLoginFilter(_login_app).policy
        fields = dict(policy.startup_fields())
        assert fields["store"] == "memory" and fields["per"] == "process"
        policy.store = GuardedStore(Remote(), policy.on_store_error)
        fields = dict(policy.startup_fields())
        assert (fields["store"], fields["on_store_error"]) == ("remote", policy.on_store_error)
        assert "per" not in fields


# ------------------------------------------------- the fast paths of the line
_SAFE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@+"
_TEXT = st.one_of(
    st.text(alphabet=st.sampled_from(_SAFE_CHARS + ' "\\:/~\x7f\x1f\n\u00e9\u2028'), max_size=140),
    st.text(max_size=140),
)


@settings(max_examples=1000, deadline=None)
@given(text=_TEXT, limit=st.integers(min_value=0, max_value=140))
@example(text="x" * 128, limit=128)
@example(text="x" * 129, limit=128)
@example(text='a"b\\c', limit=128)
def test_quote_fast_path_is_the_slow_one(text: str, limit: int) -> None:
    assert quote(text, limit) == _quote_slowly(text, limit)
    assert quote(text) == _quote_slowly(text)


def _bare_by_hand(value: str | int | float) -> str:
    """_bare as it was written first: character by character."""
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    text = str(value)
    if text and all(ch in _SAFE_CHARS or ch in ":/" for ch in text):
        return text
    return _quote_slowly(text)


@settings(max_examples=1000, deadline=None)
@given(
    value=st.one_of(
        _TEXT, st.integers(-(2**64), 2**64), st.floats(allow_nan=False, allow_infinity=False)
    )
)
def test_bare_fast_path_is_the_slow_one(value: str | int | float) -> None:
    assert _bare(value) == _bare_by_hand(value)


def test_a_silenced_mailguard_builds_no_line(
    bare_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Event] = []
    line = Event.line
    monkeypatch.setattr(Event, "line", lambda self: built.append(self) or line(self))
    seen: list[Event] = []
    with bare():
        ours = logging.getLogger("mailguard")
        ours.addHandler(logging.NullHandler())
        app = InvalidLoginFilter(_login_app, max_failed_logins=2, on_event=seen.append)
        for _ in range(3):
            Client(app).post("/login", environ_base={"REMOTE_ADDR": "192.0.2.10"})
        assert [e.action for e in seen] == ["failure", "failure", "blocked", "refused"]
        assert built == []  # nothing listens: no record, no line
        # anything that does listen gets the records, as before
        mine = Collect()
        logging.getLogger().addHandler(mine)
        try:
            Client(app).post("/login", environ_base={"REMOTE_ADDR": "192.0.2.11"})
        finally:
            logging.getLogger().removeHandler(mine)
        assert [r.getMessage() for r in mine.records] == [
            'mailguard login failure client=192.0.2.11 account="" streak=1/2'
        ]
        assert (mine.records[0].msg, mine.records[0].args) == ("%s", (built[-1].line(),))


@pytest.mark.parametrize("how", ["filter", "subclass", "factory", "no-null"])
def test_anything_but_a_null_handler_hears_the_record(
    bare_logging: None, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    made: list[logging.LogRecord] = []
    with bare():
        login = logging.getLogger("mailguard.login")
        ours = logging.getLogger("mailguard")
        if how == "filter":  # a filter on the logger sees every record made
            ours.addHandler(logging.NullHandler())
            monkeypatch.setattr(login, "filters", [lambda r: made.append(r) or True])
        elif how == "subclass":

            class Counting(logging.NullHandler):
                def handle(self, record: logging.LogRecord) -> bool:
                    made.append(record)
                    return True

            ours.addHandler(Counting())
        elif how == "factory":
            ours.addHandler(logging.NullHandler())
            factory = logging.getLogRecordFactory()

            def counted(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = factory(*args, **kwargs)
                made.append(record)
                return record

            # (monkeypatch puts the factory there was back, whatever happens)
            monkeypatch.setattr(logging, "_logRecordFactory", counted)
        assert events._heard(login, logging.WARNING)
        if how == "factory":
            return
        app = InvalidLoginFilter(_login_app, max_failed_logins=5)
        Client(app).post("/login", environ_base={"REMOTE_ADDR": "192.0.2.12"})
        if how != "no-null":
            assert [r.getMessage() for r in made if r.name == "mailguard.login"] == [
                'mailguard login failure client=192.0.2.12 account="" streak=1/5'
            ]
