"""The dataset interface every dataset implements, and the decoding that file-based datasets share.

A dataset tells the course four things: its class names, its prompt templates, the index of each split
(labels, and files or a generator) and how to decode rows of a split into uint8 images. Everything else —
the decoded-image cache, k-shot sampling, feature caches, loaders, notebooks — is shared and lives in
``clipft_utils.data``. A subclass that sets ``name`` registers itself (see ``clipft_utils.datasets``).

Decoding follows open_clip's evaluation preprocessing step for step: the image is opened in its own mode
(with its EXIF orientation applied), resized on its shorter side with bicubic interpolation, centre-cropped,
and only then converted to RGB — exactly where open_clip's ``MaybeConvertMode`` does it. The cached uint8
pixels divided by 255 are therefore bit-identical to open_clip's ``ToTensor`` output. The one step open_clip lacks:
a 16-bit, 32-bit or float image (which its ``convert("RGB")`` clips to white) is first scaled to 8 bits by
``pixels.to_8bit``; every 8-bit image passes that step untouched.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence, Union

import numpy as np

from ..errors import ConfigError, DatasetError

SPLITS = ("train", "val", "test")
REGISTRY: dict[str, type["Dataset"]] = {}
"""Dataset name -> class; filled by ``Dataset.__init_subclass__``."""


def short_hash(*parts: Any, n: int = 8) -> str:
    """A short sha1 of the parts' text (for cache keys and dataset ids)."""
    return hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:n]


def slug(text: str) -> str:
    """``text`` reduced to letters, digits, '.', '_' and '-' (safe in file and folder names)."""
    out = "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-.")
    return out or "dataset"


def listing_hash(files: Sequence[Path], base: Path) -> str:
    """Hash of the relative paths, sizes and modification times of ``files``: changes when any file does."""
    h = hashlib.sha1()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(base).as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


class Dataset:
    """One dataset: class names, prompt templates, the split index and how to decode it."""

    name: ClassVar[str] = ""          # registry key, e.g. "flowers102"
    standin: ClassVar[bool] = False   # True for data the project generated itself (never real photos)
    standin_note: ClassVar[str] = ""  # how a stand-in is labelled, e.g. "SynthFlowers, not Flowers102 photos"
    command_line: bool = False        # set by `data check`: fixes name command-line options, not Python's

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            REGISTRY[cls.name] = cls

    def __init__(self, root: str | os.PathLike | None = None, **options: Any) -> None:
        if options:
            raise ConfigError(f"Dataset '{self.name}' takes no option(s) {sorted(options)}.")
        self.root = None if root is None else Path(root).expanduser()

    # ---- what the course reads -----------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        """Class names in label order."""
        raise NotImplementedError

    def templates(self, ensemble: bool = False) -> list[str]:
        """The prompt template(s) (``{}`` is the class name): one, or an ensemble."""
        raise NotImplementedError

    def labels(self, split: str) -> np.ndarray:
        """int64 labels of every image of ``split``, in split order (cheap: nothing is decoded)."""
        raise NotImplementedError

    @property
    def identity(self) -> str:
        """A short id of the content: it changes whenever the images, labels or splits change."""
        raise NotImplementedError

    @property
    def display(self) -> str:
        """How tables and figures name the dataset."""
        return self.name

    @property
    def slug(self) -> str:
        """The dataset's name in file names (cache keys, result folders)."""
        return slug(self.display)

    def check(self) -> None:
        """Raise a DatasetError naming the problem and the fix, before any decoding (default: nothing to check)."""

    def describe(self) -> str:
        """One line saying where the data comes from."""
        return self.display

    # ---- how to decode ---------------------------------------------------------------------------
    def decode(self, split: str, rows: np.ndarray, size: int, workers: int) -> np.ndarray:
        """uint8 images [len(rows), size, size, 3] of the given rows of ``split`` (eval geometry)."""
        raise NotImplementedError

    def check_split(self, split: str) -> str:
        """Return ``split`` if it is one of SPLITS, else raise a ConfigError."""
        if split not in SPLITS:
            raise ConfigError(f"Unknown split '{split}'. Fix: use one of {', '.join(SPLITS)}.")
        return split

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


# ------------------------------------------------------------------------------- file-based datasets
def open_image(path: str | os.PathLike) -> Any:
    """A fully loaded PIL image in its own mode, EXIF orientation applied (raises OSError if unreadable)."""
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        im.load()  # truncated or corrupt data fails here, not later in a worker
        return ImageOps.exif_transpose(im)


def eval_geometry(size: int):
    """8 bits (``pixels.to_8bit``), open_clip's evaluation geometry, then RGB, as uint8 [size, size, 3] (see the
    module docstring)."""
    from torchvision import transforms as T
    from ..pixels import to_8bit
    resize = T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)
    crop = T.CenterCrop(size)

    def apply(image: Any) -> np.ndarray:
        return np.asarray(crop(resize(to_8bit(image))).convert("RGB"), dtype=np.uint8)
    return apply


@dataclass
class _Decoded:
    """What one decode job returns: the pixels and the image's own mode, or why there are none."""

    position: int
    pixels: np.ndarray | None
    error: str = ""
    mode: str = ""


class _DecodeJobs:
    """A map-style dataset of decode jobs; failures are returned, not raised, so one bad file is reported by name."""

    def __init__(self, items: Sequence[Any], read, size: int):
        self.items, self.read, self.geometry = list(items), read, eval_geometry(size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Decoded:
        try:
            image = self.read(self.items[i])
            return _Decoded(i, self.geometry(image), mode=image.mode)
        except Exception as exc:  # noqa: BLE001 - reported with the file's name by decode_items
            return _Decoded(i, None, f"{type(exc).__name__}: {exc}")


def _collate(batch: list[_Decoded]) -> list[_Decoded]:
    return batch


def default_workers() -> int:
    """Decode workers: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def decode_items(items: Sequence[Any], read, size: int, workers: int, desc: str,
                 names: Sequence[str] | None = None) -> tuple[np.ndarray, list[tuple[str, str]], list[str]]:
    """Decode ``items`` with ``read`` (item -> PIL image) in ``workers`` processes.

    Returns uint8 images [len(items), size, size, 3], the (name, error) of every item that failed (its pixels are
    left at 0) and each item's PIL mode as read ('' if it failed); ``names[i]`` names item i in messages. Progress is
    shown with tqdm.
    """
    import torch
    from ..progress import bar
    jobs = _DecodeJobs(items, read, size)
    out = np.zeros((len(jobs), size, size, 3), dtype=np.uint8)
    failed: list[tuple[str, str]] = []
    modes = [""] * len(jobs)
    workers = max(0, min(int(workers), len(jobs) // 32)) if workers else 0
    loader = torch.utils.data.DataLoader(jobs, batch_size=32, num_workers=workers, collate_fn=_collate)
    with bar(total=len(jobs), desc=desc, unit="img") as progress:
        for batch in loader:
            for d in batch:
                if d.pixels is None:
                    failed.append((names[d.position] if names else str(jobs.items[d.position]), d.error))
                else:
                    out[d.position], modes[d.position] = d.pixels, d.mode
            progress.update(len(batch))
    return out, failed, modes


@dataclass
class FileIndex:
    """The files and labels of one split of a file-based dataset."""

    files: list[Path]
    labels: np.ndarray
    base: Path = field(default=Path("."))

    def name(self, path: Path) -> str:
        """A file's name relative to the dataset folder (for messages)."""
        try:
            return path.relative_to(self.base).as_posix()
        except ValueError:
            return str(path)


class FileDataset(Dataset):
    """A dataset of image files on disk: subclasses provide ``index(split)``; decoding is shared."""

    def index(self, split: str) -> FileIndex:
        """Files and labels of ``split``."""
        raise NotImplementedError

    def labels(self, split: str) -> np.ndarray:
        return self.index(self.check_split(split)).labels

    def reader(self, split: str):
        """item -> PIL image, for the items of ``decode_inputs`` (default: open the file)."""
        return open_image

    def decode_inputs(self, split: str, rows: np.ndarray) -> list[Any]:
        """The items ``reader`` receives for ``rows`` (default: the file paths)."""
        idx = self.index(split)
        return [idx.files[int(r)] for r in rows]

    def on_failed(self, split: str, failed: list[tuple[str, str]]) -> None:
        """Unreadable files while decoding: a clear error naming them (the default)."""
        shown = "; ".join(f"{n} ({e})" for n, e in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise DatasetError(f"{len(failed)} image(s) of {self.display} '{split}' cannot be read: {shown}{more}. "
                           f"Fix: {self.repair_hint()}")

    def repair_hint(self) -> str:
        """What to do about an unreadable file."""
        return "replace or delete the file(s) named above."

    def decode(self, split: str, rows: np.ndarray, size: int, workers: int) -> np.ndarray:
        idx = self.index(split)
        images, failed, _ = decode_items(self.decode_inputs(split, rows), self.reader(split), size, workers,
                                      desc=f"decode {self.display}/{split} @{size}px",
                                      names=[idx.name(idx.files[int(r)]) for r in rows])
        if failed:
            self.on_failed(split, failed)
        return images


def image_extensions() -> tuple[str, ...]:
    """torchvision's IMG_EXTENSIONS plus every extension PIL has an opener for."""
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS
    Image.init()
    return tuple(sorted(set(IMG_EXTENSIONS) | {e for e, f in Image.registered_extensions().items() if f in Image.OPEN}))


def readable(files: Sequence[Path], base: Path) -> tuple[dict[Path, str], dict[str, int]]:
    """(file -> error) of the ``files`` PIL cannot fully decode, and how many readable ones are in each mode that
    ``pixels.to_8bit`` scales (``data check`` lists them); each verdict is cached by (path, size, mtime)."""
    from ..pixels import HIGH_BIT_MODES
    seen = _inspect(files, base)
    modes = [mode for error, mode in seen.values() if not error and mode in HIGH_BIT_MODES]
    return {p: error for p, (error, _) in seen.items() if error}, {m: modes.count(m) for m in sorted(set(modes))}


def _inspect(files: Sequence[Path], base: Path) -> dict[Path, tuple[str, str]]:
    """Each file's (error, PIL mode): the error '' when PIL decodes the file fully, the mode '' when it cannot."""
    import json
    from ..paths import atomic_write_text, cache_dir
    record = cache_dir("readable") / f"{short_hash(base.resolve())}.json"
    known = json.loads(record.read_text()) if record.exists() else {}
    stamp = {p: f"{p.relative_to(base).as_posix()}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files}
    todo = [p for p in files if not isinstance(known.get(stamp[p]), list)]   # older records hold no mode
    if todo:
        _, failed, modes = decode_items(todo, open_image, 8, default_workers(), desc=f"check {base.name}",
                                        names=[stamp[p] for p in todo])
        errors = dict(failed)
        known.update({stamp[p]: [errors.get(stamp[p], ""), mode] for p, mode in zip(todo, modes)})
        atomic_write_text(record, json.dumps(known))
    return {p: tuple(known[stamp[p]]) for p in files}


def stratified_split(by_class: dict[str, list[Any]], counts, seed: int) -> dict[Any, str]:
    """Assign each class's items to splits: ``counts(class, n)`` gives how many per split, in order (it raises when
    a class is too small); seeded."""
    rng, out = np.random.default_rng(seed), {}
    for c, items in by_class.items():
        order, start = rng.permutation(len(items)), 0
        for name, k in counts(c, len(items)).items():
            out.update({items[i]: name for i in order[start:start + k]})
            start += k
    return out


REST = "rest"
Size = Union[int, float, str]


def _size_problem(split: str, value: Any) -> str | None:
    """Why ``value`` is not a size of ``split`` (None: it is a count >= 1, a fraction 0 < f < 1, or 'rest')."""
    if value == REST or not isinstance(value, bool) and (isinstance(value, int) and value >= 1
                                                         or isinstance(value, float) and 0 < value < 1):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{split} is {value!r}, which is not a count, a fraction or rest"
    if isinstance(value, int) or value <= 0:
        return f"{split} must be at least 1 image per class (got {value:g}: it would leave {split} empty)"
    return f"{split} is {value:g}: a fraction must lie strictly between 0 and 1, and a count must be a whole number"


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
        if not isinstance(items, (list, tuple)) or len(items) not in (2, 3):
            raise ConfigError(f"data_split={value!r} is not a split: it needs 2 or 3 sizes (train, val[, test]). "
                              f"{cls.HOW}")
        problems = [p for p in map(_size_problem, SPLITS, items) if p]
        if problems:
            raise ConfigError(f"data_split={value!r} is not a split: {'; '.join(problems)}. {cls.HOW}")
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

    def checked_counts(self, cls: str, n: int, names: Sequence[str] = SPLITS, where: str = "") -> dict[str, int]:
        """``counts``, after checking THE rule: a smaller class is a DatasetError naming it, its count and the fix."""
        need = self.minimum(names)
        if n < need:
            lower = "" if self.minimum() <= 3 else ", or a split with smaller counts (data_split / --split)"
            raise DatasetError(f"Class '{cls}' has {n} readable image(s){where}; the split {self} needs "
                               f"{self.rule(names)}. Fix: add {need - n} image(s) to '{cls}'{lower}, or remove the "
                               "class folder.")
        return self.counts(n, names)

    def rule(self, names: Sequence[str] = SPLITS) -> str:
        """THE rule in words (what ``data check``, the errors and the README say)."""
        return f"at least {self.minimum(names)} images per class (every split gets at least one image of every class)"


def templates_file(path: Path, default: Sequence[str], ensemble: bool) -> list[str]:
    """Templates from ``path`` (one per line; ``{}`` = the class name, every other brace literal text) or
    ``default``, ready for ``str.format``; the first one alone unless ``ensemble``. A line without exactly one ``{}``
    is a DatasetError naming it."""
    lines = path.read_text().splitlines() if path.exists() else list(default)
    given = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            given.append(_template(line.strip(), f"{path}, line {n}" if path.exists() else "a default template"))
    return given if ensemble else given[:1]


def _template(text: str, where: str) -> str:
    """One template line as ``str.format`` takes it: its one ``{}`` the placeholder, other braces escaped (literal)."""
    count = text.count("{}")
    if count != 1:
        problem = "has no {}" if count == 0 else f"has {count} {{}}"
        raise DatasetError(f"{where}: the template {text!r} {problem}; a template holds exactly one {{}}, where the "
                           "class name goes. Fix: write one {} in that line (other braces are kept as text).")
    return "{}".join(part.replace("{", "{{").replace("}", "}}") for part in text.split("{}"))
