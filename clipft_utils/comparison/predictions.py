"""Per-image predictions: the saved test probabilities of each run, the image they disagree on, its top-5."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..methods import names as method_names
from ..results import load_predictions
from .tables import column, main_rows, top_k


def test_image(split, index: int) -> np.ndarray:
    """The cached uint8 image [S, S, 3] at position ``index`` of a (possibly subset) split."""
    row = index if split.indices is None else int(split.indices[index])
    return np.asarray(split.images[row])


def aligned_runs(folder: str | Path, runs: Iterable[str], targets: np.ndarray) -> dict[str, np.ndarray]:
    """Softmax probabilities of the runs whose saved predictions match these test labels (same images)."""
    out = {}
    for run in runs:
        try:
            logits, labels = load_predictions(folder, run)
        except (OSError, KeyError):
            continue
        if len(labels) == len(targets) and np.array_equal(labels, targets):
            z = logits - logits.max(axis=1, keepdims=True)
            out[run] = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return out


def main_runs(df: pd.DataFrame, seed: int = 0) -> list[str]:
    """Run names of the main rows of one seed, in course order."""
    main = main_rows(df)
    main = main[column(main, "seed") == seed]
    order = {m: i for i, m in enumerate(method_names())}
    return list(main.assign(_k=main["method"].map(order)).sort_values("_k")["run"])


def most_disputed(probs: dict[str, np.ndarray]) -> int:
    """The test image on which the methods' top-1 answers disagree most (first one on ties)."""
    if not probs:
        return 0
    preds = np.stack([p.argmax(axis=1) for p in probs.values()])
    distinct = np.array([len(set(col)) for col in preds.T])
    return int(np.argmax(distinct))


def top5(probs: dict[str, np.ndarray], index: int, classnames: Sequence[str]) -> pd.DataFrame:
    """Each run's min(5, C) most likely classes for one image: columns = runs, cells = "name (p%)"."""
    k = top_k(len(classnames))
    cols = {}
    for run, p in probs.items():
        best = np.argsort(-p[index], kind="stable")[:k]
        cols[run] = [f"{classnames[c]} ({100 * p[index, c]:.0f}%)" for c in best]
    return pd.DataFrame(cols, index=[f"#{i + 1}" for i in range(k)])


def live_frontend() -> bool:
    """True in a Jupyter kernel with a frontend; False under papermill/the runner (``CLIPFT_HEADLESS``)."""
    if os.environ.get("CLIPFT_HEADLESS"):
        return False
    try:
        from IPython import get_ipython
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"

