"""The tables as display strings, the ``summary.md`` / ``summary.csv`` files, and the command that reproduces a run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..methods import names as method_names
from ..paths import atomic_write_text
from ..results import load_results
from .tables import (TOP_K, accuracy_text, check_one_dataset, column, combination_table, count_text, default_shots,
                     display_name, is_main, kind_of, label_of, main_rows, memory_kind, number_text, profile_warnings,
                     shots_display, shots_of, shots_table, summary_table)

DISPLAY_COLUMNS = ("method", "type", "measured", "on images", "epochs", "steps", "shots", "trainable_params",
                   "trainable_percent", "deployed_params", "model_folder_mb", "train_tflops", "gflops_per_image",
                   "train_memory_mb", "memory_measure", "step_ms", "step_ms_spread", "wall time (s)", "accuracy (%)",
                   "seeds", "top-5 (%)")

COLUMN_NOTES = {
    "steps": "optimizer steps the run trained: its recipe (epochs of passes, or steps: CLIP-LoRA's 500 x shots), at "
             "least a floor per epoch (a small split's loader is cycled), times the profile's budget scale; each "
             "result's `budget` says how. — : no optimizer steps (zero-shot and Tip-Adapter train nothing, L-BFGS "
             "iterates, a combination has no run of its own).",
    "train_tflops": "training compute (TFLOPs): steps x one step's FLOPs on a full batch (forward + backward), "
                    "counted by torch.utils.flop_counter on the method as applied; the methods on cached features "
                    "add the feature pass over their training images; validation passes are not counted. The same "
                    "on every machine.",
    "gflops_per_image": "inference compute per image (GFLOPs), counted on the model its folder rebuilds (LoRA merged, "
                        "the prefix folded): methods that deploy the same network show the same number.",
    "train_memory_mb": "training memory by accounting (MB): parameters (the whole model as it trains) + gradients + "
                       "optimizer state (AdamW: two moments) + what autograd saves for one step's backward on the "
                       "run's batch; the same on every device. Not process memory.",
    "memory_measure": "how train_memory_mb was obtained (each result holds the full text and the parts).",
    "step_ms": "median wall time of one optimizer step (ms) after 5 warm-up steps; — : fewer than 20 steps timed. "
               "Wall time depends on the machine and its load: rank two rows by it only where their step_ms ranges "
               "(quartiles) do not overlap.",
    "step_ms_spread": "the interquartile range of those step times (q3 - q1, ms).",
    "trainable_params": "what the optimizer updates (prefix-tuning's reparameterisation MLP included).",
    "trainable_percent": "trainable_params as a percentage of the pretrained model's parameters (image and text "
                         "towers: {of}), the same denominator in every row.",
    "deployed_params": "what the model folder adds or changes after training (folded; the head included).",
    "model_folder_mb": "size of the run's model folder (model.safetensors + manifest.json).",
    "wall time (s)": "wall time of the run's training and validation, as measured (not a ranking: see step_ms).",
}
"""What each cost column of the tables measures (summary.md prints one note per column)."""

SEVERAL_MODELS = ("ensemble",)
"""Rows made of several models: their trainable parameters are the sum over the members, a percentage of one model
is not defined."""

def with_dashes(table: pd.DataFrame, mark: str = "—") -> pd.DataFrame:
    """The table with every missing value (NaN, None, <NA>) shown as one mark, the course's "nothing here"."""
    return table.astype(object).where(table.notna(), mark)


def _top5_cell(r: dict) -> str:
    """Top-5 accuracy, or why it is not shown: with C <= 5 classes every class is in the top 5 (100 %, says nothing)."""
    n = r.get("n_classes")
    if n is not None and not pd.isna(n) and n <= TOP_K:
        return f"— ({int(n)} classes)"
    return accuracy_text(r.get("test_top5"), np.nan, 1)


def column_notes(table: pd.DataFrame) -> list[str]:
    """One line per cost column: what it measures (the denominator of trainable_percent named)."""
    of = " / ".join(sorted({str(v) for v in column(table, "percent_of").dropna()})) or "not recorded"
    return [f"{name}: {text.format(of=of)}" for name, text in COLUMN_NOTES.items()]


def table_notes(table: pd.DataFrame) -> list[str]:
    """What the columns of ``format_table(table)`` mean, and where a cell is left empty on purpose."""
    notes = column_notes(table)
    methods = set(column(table, "method"))
    if methods & set(SEVERAL_MODELS):
        notes.append("Ensembles are several models: their trainable and deployed params, train_tflops and "
                     "gflops_per_image are sums over the members, and trainable_percent is left empty (a percentage "
                     "of one model is not defined for several).")
    n = pd.to_numeric(column(table, "n_classes"), errors="coerce")
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
        if r.get("status") in ("not run", "not applicable"):
            status = f"not applicable: {r['reason']}" if r.get("status") == "not applicable" else "not run"
            out.append({**dict.fromkeys(DISPLAY_COLUMNS, "—"), "method": display_name(r["method"]),
                        "type": r.get("type", ""), "accuracy (%)": status, "seeds": "0"})
            continue
        n = int(r.get("n_seeds") or 0)
        variant = r.get("variant")
        n_test = r.get("n_test")
        out.append({
            "method": display_name(r["method"], variant),
            "type": r.get("type") or kind_of(r["method"]),
            "measured": r.get("measured") or "test top-1",
            "on images": "mixed" if n_test == -1 else number_text(n_test, "{:,.0f}"),
            "epochs": number_text(r.get("epochs"), "{:.3g}") if r.get("type") != "no training" else "0",
            "shots": ("0" if r.get("type") == "no training" else   # zero-shot uses no training image
                      "all" if pd.isna(r.get("shots", np.nan)) else number_text(r.get("shots"), "{:.0f}")),
            **_cost_cells(r),
            "accuracy (%)": accuracy_text(r.get("test_acc"), r.get("test_acc_std"), n), "seeds": str(n),
            "top-5 (%)": _top5_cell(r),
        })
    return pd.DataFrame(out, columns=list(DISPLAY_COLUMNS))


def _cost_cells(r: dict) -> dict[str, str]:
    """The cost columns of one row as display strings ("—" where a row has no such number; the notes say why)."""
    measure = r.get("memory_measure")
    return {
        "steps": number_text(r.get("steps"), "{:.0f}"),
        "trainable_params": count_text(r.get("trainable_params")),
        "trainable_percent": "—" if r["method"] in SEVERAL_MODELS else number_text(r.get("trainable_percent"),
                                                                                    "{:.3g}"),
        "deployed_params": count_text(r.get("deployed_params")),
        "model_folder_mb": number_text(r.get("model_folder_mb"), "{:.3g}"),
        "train_tflops": number_text(r.get("train_tflops"), "{:.3g}"),
        "gflops_per_image": number_text(r.get("gflops_per_image"), "{:.4g}"),
        "train_memory_mb": number_text(r.get("train_memory_mb"), "{:.1f}"),
        "memory_measure": str(measure).split(":")[0] if isinstance(measure, str) and measure else "—",
        "step_ms": number_text(r.get("step_ms"), "{:.0f}"),
        "step_ms_spread": number_text(r.get("step_ms_spread"), "{:.0f}"),
        "wall time (s)": number_text(r.get("train_seconds")),
    }


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table (no extra dependency)."""
    cells = [[str(c) for c in table.columns]] + [[str(v).replace("|", "/") for v in row] for row in table.values]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.columns))]
    line = lambda row: "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, cells[1:])])


def memory_note(df: pd.DataFrame) -> str:
    """What the training-memory column is (accounted, the same on every device), and the GPU peak where measured."""
    peaks = pd.to_numeric(column(df, "cuda_peak_mb"), errors="coerce").notna().any() if len(df) else False
    return (f"train_memory_mb: {memory_kind(column(df, 'memory_measure'))}"
            + ("; the CUDA allocator's measured peak is in each result (cuda_peak_mb)." if peaks else
               "; no GPU peak was measured (no run trained on a GPU)."))


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
             ({w for ws in column(df, "warnings").dropna() for w in (ws if isinstance(ws, list) else [])} or warnings)]
    if alarm:
        alarm.append("\n> These numbers say whether the code works, not how CLIP does on real data.")
    k = default_shots(df)
    sizes = sorted({int(n) for n in pd.to_numeric(column(main_rows(df), "n_test"), errors="coerce").dropna()})
    tested = f"Test split: {' / '.join(f'{n:,}' for n in sizes)} images" + (
        " (runs differ: compare rows with care)." if len(sizes) > 1 else ".") if sizes else ""
    from .tradeoffs import budget_check, step_time_order
    text = "\n".join([f"# clipft summary — profile {profile}", "", f"**{label}**", *alarm, "",
                      f"Main rows: {'every training image' if k is None else f'{int(k)} training image(s) per class'}; "
                      "accuracy is mean ± std over seeds when several seeds exist. " + tested + " " + memory_note(df),
                      "", *[f"- {n}" for n in table_notes(table)], "",
                      to_markdown(format_table(table)), "",
                      f"{int((table['status'] == 'ok').sum())} of {len(method_names())} methods have results.", "",
                      *[f"- {line}" for line in budget_check(table) + ["Step times: " + "; ".join(step_time_order(table))]],
                      ""])
    combo = combination_table(df)
    if len(combo):
        text += ("\n## Combinations and variants\n\n"
                 "Each row says what it measured and on how many images; all choices were made on validation. The "
                 "columns are those of the table above. " + " ".join(table_notes(combo)[len(COLUMN_NOTES):]) + "\n\n"
                 + to_markdown(format_table(combo)) + "\n\n" + "\n".join(f"- {line}" for line in budget_check(combo))
                 + "\n")
    by_shots = shots_table(df)
    if by_shots["shots"].nunique(dropna=False) > 1:
        text += "\n## Accuracy by training images per class (mean ± std (seeds))\n\n" + \
                to_markdown(shots_display(by_shots).reset_index()) + "\n"
    atomic_write_text(folder / "summary.md", text)
    return text


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
    main = df[is_main(df)] if len(df) and "method" in df.columns else pd.DataFrame()
    if shots is None:
        ks = shots_of(main[main["method"] != "zero_shot"]) if len(main) else pd.Series(dtype=float)
        shots = [int(k) for k in sorted(ks.dropna().unique())] + (["all"] if ks.isna().any() else [])
    if [str(k) for k in shots] not in ([], [str(prof.shots if prof.shots is not None else "all")]):
        parts += ["--shots", *map(str, shots)]
    seeds = seeds if seeds is not None else sorted({int(v) for v in column(main, "seed").dropna()}) or [course.seed]
    parts += ["--seeds", *map(str, seeds)]
    from ..records import run_options   # the -p values the runs were given (epochs=1, lora.ranks=[1,2], ...)
    return " ".join(parts + [shlex.quote(o) for o in run_options(course.results_dir)])

