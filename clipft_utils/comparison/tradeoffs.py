"""The cost half of the comparison, from the tables: whether the compared rows trained on comparable budgets, which
step times can be ranked at all, and the trade-off figures (accuracy against counted compute; step time with its
spread; training memory by its accounted parts)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .tables import column, main_rows, numeric

BUDGET_FACTOR = 2.0
"""Rows whose step budget is more than this factor away from the median of the compared rows are named, with why."""

MEMORY_PARTS = {"parameters_mb": "parameters", "gradients_mb": "gradients", "optimizer_mb": "optimizer state",
                "activations_mb": "saved activations"}


def budget_check(table: pd.DataFrame, factor: float = BUDGET_FACTOR) -> list[str]:
    """Lines on the compared rows' step budgets: the median, and every row more than ``factor`` away from it with
    the rule that set its budget (and its note); rows without optimizer steps are named as such."""
    rows = table[column(table, "status").fillna("ok") == "ok"] if len(table) else table
    steps = pd.to_numeric(column(rows, "steps"), errors="coerce")
    with_steps = rows[steps > 0]
    if not len(with_steps):
        return ["No compared row took optimizer steps: nothing to compare budgets of."]
    median = float(steps[with_steps.index].median())
    lines = [f"Step budgets of the {len(with_steps)} rows that took optimizer steps: median {median:.0f} steps."]
    for r in with_steps.to_dict("records"):
        ratio = r["steps"] / median
        if ratio > factor or ratio < 1 / factor:
            note = f"; {r['budget_note']}" if isinstance(r.get("budget_note"), str) and r["budget_note"] else ""
            lines.append(f"{_name(r)}: {r['steps']:.0f} steps, {ratio:.2g}x the median — its budget: "
                         f"{r.get('budget') or 'not recorded'}{note}.")
    if len(lines) == 1:
        lines.append(f"Every one is within {factor:g}x of the median: their accuracies come from comparable budgets.")
    none = [f"{_name(r)} ({r.get('budget') or 'no steps'})" for r in rows[~(steps > 0)].to_dict("records")]
    if none:
        lines.append("Without optimizer steps: " + "; ".join(none) + ".")
    return lines


def _name(r: dict) -> str:
    """``method`` or ``method [variant]``."""
    variant = r.get("variant")
    return str(r["method"]) + (f" [{variant}]" if isinstance(variant, str) and variant else "")


def step_time_order(table: pd.DataFrame) -> list[str]:
    """Rows with a step time, fastest first, each pair of neighbours ranked only when their quartile ranges do not
    overlap (else said to be indistinguishable here); time depends on the machine and its load, FLOPs do not."""
    rows = numeric(table, "step_ms", "step_ms_q1", "step_ms_q3") if len(table) else table
    rows = rows[rows["step_ms"].notna()].sort_values("step_ms") if len(rows) else rows
    if len(rows) < 2:
        return ["Fewer than two rows have a step time: nothing to rank."]
    out = []
    for a, b in zip(rows.to_dict("records"), rows.iloc[1:].to_dict("records")):
        gap = f"{a['step_ms']:.0f} vs {b['step_ms']:.0f} ms"
        if a["step_ms_q3"] < b["step_ms_q1"]:
            out.append(f"{_name(a)} < {_name(b)}: {gap}, the quartile ranges apart "
                       f"({a['step_ms_q3']:.0f} < {b['step_ms_q1']:.0f})")
        else:
            out.append(f"{_name(a)} ≈ {_name(b)}: {gap}, but the quartile ranges overlap "
                       f"({a['step_ms_q1']:.0f}-{a['step_ms_q3']:.0f} and {b['step_ms_q1']:.0f}-"
                       f"{b['step_ms_q3']:.0f}): not ranked")
    return out


def memory_parts(df: pd.DataFrame, shots: Any = "auto") -> pd.DataFrame:
    """Methods x accounted training-memory parts (MB; mean over seeds) of the main rows."""
    main = main_rows(df, shots)
    rows = {}
    for method, group in main.groupby("method", sort=False):
        parts = [p for p in column(group, "memory_parts") if isinstance(p, dict)]
        values = {name: pd.to_numeric(pd.Series([p.get(k) for p in parts], dtype=object), errors="coerce").mean()
                  for k, name in MEMORY_PARTS.items()}
        if any(pd.notna(v) for v in values.values()):
            rows[method] = values
    from ..methods import names
    order = [m for m in names() if m in rows]
    return pd.DataFrame.from_dict(rows, orient="index").reindex(order)


# ----------------------------------------------------------------------------- figures
def plot_accuracy_vs_params(table: pd.DataFrame, label: str):
    """Test accuracy against trainable parameters (filled, log scale; zero-shot at 1) and, hollow, the parameters its
    model folder deploys where they differ (prefix-tuning trains an MLP, deploys only its output)."""
    from .figures import scatter
    return scatter(table, "trainable_params", "parameters (log scale): filled = trainable, hollow = deployed",
                   label, "Accuracy vs parameters: trained (filled) and deployed (hollow)", logx=True,
                   hollow="deployed_params")


def plot_accuracy_vs_compute(table: pd.DataFrame, label: str):
    """Test accuracy against counted training compute (TFLOPs, log scale); a method that trains nothing is drawn at a
    tenth of the smallest compute, at the left edge (its label says so)."""
    from .figures import scatter
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
    from .figures import _plt, method_colour, title
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
        ax.set_yticks(pos, [str(m) for m in rows["method"]])
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
    from .figures import _plt, title
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
        ax.set_yticks(pos, [str(m) for m in parts.index])
        ax.invert_yaxis()
        ax.set_xlim(0, 1.15 * float(left.max()))
        legend_outside(ax)
    ax.set_xlabel("training memory, accounted (MB): parameters + gradients + optimizer state + saved activations")
    ax.set_title(title("Training memory by accounting (the same on every device)", label), fontsize=9)
    return fig
