"""The recommender: the course's decision tree applied to what this run measured and counted: accuracy on validation,
training memory by accounting, training compute in FLOPs, parameters. Its budgets are the table's own numbers."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .tables import (column, count_text, is_main, number_text, shots_of, default_shots, is_standin, ordering, shots_table,
                     summary_table)

NEEDS = ("best", "good", "cheap")
SMALL_GPU_MB = 8 * 1024          # the course's rule of thumb: "GPU memory < 8 GB -> BitFit or linear probe"
GOOD_ENOUGH_POINTS = 2.0         # need="good": within this many accuracy points of the best that fits
SHARED_BACKBONE_PERCENT = 5.0    # tasks > 1: a method "shares the backbone" if it trains <= this % per task


@dataclass
class Recommendation:
    """The method to use and why, citing this run's measurements."""

    method: str | None
    reasons: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([f"Recommendation: {self.method}", *(f"  - {r}" for r in self.reasons)])


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _rule_of_thumb(memory_budget_mb: float, need: str, tasks: int, have_data: bool) -> Recommendation:
    """The course's decision tree when nothing was measured yet."""
    if not have_data:
        method, why = "zero_shot", "no labelled data → zero-shot"
    elif memory_budget_mb < SMALL_GPU_MB:
        method, why = ("linear_probe" if need == "cheap" else "bitfit"), "GPU memory < 8 GB → BitFit or linear probe"
    elif tasks > 1:
        method, why = "lora", "many tasks → LoRA (one shared backbone, a small adapter per task)"
    else:
        method, why = {"best": "full_finetune", "good": "lora", "cheap": "linear_probe"}[need], f"need={need!r}"
    return Recommendation(method, [f"Nothing measured in this run yet: rule of thumb only ({why}). "
                                   "Run the method notebooks to base this on measurements."])


def _check_request(memory_budget_mb: float, need: str, tasks: int) -> None:
    from ..errors import ConfigError
    if need not in NEEDS:
        raise ConfigError(f"need must be one of {NEEDS}, got {need!r}.")
    if not isinstance(memory_budget_mb, (int, float)) or not memory_budget_mb > 0:
        raise ConfigError(f"memory_budget_mb must be a positive number, got {memory_budget_mb!r}.")
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ConfigError(f"tasks must be a whole number >= 1, got {tasks!r}.")


MEMORY_DIGITS = 1
"""The table shows train_memory_mb to 0.1 MB; the recommender compares and names budgets at that same precision."""


def table_memory(table: pd.DataFrame) -> pd.Series:
    """Each row's training memory as the table shows it (accounted, rounded to 0.1 MB; NaN: trains nothing)."""
    return pd.to_numeric(column(table, "train_memory_mb"), errors="coerce").round(MEMORY_DIGITS)


def _fits(table: pd.DataFrame, budget: float) -> tuple[pd.DataFrame, list[str]]:
    """Methods whose accounted training memory fits the budget (a method that trains nothing always fits)."""
    mem = table_memory(table)
    ok = (mem <= budget) | (mem.isna() & (pd.to_numeric(column(table, "steps"), errors="coerce") == 0))
    show = lambda m, v: f"{m} ({'trains nothing' if pd.isna(v) else f'{v:.1f} MB'})"  # noqa: E731
    fit = [show(m, v) for m, v in zip(table["method"][ok], mem[ok])]
    out = [show(m, v) for m, v in zip(table["method"][~ok], mem[~ok])]
    reasons = [f"Memory budget {memory_str(budget)}: the accounted training memory fits for {', '.join(fit) or 'none'}"
               + (f"; too big or not counted: {', '.join(out)}." if out else ".")]
    return table[ok], reasons


def memory_str(mb: float) -> str:
    """``6.0 GB`` or ``304.2 MB`` (the table's precision)."""
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.{MEMORY_DIGITS}f} MB"


def _share_backbone(cand: pd.DataFrame, tasks: int) -> tuple[pd.DataFrame, list[str]]:
    """With several tasks keep the methods whose model folder (what each task stores) is a small part of the model."""
    stored = pd.to_numeric(column(cand, "deployed_params"), errors="coerce").fillna(0.0)
    base = pd.to_numeric(column(cand, "base_params"), errors="coerce")
    pct = (100 * stored / base).fillna(0.0)
    keep, dropped = cand[pct <= SHARED_BACKBONE_PERCENT], cand[pct > SHARED_BACKBONE_PERCENT]
    reasons = [f"{tasks} tasks → prefer one shared frozen backbone plus a small per-task part "
               f"(the course's rule: many tasks → LoRA); what a task stores is its model folder (deployed_params)."]
    for method, n, p in zip(dropped["method"], stored[dropped.index], pct[dropped.index]):
        reasons.append(f"{method} deploys {p:.1f}% of the model: {tasks} tasks would store "
                       f"{count_text(n * tasks)} parameters, so it is set aside.")
    return (keep if len(keep) else cand), reasons


def _pick(cand: pd.DataFrame, need: str) -> tuple[pd.Series, list[str]]:
    """Choose by the need: best accuracy, good-enough for the fewest parameters, or cheapest to train.

    Accuracy is compared on validation (the course's rule: test never chooses); test accuracy is only reported.
    Rows without a validation accuracy make the whole comparison fall back to test, and the reason says so.
    """
    on_val = "val_acc" in cand and bool(cand["val_acc"].notna().all())
    key, split = ("val_acc", "validation") if on_val else ("test_acc", "test (no validation accuracy recorded)")

    def acc(r: pd.Series) -> str:
        return f"{_pct(r['val_acc'])} val, test {_pct(r['test_acc'])}" if on_val else f"{_pct(r['test_acc'])} test"

    ranked = cand.sort_values(key, ascending=False)
    best = ranked.iloc[0]
    if need == "best":
        runner = f" (next: {ranked.iloc[1]['method']} at {acc(ranked.iloc[1])})" if len(ranked) > 1 else ""
        return best, [f"need='best': {best['method']} has the highest measured {split} accuracy that fits, "
                      f"{acc(best)}{runner}."]
    if need == "good":
        close = cand[cand[key] >= best[key] - GOOD_ENOUGH_POINTS / 100]
        pick = close.sort_values(["trainable_params", "train_tflops"]).iloc[0]
        return pick, [f"need='good': within {GOOD_ENOUGH_POINTS:g} {split} accuracy points of the best that fits "
                      f"({best['method']}, {acc(best)}): {', '.join(close['method'])}; of these "
                      f"{pick['method']} trains the fewest parameters ({count_text(pick['trainable_params'])}) "
                      f"at {acc(pick)}."]
    return _cheapest(cand, key, split, acc)


def _cheapest(cand: pd.DataFrame, key: str, split: str, acc) -> tuple[pd.Series, list[str]]:
    """need='cheap' with labelled data: the most accuracy gained over zero-shot per TFLOP of training compute.

    Cost is the counted training compute (train_tflops: the same on every machine; memory enters only through the
    budget); zero-shot costs nothing and gains nothing, so it is chosen only when no trained method beats it.
    """
    zs = cand[cand["method"] == "zero_shot"]
    base = float(zs[key].iloc[0]) if len(zs) else 0.0
    compute = pd.to_numeric(column(cand, "train_tflops"), errors="coerce")
    trained = cand[(cand["method"] != "zero_shot") & (compute > 0)]
    rate = (trained[key] - base) / compute[trained.index]
    gains = trained.assign(_rate=rate)[rate > 0].sort_values("_rate", ascending=False)
    against = f"zero-shot's {_pct(base)}" if len(zs) else "0 (zero-shot not measured)"
    how = (f"need='cheap': cost = counted training compute (train_tflops); the choice is the most {split} accuracy "
           f"gained over {against} per TFLOP")
    if not len(gains):
        pick = zs.iloc[0] if len(zs) else cand.assign(_c=compute).sort_values("_c").iloc[0]
        return pick, [f"{how}: no trained method that fits beats zero-shot, so {pick['method']} ({acc(pick)}), "
                      "which trains nothing."]
    pick = gains.iloc[0]
    per = lambda r: (f"{r['method']} {100 * (r[key] - base):+.1f} points for "  # noqa: E731
                     f"{number_text(r['train_tflops'], '{:.3g}')} TFLOPs")
    others = "; ".join(per(r) for _, r in gains.iloc[1:].iterrows())
    return pick, [f"{how}: {per(pick)} ({100 * pick['_rate']:.3g} points per TFLOP) at {acc(pick)}"
                  + (f" (next: {others})." if others else ".")]


def _caveats(df: pd.DataFrame) -> list[str]:
    """Where the measurements came from (CPU memory is not GPU memory; the stand-in is not CLIP)."""
    notes = ["Training memory is accounted (parameters, gradients, optimizer state, saved activations at this run's "
             "batch and precision): a GPU also holds its CUDA context and the allocator's slack (each result's "
             "cuda_peak_mb, where a GPU trained)."]
    if is_standin(df):
        data = sorted({str(d) for d in column(df, "dataset").dropna()}) or ["its data"]
        notes.append(f"These numbers come from the offline STAND-IN (ToyCLIP, not CLIP, on {', '.join(data)}): "
                     "rerun with the real model (profile='full') before acting on them.")
    return notes


def curve_point(df: pd.DataFrame, labelled_per_class: int | None) -> tuple[Any, str]:
    """The measured shots value to decide at: the largest k <= the user's labelled images per class."""
    measured = sorted({float(k) for k in shots_of(df[is_main(df)]).dropna()}) if len(df) and "method" in df else []
    if labelled_per_class is None or not measured:
        return "auto", ""
    below = [k for k in measured if k <= labelled_per_class]
    if not below:
        return measured[0], (f"You have {labelled_per_class} labelled image(s) per class, fewer than any measured point; "
                             f"deciding at the smallest, {int(measured[0])}.")
    return below[-1], (f"You have {labelled_per_class} labelled image(s) per class: deciding at the measured point "
                       f"{int(below[-1])} per class (the largest not above yours).")


def recommend(df: pd.DataFrame, memory_budget_mb: float, need: str = "best", tasks: int = 1,
              have_data: bool = True, labelled_per_class: int | None = None) -> Recommendation:
    """The course's decision tree applied to this run's measured memory, accuracy and trainable parameters.

    With a shots grid in the results, ``labelled_per_class`` picks the point of the curve to decide at, and the
    reasons say which method wins there and whether the gap is larger than the spread over seeds."""
    _check_request(memory_budget_mb, need, tasks)
    point, where = curve_point(df, labelled_per_class)
    table = summary_table(df, include_missing=False, shots=point)
    table = table[table["test_acc"].notna()] if len(table) else table
    if not len(table):
        return _rule_of_thumb(memory_budget_mb, need, tasks, have_data)
    caveats = _caveats(df)
    if not have_data:
        zs = table[table["method"] == "zero_shot"]
        measured = f" (measured test accuracy {_pct(zs['test_acc'].iloc[0])})" if len(zs) else ""
        return Recommendation("zero_shot", [f"No labelled data → zero-shot: it needs only the class names{measured}; "
                                            "every other method trains on labelled images.", *caveats])
    cand, reasons = _fits(table, memory_budget_mb)
    if memory_budget_mb < SMALL_GPU_MB:
        reasons.append("Rule of thumb for < 8 GB: BitFit or linear probe; here the accounted memory decides.")
    if not len(cand):
        low = table.assign(_m=table_memory(table)).sort_values("_m").iloc[0]
        return Recommendation("zero_shot", reasons + [
            f"Nothing that trains fits: the smallest is {low['method']} at {memory_str(low['_m'])}. Use zero-shot, "
            "or lower the batch size (activations shrink with it) and count again.", *caveats])
    if tasks > 1:
        cand, more = _share_backbone(cand, tasks)
        reasons += more
    pick, why = _pick(cand, need)
    # say whether the pick's lead is larger than the seed spread at the point decided at (or that one seed can't tell)
    at = point if where else default_shots(df)
    ranked = [o for o in ordering(shots_table(df), at) if o.startswith(str(pick["method"]) + " ")][:1]
    why = [*([where] if where else []), *why, *ranked]
    return Recommendation(str(pick["method"]), reasons + why + caveats, list(cand["method"]))


def memory_budgets(df: pd.DataFrame, shots: Any = "auto") -> dict[float, str]:
    """Budgets (MB): each method's training memory exactly as the table shows it, with the methods it admits last."""
    table = summary_table(df, include_missing=False, shots=shots) if len(df) else pd.DataFrame()
    budgets: dict[float, list[str]] = {}
    for m, v in zip(column(table, "method"), table_memory(table) if len(table) else []):
        if not pd.isna(v):
            budgets.setdefault(float(v), []).append(str(m))
    return {b: f"{memory_str(b)} (= {' = '.join(ms)}'s train_memory_mb)" for b, ms in sorted(budgets.items())}


def recommendation_grid(df: pd.DataFrame, tasks: int = 1, labelled_per_class: int | None = None,
                        extra: dict[float, str] | None = None) -> tuple[pd.DataFrame, str]:
    """The recommender x every need at budgets from the table's training memory (one 10 % below the smallest, where
    nothing trained fits, then each row's value) plus ``extra``; and one line on what the grid can show."""
    point, _ = curve_point(df, labelled_per_class)
    measured = memory_budgets(df, point)
    low = float(math.floor(0.9 * min(measured))) if measured else 0.0
    budgets = {**({low: f"{memory_str(low)} (below every row's)"} if low > 0 else {}), **measured, **(extra or {})}
    grid = pd.DataFrame({name: {n: recommend(df, b, need=n, tasks=tasks, labelled_per_class=labelled_per_class).method
                                for n in NEEDS} for b, name in sorted(budgets.items())}).T
    picks = sorted(set(grid.to_numpy().ravel()))
    if len(measured) < 2:
        note = (f"The table holds the training memory of {len(measured)} method(s): budgets cannot separate "
                "trained methods, so the memory rows cannot show the answer moving.")
    elif len(picks) < 2:
        note = (f"The answer does not move: {picks[0]} at every budget and need — it is preferred at the smallest "
                "budget already, so on this run's numbers memory does not decide (see the reasons above).")
    else:
        steps = lambda col: " → ".join(m for i, m in enumerate(col) if i == 0 or m != col[i - 1])  # noqa: E731
        note = (f"Budgets: one below every row's train_memory_mb, then each of the {len(measured)} values in the table "
                "(each admits one more method). As the budget grows: "
                + "; ".join(f"{n}: {steps(list(grid[n]))}" for n in NEEDS) + ".")
    return grid, note

