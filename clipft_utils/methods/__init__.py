"""The methods: one module per method id (``zero_shot.py``, ``linear_probe.py``, ``bitfit.py``, ``prefix_tuning.py``,
``lora.py``, ``full_finetune.py``), each registering a ``base.Method`` (see ``base``).

Every ``apply`` first freezes the whole classifier, then unfreezes (BitFit, full fine-tuning) or adds
(prefix-tuning, LoRA) only what its method trains, and returns the param groups the engine hands to
the optimizer: ``{"name": "backbone", "params": [...]}`` (``cfg.lr``, optionally ``"lr_scale"``) and
``{"name": "head", "params": [head.weight, head.bias]}`` (``cfg.effective_head_lr``). Empty groups are
left out, so the groups hold exactly the parameters with ``requires_grad=True``.

``registry()`` lists the methods in course order; modules are found the way dataset plug-ins are
(``clipft_utils.plugins``), so nothing here names a method.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .base import REGISTRY, Method, Variant, freeze, head_group, param_groups, register, trainable_parameters, unregister

__all__ = ["Method", "Variant", "apply_method", "freeze", "get", "head_group", "names", "param_groups", "register", "registry",
           "trainable_parameters", "unregister", "notebooks"]


def registry() -> list[Method]:
    """Every registered method, in course order."""
    from .. import plugins
    plugins.load()
    return sorted(REGISTRY.values(), key=lambda m: (m.order, m.name))


def names() -> tuple[str, ...]:
    """The method ids, in course order."""
    return tuple(m.name for m in registry())


def get(name: str) -> Method:
    """The method ``name``, or a ConfigError listing the registered ones."""
    methods = {m.name: m for m in registry()}
    if name not in methods:
        raise ConfigError(f"Unknown method '{name}'. Fix: use one of {', '.join(methods)}.")
    return methods[name]


def notebooks() -> dict[str, tuple[str, ...]]:
    """Notebook -> the methods its job trains, in course order (the notebook of a method's lowest order first)."""
    out: dict[str, list[str]] = {}
    for m in registry():
        out.setdefault(m.notebook, []).append(m.name)
    return {nb: tuple(ms) for nb, ms in out.items()}


def apply_method(method: str, clf: nn.Module, cfg: Any = None) -> list[dict[str, Any]]:
    """Apply ``method`` to ``clf`` (config defaults when ``cfg`` is None) and return its param groups."""
    from ..config import make_config
    spec = get(method)
    cfg = make_config(method) if cfg is None else cfg
    if not isinstance(cfg, spec.config):
        raise ConfigError(f"Method '{method}' needs a {spec.config.__name__}, got {type(cfg).__name__}. "
                          f"Fix: pass clipft_utils.config.make_config('{method}', ...).")
    freeze(clf)
    if spec.apply is None:
        return []  # nothing trains (zero-shot: the head already is the classifier)
    return spec.apply(clf, cfg)
