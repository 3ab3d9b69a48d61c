"""SynthFlowers: vocabulary, determinism, splits, pretraining corpus and the Flowers102-shaped writer."""
from __future__ import annotations

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from clipft_utils.datasets import get_dataset  # noqa: E402
from clipft_utils.datasets.flowers102 import shared_mats  # noqa: E402
from clipft_utils.standin import folders, synth, toyclip  # noqa: E402
from clipft_utils.errors import ConfigError  # noqa: E402


@pytest.fixture(scope="module")
def train_split() -> tuple[np.ndarray, np.ndarray]:
    return synth.generate_split("train", seed=0)


def _n_tokens(text: str) -> int:
    """Tokens of ``text`` including start and end of text."""
    return len(toyclip.tokenizer().encode(text)) + 2


def test_classnames_are_102_distinct_combinations():
    assert len(synth.CLASSNAMES) == synth.NUM_CLASSES == 102
    assert len(set(synth.CLASSNAMES)) == 102
    assert len(set(synth.CLASS_COMBINATIONS)) == 102
    attrs = synth.class_attributes(0)
    assert set(attrs) >= {"colour", "count", "shape", "centre", "n_petals"}
    assert attrs["name"] == synth.CLASSNAMES[0]
    with pytest.raises(ConfigError):
        synth.class_attributes(102)


def test_no_prompt_or_caption_is_truncated():
    context = toyclip.model_config()["text_cfg"]["context_length"]
    longest = max(synth.corpus_vocabulary(), key=_n_tokens)
    assert _n_tokens(longest) <= context, longest
    assert synth.TEMPLATES == ["a photo of a {}, a type of flower."]


def test_heldout_compositions_never_in_pretraining():
    held = {synth.CLASS_COMBINATIONS[i] for i in synth.HELDOUT_CLASSES}
    assert held and not held & set(synth.PRETRAIN_COMBINATIONS)
    for position, vocabulary in enumerate((synth.PETAL_COLOURS, synth.PETAL_COUNTS, synth.PETAL_SHAPES,
                                           synth.CENTRE_COLOURS)):
        assert {c[position] for c in synth.PRETRAIN_COMBINATIONS} == set(vocabulary)


def test_pretraining_batch_is_deterministic_and_captions_name_every_attribute():
    a_img, a_cap = synth.pretraining_batch(np.random.default_rng(3), 64)
    b_img, b_cap = synth.pretraining_batch(np.random.default_rng(3), 64)
    assert a_img.shape == (64, 64, 64, 3) and a_img.dtype == np.uint8
    assert np.array_equal(a_img, b_img) and a_cap == b_cap
    for cap in a_cap:
        words = set(cap.replace(",", " ").replace(".", " ").replace(":", " ").replace("-", " ").split())
        for vocabulary in (synth.PETAL_COLOURS, synth.PETAL_COUNTS, synth.PETAL_SHAPES, ("centre", "center", "middle")):
            assert words & set(vocabulary), cap


def test_splits_are_deterministic_and_distinct(train_split):
    images, labels = train_split
    again, _ = synth.generate_split("train", seed=0)
    val, val_labels = synth.generate_split("val", seed=0, image_size=32)
    assert images.shape == (1020, 64, 64, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.array_equal(np.bincount(labels), np.full(102, 10))
    assert np.array_equal(images, again)
    assert val.shape == (1020, 32, 32, 3) and np.array_equal(val_labels, labels)
    small_train = np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BICUBIC)) for im in images])
    assert not np.array_equal(small_train, val)  # different splits draw different images
    with pytest.raises(ConfigError):
        synth.generate_split("holdout")


def test_test_split_size():
    assert synth.SPLIT_SIZES == {"train": 10, "val": 10, "test": 30}
    images, labels = synth.generate_split("test", seed=1)
    assert images.shape == (3060, 64, 64, 3)
    assert labels.min() == 0 and labels.max() == 101 and np.all(np.bincount(labels) == 30)


def test_sample_grid_returns_a_figure(train_split):
    import matplotlib
    matplotlib.use("Agg")
    fig = synth.sample_grid(*train_split, synth.CLASSNAMES, n_classes=3, per_class=2)
    assert len(fig.axes) == 6


def test_fullsize_standin_with_self_made_mats_round_trips(tmp_path):
    root = folders.write_fullsize_standin(tmp_path, n_images=310, size=40, progress=False, workers=1)
    folder = root / "flowers-102"
    total = 0
    for split in ("train", "val", "test"):
        index = get_dataset("flowers102", root, verify=False).index(split)  # the course's own reader
        files, labels = index.files, index.labels
        assert set(labels.tolist()) == set(range(102))
        total += len(files)
    assert total == 310 and len(list((folder / "jpg").glob("image_*.jpg"))) == 310
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and min(im.size) == 40 and max(im.size) <= 56
    with pytest.raises(ConfigError):
        folders.write_fullsize_standin(tmp_path / "tiny", n_images=50, progress=False)


def test_fullsize_image_is_photo_sized(tmp_path):
    root = folders.write_fullsize_standin(tmp_path, n_images=400, ids=[1, 2], progress=False, workers=1)
    paths = sorted((root / "flowers-102" / "jpg").glob("*.jpg"))
    assert [p.name for p in paths] == ["image_00001.jpg", "image_00002.jpg"]
    for path in paths:
        with Image.open(path) as im:
            assert min(im.size) == 500 and 500 <= max(im.size) <= 700
        assert 20_000 < path.stat().st_size < 120_000  # realistic JPEG decode cost


OFFICIAL = shared_mats()


@pytest.mark.skipif(OFFICIAL is None, reason="no official Flowers102 .mat files beside the project")
def test_standin_with_official_mats_loads_in_unmodified_torchvision(tmp_path):
    from torchvision.datasets import Flowers102
    from scipy.io import loadmat
    train_ids = loadmat(OFFICIAL / "setid.mat", squeeze_me=True)["trnid"][:3].tolist()
    root = folders.write_fullsize_standin(tmp_path, size=48, ids=train_ids, progress=False, workers=1)
    for name in ("imagelabels.mat", "setid.mat"):
        assert (hashlib.md5((root / "flowers-102" / name).read_bytes()).hexdigest()
                == hashlib.md5((OFFICIAL / name).read_bytes()).hexdigest())
    ds = Flowers102(str(root), split="train", download=False)
    assert len(ds) == 1020
    official = loadmat(OFFICIAL / "imagelabels.mat", squeeze_me=True)["labels"]
    for i in range(3):  # torchvision reads image files only when indexed
        image, label = ds[i]
        assert min(image.size) == 48 and label == official[train_ids[i] - 1] - 1


def test_the_rehearsal_writes_its_full_size_folder_once_with_the_official_mats(tmp_path, monkeypatch):
    """rehearsal_root (what `run --rehearse` calls first): every image, the official .mat files, written once.
    (tests/test_rehearsal.py writes only the images its course reads, then runs the course through it.)"""
    from clipft_utils.errors import DatasetError
    calls = []

    def write(root, mats, **kw):                         # what the real writer leaves: flowers-102/ under root
        calls.append((root, mats, kw))
        (root / "flowers-102").mkdir(parents=True)
    monkeypatch.setattr(folders, "write_fullsize_standin", write)
    monkeypatch.setenv("CLIPFT_DATA", str(tmp_path))
    monkeypatch.setenv("CLIPFT_FLOWERS_MATS", str(tmp_path / "mats"))
    root = folders.rehearsal_root(echo=lambda line: None)
    assert root == tmp_path / "rehearsal" and calls == [(root, tmp_path / "mats", {})]  # n_images: all 8189
    assert (root / "flowers-102" / ".complete").read_text().startswith(f"{folders.FLOWERS102_N_IMAGES} images")
    assert folders.rehearsal_root(echo=lambda line: None) == root and len(calls) == 1      # once
    monkeypatch.setenv("CLIPFT_DATA", str(tmp_path / "other"))
    monkeypatch.delenv("CLIPFT_FLOWERS_MATS")
    monkeypatch.setattr("clipft_utils.datasets.flowers102.shared_mats", lambda: None)
    with pytest.raises(DatasetError, match="Fix: set CLIPFT_FLOWERS_MATS"):
        folders.rehearsal_root(echo=lambda line: None)


def test_grid_cli(tmp_path):
    out = tmp_path / "grid.png"
    assert folders.main(["grid", "--out", str(out), "--split", "val"]) == 0
    assert out.stat().st_size > 1000
