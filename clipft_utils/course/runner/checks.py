"""Every parameter of a run, checked before the first notebook starts: ``-p`` names against what the planned notebooks
declare (papermill's reading of their parameters cells), values against their checks, method configs against
their dataclasses."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

from ... import methods as M
from ...config import get_profile
from ...errors import ClipftError, ConfigError
from .. import sections as S
from ..params import check_value
from . import jobs as P
from .jobs import Job, config_param

# ----------------------------------------------------------------------------- parameters, checked first
@functools.lru_cache(maxsize=None)
def _declared(path: str, mtime: int) -> dict[str, dict[str, Any]]:
    import papermill as pm
    return pm.inspect_notebook(path)


def declared(notebook: str) -> dict[str, dict[str, Any]]:
    """The parameters a notebook's ``parameters`` cell declares (papermill's reading of it)."""
    path = P.NOTEBOOK_DIR / f"{notebook}.ipynb"
    return _declared(str(path), path.stat().st_mtime_ns)


def _scoped_notebook(scope: str, notebooks: Sequence[str]) -> str | None:
    """The planned notebook a scope names (a method or a notebook name)."""
    for nb, methods in P.notebooks():
        if (scope == nb or scope in methods) and nb in notebooks:
            return nb
    return None


def split_extra(extra: dict | None, notebooks: Sequence[str], profile: str) -> dict[str, dict[str, Any]]:
    """Per-notebook parameters from ``extra``; unknown names and bad values are ConfigErrors naming the fix."""
    specs = {nb: declared(nb) for nb in notebooks}
    per_nb: dict[str, dict[str, Any]] = {nb: {} for nb in notebooks}
    scopes = set(S.method_names()) | {nb for nb, _ in P.notebooks()}
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
    if name in spec:
        check_value(name, value, spec[name]["default"])
        params[name] = value
        return
    methods = dict(P.notebooks())[nb]
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
    fields = [m for m in S.method_names() if key in M.get(m).config_fields()]
    hint = (f" '{key}' is a field of the config of {', '.join(fields)}: scope it, e.g. -p {fields[-1]}.{key}=…"
            if fields else "")
    return (f"-p {key}=… is not a parameter of any notebook in this run.{hint} The notebooks' parameters are: "
            f"{', '.join(names)} (scope one to a notebook as METHOD.NAME, e.g. lora.ranks=[1,2]).")


def job_config(job: Job, method: str, profile: str) -> Any:
    """``method``'s config in ``job``, as its notebook will build it (epochs, batch size, scoped fields, the fields its
    notebook sets itself); a bad value is a ConfigError naming the notebook."""
    p = job.params
    values = {k: p[k] for k in ("epochs", "batch_size") if p.get(k) is not None}
    values.update(p.get(config_param(job.notebook, method)) or {})
    spec = M.get(method)
    values = dict(S.section(method).fixed_config) | values  # fields its notebook sets itself (06: the warm-up)
    values = {k: v for k, v in values.items() if k in spec.config_fields()}
    try:
        return M.make_config(method, profile, **values)
    except ConfigError as exc:
        raise ConfigError(f"{job.notebook}: {exc}") from None


def check_configs(jobs: Sequence[Job], profile: str) -> None:
    """Each job's method config must build from its parameters (epochs, batch size, scoped fields); the methods that
    do not apply to the job's model are noted on the job (``not_applicable``: its notebook skips them and says why)."""
    from ...methods.base import reason_not_applicable
    from ...models import architecture_of
    prof = get_profile(profile)
    for job in jobs:
        arch = architecture_of(job.params.get("model") or prof.model) if job.methods else None
        for method in job.methods:
            reason = reason_not_applicable(M.get(method), arch, job_config(job, method, profile))
            if reason:
                job.not_applicable[method] = reason


def merge_extra(a: dict, b: dict) -> dict:
    """``b`` over ``a``, merging the dicts of scoped keys (``{"lora": {...}}``) one level deep."""
    out = dict(a)
    for k, v in b.items():
        out[k] = {**out[k], **v} if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def merge_layers(base: dict, *layers: dict) -> dict:
    """``layers`` over ``base`` in order; a method's ``config`` (or ``<method>_config``) dict merges field by field."""
    out = dict(base)
    for layer in layers:
        for k, v in layer.items():
            out[k] = {**out.get(k, {}), **v} if (k == "config" or k.endswith("_config")) and isinstance(v, dict) else v
    return out


def check_data_fits(ds: Any, shots: Sequence[int | None], folder: Path, prof: Any) -> None:
    """Before any work: every k of ``shots`` fits the training split (k images of every class), and the disks of the
    results folder and the data folder have the room the profile's course run needs."""
    from ...data import few_shot_indices
    from ...paths import check_free_space, data_dir
    for k in shots:
        if k is not None:
            try:
                few_shot_indices(ds.labels("train"), k, classnames=ds.classnames)
            except ClipftError as exc:
                raise type(exc)(f"--shots {k}: {exc}") from None
    check_free_space([folder, data_dir()], prof.disk_mb, f"a {prof.name} course run")


def check_applies(jobs: Sequence[Job], profile: str) -> None:
    """Each planned method applied to its notebook's model on PyTorch's meta device (no weights, no memory, well under
    a second): what ``apply`` refuses — a LoRA rank no layer can hold, a setting its tower lacks — is an error now,
    not minutes into a notebook. Methods that do not apply to the tower at all are skipped (``job.not_applicable``:
    their notebook says why)."""
    import copy
    import torch
    from ...models import CLIPClassifier, meta_model
    from ...towers import facts
    towers: dict[str, Any] = {}
    for job in jobs:
        name = job.params.get("model") or get_profile(profile).model
        for method in job.methods:
            spec = M.get(method)
            if spec.apply is None or not spec.trains or method in job.not_applicable:
                continue
            if name not in towers:
                towers[name] = meta_model(name).visual
            with torch.device("meta"):
                clf = CLIPClassifier(copy.deepcopy(towers[name]), torch.empty(2, facts(towers[name]).output_dim))
                try:
                    M.apply_method(method, clf, job_config(job, method, profile))
                except ConfigError as exc:
                    raise ConfigError(f"{job.notebook}: {method}: {exc}") from None
