"""What defines a job and what it left: its fingerprint (parameters, notebook, code, weights, data), its completion
record (every file it wrote, hashed; the command that remakes it; the options it was given), and the check of the
files a job reads from other jobs before any work. The record's format is the library's (``clipft_utils.records``)."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

from ...config import PROFILES, get_profile
from ...errors import ConfigError, ResultsError
from ...paths import PROJECT_ROOT, atomic_write_text, hash_file
from ...records import quoted, read_record, record_path, remake_command
from ...results import point_suffix
from .. import sections as S
from . import jobs as P
from .jobs import Job

NOT_FINGERPRINTED = ("device", "results_dir")  # where a job runs, not what it computes

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def code_version() -> str:
    """A hash of the library's code and assets: a result made by other code is not reused."""
    h = hashlib.sha256()
    pkg = PROJECT_ROOT / "clipft_utils"
    for path in sorted(p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(path.relative_to(pkg).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class Context:
    """What a run's fingerprints share, computed once: the code, and per (model, weights) and (dataset, root)."""

    def __init__(self, profile: str) -> None:
        self.profile, self.code = get_profile(profile), code_version()
        self._weights: dict[tuple, str] = {}
        self._data: dict[tuple, Any] = {}

    def weights_id(self, model: str | None, pretrained: str | None) -> str:
        from ...models import check_model_name, load_tokenizer, resolve_weights
        key = (model or self.profile.model, self.profile.pretrained if pretrained is None else pretrained)
        if key not in self._weights:
            check_model_name(key[0])
            self._weights[key] = resolve_weights(*key)[1]  # fails fast offline, before any notebook
            load_tokenizer(key[0])  # every method notebook reads the class names through the text tower
        return self._weights[key]

    def dataset(self, name: str | None, root: str | None, split: Any = None):
        """The run's dataset, checked once (with its split: ``data_split``, one per run so results never mix)."""
        from ...datasets import check_noting, get_dataset
        from ...datasets.base import SplitSpec
        key, spec = (name or self.profile.dataset, root), None if split is None else SplitSpec.parse(split)
        if key not in self._data:  # a missing or broken dataset is an error now, not after minutes of work
            self._data[key] = (spec, check_noting(get_dataset(*key, split=split)))
        elif self._data[key][0] != spec:
            raise ConfigError(f"data_split={split!r} for one notebook but {self._data[key][0] or 'the default'} for "
                              "another: one run uses one split. Fix: pass it once for every notebook (--split, or "
                              "-p data_split=… without a METHOD. prefix).")
        return self._data[key][1]


def fingerprint(job: Job, ctx: Context) -> dict[str, Any]:
    """What defines a job's results: its parameters, notebook, code, weights and data."""
    p = job.params
    params = {k: v for k, v in sorted(p.items()) if k not in NOT_FINGERPRINTED}
    return {"params": params, "notebook": _sha((P.NOTEBOOK_DIR / f"{job.notebook}.ipynb").read_bytes())[:16],
            "code": ctx.code, "weights": ctx.weights_id(p.get("model"), p.get("pretrained")),
            "data": ctx.dataset(p.get("dataset"), p.get("data_root"), p.get("data_split")).identity}


def job_record(folder: Path, job: Job) -> Path:
    return record_path(folder, job.key)


def _diff(old: dict, new: dict) -> str:
    """What changed between two fingerprints, in words."""
    out = []
    for part in ("params", "notebook", "code", "weights", "data", "inputs"):
        if old.get(part, {} if part == "inputs" else None) == new.get(part, {} if part == "inputs" else None):
            continue
        if part == "inputs":
            a, b = old.get("inputs", {}), new.get("inputs", {})
            changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            out.append(f"what it reads from {', '.join(changed)} changed since it ran")
        elif part == "params":
            a, b = old.get("params", {}), new.get("params", {})
            changes = [f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            out.append("parameters changed: " + ", ".join(changes))
        else:
            out.append({"notebook": "the notebook changed", "code": "the library code changed",
                        "weights": "the model weights changed", "data": "the data changed"}[part])
    return "; ".join(out)


def _covering(recorded: dict, asked: dict) -> dict:
    """A run with its extras (sweeps, variants, combinations) also holds the main row a run without them asks for."""
    r, a = dict(recorded.get("params", {})), asked.get("params", {})
    if a.get("extras") is False and r.get("extras", True) is True:
        r["extras"] = False
        return {**recorded, "params": r}
    return recorded


def why_run(job: Job, folder: Path, executed: Path) -> str | None:
    """None when the job's completion record matches what is asked (skip it), else the reason to run it."""
    path = job_record(folder, job)
    if not path.exists():
        return "no completion record" + (" (an earlier run did not finish)" if executed.exists() else "")
    record = read_record(path)
    if record is None:
        return "its completion record is unreadable"
    change = _diff(_covering(record.get("fingerprint", {}), job.fingerprint), job.fingerprint)
    if change:
        return change
    if not executed.exists():
        return f"its executed notebook {executed.name} is missing"
    return damage(folder, record)


def damage(folder: Path, record: dict) -> str | None:
    """The first file a completion record lists that is missing or changed since it was written, in words."""
    for rel, digest in record.get("files", {}).items():
        f = folder / rel
        if not f.exists():
            return f"{rel} is missing"
        if hash_file(f) != digest:
            return f"{rel} changed since it was written"
    return None


def write_record(folder: Path, job: Job, written: Iterable[Path], executed: Path, seconds: float, device: str) -> Path:
    """The completion record, written last: the job's fingerprint and every file it wrote, with hashes."""
    files = {}
    for f in sorted({Path(p) for p in written}):
        try:
            rel = f.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            continue  # caches and data outside the results folder
        if rel.startswith(("checkpoints/", "runs/", "failed/")) or not f.exists():
            continue
        files[rel] = hash_file(f)
    record = {"job": job.key, "notebook": job.notebook, "seed": job.seed, "shots": job.shots,
              "fingerprint": job.fingerprint, "files": files, "executed": executed.name,
              "remake": _command(job.notebook, job.fingerprint.get("params", {})),
              "given": [[name, _scoped(job.notebook, name), value]
                        for name, value in _given(job.notebook, job.fingerprint.get("params", {}))],
              "seconds": round(seconds, 1), "device": device,
              "finished": _dt.datetime.now().isoformat(timespec="seconds")}
    return atomic_write_text(job_record(folder, job), json.dumps(record, indent=1))


# ----------------------------------------------------------------------------- inputs from other jobs, checked first
def with_inputs(job: Job, folder: Path) -> Job:
    """``job`` with the content of what it reads from other jobs in its fingerprint (``inputs``: per producer's
    completion record, a digest of the hashes of the files it wrote): taken when the job is about to run, after its
    producers ran, so a producer that rewrote its files puts it back in the plan."""
    if job.methods:
        digests = {}
        for path in input_records(job, folder):
            record = read_record(path) or {}
            digests[path.stem] = _sha(json.dumps(record.get("files", {}), sort_keys=True).encode())[:16]
        job.fingerprint["inputs"] = digests
    return job


def input_records(job: Job, folder: Path) -> list[Path]:
    """Completion records of the jobs whose files ``job`` reads: 07 every one, 06 those of 01, 02, 05 at its point."""
    runs = folder / "runs"
    if not job.methods:
        return sorted(p for p in runs.glob("*.json") if p.stem != job.key)
    deps = dict(P.notebooks())
    keys = [nb + point_suffix(None if P.trains_nothing(deps.get(nb, ())) else job.shots, job.seed)
            for nb in P.depends().get(job.notebook, ())]
    return [runs / f"{k}.json" for k in keys if (runs / f"{k}.json").exists()]


def add_damaged_producers(jobs: list[Job], folder: Path, echo) -> list[Job]:
    """Before any work: a file a planned job reads that is missing or changed since its producer's completion record
    puts that producer in the plan (said here), so it is remade before it is read."""
    planned, added = {j.key for j in jobs}, []
    for job in jobs:
        for path in input_records(job, folder):
            record = read_record(path)
            if record is None:
                raise ResultsError(f"The completion record '{path}' is unreadable, so the files {job.notebook} reads "
                                   "cannot be checked. Fix: delete it (its notebook then counts as not run).")
            why = damage(folder, record)
            if why is None:
                continue
            nb = record.get("notebook")
            if nb not in dict(P.notebooks()):
                raise ResultsError(f"{why} ({folder}), and {job.notebook} reads it. Fix: "
                                   f"{remake_command(folder / why.split()[0])}.")
            producer = Job(nb, dict(P.notebooks())[nb], int(record.get("seed", 0)), record.get("shots"))
            if producer.key not in planned:  # a planned producer reruns anyway: why_run finds the same damage
                planned.add(producer.key)
                added.append(producer)
                echo(f"[run_all] also run {producer.describe()}: {why}, and {job.describe()} reads it")
    order = {nb: i for i, (nb, _) in enumerate(P.notebooks())}
    return sorted(jobs + added, key=lambda j: order[j.notebook]) if added else jobs


BASE_PARAMS = ("profile", "seed", "shots", "dataset", "data_root", "results_dir", "device", "extras")


def _command(notebook: str, params: dict[str, Any]) -> str:
    """``./run_all.sh`` options that run ``notebook`` with ``params`` (a completion record's)."""
    methods, prof = dict(P.notebooks()).get(notebook, ()), params.get("profile")
    flag = PROFILES[prof].flag if prof in PROFILES else "" if prof is None else None
    parts = ["./run_all.sh", *([flag] if flag else [] if flag == "" else ["--profile", str(prof)])]
    parts += ["--only", methods[0]] if methods else ["--compare"]  # one of its methods plans the notebook
    parts += ["--seeds", str(params.get("seed", 0))]
    parts += ["--shots", str(params["shots"])] if params.get("shots") is not None else []
    if params.get("dataset"):
        parts += ["--data", str(params["data_root"] if params["dataset"] == "imagefolder" else params["dataset"])]
    parts += [a for name, value in _given(notebook, params) for a in ("-p", f"{_scoped(notebook, name)}={value}")]
    return quoted(parts)


def _scope(notebook: str) -> str:
    """The ``-p SCOPE.name`` prefix that reaches ``notebook`` alone: its method, or its own name."""
    return (dict(P.notebooks()).get(notebook) or (notebook,))[0]


def _scoped(notebook: str, name: str) -> str:
    """``SCOPE.name`` for a parameter of ``notebook`` (a name from ``_given`` that is scoped already stays)."""
    return name if "." in name else f"{_scope(notebook)}.{name}"


def _given(notebook: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The parameters a run of ``notebook`` was given beyond the plan's own (profile, data, shots, seed and the
    profile's defaults), as (name, JSON value); a ``config`` dict gives one entry per field."""
    prof = params.get("profile")
    defaults = S.notebook_defaults(prof, notebook) if prof in PROFILES else {}
    out = []
    methods = dict(P.notebooks()).get(notebook, ())
    for name, value in params.items():
        if name == "config" and isinstance(value, dict):
            out += [(k, json.dumps(v)) for k, v in value.items()]
        elif name.endswith("_config") and name[:-len("_config")] in methods and isinstance(value, dict):
            out += [(f"{name[:-len('_config')]}.{k}", json.dumps(v)) for k, v in value.items()]  # already scoped
        elif name not in BASE_PARAMS and defaults.get(name) != value:
            out.append((name, json.dumps(value)))
    return out
