"""Completion records: what each finished notebook run of a results folder wrote (``<results>/runs/<job>.json``).

The runner writes one record per job when the job ends well: its fingerprint (parameters, notebook, code, weights,
data), a hash of every file it wrote, the ``./run_all.sh`` command that remakes it (``remake``) and the ``-p`` options
it was given beyond the plan's own (``given``: [name, scoped name, JSON value] triples). The library reads them here
to tell a user how to remake a damaged file and how to reproduce a comparison, without knowing how the course is run.
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

RUNS = "runs"


def record_path(folder: str | Path, job: str) -> Path:
    """``<results folder>/runs/<job>.json``."""
    return Path(folder) / RUNS / f"{job}.json"


def read_record(path: str | Path) -> dict[str, Any] | None:
    """A completion record, or None when it cannot be read."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def records(folder: str | Path) -> list[dict[str, Any]]:
    """Every readable completion record of a results folder, in file-name order."""
    return list(filter(None, map(read_record, sorted(Path(folder, RUNS).glob("*.json")))))


def results_folder_of(path: str | Path) -> Path | None:
    """The results folder a file belongs to (the nearest parent with a ``runs/`` folder), or None."""
    return next((p for p in Path(path).absolute().parents if (p / RUNS).is_dir()), None)


RUN_NAME = re.compile(r"(?P<method>[a-z_]+?)(?:-.+?)?(?:_shots(?P<shots>\d+))?_seed(?P<seed>\d+)$")
"""``<method>[-<variant>][_shots<k>]_seed<s>``: how a run's files are named."""


def remake_command(path: str | Path) -> str:
    """The ``./run_all.sh`` command that rewrites ``path``, a file of a results folder: the one its completion record
    keeps, else one built from the run's name (``--only METHOD`` plans the notebook that trains it)."""
    path = Path(path).absolute()
    folder = results_folder_of(path)
    if folder is not None:
        rel = path.relative_to(folder).as_posix()
        for record in records(folder):
            if rel in record.get("files", {}) and record.get("remake"):
                return str(record["remake"])
    from .methods import names
    m = RUN_NAME.match(path.stem)
    if m is None or m["method"] not in names():
        return "re-run the notebook that wrote it (./run_all.sh --only METHOD, with that run's profile and --data)"
    parts = ["./run_all.sh", "--only", m["method"], "--seeds", m["seed"], *(["--shots", m["shots"]] if m["shots"] else [])]
    return " ".join(parts) + " (with the profile and --data of the run that wrote it)"


def run_options(folder: str | Path) -> list[str]:
    """The ``-p`` options the completed runs in ``folder`` were given: ``-p name=value`` where every run that took
    ``name`` got that value, else scoped to each notebook (``-p lora.epochs=3``); [] when there is no record."""
    given: dict[str, dict[str, tuple[str, str]]] = {}
    for record in records(folder):
        for name, scoped, value in record.get("given", []):
            given.setdefault(name, {})[record.get("notebook", "")] = (scoped, value)
    options: list[str] = []
    for name, by_notebook in given.items():
        values = {value for _, value in by_notebook.values()}
        if len(values) == 1:
            options += ["-p", f"{name}={values.pop()}"]
        else:
            options += [a for _, (scoped, v) in sorted(by_notebook.items()) for a in ("-p", f"{scoped}={v}")]
    return options


def quoted(parts: list[str]) -> str:
    """A command line from its words, shell-quoted where needed."""
    return " ".join(map(shlex.quote, parts))
