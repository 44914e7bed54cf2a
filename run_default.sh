#!/usr/bin/env bash
# The embedded default, from a fresh checkout: .venv + requirements, the synthetic shapes data,
# SSDLite training on the CPU, evaluation, curves and val pictures in runs/shapes.
#
#   bash run_default.sh
#
# Needs Python 3.11 and pip (PYTHON=python3.11 picks the interpreter). RUN_DEFAULT_SKIP_INSTALL=1
# skips pip; a reduced run: RUN_DEFAULT_STEPS, RUN_DEFAULT_NUM_TRAIN, RUN_DEFAULT_NUM_VAL,
# RUN_DEFAULT_WORKDIR, RUN_DEFAULT_DATA, RUN_DEFAULT_EVAL=0 (see scripts/run_default.py).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
STAMP=.venv/.run_default_requirements  # requirements.txt as last installed by this script

if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then  # missing, or cut while created
  echo "== creating the virtual environment .venv ($("$PY" --version 2>&1))"
  "$PY" -m venv --clear .venv
fi
if [ "${RUN_DEFAULT_SKIP_INSTALL:-0}" = 1 ]; then
  echo "== not installing requirements.txt (RUN_DEFAULT_SKIP_INSTALL=1)"
elif [ -f "$STAMP" ] && cmp -s requirements.txt "$STAMP"; then
  echo "== requirements.txt already installed in .venv"
else
  echo "== installing requirements.txt into .venv (pip, quiet; a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  cp requirements.txt "$STAMP"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the ssd_jax package of this checkout
exec .venv/bin/python scripts/run_default.py "$@"
