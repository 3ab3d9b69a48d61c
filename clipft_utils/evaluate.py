"""Evaluation: `EvalResult` (top-1, top-5, per-class accuracy, confusion, logits) and `evaluate()`."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ContextManager, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import PRECISIONS
from .errors import ConfigError
from .progress import bar

__all__ = ["EvalResult", "evaluate", "probabilities", "resolve_precision", "autocast_context"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """Turn ``"auto"|"fp32"|"bf16"|"fp16"`` into the concrete precision used on ``device``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}. Fix: pick one of those.")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if precision == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp16" and not cuda:
        raise ConfigError(
            f"precision='fp16' needs a CUDA device, but device is '{dev}'. "
            "Fix: use precision='fp32' (or 'bf16') on CPU, or 'auto' to pick for you."
        )
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "precision='bf16' is not supported by this GPU. Fix: use precision='fp16' or 'auto'."
        )
    return precision


def autocast_context(precision: str, device: str | torch.device) -> ContextManager:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    resolved = resolve_precision(precision, device)
    if resolved == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[resolved])


def train_modes(model: nn.Module) -> dict[nn.Module, bool]:
    """Remember the train/eval flag of every sub-module (to restore mixed modes exactly)."""
    return {m: m.training for m in model.modules()}


def restore_modes(modes: dict[nn.Module, bool]) -> None:
    """Put back the flags saved by `train_modes`."""
    for module, flag in modes.items():
        module.training = flag


def probabilities(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Softmax over the last axis as float32 (average these for an ensemble; pass ``log(mean)`` back as logits)."""
    x = logits.detach().cpu() if torch.is_tensor(logits) else torch.as_tensor(np.asarray(logits))
    return torch.softmax(x.double(), dim=-1).float().numpy()


def _as_arrays(logits: Any, labels: Any, num_classes: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate and convert logits [N, C] and labels [N]."""
    if torch.is_tensor(logits):
        logits = logits.detach().float().cpu().numpy()
    if torch.is_tensor(labels):
        labels = labels.detach().cpu().numpy()
    logits = np.asarray(logits, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[0] == 0:
        raise ConfigError(
            f"Need logits [N, C] and labels [N] with N > 0; got {logits.shape} and {labels.shape}. "
            "Fix: pass one row of logits per labelled example."
        )
    c = logits.shape[1]
    if num_classes is not None and num_classes != c:
        raise ConfigError(f"logits have {c} columns but num_classes={num_classes}. Fix: make them agree.")
    if labels.min() < 0 or labels.max() >= c:
        raise ConfigError(f"labels must lie in [0, {c}), got [{labels.min()}, {labels.max()}]. Fix: check the dataset.")
    return logits, labels, c


@dataclass
class EvalResult:
    """Classification metrics of one model on one split; arrays stay here, `to_dict` is the JSON view."""

    top1: float
    top5: float
    per_class_acc: np.ndarray   # [C] float, NaN for classes with no examples
    confusion: np.ndarray       # [C, C] int64, rows = true class, columns = predicted
    logits: np.ndarray          # [N, C] float32
    labels: np.ndarray          # [N] int64
    preds: np.ndarray           # [N] int64
    loss: float                 # mean cross-entropy

    @classmethod
    def from_logits(cls, logits: Any, labels: Any, num_classes: int | None = None) -> "EvalResult":
        """Compute every metric from logits [N, C] and labels [N] (top-5 becomes top-C when C < 5)."""
        logits, labels, c = _as_arrays(logits, labels, num_classes)
        preds = logits.argmax(axis=1).astype(np.int64)
        true_logit = logits[np.arange(len(labels)), labels][:, None]
        rank = (logits > true_logit).sum(axis=1)  # classes strictly ahead of the true one (ties count for us)
        confusion = np.zeros((c, c), dtype=np.int64)
        np.add.at(confusion, (labels, preds), 1)
        support = confusion.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
        loss = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(labels)).item()
        return cls(
            top1=float((preds == labels).mean()), top5=float((rank < min(5, c)).mean()),
            per_class_acc=per_class.astype(np.float64), confusion=confusion,
            logits=logits, labels=labels, preds=preds, loss=float(loss),
        )

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.confusion.shape[0])

    @property
    def mean_per_class_acc(self) -> float:
        """Mean of the per-class accuracies over classes that have examples (Flowers102's usual metric)."""
        return float(np.nanmean(self.per_class_acc))

    def most_confused(self, k: int = 10) -> list[tuple[int, int, int]]:
        """The ``k`` largest off-diagonal confusion counts as ``(true, pred, count)``, largest first."""
        off = self.confusion.copy()
        np.fill_diagonal(off, 0)
        flat = np.argsort(-off, axis=None, kind="stable")[:k]
        pairs = [(int(i // off.shape[1]), int(i % off.shape[1])) for i in flat]
        return [(t, p, int(off[t, p])) for t, p in pairs if off[t, p] > 0]

    def to_dict(self, classnames: Sequence[str] | None = None, k: int = 10) -> dict[str, Any]:
        """JSON-ready summary: scalar metrics, the per-class list (None = no examples) and top confusions."""
        confused = [
            {"true": t, "pred": p, "count": c,
             **({"true_name": classnames[t], "pred_name": classnames[p]} if classnames is not None else {})}
            for t, p, c in self.most_confused(k)
        ]
        return {
            "top1": self.top1, "top5": self.top5, "loss": self.loss,
            "mean_per_class_acc": self.mean_per_class_acc,
            "n": int(len(self.labels)), "num_classes": self.num_classes,
            "per_class_acc": [None if np.isnan(a) else float(a) for a in self.per_class_acc],
            "most_confused": confused,
        }


def _batches(loader: Iterable, progress: bool) -> Iterable:
    """Iterate a loader, with a progress bar if asked."""
    total = len(loader) if hasattr(loader, "__len__") else None
    return bar(loader, total=total, desc="eval", leave=False, disable=not progress)


def evaluate(
    model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu", precision: str = "auto",
    progress: bool = False, num_classes: int | None = None,
) -> EvalResult:
    """Run ``model`` (moved to ``device``) over ``(images, labels)`` batches in eval mode and score it."""
    resolve_precision(precision, device)  # fail before any work
    model.to(device)
    modes = train_modes(model)
    model.eval()
    all_logits, all_labels = [], []
    try:
        with torch.inference_mode(), autocast_context(precision, device):
            for batch in _batches(loader, progress):
                images, labels = batch[0], torch.as_tensor(batch[1])
                out = model(images.to(device, non_blocking=True)).float().cpu()
                weights = getattr(batch, "weights", None)
                if weights is not None:  # a loader.Batch: leave out weightless padding items
                    keep = weights.cpu() > 0
                    out, labels = out[keep], labels.cpu()[keep]
                all_logits.append(out)
                all_labels.append(labels.cpu())
    finally:
        restore_modes(modes)
    if not all_logits:
        raise ConfigError("evaluate() got an empty loader. Fix: pass a loader over a non-empty split.")
    return EvalResult.from_logits(torch.cat(all_logits), torch.cat(all_labels), num_classes)
