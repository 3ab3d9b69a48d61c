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

PALETTE = {
    "zero_shot": "#7f7f7f", "linear_probe": "#1f77b4", "tip_adapter": "#9ecae1", "tip_adapter_f": "#17becf",
    "bitfit": "#ff7f0e", "prefix_tuning": "#2ca02c", "coop": "#98df8a", "lora": "#d62728", "clip_lora": "#ff9896",
    "full_finetune": "#9467bd",
    "ensemble": "#8c564b", "lp_ft": "#e377c2", "wise_ft": "#bcbd22", "adapter_fusion": "#c5b0d5",
}
"""One colour per method id and per combination kind, in every figure of 02-07 (zero-shot: the grey of its lines)."""
SPARE_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252", "#bd9e39", "#ad494a",
                 "#a55194", "#6b6ecf", "#b5cf6b", "#e7ba52", "#d6616b", "#ce6dbd", "#3182bd")
"""Colours for any other method (a plug-in), picked by its name: never one of :data:`PALETTE`'s."""
COMBINATION_TITLES = {"ensemble": "Ensemble", "lp_ft": "LP→FT", "wise_ft": "WiSE-FT", "adapter_fusion": "Adapter fusion"}
"""The paper names of notebook 06's combinations (registered methods carry their own ``Method.title``)."""


def wrap_name(name: str, width: int = 24) -> str:
    """A class name wrapped onto lines of ``width`` characters (never truncated)."""
    return "\n".join(textwrap.wrap(str(name), width)) or str(name)


def unique_labels(names: Sequence[str], width: int = 24, ids: Sequence[int] | None = None) -> list[str]:
    """Full names wrapped to ``width``; labels that are still equal get their class index (``ids``) appended."""
    labels = [wrap_name(n, width) for n in names]
    ids = list(range(len(labels))) if ids is None else [int(i) for i in ids]
    counts = Counter(labels)
    return [f"{lab} (#{i})" if counts[lab] > 1 else lab for lab, i in zip(labels, ids)]


def method_title(method: str) -> str:
    """A method's paper name (its ``Method.title``: ``tip_adapter_f`` -> ``Tip-Adapter-F``), a combination's, else
    ``method`` as given."""
    from ..methods.base import REGISTRY
    from ..plugins import load
    load()
    if method in REGISTRY:
        return REGISTRY[method].title
    return COMBINATION_TITLES.get(method, method)


def method_colour(method: str, variant: Any = None) -> str:
    """The method's colour (:data:`PALETTE`; another method gets a spare colour chosen by its name, the same in
    every run); a ``variant`` gets a lighter or darker shade of its method's colour, chosen by the variant's name."""
    import zlib
    from matplotlib.colors import to_hex, to_rgb
    base = PALETTE.get(method) or SPARE_COLOURS[zlib.crc32(str(method).encode()) % len(SPARE_COLOURS)]
    if variant is None:
        return base
    shade = (-0.45, 0.45, -0.25, 0.3, -0.6, 0.6)[zlib.crc32(str(variant).encode()) % 6]
    rgb = np.asarray(to_rgb(base))
    return to_hex(rgb + (1 - rgb) * shade if shade > 0 else rgb * (1 + shade))


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
    """Fractions as percentages with as few decimals as shows every tick exactly (27.5 % stays 27.5 %, never 28 %)."""

    def __init__(self) -> None:
        super().__init__(1.0)

    def format_ticks(self, values: Sequence[float]) -> list[str]:
        return [f"{100 * v:.{tick_decimals(values)}f}%" for v in values]


def tick_decimals(values: Sequence[float], most: int = 4) -> int:
    """The fewest decimals (at most ``most``) that write every value (a fraction) exactly as a percentage."""
    shown = 100 * np.asarray(values, dtype=float)
    shown = shown[np.isfinite(shown)]
    tol = 1e-6 * max(1.0, float(np.abs(shown).max(initial=0)))
    for decimals in range(most + 1):
        if np.allclose(np.round(shown, decimals), shown, rtol=0, atol=tol):
            return decimals
    return most


def pct(value: Any, decimals: int = 1) -> str:
    """A fraction as the course writes every accuracy, in figures, tables and prints: ``0.2039`` -> ``20.4%``."""
    v = floats([value])[0]
    return f"{100 * v:.{decimals}f}%" if np.isfinite(v) else "—"


def percent_table(table: Any, columns: Sequence[str] | None = None, decimals: int = 1, missing: str | None = None) -> Any:
    """A DataFrame whose accuracy columns (fractions; ``columns``, default: every column whose name says top-1,
    top-5, acc or accuracy) are shown in percent, named "... (%)"; other columns unchanged. ``missing``: what an
    empty cell shows (e.g. "—" for the epoch-0 row's training loss), instead of NaN."""
    out = table.copy()
    picked = list(columns) if columns is not None else [
        c for c in out.columns if any(k in str(c).lower() for k in ("top-1", "top-5", "acc", "per-class", "share"))]
    for c in picked:
        out[c] = (100 * out[c].astype(float)).round(decimals)
    out = out.rename(columns={c: f"{c} (%)" for c in picked})
    return out if missing is None else out.astype(object).where(out.notna(), missing)


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
    """Value formatter for labels: ``41.2%`` for fractions (:func:`pct`), else three significant digits."""
    return pct if percent else (lambda v: f"{v:.3g}")


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


