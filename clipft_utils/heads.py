"""Classifier heads on disk: ``heads/<run>.safetensors``, written by every notebook that fits or builds a head.

A head is the course's convention on normalised features, ``W · normalize(f) + b``. Files are safetensors with a
format tag: nothing read back can run code, and a damaged or foreign file is a WeightsError that names it and
the command that remakes it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import ResultsError, WeightsError
from .paths import atomic_path

HEAD_KEYS = ("weight", "bias")
HEAD_FORMAT = "clipft-head-1"


def head_logits(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The course's head convention on features: ``W · normalize(f) + b``."""
    logits = F.normalize(features.float(), dim=-1) @ weight.float().T
    return logits if bias is None else logits + bias.float()


def save_head(path: str | Path, weight: torch.Tensor, bias: torch.Tensor | None = None, **meta: Any) -> Path:
    """Write ``weight [C, D]``, ``bias [C]`` and JSON ``meta`` to a safetensors file, atomically (the course's head:
    ``W · normalize(f) + b``); nothing in it can run code when it is read."""
    from safetensors.torch import save_file
    weight = weight.detach().float().cpu().contiguous().clone()
    bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().cpu().contiguous().clone()
    if bias.shape != (weight.shape[0],):
        raise ResultsError(f"Head bias has shape {tuple(bias.shape)}, expected ({weight.shape[0]},).")
    from .results import plain_json
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({"weight": weight, "bias": bias}, str(tmp),
                  metadata={"format": HEAD_FORMAT, "meta": json.dumps(plain_json(meta))})
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
    from .records import remake_command
    return remake_command(path)


def find_head(results_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The head another notebook saved as ``name`` (a run name), or None when it has not written one."""
    path = head_path(results_dir, name)
    return load_head(path) if path.exists() else None


def head_path(results_dir: str | Path, name: str) -> Path:
    """``<results_dir>/heads/<name>.safetensors``."""
    return Path(results_dir) / "heads" / f"{name}.safetensors"
