"""SynthFlowers as a course dataset: the offline STAND-IN for Flowers102 (drawn, never photographed)."""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from ..datasets.base import Dataset, short_hash
from . import synth


class SynthFlowers(Dataset):
    """102 attribute-composed classes drawn by ``synth`` (10 train / 10 val / 30 test per class).

    ``seed`` selects another drawing of every image; the images are generated on demand (only the rows a
    notebook uses) and cached like decoded photos.
    """

    name = "synthflowers"
    standin = True
    standin_note = "SynthFlowers (drawn), not Flowers102 photos"

    def __init__(self, root: str | os.PathLike | None = None, seed: int = 0) -> None:
        super().__init__(root)  # nothing is read from disk; root is accepted for a uniform interface
        self.seed = int(seed)

    @property
    def classnames(self) -> list[str]:
        return list(synth.CLASSNAMES)

    def templates(self, ensemble: bool = False) -> list[str]:
        return list(synth.ENSEMBLE_TEMPLATES if ensemble else synth.TEMPLATES)

    def labels(self, split: str) -> np.ndarray:
        return synth.split_labels(self.check_split(split))

    @cached_property
    def identity(self) -> str:
        code = hashlib.sha1(Path(synth.__file__).read_bytes()).hexdigest()  # redraw when the drawing code changes
        return short_hash(code, self.seed)

    def describe(self) -> str:
        return f"synthflowers (generated, seed {self.seed})"

    def decode(self, split: str, rows: np.ndarray, size: int, workers: int) -> np.ndarray:
        return synth.generate_rows(self.check_split(split), rows, seed=self.seed, image_size=size)
