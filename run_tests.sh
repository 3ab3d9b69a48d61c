#!/usr/bin/env bash
# The course's test suite: builds (or reuses) .venv, then runs pytest offline.
#   ./run_tests.sh                 all tests (includes one headless smoke run of the course)
#   ./run_tests.sh -m "not slow"   the fast ones only
#   ./run_tests.sh tests/test_lora.py -k merge
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export IPYTHONDIR="$scratch/ipython" JUPYTER_RUNTIME_DIR="$scratch/jupyter-runtime"
start=$(date +%s)
status=0
python -m pytest "$@" || status=$?
echo "[run_tests] pytest finished in $(( $(date +%s) - start )) s with status $status"
exit $status
