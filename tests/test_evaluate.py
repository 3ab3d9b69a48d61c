"""Evaluation metrics on hand-made logits, and evaluate()'s mode handling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clipft_utils.errors import ConfigError
from clipft_utils.evaluate import EvalResult, evaluate, probabilities

# 6 classes, 6 examples. True labels and where each true class ranks:
#   ex0: label 0, argmax 0                 -> top1 hit
#   ex1: label 1, argmax 2, label ranks 2nd -> top5 hit
#   ex2: label 2, argmax 0, label ranks 6th -> miss in top5
#   ex3: label 0, argmax 0                  -> top1 hit
#   ex4: label 3, argmax 0, label ranks 5th -> top5 hit
#   ex5: label 1, argmax 2, label ranks 3rd -> top5 hit
LOGITS = np.array([
    [9, 1, 2, 3, 4, 5],
    [0, 8, 9, 1, 2, 3],
    [9, 8, 0, 7, 6, 5],
    [5, 4, 3, 2, 1, 0],
    [9, 8, 7, 6, 5, 0],
    [0, 7, 9, 1, 8, 2],
], dtype=np.float32)
LABELS = np.array([0, 1, 2, 0, 3, 1])


def test_metrics_on_hand_made_logits():
    r = EvalResult.from_logits(LOGITS, LABELS)
    assert r.top1 == pytest.approx(2 / 6)
    assert r.top5 == pytest.approx(5 / 6)
    np.testing.assert_array_equal(r.preds, [0, 2, 0, 0, 0, 2])
    expected = np.zeros((6, 6), dtype=np.int64)
    for t, p in [(0, 0), (1, 2), (2, 0), (0, 0), (3, 0), (1, 2)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(r.confusion, expected)
    np.testing.assert_allclose(r.per_class_acc[:4], [1.0, 0.0, 0.0, 0.0])
    assert np.isnan(r.per_class_acc[4:]).all()  # classes without examples
    assert r.mean_per_class_acc == pytest.approx(0.25)
    assert r.most_confused(2) == [(1, 2, 2), (2, 0, 1)]
    ce = torch.nn.functional.cross_entropy(torch.tensor(LOGITS), torch.tensor(LABELS)).item()
    assert r.loss == pytest.approx(ce, rel=1e-5)
    assert r.logits.dtype == np.float32 and r.labels.dtype == np.int64 and r.preds.dtype == np.int64


def test_top5_with_fewer_than_five_classes():
    r = EvalResult.from_logits(torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]]), torch.tensor([2, 0]))
    assert r.top1 == 0.0 and r.top5 == 1.0


def test_to_dict_is_json_and_small():
    d = EvalResult.from_logits(LOGITS, LABELS).to_dict(classnames=[f"c{i}" for i in range(6)])
    text = json.dumps(d, allow_nan=False)
    assert "logits" not in d and d["per_class_acc"][4] is None and d["n"] == 6
    assert d["most_confused"][0] == {"true": 1, "pred": 2, "count": 2, "true_name": "c1", "pred_name": "c2"}
    assert len(text) < 2000


def test_bad_labels_raise():
    with pytest.raises(ConfigError):
        EvalResult.from_logits(LOGITS, np.array([0, 1, 2, 0, 3, 6]))
    with pytest.raises(ConfigError):
        EvalResult.from_logits(LOGITS, LABELS, num_classes=5)


def test_probabilities_sum_to_one():
    p = probabilities(LOGITS)
    assert p.dtype == np.float32 and np.allclose(p.sum(1), 1) and (p.argmax(1) == LOGITS.argmax(1)).all()


class Probe(nn.Module):
    """Returns fixed logits per example and records the mode it ran in."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Dropout(0.5)
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.seen.append((self.training, self.inner.training, torch.is_inference_mode_enabled()))
        return torch.from_numpy(LOGITS)[idx.long()]


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluate_uses_eval_mode_and_restores_it(start_training):
    model = Probe().train(start_training)
    model.inner.train(True)  # mixed modes must come back exactly
    loader = DataLoader(TensorDataset(torch.arange(6), torch.tensor(LABELS)), batch_size=4)
    r = evaluate(model, loader)
    assert r.top1 == pytest.approx(2 / 6) and r.logits.shape == (6, 6) and r.logits.dtype == np.float32
    assert all(s == (False, False, True) for s in model.seen)
    assert model.training is start_training and model.inner.training is True


def test_evaluate_bf16_on_cpu_returns_float32():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    loader = DataLoader(TensorDataset(torch.randn(10, 4), torch.randint(0, 3, (10,))), batch_size=4)
    r = evaluate(model, loader, precision="bf16")
    assert r.logits.dtype == np.float32 and r.confusion.sum() == 10
