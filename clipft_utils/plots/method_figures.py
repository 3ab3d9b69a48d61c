"""Figures of one method's own measurements: BitFit's bias changes, prefix-tuning's inference slowdown."""
from __future__ import annotations

from typing import Any

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .style import empty_note, floats, legend_outside, unique_labels

def slowdown_bars(table: Any, title: str = "", xlabel: str = "inference time with prefix / without",
                  measure: str = "measured time") -> Figure:
    """Inference-cost ratio per model (bars: ``measure``, e.g. measured time or counted FLOPs) with the token ratio
    (black tick) and 1.0 (no slowdown).

    ``table``: a DataFrame indexed by model name with columns ``ratio``, ``token ratio`` and ``measured``.
    """
    rows = list(table.iterrows()) if table is not None else []
    fig, ax = plt.subplots(figsize=(8, 0.75 * max(len(rows), 1) + 1.6), layout="constrained")
    get = lambda row, key: row[key] if key in row.index else None  # noqa: E731
    names = [f"{name} ({get(row, 'measured')})" if get(row, "measured") is not None else str(name)
             for name, row in rows]
    ratio = floats([get(row, "ratio") for _, row in rows])
    tokens = floats([get(row, "token ratio") for _, row in rows])
    y = np.arange(len(rows))[::-1]
    ax.barh(y, np.nan_to_num(ratio), 0.6, color="C0", label=f"{measure} ratio")
    if np.isfinite(tokens).any():
        ax.plot(tokens, y, ls="none", marker="|", ms=24, mew=2.5, color="k", label="token ratio (prefix / base)")
    ax.axvline(1.0, color="grey", lw=1, ls="--", label="1.0 = no slowdown")
    for r, t, yy in zip(ratio, tokens, y):   # inside the bar, so labels never run into the legend
        text = f"{measure} {r:.2f}×" if np.isfinite(r) else "not measured"
        text += f" · tokens {t:.2f}×" if np.isfinite(t) else ""
        ax.annotate(text, (0, yy), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8,
                    color="white" if np.isfinite(r) and r > 0 else "black")
    ax.set_yticks(y, unique_labels(names, 40), fontsize=8)
    top = np.nanmax(np.concatenate([ratio, tokens, [1.0]]))
    ax.set_xlim(0, 1.15 * top)
    ax.set_xlabel(xlabel)
    if not rows:
        empty_note(ax)
    legend_outside(ax, markerscale=0.5)
    ax.set_title(title, fontsize=9)
    return fig


def _bias_kind_panel(ax: Axes, per_kind: Any) -> float:
    """Bars of the mean RMS change per bias kind (first kind on top), each labelled; returns the largest value."""
    kinds, values = [str(k) for k in per_kind.index][::-1], floats(list(per_kind.values))[::-1]
    top = (float(np.nanmax(values)) if np.isfinite(values).any() else 0.0) or 1.0
    ax.barh(np.arange(len(kinds)), np.nan_to_num(values))
    for v, y in zip(values, range(len(kinds))):
        ax.annotate(f"{v:.3g}", (np.nan_to_num(v), y), xytext=(3, 0), textcoords="offset points", va="center",
                    fontsize=7)
    ax.set_yticks(np.arange(len(kinds)), kinds)
    ax.set(xlim=(0, 1.25 * top), xlabel="RMS change of the bias", title="per kind (mean over blocks)")
    ax.xaxis.set_major_locator(MaxNLocator(4))   # small numbers: few ticks, so that their labels never collide
    return top


def bias_change(per_kind: Any, per_block: Any, title: str = "") -> Figure:
    """BitFit's RMS bias change per kind (bars from 0) and per kind x block (a colour scale from 0, so that
    similar moves look similar). ``per_kind``: a Series indexed by kind; ``per_block``: a DataFrame kinds x blocks.
    """
    fig, (ax_kind, ax_block) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"width_ratios": [1, 1.4]},
                                            layout="constrained")
    top = _bias_kind_panel(ax_kind, per_kind)
    grid = np.asarray(per_block.values, dtype=float)   # kinds x blocks (a DataFrame: always 2-D)
    high = (float(np.nanmax(grid)) if np.isfinite(grid).any() else 0.0) or top
    im = ax_block.imshow(grid if grid.size else np.zeros((1, 1)), aspect="auto", cmap="viridis", vmin=0, vmax=high)
    ax_block.set(xticks=range(grid.shape[1]), xticklabels=[f"{float(c):g}" for c in per_block.columns],
                 yticks=range(grid.shape[0]), yticklabels=[str(k) for k in per_block.index], xlabel="block",
                 title="per block")
    fig.colorbar(im, ax=ax_block, label="RMS change (scale from 0)")
    fig.suptitle(title, fontsize=9)
    return fig


