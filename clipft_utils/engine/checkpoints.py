"""Training checkpoints: one rolling file per run (trainable parameters, optimizer, schedule, scaler, progress and RNG
state), written atomically by rank 0, read back only with ``torch.load(weights_only=True)``, and refused when it
belongs to another run."""
from __future__ import annotations

import dataclasses
import hashlib
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..paths import atomic_path
from .state import Run, State

CHECKPOINT_FORMAT = 3
RESUME_NEUTRAL = ("checkpoint_every",)
"""Config fields that may change between a checkpoint and its resumption."""

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


def _meta(run: Run) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run."""
    config = {k: v for k, v in run.cfg.to_dict().items() if k not in RESUME_NEUTRAL}
    return {
        "params": [n for n, _ in run.named], "groups": run.group_names, "config_type": type(run.cfg).__name__,
        "config": config, "steps_per_epoch": run.steps_per_epoch, "precision": run.precision,
        "seed": run.seed, "run_id": run.run_id,
    }


def save_checkpoint(run: Run, state: State, path: Path) -> None:
    """Write the trainable parameters, optimizer, schedule and progress (one rolling file, atomic, rank 0 only).

    The best epoch's snapshot is stored only when it differs from the current weights."""
    from .. import distributed
    if distributed.is_writer():
        current_is_best = state.best_epoch == state.epoch
        payload = {
            "format": CHECKPOINT_FORMAT, "meta": _meta(run),
            "trainable": {name: p.detach().cpu() for name, p in run.named},
            "best": None if current_is_best else run.best, "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "state": dataclasses.asdict(state), "rng": _rng_state(),
        }
        payload["digest"] = digest(payload)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    distributed.barrier()


def digest(obj: Any) -> str:
    """A sha256 of everything a checkpoint holds (tensors by dtype, shape and bytes; other values by their repr),
    its own ``digest`` left out: a checkpoint whose numbers changed after it was written no longer matches."""
    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=str):
                if k != "digest":
                    h.update(repr(k).encode())
                    feed(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode())
    feed(obj)
    return h.hexdigest()


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


def load_checkpoint(run: Run, path: Path) -> State:
    """Restore weights, optimizer, schedule, scaler, progress and RNG from ``path``."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable (a damaged file) or from another format: say how to recover
        raise CheckpointMismatch(f"Cannot read checkpoint '{path}': {exc}. Fix: delete it or pass resume=False.") from exc
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointMismatch(f"Checkpoint '{path}' has format {ckpt.get('format')}. Fix: delete it or pass "
                                 "resume=False.")
    if ckpt.get("digest") != digest(ckpt):
        raise CheckpointMismatch(f"Checkpoint '{path}' does not match its digest: its numbers changed after it was "
                                 "written. Fix: delete it or pass resume=False.")
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
    return State(**ckpt["state"])


