"""Figure helpers shared by the notebooks; every one takes a ``title`` (use ``course.title(...)``) and returns the Figure."""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

CORRECT, WRONG = "#1a7f37", "#cf222e"


def _wrap(name: str, width: int = 24) -> str:
    """A class name wrapped onto lines of ``width`` characters."""
    return "\n".join(textwrap.wrap(name, width)) or name


def prediction_grid(images: np.ndarray, labels: Sequence[int], preds: Sequence[int], classnames: Sequence[str],
                    n: int = 16, cols: int = 8, title: str = "") -> Figure:
    """Images [N, H, W, 3] (uint8) with true and predicted names; green = right, red = wrong."""
    n = min(n, len(images))
    rows = max(1, int(np.ceil(n / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.9 * rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(np.asarray(images[i]))
        ok = int(labels[i]) == int(preds[i])
        ax.set_title(f"true: {_wrap(classnames[labels[i]])}\npred: {_wrap(classnames[preds[i]])}",
                     fontsize=6.5, color=CORRECT if ok else WRONG)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def per_class_bars(per_class_acc: Sequence[float], classnames: Sequence[str], k: int = 10, title: str = "") -> Figure:
    """The ``k`` best and ``k`` worst classes by accuracy, as two horizontal bar charts."""
    acc = np.asarray(per_class_acc, dtype=float)
    order = [i for i in np.argsort(acc, kind="stable") if np.isfinite(acc[i])]
    k = max(1, min(k, len(order) // 2 or 1))
    worst, best = order[:k], order[::-1][:k]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.42 * k + 1.6), sharex=True)
    for ax, idx, name, color in ((axes[0], best, "best", CORRECT), (axes[1], worst, "worst", WRONG)):
        pos = np.arange(len(idx))[::-1]  # numeric positions: equal names must not merge into one bar
        ax.barh(pos, acc[idx], color=color)
        ax.set_yticks(pos, [_wrap(classnames[i], 34) for i in idx], fontsize=6.5)
        ax.bar_label(ax.containers[0], labels=[f"{100 * a:.0f}%" for a in acc[idx]], fontsize=7, padding=2)
        ax.set_title(f"{k} {name} classes", fontsize=9)
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("accuracy")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def _histories(history: Sequence[Mapping] | Mapping[str, Sequence[Mapping]]) -> dict[str, Sequence[Mapping]]:
    """One history (list of epoch records) or ``{name: history}`` -> ``{name: history}``."""
    return dict(history) if isinstance(history, Mapping) else {"": history}


def training_curves(history: Sequence[Mapping] | Mapping[str, Sequence[Mapping]], title: str = "") -> Figure:
    """Training loss and validation top-1 per epoch (``engine.fit`` histories), one line per run."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, hist in _histories(history).items():
        epochs = [r["epoch"] for r in hist]
        ax_loss.plot(epochs, [r["train_loss"] for r in hist], marker=".", label=f"{name} train".strip())
        if any(r.get("val_loss") is not None for r in hist):
            ax_loss.plot(epochs, [r.get("val_loss") for r in hist], ls="--", label=f"{name} val".strip())
        ax_acc.plot(epochs, [r["val_acc"] for r in hist], marker=".", label=name or "val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def bar_compare(values: Mapping[str, float] | Mapping[str, Sequence[float]], title: str = "",
                ylabel: str = "test top-1", errors: Mapping[str, float] | None = None,
                percent: bool = True, series: Sequence[str] | None = None) -> Figure:
    """Bars of ``name -> value`` (or ``name -> [one value per series]``, grouped), each labelled with its value."""
    names = list(values)
    grouped = any(isinstance(v, (list, tuple, np.ndarray)) for v in values.values())
    data = np.array([np.atleast_1d(values[n]) for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(names) * data.shape[1]), 3.6))
    width = 0.8 / data.shape[1]
    for j in range(data.shape[1]):
        x = np.arange(len(names)) + (j - (data.shape[1] - 1) / 2) * width
        err = [errors.get(n, 0) for n in names] if errors and not grouped else None
        label = series[j] if series is not None and j < len(series) else None
        bars = ax.bar(x, data[:, j], width, yerr=err, capsize=3, label=label,
                      color=f"C{j}" if grouped else [f"C{i}" for i in range(len(names))])
        fmt = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3g}")
        ax.bar_label(bars, labels=[fmt(v) for v in data[:, j]], fontsize=8)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylabel(ylabel)
    if series is not None:
        ax.legend(fontsize=8)
    if percent:
        ax.set_ylim(0, min(1.08, max(0.05, float(np.nanmax(data))) * 1.15))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def metric_curve(x: Sequence[float], y: Mapping[str, Sequence[float]] | Sequence[float], title: str = "",
                 xlabel: str = "", ylabel: str = "validation top-1", logx: bool = False,
                 mark: float | None = None) -> Figure:
    """One or more ``y(x)`` lines (e.g. validation accuracy against C), with an optional vertical marker."""
    series = dict(y) if isinstance(y, Mapping) else {"": y}
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, ys in series.items():
        ax.plot(list(x)[:len(ys)], ys, marker="o", label=name or None)
    if mark is not None:
        ax.axvline(mark, color="grey", ls=":", label=f"chosen: {mark:g}")
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if any(series) or mark is not None:
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def table_figure(rows: Sequence[Sequence[Any]], columns: Sequence[str], title: str = "") -> Figure:
    """A small table drawn as a figure (for saving next to the plots)."""
    fig, ax = plt.subplots(figsize=(1.8 * len(columns) + 1, 0.3 * len(rows) + 1.0))
    ax.axis("off")
    tab = ax.table(cellText=[[str(c) for c in r] for r in rows], colLabels=list(columns), loc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
