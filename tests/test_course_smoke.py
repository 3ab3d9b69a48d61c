"""The whole smoke course, 01-07, through papermill and the runner, at a reduced size (a few minutes on a CPU)."""
from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest

from clipft_utils import runner
from clipft_utils.config import METHODS
from clipft_utils.results import REQUIRED_KEYS, result_path

pytestmark = pytest.mark.slow

# The reduced size: one epoch, 5 test images per class, the smallest sweeps the notebooks offer.
REDUCED = {
    "epochs": 1,
    "test_per_class": 5,
    "shots": 2,                                            # 2 training images per class
    "lora": {"ranks": [1, 2]},                             # two sweep runs instead of five
    "prefix_tuning": {"deep": False, "vit_timing": False},  # no deep-prefix run, no ViT-B-32 timing
    "full_finetune": {"wise_alphas": [0.0, 0.5, 1.0]},
}
FIGURES_07 = ("07_accuracy_vs_params", "07_accuracy_vs_time", "07_peak_memory", "07_learning_curves",
              "07_per_class_heatmap", "07_combinations", "07_top5_one_image")


@pytest.fixture(scope="module")
def course(tmp_path_factory, session_data):
    """Run the course twice in one results folder: the second run must reuse everything but 07."""
    root = tmp_path_factory.mktemp("course")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPFT_DATA", session_data)
        first = runner.run_all("smoke", root=root, device="cpu", extra=REDUCED)
        second = runner.run_all("smoke", root=root, device="cpu", extra=REDUCED)
    return root / "smoke", first, second


def test_every_notebook_succeeds(course):
    _, first, _ = course
    assert first.ok, "\n".join(first.lines())
    assert [s.notebook for s in first.steps] == [nb for nb, _ in runner.NOTEBOOKS]
    assert {s.status for s in first.steps} == {"ok"}


def test_one_result_per_method_in_the_schema(course):
    folder, _, _ = course
    for method in METHODS:
        path = result_path(folder, method, 0)
        assert path.exists(), f"{method} wrote no main result"
        res = json.loads(path.read_text())
        assert not [k for k in REQUIRED_KEYS if k not in res], f"{path.name} lacks schema keys"
        assert res["method"] == method and res["variant"] is None and res["profile"] == "smoke"
        assert res["standin"] is True and "STAND-IN" in res["label"]
        assert 0.0 <= res["test_acc"] <= res["test_top5"] <= 1.0
        assert 0 <= res["trainable_params"] <= res["total_params"]
        assert (folder / res["predictions"]).exists()


def test_summary_lists_every_method_with_a_measured_row(course):
    folder, _, _ = course
    summary = pd.read_csv(folder / "summary.csv")
    assert list(summary["method"]) == list(METHODS)
    assert set(summary["status"]) == {"ok"}
    assert summary["label"].str.contains("STAND-IN").all()
    assert "STAND-IN" in (folder / "summary.md").read_text()


def test_figures_and_executed_notebooks_are_written(course):
    folder, _, _ = course
    figures = {p.stem for p in (folder / "figures").glob("*.png")}
    assert set(FIGURES_07) <= figures
    for nb, _ in runner.NOTEBOOKS:
        assert any(f.startswith(nb[:3]) for f in figures), f"{nb} saved no figure"
    executed = {p.stem for p in (folder / "notebooks").glob("*.ipynb")}
    assert executed == {nb for nb, _ in runner.NOTEBOOKS}
    for nb, _ in runner.NOTEBOOKS:
        cells = nbformat.read(folder / "notebooks" / f"{nb}.ipynb", as_version=4).cells
        outputs = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o.output_type == "error"], nb
        assert any("image/png" in o.get("data", {}) for o in outputs), f"{nb}: no inline figure"
    comparison = (folder / "notebooks" / "07_comparison.ipynb").read_text()
    assert "Recommendation:" in comparison


def test_second_run_skips_everything_but_the_comparison(course):
    _, _, second = course
    assert second.ok, "\n".join(second.lines())
    status = {s.notebook: s.status for s in second.steps}
    assert status == {**{nb: "skipped" for nb, _ in runner.NOTEBOOKS[:-1]}, "07_comparison": "ok"}
