"""Zero-shot classification: class names through the text tower's prompts, nothing trained (notebook 01)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..config import check_integer, check_positive
from ..errors import ConfigError
from .base import Method, register

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class ZeroShotConfig:
    """Zero-shot: prompts only, nothing is trained."""

    templates: str = "single"  # "single" (CLIP's flower template) or "ensemble"
    batch_size: int = 256

    def __post_init__(self) -> None:
        check_integer(self, "batch_size")
        check_positive(self, "batch_size")
        if self.templates not in ("single", "ensemble"):
            raise ConfigError(f"ZeroShotConfig.templates must be 'single' or 'ensemble', got {self.templates!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def zero_shot_logits(features: torch.Tensor, weights: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``scale * cos(image, class text)``: [N, D] features x [C, D] text embeddings -> [N, C] logits."""
    return scale * F.normalize(features.float(), dim=-1) @ F.normalize(weights.float(), dim=-1).T


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
    from ..models import zero_shot_weights
    return zero_shot_weights(loaded, classnames, templates).float().cpu()


def row_costs(course: Any, weight: torch.Tensor) -> dict[str, Any]:
    """Zero-shot's counted costs (``clipft_utils.costs``): nothing trains; an image costs one forward pass of the
    frozen tower and the head ``weight`` (the text tower ran once, to make the head)."""
    from .. import costs
    from ..models import CLIPClassifier
    visual = course.loaded.model.visual
    images = costs.probe_images(course.loaded.image_size, course.device)
    return {**costs.frozen_costs(visual, CLIPClassifier(visual, weight.detach().float().cpu()), images, 0),
            **costs.no_steps("trains nothing"), "train_tflops": 0.0}


METHOD = register(Method(
    name="zero_shot", title="Zero-shot", kind="no training", order=1,
    config=ZeroShotConfig, summary=lambda cfg: "prompts only", short="zs", trains=False, image_batches=False,
))
