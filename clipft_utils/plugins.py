"""Where the course finds its plug-ins: every module of these packages is imported once, on first need.

A dataset is a ``datasets.base.Dataset`` subclass with a ``name``; a method registers a ``methods.base.Method``;
a model that open_clip does not ship registers its config and local weights with ``models.register_local_weights``.
No layer imports a plug-in by name: adding a dataset or a method means adding one module to one of these
packages, nothing else. Modules outside the project are named in ``CLIPFT_PLUGINS`` (comma-separated module
names, importable from ``PYTHONPATH``): the runner's notebook kernels inherit the variable, so they find them too.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

PLUGIN_PACKAGES = ("clipft_utils.datasets", "clipft_utils.methods", "clipft_utils.standin")
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
    for name in filter(None, (n.strip() for n in os.environ.get("CLIPFT_PLUGINS", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            from .errors import ConfigError
            raise ConfigError(f"CLIPFT_PLUGINS names the module '{name}', which cannot be imported ({exc}). "
                              "Fix: put its folder on PYTHONPATH, or remove it from CLIPFT_PLUGINS.") from exc
