"""The modules that host LoRA updates beside frozen weights, one per way a tower uses its weights (``towers.Spot``).

- ``LoRALinear``: an ``nn.Linear`` whose ``forward`` is called (open_clip's MLP ``c_fc`` / ``c_proj``; timm's ``proj``,
  ``fc1``, ``fc2``, Eva's ``q_proj`` ...): ``base(x) + ΔW x``.
- ``LoRAFusedLinear``: timm's fused ``attn.qkv`` Linear: its output rows are q, k and v, each with its own update.
- ``LoRAMultiheadAttention``: ``nn.MultiheadAttention``, whose q, k, v weights are slices of one ``in_proj_weight`` and
  whose ``out_proj`` is read as a weight: it computes the attention itself while an update is active.
- ``LoRAAttentionPool``: ModifiedResNet's attention pool, whose q/k/v/c projections ``F.multi_head_attention_forward``
  reads as weights: likewise.

Each has ``lora`` (slot -> ``LoRAUpdate``) and ``weight_slices()`` (slot -> the base weight its update merges into).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

ATTENTION_SLOTS = ("q", "k", "v", "out")


class LoRAUpdate(nn.Module):
    """The low-rank update ``ΔW = scaling · B A`` of one [out, in] weight, for any number of named adapters."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        self.dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.active: str | None = None
        self.merged = False

    def add(self, name: str, rank: int, scaling: float, dropout: float = 0.0, like: torch.Tensor | None = None,
            A: torch.Tensor | None = None, B: torch.Tensor | None = None) -> None:
        """Add adapter ``name``: fresh (A kaiming-uniform, B zero) unless A and B are given."""
        kw = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        if A is None:
            A = torch.empty(rank, self.in_features, **kw)
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # peft's init_lora_weights=True
            B = torch.zeros(self.out_features, rank, **kw)
        self.A[name] = nn.Parameter(A.clone().to(**kw), requires_grad=False)
        self.B[name] = nn.Parameter(B.clone().to(**kw), requires_grad=False)
        self.dropout[name] = (nn.Dropout(dropout) if dropout > 0 else nn.Identity()).train(self.training)
        self.scaling[name] = float(scaling)

    def remove(self, name: str) -> None:
        """Delete adapter ``name``."""
        for d in (self.A, self.B, self.dropout):
            del d[name]
        del self.scaling[name]
        self.active = None if self.active == name else self.active

    @property
    def enabled(self) -> bool:
        """True when an adapter is active here and not merged into the base weight."""
        return self.active is not None and self.active in self.A and not self.merged

    def delta_weight(self, name: str | None = None) -> torch.Tensor:
        """``scaling · B A`` of adapter ``name`` (default: the active one), shape [out, in]."""
        name = name or self.active
        return self.scaling[name] * (self.B[name] @ self.A[name])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = self.active
        return F.linear(F.linear(self.dropout[name](x), self.A[name]), self.B[name]) * self.scaling[name]


class _LinearHost(nn.Module):
    """A host around an ``nn.Linear`` (``self.base``) that its tower may still read as a Linear."""

    base: nn.Linear

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight (open_clip reads ``c_fc.weight.dtype``, timm ``qkv.weight``)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen base bias."""
        return self.base.bias


class LoRALinear(_LinearHost):
    """An ``nn.Linear`` (the MLP's ``c_fc`` or ``c_proj``) plus a low-rank update: ``base(x) + ΔW x``."""

    def __init__(self, base: nn.Linear, slot: str):
        super().__init__()
        self.base, self.slot = base, slot
        self.lora = nn.ModuleDict({slot: LoRAUpdate(base.in_features, base.out_features)})

    def weight_slices(self) -> dict[str, torch.Tensor]:
        """Slot -> the base weight its update is merged into."""
        return {self.slot: self.base.weight}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora[self.slot]
        y = self.base(x)
        return y + update(x) if update.enabled else y


class LoRAMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with low-rank updates on q, k, v (slices of the fused in_proj) and out."""

    def __init__(self, base: nn.MultiheadAttention):
        super().__init__()
        if not base._qkv_same_embed_dim or base.bias_k is not None or base.add_zero_attn:
            raise ConfigError("LoRA supports nn.MultiheadAttention with one fused in_proj_weight only "
                              "(no kdim/vdim, bias_kv or add_zero_attn), as open_clip builds it.")
        self.base = base
        self.embed_dim, self.num_heads, self.batch_first = base.embed_dim, base.num_heads, base.batch_first
        d = base.embed_dim
        self.lora = nn.ModuleDict({slot: LoRAUpdate(d, d) for slot in ATTENTION_SLOTS})

    def weight_slices(self) -> dict[str, torch.Tensor]:
        """Slot -> the (view of the) base weight its update is merged into."""
        d, w = self.embed_dim, self.base.in_proj_weight
        return {"q": w[:d], "k": w[d:2 * d], "v": w[2 * d:], "out": self.base.out_proj.weight}

    def _add(self, slot: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        update = self.lora[slot]
        return y + update(x) if update.enabled else y

    def _in_proj(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Frozen projection i (0=q, 1=k, 2=v) from the fused weight, plus its low-rank update."""
        d, bias = self.embed_dim, self.base.in_proj_bias
        y = F.linear(x, self.base.in_proj_weight[i * d:(i + 1) * d], None if bias is None else bias[i * d:(i + 1) * d])
        return self._add(ATTENTION_SLOTS[i], x, y)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if not any(u.enabled for u in self.lora.values()):
            return self.base(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                             attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if need_weights or key_padding_mask is not None:
            raise NotImplementedError("LoRAMultiheadAttention supports need_weights=False and no key_padding_mask "
                                      "(what open_clip uses); merge(model) first for other uses.")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = (self._in_proj(t, i) for i, t in enumerate((query, key, value)))
        b, n, d = q.shape
        q, k, v = (t.reshape(b, t.shape[1], self.num_heads, d // self.num_heads).transpose(1, 2) for t in (q, k, v))
        mask = _sdpa_mask(attn_mask, q.dtype, b, self.num_heads)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None,
                                           dropout_p=self.base.dropout if self.training else 0.0)
        o = o.transpose(1, 2).reshape(b, n, d)
        out = self._add("out", o, F.linear(o, self.base.out_proj.weight, self.base.out_proj.bias))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _sdpa_mask(mask: torch.Tensor | None, dtype: torch.dtype, batch: int, heads: int) -> torch.Tensor | None:
    """nn.MultiheadAttention's mask (bool: True = blocked, or additive float) as an additive SDPA mask."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(mask, float("-inf"))
    if mask.dim() == 3:  # [batch * heads, L, S]
        mask = mask.view(batch, heads, *mask.shape[1:])
    return mask.to(dtype)


class LoRAFusedLinear(_LinearHost):
    """A fused q/k/v ``nn.Linear`` (timm's ``attn.qkv``): output rows [0, D) are q, [D, 2D) k, [2D, 3D) v; each
    third gets its own low-rank update."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        if base.out_features % 3:
            raise ConfigError(f"A fused qkv Linear has 3 x D outputs; this one has {base.out_features}.")
        self.base, self.dim = base, base.out_features // 3
        self.lora = nn.ModuleDict({slot: LoRAUpdate(base.in_features, self.dim) for slot in ("q", "k", "v")})

    def weight_slices(self) -> dict[str, torch.Tensor]:
        d, w = self.dim, self.base.weight
        return {"q": w[:d], "k": w[d:2 * d], "v": w[2 * d:]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if not any(u.enabled for u in self.lora.values()):
            return y
        parts = y.split(self.dim, dim=-1)
        return torch.cat([p + u(x) if u.enabled else p for p, u in zip(parts, self.lora.values())], dim=-1)


class LoRAAttentionPool(nn.Module):
    """open_clip's ``AttentionPool2d`` (ModifiedResNet) with low-rank updates on its q, k, v and c (out) projections.

    Its forward reads the projections as weights (``F.multi_head_attention_forward``), so while an update is active this
    module computes the pool itself: the mean token prepended, positions added, token 0's query against every key
    (the pool returns token 0 only), scaled dot-product attention, ``c_proj``. With no update active (or once merged)
    it calls the stock pool."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base, self.num_heads = base, base.num_heads
        d, out = base.k_proj.in_features, base.c_proj.out_features
        self.lora = nn.ModuleDict({"q": LoRAUpdate(d, d), "k": LoRAUpdate(d, d), "v": LoRAUpdate(d, d),
                                   "out": LoRAUpdate(d, out)})

    def weight_slices(self) -> dict[str, torch.Tensor]:
        b = self.base
        return {"q": b.q_proj.weight, "k": b.k_proj.weight, "v": b.v_proj.weight, "out": b.c_proj.weight}

    def _project(self, slot: str, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        update = self.lora[slot]
        y = layer(x)
        return y + update(x) if update.enabled else y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not any(u.enabled for u in self.lora.values()):
            return self.base(x)
        b = self.base
        x = x.flatten(2).transpose(1, 2)                                  # [N, HW, C]
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)           # [N, 1 + HW, C]
        x = x + b.positional_embedding.unsqueeze(0).to(x.dtype)
        q = self._project("q", b.q_proj, x[:, :1])
        k, v = self._project("k", b.k_proj, x), self._project("v", b.v_proj, x)
        n, h = x.shape[0], self.num_heads
        q, k, v = (t.reshape(n, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, 1, -1)
        return self._project("out", b.c_proj, o)[:, 0]
