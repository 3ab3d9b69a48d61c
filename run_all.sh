#!/usr/bin/env bash
# Regenerate every result of the course: notebooks 01-07 through papermill.
#   ./run_all.sh --smoke                 offline stand-in (ToyCLIP on SynthFlowers), minutes on a CPU
#   ./run_all.sh                         the real course (ViT-B-32 / openai on Flowers102; downloads on first use)
#   ./run_all.sh --only lora bitfit      a subset of methods (07_comparison always runs)
#   ./run_all.sh --force --device cuda --seeds 0 1 2
# Executed notebooks: results/<profile>/notebooks/, results: results/<profile>/, figures: results/<profile>/figures/
set -euo pipefail
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
python -m clipft_utils run --all "$@" || status=$?
echo "[run_all] finished in $(( $(date +%s) - start )) s (exit status $status)"
exit $status
