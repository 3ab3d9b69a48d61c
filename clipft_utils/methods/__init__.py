"""One small module per method; each has ``apply(classifier, cfg) -> optimizer param groups``.

Every ``apply`` first freezes the whole classifier, then unfreezes (BitFit, full fine-tuning) or adds
(prefix-tuning, LoRA) only what its method trains, and returns the param groups the engine hands to
the optimizer: ``{"name": "backbone", "params": [...]}`` (``cfg.lr``, optionally ``"lr_scale"``) and
``{"name": "head", "params": [head.weight, head.bias]}`` (``cfg.effective_head_lr``). Empty groups are
left out, so the groups hold exactly the parameters with ``requires_grad=True``.
"""
from __future__ import annotations

import importlib
from typing import Any, Iterable

from torch import nn

from ..config import CONFIGS, check_method, make_config
from ..errors import ConfigError

MODULES = {
    "bitfit": "bitfit",
    "prefix_tuning": "prefix",
    "lora": "lora",
    "full_finetune": "full",
}
"""Method name -> module in this package (zero_shot and linear_probe need no module of their own)."""


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


def apply_method(method: str, clf: nn.Module, cfg: Any = None) -> list[dict[str, Any]]:
    """Apply ``method`` to ``clf`` (config defaults when ``cfg`` is None) and return its param groups."""
    check_method(method)
    cfg = make_config(method) if cfg is None else cfg
    if not isinstance(cfg, CONFIGS[method]):
        raise ConfigError(f"Method '{method}' needs a {CONFIGS[method].__name__}, got {type(cfg).__name__}. "
                          f"Fix: pass clipft_utils.config.make_config('{method}', ...).")
    freeze(clf)
    if method == "zero_shot":
        return []  # nothing trains: the head already is the zero-shot classifier
    if method == "linear_probe":
        return param_groups([], clf)
    module = importlib.import_module(f"{__name__}.{MODULES[method]}")
    return module.apply(clf, cfg)
