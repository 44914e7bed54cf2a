#!/usr/bin/env bash
# Install into .venv (created if missing) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
echo "== creating .venv and installing requirements-test.txt"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-test.txt
echo "== running the tests"
.venv/bin/python -m pytest -n 2 -q "$@"
