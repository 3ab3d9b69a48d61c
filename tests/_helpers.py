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


def toy_clip_and_prompts():
    """ToyCLIP, SynthFlowers' class names and its single template (the course's zero-shot prompt)."""
    from clipft_utils.datasets import get_dataset
    from clipft_utils.models import load_clip
    data = get_dataset("synthflowers", None)
    return load_clip("ToyCLIP", "synthflowers"), data.classnames, data.templates()


def random_images(n: int = 6, seed: int = 1):
    """``n`` random 64-px images (ToyCLIP's input size), the same for a given seed."""
    import torch
    return torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
