"""Data-parallel training through torchrun (gloo on CPU): the same weights as one process with the same global
batch, also when the run is paused at a checkpoint and resumed; and the loader's shards of a global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

COMMON = ["bitfit", "--smoke", "--shots", "2", "--epochs", "2", "--batch-size", "32", "--device", "cpu",
          "--test-per-class", "2"]


def train(tmp_path: Path, name: str, procs: int = 1, *extra: str) -> tuple[dict, dict]:
    """Run the train entry point (under torchrun when ``procs`` > 1); return (trained weights, result JSON)."""
    out = tmp_path / name
    launcher = [sys.executable, "-m", "clipft_utils"] if procs == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", "-m", "clipft_utils"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "train", *COMMON, "--results-dir", str(out), "--save-trainable", str(out / "w.pt"), *extra]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((out / "bitfit_shots2_seed0.json").read_text()) if (out / "bitfit_shots2_seed0.json").exists() else {}
    weights = torch.load(out / "w.pt", weights_only=True) if (out / "w.pt").exists() else {}
    return weights, {**result, "stdout": done.stdout}


def close(a: dict, b: dict) -> float:
    """Largest difference between two sets of trained weights, leaving out the attention's KEY bias: softmax is
    shift-invariant per query, so that bias's true gradient is exactly zero and what it gets is rounding noise,
    which AdamW's normalisation turns into full-size steps whose signs depend on how the sums were split."""
    assert a.keys() == b.keys() and a
    diffs = []
    for k in a:
        d = (a[k] - b[k]).abs()
        if k.endswith("attn.in_proj_bias"):
            n = d.numel() // 3
            d = torch.cat([d[:n], d[2 * n:]])  # q and v thirds
        diffs.append(d.max().item())
    return max(diffs)


def test_two_ranks_equal_one_process_with_the_same_global_batch_also_after_resume(tmp_path):
    one, r1 = train(tmp_path, "one")
    two, r2 = train(tmp_path, "two", 2)
    assert r2["world_size"] == 2 and r1["world_size"] == 1
    assert r1["best_epoch"] == r2["best_epoch"] and [h["val_acc"] for h in r1["history"]] == \
        pytest.approx([h["val_acc"] for h in r2["history"]], abs=1e-9)
    assert close(one, two) < 1e-5
    assert r2["history"][-1]["train_loss"] == pytest.approx(r1["history"][-1]["train_loss"], rel=1e-5)
    # paused after epoch 1 (checkpoint written by rank 0), resumed: the same end point
    _, paused = train(tmp_path, "resumed", 2, "--stop-after-epochs", "1")
    assert "paused after epoch 1" in paused["stdout"] and (tmp_path / "resumed" / "checkpoints").exists()
    resumed, r3 = train(tmp_path, "resumed", 2)
    assert r3["resumed_from_epoch"] == 1
    assert close(one, resumed) < 1e-5


def test_a_killed_training_resumes_and_ends_where_an_uninterrupted_one_does(tmp_path):
    """SIGKILL after the first checkpoint; the next run says it resumes, and reaches the same weights and result."""
    import signal
    import time
    whole, r_whole = train(tmp_path, "whole", 1, "--epochs", "3")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "clipft_utils", "train", *COMMON, "--epochs", "3", "--results-dir", str(out),
           "--save-trainable", str(out / "w.pt")]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoints" / "bitfit_shots2_seed0.pt"
    deadline = time.time() + 300
    while time.time() < deadline and not ckpt.exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists() and not (out / "bitfit_shots2_seed0.json").exists()   # killed mid-training, no result
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]          # and no half-written file
    resumed, r_resumed = train(tmp_path, "killed", 1, "--epochs", "3")
    assert "resuming from checkpoint" in r_resumed["stdout"] and r_resumed["resumed_from_epoch"] >= 1
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)               # bit-identical on one CPU process
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert r_resumed["test_acc"] == r_whole["test_acc"] and strip(r_resumed["history"]) == strip(r_whole["history"])
    assert not ckpt.exists()                                                   # the finished run removed it
