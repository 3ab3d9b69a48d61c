"""The imagefolder dataset: a user's folder of images, its split, its faults, and pixels identical to open_clip's."""
from __future__ import annotations

import os
import shutil
import time

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipft_utils import data as D
from clipft_utils.course.cli import main as cli
from clipft_utils.datasets import get_dataset
from clipft_utils.errors import ConfigError, DatasetError, DatasetWarning
from clipft_utils.standin import folders, synth

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """12 classes x 25 drawn images: JPEG and PNG, one nested class, grayscale, CMYK, RGBA, a truncated JPEG, a text file."""
    return folders.write_imagefolder_standin(tmp_path_factory.mktemp("images") / "my_flowers", n_classes=12, per_class=25)


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def make(root, counts: dict[str, int], size=40):
    """A folder with ``counts[class]`` PNGs per class."""
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((size, size + 4, 3), 10 * i + len(c), np.uint8)).save(root / c / f"{i}.png")
    return root


def test_the_folder_is_split_stratified_seeded_and_written_down(folder):
    with pytest.warns(DatasetWarning, match="Left out 1 unreadable image"):
        ds = get_dataset(str(folder))
        ds.check()
    assert ds.name == "imagefolder" and len(ds.classnames) == 12
    assert set(ds.classnames) <= set(synth.CLASSNAMES)        # underscores became spaces (folders sorted)
    counts = {s: np.bincount(ds.labels(s), minlength=12) for s in D.SPLITS}
    assert all((c >= 1).all() for c in counts.values())        # every class in every split
    assert sum(c.sum() for c in counts.values()) == 12 * 25 - 1   # the truncated JPEG is left out
    assert len(ds.skipped) == 1 and "truncated" in ds.skipped[0][1] and ds.ignored[0].endswith("notes.txt")
    rows = ds.split_file.read_text().splitlines()
    assert rows[0] == "path,class,split" and len(rows) == 12 * 25 - 1 + 1
    again = get_dataset(str(folder))
    assert again.identity == ds.identity and list(again.labels("test")) == list(ds.labels("test"))
    assert ds.display == f"my_flowers-{ds.identity[:8]}"


def test_nested_class_folders_are_walked(folder):
    ds = get_dataset("imagefolder", folder)
    nested = [p for s in D.SPLITS for p in ds.index(s).files if p.parent.name == "field"]
    assert len(nested) == 25


def test_editing_the_split_file_moves_an_image(folder, tmp_path):
    root = copy_of(folder, tmp_path)
    ds = get_dataset(str(root))
    ds.check()
    before = ds.identity
    lines = ds.split_file.read_text().splitlines()
    first_test = next(i for i, line in enumerate(lines) if line.endswith(",test"))
    moved = lines[first_test].rsplit(",", 1)[0]
    lines[first_test] = moved + ",val"
    ds.split_file.write_text("\n".join(lines) + "\n")
    edited = get_dataset(str(root))
    assert root / moved.split(",")[0] in edited.index("val").files
    assert edited.identity != before                          # a different split is different data


def test_cached_pixels_equal_open_clips_preprocess_for_every_image_mode(tmp_path):
    """Grayscale, palette, RGBA and CMYK images, and an EXIF-rotated JPEG, decode exactly as open_clip would."""
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (37, 53, 3), dtype=np.uint8))
    images = {"gray.png": base.convert("L"), "palette.png": base.convert("P"), "rgba.png": base.convert("RGBA"),
              "cmyk.jpg": base.convert("CMYK"), "rgb.jpg": base}
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for name, im in images.items():
            im.save(tmp_path / cls / name, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise
    base.save(tmp_path / "a" / "rotated.jpg", exif=exif, quality=95)
    ds = get_dataset("imagefolder", tmp_path, split=[2, 2])
    preprocess = open_clip.image_transform(32, is_train=False, mean=MEAN, std=STD)
    for split in D.SPLITS:
        got = D.get_split(ds, split, 32, MEAN, STD)
        for i, path in enumerate(ds.index(split).files):
            with Image.open(path) as im:
                upright = im.transpose(Image.Transpose.ROTATE_270) if path.name == "rotated.jpg" else im.copy()
            expected = preprocess(upright)
            assert torch.equal(got[i][0], expected), path.name
            if path.name == "rotated.jpg":
                assert got.images[i].shape == (32, 32, 3) and expected.shape[1:] == (32, 32)


def test_adding_an_image_invalidates_the_caches(folder, tmp_path):
    root = copy_of(folder, tmp_path)
    first = D.get_split(str(root), "train", 32, MEAN, STD)
    cls = sorted(p for p in root.iterdir() if p.is_dir())[2]
    shutil.copy(next(cls.glob("*.png")), cls / "added.png")
    second = D.get_split(str(root), "train", 32, MEAN, STD)
    assert first.source_key != second.source_key
    assert get_dataset(str(root)).display != get_dataset(str(folder)).display


@pytest.mark.parametrize("layout, message", [
    ("missing", "does not exist"),
    ("empty", "holds no class folders"),
    ("one_class", "needs at least 2"),
    ("one_image", "Class 'b' has 1 readable image"),
    ("all_corrupt", "Class 'b' has 0 readable image"),
    ("same_name", "map to the same class name 'red rose'"),
    ("bad_mapping", "names no class folder"),
])
def test_bad_folders_fail_before_any_work_with_the_fix(tmp_path, layout, message):
    root = tmp_path / "images"
    if layout != "missing":
        root.mkdir()
    if layout == "one_class":
        make(root, {"a": 5})
    elif layout == "one_image":
        make(root, {"a": 5, "b": 1})
    elif layout == "all_corrupt":
        make(root, {"a": 5, "b": 3})
        for p in (root / "b").iterdir():
            p.write_bytes(b"not an image")
    elif layout == "same_name":
        make(root, {"red_rose": 4, "red-rose": 4})
    elif layout == "bad_mapping":
        make(root, {"a": 4, "b": 4})
        (root / "classnames.txt").write_text("a: apple\nc: cherry\n")
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=message) as err:
        D.get_split(str(root), "train", 32, MEAN, STD)
    assert "Fix" in str(err.value)
    assert time.perf_counter() - start < 10


def test_strict_mode_fails_on_an_unreadable_file(folder):
    with pytest.raises(DatasetError, match="(?s)truncated.*dataset_options={\"strict\": False}"):
        get_dataset("imagefolder", folder, strict=True).check()


def test_the_strict_fix_is_the_one_of_the_entry_point_in_use(folder, capsys):
    """The command line cannot pass strict=False: its fix is to drop --strict (the notebook's: dataset_options)."""
    assert cli(["data", "check", str(folder), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and "Fix: repair or delete them, or drop --strict to leave them out." in err
    assert "strict=False" not in err and "dataset_options" not in err


def test_given_splits_are_used_and_a_missing_val_is_carved_from_train(tmp_path):
    make(tmp_path / "train", {"cat": 6, "dog": 6})
    make(tmp_path / "test", {"cat": 2, "dog": 2})
    ds = get_dataset(str(tmp_path))
    assert len(ds.labels("test")) == 4 and np.bincount(ds.labels("val")).tolist() == [1, 1]   # 20 % of 6
    assert len(ds.labels("train")) == 10
    with pytest.raises(ConfigError, match="its own train/ and test/ folders"):
        get_dataset(str(tmp_path), split=[3, 1]).check()
    assert all(p.parts[-3] == "test" for p in ds.index("test").files)


def test_classnames_and_templates_files(tmp_path):
    make(tmp_path, {"rr": 4, "tl": 4})
    (tmp_path / "classnames.txt").write_text("rr: red rose\ntl: tulip\n")
    (tmp_path / "templates.txt").write_text("a photo of a {}, a type of flower.\na close-up of a {}.\n")
    ds = get_dataset(str(tmp_path))
    assert ds.classnames == ["red rose", "tulip"]
    assert ds.templates() == ["a photo of a {}, a type of flower."] and len(ds.templates(ensemble=True)) == 2
    (tmp_path / "templates.txt").write_text("no placeholder here\n")
    with pytest.raises(DatasetError, match="has no {}"):
        get_dataset(str(tmp_path)).templates()


@pytest.mark.parametrize("value, message", [
    ([1.5, 1], "is not a split"), ([3, 1, 1], "exactly one split must take the rest"),
    ([0.6, 0.5], "leave nothing for the rest"), ("a,b", "is not a split"), ([True, 1], "is not a split"),
])
def test_split_sizes_are_checked(tmp_path, value, message):
    make(tmp_path, {"a": 4, "b": 4})
    with pytest.raises(ConfigError, match=message) as err:
        get_dataset(str(tmp_path), split=value).check()
    assert "Fix" in str(err.value) and "--split 3,1" in str(err.value)


def test_data_check_prints_what_the_course_will_see(folder, capsys):
    assert cli(["data", "check", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "NOTE: Left out 1 unreadable image" in out   # once, as a note: no warning with a source line
    assert "12 classes" in out and "skipped (unreadable) files: 1" in out and "truncated" in out
    assert "notes.txt" in out and "split.csv" in out and "a photo of a" in out
    assert "it needs at least 3 images per class" in out


def test_a_data_folder_that_is_a_file_is_a_clear_error(tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    monkeypatch.setenv("CLIPFT_DATA", str(f))
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        D.get_split("synthflowers", "train", 32, MEAN, STD)
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        get_dataset("imagefolder", f)


def test_dataset_names_and_paths(tmp_path):
    with pytest.raises(ConfigError, match="Unknown dataset 'flowers101'.*imagefolder"):
        get_dataset("flowers101")
    with pytest.raises(ConfigError, match="needs data_root"):
        get_dataset("imagefolder")
    os.makedirs(tmp_path / "x" / "a")
    assert get_dataset(str(tmp_path / "x")).name == "imagefolder"
