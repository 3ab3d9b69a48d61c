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

from .config import get_profile
from .methods import names as method_names, registry
from .labels import STANDIN, run_label, warnings_for
from .paths import atomic_write_text, results_root
from .results import REQUIRED_KEYS, borrowed_history, load_predictions, load_results

COMBINATION_METHODS = ("ensemble", "lp_ft", "wise_ft", "adapter_fusion")


def _kind(method: str) -> str:
    """The tables' "type" of a method (its ``Method.kind``), or "combination"."""
    return next((m.kind for m in registry() if m.name == method), "combination")
"""Rows written by the combination part of the course (notebook 06)."""

NEEDS = ("best", "good", "cheap")
SMALL_GPU_MB = 8 * 1024          # the course's rule of thumb: "GPU memory < 8 GB -> BitFit or linear probe"
GOOD_ENOUGH_POINTS = 2.0         # need="good": within this many accuracy points of the best that fits
SHARED_BACKBONE_PERCENT = 5.0    # tasks > 1: a method "shares the backbone" if it trains <= this % per task
TOP_K = 5                        # top-k lists; with C < 5 classes they show the top C (a top-5 of 3 classes is a top-3)



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


def profile_warnings(profile: str) -> list[str]:
    """The warnings a profile's results carry (used when nothing ran yet)."""
    from . import plugins
    from .datasets.base import REGISTRY
    from .models import RANDOM_WEIGHTS, STANDIN_MODELS
    plugins.load()
    prof = get_profile(profile)
    ds = REGISTRY.get(prof.dataset)
    notes = [STANDIN_MODELS.get(prof.model, ""), ds.standin_note if ds is not None and ds.standin else ""]
    return warnings_for(standin_notes=notes, random_weights=prof.pretrained.lower() in RANDOM_WEIGHTS,
                        rehearsal=prof.rehearsal)


def is_standin(df: pd.DataFrame, profile: str | None = None) -> bool:
    """True if any result (or, with no results, the profile) is the offline stand-in."""
    if len(df) and "standin" in df.columns:
        return bool(_col(df, "standin", False).fillna(False).astype(bool).any())
    return profile is not None and any(w.startswith(STANDIN) for w in profile_warnings(profile))


def label_of(df: pd.DataFrame, profile: str) -> str:
    """The label of the results (or of the profile when nothing ran); several setups are all named."""
    if len(df) and "label" in df.columns and _col(df, "label").notna().any():
        labels = list(dict.fromkeys(str(v) for v in _col(df, "label").dropna()))
        return labels[0] if len(labels) == 1 else "MIXED SETUPS: " + " || ".join(labels)
    prof = get_profile(profile)
    return run_label(prof.model, prof.pretrained, prof.dataset, profile_warnings(profile))


def title(text: str, label: str, width: int = 75) -> str:
    """A figure title with the label underneath (as ``Course.title``), wrapped to fit narrow figures."""
    return "\n".join([text, *textwrap.wrap(label, width)])


# ----------------------------------------------------------------------------- tables
def _is_main(df: pd.DataFrame) -> pd.Series:
    """Rows that are a method's main run (variant None) of one of the six methods."""
    return _col(df, "method").isin(method_names()) & _col(df, "variant").isna()


def _shots(df: pd.DataFrame) -> pd.Series:
    """Training images per class of each row (NaN: every image)."""
    return pd.to_numeric(_col(df, "shots"), errors="coerce")


def default_shots(df: pd.DataFrame) -> float | None:
    """The shots value the overview shows: every training image when trained rows at it exist, else the largest k."""
    main = df[_is_main(df) & (_col(df, "method") != "zero_shot")] if len(df) and "method" in df.columns else df
    if not len(main):
        return None
    k = _shots(main)
    return None if k.isna().any() else float(k.max())


def _at_shots(df: pd.DataFrame, shots: Any) -> pd.DataFrame:
    """The rows at one shots value. Zero-shot trains on nothing, so its rows serve every shots value (its rows at
    exactly that value when there are some, else those run on every image)."""
    if not len(df):
        return df
    k = _shots(df)
    if shots == "auto":
        shots = default_shots(df)
    at = k.isna() if shots is None or pd.isna(shots) else k == float(shots)
    zs = _col(df, "method") == "zero_shot"
    zs_at = zs & (at if (zs & at).any() else k.isna())
    return df[(at & ~zs) | zs_at]


def main_rows(df: pd.DataFrame, shots: Any = "auto") -> pd.DataFrame:
    """The main rows at one shots value ("auto": every training image, or the largest k of a grid)."""
    if not len(df) or "method" not in df.columns:
        return pd.DataFrame(columns=["run", "variant", "standin", "shots", *REQUIRED_KEYS])
    return _at_shots(df[_is_main(df)], shots)


def check_one_dataset(df: pd.DataFrame) -> None:
    """Refuse to compare runs of different datasets (or models and weights): their numbers do not mix."""
    from .errors import ResultsError
    if not len(df) or "dataset" not in df.columns:
        return
    keys = [c for c in ("dataset", "dataset_id", "model", "weights_id") if c in df.columns]
    setups = df[keys].astype(str).drop_duplicates()
    if len(setups) > 1:
        listed = "; ".join(" / ".join(r) for r in setups.itertuples(index=False))
        raise ResultsError(f"This results folder mixes runs of different setups ({listed}); they cannot be compared. "
                           "Fix: give each dataset or model its own results folder (the runner does), or delete the "
                           "runs that do not belong.")


def _measured(rows: pd.DataFrame) -> str:
    """What the accuracy column measures for these rows."""
    what = [str(v) for v in _col(rows, "test_acc_is").dropna().unique()]
    return what[0] if len(what) == 1 else "test top-1"


def _borrowed_history(rows: pd.DataFrame) -> pd.Series:
    """Per row, the recipe whose history it carries when that is not its own (the probe's L-BFGS row keeps the
    AdamW run's), else ""."""
    pairs = zip(_col(rows, "history_of"), _col(rows, "recipe"))
    return pd.Series([borrowed_history(h, r) for h, r in pairs], index=rows.index, dtype=object)


def _aggregate(rows: pd.DataFrame) -> dict[str, Any]:
    """Mean over seeds of one method's (or variant's) runs; accuracy also gets its std."""
    num = lambda c: pd.to_numeric(_col(rows, c), errors="coerce")  # noqa: E731
    acc = num("test_acc")
    from_history = pd.Series([len(h) if isinstance(h, list) and h else np.nan for h in _col(rows, "history")],
                             index=rows.index, dtype=float)
    # trained epochs; rows written before epochs_run: their own history's length (never another recipe's)
    epochs = num("epochs_run").fillna(from_history.where(_borrowed_history(rows) == ""))
    sizes = sorted({int(n) for n in num("n_test").dropna()})
    classes = [len(v) for v in _col(rows, "per_class_acc") if isinstance(v, (list, tuple, np.ndarray)) and len(v)]
    measures = sorted({str(v) for v in _col(rows, "memory_measure").dropna() if str(v)})
    return {
        "status": "ok", "n_seeds": int(_col(rows, "seed").nunique()),
        "measured": _measured(rows), "n_test": sizes[0] if len(sizes) == 1 else (np.nan if not sizes else -1),
        "epochs": epochs.mean(), "shots": num("shots").max(),
        "trainable_params": num("trainable_params").max(), "total_params": num("total_params").max(),
        "trainable_percent": num("trainable_percent").max(), "train_seconds": num("train_seconds").mean(),
        "peak_memory_mb": num("peak_memory_mb").mean(), "test_acc": acc.mean(),
        "test_acc_std": acc.std(ddof=1) if acc.count() > 1 else np.nan, "test_top5": num("test_top5").mean(),
        "val_acc": num("val_acc").mean(), "images_per_second": num("images_per_second").mean(),
        "n_classes": max(classes) if classes else np.nan, "memory_measure": " | ".join(measures) or None,
    }


TABLE_COLUMNS = ["method", "type", "status", "n_seeds", "measured", "n_test", "epochs", "shots", "trainable_params",
                 "total_params", "trainable_percent", "train_seconds", "peak_memory_mb", "test_acc", "test_acc_std",
                 "test_top5", "val_acc", "images_per_second", "n_classes", "memory_measure"]


def summary_table(df: pd.DataFrame, include_missing: bool = True, shots: Any = "auto") -> pd.DataFrame:
    """One numeric row per method (main runs at one shots value, mean over seeds); missing ones are "not run"."""
    main = main_rows(df, shots)
    rows = []
    for method in method_names():
        runs = main[main["method"] == method]
        if len(runs):
            rows.append({"method": method, "type": _kind(method), **_aggregate(runs)})
        elif include_missing:
            rows.append({"method": method, "type": _kind(method), "status": "not run", "n_seeds": 0})
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


def combination_table(df: pd.DataFrame, shots: Any = "auto") -> pd.DataFrame:
    """Ensembles, LP-FT, WiSE-FT, adapter fusion and every variant row (sweeps), mean over seeds."""
    empty = pd.DataFrame(columns=["variant", *TABLE_COLUMNS])
    if not len(df) or "method" not in df.columns:
        return empty
    rest = _at_shots(df[~_is_main(df)], default_shots(df) if shots == "auto" else shots).copy()
    rest = rest[~_col(rest, "selected_on").astype(str).str.contains("test")]  # never a row chosen on test
    rest["variant"] = _col(rest, "variant").fillna("")
    order = {m: i for i, m in enumerate(method_names() + COMBINATION_METHODS)}
    rows = [{"method": m, "variant": v or None, "type": _kind(m), **_aggregate(g)}
            for (m, v), g in rest.groupby(["method", "variant"])]
    table = pd.DataFrame(rows)
    if not len(table):
        return empty
    key = table["method"].map(lambda m: order.get(m, len(order)))
    return table.assign(_k=key).sort_values(["_k", "method", "trainable_params", "variant"], na_position="first") \
        .drop(columns="_k").reset_index(drop=True)


def shots_table(df: pd.DataFrame) -> pd.DataFrame:
    """Main rows by method and shots: mean and std of test accuracy over seeds, and how many seeds."""
    main = df[_is_main(df)] if len(df) and "method" in df.columns else pd.DataFrame()
    if not len(main):
        return pd.DataFrame(columns=["method", "shots", "mean", "std", "n_seeds"])
    main = main.assign(_k=_shots(main), _acc=pd.to_numeric(main["test_acc"], errors="coerce"))
    out = main.groupby(["method", "_k"], dropna=False)["_acc"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"_k": "shots", "count": "n_seeds"})
    order = {m: i for i, m in enumerate(method_names())}
    return out.assign(_o=out["method"].map(order)).sort_values(["_o", "shots"]).drop(columns="_o").reset_index(drop=True)


def shots_display(table: pd.DataFrame) -> pd.DataFrame:
    """``shots_table`` as methods x shots cells "mean ± std (n)" in percent."""
    if not len(table):
        return pd.DataFrame()
    cell = lambda r: _acc(r["mean"], r["std"], int(r["n_seeds"])) + f" ({int(r['n_seeds'])})"  # noqa: E731
    t = table.assign(cell=table.apply(cell, axis=1), col=table["shots"].map(lambda k: "all" if pd.isna(k) else int(k)))
    wide = t.pivot(index="method", columns="col", values="cell")
    if "zero_shot" in wide.index and "all" in wide.columns:   # it trains on nothing: its number holds at every k
        wide.loc["zero_shot"] = wide.loc["zero_shot", "all"]
        if wide["all"].drop("zero_shot").isna().all():
            wide = wide.drop(columns="all")
    cols = sorted([c for c in wide.columns if c != "all"]) + (["all"] if "all" in wide.columns else [])
    return wide.reindex(index=[m for m in method_names() if m in wide.index], columns=cols).fillna("—")


def curve_shots(df: pd.DataFrame) -> list[float]:
    """The shots values (k per class) at which trained methods ran: a curve needs at least two."""
    table = shots_table(df)
    return sorted(table["shots"][table["shots"].notna() & (table["method"] != "zero_shot")].unique())


def shots_curve_skipped(df: pd.DataFrame) -> str:
    """Why the accuracy-vs-shots figure is not drawn ("" when it is: trained runs at several shots values k)."""
    ks = curve_shots(df)
    if len(ks) > 1:
        return ""
    table = shots_table(df)
    trained = table[table["method"] != "zero_shot"]
    points = [f"{int(k)} per class" for k in ks] + (["every training image"] if trained["shots"].isna().any() else [])
    return (f"07_accuracy_vs_shots.png not drawn: trained methods ran at {' and '.join(points) or 'no point'}; "
            "a curve needs at least two values of k (training images per class).")


def run_command(course: Any, df: pd.DataFrame, seeds: Sequence[int] | None = None,
                shots: Sequence[int | str] | None = None) -> str:
    """The command that reproduces this run — profile, data, shots and seeds of its results, and the ``-p`` values its
    runs were given (from their completion records) — with ``seeds`` or ``shots`` replaced when given."""
    import shlex
    prof, data = course.profile, course.data
    parts = ["./run_all.sh", "--profile", prof.name]
    if data.name == "imagefolder" and data.root is not None:
        parts += ["--data", shlex.quote(str(data.root))]
    elif data.name != prof.dataset:
        parts += ["--data", data.name]
    main = df[_is_main(df)] if len(df) and "method" in df.columns else pd.DataFrame()
    if shots is None:
        ks = _shots(main[main["method"] != "zero_shot"]) if len(main) else pd.Series(dtype=float)
        shots = [int(k) for k in sorted(ks.dropna().unique())] + (["all"] if ks.isna().any() else [])
    if [str(k) for k in shots] not in ([], [str(prof.shots if prof.shots is not None else "all")]):
        parts += ["--shots", *map(str, shots)]
    seeds = seeds if seeds is not None else sorted({int(v) for v in _col(main, "seed").dropna()}) or [course.seed]
    parts += ["--seeds", *map(str, seeds)]
    from .runner import run_options   # the -p values the runs were given (epochs=1, lora.ranks=[1,2], ...)
    return " ".join(parts + [shlex.quote(o) for o in run_options(course.results_dir)])


def plot_accuracy_vs_shots(df: pd.DataFrame, label: str):
    """Test accuracy against training images per class: one line per method, mean ± std band over seeds,
    zero-shot (which trains nothing) as a horizontal line."""
    import matplotlib.pyplot as plt
    table = shots_table(df)
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    curves = table[table["shots"].notna() & (table["method"] != "zero_shot")]
    for i, (method, rows) in enumerate(curves.groupby("method", sort=False)):
        rows = rows.sort_values("shots")
        x, y, sd = rows["shots"].to_numpy(), 100 * rows["mean"].to_numpy(), 100 * rows["std"].fillna(0).to_numpy()
        ax.plot(x, y, marker="o", color=f"C{i}", label=f"{method} ({int(rows['n_seeds'].min())} seed(s))")
        ax.fill_between(x, y - sd, y + sd, color=f"C{i}", alpha=0.15)
    zs = table[table["method"] == "zero_shot"]
    if len(zs):
        ax.axhline(100 * zs["mean"].mean(), color="grey", ls="--", label="zero_shot (no training)")
    logx = len(curves) > 0
    if not logx:
        _empty(ax, "no trained runs at a shots value: nothing to draw a curve through")
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


def ordering(table: pd.DataFrame, shots: Any) -> list[str]:
    """At one shots value: which method is ahead of which, stated only where the gap exceeds the seed spread."""
    rows = table[(table["shots"].isna()) if shots is None or pd.isna(shots) else (table["shots"] == float(shots))]
    rows = rows.sort_values("mean", ascending=False)
    out = []
    for a, b in zip(rows.itertuples(), rows.iloc[1:].itertuples()):
        gap = a.mean - b.mean
        spread = np.nanmax([a.std, b.std]) if a.n_seeds > 1 and b.n_seeds > 1 else np.nan
        digits = 1 if np.isnan(spread) or f"{100 * gap:.1f}" != f"{100 * spread:.1f}" else 2  # never "1.7 > 1.7"
        g, s = f"{100 * gap:.{digits}f}", f"{100 * spread:.{digits}f}"
        if np.isnan(spread):
            out.append(f"{a.method} vs {b.method}: not ordered (one seed: no spread to compare the {g}-point gap with)")
        elif gap > spread:
            out.append(f"{a.method} > {b.method}: {g} points apart, more than the seed spread ({s})")
        else:
            out.append(f"{a.method} ≈ {b.method}: {g} points apart, within the seed spread ({s})")
    return out


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


DISPLAY_COLUMNS = ("method", "type", "measured", "on images", "epochs", "shots", "trainable params", "trainable %",
                   "train time (s)", "training memory (MB)", "accuracy (%)", "seeds", "top-5 (%)", "images / s")


SEVERAL_MODELS = ("ensemble",)
"""Rows made of several models: their trainable parameters are the sum over the members, a percentage of one model
is not defined."""
SAME_AS = {0.0: "equals the starting zero-shot model", 1.0: "equals full fine-tuning"}
"""What a WiSE-FT row is when validation chose an end of the α line."""


def _wise_alpha(method: str, variant: Any) -> float | None:
    """The α of a ``wise_ft`` row's variant (``alpha0.5`` -> 0.5), else None."""
    if method != "wise_ft" or not isinstance(variant, str) or not variant.startswith("alpha"):
        return None
    try:
        return float(variant[len("alpha"):])
    except ValueError:
        return None


def display_name(method: str, variant: Any = None) -> str:
    """``method [variant]``; a WiSE-FT row whose chosen α is 0 or 1 says which model it equals."""
    alpha = _wise_alpha(method, variant)
    if alpha in SAME_AS:
        return f"{method} [α = {alpha:g} chosen: {SAME_AS[alpha]}]"
    return method + (f" [{variant}]" if isinstance(variant, str) and variant else "")


def _top5_cell(r: dict) -> str:
    """Top-5 accuracy, or why it is not shown: with C <= 5 classes every class is in the top 5 (100 %, says nothing)."""
    n = r.get("n_classes")
    if n is not None and not pd.isna(n) and n <= TOP_K:
        return f"— ({int(n)} classes)"
    return _acc(r.get("test_top5"), np.nan, 1)


def table_notes(table: pd.DataFrame) -> list[str]:
    """What the columns of ``format_table(table)`` mean where a cell is left empty on purpose."""
    notes = ["trainable %: trainable parameters as a percentage of the model's parameters."]
    methods = set(_col(table, "method"))
    if methods & set(SEVERAL_MODELS):
        notes.append("Ensembles are several models: their trainable params are the sum over the members, and "
                     "trainable % is left empty (a percentage of one model is not defined for several).")
    n = pd.to_numeric(_col(table, "n_classes"), errors="coerce")
    few = n[n <= TOP_K].astype(int)
    if len(few):
        counts = f"{few.min()}" if few.min() == few.max() else f"{few.min()}-{few.max()}"
        notes.append(f"top-5 (%) is left empty where a row scores {TOP_K} classes or fewer (here {counts} "
                     f"class(es)): every class is then in its top 5, so it would be 100 % whatever the method.")
    return notes


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table as display strings: what each accuracy measures, on how many images, after how many epochs."""
    out = []
    for r in table.to_dict("records"):
        if r.get("status") == "not run":
            out.append({**dict.fromkeys(DISPLAY_COLUMNS, "—"), "method": r["method"], "type": r.get("type", ""),
                        "accuracy (%)": "not run", "seeds": "0"})
            continue
        n = int(r.get("n_seeds") or 0)
        variant = r.get("variant")
        n_test = r.get("n_test")
        out.append({
            "method": display_name(r["method"], variant),
            "type": r.get("type") or _kind(r["method"]),
            "measured": r.get("measured") or "test top-1",
            "on images": "mixed" if n_test == -1 else _num(n_test, "{:,.0f}"),
            "epochs": _num(r.get("epochs"), "{:.3g}") if r.get("type") != "no training" else "0",
            "shots": ("0" if r.get("type") == "no training" else   # zero-shot uses no training image
                      "all" if pd.isna(r.get("shots", np.nan)) else _num(r.get("shots"), "{:.0f}")),
            "trainable params": _count(r.get("trainable_params")),
            "trainable %": "—" if r["method"] in SEVERAL_MODELS else _num(r.get("trainable_percent"), "{:.2f}"),
            "train time (s)": _num(r.get("train_seconds")),
            "training memory (MB)": _num(r.get("peak_memory_mb"), "{:.0f}"),
            "accuracy (%)": _acc(r.get("test_acc"), r.get("test_acc_std"), n), "seeds": str(n),
            "top-5 (%)": _top5_cell(r), "images / s": _num(r.get("images_per_second"), "{:.0f}"),
        })
    return pd.DataFrame(out, columns=list(DISPLAY_COLUMNS))


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    cells = [[str(c) for c in table.columns]] + [[str(v).replace("|", "/") for v in row] for row in table.values]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    line = lambda row: "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells[1:])])


def memory_note(df: pd.DataFrame) -> str:
    """What the training-memory column measured (on CPU it is not GPU memory)."""
    return ("Training memory (MB): the model plus the peak increase while it trained, measured as "
            f"{memory_kind(_col(df, 'memory_measure'))}.")


def write_summary(profile: str, folder: str | Path) -> str:
    """Write ``summary.csv`` and ``summary.md`` (atomically) in ``folder``; return the markdown for the terminal."""
    folder = Path(folder)
    df = load_results(folder.name, folder.parent)
    check_one_dataset(df)
    label, warnings = label_of(df, profile), [w for w in profile_warnings(profile)] if not len(df) else []
    table = summary_table(df)
    atomic_write_text(folder / "summary.csv", pd.concat([pd.Series(label, index=table.index, name="label"), table],
                                                        axis=1).to_csv(index=False))
    alarm = [f"\n> **{w.split(':')[0]}**: {w.split(':', 1)[1].strip()}" for w in
             ({w for ws in _col(df, "warnings").dropna() for w in (ws if isinstance(ws, list) else [])} or warnings)]
    if alarm:
        alarm.append("\n> These numbers say whether the code works, not how CLIP does on real data.")
    k = default_shots(df)
    sizes = sorted({int(n) for n in pd.to_numeric(_col(main_rows(df), "n_test"), errors="coerce").dropna()})
    tested = f"Test split: {' / '.join(f'{n:,}' for n in sizes)} images" + (
        " (runs differ: compare rows with care)." if len(sizes) > 1 else ".") if sizes else ""
    text = "\n".join([f"# clipft summary — profile {profile}", "", f"**{label}**", *alarm, "",
                      f"Main rows: {'every training image' if k is None else f'{int(k)} training image(s) per class'}; "
                      "accuracy is mean ± std over seeds when several seeds exist. " + tested + " " + memory_note(df),
                      "", *table_notes(table), "",
                      to_markdown(format_table(table)), "",
                      f"{int((table['status'] == 'ok').sum())} of {len(method_names())} methods have results.", ""])
    combo = combination_table(df)
    if len(combo):
        text += ("\n## Combinations and variants\n\n"
                 "Each row says what it measured and on how many images; all choices were made on validation. "
                 + " ".join(table_notes(combo)[1:]) + "\n\n" + to_markdown(format_table(combo)) + "\n")
    by_shots = shots_table(df)
    if by_shots["shots"].nunique(dropna=False) > 1:
        text += "\n## Accuracy by training images per class (mean ± std (seeds))\n\n" + \
                to_markdown(shots_display(by_shots).reset_index()) + "\n"
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
        pick = close.sort_values(["trainable_params", "train_seconds"]).iloc[0]
        return pick, [f"need='good': within {GOOD_ENOUGH_POINTS:g} {split} accuracy points of the best that fits "
                      f"({best['method']}, {acc(best)}): {', '.join(close['method'])}; of these "
                      f"{pick['method']} trains the fewest parameters ({_count(pick['trainable_params'])}) "
                      f"at {acc(pick)}."]
    return _cheapest(cand, key, split, acc)


def _cheapest(cand: pd.DataFrame, key: str, split: str, acc) -> tuple[pd.Series, list[str]]:
    """need='cheap' with labelled data: the most accuracy gained over zero-shot per second of training.

    Cost is the measured training time (memory enters only through the budget); zero-shot costs nothing and gains
    nothing, so it is chosen only when no trained method that fits beats it.
    """
    zs = cand[cand["method"] == "zero_shot"]
    base = float(zs[key].iloc[0]) if len(zs) else 0.0
    trained = cand[(cand["method"] != "zero_shot") & (pd.to_numeric(cand["train_seconds"], errors="coerce") > 0)]
    rate = (trained[key] - base) / trained["train_seconds"].astype(float)
    gains = trained.assign(_rate=rate)[rate > 0].sort_values("_rate", ascending=False)
    against = f"zero-shot's {_pct(base)}" if len(zs) else "0 (zero-shot not measured)"
    how = (f"need='cheap': cost = measured training time; the choice is the most {split} accuracy gained over "
           f"{against} per second of training")
    if not len(gains):
        pick = zs.iloc[0] if len(zs) else cand.sort_values("train_seconds").iloc[0]
        return pick, [f"{how}: no trained method that fits beats zero-shot, so {pick['method']} ({acc(pick)}), "
                      "which trains nothing."]
    pick = gains.iloc[0]
    per = lambda r: f"{r['method']} {100 * (r[key] - base):+.1f} points in {_num(r['train_seconds'])} s"  # noqa: E731
    others = "; ".join(per(r) for _, r in gains.iloc[1:].iterrows())
    return pick, [f"{how}: {per(pick)} ({100 * pick['_rate']:.2f} points/s) at {acc(pick)}"
                  + (f" (next: {others})." if others else ".")]


def _caveats(df: pd.DataFrame) -> list[str]:
    """Where the measurements came from (CPU memory is not GPU memory; the stand-in is not CLIP)."""
    notes = []
    devices = sorted({str((e or {}).get("device", "?")) for e in _col(df, "env")} - {"None"})
    if devices and not any(d.startswith("cuda") for d in devices):
        notes.append(f"Peak memory was measured on {', '.join(devices)} (process memory, not GPU memory): "
                     "rerun on your GPU before trusting the memory filter.")
    if is_standin(df):
        data = sorted({str(d) for d in _col(df, "dataset").dropna()}) or ["its data"]
        notes.append(f"These numbers come from the offline STAND-IN (ToyCLIP, not CLIP, on {', '.join(data)}): "
                     "rerun with the real model (profile='full') before acting on them.")
    return notes


def curve_point(df: pd.DataFrame, labelled_per_class: int | None) -> tuple[Any, str]:
    """The measured shots value to decide at: the largest k <= the user's labelled images per class."""
    measured = sorted({float(k) for k in _shots(df[_is_main(df)]).dropna()}) if len(df) and "method" in df else []
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
    # say whether the pick's lead is larger than the seed spread at the point decided at (or that one seed can't tell)
    at = point if where else default_shots(df)
    ranked = [o for o in ordering(shots_table(df), at) if o.startswith(str(pick["method"]) + " ")][:1]
    why = [*([where] if where else []), *why, *ranked]
    return Recommendation(str(pick["method"]), reasons + why + caveats, list(cand["method"]))


def memory_budgets(df: pd.DataFrame, shots: Any = "auto") -> dict[float, str]:
    """Budgets (MB) from what this run measured: each trained method's training memory, rounded up to the MB so
    that it just fits, with the methods it admits last."""
    table = summary_table(df, include_missing=False, shots=shots) if len(df) else pd.DataFrame()
    mem = _numeric(table[table["method"] != "zero_shot"], "peak_memory_mb") if len(table) else table
    budgets: dict[float, list[str]] = {}
    for m, v in zip(_col(mem, "method"), _col(mem, "peak_memory_mb")):
        if not pd.isna(v):
            budgets.setdefault(float(math.ceil(v)), []).append(str(m))
    return {b: f"{memory_str(b)} (= {' = '.join(ms)}'s training memory)" for b, ms in sorted(budgets.items())}


def recommendation_grid(df: pd.DataFrame, tasks: int = 1, labelled_per_class: int | None = None,
                        extra: dict[float, str] | None = None) -> tuple[pd.DataFrame, str]:
    """The recommender x every need at budgets from this run's measured training memory (one 10 % below the smallest,
    where nothing trained fits, then each measured value) plus ``extra``; and one line on what the grid can show."""
    point, _ = curve_point(df, labelled_per_class)
    measured = memory_budgets(df, point)
    low = float(math.floor(0.9 * min(measured))) if measured else 0.0
    budgets = {**({low: f"{memory_str(low)} (below every measured)"} if low > 0 else {}), **measured, **(extra or {})}
    grid = pd.DataFrame({name: {n: recommend(df, b, need=n, tasks=tasks, labelled_per_class=labelled_per_class).method
                                for n in NEEDS} for b, name in sorted(budgets.items())}).T
    picks = sorted(set(grid.to_numpy().ravel()))
    if len(measured) < 2:
        note = (f"This run measured the training memory of {len(measured)} trained method(s): budgets cannot separate "
                "trained methods, so the memory rows cannot show the answer moving.")
    elif len(picks) < 2:
        note = (f"The answer does not move: {picks[0]} at every budget and need — it is preferred at the smallest "
                "budget already, so on this run's numbers memory does not decide (see the reasons above).")
    else:
        steps = lambda col: " → ".join(m for i, m in enumerate(col) if i == 0 or m != col[i - 1])  # noqa: E731
        note = (f"Budgets: one below every measured training memory, then each of the {len(measured)} measured values "
                "(each admits one more method). As the budget grows: "
                + "; ".join(f"{n}: {steps(list(grid[n]))}" for n in NEEDS) + ".")
    return grid, note


# ----------------------------------------------------------------------------- figures
# Every figure uses constrained layout (no tight-layout warnings), keeps legends outside the axes and survives
# empty or non-numeric results with a "no results" note; bar positions are numeric (equal names never merge).
def _plt():
    import matplotlib.pyplot as plt
    return plt


def _ok(table: pd.DataFrame) -> pd.DataFrame:
    return table[_col(table, "status") == "ok"] if len(table) else table


def _numeric(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """A copy whose ``columns`` are floats (None, strings, pd.NA and missing columns become NaN)."""
    from .plots import _floats
    out = table.copy()
    for c in columns:
        out[c] = _floats(list(_col(table, c))) if len(table) else pd.Series(dtype=float)
    return out


def _empty(ax, text: str = "no results yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def method_colour(method: str) -> str:
    """One colour per method in every figure of this notebook (course order: C0 zero-shot ... C5 full fine-tuning)."""
    names = method_names()
    return f"C{names.index(method) % 10}" if method in names else "C7"


def method_marker(method: str) -> str:
    """One marker shape per method, so that points at the same place stay apart in the legend's eyes."""
    names = method_names()
    return "osD^vP<>hp"[names.index(method) % 10] if method in names else "X"


def _scatter(table: pd.DataFrame, x: str, xlabel: str, label: str, heading: str, logx: bool):
    """One point per method, named in a legend outside the axes (labels beside points overlap and leave the frame)."""
    from .plots import legend_outside
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    rows = _numeric(_ok(table), x, "test_acc", "test_acc_std")
    shown = rows[rows[x].notna() & rows["test_acc"].notna()] if len(rows) else rows
    if not len(shown):
        _empty(ax)
    for r in shown.to_dict("records"):
        xv = max(r[x], 1.0) if logx else r[x]
        err = 100 * r["test_acc_std"] if not pd.isna(r["test_acc_std"]) else None
        ax.errorbar([xv], [100 * r["test_acc"]], yerr=err, fmt=method_marker(r["method"]), ms=8, capsize=3, alpha=0.85,
                    color=method_colour(r["method"]),
                    label=r["method"] + (" (0 trained: drawn at 1)" if logx and r[x] == 0 else ""))
    missing = [str(m) for m in _col(rows, "method")[~rows.index.isin(shown.index)]] if len(rows) else []
    if logx and len(shown):
        ax.set_xscale("log")
    ax.set(xlabel=xlabel + (f"\n(not measured: {', '.join(missing)})" if missing else ""),
           ylabel="test accuracy (%)", title=title(heading, label))
    ax.grid(alpha=0.3)
    if len(shown):
        legend_outside(ax)
    return fig


def plot_accuracy_vs_params(table: pd.DataFrame, label: str):
    """Test accuracy against trainable parameters (log scale); zero-shot sits at 1."""
    return _scatter(table, "trainable_params", "trainable parameters (log scale)", label,
                    "Accuracy vs trainable parameters", logx=True)


def plot_accuracy_vs_time(table: pd.DataFrame, label: str):
    """Test accuracy against measured training time."""
    return _scatter(table, "train_seconds", "training time (s)", label, "Accuracy vs training time", logx=False)


def memory_kind(measures: Iterable[Any]) -> str:
    """What the training-memory numbers measured, from the rows' ``memory_measure`` (on a CPU: process memory)."""
    how = {str(v).split(":")[0] for m in measures if isinstance(m, str) for v in m.split(" | ") if v}
    kinds = sorted("GPU memory (CUDA allocator)" if h.startswith("CUDA") else
                   "CPU process memory (resident set, RSS), not GPU memory" for h in how)
    return (" and ".join(kinds) if len(kinds) < 2 else "mixed: " + " and ".join(kinds)) or "measure not recorded"


def plot_peak_memory(table: pd.DataFrame, label: str):
    """Measured training memory per method (bars; "not run" methods are left empty); the title says what it is."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    rows = _numeric(table, "peak_memory_mb")
    mem = rows["peak_memory_mb"].to_numpy(dtype=float) if len(rows) else np.array([])
    pos = np.arange(len(mem))
    bars = ax.bar(pos, np.nan_to_num(mem), color="tab:blue")
    for bar, v, status in zip(bars, mem, _col(rows, "status")):
        ax.annotate("not run" if status != "ok" else _num(v, "{:.0f}"), (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(pos, [str(m) for m in _col(rows, "method")], rotation=30, ha="right")
    if not np.isfinite(mem).any():
        _empty(ax)
    else:
        ax.set_ylim(0, 1.12 * np.nanmax(mem))   # room for the value labels
    heading = ("Training memory (model + peak increase while training)\nmeasured as "
               + memory_kind(_col(rows, "memory_measure")))
    ax.set(ylabel="training memory (MB)", title=title(heading, label))
    ax.title.set_fontsize(9)
    return fig


def _recipe(rows: pd.DataFrame) -> str:
    """The recipe of these rows in words ("" when they record none)."""
    from .plots import RECIPE_NAMES
    names = sorted({RECIPE_NAMES.get(str(r), str(r)) for r in _col(rows, "recipe").dropna()})
    return "/".join(names)


def learning_curves(df: pd.DataFrame) -> tuple[dict[str, pd.Series], dict[str, float]]:
    """Per method's main runs: its own validation accuracy per epoch (mean over seeds), and for a row whose history
    is another recipe's (the probe's L-BFGS row keeps the AdamW run's) its validation accuracy instead."""
    curves, lines = {}, {}
    main = main_rows(df)
    for method in method_names():
        rows = main[_col(main, "method") == method]
        borrowed = _borrowed_history(rows) != ""
        if borrowed.any():
            val = pd.to_numeric(_col(rows[borrowed], "val_acc"), errors="coerce").dropna()
            if len(val):
                lines[method] = float(val.mean())
        points = [(h.get("epoch"), h.get("val_acc")) for hist in _col(rows[~borrowed], "history")
                  for h in (hist if isinstance(hist, list) else []) if isinstance(h, dict)]
        pts = pd.DataFrame(points, columns=["epoch", "val"]).apply(pd.to_numeric, errors="coerce").dropna()
        if len(pts):
            curves[method] = pts.groupby("epoch")["val"].mean()
    return curves, lines


def _curve_name(method: str, rows: pd.DataFrame, epochs: float | None) -> str:
    """A curve's legend entry: the method, its recipe when it records one, and its length."""
    what = [w for w in (_recipe(rows), f"{epochs:.0f} epochs" if epochs else "") if w]
    return method + (f" ({', '.join(what)})" if what else "")


def zero_shot_val(df: pd.DataFrame) -> float | None:
    """Zero-shot's validation accuracy (the dashed line of the learning curves), or None."""
    zs = _numeric(main_rows(df), "val_acc")
    zs = zs[_col(zs, "method") == "zero_shot"] if len(zs) else zs
    return float(zs["val_acc"].mean()) if len(zs) and zs["val_acc"].notna().any() else None


def plot_learning_curves(df: pd.DataFrame, label: str):
    """Validation accuracy of every trained method (best epoch starred); zero-shot as a dashed line; a row without
    epochs of its own (the probe's L-BFGS) as a dash-dotted line at its validation accuracy, "(L-BFGS, no epochs)".

    Runs of different lengths (a 50-epoch linear probe, 5-epoch fine-tuning) share a fraction-of-training axis.
    """
    from .plots import FRACTION_LABEL, best_marker_handle, legend_outside, mark_best, progress_axis
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
        rows = main[(_col(main, "method") == method) & (_borrowed_history(main) == "")]
        ax.plot(x, y, marker="o", ms=3, color=method_colour(method),
                label=_curve_name(method, rows, lengths[method] if fraction else None))
        mark_best(ax, x, y, method_colour(method))
    for method, val in lines.items():
        recipe = _recipe(main[_col(main, "method") == method]) or "its recipe"
        ax.axhline(100 * val, ls="-.", color=method_colour(method),
                   label=f"{method} ({recipe}, no epochs)")
    zs = zero_shot_val(df)
    if zs is not None:
        ax.axhline(100 * zs, ls="--", color="grey", label="zero_shot (no training)")
    if not curves and not lines:
        _empty(ax, "no learning curves yet")
    elif not fraction:
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(xlabel=FRACTION_LABEL if fraction else "epoch", ylabel="validation accuracy (%)",
           title=title("Learning curves", label))
    ax.grid(alpha=0.3)
    legend_outside(ax, extra=[best_marker_handle()] if curves else [])
    return fig


def curve_starts(df: pd.DataFrame) -> pd.DataFrame:
    """Per curve: validation accuracy (%) after its first epoch and at its best, next to zero-shot's (the dashed
    line), so that what the text says about where the curves begin can be read off the numbers."""
    curves, lines = learning_curves(df)
    zs = zero_shot_val(df)
    rows = [{"method": m, "first epoch": int(c.index.min()), "val after first epoch (%)": 100 * float(c.iloc[0]),
             "best val (%)": 100 * float(c.max())} for m, c in curves.items()]
    rows += [{"method": f"{m} (no epochs)", "first epoch": None, "val after first epoch (%)": None,
              "best val (%)": 100 * v} for m, v in lines.items()]
    out = pd.DataFrame(rows, columns=["method", "first epoch", "val after first epoch (%)", "best val (%)"])
    out["zero-shot val (%)"] = np.nan if zs is None else 100 * zs
    return out.astype({"first epoch": "Int64"}).round(1)


def per_class_matrix(df: pd.DataFrame, classnames: Sequence[str] | None = None) -> pd.DataFrame:
    """Methods × classes test accuracy (mean over seeds); many classes are sorted by mean accuracy."""
    from .plots import _floats, unique_labels
    main = main_rows(df)
    rows = {}
    for method in method_names():
        accs = [pd.Series(_floats(list(v))) for v in _col(main, "per_class_acc")[_col(main, "method") == method]
                if isinstance(v, (list, tuple, np.ndarray)) and len(v)]
        if accs:
            rows[method] = pd.concat(accs, axis=1).mean(axis=1)
    mat = pd.DataFrame(rows).T.astype(float)
    if len(mat) and classnames is not None and len(classnames) == mat.shape[1]:
        mat.columns = unique_labels(list(classnames), 10 ** 6)   # equal names stay separate columns
    if mat.shape[1] > 30:
        mat = mat.iloc[:, np.argsort(-mat.mean(axis=0).to_numpy(dtype=float), kind="stable")]
    return mat


def hardest_classes(matrix: pd.DataFrame, k: int = TOP_K) -> pd.DataFrame:
    """The min(k, C) classes with the lowest accuracy *averaged over the methods* (lowest first), classes × methods,
    in percent, with that mean as the last column (ties keep the class order)."""
    if not len(matrix):
        return pd.DataFrame()
    pct = 100 * matrix.T.astype(float)
    pct["mean over methods"] = pct.mean(axis=1)
    order = np.argsort(pct["mean over methods"].to_numpy(dtype=float), kind="stable")
    return pct.iloc[order[:top_k(len(pct), k)]].round(1)


def hardest_note(matrix: pd.DataFrame, k: int = TOP_K) -> str:
    """What ``hardest_classes`` shows, in one line."""
    n = matrix.shape[1] if len(matrix) else 0
    if not n:
        return "No per-class accuracies in the results."
    shown = top_k(n, k)
    return (f"The {shown} hardest of {n} classes, ranked by test accuracy averaged over the {len(matrix)} method(s) "
            f"(lowest first)" + (f"; there are only {n} classes, so all are shown." if shown == n else "."))


def plot_per_class_heatmap(df: pd.DataFrame, label: str, classnames: Sequence[str] | None = None):
    """Per-class test accuracy, methods × classes (classes sorted by mean accuracy when there are many)."""
    from .plots import unique_labels
    plt = _plt()
    mat = per_class_matrix(df, classnames)
    many = mat.shape[1] > 30
    fig, ax = plt.subplots(figsize=(14 if many else max(6, 0.45 * mat.shape[1] + 2), 0.4 * max(len(mat), 2) + 3.6),
                           layout="constrained")
    values = mat.to_numpy(dtype=float)
    if not values.size or not np.isfinite(values).any():
        _empty(ax)
    else:
        im = ax.imshow(100 * values, aspect="auto", cmap="viridis", vmin=0, vmax=100)
        fig.colorbar(im, ax=ax, label="test accuracy (%)", fraction=0.03)
        ax.set_yticks(range(len(mat)), [str(m) for m in mat.index])
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
    if xs is None or ys is None or any(v is None for v in list(xs) + list(ys)):
        return np.array([]), np.array([])
    try:
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    except (TypeError, ValueError):
        return np.array([]), np.array([])


def _wise_panel(ax, df: pd.DataFrame) -> None:
    """WiSE-FT accuracy along the interpolation (test, validation, chosen α), in 06's validation/test colours."""
    from .plots import TEST_COLOR, VAL_COLOR, legend_outside
    wise = df[_col(df, "method") == "wise_ft"] if len(df) else df
    rows = [r for r in wise.to_dict("records") if isinstance(r.get("curve"), (list, dict))]
    xs, ys = curve_points(rows[0]["curve"]) if rows else (np.array([]), np.array([]))
    if len(xs):
        vx, vy = curve_points(rows[0]["curve"], ("val_acc",))
        if len(vx):
            ax.plot(vx, 100 * vy, marker="o", color=VAL_COLOR, label="validation")
        ax.plot(xs, 100 * ys, marker="o", color=TEST_COLOR, label="test")
        alpha = rows[0].get("alpha")
        if isinstance(alpha, (int, float)) and np.isfinite(alpha):
            ax.axvline(alpha, color="grey", ls=":", label=f"chosen α = {alpha:g}")
        legend_outside(ax)
        ax.set(xlabel="α (0 = zero-shot weights, 1 = fine-tuned weights)", ylabel="accuracy (%)")
        ax.grid(alpha=0.3)
    else:
        _empty(ax, "no WiSE-FT curve in the results")
    ax.set_title("WiSE-FT interpolation", fontsize=10)


def _combination_panel(ax, df: pd.DataFrame) -> None:
    """Ensembles and combinations (orange) next to the single methods (grey), each bar labelled."""
    from .plots import _floats
    combo = combination_table(df)
    combo = combo[combo["method"].isin(COMBINATION_METHODS)] if len(combo) else combo
    main = _ok(summary_table(df, include_missing=False))
    names = [display_name(str(m), v) for m, v in zip(combo.get("method", []), combo.get("variant", []))]
    singles = [str(m) for m in _col(main, "method")] if len(main) else []
    accs = 100 * np.concatenate([_floats(list(_col(combo, "test_acc"))) if len(combo) else [],
                                 _floats(list(_col(main, "test_acc"))) if len(main) else []])
    if len(accs):
        pos = np.arange(len(accs))
        ax.barh(pos, np.nan_to_num(accs), color=["tab:orange"] * len(names) + ["tab:grey"] * len(singles))
        for p, a in zip(pos, accs):
            ax.annotate(f"{a:.1f}" if np.isfinite(a) else "n/a", (np.nan_to_num(a), p), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8)
        ax.set_yticks(pos, names + singles)
        ax.invert_yaxis()
        top = np.nanmax(accs) if np.isfinite(accs).any() else 100.0
        ax.set_xlim(0, 1.15 * top or 100)
        ax.set_xlabel("test accuracy (%) — orange: combinations, grey: single methods")
    else:
        _empty(ax, "no ensemble rows in the results")
    ax.set_title("Ensembles and combinations", fontsize=10)


def plot_combinations(df: pd.DataFrame, label: str):
    """Left: WiSE-FT accuracy along the interpolation; right: ensembles vs their best member."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8), layout="constrained")
    _wise_panel(left, df)
    _combination_panel(right, df)
    fig.suptitle(title("Combining methods", label))
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
    main = main[_col(main, "seed") == seed]
    order = {m: i for i, m in enumerate(method_names())}
    return list(main.assign(_k=main["method"].map(order)).sort_values("_k")["run"])


def most_disputed(probs: dict[str, np.ndarray]) -> int:
    """The test image on which the methods' top-1 answers disagree most (first one on ties)."""
    if not probs:
        return 0
    preds = np.stack([p.argmax(axis=1) for p in probs.values()])
    distinct = np.array([len(set(col)) for col in preds.T])
    return int(np.argmax(distinct))


def top_k(n_classes: int, k: int = TOP_K) -> int:
    """How many classes a top-k list can hold: min(k, C)."""
    return max(1, min(k, int(n_classes)))


def top5(probs: dict[str, np.ndarray], index: int, classnames: Sequence[str]) -> pd.DataFrame:
    """Each run's min(5, C) most likely classes for one image: columns = runs, cells = "name (p%)"."""
    k = top_k(len(classnames))
    cols = {}
    for run, p in probs.items():
        best = np.argsort(-p[index], kind="stable")[:k]
        cols[run] = [f"{classnames[c]} ({100 * p[index, c]:.0f}%)" for c in best]
    return pd.DataFrame(cols, index=[f"#{i + 1}" for i in range(k)])


def _top5_panel(ax, p: np.ndarray, classnames: Sequence[str], true_ids: set[int], run: str) -> None:
    """One run's min(5, C) most likely classes, most likely on top, full names, each bar labelled."""
    from .plots import unique_labels
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
        _empty(ax, "no saved predictions match these test images")
    fig.suptitle(title(f"{top_k_heading(len(classnames))} of each method (probability %, true class in green)",
                       label), fontsize=9)
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
