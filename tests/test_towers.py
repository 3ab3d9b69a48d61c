"""Every open_clip tower family at its real shapes with random weights (nothing downloaded): what applies and what is
refused, one training step per method that applies, LoRA merged equal to unmerged, model folders that reload to the
same logits, ONNX parity, and the text-side methods on open_clip text towers (CLIP's and CustomTextCLIP's)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from _helpers import changed_by_one_step
from test_modelfolder import colour_folder

from clipft_utils import setup, towers, train_method
from clipft_utils.errors import ConfigError, NotApplicableError, OfflineError
from clipft_utils.methods import apply_method, get, make_config, names
from clipft_utils.methods import lora
from clipft_utils.methods.base import reason_not_applicable
from clipft_utils.methods.params import parameter_table
from clipft_utils.models import CLIPClassifier, architecture_of, load_clip, meta_model
from clipft_utils.modelfolder import load_model, model_path, plain

MODELS = {"resnet": "RN50", "timm-vit": "ViT-B-16-SigLIP", "timm-eva": "EVA02-B-16", "timm-convnext": "convnext_tiny",
          "timm-fastvit": "MobileCLIP-S1"}
"""One model of each family (the smallest open_clip offers where it has several)."""
SEQUENCE = ("timm-vit", "timm-eva")  # token sequences: prompts and prefixes apply
EVERYWHERE = ("zero_shot", "linear_probe", "tip_adapter", "tip_adapter_f", "bitfit", "lora", "full_finetune", "coop",
              "clip_lora")


@pytest.mark.parametrize("family", list(MODELS))
def test_every_method_is_counted_or_refused_with_a_reason(family: str) -> None:
    """The parameter table on the architecture (meta device: shapes, no values) lists every registered method."""
    name = MODELS[family]
    arch = architecture_of(name)
    assert arch.image.family == family and arch.text == ""  # open_clip's own text transformer in all five
    rows = {r["method"]: r for r in parameter_table(name, clip=meta_model(name), every=True)}
    assert list(rows) == list(names())
    for method in EVERYWHERE:
        assert rows[method]["applicable"], (method, rows[method])
    for method in ("bitfit", "lora", "full_finetune", "coop", "clip_lora"):
        assert rows[method]["trainable"] > 0, method
    prefix = rows["prefix_tuning"]
    if family in SEQUENCE:
        assert prefix["applicable"] and prefix["trainable"] > 0
    else:
        assert not prefix["applicable"] and "token" in prefix["reason"]


def test_the_families_offer_the_lora_targets_their_modules_hold() -> None:
    targets = {f: architecture_of(m).image.lora_targets() for f, m in MODELS.items()}
    assert targets["resnet"] == ("q", "k", "v", "out")            # the attention pool only
    assert targets["timm-convnext"] == ("fc", "proj")              # MLP linears only: LoRA's default goes there
    assert targets["timm-fastvit"] == ("q", "k", "v", "out")      # the attention blocks of the last stage
    assert targets["timm-vit"] == targets["timm-eva"] == ("q", "k", "v", "out", "fc", "proj")
    cfg = make_config("lora", targets=("fc",))
    reason = reason_not_applicable(get("lora"), architecture_of("RN50"), cfg)
    assert "['fc'] do not exist" in reason and "attention pool" in reason


@pytest.fixture(scope="module", params=list(MODELS))
def tower(request):
    """(family, the model's image tower with random weights)."""
    loaded = load_clip(MODELS[request.param], "random")
    with torch.no_grad():  # open_clip starts each bottleneck's last BatchNorm scale at 0: no gradient would enter it
        for name, p in loaded.model.visual.named_parameters():
            if name.endswith("bn3.weight") and not p.any():
                p.fill_(1.0)
    for m in loaded.model.visual.modules():  # stochastic depth drops whole blocks of a 1-image batch: not here
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
    yield request.param, loaded.model.visual, loaded.image_size
    del loaded


def _one_step(visual: nn.Module, size: int, method: str, **overrides) -> tuple[nn.Module, set[str], set[str]]:
    """A classifier over a copy of the tower, ``method`` applied, one AdamW step on one image: (classifier, what
    changed, what was trainable)."""
    torch.manual_seed(0)
    found = towers.facts(visual)
    clf = CLIPClassifier(copy.deepcopy(visual), torch.nn.functional.normalize(torch.randn(3, found.output_dim), dim=-1))
    groups = apply_method(method, clf, make_config(method, **overrides))
    trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
    clf.train()
    changed = changed_by_one_step(clf, groups, torch.randn(1, 3, size, size), torch.tensor([1]))
    return clf, changed, trainable


def _methods(family: str, tower_specific: bool) -> list[tuple[str, dict]]:
    """The image methods that apply to ``family``: those whose code differs by family (BitFit's biases, LoRA's hosts,
    the prefix's blocks), or the others (the head alone, the whole tower, the two prompt variants)."""
    if tower_specific:
        return [("bitfit", {}), ("lora", {})] + ([("prefix_tuning", {})] if family in SEQUENCE else [])
    return [("linear_probe", {}), ("full_finetune", {})] + (
        [("prefix_tuning", {"kind": "prompt"}), ("prefix_tuning", {"kind": "vpt_deep"})] if family in SEQUENCE else [])


def test_one_step_of_each_tower_specific_method_trains_exactly_its_parameters(tower) -> None:
    family, visual, size = tower
    with torch.no_grad():
        assert visual.eval()(torch.randn(1, 3, size, size)).shape[-1] == towers.facts(visual).output_dim
    _steps(family, visual, size, tower_specific=True)


@pytest.mark.slow
def test_one_step_of_each_other_method_trains_exactly_its_parameters(tower) -> None:
    _steps(*tower, tower_specific=False)


def _steps(family: str, visual: nn.Module, size: int, tower_specific: bool) -> None:
    """One step of each method of ``_methods``: exactly its parameters change, BatchNorm statistics never; LoRA merged
    gives the unmerged logits."""
    stats = {n: b.clone() for n, b in visual.named_buffers() if "running" in n}
    for method, overrides in _methods(family, tower_specific):
        clf, changed, trainable = _one_step(visual, size, method, **overrides)
        assert changed == trainable and "head.weight" in changed, (family, method, overrides)
        assert all(torch.equal(b, stats[n]) for n, b in clf.visual.named_buffers() if n in stats), "BatchNorm stats"
        if method == "lora":
            clf.eval()
            x = torch.randn(2, 3, size, size)
            with torch.no_grad():
                before = clf(x)
                after = plain(clf, "lora")(x)   # merged into the weights, the stock modules back
            assert not any(isinstance(m, lora.HOSTS) for m in clf.modules())
            assert torch.allclose(before, after, atol=1e-4, rtol=1e-4), (family, (before - after).abs().max())


def test_a_method_that_does_not_apply_is_refused_before_any_work(tower) -> None:
    family, visual, _ = tower
    if family in SEQUENCE:
        pytest.skip("prompts and prefixes apply to this family")
    clf = CLIPClassifier(copy.deepcopy(visual), torch.randn(3, towers.facts(visual).output_dim))
    with pytest.raises(NotApplicableError) as err:
        apply_method("prefix_tuning", clf, make_config("prefix_tuning"))
    text = str(err.value)
    assert "Prefix-tuning does not apply" in text and towers.FAMILIES[family] in text
    assert "Methods that apply" in text and "lora" in text and "Fix:" in text
    assert not any(p.requires_grad for p in clf.visual.parameters())  # nothing was touched


@pytest.mark.slow
@pytest.mark.parametrize("family,methods", [("resnet", ("bitfit", "lora")), ("timm-vit", ("lora", "prefix_tuning")),
                                            ("timm-eva", ("prefix_tuning",)), ("timm-convnext", ("lora",)),
                                            ("timm-fastvit", ("lora", "full_finetune"))])
def test_model_folders_reload_to_the_same_logits_and_export_to_onnx(tmp_path, family, methods) -> None:
    pytest.importorskip("onnxruntime")
    from clipft_utils import export
    folder = colour_folder(tmp_path / "photos", per_class=3)
    course = setup("smoke", model=MODELS[family], pretrained="random", dataset=str(folder), device="cpu",
                   test_per_class=0, batch_size=2, results_dir=str(tmp_path / "results"))
    head = 10 * torch.nn.functional.normalize(torch.randn(3, course.loaded.embed_dim), dim=-1)  # no tokenizer needed
    images = next(iter(course.loader("test")))[0]
    for method in methods:
        extra = {"warmup_epochs": 0.0} if method == "full_finetune" else {}
        cfg = make_config(method, course.profile, epochs=1, max_steps_per_epoch=1, **extra)
        clf = course.classifier(head)
        train_method(course, method, cfg, clf, apply_method(method, clf, cfg), progress=False)
        saved_folder = model_path(course.results_dir, course.run_name(method))
        reloaded, saved, _ = load_model(saved_folder)
        with torch.no_grad():
            mine, theirs = clf.eval()(images), reloaded(images)
        if saved.manifest["dtype"] == "fp16":   # a large fine-tuned tower, kept in fp16 as no test prediction changed
            assert torch.equal(mine.argmax(1), theirs.argmax(1)) and torch.allclose(mine, theirs, atol=1e-2), method
        else:
            assert torch.allclose(mine, theirs, atol=1e-5), (family, method)
        if method == methods[-1]:
            info = export.export_onnx(saved_folder, tmp_path / f"{method}.onnx", echo=lambda _: None)
            assert info["max_abs_diff"] <= export.ONNX_TOLERANCE
    if family == "timm-fastvit":  # open_clip's own layout, loaded back by name as `local-dir:`
        out = tmp_path / "open_clip"
        assert export.export_open_clip(saved_folder, out, echo=lambda _: None)["max_abs_diff"] <= 1e-4
        assert architecture_of(f"local-dir:{out}").image.family == family
        assert load_clip(f"local-dir:{out}", "openai").weights_id.startswith("file-")


@pytest.mark.parametrize("name", ["RN50", "EVA02-B-16"])
def test_the_text_side_methods_run_on_clip_and_custom_text_towers(name: str) -> None:
    """CoOp and CLIP-LoRA on CLIP's text tower (RN50) and on CustomTextCLIP's TextTransformer (EVA02): one step."""
    from clipft_utils import textside
    from clipft_utils.methods import clip_lora, coop
    loaded = load_clip(name, "random")
    for method, spec in (("coop", coop), ("clip_lora", clip_lora)):
        clf = textside.build(loaded, ["red rose", "sky lily", "fern"], ["a photo of a {}."])
        groups = spec.apply(clf, make_config(method, n_ctx=4) if method == "coop" else make_config(method))
        trainable = {n for n, p in clf.named_parameters() if p.requires_grad}
        clf.train()
        size = loaded.image_size
        changed = changed_by_one_step(clf, groups, torch.randn(1, 3, size, size), torch.tensor([0]))
        assert changed == trainable and trainable, (name, method)


def test_siglip_image_side_runs_offline_and_its_tokenizer_is_an_offline_error_naming_the_prefetch() -> None:
    loaded = load_clip("ViT-B-16-SigLIP", "random")            # no tokenizer needed to load it
    with pytest.raises(OfflineError) as err:
        loaded.tokenizer
    assert "timm/ViT-B-16-SigLIP" in str(err.value) and "prefetch --model ViT-B-16-SigLIP" in str(err.value)
    from clipft_utils.course.bench import main as bench
    with pytest.raises(OfflineError):                          # before any work: CoOp needs the tokenizer
        bench(["--model", "ViT-B-16-SigLIP", "--variants", "coop", "--steps", "1", "--batch-size", "1"])
    from clipft_utils import costs                             # its attention pool's latent (a parameter) is
    images = torch.zeros(1, 3, *loaded.model.visual.image_size)  # counted without gradients (bench died here)
    assert costs.flops_per_image(loaded.model.visual, images) > 3e10


def test_a_hugging_face_text_tower_refuses_the_text_side_methods() -> None:
    transformers = pytest.importorskip("transformers")
    from open_clip.hf_model import HFTextEncoder
    from clipft_utils import textside
    model = meta_model("EVA02-B-16")                           # a CustomTextCLIP: its .text is the text tower
    model.text = HFTextEncoder("roberta", 512, config=transformers.RobertaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64), pretrained=False)
    arch = towers.architecture(model, "hf-text-clip")
    for method in ("coop", "clip_lora"):
        assert "Hugging Face" in reason_not_applicable(get(method), arch)
    assert reason_not_applicable(get("lora"), arch) is None   # the image side still applies
    with pytest.raises(ConfigError, match="HFTextEncoder"):
        textside.TextTower(model)


@pytest.mark.slow
def test_a_run_on_a_resnet_skips_prefix_tuning_saying_why_and_07_shows_it_not_applicable(tmp_path) -> None:
    """The runner, notebook 04 and 07 on RN50 (random weights, a 3-class folder): prefix-tuning is planned as not
    applicable, its cells say why instead of running, CoOp (04's other section) trains, 07 tells the two apart."""
    import nbformat
    from clipft_utils.course import runner
    folder = colour_folder(tmp_path / "photos", per_class=3)
    lines: list[str] = []
    report = runner.run_all("smoke", root=tmp_path / "results", device="cpu", data=str(folder), only=["prefix_tuning"],
                            extra={"epochs": 1, "model": "RN50", "pretrained": "random", "test_per_class": 0,
                                   "batch_size": 2}, echo=lines.append)
    assert report.ok, "\n".join(report.lines())
    assert any("prefix_tuning: not applicable (a convolutional tower" in line for line in lines)
    cells = nbformat.read(report.folder / "notebooks" / "04_prefix_tuning.ipynb", as_version=4).cells
    text = "\n".join(o.get("text", "") for c in cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "Prefix-tuning does not apply to RN50 (open_clip ModifiedResNet)" in text
    assert "(skipped: Prefix-tuning does not apply to RN50" in text and "CoOp (M=16)" in text
    summary = (report.folder / "summary.md").read_text()
    assert "not applicable: a convolutional tower" in summary and (report.folder / "coop_seed0.json").exists()
