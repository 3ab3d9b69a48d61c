"""A folder's split file (``path,class,split`` per image): the user's, read row by row and checked, never overwritten.

Columns are found by the header's names (any case, any order); other columns are left alone (said once) and kept
when the file is rewritten. Every row is checked against the folder before any work: a bad one (a missing or
unreadable file, a path leading outside the folder, a short row, a split other than train/val/test, a class that is
not the image's folder, a row listed twice, a broken quote, a deleted header or a missing column, non-UTF-8 text) is
a DatasetError naming the file, the line and the fix. Writing is only ever a new file, or a new version beside a
timestamped backup of the old one.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DatasetError, DatasetWarning
from ..paths import atomic_write_text
from .base import SPLITS

HEADER = ["path", "class", "split"]


@dataclass
class SplitFile:
    """The split file ``path`` of the image folder ``root`` (``folder_of``: readable image -> class folder;
    ``skipped``: relative path -> why it cannot be read)."""

    path: Path
    root: Path
    folder_of: dict[Path, str]
    skipped: dict[str, str]
    header: list[str] = field(default_factory=lambda: list(HEADER))        # as the file has it
    rows: dict[Path, list[str]] = field(default_factory=dict)             # each image's row, as written

    def reconcile(self, draw: Callable[[], dict[Path, str]]) -> dict[Path, str]:
        """The file as written; ``draw()`` written when there is none; images it lacks added beside a backup."""
        if not self.path.exists():
            drawn = draw()
            self.write(drawn)
            return drawn
        saved = self.read()
        if set(self.folder_of) <= set(saved):
            return saved
        drawn = draw()
        new = {p: drawn[p] for p in sorted(set(self.folder_of) - set(saved))}
        backup = self.backup()
        self.write({**saved, **new})
        tally = ", ".join(f"{s} {n}" for s in SPLITS if (n := list(new.values()).count(s)))
        warnings.warn(f"{len(new)} new image(s) in '{self.root}' since {self.path.name} was written: added them "
                      f"({tally}), your rows kept as written; the previous file is kept as {backup}.", DatasetWarning)
        return {**saved, **new}

    def check_coverage(self, assign: dict[Path, str], classes: list[str]) -> None:
        """Every class has an image in every split (the file may have been edited)."""
        have = {(self.folder_of[p], s) for p, s in assign.items()}
        gaps = [(c, s) for s in SPLITS for c in classes if (c, s) not in have]
        if gaps:
            shown = ", ".join(f"'{c}' in {s}" for c, s in gaps[:5]) + (" ..." if len(gaps) > 5 else "")
            raise DatasetError(f"The split {self.path} leaves classes without images: {shown}. Fix: give every "
                               "class at least one image in every split (move rows of the file, or add images).")

    def write(self, assign: dict[Path, str]) -> None:
        """Write ``assign`` (image -> split), sorted by path, in the file's columns (rows read from it as written)."""
        buf = io.StringIO()
        at = self._positions(self.header)
        rows = []
        for p, s in sorted(assign.items()):
            row = self.rows.get(p)
            if row is None:
                row = [""] * len(self.header)
                for name, value in zip(HEADER, (p.relative_to(self.root).as_posix(), self.folder_of[p], s)):
                    row[at[name]] = value
            rows.append(row)
        csv.writer(buf, lineterminator="\n").writerows([self.header, *rows])
        atomic_write_text(self.path, buf.getvalue())

    @staticmethod
    def _positions(header: list[str]) -> dict[str, int]:
        names = [c.strip().lower() for c in header]
        return {h: names.index(h) for h in HEADER if h in names}

    def backup(self) -> Path:
        """A byte-for-byte copy of the file as ``<name>.bak-<time>`` (never replacing an earlier backup)."""
        target = self.path.with_name(f"{self.path.name}.bak-{time.strftime('%Y%m%d-%H%M%S')}")
        while target.exists():
            target = target.with_name(target.name + "+")
        shutil.copy2(self.path, target)
        return target

    def error(self, line: int, problem: str, fix: str) -> DatasetError:
        return DatasetError(f"{self.path}, line {line}: {problem}. Fix: {fix} (or delete the file to draw a new "
                            "split; nothing was run).")

    def _text(self) -> str:
        data = self.path.read_bytes()
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise self.error(data[:err.start].count(b"\n") + 1, f"byte {data[err.start]:#x} is not UTF-8 text",
                             "save the file as UTF-8 (in a spreadsheet: CSV UTF-8)") from None

    def read(self) -> dict[Path, str]:
        """Image -> split, exactly as written; a bad row is a DatasetError naming its line and the fix."""
        reader = csv.reader(io.StringIO(self._text()), strict=True)
        saved: dict[Path, str] = {}
        first: dict[Path, int] = {}
        line = 1
        at: dict[str, int] = {}
        try:
            for i, row in enumerate(reader):
                if i == 0:
                    at = self._columns(row)
                elif any(c.strip() for c in row):
                    p = self._row(line, row, first, at)
                    saved[p], first[p], self.rows[p] = row[at["split"]].strip(), line, row
                line = reader.line_num + 1
        except csv.Error as err:
            raise self.error(line, f"the CSV cannot be read ({err}: a quote that never closes?)",
                             "close or remove the quote") from None
        return saved

    def _columns(self, row: list[str]) -> dict[str, int]:
        """Where path, class and split are in the header ``row`` (any case, any order); other columns noted once."""
        at = self._positions(row)
        if not at:
            raise self.error(1, f"the first line is {','.join(row)!r}, not the header 'path,class,split'",
                             "put the header line back at the top")
        names = [c.strip().lower() for c in row]
        twice = [h for h in HEADER if names.count(h) > 1]
        missing = [h for h in HEADER if h not in at]
        if twice or missing:
            problem = f"names the column '{twice[0]}' twice" if twice else f"has no column '{missing[0]}'"
            raise self.error(1, f"the header {','.join(row)!r} {problem}; a split file has one path, one class and "
                             "one split column", "write the header with path, class and split (in any order)")
        extra = [c.strip() for c, n in zip(row, names) if n not in HEADER]
        if extra:
            warnings.warn(f"{self.path}: left the column(s) {', '.join(map(repr, extra))} alone; only path, class and "
                          "split are read (other columns are kept when the file is rewritten).", DatasetWarning)
        self.header = list(row)
        return at

    def _row(self, line: int, row: list[str], first: dict[Path, int], at: dict[str, int]) -> Path:
        """The image a data row names, after checking every field of it."""
        if len(row) <= max(at.values()) or len(row) > len(self.header):   # a column missing, or a field too many
            raise self.error(line, f"{len(row)} field(s) {row}; the header has {len(self.header)} "
                             f"({','.join(self.header)})", "write the image's path, its class folder and train, val "
                             "or test, each in its column")
        rel, cls, split = (row[at[h]].strip() for h in HEADER)
        if split not in SPLITS:
            raise self.error(line, f"unknown split {split!r}", f"write one of {', '.join(SPLITS)} (lower case)")
        norm = Path(os.path.normpath(rel)).as_posix() if rel else ""
        if not norm or Path(rel).is_absolute() or norm == ".." or norm.startswith("../"):
            raise self.error(line, f"the path {rel!r} leads outside '{self.root}'",
                             "write paths relative to the image folder, e.g. 'tulip/img1.jpg'")
        path = self.root / norm
        if path not in self.folder_of:
            why = (f"cannot be read ({self.skipped[norm]})" if norm in self.skipped else
                   "is not an image of this folder (missing, renamed, or not inside a class folder)")
            raise self.error(line, f"{rel!r} {why}", "correct the path, or delete the line if the image is gone")
        if path in first:
            raise self.error(line, f"{rel!r} is listed again (first on line {first[path]})", "delete one row")
        if cls != self.folder_of[path]:
            raise self.error(line, f"{rel!r} is in the class folder '{self.folder_of[path]}' but the row says class "
                             f"{cls!r}; the class of an image is its folder",
                             f"write '{self.folder_of[path]}', or move the image into its class's folder")
        return path
