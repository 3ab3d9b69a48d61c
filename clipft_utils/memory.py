"""Memory measurement: the peak memory of a block of code (GPU allocator or process RSS), the bytes autograd saves
for the backward pass, and the size of a module.

``engine.fit`` reports a run's training memory as ``module_mb(model)`` plus the peak increase ``PeakMemory`` saw
while it trained; feature extraction and the benchmark measure the same way.
"""
from __future__ import annotations

import threading
from typing import Any

import psutil
import torch
from torch import nn

__all__ = ["PeakMemory", "SavedActivations", "release_free_memory", "module_mb"]

_MB = 2**20


class PeakMemory:
    """Peak memory (MB) of a block: CUDA max-allocated on a GPU, else process RSS sampled every ``interval`` s."""

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.02) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.start_mb = 0.0
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._process = psutil.Process()

    @property
    def cuda(self) -> bool:
        """Whether GPU memory (rather than process RSS) is measured."""
        return self.device.type == "cuda"

    @property
    def delta_mb(self) -> float:
        """Peak minus the amount in use when the block started."""
        return self.peak_mb - self.start_mb

    def sample(self) -> float:
        """Read memory now (MB), fold it into the peak and return it."""
        if self.cuda:
            now = torch.cuda.max_memory_allocated(self.device) / _MB
        else:
            now = self._process.memory_info().rss / _MB
        self.peak_mb = max(self.peak_mb, now)
        return now

    def _watch(self) -> None:
        """Sample until asked to stop."""
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mb = self.peak_mb = torch.cuda.memory_allocated(self.device) / _MB
            return self
        release_free_memory()  # so that memory freed earlier cannot hide this block's own growth
        self.start_mb = self.peak_mb = self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="PeakMemory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.sample()


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so RSS measures what is in use."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS is then a coarser measure
        pass


def module_mb(module: nn.Module) -> float:
    """MB of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / _MB


class SavedActivations(torch.autograd.graph.saved_tensors_hooks):
    """Bytes of distinct tensors autograd saves for backward in a ``with`` block (parameters excluded): the
    activation memory that gradient checkpointing removes, counted directly where process RSS is too coarse."""

    def __init__(self, params: Any) -> None:
        self.skip, self.seen, self.bytes = {p.untyped_storage().data_ptr() for p in params}, set(), 0
        super().__init__(self.pack, lambda t: t)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        """Count a tensor autograd saves (once per storage) and keep it as it is."""
        ptr = t.untyped_storage().data_ptr()
        if ptr not in self.skip and ptr not in self.seen:
            self.seen.add(ptr)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> "SavedActivations":
        super().__enter__()
        return self
