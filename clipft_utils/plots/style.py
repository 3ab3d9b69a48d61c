"""The course's figure style: colours, labels, axes in percent, zoomed axes, legends outside the data."""
from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

CORRECT, WRONG = "#1a7f37", "#cf222e"
VAL_COLOR, TEST_COLOR = "tab:blue", "tab:orange"   # validation and test, in every figure that shows both
FRACTION_LABEL = "fraction of training (epoch / epochs run)"
RECIPE_NAMES = {"torch": "AdamW", "sklearn": "L-BFGS"}   # the linear probe's two recipes, as the legends name them


def wrap_name(name: str, width: int = 24) -> str:
    """A class name wrapped onto lines of ``width`` characters (never truncated)."""
    return "\n".join(textwrap.wrap(str(name), width)) or str(name)


def unique_labels(names: Sequence[str], width: int = 24, ids: Sequence[int] | None = None) -> list[str]:
    """Full names wrapped to ``width``; labels that are still equal get their class index (``ids``) appended."""
    labels = [wrap_name(n, width) for n in names]
    ids = list(range(len(labels))) if ids is None else [int(i) for i in ids]
    counts = Counter(labels)
    return [f"{lab} (#{i})" if counts[lab] > 1 else lab for lab, i in zip(labels, ids)]


def floats(values: Any) -> np.ndarray:
    """Any sequence of numbers / None / NaN / objects as a float array (non-numbers become NaN)."""
    out = []
    for v in np.atleast_1d(np.asarray(values if values is not None else [], dtype=object)).ravel():
        try:
            out.append(float(v) if v is not None else np.nan)
        except (TypeError, ValueError):
            out.append(np.nan)
    return np.asarray(out, dtype=float)


def empty_note(ax: Axes, text: str = "no results") -> None:
    """A grey note in the middle of an axes that has nothing to show."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def legend_outside(ax: Axes, fontsize: float = 8, extra: Sequence[Any] = (), **kw: Any) -> None:
    """The axes' legend (plus ``extra`` handles) to the right of it, where it cannot cover data."""
    handles, labels = ax.get_legend_handles_labels()
    handles, labels = handles + list(extra), labels + [h.get_label() for h in extra]
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize=fontsize, **kw)


def split_color(name: str, default: Any) -> Any:
    """:data:`VAL_COLOR` for a series named "val…"/"validation…", :data:`TEST_COLOR` for "test…", else ``default``."""
    low = str(name).lower()
    return VAL_COLOR if low.startswith("val") else TEST_COLOR if low.startswith("test") else default


class TickPercent(PercentFormatter):
    """Fractions as percentages with as few decimals as the tick spacing needs (never two equal labels)."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        steps = np.diff(np.asarray(values, dtype=float))
        step = 100 * float(np.min(np.abs(steps[steps != 0]))) if (steps != 0).any() else 100.0
        decimals = max(0, int(np.ceil(-np.log10(step) - 1e-9)))
        return [f"{100 * v:.{decimals}f}%" for v in values]


def percent_axis(axis: Any, cap: bool = False) -> None:
    """Show fractions (0..1) on this x or y axis as percentages.

    ``cap``: when the data stop at 100 %, the axis stops just above it (no ticks at 102 %, 104 %, ...); call it
    after everything is drawn.
    """
    axis.set_major_formatter(TickPercent())
    ax = axis.axes
    is_y = axis is ax.yaxis
    low, high = ax.get_ylim() if is_y else ax.get_xlim()
    top = ax.dataLim.y1 if is_y else ax.dataLim.x1
    if cap and high > 1.0 >= top and low < 1.0:
        (ax.set_ylim if is_y else ax.set_xlim)(low, 1.0 + 0.15 * (1.0 - low))


def value_format(percent: bool):
    """Value formatter for labels: ``41.2%`` for fractions, else three significant digits."""
    return (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3g}")


def zoom_limits(lows: Sequence[float], highs: Sequence[float]) -> tuple[float, float, bool]:
    """Axis limits around the data range (``lows`` = values - errors, ``highs`` = values + errors); True if > 0."""
    lo, hi = floats(lows), floats(highs)
    lo, hi = lo[np.isfinite(lo)], hi[np.isfinite(hi)]
    if not len(lo) or not len(hi):
        return 0.0, 1.0, False
    lo_v, hi_v = float(lo.min()), float(hi.max())
    span = hi_v - lo_v or abs(hi_v) * 0.05 or 1e-3
    low = lo_v - 0.5 * span
    return (max(low, 0.0), hi_v + 0.3 * span, low > 0)


def zoom_note(low: float, percent: bool) -> str:
    """The visible note on a zoomed axis."""
    return f"axis starts at {value_format(percent)(low)}, not at 0"


def progress_axis(lengths: Sequence[float]) -> bool:
    """True when runs of different lengths are compared: plot against the fraction of training, not epochs."""
    return len({float(n) for n in lengths if n}) > 1


def mark_best(ax: Axes, x: Sequence[float], y: Sequence[float], color: Any) -> None:
    """A star on the highest point of one curve (its best epoch)."""
    ys = floats(y)
    if np.isfinite(ys).any():
        i = int(np.nanargmax(ys))
        ax.plot([floats(x)[i]], [ys[i]], marker="*", ms=12, color=color, mec="k", mew=0.6, ls="none", zorder=4,
                clip_on=False)


def best_marker_handle() -> Line2D:
    """The legend entry for :func:`mark_best`."""
    return Line2D([], [], marker="*", ms=10, color="w", mfc="grey", mec="k", mew=0.6, ls="none", label="best epoch")


