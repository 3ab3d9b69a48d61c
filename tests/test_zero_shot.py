"""Zero-shot from cached features equals the classifier with the zero-shot head; heads survive a round trip."""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clipft_utils import heads
from clipft_utils.methods import zero_shot as Z
from clipft_utils.errors import ResultsError
from clipft_utils.models import CLIPClassifier, logit_scale, text_embeddings


@pytest.fixture(scope="module")
def course(session_data, tmp_path_factory):
    """The real smoke course (ToyCLIP on SynthFlowers), 3 test images per class."""
    from clipft_utils import setup
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPFT_DATA", session_data)
        yield setup("smoke", test_per_class=3, results_dir=str(tmp_path_factory.mktemp("zs-results")))


def test_zero_shot_logits_equal_classifier_with_zero_shot_head(course):
    feats = course.features("test", progress=False)
    text = Z.class_embeddings(course.loaded, course.classnames, course.templates())
    ours = Z.zero_shot_logits(feats.features, text, logit_scale(course.loaded))
    clf = course.classifier()  # head = course.zero_shot_head()
    with torch.inference_mode():
        images = torch.stack([course.splits["test"][i][0] for i in range(len(feats.labels))])
        theirs = clf.eval()(images.to(course.device)).cpu()
    torch.testing.assert_close(ours, theirs, atol=2e-3, rtol=1e-4)
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() > 0.99


def test_zero_shot_logits_on_a_toy_tower():
    torch.manual_seed(0)
    visual = torch.nn.Linear(12, 6)
    text = F.normalize(torch.randn(4, 6), dim=-1)
    x = torch.randn(9, 12)
    clf = CLIPClassifier(visual, 50.0 * text)
    torch.testing.assert_close(Z.zero_shot_logits(visual(x), text, 50.0), clf(x))
    torch.testing.assert_close(heads.head_logits(visual(x), 50.0 * text, torch.zeros(4)), clf(x))


def test_ensemble_of_one_template_equals_single(course):
    single, names = course.templates(), course.classnames[:8]  # a few classes keep the text tower cheap
    assert len(single) == 1 and len(course.templates(ensemble=True)) > 1
    one = Z.class_embeddings(course.loaded, names, single)
    direct = text_embeddings(course.loaded, [single[0].format(c) for c in names]).cpu()
    torch.testing.assert_close(one, direct, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(Z.class_embeddings(course.loaded, names, single * 2), one, atol=1e-5, rtol=1e-5)
    many = Z.class_embeddings(course.loaded, names, course.templates(ensemble=True))
    assert not torch.allclose(many, one)
    torch.testing.assert_close(many.norm(dim=-1), torch.ones(len(names)))


def test_head_file_round_trip(tmp_path):
    weight = torch.randn(5, 3)
    path = heads.save_head(heads.head_path(tmp_path, "zero_shot"), 2 * weight, templates=["a {}."], model="ToyCLIP")
    assert path == tmp_path / "heads" / "zero_shot.safetensors" and not list(path.parent.glob(".*tmp"))
    head = heads.load_head(path)
    torch.testing.assert_close(head["weight"], 2 * weight)
    torch.testing.assert_close(head["bias"], torch.zeros(5))
    assert head["templates"] == ["a {}."] and head["model"] == "ToyCLIP"
    assert heads.find_head(tmp_path, "zero_shot")["model"] == "ToyCLIP" and heads.find_head(tmp_path, "lora_seed0") is None
    with pytest.raises(ResultsError, match="bias"):
        heads.save_head(tmp_path / "bad.safetensors", weight, torch.zeros(4))
    with pytest.raises(ResultsError, match="No classifier head"):
        heads.load_head(tmp_path / "missing.safetensors")


class _Payload:
    """A pickle that would leave a file behind if anything unpickled it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("damage", ["truncated", "torch pickle", "malicious pickle", "other safetensors"])
def test_a_damaged_or_foreign_head_is_a_weights_error_naming_it_and_nothing_unpickles(tmp_path, damage):
    import pickle
    from safetensors.torch import save_file
    from clipft_utils.errors import WeightsError
    path = heads.save_head(heads.head_path(tmp_path, "linear_probe_seed0"), torch.randn(4, 3))
    marker = tmp_path / "unpickled"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "torch pickle":
        torch.save({"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}, path)
    elif damage == "malicious pickle":
        path.write_bytes(pickle.dumps({"weight": _Payload(marker)}))
    else:
        save_file({"weight": torch.zeros(4, 3)}, str(path))
    with pytest.raises(WeightsError) as err:
        heads.find_head(tmp_path, "linear_probe_seed0")
    text = str(err.value)
    assert str(path) in text and "./run_all.sh" in text and "--only linear_probe --seeds 0" in text, text
    assert "weights_only" not in text and not marker.exists()


def test_template_accuracy_ranks_on_validation_and_shows_test():
    # two classes along the axes; template "a" is right on validation only, "b" on test only, "c" on neither
    right, swapped = torch.eye(2), torch.eye(2).flip(0)
    per_template = torch.stack([right, swapped, swapped], dim=1)  # [C=2, T=3, D=2]
    val = SimpleNamespace(features=torch.tensor([[1.0, 0.1], [0.1, 1.0]]), labels=torch.tensor([0, 1]))
    test = SimpleNamespace(features=val.features, labels=torch.tensor([1, 0]))
    table = Z.template_accuracy(per_template, ["a {}", "b {}", "c {}"], {"val": val, "test": test}, scale=10.0)
    assert list(table.columns) == ["val top-1", "test top-1"]
    assert list(table.index) == ["a {}", "b {}", "c {}"]           # ranked on validation; the b/c tie keeps order
    assert table.loc["a {}"].tolist() == [1.0, 0.0] and table.loc["b {}"].tolist() == [0.0, 1.0]
    assert list(Z.template_accuracy(per_template, ["a {}", "b {}", "c {}"], {"val": val, "test": test},
                                    rank_on="test").index)[0] == "b {}"
    with pytest.raises(ValueError, match="one embedding per template"):
        Z.template_accuracy(per_template, ["a {}"], {"val": val})


def test_the_zero_shot_head_is_cached_exactly_and_random_towers_of_other_seeds_get_their_own(monkeypatch):
    """Every notebook needs the zero-shot head: it is computed once (the text tower takes seconds to tens of seconds
    per pass on a CPU) and read back bit for bit; random weights drawn with another seed are another model."""
    from clipft_utils import features, models
    from clipft_utils.seeding import seed_everything
    calls = []
    real = models.zero_shot_head
    monkeypatch.setattr(models, "zero_shot_head", lambda *a: calls.append(1) or real(*a))
    names, templates = ["rose", "lily", "tulip"], ["a photo of a {}."]
    seed_everything(0)
    first = models.load_clip("ToyCLIP", "random")
    head = features.zero_shot_head(first, names, templates)
    again = features.zero_shot_head(first, names, templates)
    assert len(calls) == 1 and torch.equal(head, again) and torch.equal(head, real(first, names, templates).cpu())
    features.zero_shot_head(first, names, ["a {} flower."])              # other templates: computed
    assert len(calls) == 2
    seed_everything(1)
    other = models.load_clip("ToyCLIP", "random")                       # another random tower, same weights id
    assert other.weights_id == first.weights_id == "random"
    assert features.weights_key("random", other.model.visual) != features.weights_key("random", first.model.visual)
    assert not torch.equal(features.zero_shot_head(other, names, templates), head) and len(calls) == 3
    for cached in features.cache_dir("text").glob("ToyCLIP_*.safetensors"):
        cached.write_bytes(b"\x00" * 10)                                # damaged: a warning, then recomputed
    with pytest.warns(UserWarning, match="damaged"):
        assert torch.equal(features.zero_shot_head(first, names, templates), head) and len(calls) == 4


@pytest.mark.parametrize("change", ["values", "no digest"])
def test_a_zero_shot_head_cache_with_other_values_is_named_and_rebuilt(change):
    """A valid safetensors file whose values changed (or that records no digest) is never used: the warning names the
    file and what is wrong, and the head is computed again."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from clipft_utils import features, models
    from clipft_utils.seeding import seed_everything
    seed_everything(0)
    loaded = models.load_clip("ToyCLIP", "random")
    names, templates = ["rose", "lily"], [f"a {change} photo of a {{}}."]
    head = features.zero_shot_head(loaded, names, templates)
    path = features.head_cache_path(loaded, names, templates)
    assert torch.equal(safe_open(str(path), "pt").get_tensor("head"), head)
    meta = safe_open(str(path), "pt").metadata() if change == "values" else None
    save_file({"head": head * (1.5 if change == "values" else 1)}, str(path), metadata=meta)
    problem = "does not match its recorded digest" if change == "values" else "records no digest"
    with pytest.warns(UserWarning, match=f"zero-shot head cache '{path}' {problem}.*rebuilding it"):
        assert torch.equal(features.zero_shot_head(loaded, names, templates), head)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(features.zero_shot_head(loaded, names, templates), head)    # rebuilt, whole again
