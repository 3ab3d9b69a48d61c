"""Helpers shared by the method tests (imported as ``from _helpers import ...``; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn


def changed_by_one_step(model: nn.Module, groups: list[dict], images: torch.Tensor, labels: torch.Tensor,
                        lr: float = 1e-2) -> set[str]:
    """Names of the parameters that one AdamW step on ``groups`` (cross-entropy on one batch) changed."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=lr)
    F.cross_entropy(model(images), labels).backward()
    opt.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def make_image_folder(root, counts: dict[str, int]):
    """A folder with ``counts[class]`` small PNGs per class (ROOT/<class>/<i>.png); returns ``root``."""
    for c, n in counts.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((20, 24, 3), 10 * i + len(c), np.uint8)).save(root / c / f"{i}.png")
    return root
