#!/usr/bin/env bash
# The whole test suite from a clean clone: installs what it needs, then runs
# ruff, mypy on mailguard/ and pytest.  Safe to run again (reuses .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

# A real redis-server for the Redis tests (Debian's package; CI runs as root).
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing redis-server (apt)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "== redis-server is missing: install it (e.g. sudo apt-get install redis-server)" >&2
    exit 1
  fi
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
echo "== pytest"
.venv/bin/python -m pytest "$@"
