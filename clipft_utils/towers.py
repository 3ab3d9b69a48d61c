"""What every method needs to know about an image tower, found once, in one place, for each tower family.

open_clip builds three kinds of image tower: its own ``VisionTransformer`` (``nn.MultiheadAttention`` with a fused
``in_proj_weight``), its ``ModifiedResNet`` (BatchNorm bottlenecks and an attention pool whose q/k/v/c projections
are read as weights) and everything else through timm (``TimmModel``: a timm ``trunk`` -- ViT blocks with a fused
``qkv`` Linear (SigLIP), Eva blocks with separate q/k/v projections and rotary positions (EVA02), ConvNeXt blocks
(MLP linears only), FastViT (convolutional stages, attention on feature maps in its last stage: MobileCLIP) -- and a
``head`` that may project, with no ``output_dim``). ``facts(tower)`` reads one of them and returns a ``TowerFacts``:
its family, output width, token width, blocks, the places LoRA can adapt (``Spot``), its norms, whether it has a
token sequence for prompts and prefixes (and why not), and the depth of every parameter for layer-wise lr decay.
Methods ask this module instead of reaching into ``visual.transformer``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from torch import nn

FAMILIES = {
    "vit": "open_clip VisionTransformer",
    "resnet": "open_clip ModifiedResNet",
    "text": "open_clip text transformer",
    "timm-vit": "timm VisionTransformer",
    "timm-eva": "timm Eva",
    "timm-convnext": "timm ConvNeXt",
    "timm-fastvit": "timm FastViT",
    "timm": "timm model",
}
"""Family id -> what it is, as messages name it."""
TRANSFORMERS = ("vit", "text", "timm-vit", "timm-eva")
"""Families whose blocks process a token sequence (prompts and prefixes apply)."""
NO_SEQUENCE = {
    "resnet": "a convolutional tower (BatchNorm bottlenecks, attention only in its final pooling) has no sequence of "
              "tokens passing through its blocks",
    "timm-convnext": "a convolutional tower (depthwise convolutions and MLPs on feature maps) has no sequence of "
                     "tokens passing through its blocks",
    "timm-fastvit": "FastViT mixes its first three stages with convolutions and runs attention only on the feature "
                    "maps of its last stage: there is no token sequence through its blocks",
    "timm": "clipft does not know this timm architecture's blocks",
}
"""Family -> why its blocks have no token sequence (prompt and prefix methods quote it)."""
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class Spot:
    """A place LoRA can adapt: a module (path inside the tower), how its weight is used, the targets it holds.

    ``kind``: ``"mha"`` (``nn.MultiheadAttention``: q, k, v are row slices of ``in_proj_weight``, out its
    ``out_proj``), ``"qkv"`` (one fused Linear whose output rows are q, k, v: timm's ``attn.qkv``), ``"linear"`` (one
    Linear, one target), ``"attnpool"`` (ModifiedResNet's attention pool: q/k/v/c projections read as weights)."""

    path: str
    kind: str
    slots: tuple[str, ...]


@dataclass(frozen=True)
class TowerFacts:
    """An image (or text) tower as the methods see it."""

    family: str                       # a key of FAMILIES
    arch: str                         # its class, e.g. "timm Eva (eva02_base_patch16_clip_224)"
    output_dim: int                   # width of the embedding the tower returns
    width: int                        # width of its tokens (transformers) or of its last feature map (convnets)
    blocks: tuple[str, ...]           # module paths of its residual blocks, in forward order
    stem: tuple[str, ...]             # parameter-name prefixes before the first block (depth 0)
    spots: tuple[Spot, ...]           # where LoRA can go, in module order
    norms: tuple[str, ...]            # norm layer classes present ("LayerNorm", "BatchNorm2d", ...)
    grad_checkpointing: bool          # whether its blocks can be recomputed in the backward pass
    prefix_problem: str | None = None  # why learned key/value prefixes cannot run in its blocks (None: they can)

    @property
    def title(self) -> str:
        """``"timm Eva (eva02_base_patch16_clip_224)"``: how messages name the architecture."""
        return self.arch

    @property
    def has_sequence(self) -> bool:
        """True when a token sequence runs through its blocks (prompt tuning, VPT, prefix-tuning apply)."""
        return self.family in TRANSFORMERS

    @property
    def no_sequence(self) -> str:
        """Why prompts and prefixes cannot apply ("" when they can)."""
        return "" if self.has_sequence else NO_SEQUENCE.get(self.family, NO_SEQUENCE["timm"])

    @property
    def batch_norm(self) -> bool:
        """True when the tower normalises with BatchNorm (its statistics stay frozen in every method)."""
        return any("BatchNorm" in n for n in self.norms)

    def lora_targets(self) -> tuple[str, ...]:
        """The LoRA targets this tower offers, in ``lora.LORA_TARGETS`` order."""
        present = {s for spot in self.spots for s in spot.slots}
        return tuple(t for t in ("q", "k", "v", "out", "fc", "proj") if t in present)

    def block_of(self, name: str) -> int | None:
        """Index of the block a parameter (or module) path belongs to, None outside the blocks."""
        for i, block in enumerate(self.blocks):
            if name.startswith(block + "."):
                return i
        return None

    def depth(self, name: str) -> int:
        """A parameter's depth for layer-wise lr decay: 0 = before the first block, i + 1 = block i (a stage's
        downsampling goes with the stage's first block), L + 1 = after the last block."""
        if name.startswith(self.stem):
            return 0
        i = self.block_of(name)
        if i is not None:
            return i + 1
        for j, block in enumerate(self.blocks):
            stage = block.rsplit(".blocks.", 1)[0] if ".blocks." in block else None
            if stage and name.startswith(stage + "."):
                return j + 1
        return len(self.blocks) + 1


@dataclass(frozen=True)
class Architecture:
    """A CLIP model as applicability sees it: its name, its image tower's facts and what its text tower is."""

    name: str                  # the model's name ("RN50"), or its image tower's class
    image: TowerFacts
    text: str | None = None    # "": open_clip's own text transformer; a reason: why not; None: not known here


def text_problem(model: nn.Module) -> str:
    """Why the text-side methods cannot run on ``model``'s text tower ("" when it is open_clip's own transformer)."""
    text = getattr(model, "text", None)
    if text is None:
        return "" if all(hasattr(model, p) for p in ("token_embedding", "positional_embedding", "transformer",
                                                     "ln_final")) else "it has no open_clip text tower"
    name = type(text).__name__
    if name not in ("TextTransformer", "TextTower"):  # TextTower: textside's copy of one
        return (f"its text tower is a {name} (a Hugging Face language model), not open_clip's TextTransformer whose "
                "token embeddings and blocks these methods work inside")
    if getattr(text, "cls_emb", None) is not None or getattr(text, "use_pad_mask", False):
        return "its TextTransformer appends a class token / masks padding (CoCa-style), which these methods do not run"
    return ""


def architecture(model: nn.Module, name: str | None = None) -> Architecture:
    """The ``Architecture`` of an open_clip CLIP model (both towers known), or of an image tower / classifier alone."""
    visual = getattr(model, "visual", model)
    known = hasattr(model, "visual") and (hasattr(model, "text") or hasattr(model, "token_embedding"))
    return Architecture(name or type(unwrap(visual)).__name__, facts(visual), text_problem(model) if known else None)


def unwrap(tower: nn.Module) -> nn.Module:
    """The open_clip tower inside a method's wrapper (``PrefixVisual.visual``), or the tower itself."""
    while hasattr(tower, "visual") and isinstance(getattr(tower, "visual"), nn.Module):
        tower = tower.visual
    return tower


def family(tower: nn.Module) -> str:
    """The family id of an image tower (or of a module with open_clip text blocks: ``"text"``)."""
    tower = unwrap(tower)
    name = type(tower).__name__
    if name == "VisionTransformer" and hasattr(tower, "transformer"):
        return "vit"
    if name == "ModifiedResNet":
        return "resnet"
    trunk = getattr(tower, "trunk", None)
    if trunk is not None:
        return {"VisionTransformer": "timm-vit", "Eva": "timm-eva", "ConvNeXt": "timm-convnext",
                "FastVit": "timm-fastvit"}.get(type(trunk).__name__, "timm")
    if hasattr(getattr(tower, "transformer", None), "resblocks"):
        return "text"
    return "unknown"


def facts(tower: nn.Module) -> TowerFacts:
    """The ``TowerFacts`` of an open_clip image tower (any family), or of an open_clip text transformer."""
    fam = family(tower)
    tower = unwrap(tower)
    if fam in ("vit", "text"):
        return _open_clip_facts(tower, fam)
    if fam == "resnet":
        return _resnet_facts(tower)
    if fam.startswith("timm"):
        return _timm_facts(tower, fam)
    from .errors import ConfigError
    raise ConfigError(f"{type(tower).__name__} is not an image tower open_clip builds (VisionTransformer, "
                      "ModifiedResNet or TimmModel). Fix: pass a CLIPClassifier, an open_clip model or its .visual.")


def _norms(tower: nn.Module) -> tuple[str, ...]:
    return tuple(sorted({type(m).__name__ for m in tower.modules() if isinstance(m, NORMS)}))


def _open_clip_facts(tower: nn.Module, fam: str) -> TowerFacts:
    """open_clip's VisionTransformer (or a text transformer): ``transformer.resblocks``, MHA + ``mlp.c_fc/c_proj``."""
    spots = []
    blocks = tuple(f"transformer.resblocks.{i}" for i in range(len(tower.transformer.resblocks)))
    for path, block in zip(blocks, tower.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if isinstance(attn, nn.MultiheadAttention) or type(attn).__name__ == "LoRAMultiheadAttention":
            spots.append(Spot(f"{path}.attn", "mha", ("q", "k", "v", "out")))
        spots += [Spot(f"{path}.mlp.{attr}", "linear", (slot,)) for attr, slot in (("c_fc", "fc"), ("c_proj", "proj"))
                  if hasattr(getattr(block, "mlp", None), attr)]
    width = int(tower.transformer.width)
    out = getattr(tower, "output_dim", None) or width
    odd = sorted({type(b).__name__ for b in tower.transformer.resblocks if type(b).__name__ != "ResidualAttentionBlock"
                  or not isinstance(b.attn, nn.MultiheadAttention) or not b.attn.batch_first})
    return TowerFacts(fam, FAMILIES[fam], int(out), width, blocks,
                      ("conv1.", "class_embedding", "positional_embedding", "ln_pre."), tuple(spots), _norms(tower),
                      True, f"its blocks ({', '.join(odd)}) are not open_clip's batch-first ResidualAttentionBlock with "
                      "nn.MultiheadAttention" if odd else None)


def _resnet_facts(tower: nn.Module) -> TowerFacts:
    """open_clip's ModifiedResNet: a 3-conv stem, ``layer1-4`` bottlenecks and the attention pool ``attnpool``."""
    blocks = tuple(f"layer{s}.{j}" for s in range(1, 5) for j in range(len(getattr(tower, f"layer{s}"))))
    stem = tuple(f"{m}." for m in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"))
    pool = tower.attnpool
    return TowerFacts("resnet", FAMILIES["resnet"], int(tower.output_dim), int(pool.k_proj.in_features), blocks, stem,
                      (Spot("attnpool", "attnpool", ("q", "k", "v", "out")),), _norms(tower), False)


def _timm_blocks(trunk: nn.Module) -> tuple[str, ...]:
    """``trunk.blocks.i`` (ViT, Eva) or ``trunk.stages.s.blocks.j`` (ConvNeXt, FastViT)."""
    if isinstance(getattr(trunk, "blocks", None), (nn.Sequential, nn.ModuleList)):
        return tuple(f"trunk.blocks.{i}" for i in range(len(trunk.blocks)))
    stages = getattr(trunk, "stages", None)
    if stages is None:
        return ()
    return tuple(f"trunk.stages.{s}.blocks.{j}" for s, stage in enumerate(stages)
                 for j in range(len(getattr(stage, "blocks", ()))))


def _linear(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "LoRALinear"


def _timm_spots(tower: nn.Module, blocks: tuple[str, ...]) -> list[Spot]:
    """LoRA's places in timm blocks: the attention's fused ``qkv`` (or q/k/v projections) and ``proj``; the MLP's
    ``fc1`` (``fc1_g``, ``fc1_x`` for SwiGLU) and ``fc2`` when they are Linear layers."""
    spots = []
    for path in blocks:
        block = tower.get_submodule(path)
        for name in ("attn", "token_mixer"):
            attn = getattr(block, name, None)
            if attn is None or not _linear(getattr(attn, "proj", None)):
                continue
            if getattr(attn, "qkv", None) is not None and getattr(attn, "q_bias", None) is None \
                    and _linear(attn.qkv) or type(getattr(attn, "qkv", None)).__name__ == "LoRAFusedLinear":
                spots.append(Spot(f"{path}.{name}.qkv", "qkv", ("q", "k", "v")))
            elif all(_linear(getattr(attn, f"{s}_proj", None)) for s in "qkv"):
                spots += [Spot(f"{path}.{name}.{s}_proj", "linear", (s,)) for s in "qkv"]
            spots.append(Spot(f"{path}.{name}.proj", "linear", ("out",)))
        mlp = getattr(block, "mlp", None)
        for attr, slot in (("fc1", "fc"), ("fc1_g", "fc"), ("fc1_x", "fc"), ("fc2", "proj")):
            if _linear(getattr(mlp, attr, None)):
                spots.append(Spot(f"{path}.mlp.{attr}", "linear", (slot,)))
    return spots


def _timm_output_dim(tower: nn.Module) -> int:
    """The width ``TimmModel`` returns: its head's last Linear, else the trunk's classifier width, else its features."""
    linears = [m for m in tower.head.modules() if isinstance(m, nn.Linear)]
    if linears:
        return int(linears[-1].out_features)
    trunk = tower.trunk
    return int(getattr(trunk, "num_classes", 0) or trunk.num_features)


def _timm_facts(tower: nn.Module, fam: str) -> TowerFacts:
    """A ``TimmModel``: its trunk's blocks and the head open_clip adds."""
    trunk = tower.trunk
    blocks = _timm_blocks(trunk)
    cfg = getattr(trunk, "pretrained_cfg", None) or getattr(trunk, "default_cfg", None) or {}
    arch = f"{FAMILIES[fam]} ({cfg.get('architecture', type(trunk).__name__)})"
    stem = tuple(f"trunk.{m}" for m in ("patch_embed.", "cls_token", "reg_token", "pos_embed", "norm_pre.", "stem."))
    width = int(getattr(trunk, "embed_dim", 0) or trunk.num_features)
    return TowerFacts(fam, arch, _timm_output_dim(tower), width, blocks, stem, tuple(_timm_spots(tower, blocks)),
                      _norms(tower), hasattr(trunk, "set_grad_checkpointing"), _timm_prefix_problem(trunk, fam))


def _timm_prefix_problem(trunk: nn.Module, fam: str) -> str | None:
    """Why ``sequence.run_block`` cannot add key/value prefixes to this trunk's blocks (None: it can)."""
    want = {"timm-vit": ({"Block"}, {"Attention"}), "timm-eva": ({"EvaBlock", "EvaBlockPostNorm"}, {"EvaAttention"})}
    if fam not in want:
        return None
    if getattr(trunk, "rope_mixed", False):
        return "its rotary embeddings differ per block (rope_mixed)"
    blocks_ok, attn_ok = want[fam]
    odd = sorted({f"{type(b).__name__}/{type(b.attn).__name__}" for b in trunk.blocks
                  if type(b).__name__ not in blocks_ok or type(b.attn).__name__ not in attn_ok})
    return f"its blocks ({', '.join(odd)}) are not timm's standard {' / '.join(sorted(blocks_ok))}" if odd else None


def freeze_batch_norm_stats(module: nn.Module) -> None:
    """Put every BatchNorm layer of ``module`` in eval mode: its running statistics stay the pretrained ones."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def spot_modules(tower: nn.Module, spots: tuple[Spot, ...]) -> Iterator[tuple[Spot, nn.Module]]:
    """(spot, the module at its path) for each spot."""
    tower = unwrap(tower)
    for spot in spots:
        yield spot, tower.get_submodule(spot.path)


def block_label(facts_: TowerFacts, name: str) -> str:
    """A parameter's module path without its block prefix (``attn.in_proj``), for grouping by kind."""
    i = facts_.block_of(name)
    return name[len(facts_.blocks[i]) + 1:] if i is not None else name
