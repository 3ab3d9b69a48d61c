#!/usr/bin/env bash
# Open the course in JupyterLab, ready to run (creates or reuses .venv through scripts/bootstrap.sh).
#   ./lab.sh                                   the real course (each notebook's parameters cell decides)
#   ./lab.sh --smoke                           the offline stand-in: CLIPFT_PROFILE=smoke, HF_HUB_OFFLINE=1
#   ./lab.sh --profile NAME                    CLIPFT_PROFILE=NAME (the default of notebooks that leave profile = None)
#   ./lab.sh --smoke --no-browser --port 8899  every other option goes to `jupyter lab` (also all after `--`)
#   ./lab.sh --smoke --dry-run                 print the variables it sets and the command, one per line; start nothing
#   (as root it adds --allow-root, which jupyter needs there, and says so)
set -euo pipefail
ROOT="$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" >/dev/null && pwd)"

profile="" dry_run=0 pass=()
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) profile=smoke ;;
        --profile)
            if [ $# -lt 2 ] || [ -z "$2" ] || [ "${2#-}" != "$2" ]; then
                echo "lab.sh: --profile needs a name, e.g. --profile smoke or --profile full" >&2
                exit 2
            fi
            profile="$2"; shift ;;
        --profile=*)
            profile="${1#--profile=}"
            if [ -z "$profile" ]; then
                echo "lab.sh: --profile needs a name, e.g. --profile=smoke or --profile=full" >&2
                exit 2
            fi ;;
        --dry-run) dry_run=1 ;;
        -h|--help) sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --) shift; pass+=("$@"); break ;;
        *) pass+=("$1") ;;
    esac
    shift
done

# What this script sets; everything else in the user's environment (IPYTHONDIR, JUPYTER_*, HF_HOME, ...) is kept.
settings=()
[ -n "$profile" ] && settings+=("CLIPFT_PROFILE=$profile")
# this checkout first: the kernels import its clipft_utils whatever the venv's editable install points at
settings+=("PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}")
[ "$profile" = smoke ] && settings+=("HF_HUB_OFFLINE=1")   # the stand-in never needs the network
cmd=(jupyter lab "$ROOT/notebooks" ${pass[@]+"${pass[@]}"})
# Jupyter refuses to start as root without --allow-root, and many workshop containers run as root
if [ "${EUID:-$(id -u)}" = 0 ] && [[ " ${pass[*]-} " != *" --allow-root "* && "${pass[*]-}" != *allow_root* ]]; then
    cmd+=(--allow-root)
    echo "[lab] running as root: passing --allow-root to jupyter lab" >&2
fi

if [ "$dry_run" = 1 ]; then
    printf '%s\n' "${settings[@]}"
    printf '%q ' "${cmd[@]}" | sed 's/ $//'
    echo
    echo "[lab] dry run: .venv not checked, JupyterLab not started" >&2
    exit 0
fi

source "$ROOT/scripts/bootstrap.sh"
for setting in "${settings[@]}"; do
    export "$setting"
done
echo "[lab] ${settings[*]}" >&2
exec "${cmd[@]}"
