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



def run_titles(df: pd.DataFrame, runs: Iterable[str]) -> dict[str, str]:
    """Run name -> the method's paper name (with its variant), as every table of the course names it."""
    from .tables import display_name
    rows = {r["run"]: r for r in df.to_dict("records")} if len(df) else {}
    return {run: display_name(rows[run]["method"], rows[run].get("variant")) if run in rows else run for run in runs}


def consensus(tops: dict[str, list]) -> tuple[str | None, int]:
    """The class most models rank first, and how many do (ties: the first such class in the models' order)."""
    firsts = [ranked[0][0] for ranked in tops.values() if ranked]
    if not firsts:
        return None, 0
    best = max(dict.fromkeys(firsts), key=firsts.count)
    return best, firsts.count(best)


AGREE, TRUE = "background-color: #fff3bf", "color: #1a7f37; font-weight: bold"
"""Cell styles of the photo table: the class most models rank first; the true class (when it is known)."""


def photo_table(tops: dict[str, list], titles: dict[str, str] | None = None, true_name: str | None = None):
    """One image's top-k of every model as a table that fits a 1,600-px page: a column per method (its paper name),
    a row per rank, each cell the class name over its probability ("54.3%", never split across lines); the class
    most models rank first is highlighted, the true class (when known) in bold green."""
    import html
    titles = titles or {}
    best, _ = consensus(tops)
    k = max((len(r) for r in tops.values()), default=0)
    cells = {titles.get(run, run): [ranked[i] if i < len(ranked) else ("", np.nan) for i in range(k)]
             for run, ranked in tops.items()}
    frame = pd.DataFrame({c: [f"{html.escape(n)}<br><b>{100 * p:.1f}%</b>" if n else "" for n, p in v]
                          for c, v in cells.items()}, index=pd.RangeIndex(1, k + 1, name="rank"))
    names = pd.DataFrame({c: [n for n, _ in v] for c, v in cells.items()}, index=frame.index)
    style = names.map(lambda n: ";".join(s for s, on in ((AGREE, n == best), (TRUE, n == true_name)) if on and n))
    width = f"{max(90, min(150, 1400 // max(len(cells), 1)))}px"
    return (frame.style.apply(lambda _: style, axis=None)
            .set_table_styles([{"selector": "td, th.col_heading", "props": f"width: {width}; max-width: {width}; "
                                "white-space: normal; overflow-wrap: anywhere; font-size: 0.8em; vertical-align: top"}]))


def photo_notes(tops: dict[str, list], titles: dict[str, str] | None = None, true_name: str | None = None) -> list[str]:
    """What the photo table shows, in sentences: where the models agree, and the most confident top-1 beside the
    reminder that a softmax probability is a confidence score, not a calibrated chance of being right."""
    titles = titles or {}
    best, votes = consensus(tops)
    if best is None:
        return ["no model classified this image"]
    notes = [f"{votes} of {len(tops)} models rank '{best}' first (highlighted)"
             + (f"; the true class '{true_name}' is in bold green" if true_name else "") + "."]
    run, (name, prob) = max(((r, t[0]) for r, t in tops.items() if t), key=lambda x: x[1][1])
    verdict = "" if true_name is None else (" and right" if name == true_name else " and wrong")
    notes.append(f"Most confident: {titles.get(run, run)}, {100 * prob:.1f}% sure of '{name}'{verdict}. A confident "
                 "probability is not a calibrated one: a softmax score says how a model ranks the classes, not how "
                 "often it is right when it says that number (temperature, few-shot caches and fine-tuning all change "
                 "it); check calibration on validation images before trusting it.")
    return notes
