"""Prefix-tuning (Li & Liang key/value prefixes) and its variants prompt tuning / VPT-deep: identity without a
prefix, where the learned vectors act, CLS pooling, folding, trainables, parameter counts on ViT-B-32."""
from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from clipft_utils.errors import ConfigError
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


def config(kind: str) -> PrefixTuningConfig:
    return PrefixTuningConfig(prefix_length=LENGTH, prefix_hidden=16, kind=kind)


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


def test_length_zero_adds_no_parameters() -> None:
    visual = tiny_classifier().visual
    pv = prefix.PrefixVisual(visual, length=0)
    assert sum(p.numel() for p in pv.parameters()) == sum(p.numel() for p in visual.parameters())


@pytest.mark.parametrize("kind", ["prompt", "vpt_deep"])
def test_tokens_sit_after_cls_and_pooling_reads_cls(kind: str) -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config(kind))
    pv, x = clf.visual, images()
    inputs, last = block_inputs(pv, x)
    with torch.no_grad():
        embeds = pv.visual._embeds(x)  # [B, 1 + 16, D]
        tokens = pv.prefixes()
        out = pv(x)
    assert tokens.shape == ((LAYERS if kind == "vpt_deep" else 1), LENGTH, WIDTH)
    assert inputs[0].shape == (4, 1 + LENGTH + 16, WIDTH)
    torch.testing.assert_close(inputs[0][:, 0], embeds[:, 0], atol=0, rtol=0)  # class token first
    torch.testing.assert_close(inputs[0][:, 1:1 + LENGTH], tokens[0].expand(4, -1, -1), atol=0, rtol=0)
    torch.testing.assert_close(inputs[0][:, 1 + LENGTH:], embeds[:, 1:], atol=0, rtol=0)  # patches untouched
    fresh = torch.equal(inputs[1][:, 1:1 + LENGTH], tokens[-1].expand(4, -1, -1))
    assert fresh == (kind == "vpt_deep")  # VPT-deep: fresh tokens at every block input; prompt: they flow through
    pooled = pv.visual.ln_post(last[:, 0]) @ pv.visual.proj  # tok pooling reads token 0 = CLS
    assert out.shape == (4, 32)
    torch.testing.assert_close(out, pooled, atol=1e-6, rtol=0)


N_OUT = {"prefix": 2 * LAYERS, "prompt": 1, "vpt_deep": LAYERS}
"""Sets of LENGTH vectors each kind learns: a key and a value per layer, one prompt, a prompt per layer."""


@pytest.mark.parametrize("kind", list(N_OUT))
def test_one_step_changes_only_what_the_kind_trains_and_the_head(kind: str) -> None:
    """Prefix-tuning trains Li & Liang's MLP; prompt tuning and VPT-deep train their tokens directly (their papers)."""
    clf = tiny_classifier().train()
    groups = prefix.apply(clf, config(kind))
    params = trainable_parameters(groups)
    assert len({id(p) for p in params}) == len(params)
    assert {id(p) for p in params} == {id(p) for p in clf.parameters() if p.requires_grad}
    expected = {n for n, p in clf.named_parameters() if p.requires_grad}
    trained = "visual.encoder." if kind == "prefix" else "visual.tokens"
    assert expected == {n for n, _ in clf.named_parameters() if n.startswith((trained, "head."))}
    n_out = N_OUT[kind]
    encoder = LENGTH * WIDTH + (WIDTH * 16 + 16) + (16 * n_out * WIDTH + n_out * WIDTH)
    assert sum(p.numel() for p in groups[0]["params"]) == (encoder if kind == "prefix" else n_out * LENGTH * WIDTH)
    assert (clf.visual.encoder is None) == (kind != "prefix") and (clf.visual.tokens is None) == (kind == "prefix")

    assert changed_by_one_step(clf, groups, images(), torch.tensor([0, 1, 2, 3])) == expected


@pytest.mark.parametrize("kind", list(N_OUT))
def test_direct_tokens_take_larger_steps_than_the_mlp(kind: str) -> None:
    """The prompt kinds' tokens train at lr x token_lr_scale; prefix-tuning's MLP and the head at their own lr."""
    groups = prefix.apply(tiny_classifier(), PrefixTuningConfig(prefix_length=LENGTH, prefix_hidden=16, kind=kind,
                                                                token_lr_scale=7.0))
    scales = {g["name"]: g.get("lr_scale", 1.0) for g in groups}
    assert scales["backbone"] == (1.0 if kind == "prefix" else 7.0) and scales.get("head", 1.0) == 1.0
    with pytest.raises(ConfigError, match="token_lr_scale"):
        PrefixTuningConfig(kind=kind, token_lr_scale=0.0).validate()


@pytest.mark.parametrize("kind, bound", [("prompt", 0.5), ("vpt_deep", (6 / (3 * 8 * 8 + WIDTH)) ** 0.5)])
def test_direct_tokens_start_as_their_papers_initialise_them(kind: str, bound: float) -> None:
    """Prompt tuning: Lester et al.'s uniform [-0.5, 0.5]; VPT: Xavier-uniform, fan-in 3 x patch area, fan-out D."""
    tokens = prefix.PrefixVisual(tiny_classifier().visual, 200, kind=kind).tokens.detach()
    assert tokens.abs().max() <= bound and tokens.abs().max() > 0.9 * bound
    assert abs(float(tokens.mean())) < 0.05 * bound


@pytest.mark.parametrize("kind", list(N_OUT))
def test_fold_keeps_outputs_and_drops_the_mlp(kind: str) -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config(kind))
    x = images()
    with torch.no_grad():
        before = clf(x)
    prefix.fold(clf.visual)
    assert clf.visual.encoder is None and clf.visual.tokens is None and not clf.visual.folded.requires_grad
    assert clf.visual.folded.shape == (N_OUT[kind], LENGTH, WIDTH)
    assert not any("encoder" in n or "tokens" in n for n, _ in clf.named_parameters())
    assert sum(p.numel() for p in clf.visual.parameters()) == \
        sum(p.numel() for p in clf.visual.visual.parameters()) + N_OUT[kind] * LENGTH * WIDTH
    with torch.no_grad():
        torch.testing.assert_close(clf(x), before, atol=1e-6, rtol=0)


def test_patch_dropout_never_drops_prefix_tokens() -> None:
    clf = tiny_classifier(patch_dropout=0.5).train()
    prefix.apply(clf, config("prompt"))
    inputs, _ = block_inputs(clf.visual, images())
    with torch.no_grad():
        tokens = clf.visual.prefixes()
    assert inputs[0].shape[1] == 1 + LENGTH + 8  # half of the 16 patches kept, all prefix tokens kept
    torch.testing.assert_close(inputs[0][:, 1:1 + LENGTH], tokens[0].expand(4, -1, -1), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["prefix", "vpt_deep"])
def test_grad_checkpointing_gives_same_gradients(kind: str) -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config(kind))
    other = copy.deepcopy(clf)
    other.visual.set_grad_checkpointing(True)
    grads = []
    for model in (clf, other):
        F.cross_entropy(model(images()), torch.tensor([0, 1, 2, 3])).backward()
        grads.append([p.grad for p in model.visual.trained()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", list(N_OUT))
def test_counted_inference_flops_grow_with_the_keys_or_the_tokens(kind: str) -> None:
    """FLOPs counted, not timed: every kind costs more than the bare tower; the prompt kinds, which lengthen the
    sequence every block processes, cost more than prefix-tuning, which only lengthens the keys and values."""
    clf = tiny_classifier()
    prefix.apply(clf, config(kind))
    counted = prefix.inference_flops(prefix.fold(clf.visual), images(2))
    assert counted["prefix_gflops"] > counted["base_gflops"] and counted["flop_ratio"] > 1
    assert counted["tokens_prefix"] == 1 + 16 + (0 if kind == "prefix" else LENGTH)
    other = tiny_classifier()
    prefix.apply(other, config("prefix"))
    prefix_ratio = prefix.inference_flops(prefix.fold(other.visual), images(2))["flop_ratio"]
    assert counted["flop_ratio"] >= prefix_ratio and (kind == "prefix") == (counted["flop_ratio"] == prefix_ratio)


@pytest.mark.parametrize("kind", list(N_OUT))
def test_measure_inference_slowdown(kind: str) -> None:
    clf = tiny_classifier()
    prefix.apply(clf, config(kind))
    stats = prefix.measure_inference_slowdown(prefix.fold(clf.visual), images(2), repeats=5)
    assert stats["keys_prefix"] == stats["keys_base"] + LENGTH == 1 + 16 + LENGTH
    # prefix-tuning adds keys/values only; the prompt variants add tokens that every block processes
    assert stats["tokens_prefix"] == 1 + 16 + (0 if kind == "prefix" else LENGTH)
    assert stats["kind"] == kind
    assert stats["base_ms"] > 0 and stats["prefix_ms"] > 0
    assert stats["ratio"] == pytest.approx(stats["prefix_ms"] / stats["base_ms"])
    assert stats["folded"] and not clf.visual.training
    assert stats["spread"] >= 0 and stats["noisy"] == (stats["spread"] > prefix.NOISY)
    with pytest.raises(ValueError, match="repeats"):
        prefix.measure_inference_slowdown(clf.visual, images(2), repeats=2)


# --------------------------------------------------------------------------- prefix-tuning proper (key/value prefixes)
def test_a_masked_prefix_gives_the_plain_block_and_an_unmasked_one_changes_every_layer() -> None:
    """Each layer's own computation, fed the same input: masked prefix == ``block(x)``; visible prefix != it."""
    clf = tiny_classifier()
    prefix.apply(clf, config("prefix"))
    v = clf.visual.visual
    with torch.no_grad():
        kv = clf.visual.prefixes().view(LAYERS, 2, LENGTH, WIDTH)
        x = v._embeds(images())
        for i, block in enumerate(v.transformer.resblocks):
            plain = block(x)
            masked = prefix.prefixed_block(block, x, kv[i, 0], kv[i, 1], mask_prefix=True)
            torch.testing.assert_close(masked, plain, atol=1e-5, rtol=1e-5)
            with_prefix = prefix.prefixed_block(block, x, kv[i, 0], kv[i, 1])
            assert with_prefix.shape == plain.shape  # queries are the real tokens only
            assert (with_prefix - plain).abs().amax(dim=(0, 2)).min() > 1e-4, f"layer {i}: some token unchanged"
            x = plain


def test_each_layers_prefix_reaches_the_output() -> None:
    """Zeroing the prefix values of any one layer (keys kept) changes the tower's output."""
    clf = tiny_classifier()
    prefix.apply(clf, config("prefix"))
    prefix.fold(clf.visual)
    x = images()
    with torch.no_grad():
        full = clf(x)
        for i in range(LAYERS):
            other = copy.deepcopy(clf)
            other.visual.folded[2 * i + 1].zero_()
            assert not torch.allclose(other(x), full, atol=1e-5), f"layer {i}'s prefix has no effect"


@pytest.mark.parametrize("kind", list(N_OUT))
def test_a_zero_length_prefix_is_the_plain_tower(kind: str) -> None:
    plain = tiny_classifier().visual
    pv = prefix.PrefixVisual(plain, length=0, kind=kind)
    with torch.no_grad():
        assert torch.equal(pv(images()), plain(images()))


def test_vit_b32_parameter_counts_match_the_formula() -> None:
    """ViT-B-32 (random weights, 12 layers, D=768), P=10, hidden 512: the trainable count and the folded count."""
    import logging
    logging.disable(logging.WARNING)
    try:
        visual = open_clip.create_model("ViT-B-32", pretrained=None).visual
    finally:
        logging.disable(logging.NOTSET)
    p, d, hidden, layers = 10, 768, 512, 12
    assert (len(visual.transformer.resblocks), visual.class_embedding.shape[-1]) == (layers, d)
    pv = prefix.PrefixVisual(visual, p, hidden, kind="prefix")
    trainable = sum(t.numel() for t in pv.trained())
    assert trainable == p * d + d * hidden + hidden + hidden * layers * 2 * d + layers * 2 * d
    prefix.fold(pv)
    assert pv.folded.numel() == layers * 2 * p * d
    images_224 = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert pv(images_224).shape == visual(images_224).shape


def test_unknown_kind_and_unsupported_blocks_are_refused() -> None:
    with pytest.raises(ConfigError, match="kind='vpt_deep'"):
        PrefixTuningConfig(kind="deep").validate()
    visual = tiny_classifier().visual
    with pytest.raises(ValueError, match="Fix"):
        prefix.PrefixVisual(visual, LENGTH, kind="deep")
    visual.transformer.resblocks[0] = torch.nn.Identity()
    with pytest.raises(ValueError, match="kind='prompt'"):
        prefix.PrefixVisual(visual, LENGTH, kind="prefix")
