"""The time of every optimizer step of a run, and its statistics: the median after a warm-up and the interquartile
range (timm's benchmark reports the median after warm-up too). A wall-clock reading on a shared machine is noisy; the
spread says how noisy, and a run with too few steps reports none rather than a number it cannot support."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

WARMUP_STEPS = 5
"""Steps left out of the statistics: the first ones pay for allocations, kernel selection and caches."""
MIN_TIMED_STEPS = 20
"""Fewer timed steps than this give no step time (``step_ms`` None, with the reason in ``step_ms_note``)."""


class StepTimer:
    """Seconds of each optimizer step's compute (forward, backward, optimizer; the loader's wait excluded), summed over
    its micro-batches; synchronised on CUDA so that queued kernels are counted where they run."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.times = device, []
        self._current, self._start = 0.0, None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self) -> None:
        """A micro-batch's compute begins (its batch is at hand)."""
        self._sync()
        self._start = time.perf_counter()

    def stop(self, step_done: bool) -> None:
        """A micro-batch's compute ended; ``step_done``: the optimizer stepped, so the step's time is recorded."""
        self._sync()
        self._current += time.perf_counter() - self._start
        if step_done:
            self.times.append(self._current)
            self._current = 0.0


def step_stats(seconds: list[float], warmup: int = WARMUP_STEPS, minimum: int = MIN_TIMED_STEPS) -> dict[str, Any]:
    """Median, quartiles and interquartile range (ms) of the steps after ``warmup``; None, with the reason, when fewer
    than ``minimum`` remain."""
    kept = 1000 * np.asarray(seconds[warmup:], dtype=float)
    out: dict[str, Any] = {"timed_steps": int(len(kept)), "warmup_steps": min(warmup, len(seconds))}
    if len(kept) < minimum:
        return {**out, "step_ms": None, "step_ms_q1": None, "step_ms_q3": None, "step_ms_spread": None,
                "step_ms_note": f"{len(seconds)} step(s) in this session, {len(kept)} timed after {warmup} warm-up "
                                f"step(s): fewer than {minimum}, so no step time is reported"}
    q1, median, q3 = np.percentile(kept, [25, 50, 75])
    return {**out, "step_ms": float(median), "step_ms_q1": float(q1), "step_ms_q3": float(q3),
            "step_ms_spread": float(q3 - q1),
            "step_ms_note": f"median and interquartile range of {len(kept)} steps after {warmup} warm-up step(s)"}
