"""Data-parallel training on PyTorch's own engine: ``torchrun`` starts the processes, ``torch.distributed``
connects them (NCCL on GPUs, gloo on CPUs) and ``DistributedDataParallel`` averages the gradients.

The course's engine asks only three things of this module: which rank and world size it runs in, how to sum a
few numbers over the ranks (training loss, validation counts, peak memory), and whether this rank writes files
(only rank 0 does). Nothing else changes between one process and many.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import torch
import torch.distributed as dist

from .errors import ConfigError


def launched() -> bool:
    """True in a process that ``torchrun`` started (its environment names a world of processes)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def active() -> bool:
    """True when this process belongs to an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Only rank 0 writes results, checkpoints and figures."""
    return rank() == 0


def init(device: str = "auto") -> torch.device:
    """Join the process group that torchrun describes (NCCL on CUDA, gloo on CPU); return this rank's device."""
    if not launched():
        from .models import resolve_device
        return resolve_device(device)
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("device='cuda' under torchrun but no CUDA GPU is visible. Fix: --device cpu (gloo).")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    if use_cuda:
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def sum_(*values: float | int, device: torch.device | str = "cpu") -> list[float]:
    """The sums over all ranks of a few numbers (the numbers themselves in one process)."""
    if not active():
        return [float(v) for v in values]
    backend_device = device if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=backend_device)
    dist.all_reduce(t)
    return t.tolist()


def max_(value: float, device: torch.device | str = "cpu") -> float:
    """The largest value over all ranks."""
    if not active():
        return float(value)
    backend_device = device if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value)], dtype=torch.float64, device=backend_device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier() -> None:
    if active():
        dist.barrier()


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when several processes train, else the model itself."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


@contextlib.contextmanager
def no_sync(model: torch.nn.Module, skip: bool) -> Iterator[None]:
    """DDP's ``no_sync`` (accumulate without averaging) when ``skip`` is set and the model is wrapped."""
    if skip and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
