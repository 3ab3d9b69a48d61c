"""The one training loop (`fit`) every trainable method uses: its schedule, its argument checks and its checkpoints.

The loaders it trains on are in ``loader``; the memory it reports is measured by ``memory``.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .errors import ConfigError
from .evaluate import autocast_context, evaluate, resolve_precision, restore_modes, train_modes
from .memory import PeakMemory, module_mb
from .paths import atomic_path
from .progress import bar
from .seeding import seed_everything

__all__ = ["fit", "TrainResult", "resolve_precision", "autocast_context", "WarmupCosine", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 2
RESUME_NEUTRAL = ("checkpoint_every",)
"""Config fields that may change between a checkpoint and its resumption."""


# ----------------------------------------------------------------------------- data order
def _set_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler / batch sampler, where they have one."""
    seen: set[int] = set()
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


# ----------------------------------------------------------------------------- schedule
@dataclass
class WarmupCosine:
    """LR multiplier per optimizer step: linear warm-up over ``warmup_steps``, then cosine to 0 at ``total_steps``."""

    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- result
@dataclass
class TrainResult:
    """What `fit` measured; the model itself now holds the best epoch's weights."""

    history: list[dict[str, Any]]
    best_epoch: int              # 1-based; 0 if no epoch ran
    best_val_acc: float
    epochs_run: int              # epochs in the history (all sessions, if resumed)
    stopped_early: bool
    train_seconds: float         # wall time of training + validation, all sessions, excluding checkpoint I/O
    images_per_second: float     # training images / seconds spent in training passes (loading included)
    peak_memory_mb: float        # training memory: the model + the peak increase while training (see fit)
    precision: str               # the resolved precision: fp32 | bf16 | fp16
    completed: bool = True       # False when stop_after_epochs paused the run
    resumed_from_epoch: int = 0  # epochs already done in the checkpoint this call resumed
    memory_measure: str = ""     # what peak_memory_mb measured, in words
    world_size: int = 1          # processes that trained together (DistributedDataParallel)
    best_val: Any = field(default=None, repr=False)  # the best epoch's validation EvalResult (this session's)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "best_val"}


@dataclass
class _State:
    """Everything about the run's progress that a checkpoint must carry."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_acc: float = -math.inf
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    images: int = 0

    def finished(self, epochs: int) -> bool:
        """Whether no epoch is left to run."""
        return self.stopped_early or self.epoch >= epochs


@dataclass
class _Run:
    """The live objects of one fit() call."""

    model: nn.Module
    named: list[tuple[str, nn.Parameter]]
    group_names: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    cfg: TrainConfig
    device: torch.device
    precision: str
    steps_per_epoch: int
    seed: int
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    last_lrs: list[float] = field(default_factory=list)
    forward: nn.Module | None = None  # the model, or DistributedDataParallel(model) when several ranks train
    run_id: str = ""
    last_eval: Any = None              # the latest validation EvalResult (single process), and the best one
    best_eval: Any = None

    @property
    def params(self) -> list[nn.Parameter]:
        """The trained parameters, in group order."""
        return [p for _, p in self.named]


# ----------------------------------------------------------------------------- validation of inputs
def _check_device(device: str | torch.device) -> torch.device:
    """Parse ``device``; a CUDA request without a GPU is a ConfigError."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"Unknown device {device!r}. Fix: pass 'cpu' or 'cuda'.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is visible. Fix: pass device='cpu'.")
    return dev


def _check_loader(loader: Any, what: str) -> int:
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


def _group_names(param_groups: list[dict]) -> list[str]:
    """Unique display names of the groups (repeats get '#i')."""
    names: list[str] = []
    for i, group in enumerate(param_groups):
        name = str(group.get("name", f"group{i}"))
        names.append(name if name not in names else f"{name}#{i}")
    return names


def _normalise_groups(param_groups: Any) -> list[dict]:
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


def _check_groups(model: nn.Module, param_groups: list[dict]) -> list[tuple[str, nn.Parameter]]:
    """Return (model name, param) of every handed parameter, or raise a ConfigError saying what is wrong."""
    names = {id(p): n for n, p in model.named_parameters()}
    named: list[tuple[str, nn.Parameter]] = []
    seen: set[int] = set()
    for i, group in enumerate(param_groups):
        label = group.get("name", f"group{i}")
        if len(group["params"]) == 0:
            raise ConfigError(f"Parameter group '{label}' is empty. Fix: drop it or put the method's parameters in it.")
        for p in group["params"]:
            named.append(_check_param(p, label, names, seen))
    return named


def _check_param(p: Any, label: str, names: dict[int, str], seen: set[int]) -> tuple[str, nn.Parameter]:
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


def _warn_unhanded(model: nn.Module, named: list[tuple[str, nn.Parameter]]) -> None:
    """Warn about parameters that require grad but that no group hands to the optimizer."""
    handed = {id(p) for _, p in named}
    extra = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in handed]
    if extra:
        warnings.warn(
            f"{len(extra)} parameter(s) require grad but are in no group, so fit() will not train them "
            f"(e.g. {extra[:3]}). Fix: freeze them with requires_grad_(False), or add them to a group.",
            stacklevel=3,
        )


def _check_inputs(train_loader, val_loader, eval_fn, stop_after_epochs) -> int:
    """Validate everything before any work; return the number of training batches per epoch."""
    n = _check_loader(train_loader, "train_loader")
    if eval_fn is None:
        if val_loader is None:
            raise ConfigError("fit() needs a val_loader (or an eval_fn) for validation. Fix: pass one.")
        _check_loader(val_loader, "val_loader")
    if stop_after_epochs is not None and (not isinstance(stop_after_epochs, int) or stop_after_epochs < 0):
        raise ConfigError(f"stop_after_epochs must be None or an int >= 0, got {stop_after_epochs!r}.")
    return n


def _batches_per_epoch(n: int, cfg: TrainConfig) -> int:
    """The loader's batches an epoch trains on: all ``n``, or ``cfg.max_steps_per_epoch`` optimizer steps' worth."""
    cap = getattr(cfg, "max_steps_per_epoch", None)
    return n if cap is None else min(n, cap * cfg.grad_accum_steps)


# ----------------------------------------------------------------------------- building
def _optimizer_groups(param_groups: list[dict], names: list[str], cfg: TrainConfig) -> list[dict]:
    """Copy the groups, filling in lr (x lr_scale) and weight decay from cfg where a group does not say."""
    groups = []
    for group, name in zip(param_groups, names):
        default = cfg.effective_head_lr if group.get("name") == "head" else cfg.lr
        lr = float(group.get("lr", default)) * float(group.get("lr_scale", 1.0))
        wd = float(group.get("weight_decay", cfg.weight_decay))
        groups.append({**group, "name": name, "lr": lr, "weight_decay": wd})
    return groups


def _build(model, named, param_groups, cfg, steps_per_epoch, precision, device, seed) -> _Run:
    """AdamW over the groups, a per-step warm-up + cosine LambdaLR, and a grad scaler (active for fp16 only)."""
    names = _group_names(param_groups)
    optimizer = torch.optim.AdamW(_optimizer_groups(param_groups, names, cfg), lr=cfg.lr)
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total - 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    return _Run(model, named, names, optimizer, scheduler, scaler, cfg, device, precision, steps_per_epoch, seed)


# ----------------------------------------------------------------------------- one epoch
def _step(run: _Run) -> torch.Tensor | None:
    """Clip, step the optimizer (through the scaler), clear grads, advance the schedule; return the pre-clip norm."""
    norm = None
    if run.cfg.grad_clip is not None:
        run.scaler.unscale_(run.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.last_lrs = [g["lr"] for g in run.optimizer.param_groups]
    with warnings.catch_warnings():  # an fp16 step skipped by the scaler makes the scheduler complain
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
        run.scheduler.step()
    return norm


def _batch(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """(images, labels, weights or None, items in the global batch) of a loader's batch (tuple or loader.Batch)."""
    images = batch[0].to(device, non_blocking=True)
    labels = torch.as_tensor(batch[1]).to(device, non_blocking=True).long()
    weights = getattr(batch, "weights", None)
    if weights is not None:
        return images, labels, weights.to(device), int(batch.total)
    return images, labels, None, len(labels)


def _train_epoch(run: _Run, loader: Any, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training data with gradient accumulation; returns the epoch's training stats.

    Each micro-batch's loss is ``world * sum(w_i * CE_i) / n``, n the items of the whole (global) micro-batch:
    after DDP averages the gradients over the ranks this is exactly the single-process mean over n, whatever
    the split of the batch between ranks (padding items have weight 0).
    """
    from . import distributed
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)  # never add to gradients left over from before
    n, k, world = _batches_per_epoch(len(loader), run.cfg), run.cfg.grad_accum_steps, distributed.world()
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.float64)
    seen, pending, norms = 0.0, 0, []
    batches = bar(loader, total=n, desc=f"epoch {epoch + 1}", leave=False, disable=not progress)
    for i, raw in enumerate(batches):
        if i >= n:  # max_steps_per_epoch: the rest of the split waits for the next epoch's shuffle
            break
        images, labels, weights, total = _batch(raw, run.device)
        w = torch.ones(len(labels), device=run.device) if weights is None else weights.float()
        window = max(1, min(k, n - (i // k) * k))  # the last accumulation window may be shorter
        with distributed.no_sync(run.forward, skip=pending + 1 < window):
            with autocast_context(run.precision, run.device):
                logits = run.forward(images)
            per_item = F.cross_entropy(logits.float(), labels, label_smoothing=run.cfg.label_smoothing,
                                       reduction="none")
            loss = (per_item * w).sum() / total
            run.scaler.scale(loss * world / window).backward()
        pending += 1
        if pending >= window:
            norms.append(_step(run))
            pending = 0
        loss_sum += (per_item.detach() * w).sum()
        correct += ((logits.detach().argmax(dim=1) == labels).double() * w).sum()
        seen += float(w.sum())
    if pending:  # the loader yielded fewer batches than len(): still apply what was accumulated
        norms.append(_step(run))
    loss_total, correct_total, seen_total = distributed.sum_(loss_sum.item(), correct.item(), seen, device=run.device)
    return _epoch_stats(run, loss_total, correct_total, int(round(seen_total)), norms, epoch)


def _mean_finite(values: list[torch.Tensor | None]) -> float | None:
    """Mean of the finite values (fp16 steps that the scaler skipped have inf norms); None if there are none."""
    kept = [v.float() for v in values if v is not None]
    if not kept:
        return None
    x = torch.stack(kept)
    x = x[torch.isfinite(x)]
    return x.mean().item() if len(x) else None


def _epoch_stats(run: _Run, loss_sum: float, correct: float, seen: int, norms: list, epoch: int) -> dict[str, Any]:
    """The epoch's history record (sums over every rank); a non-finite loss stops training."""
    train_loss = loss_sum / max(seen, 1)
    if not math.isfinite(train_loss):
        raise FloatingPointError(
            f"Training loss became {train_loss} in epoch {epoch + 1}. "
            "Fix: lower lr, set grad_clip (e.g. 1.0), or use precision='fp32'."
        )
    return {
        "epoch": epoch + 1, "train_loss": train_loss, "train_acc": correct / max(seen, 1),
        "lr": dict(zip(run.group_names, run.last_lrs)),
        "grad_norm": _mean_finite(norms),
        "images": seen,
    }


def _validate(run: _Run, val_loader: Any, eval_fn: Callable | None, epoch: int) -> dict[str, Any]:
    """Validation top-1 (and loss when available) with the model in eval mode."""
    run.model.eval()
    if val_loader is not None:
        _set_epoch(val_loader, epoch)  # evaluation order / worker seeds independent of how often it ran
    if eval_fn is not None:
        out = eval_fn(run.model)
    elif getattr(val_loader, "world", 1) > 1:
        return _sharded_validation(run, val_loader)
    else:
        out = run.last_eval = evaluate(run.model, val_loader, device=run.device, precision=run.precision)
    loss = getattr(out, "loss", None)
    return {"val_acc": float(getattr(out, "top1", out)), "val_loss": None if loss is None else float(loss)}


@torch.inference_mode()
def _sharded_validation(run: _Run, loader: Any) -> dict[str, Any]:
    """Validation over a loader split between ranks: correct, loss and count summed over every rank."""
    from . import distributed
    correct = loss = count = 0.0
    for raw in loader:
        images, labels, weights, _ = _batch(raw, run.device)
        w = torch.ones(len(labels), device=run.device) if weights is None else weights.float()
        with autocast_context(run.precision, run.device):
            logits = run.model(images).float()
        correct += float(((logits.argmax(1) == labels).float() * w).sum())
        loss += float((F.cross_entropy(logits, labels, reduction="none") * w).sum())
        count += float(w.sum())
    correct, loss, count = distributed.sum_(correct, loss, count, device=run.device)
    return {"val_acc": correct / max(count, 1), "val_loss": loss / max(count, 1)}


def _track_best(run: _Run, state: _State, record: dict[str, Any]) -> None:
    """Keep a CPU copy of the trained weights when validation improves; count epochs without improvement."""
    if record["val_acc"] > state.best_val_acc:
        state.best_val_acc, state.best_epoch, state.bad_epochs = record["val_acc"], record["epoch"], 0
        run.best_eval, run.last_eval = run.last_eval, None
        _snapshot_best(run)
    else:
        state.bad_epochs += 1
    patience = run.cfg.patience
    state.stopped_early = patience is not None and state.bad_epochs >= patience and state.epoch < run.cfg.epochs


def _snapshot_best(run: _Run) -> None:
    """Copy the trained weights to CPU, reusing the previous snapshot's buffers when there is one."""
    if set(run.best) != {name for name, _ in run.named}:
        run.best = {name: p.detach().to("cpu", copy=True) for name, p in run.named}
        return
    with torch.no_grad():
        for name, p in run.named:
            run.best[name].copy_(p.detach())


def _restore_best(run: _Run) -> None:
    """Load the best epoch's snapshot back into the trained parameters."""
    with torch.no_grad():
        for name, p in run.named:
            if name in run.best:
                p.copy_(run.best[name].to(p.device))


# ----------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict[str, Any]:
    """Torch (CPU, CUDA), NumPy and Python RNG states, in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def _set_rng_state(rng: dict[str, Any]) -> None:
    """Restore the RNG states saved by `_rng_state`."""
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(rng["python"])


def _meta(run: _Run) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run."""
    config = {k: v for k, v in run.cfg.to_dict().items() if k not in RESUME_NEUTRAL}
    return {
        "params": [n for n, _ in run.named], "groups": run.group_names, "config_type": type(run.cfg).__name__,
        "config": config, "steps_per_epoch": run.steps_per_epoch, "precision": run.precision,
        "seed": run.seed, "run_id": run.run_id,
    }


def _save_checkpoint(run: _Run, state: _State, path: Path) -> None:
    """Write the trainable parameters, optimizer, schedule and progress (one rolling file, atomic, rank 0 only).

    The best epoch's snapshot is stored only when it differs from the current weights."""
    from . import distributed
    if distributed.is_writer():
        current_is_best = state.best_epoch == state.epoch
        payload = {
            "format": CHECKPOINT_FORMAT, "meta": _meta(run),
            "trainable": {name: p.detach().cpu() for name, p in run.named},
            "best": None if current_is_best else run.best, "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "state": dataclasses.asdict(state), "rng": _rng_state(),
        }
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    distributed.barrier()


class CheckpointMismatch(ConfigError):
    """A checkpoint that belongs to another run (another config, model, data or seed)."""


def _check_meta(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written for another run (config, parameters, data, model or seed)."""
    fix = (f"Fix: pass resume=False to start over (train_method(..., resume=False) or fit(..., resume=False); the "
           f"file is overwritten), or delete '{path}'.")
    changed = sorted(k for k in set(saved["config"]) | set(current["config"])
                     if saved["config"].get(k) != current["config"].get(k))
    if changed or saved["config_type"] != current["config_type"]:
        raise CheckpointMismatch(f"Checkpoint '{path}' was written with a different config ({', '.join(changed)}). {fix}")
    for key in ("params", "groups", "steps_per_epoch", "seed", "run_id"):
        if saved.get(key) != current.get(key):
            what = "run (model, weights, data or training images)" if key == "run_id" else key
            raise CheckpointMismatch(f"Checkpoint '{path}' was written for a different {what}. {fix}")
    if saved["precision"] != current["precision"]:
        warnings.warn(f"Resuming a {saved['precision']} checkpoint with {current['precision']}.", stacklevel=4)


def _load_checkpoint(run: _Run, path: Path) -> _State:
    """Restore weights, optimizer, schedule, scaler, progress and RNG from ``path``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable (a damaged file) or from another format: say how to recover
        raise CheckpointMismatch(f"Cannot read checkpoint '{path}': {exc}. Fix: delete it or pass resume=False.") from exc
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"Checkpoint '{path}' has format {ckpt.get('format')}. Fix: delete it or pass "
                                 "resume=False.")
    _check_meta(ckpt["meta"], _meta(run), path)
    with torch.no_grad():
        for name, p in run.named:
            p.copy_(ckpt["trainable"][name].to(p.device))
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] and run.scaler.is_enabled():
        run.scaler.load_state_dict(ckpt["scaler"])
    run.best = ckpt["best"] if ckpt["best"] is not None else {k: v.clone() for k, v in ckpt["trainable"].items()}
    _set_rng_state(ckpt["rng"])
    return _State(**ckpt["state"])


# ----------------------------------------------------------------------------- the loop
def _run_epochs(run, state, train_loader, val_loader, eval_fn, checkpoint_path, stop_after, progress, desc) -> None:
    """Train, validate, track the best epoch and checkpoint, epoch by epoch, under one progress bar."""
    epochs_bar = bar(total=run.cfg.epochs, initial=state.epoch, desc=desc, unit="epoch", disable=not progress)
    done_here = 0
    every = run.cfg.checkpoint_every
    with epochs_bar:
        while not state.finished(run.cfg.epochs) and (stop_after is None or done_here < stop_after):
            start = time.perf_counter()
            _set_epoch(train_loader, state.epoch)
            record = _train_epoch(run, train_loader, state.epoch, progress)
            trained = time.perf_counter() - start
            record.update(_validate(run, val_loader, eval_fn, state.epoch))
            record["seconds"] = time.perf_counter() - start
            state.epoch += 1
            state.history.append(record)
            state.train_seconds += record["seconds"]
            state.step_seconds += trained
            state.images += record.pop("images")
            _track_best(run, state, record)
            done_here += 1
            pausing = stop_after is not None and done_here >= stop_after
            if checkpoint_path is not None and (state.epoch % every == 0 or pausing or state.finished(run.cfg.epochs)):
                _save_checkpoint(run, state, checkpoint_path)
            epochs_bar.update(1)
            epochs_bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_acc']:.3f}",
                                   lr=f"{run.last_lrs[0]:.2e}")


def fit(
    model: nn.Module, param_groups: list[dict], train_loader: Any, val_loader: Any, cfg: TrainConfig, *,
    device: str | torch.device = "cpu", seed: int = 0, checkpoint_path: str | Path | None = None,
    resume: bool | str = True, progress: bool = True, desc: str = "train",
    eval_fn: Callable[[nn.Module], Any] | None = None, stop_after_epochs: int | None = None,
    run_id: str = "", echo: Callable[[str], Any] | None = print,
) -> TrainResult:
    """Train exactly the parameters in ``param_groups`` (AdamW, warm-up + cosine); the model ends on its best epoch.

    ``checkpoint_path``: resume from it and write it every ``cfg.checkpoint_every`` epochs. ``resume``: True
    resumes a matching checkpoint and refuses one of another run; "auto" starts over (and says so) instead of
    refusing; False ignores it. ``run_id`` names what else must match (model, weights, data). Under torchrun
    (an initialised process group) the model trains as DistributedDataParallel; every rank agrees on every step.
    The peak memory reported is the model's parameters and buffers plus the peak increase while training.
    """
    from . import distributed
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig (or a method's config), got {type(cfg).__name__}.")
    cfg.validate()
    dev = _check_device(device)
    precision = resolve_precision(cfg.precision, dev)
    steps = _batches_per_epoch(_check_inputs(train_loader, val_loader, eval_fn, stop_after_epochs), cfg)
    param_groups = _normalise_groups(param_groups)
    named = _check_groups(model, param_groups)
    _warn_unhanded(model, named)
    model.to(dev)
    run = _build(model, named, param_groups, cfg, math.ceil(steps / cfg.grad_accum_steps), precision, dev, seed)
    run.run_id, run.forward = run_id, distributed.wrap(model, dev)
    path = None if checkpoint_path is None else Path(checkpoint_path)
    state = None
    if resume and path is not None and path.exists():
        try:
            state = _load_checkpoint(run, path)
            if echo:
                echo(f"{desc}: resuming from checkpoint '{path}' after epoch {state.epoch} of {cfg.epochs}")
        except CheckpointMismatch as exc:
            if resume != "auto":
                raise
            if echo:
                echo(f"{desc}: not resuming: {str(exc).split(' Fix:')[0]} Starting over.")
    if state is None:
        seed_everything(seed, deterministic=False)
        state = _State()
    first_epoch, modes = state.epoch, train_modes(model)
    try:
        with PeakMemory(dev) as memory:
            _run_epochs(run, state, train_loader, val_loader, eval_fn, path, stop_after_epochs, progress, desc)
    finally:
        restore_modes(modes)
        _restore_best(run)
    peak = distributed.max_(module_mb(model) + max(0.0, memory.delta_mb), device=dev)
    how = ("CUDA allocator" if memory.cuda else "CPU: process RSS") + ": model + peak increase while training"
    result = _result(state, cfg, precision, peak, first_epoch, how, distributed.world())
    result.best_val = run.best_eval  # None when the best epoch was trained before a resume
    return result


def _result(state: _State, cfg: TrainConfig, precision: str, peak_mb: float, first_epoch: int, how: str = "",
            world: int = 1) -> TrainResult:
    """The run's `TrainResult`."""
    return TrainResult(
        history=state.history, best_epoch=state.best_epoch,
        best_val_acc=state.best_val_acc if state.best_epoch else math.nan, epochs_run=state.epoch,
        stopped_early=state.stopped_early, train_seconds=state.train_seconds,
        images_per_second=state.images / state.step_seconds if state.step_seconds > 0 else 0.0,
        peak_memory_mb=peak_mb, precision=precision, completed=state.finished(cfg.epochs),
        resumed_from_epoch=first_epoch, memory_measure=how, world_size=world,
    )
