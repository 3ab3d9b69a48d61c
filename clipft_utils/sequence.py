"""The token sequence of a transformer image tower, for the methods that add tokens or keys to it (prompt tuning,
VPT-deep, prefix-tuning): how images become tokens, how one block runs (with learned key/value prefixes, and with
prompt tokens that have no position), and how the tokens are pooled into the tower's embedding.

Three towers have one (``towers.TRANSFORMERS``):

- open_clip's ``VisionTransformer``: ``_embeds`` (class token, patches, positions, ``ln_pre``), the
  ``transformer.resblocks``, ``_pool`` + ``proj``. Its prefixed block is ``methods.prefix_tuning.prefixed_block``.
- timm's ``VisionTransformer`` (SigLIP): ``patch_embed``, ``_pos_embed``, ``patch_drop``, ``norm_pre``, the ``blocks``
  (``attn.qkv`` fused, ``q_norm``/``k_norm``), ``norm``, ``forward_head`` (SigLIP: attention pooling), the
  ``TimmModel`` head.
- timm's ``Eva`` (EVA02): as timm's ViT, but its attention rotates q and k (``rope``) of every token after the
  ``num_prefix_tokens`` first ones; prompt tokens, which have no position, count as prefix tokens there.

Each learned prefix is [2, P, D] (keys, values), added after the projections (and after q/k norms and rotations)
and split into heads like the block's own keys and values; the queries stay the real tokens.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import towers


def prefix_tokens(visual: nn.Module) -> int:
    """Tokens before the patches that prompt tokens go after (the class token): 1 for open_clip, timm's own count."""
    fam = towers.family(visual)
    return 1 if fam == "vit" else int(visual.trunk.num_prefix_tokens)


def blocks(visual: nn.Module) -> nn.Module:
    """The tower's blocks, in order."""
    return visual.transformer.resblocks if towers.family(visual) == "vit" else visual.trunk.blocks


def checkpointing(visual: nn.Module) -> bool:
    """Whether the tower asked for its blocks to be recomputed in the backward pass."""
    return bool(visual.transformer.grad_checkpointing if towers.family(visual) == "vit"
                else visual.trunk.grad_checkpointing)


def embed(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """(tokens [B, T, D] as the first block receives them, what each block needs besides: Eva's rotary embedding)."""
    fam = towers.family(visual)
    if fam == "vit":
        return visual._embeds(images), None
    trunk = visual.trunk
    x = trunk.patch_embed(images)
    if fam == "timm-eva":
        x, rope = trunk._pos_embed(x)
        return trunk.norm_pre(x), rope
    return trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(x))), None


def pool(visual: nn.Module, x: torch.Tensor) -> Any:
    """The tower's embedding from its last block's tokens (what its own forward returns)."""
    if towers.family(visual) == "vit":
        pooled, tokens = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return (pooled, tokens) if visual.output_tokens else pooled
    trunk = visual.trunk
    return visual.head(trunk.forward_head(trunk.norm(x)))


def prefix_problem(visual: nn.Module) -> str | None:
    """Why key/value prefixes cannot run in this tower's blocks (None: they can)."""
    fam = towers.family(visual)
    if fam == "timm-vit":
        bad = {type(b).__name__ for b in blocks(visual) if type(b).__name__ != "Block"
               or type(b.attn).__name__ != "Attention"}
        return f"its blocks ({', '.join(sorted(bad))}) are not timm's standard ViT Block with Attention" if bad else None
    if fam == "timm-eva":
        if getattr(visual.trunk, "rope_mixed", False):
            return "its rotary embeddings differ per block (rope_mixed)"
        bad = {type(b).__name__ for b in blocks(visual) if type(b).__name__ not in ("EvaBlock", "EvaBlockPostNorm")}
        return f"its blocks ({', '.join(sorted(bad))}) are not timm's EvaBlock" if bad else None
    return None


def _with_prefix(k: torch.Tensor, v: torch.Tensor, kv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values [B, H, N, d] with the P learned ones (``kv`` [2, P, H * d]) in front."""
    if kv is None:
        return k, v
    b, h, _, d = k.shape
    pk, pv = (t.to(k.dtype).reshape(1, -1, h, d).transpose(1, 2).expand(b, -1, -1, -1) for t in (kv[0], kv[1]))
    return torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)


def _attend(attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, gate: torch.Tensor | None,
            shape: tuple[int, int]) -> torch.Tensor:
    """Scaled dot-product attention, then the module's output norm, gate, projection and dropout."""
    o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
    o = attn.norm(o.transpose(1, 2).reshape(*shape, -1))
    if gate is not None:
        o = o * gate
    return attn.proj_drop(attn.proj(o))


def _timm_attention(attn: nn.Module, x: torch.Tensor, kv: torch.Tensor | None) -> torch.Tensor:
    """timm's ``Attention.forward`` (fused qkv) with learned key/value prefixes."""
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    return _attend(attn, q, *_with_prefix(k, v, kv), gate, (b, n))


def _eva_qkv(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v [B, H, N, d] as ``EvaAttention`` computes them (fused qkv with optional q/k/v biases, or three Linears)."""
    b, n, _ = x.shape
    if attn.qkv is None:
        return tuple(getattr(attn, f"{s}_proj")(x).reshape(b, n, attn.num_heads, -1).transpose(1, 2) for s in "qkv")
    if attn.q_bias is None:
        qkv = attn.qkv(x)
    else:
        bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        qkv = attn.qkv(x) + bias if attn.qkv_bias_separate else F.linear(x, attn.qkv.weight, bias)
    return tuple(qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0))


def _eva_attention(attn: nn.Module, x: torch.Tensor, rope: Any, npt: int, kv: torch.Tensor | None) -> torch.Tensor:
    """``EvaAttention.forward`` with ``npt`` unrotated tokens first (class token + prompts) and learned prefixes."""
    from timm.layers import apply_rot_embed_cat
    b, n, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = _eva_qkv(attn, x)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if rope is not None:
        half = getattr(attn, "rotate_half", False)
        q, k = (torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope, half=half)], dim=2).type_as(v)
                for t in (q, k))
    return _attend(attn, q, *_with_prefix(k, v, kv), gate, (b, n))


def run_block(visual: nn.Module, block: nn.Module, x: torch.Tensor, context: Any = None,
              kv: torch.Tensor | None = None, extra: int = 0) -> torch.Tensor:
    """One timm block on ``x`` with learned key/value prefixes ``kv`` [2, P, D] (or None) and ``extra`` prompt tokens
    after the class token (they get no rotary position in Eva); without either it is the block's own forward."""
    fam = towers.family(visual)
    if fam == "timm-vit":
        if kv is None:
            return block(x)
        x = x + block.drop_path1(block.ls1(_timm_attention(block.attn, block.norm1(x), kv)))
        return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    if kv is None and extra == 0:
        return block(x, rope=context)
    npt = prefix_tokens(visual) + extra
    if type(block).__name__ == "EvaBlockPostNorm":
        x = x + block.drop_path1(block.norm1(_eva_attention(block.attn, x, context, npt, kv)))
        return x + block.drop_path2(block.norm2(block.mlp(x)))
    a = _eva_attention(block.attn, block.norm1(x), context, npt, kv)
    x = x + block.drop_path1(a if block.gamma_1 is None else block.gamma_1 * a)
    m = block.mlp(block.norm2(x))
    return x + block.drop_path2(m if block.gamma_2 is None else block.gamma_2 * m)


def length(visual: nn.Module, image_size: int) -> int:
    """Tokens the first block receives for one image of ``image_size`` px."""
    with torch.no_grad():
        device = next(visual.parameters()).device
        return int(embed(visual, torch.zeros(1, 3, image_size, image_size, device=device))[0].shape[1])
