"""The checks of ``fit``'s arguments, before any work: device, loaders, parameter groups and what they hand over."""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

def check_device(device: str | torch.device) -> torch.device:
    """Parse ``device``; a CUDA request without a GPU is a ConfigError."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"Unknown device {device!r}. Fix: pass 'cpu' or 'cuda'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible. Fix: pass device='cpu'.")
    return dev


def check_loader(loader: Any, what: str) -> int:
    """Number of batches of ``loader``; none (or no length) is a ConfigError."""
    try:
        n = len(loader)
    except TypeError as exc:
        raise ConfigError(f"{what} has no length. Fix: pass a DataLoader over a map-style dataset.") from exc
    if n == 0:
        raise ConfigError(
            f"{what} yields no batches (empty dataset, or fewer examples than batch_size with drop_last=True). "
            "Fix: check the split, or lower batch_size / set drop_last=False."
        )
    return n


def group_names(param_groups: list[dict]) -> list[str]:
    """Unique display names of the groups (repeats get '#i')."""
    names: list[str] = []
    for i, group in enumerate(param_groups):
        name = str(group.get("name", f"group{i}"))
        names.append(name if name not in names else f"{name}#{i}")
    return names


def normalise_groups(param_groups: Any) -> list[dict]:
    """Copy the groups with their params as lists (generators allowed), checking their shape."""
    groups = list(param_groups or [])
    if not groups:
        raise ConfigError(
            "fit() got no parameter groups, so nothing would train. "
            "Fix: pass the groups returned by the method's apply(classifier, cfg)."
        )
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or "params" not in group:
            raise ConfigError(
                f"Parameter group {i} must be a dict with a 'params' list. Fix: {{'params': [...], 'name': ...}}."
            )
    return [{**g, "params": list(g["params"])} for g in groups]


def check_groups(model: nn.Module, param_groups: list[dict]) -> list[tuple[str, nn.Parameter]]:
    """Return (model name, param) of every handed parameter, or raise a ConfigError saying what is wrong."""
    names = {id(p): n for n, p in model.named_parameters()}
    named: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for i, group in enumerate(param_groups):
        label = group.get("name", f"group{i}")
        if len(group["params"]) == 0:
            raise ConfigError(f"Parameter group '{label}' is empty. Fix: drop it or put the method's parameters in it.")
        for p in group["params"]:
            named.append(check_param(p, label, names, seen))
    return named


def check_param(p: Any, label: str, names: dict[int, str], seen: set[int]) -> tuple[str, nn.Parameter]:
    """One handed parameter must be a trainable tensor of the model, handed only once."""
    if not isinstance(p, torch.Tensor):
        raise ConfigError(f"Group '{label}' holds a {type(p).__name__}, not a parameter. Fix: pass model parameters.")
    name = names.get(id(p))
    if name is None:
        raise ConfigError(
            f"A parameter of group '{label}' (shape {tuple(p.shape)}) is not part of the model, so it could "
            "neither be checkpointed nor used. Fix: register it as a module attribute of the model."
        )
    if not p.requires_grad:
        raise ConfigError(
            f"Parameter '{name}' in group '{label}' does not require grad. "
            "Fix: unfreeze it in the method's apply() (p.requires_grad_(True)) or leave it out of the group."
        )
    if id(p) in seen:
        raise ConfigError(f"Parameter '{name}' appears in more than one group. Fix: put it in exactly one.")
    seen.add(id(p))
    return name, p


def warn_unhanded(model: nn.Module, named: list[tuple[str, nn.Parameter]]) -> None:
    """Warn about parameters that require grad but that no group hands to the optimizer."""
    handed = {id(p) for _, p in named}
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in handed]
    if extra:
        warnings.warn(
            f"{len(extra)} parameter(s) require grad but are in no group, so fit() will not train them "
            f"(e.g. {extra[:3]}). Fix: freeze them with requires_grad_(False), or add them to a group.",
            stacklevel=3,
        )


def check_inputs(train_loader, val_loader, eval_fn, stop_after_epochs) -> int:
    """Validate everything before any work; return the number of training batches per epoch."""
    n = check_loader(train_loader, "train_loader")
    if eval_fn is None:
        if val_loader is None:
            raise ConfigError("fit() needs a val_loader (or an eval_fn) for validation. Fix: pass one.")
        check_loader(val_loader, "val_loader")
    if stop_after_epochs is not None and (not isinstance(stop_after_epochs, int) or stop_after_epochs < 0):
        raise ConfigError(f"stop_after_epochs must be None or an int >= 0, got {stop_after_epochs!r}.")
    return n
