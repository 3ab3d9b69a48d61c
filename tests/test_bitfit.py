"""BitFit: exactly the biases (and the head) train; the bias inventory of ViT-B-32 matches the architecture."""
from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipft_utils.methods.bitfit import BitFitConfig
from clipft_utils.methods import bitfit, trainable_parameters
from clipft_utils.models import CLIPClassifier

from _helpers import changed_by_one_step


def tiny_classifier(seed: int = 0) -> CLIPClassifier:
    """A 2-block open_clip ViT (width 64, 32 px) with a random unit-norm head."""
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(
        embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))
    return CLIPClassifier(clip.visual, F.normalize(torch.randn(5, 32), dim=-1))


@pytest.fixture(scope="module")
def vit_b_32_visual() -> torch.nn.Module:
    """The real ViT-B-32 image tower with random weights (no download)."""
    return open_clip.create_model("ViT-B-32", pretrained=None).visual


def test_inventory_of_vit_b_32_matches_the_architecture(vit_b_32_visual: torch.nn.Module) -> None:
    d, layers, mlp = 768, 12, 3072  # ViT-B-32: width 768, 12 blocks, MLP ratio 4
    want = {"ln_pre": d, "ln_1": layers * d, "attn.in_proj": layers * 3 * d, "attn.out_proj": layers * d,
            "ln_2": layers * d, "mlp.c_fc": layers * mlp, "mlp.c_proj": layers * d, "ln_post": d}
    inventory = bitfit.bias_inventory(vit_b_32_visual)
    assert inventory == want
    assert list(inventory) == list(bitfit.BIAS_KINDS)
    assert sum(inventory.values()) == 2 * d + layers * (4 * d + 3 * d + mlp) == 102_912
    assert vit_b_32_visual.conv1.bias is None  # the patch embedding has no bias
    total = sum(p.numel() for p in vit_b_32_visual.parameters())
    assert total == 87_849_216
    assert 0.117 < 100 * 102_912 / total < 0.118  # ~0.117 %, not ~0.01 %


def test_every_trainable_is_a_bias() -> None:
    clf = tiny_classifier()
    groups = bitfit.apply(clf, BitFitConfig())
    names = {n for n, p in clf.named_parameters() if p.requires_grad}
    visual_biases = {n for n in names if n.startswith("visual.")}
    assert all(bitfit.is_bias(n) for n in visual_biases)
    assert names - visual_biases == {"head.weight", "head.bias"}
    assert sum(p.numel() for p in groups[0]["params"]) == sum(bitfit.bias_inventory(clf.visual).values())
    frozen_biases = [n for n, p in clf.visual.named_parameters() if bitfit.is_bias(n) and not p.requires_grad]
    assert frozen_biases == []


def test_one_step_changes_only_biases_and_head() -> None:
    clf = tiny_classifier().train()
    groups = bitfit.apply(clf, BitFitConfig())
    params = trainable_parameters(groups)
    assert [g["name"] for g in groups] == ["backbone", "head"]
    assert len({id(p) for p in params}) == len(params)
    assert {id(p) for p in params} == {id(p) for p in clf.parameters() if p.requires_grad}
    expected = {n for n, p in clf.named_parameters() if p.requires_grad}

    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert changed_by_one_step(clf, groups, x, torch.tensor([0, 1, 2, 3])) == expected


def test_bias_kind_names() -> None:
    assert bitfit.bias_kind("transformer.resblocks.11.attn.in_proj_bias") == "attn.in_proj"
    assert bitfit.bias_kind("transformer.resblocks.0.mlp.c_fc.bias") == "mlp.c_fc"
    assert bitfit.bias_kind("ln_post.bias") == "ln_post"
    assert not bitfit.is_bias("transformer.resblocks.0.attn.in_proj_weight")
