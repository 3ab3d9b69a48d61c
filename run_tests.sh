#!/usr/bin/env bash
# The course's test suite: builds (or reuses) .venv, then runs pytest offline.
#   ./run_tests.sh                 all tests (includes headless runs of the course and the rehearsal)
#   ./run_tests.sh -m "not slow"   the fast ones only
#   ./run_tests.sh tests/test_lora.py -k merge
# Tests run in CLIPFT_TEST_WORKERS processes (default: one per core, at most 2; 0 runs them in this process):
# each test file stays in one worker, and the longest files start first (tests/conftest.py orders them).
# The 15 slowest tests are listed at the end.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/bootstrap.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export IPYTHONDIR="$scratch/ipython" JUPYTER_RUNTIME_DIR="$scratch/jupyter-runtime"
workers="${CLIPFT_TEST_WORKERS:-$(python -c 'import os; print(min(2, len(os.sched_getaffinity(0))))')}"
parallel=()
[ "$workers" -gt 1 ] && parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
start=$(date +%s)
status=0
python -m pytest "${parallel[@]}" --durations=15 "$@" || status=$?
echo "[run_tests] pytest finished in $(( $(date +%s) - start )) s with status $status ($workers worker(s))"
exit $status
