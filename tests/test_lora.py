"""LoRA from scratch: identity at init, only A/B + head train, merge/unmerge, files, switching, fusion, peft."""
from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clipft_utils.methods.lora import LoRAConfig
from clipft_utils.errors import ConfigError
from clipft_utils.methods import lora, trainable_parameters
from clipft_utils.models import CLIPClassifier

from _helpers import changed_by_one_step

ALL = ("q", "k", "v", "out", "fc", "proj")


def tiny_classifier(num_classes: int = 5, seed: int = 0) -> CLIPClassifier:
    """A 2-block open_clip ViT (width 64, 2 heads, 32 px) with a random unit-norm head."""
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(
        embed_dim=32, vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32),
        text_cfg=dict(context_length=16, vocab_size=100, width=32, heads=2, layers=1))
    with torch.no_grad():  # open_clip zero-inits MHA biases; random ones make the tests sharper
        for name, p in clip.visual.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return CLIPClassifier(clip.visual, F.normalize(torch.randn(num_classes, 32), dim=-1)).eval()


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def randomize_B(model: nn.Module, name: str, std: float = 0.05, seed: int = 2) -> None:
    """Give adapter ``name`` a non-zero B so that it changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, u in lora.updates(model):
            if name in u.B:
                u.B[name].copy_(torch.randn(u.B[name].shape, generator=g) * std)


def test_init_is_identity_and_shapes() -> None:
    clf = tiny_classifier()
    x = images()
    with torch.no_grad():
        ref = clf(x)
    lora.apply(clf, LoRAConfig(rank=4, alpha=8, targets=ALL))
    with torch.no_grad():
        out = clf(x)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    u = clf.visual.transformer.resblocks[0].attn.lora["q"]
    assert u.A["default"].shape == (4, 64) and u.B["default"].shape == (64, 4)
    assert torch.count_nonzero(u.B["default"]) == 0 and u.scaling["default"] == 2.0
    fc = clf.visual.transformer.resblocks[0].mlp.c_fc.lora["fc"]
    assert fc.A["default"].shape == (4, 64) and fc.B["default"].shape == (256, 4)


def test_default_targets_are_q_and_v() -> None:
    clf = tiny_classifier()
    lora.apply(clf, LoRAConfig())
    slots = {path.rsplit(".", 1)[-1] for path, u in lora.updates(clf) if "default" in u.A}
    assert slots == {"q", "v"}
    assert not isinstance(clf.visual.transformer.resblocks[0].mlp.c_fc, lora.LoRALinear)


@pytest.mark.parametrize("targets", [("q", "v"), ALL])
def test_one_step_changes_only_lora_and_head(targets: tuple[str, ...]) -> None:
    clf = tiny_classifier().train()
    groups = lora.apply(clf, LoRAConfig(rank=4, targets=targets))
    randomize_B(clf, "default")  # with B = 0 the gradient of A is exactly zero
    params = trainable_parameters(groups)
    assert len({id(p) for p in params}) == len(params)
    assert {id(p) for p in params} == {id(p) for p in clf.parameters() if p.requires_grad}
    assert [g["name"] for g in groups] == ["backbone", "head"]
    expected = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert all(".lora." in n or n.startswith("head.") for n in expected)
    assert len([n for n in expected if ".lora." in n]) == 2 * 2 * len(targets)  # (A, B) x 2 blocks x targets

    assert changed_by_one_step(clf, groups, images(), torch.tensor([0, 1, 2, 3])) == expected


def test_merge_unmerge() -> None:
    clf = tiny_classifier()
    lora.apply(clf, LoRAConfig(rank=4, targets=ALL))
    x = images()
    with torch.no_grad():
        base = clf(x)  # B = 0: the base model's outputs
    randomize_B(clf, "default")
    original = {n: p.detach().clone() for n, p in clf.named_parameters() if ".lora." not in n}
    with torch.no_grad():
        unmerged = clf(x)
        lora.merge(clf)
        assert all(u.merged for _, u in lora.updates(clf) if "default" in u.A)
        merged = clf(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=0)
    attn = clf.visual.transformer.resblocks[0].attn
    delta_q = attn.lora["q"].delta_weight()
    key = "visual.transformer.resblocks.0.attn.base.in_proj_weight"
    torch.testing.assert_close(attn.base.in_proj_weight[:64] - original[key][:64], delta_q, atol=1e-6, rtol=0)
    assert (unmerged - base).abs().max() > 1e-3  # the adapter really changes the outputs
    lora.unmerge(clf)
    for n, p in clf.named_parameters():
        if ".lora." not in n:
            torch.testing.assert_close(p, original[n], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(clf(x), unmerged, atol=1e-6, rtol=0)


def test_save_load_round_trip(tmp_path) -> None:
    clf = tiny_classifier()
    fresh = copy.deepcopy(clf)
    lora.apply(clf, LoRAConfig(rank=4, alpha=4, targets=("q", "v", "fc")))
    randomize_B(clf, "default")
    path = lora.save_adapter(clf, tmp_path / "adapter.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert len(keys) == 2 * 2 * 3 and all(k.endswith((".A", ".B")) and ".lora." in k for k in keys)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file

    fresh.head.load_state_dict(clf.head.state_dict())
    assert lora.load_adapter(fresh, path) == "default"
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), clf(x), atol=0, rtol=0)
    assert lora.adapter_config(fresh, "default") == lora.adapter_config(clf, "default")
    with pytest.raises(ConfigError):
        lora.load_adapter(fresh, path)  # the name is taken


def test_switching_adapters() -> None:
    clf = tiny_classifier()
    lora.apply(clf, LoRAConfig(rank=4))
    randomize_B(clf, "default", seed=3)
    lora.add_adapter(clf, "other", LoRAConfig(rank=2, targets=("k", "out")))
    randomize_B(clf, "other", seed=4)
    assert lora.active_adapter(clf) == "default" and lora.adapter_names(clf) == ["default", "other"]
    x = images()
    with torch.no_grad():
        first = clf(x)
        lora.set_adapter(clf, "other")
        second = clf(x)
        lora.set_adapter(clf, "default")
        back = clf(x)
    assert (first - second).abs().max() > 1e-3
    assert torch.equal(first, back)
    lora.set_adapter(clf, "other")
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad and ".lora." in n}
    assert trainable and all(n.endswith(".other") for n in trainable)
    with pytest.raises(ConfigError):
        lora.set_adapter(clf, "missing")
    with pytest.raises(ConfigError):
        lora.add_adapter(clf, "half", LoRAConfig())  # would shadow nn.Module.half


def _outputs_with_delta(clf: CLIPClassifier, deltas: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Outputs of the base model with ``deltas`` (update path -> ΔW) added to its weights by hand."""
    active = lora.active_adapter(clf)
    lora.set_adapter(clf, None)
    weights = {f"{p}.lora.{s}": w for p, h in lora.hosts(clf) for s, w in h.weight_slices().items()}
    with torch.no_grad():
        for path, d in deltas.items():
            weights[path].add_(d)
        out = clf(x)
        for path, d in deltas.items():
            weights[path].sub_(d)
    lora.set_adapter(clf, active)
    return out


def test_fusion() -> None:
    clf = tiny_classifier()
    lora.apply(clf, LoRAConfig(rank=4, targets=("q", "v")))
    lora.add_adapter(clf, "b", LoRAConfig(rank=2, alpha=8, targets=("q", "v")))
    randomize_B(clf, "default", seed=5)
    randomize_B(clf, "b", seed=6)
    x = images()
    with torch.no_grad():
        first = clf(x)
    lora.fuse_adapters(clf, {"default": 1.0, "b": 0.0}, "only_first")
    lora.set_adapter(clf, "only_first")
    with torch.no_grad():
        torch.testing.assert_close(clf(x), first, atol=1e-6, rtol=0)

    lora.fuse_adapters(clf, {"default": 0.5, "b": 0.5}, "mix")
    for path, u in lora.updates(clf):
        if "mix" in u.A:
            assert u.A["mix"].shape[0] == 6  # ranks concatenated: 4 + 2
            want = 0.5 * u.delta_weight("default") + 0.5 * u.delta_weight("b")
            torch.testing.assert_close(u.delta_weight("mix"), want, atol=1e-6, rtol=0)
    deltas = {p: 0.5 * u.delta_weight("default") + 0.5 * u.delta_weight("b")
              for p, u in lora.updates(clf) if "b" in u.A}
    lora.set_adapter(clf, "mix")
    with torch.no_grad():
        fused = clf(x)
    torch.testing.assert_close(fused, _outputs_with_delta(clf, deltas, x), atol=1e-5, rtol=0)
    # The tempting shortcut, averaging A's and B's separately, is a different update.
    u = clf.visual.transformer.resblocks[0].attn.lora["q"]
    a_avg = 0.5 * (u.A["default"][:2] + u.A["b"])
    b_avg = 0.5 * (u.B["default"][:, :2] + u.B["b"])
    assert (b_avg @ a_avg - u.delta_weight("mix")).abs().max() > 1e-4


def test_mha_wrapper_matches_stock_attention_with_masks() -> None:
    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
        wrapped = lora.LoRAMultiheadAttention(copy.deepcopy(mha))
        for slot in ("q", "k", "v", "out"):
            wrapped.lora[slot].add("default", 2, 1.0)
            wrapped.lora[slot].active = "default"  # enabled, B = 0: must equal stock attention
        x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
        causal = torch.full((5, 5), float("-inf")).triu(1)
        masks = [None, causal, causal.isinf(), torch.randn(3 * 4, 5, 5)]
        for mask in masks:
            with torch.no_grad():
                want = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
                got = wrapped(x, x, x, need_weights=False, attn_mask=mask)[0]
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_dropout_only_in_training() -> None:
    clf = tiny_classifier()
    lora.apply(clf, LoRAConfig(rank=4, dropout=0.5))
    randomize_B(clf, "default", std=0.5)
    x = images()
    with torch.no_grad():
        assert torch.equal(clf(x), clf(x))
        clf.train()
        assert not torch.equal(clf(x), clf(x))


# ---- equivalence with peft ------------------------------------------------------------------------

def _copy_peft(peft_A: torch.Tensor, peft_B: torch.Tensor, update: lora.LoRAUpdate, scaling: float) -> None:
    update.add("default", peft_A.shape[0], scaling, A=peft_A.detach(), B=peft_B.detach())
    update.active = "default"


def test_peft_equivalence_linear() -> None:
    from peft import LoraConfig, get_peft_model
    torch.manual_seed(0)
    base = nn.Sequential()
    base.add_module("c_fc", nn.Linear(16, 24))
    mine = lora.LoRALinear(copy.deepcopy(base.c_fc), "fc")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_fc"]))
    layer = peft_model.base_model.model.c_fc
    nn.init.normal_(layer.lora_B["default"].weight)  # non-zero B
    _copy_peft(layer.lora_A["default"].weight, layer.lora_B["default"].weight, mine.lora["fc"], 8 / 4)
    x = torch.randn(7, 16)
    with torch.no_grad():
        torch.testing.assert_close(mine(x), peft_model(x), atol=1e-6, rtol=0)


def _peft_tower(visual: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(peft's experimental MHA LoRA on every block's ``attn``, our LoRA with the same A and B)."""
    from peft import LoraConfig, get_peft_model
    mine = copy.deepcopy(visual)
    peft_model = get_peft_model(visual, LoraConfig(r=4, lora_alpha=8, target_modules=["attn"])).eval()
    lora.wrap(mine, ("q", "k", "v", "out"))
    for i, block in enumerate(peft_model.base_model.model.transformer.resblocks):
        attn, host = block.attn, mine.transformer.resblocks[i].attn
        nn.init.normal_(attn.lora_B["default"].weight, std=0.1)  # non-zero B
        A, B = attn.lora_A["default"].weight, attn.lora_B["default"].weight
        for slot, B_part in zip("qkv", B.chunk(3)):  # peft: one A for the fused [3D, D] in_proj
            _copy_peft(A, B_part, host.lora[slot], 8 / 4)
        out = attn.base_layer.out_proj
        _copy_peft(out.lora_A["default"].weight, out.lora_B["default"].weight, host.lora["out"], 8 / 4)
    return peft_model, mine.eval()


def test_peft_equivalence_multihead_attention_in_open_clip_tower() -> None:
    """peft's MHA LoRA on the fused in_proj = ours on q, k, v with A_q = A_k = A_v and B split in three."""
    visual = tiny_classifier().visual
    reference = copy.deepcopy(visual)
    peft_model, mine = _peft_tower(visual)  # out_proj's B stays zero here (see the next test)
    x = images()
    with torch.no_grad():
        want, got = peft_model(x), mine(x)
        assert (want - reference(x)).abs().max() > 1e-3  # the adapters are not a no-op
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_peft_mha_applies_out_proj_update_twice() -> None:
    """Pins a peft 0.21.2 quirk: its MHA forward merges out_proj's ΔW twice (W + 2ΔW). Ours adds it once.

    If this fails after a peft upgrade, peft fixed it: update lora.py's docstring and this test.
    """
    visual = tiny_classifier().visual
    peft_model, mine = _peft_tower(visual)
    with torch.no_grad():
        for block in peft_model.base_model.model.transformer.resblocks:
            block.attn.lora_B["default"].weight.zero_()
            nn.init.normal_(block.attn.base_layer.out_proj.lora_B["default"].weight, std=0.1)
        for i, block in enumerate(peft_model.base_model.model.transformer.resblocks):
            out, host = block.attn.base_layer.out_proj, mine.transformer.resblocks[i].attn
            for slot in "qkv":
                host.lora[slot].B["default"].zero_()
            host.lora["out"].B["default"].copy_(out.lora_B["default"].weight)
            host.lora["out"].scaling["default"] = 2 * 8 / 4  # doubled to match peft
        x = images()
        torch.testing.assert_close(mine(x), peft_model(x), atol=1e-6, rtol=0)


def test_merge_and_unload_gives_a_plain_open_clip_tower() -> None:
    clf = tiny_classifier()
    lora.apply(clf, LoRAConfig(rank=4, targets=ALL))
    randomize_B(clf, "default")
    x = images()
    with torch.no_grad():
        adapted = clf(x)
        lora.merge(clf)
        lora.unload(clf)
        plain = clf(x)
    assert not list(lora.hosts(clf)) and isinstance(clf.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)
    assert type(clf.visual.transformer.resblocks[0].mlp.c_fc) is nn.Linear
    torch.testing.assert_close(plain, adapted, atol=1e-5, rtol=0)


def test_delete_adapter() -> None:
    clf = tiny_classifier()
    lora.apply(clf, LoRAConfig(rank=4))
    lora.add_adapter(clf, "extra", LoRAConfig(rank=2))
    lora.delete_adapter(clf, "default")
    assert lora.adapter_names(clf) == ["extra"] and lora.active_adapter(clf) is None
    assert not any(".default" in n for n, _ in clf.named_parameters())


def test_a_rank_no_target_weight_can_hold_is_refused_before_anything_is_added():
    """Before: rank 100000 was accepted (99.6 % of ToyCLIP trained, a 391 MB model folder)."""
    from types import SimpleNamespace
    clf = tiny_classifier()
    width = clf.visual.transformer.width                                      # 64: q and v are [64, 64]
    with pytest.raises(ConfigError, match=rf"LoRA rank {width + 1} is larger than .*Fix: rank <= {width}"):
        lora.add_adapter(clf, "big", SimpleNamespace(rank=width + 1, alpha=1.0, dropout=0.0, targets=("q", "v")))
    assert lora.adapter_names(clf) == []
