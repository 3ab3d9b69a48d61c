"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022): a few-shot cache model on frozen, cached features.

The cache holds the few-shot training set itself: keys ``K`` = the L2-normalised train features [N, D], values
``V`` = their one-hot labels [N, C]. A test feature ``f`` (normalised) is scored as

    logits = s · f·Wᵀ  +  α · exp(-β (1 − f·Kᵀ)) · V

where ``s · f·Wᵀ`` is the course's zero-shot head exactly (``W`` the normalised class-text embeddings, ``s`` the
model's ``logit_scale``: 100 for OpenAI's CLIP, the scale the paper writes as ``100 ·``), ``β`` sharpens the
affinity (an exact match scores 1, an orthogonal feature ``e^-β``) and ``α`` weighs the cache against the text.
``α = 0`` is zero-shot. Tip-Adapter trains nothing: ``α`` and ``β`` are chosen on the **validation** split from a
small grid. Tip-Adapter-F makes the keys a learnable [N, D] matrix initialised from the cache (values and the
text head stay fixed), trains it with AdamW and a cosine schedule through the course's one engine, then searches
``α``, ``β`` on validation again.

Where this follows the paper's code (gaopengcuhk/Tip-Adapter) and where it does not, on purpose:

- same: the affinity ``exp(-β(1 − f·K))`` on normalised features, one-hot values, keys trained as a bias-free
  linear layer without renormalisation, AdamW at lr 1e-3 with a cosine schedule for 20 epochs, batch 256,
  weight decay 0.01 (torch's AdamW default, which the paper keeps), α and β re-searched after training;
- different: the keys are the *un-augmented* cached train features (the paper averages 10 augmented passes);
  Tip-Adapter-F trains on those same cached features, so each training feature finds itself in the cache (an
  affinity of exactly 1 before training) - the paper's augmented views only come close; the epoch Tip-Adapter-F
  keeps and every (α, β) are chosen on validation - the paper keeps the epoch with the best *test* accuracy;
  the grid is small and explicit (the paper sweeps 200 β × 20 α values per dataset, on per-dataset ranges);
  AdamW's eps is the engine's 1e-8 (the paper's 1e-4 guards its fp16 features; the course trains in fp32).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..errors import ConfigError
from .base import Method, register

ALPHAS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0)
"""Cache weights tried on validation: log-spaced, since the zero-shot logits they compete with are ``s · cos``
(s = 100 for CLIP, where the paper's chosen α lie between about 1 and 10; a small stand-in's s can be far lower)."""
BETAS = (1.0, 2.0, 3.0, 4.0, 5.5, 7.0)
"""Affinity sharpness values tried on validation (the paper's default is β = 5.5 on ImageNet; 1 starts training)."""
TEMPLATES = ("single", "ensemble")


def _check_grid(cfg: Any, name: str) -> None:
    """A non-empty tuple of positive finite numbers, or a ConfigError naming the field and the fix."""
    values = getattr(cfg, name)
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    ok = isinstance(values, (list, tuple)) and len(values) > 0 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in values)
    if not ok:
        raise ConfigError(f"{type(cfg).__name__}.{name} must be a non-empty list of positive numbers, got "
                          f"{getattr(cfg, name)!r}. Fix: pass {name}=[...] with values > 0, e.g. "
                          f"{list(ALPHAS if name == 'alphas' else BETAS)}.")
    setattr(cfg, name, tuple(float(v) for v in values))


def _check_templates(cfg: Any) -> None:
    if cfg.templates not in TEMPLATES:
        raise ConfigError(f"{type(cfg).__name__}.templates must be 'single' or 'ensemble', got {cfg.templates!r}. "
                          "Fix: templates='single' (the zero-shot row's prompt) or 'ensemble'.")


@dataclass
class TipAdapterConfig:
    """Tip-Adapter (training-free): the cache model, with α and β chosen on validation from these grids."""

    alphas: tuple[float, ...] = ALPHAS
    betas: tuple[float, ...] = BETAS
    templates: str = "single"   # the zero-shot head it adds to: "single" (notebook 01's main row) or "ensemble"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise a ConfigError naming the first bad field and its fix."""
        _check_grid(self, "alphas")
        _check_grid(self, "betas")
        _check_templates(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {"alphas": list(self.alphas), "betas": list(self.betas), "templates": self.templates}


@dataclass
class TipAdapterFConfig(TrainConfig):
    """Tip-Adapter-F: the cache keys trained (paper: AdamW lr 1e-3, 20 epochs, cosine, batch 256), α/β on validation.

    ``train_alpha``/``train_beta``: the fixed α, β of the training loss; None takes Tip-Adapter's choice on
    validation (the paper fixes per-dataset values by hand: β = 1, α between 1.17 and 10)."""

    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    patience: int | None = None     # the paper trains every epoch; the best epoch on validation is kept
    precision: str = "fp32"         # exp(β·affinity) of a tiny model: bf16 would round the affinities
    alphas: tuple[float, ...] = ALPHAS
    betas: tuple[float, ...] = BETAS
    templates: str = "single"
    train_alpha: float | None = None
    train_beta: float | None = None

    def validate(self) -> None:
        super().validate()
        _check_grid(self, "alphas")
        _check_grid(self, "betas")
        _check_templates(self)
        for name in ("train_alpha", "train_beta"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"TipAdapterFConfig.{name} must be a positive number or None, got {value!r}. "
                                  f"Fix: pass {name}=None (Tip-Adapter's choice on validation) or a value > 0.")


# ----------------------------------------------------------------------------- the cache model
def build_cache(train_features: torch.Tensor, train_labels: torch.Tensor,
                num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [N, D]: the L2-normalised train features, values [N, C]: their one-hot labels), float32."""
    labels = torch.as_tensor(train_labels).long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ConfigError(f"Cache labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}. "
                          "Fix: pass num_classes = the number of classes of the dataset.")
    keys = F.normalize(torch.as_tensor(train_features).float(), dim=-1)
    return keys, F.one_hot(labels, num_classes).float()


def affinity(features: torch.Tensor, keys: torch.Tensor, beta: float) -> torch.Tensor:
    """``exp(-β (1 − f̂·Kᵀ))`` [M, N]: features are normalised here, keys are used as given (trained keys are not)."""
    return torch.exp(-beta * (1.0 - F.normalize(features.float(), dim=-1) @ keys.float().T))


def tip_logits(features: torch.Tensor, head: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               alpha: float, beta: float) -> torch.Tensor:
    """``head · f̂ + α · affinity · V``: the zero-shot head (``logit_scale · text``) plus the weighted cache vote."""
    zero_shot = F.normalize(features.float(), dim=-1) @ head.float().T
    return zero_shot + alpha * affinity(features, keys, beta) @ values.float()


class TipAdapter(nn.Module):
    """The cache model on cached features; ``keys`` is a parameter (trained by Tip-Adapter-F, frozen otherwise)."""

    def __init__(self, head: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, alpha: float, beta: float):
        super().__init__()
        self.register_buffer("head", head.detach().float().clone())      # [C, D] logit_scale · text, fixed
        self.keys = nn.Parameter(keys.detach().float().clone())          # [N, D]
        self.register_buffer("values", values.detach().float().clone())  # [N, C] one-hot, fixed
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return tip_logits(features, self.head, self.keys, self.values, self.alpha, self.beta)


class TipHead(nn.Module):
    """The cache model as a classifier head over normalised image features (``CLIPClassifier.head``): what a
    Tip-Adapter model folder holds and ``predict`` / ``export --format onnx`` run. ``weight``/``bias`` are the
    zero-shot head (a linear head's names, bias zero); ``keys``, ``values``, ``alpha``, ``beta`` the fitted cache.
    Everything is a parameter so that the model folder saves it by name; none of it is trained here."""

    def __init__(self, weight: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, alpha: float,
                 beta: float) -> None:
        super().__init__()
        as_param = lambda t: nn.Parameter(torch.as_tensor(t).detach().float().clone(), requires_grad=False)  # noqa: E731
        self.weight, self.keys, self.values = as_param(weight), as_param(keys), as_param(values)
        self.bias = as_param(torch.zeros(self.weight.shape[0]))
        self.alpha, self.beta = as_param(torch.tensor([float(alpha)])), as_param(torch.tensor([float(beta)]))

    @classmethod
    def from_adapter(cls, adapter: TipAdapter) -> "TipHead":
        return cls(adapter.head, adapter.keys, adapter.values, adapter.alpha, adapter.beta)

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # the cached-feature formula, on the tower's features
        return tip_logits(features, self.weight, self.keys, self.values, self.alpha, self.beta) + self.bias


def rebuild(clf: nn.Module, cfg: Any, tensors: Any) -> None:
    """A Tip-Adapter model folder's model: the frozen tower under a ``TipHead`` of the folder's shapes (the cache
    size N is the folder's; the model folder fills in the values)."""
    n, dim = tensors["head.keys"].shape if "head.keys" in tensors else (0, clf.head.weight.shape[1])
    classes = clf.head.weight.shape[0]
    clf.head = TipHead(clf.head.weight, torch.zeros(n, dim), torch.zeros(n, classes), 0.0, 0.0)


def save_tip_model(course: Any, fit: TipFit, cfg: Any, result: dict[str, Any]):
    """The model folder of a fitted Tip-Adapter(-F): the frozen base tower, the zero-shot head and the cache."""
    from ..modelfolder import save_model
    from ..models import CLIPClassifier
    clf = CLIPClassifier(course.loaded.model.visual, fit.adapter.head)  # the tower is shared, not copied
    clf.head = TipHead.from_adapter(fit.adapter)
    chosen = {"alpha": float(fit.adapter.alpha), "beta": float(fit.adapter.beta), "chosen_on": "validation",
              "alphas": list(fit.search.alphas), "betas": list(fit.search.betas)}
    return save_model(course, fit.method, clf, result=result, config=cfg, dtype="fp32", head_only=True,
                      templates=course.templates(ensemble=cfg.templates == "ensemble"), chosen=chosen)


def apply(adapter: TipAdapter, cfg: Any = None) -> list[dict[str, Any]]:
    """Freeze the adapter, then hand exactly the cache keys to the optimizer (values and text head stay fixed)."""
    for p in adapter.parameters():
        p.requires_grad_(False)
    adapter.keys.requires_grad_(True)
    return [{"name": "keys", "params": [adapter.keys]}]


# ----------------------------------------------------------------------------- choosing α, β on validation
@dataclass
class GridSearch:
    """Validation top-1 for every (β, α) of the grid, and the choice (ties: smaller α, then smaller β)."""

    alphas: list[float]
    betas: list[float]
    val_acc: np.ndarray   # [len(betas), len(alphas)]
    alpha: float
    beta: float
    best_val_acc: float
    seconds: float

    def on_edge(self) -> list[str]:
        """Which chosen values lie at an edge of their grid (a wider grid might do better)."""
        return [f"{n} = {v:g}" for n, v, grid in (("α", self.alpha, self.alphas), ("β", self.beta, self.betas))
                if len(grid) > 1 and v in (min(grid), max(grid))]

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": self.alphas, "betas": self.betas, "val_acc": self.val_acc.tolist(),
                "alpha": self.alpha, "beta": self.beta, "best_val_acc": self.best_val_acc}


def search_alpha_beta(features: torch.Tensor, labels: torch.Tensor, head: torch.Tensor, keys: torch.Tensor,
                      values: torch.Tensor, alphas: Sequence[float], betas: Sequence[float]) -> GridSearch:
    """Top-1 of every (α, β) on ``features`` (pass the **validation** split) and the best pair."""
    from .linear_probe import small_math
    start = time.perf_counter()
    alphas, betas = sorted(float(a) for a in alphas), sorted(float(b) for b in betas)
    labels = torch.as_tensor(labels).long()
    with torch.no_grad(), small_math():  # small matrices: one CPU thread is fastest
        zero_shot = F.normalize(features.float(), dim=-1) @ head.float().T
        acc = np.zeros((len(betas), len(alphas)))
        for i, beta in enumerate(betas):
            cache = affinity(features, keys, beta) @ values.float()
            for j, alpha in enumerate(alphas):
                acc[i, j] = ((zero_shot + alpha * cache).argmax(1) == labels).float().mean().item()
    # the best accuracy; among ties the smallest α (closest to zero-shot), then the smallest β
    j, i = min(((j, i) for i in range(len(betas)) for j in range(len(alphas))),
               key=lambda ji: (-acc[ji[1], ji[0]], ji[0], ji[1]))
    return GridSearch(alphas, betas, acc, alphas[j], betas[i], float(acc[i, j]), time.perf_counter() - start)


# ----------------------------------------------------------------------------- Tip-Adapter-F
def train_keys(adapter: TipAdapter, train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor,
               val_y: torch.Tensor, cfg: TipAdapterFConfig, *, seed: int = 0, device: str | torch.device = "cpu",
               progress: bool = False):
    """Train the adapter's keys with ``engine.fit`` on cached features (best epoch on validation) -> TrainResult."""
    from ..engine import fit
    from .linear_probe import feature_eval, feature_loader, small_math
    groups = apply(adapter, cfg)
    with small_math():  # tiny matrices: one CPU thread is fastest
        result = fit(adapter, groups, feature_loader(train_f, train_y, cfg.batch_size, True, seed), None, cfg,
                     eval_fn=feature_eval(val_f, val_y), device=device, seed=seed, progress=progress,
                     desc="Tip-Adapter-F")
    adapter.cpu()
    for p in adapter.parameters():
        p.requires_grad_(False)
    return result


# ----------------------------------------------------------------------------- on a course
@dataclass
class TipFit:
    """A fitted Tip-Adapter (or -F): its cache, the chosen α and β, and what choosing them cost."""

    method: str                 # "tip_adapter" | "tip_adapter_f"
    adapter: TipAdapter         # holds the head, keys (trained for -F), values and the chosen α, β
    search: GridSearch          # the validation grid that chose α, β (for -F: after training)
    seconds: float              # cache + search (+ training and the first search for -F); features excluded
    trainable_params: int
    train: Any = None           # engine TrainResult of -F
    train_alpha: float | None = None
    train_beta: float | None = None
    first_search: GridSearch | None = None   # -F: the training-free search that set train α, β (when it did)
    extra: dict[str, Any] = field(default_factory=dict)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of cached features with the chosen α, β."""
        with torch.no_grad():
            return self.adapter(features)


def _inputs(course: Any, templates: str, feats: dict[str, Any] | None, progress: bool) -> dict[str, Any]:
    """Cached train/val features (``feats``, else the course's cache), the zero-shot head and the cache."""
    feats = feats or {s: course.features(s, progress=progress) for s in ("train", "val")}
    head = course.zero_shot_head(ensemble=templates == "ensemble")
    keys, values = build_cache(feats["train"].features, feats["train"].labels, len(course.classnames))
    return {"train": feats["train"], "val": feats["val"], "head": head, "keys": keys, "values": values}


def fit_tip_adapter(course: Any, cfg: TipAdapterConfig, feats: dict[str, Any] | None = None,
                    progress: bool = False) -> TipFit:
    """Training-free Tip-Adapter on cached features (``feats``: split -> FeatureSet, else the course's cache): the
    cache, then α, β chosen on validation."""
    start = time.perf_counter()
    x = _inputs(course, cfg.templates, feats, progress)
    search = search_alpha_beta(x["val"].features, x["val"].labels, x["head"], x["keys"], x["values"],
                               cfg.alphas, cfg.betas)
    adapter = TipAdapter(x["head"], x["keys"], x["values"], search.alpha, search.beta)
    adapter.keys.requires_grad_(False)
    return TipFit("tip_adapter", adapter, search, time.perf_counter() - start, trainable_params=0)


def fit_tip_adapter_f(course: Any, cfg: TipAdapterFConfig, feats: dict[str, Any] | None = None,
                      progress: bool = False, tip: TipFit | None = None) -> TipFit:
    """Tip-Adapter-F: keys initialised from the cache, trained at fixed (train α, β), then α, β re-chosen on val.

    ``tip``: a training-free fit whose validation choice gives the training α, β when the config leaves them
    None (its search time is counted here too, since -F needed it)."""
    start = time.perf_counter()
    x = _inputs(course, cfg.templates, feats, progress)
    first = None
    if cfg.train_alpha is None or cfg.train_beta is None:
        first = tip.search if tip is not None else search_alpha_beta(
            x["val"].features, x["val"].labels, x["head"], x["keys"], x["values"], cfg.alphas, cfg.betas)
    alpha = cfg.train_alpha if cfg.train_alpha is not None else first.alpha
    beta = cfg.train_beta if cfg.train_beta is not None else first.beta
    adapter = TipAdapter(x["head"], x["keys"], x["values"], alpha, beta)
    train = train_keys(adapter, x["train"].features, x["train"].labels, x["val"].features, x["val"].labels, cfg,
                       seed=course.seed, device=course.device, progress=progress)
    search = search_alpha_beta(x["val"].features, x["val"].labels, adapter.head, adapter.keys, adapter.values,
                               cfg.alphas, cfg.betas)
    adapter.alpha, adapter.beta = search.alpha, search.beta
    seconds = time.perf_counter() - start + (tip.search.seconds if tip is not None and first is not None else 0.0)
    return TipFit("tip_adapter_f", adapter, search, seconds, trainable_params=adapter.keys.numel(), train=train,
                  train_alpha=alpha, train_beta=beta, first_search=first)


def save_tip_result(course: Any, fit: TipFit, cfg: Any, feats: dict[str, Any], tower_params: int,
                    model_folder: bool = True):
    """Evaluate ``fit`` on the cached val and test features (``feats``: split -> FeatureSet) and write its result
    row with both splits' predictions, then its model folder (``save_tip_model``; ``model_folder=False``: features
    without a course's tower, the row alone); ``tower_params``: the frozen image tower's size."""
    from .. import results as R
    from ..evaluate import EvalResult
    start = time.perf_counter()
    test = EvalResult.from_logits(fit.logits(feats["test"].features), feats["test"].labels)
    score_seconds = time.perf_counter() - start
    val = EvalResult.from_logits(fit.logits(feats["val"].features), feats["val"].labels)
    train, eval_seconds = fit.train, feats["test"].seconds + score_seconds
    config = {**cfg.to_dict(), "alpha": fit.search.alpha, "beta": fit.search.beta}
    if fit.train_alpha is not None:
        config |= {"train_alpha": fit.train_alpha, "train_beta": fit.train_beta}
    result = R.make_result(
        method=fit.method, test=test, val_acc=val.top1, trainable_params=fit.trainable_params,
        total_params=tower_params + fit.adapter.keys.numel(), train_seconds=fit.seconds, eval_seconds=eval_seconds,
        images_per_second=None, peak_memory_mb=train.peak_memory_mb if train else None, config=config,
        history=train.history if train else [], alpha=fit.search.alpha, beta=fit.search.beta,
        search=fit.search.to_dict(), first_search=fit.first_search.to_dict() if fit.first_search else None,
        cache_entries=int(fit.adapter.keys.shape[0]), feature_seconds=sum(f.seconds for f in feats.values()),
        total_params_counts="image tower + cache keys (N·D); the values are the one-hot labels",
        train_seconds_includes="cache + α/β search on validation" + (" + training the keys" if train else "")
        + "; feature extraction is feature_seconds",
        epochs_run=train.epochs_run if train else None, best_epoch=train.best_epoch if train else None,
        **course.identity(), **(tip_costs(course, fit, feats, cfg) if model_folder else {}))
    if not model_folder:
        result["no_model_folder"] = "written without a course's image tower (model_folder=False)"
    else:
        from ..costs import folder_facts
        result.update(folder_facts(save_tip_model(course, fit, cfg, result)))
    return R.save_result(result, course.results_dir, predictions=test, val_predictions=val)


def tip_costs(course: Any, fit: TipFit, feats: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """A fitted Tip-Adapter(-F)'s counted costs: the feature pass over its training images, the keys' training
    (-F), the cache model's inference FLOPs per image and its memory by accounting."""
    from .. import costs
    from ..memory import module_mb
    from ..models import CLIPClassifier
    visual, (x, y) = course.loaded.model.visual, (feats["train"].features, feats["train"].labels)
    deployed = CLIPClassifier(visual, fit.adapter.head)
    deployed.head = TipHead.from_adapter(fit.adapter)
    shared = costs.frozen_costs(visual, deployed, costs.probe_images(course.loaded.image_size, course.device), len(y))
    if fit.train is None:  # the cache is built and α, β chosen: nothing is trained
        held = module_mb(visual) + module_mb(fit.adapter)
        fields = costs.no_steps("trains nothing (builds the cache, chooses α and β on validation)", 0, held,
                                "accounted: the frozen tower and the cache (nothing trains: no gradients, no "
                                "optimizer state, no saved activations)")
        return {**shared, **fields, "train_tflops": shared["feature_tflops"]}
    adapter = TipAdapter(fit.adapter.head, fit.adapter.keys, fit.adapter.values, fit.adapter.alpha, fit.adapter.beta)
    trained = costs.fit_costs(adapter, [adapter.keys], x[:cfg.batch_size], y[:cfg.batch_size], fit.train, visual)
    extra = 1e12 * shared["feature_tflops"]
    return {**shared, **trained, "train_tflops": costs.run_tflops(trained["steps"], trained["flops_per_step"], extra)}


# ----------------------------------------------------------------------------- the registry
# Both are "frozen features" methods, like the linear probe: they run on the cached image-tower features and use the
# labelled training images (their rows depend on shots), so neither is "no training" (which the tables show as 0
# shots). Neither goes through the image classifier's apply(): the cache is not part of a CLIPClassifier, so the
# parameter table and `bench` (which apply a method to a CLIPClassifier) leave them out; the result rows carry the
# real counts (0 and N·D).
TIP_ADAPTER = register(Method(
    name="tip_adapter", title="Tip-Adapter", kind="frozen features", order=2.3,
    config=TipAdapterConfig, summary=lambda cfg: f"training-free cache; α, β on val ({len(cfg.alphas)}×{len(cfg.betas)})",
    short="tip", image_batches=False, rebuild=rebuild,
))
TIP_ADAPTER_F = register(Method(
    name="tip_adapter_f", title="Tip-Adapter-F", kind="frozen features", order=2.6,
    config=TipAdapterFConfig, summary=lambda cfg: f"cache keys (N·D) trained {cfg.epochs} epochs; α, β on val",
    short="tipf", image_batches=False, profiles={"rehearse": {"epochs": 1}}, rebuild=rebuild,
))
