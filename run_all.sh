#!/usr/bin/env bash
# Regenerate every result of the course: notebooks 01-07 through papermill.
#   ./run_all.sh --smoke                 offline stand-in (ToyCLIP on SynthFlowers), minutes on a CPU
#   ./run_all.sh                         the real course (ViT-B-32 / openai on Flowers102; downloads on first use)
#   ./run_all.sh --only lora bitfit      a subset of methods (07_comparison always runs)
#   ./run_all.sh --force --device cuda --seeds 0 1 2
# Executed notebooks: results/<profile>/notebooks/, results: results/<profile>/, figures: results/<profile>/figures/
# Ctrl-C (or kill -INT / -TERM of this script, also when it was started in the background) stops the run cleanly: the signal goes on to the runner, which
# sets aside what the interrupted notebook wrote and exits with status 130; a re-run resumes.
set -euo pipefail
# A shell without job control (a script's `./run_all.sh &`, nohup, CI) starts a background command with SIGINT
# ignored, and bash cannot trap a signal that was ignored when it started: `kill -INT` would do nothing. So this
# script runs itself once more with INT's default action first (coreutils' env); then INT stops it like Ctrl-C.
if [ -z "${CLIPFT_INT_RESET:-}" ] && env --default-signal=INT true 2>/dev/null; then
    export CLIPFT_INT_RESET=1
    exec env --default-signal=INT bash "$0" "$@"
fi
cd "$(dirname "$0")"
source scripts/bootstrap.sh
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export IPYTHONDIR="$scratch/ipython" JUPYTER_RUNTIME_DIR="$scratch/jupyter-runtime" MPLBACKEND=Agg PYTHONUNBUFFERED=1

smoke=0
for a in "$@"; do [ "$a" = "--smoke" ] && smoke=1; done
[ $smoke = 1 ] && export HF_HUB_OFFLINE=1   # the stand-in never needs the network
start=$(date +%s)
status=0
# In the background so that bash can pass INT/TERM on (it would otherwise wait for python and ignore them);
# `trap - INT` undoes the SIGINT-ignored that bash gives background commands.
(trap - INT; exec python -m clipft_utils run --all "$@") &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' INT
trap 'kill -TERM "$pid" 2>/dev/null || true' TERM
while :; do
    wait "$pid" && status=0 || status=$?
    kill -0 "$pid" 2>/dev/null && continue   # wait returned for a signal: python is still cleaning up
    if [ "$status" -gt 128 ]; then           # ... or python ended right after it: its own status, not 128+signal
        wait "$pid" 2>/dev/null && reaped=0 || reaped=$?
        if [ "$reaped" -ne 127 ]; then status=$reaped; fi
    fi
    break
done
trap - INT TERM
echo "[run_all] finished in $(( $(date +%s) - start )) s (exit status $status)"
exit $status
