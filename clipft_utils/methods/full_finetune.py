"""Full fine-tuning: the whole image tower and the head train (optionally with layer-wise lr decay).

Layer-wise lr decay (BEiT / ELECTRA style): depth 0 is the patch embedding, class token, positional
embedding and ``ln_pre`` (a ResNet's stem, a timm trunk's patch embedding); block i is depth i + 1 (``towers.facts``:
ResNet bottlenecks, timm blocks; a stage's downsampling goes with its first block); ``ln_post`` and ``proj`` (a
ResNet's attention pool, a timm trunk's norm and head) are depth L + 1; the head
(depth L + 2) has its own group and lr. A depth-d group carries ``lr_scale = decay ** (L + 1 - d)``,
so the top of the tower trains at ``cfg.lr`` and every block below at ``decay`` times the one above.

Gradient checkpointing uses open_clip's ``VisionTransformer.set_grad_checkpointing``: each block's
activations are recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant) instead
of being stored, trading ~30 % more compute for activation memory that no longer grows with depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .. import towers
from ..config import MIN_STEPS_PER_EPOCH, SMOKE_STEPS, TrainConfig
from ..errors import ConfigError
from .base import Method, Variant, freeze, head_group, register, require

def depth(name: str, found: towers.TowerFacts) -> int:
    """Depth of an image-tower parameter: 0 = embeddings / stem, i + 1 = block i, L + 1 = after the blocks
    (``ln_post`` / ``proj``; a ResNet's attention pool; a timm tower's final norm, pooling and head)."""
    return found.depth(name)


def layer_decay_groups(visual: nn.Module, decay: float) -> list[dict[str, Any]]:
    """One group per depth with ``lr_scale = decay ** (L + 1 - depth)``."""
    found = towers.facts(visual)
    n_blocks = len(found.blocks)
    by_depth: dict[int, list[nn.Parameter]] = {}
    for name, p in visual.named_parameters():
        by_depth.setdefault(depth(name, found), []).append(p)
    return [{"params": params, "name": f"backbone.depth{d:02d}", "lr_scale": decay ** (n_blocks + 1 - d)}
            for d, params in sorted(by_depth.items())]


def applies_to(arch: Any, cfg: Any = None) -> str | None:
    """Every tower fine-tunes; gradient checkpointing and layer-wise decay need blocks the tower can recompute / has."""
    found = arch.image
    if cfg is not None and cfg.grad_checkpointing and not found.grad_checkpointing:
        return ("open_clip's ModifiedResNet cannot recompute its blocks in the backward pass (grad_checkpointing); "
                "fine-tuning itself applies with grad_checkpointing=False")
    if cfg is not None and cfg.layer_decay is not None and not found.blocks:
        return "clipft does not know its blocks, so it has no depths for layer_decay; use layer_decay=None"
    return None


def apply(clf: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Unfreeze the whole image tower and the head; layer-decay groups and grad checkpointing per ``cfg``."""
    require("full_finetune", clf, cfg)
    freeze(clf)
    for p in clf.visual.parameters():
        p.requires_grad_(True)
    clf.visual.set_grad_checkpointing(bool(cfg.grad_checkpointing))
    if cfg.layer_decay is None:
        backbone = [{"params": list(clf.visual.parameters()), "name": "backbone"}]
    else:
        backbone = layer_decay_groups(clf.visual, cfg.layer_decay)
    return backbone + [head_group(clf)]


@dataclass
class FullFinetuneConfig(TrainConfig):
    """Full fine-tuning of the image tower (seed: backbone 1e-5, head 1e-4, warm-up 5, clip 1.0, 30 epochs)."""

    epochs: int = 30
    lr: float = 1e-5
    head_lr: float | None = 1e-4
    warmup_epochs: float = 5.0
    grad_clip: float | None = 1.0
    min_steps_per_epoch: int | None = MIN_STEPS_PER_EPOCH
    layer_decay: float | None = None   # layer-wise lr decay factor in (0, 1]; None = off
    grad_checkpointing: bool = False

    def validate(self) -> None:
        super().validate()
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"FullFinetuneConfig.layer_decay must be in (0, 1], got {self.layer_decay}.")


def recipe(profile: Any, epochs: int | None = None, warmup_epochs: float | None = None, config: dict | None = None,
           **options: Any) -> FullFinetuneConfig:
    """Notebook 06's config: the profile's recipe with ``options`` and ``config`` (its overrides); the warm-up is
    ``config``'s or ``warmup_epochs``, else min(5, epochs // 3), so that it stays shorter than training."""
    from . import make_config
    overrides = {k: v for k, v in (config or {}).items() if k != "warmup_epochs"}
    n = make_config("full_finetune", profile, epochs=epochs, warmup_epochs=0, **overrides).epochs
    warmup = (config or {}).get("warmup_epochs", warmup_epochs if warmup_epochs is not None else min(5, n // 3))
    return make_config("full_finetune", profile, epochs=n, warmup_epochs=warmup, **options, **overrides)


METHOD = register(Method(
    name="full_finetune", title="Full fine-tuning", kind="full", order=6,
    config=FullFinetuneConfig, apply=apply, short="ft", summary=lambda cfg: "image tower + head", applies_to=applies_to,
    profiles={"smoke": {**SMOKE_STEPS, "lr": 3e-5, "warmup_epochs": 1.0},
              "rehearse": {"epochs": 1, "warmup_epochs": 0.0}},
    variants={"full_finetune-ckpt": Variant({"grad_checkpointing": True}, "gradient checkpointing", ("bench",))},
))
