"""The cost half of the comparison, from the tables: whether the compared rows trained on comparable budgets, which
step times can be ranked at all, and the accounted parts of each method's training memory (the figures drawn from
them are in ``figures``)."""
from __future__ import annotations

from typing import Any

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
    """The row's paper name, ``Title [variant]`` (as the tables show it)."""
    from .tables import display_name
    return display_name(str(r["method"]), r.get("variant"))


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
