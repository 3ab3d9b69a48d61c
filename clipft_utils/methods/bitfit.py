"""BitFit (Ben Zaken et al., 2022): freeze every weight, train only the bias terms (and the head).

Which biases exist in open_clip's ViT-B-32 image tower (width D=768, 12 blocks, MLP width 4D=3072):

=================  ==========================  ==============  =============
kind               where                       per occurrence  ViT-B-32 total
=================  ==========================  ==============  =============
``ln_pre``         LayerNorm before block 0    D = 768          768
``ln_1``           LayerNorm before attention  D = 768          12 x 768
``attn.in_proj``   fused q, k, v bias          3D = 2304        12 x 2304
``attn.out_proj``  attention output            D = 768          12 x 768
``ln_2``           LayerNorm before the MLP    D = 768          12 x 768
``mlp.c_fc``       MLP expansion               4D = 3072        12 x 3072
``mlp.c_proj``     MLP contraction             D = 768          12 x 768
``ln_post``        final LayerNorm             D = 768          768
=================  ==========================  ==============  =============

That is 2·768 + 12·(4·768 + 2304 + 3072) = 102,912 biases. The patch embedding ``conv1`` is built
with ``bias=False`` and the output projection ``proj`` is a bare matrix, so neither has one.
LayerNorm biases *are* trained: the original BitFit trains "all bias terms", LayerNorm's included
(without them the count would be 82,944).

The true fraction on ViT-B-32 is 0.117 % of the image tower (102,912 of 87,849,216), 0.177 % with the
52,326-parameter head counted on both sides, and 0.068 % of the whole CLIP (151.3 M, text tower
included), not the ~0.01 % sometimes quoted: a transformer has about one bias per 850 weights (one
D-vector per D x D matrix), so BitFit always lands near 0.1 %, as the paper reports for BERT (0.08 %).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..config import MIN_STEPS_PER_EPOCH, SMOKE_STEPS, TrainConfig
from .base import Method, freeze, param_groups, register

BIAS_KINDS = ("ln_pre", "ln_1", "attn.in_proj", "attn.out_proj", "ln_2", "mlp.c_fc", "mlp.c_proj", "ln_post")
"""The bias kinds of an open_clip ViT image tower, in forward order."""

_BLOCK = re.compile(r"^(?:transformer\.resblocks|trunk\.blocks|trunk\.stages\.\d+\.blocks)\.\d+\.")
_RESNET_BLOCK = re.compile(r"^layer\d\.\d+\.")  # a ModifiedResNet bottleneck: its kinds are "block.bn1", ...


def is_bias(name: str) -> bool:
    """True for a bias parameter name (``...bias`` and MultiheadAttention's ``in_proj_bias``)."""
    return name.endswith(".bias") or name.endswith("_bias") or name == "bias"


def bias_kind(name: str) -> str:
    """Kind of a bias parameter: its module path without the block index, e.g. ``attn.in_proj`` (open_clip ViT),
    ``attn.qkv`` (timm), ``block.bn1`` (a ResNet bottleneck's, apart from the stem's ``bn1``)."""
    name = _RESNET_BLOCK.sub("block.", _BLOCK.sub("", name))
    return re.sub(r"[._]bias$", "", name)


def bias_parameters(visual: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of every bias in ``visual``."""
    return [(n, p) for n, p in visual.named_parameters() if is_bias(n)]


def bias_inventory(visual: nn.Module) -> dict[str, int]:
    """Number of bias values per kind, in forward order (kinds outside BIAS_KINDS come last)."""
    counts: dict[str, int] = {}
    for name, p in bias_parameters(visual):
        kind = bias_kind(name)
        counts[kind] = counts.get(kind, 0) + p.numel()
    order = {k: i for i, k in enumerate(BIAS_KINDS)}
    return dict(sorted(counts.items(), key=lambda kv: order.get(kv[0], len(order))))


def tower_note(arch: Any, cfg: Any = None) -> str:
    """Which biases BitFit trains on ``arch``'s image tower, in a phrase."""
    found = arch.image
    if found.family == "resnet":
        return "BatchNorm β + attention-pool biases"
    norms = sorted({"BatchNorm" if "BatchNorm" in n else n.replace("2d", "") for n in found.norms})
    return f"all biases incl. {' + '.join(norms)}" if norms else "all biases"


def apply(clf: nn.Module, cfg: Any = None) -> list[dict[str, Any]]:
    """Freeze ``clf``, then unfreeze every bias of the image tower; return [backbone, head] groups."""
    freeze(clf)
    biases = [p for _, p in bias_parameters(clf.visual)]
    for p in biases:
        p.requires_grad_(True)
    return param_groups(biases, clf)


@dataclass
class BitFitConfig(TrainConfig):
    """BitFit: only bias terms (and the head) train (seed: lr 1e-3, 30 epochs)."""

    epochs: int = 30
    lr: float = 1e-3
    min_steps_per_epoch: int | None = MIN_STEPS_PER_EPOCH


METHOD = register(Method(
    name="bitfit", title="BitFit", kind="parameter-efficient", order=3, config=BitFitConfig,
    apply=apply, summary=lambda cfg: "all biases incl. LayerNorm", short="bitfit", tower_note=tower_note,
    profiles={"smoke": dict(SMOKE_STEPS), "rehearse": {"epochs": 1}},
))
