"""The runner behind run_all.sh: the plan, checks before anything runs, reuse only of what matches, failures,
locks, parallel devices and shards — on fake notebooks, and on tiny real ones through papermill."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

from clipft_utils.course import cli
from clipft_utils.course import runner
from clipft_utils import records
from clipft_utils.methods import names

from clipft_utils.errors import ClipftError, ConfigError, ResultsError
from clipft_utils.paths import atomic_write_text, file_lock
from clipft_utils.heads import head_path, save_head

METHODS = names()


def fake_result(folder: Path, method: str, seed: int, acc: float = 0.5, shots=None) -> Path:
    """A result JSON just complete enough for the runner and the summary (written like the notebooks write)."""
    stem = f"{method}{'' if shots is None else f'_shots{shots}'}_seed{seed}"
    return atomic_write_text(folder / f"{stem}.json", json.dumps({
        "method": method, "variant": None, "seed": seed, "shots": shots, "model": "ToyCLIP",
        "pretrained": "synthflowers", "dataset": "synthflowers", "standin": True, "test_acc": acc, "test_top5": 1.0,
        "trainable_params": 10, "total_params": 100, "trainable_percent": 10.0, "train_seconds": 1.0,
        "peak_memory_mb": 50.0}))


class FakeExecute:
    """Stands in for the papermill worker: records each call, writes the notebook's results (through the journal,
    as the real kernels do), fails where told."""

    def __init__(self, fail: tuple[str, ...] = ()):
        self.calls: list[tuple[str, dict]] = []
        self.fail = fail

    def __call__(self, job, out: Path, parameters: dict, env: dict) -> None:
        self.calls.append((job.notebook, parameters))
        old = os.environ.get("CLIPFT_JOURNAL")
        os.environ["CLIPFT_JOURNAL"] = env["CLIPFT_JOURNAL"]
        try:
            for m in job.methods:
                folder, shots = Path(parameters["results_dir"]), parameters.get("shots")
                acc = float((parameters.get("config") or {}).get("lr", 0.5))  # a notebook's output follows its config
                path = fake_result(folder, m, parameters["seed"], acc=acc, shots=shots)
                save_head(head_path(path.parent, path.stem), torch.zeros(3, 2))  # heads 06 reads
            if job.notebook in self.fail:
                atomic_write_text(Path(parameters["results_dir"]) / "figures" / f"{job.notebook}.png", "png")
                raise RuntimeError(f"boom in {job.notebook}")
        finally:
            if old is None:
                os.environ.pop("CLIPFT_JOURNAL", None)
            else:
                os.environ["CLIPFT_JOURNAL"] = old
        out.write_text("{}")

    @property
    def notebooks(self) -> list[str]:
        return [nb for nb, _ in self.calls]


@pytest.fixture
def fake(monkeypatch) -> FakeExecute:
    fake = FakeExecute()
    monkeypatch.setattr(runner.execute, "_execute", fake)
    return fake


def quiet(*args, **kwargs) -> None:
    return None


def statuses(report) -> dict[str, str]:
    return {s.notebook: s.status for s in report.steps}


# ----------------------------------------------------------------------------- the plan
def test_plan_runs_the_chosen_methods_then_the_comparison():
    assert [nb for nb, _ in runner.plan()] == [nb for nb, _ in runner.notebooks()]
    assert [nb for nb, _ in runner.plan(["lora", "zero_shot"])] == ["01_zero_shot", "05_lora", "07_comparison"]
    with pytest.raises(ConfigError, match="lora"):
        runner.plan(["lorra"])


def test_only_runs_the_subset(fake, tmp_path):
    report = runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=quiet)
    assert fake.notebooks == ["03_bitfit", "07_comparison"] and report.ok


def test_finished_notebooks_are_skipped_only_while_everything_matches(fake, tmp_path, monkeypatch):
    runner.run_all("smoke", root=tmp_path, echo=quiet)
    assert len(fake.calls) == 7
    again = runner.run_all("smoke", root=tmp_path, echo=quiet)
    assert fake.notebooks[7:] == ["07_comparison"]
    assert statuses(again) == {**{nb: "skipped" for nb, _ in runner.notebooks()[:-1]}, "07_comparison": "ok"}
    runner.run_all("smoke", root=tmp_path, force=True, echo=quiet)
    assert len(fake.calls) == 7 + 1 + 7


@pytest.mark.parametrize("change, reason", [
    ({"extra": {"epochs": 1}}, "parameters changed: epochs None → 1"),
    ({"extra": {"test_per_class": 5}}, "parameters changed: test_per_class None → 5"),
    ({"extra": {"pretrained": "random"}}, "the model weights changed"),
    ({"extra": {"bitfit": {"lr": 0.01}}}, "parameters changed: config None → {'lr': 0.01}"),
])
def test_a_result_is_recomputed_when_what_is_asked_changes(fake, tmp_path, change, reason):
    lines: list[str] = []
    runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=quiet)
    runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=lines.append, **change)
    assert fake.notebooks == ["03_bitfit", "07_comparison"] * 2
    assert any("run  03_bitfit" in line and reason in line for line in lines), lines


def test_a_notebook_whose_inputs_were_rewritten_reruns_and_dry_run_says_so(fake, tmp_path):
    """06 reads what 02 wrote: 02 rerun with another config rewrites its files, so 06 reruns too (before: 06 was
    skipped as up to date and its ensembles and LP→FT were stale)."""
    runner.run_all("smoke", root=tmp_path, echo=quiet)
    lines: list[str] = []
    report = runner.run_all("smoke", root=tmp_path, echo=lines.append, dry_run=True,
                            extra={"linear_probe": {"lr": 0.25}})
    assert statuses(report)["06_full_finetune"] == "planned" and statuses(report)["03_bitfit"] == "skipped"
    assert any("06_full_finetune seed 0: would run (02_linear_probe seed 0 would run first" in l for l in lines), lines
    fake.calls.clear()
    lines.clear()
    runner.run_all("smoke", root=tmp_path, echo=lines.append, extra={"linear_probe": {"lr": 0.25}})
    assert fake.notebooks == ["02_linear_probe", "06_full_finetune", "07_comparison"]
    assert any("run  06_full_finetune" in l and "what it reads from 02_linear_probe changed since it ran" in l
               for l in lines), lines
    fake.calls.clear()
    runner.run_all("smoke", root=tmp_path, echo=quiet, extra={"linear_probe": {"lr": 0.25}})
    assert fake.notebooks == ["07_comparison"]                                   # and then everything is up to date


def test_what_a_notebook_notes_is_said_in_the_terminal_and_force_asks_for_no_resume(fake, tmp_path, monkeypatch):
    """A resumed checkpoint or a rebuilt cache was said only inside the executed notebook; --force resumed leftovers."""
    seen: list[tuple[str, str | None]] = []

    def execute(job, out, parameters, env):
        seen.append((job.notebook, env.get("CLIPFT_FRESH")))
        with open(env["CLIPFT_EVENTS"], "a") as f:                      # what paths.note writes in a kernel
            f.write(f"{job.notebook}: resuming from checkpoint after epoch 2 of 5\n")
        fake(job, out, parameters, env)
    monkeypatch.setattr(runner.execute, "_execute", execute)
    lines: list[str] = []
    runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=lines.append)
    assert "[run_all] 03_bitfit seed 0: 03_bitfit: resuming from checkpoint after epoch 2 of 5" in lines
    assert seen == [("03_bitfit", None), ("07_comparison", None)]
    seen.clear()
    runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=quiet, force=True)
    assert seen == [("03_bitfit", "1"), ("07_comparison", "1")]
    assert not list((tmp_path / "smoke" / "runs").glob(".*.events"))


@pytest.mark.parametrize("kwargs, message", [
    ({"extra": {"lora": {"rank": 100000}}}, "05_lora: lora: LoRA rank 100000 is larger than transformer.resblocks.0"),
    ({"shots": [1000]}, "--shots 1000: shots=1000 but class 0"),
])
def test_what_a_notebook_would_refuse_minutes_in_is_refused_before_any_work(fake, tmp_path, kwargs, message):
    """Before: -p lora.rank=100000 trained 99.6 % of ToyCLIP and wrote a 391 MB folder without a word; --shots 1000
    passed the plan and failed 13 s into each notebook."""
    with pytest.raises(ClipftError, match=re.escape(message)) as err:
        runner.run_all("smoke", root=tmp_path, echo=quiet, **kwargs)
    assert "Fix:" in str(err.value) and fake.calls == []


def test_a_disk_without_room_is_refused_before_any_work_naming_the_folder(fake, tmp_path, monkeypatch):
    from clipft_utils import paths
    monkeypatch.setattr(paths, "free_mb", lambda folder: 50.0)
    with pytest.raises(ResultsError, match=r"The disk holding '.*smoke' has 50 MB free; a smoke course run writes up"):
        runner.run_all("smoke", root=tmp_path, echo=quiet)
    assert fake.calls == []


def test_a_missing_or_changed_result_file_or_new_code_reruns(fake, tmp_path, monkeypatch):
    runner.run_all("smoke", only=["lora"], root=tmp_path, echo=quiet)
    folder = tmp_path / "smoke"
    (folder / "lora_seed0.json").unlink()
    lines: list[str] = []
    runner.run_all("smoke", only=["lora"], root=tmp_path, echo=lines.append)
    assert any("lora_seed0.json is missing" in line for line in lines)
    (folder / "lora_seed0.json").write_text((folder / "lora_seed0.json").read_text().replace("0.5", "0.9"))
    lines.clear()
    runner.run_all("smoke", only=["lora"], root=tmp_path, echo=lines.append)
    assert any("lora_seed0.json changed since it was written" in line for line in lines)
    monkeypatch.setattr(runner.fingerprints, "code_version", lambda: "another-version")
    lines.clear()
    runner.run_all("smoke", only=["lora"], root=tmp_path, echo=lines.append)
    assert any("the library code changed" in line for line in lines)


def test_a_result_without_a_completion_record_is_not_done(fake, tmp_path):
    fake_result(tmp_path / "smoke", "bitfit", 0)                  # e.g. written by a run that was killed later
    report = runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=quiet)
    assert statuses(report)["03_bitfit"] == "ok" and fake.notebooks[0] == "03_bitfit"


def test_every_seed_and_shot_runs_once_and_zero_shot_once_per_seed(fake, tmp_path):
    report = runner.run_all("smoke", only=["lora", "zero_shot"], seeds=[1, 2], shots=[1, 4], root=tmp_path, echo=quiet)
    calls = [(nb, p["seed"], p.get("shots")) for nb, p in fake.calls]
    assert calls == [("01_zero_shot", 1, None), ("01_zero_shot", 2, None),
                     ("05_lora", 1, 1), ("05_lora", 2, 1), ("05_lora", 1, 4), ("05_lora", 2, 4),
                     ("07_comparison", 1, None)]
    assert report.ok and (tmp_path / "smoke" / "lora_shots4_seed2.json").exists()
    extras = {(p["shots"], p["seed"]): p.get("extras", True) for nb, p in fake.calls if nb == "05_lora"}
    assert extras == {(1, 1): False, (1, 2): False, (4, 1): True, (4, 2): False}  # sweeps once, at the most shots
    assert "extras" not in dict(fake.calls)["01_zero_shot"] or dict(fake.calls)["01_zero_shot"]["extras"] is True


def test_parameters_reach_only_the_notebooks_that_declare_them(fake, tmp_path):
    runner.run_all("smoke", root=tmp_path, device="cpu", echo=quiet,
                   extra={"epochs": 1, "n_show": 4, "lora": {"ranks": [1, 2], "rank": 4}, "07_comparison": {"need": "good"}})
    params = dict(fake.calls)
    assert params["03_bitfit"] == {"profile": "smoke", "seed": 0, "device": "cpu",
                                   "results_dir": str(tmp_path / "smoke"), "epochs": 1}
    assert params["01_zero_shot"]["n_show"] == 4 and "n_show" not in params["03_bitfit"]
    assert params["05_lora"]["ranks"] == [1, 2] and params["05_lora"]["config"] == {"rank": 4}
    assert "ranks" not in params["04_prefix_tuning"]
    assert params["07_comparison"]["need"] == "good" and "need" not in params["05_lora"]


@pytest.mark.parametrize("extra, message", [
    ({"rank": 0}, r"-p rank=… is not a parameter of any notebook.*lora\.rank"),
    ({"lr": -1}, r"'lr' is a field of the config of .*scope it"),
    ({"lora": {"rank": 0}}, r"05_lora: LoRAConfig\.rank must be a positive number"),
    ({"lora": {"lr": -1}}, r"LoRAConfig\.lr must be a positive number"),
    ({"seed": "x"}, r"seed='x' is invalid: it must be a whole number"),
    ({"device": "cudaa"}, r"device='cudaa' is invalid"),
    ({"epochs": 0}, r"epochs=0 is invalid: it must be a whole number >= 1"),
    ({"ensemble_size": 0}, r"ensemble_size=0 is invalid: it must be a whole number >= 1"),
    ({"lora": {"warp": 2}}, r"'lora\.warp' is neither a parameter of 05_lora"),
])
def test_bad_parameters_fail_before_anything_runs(fake, tmp_path, extra, message):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        runner.run_all("smoke", root=tmp_path, echo=quiet, extra=extra)
    assert fake.calls == [] and time.perf_counter() - start < 20


def test_quick_reaches_every_notebook(fake, tmp_path):
    runner.run_all("smoke", root=tmp_path, echo=quiet, quick=True)
    params = dict(fake.calls)
    assert all(params[nb]["epochs"] == 1 for nb in ("02_linear_probe", "03_bitfit", "05_lora", "06_full_finetune"))
    assert params["06_full_finetune"]["wise_alphas"] == [0.0, 0.5, 1.0] and params["05_lora"]["ranks"] == [1, 2]
    assert runner.run_all("smoke", root=tmp_path, echo=quiet, quick=True, only=["bitfit"]).ok   # --quick --only


def test_a_run_with_its_extras_covers_a_grid_point_that_asks_for_the_main_row_only(fake, tmp_path):
    runner.run_all("smoke", only=["bitfit"], shots=[2], root=tmp_path, echo=quiet)          # extras on: all rows
    report = runner.run_all("smoke", only=["bitfit"], shots=[1, 2], root=tmp_path, echo=quiet)
    assert fake.calls[2][0] == "03_bitfit" and fake.calls[2][1]["shots"] == 1          # only the new point ran
    assert [(s.shots, s.status) for s in report.steps if s.notebook == "03_bitfit"] == [(1, "ok"), (2, "skipped")]


def test_the_plan_says_what_each_notebook_trains(fake, tmp_path):
    lines: list[str] = []
    runner.run_all("smoke", root=tmp_path, echo=lines.append, extra={"epochs": 2}, dry_run=True)
    text = "\n".join(lines)
    # the steps, from the training-set size known before any work: 2 epochs x 16 batches x the smoke scale 0.6
    assert "03_bitfit seed 0: would run (no completion record): bitfit: 19 step(s) in 2 epoch(s)" in text
    assert "LoRA adapter B: 2 epoch(s) each" in text          # one knob reaches every training of 06
    assert fake.calls == []


# ----------------------------------------------------------------------------- failures
def test_a_failing_notebook_is_reported_its_files_set_aside_and_the_others_still_run(monkeypatch, tmp_path):
    fake = FakeExecute(fail=("03_bitfit",))
    monkeypatch.setattr(runner.execute, "_execute", fake)
    lines: list[str] = []
    report = runner.run_all("smoke", root=tmp_path, echo=lines.append)
    folder = tmp_path / "smoke"
    assert len(fake.calls) == 7 and not report.ok
    assert statuses(report)["03_bitfit"] == "failed" and statuses(report)["06_full_finetune"] == "ok"
    assert "boom in 03_bitfit" in next(s.error for s in report.steps if s.status == "failed")
    assert any("SOME FAILED" in line for line in lines)
    assert not (folder / "bitfit_seed0.json").exists() and not (folder / "figures" / "03_bitfit.png").exists()
    assert (folder / "failed" / "03_bitfit" / "bitfit_seed0.json").exists()
    assert (folder / "failed" / "03_bitfit" / "figures" / "03_bitfit.png").exists()
    summary = pd.read_csv(folder / "summary.csv").set_index("method")
    assert summary.loc["bitfit", "status"] == "not run" and summary.loc["lora", "status"] == "ok"


def test_a_success_after_a_failure_removes_the_stale_failed_folder_and_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(runner.execute, "_execute", FakeExecute(fail=("06_full_finetune",)))
    runner.run_all("smoke", only=["full_finetune"], root=tmp_path, echo=quiet)
    failed = tmp_path / "smoke" / "failed" / "06_full_finetune"
    assert (failed / "full_finetune_seed0.json").exists()
    monkeypatch.setattr(runner.execute, "_execute", FakeExecute())
    lines: list[str] = []
    report = runner.run_all("smoke", only=["full_finetune"], root=tmp_path, echo=lines.append)
    assert report.ok and not failed.exists() and not (tmp_path / "smoke" / "failed").exists()
    said = [line for line in lines if "earlier failure is resolved: removed failed/06_full_finetune/" in line]
    assert len(said) == 2  # when it happens, and in the run's closing report


# ----------------------------------------------------------------------------- damaged inputs, checked first
def test_a_damaged_head_that_06_reads_reruns_its_producer_first(fake, tmp_path):
    runner.run_all("smoke", root=tmp_path, echo=quiet)
    head = tmp_path / "smoke" / "heads" / "linear_probe_seed0.safetensors"
    head.write_bytes(head.read_bytes()[:30])               # truncated (before: torch's zip error 31 s into 06)
    fake.calls.clear()
    lines: list[str] = []
    report = runner.run_all("smoke", only=["full_finetune"], extra={"full_finetune": {"epochs": 1}}, root=tmp_path,
                            echo=lines.append)
    assert report.ok and fake.notebooks == ["02_linear_probe", "06_full_finetune", "07_comparison"]
    assert any("also run 02_linear_probe seed 0: heads/linear_probe_seed0.safetensors changed since it was "
               "written, and 06_full_finetune seed 0 reads it" in line for line in lines), lines


def test_a_damaged_result_is_remade_before_the_comparison_reads_it(fake, tmp_path):
    runner.run_all("smoke", root=tmp_path, echo=quiet)
    result = tmp_path / "smoke" / "bitfit_seed0.json"
    result.write_text(result.read_text()[:20])
    fake.calls.clear()
    lines: list[str] = []
    report = runner.run_all("smoke", only=["lora"], root=tmp_path, echo=lines.append)
    assert report.ok and fake.notebooks == ["03_bitfit", "07_comparison"]      # 05 is up to date
    assert any("also run 03_bitfit seed 0: bitfit_seed0.json changed" in line for line in lines)
    summary = pd.read_csv(tmp_path / "smoke" / "summary.csv").set_index("method")
    assert summary.loc["bitfit", "status"] == "ok"


def test_a_damaged_result_without_a_record_fails_the_run_naming_it(fake, tmp_path):
    atomic_write_text(tmp_path / "smoke" / "prefix_tuning_seed0.json", '{"method": "prefix')
    lines: list[str] = []
    report = runner.run_all("smoke", only=["lora"], root=tmp_path, echo=lines.append)
    assert not report.ok  # before: "all succeeded", prefix-tuning silently "not run"
    text = "\n".join(lines)
    assert "prefix_tuning_seed0.json' is damaged" in text and "./run_all.sh --only prefix_tuning --seeds 0" in text


def test_remake_command_repeats_the_recorded_run(fake, tmp_path, monkeypatch):
    runner.run_all("smoke", only=["lora"], seeds=[1], shots=[4], extra={"epochs": 1, "lora": {"alpha": 8}},
                   root=tmp_path, echo=quiet)
    command = records.remake_command(tmp_path / "smoke" / "lora_shots4_seed1.json")
    assert command.startswith("./run_all.sh --smoke --only lora --seeds 1 --shots 4 ")
    assert "-p lora.alpha=8" in command and "-p lora.epochs=1" in command
    assert records.remake_command(tmp_path / "smoke" / "heads" / "lora_shots4_seed1.safetensors") == command
    fake.calls.clear()
    monkeypatch.setenv("CLIPFT_RESULTS", str(tmp_path / "again"))
    assert cli.main(["run", *shlex.split(command)[1:]]) == 0          # the command runs as printed
    assert dict(fake.calls)["05_lora"]["config"] == {"alpha": 8} and dict(fake.calls)["05_lora"]["epochs"] == 1


# ----------------------------------------------------------------------------- dataset plug-ins
def test_a_dataset_plugin_is_reached_with_data_name(fake, tmp_path):
    from clipft_utils.datasets import base
    from clipft_utils.standin.synthflowers import SynthFlowers

    class Petals(SynthFlowers):  # a plug-in: registered by subclassing, nothing else
        name = "petals_plugin"

    try:
        lines: list[str] = []
        runner.run_all("smoke", only=["bitfit"], data="petals_plugin", root=tmp_path, echo=lines.append,
                       dry_run=True)   # before: taken for a folder called petals_plugin
        assert "petals_plugin" in runner.dataset_names()
        assert any("on petals_plugin" in line for line in lines) and fake.calls == []
    finally:
        base.REGISTRY.pop("petals_plugin", None)


def test_cli_exit_status_says_whether_everything_succeeded(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CLIPFT_RESULTS", str(tmp_path / "ok"))
    monkeypatch.setattr(runner.execute, "_execute", FakeExecute())
    assert cli.main(["run", "--smoke", "--all"]) == 0
    monkeypatch.setenv("CLIPFT_RESULTS", str(tmp_path / "bad"))
    monkeypatch.setattr(runner.execute, "_execute", FakeExecute(fail=("05_lora",)))
    assert cli.main(["run", "--smoke", "--all"]) == 1
    assert cli.main(["run", "--smoke"]) == 2          # neither --all nor --only: nothing to do
    assert cli.main(["run", "--smoke", "--all", "-p", "rank=0"]) == 2
    assert "lora.rank" in capsys.readouterr().err


def test_cli_params_become_notebook_parameters(monkeypatch, tmp_path):
    fake = FakeExecute()
    monkeypatch.setattr(runner.execute, "_execute", fake)
    monkeypatch.setenv("CLIPFT_RESULTS", str(tmp_path))
    assert cli.main(["run", "--smoke", "--only", "lora", "-p", "epochs=1", "-p", "lora.ranks=[1, 2]",
                     "-p", "test_per_class=5", "-p", "lora.alpha=8"]) == 0
    lora = dict(fake.calls)["05_lora"]
    assert lora["epochs"] == 1 and lora["ranks"] == [1, 2] and lora["test_per_class"] == 5
    assert lora["config"] == {"alpha": 8}
    with pytest.raises(SystemExit):
        cli.main(["run", "--smoke", "--all", "-p", "epochs"])


def test_summary_with_no_results(fake, tmp_path):
    lines: list[str] = []
    report = runner.run_all("smoke", only=["lora"], root=tmp_path, echo=lines.append)
    (tmp_path / "smoke" / "lora_seed0.json").unlink()
    from clipft_utils.comparison import write_summary
    text = write_summary("smoke", tmp_path / "smoke")
    ran = set(dict(runner.notebooks())["05_lora"]) - {"lora"}   # the other methods of 05 wrote their results
    assert report.ok and text.count("not run") == len(METHODS) - len(ran)
    assert any("| LoRA" in line for line in lines)      # the runner printed the table (paper names)


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(fake, tmp_path):
    folder = tmp_path / "smoke"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from clipft_utils.course.runner import FolderLock
        from pathlib import Path
        with FolderLock(Path({str(folder)!r}), shared=False):
            print("held", flush=True)
            time.sleep(30)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ResultsError, match=r"Another run holds the results folder .*pid \d+"):
            runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=quiet)
        assert fake.calls == []
    finally:
        holder.kill()
        holder.wait()
    assert runner.run_all("smoke", only=["bitfit"], root=tmp_path, echo=quiet).ok   # a killed holder frees it


def test_shards_share_the_folder_but_never_run_a_job_twice(tmp_path):
    folder = tmp_path / "smoke"
    with runner.FolderLock(folder, shared=True), runner.FolderLock(folder, shared=True):
        pass                                               # two shards at once
    with runner.FolderLock(folder, shared=True):
        with pytest.raises(ResultsError):
            runner.FolderLock(folder, shared=False).__enter__()   # a whole run waits for the shards


def test_shards_split_the_grid_into_whole_groups():
    jobs = runner.make_jobs(["zero_shot", "lora", "full_finetune"], [1, 2], [1, 4], compare=False)
    a, b = runner.shard_of(jobs, 1, 2), runner.shard_of(jobs, 2, 2)
    assert sorted(j.key for j in a + b) == sorted(j.key for j in jobs) and not {j.key for j in a} & {j.key for j in b}
    for shard in (a, b):  # 06 and what it reads (05 and 01 of its seed) are in the same shard
        for j in shard:
            if j.notebook == "06_full_finetune":
                assert any(o.notebook == "05_lora" and o.group == j.group for o in shard)
                if j.shots == 1:
                    assert any(o.notebook == "01_zero_shot" and o.seed == j.seed for o in shard)


# ----------------------------------------------------------------------------- tiny real notebooks, real papermill
def tiny_notebook(path: Path, *cells: str) -> None:
    """A notebook with a papermill parameters cell followed by ``cells``."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nseed = 0\nshots = None\nextras = True\ndevice = "auto"\n'
                                       'results_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *map(nbformat.v4.new_code_cell, cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


WRITE = ("import json, pathlib\n"
         "from clipft_utils.paths import atomic_write_text\n"
         "stem = '{METHOD}' + ('' if shots is None else f'_shots{shots}') + f'_seed{seed}'\n"
         "atomic_write_text(pathlib.Path(results_dir) / f'{stem}.json', json.dumps({'method': '{METHOD}', 'variant': None,"
         " 'seed': seed, 'shots': shots, 'test_acc': 0.1 * seed + 0.01 * (shots or 0)}))")


@pytest.fixture
def tiny_course(monkeypatch, tmp_path):
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    tiny_notebook(nbs / "01_zero_shot.ipynb", WRITE.replace("{METHOD}", "zero_shot"))
    tiny_notebook(nbs / "02_linear_probe.ipynb", WRITE.replace("{METHOD}", "linear_probe"),
                  "import os, matplotlib.pyplot as plt\nprint('headless', os.environ.get('CLIPFT_HEADLESS'))\n"
                  "plt.plot([1, 2]); plt.show()")
    tiny_notebook(nbs / "03_bitfit.ipynb", WRITE.replace("{METHOD}", "bitfit"), "import time\ntime.sleep(1)")
    tiny_notebook(nbs / "07_comparison.ipynb", "print('compare')")
    monkeypatch.setattr(runner.jobs, "NOTEBOOK_DIR", nbs)
    monkeypatch.setattr(runner.jobs, "notebooks", lambda: (("01_zero_shot", ("zero_shot",)), ("02_linear_probe", (
        "linear_probe",)), ("03_bitfit", ("bitfit",)), ("07_comparison", ())))
    monkeypatch.setenv("MPLBACKEND", "Agg")             # what run_all.sh exports
    return nbs


def results_of(folder: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


@pytest.mark.slow
def test_real_notebooks_failure_keeps_the_executed_copy_and_sets_its_results_aside(tiny_course, tmp_path):
    tiny_notebook(tiny_course / "01_zero_shot.ipynb", WRITE.replace("{METHOD}", "zero_shot"),
                  "raise ValueError('late failure')")
    folder = tmp_path / "results" / "smoke"
    report = runner.run_all("smoke", root=tmp_path / "results", echo=quiet)
    assert statuses(report) == {"01_zero_shot": "failed", "02_linear_probe": "ok", "03_bitfit": "ok",
                                "07_comparison": "ok"}
    failed = next(s for s in report.steps if s.status == "failed")
    assert "ValueError" in failed.error and "late failure" in failed.error
    assert (folder / "notebooks" / "01_zero_shot.FAILED.ipynb").exists()
    assert not (folder / "notebooks" / "01_zero_shot.ipynb").exists()
    assert not list((folder / "notebooks").glob(".*running*"))
    assert not (folder / "zero_shot_seed0.json").exists()                     # not counted as done ...
    assert (folder / "failed" / "01_zero_shot" / "zero_shot_seed0.json").exists()  # ... but kept aside
    record = json.loads((folder / "runs" / "02_linear_probe.json").read_text())
    assert list(record["files"]) == ["linear_probe_seed0.json"]               # what the kernel wrote, hashed
    executed = nbformat.read(folder / "notebooks" / "02_linear_probe.ipynb", as_version=4)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("headless 1" in o.get("text", "") for o in outputs)
    assert any("image/png" in o.get("data", {}) for o in outputs)             # figures land in the copy
    again = runner.run_all("smoke", root=tmp_path / "results", echo=quiet)
    assert statuses(again)["02_linear_probe"] == "skipped" and statuses(again)["01_zero_shot"] == "failed"


def start_stalled_run(tiny_course: Path, root: Path, call: str) -> tuple[subprocess.Popen, Path]:
    """A run of 01, 03 and 07 in its own process group (``call`` starts it), whose 03 writes its result and then
    sleeps; returns the process and the results folder once that result exists."""
    tiny_notebook(tiny_course / "03_bitfit.ipynb", WRITE.replace("{METHOD}", "bitfit"), "import time\ntime.sleep(60)")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from clipft_utils.course import cli, runner
        runner.jobs.NOTEBOOK_DIR = Path({str(tiny_course)!r})
        runner.jobs.notebooks = lambda: (("01_zero_shot", ("zero_shot",)), ("03_bitfit", ("bitfit",)), ("07_comparison", ()))
        """) + call
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "CLIPFT_RESULTS": str(root)})
    folder = root / "smoke"
    deadline = time.time() + 120
    while time.time() < deadline and not (folder / "bitfit_seed0.json").exists():
        time.sleep(0.2)
    assert (folder / "bitfit_seed0.json").exists(), "the notebook never got to write its result"
    return proc, folder


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_that_counts_as_done(tiny_course, tmp_path, monkeypatch):
    root = tmp_path / "results"
    proc, folder = start_stalled_run(tiny_course, root, f'runner.run_all("smoke", root={str(root)!r})')
    os.killpg(proc.pid, signal.SIGKILL)                       # kill -9 the whole run: runner, worker, kernel
    proc.wait()
    assert not (folder / "runs" / "03_bitfit.json").exists()  # no completion record: not done
    tiny_notebook(tiny_course / "03_bitfit.ipynb", WRITE.replace("{METHOD}", "bitfit"))
    monkeypatch.setattr(runner.jobs, "notebooks", lambda: (("01_zero_shot", ("zero_shot",)), ("03_bitfit", ("bitfit",)),
                                                      ("07_comparison", ())))
    lines: list[str] = []
    report = runner.run_all("smoke", root=root, echo=lines.append)
    assert statuses(report) == {"01_zero_shot": "skipped", "03_bitfit": "ok", "07_comparison": "ok"}
    assert any("03_bitfit" in line and "no completion record" in line for line in lines)
    assert not list((folder / "notebooks").glob(".*running*"))  # the killed run's hidden copy is cleaned up


@pytest.mark.slow
def test_two_devices_and_two_shards_give_the_files_of_a_sequential_run(tiny_course, tmp_path, monkeypatch):
    monkeypatch.setattr(runner.jobs, "notebooks", lambda: (("01_zero_shot", ("zero_shot",)), ("03_bitfit", ("bitfit",)),
                                                      ("07_comparison", ())))
    grid = dict(seeds=[1, 2], shots=[2], echo=quiet)
    sequential = runner.run_all("smoke", root=tmp_path / "seq", **grid)
    parallel = runner.run_all("smoke", root=tmp_path / "par", devices=["cpu", "cpu"], **grid)
    for i in (1, 2):
        runner.run_all("smoke", root=tmp_path / "shard", shard=f"{i}/2", **grid)
    runner.run_all("smoke", root=tmp_path / "shard", compare_only=True, **grid)
    for report in (sequential, parallel):
        assert report.ok, [(s.notebook, s.seed, s.error, s.output[-2000:]) for s in report.steps if s.status != "ok"]
    expected = results_of(tmp_path / "seq" / "smoke")
    assert len(expected) == 2 + 2
    assert results_of(tmp_path / "par" / "smoke") == expected
    assert results_of(tmp_path / "shard" / "smoke") == expected
    overlap = [(s.notebook, s.seconds) for s in parallel.steps]
    assert sum(s for _, s in overlap) > 0


@pytest.mark.slow
@pytest.mark.parametrize("target", ["group", "runner"])
def test_ctrl_c_stops_cleanly_with_one_line_and_status_130(tiny_course, tmp_path, target):
    """Ctrl-C (SIGINT to the whole process group) or SIGINT to the runner alone, while a notebook runs."""
    root = tmp_path / "results"
    proc, folder = start_stalled_run(tiny_course, root, 'raise SystemExit(cli.main(["run", "--smoke", "--all"]))')
    if target == "group":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    last = out.strip().splitlines()[-1]
    assert last.startswith("[run_all] interrupted during 03_bitfit") and "Traceback" not in out, out
    assert last.endswith("nothing half-written; re-run to resume")
    assert not list((folder / "notebooks").glob(".*running*"))
    assert not (folder / "notebooks" / "03_bitfit.ipynb").exists()
    assert not (folder / "bitfit_seed0.json").exists() and not (folder / "runs" / "03_bitfit.json").exists()
    assert (folder / "failed" / "03_bitfit" / "bitfit_seed0.json").exists()      # set aside, not counted as done
    assert (folder / "runs" / "01_zero_shot.json").exists()                       # what finished stays finished
    assert not list((folder / "runs").glob(".*journal"))


def test_the_notebook_worker_runs_a_notebook_without_importing_the_course_or_torch(tmp_path):
    """Every job starts one worker process: it must stay light (papermill only: torch belongs to the kernel) and
    end with 0 on success, or 1 and one line naming the error."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 6 * 7", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("assert x == 42, f'x is {x}'")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    source = tmp_path / "nb.ipynb"
    nbformat.write(nb, source)
    probe = ("import sys, runpy\n"
             "sys.argv = ['nbworker', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('clipft_utils.course.nbworker', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    print('status', e.code, 'torch' in sys.modules, bool(sys.modules.get('rfc3987_syntax')))\n")
    env = {**os.environ, "IPYTHONDIR": str(tmp_path / "ipy"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    for params, status in (("{}", 0), ('{"x": 41}', 1)):
        out = subprocess.run([sys.executable, "-c", probe, str(source), str(tmp_path / "out.ipynb"), params,
                              str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
        lines = [l for l in out.stdout.splitlines() if l.strip()]
        assert lines[-1] == f"status {status} False False", out.stdout + out.stderr
        if status:
            assert lines[-2] == "AssertionError: x is 41"


def test_a_kernel_that_fails_to_start_is_started_once_more_but_a_failing_cell_is_not_rerun(tmp_path, capsys):
    """Two kernels starting at once (two devices) can race for one free port: nothing of the notebook ran, so the
    worker starts the kernel once more; a cell's error, or a second failed start, is the job's failure."""
    import papermill as pm
    from clipft_utils.course import nbworker
    calls = []

    class FakePapermill:
        PapermillExecutionError = pm.PapermillExecutionError

        def __init__(self, *errors):
            self.errors = list(errors)

        def execute_notebook(self, *args, **kwargs):
            calls.append(args)
            if self.errors:
                raise self.errors.pop(0)

    target = str(tmp_path / "out.ipynb")
    nbworker._execute(FakePapermill(RuntimeError("Kernel died before replying to kernel_info")), "a", target, "{}", ".")
    assert len(calls) == 2 and "the kernel did not start" in capsys.readouterr().out
    calls.clear()
    cell_error = pm.PapermillExecutionError(0, 1, "boom", "ValueError", "bad", [])
    with pytest.raises(pm.PapermillExecutionError):
        nbworker._execute(FakePapermill(cell_error), "a", target, "{}", ".")
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(RuntimeError):
        nbworker._execute(FakePapermill(RuntimeError("no"), RuntimeError("again")), "a", target, "{}", ".")
    assert len(calls) == 2
