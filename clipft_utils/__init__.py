"""clipft_utils: the shared library of the clipft course (adapting CLIP to Oxford Flowers102).

The names below are imported on first use, so that tools which need none of them (the runner's worker, a
small script writing one file) do not pay for importing torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "make_config": "methods", "get_profile": "config",
    "Course": "course.core", "setup": "course.core", "train_method": "course.core",
    "ClipftError": "errors", "ConfigError": "errors", "DatasetError": "errors", "OfflineError": "errors",
    "ResultsError": "errors", "WeightsError": "errors", "seed_everything": "seeding",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'clipft_utils' has no attribute {name!r}")
