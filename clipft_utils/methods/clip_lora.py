"""CLIP-LoRA (Zanella & Ben Ayed, 2024): LoRA on the attention of BOTH towers, classes read by the text tower.

Notebook 05's LoRA adapts the image tower and trains a head initialised from the text embeddings. CLIP-LoRA keeps
CLIP's own way of classifying: the class prompts ("a photo of a <class>, a type of flower.") go through the text
tower at every step, and both towers carry low-rank updates on the q, k and v projections of every block
(``textside.TextSideClassifier``; no head, no other parameter trains). The LoRA layers are notebook 05's
(``methods/lora.py``: ``LoRAMultiheadAttention`` on the fused ``in_proj_weight``), applied to each tower in turn;
the text tower's causal attention mask goes through them unchanged.

The recipe, from CLIP-LoRA's code (``run_utils.py``, ``loralib``, ``lora.py``): rank 2, alpha 1, dropout 0.25 on
the input of the low-rank path, q/k/v of every block of both encoders, AdamW lr 2e-4 (weight decay 1e-2), cosine
schedule, batch 32, 500 × shots iterations, one template, logit scale 100 (CLIP's; we use the model's own, which is
100 for OpenAI's weights). Two details worth knowing:

* the update is scaled by alpha / √rank (their ``LoRALayer``), not alpha / rank as in the LoRA paper and notebook
  05: ``rank_scaling="sqrt"`` (default) or ``"linear"``;
* the budget is 500 × shots *iterations* (optimizer steps), whatever the number of classes: ``steps_per_shot=500``
  (``TrainConfig.budget``; with every training image, k is their number per class: 5,000 steps on Flowers102's
  10 per class), split over ``epochs`` = 10 validation rounds (an "epoch" is then a tenth of the budget, several
  passes over a few-shot split). An explicit ``epochs`` (``-p epochs=1``, ``--quick``) means passes instead.

With every B zero (the initialisation) the classifier equals zero-shot; tests/test_clip_lora.py checks it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from torch import nn

from ..config import SMOKE_STEPS, TrainConfig, check_integer, check_positive
from ..errors import ConfigError
from .. import textside as text_side
from ..towers import facts as tower_facts
from ..textside import TextSideClassifier
from . import lora
from .base import Method, freeze, register, require
from .lora import LORA_TARGETS

ENCODERS = ("both", "vision", "text")
DEFAULT_TARGETS = ("q", "k", "v")
RANK_SCALINGS = ("sqrt", "linear")
ITERS_PER_SHOT = 500
"""CLIP-LoRA's schedule: 500 × shots iterations at batch 32."""
ADAPTER = "default"
SMOKE = {**SMOKE_STEPS, "steps_per_shot": 8, "lr": 2e-3}
"""The stand-in's budget, the same as every other main row that trains on images (``config.SMOKE_STEPS``): 8 × shots
steps, 80 on SynthFlowers' 10 images per class (its 5 passes), at least 16 per epoch, scaled by the profile; at 10x
the recipe's lr, as the other methods' smoke profiles do for their short schedules."""


@dataclass
class CLIPLoRAConfig(TrainConfig):
    """CLIP-LoRA: LoRA on q, k, v of both towers (rank 2, alpha 1, dropout 0.25, lr 2e-4, 500 × shots steps)."""

    epochs: int = 10                 # validation rounds: the budget is steps_per_shot × shots optimizer steps
    steps_per_shot: int | None = ITERS_PER_SHOT
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-2
    rank: int = 2
    alpha: float = 1.0
    dropout: float = 0.25
    targets: tuple[str, ...] = DEFAULT_TARGETS  # an image tower without attention (ConvNeXt): its MLP's fc, proj
    encoders: str = "both"          # "both", "vision" (image tower only) or "text" (text tower only)
    rank_scaling: str = "sqrt"      # the update's scale: alpha / sqrt(rank) (CLIP-LoRA) or alpha / rank (LoRA)

    def validate(self) -> None:
        super().validate()
        check_integer(self, "rank")
        check_positive(self, "rank", "alpha")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"CLIPLoRAConfig.dropout must be in [0, 1), got {self.dropout}.")
        self.targets = tuple(self.targets)
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        if bad or not self.targets:
            raise ConfigError(f"CLIPLoRAConfig.targets has unknown entries {bad or '(empty)'}. "
                              f"Fix: choose from {LORA_TARGETS}.")
        if self.encoders not in ENCODERS:
            raise ConfigError(f"CLIPLoRAConfig.encoders must be one of {ENCODERS}, got {self.encoders!r}.")
        if self.rank_scaling not in RANK_SCALINGS:
            raise ConfigError(f"CLIPLoRAConfig.rank_scaling must be one of {RANK_SCALINGS}, "
                              f"got {self.rank_scaling!r}.")

    @property
    def scaling(self) -> float:
        """The factor of ``B A``: alpha / sqrt(rank) or alpha / rank."""
        return self.alpha / (math.sqrt(self.rank) if self.rank_scaling == "sqrt" else self.rank)


def towers(clf: TextSideClassifier, encoders: str = "both") -> dict[str, nn.Module]:
    """``{"vision": clf.visual, "text": clf.text}``, or the one ``encoders`` names."""
    found = {"vision": clf.visual, "text": clf.text}
    return found if encoders == "both" else {encoders: found[encoders]}


def applies_to(arch: Any, cfg: CLIPLoRAConfig | None = None) -> str | None:
    """Open_clip's own text transformer, and (when the image tower is adapted) LoRA's targets in the image tower."""
    encoders = cfg.encoders if cfg is not None else "both"
    targets = cfg.targets if cfg is not None else DEFAULT_TARGETS
    if text_side.applies_to(arch, cfg):
        return text_side.applies_to(arch, cfg)
    if encoders != "text":
        image = SimpleNamespace(rank=1, targets=lora.tower_targets(arch.image, targets, DEFAULT_TARGETS))
        reason = lora.applies_to(arch, image)
        return f"LoRA cannot adapt its image tower: {reason} (encoders='text' adapts the text tower only)" if reason \
            else None
    return None


def apply(clf: nn.Module, cfg: CLIPLoRAConfig) -> list[dict[str, Any]]:
    """Freeze ``clf`` (a TextSideClassifier), add LoRA to the chosen towers and train only its A and B."""
    if not isinstance(clf, TextSideClassifier):
        raise ConfigError(f"CLIP-LoRA trains a text-side classifier, got a {type(clf).__name__}. Fix: build it "
                          "with clipft_utils.textside.classifier(course).")
    require("clip_lora", clf, cfg)
    freeze(clf)
    params = []
    for tower in towers(clf, cfg.encoders).values():
        params += _add(tower, cfg)
    return [{"params": params, "name": "lora"}]


def _add(tower: nn.Module, cfg: CLIPLoRAConfig) -> list[nn.Parameter]:
    """Add and activate the adapter on one tower; its A and B (an image tower without attention: its MLP linears)."""
    # lora.add_adapter scales by alpha / rank: hand it the alpha that gives cfg.scaling
    targets = lora.tower_targets(tower_facts(tower), cfg.targets, DEFAULT_TARGETS)
    spec = SimpleNamespace(rank=cfg.rank, alpha=cfg.scaling * cfg.rank, dropout=cfg.dropout, targets=targets)
    lora.add_adapter(tower, ADAPTER, spec)
    lora.set_adapter(tower, ADAPTER)
    return lora.lora_parameters(tower, ADAPTER)


def rebuild(clf: nn.Module, cfg: CLIPLoRAConfig, tensors: Any = None) -> None:
    """The trained CLIP-LoRA as its model folder holds it: a ``CLIPClassifier`` whose image tower carries the LoRA
    (when ``cfg.encoders`` adapted it) and whose head is the adapted text tower's class features, fixed after
    training (``TextSideClassifier.image_side``). The model folder fills in A, B and the head."""
    if cfg.encoders in ("both", "vision"):
        require("clip_lora", clf, cfg)
        _add(clf.visual, cfg)


def deployed(clf: TextSideClassifier) -> tuple[nn.Module, bool]:
    """What a model folder saves of a trained CLIP-LoRA: its image side (the image tower's LoRA, the adapted text
    tower's class features frozen into a head; ``rebuild`` rebuilds it)."""
    return clf.image_side(), False


def lora_counts(clf: TextSideClassifier) -> dict[str, int]:
    """LoRA parameters per tower (A and B of the active adapter)."""
    return {name: sum(p.numel() for p in lora.lora_parameters(tower)) for name, tower in towers(clf).items()
            if lora.adapter_names(tower)}


METHOD = register(Method(
    name="clip_lora", title="CLIP-LoRA", kind="parameter-efficient", order=5.5,
    config=CLIPLoRAConfig,
    # apply=None: its apply() needs a textside.TextSideClassifier, not the CLIPClassifier that the generic tools
    # (parameter table, the `train` command) build; notebook 05 calls clip_lora.apply itself, `bench` text_apply.
    apply=None, text_apply=apply, rebuild=rebuild, deployed=deployed, saved_tensors=lora.saved_tensors,
    merge=lora.merged, short="cliplora", applies_to=applies_to,
    summary=lambda cfg: f"r={cfg.rank}, alpha={cfg.alpha:g}, {' '.join(cfg.targets)}, {cfg.encoders} towers",
    profiles={"smoke": SMOKE, "rehearse": {"epochs": 1}},
))
