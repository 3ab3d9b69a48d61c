"""Datasets behind one interface (``base.Dataset``), found as plug-ins.

``get_dataset("flowers102")``, ``get_dataset("imagefolder", root="~/my_images")`` or simply
``get_dataset("~/my_images")`` (a folder means the imagefolder dataset). Every module of this package (and
of the stand-in package, see ``clipft_utils.plugins``) is imported on first use, and each ``Dataset``
subclass with a ``name`` registers itself: a new dataset is one new module, nothing else.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, DatasetError, DatasetWarning
from .base import REGISTRY, SPLITS, Dataset, FileDataset, FileIndex, open_image

__all__ = ["Dataset", "FileDataset", "FileIndex", "SPLITS", "available", "check_noting", "get_dataset", "is_folder",
           "open_image"]

FOLDER_DATASET = "imagefolder"


def available() -> list[str]:
    """The registered dataset names."""
    from .. import plugins
    plugins.load()
    return sorted(REGISTRY)


def _looks_like_path(name: str) -> bool:
    return any(sep in name for sep in ("/", "\\")) or name.startswith(("~", ".")) or Path(name).expanduser().is_dir()


def is_folder(name: str | None) -> bool:
    """True when ``name`` means a folder of the user's images (the imagefolder dataset, or a path)."""
    return isinstance(name, str) and (name == FOLDER_DATASET or name not in available() and _looks_like_path(name))


def get_dataset(name: str | Dataset, root: str | os.PathLike | None = None, **options: Any) -> Dataset:
    """A dataset by registry name (``root`` = where its files are), or a folder of images by its path."""
    if isinstance(name, Dataset):
        return name
    if not isinstance(name, str) or not name:
        raise ConfigError(f"dataset must be a name or a folder, got {name!r}. Fix: use one of {available()}.")
    names = available()
    if name not in REGISTRY and _looks_like_path(name):
        if root is not None:
            raise ConfigError(f"dataset={name!r} is a folder and data_root={str(root)!r} is set too. "
                              "Fix: pass the folder once, as data_root with dataset='imagefolder'.")
        name, root = FOLDER_DATASET, name
    if name not in REGISTRY:
        raise ConfigError(f"Unknown dataset '{name}'. Fix: use one of {', '.join(names)}, or the path of a "
                          "folder of images (ROOT/<class>/<images>).")
    if root is not None and Path(root).expanduser().exists() and not Path(root).expanduser().is_dir():
        raise DatasetError(f"data_root '{root}' is a file, not a folder. Fix: pass the folder that holds the data.")
    if options.get("split", 0) is None:
        del options["split"]  # None: the dataset's own split
    if "split" in options and name != FOLDER_DATASET:
        raise ConfigError(f"data_split={options['split']!r} sets how a folder of your own images is split; '{name}' "
                          "comes with its own train/val/test split. Fix: leave data_split None.")
    return REGISTRY[name](root, **options)


def check_noting(ds: Dataset, echo: Callable[[str], Any] = print) -> Dataset:
    """``ds.check()``, with each DatasetWarning (files left out, images added to the split) echoed once as a
    ``NOTE:`` line instead of a warning with a source line; other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DatasetWarning)
        ds.check()
    for w in caught:
        if issubclass(w.category, DatasetWarning):
            echo(f"NOTE: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds
