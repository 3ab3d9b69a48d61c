"""`python -m clipft_utils bench`: every method that trains has a row (the text-side ones build their text-side
classifier and run the text tower at every step), each with its step time as a multiple of a forward pass."""
from __future__ import annotations

import json

import pytest

from clipft_utils.course import bench
from clipft_utils.methods import get, registry


def test_bench_times_every_trained_method_including_the_text_side_ones(tmp_path, capsys):
    out = tmp_path / "bench.json"
    wanted = ["coop", "clip_lora", "lora", "linear_probe"]
    assert bench.main(["--model", "ToyCLIP", "--device", "cpu", "--batch-size", "4", "--steps", "1", "--warmup", "0",
                       "--no-loader", "--variants", *wanted, "--json", str(out)]) == 0
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == wanted
    assert rows["coop"]["side"] == rows["clip_lora"]["side"] == "text" and rows["lora"]["side"] == "image"
    # CoOp trains its 16 context vectors only (of the text tower's width); CLIP-LoRA A and B on both towers
    n_ctx = get("coop").config().n_ctx
    assert rows["coop"]["trainable"] % n_ctx == 0 and 0 < rows["coop"]["trainable"] < rows["clip_lora"]["trainable"]
    assert all(r["step_over_forward"] > 0 and r["forward_ms"] > 0 for r in rows.values())
    assert rows["linear_probe"]["kind"] == "inference" and rows["coop"]["kind"] == "train"
    # the result rows' measures: counted FLOPs (one network deployed: one inference count), accounted memory, IQR
    per_image = {v: r["gflops_per_image"] for v, r in rows.items()}
    assert max(per_image.values()) == pytest.approx(min(per_image.values()), rel=0.01), per_image
    trained = [r for r in rows.values() if r["kind"] == "train"]
    assert all(r["flops_per_step"] > 2 * 4 * 1e9 * r["gflops_per_image"] for r in trained)   # backward > forward
    assert all(r["train_memory_mb"] > 0 and r["step_ms"] > 0 and r["step_ms_spread"] >= 0 for r in trained)
    assert rows["clip_lora"]["flops_per_step"] > rows["lora"]["flops_per_step"]     # its text tower runs every step
    printed = capsys.readouterr().out
    assert "x fwd" in printed and all(v in printed for v in wanted)
    # only methods with no training step are left out (zero-shot; the Tip-Adapters fit on cached features)
    assert {m.name for m in registry() if m.name not in bench.variants()} == {"zero_shot", "tip_adapter",
                                                                               "tip_adapter_f"}
