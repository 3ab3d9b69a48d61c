"""Helpers shared by the method tests (imported as ``from _helpers import ...``; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def changed_by_one_step(model: nn.Module, groups: list[dict], images: torch.Tensor, labels: torch.Tensor,
                        lr: float = 1e-2) -> set[str]:
    """Names of the parameters that one AdamW step on ``groups`` (cross-entropy on one batch) changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=lr)
    F.cross_entropy(model(images), labels).backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
