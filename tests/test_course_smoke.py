"""The whole smoke course, 01-07, through papermill and the runner at a reduced size (minutes on a CPU); then a
shots x seeds grid on top of it; the comparison on an empty folder; and the course on a user's folder of images."""
from __future__ import annotations

import json
import re
import shutil

import nbformat
import numpy as np
import pandas as pd
import pytest

from clipft_utils.course import runner
from clipft_utils.methods import get, names

from clipft_utils.results import REQUIRED_KEYS, load_predictions

METHODS = names()

pytestmark = pytest.mark.slow

# The reduced size: one epoch, 2 training images per class, every test image, the smallest sweeps.
REDUCED = {
    "epochs": 1,
    "test_per_class": 0,
    "lora": {"ranks": [1, 2]},                             # two sweep runs instead of three
    "prefix_tuning": {"variants": False, "vit_timing": False},  # no prompt tuning / VPT-deep, no ViT-B-32 timing
    "full_finetune": {"wise_alphas": [0.0, 0.5, 1.0], "memory_steps": 1},
}
FIGURES_07 = ("07_accuracy_vs_params", "07_accuracy_vs_compute", "07_step_time", "07_training_memory", "07_learning_curves",
              "07_per_class_heatmap", "07_combinations", "07_top5_one_image")  # + accuracy_vs_shots with several k


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder of "your own" images: 6 classes x 13 drawn flowers (the folder that once crashed 06), JPEG and PNG,
    one class nested deeper, and the faults real folders hold (grayscale, CMYK and RGBA images, a truncated JPEG,
    a text file)."""
    from clipft_utils.standin import folders
    return folders.write_imagefolder_standin(tmp_path_factory.mktemp("images") / "my_flowers", n_classes=6, per_class=13)


@pytest.fixture(scope="module")
def course(tmp_path_factory, session_data, images):
    """The whole smoke course on that folder; then the same run again, dry (it says what it would reuse)."""
    root = tmp_path_factory.mktemp("course")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPFT_DATA", session_data)
        first = runner.run_all("smoke", root=root, device="cpu", shots=[2], data=str(images), extra=REDUCED)
        lines: list[str] = []
        second = runner.run_all("smoke", root=root, device="cpu", shots=[2], data=str(images), extra=REDUCED,
                                dry_run=True, echo=lines.append)
    return first.folder, first, (second, lines)


def outputs(path):
    cells = nbformat.read(path, as_version=4).cells
    return [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_every_notebook_succeeds(course):
    _, first, _ = course
    assert first.ok, "\n".join(first.lines())
    assert [s.notebook for s in first.steps] == [nb for nb, _ in runner.notebooks()]
    assert {s.status for s in first.steps} == {"ok"}


def test_one_result_per_method_with_validation_predictions(course):
    folder, _, _ = course
    for method in METHODS:
        name = f"{method}{'' if method == 'zero_shot' else '_shots2'}_seed0"  # zero-shot trains on nothing
        res = json.loads((folder / f"{name}.json").read_text())
        assert not [k for k in REQUIRED_KEYS if k not in res], f"{name} lacks schema keys"
        assert res["method"] == method and res["variant"] is None and res["profile"] == "smoke"
        assert res["standin"] is True and "STAND-IN" in res["label"] and res["dataset_id"]
        assert res["dataset"] == folder.name.removeprefix("smoke-") and res["dataset"] in res["label"]
        assert 0.0 <= res["test_acc"] <= res["test_top5"] <= 1.0
        assert 0 <= res["trainable_params"] <= res["total_params"]
        val_logits, val_labels = load_predictions(folder, name, "val")       # every method saved them
        assert len(val_labels) == res["n_val"] and val_logits.shape[1] == 6
        if method != "zero_shot":
            assert res["shots"] == 2 and res["val_per_class"] == 2          # few-shot validation: min(k, 4)
    # every row leaves a model folder, or says why not: each method's main run, and the combinations of 06
    # (WiSE-FT and LP→FT are one model each; an ensemble, the adapter fusion and base-to-novel say why not)
    with_folder = set()
    for path in folder.glob("*_seed0.json"):
        res = json.loads(path.read_text())
        has = (folder / "models" / path.stem / "manifest.json").exists()
        assert has != bool(res.get("no_model_folder")), path.stem
        with_folder |= {res["method"]} if has else set()
    assert {*METHODS, "lp_ft"} <= with_folder
    (wise,) = [json.loads(p.read_text()) for p in folder.glob("wise_ft-*_seed0.json")]
    if wise["alpha"] in (0.0, 1.0):   # an endpoint is the zero-shot or the fine-tuned model: named, not copied
        assert "itself" in wise["no_model_folder"]
    else:
        assert "wise_ft" in with_folder


def test_combinations_are_chosen_on_validation_and_the_summary_says_what_each_row_measures(course):
    folder, _, _ = course
    rows = [json.loads(p.read_text()) for p in folder.glob("ensemble-*.json")]
    assert rows and all(r["selected_on"] == "val" and r["val_acc"] is not None for r in rows)
    text = (folder / "summary.md").read_text()
    assert "test (exploratory)" not in text and "novel-class zero-shot top-1" in text
    table = pd.read_csv(folder / "summary.csv").set_index("method")
    assert list(table.index) == list(METHODS) and set(table["status"]) == {"ok"}
    assert table["label"].str.contains("STAND-IN").all()
    trained = [m for m in METHODS if "epochs" in get(m).config_fields() and m != "linear_probe"]
    assert (table.loc[trained, "epochs"] == 1).all()                            # REDUCED trains one epoch
    lp = json.loads((folder / "linear_probe_shots2_seed0.json").read_text())
    # the probe's row has epochs only where AdamW chose it: L-BFGS has none (never the AdamW run's count)
    lp_epochs = table.loc["linear_probe", "epochs"]
    assert lp_epochs == 1 if lp["recipe"] == "torch" else pd.isna(lp_epochs)


def test_executed_notebooks_show_no_noise_and_the_figures_exist(course):
    folder, _, _ = course
    figures = {p.stem for p in (folder / "figures").glob("*.png")}
    assert set(FIGURES_07) <= figures
    for nb, _ in runner.notebooks():
        assert any(f.startswith(nb[:3]) for f in figures), f"{nb} saved no figure"
    executed = sorted((folder / "notebooks").glob("*.ipynb"))
    assert {p.stem for p in executed} == {"01_zero_shot", *(f"{nb}_shots2" for nb, m in runner.notebooks()[1:-1]),
                                           "07_comparison"}
    for path in executed:
        outs = outputs(path)
        assert not [o for o in outs if o.output_type == "error"], path.name
        assert not [o.text for o in outs if o.output_type == "stream" and o.name == "stderr"], path.name
        text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outs)
        assert not re.search(r"\d+%\|", text), f"{path.name}: a progress bar was left in the output"
        assert not re.search(r"flower with [a-z ]*\.\.\.", text), f"{path.name}: a class name was truncated"
        assert any("image/png" in o.get("data", {}) for o in outs), f"{path.name}: no inline figure"
    comparison = (folder / "notebooks" / "07_comparison.ipynb").read_text()
    assert "Recommendation:" in comparison
    assert "07_accuracy_vs_shots.png not drawn" in comparison and "07_accuracy_vs_shots" not in figures  # one k


def test_every_notebook_ran_its_solutions_and_curves_start_before_training(course):
    """Issue 30: each notebook's solutions (cells tagged ``solution``, after the exercises) ran in the course, without
    an error, and printed what they found; every trained row's history starts at epoch 0 (the untrained model); the
    WiSE-FT row records the α it searched and what its validation curve did; 07 never says "six methods"."""
    folder, _, _ = course
    for path in sorted((folder / "notebooks").glob("*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        solutions = [c for c in cells if c.cell_type == "code" and "solution" in c.metadata.get("tags", [])]
        assert solutions, f"{path.name}: no solution cell"
        for c in solutions:
            assert c.get("execution_count") is not None, f"{path.name}: a solution did not run"
            assert not [o for o in c.outputs if o.output_type == "error"], path.name
            assert any(o.output_type in ("stream", "display_data", "execute_result") for o in c.outputs), path.name
        assert not any("six methods" in c.source for c in cells)
    for method in METHODS:
        res = json.loads((folder / f"{method}_shots2_seed0.json").read_text()) if method != "zero_shot" else None
        if res and res["history"] and method != "linear_probe":                # the probe's L-BFGS row has none
            assert res["history"][0]["epoch"] == 0 and res["history"][1]["epoch"] == 1, method
    (wise,) = [json.loads(p.read_text()) for p in folder.glob("wise_ft-*_seed0.json")]
    assert wise["config"]["alphas"] == REDUCED["full_finetune"]["wise_alphas"] == [a["alpha"] for a in wise["curve"]]
    assert wise["curve_shape"] and all(a["val_acc"] is not None for a in wise["curve"])


def test_the_same_run_again_would_reuse_everything_but_the_comparison(course):
    """Every real notebook's completion record matches its own rerun (nothing it wrote changes on reading), so a
    second run would skip all but 07; the dry run says so line by line."""
    _, _, (second, echoed) = course
    status = {s.notebook: s.status for s in second.steps}
    assert status == {**{nb: "skipped" for nb, _ in runner.notebooks()[:-1]}, "07_comparison": "planned"}
    text = "\n".join(echoed)
    assert "03_bitfit shots 2 seed 0: up to date, would be skipped" in text
    assert "07_comparison seed 0: would run (it reads every result, so it always runs)" in text


def test_a_shots_by_seeds_grid_adds_only_what_is_missing_and_07_draws_it_from_the_files(course, session_data, images,
                                                                                         monkeypatch):
    folder, _, _ = course
    monkeypatch.setenv("CLIPFT_DATA", session_data)
    report = runner.run_all("smoke", root=folder.parent, device="cpu", shots=[1, 2], seeds=[0, 1], data=str(images),
                            only=["linear_probe"], extra={"epochs": 1, "test_per_class": 0})
    assert report.ok, "\n".join(report.lines())
    ran = {(s.notebook, s.shots, s.seed) for s in report.steps if s.status == "ok"}
    assert ("02_linear_probe", 2, 0) not in ran and ("02_linear_probe", 1, 1) in ran   # the course's point is reused
    files = [json.loads(p.read_text()) for p in folder.glob("linear_probe_shots*_seed*.json")]
    assert sorted((r["shots"], r["seed"]) for r in files) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    text = (folder / "summary.md").read_text()
    by_shots = text.split("## Accuracy by training images per class", 1)[1]
    cell = next(line for line in by_shots.splitlines() if line.startswith("| linear_probe"))
    mean_1 = np.mean([r["test_acc"] for r in files if r["shots"] == 1])
    assert f"{100 * mean_1:.1f} ± " in cell                        # the table is made from the result files
    assert (folder / "figures" / "07_accuracy_vs_shots.png").stat().st_size > 10_000
    comparison = (folder / "notebooks" / "07_comparison.ipynb").read_text()
    assert "1 per class: " in comparison and "2 per class: " in comparison


def test_the_comparison_runs_on_an_empty_folder_and_shows_not_run_rows(tmp_path, session_data, monkeypatch):
    monkeypatch.setenv("CLIPFT_DATA", session_data)
    report = runner.run_all("smoke", root=tmp_path, device="cpu", compare_only=True, extra={"test_per_class": 2})
    assert report.ok, "\n".join(report.lines())
    summary = pd.read_csv(tmp_path / "smoke" / "summary.csv")
    assert set(summary["status"]) == {"not run"}


def test_the_folder_s_faults_are_reported_once_and_adding_an_image_is_new_data(course, images, session_data,
                                                                                monkeypatch):
    folder, _, _ = course
    assert folder.name.startswith("smoke-my_flowers-")               # the results folder names the dataset
    setup_out = "\n".join(o.get("text", "") for o in outputs(folder / "notebooks" / "01_zero_shot.ipynb"))
    assert "Left out 1 unreadable image" in setup_out and "truncated" in setup_out
    monkeypatch.setenv("CLIPFT_DATA", session_data)
    cls = sorted(p for p in images.iterdir() if p.is_dir())[3]
    shutil.copy(next(cls.glob("*.png")), cls / "one_more.png")       # one more image: new data, nothing stale
    changed = runner.run_all("smoke", root=folder.parent, device="cpu", data=str(images), only=["zero_shot"],
                             extra={"test_per_class": 0})
    assert changed.ok and changed.folder != folder
    assert [s.status for s in changed.steps] == ["ok", "ok"]
