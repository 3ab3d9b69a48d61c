"""ToyCLIP: registration, deterministic pretraining, the compact checkpoint and loading it offline."""
from __future__ import annotations

import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clipft_utils.standin import synth, toyclip  # noqa: E402


def _no_network(monkeypatch) -> None:
    """Make every socket connection fail loudly."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:]}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_config_is_a_tiny_vit_b_32():
    import open_clip
    from open_clip.transformer import VisionTransformer
    toyclip.register()
    toyclip.register()  # idempotent
    assert open_clip.list_models().count("ToyCLIP") == 1
    model = toyclip.create_model(seed=0)
    assert isinstance(model.visual, VisionTransformer)
    assert isinstance(model.visual.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)
    assert model.token_embedding.num_embeddings == 49408 and model.context_length == 32
    assert 7e6 < sum(p.numel() for p in model.parameters()) < 9e6


def test_random_toyclip_is_near_chance():
    model = toyclip.create_model(seed=0).eval()
    accuracy = toyclip.evaluate_zero_shot(model, split="val")
    assert accuracy < 0.04  # chance is 1/102 = 0.0098


def test_pretraining_is_deterministic_and_keeps_unused_token_rows():
    kwargs = dict(steps=4, batch_size=24, seed=5, progress=False, warmup=1)  # a few steps prove it (bf16 on a CPU is slow)
    a, info_a = toyclip.pretrain(**kwargs)
    b, info_b = toyclip.pretrain(**kwargs)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    drop = ("train_seconds", "train_cpu_seconds")
    assert {k: v for k, v in info_a.items() if k not in drop} == {k: v for k, v in info_b.items() if k not in drop}
    compact = toyclip.compact_state(a, seed=5)
    used = len(compact["token_rows"])
    assert 20 < used < 400  # only the corpus' tokens moved; the rest is still the seeded init
    full = toyclip.expand_state({"state": compact})
    for name, x in a.state_dict().items():
        assert torch.equal(full[name], x.half().float()) or name == toyclip.TOKEN_KEY, name
    tokens, moved = a.token_embedding.weight.detach(), torch.zeros(49408, dtype=torch.bool)
    moved[compact["token_rows"]] = True
    assert torch.equal(full[toyclip.TOKEN_KEY][~moved], tokens[~moved])  # re-created exactly from the seed
    assert torch.equal(full[toyclip.TOKEN_KEY][moved], tokens[moved].half().float())


def test_shipped_checkpoint_meets_its_targets():
    meta = toyclip.load_compact()
    metrics = meta["metrics"]
    assert meta["model_config"] == toyclip.model_config() and meta["tag"] == toyclip.TAG
    assert toyclip.ASSET_PATH.stat().st_size < 6e6
    assert metrics["zero_shot_test"] >= 0.098  # 10x chance
    assert metrics["linear_probe"]["test"] >= metrics["zero_shot_test"] + 0.10
    assert metrics["zero_shot_pretrain"] > metrics["zero_shot_test"]  # the domain gap


def test_loads_through_open_clip_offline_like_real_weights(monkeypatch, tmp_path):
    import open_clip
    monkeypatch.setenv("CLIPFT_DATA", str(tmp_path))  # force a fresh expansion
    _no_network(monkeypatch)
    path = toyclip.checkpoint_path()
    assert path.parent == tmp_path / "cache" / "toyclip" and toyclip.checkpoint_path() == path
    toyclip.register()
    model, _, preprocess = open_clip.create_model_and_transforms("ToyCLIP", pretrained=str(path))
    resize, crop, *_, normalize = preprocess.transforms
    assert resize.size == 64 and tuple(crop.size) == (64, 64)
    assert tuple(normalize.mean) == open_clip.OPENAI_DATASET_MEAN
    assert tuple(normalize.std) == open_clip.OPENAI_DATASET_STD
    expanded = toyclip.expand_state(toyclip.load_compact())
    for name, value in model.state_dict().items():
        assert torch.equal(value, expanded[name]), name
    assert toyclip.evaluate_zero_shot(model.eval(), split="val") >= 0.098


def test_build_never_touches_the_network(monkeypatch, tmp_path):
    _no_network(monkeypatch)
    monkeypatch.setattr(toyclip, "report", lambda model, probe=True: {"zero_shot_test": 0.0})  # speed only
    out = tmp_path / "toy.pt"
    meta = toyclip.build(out, seed=1, progress=False, probe=False, steps=2, batch_size=8, warmup=1)
    assert out.exists() and meta["train"]["steps"] == 2
    assert toyclip.load_compact(out)["state"]["token_init_seed"] == 1
    images, captions = synth.pretraining_batch(np.random.default_rng(0), 4)
    assert len(captions) == 4 and images.shape[0] == 4
