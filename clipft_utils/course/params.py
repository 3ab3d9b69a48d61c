"""What a notebook parameter may hold: one check per parameter, used by the runner before anything runs.

The runner reads each planned notebook's ``parameters`` cell (papermill's ``inspect_notebook``), so a
``-p NAME=VALUE`` that no planned notebook declares is an error that lists what they do declare; every
value is checked here (type and range) before the first notebook starts; and a method hyperparameter
(``-p lora.rank=4``) is checked by the method's own config.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, Callable

from ..config import PRECISIONS, PROFILES
from ..errors import ConfigError

Check = Callable[[str, Any], None]


def _fail(name: str, value: Any, want: str) -> None:
    raise ConfigError(f"Parameter {name}={value!r} is invalid: it must be {want}. Fix: pass -p {name}=<{want}>.")


def integer(low: int | None = None, optional: bool = True) -> Check:
    """A whole number >= ``low`` (or None when ``optional``)."""
    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            _fail(name, value, f"a whole number >= {low}" if low is not None else "a whole number")
    return check


def number(low: float | None = None, high: float | None = None, optional: bool = True, open_low: bool = False) -> Check:
    """A number in [low, high] ((low, high] with ``open_low``), or None when ``optional``."""
    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and value == value
        ok = ok and (low is None or (value > low if open_low else value >= low)) and (high is None or value <= high)
        if not ok:
            lo = "" if low is None else (f"> {low}" if open_low else f">= {low}")
            _fail(name, value, " and ".join(p for p in ("a number", lo, "" if high is None else f"<= {high}") if p))
    return check


def one_of(*choices: Any, optional: bool = True) -> Check:
    """One of ``choices`` (or None when ``optional``)."""
    def check(name: str, value: Any) -> None:
        if not (value is None and optional) and value not in choices:
            _fail(name, value, "one of " + ", ".join(map(repr, choices)))
    return check


def text(optional: bool = True) -> Check:
    """A string (or None when ``optional``)."""
    def check(name: str, value: Any) -> None:
        if not (value is None and optional) and not isinstance(value, str):
            _fail(name, value, "a string")
    return check


def flag(name: str, value: Any) -> None:
    """True or False."""
    if not isinstance(value, bool):
        _fail(name, value, "true or false")


def list_of(item: Check, optional: bool = True, min_len: int = 1) -> Check:
    """A list whose items pass ``item`` (or None when ``optional``)."""
    def check(name: str, value: Any) -> None:
        if value is None and optional:
            return
        if not isinstance(value, (list, tuple)) or len(value) < min_len:
            _fail(name, value, f"a list of at least {min_len} item(s), e.g. [1, 2]")
        for v in value:
            item(f"{name}[]", v)
    return check


def device(name: str, value: Any) -> None:
    """auto, cpu, mps, cuda or cuda:N — and a CUDA device must exist."""
    import torch
    if not isinstance(value, str):
        _fail(name, value, "auto, cpu, cuda, cuda:N or mps")
    if value == "auto":
        return
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        _fail(name, value, "auto, cpu, cuda, cuda:N or mps")
    if dev.type not in ("cpu", "cuda", "mps"):
        _fail(name, value, "auto, cpu, cuda, cuda:N or mps")
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"Parameter {name}={value!r}: no such CUDA device here "
                          f"({torch.cuda.device_count()} visible). Fix: pass device=auto or cpu.")


def data_split(name: str, value: Any) -> None:
    """None, or how a folder of images is split: train, val[, test] per class (``imagefolder.SplitSpec``)."""
    from ..datasets.base import SplitSpec
    SplitSpec.parse(value)


def config_dict(name: str, value: Any) -> None:
    """A mapping of method-config fields (checked by the method's config when the notebook is known)."""
    if value is not None and not isinstance(value, dict):
        _fail(name, value, "a mapping of the method's config fields, e.g. {rank: 4, lr: 0.001}")


def photos(name: str, value: Any) -> None:
    """None, or image files / folders (a path or a list of paths) that exist."""
    if value is None:
        return
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) for v in items):
        _fail(name, value, "an image file or folder, or a list of them, e.g. [\"~/Pictures/rose.jpg\"]")
    missing = [v for v in items if not Path(v).expanduser().exists()]
    if missing:
        raise ConfigError(f"Parameter {name}={value!r} names '{missing[0]}', which does not exist. Fix: pass image "
                          f"files or folders that exist, e.g. -p {name}=~/Pictures/rose.jpg.")


PRECISION_CHECK = one_of(*PRECISIONS, optional=False)

CHECKS: dict[str, Check] = {
    # every notebook
    "profile": one_of(*PROFILES), "model": text(), "pretrained": text(), "dataset": text(), "data_root": text(),
    "seed": integer(0, optional=False), "device": device, "batch_size": integer(1), "shots": integer(1),
    "val_shots": integer(1), "results_dir": text(), "epochs": integer(1), "test_per_class": integer(0),
    "extras": flag, "config": config_dict, "data_split": data_split,
    # notebooks that train no method of their own (01's grid, 07's recommender and upload)
    "n_show": integer(1, optional=False),
    "memory_budget_mb": number(0, open_low=True, optional=False), "need": one_of("best", "good", "cheap", optional=False),
    "tasks": integer(1, optional=False), "have_data": flag, "image_index": integer(0),
    "interactive": one_of(True, False), "labelled_per_class": integer(1), "photos": photos,
}
"""The checks of the parameters every notebook shares; a method's own notebook parameters are checked by the
checks its course section declares (``Section.notebook_checks``)."""


def checks() -> dict[str, Check]:
    """Every known check: the shared ones and each registered method's."""
    from .sections import sections
    out = dict(CHECKS)
    for s in sections():
        out.update(s.notebook_checks)
    return out


def inferred_check(default_source: str) -> Check | None:
    """A check from a declared default (``3`` -> whole number, ``0.5`` -> number, ``True`` -> flag, ...)."""
    try:
        default = ast.literal_eval(default_source)
    except (ValueError, SyntaxError):
        return None
    if isinstance(default, bool):
        return flag
    if isinstance(default, int):
        return integer()
    if isinstance(default, float):
        return number()
    if isinstance(default, str):
        return text()
    return None


def check_value(name: str, value: Any, default_source: str | None = None) -> None:
    """Raise a ConfigError if ``value`` is not valid for parameter ``name``."""
    check = checks().get(name) or (inferred_check(default_source) if default_source is not None else None)
    if check is not None:
        check(name, value)
