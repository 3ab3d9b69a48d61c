"""The shell entry points: `source scripts/bootstrap.sh` leaves the caller's shell as it was; ./lab.sh.

Fast (seconds): nothing is installed. The real venv is only reused (its stamp must match pyproject.toml);
the install, failure and re-pointing paths run against a stub venv whose `python` records its arguments.
"""
from __future__ import annotations

import hashlib
import os
import shlex
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
LAB = ROOT / "lab.sh"


def _pins_sha() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CLIPFT_VENV", "CLIPFT_PROFILE", "PYTHONPATH", "VIRTUAL_ENV", "BASH_ENV", "ENV",
                         "HF_HUB_OFFLINE")}
    env.update(extra)
    return env


def _bash(script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env=_env(**env), capture_output=True, text=True,
                          timeout=60)


@pytest.fixture(scope="module")
def real_venv() -> Path:
    """The venv these tests run in (or ROOT/.venv), provided bootstrap would only reuse it, installing nothing."""
    for venv in (Path(sys.prefix), ROOT / ".venv"):
        stamp = venv / ".clipft-pins"
        if (venv / "bin" / "python").exists() and stamp.is_file():
            break
    else:
        pytest.skip("no bootstrapped venv (no .clipft-pins stamp) to reuse")
    if stamp.read_text().strip() != _pins_sha():
        pytest.skip(f"{stamp} does not match pyproject.toml: sourcing bootstrap would reinstall")
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-I", "-c",
         "import importlib.util as u, os; s = u.find_spec('clipft_utils'); "
         "print(os.path.realpath(os.path.dirname(os.path.dirname(s.origin))) if s else '')"],
        cwd="/", capture_output=True, text=True).stdout.strip()
    if where != os.path.realpath(ROOT):
        pytest.skip(f"{venv}'s editable install points at {where!r}: sourcing bootstrap would re-point it")
    return venv


STUB_PYTHON = """#!/bin/sh
# stands in for a venv's python: logs its arguments, answers the two questions bootstrap asks
printf '%s\\n' "$*" >> "$FAKE_LOG"
case "$*" in
    *"pip install"*) exit "${FAKE_PIP_RC:-0}" ;;
    *find_spec*) printf '%s\\n' "$FAKE_FOUND" ;;
    *version_info*) echo 3.11 ;;
esac
"""

STUB_JUPYTER = """#!/bin/sh
echo "jupyter-args: $*"
echo "env CLIPFT_PROFILE=${CLIPFT_PROFILE:-} PYTHONPATH=${PYTHONPATH:-} HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-}"
"""


@pytest.fixture
def stub_venv(tmp_path) -> Path:
    """A venv folder whose bin/python is a stub; its stamp matches pyproject.toml unless a test changes it."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("python", STUB_PYTHON), ("jupyter", STUB_JUPYTER)):
        (venv / "bin" / name).write_text(text)
        (venv / "bin" / name).chmod(0o755)
    (venv / ".clipft-pins").write_text(_pins_sha() + "\n")
    return venv


def _stub_env(venv: Path, found: str | None = None, pip_rc: int = 0) -> dict[str, str]:
    return {"CLIPFT_VENV": str(venv), "FAKE_LOG": str(venv / "calls.log"), "PYTHON": str(venv / "bin" / "python"),
            "FAKE_FOUND": os.path.realpath(ROOT) if found is None else found, "FAKE_PIP_RC": str(pip_rc)}


def _calls(venv: Path) -> str:
    log = venv / "calls.log"
    return log.read_text() if log.exists() else ""


# --- sourcing never changes the caller's shell ----------------------------------------------------------------

def test_sourcing_keeps_options_off_and_activates_the_venv(real_venv):
    out = _bash("""set +e +u; set +o pipefail
        echo "before $-"; set -o | grep pipefail
        source scripts/bootstrap.sh; echo "status $?"
        echo "after $-"; set -o | grep pipefail
        false
        echo "still alive"
        echo "first ${PATH%%:*}"
        echo "virtual ${VIRTUAL_ENV:-}"
        """, CLIPFT_VENV=str(real_venv))
    lines = out.stdout.splitlines()
    assert out.returncode == 0 and "reusing" in out.stderr, out.stderr
    assert lines[0].startswith("before ") and lines[3] == lines[0].replace("before", "after")
    assert "e" not in lines[3].split()[1] and "u" not in lines[3].split()[1]
    assert lines[1].split() == lines[4].split() == ["pipefail", "off"]
    assert "status 0" in lines and "still alive" in lines
    assert f"first {real_venv}/bin" in lines and f"virtual {real_venv}" in lines


def test_sourcing_keeps_set_e_and_strict_mode(real_venv):
    out = _bash("""set -e; shopt -s extglob; set -o noclobber
        before="$(set +o; shopt -p)"
        source scripts/bootstrap.sh
        after="$(set +o; shopt -p)"
        echo "flags $-"
        [ "$before" = "$after" ] && echo "all options unchanged"
        """, CLIPFT_VENV=str(real_venv))
    assert out.returncode == 0, out.stderr
    assert "e" in out.stdout.splitlines()[0].split()[1] and "all options unchanged" in out.stdout
    strict = _bash('set -euo pipefail; source scripts/bootstrap.sh; echo "flags $-"; set -o | grep pipefail',
                   CLIPFT_VENV=str(real_venv))
    flags = strict.stdout.splitlines()[0].split()[1]
    assert strict.returncode == 0 and "e" in flags and "u" in flags and "on" in strict.stdout, strict.stderr


def test_run_tests_sh_still_works_with_the_sourced_bootstrap(real_venv):
    out = subprocess.run([str(ROOT / "run_tests.sh"), "--version"], cwd="/", env=_env(CLIPFT_VENV=str(real_venv)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "pytest" in out.stdout + out.stderr, out.stderr


# --- install failures, stamps, re-pointing (stub venv: no pip ever runs) --------------------------------------

def test_failed_install_fails_a_strict_script_but_not_an_interactive_shell(stub_venv):
    (stub_venv / ".clipft-pins").write_text("stale pins\n")
    env = _stub_env(stub_venv, pip_rc=1)
    strict = _bash("set -euo pipefail; source scripts/bootstrap.sh; echo NOT_REACHED", **env)
    assert strict.returncode != 0 and "NOT_REACHED" not in strict.stdout
    assert "installing the pinned stack" in strict.stderr and "[bootstrap] failed" in strict.stderr
    assert f"-m pip install --quiet -e {ROOT}[test]" in _calls(stub_venv)
    assert not (stub_venv / ".clipft-pins").exists()  # no stamp: the next run retries the install
    relaxed = _bash("""set +e +u; source scripts/bootstrap.sh; echo "status $?"; false; echo "alive $-"
        case ":$PATH:" in *":$CLIPFT_VENV/bin:"*) echo activated ;; esac""", **env)
    assert relaxed.returncode == 0 and "status 1" in relaxed.stdout and "alive " in relaxed.stdout
    assert "activated" not in relaxed.stdout
    runner = subprocess.run([str(ROOT / "run_tests.sh"), "--version"], cwd="/", env=_env(**env),
                            capture_output=True, text=True, timeout=60)
    assert runner.returncode != 0 and "pytest finished" not in runner.stdout


def test_changed_pins_reinstall_and_write_the_stamp(stub_venv):
    (stub_venv / ".clipft-pins").write_text("stale pins\n")
    out = _bash("source scripts/bootstrap.sh", **_stub_env(stub_venv))
    assert out.returncode == 0 and "installing the pinned stack" in out.stderr, out.stderr
    assert (stub_venv / ".clipft-pins").read_text().strip() == _pins_sha()


def test_matching_stamp_reuses_without_pip(stub_venv):
    out = _bash("source scripts/bootstrap.sh", **_stub_env(stub_venv))
    assert out.returncode == 0 and "reusing" in out.stderr and "re-pointing" not in out.stderr, out.stderr
    calls = _calls(stub_venv)
    assert "find_spec" in calls and "pip" not in calls


def test_venv_of_another_checkout_is_repointed_here(stub_venv):
    out = _bash("source scripts/bootstrap.sh", **_stub_env(stub_venv, found="/elsewhere/other-checkout"))
    assert out.returncode == 0, out.stderr
    assert "/elsewhere/other-checkout" in out.stderr and "re-pointing it at" in out.stderr
    assert f"-m pip install --quiet --no-deps --no-build-isolation -e {ROOT}" in _calls(stub_venv)
    failed = _bash("set -e; source scripts/bootstrap.sh; echo NOT_REACHED",
                   **_stub_env(stub_venv, found="/elsewhere/other-checkout", pip_rc=1))
    assert failed.returncode != 0 and "NOT_REACHED" not in failed.stdout


# --- ./lab.sh -------------------------------------------------------------------------------------------------

def _dry(*args: str, **env: str) -> list[str]:
    out = subprocess.run([str(LAB), "--dry-run", *args], cwd="/", env=_env(**env), capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    if os.geteuid() == 0:  # as root lab.sh appends --allow-root (tested on its own below); compare the rest
        lines[-1] = lines[-1].removesuffix(" --allow-root")
    return lines


def test_lab_smoke_dry_run_sets_profile_offline_and_this_checkout_first():
    assert os.access(LAB, os.X_OK)
    lines = _dry("--smoke", PYTHONPATH="/some/where")
    assert "CLIPFT_PROFILE=smoke" in lines and "HF_HUB_OFFLINE=1" in lines
    assert f"PYTHONPATH={ROOT}:/some/where" in lines
    assert shlex.split(lines[-1]) == ["jupyter", "lab", str(ROOT / "notebooks")]


def test_lab_without_smoke_sets_no_profile():
    lines = _dry()
    assert not any(line.startswith(("CLIPFT_PROFILE=", "HF_HUB_OFFLINE=")) for line in lines)
    assert f"PYTHONPATH={ROOT}" in lines
    assert _dry("--profile", "full")[0] == "CLIPFT_PROFILE=full"


def test_lab_passes_other_arguments_to_jupyter():
    lines = _dry("--smoke", "--no-browser", "--port", "8899", "--ServerApp.token=")
    assert shlex.split(lines[-1]) == ["jupyter", "lab", str(ROOT / "notebooks"), "--no-browser", "--port", "8899",
                                      "--ServerApp.token="]
    assert shlex.split(_dry("--", "--smoke")[-1])[-1] == "--smoke"  # after --, even lab.sh's own flags pass on


def test_lab_bootstraps_then_execs_jupyter_with_the_environment(stub_venv):
    out = subprocess.run([str(LAB), "--smoke", "--port", "8899"], cwd="/", env=_env(**_stub_env(stub_venv)),
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "reusing" in out.stderr, out.stderr
    assert f"jupyter-args: lab {ROOT}/notebooks --port 8899" in out.stdout
    assert f"env CLIPFT_PROFILE=smoke PYTHONPATH={ROOT} HF_HUB_OFFLINE=1" in out.stdout


def test_lab_profile_without_a_name_is_refused():
    out = subprocess.run([str(LAB), "--profile"], cwd="/", env=_env(), capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--profile needs a name" in out.stderr


# --- ./run_all.sh passes Ctrl-C / SIGTERM on to the runner -------------------------------------------------------

STUB_RUNNER = """#!/bin/sh
# stands in for the venv's python: as `-m clipft_utils run`, a process that says how a signal reached it
case "$*" in
    *"clipft_utils run"*) exec "$REAL_PYTHON" -c '
import signal, sys, time
def stop(signum, frame):
    print("python got", signal.Signals(signum).name, flush=True)
    sys.exit(130)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)   # before "ready": the test signals as soon as it reads it
print("ready", flush=True)
time.sleep(60)
' ;;
    *find_spec*) printf '%s\\n' "$FAKE_FOUND" ;;
esac
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_all_sh_forwards_int_and_term_to_the_runner(stub_venv, sig):
    (stub_venv / "bin" / "python").write_text(STUB_RUNNER)
    env = _env(**_stub_env(stub_venv), REAL_PYTHON=sys.executable)
    proc = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--smoke"], cwd="/", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, sig)                       # the bash process only (before: bash ignored it, waiting)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert f"python got {sig.name}" in out, out + err
    assert proc.returncode == 130 and "(exit status 130)" in out, out + err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_run_all_sh_started_in_the_background_by_a_script_still_stops_on_int_and_term(stub_venv, sig):
    """A script's `./run_all.sh &` starts it with SIGINT ignored (no job control); before, kill -INT did nothing."""
    (stub_venv / "bin" / "python").write_text(STUB_RUNNER)
    env = _env(**_stub_env(stub_venv), REAL_PYTHON=sys.executable)
    script = f'bash {shlex.quote(str(ROOT / "run_all.sh"))} --smoke & echo "pid $!"; wait $!; echo "status $?"'
    proc = subprocess.Popen(["bash", "-c", script], cwd="/", env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        pid = int(proc.stdout.readline().split()[1])
        assert proc.stdout.readline().strip() == "ready"
        os.kill(pid, sig)                            # the backgrounded run_all.sh itself
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert f"python got {sig.name}" in out and "(exit status 130)" in out and "status 130" in out, out + err
def _lab(*args: str, as_user: bool = False, **env: str) -> subprocess.CompletedProcess:
    """Run ./lab.sh; ``as_user``: as an unprivileged user (nobody) when these tests run as root."""
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if as_user and os.geteuid() == 0 else []
    return subprocess.run([*drop, str(LAB), *args], cwd="/", env=_env(**env), capture_output=True, text=True,
                          timeout=30)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: lab.sh adds --allow-root only there")
def test_lab_as_root_passes_allow_root_and_says_so(stub_venv):
    dry = _lab("--smoke", "--dry-run")
    assert dry.returncode == 0 and shlex.split(dry.stdout.splitlines()[-1])[-1] == "--allow-root", dry.stdout
    assert "[lab] running as root: passing --allow-root to jupyter lab" in dry.stderr
    started = _lab("--smoke", "--port", "8899", **_stub_env(stub_venv))  # the fake jupyter prints its arguments
    assert started.returncode == 0, started.stderr
    assert f"jupyter-args: lab {ROOT}/notebooks --port 8899 --allow-root" in started.stdout
    assert "running as root" in started.stderr
    given = _lab("--dry-run", "--allow-root")  # the user's own --allow-root is not doubled
    assert shlex.split(given.stdout.splitlines()[-1]).count("--allow-root") == 1
    assert "--allow-root" not in _lab("--dry-run", "--ServerApp.allow_root=True").stdout


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"), reason="root without setpriv to drop it")
def test_lab_as_a_user_does_not_allow_root():
    out = _lab("--smoke", "--dry-run", as_user=True)
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout.splitlines()[-1]) == ["jupyter", "lab", str(ROOT / "notebooks")]
    assert "--allow-root" not in out.stdout + out.stderr


def test_lab_passes_the_users_results_root_to_jupyter(stub_venv):
    """README: `CLIPFT_RESULTS=… ./lab.sh` keeps JupyterLab's results apart from run_all.sh's."""
    (stub_venv / "bin" / "jupyter").write_text('#!/bin/sh\necho "results root ${CLIPFT_RESULTS:-unset}"\n')
    out = _lab("--smoke", **_stub_env(stub_venv), CLIPFT_RESULTS="/somewhere/lab-results")
    assert out.returncode == 0 and "results root /somewhere/lab-results" in out.stdout, out.stderr
