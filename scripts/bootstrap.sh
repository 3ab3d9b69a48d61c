#!/usr/bin/env bash
# Create or reuse .venv with the pinned stack, then put it first on PATH. Sourced by run_all.sh, run_tests.sh
# and lab.sh; learners may `source scripts/bootstrap.sh` in their own shell.
# Reinstalls only when pyproject.toml (the pins) changed since the last successful install. A venv reused from
# another copy of the project (CLIPFT_VENV, a copied folder) is re-pointed at this checkout (editable install).
#
# Sourcing never changes the caller's shell options: the install runs in a child bash (this same file, executed
# with --install) under its own `set -euo pipefail`; the sourcing shell only exports PATH and VIRTUAL_ENV.
# A failed install makes `source` return non-zero, so a caller with `set -e` stops, an interactive shell does not.

if [ -z "${BASH_VERSION:-}" ]; then
    echo "[bootstrap] needs bash: run \`bash\` first, then \`source scripts/bootstrap.sh\`" >&2
    return 1 2>/dev/null || exit 1
fi

if [ "${1:-}" = "--install" ] && [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # ---- executed as a child process: strict mode is this process's alone ------------------------------------
    set -euo pipefail
    set +o noclobber +o noglob
    ROOT="$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." >/dev/null && pwd)"
    VENV="${CLIPFT_VENV:-$ROOT/.venv}"
    PY="${PYTHON:-python3.11}"
    command -v "$PY" >/dev/null 2>&1 || PY=python3
    STAMP="$VENV/.clipft-pins"
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"

    if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
        echo "[bootstrap] reusing $VENV (pins unchanged)" >&2
        # The editable install records the checkout it was built from; from a neutral cwd, without PYTHONPATH
        # (-I), ask where `import clipft_utils` goes (find_spec: located, not imported, so this takes ~50 ms).
        here="$(cd "$ROOT" && pwd -P)"
        there="$(cd / && "$VENV/bin/python" -I -c 'import importlib.util as u, os
s = u.find_spec("clipft_utils")
print(os.path.realpath(os.path.dirname(os.path.dirname(s.origin))) if s and s.origin else "")' 2>/dev/null)" || there=""
        if [ "$there" != "$here" ]; then
            echo "[bootstrap] $VENV imports clipft_utils from ${there:-nowhere}, not from this checkout;" \
                 "re-pointing it at $ROOT (pip install --no-deps -e)" >&2
            # --no-build-isolation: use the venv's setuptools, so this works offline
            "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT" \
                2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
        fi
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
    exit 0
fi

# ---- sourced (or executed without --install): runs in the caller's shell, so no `set`, no failing commands,
# ---- no unset variables; only _clipft_* names, removed again at the end ----------------------------------------
_clipft_self="${BASH_SOURCE[0]}"
_clipft_status=0
# `|| _clipft_status=$?`: a failure is reported below instead of ending a caller that has `set -e` right here
_clipft_root="$(CDPATH='' builtin cd -- "$(dirname -- "$_clipft_self")/.." >/dev/null && pwd)" || _clipft_status=$?
if [ "$_clipft_status" -eq 0 ]; then
    "$BASH" "$_clipft_root/scripts/bootstrap.sh" --install || _clipft_status=$?
fi
if [ "$_clipft_status" -ne 0 ]; then
    echo "[bootstrap] failed (exit status $_clipft_status); nothing was activated" >&2
else
    _clipft_venv="${CLIPFT_VENV:-$_clipft_root/.venv}"
    case ":${PATH:-}:" in
        ":$_clipft_venv/bin:"*) ;;                             # already first (sourced twice)
        *) PATH="$_clipft_venv/bin${PATH:+:$PATH}" ;;
    esac
    export PATH
    export VIRTUAL_ENV="$_clipft_venv"
    if [ "$_clipft_self" = "${0:-}" ]; then
        echo "[bootstrap] ready; to use it in your shell: source $_clipft_self" >&2
    fi
fi
unset _clipft_self _clipft_root _clipft_venv
# `return` when sourced, `exit` when executed; eval expands the status before unsetting its variable
eval "unset _clipft_status; return $_clipft_status 2>/dev/null || exit $_clipft_status"
