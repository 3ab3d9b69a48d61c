"""Frozen image features, extracted once and cached on disk (keyed by model, weights, data and transform)."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import ImageSplit
from .paths import atomic_path, cache_dir


@dataclass
class FeatureSet:
    """Image embeddings (not normalised) of one split, with labels and how they were obtained."""

    features: torch.Tensor   # float32 [N, D]
    labels: torch.Tensor     # int64 [N]
    seconds: float           # time spent extracting (0 when read from the cache)
    from_cache: bool
    path: str

    def normalized(self) -> torch.Tensor:
        """L2-normalised features."""
        return torch.nn.functional.normalize(self.features, dim=-1)


def feature_key(model_name: str, weights_id: str, split: ImageSplit, precision: str) -> str:
    """Cache key: model, weights, dataset pixels and rows, split, transform, numeric precision."""
    raw = f"{model_name}|{weights_id}|{split.cache_key}|eval|{precision}"
    return f"{model_name}_{weights_id}_{split.dataset}_{split.split}_{hashlib.sha1(raw.encode()).hexdigest()[:16]}"


@torch.inference_mode()
def encode_images(visual: nn.Module, split: ImageSplit, *, batch_size: int = 256, device="cpu",
                  precision: str = "fp32", progress: bool = True) -> torch.Tensor:
    """Run the image tower over a split (evaluation transform) and return float32 features on CPU."""
    from .evaluate import autocast_context
    was_training = visual.training
    visual.eval()
    out = []
    loader = split.with_augmentation(False).loader(batch_size=batch_size)
    try:
        for images, _ in tqdm(loader, desc=f"features {split.dataset}/{split.split}", disable=not progress,
                              leave=False):
            with autocast_context(precision, device):
                out.append(visual(images.to(device, non_blocking=True)).float().cpu())
    finally:
        visual.train(was_training)
    return torch.cat(out)


def extract_features(visual: nn.Module, split: ImageSplit, *, model_name: str, weights_id: str,
                     batch_size: int = 256, device="cpu", precision: str = "fp32", cache: bool = True,
                     progress: bool = True) -> FeatureSet:
    """Features of ``split`` from the cache, or computed once and cached."""
    path = cache_dir("features") / f"{feature_key(model_name, weights_id, split, precision)}.pt"
    labels = torch.as_tensor(np.asarray(split.targets), dtype=torch.long)
    if cache and path.exists():
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if torch.equal(stored["labels"], labels):
            return FeatureSet(stored["features"], labels, 0.0, True, str(path))
    start = time.perf_counter()
    feats = encode_images(visual, split, batch_size=batch_size, device=device, precision=precision,
                          progress=progress)
    seconds = time.perf_counter() - start
    if cache:
        with atomic_path(path) as tmp:
            torch.save({"features": feats, "labels": labels}, tmp)
    return FeatureSet(feats, labels, seconds, False, str(path))
