"""Oxford Flowers102 through unmodified ``torchvision.datasets.Flowers102`` (official splits 1020 / 1020 / 6149)."""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, OfflineError
from ..paths import PROJECT_ROOT, data_dir
from .base import FileDataset, FileIndex, listing_hash, open_image, short_hash

ASSETS = Path(__file__).resolve().parent.parent / "assets"
SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
MAT_FILES = ("imagelabels.mat", "setid.mat")
ENSEMBLE_TEMPLATES = (
    "a photo of a {}, a type of flower.",
    "a photo of a {}.",
    "a close-up photo of a {}, a type of flower.",
    "a cropped photo of a {}, a type of flower.",
    "a bright photo of a {}, a type of flower.",
    "a photo of the small {}, a type of flower.",
    "a photo of the large {}, a type of flower.",
    "itap of a {}.",
)


def shared_mats() -> Path | None:
    """The official .mat files shipped beside the project (``../shared/data/flowers102``), if present."""
    folder = PROJECT_ROOT.parent / "shared" / "data" / "flowers102"
    return folder if all((folder / m).exists() for m in MAT_FILES) else None


class _TorchvisionReader:
    """Split position -> PIL image through torchvision's own Flowers102 (picklable for decode workers)."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __call__(self, position: int) -> Any:
        return self.dataset[position][0]


class Flowers102(FileDataset):
    """``ROOT/flowers-102/`` (``jpg/``, ``imagelabels.mat``, ``setid.mat``) read by torchvision.

    ``verify=False`` reads a self-made folder of the same layout with our own index (torchvision refuses
    .mat files whose md5 is not the official one); ``download=True`` fetches the data first.
    """

    name = "flowers102"

    def __init__(self, root: str | os.PathLike | None = None, verify: bool = True, download: bool = False) -> None:
        super().__init__(root if root is not None else data_dir())
        self.verify, self.download = bool(verify), bool(download)
        self._index: dict[str, FileIndex] = {}

    @property
    def folder(self) -> Path:
        """The ``flowers-102`` folder."""
        return self.root / "flowers-102"

    @property
    def classnames(self) -> list[str]:
        return (ASSETS / "flowers102_classnames.txt").read_text().strip().splitlines()

    def templates(self, ensemble: bool = False) -> list[str]:
        single = (ASSETS / "flowers102_templates.txt").read_text().strip().splitlines()
        return list(ENSEMBLE_TEMPLATES) if ensemble else single

    def describe(self) -> str:
        return f"flowers102 at {self.folder}" + ("" if self.verify else " (self-made .mat files, not verified)")

    def _fix(self) -> str:
        return ("Fix: run `python -m clipft_utils prefetch` on a machine with internet (downloads ~330 MB into "
                f"'{self.root}'), or set the notebook parameter `data_root` to the folder that contains "
                "flowers-102/, or use profile='smoke' for the offline stand-in.")

    def repair_hint(self) -> str:
        return f"re-download Flowers102 (delete '{self.folder}' and run `python -m clipft_utils prefetch`)."

    def check(self) -> None:
        if self.download:
            prefetch(self.root)
        missing = [p for p in ("jpg", *MAT_FILES) if not (self.folder / p).exists()]
        if missing:
            raise DatasetError(f"Flowers102 is not at '{self.folder}': missing {', '.join(missing)}. {self._fix()}")

    def _torchvision(self, split: str) -> Any:
        from torchvision.datasets import Flowers102 as TV
        try:
            return TV(str(self.root), split=split, download=False, loader=open_image)
        except RuntimeError as exc:
            raise DatasetError(
                f"torchvision rejected '{self.folder}' ({exc}): its .mat files are not the official ones. "
                "Fix: re-download with `python -m clipft_utils prefetch`, or pass verify=False for a "
                "self-made stand-in.") from exc

    def index(self, split: str) -> FileIndex:
        if split not in self._index:
            self.check()
            self._index[split] = self._build_index(self.check_split(split))
        return self._index[split]

    def _build_index(self, split: str) -> FileIndex:
        if self.verify:
            tv = self._torchvision(split)
            files, labels = [Path(f) for f in tv._image_files], np.asarray(tv._labels, dtype=np.int64)
        else:
            from scipy.io import loadmat
            ids = loadmat(self.folder / "setid.mat", squeeze_me=True)[SPLIT_KEYS[split]].tolist()
            all_labels = loadmat(self.folder / "imagelabels.mat", squeeze_me=True)["labels"] - 1
            files = [self.folder / "jpg" / f"image_{i:05d}.jpg" for i in ids]
            labels = np.asarray([all_labels[i - 1] for i in ids], dtype=np.int64)
        absent = [f for f in files if not f.exists()]
        if absent:
            raise DatasetError(
                f"Flowers102 at '{self.folder}' is incomplete: {len(absent)} of the {len(files)} '{split}' images "
                f"are missing (first: {absent[0].name}). {self._fix()}")
        return FileIndex(files, labels, self.folder)

    def decode_inputs(self, split: str, rows: np.ndarray) -> list[Any]:
        return [int(r) for r in rows] if self.verify else super().decode_inputs(split, rows)

    def reader(self, split: str):
        return _TorchvisionReader(self._torchvision(split)) if self.verify else open_image

    @cached_property
    def identity(self) -> str:
        self.check()
        mats = [hashlib.md5((self.folder / m).read_bytes()).hexdigest() for m in MAT_FILES]
        jpgs = sorted((self.folder / "jpg").iterdir())
        return short_hash(*mats, listing_hash(jpgs, self.folder), self.verify)


def prefetch(root: str | os.PathLike | None = None) -> Path:
    """Download Flowers102 (images and official split files) into ``root`` with torchvision."""
    from torchvision.datasets import Flowers102 as TV
    from ..models import online
    root = Path(root or data_dir()).expanduser()
    folder = root / "flowers-102"
    if not (folder / "jpg").exists() and not online("www.robots.ox.ac.uk"):
        raise OfflineError(
            f"Flowers102 is not in '{folder}' and this machine is offline. Fix: run "
            "`python -m clipft_utils prefetch` on a machine with internet and copy the data/ folder over, "
            "or use profile='smoke' for the offline stand-in.")
    for split in SPLIT_KEYS:
        TV(str(root), split=split, download=True)
    return folder
