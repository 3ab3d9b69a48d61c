"""The course on the smallest folder `data check` accepts (2 classes, the fewest images per class the split rule
allows): every notebook runs on every folder the checks let through (fewer classes than top-5, a training split of
one batch for 06's memory steps), and what it prints about the folder is true. (07's helpers on 2, 3 and 6 classes:
tests/test_comparison_small.py; a 6-class course: tests/test_course_smoke.py.)"""
from __future__ import annotations

import re
import shutil

import nbformat
import pytest

from clipft_utils.course import runner
from clipft_utils.course.cli import main
from clipft_utils.datasets.base import SplitSpec
from clipft_utils.standin import folders

pytestmark = pytest.mark.slow


def text_of(path) -> str:
    """Every text output of an executed notebook, joined."""
    cells = nbformat.read(path, as_version=4).cells
    outs = [o for c in cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outs if o.output_type == "error"], f"{path.name} has an error output"
    return "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outs)


@pytest.fixture(scope="module")
def smallest(tmp_path_factory):
    """2 classes with exactly the minimum images per class of the default split (one per split)."""
    n = SplitSpec().minimum()
    root = folders.write_imagefolder_standin(tmp_path_factory.mktemp("images") / "two", n_classes=2, per_class=n,
                                           faults=False)
    return root, n


def test_data_check_accepts_the_smallest_folder_and_refuses_one_image_fewer(smallest, tmp_path, capsys):
    root, n = smallest
    assert main(["data", "check", str(root)]) == 0
    fewer = shutil.copytree(root, tmp_path / "fewer")
    cls = sorted(p for p in fewer.iterdir() if p.is_dir())[0]
    next(f for f in sorted(cls.rglob("*")) if f.is_file()).unlink()
    capsys.readouterr()
    assert main(["data", "check", str(fewer)]) == 2
    err = capsys.readouterr().err
    assert cls.name in err and f"{n - 1} readable image" in err and "Fix:" in err and "Traceback" not in err


def test_every_notebook_runs_on_the_smallest_folder(smallest, session_data, tmp_path_factory, monkeypatch):
    root, _ = smallest
    monkeypatch.setenv("CLIPFT_DATA", session_data)
    # the notebooks' own defaults (extras on, 06's three memory steps on a one-batch training split), one epoch
    report = runner.run_all("smoke", root=tmp_path_factory.mktemp("course"), device="cpu", data=str(root),
                            extra={"epochs": 1})
    assert report.ok, "\n".join(report.lines())
    assert {s.status for s in report.steps} == {"ok"} and len(report.steps) == len(runner.notebooks())
    notebooks = report.folder / "notebooks"
    setup = text_of(notebooks / "01_zero_shot.ipynb")
    # the setup line counts what was loaded: one test image per class, though the smoke profile asks for 20
    assert re.search(r"test 2 \(1 image\(s\) per class", setup), setup[:2000]
    comparison = text_of(next(notebooks.glob("07_comparison*.ipynb")))
    assert "Recommendation:" in comparison
    for path in notebooks.glob("*.ipynb"):
        text_of(path)                                   # no notebook holds an error output

