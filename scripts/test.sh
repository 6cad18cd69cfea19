#!/usr/bin/env bash
# The whole test suite from a clean clone: installs what it needs, then runs
# ruff, mypy on mailguard/ and pytest, then the Redis tests again on the
# oldest redis-py allowed and the stack tests on the oldest Starlette, FastAPI,
# Flask/Werkzeug and Django allowed.  Safe to run again (reuses .venv,
# .venv-redis-oldest and .venv-oldest).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use, installed with apt when missing and root
# (CI runs as root on a fresh machine); `apt-get update` runs once, first.
APT_UPDATED=""
apt_install() {
  if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    return 1
  fi
  echo "== installing $* (apt)"
  if [ -z "$APT_UPDATED" ]; then
    apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# A real redis-server for the Redis tests: required.
if ! command -v redis-server >/dev/null 2>&1; then
  if ! apt_install redis-server; then
    echo "== redis-server is missing: install it (e.g. sudo apt-get install redis-server)" >&2
    exit 1
  fi
fi

# A real nginx for the nginx -> unix socket -> uvicorn/gunicorn test (Debian's
# nginx-light).  Without it that test is skipped, not failed.
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  apt_install nginx-light || echo "== nginx is missing: tests/test_nginx_unix.py will be" \
    "skipped (install it, e.g. sudo apt-get install nginx-light)" >&2
fi

# Real mail servers for tests/test_mail_doors.py (Dovecot asking `mailguard
# serve`, nginx's mail proxy in front of a second Dovecot): Debian's Dovecot
# with IMAP, POP3 and submission, and nginx's mail module.  Without them those
# tests are skipped, not failed.
MAIL_PACKAGES=""
[ -x /usr/lib/dovecot/imap-login ] || MAIL_PACKAGES="$MAIL_PACKAGES dovecot-imapd"
[ -x /usr/lib/dovecot/pop3-login ] || MAIL_PACKAGES="$MAIL_PACKAGES dovecot-pop3d"
[ -x /usr/lib/dovecot/submission-login ] || MAIL_PACKAGES="$MAIL_PACKAGES dovecot-submissiond"
[ -f /usr/lib/nginx/modules/ngx_mail_module.so ] || MAIL_PACKAGES="$MAIL_PACKAGES libnginx-mod-mail"
if [ -n "$MAIL_PACKAGES" ]; then
  # shellcheck disable=SC2086  # a list of packages
  apt_install $MAIL_PACKAGES || echo "== missing$MAIL_PACKAGES: tests/test_mail_doors.py" \
    "will be skipped (install them, e.g. sudo apt-get install$MAIL_PACKAGES)" >&2
fi

# fail2ban-regex checks the shipped fail2ban filters (tests/test_fail2ban.py
# skips those tests without it).
if ! command -v fail2ban-regex >/dev/null 2>&1; then
  apt_install fail2ban || echo "== fail2ban-regex is missing: its tests will be skipped" \
    "(install it, e.g. sudo apt-get install fail2ban)" >&2
fi

# A real headless Chromium for the admin console's browser tests
# (tests/test_console_browser.py; selenium comes with the test extra): Debian's
# chromium and chromium-driver.  Without them (and not root) those tests are
# skipped; as root a missing browser fails them.
if ! command -v chromedriver >/dev/null 2>&1 \
  || { ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; }; then
  apt_install chromium chromium-driver || echo "== chromium or chromedriver is missing:" \
    "tests/test_console_browser.py will be skipped (install them, e.g. sudo apt-get install" \
    "chromium chromium-driver)" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing mailguard with its test and dev extras"
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev,bench]'

echo "== ruff"
.venv/bin/ruff check mailguard tests benchmarks examples
.venv/bin/ruff format --check mailguard tests benchmarks examples
echo "== mypy"
.venv/bin/mypy mailguard
# The Redis tests once more on the oldest redis-py that pyproject.toml allows
# (the main run below has the newest), in a venv of their own: the store must not
# lean on an API only recent redis-py versions have.  The other packages get
# the versions .venv has, so pip takes them from its cache.
OLDEST=$(.venv/bin/python - <<'PY'
import re
text = open("pyproject.toml", encoding="utf-8").read()
print(re.search(r'^redis = \["redis>=([0-9.]+)', text, re.M).group(1))
PY
)
echo "== pytest: Redis tests on the oldest redis-py allowed ($OLDEST)"
if [ ! -x .venv-redis-oldest/bin/python ]; then
  "$PY" -m venv .venv-redis-oldest
fi
.venv/bin/python -m pip freeze --exclude-editable | grep -iv '^redis==' > .venv-redis-oldest/constraints.txt
.venv-redis-oldest/bin/python -m pip install -q -c .venv-redis-oldest/constraints.txt \
  "redis==$OLDEST" starlette werkzeug flask prometheus-client cachetools netaddr \
  "tomli; python_version < '3.11'" pytest hypothesis httpx anyio
.venv-redis-oldest/bin/python -m pip install -q --no-deps -e .
.venv-redis-oldest/bin/python -m pytest -p no:cacheprovider \
  -q tests/test_redis_store.py tests/test_redis_filters.py tests/test_store_conformance.py \
  tests/test_redis_failover.py tests/test_redis_cluster.py tests/test_redis_sentinel.py \
  tests/test_redis_urls.py tests/test_invalidation.py tests/test_redis_eviction.py \
  tests/test_outage_log.py tests/test_redis_gaps.py tests/test_redis_cluster_scale.py

# The tests that run mailguard inside real stacks (Starlette, FastAPI, Flask
# through werkzeug, Django, the examples) once more on the oldest versions the
# test extra allows, in .venv-oldest: mailguard itself requires none of them,
# so it must work with what an app already has.  Lower bounds come from
# pyproject.toml's test extra; the rest comes from .venv's versions (pip cache).
PINS=$(.venv/bin/python - <<'PY'
import re
text = open("pyproject.toml", encoding="utf-8").read()
test = re.search(r"^test = \[(.*?)^\]", text, re.M | re.S).group(1)
pins = []
for name in ("starlette", "fastapi", "flask", "werkzeug", "django", "httpx"):
    lowest = re.search('"' + name + r'>=([0-9.]+)', test).group(1)
    pins.append(f"{name}=={lowest}")
print(" ".join(pins))
PY
)
echo "== pytest: stack tests on the oldest frameworks allowed ($PINS)"
if [ ! -x .venv-oldest/bin/python ]; then
  "$PY" -m venv .venv-oldest
fi
.venv/bin/python -m pip freeze --exclude-editable \
  | grep -Eiv '^(starlette|fastapi|flask|werkzeug|django|httpx|anyio|redis)==' > .venv-oldest/constraints.txt
# shellcheck disable=SC2086  # PINS is a list of requirements
.venv-oldest/bin/python -m pip install -q -c .venv-oldest/constraints.txt $PINS \
  cachetools netaddr "tomli; python_version < '3.11'" pytest hypothesis uvicorn
.venv-oldest/bin/python -m pip install -q --no-deps -e .
.venv-oldest/bin/python -m pytest -p no:cacheprovider -q \
  tests/test_examples.py tests/test_reading_stacks.py tests/test_fail2ban.py tests/test_dos.py \
  tests/test_login.py tests/test_device.py tests/test_login_seam.py tests/test_login_presets.py \
  tests/test_demo.py tests/test_admin.py tests/test_stacked_identity.py

echo "== pytest"
.venv/bin/python -m pytest "$@"
