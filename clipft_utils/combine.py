"""Combining methods: prediction ensembles, WiSE-FT weight interpolation, LP→FT heads, base-to-novel splits.

* Ensembles average **probabilities** (softmax of each member's logits), not logits: a member that is
  very confident (large logit gaps) then cannot outvote the others by its temperature alone.
* WiSE-FT (Wortsman et al., 2022) evaluates ``θ(α) = (1 - α)·θ_zs + α·θ_ft`` for the whole classifier
  (image tower *and* head; θ_zs's head is the zero-shot text head). The endpoints are exact copies.
* LP→FT (Kumar et al., 2022) starts fine-tuning from a fitted linear-probe head instead of the
  zero-shot one; ``set_head`` puts such a head (weight and bias) into a classifier.
* Base-to-novel (CoCoOp's protocol): train on the first half of the classes, measure zero-shot accuracy
  on the second half; ``class_subset`` restricts a split to some classes and re-indexes their labels.
"""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .data import ImageSplit
from .errors import ConfigError

__all__ = [
    "short_name", "ensemble_probs", "ensemble_logits", "accuracy", "subset_table", "same_predictions",
    "interpolate_state_dicts", "interpolated", "wise_ft", "WiseFT", "curve_shape", "set_head", "base_novel_classes",
    "class_subset", "restricted_eval", "Member", "collect_members", "ensemble_result", "combination_result",
    "remove_rows",
]

def short_name(method: str) -> str:
    """A method's part of a combination's name ("lp+ft"): its ``Method.short``; other names as they are."""
    from .methods.base import REGISTRY
    from .plugins import load
    load()
    return REGISTRY[method].short_name if method in REGISTRY else method
"""Short method names for ensemble variants (``ensemble-zs+lp+ft``)."""


# ----------------------------------------------------------------------------- prediction ensembles
def _softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax in float64 (numerically stable)."""
    x = np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=-1, keepdims=True)


def ensemble_probs(logits: Sequence[Any], weights: Sequence[float] | None = None) -> np.ndarray:
    """Weighted mean of the members' softmax probabilities [N, C] (weights are normalised to sum 1)."""
    if len(logits) == 0:
        raise ConfigError("ensemble_probs needs at least one member's logits.")
    probs = [_softmax(x) for x in logits]
    shapes = {p.shape for p in probs}
    if len(shapes) != 1:
        raise ConfigError(f"Ensemble members disagree in shape {sorted(shapes)}. Fix: use predictions of "
                          "the same split (same images, same order, same classes).")
    w = np.ones(len(probs)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(probs),) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"weights must be {len(probs)} non-negative numbers with a positive sum, got {weights!r}.")
    w = w / w.sum()
    return np.einsum("m,mnc->nc", w, np.stack(probs))


def ensemble_logits(logits: Sequence[Any], weights: Sequence[float] | None = None) -> np.ndarray:
    """``log`` of the ensemble's probabilities: logits whose softmax is the ensemble (for EvalResult)."""
    return np.log(np.clip(ensemble_probs(logits, weights), 1e-30, None)).astype(np.float32)


def accuracy(scores: Any, labels: Any) -> float:
    """Top-1 accuracy of scores (logits or probabilities) [N, C] against labels [N]."""
    scores, labels = np.asarray(scores), np.asarray(labels).reshape(-1)
    if scores.shape[0] != labels.shape[0]:
        raise ConfigError(f"{scores.shape[0]} score rows but {labels.shape[0]} labels.")
    return float((scores.argmax(axis=1) == labels).mean())


def subset_table(preds: Mapping[str, Any], labels: Any, *, val_preds: Mapping[str, Any] | None = None,
                 val_labels: Any = None, min_size: int = 1) -> "pd.DataFrame":
    """Accuracy of the probability-averaged ensemble of every subset of ``preds`` (test, and val if given)."""
    import pandas as pd
    names = list(preds)
    if val_preds is not None and (val_labels is None or set(val_preds) != set(names)):
        raise ConfigError("val_preds must hold the same members as preds, and val_labels must be given.")
    rows = []
    for size in range(max(1, min_size), len(names) + 1):
        for members in combinations(names, size):
            row = {"subset": "+".join(short_name(m) for m in members), "members": members, "size": size,
                   "test_acc": accuracy(ensemble_probs([preds[m] for m in members]), labels)}
            if val_preds is not None:
                row["val_acc"] = accuracy(ensemble_probs([val_preds[m] for m in members]), val_labels)
            rows.append(row)
    return pd.DataFrame(rows)


def same_predictions(a: Any, b: Any, atol: float = 1e-3) -> bool:
    """Whether two logit arrays are the same predictions (same shape, same argmax, values within ``atol``)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool((a.argmax(1) == b.argmax(1)).all()) and bool(np.allclose(a, b, atol=atol))


@dataclass
class Member:
    """One ensemble member: its validation and test logits, and where they came from."""

    name: str
    test: np.ndarray
    val: np.ndarray
    source: str             # "saved" (its notebook wrote both) or "rebuilt here" (an exact rebuild)


def collect_members(folder: Any, seed: int, wanted: Sequence[str], rebuilt: Mapping[str, tuple[Any, Any]],
                    test_labels: Any, val_labels: Any,
                    shots: int | None = None) -> tuple[dict[str, Member], "pd.DataFrame"]:
    """Members with validation AND test predictions: saved by their notebook, else ``rebuilt[name] = (val, test)``
    (only exact rebuilds belong there); anything else is left out, so that every choice is made on validation.

    Saved predictions count only when they are of these very images (same labels in the same order)."""
    import pandas as pd
    from pathlib import Path
    from .results import load_predictions, run_name
    members, rows = {}, []
    for name in wanted:
        run, member = run_name(name, seed, None, shots), None
        if (Path(folder) / "predictions" / f"{run}.npz").exists():
            try:
                (test, tl), (val, vl) = load_predictions(folder, run), load_predictions(folder, run, "val")
                if np.array_equal(tl, np.asarray(test_labels)) and np.array_equal(vl, np.asarray(val_labels)):
                    member = Member(name, test, val, "saved")
            except KeyError:  # saved before validation predictions were kept
                pass
        if member is None and name in rebuilt:
            member = Member(name, np.asarray(rebuilt[name][1]), np.asarray(rebuilt[name][0]), "rebuilt here")
        if member is None:
            rows.append({"member": name, "predictions": "left out: no validation and test predictions of these images"})
            continue
        members[name] = member
        rows.append({"member": name, "predictions": member.source})
    return members, pd.DataFrame(rows).set_index("member")


def ensemble_result(course: Any, members: Mapping[str, Member], names: Sequence[str], test_labels: Any,
                    val_labels: Any, **extra: Any) -> tuple[dict[str, Any], Any, Any]:
    """The ``ensemble-<a>+<b>…`` result row of the equal-weight probability average of ``names``, with its test and
    validation EvalResults (the row is chosen on validation; the test numbers only report)."""
    from .evaluate import EvalResult
    from .results import read_result, result_path
    test = EvalResult.from_logits(ensemble_logits([members[m].test for m in names]), test_labels)
    val = EvalResult.from_logits(ensemble_logits([members[m].val for m in names]), val_labels)
    paths = [result_path(course.results_dir, m, course.seed, None, course.shots) for m in names]
    parts = [read_result(p) for p in paths if p.exists()]
    row = combination_result(
        course, "ensemble", "+".join(short_name(m) for m in names), test, val_acc=val.top1,
        trainable_params=sum(p["trainable_params"] for p in parts), total_params=sum(p["total_params"] for p in parts),
        train_seconds=sum(p["train_seconds"] for p in parts), config={"members": list(names), "weights": "equal"},
        members=list(names), member_sources={m: members[m].source for m in names}, selected_on="val",
        params_are="sums over the members' result rows that exist (each member runs at inference)",
        **{**member_costs(parts if len(parts) == len(names) else [{}]), **extra})
    return row, test, val


# ----------------------------------------------------------------------------- weight interpolation
def interpolate_state_dicts(sd0: Mapping[str, torch.Tensor], sd1: Mapping[str, torch.Tensor],
                            alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha)·sd0 + alpha·sd1`` for float tensors (alpha 0/1 give exact copies); others copied from sd0."""
    if set(sd0) != set(sd1):
        diff = sorted(set(sd0) ^ set(sd1))
        raise ConfigError(f"State dicts differ in keys {diff[:5]}. Fix: interpolate two copies of one architecture.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha must lie in [0, 1], got {alpha}.")
    out = {}
    for key, a in sd0.items():
        b = sd1[key]
        if a.shape != b.shape:
            raise ConfigError(f"'{key}' has shape {tuple(a.shape)} vs {tuple(b.shape)}.")
        if not a.is_floating_point() or alpha == 0:
            out[key] = a.detach().clone()
        elif alpha == 1:
            out[key] = b.detach().clone()
        else:
            mixed = (1.0 - alpha) * a.detach().double() + alpha * b.detach().to(a.device).double()
            out[key] = mixed.to(a.dtype)
    return out


def interpolated(clf_zs: nn.Module, clf_ft: nn.Module, alpha: float) -> nn.Module:
    """A new model (copy of ``clf_ft``'s structure) holding the weights ``θ(alpha)``."""
    model = copy.deepcopy(clf_ft)
    model.load_state_dict(interpolate_state_dicts(clf_zs.state_dict(), clf_ft.state_dict(), alpha))
    return model


@dataclass
class WiseFT:
    """A WiSE-FT sweep: accuracy per alpha and split, and every evaluation (with logits)."""

    curve: "pd.DataFrame"                                  # columns: alpha, <split>_acc
    evals: dict[float, dict[str, Any]] = field(repr=False)  # alpha -> split -> EvalResult
    endpoints: tuple[nn.Module, ...] = field(default=(), repr=False)  # (θ_zs, θ_ft) as given to wise_ft()

    def model(self, alpha: float) -> nn.Module:
        """``θ(alpha)`` as one model (a copy of the fine-tuned model's structure): what its model folder holds."""
        if len(self.endpoints) != 2:
            raise ConfigError("This sweep does not hold its two endpoint models. Fix: build it with wise_ft().")
        return interpolated(*self.endpoints, alpha)

    def add(self, alpha: float, split: str, loader: Any, *, device: Any = "cpu", precision: str = "auto") -> Any:
        """Evaluate ``θ(alpha)`` on one more split (e.g. test, only at the α chosen on validation); returns it."""
        from .evaluate import evaluate
        alpha = float(alpha)
        if split not in self.evals.get(alpha, {}):
            self.evals.setdefault(alpha, {})[split] = evaluate(self.model(alpha), loader, device=device,
                                                               precision=precision)
        self.curve.loc[self.curve["alpha"] == alpha, f"{split}_acc"] = self.evals[alpha][split].top1
        return self.evals[alpha][split]

    def records(self) -> list[dict[str, Any]]:
        """The curve as JSON-ready rows: one per α, None where a split was not evaluated at it."""
        return [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
                for row in self.curve.to_dict("records")]

    def best_alpha(self, split: str = "val") -> float:
        """The alpha with the highest accuracy on ``split`` (the smallest such alpha on ties)."""
        col = f"{split}_acc"
        if col not in self.curve:
            raise ConfigError(f"The sweep has no '{split}' column. Fix: pass a '{split}' loader to wise_ft().")
        best = self.curve[col].max()
        return float(self.curve.loc[self.curve[col] == best, "alpha"].min())


def wise_ft(clf_zs: nn.Module, clf_ft: nn.Module, alphas: Iterable[float], loaders: Mapping[str, Any], *,
            device: Any = "cpu", precision: str = "auto",
            known: Mapping[float, Mapping[str, Any]] | None = None) -> WiseFT:
    """Evaluate ``θ(α)`` on each loader for each α; ``known[α][split]`` (e.g. the endpoints) is reused, not rerun.
    A known split that is not among the loaders (the endpoints' test) is kept in the curve too; NaN elsewhere."""
    from .evaluate import evaluate
    import pandas as pd
    sd0 = {k: v.detach().cpu() for k, v in clf_zs.state_dict().items()}
    sd1 = {k: v.detach().cpu() for k, v in clf_ft.state_dict().items()}
    model = copy.deepcopy(clf_ft)
    rows, evals = [], {}
    for alpha in sorted(float(a) for a in alphas):
        done = dict((known or {}).get(alpha, {}))
        if set(loaders) - set(done):
            model.load_state_dict(interpolate_state_dicts(sd0, sd1, alpha))
        evals[alpha] = {**done, **{s: done[s] if s in done else evaluate(model, ld, device=device,
                                                                           precision=precision)
                                   for s, ld in loaders.items()}}
        rows.append({"alpha": alpha, **{f"{s}_acc": e.top1 for s, e in evals[alpha].items()}})
    return WiseFT(pd.DataFrame(rows), evals, (clf_zs, clf_ft))


def curve_shape(alphas: Sequence[float], accs: Sequence[float]) -> str:
    """What a WiSE-FT accuracy curve does along α, in words (read off the numbers, never assumed)."""
    a, y = np.asarray(alphas, dtype=float), np.asarray(accs, dtype=float)
    keep = np.isfinite(y)
    a, y = a[keep], y[keep]
    if len(y) < 3:
        return f"only {len(y)} point(s): too few to say what the curve does"
    steps = np.diff(y)
    best = int(np.argmax(y))
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    if (steps >= 0).all():
        return (f"rises monotonically from {pct(y[0])} at α = {a[0]:g} to {pct(y[-1])} at α = {a[-1]:g}: no α in "
                "between beats the fine-tuned end")
    if (steps <= 0).all():
        return (f"falls monotonically from {pct(y[0])} at α = {a[0]:g} to {pct(y[-1])} at α = {a[-1]:g}: the "
                "zero-shot end is best")
    unimodal = (steps[:best] >= 0).all() and (steps[best:] <= 0).all()       # rises to its top, then falls
    if unimodal and 0 < best < len(y) - 1 and y[best] > max(y[0], y[-1]):
        return (f"peaks inside: highest at α = {a[best]:g} ({pct(y[best])}), above both ends ({pct(y[0])} at "
                f"α = {a[0]:g}, {pct(y[-1])} at α = {a[-1]:g})")
    return f"is not monotone (it dips and recovers); its highest point is at α = {a[best]:g} ({pct(y[best])})"


# ----------------------------------------------------------------------------- LP→FT
@torch.no_grad()
def set_head(clf: nn.Module, weight: Any, bias: Any = None) -> nn.Module:
    """Copy a head (weight [C, D], optional bias [C]; e.g. a fitted linear probe) into ``clf.head``."""
    w = torch.as_tensor(np.asarray(weight), dtype=clf.head.weight.dtype)
    if w.shape != clf.head.weight.shape:
        raise ConfigError(f"Head weight has shape {tuple(w.shape)}, the classifier needs "
                          f"{tuple(clf.head.weight.shape)}.")
    clf.head.weight.copy_(w.to(clf.head.weight.device))
    if clf.head.bias is not None:
        b = torch.zeros(w.shape[0]) if bias is None else torch.as_tensor(np.asarray(bias), dtype=torch.float32)
        clf.head.bias.copy_(b.reshape(-1).to(clf.head.bias))
    return clf


# ----------------------------------------------------------------------------- base-to-novel
def base_novel_classes(num_classes: int) -> tuple[list[int], list[int]]:
    """(base, novel): the first half of the labels and the second half (CoCoOp's split)."""
    if num_classes < 2:
        raise ConfigError(f"A base-to-novel split needs at least 2 classes, got {num_classes}.")
    half = (num_classes + 1) // 2
    return list(range(half)), list(range(half, num_classes))


def class_subset(split: ImageSplit, classes: Sequence[int]) -> ImageSplit:
    """The rows of ``split`` whose label is in ``classes``, labels re-indexed to 0..len(classes)-1 in that order."""
    classes = [int(c) for c in classes]
    if not classes or len(set(classes)) != len(classes) or min(classes) < 0 or max(classes) >= split.num_classes:
        raise ConfigError(f"classes must be distinct labels in [0, {split.num_classes}), got {classes[:10]}...")
    lut = np.full(split.num_classes, -1, dtype=np.int64)
    lut[classes] = np.arange(len(classes))
    rows = np.flatnonzero(lut[split.targets] >= 0)
    base_rows = rows if split.indices is None else np.asarray(split.indices)[rows]
    tag = hashlib.sha1(np.asarray(classes, dtype=np.int64).tobytes()).hexdigest()[:8]
    return replace(split, labels=lut[np.asarray(split.labels)], indices=base_rows.astype(np.int64),
                   classnames=[split.classnames[c] for c in classes], split=f"{split.split}-cls{tag}")


def restricted_eval(features: Any, labels: Any, classes: Sequence[int], weight: Any, bias: Any = None):
    """EvalResult of the head ``W·normalize(f) + b`` on the examples of ``classes`` only (labels re-indexed).

    ``weight`` / ``bias`` hold one row per entry of ``classes`` (e.g. ``zero_shot_head[classes]``).
    """
    from .evaluate import EvalResult
    f = torch.as_tensor(features).float()
    labels = np.asarray(labels).reshape(-1)
    lut = np.full(int(max(labels.max(), max(classes))) + 1, -1, dtype=np.int64)
    lut[list(classes)] = np.arange(len(classes))
    rows = np.flatnonzero(lut[labels] >= 0)
    logits = torch.nn.functional.normalize(f[rows], dim=-1) @ torch.as_tensor(weight).float().T
    if bias is not None:
        logits = logits + torch.as_tensor(bias).float()
    return EvalResult.from_logits(logits, lut[labels[rows]], num_classes=len(classes))


# ----------------------------------------------------------------------------- result rows
def combination_result(course: Any, method: str, variant: str | None, test: Any, *, val_acc: float | None,
                       trainable_params: int = 0, total_params: int = 0, train_seconds: float = 0.0,
                       eval_seconds: float = 0.0, config: dict | None = None, history: list | None = None,
                       **extra: Any) -> dict[str, Any]:
    """A result row (``results.make_result``) for a combination that is not one training run."""
    from .results import make_result
    return make_result(method=method, variant=variant, test=test, val_acc=val_acc,
                       trainable_params=trainable_params, total_params=total_params, train_seconds=train_seconds,
                       eval_seconds=eval_seconds, images_per_second=None, peak_memory_mb=None,
                       config=config or {}, history=history or [], **{**course.identity(), **NO_RUN, **extra})


NO_RUN = {"steps": None, "epochs": None, "budget": "no training run of its own", "train_tflops": None,
          "flops_per_step": None, "gflops_per_image": None, "train_memory_mb": None, "memory_measure": None,
          "step_ms": None, "step_ms_spread": None, "step_ms_q1": None, "step_ms_q3": None,
          "step_ms_note": "no training run of its own", "deployed_params": None, "model_folder_mb": None}
"""A combination's cost fields unless it says otherwise: it is no training run of its own (``budget`` says what)."""


def member_costs(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An ensemble's costs from its members' rows: every member runs on every image and each was trained, so the
    compute, the inference FLOPs and the deployed numbers are sums (each None when a member lacks it)."""
    def total(key: str) -> float | None:
        values = [p.get(key) for p in parts]
        return None if not values or any(v is None for v in values) else sum(values)
    return {"train_tflops": total("train_tflops"), "gflops_per_image": total("gflops_per_image"),
            "deployed_params": total("deployed_params"),
            "budget": "no training run of its own: its members' runs (their rows), summed",
            "costs_are": "sums over the members' result rows (each member runs at inference)"}


def remove_rows(folder: Any, method: str, seed: int, keep: Iterable[str | None] = (),
                shots: int | None = None) -> list[str]:
    """Delete ``method``'s result rows (and predictions) for ``seed`` and ``shots`` except the variants in ``keep``.

    For combination rows whose variant names their members or alpha: a rerun that picks another subset
    must not leave the previous pick behind as a second row. Returns the removed run names.
    """
    import re
    import shutil
    from pathlib import Path
    from .results import run_name
    folder = Path(folder)
    keep_names = {run_name(method, seed, v, shots) for v in keep}
    tail = ("" if shots is None else f"_shots{shots}") + f"_seed{seed}"
    pattern = re.compile(rf"{re.escape(method)}(-.+?)?{re.escape(tail)}")
    removed = []
    for path in folder.glob(f"{method}*{tail}.json"):
        if pattern.fullmatch(path.stem) and (shots is not None or "_shots" not in path.stem) \
                and path.stem not in keep_names:
            path.unlink(missing_ok=True)
            (folder / "predictions" / f"{path.stem}.npz").unlink(missing_ok=True)
            shutil.rmtree(folder / "models" / path.stem, ignore_errors=True)  # its model folder (WiSE-FT's) too
            removed.append(path.stem)
    return sorted(removed)
