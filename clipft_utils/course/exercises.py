"""What the notebooks' worked solutions share: the smallest honest training run, and a validation subset to score it.

A solution that asks for a training run trains a few optimizer steps (one epoch of them, the recipe's schedule over
those steps) through the course's one engine, and scores the model before and after on the first few validation
images of every class: seconds on the stand-in, and it says so (``ShortRun.note``). Its numbers show the direction of
a change, not the converged accuracy a full run would reach.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

STEPS = 8
"""Optimizer steps of a solution's training run."""
VAL_PER_CLASS = 4
"""Validation images per class that score it."""


def first_per_class(split: Any, k: int) -> Any:
    """The first ``k`` images of every class of an ``ImageSplit`` (all of a class that has fewer)."""
    targets = np.asarray(split.targets)
    rows = np.concatenate([np.flatnonzero(targets == c)[:k] for c in np.unique(targets)])
    return split.subset(np.sort(rows))


@dataclass
class ShortRun:
    """A solution's training run: the engine's result and what it was."""

    train: Any
    steps: int
    val_images: int

    @property
    def start(self) -> float:
        """Validation top-1 before training (the history's epoch-0 record)."""
        return float(self.train.history[0]["val_acc"])

    @property
    def end(self) -> float:
        """Validation top-1 after the steps."""
        return float(self.train.history[-1]["val_acc"])

    @property
    def note(self) -> str:
        """What the numbers are, for the line the solution prints."""
        return (f"{self.steps} optimizer step(s), validation top-1 on {self.val_images:,} images (the first "
                f"{VAL_PER_CLASS} of each class): the direction of a change, not a converged accuracy")


def short_train(course: Any, clf: Any, groups: list[dict], cfg: Any, *, steps: int = STEPS,
                val_per_class: int = VAL_PER_CLASS) -> ShortRun:
    """Train ``clf`` for exactly ``steps`` optimizer steps of ``cfg``'s recipe (one epoch of them, no warm-up, no early
    stop; a small training split's loader is cycled) and validate it before and after on the first ``val_per_class``
    validation images of each class."""
    from ..engine import fit
    from ..loader import CachedLoader
    short = dataclasses.replace(cfg, epochs=1, steps=steps, steps_per_shot=None, min_steps_per_epoch=None,
                                budget_scale=1.0, max_steps_per_epoch=None, warmup_epochs=0.0, patience=None,
                                checkpoint_every=1)
    val = first_per_class(course.splits["val"], val_per_class)
    loader = CachedLoader(val, course.eval_batch_size, shuffle=False, augment=False, seed=course.seed,
                          device=course.device)
    batches = course.loader("train", train=True)
    train = fit(clf, groups, batches, loader, short, device=course.device, seed=course.seed, progress=False, echo=None)
    return ShortRun(train, train.steps, len(val))
