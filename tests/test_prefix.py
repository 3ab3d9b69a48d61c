"""Prefix-tuning: identity at length 0, token placement (shallow / deep), CLS pooling, folding, trainables."""
from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipft_utils.methods.prefix_tuning import PrefixTuningConfig
from clipft_utils.methods import prefix_tuning as prefix, trainable_parameters
from clipft_utils.models import CLIPClassifier

from _helpers import changed_by_one_step

LAYERS, WIDTH, LENGTH = 2, 64, 3


def tiny_classifier(patch_dropout: float = 0.0, seed: int = 0) -> CLIPClassifier:
    """A 2-block open_clip ViT (width 64, 16 patches of 8 px) with a random unit-norm head."""
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(
        embed_dim=32, text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1),
        vision_cfg=dict(image_size=32, patch_size=8, width=WIDTH, layers=LAYERS, head_width=32,
                        patch_dropout=patch_dropout))
    return CLIPClassifier(clip.visual, F.normalize(torch.randn(5, 32), dim=-1)).eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def config(depth: str) -> PrefixTuningConfig:
    return PrefixTuningConfig(prefix_length=LENGTH, prefix_hidden=16, depth=depth)


def block_inputs(pv: prefix.PrefixVisual, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(input of every block, output of the last block) during ``pv(x)``."""
    seen: list[torch.Tensor] = []
    blocks = pv.visual.transformer.resblocks
    hooks = [b.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach())) for b in blocks]
    hooks.append(blocks[-1].register_forward_hook(lambda m, args, out: seen.append(out.detach())))
    with torch.no_grad():
        pv(x)
    for h in hooks:
        h.remove()
    return seen[:-1], seen[-1]


def test_length_zero_is_the_identity() -> None:
    visual = tiny_classifier().visual
    pv = prefix.PrefixVisual(visual, length=0)
    x = images()
    with torch.no_grad():
        assert torch.equal(pv(x), visual(x))
    assert sum(p.numel() for p in pv.parameters()) == sum(p.numel() for p in visual.parameters())


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_tokens_sit_after_cls_and_pooling_reads_cls(depth: str) -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config(depth))
    pv, x = clf.visual, images()
    inputs, last = block_inputs(pv, x)
    with torch.no_grad():
        embeds = pv.visual._embeds(x)  # [B, 1 + 16, D]
        tokens = pv.prefixes()
        out = pv(x)
    assert tokens.shape == ((LAYERS if depth == "deep" else 1), LENGTH, WIDTH)
    assert inputs[0].shape == (4, 1 + LENGTH + 16, WIDTH)
    torch.testing.assert_close(inputs[0][:, 0], embeds[:, 0], atol=0, rtol=0)  # class token first
    torch.testing.assert_close(inputs[0][:, 1:1 + LENGTH], tokens[0].expand(4, -1, -1), atol=0, rtol=0)
    torch.testing.assert_close(inputs[0][:, 1 + LENGTH:], embeds[:, 1:], atol=0, rtol=0)  # patches untouched
    fresh = torch.equal(inputs[1][:, 1:1 + LENGTH], tokens[-1].expand(4, -1, -1))
    assert fresh == (depth == "deep")  # deep: fresh tokens at every block input; shallow: they flow through
    pooled = pv.visual.ln_post(last[:, 0]) @ pv.visual.proj  # tok pooling reads token 0 = CLS
    assert out.shape == (4, 32)
    torch.testing.assert_close(out, pooled, atol=1e-6, rtol=0)


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_one_step_changes_only_prefix_encoder_and_head(depth: str) -> None:
    clf = tiny_classifier().train()
    groups = prefix.apply(clf, config(depth))
    params = trainable_parameters(groups)
    assert len({id(p) for p in params}) == len(params)
    assert {id(p) for p in params} == {id(p) for p in clf.parameters() if p.requires_grad}
    expected = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert expected == {n for n, _ in clf.named_parameters() if n.startswith(("visual.encoder.", "head."))}
    n_out = LAYERS if depth == "deep" else 1
    encoder = LENGTH * WIDTH + (WIDTH * 16 + 16) + (16 * n_out * WIDTH + n_out * WIDTH)
    assert sum(p.numel() for p in groups[0]["params"]) == encoder

    assert changed_by_one_step(clf, groups, images(), torch.tensor([0, 1, 2, 3])) == expected


@pytest.mark.parametrize("depth", ["shallow", "deep"])
def test_fold_keeps_outputs_and_drops_the_mlp(depth: str) -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config(depth))
    x = images()
    with torch.no_grad():
        before = clf(x)
    prefix.fold(clf.visual)
    assert clf.visual.encoder is None and not clf.visual.folded.requires_grad
    n_out = LAYERS if depth == "deep" else 1
    assert clf.visual.folded.shape == (n_out, LENGTH, WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), before, atol=1e-6, rtol=0)


def test_patch_dropout_never_drops_prefix_tokens() -> None:
    clf = tiny_classifier(patch_dropout=0.5).train()
    prefix.apply(clf, config("shallow"))
    inputs, _ = block_inputs(clf.visual, images())
    with torch.no_grad():
        tokens = clf.visual.prefixes()
    assert inputs[0].shape[1] == 1 + LENGTH + 8  # half of the 16 patches kept, all prefix tokens kept
    torch.testing.assert_close(inputs[0][:, 1:1 + LENGTH], tokens[0].expand(4, -1, -1), atol=0, rtol=0)


def test_grad_checkpointing_gives_same_gradients() -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config("deep"))
    other = copy.deepcopy(clf)
    other.visual.set_grad_checkpointing(True)
    grads = []
    for model in (clf, other):
        F.cross_entropy(model(images()), torch.tensor([0, 1, 2, 3])).backward()
        grads.append([p.grad for p in model.visual.encoder.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_measure_inference_slowdown() -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config("shallow"))
    stats = prefix.measure_inference_slowdown(prefix.fold(clf.visual), images(2), repeats=5)
    assert stats["tokens_prefix"] == stats["tokens_base"] + LENGTH == 1 + 16 + LENGTH
    assert stats["base_ms"] > 0 and stats["prefix_ms"] > 0
    assert stats["ratio"] == pytest.approx(stats["prefix_ms"] / stats["base_ms"])
    assert stats["folded"] and not clf.visual.training
    assert stats["spread"] >= 0 and stats["noisy"] == (stats["spread"] > prefix.NOISY)
    with pytest.raises(ValueError, match="repeats"):
        prefix.measure_inference_slowdown(clf.visual, images(2), repeats=2)
