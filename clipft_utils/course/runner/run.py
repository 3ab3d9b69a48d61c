"""``run_all``: one run of the course, checked completely before its first notebook starts, then executed."""
from __future__ import annotations

import functools
import signal
from pathlib import Path
from typing import Any, Callable, Sequence

from ...config import get_profile, profile_data_root
from ...errors import ConfigError
from ...paths import ensure_writable
from .. import sections as S
from ..core import results_folder
from ..nbworker import on_stop
from ..params import check_value
from . import jobs as P
from .checks import (check_applies, check_configs, check_data_fits, declared, merge_extra, merge_layers,
                     split_extra)
from .execute import FolderLock, Interrupted, clean_leftovers, execute_all, reads, run_reason
from .fingerprints import Context, add_damaged_producers, fingerprint
from .jobs import Job, Report, Step, describe_training, make_jobs, parse_shard, shard_of, trains_nothing

def _base_params(prof, job: Job, folder: Path, data: str | None, data_root: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"profile": prof.name, "seed": int(job.seed), "results_dir": str(folder)}
    if job.shots is not None:
        params["shots"] = job.shots
    if data is not None:
        params["dataset"] = data
    if data_root is not None:
        params["data_root"] = data_root
    return params


def stoppable(fn: Callable) -> Callable:
    """While ``fn`` runs, Ctrl-C and SIGTERM raise KeyboardInterrupt once (the run stops cleanly, see execute_all)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old = on_stop(signal.SIGINT, signal.SIGTERM)
        try:
            return fn(*args, **kwargs)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
    return wrapper


def dataset_names() -> list[str]:
    """Every registered dataset (plug-ins included): ``--data NAME``; anything else is a folder."""
    from ...datasets import available
    return available()


@stoppable
def run_all(profile: str = "smoke", *, only: Sequence[str] | None = None, force: bool = False,
            device: str = "auto", seeds: Sequence[int] = (0,), root: str | Path | None = None,
            extra: dict | None = None, echo=print, shots: Sequence[int | None] | None = None,
            devices: Sequence[str] | None = None, shard: str | None = None, data: str | None = None,
            data_root: str | None = None, quick: bool = False, compare_only: bool = False,
            dry_run: bool = False) -> Report:
    """Check the whole plan, then execute its notebooks in order; skip those that are up to date; go on after a failure.

    ``extra`` adds notebook parameters (``{"epochs": 1, "lora": {"ranks": [1, 2], "rank": 4}}``: a key naming a
    method or notebook holds that notebook's parameters or method-config fields). ``shots``: a list of k (None =
    every training image) run as a grid with ``seeds``. ``data``: a dataset name or a folder of images.
    """
    prof = get_profile(profile)
    seeds = [int(s) for s in seeds] if seeds else []
    for s in seeds:
        check_value("seed", s)
    if not seeds:
        raise ConfigError("seeds is empty. Fix: pass at least one seed, e.g. --seeds 0.")
    shots = list(shots) if shots else [prof.shots]
    for k in shots:
        check_value("shots", k)
    devices = list(devices or [device])
    for d in devices:
        check_value("device", d)
    shard_spec = parse_shard(shard)
    if data is not None and data_root is None and data not in dataset_names():
        data, data_root = "imagefolder", str(Path(data).expanduser().resolve())
    if data is None and data_root is None:
        data_root = profile_data_root(prof, echo)  # the rehearsal writes its Flowers102-shaped folder once
    ctx = Context(prof.name)
    ds = ctx.dataset(data, data_root, (extra or {}).get("data_split"))  # fail fast on the data (and its split)
    folder = Path(root) / results_folder(prof, ds).name if root else results_folder(prof, ds)
    folder = ensure_writable(folder)
    check_data_fits(ds, shots, folder, prof)  # every k fits the data; the disks have room
    jobs = make_jobs(only if not compare_only else [], seeds, shots, compare=shard_spec is None)
    if compare_only:
        jobs = [j for j in jobs if not j.methods]
    if shard_spec is not None:
        jobs = shard_of(jobs, *shard_spec)
    jobs = add_damaged_producers(jobs, folder, echo)
    planned = list(dict.fromkeys(j.notebook for j in jobs))
    scopes = {nb for nb in planned} | {m for nb in planned for m in dict(P.notebooks())[nb]}
    quick_layer = {k: v for k, v in S.quick_layer().items() if not isinstance(v, dict) or k in scopes} if quick else {}
    layers = split_extra(merge_extra(quick_layer, extra or {}), planned, prof.name) if planned else {}
    trained = [j.group for j in jobs if j.methods and not trains_nothing(j.methods)]
    # the sweeps and combinations run once per grid: at the profile's own point when the grid holds it, else at
    # the most shots (the first seed) -- the point a course run at its default shots has already covered
    home = (-1 if prof.shots is None else prof.shots, seeds[0])
    extras_group = home if home in trained else max(trained, key=lambda g: (g[0] == -1, g[0], -seeds.index(g[1])),
                                                    default=None)
    for job in jobs:
        defaults = S.notebook_defaults(prof.name, job.notebook)
        if job.group != extras_group and job.methods and "extras" in declared(job.notebook):
            defaults.setdefault("extras", False)  # a grid's other points: the method's main row only
        job.params = merge_layers(_base_params(prof, job, folder, data, data_root), defaults, layers.get(job.notebook, {}))
    check_configs(jobs, prof.name)
    check_applies(jobs, prof.name)  # each method applied on the meta device: its refusals now, not in a notebook
    for job in jobs:
        job.fingerprint = fingerprint(job, ctx)
    report = Report(prof.name, folder=folder)
    echo(f"[run_all] profile {prof.name} on {ds.display}: {len(jobs)} notebook run(s) into {folder}")
    if dry_run:
        report.steps = dry_run_steps(jobs, folder, force, prof, ds, echo)
        return report
    nb_dir = ensure_writable(folder / "notebooks")
    with FolderLock(folder, shared=shard_spec is not None):
        clean_leftovers(nb_dir)
        for job in jobs:
            echo(f"[run_all] plan {job.describe()}: {describe_training(job, prof, ds)}")
        try:
            report.steps = execute_all(jobs, folder, nb_dir, devices, force, echo)
        except Interrupted as stop:
            report.steps, report.interrupted = stop.steps, stop.line
            echo(stop.line)
            return report
        if not any(not j.methods for j in jobs):
            if shard_spec is not None:
                echo(f"[run_all] shard {shard_spec[0]}/{shard_spec[1]} done; when every shard has finished, run "
                     "the comparison once: ./run_all.sh --compare (same profile, data and results folder)")
        from ...comparison import write_summary
        try:
            echo("\n" + write_summary(prof.name, folder))
        except Exception as exc:  # noqa: BLE001
            echo(f"[run_all] could not write the summary: {exc}")
            report.steps.append(Step("summary", seeds[0], "failed", error=str(exc)[:300]))
    echo("\n".join(["", f"[run_all] profile {prof.name}: {'all succeeded' if report.ok else 'SOME FAILED'}",
                    *report.lines()]))
    return report


def dry_run_steps(jobs: list[Job], folder: Path, force: bool, prof: Any, ds: Any, echo) -> list[Step]:
    """What each job would do — skipped (up to date) or run, and why — without running anything; a job whose producer
    would run reruns too (what it reads would be rewritten first)."""
    steps, running = [], []
    for job in jobs:
        reason = run_reason(job, folder, folder / "notebooks", force)
        producers = [j.describe() for j in running if reads(job, j)]
        if reason is None and producers and job.methods:
            reason = f"{', '.join(producers)} would run first and rewrite what it reads"
        if reason is None:
            echo(f"  {job.describe()}: up to date, would be skipped")
        else:
            running.append(job)
            echo(f"  {job.describe()}: would run ({reason}): {describe_training(job, prof, ds)}")
        steps.append(Step(job.notebook, job.seed, "planned" if reason else "skipped", shots=job.shots,
                          reason=reason or "up to date"))
    return steps
