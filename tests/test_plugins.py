"""Adding a method or a dataset is adding a module: a plug-in defined here, in the test, is picked up by the runner
(plan, ``--only``, ``-p METHOD.field``, ``--data NAME``), the tables and the recommender — no library file changes.

The toy method lives in a module written to a temporary folder and named in ``CLIPFT_PLUGINS`` (how a plug-in
outside the project is found; the runner's notebook kernels inherit the variable). It registers the algorithm with
the library (``Method``) and its place in the course with the course layer (``Section``: a section of notebook 03)."""
from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from clipft_utils import comparison, plugins
from clipft_utils.course import runner, sections
from clipft_utils import methods as M
from clipft_utils.methods import make_config
from clipft_utils.errors import ConfigError
from clipft_utils.models import CLIPClassifier
from clipft_utils.paths import atomic_write_text

TOY = textwrap.dedent('''
    """Toy method: only the final LayerNorm of the image tower (and the head) train."""
    from dataclasses import dataclass

    from clipft_utils.config import TrainConfig
    from clipft_utils.errors import ConfigError
    from clipft_utils.course.sections import Section, register as register_section
    from clipft_utils.methods.base import Method, freeze, param_groups, register


    @dataclass
    class ToyConfig(TrainConfig):
        epochs: int = 3
        scale: float = 1.0

        def validate(self):
            super().validate()
            if self.scale <= 0:
                raise ConfigError(f"ToyConfig.scale must be > 0, got {self.scale}. Fix: pass scale=<a value > 0>.")


    def apply(clf, cfg):
        freeze(clf)
        params = list(clf.visual.ln_post.parameters())
        for p in params:
            p.requires_grad_(True)
        return param_groups(params, clf)


    METHOD = register(Method(
        name="toy_norm", title="Toy (final LayerNorm)", kind="parameter-efficient", order=3.5, config=ToyConfig,
        apply=apply, summary=lambda cfg: f"ln_post, scale {cfg.scale:g}", short="toy",
        profiles={"smoke": {"epochs": 1}}))
    SECTION = register_section(Section(method="toy_norm", notebook="03_bitfit"))
''')


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    """The toy plug-in, found through CLIPFT_PLUGINS; removed from the registry afterwards."""
    (tmp_path / "toy_plugin.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLIPFT_PLUGINS", "toy_plugin")
    monkeypatch.setattr(plugins, "_loaded", False)  # load again, as a fresh process (a notebook kernel) would
    plugins.load()
    yield M.get("toy_norm")
    M.unregister("toy_norm")
    sections.unregister("toy_norm")
    sys.modules.pop("toy_plugin", None)


def write_result(folder: Path, method: str, val: float, test: float, memory: float, trainable: int) -> None:
    atomic_write_text(folder / f"{method}_seed0.json", json.dumps({
        "method": method, "variant": None, "seed": 0, "shots": None, "model": "ToyCLIP", "pretrained": "synthflowers",
        "dataset": "synthflowers", "standin": True, "val_acc": val, "test_acc": test, "test_top5": 1.0,
        "trainable_params": trainable, "total_params": 1000, "trainable_percent": trainable / 10,
        "train_seconds": 2.0, "train_memory_mb": memory, "steps": 0 if method == "zero_shot" else 10}))


def test_a_method_plug_in_is_registered_with_its_config_and_profile_defaults(toy_method):
    order = M.names()
    assert order.index("bitfit") < order.index("toy_norm") < order.index("prefix_tuning")  # order 3.5: between them
    assert sections.notebooks()["03_bitfit"][-1] == "toy_norm"                 # a section of the BitFit notebook
    assert make_config("toy_norm", "smoke").epochs == 1 and make_config("toy_norm", "full").epochs == 3
    with pytest.raises(ConfigError, match="scale must be > 0"):
        make_config("toy_norm", scale=0)
    clf = CLIPClassifier(torch.nn.Module(), torch.randn(3, 4))
    clf.visual.ln_post = torch.nn.LayerNorm(4)
    groups = M.apply_method("toy_norm", clf)
    assert sum(p.numel() for g in groups for p in g["params"]) == 2 * 4 + 3 * 4 + 3  # ln_post + head


def section_of_03(folder: Path) -> Path:
    """The notebooks with the toy method's section in 03: here only its parameter (`toy_norm_config`), which is what
    the runner reads of a notebook (papermill's reading of the parameters cell)."""
    import nbformat
    import shutil
    folder.mkdir()
    for nb in ("03_bitfit", "07_comparison"):
        shutil.copy(runner.jobs.NOTEBOOK_DIR / f"{nb}.ipynb", folder / f"{nb}.ipynb")
    book = nbformat.read(folder / "03_bitfit.ipynb", as_version=4)
    cell = next(c for c in book.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\ntoy_norm_config = None  # overrides of the toy method's config"
    nbformat.write(book, folder / "03_bitfit.ipynb")
    return folder


def test_the_runner_plans_checks_and_runs_a_method_plug_in(toy_method, tmp_path, monkeypatch):
    calls = []
    with pytest.raises(ConfigError, match="declares no `toy_norm_config` parameter. Fix: add `toy_norm_config = None`"):
        runner.run_all("smoke", only=["toy_norm"], root=tmp_path, echo=print, extra={"toy_norm": {"scale": 2.0}})
    monkeypatch.setattr(runner.jobs, "NOTEBOOK_DIR", section_of_03(tmp_path / "notebooks"))

    def execute(job, out, parameters, env):
        calls.append((job.notebook, job.methods, parameters))
        for m in job.methods:
            write_result(Path(parameters["results_dir"]), m, 0.5, 0.5, 10.0, 10)
        out.write_text("{}")

    monkeypatch.setattr(runner.execute, "_execute", execute)
    lines: list[str] = []
    report = runner.run_all("smoke", only=["toy_norm"], root=tmp_path, echo=lines.append,
                            extra={"toy_norm": {"scale": 2.0}})
    assert report.ok and [c[0] for c in calls] == ["03_bitfit", "07_comparison"]
    assert calls[0][1][-1] == "toy_norm" and calls[0][2]["toy_norm_config"] == {"scale": 2.0}
    assert "config" not in calls[0][2]                                             # BitFit's own config: untouched
    assert any("toy_norm: " in line and "step(s) in 1 epoch(s)" in line for line in lines)  # the plan describes it
    with pytest.raises(ConfigError, match="scale must be > 0"):                  # its config checks -p before work
        runner.run_all("smoke", only=["toy_norm"], root=tmp_path, echo=lines.append, extra={"toy_norm": {"scale": -1}})
    from clipft_utils.course import cli
    assert cli.main(["run", "--smoke", "--only", "toy_norm", "--dry-run"]) == 0  # --only accepts it


def test_a_planned_method_whose_notebook_writes_no_result_fails_naming_the_section_to_add(toy_method, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setattr(runner.jobs, "NOTEBOOK_DIR", section_of_03(tmp_path / "notebooks"))

    def execute(job, out, parameters, env):  # 03 as it is: BitFit's section, none for the toy method
        for m in job.methods:
            if m != "toy_norm":
                write_result(Path(parameters["results_dir"]), m, 0.5, 0.5, 10.0, 10)
        out.write_text("{}")

    monkeypatch.setattr(runner.execute, "_execute", execute)
    lines: list[str] = []
    report = runner.run_all("smoke", only=["toy_norm"], root=tmp_path, echo=lines.append)
    assert not report.ok and report.steps[0].status == "failed"
    assert "wrote no result for the method 'toy_norm'" in report.steps[0].error
    text = "\n".join(lines)
    assert "notebooks/03_bitfit.ipynb" in text and "toy_norm_config" in text   # which section to add, and where


def test_the_tables_and_the_recommender_pick_up_a_method_plug_in(toy_method, tmp_path):
    folder = tmp_path / "smoke"
    for method, val, test, memory, trainable in [("zero_shot", 0.30, 0.30, None, 0),
                                                  ("linear_probe", 0.50, 0.50, 5.0, 500),
                                                  ("bitfit", 0.55, 0.54, 50.0, 800),
                                                  ("toy_norm", 0.70, 0.69, 40.0, 20)]:
        write_result(folder, method, val, test, memory, trainable)
    df = comparison.load("smoke", results_dir=folder)
    table = comparison.summary_table(df)
    row = table[table["method"] == "toy_norm"].iloc[0]
    assert row["type"] == "parameter-efficient" and row["status"] == "ok"
    rows = list(table["method"])
    assert rows.index("bitfit") < rows.index("toy_norm")                         # in display order, after BitFit
    rec = comparison.recommend(df, memory_budget_mb=1e6, need="best")
    assert rec.method == "toy_norm"                                              # best on validation
    assert comparison.method_colour("toy_norm") != comparison.method_colour("bitfit")


SET = textwrap.dedent('''
    from clipft_utils.standin.synthflowers import SynthFlowers


    class SmallFlowers(SynthFlowers):
        """SynthFlowers under another name: a dataset plug-in."""
        name = "smallflowers"

        @property
        def display(self):
            return "SmallFlowers (a test plug-in)"
''')


def test_a_dataset_plug_in_is_reached_with_data_name(tmp_path, monkeypatch):
    (tmp_path / "set_plugin.py").write_text(SET)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CLIPFT_PLUGINS", "set_plugin")
    monkeypatch.setattr(plugins, "_loaded", False)
    from clipft_utils.datasets import base
    try:
        plugins.load()
        assert "smallflowers" in runner.dataset_names()
        lines: list[str] = []
        runner.run_all("smoke", data="smallflowers", root=tmp_path / "r", echo=lines.append, dry_run=True)
        assert "SmallFlowers (a test plug-in)" in lines[0]                       # a name, not taken for a folder
    finally:
        base.REGISTRY.pop("smallflowers", None)
        sys.modules.pop("set_plugin", None)


def test_a_plug_in_that_cannot_be_imported_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CLIPFT_PLUGINS", "no_such_plugin_module")
    monkeypatch.setattr(plugins, "_loaded", False)
    with pytest.raises(ConfigError, match="CLIPFT_PLUGINS names the module 'no_such_plugin_module'.*PYTHONPATH"):
        plugins.load()
    monkeypatch.setattr(plugins, "_loaded", True)
    importlib.invalidate_caches()
