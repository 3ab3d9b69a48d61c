"""SynthFlowers: procedurally drawn flowers shaped like Oxford Flowers102 — an offline STAND-IN, not real photos.

Every class is a combination of four attributes (petal colour, petal count, petal shape, centre colour).
Two drawing styles create a deliberate domain shift:

* ``pretrain``   — what ToyCLIP is pretrained on: studio shots on plain backdrops, centred, large, neutral light;
* ``downstream`` — the train/val/test splits: foliage-textured, cluttered backgrounds, off-centre and smaller
  flowers, squashed perspective, warm (evening) light, blur, sensor noise and occluding leaves.

Zero-shot transfer suffers from the shift; a linear probe on the frozen features can learn to undo it.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError, DatasetError

DATASET_NAME = "synthflowers"
NATIVE_SIZE = 64          # images are drawn at 2x this and box-downsampled (anti-aliasing)
NUM_CLASSES = 102

# --------------------------------------------------------------------------- the attribute vocabulary
PETAL_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 45), "orange": (250, 140, 25), "yellow": (250, 220, 45), "pink": (250, 135, 195),
    "purple": (135, 55, 185), "blue": (55, 95, 225), "white": (245, 245, 240),
}
PETAL_COUNTS: dict[str, int] = {"three": 3, "five": 5, "eight": 8}
PETAL_SHAPES: tuple[str, ...] = ("round", "pointed", "thin")
CENTRE_COLOURS: dict[str, tuple[int, int, int]] = {
    "yellow": (245, 205, 30), "brown": (105, 60, 25), "white": (250, 250, 250),
}
_PETAL_HALF_WIDTH = {"round": 0.36, "pointed": 0.30, "thin": 0.11}  # as a fraction of petal length

CLASS_NAME_FORMAT = "{colour} flower with {count} {shape} petals and a {centre} centre"
TEMPLATES = ["a photo of a {}, a type of flower."]  # CLIP's own Flowers102 template
ENSEMBLE_TEMPLATES = [
    "a photo of a {}, a type of flower.",
    "a photo of a {}.",
    "a close-up photo of a {}, a type of flower.",
    "a blurry photo of a {}.",
    "a photo of a {} in a garden.",
    "a cropped photo of a {}.",
]


def _all_combinations() -> list[tuple[str, str, str, str]]:
    """Every (colour, count, shape, centre) whose centre differs from its petals (171 of them)."""
    product = itertools.product(PETAL_COLOURS, PETAL_COUNTS, PETAL_SHAPES, CENTRE_COLOURS)
    return [c for c in product if c[0] != c[3]]


def _pick_classes() -> list[tuple[str, str, str, str]]:
    """The 102 classes: a fixed random subset of the combinations, in vocabulary order."""
    combos = _all_combinations()
    keep = np.random.default_rng(102).permutation(len(combos))[:NUM_CLASSES]
    return [combos[i] for i in sorted(keep)]


CLASS_COMBINATIONS: list[tuple[str, str, str, str]] = _pick_classes()
CLASSNAMES: list[str] = [
    CLASS_NAME_FORMAT.format(colour=a, count=n, shape=s, centre=c) for a, n, s, c in CLASS_COMBINATIONS
]
HELDOUT_CLASSES: tuple[int, ...] = tuple(range(4, NUM_CLASSES, 9))
"""Labels whose attribute combination never appears in pretraining (11 classes: 4, 13, ..., 94);
ToyCLIP sees every one of their words, but never the combination."""
PRETRAIN_COMBINATIONS: list[tuple[str, str, str, str]] = [
    c for c in _all_combinations() if c not in {CLASS_COMBINATIONS[i] for i in HELDOUT_CLASSES}
]


def class_attributes(label: int) -> dict:
    """The attributes of class ``label`` (0..101), e.g. ``{"colour": "red", "count": "five", ...}``."""
    if not 0 <= int(label) < NUM_CLASSES:
        raise ConfigError(f"SynthFlowers labels are 0..{NUM_CLASSES - 1}, got {label}.")
    colour, count, shape, centre = CLASS_COMBINATIONS[int(label)]
    return {"colour": colour, "count": count, "n_petals": PETAL_COUNTS[count], "shape": shape,
            "centre": centre, "name": CLASSNAMES[int(label)], "heldout": int(label) in HELDOUT_CLASSES}


# --------------------------------------------------------------------------- drawing styles
@dataclass(frozen=True)
class Style:
    """How one family of images is drawn (all sizes are fractions of the image's short side)."""

    name: str
    textured: bool            # foliage texture behind the flower (else a plain light background)
    clutter: tuple[int, int]  # range of the number of out-of-focus blobs (leaves, stones, other blossoms)
    offset: float             # max distance of the flower centre from the image centre
    radius: tuple[float, float]  # petal length range
    squash: tuple[float, float]  # vertical scale range (flowers seen at an angle)
    light: tuple[float, float, float]  # RGB gain of the scene's light
    light_jitter: float       # per-image, per-channel jitter of that gain
    brightness: tuple[float, float]
    desaturate: float         # blend towards grey (haze)
    blur: tuple[float, float]  # Gaussian blur radius range, in pixels at 64 px
    noise: float              # sensor noise std (0..255 scale)
    occlusion: float          # probability of a leaf in front of the flower
    colour_jitter: float      # per-image jitter of petal / centre colours (0..255 scale)


PRETRAIN_STYLE = Style(
    name="pretrain", textured=False, clutter=(0, 0), offset=0.05, radius=(0.34, 0.42), squash=(0.92, 1.0),
    light=(1.0, 1.0, 1.0), light_jitter=0.02, brightness=(0.95, 1.05), desaturate=0.0, blur=(0.0, 0.0),
    noise=2.0, occlusion=0.0, colour_jitter=12.0,
)
DOWNSTREAM_STYLE = Style(
    name="downstream", textured=True, clutter=(1, 4), offset=0.1, radius=(0.28, 0.4), squash=(0.7, 1.0),
    light=(1.12, 0.96, 0.78), light_jitter=0.07, brightness=(0.65, 1.1), desaturate=0.25, blur=(0.0, 1.0),
    noise=7.0, occlusion=0.3, colour_jitter=22.0,
)
STYLES = {s.name: s for s in (PRETRAIN_STYLE, DOWNSTREAM_STYLE)}


def _jitter_colour(rng: np.random.Generator, rgb: Sequence[int], amount: float) -> tuple[int, int, int]:
    """``rgb`` plus a little per-channel noise, clipped to 0..255."""
    return tuple(int(v) for v in np.clip(np.asarray(rgb) + rng.normal(0, amount, 3), 0, 255))


def _background(rng: np.random.Generator, style: Style, width: int, height: int) -> Image.Image:
    """A studio backdrop (a smooth gradient of muted colours), or blotchy foliage with out-of-focus clutter."""
    if not style.textured:
        top = rng.uniform(60, 250) + rng.normal(0, 15, 3)
        bottom = top * rng.uniform(0.7, 1.1) + rng.normal(0, 10, 3)
        rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        gradient = np.broadcast_to(top + rows * (bottom - top), (height, width, 3))
        return Image.fromarray(np.clip(gradient, 0, 255).astype(np.uint8))
    # drawn small (the short side is 32 px) and blurred there, then enlarged: out of focus and cheap
    scale = 32 / min(width, height)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    palette = np.array([[40, 90, 35], [75, 120, 45], [110, 95, 55], [60, 70, 40], [140, 150, 90]], float)
    blotches = palette[rng.integers(0, len(palette), (5, 5))] + rng.normal(0, 15, (5, 5, 3))
    img = Image.fromarray(np.clip(blotches, 0, 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(style.clutter[0], style.clutter[1] + 1)):  # leaves, stones, other blossoms
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.04, 0.14) * 32
        fill = tuple(int(v) for v in rng.integers(20, 220, 3))
        draw.ellipse([x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r * rng.uniform(0.4, 1.0)], fill=fill)
    return img.filter(ImageFilter.GaussianBlur(0.7)).resize((width, height), Image.BICUBIC)


def _petal_outline(shape: str, length: float, half_width: float) -> np.ndarray:
    """Points of one petal pointing along +x from the origin."""
    t = np.linspace(0.0, 1.0, 12)
    if shape == "pointed":  # widest near the base, sharp tip
        y = half_width * np.sin(np.pi * t ** 0.6) * (1 - t) ** 0.15
    else:  # round and thin: ellipses
        y = half_width * np.sin(np.pi * t)
    top = np.stack([t * length, y], 1)
    bottom = np.stack([t[::-1] * length, -y[::-1]], 1)
    return np.concatenate([top, bottom])


def _draw_flower(draw: ImageDraw.ImageDraw, rng: np.random.Generator, combo: tuple[str, str, str, str],
                 style: Style, cx: float, cy: float, radius: float, squash: float) -> None:
    """Stem, petals and centre of one flower of attribute combination ``combo``."""
    colour, count, shape, centre = combo
    n = PETAL_COUNTS[count]
    green = _jitter_colour(rng, (50, 130, 45), 15)
    draw.line([(cx, cy), (cx + rng.normal(0, radius * 0.3), cy + radius * 4)], fill=green,
              width=max(1, int(radius * 0.1)))
    petal_rgb = _jitter_colour(rng, PETAL_COLOURS[colour], style.colour_jitter)
    edge = tuple(int(v * 0.7) for v in petal_rgb)
    base = _petal_outline(shape, radius, _PETAL_HALF_WIDTH[shape] * radius)
    start = rng.uniform(0, 2 * np.pi)
    for k in range(n):
        a = start + 2 * np.pi * k / n + rng.normal(0, 0.05)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        pts = base * rng.uniform(0.9, 1.05) @ rot.T
        pts = pts * [1.0, squash] + [cx, cy]
        draw.polygon([tuple(p) for p in pts], fill=petal_rgb, outline=edge)
    r = radius * rng.uniform(0.2, 0.26)
    centre_rgb = _jitter_colour(rng, CENTRE_COLOURS[centre], style.colour_jitter * 0.7)
    draw.ellipse([cx - r, cy - r * squash, cx + r, cy + r * squash], fill=centre_rgb,
                 outline=tuple(int(v * 0.75) for v in centre_rgb))


def _draw_leaf(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, size: float) -> None:
    """An occluding leaf near (cx, cy)."""
    a = rng.uniform(0, 2 * np.pi)
    outline = _petal_outline("pointed", size, size * 0.3)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    x0, y0 = cx + rng.normal(0, size * 0.4), cy + rng.normal(0, size * 0.4)
    pts = outline @ rot.T + [x0, y0]
    draw.polygon([tuple(p) for p in pts], fill=_jitter_colour(rng, (45, 115, 40), 18))


def _apply_light(pixels: np.ndarray, rng: np.random.Generator, style: Style) -> np.ndarray:
    """Scene light (colour gain, brightness, haze) and sensor noise; float in, uint8 out."""
    gain = np.asarray(style.light) * (1 + rng.normal(0, style.light_jitter, 3)) * rng.uniform(*style.brightness)
    x = pixels * gain.astype(np.float32)
    if style.desaturate:
        x += style.desaturate * (x.mean(axis=2, keepdims=True) - x)
    if style.noise:
        x += rng.standard_normal(x.shape, dtype=np.float32) * style.noise
    return np.clip(x, 0, 255).astype(np.uint8)


def render(combo: tuple[str, str, str, str], style: Style, rng: np.random.Generator,
           width: int = NATIVE_SIZE, height: int | None = None, supersample: int = 2) -> np.ndarray:
    """One flower image (uint8 [height, width, 3]) of attribute combination ``combo`` in ``style``."""
    height = height or width
    W, H = width * supersample, height * supersample
    img = _background(rng, style, W, H)
    draw = ImageDraw.Draw(img)
    short = min(W, H)
    cx = W / 2 + rng.uniform(-1, 1) * style.offset * short
    cy = H / 2 + rng.uniform(-1, 1) * style.offset * short
    radius = rng.uniform(*style.radius) * short
    _draw_flower(draw, rng, combo, style, cx, cy, radius, rng.uniform(*style.squash))
    if rng.random() < style.occlusion:
        _draw_leaf(draw, rng, cx, cy, radius * rng.uniform(0.6, 1.0))
    if supersample > 1:
        img = img.reduce(supersample)
    blur = rng.uniform(*style.blur) * min(width, height) / NATIVE_SIZE
    if blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    return _apply_light(np.asarray(img, dtype=np.float32), rng, style)


# --------------------------------------------------------------------------- the downstream splits
SPLIT_SIZES = {"train": 10, "val": 10, "test": 30}
"""Images per class. Train/val match Flowers102 (10/class); test uses 30/class (3060 images; Flowers102
has 20-238/class) to keep generation fast while giving a per-class accuracy resolution of 1/30."""
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "fullsize": 4, "pretrain_eval": 5}


def _resize(images: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a stack of square images with PIL bicubic."""
    if images.shape[1] == image_size:
        return images
    out = np.empty((len(images), image_size, image_size, 3), np.uint8)
    for i, im in enumerate(images):
        out[i] = np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BICUBIC))
    return out


def _draw_split(labels: np.ndarray, style: Style, seed: int, code: int,
                positions: Iterable[int] | None = None) -> np.ndarray:
    """Draw one image per label; the image at split position i uses its own generator seeded by (seed, code, i)."""
    positions = range(len(labels)) if positions is None else list(positions)
    out = np.empty((len(labels), NATIVE_SIZE, NATIVE_SIZE, 3), np.uint8)
    for k, (i, y) in enumerate(zip(positions, labels)):
        out[k] = render(CLASS_COMBINATIONS[y], style, np.random.default_rng([seed, code, int(i)]))
    return out


def split_labels(split: str) -> np.ndarray:
    """int64 labels of a downstream split, grouped by class (nothing is drawn)."""
    if split not in SPLIT_SIZES:
        raise ConfigError(f"Unknown SynthFlowers split '{split}'. Fix: use one of {', '.join(SPLIT_SIZES)}.")
    return np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), SPLIT_SIZES[split])


def generate_rows(split: str, rows: Sequence[int], seed: int = 0, image_size: int = NATIVE_SIZE) -> np.ndarray:
    """uint8 images [len(rows), image_size, image_size, 3] of the given positions of a downstream split."""
    rows = np.asarray(rows, dtype=np.int64)
    images = _draw_split(split_labels(split)[rows], DOWNSTREAM_STYLE, seed, _SPLIT_CODES[split], rows)
    return _resize(images, image_size)


def generate_split(split: str, seed: int = 0, image_size: int = NATIVE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A downstream split: uint8 images [N, image_size, image_size, 3] and int64 labels, grouped by class."""
    labels = split_labels(split)
    return generate_rows(split, np.arange(len(labels)), seed, image_size), labels


def pretraining_style_split(per_class: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 102 classes drawn in the pretraining style (to measure the domain gap), grouped by class."""
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    return _draw_split(labels, PRETRAIN_STYLE, seed, _SPLIT_CODES["pretrain_eval"]), labels


# --------------------------------------------------------------------------- pretraining corpus
_CENTRE_WORDS = ("centre", "center", "middle")
CAPTION_FORMATS = (
    "{a} {colour} flower with {count} {shape} petals and a {centre} {cw}",
    "a photo of a {colour} flower with {count} {shape} petals and a {centre} {cw}.",
    "{count} {shape} {colour} petals around a {centre} {cw}",
    "a flower with a {centre} {cw} and {count} {colour} {shape} petals",
    "{a} {colour} {count}-petalled flower with {shape} petals and a {centre} {cw}",
    "{colour} flower, {count} {shape} petals, {centre} {cw}",
    "a picture of a flower: {count} {colour} petals, {shape}, with a {centre} {cw}",
)
"""Caption wordings of the pretraining corpus; they vary order and phrasing but always name all four
attributes (partial captions would make two different flowers share a caption). The second one is CLIP's
Flowers102 prompt around the class-name wording, kept verbatim (hence "a orange")."""


def caption(combo: tuple[str, str, str, str], rng: np.random.Generator) -> str:
    """A randomly worded caption naming every attribute of ``combo``."""
    colour, count, shape, centre = combo
    fmt = CAPTION_FORMATS[rng.integers(len(CAPTION_FORMATS))]
    return fmt.format(colour=colour, count=count, shape=shape, centre=centre, a=_article(colour),
                      cw=_CENTRE_WORDS[rng.integers(len(_CENTRE_WORDS))])


def _article(word: str) -> str:
    """'an' before a vowel, else 'a'."""
    return "an" if word[0] in "aeiou" else "a"


def pretraining_batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[str]]:
    """``n`` pretraining-style images (uint8 [n, 64, 64, 3]) of non-held-out combinations, with captions."""
    picks = rng.integers(0, len(PRETRAIN_COMBINATIONS), n)
    images = np.empty((n, NATIVE_SIZE, NATIVE_SIZE, 3), np.uint8)
    captions = []
    for i, p in enumerate(picks):
        combo = PRETRAIN_COMBINATIONS[p]
        images[i] = render(combo, PRETRAIN_STYLE, rng)
        captions.append(caption(combo, rng))
    return images, captions


def corpus_vocabulary() -> list[str]:
    """Every text the project feeds ToyCLIP: the caption wordings of all combinations, class names, templates."""
    texts = [f.format(colour=a, count=n, shape=s, centre=c, cw=w, a=_article(a))
             for a, n, s, c in _all_combinations() for f in CAPTION_FORMATS for w in _CENTRE_WORDS]
    texts += [t.format(c) for c in CLASSNAMES for t in ENSEMBLE_TEMPLATES]
    return texts


# --------------------------------------------------------------------------- figures
def sample_grid(images: np.ndarray, labels: np.ndarray, classnames: Sequence[str], n_classes: int = 6,
                per_class: int = 6, title: str = "SynthFlowers (synthetic stand-in, not Flowers102)"):
    """A matplotlib Figure: ``per_class`` images of each of ``n_classes`` classes spread over the labels."""
    import textwrap

    import matplotlib.pyplot as plt
    labels = np.asarray(labels)
    present = np.unique(labels)
    classes = present[np.unique(np.linspace(0, len(present) - 1, min(n_classes, len(present))).round().astype(int))]
    fig, axes = plt.subplots(len(classes), per_class, figsize=(1.3 * per_class + 2.6, 1.3 * len(classes)),
                             squeeze=False)
    for row, c in zip(axes, classes):
        idx = np.flatnonzero(labels == c)[:per_class]
        for j, ax in enumerate(row):
            ax.axis("off")
            if j < len(idx):
                ax.imshow(images[idx[j]])
        row[0].text(-0.1, 0.5, "\n".join(textwrap.wrap(classnames[c], 24)), transform=row[0].transAxes,
                    ha="right", va="center", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- full-size Flowers102-shaped folder
FLOWERS102_N_IMAGES = 8189
_MAT_FILES = ("imagelabels.mat", "setid.mat")


def _self_made_mats(n_images: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels (1..102) and split ids (1-based) for ``n_images``: per class 10/10/rest (fewer when tiny)."""
    if n_images < 3 * NUM_CLASSES:
        raise ConfigError(f"n_images={n_images} is too small: every class needs train, val and test images. "
                          f"Fix: use n_images >= {3 * NUM_CLASSES}.")
    rng = np.random.default_rng([seed, _SPLIT_CODES["fullsize"]])
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
    rng = np.random.default_rng([seed, _SPLIT_CODES["fullsize"], image_id])
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
    """``python -m clipft_utils.synth fullsize --root DIR [--mat-dir DIR]`` or ``grid --out FILE``."""
    parser = argparse.ArgumentParser(prog="python -m clipft_utils.synth", description=__doc__.splitlines()[0])
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
