"""The runner behind run_all.sh: planning, skipping, failures, exit status, summary — on fake notebooks."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from clipft_utils import __main__ as cli
from clipft_utils import runner
from clipft_utils.config import METHODS
from clipft_utils.errors import ConfigError


def fake_result(folder: Path, method: str, seed: int, acc: float = 0.5) -> None:
    """A result JSON just complete enough for the runner and the summary."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{method}_seed{seed}.json").write_text(json.dumps({
        "method": method, "variant": None, "seed": seed, "model": "ToyCLIP", "pretrained": "synthflowers",
        "dataset": "synthflowers", "standin": True, "test_acc": acc, "test_top5": 1.0, "trainable_params": 10,
        "total_params": 100, "trainable_percent": 10.0, "train_seconds": 1.0, "peak_memory_mb": 50.0}))


class FakeExecute:
    """Stands in for papermill: records each call, writes the notebook's results, fails where told."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def __call__(self, notebook: str, out: Path, parameters: dict) -> None:
        self.calls.append((notebook, parameters))
        if notebook in self.fail:
            raise RuntimeError(f"boom in {notebook}")
        methods = dict(runner.NOTEBOOKS)[notebook]
        for m in methods:
            fake_result(Path(parameters["results_dir"]), m, parameters["seed"])
        out.write_text("{}")

    @property
    def notebooks(self) -> list[str]:
        return [nb for nb, _ in self.calls]


@pytest.fixture
def fake(monkeypatch) -> FakeExecute:
    fake = FakeExecute()
    monkeypatch.setattr(runner, "_execute", fake)
    return fake


def statuses(report) -> dict[str, str]:
    return {s.notebook: s.status for s in report.steps}


def test_plan_runs_the_chosen_methods_then_the_comparison():
    assert [nb for nb, _ in runner.plan()] == [nb for nb, _ in runner.NOTEBOOKS]
    assert [nb for nb, _ in runner.plan(["lora", "zero_shot"])] == ["01_zero_shot", "05_lora", "07_comparison"]
    with pytest.raises(ConfigError, match="lora"):
        runner.plan(["lorra"])


def test_only_runs_the_subset(fake, tmp_path):
    report = runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=lambda *a: None)
    assert fake.notebooks == ["03_bitfit", "07_comparison"] and report.ok


def test_finished_methods_are_skipped_unless_forced(fake, tmp_path):
    runner.run_all("smoke", root=tmp_path, echo=lambda *a: None)
    assert len(fake.calls) == 7
    again = runner.run_all("smoke", root=tmp_path, echo=lambda *a: None)
    assert fake.notebooks[7:] == ["07_comparison"]
    assert statuses(again) == {**{nb: "skipped" for nb, _ in runner.NOTEBOOKS[:-1]}, "07_comparison": "ok"}
    runner.run_all("smoke", root=tmp_path, force=True, echo=lambda *a: None)
    assert len(fake.calls) == 7 + 1 + 7


def test_every_seed_runs_each_method_once_and_the_comparison_once(fake, tmp_path):
    report = runner.run_all("smoke", only=["lora"], seeds=[0, 1], root=tmp_path, echo=lambda *a: None)
    assert [(nb, p["seed"]) for nb, p in fake.calls] == [("05_lora", 0), ("05_lora", 1), ("07_comparison", 0)]
    assert report.ok and (tmp_path / "smoke" / "lora_seed1.json").exists()


def test_parameters_reach_the_notebooks_and_scoped_extras_only_their_notebook(fake, tmp_path):
    runner.run_all("smoke", root=tmp_path, device="cpu", echo=lambda *a: None,
                   extra={"epochs": 1, "lora": {"ranks": [1, 2]}, "07_comparison": {"need": "good"}})
    params = dict(fake.calls)
    assert params["03_bitfit"] == {"profile": "smoke", "seed": 0, "device": "cpu",
                                   "results_dir": str(tmp_path / "smoke"), "epochs": 1}
    assert params["05_lora"]["ranks"] == [1, 2] and "ranks" not in params["04_prefix_tuning"]
    assert params["07_comparison"]["need"] == "good" and "need" not in params["05_lora"]


def test_a_failing_notebook_is_reported_and_the_others_still_run(monkeypatch, tmp_path):
    fake = FakeExecute(fail=("03_bitfit",))
    monkeypatch.setattr(runner, "_execute", fake)
    lines: list[str] = []
    report = runner.run_all("smoke", root=tmp_path, echo=lines.append)
    assert len(fake.calls) == 7 and not report.ok
    assert statuses(report)["03_bitfit"] == "failed" and statuses(report)["06_full_finetune"] == "ok"
    assert "boom in 03_bitfit" in next(s.error for s in report.steps if s.status == "failed")
    assert any("SOME FAILED" in line for line in lines)
    summary = pd.read_csv(tmp_path / "smoke" / "summary.csv").set_index("method")
    assert summary.loc["bitfit", "status"] == "not run" and summary.loc["lora", "status"] == "ok"


def test_cli_exit_status_says_whether_everything_succeeded(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPFT_RESULTS", str(tmp_path / "ok"))
    monkeypatch.setattr(runner, "_execute", FakeExecute())
    assert cli.main(["run", "--smoke", "--all"]) == 0
    monkeypatch.setenv("CLIPFT_RESULTS", str(tmp_path / "bad"))
    monkeypatch.setattr(runner, "_execute", FakeExecute(fail=("05_lora",)))
    assert cli.main(["run", "--smoke", "--all"]) == 1
    assert cli.main(["run", "--smoke"]) == 2          # neither --all nor --only: nothing to do


def test_cli_params_become_notebook_parameters(monkeypatch, tmp_path):
    fake = FakeExecute()
    monkeypatch.setattr(runner, "_execute", fake)
    assert cli.main(["run", "--smoke", "--only", "lora", "-p", "epochs=1", "-p", "lora.ranks=[1, 2]",
                     "-p", "test_per_class=5"]) == 0
    lora = dict(fake.calls)["05_lora"]
    assert lora["epochs"] == 1 and lora["ranks"] == [1, 2] and lora["test_per_class"] == 5
    with pytest.raises(SystemExit):
        cli.main(["run", "--smoke", "--all", "-p", "epochs"])


def test_summary_with_no_results(fake, tmp_path):
    lines: list[str] = []
    report = runner.run_all("smoke", only=["lora"], root=tmp_path, echo=lines.append)
    (tmp_path / "smoke" / "lora_seed0.json").unlink()
    from clipft_utils.comparison import write_summary
    text = write_summary("smoke", tmp_path / "smoke")
    assert report.ok and text.count("not run") == len(METHODS)
    assert any("| lora" in line for line in lines)      # the runner printed the table


# ----------------------------------------------------------------------------- real papermill, tiny notebooks
def tiny_notebook(path: Path, *cells: str) -> None:
    """A notebook with a papermill parameters cell followed by ``cells``."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nseed = 0\ndevice = "auto"\nresults_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *map(nbformat.v4.new_code_cell, cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


WRITE = ("import json, pathlib\n"
         "p = pathlib.Path(results_dir) / f'{METHOD}_seed{seed}.json'\n"
         "p.write_text(json.dumps({'method': '{METHOD}', 'variant': None, 'seed': seed, 'test_acc': 0.5}))")


def test_real_notebooks_failure_keeps_the_executed_copy_and_no_result(monkeypatch, tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    tiny_notebook(nbs / "01_zero_shot.ipynb", WRITE.replace("{METHOD}", "zero_shot"), "raise ValueError('late failure')")
    tiny_notebook(nbs / "02_linear_probe.ipynb", WRITE.replace("{METHOD}", "linear_probe"),
                  "import os, matplotlib.pyplot as plt\nprint('headless', os.environ.get('CLIPFT_HEADLESS'))\n"
                  "plt.plot([1, 2]); plt.show()")
    tiny_notebook(nbs / "07_comparison.ipynb", "print('compare')")
    monkeypatch.setattr(runner, "NOTEBOOK_DIR", nbs)
    monkeypatch.setattr(runner, "NOTEBOOKS", (("01_zero_shot", ("zero_shot",)),
                                              ("02_linear_probe", ("linear_probe",)), ("07_comparison", ())))
    monkeypatch.setenv("MPLBACKEND", "Agg")             # what run_all.sh exports
    folder = tmp_path / "results" / "smoke"
    report = runner.run_all("smoke", root=tmp_path / "results", echo=lambda *a: None)

    assert statuses(report) == {"01_zero_shot": "failed", "02_linear_probe": "ok", "07_comparison": "ok"}
    assert all(s.cpu_seconds is not None for s in report.steps[:3])  # each kernel's CPU time is recorded
    failed = next(s for s in report.steps if s.status == "failed")
    assert "ValueError" in failed.error and "late failure" in failed.error
    assert (folder / "notebooks" / "01_zero_shot.FAILED.ipynb").exists()
    assert not (folder / "notebooks" / "01_zero_shot.ipynb").exists()
    assert not list((folder / "notebooks").glob(".*running*"))
    assert not (folder / "zero_shot_seed0.json").exists()                     # not counted as done ...
    assert (folder / "failed" / "01_zero_shot" / "zero_shot_seed0.json").exists()  # ... but kept aside
    assert (folder / "linear_probe_seed0.json").exists()

    executed = nbformat.read(folder / "notebooks" / "02_linear_probe.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("headless 1" in o.get("text", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)             # figures land in the copy
    assert pd.read_csv(folder / "summary.csv").set_index("method").loc["zero_shot", "status"] == "not run"

    monkeypatch.setattr(runner, "NOTEBOOKS", runner.NOTEBOOKS[1:])
    again = runner.run_all("smoke", root=tmp_path / "results", echo=lambda *a: None)
    assert statuses(again) == {"02_linear_probe": "skipped", "07_comparison": "ok"}
