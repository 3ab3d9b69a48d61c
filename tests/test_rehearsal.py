"""The real course rehearsed: ViT-B-32 at 224 px, torchvision's Flowers102 on the official layout and .mat files,
the full profile's batch sizes, random weights on generated images — every notebook runs and writes its results,
labelled so that no number can pass for a result. (About a quarter of an hour on 2 CPU cores.)"""
from __future__ import annotations

import json

import pytest
from scipy.io import loadmat

from clipft_utils.course import runner
from clipft_utils.config import get_profile
from clipft_utils.course.core import val_per_class
from clipft_utils.data import split_rows
from clipft_utils.datasets import get_dataset
from clipft_utils.methods import names
from clipft_utils.datasets.flowers102 import shared_mats
from clipft_utils.paths import data_dir
from clipft_utils.standin import folders

METHODS = names()

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shared_mats() is None,
                                                   reason="the official Flowers102 .mat files are not beside the project")]


def write_what_the_rehearsal_reads() -> int:
    """Write the rehearsal's folder (the official .mat files, byte-identical, so torchvision accepts it) with real
    500 px JPEGs for just the images its course reads: one per class of each split, drawn as the course draws them
    (data.load_splits). The other 7883 are empty files: the layout is complete (the loader checks that every file
    exists) and reading one fails. Writing all 8189 takes ~80 s and nothing reads the rest; rehearsal_root's own
    writing is tested in tests/test_synth.py. Returns the number of real images written."""
    prof = get_profile("rehearse")
    root = data_dir() / "rehearsal"
    folder = folders.write_fullsize_standin(root, shared_mats(), ids=[], progress=False) / "flowers-102"
    labels = loadmat(folder / "imagelabels.mat", squeeze_me=True)["labels"]
    for i in range(1, len(labels) + 1):
        (folder / "jpg" / f"image_{i:05d}.jpg").touch()
    ds = get_dataset("flowers102", root)
    per_class = {"train": prof.shots, "val": val_per_class(prof.shots, None), "test": prof.test_per_class}
    ids = set()
    for split, k in per_class.items():
        rows = split_rows(ds.labels(split), k, seed=0, cap=split == "test")
        ids |= {int(ds.index(split).files[r].stem.removeprefix("image_")) for r in rows}
    folders.write_fullsize_standin(root, shared_mats(), ids=sorted(ids), progress=False, overwrite=True)
    (folder / ".complete").write_text(f"{len(ids)} images the rehearsal test reads, the rest empty\n")
    return len(ids)


def test_the_rehearsal_runs_every_notebook_of_the_real_course(tmp_path_factory):
    """Sized to what only it proves: every notebook's main row at the real shapes, through the real loaders. The
    notebooks' extras (sweeps, variants, 06's combinations) call the same method code on the same shapes and run on
    the stand-in in tests/test_course_smoke.py; `./run_all.sh --rehearse` runs them at the real shapes too."""
    assert write_what_the_rehearsal_reads() == 3 * 102
    root = tmp_path_factory.mktemp("rehearsal")
    # 01's template ensemble at 2 of its templates: the same code at the same shapes ([C, T, D] text embeddings),
    # a quarter of the 816 prompts through the text tower (~100 s of the test)
    report = runner.run_all("rehearse", root=root, device="cpu", extra={"extras": False, "ensemble_size": 2})
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
    assert len(json.loads((folder / "zero_shot-ensemble_shots1_seed0.json").read_text())["templates"]) == 2
    summary = (folder / "summary.md").read_text()
    assert "REHEARSAL" in summary and "RANDOM WEIGHTS" in summary
    for step in report.steps:
        print(f"{step.notebook:<18} {step.seconds:6.1f} s")       # the per-notebook times (pytest -s shows them)
