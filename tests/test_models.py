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


# --- local weights files that are garbage or made for another model: one clear WeightsError ---------------

def _assert_clear_weights_error(err, path, found):
    from clipft_utils.errors import ClipftError, WeightsError
    msg = str(err.value)
    assert isinstance(err.value, WeightsError) and isinstance(err.value, (ClipftError, ValueError))
    assert path.name in msg and "Fix" in msg and found in msg, msg
    assert "weights_only=False" not in msg and "Expected: an open_clip state dict" in msg
    assert err.value.__suppress_context__  # no raw loader error chained above it in the traceback


def _shaped_like(name):
    """A state dict with ``name``'s keys and shapes whose tensors share one zero (a ~100 kB file, built in ms)."""
    import open_clip
    from clipft_utils import plugins
    plugins.load()
    with torch.device("meta"):
        meta = open_clip.create_model(name, device="meta")
    return {k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in meta.state_dict().items()}


def test_text_file_renamed_pt_is_not_a_pytorch_file(tmp_path):
    from clipft_utils.errors import WeightsError
    path = tmp_path / "notes.pt"
    path.write_text("these are my lecture notes, not a checkpoint\n")
    with pytest.raises(WeightsError) as err:
        M.load_clip("ToyCLIP", str(path))
    _assert_clear_weights_error(err, path, "not a PyTorch or safetensors file")


def test_random_bytes_renamed_safetensors(tmp_path):
    from clipft_utils.errors import WeightsError
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(range(256)) * 16)
    with pytest.raises(WeightsError) as err:
        M.load_clip("ToyCLIP", str(path))
    _assert_clear_weights_error(err, path, "not a valid safetensors file")


def test_torch_file_holding_a_list_is_not_a_state_dict(tmp_path):
    from clipft_utils.errors import WeightsError
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2), 3], path)
    with pytest.raises(WeightsError) as err:
        M.load_clip("ToyCLIP", str(path))
    _assert_clear_weights_error(err, path, "a file holding a list, not a state dict")


def test_pickled_objects_are_refused_safely_without_suggesting_weights_only_false(tmp_path):
    import argparse
    from clipft_utils.errors import WeightsError
    path = tmp_path / "train_state.pt"
    torch.save({"args": argparse.Namespace(lr=1.0), "epoch": 3}, path)
    with pytest.raises(WeightsError) as err:
        M.load_clip("ToyCLIP", str(path))
    _assert_clear_weights_error(err, path, "argparse.Namespace")


def test_toyclip_state_dict_passed_to_vit_b_32_names_the_mismatch(tmp_path):
    import open_clip
    from clipft_utils import plugins
    from clipft_utils.errors import WeightsError
    plugins.load()
    path = tmp_path / "toyclip_random.pt"
    torch.save(open_clip.create_model("ToyCLIP").state_dict(), path)
    with pytest.raises(WeightsError) as err:
        M.load_clip("ViT-B-32", str(path))
    _assert_clear_weights_error(err, path, "a state dict for another architecture")
    msg = str(err.value)
    assert "'ViT-B-32'" in msg and "missing such as 'visual.transformer.resblocks." in msg
    assert "shape mismatches, e.g." in msg and "pretrained='random'" in msg and "'openai'" in msg


def test_vit_b_32_state_dict_with_one_changed_shape(tmp_path):
    from clipft_utils.errors import WeightsError
    sd = _shaped_like("ViT-B-32")
    good = tmp_path / "vit_b_32.pt"
    torch.save({"state_dict": sd, "epoch": 1}, good)  # a checkpoint wrapping the state dict loads fine
    assert M.load_clip("ViT-B-32", str(good)).weights_id.startswith("file-")
    sd["visual.proj"] = torch.zeros(768, 256)
    path = tmp_path / "vit_b_32_narrow.pt"
    torch.save(sd, path)
    with pytest.raises(WeightsError) as err:
        M.load_clip("ViT-B-32", str(path))
    _assert_clear_weights_error(err, path, "1 shape mismatch, e.g. 'visual.proj' [768, 256] in the file vs [768, 512]")
    assert "unexpected" not in str(err.value) and "missing" not in str(err.value)


def test_prefetch_offline_prints_one_line_and_returns_2(empty_hf_cache, monkeypatch, capsys):
    from clipft_utils.course.cli import main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["prefetch", "--weights-only"]) == 2
    err = capsys.readouterr().err
    assert "offline" in err and "prefetch" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


class _RunsCode:
    """What a malicious checkpoint holds: unpickling it would call os.system."""

    def __reduce__(self):
        import os
        return (os.system, ("echo unpickled",))


def test_a_malicious_pickle_is_named_as_objects_refused_for_safety_not_as_damage(tmp_path):
    """The verdict comes from the exception's type and the pickle's own opcodes, never from torch's wording."""
    from clipft_utils.errors import WeightsError
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.zeros(2), "payload": _RunsCode()}, path)
    with pytest.raises(WeightsError) as err:
        M.load_clip("ToyCLIP", str(path))
    _assert_clear_weights_error(err, path, "a pickle of Python objects")
    msg = str(err.value)
    assert "system" in msg and "refused for safety" in msg and "safetensors" in msg and "damaged" not in msg


@pytest.mark.parametrize("cut", ["zip", "legacy"])
def test_a_truncated_weights_file_is_named_as_damaged_not_as_objects(tmp_path, cut):
    from clipft_utils.errors import WeightsError
    whole, path = tmp_path / "whole.pt", tmp_path / "truncated.pt"
    torch.save({"weight": torch.zeros(64, 64)}, whole, _use_new_zipfile_serialization=cut == "zip")
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError) as err:
        M.load_clip("ToyCLIP", str(path))
    _assert_clear_weights_error(err, path, "a damaged or truncated PyTorch file")
    assert "Python objects" not in str(err.value)


def test_pickle_garbage_is_damage_not_objects(tmp_path):
    from clipft_utils.errors import WeightsError
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"\x80\x02" + bytes(range(33, 233)))
    with pytest.raises(WeightsError) as err:
        M.load_clip("ToyCLIP", str(path))
    _assert_clear_weights_error(err, path, "a damaged PyTorch file")
