"""The comparison's figures, drawn from the tables; the helpers they share with notebooks 01-06 live in ``plots``.

Every figure uses constrained layout (no tight-layout warnings), keeps legends outside the axes and survives empty
or non-numeric results with a "no results" note; bar positions are numeric (equal names never merge). matplotlib is
imported inside the functions, so that loading results and writing the summary (the runner) never needs it.
"""
from __future__ import annotations

import math
import textwrap
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..methods import names as method_names
from .tables import (COMBINATION_METHODS, TOP_K, borrowed_histories, display_name, column, numeric, combination_table,
                     learning_curves, main_rows, per_class_matrix, shots_table, summary_table, top_k,
                     zero_shot_val)

NO_RESULTS = "no results yet"
"""The note an empty figure shows."""


def title(text: str, label: str, width: int = 75) -> str:
    """A figure title with the label underneath (as ``Course.title``), wrapped to fit narrow figures."""
    return "\n".join([text, *textwrap.wrap(label, width)])


def _plt():
    """pyplot, imported when a figure is drawn."""
    import matplotlib.pyplot as plt
    return plt


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of methods that ran."""
    return table[column(table, "status") == "ok"] if len(table) else table


def method_colour(method: str) -> str:
    """The method's colour in every figure of the course (``plots.PALETTE``; a plug-in's is its own, by name)."""
    from ..plots import method_colour as colour
    return colour(method)


def method_title(method: str) -> str:
    """The method's paper name (``Method.title``), as every table and legend names it."""
    from ..plots import method_title as title_of
    return title_of(method)


def method_marker(method: str) -> str:
    """One marker shape per method, so that points at the same place stay apart in the legend's eyes."""
    names = method_names()
    return "osD^vP<>hp"[names.index(method) % 10] if method in names else "X"


def scatter(table: pd.DataFrame, x: str, xlabel: str, label: str, heading: str, logx: bool,
            hollow: str | None = None):
    """One point per method, named in a legend outside the axes (labels beside points overlap and leave the frame);
    ``hollow``: a second x column drawn as a hollow marker joined to the point where it differs."""
    from ..plots import empty_note, legend_outside
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    rows = numeric(_ok(table), x, "test_acc", "test_acc_std", *([hollow] if hollow else []))
    shown = rows[rows[x].notna() & rows["test_acc"].notna()] if len(rows) else rows
    if not len(shown):
        empty_note(ax, NO_RESULTS)
    for r in shown.to_dict("records"):
        xv = max(r[x], 1.0) if logx else r[x]
        err = 100 * r["test_acc_std"] if not pd.isna(r["test_acc_std"]) else None
        ax.errorbar([xv], [100 * r["test_acc"]], yerr=err, fmt=method_marker(r["method"]), ms=8, capsize=3, alpha=0.85,
                    color=method_colour(r["method"]),
                    label=method_title(r["method"]) + (" (0 trained: drawn at 1)" if logx and r[x] == 0 else ""))
        other = r.get(hollow) if hollow else None
        if other is not None and not pd.isna(other) and other != r[x]:
            ov = max(other, 1.0) if logx else other
            ax.plot([xv, ov], [100 * r["test_acc"]] * 2, color=method_colour(r["method"]), lw=0.8, alpha=0.6)
            ax.plot([ov], [100 * r["test_acc"]], method_marker(r["method"]), ms=8, mfc="none",
                    color=method_colour(r["method"]))
    missing = [method_title(str(m)) for m in column(rows, "method")[~rows.index.isin(shown.index)]] if len(rows) else []
    if logx and len(shown):
        ax.set_xscale("log")
    ax.set(xlabel=xlabel + (f"\n(not measured: {', '.join(missing)})" if missing else ""),
           ylabel="test accuracy (%)", title=title(heading, label))
    ax.grid(alpha=0.3)
    if len(shown):
        legend_outside(ax)
    return fig


# ----------------------------------------------------------------------------- the cost figures
def plot_accuracy_vs_params(table: pd.DataFrame, label: str):
    """Test accuracy against trainable parameters (filled, log scale; zero-shot at 1) and, hollow, the parameters its
    model folder deploys where they differ (prefix-tuning trains an MLP, deploys only its output)."""
    return scatter(table, "trainable_params", "parameters (log scale): filled = trainable, hollow = deployed",
                   label, "Accuracy vs parameters: trained (filled) and deployed (hollow)", logx=True,
                   hollow="deployed_params")


def plot_accuracy_vs_compute(table: pd.DataFrame, label: str):
    """Test accuracy against counted training compute (TFLOPs, log scale); a method that trains nothing is drawn at a
    tenth of the smallest compute, at the left edge (its label says so)."""
    rows = numeric(table, "train_tflops")
    positive = rows["train_tflops"][rows["train_tflops"] > 0] if len(rows) else pd.Series(dtype=float)
    if len(positive):
        rows["train_tflops"] = rows["train_tflops"].where(rows["train_tflops"] > 0, float(positive.min()) / 10)
    fig = scatter(rows, "train_tflops", "training compute, counted (TFLOPs, log scale; 0: drawn at the left edge)",
                  label, "Accuracy vs training compute (FLOPs counted: the same on every machine)", logx=False)
    if len(positive):
        fig.axes[0].set_xscale("log")
    return fig


def plot_step_time(table: pd.DataFrame, label: str):
    """Median step time per method with its quartile range; the title says that overlapping ranges are not ranked
    and a note under the axis names the overlapping neighbours."""
    from ..plots import empty_note
    from .tradeoffs import step_time_order
    plt = _plt()
    rows = numeric(table, "step_ms", "step_ms_q1", "step_ms_q3") if len(table) else table
    rows = rows[rows["step_ms"].notna()].sort_values("step_ms") if len(rows) else rows
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    if not len(rows):
        empty_note(ax, "no step times (runs of fewer than 20 timed steps report none)")
    else:
        pos = np.arange(len(rows))
        med = rows["step_ms"].to_numpy(float)
        err = np.vstack([med - rows["step_ms_q1"].to_numpy(float), rows["step_ms_q3"].to_numpy(float) - med])
        ax.barh(pos, med, xerr=err, capsize=4, color=[method_colour(m) for m in rows["method"]], alpha=0.8)
        ax.set_yticks(pos, [method_title(str(m)) for m in rows["method"]])
        ax.invert_yaxis()
        tied = [line.split(":")[0] for line in step_time_order(rows) if "≈" in line]
        ax.set_xlabel("ms per optimizer step (median; bars: quartiles)"
                      + (f"\nnot ranked (quartiles overlap): {'; '.join(tied)}" if tied else ""))
    ax.set_title(title("Step time (wall clock on this machine: rank only where the ranges are apart)", label),
                 fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return fig


def plot_training_memory(df: pd.DataFrame, label: str, shots: Any = "auto"):
    """Accounted training memory per method, stacked by part (parameters, gradients, optimizer state, saved
    activations); the same on every device."""
    from ..plots import empty_note, legend_outside
    from .tradeoffs import memory_parts
    plt = _plt()
    parts = memory_parts(df, shots)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), layout="constrained")
    if not len(parts):
        empty_note(ax, "no accounted training memory in the results")
    else:
        pos, left = np.arange(len(parts)), np.zeros(len(parts))
        for i, name in enumerate(parts.columns):
            values = parts[name].fillna(0.0).to_numpy(float)
            ax.barh(pos, values, left=left, color=f"C{i}", label=name)
            left += values
        for p, total in zip(pos, left):
            ax.annotate(f"{total:.1f}", (total, p), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(pos, [method_title(str(m)) for m in parts.index])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15 * float(left.max()))
        legend_outside(ax)
    ax.set_xlabel("training memory, accounted (MB): parameters + gradients + optimizer state + saved activations")
    ax.set_title(title("Training memory by accounting (the same on every device)", label), fontsize=9)
    return fig


def plot_accuracy_vs_shots(df: pd.DataFrame, label: str):
    """Test accuracy against training images per class: one line per method, mean ± std band over seeds,
    zero-shot (which trains nothing) as a horizontal line."""
    from ..plots import empty_note
    plt = _plt()
    table = shots_table(df)
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    curves = table[table["shots"].notna() & (table["method"] != "zero_shot")]
    for method, rows in curves.groupby("method", sort=False):
        rows, colour = rows.sort_values("shots"), method_colour(method)
        x, y, sd = rows["shots"].to_numpy(), 100 * rows["mean"].to_numpy(), 100 * rows["std"].fillna(0).to_numpy()
        ax.plot(x, y, marker="o", color=colour, label=f"{method_title(method)} ({int(rows['n_seeds'].min())} seed(s))")
        ax.fill_between(x, y - sd, y + sd, color=colour, alpha=0.15)
    zs = table[table["method"] == "zero_shot"]
    if len(zs):
        ax.axhline(100 * zs["mean"].mean(), color=method_colour("zero_shot"), ls="--", label="Zero-shot (no training)")
    logx = len(curves) > 0
    if not logx:
        empty_note(ax, "no trained runs at a shots value: nothing to draw a curve through")
    else:
        ax.set_xscale("log", base=2)
        ticks = sorted(curves["shots"].unique())
        ax.set_xticks(ticks, [f"{int(k)}" for k in ticks])
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set(xlabel="training images per class" + (" (log scale)" if logx else ""), ylabel="test accuracy (%)",
           title=title("Accuracy vs labelled images per class (mean ± std over seeds)", label))
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    return fig


def _recipe(rows: pd.DataFrame) -> str:
    """The recipe of these rows in words ("" when they record none)."""
    from ..plots import RECIPE_NAMES
    names = sorted({RECIPE_NAMES.get(str(r), str(r)) for r in column(rows, "recipe").dropna()})
    return "/".join(names)


def _curve_name(method: str, rows: pd.DataFrame, epochs: float | None) -> str:
    """A curve's legend entry: the method's paper name, its recipe when it records one, and its length."""
    what = [w for w in (_recipe(rows), f"{epochs:.0f} epochs" if epochs else "") if w]
    return method_title(method) + (f" ({', '.join(what)})" if what else "")


def plot_learning_curves(df: pd.DataFrame, label: str):
    """Validation accuracy of every trained method (best epoch starred); zero-shot as a dashed line; a row without
    epochs of its own (the probe's L-BFGS) as a dash-dotted line at its validation accuracy, "(L-BFGS, no epochs)".

    Runs of different lengths (a 50-epoch linear probe, 5-epoch fine-tuning) share a fraction-of-training axis.
    """
    from ..plots import FRACTION_LABEL, empty_note, best_marker_handle, legend_outside, mark_best, progress_axis
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.5), layout="constrained")
    curves, lines = learning_curves(df)
    main = main_rows(df)
    lengths = {m: float(c.index.max()) for m, c in curves.items()}
    fraction = progress_axis(list(lengths.values()))
    for method, curve in curves.items():
        x = curve.index.to_numpy(dtype=float)
        x = x / lengths[method] if fraction and lengths[method] else x
        y = 100 * curve.to_numpy(dtype=float)
        rows = main[(column(main, "method") == method) & (borrowed_histories(main) == "")]
        ax.plot(x, y, marker="o", ms=3, color=method_colour(method),
                label=_curve_name(method, rows, lengths[method] if fraction else None))
        trained = curve.index.to_numpy(dtype=float) > 0           # epoch 0 is the start, never the best epoch
        mark_best(ax, x[trained], y[trained], method_colour(method))
    for method, val in lines.items():
        recipe = _recipe(main[column(main, "method") == method]) or "its recipe"
        ax.axhline(100 * val, ls="-.", color=method_colour(method),
                   label=f"{method_title(method)} ({recipe}, no epochs)")
    zs = zero_shot_val(df)
    if zs is not None:
        ax.axhline(100 * zs, ls="--", color=method_colour("zero_shot"), label="Zero-shot (no training)")
    if not curves and not lines:
        empty_note(ax, "no learning curves yet")
    elif not fraction:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel=FRACTION_LABEL if fraction else "epoch (0: before training)", ylabel="validation accuracy (%)",
           title=title("Learning curves", label))
    ax.grid(alpha=0.3)
    legend_outside(ax, extra=[best_marker_handle()] if curves else [])
    return fig


def plot_per_class_heatmap(df: pd.DataFrame, label: str, classnames: Sequence[str] | None = None):
    """Per-class test accuracy, methods × classes (classes sorted by mean accuracy when there are many)."""
    from ..plots import empty_note, unique_labels
    plt = _plt()
    mat = per_class_matrix(df, classnames)
    many = mat.shape[1] > 30
    fig, ax = plt.subplots(figsize=(14 if many else max(6, 0.45 * mat.shape[1] + 2), 0.4 * max(len(mat), 2) + 3.6),
                           layout="constrained")
    values = mat.to_numpy(dtype=float)
    if not values.size or not np.isfinite(values).any():
        empty_note(ax, NO_RESULTS)
    else:
        im = ax.imshow(100 * values, aspect="auto", cmap="viridis", vmin=0, vmax=100)
        fig.colorbar(im, ax=ax, label="test accuracy (%)", fraction=0.03)
        ax.set_yticks(range(len(mat)), [method_title(str(m)) for m in mat.index])
        names = unique_labels([str(c) for c in mat.columns], 30)
        if many:
            step = max(1, len(names) // 25)
            ax.set_xticks(range(0, len(names), step), [names[i] for i in range(0, len(names), step)],
                          rotation=90, fontsize=7)
            ax.set_xlabel("class (sorted by mean accuracy over methods, every %d-th named)" % step)
        else:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
            ax.set_xlabel("class")
    ax.set_title(title("Per-class test accuracy", label))
    return fig


def curve_points(curve: Any, ykeys: Sequence[str] = ("test_acc", "acc", "top1", "accuracy")) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, accuracies) from a WiSE-FT ``curve`` field: list of dicts, list of pairs or dict of lists."""
    akeys = ("alpha", "alphas", "mix", "weight")
    pick = lambda d, keys: next((d[k] for k in keys if k in d), None)  # noqa: E731
    if isinstance(curve, dict):
        xs, ys = pick(curve, akeys), pick(curve, ykeys)
    elif isinstance(curve, list) and curve and isinstance(curve[0], dict):
        xs, ys = [pick(p, akeys) for p in curve], [pick(p, ykeys) for p in curve]
    elif isinstance(curve, list) and curve and isinstance(curve[0], (list, tuple)):
        xs, ys = [p[0] for p in curve], [p[1] for p in curve]
    else:
        xs, ys = [], []
    if xs is None or ys is None or len(xs) != len(ys):
        return np.array([]), np.array([])
    from ..plots import floats
    x, y = floats(list(xs)), floats(list(ys))       # a split not evaluated at an α (None) is left out
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _wise_panel(ax, df: pd.DataFrame) -> None:
    """WiSE-FT accuracy along the interpolation (test, validation, chosen α), in 06's validation/test colours."""
    from ..plots import TEST_COLOR, VAL_COLOR, empty_note, legend_outside
    wise = df[column(df, "method") == "wise_ft"] if len(df) else df
    rows = [r for r in wise.to_dict("records") if isinstance(r.get("curve"), (list, dict))]
    xs, ys = curve_points(rows[0]["curve"]) if rows else (np.array([]), np.array([]))
    vx, vy = curve_points(rows[0]["curve"], ("val_acc",)) if rows else (np.array([]), np.array([]))
    if len(xs) or len(vx):
        if len(vx):
            ax.plot(vx, 100 * vy, marker="o", color=VAL_COLOR, label="validation (chooses α)")
        ax.plot(xs, 100 * ys, marker="s", ls=":" if len(xs) < len(vx) else "-", color=TEST_COLOR,
                label="test" + (" (where evaluated)" if len(xs) < len(vx) else ""))
        alpha = rows[0].get("alpha")
        if isinstance(alpha, (int, float)) and np.isfinite(alpha):
            ax.axvline(alpha, color="grey", ls=":", label=f"chosen α = {alpha:g}")
        legend_outside(ax)
        ax.set(xlabel="α (0 = zero-shot weights, 1 = fine-tuned weights)", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
    else:
        empty_note(ax, "no WiSE-FT curve in the results")
    ax.set_title("WiSE-FT interpolation", fontsize=10)


def _combination_panel(ax, df: pd.DataFrame) -> None:
    """Ensembles and combinations (orange) next to the single methods (grey), each bar labelled."""
    from ..plots import empty_note, floats
    combo = combination_table(df)
    combo = combo[combo["method"].isin(COMBINATION_METHODS)] if len(combo) else combo
    main = _ok(summary_table(df, include_missing=False))
    names = [display_name(str(m), v) for m, v in zip(combo.get("method", []), combo.get("variant", []))]
    singles = [str(m) for m in column(main, "method")] if len(main) else []
    kinds = [str(m) for m in column(combo, "method")] if len(combo) else []
    accs = 100 * np.concatenate([floats(list(column(combo, "test_acc"))) if len(combo) else [],
                                 floats(list(column(main, "test_acc"))) if len(main) else []])
    if len(accs):
        pos = np.arange(len(accs))
        bars = ax.barh(pos, np.nan_to_num(accs), color=[method_colour(m) for m in kinds + singles])
        for bar in list(bars)[:len(names)]:
            bar.set_hatch("//")
        for p, a in zip(pos, accs):
            ax.annotate(f"{a:.1f}%" if np.isfinite(a) else "n/a", (np.nan_to_num(a), p), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(pos, names + [method_title(m) for m in singles])
        ax.invert_yaxis()
        top = np.nanmax(accs) if np.isfinite(accs).any() else 100.0
        ax.set_xlim(0, 1.15 * top or 100)
        ax.set_xlabel("test accuracy (%) — hatched: combinations, plain: single methods")
    else:
        empty_note(ax, "no ensemble rows in the results")
    ax.set_title("Ensembles and combinations", fontsize=10)


def plot_combinations(df: pd.DataFrame, label: str):
    """Left: WiSE-FT accuracy along the interpolation; right: ensembles vs their best member."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    _wise_panel(left, df)
    _combination_panel(right, df)
    fig.suptitle(title("Combining methods", label))
    return fig


def _top5_panel(ax, p: np.ndarray, classnames: Sequence[str], true_ids: set[int], run: str) -> None:
    """One run's min(5, C) most likely classes, most likely on top, full names, each bar labelled."""
    from ..plots import unique_labels
    best = np.argsort(-p, kind="stable")[:top_k(len(classnames))]
    pos = np.arange(len(best))[::-1]          # numeric positions: classes with equal labels never merge
    pct = 100 * p[best]
    ax.barh(pos, pct, color=["tab:green" if int(c) in true_ids else "tab:grey" for c in best])
    for v, y in zip(pct, pos):
        ax.annotate(f"{v:.0f}%", (v, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.set_yticks(pos, unique_labels([classnames[c] for c in best], 28, ids=best), fontsize=6.5)
    ax.set_xlim(0, 118)
    ax.set_xticks([0, 25, 50, 75, 100])
    ax.set_title(run, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)


def top_k_heading(n_classes: int) -> str:
    """``Top-5``, or with fewer classes ``Top-3 (all 3 classes)``."""
    k = top_k(n_classes)
    return f"Top-{k}" + (f" (all {n_classes} classes)" if k < TOP_K else "")


def plot_top5(image: np.ndarray, true_name: str, probs: dict[str, np.ndarray], index: int,
              classnames: Sequence[str], label: str, true_class: int | None = None):
    """The image and every run's top-min(5, C) probabilities side by side (true class in green)."""
    from ..plots import empty_note
    plt = _plt()
    n = max(len(probs), 1)
    cols, rows = min(3, n), math.ceil(n / 3)
    fig = plt.figure(figsize=(4.2 * cols + 2.6, 3.2 * rows + 1.4), layout="constrained")
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[0.8] + [1] * cols)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image)
    ax.set_title(f"test image {index}\ntrue: " + "\n".join(textwrap.wrap(true_name, 26)), fontsize=8)
    ax.axis("off")
    true_ids = {int(true_class)} if true_class is not None else {i for i, c in enumerate(classnames) if c == true_name}
    for k, (run, p) in enumerate(probs.items()):
        _top5_panel(fig.add_subplot(grid[k // cols, 1 + k % cols]), np.asarray(p[index], dtype=float),
                    classnames, true_ids, run)
    if not probs:
        ax = fig.add_subplot(grid[0, 1])
        ax.axis("off")
        empty_note(ax, "no saved predictions match these test images")
    fig.suptitle(title(f"{top_k_heading(len(classnames))} of each method (probability %, true class in green)",
                       label), fontsize=9)
    return fig

