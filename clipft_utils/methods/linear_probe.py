"""Linear probes on frozen, cached features: the reference torch recipe and CLIP's L-BFGS logistic regression."""
from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from ..config import TrainConfig, check_positive
from ..errors import ConfigError
from ..heads import find_head, head_path, save_head
from .base import Method, param_groups, register

class LinearProbe(nn.Module):
    """``head(normalize(f))`` on cached features: a CLIPClassifier whose image tower already ran."""

    def __init__(self, dim: int, num_classes: int, init: torch.Tensor | None = None):
        super().__init__()
        self.head = nn.Linear(dim, num_classes)
        if init is not None:  # start from a head such as the zero-shot one (bias 0)
            with torch.no_grad():
                self.head.weight.copy_(init)
                self.head.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(features, dim=-1))


@contextlib.contextmanager
def small_math(threads: int = 1):
    """Run tiny CPU matrix work on ``threads`` threads: on small matrices, thread start-up costs more than it saves.

    Also quiets scikit-learn's "more unique classes than half the samples" warning: with one or two images per
    class (a few-shot probe) that is the point, not a sign of a regression problem."""
    from threadpoolctl import threadpool_limits
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
            yield
    finally:
        torch.set_num_threads(before)


class FeatureDataset(TensorDataset):
    """(feature, label) pairs that a loader fetches one whole batch at a time (one indexing op, no per-item collate)."""

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[idx] for t in self.tensors)


def _as_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Collate function of FeatureDataset: the batch is already stacked."""
    return batch


def _normalized(x: Any) -> np.ndarray:
    """L2-normalised float32 numpy rows."""
    x = torch.as_tensor(x).float()
    return F.normalize(x, dim=-1).numpy()


@dataclass
class SweepResult:
    """Validation accuracy of L-BFGS logistic regression for each C tried, and the best head."""

    c_values: list[float]      # the C values actually fitted (ascending)
    val_acc: list[float]
    n_iter: list[int]          # L-BFGS iterations per C (warm-started from the previous C)
    best_c: float
    best_val_acc: float
    weight: torch.Tensor       # [C, D] for normalised features
    bias: torch.Tensor         # [C]
    seconds: float
    skipped: list[float] = field(default_factory=list)  # C values not fitted (early stop of the sweep)


def _full_head(coef: np.ndarray, intercept: np.ndarray, classes: np.ndarray,
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's coef_/intercept_ as a [C, D] head (classes absent from training get a very low bias)."""
    if len(classes) == 2 and coef.shape[0] == 1:  # binary: one row scores class 1 against class 0
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
    weight = torch.zeros(num_classes, coef.shape[1])
    bias = torch.full((num_classes,), -1e4)
    idx = torch.as_tensor(classes, dtype=torch.long)
    weight[idx] = torch.as_tensor(coef, dtype=torch.float32)
    bias[idx] = torch.as_tensor(intercept, dtype=torch.float32)
    return weight, bias


def _rescale_start(model: Any, factor: float) -> None:
    """Scale a fitted model's coefficients in place: the warm start for the next, larger C."""
    model.coef_ = model.coef_ * factor
    model.intercept_ = model.intercept_ * factor


def sklearn_sweep(train_f: Any, train_y: Any, val_f: Any, val_y: Any, c_grid: Sequence[float],
                  max_iter: int = 1000, patience: int | None = None, num_classes: int | None = None,
                  normalize: bool = True) -> SweepResult:
    """Fit ``LogisticRegression(lbfgs)`` for each C (ascending, warm-started); keep the best on validation.
    ``normalize=False`` fits the raw features (what the course's head convention avoids: see notebook 02).

    Each fit starts from the previous solution scaled by ``sqrt(C / C_prev)``: sklearn's gradient tolerance is
    absolute, and the previous optimum already meets it for a nearby C, so an *unscaled* warm start stops after
    0 iterations and silently returns the smaller C's head. ``patience`` stops the sweep after that many C
    values without a better validation accuracy (None: fit every C).
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    start = time.perf_counter()
    xtr, xva = (_normalized(train_f), _normalized(val_f)) if normalize else (np.asarray(train_f), np.asarray(val_f))
    ytr, yva = np.asarray(train_y), np.asarray(val_y)
    num_classes = num_classes or int(max(ytr.max(), yva.max()) + 1)
    grid = sorted(float(c) for c in c_grid)
    model = LogisticRegression(solver="lbfgs", max_iter=max_iter, warm_start=True)
    accs, iters, best, bad = [], [], None, 0
    with small_math(), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i, c in enumerate(grid):
            if i:
                _rescale_start(model, (c / grid[i - 1]) ** 0.5)
            model.set_params(C=c).fit(xtr, ytr)
            accs.append(float((model.predict(xva) == yva).mean()))
            iters.append(int(np.max(model.n_iter_)))
            if best is None or accs[-1] > best[0]:
                best, bad = (accs[-1], c, model.coef_.copy(), model.intercept_.copy()), 0
            else:
                bad += 1
            if patience is not None and bad >= patience:
                break
        weight, bias = _full_head(best[2], best[3], model.classes_, num_classes)
    return SweepResult(grid[:len(accs)], accs, iters, best[1], best[0], weight, bias,
                       time.perf_counter() - start, grid[len(accs):])


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
    """A loader over (features, label) pairs through the reproducible ``loader.make_loader``."""
    from ..loader import make_loader
    return make_loader(FeatureDataset(features.float(), labels.long()), batch_size=batch_size, shuffle=shuffle,
                       seed=seed, collate_fn=_as_batch)


def feature_eval(features: torch.Tensor, labels: torch.Tensor):
    """An ``eval_fn`` for ``engine.fit``: validation top-1 and loss on cached features in one matrix product."""
    moved: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def evaluate(model: nn.Module) -> SimpleNamespace:
        device = next(model.parameters()).device
        if device not in moved:
            moved[device] = features.float().to(device), labels.long().to(device)
        x, y = moved[device]
        with torch.inference_mode():
            logits = model(x).float()
        return SimpleNamespace(top1=(logits.argmax(1) == y).sum().item() / len(y),
                               loss=F.cross_entropy(logits, y).item())
    return evaluate


def train_torch_probe(train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor,
                      cfg: Any, *, init: torch.Tensor | None = None, num_classes: int | None = None, seed: int = 0,
                      device: str | torch.device = "cpu", progress: bool = False):
    """The reference recipe: a linear head on normalised features trained with ``engine.fit`` -> (probe, TrainResult)."""
    from ..engine import fit
    from . import apply_method
    num_classes = num_classes or (init.shape[0] if init is not None else int(train_y.max()) + 1)
    with torch.random.fork_rng():  # the random init depends on the seed only, not on what ran before
        torch.manual_seed(seed)
        probe = LinearProbe(train_f.shape[1], num_classes, init=init)
    groups = apply_method("linear_probe", probe, cfg)  # freeze all, then hand exactly the head to AdamW
    with small_math():  # tiny matrices: one CPU thread is fastest
        train = fit(probe, groups, feature_loader(train_f, train_y, cfg.batch_size, True, seed), None, cfg,
                    eval_fn=feature_eval(val_f, val_y), device=device, seed=seed, progress=progress,
                    desc="linear probe")
    return probe.cpu(), train


LR_FACTORS = (10, 100)
"""The AdamW recipe's learning rate is chosen on validation among ``cfg.lr`` times 1 and each of these."""


def lr_sweep(train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor, cfg: Any,
             factors: Sequence[float] = LR_FACTORS, *, init: torch.Tensor | None = None, num_classes: int | None = None,
             seed: int = 0, device: str | torch.device = "cpu", done: dict | None = None) -> dict[float, tuple]:
    """The AdamW recipe at ``cfg.lr × f`` for f in 1 and ``factors``: factor -> (probe, TrainResult); ``done`` holds
    runs already trained (e.g. ``{1: (probe, train)}``), which are kept, not retrained."""
    runs = dict(done or {})
    for factor in [1, *factors]:
        if factor not in runs:
            runs[factor] = train_torch_probe(train_f, train_y, val_f, val_y, dataclasses.replace(cfg, lr=cfg.lr * factor),
                                             init=init, num_classes=num_classes, seed=seed, device=device)
    return runs


def best_lr_factor(runs: dict[float, tuple]) -> float:
    """The factor of the run with the best validation accuracy (ties: the smaller learning rate)."""
    return max(sorted(runs), key=lambda f: runs[f][1].best_val_acc)


def choose_recipe(torch_val: float, sklearn_val: float) -> tuple[str, str]:
    """The recipe with the better validation accuracy (ties go to sklearn: convex, seed-independent) and why."""
    if torch_val > sklearn_val:
        return "torch", f"AdamW (torch) val top-1 {100 * torch_val:.2f}% > L-BFGS (sklearn) {100 * sklearn_val:.2f}%"
    relation = "=" if torch_val == sklearn_val else ">"
    return "sklearn", (f"L-BFGS (sklearn) val top-1 {100 * sklearn_val:.2f}% {relation} AdamW (torch) "
                       f"{100 * torch_val:.2f}%")


def fit_best_head(course: Any, cfg: Any, progress: bool = False) -> dict[str, Any]:
    """Both recipes on the course's cached train/val features; the better head on validation, as a dict."""
    tr, va = course.features("train", progress=progress), course.features("val", progress=progress)
    num_classes = len(course.classnames)
    sweep = sklearn_sweep(tr.features, tr.labels, va.features, va.labels, cfg.c_grid, cfg.max_iter,
                          num_classes=num_classes)
    init = course.zero_shot_head() if cfg.zero_shot_init else None
    runs = lr_sweep(tr.features, tr.labels, va.features, va.labels, cfg, init=init, num_classes=num_classes,
                    seed=course.seed, device=course.device)          # AdamW's lr chosen on validation, as in 02
    probe, train = runs[best_lr_factor(runs)]
    recipe, why = choose_recipe(train.best_val_acc, sweep.best_val_acc)
    if recipe == "torch":
        weight, bias, val_acc = probe.head.weight.detach(), probe.head.bias.detach(), train.best_val_acc
    else:
        weight, bias, val_acc = sweep.weight, sweep.bias, sweep.best_val_acc
    return {"weight": weight.float().cpu(), "bias": bias.float().cpu(), "recipe": recipe, "val_acc": float(val_acc),
            "reason": why, "best_c": sweep.best_c}


def head_file(results_dir: str | Path, seed: int, shots: int | None = None) -> Path:
    """``<results_dir>/heads/linear_probe[_shots<k>]_seed<seed>.safetensors``."""
    from ..results import run_name
    return head_path(results_dir, run_name("linear_probe", seed, None, shots))


def save_probe_head(results_dir: str | Path, seed: int, head: dict[str, Any], shots: int | None = None,
                    **meta: Any) -> Path:
    """Write the winning head (``{weight, bias, recipe, val_acc, ...}``) where notebook 06 looks for it."""
    extra = {k: v for k, v in head.items() if k not in ("weight", "bias")}
    return save_head(head_file(results_dir, seed, shots), head["weight"], head["bias"], **{**extra, **meta})


def load_head(results_dir: str | Path, seed: int, shots: int | None = None) -> dict[str, Any] | None:
    """The linear probe's saved head for ``seed`` (and ``shots``), or None when notebook 02 has not written it."""
    from ..results import run_name
    return find_head(results_dir, run_name("linear_probe", seed, None, shots))


def save_results(course: Any, cfg: Any, feats: dict[str, Any], heads: dict[str, tuple], tests: dict[str, Any],
                 train: Any, sweep: SweepResult, *, recipe: str, why: str, torch_seconds: float, score_seconds: float,
                 fit_seconds: float, lr_search: dict | None = None) -> list[Path]:
    """Notebook 02's three result rows: the main row (the ``recipe`` chosen on validation) and one per recipe
    (``torch``: AdamW, ``sklearn``: L-BFGS), each with its test and validation predictions; returns their files.

    ``heads[recipe] = (weight, bias)``, ``tests[recipe]`` its test EvalResult; ``feats`` the cached features of the
    three splits; ``torch_seconds`` the AdamW fit, ``score_seconds`` the test scoring, ``fit_seconds`` every fit of the
    notebook (the demo, the sweep, AdamW and scoring) against the feature extraction. The tower's parameters are
    counted in ``total_params``; only the head trains. Feature extraction is reported apart (``feature_seconds``).
    ``lr_search``: the AdamW learning rates tried and their validation accuracy (``cfg.lr`` is the one chosen)."""
    from ..costs import folder_facts
    from ..evaluate import EvalResult
    from ..heads import head_logits
    from ..modelfolder import save_head_model
    from ..results import make_result, save_result
    trainable = sum(t.numel() for t in heads["torch"])                                   # C·D + C
    total = sum(p.numel() for p in course.loaded.model.visual.parameters()) + trainable
    vals = {"torch": train.best_val_acc, "sklearn": sweep.best_val_acc}
    costs = recipe_costs(course, cfg, feats, heads, train, sweep)
    vals_eval = {name: EvalResult.from_logits(head_logits(feats["val"].features, w, b), feats["val"].labels)
                 for name, (w, b) in heads.items()}
    extract_seconds = sum(f.seconds for f in feats.values())
    test_seconds = feats["test"].seconds + score_seconds
    common = dict(method="linear_probe", trainable_params=trainable, total_params=total, eval_seconds=test_seconds,
                  images_per_second=None, peak_memory_mb=train.peak_memory_mb, config=cfg.to_dict(),
                  chosen_recipe=recipe, choice_reason=why, feature_seconds=extract_seconds,
                  train_seconds_includes="fitting only; feature extraction is feature_seconds",
                  sweep={"C": sweep.c_values, "val_acc": sweep.val_acc, "n_iter": sweep.n_iter, "best_c": sweep.best_c},
                  timing={"extract_seconds": extract_seconds, "fit_seconds": fit_seconds,
                          "ratio": (extract_seconds + fit_seconds) / extract_seconds},
                  lr_search={**(lr_search or {}), "chosen_on": "val"} if lr_search else None, **course.identity())
    rows = {None: (recipe, sum((torch_seconds, sweep.seconds))), "torch": ("torch", torch_seconds),
            "sklearn": ("sklearn", sweep.seconds)}
    paths = []
    for variant, (name, seconds) in rows.items():
        result = make_result(variant=variant, test=tests[name], val_acc=vals[name], train_seconds=seconds,
                             history=train.history if name == "torch" or variant is None else [],
                             recipe=name, history_of="torch",
                             epochs_run=train.epochs_run if name == "torch" else None,  # L-BFGS has no epochs
                             best_epoch=train.best_epoch if name == "torch" else None,
                             best_c=sweep.best_c if name == "sklearn" else None, **common,
                             **{**costs[name], **(costs["both"] if variant is None else {})})
        folder = save_head_model(course, "linear_probe", *heads[name], result=result, variant=variant, config=cfg)
        result.update(folder_facts(folder))                                        # models/<run>: what it adds
        paths.append(save_result(result, course.results_dir, predictions=tests[name], val_predictions=vals_eval[name]))
    return paths


def recipe_costs(course: Any, cfg: Any, feats: dict[str, Any], heads: dict[str, tuple], train: Any,
                 sweep: SweepResult) -> dict[str, dict[str, Any]]:
    """Each recipe's counted costs (``clipft_utils.costs``), and ``both``: the main row's training compute, which
    counts both fits, as its ``train_seconds`` does (choosing between them needed both). Training compute starts with
    the feature pass over the training images (one frozen forward each)."""
    from .. import costs
    from ..models import CLIPClassifier
    visual, n_classes = course.loaded.model.visual, len(course.classnames)
    x, y = feats["train"].features, feats["train"].labels
    images = costs.probe_images(course.loaded.image_size, course.device)
    shared = costs.frozen_costs(visual, CLIPClassifier(visual, heads["torch"][0]), images, len(y))
    probe = LinearProbe(x.shape[1], n_classes)
    adamw = costs.fit_costs(probe, probe.parameters(), x[:cfg.batch_size], y[:cfg.batch_size], train, visual)
    lbfgs = costs.lbfgs_costs(x, y, n_classes, sum(sweep.n_iter), visual)
    lbfgs = {**costs.no_steps("L-BFGS iterations, no optimizer steps", None, lbfgs["train_memory_mb"],
                              lbfgs["memory_measure"]), **lbfgs}
    tflops = {"torch": costs.run_tflops(adamw["steps"], adamw["flops_per_step"]),
              "sklearn": lbfgs["lbfgs_tflops"]}
    out = {name: {**shared, **fit, "train_tflops": shared["feature_tflops"] + tflops[name]}
           for name, fit in (("torch", adamw), ("sklearn", lbfgs))}
    out["both"] = {"train_tflops": shared["feature_tflops"] + sum(tflops.values()),
                   "train_tflops_of": "the feature pass + both recipes' fits (choosing between them needed both)"}
    return out


@dataclass
class LinearProbeConfig(TrainConfig):
    """Linear probe on frozen, cached features (seed: lr 1e-3, wd 1e-4, 50 epochs, patience 10)."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int | None = 10
    zero_shot_init: bool = False
    c_grid: tuple[float, ...] = (1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
    max_iter: int = 1000

    def validate(self) -> None:
        super().validate()
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ConfigError(f"LinearProbeConfig.c_grid must hold positive values, got {self.c_grid!r}.")
        check_positive(self, "max_iter")


METHOD = register(Method(
    name="linear_probe", title="Linear probe", kind="frozen features", order=2,
    config=LinearProbeConfig, apply=lambda clf, cfg: param_groups([], clf), summary=lambda cfg: "head only",
    short="lp", image_batches=False,
    profiles={"smoke": {"epochs": 50}, "rehearse": {"epochs": 10}},
))
