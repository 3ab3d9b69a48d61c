"""Notebook code on the smallest folders ``data check`` accepts: nothing assumes more training batches than exist.

Cheap checks of the notebooks' own cells (run here on a stand-in course); the whole course on the smallest folder
is ``tests/test_course_smoke.py``'s.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import nbformat
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def cell(notebook: str, cell_id: str) -> str:
    """The source of one cell (by its id) of ``notebooks/<notebook>.ipynb``."""
    nb = nbformat.read(ROOT / "notebooks" / f"{notebook}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if c.get("id") == cell_id)


class OneBatchLoader:
    """A training loader over a split that fills one batch: ``len() == 1``; records the epochs it was set to."""

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.epoch = 0

    def __len__(self) -> int:
        return 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs.append(epoch)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.epoch)
        yield torch.randn(4, 3, 8, 8, generator=g), torch.tensor([0, 1, 0, 1])


def test_06_measures_more_steps_than_the_training_split_has_batches() -> None:
    """06's checkpointing measurement takes 1 + ``memory_steps`` steps; a one-batch split is cycled, not exhausted
    (before: ``StopIteration`` from ``next(batches)`` on a 6-class x 13-image folder)."""
    loader = OneBatchLoader()
    course = SimpleNamespace(loader=lambda split, train=False: loader, device=torch.device("cpu"))
    ns = {"course": course, "cfg": SimpleNamespace(precision="fp32", grad_clip=1.0)}
    exec(cell("06_full_finetune", "c1983589"), ns)   # the notebook's imports
    exec(cell("06_full_finetune", "aedd4b35"), ns)   # train_steps (and what it uses)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    seconds = ns["train_steps"](model, optimizer, scheduler, 5)
    assert seconds > 0
    assert loader.epochs == [0, 1, 2, 3, 4]           # each pass is a new epoch: a new order and new crops
    assert scheduler.last_epoch == 5                  # five optimizer steps were taken
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

