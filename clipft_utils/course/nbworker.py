"""One notebook through papermill, in a process of its own: ``python -m clipft_utils.course.nbworker SRC DST PARAMS``.

The runner starts one of these per job. It imports papermill and nothing of the course (torch is imported by
the notebook's kernel, not here), so each job's start costs what papermill costs and no more (measured on 2
cores: 0.6 s to import, against 5 s when the worker was ``clipft_utils.runner``, which imports torch).
Signal handling and the error line are shared with the runner.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any


def _raise_interrupt(signum: int, frame: Any) -> None:
    """A signal handler: the first INT/TERM raises KeyboardInterrupt; further ones are ignored while it unwinds."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def on_stop(*signals: int) -> dict[int, Any]:
    """Make ``signals`` raise KeyboardInterrupt once (also when the shell started us with SIGINT ignored); returns
    the old handlers. Only the main thread can set handlers: elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_interrupt) for sig in signals}


def error_line(exc: BaseException) -> str:
    """One line naming the error (papermill's ``ename: evalue`` when it has them)."""
    ename, evalue = getattr(exc, "ename", None), str(getattr(exc, "evalue", "") or "")
    if ename:
        return f"{ename}: {(evalue.strip().splitlines() or [''])[-1]}"[:300]
    msg = str(exc).strip().splitlines()
    return (msg[-1] if msg else type(exc).__name__)[:300]


def _execute(pm: Any, source: str, target: str, parameters: str, cwd: str) -> None:
    """papermill on one notebook; a kernel that fails to start is started once more (nothing of the notebook ran)."""
    for attempt in (1, 2):
        try:
            pm.execute_notebook(source, target, parameters=json.loads(parameters), cwd=cwd, kernel_name="python3",
                                progress_bar=False)
            break
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - a kernel that never started is tried once more
            if attempt == 2 or isinstance(exc, pm.PapermillExecutionError) or _ran_a_cell(target):
                raise
            print(f"the kernel did not start ({error_line(exc)}): starting it once more", flush=True)


def _ran_a_cell(target: str) -> bool:
    """Whether papermill started any cell of ``target`` (a failure before that is the kernel's start: two kernels
    starting at once can race for the same free port)."""
    try:
        cells = json.loads(open(target, encoding="utf-8").read())["cells"]
    except (OSError, ValueError, KeyError):
        return False
    return any(c.get("metadata", {}).get("papermill", {}).get("status") not in (None, "pending") for c in cells)


def run(source: str, target: str, parameters: str, cwd: str) -> int:
    """Execute ``source`` into ``target`` with ``parameters`` (JSON); 0, 1 (one error line printed) or 130."""
    # jsonschema (under nbformat) imports rfc3987_syntax when it is installed (jupyterlab brings it), which builds
    # an Earley parser at import: ~1.5 s per job for IRI formats that no notebook schema uses.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import papermill as pm
    on_stop(signal.SIGINT, signal.SIGTERM)  # the runner forwards Ctrl-C; the kernel is in its own session
    try:
        _execute(pm, source, target, parameters, cwd)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the runner reports the last line
        print(error_line(exc), flush=True)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run(*sys.argv[1:5]))
