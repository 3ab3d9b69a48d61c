"""SynthFlowers: procedurally drawn flowers shaped like Oxford Flowers102 — an offline STAND-IN, not real photos.

Every class is a combination of four attributes (petal colour, petal count, petal shape, centre colour).
Two drawing styles create a deliberate domain shift:

* ``pretrain``   — what ToyCLIP is pretrained on: studio shots on plain backdrops, centred, large, neutral light;
* ``downstream`` — the train/val/test splits: foliage-textured, cluttered backgrounds, off-centre and smaller
  flowers, squashed perspective, warm (evening) light, blur, sensor noise and occluding leaves.

Zero-shot transfer suffers from the shift; a linear probe on the frozen features can learn to undo it.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError

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
SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "fullsize": 4, "pretrain_eval": 5}


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
    images = _draw_split(split_labels(split)[rows], DOWNSTREAM_STYLE, seed, SPLIT_CODES[split], rows)
    return _resize(images, image_size)


def generate_split(split: str, seed: int = 0, image_size: int = NATIVE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A downstream split: uint8 images [N, image_size, image_size, 3] and int64 labels, grouped by class."""
    labels = split_labels(split)
    return generate_rows(split, np.arange(len(labels)), seed, image_size), labels


def pretraining_style_split(per_class: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 102 classes drawn in the pretraining style (to measure the domain gap), grouped by class."""
    labels = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    return _draw_split(labels, PRETRAIN_STYLE, seed, SPLIT_CODES["pretrain_eval"]), labels


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
