"""The plan of a run: one job per notebook and (shots, seed), in course order (from the course's sections), and
the shards of a grid."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ... import methods as M
from ...errors import ConfigError
from ...paths import PROJECT_ROOT
from ...results import point_suffix
from .. import sections as S

NOTEBOOK_DIR = PROJECT_ROOT / "notebooks"
COMPARISON = "07_comparison"


def notebooks() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(notebook, the methods its job trains) in course order, from the method registry; the comparison last."""
    return (*S.notebooks().items(), (COMPARISON, ()))


def depends() -> dict[str, tuple[str, ...]]:
    """Notebooks that read what other notebooks of the same (shots, seed) wrote (06 combines 01, 02 and 05; from
    each section's ``reads``); 07 reads all."""
    return {s.notebook: s.reads for s in S.sections() if s.reads}


def config_param(notebook: str, method: str) -> str:
    """The notebook parameter that holds ``method``'s config overrides: ``config`` for the notebook's first method,
    ``<method>_config`` for each method that is a section of another's notebook (e.g. ``coop_config`` in 04)."""
    methods = dict(notebooks()).get(notebook, ())
    return "config" if not methods or methods[0] == method else f"{method}_config"


def trains_nothing(methods: Sequence[str]) -> bool:
    """A job whose methods fit nothing (zero-shot): it runs once per seed, whatever the shots."""
    return bool(methods) and not any(M.get(m).trains for m in methods)


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
    not_applicable: dict[str, str] = field(default_factory=dict)  # method -> why it does not apply to the model

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
    wanted = set(S.method_names()) if not only else {S.section(m).method for m in only}
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
        grid = [None] if trains_nothing(methods) else shots
        jobs += [Job(notebook, methods, seed, k) for k in grid for seed in seeds]
    return jobs




def shard_of(jobs: list[Job], i: int, n: int) -> list[Job]:
    """Shard ``i`` of ``n`` (1-based): whole (shots, seed) groups, so a job and what it reads stay together.
    A zero-shot job (shots=None) goes with its seed's first group."""
    firsts = {}
    for j in jobs:
        if j.shots is not None or not trains_nothing(j.methods):
            firsts.setdefault(j.seed, j.group)
    unit = lambda j: firsts.get(j.seed, j.group) if trains_nothing(j.methods) else j.group  # noqa: E731
    groups = sorted({unit(j) for j in jobs})
    mine = {g for k, g in enumerate(groups) if k % n == i - 1}
    return [j for j in jobs if unit(j) in mine]


def train_size(data: Any, shots: int | None) -> tuple[int, int] | None:
    """(training images, classes) a job's training split will hold: k per class with shots (fewer where a class has
    fewer), else the whole split; None without the dataset."""
    if data is None:
        return None
    import numpy as np
    counts = np.bincount(data.labels("train"), minlength=len(data.classnames))
    return int(np.minimum(counts, shots).sum() if shots else counts.sum()), len(data.classnames)


def budget_text(method: str, cfg: Any, size: tuple[int, int] | None, batch_size: int | None) -> str:
    """``lora: 48 step(s) in 5 epoch(s) (5 epoch(s) × 16 step(s) × 0.6 ...)``: the run's optimizer steps, from the
    training-set size the runner knows before any work; only the epochs when it does not."""
    epochs = getattr(cfg, "epochs", None)
    if size is None or not hasattr(cfg, "budget"):
        return f"{method} {epochs} epoch(s)" if epochs else f"{method} (fitted without epochs)"
    batches = -(-size[0] // (batch_size or cfg.batch_size))
    budget = cfg.budget(batches, size[0] / size[1])
    return f"{method}: {budget.total} step(s) in {epochs} epoch(s) ({budget.rule.rsplit(' = ', 1)[0]})"


def describe_training(job: Job, prof, data: Any = None) -> str:
    """What a job will train, in one line (from its parameters, the profile, the dataset's training-set size and the
    method's own ``plan``)."""
    p = job.params
    if not job.methods:
        return "reads the results, trains nothing"
    lines = []
    size = train_size(data, p.get("shots"))
    for method in job.methods:
        spec, section = M.get(method), S.section(method)
        if method in job.not_applicable:
            lines.append(f"{method}: not applicable ({job.not_applicable[method]}), skipped")
            continue
        if not spec.trains:
            lines.append(f"{method}: trains nothing")
            continue
        fields = (dict(section.fixed_config) | {k: p[k] for k in ("epochs",) if p.get(k) is not None}
                  | (p.get(config_param(job.notebook, method)) or {}))
        cfg = M.make_config(method, prof, **{k: v for k, v in fields.items() if k in spec.config_fields()})
        shots = f"{p['shots']} image(s) per class" if p.get("shots") else "every training image"
        batch = p.get("batch_size") if spec.image_batches else None
        text = f"{budget_text(method, cfg, size, batch)} on {shots}"
        if p.get("extras", True) is False:
            text += " (main row only)"
        elif section.plan is not None:
            text += section.plan(p, prof)
        lines.append(text)
    return "; ".join(lines)
