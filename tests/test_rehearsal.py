"""The real course rehearsed: ViT-B-32 at 224 px, torchvision's Flowers102 on the official layout and .mat files,
the full profile's batch sizes, random weights on generated images — every notebook runs and writes its results,
labelled so that no number can pass for a result. (About a quarter of an hour on 2 CPU cores.)"""
from __future__ import annotations

import json

import pytest

from clipft_utils import runner
from clipft_utils.methods import names

from clipft_utils.datasets.flowers102 import shared_mats

METHODS = names()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shared_mats() is None,
                                                   reason="the official Flowers102 .mat files are not beside the project")]


def test_the_rehearsal_runs_every_notebook_of_the_real_course(tmp_path_factory):
    """Sized to what only it proves: every notebook's main row at the real shapes, through the real loaders. The
    notebooks' extras (sweeps, variants, 06's combinations) call the same method code on the same shapes and run on
    the stand-in in tests/test_course_smoke.py; `./run_all.sh --rehearse` runs them at the real shapes too."""
    root = tmp_path_factory.mktemp("rehearsal")
    report = runner.run_all("rehearse", root=root, device="cpu", extra={"extras": False})
    assert report.ok, "\n".join(report.lines())
    assert {s.status for s in report.steps} == {"ok"} and len(report.steps) == len(runner.notebooks())
    folder = report.folder
    assert folder.name == "rehearse"                               # its own folder: never the real run's
    for method in METHODS:
        name = f"{method}_shots1_seed0"
        res = json.loads((folder / f"{name}.json").read_text())
        assert res["model"] == "ViT-B-32" and res["weights_id"] == "random" and res["profile"] == "rehearse"
        assert "REHEARSAL" in res["label"] and "RANDOM WEIGHTS" in res["label"]
        assert res["n_test"] == 102 and (folder / "predictions" / f"{name}.npz").exists()
    summary = (folder / "summary.md").read_text()
    assert "REHEARSAL" in summary and "RANDOM WEIGHTS" in summary
    for step in report.steps:
        print(f"{step.notebook:<18} {step.seconds:6.1f} s")       # the per-notebook times (pytest -s shows them)
