"""Your own images: ``ROOT/<class>/<images>`` (split here, seeded) or ``ROOT/{train,val,test}/<class>/`` (as given).

Classes are found with torchvision's ``find_classes`` and files with its ImageFolder conventions (sorted walk,
nested folders allowed) over every extension PIL can open. Every file is opened once (cached by size and
mtime): unreadable ones are reported in one list and left out (``strict=True`` fails instead). Class names are
the folder names with ``_`` and ``-`` as spaces, or come from ``classnames.txt`` (``folder: name`` per line);
prompts from ``templates.txt`` (one per line, ``{}`` = the name), else CLIP's generic ones.

The split (``SplitSpec``: train / val / test per class, default the rest / 20 % / 20 %, seeded) is drawn once and
written to a split file (``split.csv``; ``split-<spec>[-seed<k>].csv`` for another split or seed). That file is
the user's: it is used exactly as written, every row is checked (a bad row is an error naming its line and the
fix, before any work), and it is never overwritten -- images added to the folder later are assigned, written
with the user's rows, and the previous file is kept as ``<file>.bak-<time>`` (the run says so).
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Sequence, Union

import numpy as np

from ..errors import ConfigError, DatasetError, DatasetWarning
from ..paths import atomic_write_text, cache_dir, file_lock
from .base import (FileDataset, FileIndex, SPLITS, image_extensions, listing_hash, short_hash, stratified_split,
                   templates_file, unreadable)

GENERIC_TEMPLATES = ("a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a cropped photo of a {}.",
                     "a bright photo of a {}.", "a photo of a small {}.", "a photo of a large {}.", "itap of a {}.")
REST = "rest"
Size = Union[int, float, str]


def _size_ok(value: Any) -> bool:
    """A count (whole number >= 1), a fraction (0 < f < 1) or 'rest'."""
    if value == REST:
        return True
    if isinstance(value, bool):
        return False
    return isinstance(value, int) and value >= 1 or isinstance(value, float) and 0 < value < 1


def _token(text: str) -> Size:
    """'3' -> 3, '0.2' -> 0.2, 'rest' -> 'rest' (anything else is returned as given, for the error)."""
    text = text.strip().lower()
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class SplitSpec:
    """Images per class in train / val / test: a count, a fraction of the class, or the rest (exactly one split).

    THE rule, stated once (``minimum``): a class needs every count, plus one image per fraction, plus one for the
    split that takes the rest -- every split gets at least one image of every class. Fractions are rounded and
    then lowered (never below one image) when a small class would leave the rest empty.
    """

    train: Size = REST
    val: Size = 0.2
    test: Size = 0.2

    @classmethod
    def parse(cls, value: Any) -> "SplitSpec":
        """None (the default), a SplitSpec, or train, val[, test] as a list or text ('3,1', '0.5,0.25,0.25')."""
        if value is None:
            return cls()
        if isinstance(value, SplitSpec):
            return value
        items = [_token(t) for t in value.replace("/", ",").split(",")] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or len(items) not in (2, 3) or not all(map(_size_ok, items)):
            raise ConfigError(f"data_split={value!r} is not a split. {cls.HOW}")
        items = list(items) + [REST] * (3 - len(items))
        rests = items.count(REST)
        if rests == 0 and all(isinstance(v, float) for v in items) and abs(sum(items) - 1) < 1e-6:
            items[0], rests = REST, 1  # three fractions of the whole: train takes what rounding leaves
        if rests != 1:
            raise ConfigError(f"data_split={value!r}: exactly one split must take the rest of each class's images "
                              f"(found {rests}). {cls.HOW}")
        if sum(v for v in items if isinstance(v, float)) >= 1:
            raise ConfigError(f"data_split={value!r}: the fractions leave nothing for the rest. {cls.HOW}")
        return cls(*items)

    HOW: ClassVar[str] = ("Fix: give train, val[, test] images per class, each a count (3), a fraction (0.2) or rest, "
                          "e.g. [3, 1] (3 train, 1 val, test the rest), [0.5, 0.25, 0.25], or [rest, 2, 5]; "
                          "from the command line: --split 3,1.")

    @property
    def sizes(self) -> dict[str, Size]:
        return dict(zip(SPLITS, (self.train, self.val, self.test)))

    def _sizes(self, names: Sequence[str]) -> dict[str, Size]:
        """The sizes of ``names``: all three splits, or (val, train) when val is carved out of a given train/."""
        return self.sizes if tuple(names) == SPLITS else {"val": self.val, "train": REST}

    def minimum(self, names: Sequence[str] = SPLITS) -> int:
        """THE rule: the smallest class this split accepts -- every count, one image per fraction, one for the rest."""
        return sum(v if isinstance(v, int) else 1 for v in self._sizes(names).values())

    def counts(self, n: int, names: Sequence[str] = SPLITS) -> dict[str, int]:
        """Images per split (of ``names``) for a class of ``n >= minimum(names)`` images."""
        sizes = self._sizes(names)
        fixed = {s: v if isinstance(v, int) else max(1, round(v * n)) for s, v in sizes.items() if v != REST}
        fractions = [s for s in fixed if isinstance(sizes[s], float)]
        while n - sum(fixed.values()) < 1 and any(fixed[s] > 1 for s in fractions):
            fixed[max(fractions, key=fixed.get)] -= 1
        return {s: fixed.get(s, n - sum(fixed.values())) for s in names}

    @property
    def is_default(self) -> bool:
        return self == SplitSpec()

    @property
    def tag(self) -> str:
        """How the split file of this split is named: '' for the default, else e.g. '3-1-rest'."""
        return "" if self.is_default else "-".join(str(v) for v in self.sizes.values())

    def __str__(self) -> str:
        def one(v: Size) -> str:
            return "the rest" if v == REST else f"{v:g}" if isinstance(v, int) else f"{100 * v:g}%"
        return " / ".join(f"{s} {one(v)}" for s, v in self.sizes.items())

    def rule(self, names: Sequence[str] = SPLITS) -> str:
        """THE rule in words (what ``data check``, the errors and the README say)."""
        return f"at least {self.minimum(names)} images per class (every split gets at least one image of every class)"


class ImageFolder(FileDataset):
    """A folder of images, one sub-folder per class (see the module docstring)."""

    name = "imagefolder"

    def __init__(self, root: str | os.PathLike | None = None, split: Any = None, seed: int = 0,
                 strict: bool = False) -> None:
        if root is None:
            raise ConfigError("The imagefolder dataset needs data_root: the folder holding one sub-folder per class.")
        super().__init__(root)
        self.split, self.seed, self.strict = SplitSpec.parse(split), int(seed), bool(strict)
        self.skipped: list[tuple[str, str]] = []
        self.ignored: list[str] = []

    # ---- the folder's classes and files ------------------------------------------------------------------
    def check(self) -> None:
        self._assignment  # noqa: B018 - scanning and splitting raise every layout error

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
        bad = dict(unreadable([p for _, _, p in images], self.root))
        self.skipped = [(self._rel(p), bad[p]) for _, _, p in images if p in bad]
        if self.skipped:
            report = "\n".join(f"  {n}: {e}" for n, e in self.skipped)
            if self.strict:
                raise DatasetError(f"{len(self.skipped)} unreadable image(s) in '{self.root}':\n{report}\n"
                                   "Fix: repair or delete them, or pass strict=False to leave them out.")
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

    def _names_of_split(self) -> tuple[str, ...]:
        return ("val", "train") if self.given_splits else SPLITS

    def _counts(self, cls: str, n: int) -> dict[str, int]:
        """Images per split for class ``cls`` of ``n`` images; a class below THE rule is a DatasetError."""
        names = self._names_of_split()
        need = self.split.minimum(names)
        if n < need:
            where = " in train/" if self.given_splits else ""
            lower = "" if self.split.minimum() <= 3 else ", or a split with smaller counts (data_split / --split)"
            raise DatasetError(f"Class '{cls}' has {n} readable image(s){where}; the split {self.split} needs "
                               f"{self.split.rule(names)}. Fix: add {need - n} image(s) to '{cls}'{lower}, or remove "
                               "the class folder.")
        return self.split.counts(n, names)

    def _draw(self) -> dict[Path, str]:
        """The seeded, stratified split of the folder's files (a given layout as given, val carved out of train/)."""
        scan = self._scan
        given = {p: s for s in SPLITS for _, p in scan.get(s, [])} if self.given_splits else {}
        if self.given_splits and "val" in scan:
            return given
        by_class: dict[str, list[Path]] = {c: [] for c in self._names}
        for c, p in scan.get("train" if self.given_splits else "all", []):
            by_class[c].append(p)
        return {**given, **stratified_split(by_class, self._names_of_split(), self._counts, self.seed)}

    @cached_property
    def _assignment(self) -> dict[Path, str]:
        if self.given_splits and not self.split.is_default:
            raise ConfigError(f"'{self.root}' has its own train/ and test/ folders, so its split is given; "
                              f"data_split={list(self.split.sizes.values())} applies to a folder split here "
                              "(ROOT/<class>). Fix: leave data_split None, or move images between the folders.")
        with file_lock(self.split_file.with_name(f".{self.split_file.name}.lock")):
            assign = self._reconcile()
        self._check_coverage(assign)
        return assign

    @cached_property
    def _folder_of(self) -> dict[Path, str]:
        """Every readable image -> its class folder."""
        return {p: c for items in self._scan.values() for c, p in items}

    def _reconcile(self) -> dict[Path, str]:
        """The split file as written; drawn once when there is none; new images added beside a backup of yours."""
        path = self.split_file
        if not path.exists():
            drawn = self._draw()
            self._write_split(drawn)
            return drawn
        saved = self._read_split(path)
        if set(self._folder_of) <= set(saved):
            return saved
        drawn = self._draw()
        new = {p: drawn[p] for p in sorted(set(self._folder_of) - set(saved))}
        backup = path.with_name(f"{path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        while backup.exists():
            backup = backup.with_name(backup.name + "+")
        shutil.copy2(path, backup)
        self._write_split({**saved, **new})
        tally = ", ".join(f"{s} {n}" for s in SPLITS if (n := list(new.values()).count(s)))
        warnings.warn(f"{len(new)} new image(s) in '{self.root}' since {path.name} was written: added them ({tally}), "
                      f"your rows kept as written; the previous file is kept as {backup}.", DatasetWarning)
        return {**saved, **new}

    def _write_split(self, assign: dict[Path, str]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(
            [["path", "class", "split"]] + [[self._rel(p), self._folder_of[p], s] for p, s in sorted(assign.items())])
        atomic_write_text(self.split_file, buf.getvalue())

    def _split_error(self, line: int, problem: str, fix: str) -> DatasetError:
        return DatasetError(f"{self.split_file}, line {line}: {problem}. Fix: {fix} (or delete the file to draw a "
                            "new split; nothing was run).")

    def _decode_split(self, path: Path) -> str:
        data = path.read_bytes()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise self._split_error(data[:err.start].count(b"\n") + 1, f"byte {data[err.start]:#x} is not UTF-8 "
                                    "text", "save the file as UTF-8 (in a spreadsheet: CSV UTF-8)") from None

    def _read_split(self, path: Path) -> dict[Path, str]:
        """Every row of the split file, checked: a bad row is a DatasetError naming its line and the fix."""
        reader = csv.reader(io.StringIO(self._decode_split(path)), strict=True)
        saved: dict[Path, str] = {}
        first: dict[Path, int] = {}
        line = 1
        try:
            for i, row in enumerate(reader):
                if i == 0 and [c.strip() for c in row] != ["path", "class", "split"]:
                    raise self._split_error(line, f"the first line is {','.join(row)!r}, not the header "
                                            "'path,class,split'", "put the header line back at the top")
                if i > 0 and any(c.strip() for c in row):
                    p = self._row(line, row, first)
                    saved[p], first[p] = row[2].strip(), line
                line = reader.line_num + 1
        except csv.Error as err:
            raise self._split_error(line, f"the CSV cannot be read ({err}: a quote that never closes?)",
                                    "close or remove the quote") from None
        return saved

    def _row(self, line: int, row: list[str], first: dict[Path, int]) -> Path:
        """The image a data row names, after checking every field of it."""
        if len(row) != 3:
            raise self._split_error(line, f"{len(row)} field(s) {row}; a row is path,class,split",
                                    "write the image's path, its class folder and train, val or test")
        rel, cls, split = (c.strip() for c in row)
        if split not in SPLITS:
            raise self._split_error(line, f"unknown split {split!r}", f"write one of {', '.join(SPLITS)} (lower case)")
        norm = Path(os.path.normpath(rel)).as_posix() if rel else ""
        if not norm or Path(rel).is_absolute() or norm == ".." or norm.startswith("../"):
            raise self._split_error(line, f"the path {rel!r} leads outside '{self.root}'",
                                    "write paths relative to the image folder, e.g. 'tulip/img1.jpg'")
        path, skipped = self.root / norm, dict(self.skipped)
        if path not in self._folder_of:
            why = f"cannot be read ({skipped[norm]})" if norm in skipped else "is not an image of this folder " \
                  "(missing, renamed, or not inside a class folder)"
            raise self._split_error(line, f"{rel!r} {why}", "correct the path, or delete the line if the image is gone")
        if path in first:
            raise self._split_error(line, f"{rel!r} is listed again (first on line {first[path]})", "delete one row")
        if cls != self._folder_of[path]:
            raise self._split_error(line, f"{rel!r} is in the class folder '{self._folder_of[path]}' but the row says "
                                    f"class {cls!r}; the class of an image is its folder",
                                    f"write '{self._folder_of[path]}', or move the image into its class's folder")
        return path

    def _check_coverage(self, assign: dict[Path, str]) -> None:
        """Every class has an image in every split (the split file may have been edited)."""
        have = {(self._folder_of[p], s) for p, s in assign.items()}
        gaps = [(c, s) for s in SPLITS for c in self._names if (c, s) not in have]
        if gaps:
            shown = ", ".join(f"'{c}' in {s}" for c, s in gaps[:5]) + (" ..." if len(gaps) > 5 else "")
            raise DatasetError(f"The split {self.split_file} leaves classes without images: {shown}. Fix: give every "
                               f"class at least one image in every split (move rows of the file, or add images).")

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
