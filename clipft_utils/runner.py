"""Run the course's notebooks headlessly with papermill (behind both ``run_all.sh`` and ``python -m clipft_utils run``)."""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

from .config import METHODS, check_method, get_profile
from .errors import ConfigError
from .paths import PROJECT_ROOT, ensure_writable, results_root
from .results import result_path

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
# notebook -> the result files (methods) it must leave behind; 07 only reads results.
NOTEBOOKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("01_zero_shot", ("zero_shot",)),
    ("02_linear_probe", ("linear_probe",)),
    ("03_bitfit", ("bitfit",)),
    ("04_prefix_tuning", ("prefix_tuning",)),
    ("05_lora", ("lora",)),
    ("06_full_finetune", ("full_finetune",)),
    ("07_comparison", ()),
)


@dataclass
class Step:
    """One notebook execution and how it ended."""

    notebook: str
    seed: int
    status: str          # "ok", "skipped", "failed"
    seconds: float = 0.0
    output: str = ""
    error: str = ""
    cpu_seconds: float | None = None  # CPU time of the notebook's kernel (tells load from work on a busy machine)


@dataclass
class Report:
    """All steps of a run; ``ok`` is False if any notebook failed."""

    profile: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps)

    def lines(self) -> list[str]:
        """Human-readable status lines."""
        cpu = lambda s: f"  (CPU {s.cpu_seconds:6.1f} s)" if s.cpu_seconds is not None else ""  # noqa: E731
        return [f"{s.status:>7}  {s.notebook:<18} seed {s.seed}  {s.seconds:6.1f} s{cpu(s)}  {s.error}"
                for s in self.steps]


def plan(only: Sequence[str] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """Notebooks to run for ``only`` (method names; None = all); 07 always comes last."""
    wanted = set(METHODS) if not only else {check_method(m) for m in only}
    return [(nb, methods) for nb, methods in NOTEBOOKS if not methods or wanted & set(methods)]


@contextlib.contextmanager
def _kernel_env(scratch: Path) -> Iterator[None]:
    """The environment notebook kernels inherit: private IPython/Jupyter dirs, inline figures, headless flag."""
    keys = ("IPYTHONDIR", "JUPYTER_RUNTIME_DIR", "CLIPFT_HEADLESS", "MPLBACKEND", "PYTHONPATH")
    saved = {k: os.environ.get(k) for k in keys}
    # the kernels import this checkout's clipft_utils, whatever is (or was once) installed in the environment
    os.environ["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), *filter(None, [saved["PYTHONPATH"]])])
    os.environ.setdefault("IPYTHONDIR", str(scratch / "ipython"))
    os.environ.setdefault("JUPYTER_RUNTIME_DIR", str(scratch / "runtime"))
    os.environ["CLIPFT_HEADLESS"] = "1"   # notebooks show static figures instead of widgets
    os.environ.pop("MPLBACKEND", None)    # Agg would keep every figure out of the executed notebooks
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _outputs(folder: Path) -> dict[Path, int]:
    """Result JSONs and predictions in a run folder, with their modification times."""
    files = [*folder.glob("*.json"), *folder.glob("predictions/*.npz")]
    return {p: p.stat().st_mtime_ns for p in files if p.is_file()}


def _quarantine(folder: Path, before: dict[Path, int], notebook: str) -> list[Path]:
    """Move what a failed notebook wrote to ``failed/<notebook>/``, so no result of a failed run counts as done."""
    moved = []
    for path, mtime in _outputs(folder).items():
        if before.get(path) != mtime:
            dest = folder / "failed" / notebook / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            moved.append(dest)
    return moved


def _error_line(exc: BaseException) -> str:
    """One line naming the error (papermill's ``ename: evalue`` when it has them)."""
    ename, evalue = getattr(exc, "ename", None), str(getattr(exc, "evalue", "") or "")
    if ename:
        return f"{ename}: {(evalue.strip().splitlines() or [''])[-1]}"[:300]
    msg = str(exc).strip().splitlines()
    return (msg[-1] if msg else type(exc).__name__)[:300]


def _children_cpu() -> float | None:
    """CPU seconds used so far by finished child processes (the notebook kernels); None where unknown."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _execute(notebook: str, out: Path, parameters: dict) -> None:
    """Run one notebook into ``out``; on failure keep the executed copy as ``*.FAILED.ipynb`` and re-raise."""
    import papermill as pm
    # kernels start in notebooks/: make sure they import this checkout's clipft_utils, installed or not
    paths = [str(PROJECT_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    tmp = out.with_name(f".{out.stem}.running.ipynb")
    failed = out.with_name(f"{out.stem}.FAILED.ipynb")
    try:
        pm.execute_notebook(str(NOTEBOOK_DIR / f"{notebook}.ipynb"), str(tmp), parameters=parameters,
                            cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False)
        os.replace(tmp, out)
        failed.unlink(missing_ok=True)
    except BaseException:
        if tmp.exists():
            os.replace(tmp, failed)
        out.unlink(missing_ok=True)  # an older successful copy would pretend this run worked
        raise


def _parameters(notebook: str, methods: tuple[str, ...], base: dict, extra: dict | None) -> dict:
    """``base`` + ``extra``; an ``extra`` entry keyed by a method or notebook name (a dict) applies to that notebook only."""
    scoped = set(METHODS) | {nb for nb, _ in NOTEBOOKS}
    params = dict(base)
    for key, value in (extra or {}).items():
        if key not in scoped:
            params[key] = value
        elif key == notebook or key in methods:
            if not isinstance(value, dict):
                raise ConfigError(f"extra[{key!r}] must be a dict of notebook parameters, got {value!r}.")
            params.update(value)
    return params


def run_all(profile: str = "smoke", *, only: Sequence[str] | None = None, force: bool = False,
            device: str = "auto", seeds: Sequence[int] = (0,), root: str | Path | None = None,
            extra: dict | None = None, echo=print) -> Report:
    """Execute the notebooks in order; skip finished ones unless ``force``; go on after a failure.

    ``extra`` adds notebook parameters (e.g. ``{"epochs": 1, "test_per_class": 5}``); a key naming a method or
    notebook holds parameters for that notebook only (e.g. ``{"lora": {"ranks": [1, 2]}}``).
    """
    prof = get_profile(profile)
    seeds = list(seeds)
    if not seeds:
        raise ConfigError("seeds is empty. Fix: pass at least one seed, e.g. --seeds 0.")
    folder = ensure_writable(Path(root or results_root()) / prof.name)
    nb_dir = ensure_writable(folder / "notebooks")
    report = Report(prof.name)
    steps = plan(only)
    with tempfile.TemporaryDirectory(prefix="clipft-nb-") as scratch, _kernel_env(Path(scratch)):
        for notebook, methods in steps:
            for seed in (seeds if methods else seeds[:1]):
                report.steps.append(_run_one(notebook, methods, seed, seeds, folder, nb_dir, prof.name, device,
                                             force, extra, echo))
    from .comparison import write_summary
    try:
        table = write_summary(prof.name, folder)
        echo(f"\n{table}")
    except Exception as exc:  # noqa: BLE001
        echo(f"[run_all] could not write the summary: {exc}")
        report.steps.append(Step("summary", seeds[0], "failed", error=str(exc)[:300]))
    echo("\n".join(["", f"[run_all] profile {prof.name}: {'all succeeded' if report.ok else 'SOME FAILED'}",
                    *report.lines()]))
    return report


def _run_one(notebook: str, methods: tuple[str, ...], seed: int, seeds: Sequence[int], folder: Path,
             nb_dir: Path, profile: str, device: str, force: bool, extra: dict | None, echo) -> Step:
    """Run (or skip) one notebook for one seed and say how it ended."""
    done = methods and all(result_path(folder, m, seed).exists() for m in methods)
    if done and not force:
        echo(f"[run_all] skip {notebook} seed {seed}: results exist (use --force to recompute)")
        return Step(notebook, seed, "skipped", output="results exist (use --force)")
    name = notebook if len(seeds) == 1 or not methods else f"{notebook}_seed{seed}"
    params = _parameters(notebook, methods, {"profile": profile, "seed": int(seed), "device": device,
                                             "results_dir": str(folder)}, extra)
    echo(f"[run_all] run  {notebook} seed {seed} ...")
    before, start, cpu = _outputs(folder), time.perf_counter(), _children_cpu()
    used = lambda: None if cpu is None else _children_cpu() - cpu  # noqa: E731
    try:
        _execute(notebook, nb_dir / f"{name}.ipynb", params)
        return Step(notebook, seed, "ok", time.perf_counter() - start, str(nb_dir / f"{name}.ipynb"),
                    cpu_seconds=used())
    except Exception as exc:  # noqa: BLE001 - one failing notebook must not stop the others
        moved = _quarantine(folder, before, name)
        step = Step(notebook, seed, "failed", time.perf_counter() - start,
                    str(nb_dir / f"{name}.FAILED.ipynb"), _error_line(exc), used())
        echo(f"[run_all] FAILED {notebook} seed {seed} after {step.seconds:.0f} s: {step.error}")
        echo(f"[run_all]   executed copy: {step.output}"
             + (f"; {len(moved)} file(s) it wrote moved to {folder / 'failed' / name}" if moved else ""))
        return step
