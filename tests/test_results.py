"""Results: one JSON per run in the schema, written atomically, loaded back as a table."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from clipft_utils import results as R
from clipft_utils.errors import ResultsError
from clipft_utils.evaluate import EvalResult


def _result(method="bitfit", seed=0, acc_shift=0.0):
    logits = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0]] + acc_shift
    test = EvalResult.from_logits(logits, np.array([0, 1, 2, 3, 1]))
    return R.make_result(method=method, model="ToyCLIP", pretrained="synthflowers", dataset="synthflowers",
                         profile="smoke", seed=seed, test=test, val_acc=0.5, trainable_params=10,
                         total_params=100, train_seconds=1.0, eval_seconds=0.1, images_per_second=50.0,
                         peak_memory_mb=12.0, config={"lr": 1e-3}, history=[{"epoch": 1}], standin=True), test


def test_schema_and_round_trip(tmp_path):
    res, test = _result()
    path = R.save_result(res, tmp_path, predictions=test)
    back = json.loads(path.read_text())
    for key in R.REQUIRED_KEYS:
        assert key in back
    assert back["test_acc"] == pytest.approx(0.8) and 0 <= back["test_top5"] <= 1
    assert back["standin"] is True and "STAND-IN" in back["label"]
    logits, labels = R.load_predictions(tmp_path, path.stem)
    np.testing.assert_array_equal(labels, [0, 1, 2, 3, 1])


def test_load_results_table(tmp_path):
    for seed in (0, 1):
        R.save_result(_result(seed=seed)[0], tmp_path / "smoke")
    R.save_result(_result(method="lora")[0], tmp_path / "smoke")
    df = R.load_results("smoke", tmp_path)
    assert sorted(df["run"]) == ["bitfit_seed0", "bitfit_seed1", "lora_seed0"]
    assert set(R.REQUIRED_KEYS) <= set(df.columns)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    res, _ = _result()
    real_write = R.Path.write_text

    def killed_half_way(self, text, *a, **k):
        real_write(self, text[: len(text) // 2])  # half the bytes reach the disk, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(R.Path, "write_text", killed_half_way)
    with pytest.raises(KeyboardInterrupt):
        R.save_result(res, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a partial JSON nor a stray temp file


def test_rewrite_keeps_the_old_result_until_the_new_one_is_complete(tmp_path, monkeypatch):
    path = R.save_result(_result()[0], tmp_path)
    before = path.read_text()
    monkeypatch.setattr(R.Path, "write_text", lambda self, text, *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        R.save_result(_result(acc_shift=1.0)[0], tmp_path)
    assert path.read_text() == before


def test_incomplete_result_is_refused(tmp_path):
    res, _ = _result()
    del res["peak_memory_mb"]
    with pytest.raises(ResultsError, match="peak_memory_mb"):
        R.save_result(res, tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; checked with a file in the way instead")
def test_unwritable_results_folder_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(ResultsError, match="CLIPFT_RESULTS"):
        R.results_dir("smoke", ro)


def test_unwritable_results_folder(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(ResultsError, match="Fix: pass a writable folder"):
        R.results_dir("smoke", blocker)


def test_nan_becomes_null(tmp_path):
    res, _ = _result()
    res["val_acc"] = float("nan")
    res = R.plain_json(res)
    assert json.loads(json.dumps(res))["val_acc"] is None


@pytest.mark.parametrize("content, why", [("{\"method\": \"bitf", "not valid JSON"), ("[1, 2]", "holds a list"),
                                          (b"\xff\xfe{", "not valid JSON")])
def test_a_damaged_result_is_an_error_naming_the_file_and_the_command_that_remakes_it(tmp_path, content, why):
    res, _ = _result()
    R.save_result(res, tmp_path / "smoke")
    damaged = tmp_path / "smoke" / "lora_shots4_seed1.json"
    damaged.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ResultsError) as err:   # before: the run was silently missing from the table
        R.load_results("smoke", tmp_path)
    text = str(err.value)
    assert str(damaged) in text and why in text
    assert "./run_all.sh --only lora --seeds 1 --shots 4" in text, text


def test_a_write_that_fails_on_a_full_disk_names_the_folder_and_leaves_nothing(tmp_path, monkeypatch):
    """Before: a full disk failed inside torch.save with `enforce fail ... unexpected pos`, no folder or fix named."""
    import torch
    from clipft_utils import paths
    from clipft_utils.errors import ResultsError
    target = tmp_path / "checkpoints" / "lora_seed0.pt"
    monkeypatch.setattr(paths, "free_mb", lambda folder: 3.0)
    with pytest.raises(ResultsError, match=r"Could not write '.*lora_seed0.pt': the disk holding '.*checkpoints' is full"):
        with paths.atomic_path(target) as tmp:
            torch.save({"x": torch.zeros(3)}, tmp)
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
    assert list(target.parent.iterdir()) == []                                # no temp file, no half a file
