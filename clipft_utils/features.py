"""Frozen image features, extracted once and cached on disk (keyed by model, weights, data and transform)."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import ImageSplit
from .paths import atomic_path, cache_dir, file_lock, notice
from .progress import bar


@dataclass
class FeatureSet:
    """Image embeddings (not normalised) of one split, with labels and how they were obtained."""

    features: torch.Tensor   # float32 [N, D]
    labels: torch.Tensor     # int64 [N]
    seconds: float           # the extraction pass that made these features (also when read from the cache)
    from_cache: bool
    path: str
    peak_memory_mb: float | None = None  # of that pass (CUDA allocated, or process RSS on CPU)
    device: str = ""                     # where that pass ran

    def normalized(self) -> torch.Tensor:
        """L2-normalised features."""
        return torch.nn.functional.normalize(self.features, dim=-1)

    @property
    def images_per_second(self) -> float:
        return len(self.labels) / self.seconds if self.seconds > 0 else float("nan")


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha1(t.numpy().tobytes()).hexdigest()


def _read(path, labels: torch.Tensor) -> dict | None:
    """A cached entry that is whole and matches ``labels``; a damaged one is reported and None returned."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        ok = (stored["features"].shape[0] == len(stored["labels"])
              and stored.get("sha1") == _digest(stored["features"]))
    except Exception as exc:  # noqa: BLE001 - truncated or garbage file
        notice(f"The feature cache '{path}' is damaged ({type(exc).__name__}: {exc}): rebuilding it.", stacklevel=3)
        return None
    if not ok:
        notice(f"The feature cache '{path}' does not match its recorded hash: rebuilding it.", stacklevel=3)
        return None
    return stored if torch.equal(stored["labels"], labels) else None


def feature_key(model_name: str, weights_id: str, split: ImageSplit, precision: str) -> str:
    """Cache key: model, weights, dataset pixels and rows, split, transform, numeric precision."""
    raw = f"{model_name}|{weights_id}|{split.cache_key}|eval|{precision}"
    return f"{model_name}_{weights_id}_{split.key_prefix}_{split.split}_{hashlib.sha1(raw.encode()).hexdigest()[:16]}"


@torch.inference_mode()
def encode_images(visual: nn.Module, split: ImageSplit, *, batch_size: int = 256, device="cpu",
                  precision: str = "fp32", progress: bool = True) -> torch.Tensor:
    """Run the image tower over a split (evaluation transform) and return float32 features on CPU."""
    from .evaluate import autocast_context
    was_training = visual.training
    visual.eval()
    out = []
    from .loader import CachedLoader
    loader = CachedLoader(split, batch_size, device=device)
    try:
        for batch in bar(loader, desc=f"features {split.dataset}/{split.split}", disable=not progress, leave=False):
            with autocast_context(precision, device):
                out.append(visual(batch[0]).float().cpu())
    finally:
        visual.train(was_training)
    return torch.cat(out)


def weights_key(weights_id: str, visual: nn.Module) -> str:
    """``weights_id`` for cache keys; random weights (the rehearsal's) differ with the seed that drew them, so theirs
    carries a digest of the tower."""
    if weights_id != "random":
        return weights_id
    from .modelfolder import base_digest
    return f"random-{base_digest(visual)}"


def zero_shot_head(loaded, classnames: list[str], templates: list[str], cache: bool = True) -> torch.Tensor:
    """``models.zero_shot_head`` (``logit_scale`` · class text embeddings, [C, D] on CPU) from the cache, or computed
    once and cached: every notebook of a course needs it, and on a CPU the text tower takes seconds to tens of
    seconds per pass. Keyed by model, weights, classes, templates and the device type; stored as safetensors."""
    from safetensors.torch import save_file

    from .models import zero_shot_head as compute
    path = head_cache_path(loaded, classnames, templates)
    with file_lock(path.with_name(f".{path.name}.lock")):
        if cache and path.exists():
            head, problem = _read_head(path, len(classnames))
            if problem is None:
                return head
            notice(f"The zero-shot head cache '{path}' {problem}: rebuilding it.", stacklevel=2)
        head = compute(loaded, classnames, templates).float().cpu().contiguous()
        if cache:
            with atomic_path(path) as tmp:
                save_file({"head": head}, str(tmp), metadata={"sha1": _digest(head)})
    return head


def head_cache_path(loaded, classnames: list[str], templates: list[str]) -> Path:
    """Where ``zero_shot_head`` keeps the head of these classes and templates for this model, weights and device."""
    import json
    device = next(loaded.model.parameters()).device
    raw = json.dumps([loaded.name, weights_key(loaded.weights_id, loaded.model.visual), list(classnames),
                      list(templates), device.type, torch.__version__])
    return cache_dir("text") / f"{loaded.name}_{hashlib.sha1(raw.encode()).hexdigest()[:20]}.safetensors"


def _read_head(path, classes: int) -> tuple[torch.Tensor | None, str | None]:
    """A cached zero-shot head, or None and what is wrong with the file (unreadable, shape, values, digest)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            recorded, head = (f.metadata() or {}).get("sha1"), f.get_tensor("head")
    except Exception as exc:  # noqa: BLE001 - truncated or garbage file
        return None, f"is damaged ({type(exc).__name__}: {exc})"
    if recorded is None:
        return None, "records no digest of its values (written by an older version)"
    if head.ndim != 2 or head.shape[0] != classes:
        return None, f"holds a head of shape {list(head.shape)}, not one row for each of the {classes} classes"
    if recorded != _digest(head):
        return None, "does not match its recorded digest (its values were changed)"
    if not torch.isfinite(head).all():
        return None, "holds values that are not finite"
    return head, None


def extract_features(visual: nn.Module, split: ImageSplit, *, model_name: str, weights_id: str,
                     batch_size: int = 256, device="cpu", precision: str = "fp32", cache: bool = True,
                     progress: bool = True) -> FeatureSet:
    """Features of ``split`` from the cache, or computed once and cached (with the timing of that pass)."""
    from .memory import PeakMemory, module_mb
    path = cache_dir("features") / f"{feature_key(model_name, weights_key(weights_id, visual), split, precision)}.pt"
    labels = torch.as_tensor(np.asarray(split.targets), dtype=torch.long)
    with file_lock(path.with_name(f".{path.name}.lock")):
        stored = _read(path, labels) if cache and path.exists() else None
        if stored is not None:
            return FeatureSet(stored["features"], labels, float(stored.get("seconds", 0.0)), True, str(path),
                              stored.get("peak_memory_mb"), str(stored.get("device", "")))
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            feats = encode_images(visual, split, batch_size=batch_size, device=device, precision=precision,
                                  progress=progress)
            seconds = time.perf_counter() - start
        peak = module_mb(visual) + max(0.0, memory.delta_mb)  # the tower + what the pass added, as fit() measures
        if cache:
            with atomic_path(path) as tmp:
                torch.save({"features": feats, "labels": labels, "sha1": _digest(feats), "seconds": seconds,
                            "peak_memory_mb": peak, "device": str(device)}, tmp)
    return FeatureSet(feats, labels, seconds, False, str(path), peak, str(device))
