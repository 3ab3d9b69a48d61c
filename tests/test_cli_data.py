"""The package CLI on bad data: one clean line (problem and fix), rc 2; the split option from the CLI, -p and setup."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clipft_utils.course import cli
from clipft_utils.course import Course, setup
from clipft_utils.data import ImageSplit
from clipft_utils.errors import ConfigError
from clipft_utils.course.params import check_value
from clipft_utils.paths import PROJECT_ROOT
from clipft_utils.course.runner import Context
from _helpers import make_image_folder as make


def test_data_check_on_bad_data_prints_one_line_with_the_fix_and_returns_2(tmp_path):
    """Through a real process, as a user types it: no traceback."""
    root = make(tmp_path / "imgs", {"a": 5, "b": 2})
    done = subprocess.run([sys.executable, "-m", "clipft_utils", "data", "check", str(root)], capture_output=True,
                          text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("[data]")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "DatasetError: Class 'b' has 2 readable image(s)" in lines[0] and "Fix: add 1 image(s) to 'b'" in lines[0]


@pytest.mark.parametrize("argv, message", [
    (["data", "check", "{missing}"], "DatasetError: The image folder"),
    (["data", "check", "{root}", "--split", "3,1,1"], "ConfigError: data_split='3,1,1'"),
    (["data", "check", "synthflowers", "--dataset", "synthflowers", "--split", "3,1"], "comes with its own"),
    (["run", "--smoke", "--all", "--data", "{root}", "--split", "2,x"], "ConfigError: data_split='2,x'"),
    (["data", "check", "{root}", "--split", "0,0"], "train must be at least 1 image per class (got 0"),
])
def test_every_subcommand_turns_a_clipft_error_into_one_line_and_rc_2(tmp_path, capsys, argv, message):
    root = make(tmp_path / "imgs", {"a": 5, "b": 5})
    argv = [a.format(root=root, missing=tmp_path / "nope") for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "Fix" in err, err


def test_data_check_split_option_uses_its_own_split_file_and_states_the_rule(tmp_path, capsys):
    root = make(tmp_path / "imgs", {"a": 5, "b": 6})
    assert cli.main(["data", "check", str(root), "--split", "3,1"]) == 0
    out = capsys.readouterr().out
    assert "split: train 3 / val 1 / test the rest" in out and "at least 5 images per class" in out
    assert "split-3-1-rest.csv" in out
    assert cli.main(["data", "check", str(root), "--split", "4,1"]) == 2      # 'a' has 5; 4,1 needs 6
    assert "Class 'a' has 5 readable image(s)" in capsys.readouterr().err


def test_run_split_option_reaches_the_runner_as_the_data_split_parameter(monkeypatch, tmp_path):
    seen = {}

    def fake_run_all(profile, **kwargs):
        seen.update(kwargs)
        raise ConfigError("stop here. Fix: nothing")
    monkeypatch.setattr("clipft_utils.course.runner.run_all", fake_run_all)
    assert cli.main(["run", "--smoke", "--all", "--data", str(tmp_path), "--split", "0.5,0.25,0.25"]) == 2
    assert seen["extra"] == {"data_split": ["rest", 0.25, 0.25]}
    assert cli.main(["run", "--smoke", "--all", "--split", "3,1", "-p", "data_split=[3,1]"]) == 2   # given twice


def test_the_runners_data_check_uses_the_split_and_one_split_per_run(tmp_path):
    root = make(tmp_path / "imgs", {"a": 8, "b": 8})
    ctx = Context("smoke")
    ds = ctx.dataset("imagefolder", str(root), [3, 1])
    assert ds.split_file.name == "split-3-1-rest.csv" and np.bincount(ds.labels("train")).tolist() == [3, 3]
    assert ctx.dataset("imagefolder", str(root), "3,1,rest") is ds                        # the same split
    with pytest.raises(ConfigError, match="one run uses one split"):
        ctx.dataset("imagefolder", str(root), None)
    default = Context("smoke").dataset("imagefolder", str(root))
    assert default.identity != ds.identity and default.slug != ds.slug      # other split: other results folder


def test_the_notebook_parameter_is_checked_and_refused_for_datasets_with_their_own_split():
    check_value("data_split", None)
    check_value("data_split", [3, 1])
    with pytest.raises(ConfigError, match="exactly one split must take the rest"):
        check_value("data_split", [3, 1, 1])
    with pytest.raises(ConfigError, match="comes with its own train/val/test split"):
        setup("smoke", data_split=[3, 1])


def _course(per_class: dict[str, list[int]], sampling: dict) -> Course:
    """A Course with only what ``describe`` reads: the splits' labels, the sampling asked for, the device."""
    def split(name: str, counts: list[int]) -> ImageSplit:
        labels = np.repeat(np.arange(len(counts)), counts)
        return ImageSplit(np.zeros((len(labels), 2, 2, 3), np.uint8), labels, ["a", "b", "c"], "d", name,
                          (0.5,) * 3, (0.5,) * 3, "k")
    data = type("D", (), {"classnames": ["a", "b", "c"]})()
    return Course(profile=None, loaded=None, splits={s: split(s, c) for s, c in per_class.items()}, data=data,
                  seed=0, device="cpu", results_dir=None, batch_size=1, eval_batch_size=1, sampling=sampling)


def test_describe_prints_the_images_per_class_actually_loaded():
    course = _course({"train": [2, 2, 2], "val": [1, 1, 1], "test": [6, 6, 6]},
                     {"shots": 2, "val_per_class": None, "test_per_class": 20})
    text = course.describe()
    assert "train 6 (2 shot(s) per class)" in text and "val 3 (1 image(s) per class)" in text
    assert "test 18 (6 image(s) per class; 20 asked, only 6 available)" in text and "20 image(s)" not in text
    uneven = _course({"train": [3, 5, 4], "val": [1, 1, 1], "test": [2, 2, 2]}, {"test_per_class": None})
    assert "train 12 (3-5 image(s) per class)" in uneven.describe()


def test_p_data_split_plans_every_notebook_on_that_split_in_its_own_results_folder(tmp_path):
    """The runner's real path (-p data_split): parameters checked, the data checked with the split, its own folder."""
    from clipft_utils.course import runner
    from clipft_utils.config import get_profile
    from clipft_utils.course import results_folder
    from clipft_utils.datasets import get_dataset
    root = make(tmp_path / "imgs", {"a": 8, "b": 8})
    report = runner.run_all("smoke", only=["zero_shot"], data=str(root), extra={"data_split": [3, 1]}, dry_run=True,
                            echo=lambda *_: None)
    default = results_folder(get_profile("smoke"), get_dataset(str(root)))
    assert report.folder != default and report.folder == results_folder(get_profile("smoke"),
                                                                         get_dataset(str(root), split=[3, 1]))


def test_an_error_in_your_folder_does_not_suggest_the_stand_in_profile(tmp_path, monkeypatch):
    from clipft_utils.errors import DatasetError
    monkeypatch.delenv("CLIPFT_PROFILE", raising=False)
    root = make(tmp_path / "imgs", {"a": 5, "b": 2})
    with pytest.raises(DatasetError) as err:
        setup("full", dataset=str(root))
    assert "Class 'b' has 2" in str(err.value) and 'profile = "smoke"' not in str(err.value)


def test_data_check_takes_a_registered_dataset_name_as_run_data_does(capsys):
    from clipft_utils.course.cli import main
    assert main(["data", "check", "synthflowers"]) == 0                # before: "The image folder 'synthflowers'..."
    out = capsys.readouterr().out
    assert out.startswith("dataset: synthflowers") and "102 classes" in out


def test_templates_other_braces_are_text_and_the_prompts_data_check_prints_are_the_models(tmp_path, capsys,
                                                                                         monkeypatch):
    """Only ``{}`` is the class name: ``{curly}`` is literal text (not a KeyError 19 s into notebook 01); a class name
    with ``{}`` or ``%`` is text too. A line with two ``{}`` is refused with its line number, before any work."""
    import torch
    from clipft_utils import models
    from clipft_utils.datasets import get_dataset
    root = make(tmp_path / "imgs", {"red_rose": 5, "odd": 5})
    (root / "classnames.txt").write_text("odd: rose {} 100%\n")
    (root / "templates.txt").write_text("a {} with {curly} braces\n{0} and {}\n")
    assert cli.main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "prompt template: 'a {} with {curly} braces', e.g. 'a rose {} 100% with {curly} braces'" in out
    assert "'rose {} 100%': a rose {} 100% with {curly} braces | {0} and rose {} 100%" in out
    seen: list[str] = []
    monkeypatch.setattr(models, "text_embeddings", lambda loaded, texts: seen.extend(texts) or torch.ones(len(texts), 4))
    ds = get_dataset(str(root))
    models.zero_shot_weights(None, ds.classnames, ds.templates(ensemble=True))   # what the text tower is given
    assert seen == ["a rose {} 100% with {curly} braces", "{0} and rose {} 100%", "a red rose with {curly} braces",
                    "{0} and red rose"]
    (root / "templates.txt").write_text("a photo of a {}.\na {} next to a {}\n")
    for argv in (["data", "check", str(root)], ["run", "--smoke", "--all", "--data", str(root), "--dry-run"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "templates.txt, line 2: the template 'a {} next to a {}' has 2 {}" in err and "Fix: write one {}" in err
