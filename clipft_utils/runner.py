"""Run the course's notebooks headlessly with papermill (behind both ``run_all.sh`` and ``python -m clipft_utils run``).

A run is a plan of jobs — one notebook for one (shots, seed) — checked completely before the first one starts:
every ``-p`` parameter must be declared by a planned notebook (or be a field of a method's config, scoped as
``lora.rank=4``) and valid; the data, the weights and the devices must be there. A job is skipped only when its
completion record matches: same parameters, code, notebook, model weights and data, and every file it wrote
still there unchanged; otherwise it runs and the runner says why. Jobs can be spread over several devices (one
kernel each) or split into deterministic shards for a cluster; they all write atomically into one results folder.
"""
from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from . import methods as M
from .config import PROFILES, check_method, get_profile, make_config, notebook_defaults
from .errors import ConfigError, ResultsError
from .nbworker import error_line as _error_line, on_stop
from .paths import PROJECT_ROOT, atomic_write_text, ensure_writable, file_lock, hash_file, results_root
from .results import point_suffix

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
COMPARISON = "07_comparison"


def notebooks() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(notebook, the methods its job trains) in course order, from the method registry; the comparison last."""
    return (*M.notebooks().items(), (COMPARISON, ()))


def depends() -> dict[str, tuple[str, ...]]:
    """Notebooks that read what other notebooks of the same (shots, seed) wrote (06 combines 01, 02 and 05; from
    each method's ``reads``); 07 reads all."""
    return {m.notebook: m.reads for m in M.registry() if m.reads}


def config_param(notebook: str, method: str) -> str:
    """The notebook parameter that holds ``method``'s config overrides: ``config`` for the notebook's first method,
    ``<method>_config`` for each method that is a section of another's notebook (e.g. ``coop_config`` in 04)."""
    methods = dict(notebooks()).get(notebook, ())
    return "config" if not methods or methods[0] == method else f"{method}_config"


def _trains_nothing(methods: Sequence[str]) -> bool:
    """A job whose methods fit nothing (zero-shot): it runs once per seed, whatever the shots."""
    return bool(methods) and not any(M.get(m).trains for m in methods)
NOT_FINGERPRINTED = ("device", "results_dir")  # where a job runs, not what it computes
NOISE = ("Kernel is running over TCP without encryption",)


# ----------------------------------------------------------------------------- the plan
@dataclass
class Job:
    """One notebook for one (shots, seed), with the parameters it will get."""

    notebook: str
    methods: tuple[str, ...]
    seed: int
    shots: int | None
    params: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Its name in file names: ``05_lora``, ``05_lora_shots4_seed1``, ..."""
        return self.notebook + point_suffix(self.shots, self.seed)

    @property
    def group(self) -> tuple[int, int]:
        """Jobs of one group depend on each other; groups are independent (shards split by group)."""
        return (-1 if self.shots is None else self.shots, self.seed)

    def describe(self) -> str:
        return self.notebook + ("" if self.shots is None else f" shots {self.shots}") + f" seed {self.seed}"


@dataclass
class Step:
    """One job and how it ended."""

    notebook: str
    seed: int
    status: str          # "ok", "skipped", "failed", "interrupted"; "planned" in a dry run
    seconds: float = 0.0
    output: str = ""
    error: str = ""
    cpu_seconds: float | None = None
    shots: int | None = None
    reason: str = ""     # why it ran (or why it was skipped)
    note: str = ""       # e.g. an earlier failure's files removed


@dataclass
class Report:
    """All steps of a run; ``ok`` is False if any notebook failed."""

    profile: str
    steps: list[Step] = field(default_factory=list)
    folder: Path | None = None
    interrupted: str = ""  # the line said when Ctrl-C (SIGINT) or SIGTERM stopped the run

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(s.status != "failed" for s in self.steps)

    def lines(self) -> list[str]:
        """Human-readable status lines."""
        def line(s: Step) -> str:
            cpu = f"  (CPU {s.cpu_seconds:6.1f} s)" if s.cpu_seconds is not None else ""
            shots = "" if s.shots is None else f" shots {s.shots:<3}"
            return f"{s.status:>7}  {s.notebook:<18}{shots} seed {s.seed}  {s.seconds:6.1f} s{cpu}  {s.error or s.note}"
        return [line(s) for s in self.steps]


def plan(only: Sequence[str] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """Notebooks to run for ``only`` (method names; None = all); 07 always comes last."""
    wanted = set(M.names()) if not only else {check_method(m) for m in only}
    return [(nb, methods) for nb, methods in notebooks() if not methods or wanted & set(methods)]


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/N"`` (1-based) -> (i, N)."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        i = n = 0
    if not 1 <= i <= n:
        raise ConfigError(f"--shard must be i/N with 1 <= i <= N (e.g. 2/4), got {shard!r}.")
    return i, n


def make_jobs(only: Sequence[str] | None, seeds: Sequence[int], shots: Sequence[int | None],
              compare: bool = True) -> list[Job]:
    """Every (notebook, shots, seed); zero-shot trains nothing, so it runs per seed at shots=None only."""
    jobs = []
    for notebook, methods in plan(only):
        if not methods:
            if compare:
                jobs.append(Job(notebook, methods, seeds[0], None))
            continue
        grid = [None] if _trains_nothing(methods) else shots
        jobs += [Job(notebook, methods, seed, k) for k in grid for seed in seeds]
    return jobs


# ----------------------------------------------------------------------------- parameters, checked first
@functools.lru_cache(maxsize=None)
def _declared(path: str, mtime: int) -> dict[str, dict[str, Any]]:
    import papermill as pm
    return pm.inspect_notebook(path)


def declared(notebook: str) -> dict[str, dict[str, Any]]:
    """The parameters a notebook's ``parameters`` cell declares (papermill's reading of it)."""
    path = NOTEBOOK_DIR / f"{notebook}.ipynb"
    return _declared(str(path), path.stat().st_mtime_ns)


def _scoped_notebook(scope: str, notebooks: Sequence[str]) -> str | None:
    """The planned notebook a scope names (a method or a notebook name)."""
    for nb, methods in globals()["notebooks"]():
        if (scope == nb or scope in methods) and nb in notebooks:
            return nb
    return None


def split_extra(extra: dict | None, notebooks: Sequence[str], profile: str) -> dict[str, dict[str, Any]]:
    """Per-notebook parameters from ``extra``; unknown names and bad values are ConfigErrors naming the fix."""
    from .notebook_params import check_value
    specs = {nb: declared(nb) for nb in notebooks}
    per_nb: dict[str, dict[str, Any]] = {nb: {} for nb in notebooks}
    scopes = set(M.names()) | {nb for nb, _ in globals()["notebooks"]()}
    for key, value in (extra or {}).items():
        if key in scopes:
            nb = _scoped_notebook(key, notebooks)
            if nb is None:
                raise ConfigError(f"-p {key}.… scopes to '{key}', which is not in this run's plan "
                                  f"({', '.join(notebooks)}).")
            if not isinstance(value, dict):
                raise ConfigError(f"extra[{key!r}] must be a dict of notebook parameters, got {value!r}.")
            for name, v in value.items():
                _place(per_nb[nb], nb, specs[nb], name, v, key, profile)
            continue
        users = [nb for nb in notebooks if key in specs[nb]]
        if not users:
            raise ConfigError(_unknown(key, specs))
        for nb in users:
            check_value(key, value, specs[nb][key]["default"])
            per_nb[nb][key] = value
    return per_nb


def _place(params: dict, nb: str, spec: dict, name: str, value: Any, scope: str, profile: str) -> None:
    """A scoped ``scope.name=value``: a notebook parameter, or a field of the notebook's method config."""
    from .notebook_params import check_value
    if name in spec:
        check_value(name, value, spec[name]["default"])
        params[name] = value
        return
    methods = dict(notebooks())[nb]
    method = scope if scope in methods else next(iter(methods), None)
    fields = M.get(method).config_fields() if method else set()
    if name not in fields:
        raise ConfigError(f"'{scope}.{name}' is neither a parameter of {nb} ({', '.join(spec)}) nor a field of "
                          f"{method or 'its'} config ({', '.join(sorted(fields)) or 'none'}).")
    key = config_param(nb, method)
    if key not in spec:
        raise ConfigError(f"'{scope}.{name}' sets {method}'s config, but {nb} declares no `{key}` parameter. Fix: add "
                          f"`{key} = None` to the parameters cell of {nb} (the method's notebook section reads it).")
    params.setdefault(key, {})[name] = value


def _unknown(key: str, specs: dict[str, dict]) -> str:
    """The error for a ``-p`` that no planned notebook declares."""
    names = sorted({n for s in specs.values() for n in s})
    fields = [m.name for m in M.registry() if key in m.config_fields()]
    hint = (f" '{key}' is a field of the config of {', '.join(fields)}: scope it, e.g. -p {fields[-1]}.{key}=…"
            if fields else "")
    return (f"-p {key}=… is not a parameter of any notebook in this run.{hint} The notebooks' parameters are: "
            f"{', '.join(names)} (scope one to a notebook as METHOD.NAME, e.g. lora.ranks=[1,2]).")


def check_configs(jobs: Sequence[Job], profile: str) -> None:
    """Each job's method config must build from its parameters (epochs, batch size, scoped fields)."""
    for job in jobs:
        for method in job.methods:
            p = job.params
            values = {k: p[k] for k in ("epochs", "batch_size") if p.get(k) is not None}
            values.update(p.get(config_param(job.notebook, method)) or {})
            spec = M.get(method)
            values = dict(spec.fixed_config) | values  # fields its notebook sets itself (06: the warm-up)
            values = {k: v for k, v in values.items() if k in spec.config_fields()}
            try:
                make_config(method, profile, **values)
            except ConfigError as exc:
                raise ConfigError(f"{job.notebook}: {exc}") from None


# ----------------------------------------------------------------------------- fingerprints and records
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
        from .models import check_model_name, resolve_weights
        key = (model or self.profile.model, self.profile.pretrained if pretrained is None else pretrained)
        if key not in self._weights:
            check_model_name(key[0])
            self._weights[key] = resolve_weights(*key)[1]  # fails fast offline, before any notebook
        return self._weights[key]

    def dataset(self, name: str | None, root: str | None, split: Any = None):
        """The run's dataset, checked once (with its split: ``data_split``, one per run so results never mix)."""
        from .datasets import check_noting, get_dataset
        from .datasets.base import SplitSpec
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
    return {"params": params, "notebook": _sha((NOTEBOOK_DIR / f"{job.notebook}.ipynb").read_bytes())[:16],
            "code": ctx.code, "weights": ctx.weights_id(p.get("model"), p.get("pretrained")),
            "data": ctx.dataset(p.get("dataset"), p.get("data_root"), p.get("data_split")).identity}


def _record_path(folder: Path, job: Job) -> Path:
    return folder / "runs" / f"{job.key}.json"


def _diff(old: dict, new: dict) -> str:
    """What changed between two fingerprints, in words."""
    out = []
    for part in ("params", "notebook", "code", "weights", "data"):
        if old.get(part) == new.get(part):
            continue
        if part == "params":
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
    path = _record_path(folder, job)
    if not path.exists():
        return "no completion record" + (" (an earlier run did not finish)" if executed.exists() else "")
    record = _read_record(path)
    if record is None:
        return "its completion record is unreadable"
    change = _diff(_covering(record.get("fingerprint", {}), job.fingerprint), job.fingerprint)
    if change:
        return change
    if not executed.exists():
        return f"its executed notebook {executed.name} is missing"
    return damage(folder, record)


def _read_record(path: Path) -> dict | None:
    """A completion record, or None when it cannot be read."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


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
              "seconds": round(seconds, 1), "device": device,
              "finished": _dt.datetime.now().isoformat(timespec="seconds")}
    return atomic_write_text(_record_path(folder, job), json.dumps(record, indent=1))


# ----------------------------------------------------------------------------- inputs from other jobs, checked first
def input_records(job: Job, folder: Path) -> list[Path]:
    """Completion records of the jobs whose files ``job`` reads: 07 every one, 06 those of 01, 02, 05 at its point."""
    runs = folder / "runs"
    if not job.methods:
        return sorted(p for p in runs.glob("*.json") if p.stem != job.key)
    deps = dict(notebooks())
    keys = [nb + point_suffix(None if _trains_nothing(deps.get(nb, ())) else job.shots, job.seed)
            for nb in depends().get(job.notebook, ())]
    return [runs / f"{k}.json" for k in keys if (runs / f"{k}.json").exists()]


def add_damaged_producers(jobs: list[Job], folder: Path, echo) -> list[Job]:
    """Before any work: a file a planned job reads that is missing or changed since its producer's completion record
    puts that producer in the plan (said here), so it is remade before it is read."""
    planned, added = {j.key for j in jobs}, []
    for job in jobs:
        for path in input_records(job, folder):
            record = _read_record(path)
            if record is None:
                raise ResultsError(f"The completion record '{path}' is unreadable, so the files {job.notebook} reads "
                                   "cannot be checked. Fix: delete it (its notebook then counts as not run).")
            why = damage(folder, record)
            if why is None:
                continue
            nb = record.get("notebook")
            if nb not in dict(notebooks()):
                raise ResultsError(f"{why} ({folder}), and {job.notebook} reads it. Fix: "
                                   f"{remake_command(folder / why.split()[0])}.")
            producer = Job(nb, dict(notebooks())[nb], int(record.get("seed", 0)), record.get("shots"))
            if producer.key not in planned:  # a planned producer reruns anyway: why_run finds the same damage
                planned.add(producer.key)
                added.append(producer)
                echo(f"[run_all] also run {producer.describe()}: {why}, and {job.describe()} reads it")
    order = {nb: i for i, (nb, _) in enumerate(notebooks())}
    return sorted(jobs + added, key=lambda j: order[j.notebook]) if added else jobs


BASE_PARAMS = ("profile", "seed", "shots", "dataset", "data_root", "results_dir", "device", "extras")


def remake_command(path: str | Path) -> str:
    """The ``./run_all.sh`` command that rewrites ``path``, a file of a results folder: from the completion record
    that lists it, else from its run name (``<method>[-<variant>][_shots<k>]_seed<s>``)."""
    path = Path(path).absolute()
    folder = next((p for p in path.parents if (p / "runs").is_dir()), None)
    if folder is not None:
        rel = path.relative_to(folder).as_posix()
        for record in filter(None, map(_read_record, sorted((folder / "runs").glob("*.json")))):
            if rel in record.get("files", {}):
                return _command(record.get("notebook", ""), record.get("fingerprint", {}).get("params", {}))
    m = re.match(r"(?P<method>[a-z_]+?)(?:-.+?)?(?:_shots(?P<shots>\d+))?_seed(?P<seed>\d+)$", path.stem)
    nb = next((nb for nb, methods in notebooks() if m and m["method"] in methods), None)
    if nb is None:
        return "re-run the notebook that wrote it (./run_all.sh --only METHOD, with that run's profile and --data)"
    params = {"seed": int(m["seed"]), "shots": None if m["shots"] is None else int(m["shots"])}
    return _command(nb, params) + " (with the profile and --data of the run that wrote it)"


def _command(notebook: str, params: dict[str, Any]) -> str:
    """``./run_all.sh`` options that run ``notebook`` with ``params`` (a completion record's)."""
    methods, prof = dict(notebooks()).get(notebook, ()), params.get("profile")
    flag = PROFILES[prof].flag if prof in PROFILES else "" if prof is None else None
    parts = ["./run_all.sh", *([flag] if flag else [] if flag == "" else ["--profile", str(prof)])]
    parts += ["--only", methods[0]] if methods else ["--compare"]  # one of its methods plans the notebook
    parts += ["--seeds", str(params.get("seed", 0))]
    parts += ["--shots", str(params["shots"])] if params.get("shots") is not None else []
    if params.get("dataset"):
        parts += ["--data", str(params["data_root"] if params["dataset"] == "imagefolder" else params["dataset"])]
    parts += [a for name, value in _given(notebook, params) for a in ("-p", f"{_scoped(notebook, name)}={value}")]
    return " ".join(map(shlex.quote, parts))


def _scope(notebook: str) -> str:
    """The ``-p SCOPE.name`` prefix that reaches ``notebook`` alone: its method, or its own name."""
    return (dict(notebooks()).get(notebook) or (notebook,))[0]


def _scoped(notebook: str, name: str) -> str:
    """``SCOPE.name`` for a parameter of ``notebook`` (a name from ``_given`` that is scoped already stays)."""
    return name if "." in name else f"{_scope(notebook)}.{name}"


def _given(notebook: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The parameters a run of ``notebook`` was given beyond the plan's own (profile, data, shots, seed and the
    profile's defaults), as (name, JSON value); a ``config`` dict gives one entry per field."""
    prof = params.get("profile")
    defaults = notebook_defaults(prof, notebook) if prof in PROFILES else {}
    out = []
    methods = dict(notebooks()).get(notebook, ())
    for name, value in params.items():
        if name == "config" and isinstance(value, dict):
            out += [(k, json.dumps(v)) for k, v in value.items()]
        elif name.endswith("_config") and name[:-len("_config")] in methods and isinstance(value, dict):
            out += [(f"{name[:-len('_config')]}.{k}", json.dumps(v)) for k, v in value.items()]  # already scoped
        elif name not in BASE_PARAMS and defaults.get(name) != value:
            out.append((name, json.dumps(value)))
    return out


def run_options(folder: str | Path) -> list[str]:
    """The ``-p`` options the completed runs in ``folder`` were given: ``-p name=value`` where every run that took
    ``name`` got that value, else scoped to each notebook (``-p lora.epochs=3``); [] when there is no record."""
    given: dict[str, dict[str, str]] = {}
    for record in filter(None, map(_read_record, sorted(Path(folder, "runs").glob("*.json")))):
        notebook = record.get("notebook", "")
        for name, value in _given(notebook, record.get("fingerprint", {}).get("params", {})):
            given.setdefault(name, {})[notebook] = value
    options = []
    for name, by_notebook in given.items():
        if len(set(by_notebook.values())) == 1:
            options += ["-p", f"{name}={next(iter(by_notebook.values()))}"]
        else:
            options += [a for nb, v in sorted(by_notebook.items()) for a in ("-p", f"{_scoped(nb, name)}={v}")]
    return options


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
def _kernel_env(job: Job, journal: Path) -> dict[str, str]:
    """The environment a notebook's kernel gets: this checkout first on the path, headless, its journal."""
    env = dict(os.environ)
    paths = [str(PROJECT_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["CLIPFT_HEADLESS"] = "1"       # static figures, no progress bars in the executed copy
    env["CLIPFT_JOURNAL"] = str(journal)
    env.pop("MPLBACKEND", None)         # Agg would keep every figure out of the executed notebooks
    scratch = Path(tempfile.gettempdir()) / f"clipft-kernel-{os.getpid()}"
    env.setdefault("IPYTHONDIR", str(scratch / "ipython"))
    env.setdefault("JUPYTER_RUNTIME_DIR", str(scratch / "runtime"))
    return env


def _execute(job: Job, out: Path, parameters: dict, env: dict[str, str]) -> None:
    """Run one notebook into ``out`` in a worker process (its own environment); raise with the error line."""
    tmp = out.with_name(f".{out.stem}.running-{os.getpid()}.ipynb")
    cmd = [sys.executable, "-m", "clipft_utils.nbworker", str(NOTEBOOK_DIR / f"{job.notebook}.ipynb"), str(tmp),
           json.dumps(parameters), str(NOTEBOOK_DIR)]
    proc = subprocess.Popen(cmd, env=env, cwd=str(NOTEBOOK_DIR), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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


def run_job(job: Job, folder: Path, nb_dir: Path, device: str, echo) -> Step:
    """Execute one job; record it as done, or set aside everything it wrote (failed or interrupted)."""
    out = nb_dir / f"{job.key}.ipynb"
    journal = folder / "runs" / f".{job.key}.{os.getpid()}.journal"
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.unlink(missing_ok=True)
    _record_path(folder, job).unlink(missing_ok=True)  # a killed rerun must not look finished
    params = {**job.params, "device": device}
    start, cpu = time.perf_counter(), _children_cpu()
    used = lambda: None if cpu is None else _children_cpu() - cpu  # noqa: E731
    try:
        _execute(job, out, params, _kernel_env(job, journal))
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
        journal.unlink(missing_ok=True)


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
def _reads(job: Job, other: Job) -> bool:
    """Whether ``job`` reads what ``other`` writes (same seed; zero-shot runs at shots=None serve every k)."""
    if not job.methods:
        return other is not job
    return (other.notebook in depends().get(job.notebook, ()) and other.seed == job.seed
            and other.shots in (job.shots, None))


def _ready(job: Job, done: dict[str, str], jobs: list[Job]) -> bool:
    """A job may start when every job it reads from has ended (ok, failed or skipped)."""
    return not any(_reads(job, j) and j.key not in done for j in jobs)


def shard_of(jobs: list[Job], i: int, n: int) -> list[Job]:
    """Shard ``i`` of ``n`` (1-based): whole (shots, seed) groups, so a job and what it reads stay together.
    A zero-shot job (shots=None) goes with its seed's first group."""
    firsts = {}
    for j in jobs:
        if j.shots is not None or not _trains_nothing(j.methods):
            firsts.setdefault(j.seed, j.group)
    unit = lambda j: firsts.get(j.seed, j.group) if _trains_nothing(j.methods) else j.group  # noqa: E731
    groups = sorted({unit(j) for j in jobs})
    mine = {g for k, g in enumerate(groups) if k % n == i - 1}
    return [j for j in jobs if unit(j) in mine]


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
            step = run_job(job, folder, nb_dir, device, echo)
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
    """Why ``job`` runs, or None when it is skipped (its completion record matches)."""
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


# ----------------------------------------------------------------------------- the run
def _base_params(prof, job: Job, folder: Path, data: str | None, data_root: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"profile": prof.name, "seed": int(job.seed), "results_dir": str(folder)}
    if job.shots is not None:
        params["shots"] = job.shots
    if data is not None:
        params["dataset"] = data
    if data_root is not None:
        params["data_root"] = data_root
    return params


def merge_extra(a: dict, b: dict) -> dict:
    """``b`` over ``a``, merging the dicts of scoped keys (``{"lora": {...}}``) one level deep."""
    out = dict(a)
    for k, v in b.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _merge(base: dict, *layers: dict) -> dict:
    out = dict(base)
    for layer in layers:
        for k, v in layer.items():
            out[k] = {**out.get(k, {}), **v} if (k == "config" or k.endswith("_config")) and isinstance(v, dict) else v
    return out


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
    from .datasets import available
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
    from .config import quick_layer as quick_params
    from .notebook_params import check_value
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
        from .config import profile_data_root
        data_root = profile_data_root(prof, echo)  # the rehearsal writes its Flowers102-shaped folder once
    ctx = Context(prof.name)
    ds = ctx.dataset(data, data_root, (extra or {}).get("data_split"))  # fail fast on the data (and its split)
    from .course import results_folder
    folder = Path(root) / results_folder(prof, ds).name if root else results_folder(prof, ds)
    folder = ensure_writable(folder)
    jobs = make_jobs(only if not compare_only else [], seeds, shots, compare=shard_spec is None)
    if compare_only:
        jobs = [j for j in jobs if not j.methods]
    if shard_spec is not None:
        jobs = shard_of(jobs, *shard_spec)
    jobs = add_damaged_producers(jobs, folder, echo)
    planned = list(dict.fromkeys(j.notebook for j in jobs))
    scopes = {nb for nb in planned} | {m for nb in planned for m in dict(notebooks())[nb]}
    quick_layer = {k: v for k, v in quick_params().items() if not isinstance(v, dict) or k in scopes} if quick else {}
    layers = split_extra(merge_extra(quick_layer, extra or {}), planned, prof.name) if planned else {}
    trained = [j.group for j in jobs if j.methods and not _trains_nothing(j.methods)]
    # the sweeps and combinations run once per grid: at the profile's own point when the grid holds it, else at
    # the most shots (the first seed) -- the point a course run at its default shots has already covered
    home = (-1 if prof.shots is None else prof.shots, seeds[0])
    extras_group = home if home in trained else max(trained, key=lambda g: (g[0] == -1, g[0], -seeds.index(g[1])),
                                                    default=None)
    for job in jobs:
        defaults = notebook_defaults(prof.name, job.notebook)
        if job.group != extras_group and job.methods and "extras" in declared(job.notebook):
            defaults.setdefault("extras", False)  # a grid's other points: the method's main row only
        job.params = _merge(_base_params(prof, job, folder, data, data_root), defaults, layers.get(job.notebook, {}))
    check_configs(jobs, prof.name)
    for job in jobs:
        job.fingerprint = fingerprint(job, ctx)
    report = Report(prof.name, folder=folder)
    echo(f"[run_all] profile {prof.name} on {ds.display}: {len(jobs)} notebook run(s) into {folder}")
    if dry_run:  # what each job would do: skipped (up to date) or run, and why
        for job in jobs:
            reason = run_reason(job, folder, folder / "notebooks", force)
            if reason is None:
                echo(f"  {job.describe()}: up to date, would be skipped")
            else:
                echo(f"  {job.describe()}: would run ({reason}): {describe_training(job, prof)}")
            report.steps.append(Step(job.notebook, job.seed, "planned" if reason else "skipped", shots=job.shots,
                                     reason=reason or "up to date"))
        return report
    nb_dir = ensure_writable(folder / "notebooks")
    with FolderLock(folder, shared=shard_spec is not None):
        clean_leftovers(nb_dir)
        for job in jobs:
            echo(f"[run_all] plan {job.describe()}: {describe_training(job, prof)}")
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
        from .comparison import write_summary
        try:
            echo("\n" + write_summary(prof.name, folder))
        except Exception as exc:  # noqa: BLE001
            echo(f"[run_all] could not write the summary: {exc}")
            report.steps.append(Step("summary", seeds[0], "failed", error=str(exc)[:300]))
    echo("\n".join(["", f"[run_all] profile {prof.name}: {'all succeeded' if report.ok else 'SOME FAILED'}",
                    *report.lines()]))
    return report


def describe_training(job: Job, prof) -> str:
    """What a job will train, in one line (from its parameters, the profile and the method's own ``plan``)."""
    p = job.params
    if not job.methods:
        return "reads the results, trains nothing"
    lines = []
    for method in job.methods:
        spec = M.get(method)
        if not spec.trains:
            lines.append(f"{method}: trains nothing")
            continue
        fields = (dict(spec.fixed_config) | {k: p[k] for k in ("epochs",) if p.get(k) is not None}
                  | (p.get(config_param(job.notebook, method)) or {}))
        cfg = make_config(method, prof, **{k: v for k, v in fields.items() if k in spec.config_fields()})
        shots = f"{p['shots']} image(s) per class" if p.get("shots") else "every training image"
        epochs = getattr(cfg, "epochs", None)
        text = f"{method} {epochs} epoch(s) on {shots}" if epochs else f"{method} (fitted without epochs) on {shots}"
        if getattr(cfg, "max_steps_per_epoch", None):
            text += f" (at most {cfg.max_steps_per_epoch} step(s) per epoch)"
        if p.get("extras", True) is False:
            text += " (main row only)"
        elif spec.plan is not None:
            text += spec.plan(p, prof)
        lines.append(text)
    return "; ".join(lines)
