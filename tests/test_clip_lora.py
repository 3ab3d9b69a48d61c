"""CLIP-LoRA: with B = 0 it is zero-shot; LoRA lands on q, k, v of both towers and only A, B train; the text
tower's causal mask goes through the LoRA attention; config errors."""
from __future__ import annotations

import math

import pytest
import torch

from clipft_utils import textside
from clipft_utils.methods import make_config
from clipft_utils.course import setup, train_method
from clipft_utils.results import read_result
from clipft_utils.errors import ConfigError
from clipft_utils.methods import clip_lora, lora
from clipft_utils.models import build_classifier, zero_shot_head

from _helpers import changed_by_one_step, random_images as images  # the `toy` fixture is in conftest.py


def test_zero_B_equals_zero_shot(toy):
    loaded, classnames, templates = toy
    zs = build_classifier(loaded, zero_shot_head(loaded, classnames, templates)).eval()
    clf = textside.build(loaded, classnames, templates).eval()
    with torch.no_grad():
        torch.testing.assert_close(clf(images()), zs(images()), atol=1e-5, rtol=0)  # the text-side path itself
    clip_lora.apply(clf, clip_lora.CLIPLoRAConfig())
    with torch.no_grad():
        torch.testing.assert_close(clf(images()), zs(images()), atol=1e-5, rtol=0)


def test_lora_on_qkv_of_both_towers_and_only_A_B_train(toy):
    loaded, classnames, templates = toy
    clf = textside.build(loaded, classnames, templates)
    cfg = clip_lora.CLIPLoRAConfig()
    groups = clip_lora.apply(clf, cfg)
    blocks = {name: len(t.transformer.resblocks) for name, t in clip_lora.towers(clf).items()}
    for name, tower in clip_lora.towers(clf).items():
        slots = [(path, u) for path, u in lora.updates(tower) if "default" in u.A]
        assert sorted({p.rsplit(".", 1)[1] for p, _ in slots}) == ["k", "q", "v"] and len(slots) == 3 * blocks[name]
        assert all(u.A["default"].shape[0] == 2 and u.scaling["default"] == pytest.approx(1 / math.sqrt(2))
                   and u.dropout["default"].p == 0.25 for _, u in slots)
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in clf.named_parameters() if ".lora." in n and n.rsplit(".", 1)[1] == "default"}
    assert sum(p.numel() for g in groups for p in g["params"]) == sum(clip_lora.lora_counts(clf).values())
    clf.train()
    for tower in clip_lora.towers(clf).values():  # a non-zero B, so that A gets a gradient too
        for p in lora.lora_parameters(tower):
            if p.shape[1] == cfg.rank:
                p.data.normal_(0, 0.05)
    changed = changed_by_one_step(clf, groups, images(), torch.arange(6))
    assert changed == trainable and any(n.startswith("text.") for n in changed)


def test_text_lora_matches_its_merged_weights(toy):
    """The LoRA attention with the causal mask equals the stock attention on W + ΔW (B random, eval mode)."""
    loaded, classnames, templates = toy
    clf = textside.build(loaded, classnames, templates).eval()
    clip_lora.apply(clf, clip_lora.CLIPLoRAConfig(encoders="text", rank_scaling="linear"))
    with torch.no_grad():
        for p in lora.lora_parameters(clf.text):
            p.normal_(0, 0.1)
        adapted = clf.text_features().clone()
        lora.merge(clf.text)
        torch.testing.assert_close(clf.text_features(), adapted, atol=1e-5, rtol=0)
        lora.unmerge(clf.text)
        lora.set_adapter(clf.text, None)  # off: the pretrained text features again
        zs = textside.build(loaded, classnames, templates).eval().text_features()
        torch.testing.assert_close(clf.text_features(), zs, atol=1e-5, rtol=0)
    assert not lora.adapter_names(clf.visual)


def test_the_recipe_is_500_steps_per_shot_whatever_the_classes():
    cfg = clip_lora.CLIPLoRAConfig()
    assert cfg.steps_per_shot == clip_lora.ITERS_PER_SHOT == 500
    for classes in (6, 102):                                  # 16 shots: 8,000 steps exactly (was 8,007 on 102)
        assert cfg.budget(math.ceil(classes * 16 / 32), images_per_class=16).total == 500 * 16
    assert cfg.budget(4, images_per_class=1).total == 500


@pytest.mark.parametrize("bad, field", [({"rank": 0}, "rank"), ({"alpha": -1.0}, "alpha"), ({"dropout": 1.0}, "dropout"),
                                        ({"targets": ("q", "x")}, "targets"), ({"encoders": "image"}, "encoders"),
                                        ({"rank_scaling": "log"}, "rank_scaling")])
def test_config_errors_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        clip_lora.CLIPLoRAConfig(**bad)


def test_apply_needs_a_text_side_classifier(toy):
    loaded, classnames, _ = toy
    with pytest.raises(ConfigError, match="textside.classifier"):
        clip_lora.apply(build_classifier(loaded, torch.zeros(len(classnames), 128)), clip_lora.CLIPLoRAConfig())


def test_a_short_run_through_train_method(tmp_path):
    """The course's path: make_config -> apply -> train_method; only A and B move, in both towers."""
    course = setup("smoke", shots=1, val_shots=1, test_per_class=1, results_dir=str(tmp_path / "results"))
    cfg = make_config("clip_lora", "smoke", epochs=1)
    clf = textside.classifier(course)
    groups = clip_lora.apply(clf, cfg)
    before = {n: p.detach().clone() for n, p in clf.named_parameters()}
    out = train_method(course, "clip_lora", cfg, clf, groups, progress=False, checkpoint=False)
    changed = {n for n, p in clf.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".lora." in n for n in changed)
    assert {n.split(".")[0] for n in changed} == {"visual", "text"}
    saved = read_result(out.path)
    assert (saved["method"], saved["trainable_params"]) == ("clip_lora", sum(clip_lora.lora_counts(clf).values()))
    assert saved["config"]["encoders"] == "both" and saved["test_acc"] == pytest.approx(out.test.top1)
