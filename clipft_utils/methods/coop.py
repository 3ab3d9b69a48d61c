"""CoOp (Zhou et al., 2022): learn the prompt's context words; both towers stay frozen.

The prompt of class c is ``[SOS] [V1] … [VM] <class name tokens> . [EOS]``: M learned vectors ``[V1]…[VM]`` (one
set shared by every class: CoOp's "unified context"; class-specific contexts are not offered) take the place of the
word embeddings of a hand-written template's words, at the text tower's *input* (after the token lookup, before
the positional embedding). The class features are recomputed from the prompts at every step, so the gradient of
the image-text logits flows through the frozen text transformer into the M vectors (``textside.py``). They are the
only parameters that train: M × width (16 × 512 = 8,192 for ViT-B-32).

Initialisation, as in CoOp's code: when the words of ``ctx_init`` ("a photo of a") are exactly M tokens, the context
starts as their embeddings, so the untrained prompt reads "a photo of a <class>."; otherwise (CoOp's M = 16 runs
use no init words) the vectors are drawn from N(0, 0.02²). ``ctx_init`` may also be a whole template with ``{}``:
the words before ``{}`` initialise the context and the text after it (", a type of flower.") replaces CoOp's
closing ".". With the course's own template and M = its number of words, the untrained CoOp classifier *is* the
zero-shot classifier (tests/test_coop.py checks the logits).

Optimiser. CoOp trains with SGD (lr 2e-3, momentum 0.9, weight decay 5e-4, cosine, batch 32; 50/100/200 epochs for
1–2/4–8/16 shots, one warm-up epoch at a constant 1e-5). The course has one engine, AdamW with linear warm-up +
cosine: we keep CoOp's lr 2e-3 (Adam's per-coordinate steps of about lr suit vectors whose entries are about 0.01
to 0.02), no weight decay (it would only pull the context towards the zero vector), no warm-up (CoOp's first epoch
at 1e-5 steadies SGD's first steps; Adam's steps are bounded by lr anyway, and a warm-up epoch would not fit the
1-epoch ``--quick`` and rehearsal runs) and 50 epochs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..config import SMOKE_STEPS, TrainConfig, check_integer, check_positive
from ..errors import ConfigError
from ..textside import TextSideClassifier, TextTower, applies_to, tokenize
from .base import Method, freeze, register, require

INITS = ("auto", "words", "random")
PLACEHOLDER = "X"
"""The word whose embedding each context slot replaces (one token; its embedding is never used)."""
RANDOM_STD = 0.02
"""CoOp's std for context vectors that start without words."""
SMOKE = dict(SMOKE_STEPS)
"""On the stand-in CoOp trains the smoke budget of every main row that trains on images (``config.SMOKE_STEPS``, scaled
by the profile): the same number of optimizer steps as BitFit, prefix-tuning, LoRA, CLIP-LoRA and full fine-tuning.
The full recipe keeps CoOp's epochs (its paper scales them with the shots) and no floor."""


@dataclass
class CoOpConfig(TrainConfig):
    """CoOp: M learned context vectors in the text prompt (CoOp: M 16, lr 2e-3, cosine; AdamW here, see the module)."""

    epochs: int = 50
    lr: float = 2e-3
    weight_decay: float = 0.0
    n_ctx: int = 16                  # M, the number of learned context vectors
    ctx_init: str = "a photo of a"   # words that initialise the context (or a template with {}: see the module)
    init: str = "auto"               # "words": from ctx_init (its tokens must be M); "random": N(0, 0.02²); "auto"

    def validate(self) -> None:
        super().validate()
        check_integer(self, "n_ctx")
        check_positive(self, "n_ctx")
        if self.init not in INITS:
            raise ConfigError(f"CoOpConfig.init must be one of {INITS}, got {self.init!r}.")
        if not isinstance(self.ctx_init, str) or self.ctx_init.count("{}") > 1:
            raise ConfigError(f"CoOpConfig.ctx_init must be words (e.g. 'a photo of a') or a template with one "
                              f"'{{}}' for the class name, got {self.ctx_init!r}.")
        if self.init == "words" and not split_init(self.ctx_init)[0]:
            raise ConfigError(f"CoOpConfig.init='words' needs words before the class name in ctx_init, got "
                              f"{self.ctx_init!r}. Fix: set ctx_init='a photo of a' or init='auto'.")


def split_init(ctx_init: str) -> tuple[str, str]:
    """(words that initialise the context, text after the class name): ``"a photo of a {}, x."`` -> (…, ", x.")."""
    words, _, after = ctx_init.partition("{}") if "{}" in ctx_init else (ctx_init, "", ".")
    return " ".join(words.split()), after.rstrip()


def _word_tokens(tokenizer: Any, words: str) -> torch.Tensor:
    """Token ids of ``words`` without start/end tokens (CLIP's BPE, or a Hugging Face tokenizer such as SigLIP's)."""
    if hasattr(tokenizer, "sot_token_id"):
        ids = tokenizer([words])[0]
        return ids[1:int(ids.argmax())]  # the end-of-text id is the largest in CLIP's vocabulary
    clean = getattr(tokenizer, "clean_fn", lambda text: text)
    return torch.tensor(tokenizer.tokenizer(clean(words), add_special_tokens=False)["input_ids"], dtype=torch.long)


def context_start(tokenizer: Any, tokens: torch.Tensor, n_ctx: int) -> int:
    """Where the n_ctx placeholder tokens start in the tokenized prompts (1 after CLIP's start token; 0 where a
    tokenizer adds none)."""
    placeholder = _word_tokens(tokenizer, PLACEHOLDER)
    row = tokens[0].tolist()
    if len(placeholder) == 1:
        pid = int(placeholder[0])
        for i in range(len(row) - n_ctx + 1):
            if row[i:i + n_ctx] == [pid] * n_ctx:
                return i
    raise ConfigError(f"CoOp cannot find its {n_ctx} placeholder tokens ('{PLACEHOLDER}') in the tokenized prompt "
                      f"{row[:n_ctx + 4]}...: this tokenizer splits or merges them. Fix: use a model with CLIP's "
                      "tokenizer, or an image-side method.")


class CoOpPrompts(nn.Module):
    """``[SOS] ctx_1..ctx_M <class> <suffix> [EOS]`` for every class, the M context vectors shared and learned."""

    def __init__(self, tokenizer: Any, tower: TextTower, classnames: Sequence[str], n_ctx: int,
                 ctx_init: str = "a photo of a", init: str = "auto"):
        super().__init__()
        words, suffix = split_init(ctx_init)
        # tokenizer None: the context vectors alone, no prompts (what `params` counts when the tokenizer is not at hand)
        word_ids = _word_tokens(tokenizer, words) if words and tokenizer is not None else torch.zeros(0, dtype=torch.long)
        if init == "words" and len(word_ids) != n_ctx and tokenizer is not None:
            raise ConfigError(f"CoOp: the init words '{words}' are {len(word_ids)} tokens but n_ctx is {n_ctx}. "
                              f"Fix: set n_ctx={len(word_ids)}, or init='auto' (random when they differ).")
        self.n_ctx, self.per_class, self.suffix = n_ctx, 1, suffix
        self.from_words = init != "random" and len(word_ids) == n_ctx
        self.init_words = words if self.from_words else None
        context = " ".join([PLACEHOLDER] * n_ctx)
        self.texts = [f"{context} {name}{suffix}" for name in classnames]
        tokens = None if tokenizer is None else tokenize(tokenizer, self.texts, tower)
        self.register_buffer("tokens", tokens, persistent=False)
        self.start = None if tokenizer is None else context_start(tokenizer, tokens, n_ctx)
        weight = tower.token_embedding.weight
        with torch.no_grad():
            if self.from_words:
                ctx = weight[word_ids.to(weight.device)].detach().clone()
            else:
                ctx = torch.empty(n_ctx, weight.shape[1], device=weight.device, dtype=weight.dtype)
                nn.init.normal_(ctx, std=RANDOM_STD)
        self.ctx = nn.Parameter(ctx)

    @property
    def shape(self) -> str:
        """The prompt as text, e.g. ``[V1] [V2] … [V16] <class>.``"""
        slots = " ".join(f"[V{i + 1}]" for i in range(min(self.n_ctx, 2)))
        slots += f" … [V{self.n_ctx}]" if self.n_ctx > 2 else ""
        return f"{slots} <class>{self.suffix}"

    def forward(self, token_embedding: nn.Module) -> torch.Tensor:
        """Prompt embeddings [C, L, W]: the placeholders' embeddings replaced by the context vectors."""
        e = token_embedding(self.tokens)
        ctx = self.ctx.to(e.dtype).unsqueeze(0).expand(e.shape[0], -1, -1)
        return torch.cat([e[:, :self.start], ctx, e[:, self.start + self.n_ctx:]], dim=1)


def apply(clf: nn.Module, cfg: CoOpConfig) -> list[dict[str, Any]]:
    """Freeze ``clf`` (a TextSideClassifier), give it CoOp prompts and train only their context vectors."""
    if not isinstance(clf, TextSideClassifier):
        raise ConfigError(f"CoOp learns the prompts of a text-side classifier, got a {type(clf).__name__}. Fix: "
                          "build it with clipft_utils.textside.classifier(course).")
    require("coop", clf, cfg)
    freeze(clf)
    clf.prompts = CoOpPrompts(clf.tokenizer, clf.text, clf.classnames, cfg.n_ctx, cfg.ctx_init, cfg.init)
    clf.prompts.train(clf.training)
    return [{"params": [clf.prompts.ctx], "name": "context"}]


def deployed(clf: TextSideClassifier) -> tuple[nn.Module, bool]:
    """What a model folder saves of a trained CoOp: its learned prompts, run through the text tower once, are a
    fixed head over the frozen image tower (head only: the tower is the base one)."""
    from ..models import CLIPClassifier
    with torch.no_grad():
        weight, bias = clf.head_tensors()
    head = CLIPClassifier(clf.visual, weight.detach().float().cpu())
    with torch.no_grad():
        head.head.bias.copy_(bias.detach().float().cpu())
    return head, True


@torch.no_grad()
def nearest_words(clf: TextSideClassifier, k: int = 1) -> list[list[str]]:
    """For each context vector, the ``k`` vocabulary words whose embeddings are nearest (Euclidean, as CoOp's
    interpret_prompt.py): a rough reading of what the context learned."""
    table = clf.text.token_embedding.weight.float()
    dist = torch.cdist(clf.prompts.ctx.float(), table)
    ids = dist.topk(k, largest=False).indices.tolist()
    decoder = getattr(clf.tokenizer, "decoder", {})
    return [[decoder.get(i, str(i)).replace("</w>", "") for i in row] for row in ids]


METHOD = register(Method(
    name="coop", title="CoOp", kind="prompt learning", order=4.5, config=CoOpConfig,
    # apply=None: its apply() needs a textside.TextSideClassifier, not the CLIPClassifier that the generic tools
    # (parameter table, the `train` command) build; notebook 04 calls coop.apply itself, `bench` text_apply.
    apply=None, text_apply=apply, deployed=deployed, short="coop", applies_to=applies_to,
    summary=lambda cfg: f"M={cfg.n_ctx} context vectors",
    profiles={"smoke": SMOKE, "rehearse": {"epochs": 1}},
))
