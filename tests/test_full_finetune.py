"""Full fine-tuning: everything in the tower trains, layer-decay groups, gradient checkpointing."""
from __future__ import annotations

import copy

import open_clip
import torch
import torch.nn.functional as F

from clipft_utils.methods.full_finetune import FullFinetuneConfig
from clipft_utils.methods import full_finetune as full, trainable_parameters
from clipft_utils.models import CLIPClassifier

from _helpers import changed_by_one_step

LAYERS = 3


def tiny_classifier(seed: int = 0) -> CLIPClassifier:
    """A 3-block open_clip ViT (width 64, 32 px) with a random unit-norm head."""
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(
        embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=LAYERS, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))
    return CLIPClassifier(clip.visual, F.normalize(torch.randn(5, 32), dim=-1))


def images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_one_step_changes_everything() -> None:
    clf = tiny_classifier().train()
    groups = full.apply(clf, FullFinetuneConfig())
    assert [g["name"] for g in groups] == ["backbone", "head"] and "lr_scale" not in groups[0]
    params = trainable_parameters(groups)
    assert len({id(p) for p in params}) == len(params) == len(list(clf.parameters()))
    assert changed_by_one_step(clf, groups, images(), torch.tensor([0, 1, 2, 3])) == {n for n, _ in clf.named_parameters()}


def test_layer_decay_groups_cover_every_parameter_once() -> None:
    clf = tiny_classifier()
    groups = full.apply(clf, FullFinetuneConfig(layer_decay=0.5))
    backbone = [g for g in groups if g["name"] != "head"]
    ids = [id(p) for g in backbone for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in clf.visual.parameters()}
    assert len(backbone) == LAYERS + 2  # embeddings, 3 blocks, ln_post/proj
    scales = [g["lr_scale"] for g in backbone]
    assert scales == [0.5 ** (LAYERS + 1 - d) for d in range(LAYERS + 2)] and scales[-1] == 1.0
    v = clf.visual
    assert {id(p) for p in backbone[0]["params"]} == {id(v.conv1.weight), id(v.class_embedding),
                                                     id(v.positional_embedding), id(v.ln_pre.weight),
                                                     id(v.ln_pre.bias)}
    assert {id(p) for p in backbone[1]["params"]} == {id(p) for p in v.transformer.resblocks[0].parameters()}
    assert {id(p) for p in backbone[-1]["params"]} == {id(v.proj), id(v.ln_post.weight), id(v.ln_post.bias)}
    assert groups[-1]["name"] == "head" and "lr_scale" not in groups[-1]


def count_calls(block: torch.nn.Module, calls: dict[str, int], key: str) -> None:
    """Count calls of ``block.forward`` (forward hooks do not fire during checkpoint recomputation)."""
    forward = block.forward

    def counted(*args, **kwargs):
        calls[key] += 1
        return forward(*args, **kwargs)
    block.forward = counted


def test_grad_checkpointing_same_outputs_and_gradients() -> None:
    clf = tiny_classifier().train()
    ckpt = copy.deepcopy(clf)
    full.apply(clf, FullFinetuneConfig())
    full.apply(ckpt, FullFinetuneConfig(grad_checkpointing=True))
    assert ckpt.visual.transformer.grad_checkpointing and not clf.visual.transformer.grad_checkpointing
    calls = {"plain": 0, "ckpt": 0}
    count_calls(clf.visual.transformer.resblocks[0], calls, "plain")
    count_calls(ckpt.visual.transformer.resblocks[0], calls, "ckpt")
    outs = []
    for model in (clf, ckpt):
        out = model(images())
        F.cross_entropy(out, torch.tensor([0, 1, 2, 3])).backward()
        outs.append(out.detach())
    assert calls == {"plain": 1, "ckpt": 2}  # checkpointing recomputes the block in the backward pass
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    for (name, a), b in zip(clf.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
