"""Full fine-tuning: the whole image tower and the head train (optionally with layer-wise lr decay).

Layer-wise lr decay (BEiT / ELECTRA style): depth 0 is the patch embedding, class token, positional
embedding and ``ln_pre``; block i is depth i + 1; ``ln_post`` and ``proj`` are depth L + 1; the head
(depth L + 2) has its own group and lr. A depth-d group carries ``lr_scale = decay ** (L + 1 - d)``,
so the top of the tower trains at ``cfg.lr`` and every block below at ``decay`` times the one above.

Gradient checkpointing uses open_clip's ``VisionTransformer.set_grad_checkpointing``: each block's
activations are recomputed in the backward pass (``torch.utils.checkpoint``, non-reentrant) instead
of being stored, trading ~30 % more compute for activation memory that no longer grows with depth.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import TrainConfig, extra_epochs
from ..errors import ConfigError
from ..notebook_params import PRECISION_CHECK, flag, integer, list_of, number, one_of
from .base import Method, Variant, freeze, head_group, register

_EMBED = ("conv1.", "class_embedding", "positional_embedding", "ln_pre.")
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def depth(name: str, n_blocks: int) -> int:
    """Depth of an image-tower parameter: 0 = embeddings, i + 1 = block i, L + 1 = ln_post / proj."""
    if name.startswith(_EMBED):
        return 0
    match = _BLOCK.match(name)
    return int(match.group(1)) + 1 if match else n_blocks + 1


def layer_decay_groups(visual: nn.Module, decay: float) -> list[dict[str, Any]]:
    """One group per depth with ``lr_scale = decay ** (L + 1 - depth)``."""
    n_blocks = len(visual.transformer.resblocks)
    by_depth: dict[int, list[nn.Parameter]] = {}
    for name, p in visual.named_parameters():
        by_depth.setdefault(depth(name, n_blocks), []).append(p)
    return [{"params": params, "name": f"backbone.depth{d:02d}", "lr_scale": decay ** (n_blocks + 1 - d)}
            for d, params in sorted(by_depth.items())]


def apply(clf: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Unfreeze the whole image tower and the head; layer-decay groups and grad checkpointing per ``cfg``."""
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
    layer_decay: float | None = None   # layer-wise lr decay factor in (0, 1]; None = off
    grad_checkpointing: bool = False

    def validate(self) -> None:
        super().validate()
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"FullFinetuneConfig.layer_decay must be in (0, 1], got {self.layer_decay}.")


def _plan(p: dict[str, Any], prof: Any) -> str:
    e = extra_epochs(prof, p.get("epochs"), p.get("extra_epochs"))
    return (" + base-to-novel, LP→FT (full, LoRA), LoRA adapter B: "
            + (f"{e} epoch(s) each" if e is not None else "each method's own epochs"))


def _ensemble_member(name: str, value: Any) -> None:
    from . import names
    one_of(*names(), optional=False)(name, value)


METHOD = register(Method(
    name="full_finetune", title="Full fine-tuning", kind="full", notebook="06_full_finetune", order=6,
    config=FullFinetuneConfig, apply=apply, short="ft", summary=lambda cfg: "image tower + head",
    reads=("01_zero_shot", "02_linear_probe", "05_lora"),
    profiles={"smoke": {"epochs": 5, "lr": 3e-5, "warmup_epochs": 1.0},
              "rehearse": {"epochs": 1, "warmup_epochs": 0.0}},
    fixed_config={"warmup_epochs": 0.0},  # notebook 06 derives its warm-up from the epochs
    notebook_defaults={"full": {"wise_alphas": [round(0.1 * i, 1) for i in range(11)]},
                       "smoke": {"wise_alphas": [0.0, 0.5, 1.0]},
                       "rehearse": {"memory_steps": 1, "wise_alphas": [0.0, 0.5, 1.0], "fusion_weights": [[0.5, 0.5]]},
                       "quick": {"wise_alphas": [0.0, 0.5, 1.0], "memory_steps": 1}},
    notebook_checks={
        "warmup_epochs": number(0), "layer_decay": number(0, 1, open_low=True), "grad_checkpointing": flag,
        "grad_accum_steps": integer(1, optional=False), "precision": PRECISION_CHECK,
        "memory_steps": integer(1, optional=False), "extra_epochs": integer(1),
        "wise_alphas": list_of(number(0, 1, optional=False)), "ensemble_members": list_of(_ensemble_member),
        "fusion_weights": list_of(list_of(number(0, optional=False), optional=False, min_len=2))},
    plan=_plan,
    variants={"full_finetune-ckpt": Variant({"grad_checkpointing": True}, "gradient checkpointing", ("bench",))},
))
