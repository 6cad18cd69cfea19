"""One URL grammar for RedisStore, ``[store] url`` and ``--redis``; every scheme's client.

The parser (``mailguard/stores/redis_urls.py``) reads untrusted text (a
configuration file, a command line): it answers a :class:`RedisTarget` or a
``ValueError`` naming the problem, never another exception, and no message
or ``repr`` shows a password.  Then each scheme makes the redis-py client it
names (nothing connects until first use), and the schemes that need no
topology of their own run against a real ``redis-server``: TCP, a unix
socket, TLS when the installed redis-server has it.  Sentinel and Cluster
topologies are exercised in ``tests/test_redis_cluster.py``,
``test_redis_sentinel.py`` and ``test_redis_failover.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.sentinel
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_server import RedisServer, free_port

from mailguard import FakeClock, RedisStore, StoreError
from mailguard.config import ConfigError, load, redact
from mailguard.stores.base import BLOCKED, OK, OVER
from mailguard.stores.redis_urls import SCHEMES, RedisTarget, parse_url

T0 = 1_700_000_000.0
_prefixes = itertools.count()


@pytest.fixture(autouse=True)
def _channels_stopped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every RedisStore that starts its channel thread in a test is closed
    after it.  The thread otherwise goes on connecting to the test's closed
    port until the store is collected; redis-py's retries draw their jitter
    from the global ``random``, which Hypothesis then reports
    (HypothesisDeprecationWarning) in whichever property test runs next."""
    started: list[RedisStore] = []
    start = RedisStore._start_channel

    def recorded(self: RedisStore) -> None:
        started.append(self)
        start(self)

    monkeypatch.setattr(RedisStore, "_start_channel", recorded)
    yield
    for store in started:
        store.close()


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", {"topology": "standalone", "hosts": (("127.0.0.1", 6379),)}),
        ("redis://localhost", {"hosts": (("localhost", 6379),), "db": 0, "tls": False}),
        ("redis://h/", {"hosts": (("h", 6379),), "db": 0}),
        ("redis://h:1/15", {"hosts": (("h", 1),), "db": 15}),
        ("REDIS://h", {"scheme": "redis"}),
        ("rediss://u:p@h:6380/2", {"tls": True, "username": "u", "password": "p", "db": 2}),
        ("redis://:only-password@h", {"username": None, "password": "only-password"}),
        ("redis://user-only@h", {"username": "user-only", "password": None}),
        ("redis://u:p%40ss%2Fw%3Ad@h", {"password": "p@ss/w:d"}),
        ("redis://u:p@ss@h", {"password": "p@ss", "hosts": (("h", 6379),)}),
        ("redis://[::1]:7000/3", {"hosts": (("::1", 7000),), "db": 3}),
        ("redis://[2001:db8::5]", {"hosts": (("2001:db8::5", 6379),)}),
        ("valkey://h:1/1", {"scheme": "valkey", "topology": "standalone", "db": 1}),
        ("valkeys://h", {"tls": True}),
        (
            "rediss://h?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca%20file.pem",
            {"tls_options": (("ssl_cert_reqs", "none"), ("ssl_ca_certs", "/etc/ca file.pem"))},
        ),
        ("unix:///run/redis/redis.sock", {"topology": "unix", "path": "/run/redis/redis.sock"}),
        ("unix:///tmp/r%20s.sock?db=4", {"path": "/tmp/r s.sock", "db": 4}),
        ("unix://:pw@/tmp/r.sock", {"password": "pw", "path": "/tmp/r.sock"}),
        ("unix:///tmp/r.sock?password=p%26w", {"password": "p&w"}),
        (
            "redis+sentinel://a:26379,b,[::1]:26380/mymaster/2",
            {
                "topology": "sentinel",
                "hosts": (("a", 26379), ("b", 26379), ("::1", 26380)),
                "service": "mymaster",
                "db": 2,
            },
        ),
        (
            "redis+sentinel://u:data@s1/svc?sentinel_password=sp&sentinel_username=su",
            {
                "username": "u",
                "password": "data",
                "sentinel_username": "su",
                "sentinel_password": "sp",
                "db": 0,
            },
        ),
        ("valkey+sentinel://s1:5000/my%20master/", {"service": "my master", "db": 0}),
        ("rediss+sentinel://s1/m", {"tls": True, "topology": "sentinel"}),
        (
            "redis+cluster://n1:7000,n2:7001",
            {"topology": "cluster", "hosts": (("n1", 7000), ("n2", 7001))},
        ),
        ("redis+cluster://n1/0", {"topology": "cluster", "db": 0}),
        ("valkeys+cluster://:pw@n1", {"tls": True, "password": "pw", "hosts": (("n1", 6379),)}),
    ],
)
def test_urls_say_where_and_how(url: str, expected: dict[str, Any]) -> None:
    target = parse_url(url)
    for name, value in expected.items():
        assert getattr(target, name) == value, name
    # the parser's own reading is also what the store keeps
    assert RedisStore(url).target == target


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h", "unknown scheme"),
        ("h:6379", "unknown scheme"),
        ("redis:h", "unknown scheme"),
        ("redis+foo://h", "unknown scheme"),
        ("redis://", "no host"),
        ("redis:///0", "no host"),
        ("redis://u:p@", "no host after"),
        ("redis://u:p@/0", "no host after"),
        ("redis://h:0", "port"),
        ("redis://h:65536", "port"),
        ("redis://h:-1", "port"),
        ("redis://h:\uff16\uff13\uff17\uff19", "port"),  # fullwidth digits are not digits here
        ("redis://h:80x", "port"),
        ("redis://h:", "port"),
        ("redis://[::1", "closing"),
        ("redis://[nonsense]:1", "not an IPv6"),
        ("redis://[fe80::1%25eth0]", "zone ids"),
        ("redis://[::1]x", "unexpected"),
        ("redis://ho st", "spaces"),
        ("redis://h\n", "control"),
        ("redis://h/a", "database"),
        ("redis://h/1/2", "database number only"),
        ("redis://h/99999999999", "database"),
        ("redis://a,b", "one host"),
        ("rediss://a,b", "one host"),
        ("redis://a,,b", "one host"),
        ("redis+cluster://a,,b", "host is empty"),
        ("redis://h#frag", "fragment"),
        ("redis://h?db=1", "unknown query parameter 'db'"),
        ("redis://h?ssl_cert_reqs=none", "unknown query parameter"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("rediss://h?ssl_cert_reqs", "no value"),
        ("rediss://h?ssl_cert_reqs=none&ssl_cert_reqs=none", "twice"),
        ("redis://h_under$core", "not a host name"),
        ("redis://u:%FF@h", "not UTF-8"),
        ("unix://", "unix socket URL"),
        ("unix://relative/path.sock", "unix socket URL"),
        ("unix:///", "no socket path"),
        ("unix:///tmp/", "no socket path"),
        ("unix:///tmp/a%00b", "NUL"),
        ("unix:///tmp/r.sock?db=x", "database"),
        ("unix://:a@/tmp/r.sock?password=b", "twice"),
        ("redis+sentinel://s1", "no service name"),
        ("redis+sentinel://s1/", "no service name"),
        ("redis+sentinel://s1/m/0/1", "SERVICE_NAME/DB"),
        ("redis+sentinel://s1/m/x", "database"),
        ("redis+sentinel://s1/m?sentinel_pasword=x", "unknown query parameter 'sentinel_pasword'"),
        ("redis+cluster://n1/1", "only database 0"),
        ("redis+cluster://n1/0/0", "only database 0"),
        ("redis+cluster://n1?sentinel_password=x", "unknown query parameter"),
        ("redis+cluster://" + ",".join(f"n{i}" for i in range(65)), "more than 64"),
    ],
)
def test_malformed_urls_are_refused_with_the_problem_named(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match="Redis URL") as caught:
        parse_url(url)
    assert problem in str(caught.value)
    with pytest.raises(ValueError, match="url"):  # the store refuses it at construction
        RedisStore(url)


def test_not_a_string() -> None:
    for value in (None, 6379, b"redis://h", ["redis://h"]):
        with pytest.raises(ValueError, match="string"):
            parse_url(value)


# Untrusted text: whatever it is, a RedisTarget or a ValueError, nothing else.
_URLISH = st.one_of(
    st.text(),
    st.text(alphabet="redis+clustentiluxvaky:/@[]%,?&=#0123456789.hlo-_ \t\x00é"),
    st.builds(
        lambda scheme, rest: scheme + rest,
        st.sampled_from([*SCHEMES, "redis:/", "unix:", ""]),
        st.text(alphabet=":/@[]%,?&=#0123456789.abhu-_ \x00\ud800é", max_size=40),
    ),
)


@settings(max_examples=1500, deadline=None)
@given(text=_URLISH)
def test_any_text_parses_or_raises_value_error(text: str) -> None:
    try:
        target = parse_url(text)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(target, RedisTarget)
    assert target.topology in ("standalone", "unix", "sentinel", "cluster")
    if target.topology == "unix":
        assert target.path and target.path.startswith("/") and not target.hosts
    else:
        assert target.hosts and all(1 <= port <= 65535 for _, port in target.hosts)
    if target.topology == "cluster":
        assert target.db == 0
    if target.topology == "sentinel":
        assert target.service


_HOST = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
_SECRET = st.text(min_size=1, max_size=20).map(lambda s: "S3cr3t" + s)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(["redis", "rediss", "valkey", "redis+sentinel", "redis+cluster"]),
    hosts=st.lists(st.tuples(_HOST, st.integers(1, 65535)), min_size=1, max_size=4),
    user=st.one_of(st.none(), st.text(min_size=1, max_size=10)),
    password=st.one_of(st.none(), _SECRET),
    sentinel_password=_SECRET,
    db=st.integers(0, 2**31 - 1),
    service=st.text(min_size=1, max_size=10),
)
def test_urls_built_from_parts_read_back_as_those_parts(
    kind: str,
    hosts: list[tuple[str, int]],
    user: str | None,
    password: str | None,
    sentinel_password: str,
    db: int,
    service: str,
) -> None:
    if kind in ("redis", "rediss", "valkey"):
        hosts = hosts[:1]
    userinfo = ""
    if user is not None or password is not None:
        userinfo = quote(user or "", safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        userinfo += "@"
    netloc = ",".join(f"{h}:{p}" for h, p in hosts)
    path = {
        "redis+sentinel": f"/{quote(service, safe='')}/{db}",
        "redis+cluster": "",
    }.get(kind, f"/{db}")
    query = f"?sentinel_password={quote(sentinel_password, safe='')}" if "sentinel" in kind else ""
    url = f"{kind}://{userinfo}{netloc}{path}{query}"
    target = parse_url(url)
    assert target.hosts == tuple((h.strip("[]"), p) for h, p in hosts)
    assert target.username == (user or None)
    assert target.password == password
    assert target.db == (0 if kind == "redis+cluster" else db)
    if "sentinel" in kind:
        assert target.service == service
        assert target.sentinel_password == sentinel_password
    # no password survives redaction, nor the store's repr
    shown = redact(url) + repr(RedisStore(url)) + repr(target)
    for secret in (password, sentinel_password if "sentinel" in kind else None):
        if secret is not None:
            assert secret not in shown
            assert quote(secret, safe="") not in shown


@settings(max_examples=300, deadline=None)
@given(password=_SECRET, junk=st.text(max_size=10))
def test_error_messages_never_show_the_password(password: str, junk: str) -> None:
    encoded = quote(password, safe="")
    for url in (
        f"redis://u:{encoded}@h:99999/{junk}",
        f"redis://u:{password}@h/x/{junk}",  # unescaped: malformed, still masked
        f"redis+sentinel://s1/m?sentinel_password={encoded}&bogus{junk}=1",
        f"unix:///tmp/s.sock?password={encoded}&db=x{junk}",
    ):
        try:
            parse_url(url)
        except ValueError as exc:
            assert password not in str(exc) and encoded not in str(exc)
        assert password not in redact(url) and encoded not in redact(url)


def test_redact_keeps_everything_but_passwords() -> None:
    assert redact("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert redact("redis://h:1/0") == "redis://h:1/0"
    assert redact("redis://user@h:1/0") == "redis://user@h:1/0"
    assert (
        redact("redis+sentinel://:pw@s1:26379,s2/m/0?sentinel_password=x&sentinel_username=y")
        == "redis+sentinel://:***@s1:26379,s2/m/0?sentinel_password=***&sentinel_username=y"
    )
    assert redact("unix:///tmp/r.sock?db=1&password=pw") == "unix:///tmp/r.sock?db=1&password=***"


# ----------------------------------------------------------------- clients


def test_each_scheme_makes_its_client_without_connecting() -> None:
    """Construction parses; the clients are made at first use and connect later still."""
    port = free_port()  # nobody listens: nothing may connect here
    standalone = RedisStore(f"rediss://u:p%40@127.0.0.1:{port}/3?ssl_cert_reqs=none")
    client: Any = standalone._sync()
    assert type(client) is redis.Redis
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", port, 3)
    assert (kwargs["username"], kwargs["password"]) == ("u", "p@")
    assert kwargs["socket_timeout"] == 0.25
    assert issubclass(client.connection_pool.connection_class, redis.SSLConnection)

    unix = RedisStore("unix:///tmp/nowhere.sock?db=2", socket_timeout=0.5)._sync()
    kwargs = unix.connection_pool.connection_kwargs
    assert (kwargs["path"], kwargs["db"], kwargs["socket_timeout"]) == ("/tmp/nowhere.sock", 2, 0.5)

    sentinel = RedisStore(
        f"redis+sentinel://:data@127.0.0.1:{port},127.0.0.1:{port}/mymaster/1"
        "?sentinel_password=guard"
    )._sync()
    pool = sentinel.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["password"] == "data"
    assert pool.connection_kwargs["db"] == 1
    asked = pool.sentinel_manager.sentinels
    assert len(asked) == 2
    assert asked[0].connection_pool.connection_kwargs["password"] == "guard"
    assert asked[0].connection_pool.connection_kwargs["socket_timeout"] == 0.25

    async def asynchronous() -> None:
        made: Any = {}
        for name, url in (
            ("standalone", f"redis://127.0.0.1:{port}/1"),
            ("sentinel", f"valkey+sentinel://127.0.0.1:{port}/m"),
            ("cluster", f"redis+cluster://127.0.0.1:{port}"),
        ):
            store = RedisStore(url)
            made[name] = store._batcher().client
            await store.aclose()
        assert type(made["standalone"]) is redis.asyncio.Redis
        assert isinstance(
            made["sentinel"].connection_pool, redis.asyncio.sentinel.SentinelConnectionPool
        )
        assert isinstance(made["cluster"], redis.asyncio.cluster.RedisCluster)

    asyncio.run(asynchronous())


def test_given_clients_of_every_kind_are_accepted() -> None:
    port = free_port()
    # (no retries: the store's channel thread would retry with redis-py's
    # jitter, drawn from the global random, past the store's close())
    once = {"retry": Retry(NoBackoff(), 0)}
    sentinel_client = redis.sentinel.Sentinel(
        [("127.0.0.1", port)], sentinel_kwargs=once, **once
    ).master_for("m")
    assert RedisStore(sentinel_client)._sync() is sentinel_client
    assert RedisStore(client=sentinel_client)._threaded  # coroutines run it in a thread

    async def asynchronous() -> None:
        cluster = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=port)
        store = RedisStore(cluster)
        assert store._cluster and store._batcher().client is cluster
        with pytest.raises(RuntimeError, match="async_client"):
            store.hit("dos", "k", 1, 1.0)
        await cluster.aclose()
        both = RedisStore(client=sentinel_client, async_client=redis.asyncio.Redis(port=port))
        assert not both._threaded
        with pytest.raises(ValueError, match="cluster and a non-cluster"):
            RedisStore(client=sentinel_client, async_client=cluster)
        with pytest.raises(ValueError, match="cluster and a non-cluster"):
            RedisStore(f"redis://127.0.0.1:{port}", async_client=cluster)

    asyncio.run(asynchronous())
    for bad in (
        {"client": "redis://h"},
        {"async_client": sentinel_client},
        {"client": redis.asyncio.Redis()},
    ):
        with pytest.raises(ValueError):
            RedisStore(**bad)


@pytest.mark.parametrize("scheme", ["redis+cluster", "redis+sentinel", "redis"])
def test_nobody_there_is_a_store_error_then_fails_fast(scheme: str) -> None:
    """Every topology, every face: StoreError (never a redis-py exception), the
    breaker open after the first (no new connection attempts meanwhile)."""
    hosts = f"127.0.0.1:{free_port()}" + ("" if scheme == "redis" else f",127.0.0.1:{free_port()}")
    path = "/mymaster/0" if scheme == "redis+sentinel" else ""
    store = RedisStore(f"{scheme}://{hosts}{path}", breaker_cooldown=30)

    def took(call: Any) -> float:
        start = time.perf_counter()
        with pytest.raises(StoreError) as caught:
            call()
        assert type(caught.value) is StoreError  # an outage, not a StoreBug
        return time.perf_counter() - start

    took(lambda: store.hit("dos", "k", 1, 1.0))
    assert took(lambda: store.hit("dos", "k", 1, 1.0)) < 0.01
    assert took(store.blocks) < 0.01

    async def asynchronous() -> None:
        for _ in range(3):
            with pytest.raises(StoreError) as caught:
                await store.ahit("dos", "k", 1, 1.0)
            assert "unavailable" in str(caught.value)
        await store.aclose()

    asyncio.run(asynchronous())


# --------------------------------------------------- real servers: unix, TLS


def _exercise(store: RedisStore) -> None:
    assert store.hit("dos", "k", 2, 60.0)[:2] == (OK, 1)
    assert store.hit("dos", "k", 2, 60.0)[:2] == (OK, 0)
    assert store.hit("dos", "k", 2, 60.0)[0] == OVER
    store.block("login", "ip", 60, "test")
    assert store.attempt("login", "ip", 3, 10, 5)[0] == BLOCKED
    assert [b.key for b in store.blocks()] == ["ip"]
    assert store.count_keys() == 2

    async def asynchronous() -> None:
        answers = await asyncio.gather(*(store.ahit("dos", "a", 5, 60.0) for _ in range(7)))
        assert [a[0] for a in answers] == [OK] * 5 + [OVER] * 2
        assert [b.key for b in await store.ablocks()] == ["ip"]
        assert await store.aunblock_all() == 1
        await store.aclose()

    asyncio.run(asynchronous())
    store.close()


@pytest.mark.servers
def test_unix_socket() -> None:
    with tempfile.TemporaryDirectory(prefix="mg-unix-") as where:
        path = str(Path(where) / "redis.sock")
        with RedisServer(options=["--unixsocket", path, "--unixsocketperm", "700"]) as server:
            assert server.ping()
            _exercise(RedisStore(f"unix://{path}?db=1", prefix="u:", clock=FakeClock(T0)))
            check = redis.Redis(unix_socket_path=path, db=1)
            assert check.exists("u:{login:ip}:b") == 0  # lifted
            assert check.llen("u:{dos:k}:w") == 2  # db 1, through the socket
            check.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[Path]:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    yield tmp_path


@pytest.mark.servers
def test_rediss_over_tls(tls_files: Path) -> None:
    cert, key = tls_files / "cert.pem", tls_files / "key.pem"
    tls_port = free_port()
    options = [
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
    ]  # fmt: skip
    server = RedisServer(options=options)
    try:
        server.start()
    except RuntimeError:
        pytest.skip("this redis-server was built without TLS")
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={quote(str(cert), safe='')}"
        _exercise(RedisStore(url, prefix="tls:", clock=FakeClock(T0)))
        # a certificate the client does not trust is refused: no silent plain fallback
        untrusted = RedisStore(f"rediss://127.0.0.1:{tls_port}/0", prefix="tls:")
        with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
            untrusted.hit("dos", "k", 1, 1.0)
        # plain redis:// to the TLS port does not get an answer either
        plain = RedisStore(f"redis://127.0.0.1:{tls_port}/0", prefix="tls:")
        with pytest.raises(Exception):  # noqa: B017 - StoreError, whatever the cause
            plain.hit("dos", "k", 1, 1.0)
    finally:
        server.close()


# ----------------------------------------------- configuration and command


def test_config_checks_the_whole_grammar(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(
        '[store]\ntype = "redis"\n'
        'url = "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2/mymaster/0?sentinel_password=x"\n'
    )
    assert load(good).store.url is not None
    for url, problem in (
        ("redis+cluster://n1/3", "only database 0"),
        ("valkey://h:70000", "port"),
        ("memcached://h", "unknown scheme"),
        ("redis+sentinel://u:topsecret@s1/m?sentinel_pasword=p", "sentinel_pasword"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(f'[store]\ntype = "redis"\nurl = "{url}"\n')
        with pytest.raises(ConfigError) as caught:
            load(bad)
        message = str(caught.value)
        assert "store.url" in message and problem in message and str(bad) in message
        assert "topsecret" not in message


def test_cli_refuses_a_bad_redis_url_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    from mailguard.cli import main

    code = main(["blocks", "--redis", "redis+cluster://:hunter2@n1/5"])
    err = capsys.readouterr().err
    assert code != 0
    assert "only database 0" in err and "hunter2" not in err


# ------------------------------------------- a cluster's clients, passed in


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """3 masters, no replicas (the benchmark's helper; failover is tested with
    replicas in tests/test_redis_failover.py)."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are needed for a cluster")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from redis_cluster import RedisCluster

    with RedisCluster(3) as running:
        yield running


def _spread(store: RedisStore) -> None:
    """Keys on every master, blocks listed and lifted on every master."""
    for i in range(40):
        assert store.hit("dos", f"10.0.0.{i}", 1, 60.0)[0] == OK
        assert store.hit("dos", f"10.0.0.{i}", 1, 60.0)[0] == OVER
        store.block("login", f"u{i}", 60, "test")
    assert len(store.blocks()) == 40
    assert store.count_keys() == 80
    assert store.unblock("u7") == 1
    assert store.unblock_all("login") == 39


@pytest.mark.servers
def test_cluster_clients_passed_in(cluster: Any) -> None:
    port = cluster.nodes[0].port
    sync_client = redis.cluster.RedisCluster(host="127.0.0.1", port=port)
    masters = {node.name for node in sync_client.get_primaries()}
    assert len(masters) == 3
    slots = {sync_client.nodes_manager.get_node_from_slot(sync_client.keyslot(
        f"p{next(_prefixes)}:{{dos:10.0.0.{i}}}:w")).name for i in range(40)}  # fmt: skip
    assert slots == masters  # 40 keys reach every master
    prefix = f"p{next(_prefixes)}:"
    _spread(RedisStore(sync_client, prefix=prefix, clock=FakeClock(T0)))
    _spread(RedisStore(cluster.url, prefix=prefix + "u:", clock=FakeClock(T0)))

    async def asynchronous() -> None:
        async_client = redis.asyncio.cluster.RedisCluster(host="127.0.0.1", port=port)
        store = RedisStore(async_client, prefix=prefix + "a:", clock=FakeClock(T0))
        answers = await asyncio.gather(
            *(store.ahit("dos", f"10.1.0.{i % 40}", 1, 60.0) for i in range(80))
        )
        assert sorted(a[0] for a in answers) == [OK] * 40 + [OVER] * 40
        await asyncio.gather(*(store.ablock("device", f"d{i}", 60, "t") for i in range(40)))
        assert len(await store.ablocks()) == 40
        assert await store.aunblock_all() == 40
        await store.aclose()
        await async_client.aclose()

    asyncio.run(asynchronous())
    sync_client.close()


@pytest.mark.servers
def test_cluster_connections_closed_by_the_servers_are_reopened_quietly(cluster: Any) -> None:
    """Idle connections every master dropped (its ``timeout``, CLIENT KILL) are no outage."""
    store = RedisStore(cluster.url, prefix=f"p{next(_prefixes)}:", clock=FakeClock(T0))
    keys = [f"10.2.0.{i}" for i in range(30)]  # on every master

    def kill_clients() -> None:
        for node in cluster.nodes:
            with redis.Redis(port=node.port) as admin:
                admin.client_kill_filter(_type="normal", skipme=True)

    async def asynchronous() -> list[Any]:
        answers = list(await asyncio.gather(*(store.ahit("dos", k, 100, 60.0) for k in keys)))
        for _ in range(3):
            kill_clients()
            answers += await asyncio.gather(*(store.ahit("dos", k, 100, 60.0) for k in keys))
        await store.aclose()
        return answers

    answers = asyncio.run(asynchronous())
    assert [a[0] for a in answers] == [OK] * 120
    for _ in range(3):
        kill_clients()
        assert [store.hit("dos", k, 100, 60.0)[0] for k in keys] == [OK] * 30
    assert {store.peek("dos", k, 60.0) for k in keys} == {7}
    store.close()
