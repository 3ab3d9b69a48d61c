"""Zero-shot classification from cached image features, and classifier heads saved to disk."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from .errors import ResultsError, WeightsError
from .paths import atomic_path

if TYPE_CHECKING:
    import pandas as pd

HEAD_KEYS = ("weight", "bias")
HEAD_FORMAT = "clipft-head-1"


def zero_shot_logits(features: torch.Tensor, weights: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * cos(image, class text)``: [N, D] features x [C, D] text embeddings -> [N, C] logits."""
    return scale * F.normalize(features.float(), dim=-1) @ F.normalize(weights.float(), dim=-1).T


def head_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The course's head convention on features: ``W · normalize(f) + b``."""
    logits = F.normalize(features.float(), dim=-1) @ weight.float().T
    return logits if bias is None else logits + bias.float()


def template_accuracy(per_template: torch.Tensor, templates: Sequence[str], splits: Mapping[str, Any],
                      scale: float = 1.0, rank_on: str = "val") -> pd.DataFrame:
    """Top-1 of each template alone on each split, one ``"<split> top-1"`` column per split, ranked on ``rank_on``.

    ``per_template``: [C, T, D] class embeddings, one per template; ``splits``: name -> features with ``labels``.
    Ties keep the templates' order; only ``rank_on`` (validation) decides the ranking, never test.
    """
    import pandas as pd
    if per_template.shape[1] != len(templates) or rank_on not in splits:
        raise ValueError(f"template_accuracy needs one embedding per template ({per_template.shape[1]} for "
                         f"{len(templates)}) and the split it ranks on ({rank_on!r} among {list(splits)}).")
    table = pd.DataFrame({f"{name} top-1": [
        (zero_shot_logits(fs.features, per_template[:, t], scale).argmax(1) == torch.as_tensor(fs.labels))
        .float().mean().item() for t in range(len(templates))] for name, fs in splits.items()},
        index=pd.Index(list(templates), name="template"))
    return table.sort_values(f"{rank_on} top-1", ascending=False, kind="stable")


def template_sets(course: Any) -> dict[str, list[str]]:
    """``{"single": [CLIP's template], "ensemble": [several templates]}`` for the course's dataset."""
    return {"single": course.templates(), "ensemble": course.templates(ensemble=True)}


def class_embeddings(loaded: Any, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Normalised [C, D] class embeddings: each template embedded, normalised, averaged, renormalised."""
    from .models import zero_shot_weights
    return zero_shot_weights(loaded, classnames, templates).float().cpu()


def save_head(path: str | Path, weight: torch.Tensor, bias: torch.Tensor | None = None, **meta: Any) -> Path:
    """Write ``weight [C, D]``, ``bias [C]`` and JSON ``meta`` to a safetensors file, atomically (the course's head:
    ``W · normalize(f) + b``); nothing in it can run code when it is read."""
    from safetensors.torch import save_file
    weight = weight.detach().float().cpu().contiguous().clone()
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().cpu().contiguous().clone()
    if bias.shape != (weight.shape[0],):
        raise ResultsError(f"Head bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},).")
    from .results import _clean
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"weight": weight, "bias": bias}, str(tmp),
                  metadata={"format": HEAD_FORMAT, "meta": json.dumps(_clean(meta))})
    return path


def load_head(path: str | Path) -> dict[str, Any]:
    """Read a head written by ``save_head``: ``{weight, bias, **meta}``. A missing file is a ResultsError; a damaged
    one, or one that is not a clipft head in safetensors, a WeightsError naming it and the command that remakes it."""
    from safetensors import SafetensorError, safe_open
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"No classifier head at '{path}'. Fix: run the notebook that writes it first "
                           f"({remake_hint(path)}).")
    try:
        with safe_open(str(path), framework="pt") as f:
            info = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(info.get("meta", "{}")) if info.get("format") == HEAD_FORMAT else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise _bad_head(path, f"it is damaged or not a safetensors file ({str(exc).strip()[:80]})") from None
    if meta is None or not all(k in tensors for k in HEAD_KEYS):
        raise _bad_head(path, f"it is not a clipft classifier head (needs {HEAD_KEYS} and format {HEAD_FORMAT})")
    return {**meta, **tensors}


def _bad_head(path: Path, why: str) -> WeightsError:
    return WeightsError(f"Cannot read the classifier head '{path}': {why}. Nothing in it was loaded. "
                        f"Fix: delete it and remake it: {remake_hint(path)}.")


def remake_hint(path: Path) -> str:
    """The command that rewrites a file of a results folder (from the runner's completion records)."""
    from .runner import remake_command
    return remake_command(path)


def find_head(results_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The head another notebook saved as ``name`` (a run name), or None when it has not written one."""
    path = head_path(results_dir, name)
    return load_head(path) if path.exists() else None


def head_path(results_dir: str | Path, name: str) -> Path:
    """``<results_dir>/heads/<name>.safetensors``."""
    return Path(results_dir) / "heads" / f"{name}.safetensors"


@dataclass
class Timed:
    """Features of one split plus an honest timing of one extraction pass over it."""

    features: Any          # features.FeatureSet (from the cache when it was warm)
    seconds: float         # one uncached pass of the image tower over the split
    peak_memory_mb: float  # peak memory during that pass (CUDA allocated, or process RSS on CPU)
    images: int
    from_cache: bool


def timed_features(course: Any, split: str, progress: bool = False) -> Timed:
    """Cached features of ``split``; if they came from the cache, time one fresh pass so speed is always measured."""
    from .engine import PeakMemory
    from .features import encode_images
    with PeakMemory(course.device) as memory:
        fs = course.features(split, progress=progress)
    seconds = fs.seconds
    if fs.from_cache:
        with PeakMemory(course.device) as memory:
            start = time.perf_counter()
            encode_images(course.loaded.model.visual, course.splits[split], batch_size=course.eval_batch_size,
                          device=course.device, progress=progress)
            seconds = time.perf_counter() - start
    return Timed(fs, seconds, memory.peak_mb, len(fs.labels), fs.from_cache)
