#!/usr/bin/env bash
# Create or reuse .venv with the pinned stack. Sourced by run_all.sh and run_tests.sh.
# Reinstalls only when pyproject.toml (the pins) changed since the last successful install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CLIPFT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
STAMP="$VENV/.clipft-pins"
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    echo "[bootstrap] reusing $VENV (pins unchanged)" >&2
else
    ver="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ "$ver" != "3.11" ]; then
        echo "[bootstrap] warning: Python $ver found; the pins are tested on 3.11" >&2
    fi
    echo "[bootstrap] installing the pinned stack into $VENV (first run: a few minutes)" >&2
    start=$(date +%s)
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
    rm -f "$STAMP"
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    echo "$want" > "$STAMP"
    echo "[bootstrap] done in $(( $(date +%s) - start )) s" >&2
fi
export PATH="$VENV/bin:$PATH"
export VIRTUAL_ENV="$VENV"
