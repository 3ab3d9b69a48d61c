"""Datasets behind one interface: Flowers102 (torchvision) and the SynthFlowers stand-in.

Every split is decoded once into a uint8 cache after open_clip's deterministic evaluation geometry
(shorter side resized to the model's size with bicubic interpolation, centre crop). Evaluation is then
only ``/255`` and normalisation; training augmentation runs on the cached tensors.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2
from tqdm.auto import tqdm

from .errors import ConfigError, DatasetError, OfflineError
from .paths import PROJECT_ROOT, atomic_path, cache_dir, data_dir

DATASETS = ("flowers102", "synthflowers")
SPLITS = ("train", "val", "test")
ASSETS = Path(__file__).resolve().parent / "assets"
FLOWERS_SPLIT_KEYS = {"train": "trnid", "val": "valid", "test": "tstid"}
FLOWERS_ENSEMBLE_TEMPLATES = (
    "a photo of a {}, a type of flower.",
    "a photo of a {}.",
    "a close-up photo of a {}, a type of flower.",
    "a cropped photo of a {}, a type of flower.",
    "a bright photo of a {}, a type of flower.",
    "a photo of the small {}, a type of flower.",
    "a photo of the large {}, a type of flower.",
    "itap of a {}.",
)


def check_dataset(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise a ConfigError listing them."""
    if name not in DATASETS:
        raise ConfigError(f"Unknown dataset '{name}'. Fix: use one of {', '.join(DATASETS)}.")
    return name


def classnames(name: str) -> list[str]:
    """The dataset's class names in label order (Flowers102: the names CLIP used)."""
    if check_dataset(name) == "flowers102":
        return (ASSETS / "flowers102_classnames.txt").read_text().strip().splitlines()
    from . import synth
    return list(synth.CLASSNAMES)


def templates(name: str, ensemble: bool = False) -> list[str]:
    """The dataset's prompt template(s): CLIP's single flower template, or an ensemble."""
    if check_dataset(name) == "flowers102":
        single = (ASSETS / "flowers102_templates.txt").read_text().strip().splitlines()
        return list(FLOWERS_ENSEMBLE_TEMPLATES) if ensemble else single
    from . import synth
    return list(synth.ENSEMBLE_TEMPLATES if ensemble else synth.TEMPLATES)


# --------------------------------------------------------------------------- transforms
def eval_transform(mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """open_clip's evaluation preprocessing applied to a cached (already resized and cropped) image."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def train_transform(size: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """open_clip's training augmentation (random resized crop, scale 0.9-1) plus a horizontal flip."""
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(mean), list(std)),
    ])


# --------------------------------------------------------------------------- the split object
@dataclass
class ImageSplit(Dataset):
    """One split as cached uint8 images [N, S, S, 3] + labels, served through a transform."""

    images: np.ndarray
    labels: np.ndarray
    classnames: list[str]
    dataset: str
    split: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source_key: str                      # identifies the cached pixels (dataset, root, size)
    indices: np.ndarray | None = None    # subset of the cached rows (k-shot); None = all
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
        return self._tf(v2.functional.to_image(image)).as_subclass(torch.Tensor), int(self.labels[row])

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

    def with_augmentation(self, augment: bool = True) -> "ImageSplit":
        """The same rows with training augmentation switched on (or off)."""
        return replace(self, augment=augment)

    def subset(self, rows: np.ndarray) -> "ImageSplit":
        """A view restricted to ``rows`` (positions within this split)."""
        rows = np.asarray(rows, dtype=np.int64)
        base = rows if self.indices is None else self.indices[rows]
        return replace(self, indices=base)

    def loader(self, batch_size: int, shuffle: bool = False, seed: int = 0, num_workers: int = 0):
        """A DataLoader whose shuffling is reproducible per epoch (see engine.make_loader)."""
        from .engine import make_loader
        return make_loader(self, batch_size=batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers)


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


# --------------------------------------------------------------------------- Flowers102
def flowers_folder(root: str | Path | None = None) -> Path:
    """The ``flowers-102`` folder under ``root`` (default: the course's data folder)."""
    return Path(root or data_dir()).expanduser() / "flowers-102"


def _flowers_index(folder: Path, split: str) -> tuple[list[Path], np.ndarray]:
    from scipy.io import loadmat
    ids = loadmat(folder / "setid.mat", squeeze_me=True)[FLOWERS_SPLIT_KEYS[split]].tolist()
    labels = loadmat(folder / "imagelabels.mat", squeeze_me=True)["labels"] - 1
    files = [folder / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    return files, np.asarray([labels[i - 1] for i in ids], dtype=np.int64)


def check_flowers_folder(root: str | Path | None, split: str) -> tuple[list[Path], np.ndarray]:
    """Verify the official layout (jpg/, imagelabels.mat, setid.mat, every image of ``split``)."""
    folder = flowers_folder(root)
    fix = ("Fix: run `python -m clipft_utils prefetch` on a machine with internet (downloads ~330 MB into "
           f"'{folder.parent}'), or set the notebook parameter `data_root` to the folder that contains "
           "flowers-102/, or use profile='smoke' for the offline stand-in.")
    missing = [p for p in ("jpg", "imagelabels.mat", "setid.mat") if not (folder / p).exists()]
    if missing:
        raise DatasetError(f"Flowers102 is not at '{folder}': missing {', '.join(missing)}. {fix}")
    files, labels = _flowers_index(folder, split)
    absent = [f for f in files if not f.exists()]
    if absent:
        raise DatasetError(
            f"Flowers102 at '{folder}' is incomplete: {len(absent)} of the {len(files)} '{split}' images are "
            f"missing (first: {absent[0].name}). {fix}")
    return files, labels


def _verified_torchvision(root: Path, split: str, transform) -> Dataset:
    """torchvision's own Flowers102 (checks the md5 of the official .mat files)."""
    from torchvision.datasets import Flowers102
    try:
        return Flowers102(str(root), split=split, transform=transform, download=False)
    except RuntimeError as exc:
        raise DatasetError(
            f"torchvision rejected '{flowers_folder(root)}' ({exc}): its .mat files are not the official ones. "
            "Fix: re-download with `python -m clipft_utils prefetch`, or pass verify=False for a "
            "self-made stand-in.") from exc


class _FileDataset(Dataset):
    def __init__(self, files: list[Path], labels: np.ndarray, transform):
        self.files, self.labels, self.transform = files, labels, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), int(self.labels[i])


def _decode_flowers(root: Path, split: str, size: int, verify: bool, workers: int) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import transforms as T
    files, labels = check_flowers_folder(root, split)
    geometry = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                          T.PILToTensor()])
    ds = _verified_torchvision(root, split, geometry) if verify else _FileDataset(files, labels, geometry)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, num_workers=workers)
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    got = np.empty(len(files), dtype=np.int64)
    i = 0
    for x, y in tqdm(loader, desc=f"decode flowers102/{split} @{size}px", leave=False):
        out[i:i + len(x)] = x.permute(0, 2, 3, 1).numpy()
        got[i:i + len(x)] = y.numpy()
        i += len(x)
    return out, got


# --------------------------------------------------------------------------- the cache
def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def _cached(key: str, build) -> tuple[np.ndarray, np.ndarray]:
    folder = cache_dir("decoded")
    img_path, lab_path = folder / f"{key}_images.npy", folder / f"{key}_labels.npy"
    if not (img_path.exists() and lab_path.exists()):
        images, labels = build()
        save_npy(lab_path, labels)
        save_npy(img_path, images)  # written last: its presence marks a complete entry
    return np.load(img_path, mmap_mode="r"), np.load(lab_path)


def _root_id(root: Path) -> str:
    return hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:8]


def get_split(dataset: str, split: str, image_size: int, mean: Sequence[float], std: Sequence[float], *,
              root: str | Path | None = None, seed: int = 0, download: bool = False, verify: bool = True,
              workers: int = 2) -> ImageSplit:
    """One split of ``dataset`` at ``image_size`` px, decoded once and cached under data/cache/decoded."""
    check_dataset(dataset)
    if split not in SPLITS:
        raise ConfigError(f"Unknown split '{split}'. Fix: use one of {', '.join(SPLITS)}.")
    if dataset == "flowers102":
        root = Path(root or data_dir()).expanduser()
        if download:
            prefetch_flowers(root)
        check_flowers_folder(root, split)  # fail fast, before any decoding
        key = f"flowers102-{_root_id(root)}-{'v' if verify else 'u'}_{split}_{image_size}px"
        images, labels = _cached(key, lambda: _decode_flowers(root, split, image_size, verify, workers))
        source = key.replace(f"_{split}_", "_")
    else:
        from . import synth
        version = hashlib.sha1(Path(synth.__file__).read_bytes()).hexdigest()[:8]  # redraw when the code changes
        key = f"synthflowers-s{seed}-{version}_{split}_{image_size}px"
        images, labels = _cached(key, lambda: synth.generate_split(split, seed=seed, image_size=image_size))
        source = key.replace(f"_{split}_", "_")
    return ImageSplit(images=images, labels=labels, classnames=classnames(dataset), dataset=dataset,
                      split=split, mean=tuple(mean), std=tuple(std), source_key=source)


def load_splits(dataset: str, loaded, *, root: str | Path | None = None, shots: int | None = None,
                seed: int = 0, data_seed: int = 0, splits: Sequence[str] = SPLITS,
                download: bool = False, verify: bool = True) -> dict[str, ImageSplit]:
    """The splits a notebook needs, sized and normalised for ``loaded`` (a models.LoadedCLIP)."""
    out = {s: get_split(dataset, s, loaded.image_size, loaded.mean, loaded.std, root=root, seed=data_seed,
                        download=download, verify=verify) for s in splits}
    if shots is not None and "train" in out:
        tr = out["train"]
        out["train"] = tr.subset(few_shot_indices(tr.targets, shots, seed, tr.classnames))
    return out


def prefetch_flowers(root: str | Path | None = None) -> Path:
    """Download Flowers102 (images and official split files) into ``root`` with torchvision."""
    from torchvision.datasets import Flowers102
    from .models import _online
    root = Path(root or data_dir()).expanduser()
    folder = flowers_folder(root)
    if not (folder / "jpg").exists() and not _online("www.robots.ox.ac.uk"):
        raise OfflineError(
            f"Flowers102 is not in '{folder}' and this machine is offline. Fix: run "
            "`python -m clipft_utils prefetch` on a machine with internet and copy the data/ folder over, "
            "or use profile='smoke' for the offline stand-in.")
    for split in SPLITS:
        Flowers102(str(root), split=split, download=True)
    return folder


def project_shared_mats() -> Path | None:
    """The official .mat files shipped beside the project (``../shared/data/flowers102``), if present."""
    folder = PROJECT_ROOT.parent / "shared" / "data" / "flowers102"
    return folder if (folder / "setid.mat").exists() and (folder / "imagelabels.mat").exists() else None
