"""Loading a run's result JSONs, and the tables built from them: one row per method, combinations, shots, curves."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ..config import get_profile
from ..labels import STANDIN, run_label, warnings_for
from ..methods import names as method_names, registry
from ..paths import results_root
from ..results import REQUIRED_KEYS, borrowed_history, load_results

COMBINATION_METHODS = ("ensemble", "lp_ft", "wise_ft", "adapter_fusion")
"""Rows written by the combination part of the course (notebook 06)."""

TOP_K = 5                        # top-k lists; with C < 5 classes they show the top C (a top-5 of 3 classes is a top-3)


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
    """``Title [variant]`` (the method's paper name, ``Method.title``); a WiSE-FT row whose chosen α is 0 or 1 says
    which model it equals."""
    from ..plots import method_title
    alpha = _wise_alpha(method, variant)
    if alpha in SAME_AS:
        return f"{method_title(method)} [α = {alpha:g} chosen: {SAME_AS[alpha]}]"
    return method_title(method) + (f" [{variant}]" if isinstance(variant, str) and variant else "")


def kind_of(method: str) -> str:
    """The tables' "type" of a method (its ``Method.kind``), or "combination"."""
    return next((m.kind for m in registry() if m.name == method), "combination")


def results_folder(profile: str, results_dir: str | Path | None = None, root: str | Path | None = None) -> Path:
    """``results_dir`` if given (the runner passes ``<root>/<profile>``), else ``<root>/<profile>``."""
    return Path(results_dir) if results_dir else Path(root or results_root()) / profile


def load(profile: str, results_dir: str | Path | None = None, root: str | Path | None = None) -> pd.DataFrame:
    """All result JSONs of a run folder (accepts a ``results_dir`` or a ``root`` + profile)."""
    folder = results_folder(profile, results_dir, root)
    return load_results(folder.name, folder.parent)


def column(df: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """A column, or a column of ``default`` when the results lack it."""
    return df[name] if name in df.columns else pd.Series([default] * len(df), index=df.index, dtype=object)


def profile_warnings(profile: str) -> list[str]:
    """The warnings a profile's results carry (used when nothing ran yet)."""
    from .. import plugins
    from ..datasets.base import REGISTRY
    from ..models import RANDOM_WEIGHTS, STANDIN_MODELS
    plugins.load()
    prof = get_profile(profile)
    ds = REGISTRY.get(prof.dataset)
    notes = [STANDIN_MODELS.get(prof.model, ""), ds.standin_note if ds is not None and ds.standin else ""]
    return warnings_for(standin_notes=notes, random_weights=prof.pretrained.lower() in RANDOM_WEIGHTS,
                        rehearsal=prof.rehearsal)


def is_standin(df: pd.DataFrame, profile: str | None = None) -> bool:
    """True if any result (or, with no results, the profile) is the offline stand-in."""
    if len(df) and "standin" in df.columns:
        return bool(column(df, "standin", False).fillna(False).astype(bool).any())
    return profile is not None and any(w.startswith(STANDIN) for w in profile_warnings(profile))


def label_of(df: pd.DataFrame, profile: str) -> str:
    """The label of the results (or of the profile when nothing ran); several setups are all named."""
    if len(df) and "label" in df.columns and column(df, "label").notna().any():
        labels = list(dict.fromkeys(str(v) for v in column(df, "label").dropna()))
        return labels[0] if len(labels) == 1 else "MIXED SETUPS: " + " || ".join(labels)
    prof = get_profile(profile)
    return run_label(prof.model, prof.pretrained, prof.dataset, profile_warnings(profile))


def check_one_dataset(df: pd.DataFrame) -> None:
    """Refuse to compare runs of different datasets (or models and weights): their numbers do not mix."""
    from ..errors import ResultsError
    if not len(df) or "dataset" not in df.columns:
        return
    keys = [c for c in ("dataset", "dataset_id", "model", "weights_id") if c in df.columns]
    setups = df[keys].astype(str).drop_duplicates()
    if len(setups) > 1:
        listed = "; ".join(" / ".join(r) for r in setups.itertuples(index=False))
        raise ResultsError(f"This results folder mixes runs of different setups ({listed}); they cannot be compared. "
                           "Fix: give each dataset or model its own results folder (the runner does), or delete the "
                           "runs that do not belong.")


def is_main(df: pd.DataFrame) -> pd.Series:
    """Rows that are a method's main run (variant None) of one of the six methods."""
    return column(df, "method").isin(method_names()) & column(df, "variant").isna()


def shots_of(df: pd.DataFrame) -> pd.Series:
    """Training images per class of each row (NaN: every image)."""
    return pd.to_numeric(column(df, "shots"), errors="coerce")


def default_shots(df: pd.DataFrame) -> float | None:
    """The shots value the overview shows: every training image when trained rows at it exist, else the largest k."""
    main = df[is_main(df) & (column(df, "method") != "zero_shot")] if len(df) and "method" in df.columns else df
    if not len(main):
        return None
    k = shots_of(main)
    return None if k.isna().any() else float(k.max())


def _at_shots(df: pd.DataFrame, shots: Any) -> pd.DataFrame:
    """The rows at one shots value. Zero-shot trains on nothing, so its rows serve every shots value (its rows at
    exactly that value when there are some, else those run on every image)."""
    if not len(df):
        return df
    k = shots_of(df)
    if shots == "auto":
        shots = default_shots(df)
    at = k.isna() if shots is None or pd.isna(shots) else k == float(shots)
    zs = column(df, "method") == "zero_shot"
    zs_at = zs & (at if (zs & at).any() else k.isna())
    return df[(at & ~zs) | zs_at]


def main_rows(df: pd.DataFrame, shots: Any = "auto") -> pd.DataFrame:
    """The main rows at one shots value ("auto": every training image, or the largest k of a grid)."""
    if not len(df) or "method" not in df.columns:
        return pd.DataFrame(columns=["run", "variant", "standin", "shots", *REQUIRED_KEYS])
    return _at_shots(df[is_main(df)], shots)


def _measured(rows: pd.DataFrame) -> str:
    """What the accuracy column measures for these rows."""
    what = [str(v) for v in column(rows, "test_acc_is").dropna().unique()]
    return what[0] if len(what) == 1 else "test top-1"


def borrowed_histories(rows: pd.DataFrame) -> pd.Series:
    """Per row, the recipe whose history it carries when that is not its own (the probe's L-BFGS row keeps the
    AdamW run's), else ""."""
    pairs = zip(column(rows, "history_of"), column(rows, "recipe"))
    return pd.Series([borrowed_history(h, r) for h, r in pairs], index=rows.index, dtype=object)


def _trained_epochs(history: Any) -> float:
    """The epochs a history records (its epoch-0 record, the model before training, is not one), or NaN."""
    if not isinstance(history, list) or not history:
        return np.nan
    return float(sum(1 for h in history if not (isinstance(h, dict) and h.get("epoch") == 0)))


def _aggregate(rows: pd.DataFrame) -> dict[str, Any]:
    """Mean over seeds of one method's (or variant's) runs; accuracy also gets its std."""
    num = lambda c: pd.to_numeric(column(rows, c), errors="coerce")  # noqa: E731
    acc = num("test_acc")
    from_history = pd.Series([_trained_epochs(h) for h in column(rows, "history")], index=rows.index, dtype=float)
    # trained epochs; rows written before epochs_run: their own history's length (never another recipe's)
    epochs = num("epochs_run").fillna(from_history.where(borrowed_histories(rows) == ""))
    sizes = sorted({int(n) for n in num("n_test").dropna()})
    classes = [len(v) for v in column(rows, "per_class_acc") if isinstance(v, (list, tuple, np.ndarray)) and len(v)]
    joined = lambda c: " | ".join(sorted({str(v) for v in column(rows, c).dropna() if str(v)})) or None  # noqa: E731
    return {
        "status": "ok", "n_seeds": int(column(rows, "seed").nunique()),
        "measured": _measured(rows), "n_test": sizes[0] if len(sizes) == 1 else (np.nan if not sizes else -1),
        "epochs": epochs.mean(), "shots": num("shots").max(),
        "trainable_params": num("trainable_params").max(), "total_params": num("total_params").max(),
        "trainable_percent": num("trainable_percent").max(), "train_seconds": num("train_seconds").mean(),
        "test_acc": acc.mean(), "test_acc_std": acc.std(ddof=1) if acc.count() > 1 else np.nan,
        "test_top5": num("test_top5").mean(), "val_acc": num("val_acc").mean(),
        "n_classes": max(classes) if classes else np.nan, **_costs(rows, num, joined),
    }


def _costs(rows: pd.DataFrame, num, joined) -> dict[str, Any]:
    """The cost columns over seeds: means of the counted numbers; the step time's median over the seeds' medians with
    the widest quartiles (two methods are ranked by time only when these ranges do not overlap)."""
    q1, q3 = num("step_ms_q1"), num("step_ms_q3")
    return {
        "steps": num("steps").mean(), "train_tflops": num("train_tflops").mean(),
        "gflops_per_image": num("gflops_per_image").mean(), "train_memory_mb": num("train_memory_mb").mean(),
        "memory_measure": joined("memory_measure"), "step_ms": num("step_ms").median(),
        "step_ms_q1": q1.min(), "step_ms_q3": q3.max(), "step_ms_spread": q3.max() - q1.min(),
        "step_over_forward": num("step_over_forward").median(), "deployed_params": num("deployed_params").max(),
        "model_folder_mb": num("model_folder_mb").mean(), "cuda_peak_mb": num("cuda_peak_mb").mean(),
        "base_params": num("base_params").max(),
        "budget": joined("budget"), "budget_note": joined("budget_note"), "percent_of": joined("percent_of"),
        "step_ms_note": joined("step_ms_note"),
    }


COST_COLUMNS = ["steps", "train_tflops", "gflops_per_image", "train_memory_mb", "memory_measure", "step_ms",
                "step_ms_spread", "trainable_params", "trainable_percent", "deployed_params", "model_folder_mb"]
"""The cost columns of ``summary.csv`` / ``summary.md``, named as every result row names them (see ``costs``)."""

TABLE_COLUMNS = ["method", "type", "status", "n_seeds", "measured", "n_test", "epochs", "steps", "shots",
                 "trainable_params", "trainable_percent", "deployed_params", "model_folder_mb", "total_params",
                 "train_tflops", "gflops_per_image", "train_memory_mb", "memory_measure", "step_ms", "step_ms_spread",
                 "step_ms_q1", "step_ms_q3", "step_over_forward", "train_seconds", "test_acc", "test_acc_std",
                 "test_top5", "val_acc", "n_classes", "cuda_peak_mb", "base_params", "budget", "budget_note",
                 "percent_of", "step_ms_note", "reason"]


def not_applicable(df: pd.DataFrame, method: str) -> str | None:
    """Why ``method`` does not apply to the one model the results come from (None: it does, or that is unknown)."""
    from ..errors import ClipftError
    from ..methods import get
    from ..methods.base import reason_not_applicable
    from ..models import architecture_of
    models = sorted(set(column(df, "model").dropna())) if len(df) else []
    if len(models) != 1:
        return None
    try:
        return reason_not_applicable(get(method), architecture_of(models[0]))
    except (ClipftError, OSError, RuntimeError):  # a model this machine cannot build offline: nothing to say
        return None


def summary_table(df: pd.DataFrame, include_missing: bool = True, shots: Any = "auto") -> pd.DataFrame:
    """One numeric row per method (main runs at one shots value, mean over seeds); missing ones are "not run", or
    "not applicable" with the reason where the method does not fit the results' model (a ResNet has no tokens for
    prefix-tuning)."""
    main = main_rows(df, shots)
    rows = []
    for method in method_names():
        runs = main[main["method"] == method]
        if len(runs):
            rows.append({"method": method, "type": kind_of(method), **_aggregate(runs)})
        elif include_missing:
            reason = not_applicable(df, method)
            rows.append({"method": method, "type": kind_of(method), "status": "not applicable" if reason else "not run",
                         "n_seeds": 0, "reason": reason})
    return pd.DataFrame(rows).reindex(columns=TABLE_COLUMNS)


def combination_table(df: pd.DataFrame, shots: Any = "auto") -> pd.DataFrame:
    """Ensembles, LP-FT, WiSE-FT, adapter fusion and every variant row (sweeps), mean over seeds."""
    empty = pd.DataFrame(columns=["variant", *TABLE_COLUMNS])
    if not len(df) or "method" not in df.columns:
        return empty
    rest = _at_shots(df[~is_main(df)], default_shots(df) if shots == "auto" else shots).copy()
    rest = rest[~column(rest, "selected_on").astype(str).str.contains("test")]  # never a row chosen on test
    rest["variant"] = column(rest, "variant").fillna("")
    order = {m: i for i, m in enumerate(method_names() + COMBINATION_METHODS)}
    rows = [{"method": m, "variant": v or None, "type": kind_of(m), **_aggregate(g)}
            for (m, v), g in rest.groupby(["method", "variant"])]
    table = pd.DataFrame(rows)
    if not len(table):
        return empty
    key = table["method"].map(lambda m: order.get(m, len(order)))
    return table.assign(_k=key).sort_values(["_k", "method", "trainable_params", "variant"], na_position="first") \
        .drop(columns="_k").reset_index(drop=True)


def shots_table(df: pd.DataFrame) -> pd.DataFrame:
    """Main rows by method and shots: mean and std of test accuracy over seeds, and how many seeds."""
    main = df[is_main(df)] if len(df) and "method" in df.columns else pd.DataFrame()
    if not len(main):
        return pd.DataFrame(columns=["method", "shots", "mean", "std", "n_seeds"])
    main = main.assign(_k=shots_of(main), _acc=pd.to_numeric(main["test_acc"], errors="coerce"))
    out = main.groupby(["method", "_k"], dropna=False)["_acc"].agg(["mean", "std", "count"]).reset_index()
    out = out.rename(columns={"_k": "shots", "count": "n_seeds"})
    order = {m: i for i, m in enumerate(method_names())}
    return out.assign(_o=out["method"].map(order)).sort_values(["_o", "shots"]).drop(columns="_o").reset_index(drop=True)


def shots_display(table: pd.DataFrame) -> pd.DataFrame:
    """``shots_table`` as methods x shots cells "mean ± std (n)" in percent."""
    if not len(table):
        return pd.DataFrame()
    cell = lambda r: accuracy_text(r["mean"], r["std"], int(r["n_seeds"])) + f" ({int(r['n_seeds'])})"  # noqa: E731
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


def learning_curves(df: pd.DataFrame) -> tuple[dict[str, pd.Series], dict[str, float]]:
    """Per method's main runs: its own validation accuracy per epoch (mean over seeds), and for a row whose history
    is another recipe's (the probe's L-BFGS row keeps the AdamW run's) its validation accuracy instead."""
    curves, lines = {}, {}
    main = main_rows(df)
    for method in method_names():
        rows = main[column(main, "method") == method]
        borrowed = borrowed_histories(rows) != ""
        if borrowed.any():
            val = pd.to_numeric(column(rows[borrowed], "val_acc"), errors="coerce").dropna()
            if len(val):
                lines[method] = float(val.mean())
        points = [(h.get("epoch"), h.get("val_acc")) for hist in column(rows[~borrowed], "history")
                  for h in (hist if isinstance(hist, list) else []) if isinstance(h, dict)]
        pts = pd.DataFrame(points, columns=["epoch", "val"]).apply(pd.to_numeric, errors="coerce").dropna()
        if len(pts):
            curves[method] = pts.groupby("epoch")["val"].mean()
    return curves, lines


def zero_shot_val(df: pd.DataFrame) -> float | None:
    """Zero-shot's validation accuracy (the dashed line of the learning curves), or None."""
    zs = numeric(main_rows(df), "val_acc")
    zs = zs[column(zs, "method") == "zero_shot"] if len(zs) else zs
    return float(zs["val_acc"].mean()) if len(zs) and zs["val_acc"].notna().any() else None


def curve_starts(df: pd.DataFrame) -> pd.DataFrame:
    """Per curve (the method's paper name): validation accuracy (%) before training (its epoch-0 point, where the run
    recorded one), after its first epoch and at its best, next to zero-shot's (the dashed line); NaN where a row has
    no such point (a row without epochs)."""
    from ..plots import method_title
    curves, lines = learning_curves(df)
    zs = zero_shot_val(df)
    at = lambda c, e: 100 * float(c.loc[e]) if e in c.index else np.nan  # noqa: E731
    rows = [{"method": method_title(m), "val before training (%)": at(c, 0), "val after epoch 1 (%)": at(c, 1),
             "best val (%)": 100 * float(c[c.index > 0].max() if (c.index > 0).any() else c.max())}
            for m, c in curves.items()]
    rows += [{"method": f"{method_title(m)} (no epochs)", "best val (%)": 100 * v} for m, v in lines.items()]
    out = pd.DataFrame(rows, columns=["method", "val before training (%)", "val after epoch 1 (%)", "best val (%)"])
    out["zero-shot val (%)"] = np.nan if zs is None else 100 * zs
    return out.round(1)


def result_files(df: pd.DataFrame) -> pd.DataFrame:
    """The result files as a learner reads them: run, method (paper name), variant, shots, seed, test top-1 (%);
    "—" for no variant, "all" for every training image."""
    from ..plots import method_title
    if not len(df):
        return pd.DataFrame(columns=["run", "method", "variant", "shots", "seed", "test top-1 (%)"])
    return pd.DataFrame({
        "run": column(df, "run"), "method": [method_title(str(m)) for m in column(df, "method")],
        "variant": [v if isinstance(v, str) and v else "—" for v in column(df, "variant")],
        "shots": ["all" if pd.isna(k) else f"{int(k)}" for k in pd.to_numeric(column(df, "shots"), errors="coerce")],
        "seed": column(df, "seed"), "test top-1 (%)": (100 * pd.to_numeric(column(df, "test_acc"),
                                                                            errors="coerce")).round(1)})


def per_class_matrix(df: pd.DataFrame, classnames: Sequence[str] | None = None) -> pd.DataFrame:
    """Methods × classes test accuracy (mean over seeds); many classes are sorted by mean accuracy."""
    from ..plots import floats, unique_labels
    main = main_rows(df)
    rows = {}
    for method in method_names():
        accs = [pd.Series(floats(list(v))) for v in column(main, "per_class_acc")[column(main, "method") == method]
                if isinstance(v, (list, tuple, np.ndarray)) and len(v)]
        if accs:
            rows[method] = pd.concat(accs, axis=1).mean(axis=1)
    mat = pd.DataFrame(rows).T.astype(float)
    if len(mat) and classnames is not None and len(classnames) == mat.shape[1]:
        mat.columns = unique_labels(list(classnames), 10 ** 6)   # equal names stay separate columns
    if mat.shape[1] > 30:
        mat = mat.iloc[:, np.argsort(-mat.mean(axis=0).to_numpy(dtype=float), kind="stable")]
    return mat


def top_k(n_classes: int, k: int = TOP_K) -> int:
    """How many classes a top-k list can hold: min(k, C)."""
    return max(1, min(k, int(n_classes)))


def hardest_classes(matrix: pd.DataFrame, k: int = TOP_K) -> pd.DataFrame:
    """The min(k, C) classes with the lowest accuracy *averaged over the methods* (lowest first), classes × methods,
    in percent, with that mean as the last column (ties keep the class order)."""
    if not len(matrix):
        return pd.DataFrame()
    from ..plots import method_title
    pct = 100 * matrix.T.astype(float)
    pct["mean over methods"] = pct.mean(axis=1)
    order = np.argsort(pct["mean over methods"].to_numpy(dtype=float), kind="stable")
    return pct.iloc[order[:top_k(len(pct), k)]].round(1).rename(columns=lambda m: method_title(str(m)))


def hardest_note(matrix: pd.DataFrame, k: int = TOP_K) -> str:
    """What ``hardest_classes`` shows, in one line."""
    n = matrix.shape[1] if len(matrix) else 0
    if not n:
        return "No per-class accuracies in the results."
    shown = top_k(n, k)
    return (f"The {shown} hardest of {n} classes, ranked by test accuracy averaged over the {len(matrix)} method(s) "
            f"(lowest first)" + (f"; there are only {n} classes, so all are shown." if shown == n else "."))


def memory_kind(measures: Iterable[Any]) -> str:
    """What the training-memory numbers are, from the rows' ``memory_measure``: accounted (the same on every device);
    a row written before accounting (process memory) is named as such, never passed off as the same thing."""
    how = {str(v).split(":")[0].strip() for m in measures if isinstance(m, str) for v in m.split(" | ") if v}
    kinds = sorted("accounted (parameters + gradients + optimizer state + saved activations)"
                   if h.startswith("accounted") else "process memory of an older result (rerun it)"
                   for h in how if h and not h.startswith("trains nothing"))
    return (" and ".join(kinds) if len(kinds) < 2 else "mixed: " + " and ".join(kinds)) or "measure not recorded"


def numeric(table: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """A copy whose ``columns`` are floats (None, strings, pd.NA and missing columns become NaN)."""
    from ..plots import floats
    out = table.copy()
    for c in columns:
        out[c] = floats(list(column(table, c))) if len(table) else pd.Series(dtype=float)
    return out


def count_text(n: Any) -> str:
    """Parameter count for humans: 0, 9.8K, 87.8M."""
    if n is None or pd.isna(n):
        return "—"
    n = float(n)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.{1 if n / div < 100 else 0}f}{unit}"
    return f"{int(n)}"


def number_text(x: Any, fmt: str = "{:.1f}") -> str:
    """A number for display, "—" when missing."""
    return "—" if x is None or pd.isna(x) else fmt.format(float(x))


def accuracy_text(mean: Any, std: Any, n: int) -> str:
    """``85.3 ± 1.2`` (percent) when several seeds exist, else ``85.3``."""
    if mean is None or pd.isna(mean):
        return "—"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 and not pd.isna(std) else f"{100 * mean:.1f}"

