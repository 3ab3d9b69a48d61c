"""The data layer: Flowers102's official layout, clear errors, k-shot, caches and transforms."""
from __future__ import annotations

import shutil
import time

import numpy as np
import open_clip
import pytest
import scipy.io
import torch
from PIL import Image

from clipft_utils import data as D
from clipft_utils.datasets import get_dataset
from clipft_utils.datasets.flowers102 import shared_mats
from clipft_utils.errors import ConfigError, DatasetError

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


def _write_flowers(root, labels: np.ndarray, splits: dict[str, np.ndarray], mats=None, write=None):
    """A Flowers102-shaped folder: jpg/image_%05d.jpg + (official or self-made) .mat files."""
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    if mats is not None:
        shutil.copy(mats / "imagelabels.mat", base)
        shutil.copy(mats / "setid.mat", base)
    else:
        scipy.io.savemat(base / "imagelabels.mat", {"labels": labels[None, :] + 1})
        scipy.io.savemat(base / "setid.mat", {k: v[None, :] for k, v in
                                              zip(("trnid", "valid", "tstid"), splits.values())})
    rng = np.random.default_rng(0)
    ids = np.concatenate(list(splits.values())) if write is None else write
    for i in ids:
        size = (int(rng.integers(40, 60)), int(rng.integers(40, 60)))
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(base / "jpg" / f"image_{i:05d}.jpg", quality=90)
    return base


@pytest.fixture
def small_flowers(tmp_path):
    labels = np.repeat(np.arange(3), 6)                     # 3 classes, 18 images
    ids = np.arange(1, 19)
    splits = {"train": ids[0::3], "val": ids[1::3], "test": ids[2::3]}
    _write_flowers(tmp_path, labels, splits)
    return tmp_path, labels, splits


def test_missing_dataset_folder_fails_fast_with_the_fix(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="prefetch") as err:
        D.get_split("flowers102", "train", 32, MEAN, STD, root=tmp_path / "nowhere")
    assert "missing jpg, imagelabels.mat, setid.mat" in str(err.value)
    assert time.perf_counter() - start < 1.0


def test_incomplete_dataset_folder_is_reported(small_flowers):
    root, _, splits = small_flowers
    (root / "flowers-102" / "jpg" / f"image_{splits['val'][2]:05d}.jpg").unlink()
    with pytest.raises(DatasetError, match="incomplete: 1 of the 6 'val' images are missing"):
        D.get_split("flowers102", "val", 32, MEAN, STD, root=root, verify=False)


def test_self_made_layout_loads_with_our_reader_and_torchvision_refuses_it(small_flowers):
    root, labels, splits = small_flowers
    split = D.get_split("flowers102", "test", 32, MEAN, STD, root=root, verify=False)
    assert len(split) == 6 and split.images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(split.targets, labels[splits["test"] - 1])
    with pytest.raises(DatasetError, match="not the official ones"):
        D.get_split("flowers102", "val", 32, MEAN, STD, root=root, verify=True)


def test_cached_pixels_equal_open_clips_preprocessing(small_flowers):
    root, _, splits = small_flowers
    split = D.get_split("flowers102", "train", 32, MEAN, STD, root=root, verify=False)
    preprocess = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD)
    with Image.open(root / "flowers-102" / "jpg" / f"image_{splits['train'][0]:05d}.jpg") as im:
        expected = preprocess(im.convert("RGB"))
    assert torch.equal(split[0][0], expected)  # bit-identical: same ops in the same order


def test_decoded_cache_is_reused(small_flowers, monkeypatch):
    root, _, _ = small_flowers
    first = D.get_split("flowers102", "val", 32, MEAN, STD, root=root, verify=False)
    from clipft_utils.datasets.flowers102 import Flowers102
    monkeypatch.setattr(Flowers102, "decode", lambda *a, **k: pytest.fail("decoded twice"))
    second = D.get_split("flowers102", "val", 32, MEAN, STD, root=root, verify=False)
    np.testing.assert_array_equal(np.asarray(first.images), np.asarray(second.images))


def test_training_augmentation_changes_pixels_but_not_shape(small_flowers):
    root, _, _ = small_flowers
    split = D.get_split("flowers102", "train", 32, MEAN, STD, root=root, verify=False)
    torch.manual_seed(0)
    aug = split.with_augmentation()
    a, b = aug[0][0], split[0][0]
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)


@pytest.mark.skipif(shared_mats() is None, reason="official .mat files not beside the project")
def test_official_layout_loads_through_unmodified_torchvision(tmp_path):
    mats = shared_mats()
    setid = scipy.io.loadmat(mats / "setid.mat", squeeze_me=True)
    labels = scipy.io.loadmat(mats / "imagelabels.mat", squeeze_me=True)["labels"] - 1
    _write_flowers(tmp_path, labels, {}, mats=mats, write=setid["valid"])
    split = D.get_split("flowers102", "val", 24, MEAN, STD, root=tmp_path, verify=True)
    assert len(split) == 1020 and np.bincount(split.targets).tolist() == [10] * 102
    np.testing.assert_array_equal(split.targets, labels[setid["valid"] - 1])
    assert split.classnames[0] == "pink primrose" and len(split.classnames) == 102


def test_few_shot_is_seeded_and_per_class():
    labels = np.repeat(np.arange(5), 10)
    a = D.few_shot_indices(labels, 4, seed=1)
    assert np.bincount(labels[a]).tolist() == [4] * 5
    np.testing.assert_array_equal(a, D.few_shot_indices(labels, 4, seed=1))
    assert not np.array_equal(a, D.few_shot_indices(labels, 4, seed=2))


def test_more_shots_than_a_class_has(small_flowers):
    labels = np.repeat(np.arange(3), 10)
    with pytest.raises(DatasetError, match=r"shots=16 but class 0 \('a'\) has only 10.*shots <= 10"):
        D.few_shot_indices(labels, 16, classnames=["a", "b", "c"])
    with pytest.raises(ConfigError, match="positive"):
        D.few_shot_indices(labels, 0)


def test_unknown_dataset_and_split():
    with pytest.raises(ConfigError, match="Unknown dataset 'flowers101'"):
        D.get_split("flowers101", "train", 32, MEAN, STD)
    with pytest.raises(ConfigError, match="Unknown split 'valid'"):
        D.get_split("flowers102", "valid", 32, MEAN, STD)


def test_class_names_and_template_in_label_order():
    flowers = get_dataset("flowers102")
    names = flowers.classnames
    assert len(names) == 102 and names[0] == "pink primrose" and names[-1] == "blackberry lily"
    assert flowers.templates() == ["a photo of a {}, a type of flower."]
    assert len(flowers.templates(ensemble=True)) > 1


def test_synthflowers_has_flowers102_shape():
    train = D.get_split("synthflowers", "train", 64, MEAN, STD)
    val = D.get_split("synthflowers", "val", 64, MEAN, STD)
    test = D.get_split("synthflowers", "test", 64, MEAN, STD)
    assert len(train) == len(val) == 1020 and np.bincount(train.targets).tolist() == [10] * 102
    assert np.bincount(test.targets).min() >= 20
    assert train.classnames == get_dataset("synthflowers").classnames and len(set(train.classnames)) == 102


def test_only_the_rows_used_are_decoded(small_flowers, monkeypatch):
    root, labels, splits = small_flowers
    ds = get_dataset("flowers102", root, verify=False)
    calls = []
    decode = type(ds).decode
    monkeypatch.setattr(type(ds), "decode", lambda self, split, rows, size, workers: calls.append(list(rows))
                        or decode(self, split, rows, size, workers))
    subset = D.get_split(ds, "test", 32, MEAN, STD, rows=np.array([0, 3]))
    assert calls == [[0, 3]] and len(subset) == 2
    np.testing.assert_array_equal(subset.targets, labels[splits["test"] - 1][[0, 3]])
    full = D.get_split(ds, "test", 32, MEAN, STD)
    np.testing.assert_array_equal(np.asarray(full.images)[[0, 3]], np.asarray(subset.images))


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(small_flowers, damage):
    import glob
    import json
    import os
    root, _, _ = small_flowers
    first = D.get_split("flowers102", "val", 32, MEAN, STD, root=root, verify=False)
    expected = np.array(first.images)
    path = next(p for p in glob.glob(os.path.join(os.environ["CLIPFT_DATA"], "cache", "decoded", "*_images.npy"))
                if first.source_key in p)
    if damage == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif damage == "flip":
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 10)
            f.write(bytes([255 - b for b in f.read(5)]))
    else:
        meta = path.replace("_images.npy", "_meta.json")
        json.dump({**json.load(open(meta)), "shape": [1, 2, 3, 4]}, open(meta, "w"))
    with pytest.warns(UserWarning, match="rebuilding it"):
        again = D.get_split("flowers102", "val", 32, MEAN, STD, root=root, verify=False)
    np.testing.assert_array_equal(np.asarray(again.images), expected)


def test_bytes_changed_anywhere_in_a_decoded_cache_entry_are_found_and_the_entry_rebuilt(tmp_path):
    """Every byte is hashed on every read: a change outside the first, middle and last MiB (what an entry's hash once
    covered) is named and rebuilt, never served."""
    import glob
    import os
    from _helpers import make_image_folder
    root = make_image_folder(tmp_path / "imgs", {"a": 4, "b": 4})
    first = D.get_split(str(root), "train", 640, MEAN, STD)                 # 4 images of 1.2 MB: a 4.7 MB entry
    expected = np.array(first.images)
    path = next(p for p in glob.glob(os.path.join(os.environ["CLIPFT_DATA"], "cache", "decoded", "*_images.npy"))
                if first.source_key in p)
    assert os.path.getsize(path) > 4 * 2**20
    with open(path, "r+b") as f:
        f.seek(int(1.5 * 2**20))                                                # between the first and middle MiB
        f.write(bytes([255 - b for b in f.read(3)]))
    with pytest.warns(UserWarning, match=f"'{path}' is changed since it was written.*rebuilding it"):
        again = D.get_split(str(root), "train", 640, MEAN, STD)
    np.testing.assert_array_equal(np.asarray(again.images), expected)


def test_a_corrupt_jpeg_is_named_not_a_worker_crash(small_flowers):
    root, _, splits = small_flowers
    bad = root / "flowers-102" / "jpg" / f"image_{splits['train'][1]:05d}.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DatasetError, match=f"{bad.name}.*truncated|{bad.name}.*cannot|cannot be read.*{bad.name}"):
        D.get_split("flowers102", "train", 32, MEAN, STD, root=root, verify=False, workers=2)


def test_the_real_layer_never_imports_the_stand_in_and_datasets_are_small():
    """No import circle: the data, model and course layers name no plug-in; each dataset is one small module."""
    import ast
    from pathlib import Path
    pkg = Path(D.__file__).parent
    for path in [*pkg.glob("*.py"), *(pkg / "datasets").glob("*.py"), *(pkg / "methods").glob("*.py")]:
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if "standin" in n or n in ("synth", "toyclip")], path.name
    for path in [*(pkg / "datasets").glob("*.py"), pkg / "standin" / "synthflowers.py"]:
        if path.name not in ("__init__.py", "base.py"):
            assert len(path.read_text().splitlines()) < 200, f"{path.name} is a dataset module over 200 lines"
