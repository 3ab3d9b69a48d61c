"""The parameter table: exact counts per method, on a tiny tower and on the real ViT-B-32 (random weights)."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch

from clipft_utils.methods import names, registry
from clipft_utils.methods.bitfit import BitFitConfig

from clipft_utils.errors import ConfigError
from clipft_utils.methods import apply_method, params
from clipft_utils.models import CLIPClassifier

METHODS = names()
# every method has a row; the feature-cache methods (Tip-Adapter) are counted per run (their size depends on the
# training set), the others here
TABLED = METHODS
PER_RUN = tuple(m.name for m in registry() if m.apply is None and m.trains and m.text_apply is None)

D, L, C, E = 64, 2, 7, 32  # tiny tower: width, blocks, classes, embedding size


def tiny_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return open_clip.model.CLIP(
        embed_dim=E, vision_cfg=dict(image_size=32, patch_size=8, width=D, layers=L, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))


def expected_counts(d: int, layers: int, classes: int, embed: int, text: tuple[int, int] = (32, 1)) -> dict[str, int]:
    """Trainable parameters per method (default configs), derived from the architecture by hand."""
    head = classes * embed + classes
    biases = 2 * d + layers * (4 * d + 3 * d + 4 * d)
    prefix = 10 * d + (d * 512 + 512) + (512 * layers * 2 * d + layers * 2 * d)  # embedding, Linear(D, 512),
    # Linear(512, L * 2 * D): a key and a value vector per layer for each of the 10 prefix positions
    lora = layers * 2 * (8 * d + d * 8)                  # q and v: A [8, D] + B [D, 8]
    (tw, tl) = text                                      # the text tower's width and blocks
    coop = 16 * tw                                       # M = 16 context vectors of the text width
    clip_lora = layers * 3 * (2 * d + d * 2) + tl * 3 * (2 * tw + tw * 2)  # rank 2 on q, k, v of both towers
    return {"zero_shot": 0, "linear_probe": head, "bitfit": biases + head, "prefix_tuning": prefix + head,
            "lora": lora + head, "coop": coop, "clip_lora": clip_lora}


def test_tiny_table_matches_hand_counts() -> None:
    clip = tiny_clip()
    rows = {r["method"]: r for r in params.parameter_table(num_classes=C, clip=clip, every=True)}
    assert list(rows) == list(TABLED) and "linear_probe" in TABLED
    assert [r["method"] for r in params.parameter_table(num_classes=C, clip=clip)] == [
        m for m in TABLED if m not in PER_RUN]  # the default table: the rows with a count
    tower = sum(p.numel() for p in clip.visual.parameters())
    head = C * E + C
    for method, want in expected_counts(D, L, C, E).items():
        assert rows[method]["trainable"] == want, method
    assert rows["full_finetune"]["trainable"] == rows["full_finetune"]["total"] == tower + head
    assert rows["prefix_tuning"]["total"] == tower + head + rows["prefix_tuning"]["added"]
    assert rows["lora"]["added"] == rows["lora"]["trainable_without_head"]
    assert all(r["clip_total"] == sum(p.numel() for p in clip.parameters()) for r in rows.values()
               if r["trainable"] is not None)
    assert PER_RUN and all(rows[m]["trainable"] is None and "per run" in rows[m]["counted"] for m in PER_RUN)
    assert all(r["applicable"] for r in rows.values())
    assert rows["bitfit"]["fraction_pct"] == pytest.approx(100 * rows["bitfit"]["trainable"] / (tower + head))
    text = params.format_table(list(rows.values()))
    assert all(m in text for m in TABLED)


def test_cli_prints_table_and_json(monkeypatch, capsys) -> None:
    monkeypatch.setattr(params, "build_clip", lambda name: tiny_clip())
    assert params.main(["--model", "tiny", "--num-classes", str(C), "--variants"]) == 0
    assert "prefix_tuning" in capsys.readouterr().out
    assert params.main(["--model", "tiny", "--num-classes", str(C), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in rows] == list(TABLED)


def test_apply_method_dispatch_and_errors() -> None:
    clip = tiny_clip()
    clf = CLIPClassifier(clip.visual, torch.randn(C, E))
    assert apply_method("zero_shot", clf) == [] and not any(p.requires_grad for p in clf.parameters())
    groups = apply_method("linear_probe", clf)
    assert [g["name"] for g in groups] == ["head"] and groups[0]["params"] == [clf.head.weight, clf.head.bias]
    assert {id(p) for p in clf.parameters() if p.requires_grad} == {id(clf.head.weight), id(clf.head.bias)}
    with pytest.raises(ConfigError, match="Unknown method"):
        apply_method("adapters", clf)
    with pytest.raises(ConfigError, match="LoRAConfig"):
        apply_method("lora", clf, BitFitConfig())


def test_vit_b_32_table() -> None:
    """The real architecture (random weights, ~88 M parameters in the image tower)."""
    rows = {r["method"]: r for r in params.parameter_table("ViT-B-32", num_classes=102, every=True)}
    tower, head = 87_849_216, 512 * 102 + 102
    counts = expected_counts(768, 12, 102, 512, text=(512, 12))
    for method, want in counts.items():
        assert rows[method]["trainable"] == want, method
    assert rows["bitfit"]["trainable"] == 155_238 and rows["lora"]["trainable"] == 347_238
    assert rows["full_finetune"]["trainable"] == rows["full_finetune"]["total"] == tower + head
    assert rows["zero_shot"]["clip_total"] == 151_277_313
