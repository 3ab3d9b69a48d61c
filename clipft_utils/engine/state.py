"""What one ``fit`` call holds: its schedule (``WarmupCosine``), its result (``TrainResult``), its progress (``State``,
what a checkpoint carries) and its live objects (``Run``)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig

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
    images_per_second: float     # training images / wall seconds spent in training passes (loading included)
    peak_memory_mb: float | None  # on a GPU: the model + the CUDA allocator's peak increase while training; else None
    precision: str               # the resolved precision: fp32 | bf16 | fp16
    completed: bool = True       # False when stop_after_epochs paused the run
    resumed_from_epoch: int = 0  # epochs already done in the checkpoint this call resumed
    memory_measure: str = ""     # what peak_memory_mb measured, in words
    world_size: int = 1          # processes that trained together (DistributedDataParallel)
    steps: int = 0               # optimizer steps trained (all sessions)
    budget: str = ""             # how the step budget was set, in words (TrainConfig.budget)
    step_time: dict[str, Any] = field(default_factory=dict)  # this session's step times (engine.timing.step_stats)
    best_val: Any = field(default=None, repr=False)  # the best epoch's validation EvalResult (this session's)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON view."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "best_val"}


@dataclass
class State:
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
    steps: int = 0

    def finished(self, epochs: int) -> bool:
        """Whether no epoch is left to run."""
        return self.stopped_early or self.epoch >= epochs


@dataclass
class Run:
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
    steps_per_epoch: list[int]       # the budget's steps of each epoch (what a checkpoint must match)
    seed: int
    best: dict[str, torch.Tensor] = field(default_factory=dict)
    last_lrs: list[float] = field(default_factory=list)
    forward: nn.Module | None = None  # the model, or DistributedDataParallel(model) when several ranks train
    run_id: str = ""
    last_eval: Any = None              # the latest validation EvalResult (single process), and the best one
    best_eval: Any = None
    budget: Any = None                 # the run's config.Budget
    timer: Any = None                  # its timing.StepTimer

    @property
    def params(self) -> list[nn.Parameter]:
        """The trained parameters, in group order."""
        return [p for _, p in self.named]


