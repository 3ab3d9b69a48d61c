"""Run the course's notebooks headlessly with papermill (behind both ``run_all.sh`` and ``python -m clipft_utils run``)."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .config import METHODS, check_method, get_profile
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
        return [f"{s.status:>7}  {s.notebook:<18} seed {s.seed}  {s.seconds:6.1f} s  {s.error}" for s in self.steps]


def plan(only: Sequence[str] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """Notebooks to run for ``only`` (method names; None = all); 07 always comes last."""
    wanted = set(METHODS) if not only else {check_method(m) for m in only}
    return [(nb, methods) for nb, methods in NOTEBOOKS if not methods or wanted & set(methods)]


def _execute(notebook: str, out: Path, parameters: dict) -> None:
    import papermill as pm
    scratch = Path(tempfile.mkdtemp(prefix="clipft-nb-"))
    env = {"IPYTHONDIR": str(scratch / "ipython"), "JUPYTER_RUNTIME_DIR": str(scratch / "runtime")}
    for k, v in env.items():
        os.environ.setdefault(k, v)
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
        raise


def run_all(profile: str = "smoke", *, only: Sequence[str] | None = None, force: bool = False,
            device: str = "auto", seeds: Sequence[int] = (0,), root: str | Path | None = None,
            extra: dict | None = None, echo=print) -> Report:
    """Execute the notebooks in order; skip finished ones unless ``force``; go on after a failure."""
    prof = get_profile(profile)
    folder = ensure_writable(Path(root or results_root()) / prof.name)
    nb_dir = ensure_writable(folder / "notebooks")
    report = Report(prof.name)
    steps = plan(only)
    for notebook, methods in steps:
        for seed in (seeds if methods else seeds[:1]):
            done = methods and all(result_path(folder, m, seed).exists() for m in methods)
            if done and not force:
                report.steps.append(Step(notebook, seed, "skipped", output="results exist (use --force)"))
                echo(f"[run_all] skip {notebook} seed {seed}: results exist (use --force to recompute)")
                continue
            name = notebook if len(seeds) == 1 or not methods else f"{notebook}_seed{seed}"
            params = {"profile": prof.name, "seed": int(seed), "device": device, "results_dir": str(folder),
                      **(extra or {})}
            echo(f"[run_all] run  {notebook} seed {seed} ...")
            start = time.perf_counter()
            try:
                _execute(notebook, nb_dir / f"{name}.ipynb", params)
                report.steps.append(Step(notebook, seed, "ok", time.perf_counter() - start, str(nb_dir / name)))
            except Exception as exc:  # noqa: BLE001 - one failing notebook must not stop the others
                msg = str(exc).strip().splitlines()
                report.steps.append(Step(notebook, seed, "failed", time.perf_counter() - start,
                                         error=(msg[-1] if msg else type(exc).__name__)[:300]))
                echo(f"[run_all] FAILED {notebook} seed {seed}: {report.steps[-1].error}")
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
