"""Your own images: ``ROOT/<class>/<images>`` (split here, seeded) or ``ROOT/{train,val,test}/<class>/`` (as given).

Classes are found with torchvision's ``find_classes`` and files with its ImageFolder conventions (sorted walk, nested
folders allowed) over every extension PIL can open. Every file is opened once (cached by size and mtime): unreadable
ones are reported in one list and left out (``strict=True`` fails instead). Class names are the folder names with
``_`` and ``-`` as spaces, or come from ``classnames.txt`` (``folder: name`` per line); prompts from ``templates.txt``
(one per line, ``{}`` = the name, other braces literal; checked with the folder), else CLIP's generic ones.

The split (``SplitSpec``: train / val / test per class, default the rest / 20 % / 20 %, seeded) is drawn once and
written to a split file (``split.csv``; ``split-<spec>[-seed<k>].csv`` for another split or seed). That file is the
user's: it is used exactly as written, every row is checked (a bad row is an error naming its line and the fix,
before any work), and it is never overwritten -- images added later are assigned, written with the user's rows, and
the previous file is kept as ``<file>.bak-<time>`` (the run says so).
"""
from __future__ import annotations

import os
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DatasetError, DatasetWarning
from ..paths import cache_dir, file_lock
from .base import (SPLITS, FileDataset, FileIndex, SplitSpec, image_extensions, listing_hash, short_hash,
                   readable, stratified_split, templates_file)
from .splitfile import SplitFile

GENERIC_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a cropped photo of a {}.",
                     "a bright photo of a {}.", "a photo of a small {}.", "a photo of a large {}.", "itap of a {}.")


class ImageFolder(FileDataset):
    """A folder of images, one sub-folder per class (see the module docstring)."""

    name = "imagefolder"

    def __init__(self, root: str | os.PathLike | None = None, split: Any = None, seed: int = 0,
                 strict: bool = False) -> None:
        if root is None:
            raise ConfigError("The imagefolder dataset needs data_root: the folder holding one sub-folder per class.")
        super().__init__(root)
        self.split, self.seed, self.strict = SplitSpec.parse(split), int(seed), bool(strict)
        self.skipped: list[tuple[str, str]] = []                # (file, why): unreadable, left out
        self.ignored, self.converted = [], {}   # not images by extension; deep mode -> images scaled to 8 bits

    # ---- the folder's classes and files ------------------------------------------------------------------
    def check(self) -> None:
        self._assignment  # noqa: B018 - scanning and splitting raise every layout error
        self.templates(ensemble=True)  # a bad templates.txt line fails here, before any work

    @property
    def given_splits(self) -> bool:
        """True for the ROOT/{train,val,test}/<class> layout."""
        return (self.root / "train").is_dir() and (self.root / "test").is_dir()

    def _tops(self) -> list[Path]:
        return [self.root / s for s in SPLITS if (self.root / s).is_dir()] if self.given_splits else [self.root]

    def _folders(self) -> list[str]:
        from torchvision.datasets.folder import find_classes
        if not self.root.is_dir():
            raise DatasetError(f"The image folder '{self.root}' does not exist. Fix: pass the folder that holds "
                               "one sub-folder of images per class (ROOT/<class>/<images>).")
        try:
            return sorted({c for top in self._tops() for c in find_classes(top)[0]})
        except FileNotFoundError:
            raise DatasetError(f"'{self.root}' holds no class folders. Fix: put each class's images in its own "
                               "sub-folder: ROOT/<class>/<images> (or ROOT/train/<class>, ROOT/test/<class>).") from None

    @cached_property
    def _names(self) -> dict[str, str]:
        folders = self._folders()
        names = {c: " ".join(c.replace("_", " ").replace("-", " ").split()) for c in folders}
        mapping = self.root / "classnames.txt"
        if mapping.exists():
            for n, line in enumerate(mapping.read_text().splitlines(), 1):
                if line.strip():
                    folder, sep, name = line.partition(":")
                    if not sep or folder.strip() not in folders:
                        raise DatasetError(f"{mapping} line {n} ({line.strip()!r}) names no class folder. Fix: write "
                                           f"'folder: class name' lines for folders among {sorted(folders)[:8]}.")
                    names[folder.strip()] = name.strip()
        same = [[f for f in names if names[f].lower() == n.lower()] for n in names.values()]
        if any(len(folders) > 1 for folders in same):
            bad = next(f for f in same if len(f) > 1)
            raise DatasetError(f"Class folders {bad} map to the same class name '{names[bad[0]]}'. Fix: merge "
                               "them, rename one, or give them distinct names in classnames.txt.")
        if len(names) < 2:
            raise DatasetError(f"'{self.root}' has {len(names)} class folder(s); classification needs at least 2. "
                               "Fix: add a sub-folder of images for every class.")
        return names

    @cached_property
    def _scan(self) -> dict[str, list[tuple[str, Path]]]:
        """Readable files per split source ('all', or 'train'/'val'/'test'): (class folder, path)."""
        from torchvision.datasets.folder import make_dataset
        classes = list(self._names)
        exts, found = image_extensions(), {}
        for top in self._tops():
            index = {c: i for i, c in enumerate(classes) if (top / c).is_dir()}
            found[top.name if self.given_splits else "all"] = [(classes[i], Path(p)) for p, i in make_dataset(
                top, index, is_valid_file=lambda p: True, allow_empty=True)]
        candidates = [(k, c, p) for k, items in found.items() for c, p in items]
        self.ignored = [self._rel(p) for _, _, p in candidates if not p.name.lower().endswith(exts)]
        images = [(k, c, p) for k, c, p in candidates if p.name.lower().endswith(exts)]
        bad, self.converted = readable([p for _, _, p in images], self.root)
        self.skipped = [(self._rel(p), bad[p]) for _, _, p in images if p in bad]
        if self.skipped:
            report = "\n".join(f"  {n}: {e}" for n, e in self.skipped)
            if self.strict:
                leave_out = "drop --strict" if self.command_line else 'pass dataset_options={"strict": False}'
                raise DatasetError(f"{len(self.skipped)} unreadable image(s) in '{self.root}':\n{report}\nFix: repair "
                                   f"or delete them, or {leave_out} to leave them out.")
            warnings.warn(f"Left out {len(self.skipped)} unreadable image(s) of '{self.root}':\n{report}", DatasetWarning)
        out: dict[str, list[tuple[str, Path]]] = {}
        for k, c, p in images:
            if p not in bad:
                out.setdefault(k, []).append((c, p))
        return out

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    # ---- the split ------------------------------------------------------------------------------------------
    @property
    def split_file(self) -> Path:
        """The split of this folder (for this split setting and seed): yours to edit, never overwritten."""
        name = "-".join(p for p in ("split", self.split.tag, f"seed{self.seed}" if self.seed else "") if p)
        return cache_dir("imagefolder", f"{self.root.name}-{short_hash(self.root.resolve())}") / f"{name}.csv"

    def _counts(self, cls: str, n: int) -> dict[str, int]:
        names, where = (("val", "train"), " in train/") if self.given_splits else (SPLITS, "")
        return self.split.checked_counts(cls, n, names, where)

    def _draw(self) -> dict[Path, str]:
        """The seeded, stratified split of the folder's files (a given layout as given, val carved out of train/)."""
        scan = self._scan
        given = {p: s for s in SPLITS for _, p in scan.get(s, [])} if self.given_splits else {}
        if self.given_splits and "val" in scan:
            return given
        by_class: dict[str, list[Path]] = {c: [] for c in self._names}
        for c, p in scan.get("train" if self.given_splits else "all", []):
            by_class[c].append(p)
        return {**given, **stratified_split(by_class, self._counts, self.seed)}

    @cached_property
    def _assignment(self) -> dict[Path, str]:
        if self.given_splits and not self.split.is_default:
            raise ConfigError(f"'{self.root}' has its own train/ and test/ folders, so its split is given; "
                              f"data_split={list(self.split.sizes.values())} applies to a folder split here "
                              "(ROOT/<class>). Fix: leave data_split None, or move images between the folders.")
        split_file = SplitFile(self.split_file, self.root, self._folder_of, dict(self.skipped))
        with file_lock(self.split_file.with_name(f".{self.split_file.name}.lock")):
            assign = split_file.reconcile(self._draw)
        split_file.check_coverage(assign, list(self._names))
        return assign

    @cached_property
    def _folder_of(self) -> dict[Path, str]:
        """Every readable image -> its class folder."""
        return {p: c for items in self._scan.values() for c, p in items}

    def index(self, split: str) -> FileIndex:
        self.check_split(split)
        classes = {c: i for i, c in enumerate(self._names)}
        files = sorted(p for p, s in self._assignment.items() if s == split)
        labels = np.asarray([classes[self._folder_of[p]] for p in files], dtype=np.int64)
        return FileIndex(files, labels, self.root)

    # ---- what the course reads --------------------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        return list(self._names.values())

    def templates(self, ensemble: bool = False) -> list[str]:
        return templates_file(self.root / "templates.txt", GENERIC_TEMPLATES, ensemble)

    @cached_property
    def identity(self) -> str:
        files = sorted(self._assignment)
        extra = [p.read_text() if p.exists() else "" for p in (self.root / "classnames.txt", self.root / "templates.txt")]
        return short_hash(listing_hash(files, self.root), self.split_file.read_text(), *extra)

    @property
    def display(self) -> str:
        return f"{self.root.name}-{self.identity[:8]}"

    def describe(self) -> str:
        return f"imagefolder '{self.root}' ({len(self._names)} classes, id {self.identity[:8]})"

    def split_rule(self) -> str:
        """How the folder is split, and THE rule for it (``data check`` prints it)."""
        if self.given_splits:
            return "split: as given by train/ and test/" + ("" if "val" in self._scan else
                                                             f" (val: {self.split.val * 100:g}% of train/, seeded)")
        return f"split: {self.split} per class, seed {self.seed}; it needs {self.split.rule()}"
