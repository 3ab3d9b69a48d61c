"""The one training engine: learning, exact parameter scope, resume, early stopping, schedule, precision."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clipft_utils.config import TrainConfig
from clipft_utils.engine import TrainResult, WarmupCosine, fit, resolve_precision
from clipft_utils.loader import make_loader
from clipft_utils.memory import PeakMemory
from clipft_utils.errors import ConfigError

C, D = 4, 8


def blobs(n: int, seed: int, scale: float = 1.0) -> TensorDataset:
    """Gaussian blobs: a task a small MLP learns in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(C, D, generator=torch.Generator().manual_seed(123)) * 2.5
    y = torch.randint(0, C, (n,), generator=g)
    x = centers[y] + torch.randn(n, D, generator=g)
    return TensorDataset(x * scale, y)


def mlp(seed: int = 0, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, C))


def groups(model: nn.Module, name: str = "backbone") -> list[dict]:
    return [{"params": [p for p in model.parameters() if p.requires_grad], "name": name}]


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def loaders(n_train: int = 96, batch: int = 16, seed: int = 0):
    return make_loader(blobs(n_train, 1), batch, True, seed), make_loader(blobs(64, 2), 64, False, seed)


def quiet(**kw) -> dict:
    return {"progress": False, **kw}


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that logs, at every step, each group's lr and the global gradient norm it sees."""

    steps: list[dict] = []

    def step(self, closure=None):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads])).item()
        RecordingAdamW.steps.append({"lr": {g["name"]: g["lr"] for g in self.param_groups}, "norm": norm})
        return super().step(closure)


@pytest.fixture
def recorder(monkeypatch):
    RecordingAdamW.steps = []
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return RecordingAdamW.steps


# ----------------------------------------------------------------------------- learning
def test_loss_falls_and_accuracy_rises():
    model = mlp()
    train, val = loaders()
    res = fit(model, groups(model), train, val, TrainConfig(epochs=6, lr=1e-2, patience=None), **quiet())
    assert isinstance(res, TrainResult) and res.epochs_run == 6 and res.precision == "fp32"
    start, h = res.history[0], res.history[1:]              # epoch 0: the untrained model's validation
    assert start["epoch"] == 0 and set(start) == {"epoch", "val_acc", "val_loss", "seconds"} and len(h) == 6
    assert h[-1]["train_loss"] < 0.5 * h[0]["train_loss"]
    assert h[-1]["train_acc"] > h[0]["train_acc"] and res.best_val_acc > 0.9 > start["val_acc"]
    assert set(h[0]) >= {"epoch", "train_loss", "train_acc", "val_acc", "lr", "seconds"}
    assert res.images_per_second > 0 and res.train_seconds > 0
    assert res.peak_memory_mb is None and res.memory_measure == ""  # a CPU: process memory is no method's memory
    assert res.steps == 6 * len(train) == sum(h["steps"] for h in h)
    assert res.to_dict()["best_epoch"] == res.best_epoch
    assert model.training  # entry mode restored


def test_only_handed_parameters_change():
    model = nn.Sequential(nn.Linear(D, 16), nn.Linear(16, 16), nn.Linear(16, C))
    model[0].requires_grad_(False)                    # frozen
    before = weights(model)
    handed = [{"params": list(model[2].parameters()), "name": "head"}]  # model[1] trainable but not handed
    train, val = loaders()
    with pytest.warns(UserWarning, match="in no group"):
        fit(model, handed, train, val, TrainConfig(epochs=2, lr=1e-2), **quiet())
    after = weights(model)
    for name in ("0.weight", "0.bias", "1.weight", "1.bias"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["2.weight"], after["2.weight"])
    assert not model[0].weight.requires_grad and model[1].weight.requires_grad  # flags untouched


# ----------------------------------------------------------------------------- resume
def _resume_cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 5, "lr": 5e-3, "warmup_epochs": 1.5, "grad_accum_steps": 4, "grad_clip": 1.0,
                          "patience": 3, **kw})


def _resume_run(tmp_path, stop: int | None, name: str):
    model = mlp(seed=3, dropout=0.3)
    train, val = loaders(n_train=88, batch=16)       # 6 batches: with accum 4 the second window is partial
    res = fit(model, groups(model), train, val, _resume_cfg(), seed=7, checkpoint_path=tmp_path / name,
              stop_after_epochs=stop, **quiet())
    return model, res


def test_resume_is_bit_identical(tmp_path):
    full_model, full = _resume_run(tmp_path, None, "a.pt")
    _, paused = _resume_run(tmp_path, 2, "b.pt")
    assert paused.epochs_run == 2 and not paused.completed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt", "b.pt"]  # atomic: no temp files left
    torch.manual_seed(999)  # disturb the global RNG: resume must restore it from the checkpoint
    resumed_model, resumed = _resume_run(tmp_path, None, "b.pt")
    assert resumed.resumed_from_epoch == 2 and resumed.completed
    for name, p in full_model.named_parameters():
        assert torch.equal(p, dict(resumed_model.named_parameters())[name]), name
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)
    assert resumed.best_epoch == full.best_epoch


def test_resume_keeps_a_best_epoch_from_before_the_pause(tmp_path):
    scores = [0.1, 0.9, 0.5, 0.4, 0.3]            # the first: the untrained model (epoch 0)

    def run(stop: int | None, name: str, start: int = 0):
        model, calls = mlp(seed=3, dropout=0.3), iter(scores[start:])
        train, _ = loaders(n_train=88, batch=16)
        res = fit(model, groups(model), train, None, _resume_cfg(epochs=4, patience=None), seed=7,
                  eval_fn=lambda m: next(calls), checkpoint_path=tmp_path / name, stop_after_epochs=stop, **quiet())
        return weights(model), res

    full_weights, full = run(None, "a.pt")
    run(2, "b.pt")
    resumed_weights, resumed = run(None, "b.pt", start=3)     # a resumed run does not validate its start again
    assert full.best_epoch == resumed.best_epoch == 1 and resumed.best_val_acc == 0.9
    assert all(torch.equal(full_weights[n], resumed_weights[n]) for n in full_weights)


def test_finished_checkpoint_is_reused_and_mismatch_refused(tmp_path):
    model, first = _resume_run(tmp_path, None, "c.pt")
    again_model, again = _resume_run(tmp_path, None, "c.pt")
    assert again.resumed_from_epoch == first.epochs_run and again.history == first.history
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again_model.parameters()))
    train, val = loaders(n_train=88, batch=16)
    with pytest.raises(ConfigError, match=r"different config \(epochs\)"):
        fit(model, groups(model), train, val, _resume_cfg(epochs=9), checkpoint_path=tmp_path / "c.pt", **quiet())
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        fit(model, groups(model), loaders(n_train=200)[0], val, _resume_cfg(), checkpoint_path=tmp_path / "c.pt",
            **quiet())


def test_a_checkpoint_whose_numbers_changed_is_named_and_never_resumed(tmp_path):
    """Before: a checkpoint edited after it was written (still a valid file) resumed silently with its new numbers."""
    _resume_run(tmp_path, 2, "d.pt")
    ckpt = torch.load(tmp_path / "d.pt", weights_only=True)
    name = next(iter(ckpt["trainable"]))
    ckpt["trainable"][name] = ckpt["trainable"][name] + 1.0          # changed numbers, same keys and shapes
    torch.save(ckpt, tmp_path / "d.pt")
    model = mlp(seed=3, dropout=0.3)
    train, val = loaders(n_train=88, batch=16)
    with pytest.raises(ConfigError, match="does not match its digest: its numbers changed"):
        fit(model, groups(model), train, val, _resume_cfg(), seed=7, checkpoint_path=tmp_path / "d.pt", **quiet())
    lines: list[str] = []
    res = fit(model, groups(model), train, val, _resume_cfg(), seed=7, checkpoint_path=tmp_path / "d.pt",
              resume="auto", progress=False, echo=lines.append)
    assert res.resumed_from_epoch == 0 and res.completed                    # started over, and said so
    assert any("not resuming" in line and "does not match its digest" in line for line in lines), lines


def test_fit_sets_the_epoch_on_both_loaders():
    model = mlp()
    train, val = loaders()
    calls: dict[str, list[int]] = {"train": [], "val": []}
    for key, loader in (("train", train), ("val", val)):
        original = loader.sampler.set_epoch
        loader.sampler.set_epoch = lambda e, key=key, original=original: (calls[key].append(e), original(e))
    fit(model, groups(model), train, val, TrainConfig(epochs=3, patience=None), **quiet())
    assert calls == {"train": [0, 1, 2], "val": [0, 0, 1, 2]}   # the untrained model's validation first


# ----------------------------------------------------------------------------- early stopping
def test_early_stopping_restores_best_epoch():
    model = mlp()
    train, _ = loaders()
    scripted = iter([0.7, 0.2, 0.6, 0.5, 0.4, 0.3, 0.9, 0.9])   # 0.7: the start, never a candidate for the best
    snapshots = []

    def eval_fn(m: nn.Module) -> float:
        assert not m.training
        snapshots.append(weights(m))
        return next(scripted)

    res = fit(model, groups(model), train, None, TrainConfig(epochs=7, lr=1e-2, patience=2), eval_fn=eval_fn,
              **quiet())
    assert res.stopped_early and res.epochs_run == 4 and res.best_epoch == 2 and res.best_val_acc == 0.6
    assert [h["val_acc"] for h in res.history] == [0.7, 0.2, 0.6, 0.5, 0.4]
    final = weights(model)
    assert all(torch.equal(final[n], snapshots[2][n]) for n in final)
    assert not all(torch.equal(final[n], snapshots[-1][n]) for n in final)


def test_the_start_record_leaves_training_exactly_as_it_was():
    """The epoch-0 validation draws from no random generator: the trained weights equal a run whose validation
    before training was replaced by nothing (the random state is restored around it)."""
    def run(disturb: bool):
        model = mlp(seed=3, dropout=0.3)
        train, val = loaders(n_train=88, batch=16)
        calls = []

        def eval_fn(m):
            calls.append(1)
            if disturb and len(calls) == 1:
                torch.rand(3), np.random.rand(), __import__("random").random()   # what a validation might draw
            return 0.5
        fit(model, groups(model), train, None, TrainConfig(epochs=2, lr=1e-2), eval_fn=eval_fn, seed=5, **quiet())
        return weights(model)

    plain, disturbed = run(False), run(True)
    assert all(torch.equal(plain[n], disturbed[n]) for n in plain)


# ----------------------------------------------------------------------------- optimisation details
def test_warmup_cosine_values():
    f = WarmupCosine(warmup_steps=4, total_steps=12)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == 1.0 and f(8) == pytest.approx(0.5) and f(12) == pytest.approx(0.0)
    assert all(f(s) > f(s + 1) for s in range(4, 11))
    assert WarmupCosine(0, 10)(0) == 1.0


def test_fit_follows_schedule_and_group_lrs(recorder):
    model = nn.Sequential(nn.Linear(D, 16), nn.Linear(16, 16), nn.Linear(16, C))
    groups_ = [{"params": list(model[0].parameters()), "name": "backbone", "lr_scale": 0.5},
               {"params": list(model[1].parameters()), "name": "adapter", "lr": 3e-3},
               {"params": list(model[2].parameters()), "name": "head"}]
    train, val = loaders(n_train=64, batch=16)   # 4 steps per epoch
    cfg = TrainConfig(epochs=3, lr=1e-3, head_lr=1e-2, warmup_epochs=0.5, patience=None)
    res = fit(model, groups_, train, val, cfg, **quiet())
    sched = WarmupCosine(2, 12)
    assert len(recorder) == 12
    for step, rec in enumerate(recorder):
        f = sched(step)
        assert rec["lr"] == pytest.approx({"backbone": 0.5e-3 * f, "adapter": 3e-3 * f, "head": 1e-2 * f})
    assert res.history[1]["lr"]["head"] == pytest.approx(1e-2 * sched(3))


def test_max_steps_per_epoch_trains_that_many_full_batches_on_the_schedule_of_those_steps(recorder):
    """The rehearsal's cap: each epoch stops after k optimizer steps (full batches, every group), and the warm-up +
    cosine schedule spans the steps actually taken."""
    model = nn.Sequential(nn.Linear(D, 16), nn.Linear(16, C))
    train, val = loaders(n_train=64, batch=16)                      # 4 batches per epoch
    cfg = TrainConfig(epochs=3, lr=1e-3, patience=None, max_steps_per_epoch=1, grad_accum_steps=1)
    res = fit(model, groups(model), train, val, cfg, **quiet())
    assert len(recorder) == 3 and res.epochs_run == 3                # 1 step per epoch, not 4
    sched = WarmupCosine(0, 3)
    assert [r["lr"]["backbone"] for r in recorder] == pytest.approx([1e-3 * sched(s) for s in range(3)])
    RecordingAdamW.steps.clear()
    model = mlp()
    fit(model, groups(model), *loaders(n_train=64, batch=8),
        TrainConfig(epochs=1, patience=None, max_steps_per_epoch=2, grad_accum_steps=2), **quiet())
    assert len(recorder) == 2                                        # 2 steps of 2 micro-batches each
    with pytest.raises(ConfigError, match="max_steps_per_epoch"):
        TrainConfig(max_steps_per_epoch=0)


def test_grad_accumulation_equals_big_batch():
    def run(batch: int, accum: int) -> dict:
        torch.manual_seed(0)
        model = nn.Linear(D, C)
        train = make_loader(blobs(36, 1), batch, True, seed=4)  # 36 = 4 full windows + a partial one
        cfg = TrainConfig(epochs=2, lr=1e-2, grad_accum_steps=accum, patience=None)
        fit(model, groups(model), train, None, cfg, eval_fn=lambda m: 0.5, **quiet())
        return weights(model)

    small, big = run(4, 2), run(8, 1)
    for name in small:
        torch.testing.assert_close(small[name], big[name], atol=1e-6, rtol=0)


def test_grad_clipping_bounds_the_norm(recorder):
    model = mlp()
    train = make_loader(blobs(64, 1, scale=50.0), 16, True, 0)
    res = fit(model, groups(model), train, None, TrainConfig(epochs=2, lr=1e-3, grad_clip=0.1),
              eval_fn=lambda m: 0.5, **quiet())
    assert res.history[1]["grad_norm"] > 0.1                  # the raw gradients were larger ...
    assert max(r["norm"] for r in recorder) <= 0.1 * (1 + 1e-4)  # ... but the optimizer never saw them


def test_label_smoothing_changes_the_loss():
    def first_loss(smoothing: float) -> float:
        model = mlp()
        train, _ = loaders()
        cfg = TrainConfig(epochs=1, lr=1e-9, label_smoothing=smoothing)
        return fit(model, groups(model), train, None, cfg, eval_fn=lambda m: 0.5, **quiet()).history[1]["train_loss"]

    assert first_loss(0.5) != pytest.approx(first_loss(0.0))


# ----------------------------------------------------------------------------- precision, memory, errors
def test_bf16_autocast_runs_on_cpu():
    model = mlp()
    train, val = loaders()
    res = fit(model, groups(model), train, val, TrainConfig(epochs=2, lr=1e-2, precision="bf16"), **quiet())
    assert res.precision == "bf16" and math.isfinite(res.history[-1]["train_loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resolve_precision():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(ConfigError, match="fp16"):
        resolve_precision("fp16", "cpu")


def test_peak_memory_sees_a_short_allocation():
    with PeakMemory("cpu") as mem:
        block = np.ones(80 * 2**20 // 8)  # 80 MB, touched
        time.sleep(0.15)
        del block
    assert mem.delta_mb > 60


def test_training_memory_of_full_training_exceeds_biases_only_by_its_gradients_and_adam_state():
    """What the course's memory column claims (full fine-tuning also keeps every gradient and two Adam moments, and
    the inputs its weight gradients need), accounted the same way on every device."""
    from clipft_utils import costs

    def wide() -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(D, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, C))
    x, y = next(iter(loaders()[0]))
    biases = wide()
    for name, p in biases.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    bias_mb = costs.training_costs(biases, [p for p in biases.parameters() if p.requires_grad], x, y)
    full = wide()
    full_mb = costs.training_costs(full, full.parameters(), x, y)
    weights = sum(p.numel() for n, p in full.named_parameters() if n.endswith("weight"))
    state_mb = 3 * weights * 4 / 2**20     # gradients + exp_avg + exp_avg_sq of every weight
    parts_b, parts_f = bias_mb["memory_parts"], full_mb["memory_parts"]
    assert parts_f["gradients_mb"] + parts_f["optimizer_mb"] - parts_b["gradients_mb"] - parts_b["optimizer_mb"] \
        == pytest.approx(state_mb)
    assert parts_f["activations_mb"] > parts_b["activations_mb"]        # the weight gradients need their inputs
    assert full_mb["train_memory_mb"] > bias_mb["train_memory_mb"] + state_mb
    assert parts_f["parameters_mb"] == parts_b["parameters_mb"]         # the same model is held either way


@pytest.mark.parametrize("case, match", [
    ("no_groups", "no parameter groups"),
    ("frozen", "does not require grad"),
    ("foreign", "not part of the model"),
    ("duplicate", "more than one group"),
    ("empty_train", "train_loader yields no batches"),
    ("empty_val", "val_loader yields no batches"),
    ("no_val", "needs a val_loader"),
    ("fp16_cpu", "fp16"),
])
def test_bad_inputs_raise_config_error(case, match):
    model = mlp()
    train, val = loaders()
    g = groups(model)
    cfg = TrainConfig(epochs=1)
    empty = DataLoader(TensorDataset(torch.zeros(0, D), torch.zeros(0, dtype=torch.long)), batch_size=4)
    if case == "no_groups":
        g = []
    elif case == "frozen":
        model[0].weight.requires_grad_(False)
    elif case == "foreign":
        g = [{"params": [nn.Parameter(torch.zeros(3))], "name": "x"}]
    elif case == "duplicate":
        g = g + [{"params": [model[0].weight], "name": "again"}]
    elif case == "empty_train":
        train = empty
    elif case == "empty_val":
        val = empty
    elif case == "no_val":
        val = None
    elif case == "fp16_cpu":
        cfg = TrainConfig(epochs=1, precision="fp16")
    before = weights(model)
    with pytest.raises(ConfigError, match=match):
        fit(model, g, train, val, cfg, **quiet())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
