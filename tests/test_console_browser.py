"""The admin console in a real headless Chromium (selenium, Debian's chromium
and chromium-driver), against a real uvicorn serving a protected app with the
admin app mounted at /mailguard, and against ``mailguard serve``.

Screenshots go to ``$MAILGUARD_ARTIFACTS`` (default ``test-artifacts/console``,
gitignored).  Skipped only when Chromium or its driver is missing and we are
not root (CI runs as root and scripts/test.sh installs them)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from serve_kit import ATTACKER as ATTACKER_IMAP
from serve_kit import dovecot_body
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from mailguard import asgi, console
from mailguard.admin import AdminApp
from mailguard.config import loads
from mailguard.stores.memory import MemoryStore

pytestmark = [pytest.mark.browser, pytest.mark.servers]

os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never go online

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "console-browser-token-0123456789"
SECRET = "s3cret-0123456789-abcdef"
ATTACKER = "127.0.0.5"
FLOODER = "127.0.0.6"
BAD_ACCOUNT = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
BAD_REASON = "<img src=x onerror=alert(3)>phish"
CONFIG_FIXTURE: dict[str, Any] | None = None
TOML = """
[dos]
max_requests_per_sec = 5
[login]
preset = "nextcloud"
max_failed_logins = 3
block_duration = "15m"
"""


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def _need_browser() -> tuple[str, str]:
    found = _chromium()
    try:
        import selenium  # noqa: F401
    except ImportError:
        found = None
    if found is None:
        if os.geteuid() == 0:
            pytest.fail("chromium, chromium-driver or selenium missing (scripts/test.sh adds them)")
        pytest.skip(
            "needs chromium, chromium-driver (apt-get install chromium chromium-driver) and"
            " selenium (pip install selenium); not root, so not installed here"
        )
    return found


def artifacts() -> Path:
    where = Path(os.environ.get("MAILGUARD_ARTIFACTS") or ROOT / "test-artifacts" / "console")
    where.mkdir(parents=True, exist_ok=True)
    return where


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------ servers
def webmail_app() -> Any:
    async def login(request: Any) -> PlainTextResponse:
        form = parse_qs((await request.body()).decode())
        ok = form.get("password") == ["right"]
        return PlainTextResponse("welcome" if ok else "no", status_code=200 if ok else 401)

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("inbox")

    async def config(request: Any) -> Any:
        """A stand-in for the admin app's GET /config (another branch), off by default."""
        from starlette.responses import JSONResponse

        if CONFIG_FIXTURE is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse(CONFIG_FIXTURE)

    store = MemoryStore()
    webmail = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/", home)])
    protected = asgi.protect(webmail, loads(TOML, env={}), store=store)
    admin = AdminApp(store, token=TOKEN)
    fixture = Route("/mailguard/config", config, methods=["GET"])
    return Starlette(routes=[fixture, Mount("/mailguard", admin.asgi), Mount("/", protected)])


@pytest.fixture(scope="module")
def uvicorn_server() -> Iterator[int]:
    import uvicorn

    port = free_port()
    config = uvicorn.Config(webmail_app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def request_from(
    source: str, port: int, method: str, path: str, form: dict[str, str] | None = None
) -> int:
    """One request over a socket bound to ``source`` (a loopback address): the status."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        body = urlencode(form) if form is not None else None
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if form else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# ------------------------------------------------------------------ browser
@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    browser, chromedriver = _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,1500", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver)
    web = webdriver.Chrome(service=service, options=options)
    web.set_page_load_timeout(15)
    try:
        yield web
    finally:
        web.quit()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 8.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # a stale element while the page re-renders
            last = exc
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def text(web: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return str(web.find_element(By.ID, element_id).text)


def log_in(web: Any, token: str) -> None:
    from selenium.webdriver.common.by import By

    field = web.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    web.find_element(By.ID, "login-button").click()


def no_alert(web: Any) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        alert = web.switch_to.alert
    except NoAlertPresentException:
        return
    raise AssertionError(f"an alert was raised: {alert.text!r}")


def browser_errors(web: Any) -> list[str]:
    try:
        entries = web.get_log("browser")
    except Exception:  # a driver without the log endpoint: nothing to check
        return []
    return [e["message"] for e in entries if e.get("level") in ("SEVERE", "ERROR", "WARNING")]


def outside_requests(web: Any, origin: str) -> list[str]:
    names = web.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);"
    )
    return [n for n in names if not n.startswith(origin)]


def rows(web: Any, table: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [str(r.text) for r in web.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")]


# -------------------------------------------------------------------- tests
def test_log_in_see_a_brute_force_block_lift_it_and_get_through(
    driver: Any, uvicorn_server: int
) -> None:
    from selenium.webdriver.common.by import By

    port = uvicorn_server
    origin = f"http://127.0.0.1:{port}"
    console.RECORDER.clear()
    web = driver
    started = time.perf_counter()
    web.get(f"{origin}/mailguard/console")
    wait_for(lambda: web.execute_script("return document.readyState") == "complete", "load")
    load_ms = (time.perf_counter() - started) * 1000
    weight = web.execute_script(
        "return performance.getEntriesByType('resource').reduce((n, e) => n + e.transferSize,"
        " performance.getEntriesByType('navigation')[0].transferSize);"
    )
    print(f"\nconsole page: {weight} bytes transferred, loaded in {load_ms:.0f} ms")

    # a wrong token: back to the form with a message
    log_in(web, "not-the-token-at-all")
    wait_for(lambda: "403" in text(web, "login-error"), "the login error")
    assert web.find_element(By.ID, "login").is_displayed()
    assert not web.find_element(By.ID, "app").is_displayed()
    web.save_screenshot(str(artifacts() / "01-login-refused.png"))

    # the brute force, from its own loopback address, with a hostile account name
    statuses = [
        request_from(ATTACKER, port, "POST", "/login", {"user": BAD_ACCOUNT, "password": "x"})
        for _ in range(4)
    ]
    assert statuses == [401, 401, 401, 503], statuses
    # and a small flood for the DoS filter
    flood = [request_from(FLOODER, port, "GET", "/") for _ in range(9)]
    assert flood.count(503) == 4, flood

    log_in(web, TOKEN)
    wait_for(lambda: any(ATTACKER in r for r in rows(web, "blocks")), "the block in the console")
    wait_for(lambda: len(rows(web, "refusals")) >= 3, "the refusals")
    refusals = rows(web, "refusals")
    blocked = next(r for r in refusals if "blocked" in r)
    assert ATTACKER in blocked
    assert f"account={BAD_ACCOUNT}" in blocked  # literal text, not markup
    assert any("dos" in r and FLOODER in r for r in refusals)
    assert web.find_elements(By.CSS_SELECTOR, "img") == []  # nothing injected
    assert web.find_elements(By.CSS_SELECTOR, "body script") == []
    no_alert(web)

    # the chart: one line per filter, the legend with this minute's totals
    legend = wait_for(
        lambda: [str(t.text) for t in web.find_elements(By.CSS_SELECTOR, "#chart .legend text")],
        "the legend",
    )
    assert "dos (4)" in legend and "login (1)" in legend and "device (0)" in legend, legend
    lines = web.find_elements(By.CSS_SELECTOR, "#chart path.line")
    assert {line.get_attribute("data-filter") for line in lines} == {"dos", "login", "device"}
    labels = [str(t.text) for t in web.find_elements(By.CSS_SELECTOR, "#chart text")]
    assert "now" in labels and "-59 min" in labels and "requests / min" in labels
    assert text(web, "config-note") == "configuration not available"

    # search filters client-side
    search = web.find_element(By.ID, "search")
    search.send_keys("no-such-key")
    wait_for(lambda: rows(web, "blocks") == [], "the search to hide the block")
    search.clear()
    search.send_keys(ATTACKER)
    wait_for(lambda: len(rows(web, "blocks")) == 1, "the search to find it")

    # a manual block whose reason is hostile text: shown as text
    web.find_element(By.ID, "block-key").send_keys("192.0.2.44")
    web.find_element(By.ID, "block-seconds").clear()
    web.find_element(By.ID, "block-seconds").send_keys("30m")
    web.find_element(By.ID, "block-reason").send_keys(BAD_REASON)
    web.find_element(By.CSS_SELECTOR, "#block-form button").click()
    wait_for(lambda: "blocked 192.0.2.44" in text(web, "block-message"), "the block message")
    search.clear()
    wait_for(lambda: any(BAD_REASON in r for r in rows(web, "blocks")), "the manual block")
    assert web.find_elements(By.CSS_SELECTOR, "img") == []
    no_alert(web)
    web.save_screenshot(str(artifacts() / "02-blocks-refusals-chart.png"))

    # lift the brute force's block with its button; the address gets through
    button = web.find_element(By.CSS_SELECTOR, f'button.lift[data-key="{ATTACKER}"]')
    button.click()
    wait_for(lambda: not any(ATTACKER in r for r in rows(web, "blocks")), "the lift")
    assert "lifted 1 block(s) on 127.0.0.5" in text(web, "status")
    good = {"user": BAD_ACCOUNT, "password": "right"}
    assert request_from(ATTACKER, port, "POST", "/login", good) == 200

    # more blocks than the page lists (GET /blocks?limit=1000): the count and the
    # confirmation say how many there are (review of #17, F6)
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for i in range(1000):
        body = json.dumps({"key": f"198.18.{i // 250}.{i % 250 + 1}", "seconds": "1h"})
        connection.request(
            "POST", "/mailguard/block", body,
            {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )  # fmt: skip
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200
    connection.close()
    web.find_element(By.ID, "refresh").click()
    counted = "(1001; the 1000 ending soonest listed)"
    wait_for(lambda: text(web, "blocks-count") == counted, "the total")

    # lift all, behind a confirmation
    web.find_element(By.ID, "lift-all").click()
    assert web.switch_to.alert.text == "Lift all 1001 blocks and jails?"
    web.switch_to.alert.dismiss()
    time.sleep(0.2)
    # (counted in the page in one call: 1000 elements read one by one outlast a refresh)
    listed = "return document.querySelectorAll('#blocks tbody tr').length"
    wait_for(lambda: web.execute_script(listed) == 1000, "1000 rows listed, none lifted")
    wait_for(lambda: text(web, "blocks-count") == counted, "the total, still")
    web.find_element(By.ID, "lift-all").click()
    web.switch_to.alert.accept()
    wait_for(lambda: web.execute_script(listed) == 0, "lift all")
    assert web.find_element(By.ID, "blocks-empty").is_displayed()

    assert outside_requests(web, origin) == []
    errors = browser_errors(web)
    assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
    # the only errors allowed: Chrome's lines for the wrong token's 403s and for
    # /config's 404 (no live configuration in this app); no script error at all
    expected = [e for e in errors if "status of 403" in e or ("/config" in e and "404" in e)]
    assert errors == expected, errors

    # logout forgets the token
    web.find_element(By.ID, "logout").click()
    assert web.find_element(By.ID, "login").is_displayed()
    assert web.execute_script("return sessionStorage.length") == 0
    web.save_screenshot(str(artifacts() / "03-logged-out.png"))


@pytest.fixture
def serve_daemon(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    path = tmp_path / "mailguard.toml"
    path.write_text(
        f'[serve]\nport = {port}\nsecret = "{SECRET}"\nadmin_token = "{TOKEN}"\n'
        "[mailauth]\nmax_failed_logins = 2\n",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILGUARD_")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "mailguard", "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, "serve exited early"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.05)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def dovecot(origin: str, command: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{origin}/dovecot/?command={command}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Mailguard-Secret": SECRET},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        data: dict[str, Any] = json.loads(answer.read())
        return data


def test_the_console_of_mailguard_serve(driver: Any, serve_daemon: int) -> None:
    from selenium.webdriver.common.by import By

    port = serve_daemon
    origin = f"http://127.0.0.1:{port}"
    body = json.dumps({"key": "198.51.100.77", "seconds": "1h", "reason": "imap flood"})
    request = urllib.request.Request(
        f"{origin}/block",
        data=body.encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
    # two failed IMAP logins through Dovecot's policy endpoint, then one refused
    for command, success in (("allow", None), ("report", False), ("report", False)):
        dovecot(origin, command, dovecot_body(login=BAD_ACCOUNT, success=success))
    assert dovecot(origin, "allow", dovecot_body(login=BAD_ACCOUNT))["status"] == -1
    web = driver
    web.get(f"{origin}/console")
    web.execute_script("sessionStorage.clear()")
    web.get(f"{origin}/console")
    log_in(web, TOKEN)
    wait_for(lambda: any("198.51.100.77" in r for r in rows(web, "blocks")), "serve's block")
    assert any("imap flood" in r for r in rows(web, "blocks"))
    assert any(ATTACKER_IMAP in r and "failures" in r for r in rows(web, "blocks"))
    wait_for(lambda: any("blocked" in r for r in rows(web, "refusals")), "serve's refusals")
    blocked = next(r for r in rows(web, "refusals") if "blocked" in r)
    assert ATTACKER_IMAP in blocked and f"account={BAD_ACCOUNT}" in blocked
    assert "protocol=imap" in blocked
    legend = [str(t.text) for t in web.find_elements(By.CSS_SELECTOR, "#chart .legend text")]
    assert "login (1)" in legend, legend
    assert web.find_elements(By.CSS_SELECTOR, "img") == []
    no_alert(web)
    assert outside_requests(web, origin) == []
    # the configuration panel, from serve's real GET /config, follows a live change
    wait_for(lambda: any("mailauth.max_failed_logins" in r for r in rows(web, "config")), "config")
    row = next(r for r in rows(web, "config") if r.startswith("mailauth.max_failed_logins "))
    assert row.startswith("mailauth.max_failed_logins 2 file"), row
    change = json.dumps({"op": "set", "key": "mailauth.max_failed_logins", "value": 5})
    request = urllib.request.Request(
        f"{origin}/config",
        data=change.encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert json.loads(answer.read())["version"] == 1
    web.find_element(By.ID, "refresh").click()
    wait_for(
        lambda: any(
            r.startswith("mailauth.max_failed_logins 5 overlay") for r in rows(web, "config")
        ),
        "the live change in the configuration panel",
    )
    web.save_screenshot(str(artifacts() / "04-serve-console.png"))
    errors = browser_errors(web)
    assert not [e for e in errors if "Content Security Policy" in e], errors


def test_the_configuration_panel_renders_entries_as_text(driver: Any, uvicorn_server: int) -> None:
    """Against a stand-in ``GET /config`` of the admin app's shape (sources and
    details a real file cannot give here, e.g. hostile text, no detail): a table
    of key, value, source, detail; hostile text as text.  The real endpoint is
    driven in :func:`test_the_console_of_mailguard_serve`."""
    from selenium.webdriver.common.by import By

    global CONFIG_FIXTURE
    CONFIG_FIXTURE = {
        "version": 4,
        "live": True,
        "store": "memory",
        "entries": [
            {"key": "dos.max_requests_per_sec", "value": 150, "source": "overlay",
             "detail": "v4 set by alice@mx1 at 2026-12-01T03:40:00Z"},
            {"key": "login.safe_ips", "value": ["192.0.2.0/24"], "source": "file",
             "detail": "/etc/mailguard.toml"},
            {"key": "login.exempt", "value": BAD_REASON, "source": "env", "detail": None},
        ],
        "fixed": ["store.url", "trusted_proxies"],
    }  # fmt: skip
    try:
        web = driver
        web.get(f"http://127.0.0.1:{uvicorn_server}/mailguard/console")
        web.execute_script("sessionStorage.clear()")
        web.get(f"http://127.0.0.1:{uvicorn_server}/mailguard/console")
        log_in(web, TOKEN)
        wait_for(lambda: len(rows(web, "config")) == 3, "the configuration table")
        got = rows(web, "config")
        assert got[0] == (
            "dos.max_requests_per_sec 150 overlay v4 set by alice@mx1 at 2026-12-01T03:40:00Z"
        )
        assert got[1] == 'login.safe_ips ["192.0.2.0/24"] file /etc/mailguard.toml'
        assert got[2] == f"login.exempt {BAD_REASON} env"
        assert text(web, "config-note") == "version 4, live changes on, store memory"
        assert text(web, "config-fixed") == "Fixed until a restart: store.url, trusted_proxies"
        assert web.find_elements(By.CSS_SELECTOR, "img") == []
        no_alert(web)
        web.find_element(By.ID, "config-panel").screenshot(
            str(artifacts() / "05-configuration.png")
        )
    finally:
        CONFIG_FIXTURE = None
