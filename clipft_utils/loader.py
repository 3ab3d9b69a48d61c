"""Batches straight from the decoded-image cache, augmented on the device — the one loader of the course.

A training step on a GPU is fast; per-sample augmentation on the CPU in the main process is not. So the
loader gathers whole batches of uint8 rows from the cache in a background thread, pins them (on CUDA),
copies them to the device without blocking, and there runs the augmentation on the whole batch at once:
open_clip's random resized crop (scale 0.9-1, aspect 3/4-4/3) and a horizontal flip, as ONE bicubic
``grid_sample`` with a per-image affine map, then ``/255`` and normalisation. Evaluation batches skip the
augmentation; their pixels are then bit-identical to open_clip's ``preprocess``.

Randomness depends only on (seed, epoch, image): the order is a permutation seeded with ``seed + epoch``,
and each image's crop and flip are drawn from a generator seeded with (seed, epoch), indexed by the image's
row. A run split over several processes (``rank``, ``world``) therefore sees the same global batches, the
same crops and the same flips as a single process: rank r takes items r, r + world, ... of each global
batch (a rank left without an item gets a copy of the batch's first item with weight 0).

Datasets that are not an image split (the linear probe's cached features) go through ``make_loader``: a
torch DataLoader whose ``EpochSampler`` draws the same ``epoch_order``, so both loaders replay exactly on resume.
"""
from __future__ import annotations

import itertools
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, Sequence, Sized

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

SCALE = (0.9, 1.0)
RATIO = (3 / 4, 4 / 3)


class Batch(tuple):
    """``(images, labels)`` on the device — a pair, like any loader's batch — that also carries per-item
    ``weights`` (0 = a padding item) and ``total``, the number of real items in the whole global batch (all ranks)."""

    def __new__(cls, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, total: int) -> "Batch":
        batch = super().__new__(cls, (images, labels))
        batch.weights, batch.total = weights, int(total)
        return batch

    @property
    def images(self) -> torch.Tensor:
        return self[0]

    @property
    def labels(self) -> torch.Tensor:
        return self[1]


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 or 0..255 float [b, 3, S, S] -> ``(x / 255 - mean) / std``, op for op as open_clip's preprocess."""
    x = x.to(torch.float32).div(255)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def crop_params(n: int, size: int, seed: int | None, epoch: int = 0) -> torch.Tensor:
    """[n, 5] per-image (x0, y0, w, h, flip) of a random resized crop in pixels, seeded by (seed, epoch) only
    (``seed=None``: from torch's global generator)."""
    g = None if seed is None else torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 0xC0FFEE) % 2**63)
    u = torch.rand(n, 5, generator=g, dtype=torch.float64)
    area = size * size * (SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 0])
    log_ratio = math.log(RATIO[0]) + (math.log(RATIO[1]) - math.log(RATIO[0])) * u[:, 1]
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(area * aspect).clamp(max=size)
    h = torch.sqrt(area / aspect).clamp(max=size)
    x0, y0 = (size - w) * u[:, 2], (size - h) * u[:, 3]
    return torch.stack([x0, y0, w, h, (u[:, 4] < 0.5).double()], dim=1)


def augment(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Crop each image to its box, resize it back to S x S (bicubic) and flip it where asked: one grid_sample.

    ``x`` is [b, 3, S, S] (float, 0..255) on any device; the result is rounded and clamped to 0..255 like a
    uint8 resize, so the normalisation that follows is the same as for evaluation.
    """
    b, _, size, _ = x.shape
    p = params.to(device=x.device, dtype=torch.float32)
    x0, y0, w, h, flip = p.unbind(1)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = (w / size) * (1 - 2 * flip)      # a negative x scale mirrors the crop
    theta[:, 0, 2] = (2 * x0 + w) / size - 1           # the crop's centre, in [-1, 1]
    theta[:, 1, 1] = h / size
    theta[:, 1, 2] = (2 * y0 + h) / size - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.clamp_(0, 255).round_()


def epoch_order(size: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Positions 0..size-1 in ``epoch``'s order: a permutation seeded with ``seed + epoch``, or in order unshuffled.

    The one data order of the course: ``CachedLoader`` and ``EpochSampler`` both draw it."""
    if not shuffle:
        return np.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed + epoch)).numpy()


class CachedLoader:
    """Batches of an ``ImageSplit`` (see the module docstring); ``set_epoch`` picks the epoch's order and crops."""

    def __init__(self, split, batch_size: int, *, shuffle: bool = False, augment: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu", rank: int = 0, world: int = 1, prefetch: int = 2) -> None:
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive whole number, got {batch_size!r}.")
        self.split, self.batch_size, self.shuffle, self.augment = split, batch_size, bool(shuffle), bool(augment)
        self.seed, self.device, self.rank, self.world = int(seed), torch.device(device), int(rank), int(world)
        self.prefetch, self.epoch = max(1, int(prefetch)), 0
        self.rows = np.arange(len(split.labels)) if split.indices is None else np.asarray(split.indices)
        self.dataset = split  # what DataLoader users look for

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s order and crops for the next pass."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.rows) / self.batch_size)

    def _order(self) -> np.ndarray:
        return epoch_order(len(self.rows), self.shuffle, self.seed, self.epoch)

    def _plan(self) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """(positions in this split, weights, global count) of this rank's part of each global batch."""
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            mine = batch[self.rank::self.world]
            weights = np.ones(len(mine), dtype=np.float32)
            if len(mine) == 0:  # more ranks than items in the last batch: a weightless stand-in keeps ranks in step
                mine, weights = batch[:1], np.zeros(1, dtype=np.float32)
            yield mine, weights, len(batch)

    def _gather(self, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[positions]
        order = np.argsort(rows, kind="stable")  # read the memmap in file order, then put the batch back in order
        pixels = np.empty((len(rows), *self.split.images.shape[1:]), dtype=np.uint8)
        pixels[order] = self.split.images[rows[order]]
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        labels = torch.from_numpy(np.asarray(self.split.labels[rows], dtype=np.int64))
        if self.device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def _finish(self, images: torch.Tensor, labels: torch.Tensor, positions: np.ndarray, params: torch.Tensor | None,
                weights: np.ndarray, total: int) -> Batch:
        x = images.to(self.device, non_blocking=True)
        if params is not None:
            x = augment(x.to(torch.float32), params[positions])
        x = normalise(x, self.split.mean, self.split.std)
        return Batch(x, labels.to(self.device, non_blocking=True),
                     torch.from_numpy(weights).to(self.device, non_blocking=True), total)

    def __iter__(self) -> Iterator[Batch]:
        params = crop_params(len(self.rows), self.split.image_size, self.seed, self.epoch) if self.augment else None
        plan = list(self._plan())
        with ThreadPoolExecutor(1, thread_name_prefix="clipft-loader") as pool:
            pending = [pool.submit(self._gather, p) for p, _, _ in plan[:self.prefetch]]
            for i, (positions, weights, total) in enumerate(plan):
                images, labels = pending.pop(0).result()
                if i + self.prefetch < len(plan):
                    pending.append(pool.submit(self._gather, plan[i + self.prefetch][0]))
                yield self._finish(images, labels, positions, params, weights, total)


def forever(loader: Any) -> Iterator[Any]:
    """The loader's batches without end: when they run out, the next epoch (new order and crops) starts."""
    if not len(loader):
        raise ValueError("The training split has no images. Fix: give every class at least one training image.")
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader


# ----------------------------------------------------------------------------- any map-style dataset
def _mix(seed: int, epoch: int) -> int:
    """A second, independent seed per (seed, epoch) for the loader's worker seeds."""
    return (seed * 1_000_003 + epoch * 7_919 + 0x5EED) % 2**63


class EpochSampler(Sampler[int]):
    """Dataset indices in ``epoch_order`` (seeded with ``seed + epoch``): each epoch's order is reproducible."""

    def __init__(self, size: int, shuffle: bool, seed: int = 0) -> None:
        self.size, self.shuffle, self.seed = int(size), bool(shuffle), int(seed)
        self.worker_generator = torch.Generator()  # hand to DataLoader(generator=...): worker seeds per epoch
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass use ``epoch``'s order (fit() calls this before every epoch)."""
        self._use_epoch(epoch)

    def _use_epoch(self, epoch: int) -> None:
        """Set the epoch and re-seed the worker generator for it."""
        self.epoch = int(epoch)
        self.worker_generator.manual_seed(_mix(self.seed, self.epoch))

    def __iter__(self) -> Iterator[int]:
        indices = epoch_order(self.size, self.shuffle, self.seed, self.epoch).tolist()
        self._use_epoch(self.epoch + 1)  # plain loops without set_epoch still get a new order next time
        return iter(indices)

    def __len__(self) -> int:
        return self.size


def make_loader(
    dataset: Sized, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0, drop_last: bool = False,
    *, pin_memory: bool = False, collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader over any map-style dataset (the linear probe's features) whose order and worker seeds depend only
    on (seed, epoch), so resumed runs replay exactly."""
    sampler = EpochSampler(len(dataset), shuffle, seed)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        generator=sampler.worker_generator, pin_memory=pin_memory, collate_fn=collate_fn,
        persistent_workers=False,  # persistent workers would keep epoch-1 seeds forever
    )
