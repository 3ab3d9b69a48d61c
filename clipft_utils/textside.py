"""The text-side classifier: class text features recomputed by CLIP's text tower at every training step.

``logits = logit_scale · normalize(visual(x)) · normalize(text_features)ᵀ``, where ``text_features`` [C, D] come
from running the class prompts through the text tower. Image-side methods (03–06) freeze the text side into a
head once; the text-side methods train something *inside* the text tower, so the class features must be
recomputed whenever it changes: CoOp learns the prompt's context vectors (``methods/coop.py``), CLIP-LoRA adds
LoRA to both towers (``methods/clip_lora.py``).

Three pieces:

* ``TextTower``: open_clip's ``CLIP.encode_text`` from the token *embeddings* on (so a method can put learned
  vectors where word embeddings were), with copies of the text modules (LoRA wraps them in place; the loaded
  model is never touched).
* a prompt module (``TemplatePrompts`` here, ``CoOpPrompts`` in coop.py): ``tokens`` [P, L] (the ids, used to
  find the end-of-text token that is pooled) and ``forward(token_embedding) -> [P, L, W]`` embeddings; with T
  templates per class P = C·T and the class feature is the mean of its T normalised features, renormalised,
  exactly as ``models.zero_shot_weights``.
* ``TextSideClassifier``: both towers plus the prompts. Before any training it *is* the zero-shot classifier.

Trailing padding is cut: the text transformer is causal, so tokens after a prompt's end-of-text token never reach
the pooled feature, and running only up to the longest prompt gives the same features for a fraction of the cost
(22 of ToyCLIP's 32 positions on SynthFlowers; about 25 of ViT-B-32's 77 on Flowers102).

In eval mode, under ``no_grad``/``inference_mode``, the class features are cached and reused until any text-side
tensor changes (each tensor's version counter, plus the LoRA switches, are the cache key); training never uses the
cache. ``head_tensors()`` turns the current text features into the course's head convention
(``W · normalize(f) + b`` with ``W = logit_scale · text features``, ``b = 0``): that is what ``train_method`` saves.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

TEXT_PARTS = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection")


def check_text_tower(model: nn.Module) -> nn.Module:
    """Return ``model`` if its text tower is open_clip's own transformer (``CLIP``'s parts, or ``CustomTextCLIP.text``
    a ``TextTransformer``: SigLIP, EVA02, MobileCLIP), else raise saying why and what to use."""
    from .towers import text_problem
    problem = text_problem(model)
    missing = [p for p in TEXT_PARTS if not hasattr(text_parts(model), p)]
    if problem or missing:
        raise ConfigError(
            f"The text-side methods (CoOp, CLIP-LoRA) need open_clip's own text transformer; in this "
            f"{type(model).__name__} {problem or f'it lacks {missing}'}. Fix: use a model with one, such as 'ViT-B-32', "
            "'RN50', 'ViT-B-16-SigLIP' or the stand-in 'ToyCLIP', or an image-side method.")
    return model


def text_parts(model: nn.Module) -> nn.Module:
    """The module holding the text tower's parts: the CLIP itself, or ``CustomTextCLIP.text``."""
    text = getattr(model, "text", None)
    return model if text is None else text


def applies_to(arch: Any, cfg: Any = None) -> str | None:
    """The text-side methods' rule: ``arch``'s text tower must be open_clip's own transformer (None: it is, or it is
    not known here)."""
    return arch.text or None


class TextTower(nn.Module):
    """open_clip's ``CLIP.encode_text`` after the token lookup: token embeddings [P, L, W] -> text features [P, D]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        check_text_tower(model)
        parts = text_parts(model)
        self.token_embedding = copy.deepcopy(parts.token_embedding)
        self.positional_embedding = copy.deepcopy(parts.positional_embedding)
        self.transformer = copy.deepcopy(parts.transformer)
        self.ln_final = copy.deepcopy(parts.ln_final)
        self.text_projection = copy.deepcopy(parts.text_projection)
        self.pool_type = getattr(model, "text_pool_type", getattr(parts, "pool_type", "argmax"))
        self.eos_id = getattr(model, "text_eos_id", getattr(parts, "eos_id", None))
        mask = getattr(parts, "attn_mask", None)
        self.register_buffer("attn_mask", None if mask is None else mask.clone(), persistent=False)
        self.context_length = int(self.positional_embedding.shape[0])
        self.train(model.training)

    @property
    def causal(self) -> bool:
        """True when every position sees only earlier ones (what lets trailing padding be cut)."""
        return self.attn_mask is not None and self.pool_type in ("argmax", "eos")

    def forward(self, embeds: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        from open_clip.transformer import text_global_pool
        n = embeds.shape[1]
        cast = self.transformer.get_cast_dtype()
        x = embeds.to(cast) + self.positional_embedding[:n].to(cast)
        mask = None if self.attn_mask is None else self.attn_mask[:n, :n]
        x = self.transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x if self.text_projection is None else x @ self.text_projection


def tokenize(tokenizer: Any, texts: Sequence[str], tower: TextTower) -> torch.Tensor:
    """Token ids [P, L] of ``texts``, cut after the longest prompt when the tower is causal.

    A prompt longer than the tower's context would lose its end (and the class name with it): that is an error."""
    for text in texts:
        n = token_count(tokenizer, text)
        if n > tower.context_length:
            raise ConfigError(
                f"The prompt '{text}' is {n} tokens long, more than the text tower's context of "
                f"{tower.context_length}: its end would be cut off. Fix: use fewer context tokens (n_ctx) or a "
                "shorter template.")
    tokens = tokenizer(list(texts))
    if tower.causal and tower.pool_type == "argmax":
        tokens = tokens[:, :int(tokens.argmax(dim=1).max()) + 1]
    return tokens


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` with the tokenizer's start and end tokens (CLIP's BPE: + 2; a Hugging Face tokenizer: its
    own special tokens)."""
    if hasattr(tokenizer, "encode"):
        return len(tokenizer.encode(text)) + 2
    clean = getattr(tokenizer, "clean_fn", lambda t: t)
    return len(tokenizer.tokenizer(clean(text))["input_ids"])


class TemplatePrompts(nn.Module):
    """Fixed prompts: every template filled with every class name (``T`` templates per class, class-major)."""

    def __init__(self, tokenizer: Any, tower: TextTower, classnames: Sequence[str], templates: Sequence[str]):
        super().__init__()
        if not templates:
            raise ConfigError("TemplatePrompts needs at least one template. Fix: pass e.g. ['a photo of a {}.'].")
        self.per_class = len(templates)
        self.texts = [t.format(c) for c in classnames for t in templates]
        self.register_buffer("tokens", tokenize(tokenizer, self.texts, tower), persistent=False)

    def forward(self, token_embedding: nn.Module) -> torch.Tensor:
        """Prompt embeddings [P, L, W]."""
        return token_embedding(self.tokens)


class TextSideClassifier(nn.Module):
    """``logit_scale · normalize(visual(x)) · normalize(text features)ᵀ`` with the text features recomputed."""

    def __init__(self, visual: nn.Module, text: TextTower, prompts: nn.Module, logit_scale: float,
                 classnames: Sequence[str], tokenizer: Any):
        super().__init__()
        self.visual, self.text, self.prompts = visual, text, prompts
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)), persistent=False)
        self.classnames = list(classnames)
        self.tokenizer = tokenizer
        self._cache: tuple[Any, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image embeddings."""
        return F.normalize(self.visual(images), dim=-1)

    def _cache_key(self) -> Any:
        """What the cached features depend on; None when they must be recomputed (training, or gradients on)."""
        if self.training or torch.is_grad_enabled():
            return None
        dev = self.logit_scale.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        tensors = [*self.text.parameters(), *self.prompts.parameters(), *self.prompts.buffers()]
        switches = [(getattr(m, "active", None), m.merged) for m in self.text.modules() if hasattr(m, "merged")]
        return dev, amp, tuple((id(t), t._version) for t in tensors), tuple(switches)

    def text_features(self) -> torch.Tensor:
        """Normalised class text features [C, D] (recomputed unless nothing they depend on changed)."""
        key = self._cache_key()
        if key is not None and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        emb = self.text(self.prompts(self.text.token_embedding), self.prompts.tokens)
        feats = F.normalize(emb.float(), dim=-1)
        if self.prompts.per_class > 1:
            feats = F.normalize(feats.view(self.num_classes, self.prompts.per_class, -1).mean(dim=1), dim=-1)
        self._cache = None if key is None else (key, feats)
        return feats

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feats = self.features(images)
        return self.logit_scale * feats @ self.text_features().to(feats.dtype).T

    def train(self, mode: bool = True) -> "TextSideClassifier":
        from .towers import freeze_batch_norm_stats
        self._cache = None
        super().train(mode)
        freeze_batch_norm_stats(self.visual)  # as CLIPClassifier: BatchNorm statistics stay the pretrained ones
        return self

    @torch.no_grad()
    def head_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current classifier as the course's head ``(W, b)``: ``W = logit_scale · text features``, ``b = 0``."""
        weight = self.logit_scale * self.text_features()
        return weight, torch.zeros(weight.shape[0], device=weight.device)

    def image_side(self) -> nn.Module:
        """The same classifier with its text side frozen into a head: ``CLIPClassifier`` over this image tower (shared,
        not copied) and ``head_tensors()``. Once training ends the class features no longer change, so its logits
        equal this one's; it is what a model folder saves and ``predict`` rebuilds."""
        from .models import CLIPClassifier
        with torch.no_grad():
            weight, _ = self.head_tensors()                     # its bias is zero, as CLIPClassifier's starts
        clf = CLIPClassifier(self.visual, weight.detach().float().cpu())
        clf.head.requires_grad_(False)
        return clf.to(next(self.visual.parameters()).device)


def build(loaded: Any, classnames: Sequence[str], templates: Sequence[str],
          device: str | torch.device | None = None) -> TextSideClassifier:
    """A text-side classifier over *copies* of both towers with fixed template prompts (zero-shot at init)."""
    from .models import logit_scale
    model = check_text_tower(loaded.model)
    text = TextTower(model)
    prompts = TemplatePrompts(loaded.tokenizer, text, classnames, templates)
    clf = TextSideClassifier(copy.deepcopy(model.visual), text, prompts, logit_scale(loaded), classnames,
                             loaded.tokenizer)
    return clf.to(device if device is not None else next(model.parameters()).device)


def counting_classifier(model: nn.Module, num_classes: int) -> TextSideClassifier:
    """A text-side classifier over copies of ``model``'s towers without prompts or tokenizer: what a text-side method's
    ``apply`` adds can be counted on it (``params``), nothing can be classified."""
    check_text_tower(model)
    return TextSideClassifier(copy.deepcopy(model.visual), TextTower(model), nn.Identity(), 1.0,
                              [str(i) for i in range(num_classes)], None)


def classifier(course: Any, templates: Sequence[str] | None = None) -> TextSideClassifier:
    """The course's text-side classifier: its model, class names and (single) template, on its device."""
    return build(course.loaded, course.classnames, course.templates() if templates is None else templates,
                 course.device)
