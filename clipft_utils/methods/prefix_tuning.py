"""Prefix-tuning of the image tower (Li & Liang, 2021), and its two input-token relatives as variants.

Three ways to learn a few vectors for a frozen ViT to attend to (``PrefixTuningConfig.kind``):

``"prefix"`` — prefix-tuning as Li & Liang define it (the main row). Every attention layer i gets P learned
    *key* vectors and P learned *value* vectors, prepended to the keys and values that layer computes from its
    tokens. The queries are still only the real tokens (``[CLS, patches]``): the prefix is attended to but never
    attends, never goes through a LayerNorm, a projection or an MLP, and is never changed by the residual stream.
``"prompt"`` — prompt tuning (Lester et al., 2021; VPT-shallow, Jia et al., 2022): P learned *tokens* are inserted
    once into the input sequence and flow through every block like the patches do.
``"vpt_deep"`` — VPT-deep (Jia et al., 2022): as ``"prompt"``, but before every block after the first the P
    prompt slots of the residual stream are overwritten with that block's own fresh tokens.

Why key/value space, after the projection. Li & Liang's prefix is "activations" ``h_i`` for the prefix positions at
every layer; in their implementation (and in peft's ``PrefixEncoder`` / ``past_key_values``) those activations are
the per-layer keys and values themselves, ``L x 2 x P x D`` numbers: the MLP's last layer emits ``L * 2 * D`` values
per prefix position. We do the same. The alternative — feed ``k_x = v_x = cat(prefix, x)`` into each block, i.e.
prefix *tokens* in each block's input space that then go through that block's LayerNorm and in-projection — is a
different, more constrained parameterisation (P-tuning-v2-like hidden-space prompts), not the paper's. (It is also
not available here: open_clip 3.3.0's ``ResidualAttentionBlock.forward`` drops ``k_x``/``v_x`` unless the block was
built for cross-attention — it only applies them through ``ln_1_kv``, which self-attention blocks lack.) So
``prefixed_block`` runs one block's computation itself — ``ln_1``, the block's own in-projection, the P prefix
keys/values concatenated per head, scaled dot-product attention, ``out_proj``, ``ls_1``, then the unchanged MLP half —
with the block's frozen weights; the test suite checks it against ``block(x)`` with the prefix masked out.

Where the prompt tokens go (``"prompt"``, ``"vpt_deep"``). open_clip's ``VisionTransformer._embeds`` builds
``[CLS, patch_1..patch_N]``, adds the positional embedding, applies patch dropout and ``ln_pre``. The prompt tokens are
inserted right *after* ``_embeds`` and right after the class token: ``[CLS, prompt_1..prompt_P, patches]``. After,
because (1) patch dropout only ever keeps token 0, so it would randomly drop prompt tokens; (2) prompt tokens have no
position, so they get no positional embedding; (3) they then live in the residual stream exactly where VPT-deep's
fresh tokens live (every block input), so the two are the same operation at different depths. Right after CLS, so
``_pool`` (``pool_type='tok'`` reads token 0) still reads the class token.

Reparameterisation, as each paper does it. Li & Liang produce prefix-tuning's vectors by an MLP during training
(``PrefixEncoder``: embedding [P, D] -> Linear(D, hidden) -> Tanh -> Linear(hidden, 2 L * D): a key and a value per
layer), which makes optimisation more stable; after training ``fold`` runs the MLP once and keeps only its output.
Prompt tuning and VPT train their tokens directly (``init_tokens``), as Lester et al. and Jia et al. do: prompt tuning
from Lester et al.'s random initialisation, uniform in [-0.5, 0.5] (their other two, vocabulary words and class
labels, have no counterpart among image tokens); VPT-deep from VPT's code, Xavier-uniform with fan-in 3 x patch area
and fan-out D (``val = sqrt(6 / (3 * p * p + D))``). ``fold`` turns them into the same frozen tensor, so inference pays
only for the extra keys/values (``"prefix"``) or the extra tokens (the others): counted by ``clipft_utils.costs``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import sequence, towers
from ..config import MIN_STEPS_PER_EPOCH, SMOKE_STEPS, TrainConfig, check_integer, check_positive
from ..errors import ConfigError
from .base import Method, Variant, freeze, param_groups, register, require

KINDS = {"prefix": "prefix-tuning", "prompt": "prompt tuning", "vpt_deep": "VPT-deep"}
"""``PrefixTuningConfig.kind`` -> its name."""

VARIANT_IDS = {"prompt": "prompt-tuning", "vpt_deep": "VPT-deep"}
"""The variant rows' ``variant`` (their result files: ``prefix_tuning-<variant>_seed<s>.json``); ``"prefix"`` is the
method's main row (no variant)."""


class PrefixEncoder(nn.Module):
    """MLP reparameterisation: ``n_out`` sets of ``length`` vectors of width ``dim``."""

    def __init__(self, length: int, dim: int, hidden: int = 512, n_out: int = 1):
        super().__init__()
        self.length, self.dim, self.n_out = length, dim, n_out
        self.embedding = nn.Embedding(length, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, n_out * dim))

    def forward(self) -> torch.Tensor:
        """The vectors, shape [n_out, length, dim]."""
        out = self.mlp(self.embedding.weight)  # [length, n_out * dim]
        return out.view(self.length, self.n_out, self.dim).transpose(0, 1)


TOKEN_LR_SCALE = 10.0
"""Directly trained tokens (prompt tuning, VPT-deep) train at this multiple of ``lr``: the prefix MLP's many weights
move its output by far more than ``lr`` per step, a token alone only by about ``lr`` (Adam), and both papers train
their tokens with large steps (Lester et al.: Adafactor at lr 0.3; VPT sweeps SGD learning rates up to 50). Compared
with x1 on the stand-in's validation split only (smoke profile, prompt tuning, seed 0): x10 validated higher; not
tuned on ViT-B-32 / Flowers102."""

PROMPT_INIT_RANGE = 0.5
"""Lester et al. (2021), random initialisation of prompt tuning: uniform in [-0.5, 0.5]."""


def _patch_area(visual: nn.Module) -> int:
    """Pixels of one patch (VPT's fan-in is 3 x this): the tower's ``patch_size``, else its stem's kernel."""
    embed = getattr(getattr(visual, "trunk", None), "patch_embed", None)  # a timm tower's
    size = (getattr(visual, "patch_size", None) or getattr(getattr(visual, "conv1", None), "kernel_size", None)
            or getattr(embed, "patch_size", None) or (16, 16))
    size = (size, size) if isinstance(size, int) else tuple(size)
    return int(size[0] * size[-1])


def init_tokens(kind: str, n_out: int, length: int, width: int, visual: nn.Module) -> torch.Tensor:
    """Directly trained tokens [n_out, P, D]: prompt tuning as Lester et al., VPT-deep as Jia et al.'s code."""
    bound = PROMPT_INIT_RANGE if kind == "prompt" else (6.0 / (3 * _patch_area(visual) + width)) ** 0.5
    return torch.empty(n_out, length, width).uniform_(-bound, bound)


def check_block(block: nn.Module) -> None:
    """Raise unless ``prefixed_block`` can run ``block`` (open_clip's batch-first self-attention block)."""
    attn = getattr(block, "attn", None)
    if type(block) is not ResidualAttentionBlock or not isinstance(attn, nn.MultiheadAttention):
        raise ValueError(f"Prefix-tuning runs open_clip's ResidualAttentionBlock (nn.MultiheadAttention) itself; "
                         f"this tower has {type(block).__name__}. Fix: use a standard open_clip ViT, or "
                         f"kind='prompt' / 'vpt_deep', which only add input tokens.")
    if not (attn.batch_first and attn._qkv_same_embed_dim and attn.bias_k is None):
        raise ValueError("Prefix-tuning needs a batch-first nn.MultiheadAttention with one in-projection and no "
                         "add_bias_kv. Fix: use a standard open_clip ViT, or kind='prompt' / 'vpt_deep'.")


def prefixed_block(block: nn.Module, x: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   mask_prefix: bool = False) -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` on ``x`` [B, T, D] with P prefix ``key``/``value`` vectors [P, D].

    The prefix is prepended to the block's own keys and values *after* their projection; the queries are the T real
    tokens only, so the output keeps shape [B, T, D]. ``mask_prefix=True`` hides the prefix from every query (the
    block then computes exactly ``block(x)``, up to float rounding): what the tests use to show the prefix is the
    only change.
    """
    attn = block.attn
    b, t, d = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    k = torch.cat([key.to(k.dtype).expand(b, -1, -1), k], dim=1)      # [B, P + T, D]
    v = torch.cat([value.to(v.dtype).expand(b, -1, -1), v], dim=1)
    q, k, v = (z.reshape(b, -1, heads, d // heads).transpose(1, 2) for z in (q, k, v))  # [B, H, *, D / H]
    mask = None
    if mask_prefix:
        mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device)
        mask[:, :key.shape[0]] = False                                # True = may attend
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                         dropout_p=attn.dropout if attn.training else 0.0)
    out = attn.out_proj(out.transpose(1, 2).reshape(b, t, d))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def applies_to(arch: Any, cfg: Any = None) -> str | None:
    """Prompts and prefixes need a token sequence through the blocks; key/value prefixes also blocks whose attention
    ``prefixed_block`` / ``sequence.run_block`` can run."""
    found = arch.image
    if not found.has_sequence or found.family == "text":
        return f"{found.no_sequence or 'it is not an image tower'}; prompt and prefix tokens need one"
    if found.prefix_problem and found.family == "timm-eva":  # prompts skip Eva's rotary positions: its own attention
        return f"clipft runs Eva's attention itself (prompt tokens get no rotary position), and {found.prefix_problem}"
    if (cfg is None or cfg.kind == "prefix") and found.prefix_problem:
        return f"key/value prefixes cannot run in its blocks: {found.prefix_problem} (kind='prompt' or 'vpt_deep' can)"
    return None


def require_sequence(visual: nn.Module, kind: str) -> None:
    """Raise (``NotApplicableError``) unless ``visual`` has blocks that ``kind``'s tokens can run through."""
    require("prefix_tuning", visual, SimpleNamespace(kind=kind))


class PrefixVisual(nn.Module):
    """An open_clip VisionTransformer with prefix-tuning (or a prompt variant); replicates its ``forward``."""

    def __init__(self, visual: nn.Module, length: int, hidden: int = 512, kind: str = "prefix"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}. Fix: 'prefix' (Li & Liang), "
                             f"'prompt' (input tokens) or 'vpt_deep' (fresh input tokens per block).")
        require_sequence(visual, kind)
        self.visual, self.length, self.kind = visual, length, kind
        self.family = towers.family(visual)
        blocks = sequence.blocks(visual)
        if kind == "prefix" and length > 0 and self.family == "vit":
            for block in blocks:
                check_block(block)
        n_out = {"prefix": 2 * len(blocks), "prompt": 1, "vpt_deep": len(blocks)}[kind]
        width = towers.facts(visual).width
        reparameterised = kind == "prefix" and length > 0  # Li & Liang's MLP; the prompt kinds train tokens directly
        self.encoder = PrefixEncoder(length, width, hidden, n_out) if reparameterised else None
        direct = init_tokens(kind, n_out, length, width, visual) if length > 0 and not reparameterised else None
        self.tokens = None if direct is None else nn.Parameter(direct.to(next(visual.parameters())))
        self.register_parameter("folded", None)
        self.output_dim, self.image_size = towers.facts(visual).output_dim, visual.image_size
        self.train(visual.training)  # new modules start in training mode; follow the tower's mode

    @property
    def deep(self) -> bool:
        """True when every block gets its own learned vectors (prefix-tuning and VPT-deep)."""
        return self.kind != "prompt"

    @property
    def extra_tokens(self) -> int:
        """Tokens added to the sequence every block processes (queries): 0 for prefix-tuning, P for the others."""
        return 0 if self.kind == "prefix" else self.length

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (open_clip's switch, honoured by ``forward``)."""
        self.visual.set_grad_checkpointing(enable)

    def prefixes(self) -> torch.Tensor:
        """Current learned vectors [n_out, P, D] (the folded copy, the MLP's output, or the directly trained tokens).
        For ``kind='prefix'`` row 2i is layer i's keys and row 2i + 1 its values."""
        if self.folded is not None:
            return self.folded
        return self.encoder() if self.encoder is not None else self.tokens

    def trained(self) -> list[nn.Parameter]:
        """What the optimizer updates: the MLP (prefix-tuning) or the tokens themselves (the prompt kinds)."""
        if self.encoder is not None:
            return list(self.encoder.parameters())
        return [] if self.tokens is None else [self.tokens]

    def _insert(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """[CLS, rest] -> [CLS, prompt, rest] (after the tower's prefix tokens: none in SigLIP)."""
        n = sequence.prefix_tokens(self.visual)
        prompt = prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :n], prompt, x[:, n:]], dim=1)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        """Remove the prompt slots (the P tokens after the prefix tokens)."""
        n = sequence.prefix_tokens(self.visual)
        return torch.cat([x[:, :n], x[:, n + self.length:]], dim=1)

    def _replace(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """Overwrite the prompt slots with fresh tokens (VPT-deep)."""
        return self._insert(self._drop(x), prompt)

    def _block(self, block: nn.Module, x: torch.Tensor, kv: torch.Tensor | None = None, context: Any = None,
               extra: int = 0) -> torch.Tensor:
        """Run one block (with layer prefix ``kv`` [2, P, D] if given, ``extra`` prompt tokens), checkpointed when the
        tower asks for it."""
        if self.family == "vit":
            fn, args = (block, (x,)) if kv is None else (prefixed_block, (block, x, kv[0], kv[1]))
        else:
            fn, args = sequence.run_block, (self.visual, block, x, context, kv, extra)
        if sequence.checkpointing(self.visual) and torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False)
        return fn(*args)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x, context = sequence.embed(v, images)  # [B, 1 + N, D]: CLS + patches, + pos-emb, patch dropout, ln_pre
        learned = self.prefixes() if self.length > 0 else None
        blocks = sequence.blocks(v)
        if learned is None:
            for block in blocks:
                x = self._block(block, x, context=context)
        elif self.kind == "prefix":
            kv = learned.view(len(blocks), 2, self.length, -1)  # [L, key/value, P, D]
            for i, block in enumerate(blocks):
                x = self._block(block, x, kv[i], context)
        else:
            x = self._insert(x, learned[0])
            for i, block in enumerate(blocks):
                if self.kind == "vpt_deep" and i > 0:
                    x = self._replace(x, learned[i])
                x = self._block(block, x, context=context, extra=self.length)
            x = self._drop(x)  # drop the prompt slots
        return sequence.pool(v, x)


@torch.no_grad()
def fold(pv: PrefixVisual) -> PrefixVisual:
    """Keep the learned vectors as a frozen parameter (the MLP run once; or the trained tokens) and delete what made
    them (in place)."""
    if pv.encoder is not None or pv.tokens is not None:
        pv.folded = nn.Parameter(pv.prefixes().detach().clone(), requires_grad=False)
        pv.encoder, pv.tokens = None, None
    return pv


def saved_tensors(clf: nn.Module) -> dict[str, torch.Tensor]:
    """What a model folder stores of a prefix-tuned model: the folded prefix (the MLP's output; the MLP, a training
    device, is not needed for inference)."""
    pv = clf.visual
    return {"visual.folded": pv.prefixes().detach()} if isinstance(pv, PrefixVisual) and pv.length > 0 else {}


def rebuild(clf: nn.Module, cfg: Any, tensors: Any = None) -> None:
    """A model folder's prefix-tuned model: the tower wrapped as in training with its MLP folded away (the folder
    fills in the folded prefix)."""
    apply(clf, cfg)  # checks that the method applies first
    fold(clf.visual)


def apply(clf: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """Freeze ``clf``, wrap its tower in a PrefixVisual (``clf.visual`` replaced) and train the MLP (prefix-tuning) or
    the tokens (the prompt kinds)."""
    require("prefix_tuning", clf, cfg)
    freeze(clf)
    visual = clf.visual.visual if isinstance(clf.visual, PrefixVisual) else clf.visual
    clf.visual = PrefixVisual(visual, cfg.prefix_length, cfg.prefix_hidden, kind=cfg.kind)
    groups = param_groups(clf.visual.trained(), clf)
    if clf.visual.tokens is not None and groups[0]["name"] == "backbone":
        groups[0]["lr_scale"] = cfg.token_lr_scale  # tokens trained directly take larger steps than an MLP's weights
    return groups


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


def inference_flops(pv: PrefixVisual, images: torch.Tensor) -> dict[str, Any]:
    """Bare tower vs prefixed tower, counted (``clipft_utils.costs``): GFLOPs per image of each and their ratio, next
    to the tokens every block processes and the keys each query attends to. The same on every machine."""
    from ..costs import flops_per_image
    base, prefixed = flops_per_image(pv.visual, images), flops_per_image(pv, images)
    n_tokens = 1 + pv.visual.grid_size[0] * pv.visual.grid_size[1]
    return {"kind": pv.kind, "base_gflops": base / 1e9, "prefix_gflops": prefixed / 1e9, "flop_ratio": prefixed / base,
            "tokens_base": n_tokens, "tokens_prefix": n_tokens + pv.extra_tokens, "keys_base": n_tokens,
            "keys_prefix": n_tokens + pv.length}


@torch.inference_mode()
def measure_inference_slowdown(pv: PrefixVisual, images: torch.Tensor, repeats: int = 10) -> dict[str, Any]:
    """Bare tower vs prefixed tower, interleaved ``repeats`` times in one run; the ratio of the *minimum* times.

    The minimum is the least disturbed measurement (noise only ever adds time); ``noisy`` says when the machine was
    too busy to trust it (a median more than 10 % above the minimum), and the spread is reported either way.
    ``tokens_*`` count the tokens every block processes (its queries: what the linear layers and MLPs pay for),
    ``keys_*`` the keys each query attends to; prefix-tuning adds only keys, the prompt variants add both.
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
    n_tokens = sequence.length(pv.visual, images.shape[-1])
    return {
        "base_ms": float(b.min()), "prefix_ms": float(p.min()), "ratio": float(p.min() / b.min()),
        "spread": spread, "noisy": spread > NOISY, "tokens_base": n_tokens, "tokens_prefix": n_tokens + pv.extra_tokens,
        "keys_base": n_tokens, "keys_prefix": n_tokens + pv.length, "kind": pv.kind,
        "batch_size": images.shape[0], "repeats": repeats, "device": str(images.device),
        "folded": pv.folded is not None, "deep": pv.deep,
    }


@dataclass
class PrefixTuningConfig(TrainConfig):
    """Prefix-tuning of the image tower (seed: length 10, MLP hidden 512, lr 1e-4, 40 epochs)."""

    epochs: int = 40
    lr: float = 1e-4
    head_lr: float | None = 1e-3
    min_steps_per_epoch: int | None = MIN_STEPS_PER_EPOCH
    prefix_length: int = 10
    prefix_hidden: int = 512          # the MLP of prefix-tuning (the prompt kinds train their tokens directly)
    token_lr_scale: float = TOKEN_LR_SCALE  # the prompt kinds' tokens train at lr x this (see TOKEN_LR_SCALE)
    # "prefix": Li & Liang's per-layer key/value prefixes (the main row); "prompt": prompt tuning (VPT-shallow),
    # P tokens inserted once at the input; "vpt_deep": VPT-deep, fresh input tokens before every block
    kind: str = "prefix"

    def validate(self) -> None:
        super().validate()
        check_integer(self, "prefix_length", "prefix_hidden")
        check_positive(self, "prefix_length", "prefix_hidden", "token_lr_scale")
        if self.kind not in KINDS:
            raise ConfigError(f"PrefixTuningConfig.kind must be 'prefix' (Li & Liang's key/value prefixes), "
                              f"'prompt' (prompt tuning: input tokens) or 'vpt_deep' (VPT-deep), got "
                              f"{self.kind!r}. Fix: the old depth='shallow' is kind='prompt', depth='deep' is "
                              f"kind='vpt_deep'.")


METHOD = register(Method(
    name="prefix_tuning", title="Prefix-tuning", kind="parameter-efficient", order=4,
    config=PrefixTuningConfig, apply=apply, rebuild=rebuild, saved_tensors=saved_tensors, tower_weights=False,
    short="prefix", applies_to=applies_to,
    summary=lambda cfg: f"{KINDS[cfg.kind]}, P={cfg.prefix_length}"
                        + (f", MLP {cfg.prefix_hidden}" if cfg.kind == "prefix" else ", tokens trained directly"),
    # A short schedule on a 0.85M-parameter tower needs larger steps than the reference recipe's 40 epochs on
    # ViT-B-32 (see lora.py's note).
    profiles={"smoke": {**SMOKE_STEPS, "lr": 1e-3}, "rehearse": {"epochs": 1}},
    variants={"prefix_tuning-prompt": Variant({"kind": "prompt"}, "prompt tuning (input tokens), P=10"),
              "prefix_tuning-vpt_deep": Variant({"kind": "vpt_deep"}, "VPT-deep (tokens per block), P=10")},
))
