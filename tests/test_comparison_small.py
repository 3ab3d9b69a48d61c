"""07's helpers on the folders users bring (2, 3 and 6 classes), and what 07's figures, tables and commands say."""
from __future__ import annotations

import json

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from clipft_utils import comparison as C  # noqa: E402
from clipft_utils.config import get_profile  # noqa: E402

from clipft_utils.evaluate import EvalResult  # noqa: E402
from clipft_utils.results import load_results, make_result, save_result  # noqa: E402

METHODS = ("zero_shot", "linear_probe", "bitfit", "prefix_tuning", "lora", "full_finetune")  # the results faked here

PER_CLASS = 10
# method: (trainable params, training compute TFLOPs (also its seconds), training memory MB, validation accuracy)
COSTS = {"zero_shot": (0, 0.0, None, 0.40), "linear_probe": (1_000, 2.0, 250.0, 0.50),
         "bitfit": (5_000, 10.0, 260.0, 0.55), "prefix_tuning": (8_000, 12.0, 270.0, 0.45),
         "lora": (20_000, 15.0, 280.0, 0.60), "full_finetune": (1_000_000, 30.0, 300.0, 0.65)}


def per_class_eval(accs: list[float]) -> EvalResult:
    """An EvalResult on ``PER_CLASS`` images per class whose per-class accuracies are ``accs``."""
    n_classes = len(accs)
    labels = np.repeat(np.arange(n_classes), PER_CLASS)
    logits = np.zeros((len(labels), n_classes), np.float32)
    for i, y in enumerate(labels):
        right = i % PER_CLASS < round(accs[y] * PER_CLASS)
        logits[i, y if right else (y + 1) % n_classes] = 5.0
        logits[i, np.arange(n_classes)] += np.linspace(0, 0.1, n_classes)   # distinct probabilities
    return EvalResult.from_logits(logits, labels)


def write(folder, method: str, accs: list[float], seed: int = 0, variant: str | None = None, **extra) -> None:
    params, secs, mem, val = COSTS.get(method, (0, 0.0, None, 0.5))
    test = per_class_eval(accs)
    history = [] if method == "zero_shot" else [{"epoch": e + 1, "val_acc": val * (e + 2) / 4} for e in range(3)]
    costs = {"train_memory_mb": mem, "train_tflops": secs, "steps": 0 if method == "zero_shot" else 10,
             "memory_measure": "accounted: parameters + gradients + AdamW state + saved activations" if mem else None,
             "deployed_params": params, "base_params": 1_001_000}
    res = make_result(method=method, model="ToyCLIP", pretrained="synthflowers", dataset="synthflowers",
                      profile="smoke", seed=seed, test=test, val_acc=val, trainable_params=params,
                      total_params=1_001_000, train_seconds=secs, eval_seconds=0.1, images_per_second=None,
                      peak_memory_mb=None, config={}, history=history, variant=variant, standin=True,
                      **{**costs, **extra})
    save_result(res, folder, predictions=test)


def small_run(tmp_path, n_classes: int) -> pd.DataFrame:
    """Every method on ``n_classes`` classes; class 0 (first alphabetically) is the hardest for every method."""
    folder = tmp_path / "smoke"
    for i, method in enumerate(METHODS):
        accs = [0.1] + [min(1.0, 0.5 + 0.1 * ((c + i) % 5)) for c in range(1, n_classes)]
        write(folder, method, accs)
    return load_results("smoke", tmp_path)


def names(n: int) -> list[str]:
    return [f"class {chr(ord('a') + i)}" for i in range(n)]


# ----------------------------------------------------------------------------- 2, 3 and 6 classes
@pytest.mark.parametrize("n", [2, 3, 6])
def test_the_top_k_table_and_figure_hold_min_5_c_classes(tmp_path, n):
    df = small_run(tmp_path, n)
    probs = C.aligned_runs(tmp_path / "smoke", C.main_runs(df), np.repeat(np.arange(n), PER_CLASS))
    assert len(probs) == len(METHODS)
    table = C.top5(probs, C.most_disputed(probs), names(n))     # was: ValueError below five classes
    assert table.shape == (min(5, n), len(METHODS))
    assert list(table.index) == [f"#{i + 1}" for i in range(min(5, n))]
    fig = C.plot_top5(np.zeros((8, 8, 3), np.uint8), names(n)[0], probs, 0, names(n), "LABEL")
    panels = [ax for ax in fig.axes if ax.patches]
    assert len(panels) == len(METHODS) and all(len(ax.patches) == min(5, n) for ax in panels)
    assert f"Top-{min(5, n)} " in fig._suptitle.get_text()
    assert ("classes)" in fig._suptitle.get_text()) == (n < 5)
    plt.close(fig)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_the_hardest_classes_are_ranked_by_mean_accuracy_over_methods(tmp_path, n):
    df = small_run(tmp_path, n)
    matrix = C.per_class_matrix(df, names(n))
    assert matrix.shape == (len(METHODS), n)
    hard = C.hardest_classes(matrix)
    assert len(hard) == min(5, n) and hard.index[0] == "class a"            # the hardest, not the last alphabetically
    means = hard["mean over methods"].to_list()
    assert means == sorted(means) and means[0] == pytest.approx(10.0)
    if n == 6:                                                              # the easiest class is left out
        easiest = (100 * matrix.mean(axis=0)).idxmax()
        assert easiest not in hard.index
    note = C.hardest_note(matrix)
    assert f"The {min(5, n)} hardest of {n} classes" in note and f"averaged over the {len(METHODS)} method(s)" in note
    assert ("all are shown" in note) == (n <= 5)
    fig = C.plot_per_class_heatmap(df, "LABEL", names(n))
    assert fig.axes[0].images and fig.axes[0].images[0].get_array().shape == (len(METHODS), n)
    plt.close(fig)


@pytest.mark.parametrize("n", [2, 3, 6])
def test_the_overview_leaves_top_5_empty_where_every_class_is_in_the_top_5(tmp_path, n):
    table = C.summary_table(small_run(tmp_path, n))
    assert set(table["n_classes"].dropna()) == {n}
    shown = C.format_table(table).set_index("method")
    cell = shown.loc["LoRA", "top-5 (%)"]
    assert cell == f"— ({n} classes)" if n <= 5 else 0 <= float(cell) <= 100
    assert any("top-5 (%) is left empty" in note for note in C.table_notes(table)) == (n <= 5)
    assert any(f"(here {n} class(es))" in note for note in C.table_notes(table)) == (n <= 5)


# ----------------------------------------------------------------------------- accuracy vs shots (one value)
def test_the_shots_curve_is_drawn_only_with_several_shots_values(tmp_path):
    folder = tmp_path / "smoke"
    write(folder, "zero_shot", [0.5, 0.5, 0.5])
    write(folder, "lora", [0.6, 0.6, 0.6])
    df = load_results("smoke", tmp_path)
    assert "not drawn" in C.shots_curve_skipped(df) and "every training image" in C.shots_curve_skipped(df)
    write(folder, "lora", [0.6, 0.6, 0.6], shots=4)
    assert "4 per class and every training image" in C.shots_curve_skipped(load_results("smoke", tmp_path))
    write(folder, "lora", [0.7, 0.7, 0.7], shots=8)
    df = load_results("smoke", tmp_path)
    assert C.shots_curve_skipped(df) == "" and C.curve_shots(df) == [4.0, 8.0]
    ax = C.plot_accuracy_vs_shots(df, "LABEL").axes[0]
    assert ax.get_xscale() == "log" and "(log scale)" in ax.get_xlabel() and ax.get_legend() is not None
    plt.close("all")


# ----------------------------------------------------------------------------- learning curves
def test_the_l_bfgs_probe_is_its_validation_line_not_the_adamw_curve(tmp_path):
    folder = tmp_path / "smoke"
    write(folder, "zero_shot", [0.5, 0.5])
    write(folder, "lora", [0.6, 0.6])
    write(folder, "linear_probe", [0.6, 0.6], recipe="sklearn", history_of="torch", epochs_run=None)
    df = load_results("smoke", tmp_path)
    curves, lines = C.learning_curves(df)
    assert set(curves) == {"lora"} and lines == {"linear_probe": pytest.approx(0.50)}
    ax = C.plot_learning_curves(df, "LABEL").axes[0]
    named = {line.get_label(): line for line in ax.get_lines()}
    probe = named["Linear probe (L-BFGS, no epochs)"]
    assert list(probe.get_ydata()) == [pytest.approx(50.0)] * 2 and probe.get_linestyle() == "-."
    assert not [n for n in named if n.startswith("Linear probe") and "epochs)" in n and "no epochs" not in n]
    plt.close("all")
    write(folder, "linear_probe", [0.6, 0.6], recipe="torch", history_of="torch", epochs_run=3)
    curves, lines = C.learning_curves(load_results("smoke", tmp_path))
    assert "linear_probe" in curves and not lines                              # AdamW won: its own curve


def test_curve_starts_gives_the_first_points_beside_zero_shot(tmp_path):
    folder = tmp_path / "smoke"
    write(folder, "zero_shot", [0.5, 0.5])
    write(folder, "lora", [0.6, 0.6])
    starts = C.curve_starts(load_results("smoke", tmp_path)).set_index("method")
    assert starts.loc["LoRA", "val after epoch 1 (%)"] == pytest.approx(30.0)   # 0.60 * 2 / 4
    assert starts.loc["LoRA", "best val (%)"] == pytest.approx(60.0)
    assert starts.loc["LoRA", "zero-shot val (%)"] == pytest.approx(40.0)
    assert pd.isna(starts.loc["LoRA", "val before training (%)"])             # written before epoch-0 records


# ----------------------------------------------------------------------------- combinations
def test_ensembles_have_no_trainable_percent_and_wise_ft_at_an_end_says_what_it_equals(tmp_path):
    folder = tmp_path / "smoke"
    write(folder, "full_finetune", [0.6, 0.6])
    write(folder, "ensemble", [0.7, 0.7], variant="zs+lp")
    write(folder, "wise_ft", [0.6, 0.6], variant="alpha1", alpha=1.0)
    write(folder, "wise_ft", [0.6, 0.6], variant="alpha0.5", alpha=0.5, seed=1)
    combo = C.combination_table(load_results("smoke", tmp_path))
    shown = C.format_table(combo).set_index("method")
    assert shown.loc["Ensemble [zs+lp]", "trainable_percent"] == "—"
    assert shown.loc["Ensemble [zs+lp]", "trainable_params"] != "—"
    assert "WiSE-FT [α = 1 chosen: equals full fine-tuning]" in shown.index
    assert "WiSE-FT [alpha0.5]" in shown.index
    assert C.display_name("wise_ft", "alpha0") == "WiSE-FT [α = 0 chosen: equals the starting zero-shot model]"
    assert any("Ensembles are several models" in n for n in C.table_notes(combo))
    fig = C.plot_combinations(load_results("smoke", tmp_path), "LABEL")
    ticks = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert "WiSE-FT [α = 1 chosen: equals full fine-tuning]" in ticks
    plt.close(fig)


def test_wise_ft_colours_match_notebook_06(tmp_path):
    folder = tmp_path / "smoke"
    curve = [{"alpha": a, "test_acc": 0.5 + a / 4, "val_acc": 0.4 + a / 4} for a in (0, 0.5, 1)]
    write(folder, "wise_ft", [0.6, 0.6], variant="alpha1", alpha=1.0, curve=curve)
    fig = C.plot_combinations(load_results("smoke", tmp_path), "LABEL")
    colours = {line.get_label(): matplotlib.colors.to_hex(line.get_color()) for line in fig.axes[0].get_lines()}
    assert colours["validation (chooses α)"] == matplotlib.colors.to_hex("tab:blue")   # as 06's WiSE-FT figure
    assert colours["test"] == matplotlib.colors.to_hex("tab:orange")
    plt.close(fig)


# ----------------------------------------------------------------------------- the recommender grid and "cheap"
def measured_run(tmp_path) -> pd.DataFrame:
    folder = tmp_path / "smoke"
    for method in METHODS:
        write(folder, method, [0.5, 0.5])
    return load_results("smoke", tmp_path)


def test_budgets_from_the_measured_range_change_the_pick(tmp_path):
    df = measured_run(tmp_path)
    budgets = C.memory_budgets(df)
    assert list(budgets) == [250.0, 260.0, 270.0, 280.0, 300.0]       # every row's train_memory_mb, as the table shows it
    grid, note = C.recommendation_grid(df, extra={8192.0: "8.0 GB (memory_budget_mb)"})
    assert grid["best"].nunique() > 2                                    # was: identical rows at 2/8/32 GB
    assert list(grid["best"]) == ["zero_shot", "linear_probe", "bitfit", "bitfit", "lora", "full_finetune",
                                  "full_finetune"]
    assert grid.index[0].endswith("(below every row's)") and "each of the 5 values in the table" in note
    assert "best: zero_shot → linear_probe → bitfit → lora → full_finetune;" in note


def test_the_grid_says_plainly_when_budgets_cannot_separate_methods(tmp_path):
    folder = tmp_path / "smoke"
    write(folder, "zero_shot", [0.5, 0.5])
    write(folder, "lora", [0.6, 0.6])
    grid, note = C.recommendation_grid(load_results("smoke", tmp_path))
    assert len(grid) == 2 and "cannot" in note


def test_cheap_with_labelled_data_ranks_by_accuracy_gained_per_tflop(tmp_path):
    df = measured_run(tmp_path)
    rec = C.recommend(df, 16_000, need="cheap")
    assert rec.method == "linear_probe"                # +10 val points for 2 TFLOPs beats lora's +20 for 15
    assert any("per TFLOP" in r and "cost = counted training compute" in r for r in rec.reasons)
    assert C.recommend(df, 16_000, need="cheap", have_data=False).method == "zero_shot"


def test_cheap_is_zero_shot_only_when_no_trained_method_beats_it(tmp_path):
    df = measured_run(tmp_path)
    df.loc[df["method"] == "zero_shot", "val_acc"] = 0.9                 # nothing trained beats zero-shot
    rec = C.recommend(df, 16_000, need="cheap")
    assert rec.method == "zero_shot" and any("no trained method that fits beats zero-shot" in r for r in rec.reasons)


# ----------------------------------------------------------------------------- the command that reproduces a run
def course_like(profile: str = "smoke", name: str = "synthflowers", root=None, results_dir=None, seed=0):
    return SimpleNamespace(profile=get_profile(profile), data=SimpleNamespace(name=name, root=root), seed=seed,
                           results_dir=results_dir or "/nonexistent")


def record(folder, notebook: str, scope: str, **given) -> None:
    """A completion record as the runner writes it (only what run_options reads: the options the run was given)."""
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    (folder / "runs" / f"{notebook}.json").write_text(json.dumps(
        {"notebook": notebook, "given": [[k, f"{scope}.{k}", json.dumps(v)] for k, v in given.items()]}))


def test_the_printed_command_reproduces_this_run(tmp_path):
    folder = tmp_path / "smoke"
    write(folder, "zero_shot", [0.5, 0.5])
    for seed in (0, 1):
        for k in (2, 4):
            write(folder, "lora", [0.6, 0.6], seed=seed, shots=k)
    df = load_results("smoke", tmp_path)
    assert C.run_command(course_like(), df) == "./run_all.sh --profile smoke --shots 2 4 --seeds 0 1"
    assert C.run_command(course_like(), df, seeds=[0, 1, 2]).endswith("--shots 2 4 --seeds 0 1 2")
    # the -p values the runs were given come from their completion records: shared ones plain, others scoped
    record(folder, "01_zero_shot", "zero_shot", epochs=1, test_per_class=0)
    record(folder, "05_lora", "lora", epochs=1, test_per_class=0, ranks=[1, 2])
    record(folder, "06_full_finetune", "full_finetune", epochs=2, test_per_class=0)
    mine = course_like(name="imagefolder", root=tmp_path / "my flowers", results_dir=folder)
    assert C.run_command(mine, df, shots=[1, 8]) == (
        f"./run_all.sh --profile smoke --data '{tmp_path}/my flowers' --shots 1 8 --seeds 0 1 "
        "-p zero_shot.epochs=1 -p lora.epochs=1 -p full_finetune.epochs=2 -p test_per_class=0 -p 'ranks=[1, 2]'")
    assert C.run_command(course_like("full", "flowers102"), pd.DataFrame()) == "./run_all.sh --profile full --seeds 0"
    one = tmp_path / "one" / "smoke"
    write(one, "lora", [0.6, 0.6])
    assert C.run_command(course_like(), load_results("smoke", tmp_path / "one")) == \
        "./run_all.sh --profile smoke --seeds 0"                          # every training image: no --shots


def test_the_notebook_prints_commands_only_through_run_command():
    import json
    from clipft_utils.paths import PROJECT_ROOT
    cells = json.loads((PROJECT_ROOT / "notebooks" / "07_comparison.ipynb").read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    text = "".join("".join(c["source"]) for c in cells)
    assert "./run_all.sh" not in text.replace("`./run_all.sh`", "")     # no hand-typed command lines
    assert sum("cmp.run_command(" in c for c in code) >= 3


# ----------------------------------------------------------------------------- labels and titles
def test_scatter_labels_sit_in_a_legend_and_the_memory_figure_says_what_it_counts(tmp_path):
    df = measured_run(tmp_path)
    table = C.summary_table(df)
    for fig in (C.plot_accuracy_vs_params(table, "LABEL"), C.plot_accuracy_vs_compute(table, "LABEL")):
        ax = fig.axes[0]
        assert not ax.texts                                               # no labels beside points to overlap
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {C.method_title(m) for m in METHODS} <= {t.split(" (")[0] for t in legend}   # paper names
        plt.close(fig)
    title = C.plot_training_memory(df, "LABEL").axes[0].get_title()
    assert "by accounting" in title and "RSS" not in title
    plt.close("all")
