"""The methods: one module per method id (``zero_shot.py``, ``linear_probe.py``, ``bitfit.py``, ``prefix_tuning.py``,
``lora.py``, ``full_finetune.py``), each registering a ``base.Method`` (see ``base``).

Every ``apply`` first freezes the whole classifier, then unfreezes (BitFit, full fine-tuning) or adds
(prefix-tuning, LoRA) only what its method trains, and returns the param groups the engine hands to
the optimizer: ``{"name": "backbone", "params": [...]}`` (``cfg.lr``, optionally ``"lr_scale"``) and
``{"name": "head", "params": [head.weight, head.bias]}`` (``cfg.effective_head_lr``). Empty groups are
left out, so the groups hold exactly the parameters with ``requires_grad=True``.

``registry()`` lists the methods in display order; modules are found the way dataset plug-ins are
(``clipft_utils.plugins``), so nothing here names a method. ``make_config`` builds a method's config for a profile.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from ..config import Profile, get_profile
from ..errors import ConfigError
from .base import REGISTRY, Method, Variant, freeze, head_group, param_groups, register, trainable_parameters, unregister

__all__ = ["Method", "Variant", "apply_method", "freeze", "get", "head_group", "names", "param_groups", "register", "registry",
           "trainable_parameters", "unregister", "make_config"]


def registry() -> list[Method]:
    """Every registered method, in display order (cheapest first)."""
    from .. import plugins
    plugins.load()
    return sorted(REGISTRY.values(), key=lambda m: (m.order, m.name))


def names() -> tuple[str, ...]:
    """The method ids, in display order."""
    return tuple(m.name for m in registry())


def get(name: str) -> Method:
    """The method ``name``, or a ConfigError listing the registered ones."""
    methods = {m.name: m for m in registry()}
    if name not in methods:
        raise ConfigError(f"Unknown method '{name}'. Fix: use one of {', '.join(methods)}.")
    return methods[name]


def apply_method(method: str, clf: nn.Module, cfg: Any = None) -> list[dict[str, Any]]:
    """Apply ``method`` to ``clf`` (config defaults when ``cfg`` is None) and return its param groups."""
    spec = get(method)
    cfg = make_config(method) if cfg is None else cfg
    if not isinstance(cfg, spec.config):
        raise ConfigError(f"Method '{method}' needs a {spec.config.__name__}, got {type(cfg).__name__}. "
                          f"Fix: pass clipft_utils.methods.make_config('{method}', ...).")
    freeze(clf)
    if spec.apply is None:
        return []  # nothing trains (zero-shot: the head already is the classifier)
    return spec.apply(clf, cfg)


NULLABLE = ("head_lr", "patience", "grad_clip", "layer_decay")
"""Config fields for which an explicit None is a setting (no separate head lr, never stop early, ...), not "unset"."""


def make_config(method: str, profile: str | Profile = "full", **overrides: Any):
    """The method's config with the profile's defaults (declared by the method), then ``overrides`` (unknown names
    are errors; None leaves a field at its default, except the fields of ``NULLABLE``). The profile's
    ``budget_scale`` reaches every budget; an explicit ``epochs`` (passes) replaces a budget stated in steps."""
    spec = get(method)
    cls = spec.config
    prof = profile if isinstance(profile, Profile) else get_profile(profile)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}. Fix: use some of {sorted(known)}.")
    values: dict[str, Any] = dict(spec.profiles.get(prof.name, {}))
    if "batch_size" in known and spec.image_batches:
        values["batch_size"] = prof.batch_size
    if "max_steps_per_epoch" in known and prof.max_steps_per_epoch:
        values["max_steps_per_epoch"] = prof.max_steps_per_epoch
    if "budget_scale" in known:
        values["budget_scale"] = prof.budget_scale
    given = {k: v for k, v in overrides.items() if v is not None or k in NULLABLE}
    if "epochs" in given:  # an explicit epochs means passes: it replaces a recipe stated in steps (CLIP-LoRA's 500·k)
        values.update({k: None for k in ("steps", "steps_per_shot") if k in known and k not in given})
    values.update(given)
    return cls(**values)
