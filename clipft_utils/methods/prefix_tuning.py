"""Prefix-tuning of the image tower: learned tokens prepended to the patch sequence, everything else frozen.

Where the prefix goes. open_clip's ``VisionTransformer._embeds`` builds ``[CLS, patch_1..patch_N]``,
adds the positional embedding, applies patch dropout and ``ln_pre``. The prefix tokens are inserted
right *after* ``_embeds`` and right after the class token: ``[CLS, prefix_1..prefix_P, patches]``.
After, not before, because (1) patch dropout only ever keeps token 0, so it would randomly drop
prefix tokens; (2) prefix tokens have no position, so they get no positional embedding; (3) they then
live in the residual stream exactly where the deep variant's fresh tokens live (every block input),
so shallow and deep are the same operation at different depths; (4) ``_embeds`` is reused unchanged.
Right after CLS, so ``_pool`` (``pool_type='tok'`` reads token 0) still reads the class token.

Shallow vs deep. *Shallow*: one set of P tokens enters block 0 and flows through the network.
*Deep*: VPT-deep (Jia et al., 2022): at the input of every block i > 0 the P prefix slots are
overwritten with fresh tokens for that layer. We chose VPT-deep over Li & Liang's per-layer key/value
prefixes because it works with the stock ``nn.MultiheadAttention`` (no attention re-implementation)
and is the standard deep prompt for ViTs; the cost is that block i's prefix also passes through block
i's MLP, which Li & Liang's formulation does not need.

Reparameterisation. As in Li & Liang, the prefix is produced by an MLP during training
(``PrefixEncoder``: embedding -> Linear(D, hidden) -> Tanh -> Linear(hidden, n_out * D)), which makes
optimisation more stable. After training, ``fold`` runs the MLP once and keeps only its output, so
inference costs only the P extra tokens (``measure_inference_slowdown``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..config import TrainConfig, _integer, _positive
from ..errors import ConfigError
from ..notebook_params import flag, integer
from .base import Method, Variant, freeze, param_groups, register


class PrefixEncoder(nn.Module):
    """MLP reparameterisation: ``n_out`` sets of ``length`` prefix tokens of width ``dim``."""

    def __init__(self, length: int, dim: int, hidden: int = 512, n_out: int = 1):
        super().__init__()
        self.length, self.dim, self.n_out = length, dim, n_out
        self.embedding = nn.Embedding(length, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, n_out * dim))

    def forward(self) -> torch.Tensor:
        """Prefix tokens, shape [n_out, length, dim]."""
        out = self.mlp(self.embedding.weight)  # [length, n_out * dim]
        return out.view(self.length, self.n_out, self.dim).transpose(0, 1)


class PrefixVisual(nn.Module):
    """An open_clip VisionTransformer with prefix tokens; replicates ``VisionTransformer.forward``."""

    def __init__(self, visual: nn.Module, length: int, hidden: int = 512, deep: bool = False):
        super().__init__()
        if not getattr(visual.transformer, "batch_first", True):
            raise ValueError("PrefixVisual needs a batch-first open_clip VisionTransformer.")
        self.visual, self.length, self.deep = visual, length, deep
        n_out = len(visual.transformer.resblocks) if deep else 1
        width = visual.class_embedding.shape[-1]
        self.encoder = PrefixEncoder(length, width, hidden, n_out) if length > 0 else None
        self.register_parameter("folded", None)
        self.output_dim, self.image_size = visual.output_dim, visual.image_size
        self.train(visual.training)  # new modules start in training mode; follow the tower's mode

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (open_clip's switch, honoured by ``forward``)."""
        self.visual.set_grad_checkpointing(enable)

    def prefixes(self) -> torch.Tensor:
        """Current prefix tokens [n_out, length, D] (from the MLP, or the folded copy)."""
        return self.folded if self.folded is not None else self.encoder()

    def _insert(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """[CLS, rest] -> [CLS, prefix, rest]."""
        prefix = prefix.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :1], prefix, x[:, 1:]], dim=1)

    def _replace(self, x: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Overwrite the prefix slots (tokens 1..P) with fresh tokens (VPT-deep)."""
        return self._insert(torch.cat([x[:, :1], x[:, 1 + self.length:]], dim=1), prefix)

    def _block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Run one block, with gradient checkpointing when the tower has it switched on."""
        if self.visual.transformer.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, None, None, None, use_reentrant=False)
        return block(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v._embeds(images)  # [B, 1 + N, D]: CLS + patches, + pos-emb, patch dropout, ln_pre
        prefix = self.prefixes() if self.length > 0 else None
        if prefix is not None:
            x = self._insert(x, prefix[0])
        for i, block in enumerate(v.transformer.resblocks):
            if prefix is not None and self.deep and i > 0:
                x = self._replace(x, prefix[i])
            x = self._block(block, x)
        x = torch.cat([x[:, :1], x[:, 1 + self.length:]], dim=1)  # drop the prefix slots
        pooled, tokens = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return (pooled, tokens) if v.output_tokens else pooled


@torch.no_grad()
def fold(pv: PrefixVisual) -> PrefixVisual:
    """Run the prefix MLP once, keep its output as a frozen parameter and delete the MLP (in place)."""
    if pv.encoder is not None:
        pv.folded = nn.Parameter(pv.encoder().detach().clone(), requires_grad=False)
        pv.encoder = None
    return pv


def apply(clf: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Freeze ``clf``, wrap its tower in a PrefixVisual (``clf.visual`` replaced) and train the encoder."""
    freeze(clf)
    visual = clf.visual.visual if isinstance(clf.visual, PrefixVisual) else clf.visual
    clf.visual = PrefixVisual(visual, cfg.prefix_length, cfg.prefix_hidden, deep=cfg.depth == "deep")
    return param_groups(clf.visual.encoder.parameters() if clf.visual.encoder else [], clf)


def _time_ms(fn: Any, images: torch.Tensor) -> float:
    """Wall time of one ``fn(images)`` call in milliseconds (synchronised on CUDA)."""
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(images)
    if images.is_cuda:
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


NOISY = 0.10
"""A timing is reported as too noisy when its median is more than this fraction above its minimum."""


@torch.inference_mode()
def measure_inference_slowdown(pv: PrefixVisual, images: torch.Tensor, repeats: int = 10) -> dict[str, Any]:
    """Bare tower vs prefixed tower, interleaved ``repeats`` times in one run; the ratio of the *minimum* times.

    The minimum is the least disturbed measurement (noise only ever adds time); ``noisy`` says when the machine was
    too busy to trust it (a median more than 10 % above the minimum), and the spread is reported either way.
    """
    if repeats < 3:
        raise ValueError(f"repeats must be >= 3 to judge the noise, got {repeats}.")
    was_training = pv.training
    pv.eval()
    for _ in range(2):  # warm-up
        pv.visual(images), pv(images)
    base, prefixed = [], []
    for _ in range(repeats):
        base.append(_time_ms(pv.visual, images))
        prefixed.append(_time_ms(pv, images))
    pv.train(was_training)
    b, p = torch.tensor(base), torch.tensor(prefixed)
    spread = max(float(b.median() / b.min()) - 1, float(p.median() / p.min()) - 1)
    n_tokens = 1 + pv.visual.grid_size[0] * pv.visual.grid_size[1]
    return {
        "base_ms": float(b.min()), "prefix_ms": float(p.min()), "ratio": float(p.min() / b.min()),
        "spread": spread, "noisy": spread > NOISY, "tokens_base": n_tokens, "tokens_prefix": n_tokens + pv.length,
        "batch_size": images.shape[0], "repeats": repeats, "device": str(images.device),
        "folded": pv.folded is not None, "deep": pv.deep,
    }


@dataclass
class PrefixTuningConfig(TrainConfig):
    """Prefix-tuning of the image tower (seed: length 10, MLP hidden 512, lr 1e-4, 40 epochs)."""

    epochs: int = 40
    lr: float = 1e-4
    head_lr: float | None = 1e-3
    prefix_length: int = 10
    prefix_hidden: int = 512
    depth: str = "shallow"  # "shallow": once after the positional embedding; "deep": fresh tokens per layer

    def validate(self) -> None:
        super().validate()
        _integer(self, "prefix_length", "prefix_hidden")
        _positive(self, "prefix_length", "prefix_hidden")
        if self.depth not in ("shallow", "deep"):
            raise ConfigError(f"PrefixTuningConfig.depth must be 'shallow' or 'deep', got {self.depth!r}.")


METHOD = register(Method(
    name="prefix_tuning", title="Prefix-tuning", kind="parameter-efficient", notebook="04_prefix_tuning", order=4,
    config=PrefixTuningConfig, apply=apply, short="prefix",
    summary=lambda cfg: f"{cfg.depth}, length {cfg.prefix_length}, MLP {cfg.prefix_hidden}",
    # A 5-epoch schedule on a 0.85M-parameter tower needs larger steps than the reference recipe's 40 epochs on
    # ViT-B-32 (see lora.py's note).
    profiles={"smoke": {"epochs": 5, "lr": 1e-3}, "rehearse": {"epochs": 1}},
    notebook_defaults={"rehearse": {"vit_timing": False, "timing_repeats": 3, "timing_batch": 8},
                       "quick": {"deep": False, "vit_timing": False}},
    notebook_checks={"deep": flag, "vit_timing": flag, "vit_timing_batch": integer(1, optional=False),
                     "timing_repeats": integer(3), "timing_batch": integer(1, optional=False)},
    plan=lambda p, prof: " + the deep variant" if p.get("deep", True) else "",
    variants={"prefix_tuning-deep": Variant({"depth": "deep"}, "deep (VPT-deep), length 10")},
))
