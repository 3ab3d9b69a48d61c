"""Stand-in image folders drawn with SynthFlowers (``synth``): a full-size folder in Flowers102's own on-disk layout
(the rehearsal's data, and for timing the real pipeline), and small ``ROOT/<class>`` folders of your-own-images
shape; ``python -m clipft_utils synth fullsize|grid``."""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, DatasetError
from .synth import (CLASS_COMBINATIONS, CLASSNAMES, DOWNSTREAM_STYLE, NATIVE_SIZE, NUM_CLASSES, SPLIT_CODES,
                    SPLIT_SIZES, generate_split, render, sample_grid)

FLOWERS102_N_IMAGES = 8189
_MAT_FILES = ("imagelabels.mat", "setid.mat")


def _self_made_mats(n_images: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels (1..102) and split ids (1-based) for ``n_images``: per class 10/10/rest (fewer when tiny)."""
    if n_images < 3 * NUM_CLASSES:
        raise ConfigError(f"n_images={n_images} is too small: every class needs train, val and test images. "
                          f"Fix: use n_images >= {3 * NUM_CLASSES}.")
    rng = np.random.default_rng([seed, SPLIT_CODES["fullsize"]])
    labels = rng.permutation(np.arange(n_images) % NUM_CLASSES) + 1
    splits: dict[str, list[int]] = {"trnid": [], "valid": [], "tstid": []}
    for c in range(1, NUM_CLASSES + 1):
        ids = np.flatnonzero(labels == c) + 1
        k = min(10, len(ids) // 3)
        splits["trnid"] += ids[:k].tolist()
        splits["valid"] += ids[k:2 * k].tolist()
        splits["tstid"] += ids[2 * k:].tolist()
    return labels, {key: np.sort(np.asarray(v)) for key, v in splits.items()}


def _write_mats(base: Path, mat_dir: Path | None, n_images: int, seed: int) -> np.ndarray:
    """Copy the official .mat files (byte-identical) or write self-made ones; return labels 1..102."""
    from scipy.io import loadmat, savemat
    base.mkdir(parents=True, exist_ok=True)
    if mat_dir is not None:
        for name in _MAT_FILES:
            shutil.copyfile(mat_dir / name, base / name)
        return np.asarray(loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]).astype(np.int64)
    labels, splits = _self_made_mats(n_images, seed)  # stored with the official files' dtypes and shapes
    savemat(base / "imagelabels.mat", {"labels": labels[None].astype(np.uint8)})
    savemat(base / "setid.mat", {k: v[None].astype(np.uint16) for k, v in splits.items()})
    return labels


def _resolve_mat_dir(mat_dir: str | os.PathLike | None, n_images: int) -> Path | None:
    """The folder with official .mat files to copy, or None to write self-made ones."""
    if mat_dir is None:
        if n_images != FLOWERS102_N_IMAGES:
            return None  # the official files describe exactly 8189 images
        from ..datasets.flowers102 import shared_mats
        return shared_mats()
    mat_dir = Path(mat_dir).expanduser()
    missing = [n for n in _MAT_FILES if not (mat_dir / n).exists()]
    if missing:
        raise DatasetError(f"mat_dir '{mat_dir}' lacks {', '.join(missing)}. Fix: point it at the folder "
                           "holding the official imagelabels.mat and setid.mat, or leave it out.")
    if n_images != FLOWERS102_N_IMAGES:
        raise ConfigError(f"The official .mat files describe {FLOWERS102_N_IMAGES} images, not {n_images}. "
                          "Fix: drop n_images, or drop mat_dir to write self-made .mat files.")
    return mat_dir


def _fullsize_image(image_id: int, label: int, size: int, seed: int) -> Image.Image:
    """Image ``image_id`` of the stand-in: downstream style drawn at 128 px short side, enlarged to ``size``
    (shaped like Flowers102's photos: portrait or landscape, long side up to 1.4x the short one)."""
    rng = np.random.default_rng([seed, SPLIT_CODES["fullsize"], image_id])
    aspect = rng.uniform(1.0, 1.4)
    landscape = rng.random() < 0.6
    base = min(size, 2 * NATIVE_SIZE)
    w, h = (round(base * aspect), base) if landscape else (base, round(base * aspect))
    img = Image.fromarray(render(CLASS_COMBINATIONS[label - 1], DOWNSTREAM_STYLE, rng, w, h))
    width, height = (round(size * aspect), size) if landscape else (size, round(size * aspect))
    return img.resize((width, height), Image.BICUBIC)  # the enlarged sensor noise keeps JPEGs ~40-55 KB


def _write_images(jobs: list[tuple[Path, int, int]], size: int, seed: int) -> int:
    """Write the JPEGs of ``jobs`` (path, image id, label) atomically; return how many were written."""
    for path, image_id, label in jobs:
        tmp = path.with_name(f".{path.name}.tmp")
        _fullsize_image(image_id, label, size, seed).save(tmp, format="JPEG", quality=90)
        os.replace(tmp, path)
    return len(jobs)


def write_fullsize_standin(root: str | os.PathLike, mat_dir: str | os.PathLike | None = None, size: int = 500,
                           n_images: int = FLOWERS102_N_IMAGES, seed: int = 0, progress: bool = True,
                           ids: Iterable[int] | None = None, workers: int = 2, overwrite: bool = False) -> Path:
    """Write ``root/flowers-102`` in Flowers102's layout (``jpg/image_%05d.jpg``, ``imagelabels.mat``,
    ``setid.mat``) with SynthFlowers images ``size`` px on the short side; return ``root``.

    With the official .mat files (``mat_dir``, default ``../shared/data/flowers102`` when present and
    ``n_images`` is 8189) they are copied byte-identically, so unmodified ``torchvision.datasets.Flowers102``
    loads the folder, and image i shows the class the official labels give it. Otherwise self-made .mat files
    (same keys, 10/10/rest per class) are written: torchvision rejects their md5, our own loader
    (``data.get_split('flowers102', ..., verify=False)``) reads them. ``ids`` (1-based) writes only those images (tests);
    existing images are kept unless ``overwrite``.
    """
    from tqdm.auto import tqdm
    base = Path(root).expanduser() / "flowers-102"
    labels = _write_mats(base, _resolve_mat_dir(mat_dir, n_images), n_images, seed)
    (base / "jpg").mkdir(exist_ok=True)
    wanted = sorted(set(ids)) if ids is not None else range(1, len(labels) + 1)
    jobs = [(base / "jpg" / f"image_{i:05d}.jpg", i, int(labels[i - 1])) for i in wanted]
    jobs = [j for j in jobs if overwrite or not j[0].exists()]
    chunks = [jobs[i:i + 64] for i in range(0, len(jobs), 64)]
    bar = tqdm(total=len(jobs), desc=f"SynthFlowers stand-in @{size}px", unit="img", disable=not progress)
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for done in pool.map(_write_images, chunks, itertools.repeat(size), itertools.repeat(seed)):
                bar.update(done)
    else:
        for chunk in chunks:
            bar.update(_write_images(chunk, size, seed))
    bar.close()
    return Path(root).expanduser()


# --------------------------------------------------------------------------- the rehearsal's data
def rehearsal_root(echo=print) -> Path:
    """``data/rehearsal``: the full-size Flowers102-shaped stand-in (8189 JPEGs, 500 px) with the official .mat
    files, so that unmodified torchvision reads it; written once (about a minute on 2 cores), then reused."""
    from ..datasets.flowers102 import shared_mats
    from ..paths import data_dir
    root = data_dir() / "rehearsal"
    marker = root / "flowers-102" / ".complete"
    if marker.exists():
        return root
    given = os.environ.get("CLIPFT_FLOWERS_MATS")
    mats = Path(given).expanduser() if given else shared_mats()
    if mats is None:
        raise DatasetError("The rehearsal needs Flowers102's official imagelabels.mat and setid.mat (torchvision checks "
                           "their md5). Fix: set CLIPFT_FLOWERS_MATS to the folder that holds them (they come with "
                           "Flowers102, or ../shared/data/flowers102 beside the project).")
    echo(f"[rehearse] writing the Flowers102-shaped stand-in into {root} (once; about a minute)")
    write_fullsize_standin(root, mats)
    marker.write_text("8189 images written\n")
    return root


# --------------------------------------------------------------------------- a folder of "your own" images
def write_imagefolder_standin(root: str | os.PathLike, n_classes: int = 12, per_class: int = 25, seed: int = 0,
                              size: int = 96, faults: bool = True) -> Path:
    """A folder in the layout users bring, ``root/<class>/<images>``, drawn by SynthFlowers: JPEGs and PNGs,
    one class nested one folder deeper; with ``faults``: one grayscale, one CMYK and one RGBA image, a
    truncated JPEG and a text file (what a real folder of photos tends to hold). Returns ``root``."""
    root = Path(root).expanduser()
    labels = np.linspace(0, NUM_CLASSES - 1, n_classes).round().astype(int)
    for k, label in enumerate(labels):
        folder = root / CLASSNAMES[label].replace(" ", "_")  # class names from folder names, as users write them
        folder = folder / "field" if k == 1 else folder  # nested: ImageFolder walks sub-folders
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, 6, int(label), i])
            w = round(size * rng.uniform(1.0, 1.4))
            img = Image.fromarray(render(CLASS_COMBINATIONS[label], DOWNSTREAM_STYLE, rng, w, size))
            kind = (k, i) if faults else None
            if kind == (0, 0):
                img = img.convert("L")
            elif kind == (0, 1):
                img = img.convert("CMYK")
            elif kind == (0, 2):
                img = img.convert("RGBA")
            ext = ".png" if i % 3 == 2 else ".jpg"
            img.save(folder / f"img_{i:03d}{ext}", quality=90)
        if k == 0:
            first = folder
    if faults:  # in the first class (never the nested one), whatever the folder names sort as
        jpegs = sorted(first.glob("img_*.jpg"))[2:]  # past the grayscale and CMYK ones
        if jpegs:
            data = jpegs[0].read_bytes()
            jpegs[0].write_bytes(data[: len(data) // 2])  # truncated JPEG
        (first / "notes.txt").write_text("shot in the garden, May\n")
    return root


# --------------------------------------------------------------------------- command line
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m clipft_utils synth fullsize --root DIR [--mat-dir DIR]`` or ``grid --out FILE``."""
    parser = argparse.ArgumentParser(prog="python -m clipft_utils synth", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    full = sub.add_parser("fullsize", help="write a full-size Flowers102-shaped stand-in folder")
    full.add_argument("--root", required=True, help="folder that will contain flowers-102/")
    full.add_argument("--mat-dir", default=None, help="folder with the official .mat files (default: shared/)")
    full.add_argument("--size", type=int, default=500)
    full.add_argument("--n-images", type=int, default=FLOWERS102_N_IMAGES)
    full.add_argument("--seed", type=int, default=0)
    grid = sub.add_parser("grid", help="save a grid of sample images (downstream and pretraining style)")
    grid.add_argument("--out", required=True)
    grid.add_argument("--split", default="train", choices=list(SPLIT_SIZES))
    args = parser.parse_args(argv)
    if args.cmd == "fullsize":
        root = write_fullsize_standin(args.root, args.mat_dir, args.size, args.n_images, args.seed)
        print(f"wrote {root / 'flowers-102'}")
    else:
        images, labels = generate_split(args.split)
        sample_grid(images, labels, CLASSNAMES).savefig(args.out, dpi=120)
        print(f"wrote {args.out}")
    return 0


def _register() -> None:
    from ..config import PREPARE_DATA
    PREPARE_DATA["rehearse"] = rehearsal_root


_register()

if __name__ == "__main__":
    raise SystemExit(main())
