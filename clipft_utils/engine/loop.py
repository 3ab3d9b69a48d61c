"""The one training loop (``fit``): a budget of optimizer steps split into epochs (AdamW, warm-up + cosine, clipping, AMP,
accumulation), validation after each epoch, the best epoch kept, early stopping, checkpoints, DDP under torchrun.

The steps come from one stream: pass p over the training split is the loader at epoch p (its own order and crops), and
epoch e trains the stream's next ``budget.per_epoch[e]`` steps (``TrainConfig.budget``). With the recipe's epochs of
whole passes that is exactly one pass per epoch; a small split's passes repeat within an epoch (its loader is cycled);
a scaled-down budget ends an epoch inside a pass, and the next epoch continues that pass."""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Budget, TrainConfig
from ..errors import ConfigError
from ..evaluate import autocast_context, evaluate, resolve_precision, restore_modes, train_modes
from ..memory import PeakMemory, module_mb
from ..paths import note
from ..progress import bar
from ..seeding import seed_everything
from .checkpoints import CheckpointMismatch, load_checkpoint, save_checkpoint
from .checks import check_device, check_groups, check_inputs, group_names, normalise_groups, warn_unhanded
from .state import Run, State, TrainResult, WarmupCosine
from .timing import StepTimer, step_stats

def _set_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler / batch sampler, where they have one."""
    seen: set[int] = set()
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if obj is not None and id(obj) not in seen and callable(getattr(obj, "set_epoch", None)):
            seen.add(id(obj))
            obj.set_epoch(epoch)


# ----------------------------------------------------------------------------- schedule
def _optimizer_groups(param_groups: list[dict], names: list[str], cfg: TrainConfig) -> list[dict]:
    """Copy the groups, filling in lr (x lr_scale) and weight decay from cfg where a group does not say."""
    groups = []
    for group, name in zip(param_groups, names):
        default = cfg.effective_head_lr if group.get("name") == "head" else cfg.lr
        lr = float(group.get("lr", default)) * float(group.get("lr_scale", 1.0))
        wd = float(group.get("weight_decay", cfg.weight_decay))
        groups.append({**group, "name": name, "lr": lr, "weight_decay": wd})
    return groups


def _build(model, named, param_groups, cfg, budget: Budget, precision, device, seed) -> Run:
    """AdamW over the groups, a per-step warm-up + cosine LambdaLR over the budget, and a grad scaler (fp16 only)."""
    names = group_names(param_groups)
    optimizer = torch.optim.AdamW(_optimizer_groups(param_groups, names, cfg), lr=cfg.lr)
    total = budget.total
    warmup = max(0, min(round(cfg.warmup_epochs * total / cfg.epochs), total - 1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    run = Run(model, named, names, optimizer, scheduler, scaler, cfg, device, precision, list(budget.per_epoch), seed)
    run.budget, run.timer = budget, StepTimer(device)
    return run


# ----------------------------------------------------------------------------- one epoch
def _step(run: Run) -> torch.Tensor | None:
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


def stream(loader: Any, first_step: int, steps: int, accum: int) -> Any:
    """The micro-batches of the training stream's steps [first_step, first_step + steps), each with the size of its
    accumulation window and whether it is a pass's last: pass p is the loader at epoch p; a window never spans two
    passes (a pass's last window may be shorter); a small split's passes repeat until the steps are done."""
    n = len(loader)
    per_pass = math.ceil(n / accum)
    p, s = divmod(first_step, per_pass)
    while steps > 0:
        _set_epoch(loader, p)
        take = min(per_pass - s, steps)
        first, stop = s * accum, min(n, (s + take) * accum)
        for i, raw in enumerate(loader):
            if i >= stop:
                break
            if i >= first:  # (resuming inside a pass: the micro-batches of its trained steps are skipped)
                yield raw, max(1, min(accum, n - (i // accum) * accum)), i == stop - 1
        steps, p, s = steps - take, p + 1, 0


def _train_epoch(run: Run, loader: Any, epoch: int, progress: bool) -> dict[str, Any]:
    """The epoch's share of the step budget (from the training stream, with gradient accumulation); returns its stats.

    Each micro-batch's loss is ``world * sum(w_i * CE_i) / n``, n the items of the whole (global) micro-batch:
    after DDP averages the gradients over the ranks this is exactly the single-process mean over n, whatever
    the split of the batch between ranks (padding items have weight 0).
    """
    from .. import distributed
    run.model.train()
    run.optimizer.zero_grad(set_to_none=True)  # never add to gradients left over from before
    k, world, steps = run.cfg.grad_accum_steps, distributed.world(), run.budget.per_epoch[epoch]
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), device=run.device, dtype=torch.float64)
    seen, pending, norms = 0.0, 0, []
    batches = bar(stream(loader, run.budget.first_step(epoch), steps, k), total=None, desc=f"epoch {epoch + 1}",
                  leave=False, disable=not progress)
    for raw, window, pass_ends in batches:
        images, labels, weights, total = _batch(raw, run.device)
        w = torch.ones(len(labels), device=run.device) if weights is None else weights.float()
        run.timer.start()
        with distributed.no_sync(run.forward, skip=pending + 1 < window and not pass_ends):
            with autocast_context(run.precision, run.device):
                logits = run.forward(images)
            per_item = F.cross_entropy(logits.float(), labels, label_smoothing=run.cfg.label_smoothing,
                                       reduction="none")
            loss = (per_item * w).sum() / total
            run.scaler.scale(loss * world / window).backward()
        pending += 1
        stepped = pending >= window or pass_ends  # (a loader that yields fewer batches than len() ends its window)
        if stepped:
            norms.append(_step(run))
            pending = 0
        run.timer.stop(step_done=stepped)
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


def _epoch_stats(run: Run, loss_sum: float, correct: float, seen: int, norms: list, epoch: int) -> dict[str, Any]:
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
        "steps": len(norms), "images": seen,
    }


def _validate(run: Run, val_loader: Any, eval_fn: Callable | None, epoch: int) -> dict[str, Any]:
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
def _sharded_validation(run: Run, loader: Any) -> dict[str, Any]:
    """Validation over a loader split between ranks: correct, loss and count summed over every rank."""
    from .. import distributed
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


def _start_record(run: Run, val_loader: Any, eval_fn: Callable | None) -> dict[str, Any]:
    """The history's epoch-0 record: the validation of the model before any training (a curve's first point, so the
    jump from the start shows). It neither trains, nor counts as an epoch or a candidate for the best one, nor draws
    from any random generator: the run trains exactly as without it."""
    import random
    import numpy as np
    start, states = time.perf_counter(), (random.getstate(), np.random.get_state())
    cuda = [run.device.index or 0] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        record = {"epoch": 0, **_validate(run, val_loader, eval_fn, 0)}
    random.setstate(states[0])
    np.random.set_state(states[1])
    run.last_eval = None
    return {**record, "seconds": time.perf_counter() - start}


def _track_best(run: Run, state: State, record: dict[str, Any]) -> None:
    """Keep a CPU copy of the trained weights when validation improves; count epochs without improvement."""
    if record["val_acc"] > state.best_val_acc:
        state.best_val_acc, state.best_epoch, state.bad_epochs = record["val_acc"], record["epoch"], 0
        run.best_eval, run.last_eval = run.last_eval, None
        _snapshot_best(run)
    else:
        state.bad_epochs += 1
    patience = run.cfg.patience
    state.stopped_early = patience is not None and state.bad_epochs >= patience and state.epoch < run.cfg.epochs


def _snapshot_best(run: Run) -> None:
    """Copy the trained weights to CPU, reusing the previous snapshot's buffers when there is one."""
    if set(run.best) != {name for name, _ in run.named}:
        run.best = {name: p.detach().to("cpu", copy=True) for name, p in run.named}
        return
    with torch.no_grad():
        for name, p in run.named:
            run.best[name].copy_(p.detach())


def _restore_best(run: Run) -> None:
    """Load the best epoch's snapshot back into the trained parameters."""
    with torch.no_grad():
        for name, p in run.named:
            if name in run.best:
                p.copy_(run.best[name].to(p.device))


# ----------------------------------------------------------------------------- checkpoints
def _run_epochs(run, state, train_loader, val_loader, eval_fn, checkpoint_path, stop_after, progress, desc) -> None:
    """Train, validate, track the best epoch and checkpoint, epoch by epoch, under one progress bar."""
    epochs_bar = bar(total=run.cfg.epochs, initial=state.epoch, desc=desc, unit="epoch", disable=not progress)
    done_here = 0
    every = run.cfg.checkpoint_every
    with epochs_bar:
        while not state.finished(run.cfg.epochs) and (stop_after is None or done_here < stop_after):
            start = time.perf_counter()
            record = _train_epoch(run, train_loader, state.epoch, progress)
            trained = time.perf_counter() - start
            record.update(_validate(run, val_loader, eval_fn, state.epoch))
            record["seconds"] = time.perf_counter() - start
            state.epoch += 1
            state.history.append(record)
            state.train_seconds += record["seconds"]
            state.step_seconds += trained
            state.images += record.pop("images")
            state.steps += record["steps"]
            _track_best(run, state, record)
            done_here += 1
            pausing = stop_after is not None and done_here >= stop_after
            if checkpoint_path is not None and (state.epoch % every == 0 or pausing or state.finished(run.cfg.epochs)):
                save_checkpoint(run, state, checkpoint_path)
            epochs_bar.update(1)
            epochs_bar.set_postfix(loss=f"{record['train_loss']:.3f}", val_acc=f"{record['val_acc']:.3f}",
                                   lr=f"{run.last_lrs[0]:.2e}")


def fit(
    model: nn.Module, param_groups: list[dict], train_loader: Any, val_loader: Any, cfg: TrainConfig, *,
    device: str | torch.device = "cpu", seed: int = 0, checkpoint_path: str | Path | None = None,
    resume: bool | str = True, progress: bool = True, desc: str = "train",
    eval_fn: Callable[[nn.Module], Any] | None = None, stop_after_epochs: int | None = None,
    run_id: str = "", echo: Callable[[str], Any] | None = print, images_per_class: float | None = None,
) -> TrainResult:
    """Train exactly the parameters in ``param_groups`` (AdamW, warm-up + cosine); the model ends on its best epoch.

    The run trains ``cfg.budget(batches, images_per_class)`` optimizer steps (``images_per_class``: what a budget
    stated per shot needs), each one timed. ``checkpoint_path``: resume from it and write it every
    ``cfg.checkpoint_every`` epochs. ``resume``: True resumes a matching checkpoint and refuses one of another run;
    "auto" starts over (and says so) instead of refusing; False ignores it. ``run_id`` names what else must match
    (model, weights, data). Under torchrun (an initialised process group) the model trains as
    DistributedDataParallel; every rank agrees on every step. On a GPU the CUDA allocator's peak while training is
    reported (``peak_memory_mb``); on a CPU nothing is (process memory is not a method's memory: see ``costs``).
    The history starts with an epoch-0 record, the untrained model's validation (``_start_record``).
    """
    from .. import distributed
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig (or a method's config), got {type(cfg).__name__}.")
    cfg.validate()
    dev = check_device(device)
    precision = resolve_precision(cfg.precision, dev)
    budget = cfg.budget(check_inputs(train_loader, val_loader, eval_fn, stop_after_epochs), images_per_class)
    param_groups = normalise_groups(param_groups)
    named = check_groups(model, param_groups)
    warn_unhanded(model, named)
    model.to(dev)
    run = _build(model, named, param_groups, cfg, budget, precision, dev, seed)
    run.run_id, run.forward = run_id, distributed.wrap(model, dev)
    path = None if checkpoint_path is None else Path(checkpoint_path)
    state = None
    if resume and path is not None and path.exists():
        try:
            state = load_checkpoint(run, path)
            _say(echo, f"{desc}: resuming from checkpoint '{path}' after epoch {state.epoch} of {cfg.epochs}")
        except CheckpointMismatch as exc:
            if resume != "auto":
                raise
            _say(echo, f"{desc}: not resuming: {str(exc).split(' Fix:')[0]} Starting over.")
    if state is None:
        seed_everything(seed, deterministic=False)
        state = State()
    first_epoch, modes = state.epoch, train_modes(model)
    try:
        if not state.history:
            state.history.append(_start_record(run, val_loader, eval_fn))
        with _cuda_peak(dev) as memory:
            _run_epochs(run, state, train_loader, val_loader, eval_fn, path, stop_after_epochs, progress, desc)
    finally:
        restore_modes(modes)
        _restore_best(run)
    peak = None if memory is None else distributed.max_(module_mb(model) + max(0.0, memory.delta_mb), device=dev)
    how = "" if memory is None else CUDA_PEAK
    result = _result(state, cfg, precision, peak, first_epoch, how, distributed.world())
    result.best_val = run.best_eval  # None when the best epoch was trained before a resume
    result.budget, result.step_time = budget.rule, step_stats(run.timer.times)
    return result


def _say(echo: Callable[[str], Any] | None, text: str) -> None:
    """Say what happened to a checkpoint where the run is watched (``echo``) and in the runner's terminal."""
    note(text)
    if echo:
        echo(text)


CUDA_PEAK = "CUDA allocator: the model + the peak increase of allocated memory while training (measured)"


def _cuda_peak(device: torch.device) -> Any:
    """``PeakMemory`` on a GPU (the allocator's peak); on a CPU nothing is measured (yields None)."""
    import contextlib
    return PeakMemory(device) if device.type == "cuda" else contextlib.nullcontext()


def _result(state: State, cfg: TrainConfig, precision: str, peak_mb: float | None, first_epoch: int, how: str = "",
            world: int = 1) -> TrainResult:
    """The run's `TrainResult`."""
    return TrainResult(
        history=state.history, best_epoch=state.best_epoch,
        best_val_acc=state.best_val_acc if state.best_epoch else math.nan, epochs_run=state.epoch,
        stopped_early=state.stopped_early, train_seconds=state.train_seconds,
        images_per_second=state.images / state.step_seconds if state.step_seconds > 0 else 0.0,
        peak_memory_mb=peak_mb, precision=precision, completed=state.finished(cfg.epochs),
        resumed_from_epoch=first_epoch, memory_measure=how, world_size=world, steps=state.steps,
    )
