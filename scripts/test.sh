#!/usr/bin/env bash
# Install into .venv (created if missing) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
echo "== creating .venv and installing requirements-test.txt"
# (re)created when missing or without pip, e.g. after an interrupted creation
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then "$PY" -m venv --clear .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  # torch for the tests: the CPU build from PyTorch's CPU index (PyPI only has CUDA builds);
  # pip takes a local wheel of it first where one is configured (this project's machines);
  # its dependencies come with requirements-test.txt.
  .venv/bin/python -m pip install -q --no-deps "torch==2.13.0+cpu" \
    --extra-index-url https://download.pytorch.org/whl/cpu 2>&1 | grep -v "^WARNING: Retrying" || true
fi
.venv/bin/python -m pip install -q -r requirements-test.txt
echo "== installing requirements-export.txt (+ jax2onnx without its declared dependencies)"
.venv/bin/python -m pip install -q -r requirements-export.txt
.venv/bin/python -m pip install -q --no-deps -r requirements-export-nodeps.txt
export CI="${CI:-true}"  # OpenVINO sends no usage telemetry from test runs
echo "== running the tests"
.venv/bin/python -m pytest -n 2 -q "$@"
