"""Formats a user hits: 16-bit, 32-bit and float images decode to the 8 bits their range says (the course's cache,
``predict``, the export's client); ``export --format open_clip`` is open_clip's own folder, loaded with ``local-dir:``
in a process that never imports this project; ``predict`` classifies what it can and names each input it cannot."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipft_utils import data as D
from clipft_utils import make_config, setup, train_method
from clipft_utils.course.cli import main as cli
from clipft_utils.datasets import get_dataset
from clipft_utils.errors import ConfigError
from clipft_utils.methods import apply_method
from clipft_utils.modelfolder import model_path, save_head_model
from clipft_utils.pixels import to_8bit

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {"red_rose": (200, 40, 40), "sky_lily": (40, 80, 210), "green_fern": (40, 170, 60)}
MEAN = STD = (0.5, 0.5, 0.5)


def grey16(grey: np.ndarray, seed: int = 0) -> Image.Image:
    """The 16-bit twin of an 8-bit grey image: v * 257 plus noise that rounds away (|noise| < 128.5)."""
    noise = np.random.default_rng(seed).integers(-128, 129, grey.shape)
    return Image.fromarray(np.clip(grey.astype(np.int64) * 257 + noise, 0, 65535).astype(np.uint16))


def photos(root: Path, per_class: int = 6) -> Path:
    """``ROOT/<class>/``: colour noise PNGs, EXIF-rotated JPEGs (orientations 6 and 8) and a 16-bit grey PNG."""
    rng = np.random.default_rng(0)
    for c, rgb in CLASSES.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            px = np.clip(np.array(rgb) + rng.normal(0, 60, (30 + 3 * i, 40 - 2 * i, 3)), 0, 255).astype(np.uint8)
            if i < 2:
                exif = Image.Exif()
                exif[0x0112] = (6, 8)[i]  # rotated on display: the course, predict and the client all apply it
                Image.fromarray(px).save(root / c / f"{i}.jpg", exif=exif, quality=95)
            elif i == 2:
                grey16(np.asarray(Image.fromarray(px).convert("L")), i).save(root / c / f"{i}.png")
            else:
                Image.fromarray(px).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def home(tmp_path_factory, session_data):
    """(course, its folder of photos, the model folders of zero-shot and LoRA (1 epoch)) on ToyCLIP."""
    tmp = tmp_path_factory.mktemp("formats")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPFT_DATA", session_data)
        folder = photos(tmp / "photos")
        course = setup("smoke", dataset=str(folder), device="cpu", test_per_class=0, results_dir=str(tmp / "results"))
        save_head_model(course, "zero_shot", course.zero_shot_head(), None, config=make_config("zero_shot", "smoke"))
        cfg = make_config("lora", course.profile, epochs=1)
        clf = course.classifier()
        train_method(course, "lora", cfg, clf, apply_method("lora", clf, cfg), progress=False, checkpoint=False)
    models = {m: model_path(course.results_dir, course.run_name(m)) for m in ("zero_shot", "lora")}
    return course, folder, models


# ---- 16-bit and other deep images ---------------------------------------------------------------------------------
def test_deep_images_scale_by_the_range_of_their_mode(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (9, 11)).astype(np.uint8)
    grey16(grey).save(tmp_path / "grey16.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.pgm")        # Pillow opens it as mode I
    Image.fromarray(grey.astype(np.float32) / 255).save(tmp_path / "unit.tif")           # float, 0..1
    Image.fromarray(grey.astype(np.float32) * 4 - 100).save(tmp_path / "wide.tif")       # float, its own range
    for name, mode in (("grey16.png", "I;16"), ("grey16.pgm", "I"), ("unit.tif", "F"), ("wide.tif", "F")):
        with Image.open(tmp_path / name) as im:
            assert im.mode == mode and np.asarray(im.convert("RGB")).min() in (0, 255)  # what PIL alone gives
            got = to_8bit(im)
        wide = (grey.astype(float) - grey.min()) * 255 / np.ptp(grey)                   # its own min..max
        expected = grey if name != "wide.tif" else np.rint(wide).astype(np.uint8)
        assert got.mode == "L" and np.array_equal(np.asarray(got), expected), name
    rgb = Image.fromarray(np.stack([grey] * 3, -1))
    assert to_8bit(rgb) is rgb                                  # 8-bit modes pass untouched (open_clip's own path)


def test_a_16bit_png_decodes_in_the_cache_like_its_8bit_twin_and_data_check_says_so(tmp_path, capsys):
    rng = np.random.default_rng(2)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            grey = rng.integers(0, 256, (21 + i, 30)).astype(np.uint8)
            Image.fromarray(grey).save(tmp_path / c / f"{i}_8bit.png")
            grey16(grey, i).save(tmp_path / c / f"{i}_16bit.png")
    ds = get_dataset(str(tmp_path), split=[2, 2])
    pixels = {}
    for split in D.SPLITS:
        cached = D.get_split(ds, split, 16, MEAN, STD)
        pixels.update({f"{p.parent.name}/{p.name}": np.asarray(cached.images[i])
                       for i, p in enumerate(ds.index(split).files)})
    for c in ("a", "b"):
        for i in range(3):
            twin = pixels[f"{c}/{i}_8bit.png"], pixels[f"{c}/{i}_16bit.png"]
            assert np.array_equal(*twin) and twin[0].std() > 10    # the same grey pixels, not white
    assert cli(["data", "check", str(tmp_path), "--split", "2,2"]) == 0
    assert "6 image(s) in mode I;16 scaled to 8 bits" in capsys.readouterr().out


def test_a_16bit_png_predicts_exactly_like_its_8bit_twin(home, tmp_path, capsys):
    from clipft_utils.predict import Predictor
    course, folder, models = home
    grey = np.asarray(Image.open(folder / "sky_lily" / "3.png").convert("L"))
    Image.fromarray(grey).save(tmp_path / "eight.png")
    grey16(grey, 7).save(tmp_path / "sixteen.png")
    files = [tmp_path / "eight.png", tmp_path / "sixteen.png"]
    eight, sixteen = Predictor.load(models["lora"], "cpu")(files, top=3)
    assert np.array_equal(eight.logits, sixteen.logits) and eight.top == sixteen.top
    assert cli(["predict", str(models["lora"]), *map(str, files), "--json", "--top", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows[0]["top"] == rows[1]["top"]


# ---- export: open_clip's own folder ---------------------------------------------------------------------------------
FOREIGN = """
import json, sys
from pathlib import Path
import open_clip, torch
from PIL import Image, ImageOps
from safetensors.torch import load_file
out, files = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, out)
from pixels import to_8bit                        # the export's own copy: 16-bit images scaled as the course does
model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + out)
model.eval()
head = load_file(str(Path(out) / "classifier.safetensors"))
config = json.loads((Path(out) / "open_clip_config.json").read_text())
rows = []
with torch.inference_mode():
    for f in files:
        with Image.open(f) as im:
            x = preprocess(to_8bit(ImageOps.exif_transpose(im)))[None]
        rows.append((torch.nn.functional.normalize(model.encode_image(x), dim=-1) @ head["weight"].T
                     + head["bias"])[0].tolist())
sys.argv = [str(Path(out) / "classify.py"), "--json", "--top", "1", *files]
import runpy
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    assert not stop.code, stop.code
assert "clipft_utils" not in sys.modules, "the export needs clipft_utils"
print(json.dumps({"classes": config["classes"], "logits": rows}))
"""


def test_the_open_clip_export_loads_as_local_dir_and_classifies_like_predict_without_this_project(home, tmp_path,
                                                                                                   capsys):
    """The acceptance test: LoRA (merged into open_clip's weights) exported, then loaded and run in a process that never
    imports clipft_utils -- by hand (exif_transpose + the returned preprocess + classifier.safetensors) and through the
    written classify.py -- gives predict's top-1 for every image (EXIF-rotated JPEGs, a 16-bit PNG) and its logits."""
    import open_clip
    from clipft_utils.export import export_open_clip
    from clipft_utils.predict import Predictor
    course, folder, models = home
    files = [str(p) for p in sorted(folder.rglob("*.*"))]
    assert any(f.endswith(".jpg") for f in files) and any(Image.open(f).mode == "I;16" for f in files)
    out = tmp_path / "lora"
    info = export_open_clip(models["lora"], out, echo=lambda *_: None)
    assert {p.name for p in out.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors",
                                               "classifier.safetensors", "classify.py", "pixels.py"}
    config = json.loads((out / "open_clip_config.json").read_text())
    assert config["classes"] == course.classnames and "exif_transpose" in config["note"]
    assert "normalize(encode_image(x))" in config["classifier"]["logits"] and config["label"] == course.label
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", FOREIGN, str(out), json.dumps(files)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *client_lines, last = proc.stdout.strip().splitlines()
    foreign = json.loads(last)
    logits = np.array(foreign["logits"])
    want = np.stack([p.logits for p in Predictor.load(models["lora"], "cpu")(map(Path, files))])
    np.testing.assert_allclose(logits, want, atol=1e-4)
    assert cli(["predict", str(models["lora"]), *files, "--json", "--top", "1"]) == 0
    predicted = [json.loads(line)["top"][0]["class"] for line in capsys.readouterr().out.splitlines()]
    assert [foreign["classes"][i] for i in logits.argmax(1)] == predicted                 # image by image
    assert [json.loads(line)["top"][0]["class"] for line in client_lines] == predicted   # python classify.py
    by_name, _, _ = open_clip.create_model_and_transforms(info["open_clip_name"], pretrained=info["state_dict"])
    by_folder = open_clip.create_model_and_transforms(f"local-dir:{out}")[0]
    assert all(torch.equal(v, by_folder.state_dict()[k]) for k, v in by_name.state_dict().items())  # pretrained=PATH


def test_the_export_never_overwrites_a_users_folder(home, tmp_path):
    from clipft_utils.export import export_open_clip
    _, _, models = home
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already holds files \\(notes.txt\\).*Fix: give --out a new or empty folder"):
        export_open_clip(models["zero_shot"], mine, echo=lambda *_: None)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    export_open_clip(models["zero_shot"], tmp_path / "again", echo=lambda *_: None)
    export_open_clip(models["zero_shot"], tmp_path / "again", echo=lambda *_: None)   # an earlier export: replaced


# ---- predict: every input that can be classified is ---------------------------------------------------------------
def test_predict_classifies_the_good_inputs_and_names_the_empty_one(home, tmp_path, capsys):
    _, folder, models = home
    empty = tmp_path / "empty"
    empty.mkdir()
    good = folder / "red_rose" / "3.png"
    assert cli(["predict", str(models["zero_shot"]), str(empty), str(good), "--json", "--top", "1"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["image"] for line in out.splitlines()] == [str(good)]
    assert f"skipped the input '{empty}': the folder holds no images" in err
    assert "1 image(s) classified, 1 input(s) without images skipped" in err
    assert cli(["predict", str(models["zero_shot"]), str(empty), str(tmp_path / "gone.jpg")]) == 2
    err = capsys.readouterr().err
    assert f"Nothing to classify: '{empty}': the folder holds no images" in err
    assert f"'{tmp_path / 'gone.jpg'}': it does not exist" in err and "Fix:" in err
