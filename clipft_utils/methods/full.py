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
from typing import Any

from torch import nn

from . import freeze, head_group

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
