"""Executing a plan: one results folder per run (locked), each job in its own notebook worker with a journal of what
it writes, a completion record when it ends well, its files set aside when it fails or is interrupted, and several
devices running independent jobs at once."""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from ...config import get_profile
from ...errors import ResultsError
from ...paths import PROJECT_ROOT, atomic_write_text, file_lock
from ...results import result_path
from ..nbworker import error_line as _error_line
from . import jobs as P
from .fingerprints import job_record, why_run, with_inputs, write_record
from .jobs import Job, Step, config_param

NOISE = ("Kernel is running over TCP without encryption",)
"""Lines of a worker's output that say nothing about the notebook."""

# ----------------------------------------------------------------------------- locks and leftovers
def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}: {info['command']}"
    except (OSError, ValueError, KeyError):
        return "another process"


class FolderLock:
    """One run at a time per results folder (shards of one grid share it; a job is never run twice at once)."""

    def __init__(self, folder: Path, shared: bool) -> None:
        self.path, self.shared, self._cm = folder / ".clipft-run.lock", shared, None

    def __enter__(self) -> "FolderLock":
        self._cm = file_lock(self.path, blocking=False, shared=self.shared)
        if not self._cm.__enter__():
            holder = _holder(self.path.with_suffix(".info"))
            raise ResultsError(f"Another run holds the results folder '{self.path.parent}' ({holder}). "
                               "Fix: wait for it to finish, or give this run another folder (CLIPFT_RESULTS=...).")
        if not self.shared:
            atomic_write_text(self.path.with_suffix(".info"), json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
                 "started": _dt.datetime.now().isoformat(timespec="seconds")}))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._cm.__exit__(*exc)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(nb_dir: Path) -> list[Path]:
    """Remove hidden ``.<job>.running-<pid>.ipynb`` copies whose process is gone (a killed run's)."""
    removed = []
    for path in nb_dir.glob(".*.running-*.ipynb"):
        try:
            pid = int(path.stem.rsplit("-", 1)[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if not _pid_alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


# ----------------------------------------------------------------------------- executing one notebook
def _kernel_env(job: Job, journal: Path, events: Path, fresh: bool) -> dict[str, str]:
    """The environment a notebook's kernel gets: this checkout first on the path, headless, its journal, where to
    tell the terminal what happened (``paths.note``), and ``CLIPFT_FRESH`` under --force (no checkpoint resumes)."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["CLIPFT_HEADLESS"] = "1"       # static figures, no progress bars in the executed copy
    env["CLIPFT_JOURNAL"] = str(journal)
    env["CLIPFT_EVENTS"] = str(events)
    if fresh:
        env["CLIPFT_FRESH"] = "1"
    env.pop("MPLBACKEND", None)         # Agg would keep every figure out of the executed notebooks
    scratch = Path(tempfile.gettempdir()) / f"clipft-kernel-{os.getpid()}"
    env.setdefault("IPYTHONDIR", str(scratch / "ipython"))
    env.setdefault("JUPYTER_RUNTIME_DIR", str(scratch / "runtime"))
    return env


def _execute(job: Job, out: Path, parameters: dict, env: dict[str, str]) -> None:
    """Run one notebook into ``out`` in a worker process (its own environment); raise with the error line."""
    tmp = out.with_name(f".{out.stem}.running-{os.getpid()}.ipynb")
    cmd = [sys.executable, "-m", "clipft_utils.course.nbworker", str(P.NOTEBOOK_DIR / f"{job.notebook}.ipynb"),
           str(tmp), json.dumps(parameters), str(P.NOTEBOOK_DIR)]
    proc = subprocess.Popen(cmd, env=env, cwd=str(P.NOTEBOOK_DIR), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    WORKERS[job.key] = proc
    if STOP.is_set():  # stopped while it was starting
        _signal(proc, signal.SIGINT)
    lines = []
    try:
        for line in proc.stdout:
            if not any(n in line for n in NOISE):
                lines.append(line)
        code = proc.wait()
    finally:
        WORKERS.pop(job.key, None)
    if code != 0:
        if STOP.is_set():
            tmp.unlink(missing_ok=True)  # an interrupted run leaves no executed copy
        elif tmp.exists():
            os.replace(tmp, out.with_name(f"{out.stem}.FAILED.ipynb"))
        out.unlink(missing_ok=True)
        tail = [l.strip() for l in lines if l.strip()]
        raise RuntimeError(tail[-1] if tail else f"the notebook's process ended with status {code}")
    os.replace(tmp, out)
    out.with_name(f"{out.stem}.FAILED.ipynb").unlink(missing_ok=True)


def _children_cpu() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _written(journal: Path) -> list[Path]:
    if not journal.exists():
        return []
    return [Path(line) for line in journal.read_text().splitlines() if line.strip()]


def _quarantine(folder: Path, written: Iterable[Path], name: str) -> list[Path]:
    """Move everything a failed notebook wrote into ``failed/<name>/`` (its checkpoints stay: they resume it)."""
    moved = []
    for path in sorted(set(written)):
        try:
            rel = path.resolve().relative_to(folder.resolve())
        except ValueError:
            continue
        if rel.parts[0] in ("checkpoints", "runs", "failed", "notebooks") or not path.exists():
            continue
        dest = folder / "failed" / name / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        moved.append(dest)
    return moved


def run_job(job: Job, folder: Path, nb_dir: Path, device: str, echo, force: bool = False) -> Step:
    """Execute one job; record it as done, or set aside everything it wrote (failed or interrupted). What the notebook
    noted for the terminal (a resumed checkpoint, a rebuilt cache) is said after it; ``force``: no resumes."""
    out = nb_dir / f"{job.key}.ipynb"
    journal = folder / "runs" / f".{job.key}.{os.getpid()}.journal"
    events = journal.with_suffix(".events")
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.unlink(missing_ok=True)
    events.unlink(missing_ok=True)
    job_record(folder, job).unlink(missing_ok=True)  # a killed rerun must not look finished
    params = {**job.params, "device": device}
    start, cpu = time.perf_counter(), _children_cpu()
    used = lambda: None if cpu is None else _children_cpu() - cpu  # noqa: E731
    try:
        _execute(job, out, params, _kernel_env(job, journal, events, force))
        _check_results(job, params)
        seconds = time.perf_counter() - start
        write_record(folder, job, _written(journal), out, seconds, device)
        return Step(job.notebook, job.seed, "ok", seconds, str(out), cpu_seconds=used(), shots=job.shots,
                    note=resolve_failure(folder, job, echo))
    except Exception as exc:  # noqa: BLE001 - one failing notebook must not stop the others
        shutil.rmtree(folder / "failed" / job.key, ignore_errors=True)  # an older failure's files: this one's now
        moved = _quarantine(folder, _written(journal), job.key)
        status = "interrupted" if STOP.is_set() else "failed"
        step = Step(job.notebook, job.seed, status, time.perf_counter() - start,
                    str(nb_dir / f"{job.key}.FAILED.ipynb"), _error_line(exc), used(), shots=job.shots,
                    note=f"{len(moved)} file(s) it wrote set aside in failed/{job.key}" if moved else "")
        if status == "failed":
            echo(f"[run_all] FAILED {job.describe()} after {step.seconds:.0f} s: {step.error}")
            echo(f"[run_all]   executed copy: {step.output}" + (f"; {step.note}" if moved else ""))
        return step
    finally:
        _say_events(job, events, echo)
        journal.unlink(missing_ok=True)


def _say_events(job: Job, events: Path, echo) -> None:
    """Say in the terminal what the job's notebook noted (``paths.note``), then forget it."""
    if events.exists():
        for line in dict.fromkeys(events.read_text().splitlines()):
            echo(f"[run_all] {job.describe()}: {line}")
        events.unlink(missing_ok=True)


def _check_results(job: Job, params: dict[str, Any]) -> None:
    """A notebook that ended well must have written the main result of every method it was planned for; a method
    registered for a notebook without a section in it is named, with the section to add."""
    folder, seed, shots = Path(params["results_dir"]), int(params["seed"]), params.get("shots")
    if shots is None:
        shots = get_profile(params["profile"]).shots  # what the notebook's setup uses (the rehearsal's k = 1)
    missing = [m for m in job.methods if m not in job.not_applicable
               and not result_path(folder, m, seed, None, shots).exists()]
    if missing:
        m = missing[0]
        raise ResultsError(
            f"{job.notebook} ran to the end but wrote no result for the method '{m}' "
            f"({result_path(folder, m, seed, None, shots).name}): the notebook has no section that trains it. Fix: add "
            f"a section to notebooks/{job.notebook}.ipynb that trains '{m}' with its config from the parameter "
            f"`{config_param(job.notebook, m)}` and writes its result (train_method(course, '{m}', cfg, clf, groups)), "
            f"as the notebook's other sections do; or register the method's Section for the notebook that trains it.")


def resolve_failure(folder: Path, job: Job, echo) -> str:
    """After a success, remove ``failed/<job>/`` of an earlier failed run (its files are superseded); say so."""
    old = folder / "failed" / job.key
    if not old.exists():
        return ""
    shutil.rmtree(old)
    if not any((folder / "failed").iterdir()):
        (folder / "failed").rmdir()
    note = f"its earlier failure is resolved: removed failed/{job.key}/"
    echo(f"[run_all] {job.describe()} succeeded; {note}")
    return note


# ----------------------------------------------------------------------------- stopping on Ctrl-C or SIGTERM
STOP = threading.Event()
"""Set when the run is being interrupted: running notebooks are stopped and nothing new starts."""
WORKERS: dict[str, subprocess.Popen] = {}
STOP_GRACE_S = 30.0


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, OSError):
        pass


def stop_workers(threads: Iterable[threading.Thread]) -> None:
    """Interrupt every running notebook (its worker shuts its kernel down) and wait for their jobs to clean up."""
    STOP.set()
    for proc in list(WORKERS.values()):
        _signal(proc, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    threads = list(threads)
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    for proc in list(WORKERS.values()):
        proc.kill()  # did not stop in time; its kernel notices its parent is gone and ends too
    for thread in threads:
        thread.join()


class Interrupted(Exception):
    """The run was stopped by Ctrl-C or SIGTERM: ``line`` says where; ``steps`` is what ended before."""

    def __init__(self, line: str, steps: list[Step]) -> None:
        super().__init__(line)
        self.line, self.steps = line, steps


# ----------------------------------------------------------------------------- scheduling
def reads(job: Job, other: Job) -> bool:
    """Whether ``job`` reads what ``other`` writes (same seed; zero-shot runs at shots=None serve every k)."""
    if not job.methods:
        return other is not job
    return (other.notebook in P.depends().get(job.notebook, ()) and other.seed == job.seed
            and other.shots in (job.shots, None))


def _ready(job: Job, done: dict[str, str], jobs: list[Job]) -> bool:
    """A job may start when every job it reads from has ended (ok, failed or skipped)."""
    return not any(reads(job, j) and j.key not in done for j in jobs)


def execute_all(jobs: list[Job], folder: Path, nb_dir: Path, devices: Sequence[str], force: bool, echo) -> list[Step]:
    """Run (or skip) the jobs in order, on ``devices`` in parallel (one kernel each), respecting depends()."""
    steps: dict[str, Step] = {}
    done: dict[str, str] = {}
    lock = threading.Lock()
    free = list(devices)
    running: dict[str, threading.Thread] = {}
    queue = list(jobs)

    def start(job: Job, device: str) -> None:
        def work() -> None:
            step = run_job(job, folder, nb_dir, device, echo, force)
            with lock:
                steps[job.key], done[job.key] = step, step.status
                free.append(device)
                running.pop(job.key, None)
        thread = threading.Thread(target=work, name=f"clipft-{job.key}", daemon=True)
        running[job.key] = thread
        thread.start()

    STOP.clear()
    try:
        while queue or running:
            with lock:
                launched = False
                for job in list(queue):
                    if not free:
                        break
                    if not _ready(job, done, jobs):
                        continue
                    queue.remove(job)
                    reason = run_reason(job, folder, nb_dir, force)
                    if reason is None:
                        echo(f"[run_all] skip {job.describe()}: finished with the same parameters, code and data")
                        steps[job.key] = Step(job.notebook, job.seed, "skipped", shots=job.shots,
                                              reason="up to date")
                        done[job.key] = "skipped"
                        launched = True
                        continue
                    device = free.pop(0)
                    echo(f"[run_all] run  {job.describe()} on {device} ({reason}) ...")
                    start(job, device)
                    launched = True
            if not launched:
                time.sleep(0.05)
    except KeyboardInterrupt:
        names = list(running)
        stop_workers(list(running.values()))
        ended = [steps[j.key] for j in jobs if j.key in steps]
        raise Interrupted(_interrupted_line(names, ended), ended) from None
    return [steps[j.key] for j in jobs]


def run_reason(job: Job, folder: Path, nb_dir: Path, force: bool) -> str | None:
    """Why ``job`` runs, or None when it is skipped (its completion record matches, what it reads included)."""
    with_inputs(job, folder)
    if force:
        return "forced (--force)"
    if not job.methods:
        return "it reads every result, so it always runs"
    return why_run(job, folder, nb_dir / f"{job.key}.ipynb")


def _interrupted_line(names: list[str], ended: list[Step]) -> str:
    """``interrupted during 05_lora; nothing half-written; re-run to resume`` (and where its files went)."""
    moved = [s.note for s in ended if s.status == "interrupted" and s.note]
    where = f"during {', '.join(names)}" if names else "between notebooks"
    return (f"[run_all] interrupted {where}" + (f" ({'; '.join(moved)})" if moved else "")
            + "; nothing half-written; re-run to resume")
