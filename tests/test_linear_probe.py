"""Linear probe: C is chosen on validation, the torch recipe learns, and a second run only reads the cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from clipft_utils.methods import linear_probe as LP
from clipft_utils.methods import make_config
from clipft_utils.heads import head_logits

GRID = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)


def _two_blobs(n0: int = 30, n1: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two separable classes along the first axis, class 0 the majority."""
    rng = np.random.default_rng(seed)
    x0 = np.c_[rng.normal(-1, 0.2, n0), np.ones(n0)]
    x1 = np.c_[rng.normal(+1, 0.2, n1), np.ones(n1)]
    return np.r_[x0, x1].astype(np.float32), np.r_[np.zeros(n0), np.ones(n1)].astype(np.int64)


def test_sklearn_sweep_picks_c_on_validation():
    x, y = _two_blobs()
    same = LP.sklearn_sweep(x, y, x, y, GRID, max_iter=200)
    assert same.best_val_acc == 1.0 and same.best_c > GRID[0]  # the tiny C predicts the majority class only
    # A validation set that only a (nearly) constant classifier gets right: class-1 features labelled 0.
    xv, _ = _two_blobs(0, 10, seed=1)
    odd = LP.sklearn_sweep(x, y, xv, np.zeros(len(xv), dtype=np.int64), GRID, max_iter=200)
    assert odd.best_c == GRID[0] and odd.best_val_acc == 1.0
    assert odd.val_acc[-1] == 0.0
    for r in (same, odd):
        assert r.c_values == sorted(GRID) and r.best_c == r.c_values[int(np.argmax(r.val_acc))]
        assert r.weight.shape == (2, 2) and r.bias.shape == (2,)


def test_sweep_head_reproduces_its_validation_accuracy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 8))
    y = np.repeat(np.arange(4), 25)
    x = torch.tensor(centres[y] + rng.normal(scale=0.8, size=(100, 8)), dtype=torch.float32)
    r = LP.sklearn_sweep(x[::2], y[::2], x[1::2], y[1::2], GRID, max_iter=300, patience=2)
    acc = (head_logits(x[1::2], r.weight, r.bias).argmax(1).numpy() == y[1::2]).mean()
    assert acc == pytest.approx(r.best_val_acc)
    assert len(r.c_values) + len(r.skipped) == len(GRID)


def test_warm_started_sweep_keeps_fitting_at_large_c():
    # sklearn's tolerance is absolute: warm-starting C=1000 from the C=300 optimum without rescaling stops
    # after 0 iterations here, silently reusing the C=300 head.
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(20), 50)
    x = (rng.normal(size=(20, 32))[y] + 2.5 * rng.normal(size=(1000, 32))).astype(np.float32)
    r = LP.sklearn_sweep(x, y, x, y, (300.0, 1000.0))
    assert all(n > 0 for n in r.n_iter), r.n_iter


def test_torch_probe_learns_a_separable_problem():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(3).repeat_interleave(40)
    x = centres[y] + 0.3 * torch.randn(len(y), 8, generator=g)
    cfg = make_config("linear_probe", "smoke", epochs=15, lr=0.05, batch_size=32)
    probe, train = LP.train_torch_probe(x[::2], y[::2], x[1::2], y[1::2], cfg, seed=0)
    assert train.best_val_acc == 1.0 and 2 <= len(train.history) <= 16     # epoch 0 (the start) + 1 to 15
    assert (probe(x[1::2]).argmax(1) == y[1::2]).all()
    start = torch.randn(3, 8)
    assert torch.equal(LP.LinearProbe(8, 3, init=start).head.weight, start)


def _small_course(results_dir):
    """The real smoke course, cut to 2 train and 2 validation images per class and 3 test images per class."""
    from clipft_utils import setup
    from clipft_utils.data import few_shot_indices
    course = setup("smoke", shots=2, test_per_class=3, results_dir=str(results_dir))
    val = course.splits["val"]
    course.splits["val"] = val.subset(few_shot_indices(val.targets, 2, 0))
    return course


def test_second_run_reuses_the_feature_cache(tmp_path, monkeypatch):
    cfg = make_config("linear_probe", "smoke", epochs=3, c_grid=(0.1, 1.0, 10.0), max_iter=100)

    def run(course) -> tuple[dict, float]:
        head = LP.fit_best_head(course, cfg)
        test = course.features("test", progress=False)
        logits = head_logits(test.features, head["weight"], head["bias"])
        return head, (logits.argmax(1) == test.labels).float().mean().item()

    first, first_acc = run(_small_course(tmp_path))
    course = _small_course(tmp_path)

    def no_forward(*args, **kwargs):
        raise AssertionError("the image encoder ran although its features are cached")

    monkeypatch.setattr(course.loaded.model.visual, "forward", no_forward)
    second, second_acc = run(course)
    assert second["recipe"] == first["recipe"] and second["val_acc"] == first["val_acc"]
    assert second_acc == first_acc
    torch.testing.assert_close(second["weight"], first["weight"])
    with pytest.raises(AssertionError, match="cached"):  # the patch is live: a real forward would fail
        course.loaded.model.visual(torch.zeros(1, 3, course.loaded.image_size, course.loaded.image_size))
    LP.save_probe_head(tmp_path, 0, second)
    loaded = LP.load_head(tmp_path, 0)
    assert loaded["recipe"] == second["recipe"] and LP.load_head(tmp_path, 1) is None
