"""Where the course finds its plug-ins: every module of these packages is imported once, on first need.

A dataset is a ``datasets.base.Dataset`` subclass with a ``name``; a model that open_clip does not ship
registers its config and local weights with ``models.register_local_weights``. Neither the data layer nor
the model layer imports a plug-in by name: adding a dataset means adding one module to one of these
packages, nothing else.
"""
from __future__ import annotations

import importlib
import pkgutil

PLUGIN_PACKAGES = ("clipft_utils.datasets", "clipft_utils.standin")
_loaded = False


def load() -> None:
    """Import every module of the plug-in packages (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in PLUGIN_PACKAGES:
        pkg = importlib.import_module(package)
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{info.name}")
