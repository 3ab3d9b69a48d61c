"""The comparison view: tables, figures and a recommender built only from the result JSONs of a run."""
from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from .config import METHOD_TYPE, METHODS, get_profile
from .paths import atomic_write_text, results_root
from .results import REQUIRED_KEYS, load_predictions, load_results

COMBINATION_METHODS = ("ensemble", "lp_ft", "wise_ft", "adapter_fusion")
"""Rows written by the combination part of the course (notebook 06)."""

NEEDS = ("best", "good", "cheap")
SMALL_GPU_MB = 8 * 1024          # the course's rule of thumb: "GPU memory < 8 GB -> BitFit or linear probe"
GOOD_ENOUGH_POINTS = 2.0         # need="good": within this many accuracy points of the best that fits
SHARED_BACKBONE_PERCENT = 5.0    # tasks > 1: a method "shares the backbone" if it trains <= this % per task
STANDIN_TAG = " — STAND-IN (ToyCLIP on SynthFlowers), not CLIP on Flowers102"

DISPLAY_COLUMNS = ("method", "type", "trainable params", "trainable %", "train time (s)", "peak memory (MB)",
                   "test acc (%)", "seeds", "test top-5 (%)", "images / s")


# ----------------------------------------------------------------------------- loading and labels
def results_folder(profile: str, results_dir: str | Path | None = None, root: str | Path | None = None) -> Path:
    """``results_dir`` if given (the runner passes ``<root>/<profile>``), else ``<root>/<profile>``."""
    return Path(results_dir) if results_dir else Path(root or results_root()) / profile


def load(profile: str, results_dir: str | Path | None = None, root: str | Path | None = None) -> pd.DataFrame:
    """All result JSONs of a run folder (accepts a ``results_dir`` or a ``root`` + profile)."""
    folder = results_folder(profile, results_dir, root)
    return load_results(folder.name, folder.parent)


def _col(df: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """A column, or a column of ``default`` when the results lack it."""
    return df[name] if name in df.columns else pd.Series([default] * len(df), index=df.index, dtype=object)


def is_standin(df: pd.DataFrame, profile: str | None = None) -> bool:
    """True if any result (or, with no results, the profile) is the offline stand-in."""
    if len(df) and "standin" in df.columns:
        return bool(_col(df, "standin", False).fillna(False).astype(bool).any())
    if profile is None:
        return False
    prof = get_profile(profile)
    return prof.dataset != "flowers102" or prof.model == "ToyCLIP"


def make_label(model: str, pretrained: str, dataset: str, standin: bool) -> str:
    """The model / weights / dataset line (same wording as ``Course.label``)."""
    return f"{model} / {pretrained} on {dataset}{STANDIN_TAG if standin else ''}"


def label_of(df: pd.DataFrame, profile: str) -> str:
    """The label of the results (or of the profile when nothing ran); several setups are all named."""
    standin = is_standin(df, profile)
    if not len(df) or not {"model", "pretrained", "dataset"} <= set(df.columns):
        prof = get_profile(profile)
        return make_label(prof.model, prof.pretrained, prof.dataset, standin)
    setups = df[["model", "pretrained", "dataset"]].astype(str).drop_duplicates().itertuples(index=False)
    labels = [make_label(m, p, d, standin) for m, p, d in setups]
    return labels[0] if len(labels) == 1 else "MIXED SETUPS: " + " | ".join(labels)


def title(text: str, label: str, width: int = 75) -> str:
    """A figure title with the label underneath (as ``Course.title``), wrapped to fit narrow figures."""
    return "\n".join([text, *textwrap.wrap(label, width)])


# ----------------------------------------------------------------------------- tables
def _is_main(df: pd.DataFrame) -> pd.Series:
    """Rows that are a method's main run (variant None) of one of the six methods."""
    return _col(df, "method").isin(METHODS) & _col(df, "variant").isna()


def main_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The main rows (an empty frame with the usual columns when there are no results)."""
    if not len(df) or "method" not in df.columns:
        return pd.DataFrame(columns=["run", "variant", "standin", *REQUIRED_KEYS])
    return df[_is_main(df)]


def _aggregate(rows: pd.DataFrame) -> dict[str, Any]:
    """Mean over seeds of one method's (or variant's) runs; accuracy also gets its std."""
    num = lambda c: pd.to_numeric(_col(rows, c), errors="coerce")  # noqa: E731
    acc = num("test_acc")
    return {
        "status": "ok", "n_seeds": int(_col(rows, "seed").nunique()),
        "trainable_params": num("trainable_params").max(), "total_params": num("total_params").max(),
        "trainable_percent": num("trainable_percent").max(), "train_seconds": num("train_seconds").mean(),
        "peak_memory_mb": num("peak_memory_mb").mean(), "test_acc": acc.mean(),
        "test_acc_std": acc.std(ddof=1) if acc.count() > 1 else np.nan, "test_top5": num("test_top5").mean(),
        "val_acc": num("val_acc").mean(), "images_per_second": num("images_per_second").mean(),
    }


def summary_table(df: pd.DataFrame, include_missing: bool = True) -> pd.DataFrame:
    """One numeric row per method (main runs, mean over seeds); methods not run are "not run" rows."""
    main = main_rows(df)
    rows = []
    for method in METHODS:
        runs = main[main["method"] == method]
        if len(runs):
            rows.append({"method": method, "type": METHOD_TYPE[method], **_aggregate(runs)})
        elif include_missing:
            rows.append({"method": method, "type": METHOD_TYPE[method], "status": "not run", "n_seeds": 0})
    columns = ["method", "type", "status", "n_seeds", "trainable_params", "total_params", "trainable_percent",
               "train_seconds", "peak_memory_mb", "test_acc", "test_acc_std", "test_top5", "val_acc",
               "images_per_second"]
    return pd.DataFrame(rows).reindex(columns=columns)


def combination_table(df: pd.DataFrame) -> pd.DataFrame:
    """Ensembles, LP-FT, WiSE-FT, adapter fusion and every variant row (sweeps), mean over seeds."""
    if not len(df):
        return pd.DataFrame(columns=["method", "variant", "status", "n_seeds", "test_acc", "test_acc_std"])
    rest = df[~_is_main(df)].copy()
    rest["variant"] = _col(rest, "variant").fillna("")
    order = {m: i for i, m in enumerate(METHODS + COMBINATION_METHODS)}
    rows = [{"method": m, "variant": v or None, **_aggregate(g)} for (m, v), g in rest.groupby(["method", "variant"])]
    table = pd.DataFrame(rows)
    if not len(table):
        return pd.DataFrame(columns=["method", "variant", "status", "n_seeds", "test_acc", "test_acc_std"])
    key = table["method"].map(lambda m: order.get(m, len(order)))
    return table.assign(_k=key).sort_values(["_k", "method", "trainable_params", "variant"], na_position="first") \
        .drop(columns="_k").reset_index(drop=True)


def _count(n: Any) -> str:
    """Parameter count for humans: 0, 9.8K, 87.8M."""
    if n is None or pd.isna(n):
        return "—"
    n = float(n)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.{1 if n / div < 100 else 0}f}{unit}"
    return f"{int(n)}"


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    """A number for display, "—" when missing."""
    return "—" if x is None or pd.isna(x) else fmt.format(float(x))


def _acc(mean: Any, std: Any, n: int) -> str:
    """``85.3 ± 1.2`` (percent) when several seeds exist, else ``85.3``."""
    if mean is None or pd.isna(mean):
        return "—"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 and not pd.isna(std) else f"{100 * mean:.1f}"


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as display strings (percentages, ± std, human parameter counts, "not run")."""
    out = []
    for r in table.to_dict("records"):
        if r.get("status") == "not run":
            out.append({"method": r["method"], "type": r.get("type", ""), "trainable params": "—",
                        "trainable %": "—", "train time (s)": "—", "peak memory (MB)": "—",
                        "test acc (%)": "not run", "seeds": "0", "test top-5 (%)": "—", "images / s": "—"})
            continue
        n = int(r.get("n_seeds") or 0)
        variant = r.get("variant")
        name = r["method"] + (f" [{variant}]" if isinstance(variant, str) and variant else "")
        out.append({
            "method": name, "type": r.get("type") or METHOD_TYPE.get(r["method"], "combination"),
            "trainable params": _count(r.get("trainable_params")),
            "trainable %": _num(r.get("trainable_percent"), "{:.2f}"),
            "train time (s)": _num(r.get("train_seconds")), "peak memory (MB)": _num(r.get("peak_memory_mb"), "{:.0f}"),
            "test acc (%)": _acc(r.get("test_acc"), r.get("test_acc_std"), n), "seeds": str(n),
            "test top-5 (%)": _acc(r.get("test_top5"), np.nan, 1), "images / s": _num(r.get("images_per_second"), "{:.0f}"),
        })
    return pd.DataFrame(out, columns=list(DISPLAY_COLUMNS))


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    cells = [[str(c) for c in table.columns]] + [[str(v).replace("|", "/") for v in row] for row in table.values]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    line = lambda row: "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells[1:])])


def write_summary(profile: str, folder: str | Path) -> str:
    """Write ``summary.csv`` and ``summary.md`` (atomically) in ``folder``; return the markdown for the terminal."""
    folder = Path(folder)
    df = load_results(folder.name, folder.parent)
    label, standin = label_of(df, profile), is_standin(df, profile)
    table = summary_table(df)
    atomic_write_text(folder / "summary.csv", pd.concat([pd.Series(label, index=table.index, name="label"), table],
                                                        axis=1).to_csv(index=False))
    warning = ("\n> **STAND-IN**: ToyCLIP pretrained by this project on synthetic flowers. These numbers say "
               "whether the code works, not how CLIP does on Flowers102.\n" if standin else "")
    sizes = sorted({int(n) for n in _col(main_rows(df), "n_test").dropna()})
    tested = f"Test split: {' / '.join(f'{n:,}' for n in sizes)} images" + (
        " (runs differ: compare rows with care)." if len(sizes) > 1 else ".") if sizes else ""
    text = "\n".join([f"# clipft summary — profile {profile}", "", f"**{label}**", warning, tested, "",
                      to_markdown(format_table(table)), "",
                      f"{int((table['status'] == 'ok').sum())} of {len(METHODS)} methods have results; "
                      "accuracy is mean ± std over seeds when several seeds exist.", ""])
    combo = combination_table(df)
    if len(combo):
        text += "\n## Combinations and variants\n\n" + to_markdown(format_table(combo)) + "\n"
    atomic_write_text(folder / "summary.md", text)
    return text


# ----------------------------------------------------------------------------- the recommender
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
    from .errors import ConfigError
    if need not in NEEDS:
        raise ConfigError(f"need must be one of {NEEDS}, got {need!r}.")
    if not isinstance(memory_budget_mb, (int, float)) or not memory_budget_mb > 0:
        raise ConfigError(f"memory_budget_mb must be a positive number, got {memory_budget_mb!r}.")
    if isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1:
        raise ConfigError(f"tasks must be a whole number >= 1, got {tasks!r}.")


def _fits(table: pd.DataFrame, budget: float) -> tuple[pd.DataFrame, list[str]]:
    """Methods whose measured peak memory fits the budget (zero-shot trains nothing, so it always fits)."""
    mem = table["peak_memory_mb"]
    ok = (mem <= budget) | (mem.isna() & (table["method"] == "zero_shot"))
    show = lambda m, v: f"{m} ({'not measured' if pd.isna(v) else f'{v:.0f} MB'})"  # noqa: E731
    fit = [show(m, v) for m, v in zip(table["method"][ok], mem[ok])]
    out = [show(m, v) for m, v in zip(table["method"][~ok], mem[~ok])]
    reasons = [f"Memory budget {memory_str(budget)}: measured peak memory fits for {', '.join(fit) or 'none'}"
               + (f"; too big or not measured: {', '.join(out)}." if out else ".")]
    return table[ok], reasons


def memory_str(mb: float) -> str:
    """``6.0 GB`` or ``512 MB``."""
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def _share_backbone(cand: pd.DataFrame, tasks: int) -> tuple[pd.DataFrame, list[str]]:
    """With several tasks keep the methods that store only a small part of the model per task."""
    pct = cand["trainable_percent"].fillna(0.0)
    keep = cand[pct <= SHARED_BACKBONE_PERCENT]
    dropped = cand[pct > SHARED_BACKBONE_PERCENT]
    reasons = [f"{tasks} tasks → prefer one shared frozen backbone plus a small per-task part "
               f"(the course's rule: many tasks → LoRA)."]
    for r in dropped.itertuples():
        reasons.append(f"{r.method} trains {r.trainable_percent:.1f}% of the model: {tasks} tasks would store "
                       f"{_count(r.trainable_params * tasks)} parameters, so it is set aside.")
    return (keep if len(keep) else cand), reasons


def _pick(cand: pd.DataFrame, need: str) -> tuple[pd.Series, list[str]]:
    """Choose by the need: best accuracy, good-enough for the fewest parameters, or cheapest to train."""
    ranked = cand.sort_values("test_acc", ascending=False)
    best = ranked.iloc[0]
    if need == "best":
        runner = (f" (next: {ranked.iloc[1]['method']} at {_pct(ranked.iloc[1]['test_acc'])})"
                  if len(ranked) > 1 else "")
        return best, [f"need='best': {best['method']} has the highest measured test accuracy that fits, "
                      f"{_pct(best['test_acc'])}{runner}."]
    if need == "good":
        close = cand[cand["test_acc"] >= best["test_acc"] - GOOD_ENOUGH_POINTS / 100]
        pick = close.sort_values(["trainable_params", "train_seconds"]).iloc[0]
        return pick, [f"need='good': within {GOOD_ENOUGH_POINTS:g} accuracy points of the best that fits "
                      f"({best['method']}, {_pct(best['test_acc'])}): {', '.join(close['method'])}; of these "
                      f"{pick['method']} trains the fewest parameters ({_count(pick['trainable_params'])}) "
                      f"at {_pct(pick['test_acc'])}."]
    pick = cand.sort_values(["train_seconds", "peak_memory_mb"]).iloc[0]
    return pick, [f"need='cheap': {pick['method']} is the quickest to train that fits "
                  f"({_num(pick['train_seconds'])} s measured) at {_pct(pick['test_acc'])} test accuracy "
                  f"(best that fits: {best['method']}, {_pct(best['test_acc'])})."]


def _caveats(df: pd.DataFrame) -> list[str]:
    """Where the measurements came from (CPU memory is not GPU memory; the stand-in is not CLIP)."""
    notes = []
    devices = sorted({str((e or {}).get("device", "?")) for e in _col(df, "env")} - {"None"})
    if devices and not any(d.startswith("cuda") for d in devices):
        notes.append(f"Peak memory was measured on {', '.join(devices)} (process memory, not GPU memory): "
                     "rerun on your GPU before trusting the memory filter.")
    if is_standin(df):
        notes.append("These numbers come from the offline STAND-IN (ToyCLIP on SynthFlowers), not CLIP on "
                     "Flowers102: rerun with profile='full' before acting on them.")
    return notes


def recommend(df: pd.DataFrame, memory_budget_mb: float, need: str = "best", tasks: int = 1,
              have_data: bool = True) -> Recommendation:
    """The course's decision tree applied to this run's measured memory, accuracy and trainable parameters."""
    _check_request(memory_budget_mb, need, tasks)
    table = summary_table(df, include_missing=False)
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
        reasons.append("Rule of thumb for < 8 GB: BitFit or linear probe; here the measured peak memory decides.")
    if not len(cand):
        low = table.sort_values("peak_memory_mb").iloc[0]
        return Recommendation("zero_shot", reasons + [
            f"Nothing that trains fits: the smallest measured is {low['method']} at "
            f"{memory_str(low['peak_memory_mb'])}. Use zero-shot, or lower the batch size and measure again.",
            *caveats])
    if tasks > 1:
        cand, more = _share_backbone(cand, tasks)
        reasons += more
    pick, why = _pick(cand, need)
    return Recommendation(str(pick["method"]), reasons + why + caveats, list(cand["method"]))


# ----------------------------------------------------------------------------- figures
def _plt():
    import matplotlib.pyplot as plt
    return plt


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "ok"]


def _empty(ax, text: str = "no results yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _scatter(table: pd.DataFrame, x: str, xlabel: str, label: str, heading: str, logx: bool):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = _ok(table)
    if not len(rows):
        _empty(ax)
    for r in rows.itertuples():
        xv = getattr(r, x)
        xv = max(float(xv), 1.0) if logx and not pd.isna(xv) else xv
        err = 100 * r.test_acc_std if not pd.isna(r.test_acc_std) else None
        ax.errorbar([xv], [100 * r.test_acc], yerr=err, fmt="o", ms=8, capsize=3)
        ax.annotate(r.method + (" (0 trained)" if logx and getattr(r, x) == 0 else ""), (xv, 100 * r.test_acc),
                    textcoords="offset points", xytext=(6, 4), fontsize=9)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="test accuracy (%)", title=title(heading, label))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_params(table: pd.DataFrame, label: str):
    """Test accuracy against trainable parameters (log scale); zero-shot sits at 1."""
    return _scatter(table, "trainable_params", "trainable parameters (log scale)", label,
                    "Accuracy vs trainable parameters", logx=True)


def plot_accuracy_vs_time(table: pd.DataFrame, label: str):
    """Test accuracy against measured training time."""
    return _scatter(table, "train_seconds", "training time (s)", label, "Accuracy vs training time", logx=False)


def plot_peak_memory(table: pd.DataFrame, label: str):
    """Measured peak memory per method (bars; "not run" methods are left empty)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    mem = table["peak_memory_mb"].astype(float)
    bars = ax.bar(table["method"], mem.fillna(0), color="tab:blue")
    for bar, v, status in zip(bars, mem, table["status"]):
        ax.annotate("not run" if status != "ok" else _num(v, "{:.0f}"), (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="peak memory (MB)", title=title("Peak memory while training", label))
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def _curves(df: pd.DataFrame) -> dict[str, pd.Series]:
    """Validation accuracy per epoch of each method's main runs (mean over seeds)."""
    out = {}
    main = main_rows(df)
    for method in METHODS:
        points = [(h["epoch"], h["val_acc"]) for hist in main[main["method"] == method]["history"]
                  for h in (hist if isinstance(hist, list) else []) if isinstance(h, dict)
                  and h.get("epoch") is not None and h.get("val_acc") is not None]
        if points:
            out[method] = pd.DataFrame(points, columns=["epoch", "val"]).groupby("epoch")["val"].mean()
    return out


def plot_learning_curves(df: pd.DataFrame, label: str):
    """Validation accuracy per epoch, every trained method overlaid; zero-shot as a dashed line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = _curves(df)
    for method, curve in curves.items():
        ax.plot(curve.index, 100 * curve.values, marker="o", ms=3, label=method)
    zs = main_rows(df)
    zs = zs[zs["method"] == "zero_shot"]
    if len(zs) and pd.to_numeric(zs["val_acc"], errors="coerce").notna().any():
        ax.axhline(100 * pd.to_numeric(zs["val_acc"], errors="coerce").mean(), ls="--", color="grey",
                   label="zero_shot (no training)")
    if not curves:
        _empty(ax, "no learning curves yet")
    else:
        ax.legend(fontsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel="epoch", ylabel="validation accuracy (%)", title=title("Learning curves", label))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def per_class_matrix(df: pd.DataFrame, classnames: Sequence[str] | None = None) -> pd.DataFrame:
    """Methods × classes test accuracy (mean over seeds); many classes are sorted by mean accuracy."""
    main = main_rows(df)
    rows = {}
    for method in METHODS:
        accs = [np.asarray([np.nan if a is None else a for a in v], dtype=float)
                for v in main[main["method"] == method]["per_class_acc"] if isinstance(v, list)]
        if accs:
            rows[method] = np.nanmean(np.stack(accs), axis=0)
    mat = pd.DataFrame(rows).T
    if len(mat) and classnames is not None and len(classnames) == mat.shape[1]:
        mat.columns = list(classnames)
    if mat.shape[1] > 30:
        mat = mat[mat.mean(axis=0).sort_values(ascending=False).index]
    return mat


def plot_per_class_heatmap(df: pd.DataFrame, label: str, classnames: Sequence[str] | None = None):
    """Per-class test accuracy, methods × classes (classes sorted by mean accuracy when there are many)."""
    plt = _plt()
    mat = per_class_matrix(df, classnames)
    many = mat.shape[1] > 30
    fig, ax = plt.subplots(figsize=(14 if many else max(6, 0.45 * mat.shape[1] + 2), 0.5 * max(len(mat), 2) + 2.5))
    if not len(mat):
        _empty(ax)
    else:
        im = ax.imshow(100 * mat.values.astype(float), aspect="auto", cmap="viridis", vmin=0, vmax=100)
        fig.colorbar(im, ax=ax, label="test accuracy (%)", fraction=0.03)
        ax.set_yticks(range(len(mat)), mat.index)
        names = [str(c) for c in mat.columns]
        if many:
            step = max(1, len(names) // 25)
            ax.set_xticks(range(0, len(names), step), [names[i] for i in range(0, len(names), step)],
                          rotation=90, fontsize=7)
            ax.set_xlabel("class (sorted by mean accuracy over methods, every %d-th named)" % step)
        else:
            ax.set_xticks(range(len(names)), names, rotation=90, fontsize=8)
            ax.set_xlabel("class")
    ax.set_title(title("Per-class test accuracy", label))
    fig.tight_layout()
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
    if xs is None or ys is None or any(v is None for v in list(xs) + list(ys)):
        return np.array([]), np.array([])
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def plot_combinations(df: pd.DataFrame, label: str):
    """Left: WiSE-FT accuracy along the interpolation; right: ensembles vs their best member."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    wise = df[_col(df, "method") == "wise_ft"] if len(df) else df
    rows = [r for r in wise.to_dict("records") if isinstance(r.get("curve"), (list, dict))]
    xs, ys = curve_points(rows[0]["curve"]) if rows else (np.array([]), np.array([]))
    if len(xs):
        left.plot(xs, 100 * ys, marker="o", label="test")
        vx, vy = curve_points(rows[0]["curve"], ("val_acc",))
        if len(vx):
            left.plot(vx, 100 * vy, marker=".", ls="--", label="validation")
        if isinstance(rows[0].get("alpha"), (int, float)):
            left.axvline(rows[0]["alpha"], color="grey", ls=":", label=f"chosen α = {rows[0]['alpha']:g}")
        left.legend(fontsize=8)
        left.set(xlabel="α (0 = zero-shot weights, 1 = fine-tuned weights)", ylabel="test accuracy (%)")
        left.grid(alpha=0.3)
    else:
        _empty(left, "no WiSE-FT curve in the results")
    left.set_title("WiSE-FT interpolation", fontsize=10)
    combo = combination_table(df)
    combo = combo[combo["method"].isin(COMBINATION_METHODS)] if len(combo) else combo
    main = summary_table(df, include_missing=False)
    names = [f"{m} [{v}]" if isinstance(v, str) and v else m
             for m, v in zip(combo.get("method", []), combo.get("variant", []))]
    singles = list(_ok(main)["method"]) if len(main) else []
    if names or singles:
        accs = list(100 * combo["test_acc"]) + list(100 * _ok(main)["test_acc"])
        colors = ["tab:orange"] * len(names) + ["tab:grey"] * len(singles)
        right.barh(names + singles, accs, color=colors)
        right.invert_yaxis()
        right.set_xlabel("test accuracy (%) — orange: combinations, grey: single methods")
    else:
        _empty(right, "no ensemble rows in the results")
    right.set_title("Ensembles and combinations", fontsize=10)
    fig.suptitle(title("Combining methods", label))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- predictions
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
    main = main[main["seed"] == seed]
    order = {m: i for i, m in enumerate(METHODS)}
    return list(main.assign(_k=main["method"].map(order)).sort_values("_k")["run"])


def most_disputed(probs: dict[str, np.ndarray]) -> int:
    """The test image on which the methods' top-1 answers disagree most (first one on ties)."""
    if not probs:
        return 0
    preds = np.stack([p.argmax(axis=1) for p in probs.values()])
    distinct = np.array([len(set(col)) for col in preds.T])
    return int(np.argmax(distinct))


def top5(probs: dict[str, np.ndarray], index: int, classnames: Sequence[str]) -> pd.DataFrame:
    """Each run's five most likely classes for one image: columns = runs, cells = "name (p%)"."""
    cols = {}
    for run, p in probs.items():
        best = np.argsort(-p[index])[:5]
        cols[run] = [f"{classnames[c]} ({100 * p[index, c]:.0f}%)" for c in best]
    return pd.DataFrame(cols, index=[f"#{i + 1}" for i in range(5)])


def plot_top5(image: np.ndarray, true_name: str, probs: dict[str, np.ndarray], index: int,
              classnames: Sequence[str], label: str):
    """The image and every run's top-5 probabilities side by side (true class in green)."""
    plt = _plt()
    n = max(len(probs), 1)
    cols, rows = min(3, n), math.ceil(n / 3)
    fig = plt.figure(figsize=(3.4 * cols + 2.6, 2.4 * rows + 1.2))
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[0.8] + [1] * cols)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(image)
    ax.set_title(f"test image {index}\ntrue: " + "\n".join(textwrap.wrap(true_name, 26)), fontsize=8)
    ax.axis("off")
    for k, (run, p) in enumerate(probs.items()):
        ax = fig.add_subplot(grid[k // cols, 1 + k % cols])
        best = np.argsort(-p[index])[:5][::-1]
        colors = ["tab:green" if classnames[c] == true_name else "tab:grey" for c in best]
        ax.barh(["\n".join(textwrap.wrap(classnames[c], 24)[:2]) for c in best], 100 * p[index, best], color=colors)
        ax.set_xlim(0, 100)
        ax.set_title(run, fontsize=8)
        ax.tick_params(labelsize=6)
    if not probs:
        ax = fig.add_subplot(grid[0, 1])
        ax.axis("off")
        _empty(ax, "no saved predictions match these test images")
    fig.suptitle(title("Top-5 of each method (probability %, true class in green)", label), fontsize=9)
    fig.tight_layout()
    return fig


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
