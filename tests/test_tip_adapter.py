"""Tip-Adapter / Tip-Adapter-F: the cache formula, α = 0 is zero-shot, α and β come from validation, -F trains keys."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clipft_utils.errors import ConfigError
from clipft_utils.methods import tip_adapter as T
from clipft_utils.results import load_predictions, read_result
from clipft_utils.heads import head_logits


def _problem(n_train=24, n_val=12, n_test=12, classes=3, dim=6, seed=0):
    """Clustered features: a noisy text head and a cache of the training features."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)

    def split(n):
        y = torch.arange(n) % classes
        return centres[y] + 0.7 * torch.randn(n, dim, generator=g), y
    text = torch.nn.functional.normalize(centres + 0.8 * torch.randn(classes, dim, generator=g), dim=-1)
    return split(n_train), split(n_val), split(n_test), 20.0 * text  # head = logit_scale · text


def _fs(x, y):
    return SimpleNamespace(features=x, labels=y, seconds=0.01, peak_memory_mb=1.0)


def _course(head, classes, tmp_path=None):
    """What fit_* and save_tip_result read from a Course."""
    return SimpleNamespace(
        zero_shot_head=lambda ensemble=False: head, classnames=[f"c{i}" for i in range(classes)], seed=0,
        device="cpu", results_dir=tmp_path,
        identity=lambda: dict(model="Toy", pretrained="toy", dataset="toyset", profile="smoke", seed=0,
                              standin=True, warnings=["STAND-IN: test"], device="cpu", shots=None))


def test_logits_match_the_formula_written_with_loops():
    (xtr, ytr), _, (xte, _), head = _problem()
    keys, values = T.build_cache(xtr, ytr, 3)
    alpha, beta = 2.5, 3.0
    got = T.tip_logits(xte, head, keys, values, alpha, beta).numpy()
    f = xte.double().numpy()
    k = xtr.double().numpy()
    w = head.double().numpy()
    want = np.zeros((len(f), 3))
    for i in range(len(f)):
        fi = f[i] / math.sqrt(sum(v * v for v in f[i]))
        for c in range(3):
            want[i, c] = sum(fi[d] * w[c, d] for d in range(f.shape[1]))  # logit_scale · cos(f, text)
        for j in range(len(k)):
            kj = k[j] / math.sqrt(sum(v * v for v in k[j]))
            cos = sum(fi[d] * kj[d] for d in range(f.shape[1]))
            want[i, int(ytr[j])] += alpha * math.exp(-beta * (1.0 - cos))  # one-hot value: only its own class
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(values, torch.eye(3)[ytr]) and torch.allclose(keys.norm(dim=1), torch.ones(len(keys)))


def test_alpha_zero_is_exactly_the_zero_shot_head():
    (xtr, ytr), _, (xte, _), head = _problem()
    keys, values = T.build_cache(xtr, ytr, 3)
    for beta in (1.0, 7.0):
        assert torch.equal(T.tip_logits(xte, head, keys, values, 0.0, beta), head_logits(xte, head))
    model = T.TipAdapter(head, keys, values, alpha=0.0, beta=5.5)
    assert torch.equal(model(xte), head_logits(xte, head))


def test_alpha_and_beta_are_chosen_on_validation_never_test():
    # 2 classes; the text head says "x > 0 is class 1", the cache (one image per class) says "y > 0 is class 1".
    head = 2.0 * torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    xtr, ytr = torch.tensor([[0.0, -1.0], [0.0, 1.0]]), torch.tensor([0, 1])
    # validation agrees with the cache, test with the text head: each split would choose a different α
    val_x = torch.tensor([[0.3, -1.0], [-0.3, 1.0]] * 3)
    val_y = torch.tensor([0, 1] * 3)
    test_x = torch.tensor([[-1.0, 0.3], [1.0, -0.3]] * 3)
    test_y = torch.tensor([0, 1] * 3)
    cfg = T.TipAdapterConfig(alphas=(0.1, 30.0), betas=(1.0, 2.0))
    course = _course(head, 2)
    fit = T.fit_tip_adapter(course, cfg, {"train": _fs(xtr, ytr), "val": _fs(val_x, val_y)})
    keys, values = T.build_cache(xtr, ytr, 2)
    on_test = T.search_alpha_beta(test_x, test_y, head, keys, values, cfg.alphas, cfg.betas)
    assert (fit.search.alpha, fit.search.best_val_acc) == (30.0, 1.0)
    assert on_test.alpha == 0.1 and on_test.best_val_acc == 1.0  # what test would have chosen: not used
    assert fit.adapter.alpha == 30.0 and fit.logits(test_x).argmax(1).eq(test_y).float().mean() == 0.0
    # ties go to the smallest α, then the smallest β
    tie = T.search_alpha_beta(val_x, val_y, head, keys, values, (30.0, 60.0), (2.0, 1.0))
    assert (tie.alpha, tie.beta) == (30.0, 1.0) and tie.val_acc.shape == (2, 2)


def test_tip_adapter_f_trains_the_keys_only(tmp_path):
    (xtr, ytr), (xva, yva), (xte, yte), head = _problem(n_train=60, n_val=30, n_test=30, seed=1)
    course = _course(head, 3, tmp_path)
    feats = {"train": _fs(xtr, ytr), "val": _fs(xva, yva), "test": _fs(xte, yte)}
    cfg = T.TipAdapterFConfig(epochs=15, batch_size=16, lr=1e-2, train_alpha=1.0, train_beta=1.0)
    fit = T.fit_tip_adapter_f(course, cfg, feats)
    keys, values = T.build_cache(xtr, ytr, 3)
    losses = [h["train_loss"] for h in fit.train.history[1:]]          # epoch 0 trains nothing
    assert len(losses) == 15 and losses[-1] < losses[0]
    assert not torch.allclose(fit.adapter.keys, keys)            # the keys learned
    assert torch.equal(fit.adapter.values, values)               # the values did not
    assert torch.equal(fit.adapter.head, head)                   # nor the text head
    assert fit.trainable_params == keys.numel() and not fit.adapter.keys.requires_grad
    assert T.apply(fit.adapter) == [{"name": "keys", "params": [fit.adapter.keys]}]
    assert (fit.adapter.alpha, fit.adapter.beta) == (fit.search.alpha, fit.search.beta)
    assert (fit.train_alpha, fit.train_beta) == (1.0, 1.0) and fit.first_search is None
    # the result row: α, β in the config, trainable N·D, val and test predictions saved
    path = T.save_tip_result(course, fit, cfg, feats, tower_params=1000, model_folder=False)  # no tower here:
    # the model folder and its predict parity are tested in tests/test_modelfolder.py
    row = read_result(path)
    assert row["method"] == "tip_adapter_f" and row["config"]["alpha"] == fit.search.alpha
    assert row["config"]["beta"] == fit.search.beta and row["config"]["train_alpha"] == 1.0
    assert row["trainable_params"] == keys.numel() and row["total_params"] == 1000 + keys.numel()
    assert row["val_acc"] == pytest.approx(fit.search.best_val_acc) and "STAND-IN" in row["label"]
    logits, labels = load_predictions(tmp_path, path.stem, "val")
    assert logits.shape == (30, 3) and np.array_equal(labels, yva.numpy())


def test_training_alpha_beta_default_to_tip_adapters_validation_choice():
    (xtr, ytr), (xva, yva), _, head = _problem(seed=2)
    course = _course(head, 3)
    feats = {"train": _fs(xtr, ytr), "val": _fs(xva, yva)}
    tip = T.fit_tip_adapter(course, T.TipAdapterConfig(), feats)
    fit = T.fit_tip_adapter_f(course, T.TipAdapterFConfig(epochs=1, batch_size=8), feats, tip=tip)
    assert (fit.train_alpha, fit.train_beta) == (tip.search.alpha, tip.search.beta)
    assert fit.first_search is tip.search and tip.trainable_params == 0


@pytest.mark.parametrize("cls, bad, fix", [
    (T.TipAdapterConfig, {"alphas": ()}, "alphas=[...]"),
    (T.TipAdapterConfig, {"alphas": (1.0, -2.0)}, "alphas=[...]"),
    (T.TipAdapterConfig, {"betas": "big"}, "betas=[...]"),
    (T.TipAdapterConfig, {"betas": (float("nan"),)}, "betas=[...]"),
    (T.TipAdapterConfig, {"templates": "both"}, "templates='single'"),
    (T.TipAdapterFConfig, {"train_alpha": 0.0}, "train_alpha=None"),
    (T.TipAdapterFConfig, {"train_beta": True}, "train_beta=None"),
    (T.TipAdapterFConfig, {"alphas": (0,)}, "alphas=[...]"),
    (T.TipAdapterFConfig, {"lr": -1.0}, "lr=<a value > 0>"),
])
def test_bad_config_values_name_the_fix(cls, bad, fix):
    with pytest.raises(ConfigError) as err:
        cls(**bad)
    assert fix in str(err.value) and "Fix:" in str(err.value)


def test_cache_labels_out_of_range_name_the_fix():
    with pytest.raises(ConfigError, match="Fix: pass num_classes"):
        T.build_cache(torch.randn(2, 3), torch.tensor([0, 5]), 3)


def test_the_grid_heatmap_outlines_the_choice():
    from matplotlib.patches import Rectangle

    from clipft_utils import plots
    fig = plots.value_grid(np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]), [1.0, 2.0], [0.1, 1.0, 10.0],
                           title="t", mark=(2.0, 1.0))
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(boxes) == 1 and boxes[0].get_xy() == (0.5, 0.5)
    assert [t.get_text() for t in ax.texts][:3] == ["10.0%", "20.0%", "30.0%"]
