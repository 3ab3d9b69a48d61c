"""Model loading: real names and tags, local files, the stand-in, and fast clear errors offline."""
from __future__ import annotations

import socket
import time

import pytest
import torch

from clipft_utils import models as M
from clipft_utils.errors import ConfigError, OfflineError


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_offline_without_weights_fails_fast_and_says_how_to_prefetch(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="prefetch") as err:
        M.load_clip("ViT-B-32", "openai")
    assert time.perf_counter() - start < 1.0
    assert "smoke" in str(err.value)


def test_unreachable_network_fails_fast_too(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def no_route(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_route)
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="offline"):
        M.load_clip("ViT-B-32", "openai")
    assert time.perf_counter() - start < 1.0


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(ConfigError, match="Unknown model 'ViT-B-23'.*ViT-B-32"):
        M.load_clip("ViT-B-23", "openai")


def test_unknown_tag_and_missing_file():
    with pytest.raises(ConfigError, match="no weights tagged 'openaii'"):
        M.load_clip("ViT-B-32", "openaii")
    with pytest.raises(ConfigError, match="does not exist"):
        M.load_clip("ViT-B-32", "/nonexistent/weights.pt")


def test_random_weights_need_no_download_and_real_architecture_is_vit_b_32():
    loaded = M.load_clip("ViT-B-32", "random")
    assert loaded.weights_id == "random" and loaded.image_size == 224 and loaded.embed_dim == 512
    attn = loaded.model.visual.transformer.resblocks[0].attn
    assert isinstance(attn, torch.nn.MultiheadAttention) and attn.batch_first and attn.in_proj_weight.shape == (2304, 768)


def test_local_checkpoint_path_loads_and_gets_a_content_id(tmp_path):
    loaded = M.load_clip("ToyCLIP", "random")
    path = tmp_path / "toy.pt"
    torch.save(loaded.model.state_dict(), path)
    again = M.load_clip("ToyCLIP", str(path))
    assert again.weights_id.startswith("file-")
    for (k, a), (_, b) in zip(loaded.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), k


def test_classifier_with_zero_shot_head_reproduces_clip_logits():
    loaded = M.load_clip("ToyCLIP", "synthflowers")
    names = ["red rose", "blue daisy", "white lily"]
    head = M.zero_shot_head(loaded, names, ["a photo of a {}, a type of flower."])
    clf = M.build_classifier(loaded, head).eval()
    images = torch.randn(4, 3, loaded.image_size, loaded.image_size)
    text = loaded.tokenizer([f"a photo of a {n}, a type of flower." for n in names])
    with torch.no_grad():
        img, txt, scale = loaded.model(images, text)
        expected = scale * img @ txt.T
        torch.testing.assert_close(clf(images), expected, rtol=1e-5, atol=1e-4)


def test_parameter_count_and_trainable_line():
    layer = torch.nn.Linear(4, 2)
    layer.bias.requires_grad_(False)
    assert M.count_parameters(layer) == (8, 10)
    assert "trainable%: 80.0000" in M.format_trainable(layer)
