"""The RESP bytes RedisStore packs for its own asyncio script calls are
exactly redis-py's (``Connection.pack_command``), for any arguments."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from mailguard.stores.redis import _HIT, _pack, _pack_all

_ARG = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32).filter(lambda t: not any(0xD800 <= ord(c) <= 0xDFFF for c in t)),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _redis_py(*args: Any) -> bytes:
    connection: Any = redis.connection.Connection()  # (never connected)
    return b"".join(connection.pack_command(*args))


@given(st.lists(_ARG, max_size=12))
def test_our_bytes_are_redis_pys(args: list[Any]) -> None:
    command = ("EVALSHA", _HIT.sha, 2, *args)
    assert _pack(command) == _redis_py(*command)


@given(st.lists(st.lists(_ARG, min_size=1, max_size=6), min_size=1, max_size=5))
def test_a_batch_is_the_commands_in_order(batch: list[list[Any]]) -> None:
    commands = [(_HIT, (1, *args)) for args in batch]
    expected = b"".join(_redis_py("EVALSHA", _HIT.sha, 1, *args) for args in batch)
    assert _pack_all(commands) == expected
    plain = [(None, ("PUBLISH", b"mailguard:channel", *args)) for args in batch]
    assert _pack_all(plain) == b"".join(_redis_py(*c[1]) for c in plain)


@pytest.mark.parametrize("bad", [True, None, object(), [1], {"a": 1}])
def test_what_redis_py_refuses_we_refuse(bad: Any) -> None:
    with pytest.raises(TypeError):
        _pack(("EVALSHA", _HIT.sha, 0, bad))
