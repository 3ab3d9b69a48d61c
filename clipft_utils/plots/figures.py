"""The figures every notebook shares: predictions, per-class bars, training curves, metric curves and grids, bars."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from .style import (CORRECT, FRACTION_LABEL, RECIPE_NAMES, WRONG, best_marker_handle, empty_note, floats,
                    legend_outside, mark_best, method_colour, method_title, percent_axis, progress_axis, split_color,
                    unique_labels, value_format, zoom_limits, zoom_note)

def prediction_grid(images: np.ndarray, labels: Sequence[int], preds: Sequence[int], classnames: Sequence[str],
                    n: int = 16, cols: int = 4, title: str = "", fontsize: float = 8.5) -> Figure:
    """Images [N, H, W, 3] (uint8) with full true and predicted names; green = right, red = wrong."""
    n = min(n, len(images))
    cols = max(1, min(cols, n or 1))
    rows = max(1, int(np.ceil(n / cols)))
    names = unique_labels(classnames, 30)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.9 * rows + 0.7), squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(np.asarray(images[i]))
        ok = int(labels[i]) == int(preds[i])
        ax.set_title(f"true: {names[int(labels[i])]}\npred: {names[int(preds[i])]}", fontsize=fontsize,
                     color=CORRECT if ok else WRONG, loc="left")
    if not n:
        empty_note(axes.flat[0], "no images")
    fig.suptitle(title, fontsize=9)
    return fig


def _tie_note(acc: np.ndarray, value: float) -> str:
    """`` (23 classes at 0%)`` when several classes share the value shown at the end of a panel."""
    tied = int(np.sum(np.isclose(acc[np.isfinite(acc)], value)))
    return f" ({tied} classes at {100 * value:.0f}%)" if tied > 1 else ""


def per_class_bars(per_class_acc: Sequence[float], classnames: Sequence[str], k: int = 10, title: str = "") -> Figure:
    """The ``k`` best and ``k`` worst classes by accuracy, as two horizontal bar charts (ties are counted)."""
    acc = floats(per_class_acc)
    order = [int(i) for i in np.argsort(acc, kind="stable") if np.isfinite(acc[i])]
    k = max(1, min(k, len(order) // 2 or 1))
    worst, best = order[:k], order[::-1][:k]
    names = unique_labels(classnames, 34)
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * k + 1.8), sharex=True, layout="constrained")
    panels = ((axes[0], best, "best", CORRECT, max), (axes[1], worst, "worst", WRONG, min))
    for ax, idx, name, color, extreme in panels:
        ax.set_xlim(0, 1.12)
        ax.set_xlabel("accuracy")
        percent_axis(ax.xaxis)
        if not idx:
            empty_note(ax, "no per-class accuracy")
            ax.set_title(f"{name} classes", fontsize=9)
            continue
        pos = np.arange(len(idx))[::-1]  # numeric positions: equal names must not merge into one bar
        vals = acc[idx]
        ax.barh(pos, vals, color=color)
        zero = vals <= 0
        if zero.any():
            ax.plot(vals[zero], pos[zero], ls="none", marker="o", ms=7, color=color, clip_on=False)  # 0 stays visible
        ax.set_yticks(pos, [names[i] for i in idx], fontsize=7.5)
        for v, y in zip(vals, pos):
            ax.annotate(f"{100 * v:.0f}%", (v, y), xytext=(7, 0), textcoords="offset points", va="center", fontsize=7.5)
        ax.set_title(f"{len(idx)} {name} class{'es' * (len(idx) != 1)}{_tie_note(acc, extreme(vals))}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return fig


def _histories(history: Sequence[Mapping] | Mapping[str, Sequence[Mapping]]) -> dict[str, Sequence[Mapping]]:
    """One history (list of epoch records) or ``{name: history}`` -> ``{name: history}``."""
    return dict(history) if isinstance(history, Mapping) else {"": history}


def training_curves(history: Sequence[Mapping] | Mapping[str, Sequence[Mapping]], title: str = "",
                    baselines: Mapping[str, float] | None = None, colors: Mapping[str, Any] | None = None) -> Figure:
    """Training loss and validation top-1 (``engine.fit`` histories), one colour per run, best epoch starred.

    A history's epoch-0 record (the model before any training) is the curve's first point: the jump from the start
    shows. Runs of different lengths are drawn against the fraction of training (epoch / epochs run);
    ``baselines`` (``{"zero-shot head": 0.21}``) become dotted horizontal lines on the accuracy panel. ``colors``:
    a colour per run name (default: the method palette for a method's id or title, else C0, C1, ...). A loss far
    above the others' is left off its axis, and the legend says so.
    """
    runs = {name: list(hist or []) for name, hist in _histories(history).items()}
    epochs = {name: floats([r.get("epoch") for r in hist]) for name, hist in runs.items()}
    lengths = {name: float(np.nanmax(e)) if np.isfinite(e).any() else 0.0 for name, e in epochs.items()}
    fraction = progress_axis(list(lengths.values()))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    losses = {}
    for i, (name, hist) in enumerate(runs.items()):
        x = epochs[name] / lengths[name] if fraction and lengths[name] else epochs[name]
        tag = f"{name} ({lengths[name]:.0f} ep)" if fraction else name
        color = (colors or {}).get(name) or run_colour(name, i)
        losses[name] = (floats([r.get("train_loss") for r in hist]), floats([r.get("val_loss") for r in hist]))
        ax_loss.plot(x, losses[name][0], marker=".", color=color, label=tag or "train")
        if np.isfinite(losses[name][1]).any():
            ax_loss.plot(x, losses[name][1], ls="--", color=color, label=None if tag else "val")
        val = floats([r.get("val_acc") for r in hist])
        ax_acc.plot(x, val, marker=".", color=color, label=tag or "val")
        trained = epochs[name] > 0                      # the star marks a trained epoch, never the start
        mark_best(ax_acc, x[trained], val[trained], color)
    for j, (name, value) in enumerate((baselines or {}).items()):
        if np.isfinite(floats([value])[0]):
            color = run_colour(name, len(runs) + j, "grey" if len(baselines) == 1 else None)
            ax_acc.axhline(float(value), ls=":", color=color, label=name)
    xlabel = FRACTION_LABEL if fraction else "epoch"
    ax_loss.set(xlabel=xlabel, ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel=xlabel, ylabel="top-1", title="validation accuracy")
    percent_axis(ax_acc.yaxis, cap=True)
    if not fraction:
        for ax in (ax_loss, ax_acc):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))   # one epoch: one tick
    trained = any(len(h) for h in runs.values())
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if not trained:
            empty_note(ax, "no training history")
    styles = [Line2D([], [], color="grey", marker=".", label="train"),
              Line2D([], [], color="grey", ls="--", label="val")]
    styles += _clip_outlier_loss(ax_loss, losses)
    legend_outside(ax_loss, extra=styles if any(runs) and trained else [])
    legend_outside(ax_acc, extra=[best_marker_handle()] if trained else [])
    fig.suptitle(title, fontsize=9)
    return fig


def run_colour(name: str, i: int, other: str | None = None) -> str:
    """A run's colour: the palette's for a method id or its title (``LoRA``, ``Linear probe (L-BFGS)``), else
    ``other`` or ``C<i>``."""
    from .style import PALETTE
    by_title = {method_title(m): m for m in PALETTE}
    method = name if name in PALETTE else by_title.get(str(name).split(" (")[0])
    return method_colour(method) if method else other or f"C{i}"


def _clip_outlier_loss(ax: Axes, losses: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[Line2D]:
    """Cap the loss axis when one run's loss is over twice every other's (it would squash their curves): the axis
    stops above the others, and a legend entry names the run and its largest loss."""
    peaks = {n: float(np.nanmax(np.r_[a[np.isfinite(a)], b[np.isfinite(b)]])) for n, (a, b) in losses.items()
             if np.isfinite(np.r_[a, b]).any()}
    if len(peaks) < 2:
        return []
    ranked = sorted(peaks.items(), key=lambda kv: -kv[1])
    (top, high), rest = ranked[0], ranked[1][1]
    if high <= 2 * rest:
        return []
    ax.set_ylim(0, 1.15 * rest)
    return [Line2D([], [], color="none", label=f"{top}: loss up to {high:.3g}, off the axis")]


def _own_history(row: Mapping) -> list:
    """The row's per-epoch history with validation accuracy, if it is the row's own recipe's (else [])."""
    hist = row.get("history") or []
    from ..results import borrowed_history
    borrowed = borrowed_history(row.get("history_of"), row.get("recipe"))
    ok = isinstance(hist, list) and hist and isinstance(hist[0], Mapping) and "val_acc" in hist[0]
    return list(hist) if ok and not borrowed else []


def curves_and_lines(rows: Mapping[str, Mapping]) -> tuple[dict[str, list], dict[str, float]]:
    """Result rows (``{method: row}``) as :func:`training_curves` inputs: the histories of the rows' own recipes,
    and the validation accuracy of rows without epochs (zero-shot, the L-BFGS probe) as horizontal lines.

    A row that keeps another recipe's history (the probe's L-BFGS row keeps its AdamW run's) is drawn as its own
    recipe's line, never as that curve; the legend names the recipe.
    """
    curves, lines = {}, {}
    for method, row in rows.items():
        recipe = RECIPE_NAMES.get(row.get("recipe"), row.get("recipe"))
        hist, name = _own_history(row), method_title(method)
        if hist:
            curves[f"{name} ({recipe})" if recipe else name] = hist
        elif np.isfinite(floats([row.get("val_acc")])[0]):
            lines[f"{name} ({recipe}, no epochs)" if recipe else f"{name} (no epochs)"] = float(row["val_acc"])
    return curves, lines


def metric_curve(x: Sequence[float], y: Mapping[str, Sequence[float]] | Sequence[float], title: str = "",
                 xlabel: str = "", ylabel: str = "validation top-1", logx: bool = False,
                 mark: float | None = None, percent: bool = True) -> Figure:
    """One or more ``y(x)`` lines (e.g. validation accuracy against C), with an optional vertical marker.

    ``percent``: the values are fractions, shown as %. Series named validation / test get the split colours.
    """
    series = dict(y) if isinstance(y, Mapping) else {"": y}
    fig, ax = plt.subplots(figsize=(6.5, 3.6), layout="constrained")
    xs = floats(list(x))
    for i, (name, ys) in enumerate(series.items()):
        ys = floats(list(ys))
        ax.plot(xs[:len(ys)], ys[:len(xs)], marker="o", label=name or None, color=split_color(name, f"C{i}"))
    if mark is not None:
        ax.axvline(mark, color="grey", ls=":", label=f"chosen: {mark:g}")
    if logx and (xs[np.isfinite(xs)] > 0).any():
        ax.set_xscale("log")
    if not np.isfinite(xs).any():
        empty_note(ax)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if percent:
        percent_axis(ax.yaxis, cap=True)
    ax.grid(alpha=0.3)
    legend_outside(ax)
    ax.set_title(title, fontsize=9)
    return fig


def value_grid(values: Any, rows: Sequence[float], cols: Sequence[float], title: str = "", ylabel: str = "",
               xlabel: str = "", mark: tuple[float, float] | None = None, percent: bool = True) -> Figure:
    """A heatmap of ``values[i, j]`` (e.g. validation top-1 for every (β, α) of a grid search), each cell labelled;
    ``mark``: the chosen (row value, column value), outlined in red (say so in the title)."""
    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.2 + 0.42 * len(rows)), layout="constrained")
    image = ax.imshow(values, cmap="viridis", aspect="auto", origin="lower")
    fmt = value_format(percent)
    middle = np.nanmean(values) if np.isfinite(values).any() else 0.0
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, fmt(values[i, j]), ha="center", va="center", fontsize=7,
                    color="black" if values[i, j] > middle else "white")
    if mark is not None and mark[0] in list(rows) and mark[1] in list(cols):
        i, j = list(rows).index(mark[0]), list(cols).index(mark[1])
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec=WRONG))
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols])
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    ax.set(xlabel=xlabel, ylabel=ylabel)
    bar = fig.colorbar(image, ax=ax, shrink=0.9)
    if percent:
        percent_axis(bar.ax.yaxis)
    ax.set_title(title, fontsize=9)
    return fig


def lr_schedule(lrs: Mapping[str, float], schedule: Any, steps_per_epoch: int, epochs: int, title: str = "") -> Figure:
    """Each parameter group's learning rate over training: its peak ``lrs[name]`` times ``schedule(step)`` (log axis)."""
    steps = np.arange(epochs * steps_per_epoch)
    fig, ax = plt.subplots(figsize=(6.5, 3.4), layout="constrained")
    for name, lr in lrs.items():                   # one line per group (per depth with layer-wise decay)
        ax.plot(steps / steps_per_epoch, [lr * schedule(s) for s in steps], label=f"{name} (peak {lr:.1e})")
    ax.set(xlabel="epoch", ylabel="learning rate", yscale="log")
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def label_points(ax: Axes, x: Sequence[float], y: Sequence[float], labels: Sequence[str]) -> None:
    """A label centred above each point, with margins so that no label reaches the frame."""
    for xx, yy, text in zip(floats(list(x)), floats(list(y)), labels):
        if np.isfinite(xx) and np.isfinite(yy):
            ax.annotate(text, (xx, yy), xytext=(0, 6), textcoords="offset points", ha="center", va="bottom",
                        fontsize=8)
    ax.margins(x=0.1, y=0.18)


def bar_compare(values: Mapping[str, float] | Mapping[str, Sequence[float]], title: str = "",
                ylabel: str = "test top-1", errors: Mapping[str, float] | None = None,
                percent: bool = True, series: Sequence[str] | None = None, zoom: bool = False,
                colors: Sequence[Any] | None = None) -> Figure:
    """Bars of ``name -> value`` (or ``name -> [one value per series]``, grouped), each labelled with its value.

    ``zoom=True`` zooms the value axis to the data range (with a note that it does not start at 0). Ungrouped bars
    take ``colors`` (one per name; default: the method palette for method ids and titles, else C0, C1, ...).
    """
    names = list(values)
    grouped = any(isinstance(v, (list, tuple, np.ndarray)) for v in values.values())
    width_n = max((len(np.atleast_1d(values[n])) for n in names), default=1)
    data = np.full((len(names), width_n), np.nan)
    for i, n in enumerate(names):
        row = floats(values[n])
        data[i, :len(row)] = row
    err = np.array([floats([(errors or {}).get(n, 0)])[0] for n in names]) if errors and not grouped else None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) * width_n + 1.5), 3.8), layout="constrained")
    if not names or not np.isfinite(data).any():
        empty_note(ax)
    fmt = value_format(percent)
    width = 0.8 / width_n
    for j in range(width_n):
        x = np.arange(len(names)) + (j - (width_n - 1) / 2) * width
        label = series[j] if series is not None and j < len(series) else None
        bars = ax.bar(x, np.nan_to_num(data[:, j]), width, yerr=err, capsize=3, label=label,
                      color=split_color(label or "", f"C{j}") if grouped else
                      list(colors or [run_colour(n, i) for i, n in enumerate(names)]))
        ax.bar_label(bars, labels=[fmt(v) if np.isfinite(v) else "n/a" for v in data[:, j]], fontsize=8)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    e = np.nan_to_num(err) if err is not None else 0
    low, high, zoomed = zoom_limits((data - np.atleast_2d(e).T).ravel() if err is not None else data.ravel(),
                                    (data + np.atleast_2d(e).T).ravel() if err is not None else data.ravel())
    if zoom and zoomed:
        ax.set_ylim(low, high)
        ylabel = f"{ylabel}\n({zoom_note(low, percent)})"
    elif percent and np.isfinite(data).any():
        ax.set_ylim(0, min(1.08, max(0.05, float(np.nanmax(data))) * 1.15))
    ax.set_ylabel(ylabel)
    if percent:
        percent_axis(ax.yaxis)
    legend_outside(ax)
    ax.set_title(title, fontsize=9)
    return fig


def bar_frame(table: Any, title: str = "", ylabel: str = "test top-1", percent: bool = True) -> Figure:
    """:func:`bar_compare` of a DataFrame: a group of bars per row, a series per column (e.g. base / novel x towers)."""
    return bar_compare({str(k): list(r) for k, r in table.iterrows()}, series=[str(c) for c in table.columns],
                       ylabel=ylabel, title=title, percent=percent)


def _series(values: Sequence[float] | Mapping[str, Sequence[float]],
            errors: Sequence[float] | Mapping[str, Sequence[float]] | None) -> tuple[dict, dict]:
    """``{series: float array}`` and matching error arrays (0 where none) from one sequence or a mapping."""
    series = ({str(k): floats(list(v)) for k, v in values.items()} if isinstance(values, Mapping)
              else {"": floats(list(values))})
    if not isinstance(errors, Mapping):
        errors = {next(iter(series)): errors} if errors is not None else {}
    errs = {k: np.nan_to_num(floats(list(errors[k]))) if errors.get(k) is not None else np.zeros(len(v))
            for k, v in series.items()}
    return series, errs


def ranked_bars(names: Sequence[str], values: Sequence[float] | Mapping[str, Sequence[float]],
                errors: Sequence[float] | Mapping[str, Sequence[float]] | None = None, title: str = "",
                xlabel: str = "top-1", percent: bool = True, sort: bool = True, zoom: bool = True) -> Figure:
    """Horizontal bars, one row per name (best of the first series on top), every bar labelled with its value.

    ``values`` is one sequence or ``{series: sequence}`` (e.g. ``{"validation": ..., "test": ...}``: the first
    series is drawn first in each row and ranks the rows). The value axis is zoomed to the data range, with a
    note saying that it does not start at 0.
    """
    series, errs = _series(values, errors)
    names = [str(n) for n in names]
    first = next(iter(series.values()))
    order = np.argsort(-first, kind="stable") if sort else np.arange(len(names))
    s = len(series)
    fig, ax = plt.subplots(figsize=(7.5, 0.15 * len(names) * s + 0.1 * len(names) + 1.8), layout="constrained")
    lows = np.concatenate([v - errs[k] for k, v in series.items()])
    highs = np.concatenate([v + errs[k] for k, v in series.items()])
    low, high, zoomed = zoom_limits(lows, highs) if zoom else (0.0, 0.0, False)
    low = low if zoomed else 0.0
    fmt, height = value_format(percent), 0.8 / s
    y0 = np.arange(len(names))[::-1].astype(float)
    for j, (name, v) in enumerate(series.items()):
        y = y0 + 0.4 - height * (j + 0.5)
        vals, e = v[order], errs[name][order]
        ax.barh(y, np.nan_to_num(vals), height, xerr=e if e.any() else None, capsize=2,
                color=split_color(name, f"C{j}"), label=name or None)
        for val, ee, yy in zip(vals, e, y):
            ok = np.isfinite(val)
            ax.annotate(fmt(val) if ok else "n/a", (val + ee if ok else low, yy), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(y0, unique_labels([names[i] for i in order], 40), fontsize=8)
    if not len(names) or not np.isfinite(lows).any():
        empty_note(ax)
    elif zoomed:
        ax.set_xlim(low, high)
    else:
        ax.set_xlim(0, float(np.nanmax(highs)) * 1.15 or 1.0)
    ax.set_xlabel(f"{xlabel} ({zoom_note(low, percent)})" if zoomed else xlabel)
    if percent:
        percent_axis(ax.xaxis)
    ax.grid(axis="x", alpha=0.3)
    legend_outside(ax)
    ax.set_title(title, fontsize=9)
    return fig


def table_figure(rows: Sequence[Sequence[Any]], columns: Sequence[str], title: str = "") -> Figure:
    """A small table drawn as a figure (for saving next to the plots)."""
    fig, ax = plt.subplots(figsize=(1.8 * len(columns) + 1, 0.3 * len(rows) + 1.0), layout="constrained")
    ax.axis("off")
    if rows and columns:
        tab = ax.table(cellText=[[str(c) for c in r] for r in rows], colLabels=list(columns), loc="center")
        tab.auto_set_font_size(False)
        tab.set_fontsize(8)
    else:
        empty_note(ax)
    ax.set_title(title, fontsize=9)
    return fig
