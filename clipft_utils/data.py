"""The shared data layer: decoded-image cache, splits, k-shot sampling and transforms, the same for every dataset.

Each dataset (``clipft_utils.datasets``) says what its splits hold and how to decode rows of them. Here every
split is decoded once into a uint8 cache after open_clip's deterministic evaluation geometry (shorter side
resized to the model's size with bicubic interpolation, centre crop, then RGB). Only the rows a notebook uses
are decoded: a k-shot training set or a k-per-class test subset is its own (small) cache entry. Evaluation
is then only ``/255`` and normalisation; training augmentation runs on the cached tensors.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset

from .datasets import SPLITS, Dataset, check_noting, get_dataset
from .datasets.base import default_workers
from .errors import ConfigError, DatasetError
from .paths import atomic_path, cache_dir, file_lock, notice
from .pixels import BIT_DEPTH_NOTE

__all__ = ["SPLITS", "ImageSplit", "eval_transform", "train_transform", "few_shot_indices", "split_rows",
           "get_split", "load_splits", "save_npy"]


# --------------------------------------------------------------------------- transforms
def eval_transform(mean: Sequence[float], std: Sequence[float]):
    """open_clip's evaluation preprocessing of a cached (already resized and cropped) uint8 image [3, S, S]:
    ``/255`` then normalisation, op for op as its ``ToTensor`` and ``Normalize`` (bit-identical results)."""
    from .loader import normalise
    return lambda image: normalise(image.unsqueeze(0), mean, std)[0]


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """The loader's training augmentation for one image [3, S, S] (random resized crop, scale 0.9-1, and a
    horizontal flip; see ``loader.augment``), drawn from torch's global generator."""
    from .loader import augment, crop_params, normalise

    def apply(image: torch.Tensor) -> torch.Tensor:
        x = augment(image.unsqueeze(0).to(torch.float32), crop_params(1, size, None))
        return normalise(x, mean, std)[0]
    return apply


# --------------------------------------------------------------------------- the split object
@dataclass
class ImageSplit(TorchDataset):
    """One split as cached uint8 images [N, S, S, 3] + labels, served through a transform."""

    images: np.ndarray
    labels: np.ndarray
    classnames: list[str]
    dataset: str                         # the dataset's display name (tables, figures)
    split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_key: str                      # identifies the cached pixels (dataset content, split, rows, size)
    indices: np.ndarray | None = None    # subset of the cached rows (k-shot, class subsets); None = all
    augment: bool = False
    _tf: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        size = self.images.shape[1]
        self._tf = (train_transform(size, self.mean, self.std) if self.augment
                    else eval_transform(self.mean, self.std))

    def __len__(self) -> int:
        return len(self.labels) if self.indices is None else len(self.indices)

    def _row(self, i: int) -> int:
        return int(i if self.indices is None else self.indices[i])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        row = self._row(i)
        image = torch.from_numpy(np.array(self.images[row])).permute(2, 0, 1)  # copy out of the memmap
        return self._tf(image), int(self.labels[row])

    @property
    def targets(self) -> np.ndarray:
        """Labels of the rows this split serves."""
        return self.labels if self.indices is None else self.labels[self.indices]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def cache_key(self) -> str:
        """Identity of the pixels and rows served (not of the augmentation)."""
        rows = "all" if self.indices is None else hashlib.sha1(np.asarray(self.indices).tobytes()).hexdigest()[:10]
        return f"{self.source_key}_{self.split}_{rows}"

    @property
    def key_prefix(self) -> str:
        """The dataset part of the cache key (safe in file names)."""
        return self.source_key.split("_", 1)[0]

    def with_augmentation(self, augment: bool = True) -> "ImageSplit":
        """The same rows with training augmentation switched on (or off)."""
        return replace(self, augment=augment)

    def subset(self, rows: np.ndarray) -> "ImageSplit":
        """A view restricted to ``rows`` (positions within this split)."""
        rows = np.asarray(rows, dtype=np.int64)
        base = rows if self.indices is None else self.indices[rows]
        return replace(self, indices=base)

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, device: str | torch.device = "cpu"):
        """Batches of this split on ``device`` (augmented when ``augment``), reproducible per epoch (loader.CachedLoader)."""
        from .loader import CachedLoader
        return CachedLoader(self, batch_size, shuffle=shuffle, augment=self.augment, seed=seed, device=device)


# --------------------------------------------------------------------------- k-shot
def few_shot_indices(labels: np.ndarray, shots: int, seed: int = 0,
                     classnames: Sequence[str] | None = None) -> np.ndarray:
    """Positions of ``shots`` examples per class, drawn with ``seed``; error if a class has fewer."""
    if isinstance(shots, bool) or not isinstance(shots, (int, np.integer)) or shots <= 0:
        raise ConfigError(f"shots must be a positive whole number, got {shots!r}. Fix: pass shots=None for all.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    picked = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        if len(pool) < shots:
            name = f" ('{classnames[c]}')" if classnames is not None else ""
            raise DatasetError(
                f"shots={shots} but class {c}{name} has only {len(pool)} images in this split. "
                f"Fix: use shots <= {min(np.bincount(labels))}, or shots=None for all images."
            )
        picked.append(np.sort(rng.choice(pool, size=shots, replace=False)))
    return np.concatenate(picked)


def split_rows(labels: np.ndarray, per_class: int | None, seed: int,
               classnames: Sequence[str] | None = None, cap: bool = False) -> np.ndarray | None:
    """Rows of a k-per-class subset (None: every row). ``cap`` lowers k to the smallest class's count."""
    if per_class is None or per_class == 0:
        return None
    if cap:
        per_class = min(int(per_class), int(np.bincount(np.asarray(labels)).min()))
    return few_shot_indices(labels, per_class, seed, classnames)


# --------------------------------------------------------------------------- the cache
def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _file_hash(path: Path) -> str:
    """sha1 of a file's every byte (about 1.5 GB/s on one core, against the tens of seconds per GB its decode took)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def _problem(img_path: Path, lab_path: Path, meta_path: Path) -> str | None:
    """Why a cache entry cannot be served (None: it can): unfinished, unreadable, its shape, or any changed byte."""
    if not meta_path.exists():
        return "incomplete (no record of a finished write)" if img_path.exists() else None
    try:
        meta = json.loads(meta_path.read_text())
        images = np.load(img_path, mmap_mode="r")
        labels = np.load(lab_path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
        return f"unreadable ({type(exc).__name__}: {exc})"
    if list(images.shape) != meta["shape"] or len(labels) != meta["shape"][0]:
        return f"shape {list(images.shape)} does not match the recorded {meta['shape']}"
    if "images_sha1" not in meta:
        return "from an older version that hashed only part of it"
    for path, key in ((img_path, "images_sha1"), (lab_path, "labels_sha1")):
        if _file_hash(path) != meta[key]:
            return f"changed since it was written ({path.name} does not match its recorded hash)"
    return None


def _cached(key: str, build) -> tuple[np.ndarray, np.ndarray]:
    """The cache entry ``key`` (uint8 images, labels); built once, checked on every read, rebuilt if damaged."""
    folder = cache_dir("decoded")
    img_path, lab_path, meta_path = (folder / f"{key}_{part}" for part in ("images.npy", "labels.npy", "meta.json"))
    with file_lock(folder / f".{key}.lock"):  # two processes never build (or read half of) one entry
        problem = _problem(img_path, lab_path, meta_path) if img_path.exists() or meta_path.exists() else "missing"
        if problem is not None:
            if problem != "missing":
                notice(f"The decoded-image cache '{img_path}' is {problem}: rebuilding it.", stacklevel=3)
            meta_path.unlink(missing_ok=True)
            images, labels = build()
            save_npy(lab_path, labels)
            save_npy(img_path, images)
            meta = {"shape": list(images.shape), "images_sha1": _file_hash(img_path),
                    "labels_sha1": _file_hash(lab_path)}
            with atomic_path(meta_path) as tmp:  # written last: it marks a complete entry
                tmp.write_text(json.dumps(meta))
    return np.load(img_path, mmap_mode="r"), np.load(lab_path)


def _rows_tag(rows: np.ndarray | None) -> str:
    return "all" if rows is None else "r" + hashlib.sha1(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:10]


def get_split(dataset: str | Dataset, split: str, image_size: int, mean: Sequence[float], std: Sequence[float], *,
              root: str | Path | None = None, rows: np.ndarray | None = None, workers: int | None = None,
              **options: Any) -> ImageSplit:
    """Rows ``rows`` (None: all) of one split of ``dataset`` at ``image_size`` px, decoded once and cached."""
    ds = get_dataset(dataset, root, **options)
    ds.check_split(split)
    ds.check()  # fail fast, before any decoding
    all_labels = ds.labels(split)
    picked = np.arange(len(all_labels)) if rows is None else np.asarray(rows, dtype=np.int64)
    key = f"{ds.slug}-{ds.identity}_{split}_{image_size}px_{_rows_tag(rows)}"
    images, labels = _cached(key, lambda: (ds.decode(split, picked, image_size, workers or default_workers()),
                                           all_labels[picked]))
    return ImageSplit(images=images, labels=labels, classnames=ds.classnames, dataset=ds.display, split=split,
                      mean=tuple(mean), std=tuple(std), source_key=key)


def load_splits(dataset: str | Dataset, loaded, *, root: str | Path | None = None, shots: int | None = None,
                seed: int = 0, test_per_class: int | None = None, val_per_class: int | None = None,
                splits: Sequence[str] = SPLITS, **options: Any) -> dict[str, ImageSplit]:
    """The splits a notebook needs, sized and normalised for ``loaded`` (a models.LoadedCLIP).

    ``shots``: k training images per class drawn with ``seed``; ``val_per_class``: k validation images per
    class drawn with ``seed``; ``test_per_class``: a fixed k-per-class test subset (drawn with seed 0, the same
    for every seed and method; lowered to the smallest class's count). Only those rows are decoded.
    """
    ds = get_dataset(dataset, root, **options)
    ds.check()
    plan = {"train": (shots, seed, False), "val": (val_per_class, seed, False), "test": (test_per_class, 0, True)}
    out = {}
    for s in splits:
        per_class, draw_seed, cap = plan[s]
        rows = split_rows(ds.labels(s), per_class, draw_seed, ds.classnames, cap=cap)
        out[s] = get_split(ds, s, loaded.image_size, loaded.mean, loaded.std, rows=rows)
    return out


def report(dataset: str | Dataset, root: str | Path | None = None, **options: Any) -> str:
    """What the course will see of a dataset, before any work: classes, images per class and split, skipped
    files and why, and the prompts (``python -m clipft_utils data check PATH``)."""
    import pandas as pd
    ds = get_dataset(dataset, root, **options)
    ds.command_line = True  # its fixes name this command's options
    check_noting(ds)
    counts = pd.DataFrame({s: np.bincount(ds.labels(s), minlength=len(ds.classnames)) for s in SPLITS},
                          index=pd.Index(ds.classnames, name="class"))
    lines = [f"dataset: {ds.describe()}", f"shown as: {ds.display}   (content id {ds.identity})",
             f"{len(ds.classnames)} classes; images per split: "
             + ", ".join(f"{s} {int(counts[s].sum())}" for s in SPLITS), "", counts.to_string(), ""]
    skipped, ignored = getattr(ds, "skipped", []), getattr(ds, "ignored", [])
    lines.append(f"skipped (unreadable) files: {len(skipped)}")
    lines += [f"  {name}: {why}" for name, why in skipped]
    if ignored:
        lines.append(f"ignored (not an image by extension): {len(ignored)}: " + ", ".join(ignored[:10])
                     + (" ..." if len(ignored) > 10 else ""))
    for mode, n in getattr(ds, "converted", {}).items():
        lines.append(f"converted: {n} image(s) in mode {mode} scaled to 8 bits ({BIT_DEPTH_NOTE})")
    if getattr(ds, "split_file", None) is not None:
        lines += [ds.split_rule(), f"split file (yours: edit it to move images between splits; it is used as written "
                                   f"and never overwritten): {ds.split_file}"]
    first, ensemble = ds.classnames[0], ds.templates(True)
    lines += ["", f"prompt template: {ds.templates()[0].format('{}')!r}, e.g. {ds.templates()[0].format(first)!r}",
              f"ensemble ({len(ensemble)} templates), the prompts of '{first}': "
              + " | ".join(t.format(first) for t in ensemble)]
    return "\n".join(lines)
