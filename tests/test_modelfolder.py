"""Take your model home: every method leaves a model folder that loads, predicts (in a fresh process, reproducing the
run's test accuracy) and exports (open_clip, ONNX); bad model folders and bad input are clear errors before work."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipft_utils import make_config, setup, textside, train_method
from clipft_utils import heads as Z
from clipft_utils import results as R
from clipft_utils.methods import linear_probe as LP
from clipft_utils.course.cli import main as cli
from clipft_utils.errors import ConfigError, DatasetError, WeightsError
from clipft_utils.evaluate import EvalResult
from clipft_utils import combine
from clipft_utils.course import combos
from clipft_utils.methods import apply_method, clip_lora, coop
from clipft_utils.methods import tip_adapter as TA
from clipft_utils.modelfolder import (MANIFEST, WEIGHTS, load_model, model_path, read_model, save_head_model,
                                      save_model)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("zero_shot", "linear_probe", "bitfit", "prefix_tuning", "lora", "full_finetune", "coop", "clip_lora",
           "tip_adapter", "tip_adapter_f", "wise_ft")
TEXT_SIDE = ("coop", "clip_lora")  # trained on a text-side classifier; their folders hold its image-side form
TIP = ("tip_adapter", "tip_adapter_f")  # a cache head over the frozen tower
VARIANT = {"wise_ft": "alpha0.5"}  # a combination: WiSE-FT at α = 0.5 is one model of full fine-tuning's shape
CLASSES = {"red_rose": (200, 40, 40), "sky_lily": (40, 80, 210), "green_fern": (40, 170, 60)}


def colour_folder(root: Path, per_class: int = 8) -> Path:
    """``ROOT/<class>/<i>.png|jpg``: noisy images around one colour per class, of varied sizes (one EXIF-rotated)."""
    rng = np.random.default_rng(0)
    for c, (r, g, b) in CLASSES.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = 30 + 3 * i, 40 - 2 * i
            px = np.clip(np.array([r, g, b]) + rng.normal(0, 60, (h, w, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(px)
            if i == 0:
                exif = Image.Exif()
                exif[0x0112] = 6  # rotate 90 degrees on display: the course and predict both apply it
                im.save(root / c / f"{i}.jpg", exif=exif, quality=95)
            else:
                im.save(root / c / f"{i}.png")
    return root


def _head_result(course, method, test_fs, val_fs, weight, bias, cfg, val_acc=None):
    """What notebooks 01 and 02 write for a head over the frozen tower: result row + model folder."""
    test = EvalResult.from_logits(Z.head_logits(test_fs.features, weight, bias), test_fs.labels)
    val = EvalResult.from_logits(Z.head_logits(val_fs.features, weight, bias), val_fs.labels)
    result = R.make_result(method=method, test=test, val_acc=val.top1 if val_acc is None else val_acc,
                           trainable_params=0, total_params=1, train_seconds=0.0, eval_seconds=0.0,
                           images_per_second=None, peak_memory_mb=None, config=cfg.to_dict(), history=[],
                           **course.identity())
    R.save_result(result, course.results_dir, predictions=test, val_predictions=val)
    save_head_model(course, method, weight, bias, result=result, config=cfg)
    return result


@pytest.fixture(scope="module")
def trained(tmp_path_factory, session_data):
    """The six methods, 1 epoch each, on a small folder of images (ToyCLIP, the smoke profile): their model folders."""
    tmp = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPFT_DATA", session_data)
        folder = colour_folder(tmp / "photos")
        course = setup("smoke", dataset=str(folder), device="cpu", test_per_class=0, results_dir=str(tmp / "results"))
        test_fs, val_fs = course.features("test", progress=False), course.features("val", progress=False)
        cfg = make_config("zero_shot", course.profile)
        _head_result(course, "zero_shot", test_fs, val_fs, course.zero_shot_head(), None, cfg)
        cfg = make_config("linear_probe", course.profile, epochs=1, c_grid=(1.0,), max_iter=100)
        best = LP.fit_best_head(course, cfg)
        _head_result(course, "linear_probe", test_fs, val_fs, best["weight"], best["bias"], cfg, best["val_acc"])
        for method in METHODS[2:8]:
            extra = {"warmup_epochs": 0.0} if method == "full_finetune" else {}
            cfg = make_config(method, course.profile, epochs=1, **extra)
            if method in TEXT_SIDE:
                clf = textside.classifier(course)
                groups = (coop if method == "coop" else clip_lora).apply(clf, cfg)
            else:
                clf = course.classifier()
                groups = apply_method(method, clf, cfg)
            run = train_method(course, method, cfg, clf, groups, progress=False, checkpoint=False)
            if method == "full_finetune":
                sweep = combine.wise_ft(course.classifier(), run.classifier, [0.5], {s: course.loader(s) for s in
                                        ("val", "test")}, device="cpu")
                combos.write_wise_ft(course, sweep, 0.5, [0.5], run)
        feats = {s: course.features(s, progress=False) for s in ("train", "val", "test")}
        tower = sum(p.numel() for p in course.loaded.model.visual.parameters())
        tip = TA.fit_tip_adapter(course, make_config("tip_adapter", course.profile), feats)
        TA.save_tip_result(course, tip, make_config("tip_adapter", course.profile), feats, tower)
        cfg = make_config("tip_adapter_f", course.profile, epochs=2)
        TA.save_tip_result(course, TA.fit_tip_adapter_f(course, cfg, feats, tip=tip), cfg, feats, tower)
    return course, folder


def _run(course, method) -> str:
    return course.run_name(method, VARIANT.get(method))


def _folder(course, method) -> Path:
    return model_path(course.results_dir, _run(course, method))


def test_every_method_leaves_a_model_folder_with_only_what_it_changed(trained):
    course, _ = trained
    for method in METHODS:
        saved = read_model(_folder(course, method))
        keys, m = set(saved.tensors), saved.manifest
        assert {"head.weight", "head.bias"} <= keys and saved.tensors["head.weight"].dtype == torch.float32
        rest = keys - {"head.weight", "head.bias"}
        if method in ("zero_shot", "linear_probe", "coop"):   # CoOp: its trained prompts are a fixed head
            assert not rest
        elif method in TIP:                                    # the cache: keys [N, D], one-hot values [N, C], α, β
            n = len(course.splits["train"])
            assert rest == {"head.keys", "head.values", "head.alpha", "head.beta"}
            assert saved.tensors["head.keys"].shape[0] == n and saved.tensors["head.values"].shape == (n, len(CLASSES))
            result = R.read_result(course.result_path(method))
            assert float(saved.tensors["head.alpha"]) == result["alpha"] and "no_model_folder" not in result
        elif method == "bitfit":
            assert rest and all(k.endswith("bias") for k in rest)
        elif method == "prefix_tuning":
            assert rest == {"visual.folded"}   # folded: the MLP that made it is not saved
        elif method in ("lora", "clip_lora"):   # CLIP-LoRA: the image tower's A and B (its text side is the head)
            assert rest and all(".lora." in k and k.endswith((".A.default", ".B.default")) for k in rest)
        else:
            tower = {f"visual.{n}" for n, _ in course.loaded.model.visual.named_parameters()}
            assert rest == tower
        if method not in ("zero_shot", "linear_probe", "coop", *TIP):
            assert m["dtype"] in ("fp16", "fp32") and all(saved.tensors[k].dtype == torch.float16 for k in rest) == \
                (m["dtype"] == "fp16")
        result = R.read_result(course.result_path(method, VARIANT.get(method)))
        assert m["method"] == method and m["classes"] == course.classnames and m["test_acc"] == result["test_acc"]
        if method == "wise_ft":   # named as what it is, rebuilt as what it is shaped like
            assert m["rebuild_as"] == "full_finetune" and m["combination"]["alpha"] == 0.5
            assert m["config"] == R.read_result(course.result_path("full_finetune"))["config"]
        assert m["base"]["model"] == "ToyCLIP" and m["base"]["weights_id"] == course.loaded.weights_id
        assert m["image_size"] == course.loaded.image_size and m["mean"] == list(course.loaded.mean)
        assert m["preprocess"]["interpolation"] == "bicubic" and m["preprocess"]["crop"] == "center"
        assert m["dataset_id"] == course.data.identity and m["seed"] == 0 and m["templates"]
        assert m["standin"] and any("STAND-IN" in w for w in m["warnings"]) and "STAND-IN" in m["label"]
        assert m["library_version"] and m["config"]


PREDICT_ALL = """
import contextlib, io, json, sys
from clipft_utils.course.cli import main
files = json.loads(sys.argv[1])
out = {}
for folder in json.loads(sys.argv[2]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["predict", folder, *files, "--json", "--top", "2", "--device", "cpu"])
    out[folder] = {"rc": rc, "lines": buf.getvalue().splitlines()}
print(json.dumps(out))
"""


def test_a_tip_adapter_manifest_records_the_alpha_and_beta_chosen_on_validation(trained):
    """Before: only the tensors held them; the manifest (what a person or a client reads) did not."""
    course, _ = trained
    for method in TIP:
        saved = read_model(_folder(course, method))
        chosen = saved.manifest["chosen"]
        assert chosen["chosen_on"] == "validation" and chosen["alpha"] in chosen["alphas"]
        held = (saved.tensors["head.alpha"].item(), saved.tensors["head.beta"].item())
        assert (chosen["alpha"], chosen["beta"]) == pytest.approx(held, rel=1e-6)          # the tensors are fp32


def test_predict_in_a_fresh_process_reproduces_every_run_test_accuracy(trained):
    course, _ = trained
    index = course.data.index("test")
    files = [str(p) for p in index.files]
    folders = {m: str(_folder(course, m)) for m in METHODS}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", PREDICT_ALL, json.dumps(files), json.dumps(list(folders.values()))],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for method, folder in folders.items():
        assert out[folder]["rc"] == 0
        rows = [json.loads(line) for line in out[folder]["lines"]]
        assert [r["image"] for r in rows] == files
        assert all(len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"] for r in rows)
        predicted = np.array([course.classnames.index(r["top"][0]["class"]) for r in rows])
        logits, labels = R.load_predictions(course.results_dir, _run(course, method))
        assert np.array_equal(labels, index.labels)           # the run scored the same files, in the same order
        assert np.array_equal(predicted, logits.argmax(1)), method  # image by image, the run's own predictions
        recorded = R.read_result(course.result_path(method, VARIANT.get(method)))["test_acc"]
        assert float((predicted == labels).mean()) == recorded, method


def test_reloaded_model_gives_the_trained_logits(trained):
    course, _ = trained
    images = next(iter(course.loader("test")))[0]
    for method in ("prefix_tuning", "lora", "clip_lora"):
        clf, saved, _ = load_model(_folder(course, method))
        logits, _ = R.load_predictions(course.results_dir, course.run_name(method))
        with torch.no_grad():
            got = clf(images).numpy()
        np.testing.assert_allclose(got, logits[:len(got)], atol=0.05 if saved.manifest["dtype"] == "fp16" else 1e-4)


def test_export_onnx_for_every_method_matches_torch(trained, tmp_path):
    from clipft_utils.export import export_onnx
    course, _ = trained
    lines = []
    for method in METHODS:
        info = export_onnx(_folder(course, method), tmp_path / f"{method}.onnx", echo=lines.append)
        assert info["max_abs_diff"] <= 1e-4 and Path(info["path"]).exists()
    assert len(lines) == len(METHODS) and all("max |logit difference|" in line for line in lines)


def test_export_open_clip_loads_with_open_clip(trained, tmp_path):
    import open_clip
    from safetensors.torch import load_file
    from clipft_utils.export import export_open_clip
    course, _ = trained
    for method in ("bitfit", "lora", "full_finetune"):
        info = export_open_clip(_folder(course, method), tmp_path / method, echo=lambda *_: None)
        assert info["max_abs_diff"] < 1e-4
        model, _, _ = open_clip.create_model_and_transforms(info["open_clip_name"], pretrained=info["state_dict"])
        head = load_file(str(tmp_path / method / "classifier.safetensors"))
        assert head["weight"].shape == (len(CLASSES), model.visual.output_dim)
    with pytest.raises(ConfigError, match="prefix-tuning.*--format onnx"):
        export_open_clip(_folder(course, "prefix_tuning"), tmp_path / "prefix", echo=lambda *_: None)
    with pytest.raises(ConfigError, match="tip_adapter model: its head \\(TipHead\\).*--format onnx"):
        export_open_clip(_folder(course, "tip_adapter"), tmp_path / "tip", echo=lambda *_: None)
    assert not (tmp_path / "tip").exists()                           # refused before writing anything


def test_export_cli_writes_and_reports(trained, tmp_path, capsys):
    course, _ = trained
    assert cli(["export", str(_folder(course, "lora")), "--format", "onnx", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "model.onnx").exists() and "onnxruntime vs torch" in capsys.readouterr().out


# ---- bad input: every error names the problem and the fix, before any work -------------------------------------
def _copy(course, method, tmp_path) -> Path:
    dst = tmp_path / "models" / course.run_name(method)
    shutil.copytree(_folder(course, method), dst)
    return dst


def _edit_manifest(folder: Path, **changes) -> None:
    m = json.loads((folder / MANIFEST).read_text())
    for key, value in changes.items():
        if isinstance(value, dict):
            m[key].update(value)
        else:
            m[key] = value
    (folder / MANIFEST).write_text(json.dumps(m))


def test_other_base_weights_are_refused_naming_both(trained, tmp_path):
    course, _ = trained
    folder = _copy(course, "bitfit", tmp_path)
    _edit_manifest(folder, base={"weights_id": "file-0123456789ab", "digest": "feedfacefeedface"})
    with pytest.raises(WeightsError) as err:
        load_model(folder)
    msg = str(err.value)
    assert "file-0123456789ab" in msg and course.loaded.weights_id in msg and "Fix:" in msg


def test_missing_or_damaged_files_name_the_file_and_the_command(trained, tmp_path):
    course, _ = trained
    folder = _copy(course, "lora", tmp_path)
    (folder / MANIFEST).unlink()
    with pytest.raises(WeightsError, match=f"{MANIFEST} is missing.*Fix: .*run_all.sh"):
        read_model(folder)
    folder = _copy(course, "bitfit", tmp_path)
    (folder / MANIFEST).write_text('{"format": "clipft-model-1", "method": ')
    with pytest.raises(WeightsError, match=f"{MANIFEST} is damaged.*Fix:"):
        read_model(folder)
    folder = _copy(course, "full_finetune", tmp_path)
    (folder / WEIGHTS).unlink()
    with pytest.raises(WeightsError, match=f"{WEIGHTS} is missing.*Fix: .*--only full_finetune"):
        read_model(folder)
    folder = _copy(course, "prefix_tuning", tmp_path)
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError, match=f"{WEIGHTS} is damaged.*Fix:"):
        read_model(folder)


class _Boom:
    """A pickled object that would write a file when unpickled."""

    marker = None

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "unpickled"))


def test_a_pickle_in_place_of_the_weights_is_refused_without_unpickling(trained, tmp_path):
    course, _ = trained
    folder = _copy(course, "bitfit", tmp_path)
    marker = tmp_path / "ran.txt"
    boom = _Boom()
    boom.marker = str(marker)
    for writer in (lambda f: torch.save({"head.weight": boom}, f), lambda f: f.write_bytes(pickle.dumps(boom))):
        writer(folder / WEIGHTS)
        with pytest.raises(WeightsError, match="pickle.*refused"):
            load_model(folder)
        assert not marker.exists()


def test_class_count_must_match_the_head(trained, tmp_path):
    course, _ = trained
    folder = _copy(course, "linear_probe", tmp_path)
    _edit_manifest(folder, classes=course.classnames + ["extra"])
    with pytest.raises(ConfigError, match=f"lists {len(CLASSES) + 1} classes.*head.*has {len(CLASSES)} outputs.*Fix:"):
        read_model(folder)


def test_saved_tensors_must_fit_the_method(trained, tmp_path):
    from safetensors.torch import load_file, save_file
    course, _ = trained
    folder = _copy(course, "lora", tmp_path)
    tensors = load_file(str(folder / WEIGHTS))
    tensors.pop(next(k for k in tensors if ".lora." in k))
    save_file(tensors, str(folder / WEIGHTS))
    with pytest.raises(WeightsError, match="missing.*Fix:"):
        load_model(folder)


def test_predict_bad_input_fails_before_loading(trained, tmp_path, capsys):
    course, photos = trained
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    model = str(_folder(course, "zero_shot"))
    assert cli(["predict", model, str(empty)]) == 2
    assert "holds no images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli(["predict", model, str(photos), "--top", "0"])
    assert exit_.value.code == 2 and "--top must be >= 1" in capsys.readouterr().err
    assert cli(["predict", "no_such_run_seed0", str(photos), "--results", str(course.results_dir)]) == 2
    err = capsys.readouterr().err
    assert "No model folder for the run 'no_such_run_seed0'" in err and "lora_seed0" in err
    root = course.results_dir.parent                  # --results at the results root (before: "runs there: none")
    assert cli(["predict", "no_such_run_seed0", str(photos), "--results", str(root)]) == 2
    assert "lora_seed0" in capsys.readouterr().err
    assert cli(["predict", course.run_name("zero_shot"), str(photos), "--results", str(root)]) == 0
    capsys.readouterr()
    with pytest.raises(DatasetError, match="does not exist"):
        from clipft_utils.predict import list_images
        list_images([tmp_path / "missing.png"])


def test_predict_names_and_skips_an_unreadable_file(trained, tmp_path, capsys):
    course, photos = trained
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    good = sorted((photos / "sky_lily").glob("*.png"))[:2]
    rc = cli(["predict", course.run_name("bitfit"), str(good[0]), str(bad), str(good[1]), "--results",
              str(course.results_dir), "--top", "3"])
    out, err = capsys.readouterr()
    assert rc == 0 and "broken.png" in err and "skipped" in err and "2 image(s) classified" in err
    assert out.count(" %") == 6 and str(good[0]) in out and str(good[1]) in out and "STAND-IN" in err


def test_fp16_falls_back_to_fp32_when_rounding_changes_a_prediction(trained, tmp_path, monkeypatch):
    from clipft_utils import modelfolder
    course, _ = trained
    clf, _, _ = load_model(_folder(course, "full_finetune"))
    monkeypatch.setattr(modelfolder, "rounding_changes", lambda *a, **k: 1)
    monkeypatch.setattr(modelfolder, "FP16_MIN_MB", 0.0)     # ToyCLIP's tower (3 MiB) as large as ViT-B-32's
    test = EvalResult.from_logits(torch.zeros(3, len(CLASSES)), torch.arange(3) % len(CLASSES))
    for p in clf.visual.parameters():
        p.requires_grad_(True)
    folder = save_model(course, "full_finetune", clf, folder=tmp_path / "m", check=(None, test))
    m = json.loads((folder / MANIFEST).read_text())
    assert m["dtype"] == "fp32" and "changed 1 of 3 test predictions" in m["dtype_note"]
    assert all(t.dtype == torch.float32 for t in read_model(folder).tensors.values())


def test_small_tensors_stay_exact_and_need_no_rounding_check(trained, tmp_path, monkeypatch):
    from clipft_utils import modelfolder
    course, _ = trained
    clf, _, _ = load_model(_folder(course, "bitfit"))
    monkeypatch.setattr(modelfolder, "rounding_changes", lambda *a, **k: pytest.fail("no check for fp32"))
    for n, p in clf.visual.named_parameters():
        p.requires_grad_(n.endswith("bias"))
    folder = save_model(course, "bitfit", clf, folder=tmp_path / "m", check=(None, None))
    m = json.loads((folder / MANIFEST).read_text())
    assert m["dtype"] == "fp32" and "small" in m["dtype_note"] and "kept exact" in m["dtype_note"]


def test_the_notebooks_save_and_load_step(trained):
    """What each method notebook's last cell shows: the folder, reloaded in a fresh object, agrees with the run."""
    from clipft_utils.modelfolder import reload_check
    course, _ = trained
    for method in ("zero_shot", "prefix_tuning", "full_finetune"):
        check = reload_check(course, method)
        assert check["agreement"] == 1.0 and check["images"] > 0 and MANIFEST in check["files"]
        assert "python -m clipft_utils predict" in check["summary"]


def test_a_safetensors_file_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """Before: a full fine-tuning folder whose header length was 128 + 256k bytes was refused as 'a pickle'."""
    from safetensors.torch import save_file
    from clipft_utils import modelfolder as mf
    manifest = {"format": mf.FORMAT, "method": "linear_probe", "config": {}, "base": {}, "classes": ["a", "b"],
                "image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    (tmp_path / mf.MANIFEST).write_text(json.dumps(manifest))
    tensors = {"head.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2)}
    for pad in range(0, 4096, 1):
        save_file(tensors, str(tmp_path / mf.WEIGHTS), metadata={"pad": "x" * pad})
        if (tmp_path / mf.WEIGHTS).read_bytes()[:1] == b"\x80":
            break
    assert (tmp_path / mf.WEIGHTS).read_bytes()[:1] == b"\x80"
    saved = mf.read_model(tmp_path)
    assert torch.equal(saved.tensors["head.weight"], tensors["head.weight"])


def test_07s_model_set_shows_every_saved_method_on_one_photo_as_predict_does(trained, capsys):
    """07's "Try it on your own photo": every method's model folder at the course's point, the same top classes as
    `predict` for the same file; a missing photo is refused before any work."""
    from clipft_utils import predict
    from clipft_utils.course.params import check_value
    course, _ = trained
    found = predict.course_models(course)
    from clipft_utils.methods import names
    assert set(found) == {course.run_name(m) for m in METHODS if m not in VARIANT}  # each method's main run, in order:
    assert list(found) == [course.run_name(m) for m in names() if course.run_name(m) in found]
    models = predict.ModelSet(found.values(), device="cpu")
    assert len(models.bases) == 1                                         # one base tower for every folder
    photo = course.data.index("test").files[0]
    (table,) = models.side_by_side([photo], top=3)
    assert list(table.columns) == list(found) and list(table.index) == [1, 2, 3]
    for run, folder in found.items():
        assert cli(["predict", str(folder), str(photo), "--json", "--top", "1", "--device", "cpu"]) == 0
        top1 = json.loads(capsys.readouterr().out.strip())["top"][0]
        assert table.loc[1, run] == f"{top1['class']} ({100 * top1['prob']:.1f} %)", run
    pixels = np.array(predict.read_image(photo, course.loaded.image_size))
    pixels.flags.writeable = False                                      # as 07's cached test images are
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # no "non-writable array" warning in 07
        (same,) = models.side_by_side([pixels], top=3)
    assert same.equals(table)                                           # the file and its decoded pixels agree
    with pytest.raises(ConfigError, match="does not exist"):
        check_value("photos", [str(photo), "/no/such/photo.jpg"])
    check_value("photos", str(photo))


def test_a_large_tower_is_stored_in_fp16_when_no_test_prediction_changes(trained, tmp_path, monkeypatch):
    from clipft_utils import modelfolder
    from clipft_utils.evaluate import evaluate
    course, _ = trained
    monkeypatch.setattr(modelfolder, "FP16_MIN_MB", 0.0)     # ToyCLIP's tower (3 MiB) as large as ViT-B-32's
    clf, _, _ = load_model(_folder(course, "full_finetune"))
    for p in clf.visual.parameters():
        p.requires_grad_(True)
    test = evaluate(clf, course.loader("test"), device="cpu")
    folder = save_model(course, "full_finetune", clf, folder=tmp_path / "m", check=(course.loader("test"), test))
    m = json.loads((folder / MANIFEST).read_text())
    saved = read_model(folder)
    tower = [k for k in saved.tensors if k.startswith("visual.")]
    assert m["dtype"] == "fp16" and not m["dtype_note"] and all(saved.tensors[k].dtype == torch.float16 for k in tower)
    again = evaluate(load_model(folder)[0], course.loader("test"), device="cpu")
    assert torch.equal(torch.as_tensor(again.preds), torch.as_tensor(test.preds))  # the check's promise
