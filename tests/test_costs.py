"""Costs you can count (issue 28): FLOPs, accounted training memory, step budgets and step statistics, and the
summary's cost columns. Orders and equalities on ToyCLIP, never timings."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipft_utils import costs
from clipft_utils.config import SMOKE_STEPS, TrainConfig, get_profile
from clipft_utils.engine import fit
from clipft_utils.engine.timing import MIN_TIMED_STEPS, step_stats
from clipft_utils.methods import apply_method, get, make_config, registry, trainable_parameters
from clipft_utils.models import CLIPClassifier, load_clip

SAME_NETWORK = ("zero_shot", "linear_probe", "bitfit", "lora", "full_finetune")
"""Methods whose deployed model is the pretrained network (LoRA merged): the same inference FLOPs."""


@pytest.fixture(scope="module")
def loaded():
    """ToyCLIP with its stand-in weights (the smoke profile's model)."""
    return load_clip("ToyCLIP", "synthflowers")


def classifier(loaded, classes: int = 12) -> CLIPClassifier:
    torch.manual_seed(0)
    return CLIPClassifier(copy.deepcopy(loaded.model.visual), F.normalize(torch.randn(classes, 128), dim=-1))


def batch(loaded, n: int = 8, classes: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    size = loaded.image_size
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


def applied(loaded, method: str, **overrides) -> tuple[CLIPClassifier, list[dict], object]:
    clf = classifier(loaded)
    cfg = make_config(method, "smoke", **overrides)
    return clf, apply_method(method, clf, cfg), cfg


def pretend_trained(clf: nn.Module) -> None:
    """Move every trained tensor (LoRA's B starts at zero: a merge would then change nothing)."""
    with torch.no_grad():
        for p in clf.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))


def inference_gflops(loaded, method: str, **overrides) -> float:
    """GFLOPs per image of the model ``method``'s folder rebuilds (merged, folded)."""
    clf, _, cfg = applied(loaded, method, **overrides)
    pretend_trained(clf)
    deployed = costs.deployed_model(clf, method, cfg, loaded.model.visual, head_only=not get(method).trains)
    return costs.flops_per_image(deployed, batch(loaded, 2)[0]) / 1e9


def test_same_network_methods_show_the_same_inference_flops_and_prefixes_show_their_extra_tokens(loaded):
    flops = {m: inference_gflops(loaded, m) for m in SAME_NETWORK}
    reference = flops["full_finetune"]
    assert all(v == pytest.approx(reference, rel=0.01) for v in flops.values()), flops
    tower = costs.flops_per_image(loaded.model.visual, batch(loaded, 2)[0]) / 1e9
    assert tower < reference < 1.01 * tower            # the head is a small matrix product on top of the tower
    kinds = {k: inference_gflops(loaded, "prefix_tuning", kind=k) for k in ("prefix", "prompt", "vpt_deep")}
    assert all(v > reference for v in kinds.values()), kinds      # more keys (prefix) or more tokens (the others)
    assert kinds["prefix"] < kinds["prompt"] == pytest.approx(kinds["vpt_deep"])


def test_a_training_step_costs_more_flops_than_inference_and_full_training_more_than_bitfit(loaded):
    images, labels = batch(loaded)
    per_step = {}
    for method in ("bitfit", "lora", "full_finetune"):
        clf, groups, _ = applied(loaded, method)
        per_step[method] = costs.training_costs(clf, trainable_parameters(groups), images, labels)["flops_per_step"]
    forward = costs.flops_per_image(classifier(loaded), images) * len(labels)
    assert all(v > 2 * forward for v in per_step.values())          # a backward pass at least as costly as forward
    assert per_step["full_finetune"] > per_step["bitfit"] and per_step["full_finetune"] > per_step["lora"]


def test_accounted_training_memory_orders_full_above_lora_and_bitfit_and_bitfit_above_the_probe(loaded):
    images, labels = batch(loaded)
    memory = {}
    for method in ("linear_probe", "bitfit", "lora", "full_finetune"):
        clf, groups, _ = applied(loaded, method)
        counted = costs.training_costs(clf, trainable_parameters(groups), images, labels)
        memory[method] = counted["train_memory_mb"]
        parts = counted["memory_parts"]
        assert parts["optimizer_mb"] == pytest.approx(2 * parts["gradients_mb"])          # AdamW: two moments
        assert counted["memory_measure"].startswith("accounted") and "RSS" not in counted["memory_measure"]
    assert memory["full_finetune"] > memory["lora"] and memory["full_finetune"] > memory["bitfit"], memory
    assert memory["bitfit"] > memory["linear_probe"], memory


@pytest.mark.parametrize("method", ["bitfit", "prefix_tuning", "coop"])
def test_counting_two_small_batches_gives_exactly_the_full_batch_count(loaded, method):
    """The line through batches of 2 and 4 reaches the full batch exactly: every counted product and saved tensor is
    per image or independent of the batch (CoOp's text tower runs the class prompts once per step)."""
    from clipft_utils.textside import build
    images, labels = batch(loaded, 16)
    if get(method).text_apply is not None:
        clf = build(loaded, [f"class {i}" for i in range(12)], ["a photo of a {}."])
        get(method).text_apply(clf, make_config(method, "smoke"))
    else:
        clf, _, _ = applied(loaded, method)
    whole = costs.step_costs(clf, images, labels)
    line = costs.batch_step_costs(clf, images, labels)
    assert line.flops == whole.flops
    assert line.saved_bytes == pytest.approx(whole.saved_bytes, rel=1e-3)


def test_smoke_budgets_of_every_main_row_that_trains_on_images_are_within_2x():
    """On SynthFlowers (1,020 training images of 102 classes, batch 64) and on a small folder of your own (6 classes,
    10 images each: one batch), every image-side and text-side method trains the same step budget, within 2x."""
    smoke = get_profile("smoke")
    for images, classes in ((1020, 102), (60, 6)):
        batches = math.ceil(images / smoke.batch_size)
        budgets = {m.name: make_config(m.name, smoke).budget(batches, images / classes).total
                   for m in registry() if m.trains and m.image_batches}
        assert set(budgets) >= {"bitfit", "prefix_tuning", "coop", "lora", "clip_lora", "full_finetune"}
        median = pd.Series(budgets).median()
        assert all(median / 2 <= b <= 2 * median for b in budgets.values()), budgets
        assert min(budgets.values()) >= MIN_TIMED_STEPS + 5           # enough steps to report a step time
    assert SMOKE_STEPS["min_steps_per_epoch"] * SMOKE_STEPS["epochs"] * smoke.budget_scale == pytest.approx(48)


def test_clip_lora_budget_is_500_steps_per_shot_and_an_explicit_epochs_means_passes():
    cfg = make_config("clip_lora")
    assert cfg.budget(batches=4, images_per_class=1).total == 500                # 1 shot: 500 steps, whatever C
    assert cfg.budget(batches=32, images_per_class=10).total == 5000
    passes = make_config("clip_lora", epochs=2)                                  # -p epochs=2, --quick: passes
    assert passes.steps_per_shot is None and passes.budget(batches=4, images_per_class=1).total == 8


def test_a_tiny_split_cycles_its_loader_up_to_the_budget_and_validates_once_per_epoch():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    data = torch.utils.data.TensorDataset(torch.randn(6, 4), torch.arange(6) % 3)
    train = torch.utils.data.DataLoader(data, batch_size=64)                   # one batch per pass
    seen = []
    validate = lambda m: seen.append(1) or 0.5  # noqa: E731
    cfg = TrainConfig(epochs=3, lr=1e-2, min_steps_per_epoch=4, patience=None)
    result = fit(model, [{"params": list(model.parameters())}], train, None, cfg, eval_fn=validate,
                 progress=False, echo=None)
    assert result.history[0]["epoch"] == 0 and "steps" not in result.history[0]      # the untrained start: no steps
    assert result.steps == 12 and [h["steps"] for h in result.history[1:]] == [4, 4, 4] and len(seen) == 1 + 3
    assert "raised to 3 × 4" in result.budget


def test_step_statistics_need_enough_steps_and_report_median_and_quartiles():
    times = [1.0] * 5 + [0.010, 0.011, 0.012, 0.013] * 6               # 5 slow warm-up steps, then 24 steps
    stats = step_stats(times)
    assert stats["timed_steps"] == 24 and stats["step_ms"] == pytest.approx(11.5)
    assert stats["step_ms_q1"] < stats["step_ms"] < stats["step_ms_q3"]
    assert stats["step_ms_spread"] == pytest.approx(stats["step_ms_q3"] - stats["step_ms_q1"])
    short = step_stats(times[:20])
    assert short["step_ms"] is None and "fewer than 20" in short["step_ms_note"]


def test_budget_check_and_step_time_order_say_what_the_numbers_support():
    from clipft_utils import comparison as C
    table = pd.DataFrame([
        {"method": "bitfit", "status": "ok", "steps": 48, "budget": "5 epoch(s) × 16 step(s)", "step_ms": 100,
         "step_ms_q1": 90, "step_ms_q3": 110},
        {"method": "lora", "status": "ok", "steps": 48, "budget": "5 epoch(s) × 16 step(s)", "step_ms": 105,
         "step_ms_q1": 95, "step_ms_q3": 120},
        {"method": "coop", "status": "ok", "steps": 16, "budget": "1 epoch(s) × 16 step(s)", "step_ms": 300,
         "step_ms_q1": 280, "step_ms_q3": 320},
        {"method": "zero_shot", "status": "ok", "steps": 0, "budget": "trains nothing"}])
    lines = C.budget_check(table)
    assert "median 48 steps" in lines[0]
    assert any(line.startswith("CoOp: 16 steps") and "1 epoch(s)" in line for line in lines)   # paper names
    assert not any(line.startswith(("BitFit", "LoRA")) for line in lines)
    assert any("Zero-shot (trains nothing)" in line for line in lines)
    order = C.step_time_order(table)
    assert order[0].startswith("BitFit ≈ LoRA") and "overlap" in order[0]
    assert order[1].startswith("LoRA < CoOp")


def test_summary_files_carry_the_cost_columns_named_exactly_and_never_process_memory(tmp_path):
    from clipft_utils import comparison as C
    from clipft_utils.evaluate import EvalResult
    from clipft_utils.results import make_result, save_result
    folder = tmp_path / "smoke"
    test = EvalResult.from_logits(torch.eye(4) * 5, torch.arange(4))
    for method, steps in (("zero_shot", 0), ("bitfit", 48), ("full_finetune", 48)):
        fields = {"steps": steps, "train_tflops": 0.5 * steps, "gflops_per_image": 0.114, "train_memory_mb": 90.0,
                  "memory_measure": costs.MEMORY_MEASURE if steps else costs.NOTHING_TRAINS, "step_ms": 10.0,
                  "step_ms_spread": 1.0, "deployed_params": 100, "model_folder_mb": 0.1, "base_params": 8000}
        save_result(make_result(method=method, model="ToyCLIP", pretrained="synthflowers", dataset="synthflowers",
                                profile="smoke", seed=0, test=test, val_acc=0.5, trainable_params=100 * steps,
                                total_params=1000, train_seconds=1.0, eval_seconds=0.1, images_per_second=None,
                                peak_memory_mb=None, config={}, history=[], standin=True, **fields), folder)
    text = C.write_summary("smoke", folder)
    csv = pd.read_csv(folder / "summary.csv")
    assert set(C.COST_COLUMNS) <= set(csv.columns)
    assert set(C.COST_COLUMNS) <= set(C.format_table(C.summary_table(C.load("smoke", folder))).columns)
    for name in C.COST_COLUMNS:
        assert f"- {name}: " in text                                    # a note per column in summary.md
    assert "RSS" not in text and not csv["memory_measure"].fillna("").str.contains("RSS").any()
    percents = csv.set_index("method")["trainable_percent"].dropna()
    assert percents["full_finetune"] == pytest.approx(100 * 4800 / 8000)           # one denominator: base_params
    assert "the pretrained ToyCLIP, both towers (8,000 parameters)" in text
