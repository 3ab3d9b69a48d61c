"""Data-parallel training through torchrun (gloo on CPU): the same weights as one process with the same global
batch, also when the run is paused at a checkpoint and resumed; and the loader's shards of a global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from clipft_utils.loader import CachedLoader

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
    assert a.keys() == b.keys() and a
    return max((a[k] - b[k]).abs().max().item() for k in a)


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


def test_a_global_batch_is_split_between_ranks_without_loss_or_overlap():
    from types import SimpleNamespace
    split = SimpleNamespace(labels=np.arange(70) % 7, indices=None, images=np.zeros((70, 8, 8, 3), np.uint8),
                            image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    whole = [b.labels.tolist() for b in CachedLoader(split, 32, shuffle=True, seed=3)]
    parts = [[b for b in CachedLoader(split, 32, shuffle=True, seed=3, rank=r, world=3)] for r in range(3)]
    assert all(len(p) == len(whole) for p in parts)                     # every rank takes every step
    for i, batch in enumerate(whole):
        got = [lab for p in parts for lab, w in zip(p[i].labels.tolist(), p[i].weights.tolist()) if w > 0]
        assert sorted(got) == sorted(batch) and all(p[i].total == len(batch) for p in parts)
