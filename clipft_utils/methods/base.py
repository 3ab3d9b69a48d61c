"""What a method is to the library: one ``Method`` record, registered by the method's own module.

A method module (``clipft_utils/methods/<id>.py``, or any module named in ``CLIPFT_PLUGINS``) defines its typed
config, its ``apply(classifier, cfg) -> param groups`` and, at the bottom, ``METHOD = register(Method(...))``.
Everything in the library that lists methods -- the tables, the shots x seeds grid, the recommender, the parameter
table, combination names, model folders -- reads this registry (the way peft's ``register_peft_method`` and
torchvision's dataset modules work). Where the course runs a method (its notebook, plan text, notebook parameters)
is its ``clipft_utils.course.sections.Section``, registered beside it in the course layer.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from ..errors import ConfigError, NotApplicableError

PROFILE_NAMES = ("full", "smoke", "rehearse", "quick")
"""Keys a method's ``profiles`` (and its course section's notebook defaults) may use (``quick``: ``--quick``'s layer)."""


@dataclass(frozen=True)
class Variant:
    """A non-default config of a method, shown in the parameter table and/or timed by ``bench``."""

    config: Mapping[str, Any]
    note: str
    shown_in: tuple[str, ...] = ("params", "bench")


@dataclass(frozen=True)
class Method:
    """A method as the library sees it. Only ``name``, ``title``, ``kind``, ``order`` and ``config`` are required;
    the rest has neutral defaults."""

    name: str                        # the id: results, --only, tables ("lora")
    title: str                       # display name ("LoRA")
    kind: str                        # the tables' "type" column ("parameter-efficient")
    order: float                     # display order in tables and figures, cheapest first (zero_shot 1 ... full 6)
    config: type                     # its config dataclass (typed, validated in __post_init__)
    apply: Callable[[nn.Module, Any], list[dict[str, Any]]] | None = None  # freeze, add, return param groups
    summary: Callable[[Any], str] = lambda cfg: ""   # one phrase of a config, for the plan and parameter tables
    short: str = ""                  # its part of a combination's name ("ft" in "lp+ft"); default: name
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # profile -> config-field defaults
    variants: Mapping[str, Variant] = field(default_factory=dict)  # "<name>-<what>" -> Variant
    trains: bool = True              # False: nothing is fitted (zero-shot): one run per seed, any shots
    # The apply of a text-side method (CoOp, CLIP-LoRA): it takes a ``textside.TextSideClassifier`` (both towers and
    # the class prompts); None: the method trains a ``CLIPClassifier`` (``apply``).
    text_apply: Callable[[nn.Module, Any], list[dict[str, Any]]] | None = None
    image_batches: bool = True       # trains on batches of images: the profile's batch size is its default
    # How a model folder rebuilds the trained model over a frozen ``CLIPClassifier`` (adds what the folder's tensors
    # fill in; it is given them too, for shapes the config does not hold): None = ``apply``. A method trained on
    # another classifier (CLIP-LoRA) gives its image-side form; Tip-Adapter its cache head.
    rebuild: Callable[[nn.Module, Any, Mapping[str, torch.Tensor]], None] | None = None
    # What a model folder stores of the trained model (``modelfolder``), each None for the plain case of a method that
    # trains parameters of a ``CLIPClassifier`` in place (BitFit, full fine-tuning):
    # - ``deployed(clf) -> (CLIPClassifier, head_only)``: the trained classifier as a folder saves it (CoOp: its
    #   prompts' class features as the head over the frozen tower; CLIP-LoRA: the image side with its text side
    #   frozen into a head); None: ``clf`` itself, tower included;
    # - ``saved_tensors(clf) -> {file key: tensor}``: what the method changed in the tower, named as a rebuilt model
    #   names it (LoRA: A and B of the active adapter, as "default"; prefix-tuning: the folded prefix, not its MLP);
    #   None: the parameters it trains (``requires_grad``) other than the head;
    # - ``merge(clf)``: fold the method into the tower's own weights, so that the stock open_clip modules hold it (LoRA:
    #   merge and unload); None: its tensors already are tower weights;
    # - ``tower_weights``: False when no open_clip state dict can hold the trained model (prefix-tuning's learned
    #   tokens are extra inputs of every forward pass): ``export --format open_clip`` refuses it.
    deployed: Callable[[nn.Module], tuple[nn.Module, bool]] | None = None
    saved_tensors: Callable[[nn.Module], dict[str, torch.Tensor]] | None = None
    merge: Callable[[nn.Module], nn.Module] | None = None
    tower_weights: bool = True
    # Whether the method applies to a model: ``applies_to(towers.Architecture, cfg or None) -> None`` (it does) or the
    # reason it does not (a convolutional tower has no tokens for prompts; a Hugging Face text tower has no token
    # embeddings for CoOp). None: every architecture. ``params``, ``bench``, the runner and the notebooks read it;
    # ``apply`` (and ``rebuild``) check it first (``require``).
    applies_to: Callable[[Any, Any], str | None] | None = None
    # What the method trains on a given tower, in a phrase, where it differs by family (BitFit: which biases); None:
    # ``summary``.
    tower_note: Callable[[Any, Any], str] | None = None

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ConfigError(f"A method id must be a lower-case identifier, got {self.name!r}.")
        unknown = set(self.profiles) - set(PROFILE_NAMES)
        if unknown:
            raise ConfigError(f"Method {self.name!r}: unknown profile(s) {sorted(unknown)}; use {PROFILE_NAMES}.")
        fields = {f.name for f in dataclasses.fields(self.config)}
        for prof, values in self.profiles.items():
            bad = sorted(set(values) - fields)
            if bad:
                raise ConfigError(f"Method {self.name!r}: profiles[{prof!r}] sets {bad}, not fields of "
                                  f"{self.config.__name__}.")

    @property
    def short_name(self) -> str:
        return self.short or self.name

    def config_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.config)}


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a second module claiming the same id is an error) and return it."""
    old = REGISTRY.get(method.name)
    if old is not None and (old.config.__module__, old.config.__qualname__) != (
            method.config.__module__, method.config.__qualname__):
        raise ConfigError(f"Two modules register the method {method.name!r} ({old.config.__module__} and "
                          f"{method.config.__module__}). Fix: give one of them another id.")
    REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (tests that add a plug-in clean up with this)."""
    REGISTRY.pop(name, None)


# ----------------------------------------------------------------------------- what every apply() shares
def freeze(module: nn.Module) -> None:
    """Set ``requires_grad=False`` on every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)


def head_group(clf: nn.Module) -> dict[str, Any]:
    """Unfreeze the classifier head and return its param group."""
    params = [p for p in clf.head.parameters()]
    for p in params:
        p.requires_grad_(True)
    return {"params": params, "name": "head"}


def param_groups(backbone: Iterable[nn.Parameter], clf: nn.Module) -> list[dict[str, Any]]:
    """``[backbone group, head group]``, the backbone group left out when it is empty."""
    backbone = list(backbone)
    groups = [{"params": backbone, "name": "backbone"}] if backbone else []
    return groups + [head_group(clf)]


def trainable_parameters(groups: list[dict[str, Any]]) -> list[nn.Parameter]:
    """All parameters of ``groups``, in order."""
    return [p for g in groups for p in g["params"]]


# ----------------------------------------------------------------------------- which architectures a method fits
def reason_not_applicable(method: Method, arch: Any, cfg: Any = None) -> str | None:
    """Why ``method`` cannot apply to ``arch`` (a ``towers.Architecture``), or None when it can."""
    return None if method.applies_to is None else method.applies_to(arch, cfg)


def applicable(arch: Any) -> list[str]:
    """The registered methods that apply to ``arch`` with their default configs (text-side ones only where its text
    tower is known), in display order."""
    text_side = {m.name for m in REGISTRY.values() if m.text_apply is not None}
    return [m.name for m in sorted(REGISTRY.values(), key=lambda m: (m.order, m.name))
            if reason_not_applicable(m, arch) is None and (arch.text is not None or m.name not in text_side)]


def require(name: str, model: nn.Module, cfg: Any = None, arch: Any = None) -> None:
    """Raise ``NotApplicableError`` (before any work) when method ``name`` cannot apply to ``model`` (a classifier, a
    tower or a CLIP model): the message names the method, the architecture, why, and the methods that do apply."""
    from .. import towers
    method = REGISTRY[name]
    arch = arch or towers.architecture(model)
    reason = reason_not_applicable(method, arch, cfg)
    if reason:
        raise NotApplicableError(not_applicable_message(method, arch, reason))


def not_applicable_message(method: Method, arch: Any, reason: str) -> str:
    """"<Method> does not apply to <model> (<tower>): <why>. Methods that apply to it: ... Fix: ..."."""
    others = ", ".join(applicable(arch)) or "none"
    return (f"{method.title} does not apply to {arch.name} ({arch.image.arch}): {reason}. Methods that apply to "
            f"{arch.name}: {others}. Fix: choose one of those, or a model whose towers {method.title} fits "
            "(e.g. ViT-B-32, ViT-B-16-SigLIP, EVA02-B-16; README: 'Pick a backbone').")
