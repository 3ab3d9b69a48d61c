"""The course layer: what the notebooks and the command line do with the library.

Imports flow one way, command line -> course -> library (as ``open_clip_train`` sits apart from ``open_clip``): no
module outside this package imports it. What it holds:

- ``core``: ``setup()`` (every notebook's setup cell: a ``Course``) and ``train_method()`` (train, evaluate, write);
- ``sections``: where each method sits in the course (its notebook, plan text, notebook parameters and their checks);
- ``params``: what a notebook parameter may hold; ``magics``: the notebooks' ``%%when extras`` cells;
- ``combos``: notebook 06's bookkeeping around the library's ``combine``;
- ``runner``: ``run_all.sh`` (plan, parameter checks, completion records, execution, signals); ``nbworker``: one
  notebook through papermill in its own light process;
- ``cli`` (``python -m clipft_utils``), ``train`` (what torchrun launches), ``bench`` (speed and memory per method).

The names below are imported on first use, so that the notebook worker (papermill only) never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Course": "core", "setup": "core", "train_method": "core", "results_folder": "core"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'clipft_utils.course' has no attribute {name!r}")
