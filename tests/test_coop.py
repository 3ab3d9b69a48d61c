"""CoOp: the untrained prompt from the course's template IS zero-shot; only the context trains; config errors; a run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipft_utils import textside
from clipft_utils.methods import make_config
from clipft_utils.course import setup, train_method
from clipft_utils.evaluate import evaluate
from clipft_utils.heads import head_path, load_head
from clipft_utils.results import read_result
from clipft_utils.errors import ConfigError
from clipft_utils.methods import coop
from clipft_utils.models import build_classifier, zero_shot_head

from _helpers import changed_by_one_step, random_images as images  # the `toy` fixture is in conftest.py


def test_template_init_equals_zero_shot(toy):
    loaded, classnames, templates = toy
    words = templates[0].split("{}")[0].split()
    zs = build_classifier(loaded, zero_shot_head(loaded, classnames, templates)).eval()
    clf = textside.build(loaded, classnames, templates).eval()
    coop.apply(clf, coop.CoOpConfig(n_ctx=len(words), ctx_init=templates[0], init="words"))
    assert clf.prompts.from_words and clf.prompts.shape.endswith(templates[0].split("{}")[1])
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(clf(x), zs(x), atol=1e-5, rtol=0)
    assert coop.nearest_words(clf) == [[w] for w in words]  # the context still reads as the template's words


def test_m4_starts_from_a_photo_of_a_and_m16_is_random(toy):
    loaded, classnames, templates = toy
    clf = textside.build(loaded, classnames, templates)
    coop.apply(clf, coop.CoOpConfig(n_ctx=4))
    table = clf.text.token_embedding.weight
    ids = loaded.tokenizer(["a photo of a"])[0, 1:5]
    assert torch.equal(clf.prompts.ctx.detach(), table[ids]) and clf.prompts.init_words == "a photo of a"
    assert clf.prompts.texts[0].endswith(f"{classnames[0]}.")  # CoOp's closing '.', class name at the end
    coop.apply(clf, coop.CoOpConfig())  # M = 16: more slots than init words -> CoOp's N(0, 0.02) init
    assert clf.prompts.ctx.shape == (16, table.shape[1]) and not clf.prompts.from_words
    assert 0.01 < clf.prompts.ctx.std().item() < 0.03


def test_only_the_context_trains(toy):
    loaded, classnames, templates = toy
    clf = textside.build(loaded, classnames, templates)
    groups = coop.apply(clf, coop.CoOpConfig(n_ctx=4))
    assert [n for n, p in clf.named_parameters() if p.requires_grad] == ["prompts.ctx"]
    changed = changed_by_one_step(clf.train(), groups, images(), torch.tensor([0, 1, 2, 3, 4, 5]))
    assert changed == {"prompts.ctx"}


def test_eval_cache_follows_the_context(toy):
    loaded, classnames, templates = toy
    clf = textside.build(loaded, classnames, templates).eval()
    coop.apply(clf, coop.CoOpConfig(n_ctx=4))
    x = images(2)
    with torch.no_grad():
        before, features = clf(x), clf.text_features()
        assert torch.equal(clf(x), before) and clf.text_features() is features  # served from the cache
        clf.prompts.ctx.add_(torch.randn_like(clf.prompts.ctx))  # in place: bumps the version, so no stale cache
        after, changed = clf(x), clf.text_features()
        clf._cache = None
        fresh = clf.text_features()                                # computed from scratch
    assert changed is not features and not torch.equal(changed, features)
    torch.testing.assert_close(changed, fresh, rtol=0, atol=0)
    assert not torch.equal(before, after)
    with torch.no_grad():
        torch.testing.assert_close(clf.head_tensors()[0], clf.logit_scale * clf.text_features())


@pytest.mark.parametrize("bad, field", [({"n_ctx": 0}, "n_ctx"), ({"n_ctx": 2.5}, "n_ctx"),
                                        ({"init": "zeros"}, "init"), ({"ctx_init": "{} and {}"}, "ctx_init"),
                                        ({"init": "words", "ctx_init": "{}."}, "init")])
def test_config_errors_name_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        coop.CoOpConfig(**bad)


def test_apply_errors(toy):
    loaded, classnames, templates = toy
    clf = textside.build(loaded, classnames, templates)
    with pytest.raises(ConfigError, match="n_ctx=4"):  # 'a photo of a' is 4 tokens, not 6
        coop.apply(clf, coop.CoOpConfig(n_ctx=6, init="words"))
    with pytest.raises(ConfigError, match="fewer context tokens"):  # longer than ToyCLIP's 32 positions
        coop.apply(clf, coop.CoOpConfig(n_ctx=20, ctx_init=templates[0]))
    with pytest.raises(ConfigError, match="textside.classifier"):
        coop.apply(build_classifier(loaded, torch.zeros(len(classnames), 128)), coop.CoOpConfig())


def test_a_short_run_through_train_method(tmp_path):
    """The course's path: make_config -> apply -> train_method (engine, evaluation, result JSON, head)."""
    course = setup("smoke", shots=1, val_shots=1, test_per_class=1, results_dir=str(tmp_path / "results"))
    cfg = make_config("coop", "smoke", epochs=1, n_ctx=4)
    clf = textside.classifier(course)
    groups = coop.apply(clf, cfg)
    frozen = {n: p.detach().clone() for n, p in clf.named_parameters() if not p.requires_grad}
    start = clf.prompts.ctx.detach().clone()
    out = train_method(course, "coop", cfg, clf, groups, progress=False, checkpoint=False)
    assert not torch.equal(clf.prompts.ctx, start)
    params = dict(clf.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())
    saved = read_result(out.path)
    assert (saved["method"], saved["trainable_params"]) == ("coop", 4 * clf.text.token_embedding.weight.shape[1])
    assert saved["test_acc"] == pytest.approx(out.test.top1)
    head = load_head(head_path(course.results_dir, course.run_name("coop")))
    again = evaluate(course.classifier(head["weight"]), course.loader("test"), device=course.device)
    np.testing.assert_allclose(again.logits, out.test.logits, atol=1e-4)  # frozen image tower: the head IS CoOp
