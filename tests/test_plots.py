"""The figures: distinct labels, visible zero bars, readable captions, legends off the data, comparable curves,
zoomed bars, no matplotlib warnings and no crash on empty or non-numeric results."""
from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.ticker import PercentFormatter  # noqa: E402

from clipft_utils import comparison as C, plots  # noqa: E402

METHODS = ("zero_shot", "linear_probe", "bitfit", "prefix_tuning", "lora", "full_finetune")  # the results faked here


LABEL = "ToyCLIP / synthflowers on synthflowers (STAND-IN, not CLIP on Flowers102)"
COLOURS = ("red", "orange", "yellow", "white", "pink", "purple", "blue")
# 102 long names; many share their first 48 characters and differ only in the last words
NAMES = [f"{c} flower with {n} {s} petals and a {centre} centre" for c in COLOURS for n in ("three", "five", "eight")
         for s in ("round", "pointed") for centre in ("brown", "yellow", "white")][:102]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def flat(text: str) -> str:
    """Text with its line breaks and repeated spaces collapsed (wrapped labels -> plain names)."""
    return " ".join(text.split())


def history(epochs: int, top: float = 0.4) -> list[dict]:
    """An ``engine.fit``-like history whose validation accuracy peaks one epoch before the end."""
    acc = list(np.linspace(0.1, top, epochs))
    acc[-1] = acc[-2] - 0.005
    return [{"epoch": e + 1, "train_loss": 4.0 / (e + 1), "val_loss": 4.2 / (e + 1), "val_acc": a}
            for e, a in enumerate(acc)]


def results_frame(n_classes: int = 102) -> pd.DataFrame:
    """Result rows of the six methods (linear probe 50 epochs, the rest 5), a WiSE-FT curve and an ensemble."""
    rng = np.random.default_rng(0)
    rows = []
    for i, m in enumerate(METHODS):
        acc = 0.2 + 0.04 * i
        rows.append({"run": f"{m}_seed0", "method": m, "variant": None, "seed": 0, "label": LABEL, "standin": True,
                     "test_acc": acc, "test_top5": acc + 0.3, "val_acc": acc + 0.01, "n_test": 2040,
                     "per_class_acc": list(np.clip(rng.normal(acc, 0.2, n_classes), 0, 1).round(2)),
                     "trainable_params": [0, 52_000, 60_000, 70_000, 80_000, 1_700_000][i], "total_params": 1_700_000,
                     "trainable_percent": 1.0 * i, "train_seconds": 10.0 * i, "train_memory_mb": 1000.0 + 100 * i,
                     "train_tflops": 0.5 * i, "step_ms": 100.0 + 10 * i, "step_ms_q1": 95.0 + 10 * i,
                     "step_ms_q3": 112.0 + 10 * i, "deployed_params": [0, 52_000, 60_000, 7_000, 80_000, 1_700_000][i],
                     "memory_parts": {"parameters_mb": 900.0, "gradients_mb": 10.0 * i, "optimizer_mb": 20.0 * i,
                                      "activations_mb": 100.0 + 70 * i}, "history": [] if m == "zero_shot" else
                     history(50 if m == "linear_probe" else 5, acc)})
    rows.append({"run": "wise_ft_seed0", "method": "wise_ft", "variant": None, "seed": 0, "label": LABEL,
                 "test_acc": 0.4, "alpha": 0.5, "curve": {"alpha": [0, 0.5, 1], "test_acc": [0.2, 0.42, 0.4],
                                                          "val_acc": [0.21, 0.43, 0.41]}})
    rows.append({"run": "ensemble-lp+lora_seed0", "method": "ensemble", "variant": "lp+lora", "seed": 0,
                 "label": LABEL, "test_acc": 0.41})
    return pd.DataFrame(rows)


def probabilities(n_runs: int = 6, n_images: int = 4, n_classes: int = 102) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    out = {}
    for r in range(n_runs):
        p = rng.random((n_images, n_classes)) ** 8
        out[f"run{r}"] = p / p.sum(axis=1, keepdims=True)
    return out


def comparison_figures(df: pd.DataFrame, table: pd.DataFrame | None = None, classnames=NAMES) -> list:
    """Builders (no-argument callables) of every comparison figure for these results."""
    table = C.summary_table(df) if table is None else table
    image = np.zeros((64, 64, 3), np.uint8)
    return [lambda: C.plot_accuracy_vs_params(table, LABEL), lambda: C.plot_accuracy_vs_compute(table, LABEL),
            lambda: C.plot_step_time(table, LABEL), lambda: C.plot_training_memory(df, LABEL),
            lambda: C.plot_learning_curves(df, LABEL),
            lambda: C.plot_per_class_heatmap(df, LABEL, classnames), lambda: C.plot_combinations(df, LABEL),
            lambda: C.plot_top5(image, classnames[0], probabilities(), 0, classnames, LABEL),
            lambda: C.plot_top5(image, classnames[0], {}, 0, classnames, LABEL)]


def plot_figures() -> list:
    """Builders of every ``plots`` figure with realistic inputs (102 long class names, 6 methods)."""
    images = np.zeros((16, 32, 32, 3), np.uint8)
    labels, preds = np.arange(16) * 6, np.arange(16) * 6 + (np.arange(16) % 2)
    runs = {m: history(50 if m == "linear_probe" else 5) for m in METHODS[1:]}
    curves = {"validation": [0.2, 0.3, 0.35, 0.33], "test": [0.2, 0.3, 0.34, 0.3]}
    subsets = {"validation": np.linspace(0.3, 0.42, 15), "test": np.linspace(0.29, 0.41, 15)}
    return [lambda: plots.prediction_grid(images, labels, preds, NAMES, title=LABEL),
            lambda: plots.per_class_bars(np.r_[np.zeros(23), np.linspace(0.1, 1, 79)], NAMES, title=LABEL),
            lambda: plots.training_curves(runs, title=LABEL, baselines={"zero-shot head": 0.21}),
            lambda: plots.training_curves(history(5), title=LABEL),
            lambda: plots.metric_curve([0.01, 0.1, 1, 10], curves, logx=True, mark=1, title=LABEL),
            lambda: plots.bar_compare({m: 0.3 + 0.01 * i for i, m in enumerate(METHODS)}, title=LABEL, zoom=True),
            lambda: plots.bar_compare({"single": [0.2, 0.5], "ensemble": [0.21, 0.52]}, series=["top-1", "top-5"],
                                      title=LABEL),
            lambda: plots.ranked_bars([f"subset {i}" for i in range(15)], subsets, title=LABEL),
            lambda: plots.slowdown_bars(slowdown_table(), LABEL),
            lambda: plots.bias_change(*bias_moves(), title=LABEL),
            lambda: rank_sweep(),
            lambda: plots.table_figure([["a", 1], ["b", 2]], ["name", "value"], title=LABEL)]


def bias_moves() -> tuple[pd.Series, pd.DataFrame]:
    """Notebook 03's per-kind and kind x block RMS bias changes: every kind moved 0.0159-0.0224 (close values)."""
    kinds = ["ln_pre", "in_proj", "out_proj", "ln_1", "c_fc", "c_proj", "ln_2", "ln_post"]
    per_kind = pd.Series(np.linspace(0.0224, 0.0159, len(kinds)), index=kinds)
    per_block = pd.DataFrame(np.outer(per_kind.values[1:7], [0.98, 1.0, 1.02]), index=kinds[1:7],
                             columns=[0.0, 1.0, 2.0])   # a pivot with missing blocks has float columns
    return per_kind, per_block


def rank_sweep(acc=(0.30, 0.31, 0.29, 0.32, 0.31, 0.30)):
    """Notebook 05's rank sweep: accuracy against trainable parameters (log scale), each point labelled r=k."""
    fig, ax = plt.subplots(figsize=(7, 3.8), layout="constrained")
    trainable = [13_500, 14_000, 15_000, 17_000, 21_000, 29_000][:len(acc)]
    ax.plot(trainable, acc, marker="o")
    plots.label_points(ax, trainable, acc, [f"r={r}" for r in (1, 2, 4, 8, 16, 32)])
    ax.axhline(acc[0], color="grey", ls="--")
    ax.set(xscale="log", title=LABEL)
    plots.percent_axis(ax.yaxis, cap=True)
    return fig


def drawn(builders: list):
    """Build, draw and yield each figure, closing it afterwards (never more than one open)."""
    for build in builders:
        fig = build()
        fig.canvas.draw()
        yield fig
        plt.close(fig)


def slowdown_table() -> pd.DataFrame:
    """Notebook 04's ``slowdown`` frame."""
    table = pd.DataFrame({"measured": ["trained model, cpu", "architecture timing, random weights, this CPU"],
                          "tokens_base": [65, 50], "tokens_prefix": [75, 60], "batch_size": [64, 4],
                          "base_ms": [62.4, 254.2], "prefix_ms": [71.6, 290.6], "ratio": [1.147, 1.143]},
                         index=["ToyCLIP", "ViT-B-32"])
    table["token ratio"] = table.tokens_prefix / table.tokens_base
    return table


def panel_bars(ax) -> tuple[list[float], list[str]]:
    """Bar lengths and tick labels of a horizontal bar panel, from top to bottom."""
    bars = sorted(ax.patches, key=lambda b: -(b.get_y() + b.get_height() / 2))
    ticks = sorted(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]), key=lambda t: -t[0])
    return [b.get_width() for b in bars], [t for _, t in ticks]


def all_texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


# ----------------------------------------------------------------------------- 1. distinct labels
def test_unique_labels_wrap_full_names_and_never_repeat():
    names = ["blue flower with five pointed petals and a brown centre",
             "blue flower with five pointed petals and a yellow centre", "daisy", "daisy"]
    labels = plots.unique_labels(names, 24, ids=[4, 7, 11, 12])
    assert len(set(labels)) == 4
    assert all(max(len(line) for line in lab.split("\n")) <= 24 for lab in labels[:2])
    assert [flat(lab) for lab in labels[:2]] == names[:2]           # wrapped, never truncated
    assert labels[2:] == ["daisy (#11)", "daisy (#12)"]


def test_top5_panels_have_five_distinct_bars_in_probability_order():
    prefix = "a remarkably long flower class name whose first forty-eight characters are shared, "
    names = [prefix + w for w in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")] + ["twin", "twin"]
    p = np.array([[0.05, 0.30, 0.10, 0.25, 0.02, 0.08, 0.12, 0.08]])
    fig = C.plot_top5(np.zeros((8, 8, 3), np.uint8), names[1], {"a": p, "b": p[:, ::-1]}, 0, names, LABEL)
    panels = [ax for ax in fig.axes if ax.patches]
    assert len(panels) == 2
    for ax, probs in zip(panels, (p[0], p[0][::-1])):
        widths, ticks = panel_bars(ax)
        assert len(widths) == 5 and len(ticks) == 5 and len(set(ticks)) == 5
        assert widths == sorted(widths, reverse=True)                 # most likely on top
        assert widths == pytest.approx(sorted(100 * probs, reverse=True)[:5])
        for tick in ticks:                                            # full names, not two 24-character lines
            assert flat(tick).split(" (#")[0] in names


# ----------------------------------------------------------------------------- 2. zero bars and ties
def test_per_class_bars_show_zero_bars_and_count_ties():
    acc = np.r_[np.zeros(23), np.linspace(0.1, 0.9, 79)]
    fig = plots.per_class_bars(acc, NAMES, k=10, title=LABEL)
    best, worst = fig.axes[:2]
    assert worst.get_title() == "10 worst classes (23 classes at 0%)"
    assert best.get_title() == "10 best classes"
    zero_marks = [line for line in worst.get_lines() if len(line.get_xdata()) and line.get_marker() not in ("None", "")]
    assert sum(len(line.get_xdata()) for line in zero_marks) == 10   # a visible mark for each 0% class
    assert [t.get_text() for t in worst.texts] == ["0%"] * 10


# ----------------------------------------------------------------------------- 3. readable captions
def test_prediction_grid_captions_are_readable_and_complete():
    images = np.zeros((16, 32, 32, 3), np.uint8)
    labels, preds = np.arange(16), np.arange(16)[::-1]
    fig = plots.prediction_grid(images, labels, preds, NAMES, n=16, title=LABEL)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 16 and fig.axes[0].get_gridspec().ncols <= 4
    for i, ax in enumerate(shown):
        caption = ax.get_title(loc="left") or ax.get_title()
        size = (ax.title if ax.get_title() else ax._left_title).get_fontsize()
        assert size >= 8
        assert NAMES[labels[i]] in flat(caption) and NAMES[preds[i]] in flat(caption)


# ----------------------------------------------------------------------------- 4. legends
def legends(fig) -> list:
    return [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)


def test_legends_do_not_cover_any_axes():
    checked = 0
    for fig in drawn(plot_figures() + comparison_figures(results_frame())):
        for legend in legends(fig):
            box = legend.get_window_extent()
            for ax in fig.axes:
                if ax.axison:
                    assert not box.overlaps(ax.get_window_extent()), (fig.axes[0].get_title(), ax.get_title())
            checked += 1
    assert checked >= 8


# ----------------------------------------------------------------------------- 5. runs of different lengths
def labelled_lines(ax) -> dict[str, object]:
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_runs_of_different_lengths_share_a_fraction_of_training_axis():
    fig = plots.training_curves({"linear_probe": history(50), "lora": history(5)}, title=LABEL)
    acc = fig.axes[1]
    lines = labelled_lines(acc)
    assert {name.split(" (")[0] for name in lines} == {"linear_probe", "lora"}
    assert all(line.get_xdata()[-1] == pytest.approx(1.0) for line in lines.values())
    assert "fraction of training" in acc.get_xlabel()
    stars = [line for line in acc.get_lines() if line.get_marker() == "*"]
    assert sorted(float(s.get_xdata()[0]) for s in stars) == pytest.approx([0.8, 0.98])   # best epochs marked
    same = plots.training_curves({"a": history(5), "b": history(5)}, title=LABEL).axes[1]
    assert same.get_xlabel() == "epoch" and labelled_lines(same)["a"].get_xdata()[-1] == 5


def test_comparison_learning_curves_use_the_fraction_of_training():
    fig = C.plot_learning_curves(results_frame(), LABEL)
    ax = fig.axes[0]
    curves = [line for name, line in labelled_lines(ax).items() if "epochs" in name]
    assert len(curves) == 5 and all(line.get_xdata()[-1] == pytest.approx(1.0) for line in curves)
    assert "fraction of training" in ax.get_xlabel()
    assert len([line for line in ax.get_lines() if line.get_marker() == "*"]) == 5


def test_a_row_that_keeps_another_recipes_history_is_drawn_as_its_own_validation_line():
    df = results_frame()
    lp = df["method"] == "linear_probe"
    df["recipe"], df["history_of"] = None, None
    df.loc[lp, "recipe"], df.loc[lp, "history_of"] = "sklearn", "torch"   # the L-BFGS row keeps AdamW's history
    names = list(labelled_lines(C.plot_learning_curves(df, LABEL).axes[0]))
    assert "Linear probe (L-BFGS, no epochs)" in names                      # its own recipe, as a line
    assert not [n for n in names if n.startswith("Linear probe") and "AdamW" in n]   # never the AdamW curve
    assert any(n.startswith("LoRA") and "recipe" not in n for n in names)


# ----------------------------------------------------------------------------- 6. zoomed bars
def test_ranked_bars_zoom_to_close_values_and_label_every_bar():
    names = ["lp+lora", "lora", "lp", "ft"]
    fig = plots.ranked_bars(names, {"validation": [0.41, 0.42, 0.40, 0.43], "test": [0.40, 0.41, 0.42, 0.39]},
                            title=LABEL, xlabel="top-1")
    ax = fig.axes[0]
    assert ax.get_xlim()[0] > 0.3 and "not at 0" in ax.get_xlabel()
    assert len(ax.patches) == 8 and len(ax.texts) == 8
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{100 * v:.1f}%" for v in
                                                             [0.41, 0.42, 0.40, 0.43, 0.40, 0.41, 0.42, 0.39])
    widths, ticks = panel_bars(ax)
    assert ticks[0] == "ft" and widths[0] == pytest.approx(0.43)     # ranked by validation, validation first
    assert LABEL in ax.get_title()
    assert plots.ranked_bars(["a", "b"], [0.1, 0.9]).axes[0].get_xlim()[0] == 0   # wide ranges start at 0


def test_bar_compare_zoom_option():
    values = {"bitfit": 0.342, "lora": 0.406, "full": 0.40}
    zoomed = plots.bar_compare(values, title=LABEL, zoom=True).axes[0]
    assert zoomed.get_ylim()[0] > 0 and "not at 0" in zoomed.get_ylabel()
    assert [t.get_text() for t in zoomed.texts] == ["34.2%", "40.6%", "40.0%"]
    assert plots.bar_compare(values, title=LABEL).axes[0].get_ylim()[0] == 0


# ----------------------------------------------------------------------------- 7. slowdown
def test_slowdown_bars_draw_ratio_tokens_and_the_one_line():
    fig = plots.slowdown_bars(slowdown_table(), LABEL)
    ax = fig.axes[0]
    assert sorted(b.get_width() for b in ax.patches) == pytest.approx([1.143, 1.147])
    assert any(line.get_marker() == "|" and len(line.get_xdata()) == 2 for line in ax.get_lines())
    assert any(list(line.get_xdata()) == [1.0, 1.0] for line in ax.get_lines())
    assert any("1.15×" in t and "tokens 1.15×" in t for t in all_texts(fig))
    assert any("ViT-B-32" in flat(t.get_text()) for t in ax.get_yticklabels()) and LABEL in ax.get_title()
    plots.slowdown_bars(slowdown_table().iloc[:0], LABEL).canvas.draw()


# ----------------------------------------------------------------------------- 8. no warnings
def test_every_figure_builds_and_draws_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in drawn(plot_figures() + comparison_figures(results_frame())):
            pass


# ----------------------------------------------------------------------------- empty and non-numeric results
def non_numeric_frame() -> pd.DataFrame:
    """Main rows whose numbers are None, NaN, pd.NA or strings (object dtype), with odd per-class lists."""
    rows = [{"run": f"{m}_seed0", "method": m, "variant": None, "seed": 0, "label": LABEL,
             "test_acc": [None, np.nan, pd.NA, "n/a", None, np.nan][i], "val_acc": None, "trainable_params": "?",
             "train_seconds": None, "train_memory_mb": pd.NA, "train_tflops": "?", "step_ms": None,
             "memory_parts": [None, {"parameters_mb": "x"}, {}, "bad", None, {"activations_mb": 1.0}][i],
             "test_acc_std": None,
             "per_class_acc": [None, [None, None], [np.nan], ["x", 0.5], [], [0.1, 0.2, 0.3]][i],
             "history": [None, [{"epoch": None, "val_acc": "?"}], [], "bad", [{"epoch": 1}], None][i]}
            for i, m in enumerate(METHODS)]
    rows.append({"run": "wise_ft_seed0", "method": "wise_ft", "variant": None, "seed": 0, "curve": [{"alpha": "a"}],
                 "alpha": None, "test_acc": None})
    return pd.DataFrame(rows).astype(object)


def object_table() -> pd.DataFrame:
    """A summary-shaped table whose numbers are pd.NA, None or strings (object dtype)."""
    return pd.DataFrame({"method": list(METHODS), "status": "ok", "test_acc": [pd.NA, 0.3, None, 0.4, "x", 0.5],
                         "test_acc_std": pd.NA, "trainable_params": [pd.NA, 10, 20, None, 40, 50],
                         "train_seconds": [pd.NA] * 6, "train_tflops": [pd.NA, None, 0.1, 0.0, "?", 2.0],
                         "step_ms": [pd.NA, None, 3.0, 4.0, 5.0, "?"], "step_ms_q1": [None] * 6,
                         "step_ms_q3": [pd.NA] * 6,
                         "train_memory_mb": [pd.NA, None, 3.0, 4.0, 5.0, "?"]}).astype(object)


@pytest.mark.parametrize("make", [pd.DataFrame, non_numeric_frame], ids=["empty", "non-numeric"])
def test_comparison_figures_never_raise_on_empty_or_non_numeric_results(make):
    df = make()
    assert isinstance(C.per_class_matrix(df, NAMES), pd.DataFrame)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for i, fig in enumerate(drawn(comparison_figures(df) + comparison_figures(df, object_table())[:3])):
            titles = [flat(ax.get_title()) for ax in fig.axes] + [flat(fig.get_suptitle())]
            assert any(flat(LABEL) in t for t in titles)
            if make is pd.DataFrame and i < 6:
                assert any(t.startswith("no ") for t in all_texts(fig))


def test_plot_functions_survive_empty_inputs():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fig in (plots.per_class_bars([], [], title=LABEL), plots.per_class_bars([np.nan] * 4, NAMES[:4]),
                    plots.training_curves([], title=LABEL), plots.training_curves({}, title=LABEL),
                    plots.bar_compare({}, title=LABEL), plots.bar_compare({"a": None, "b": np.nan}, zoom=True),
                    plots.ranked_bars([], [], title=LABEL), plots.ranked_bars(["a"], [None]),
                    plots.metric_curve([], [], title=LABEL),
                    plots.bias_change(pd.Series([], dtype=float), pd.DataFrame(), title=LABEL),
                    plots.prediction_grid(np.zeros((0, 8, 8, 3), np.uint8), [], [], NAMES, title=LABEL)):
            fig.canvas.draw()


# ----------------------------------------------------------------------------- units, colours, honest scales
def test_accuracy_axes_show_percent():
    """Every accuracy axis reads in % (01's per-class bars, curves, WiSE-FT) like the bars and 07's figures."""
    axes = [plots.per_class_bars(np.linspace(0, 1, 12), NAMES[:12], title=LABEL).axes[0].xaxis,
            plots.training_curves(history(5), title=LABEL).axes[1].yaxis,
            plots.metric_curve([0, 0.5, 1], {"validation": [0.2, 0.3, 0.25]}, title=LABEL).axes[0].yaxis]
    for axis in axes:
        assert isinstance(axis.get_major_formatter(), PercentFormatter)
        axis.axes.figure.canvas.draw()
        assert any(t.get_text().endswith("%") for t in axis.get_ticklabels())
    narrow = rank_sweep().axes[0]                  # 29-32 %: ticks every 0.5 % need a decimal
    narrow.figure.canvas.draw()
    ticks = [t.get_text() for t in narrow.get_yticklabels()]
    assert len(set(ticks)) == len(ticks) and "30.5%" in ticks


def test_validation_and_test_have_one_colour_each_in_every_figure():
    def colour(artist) -> tuple:
        get = artist.get_color if hasattr(artist, "get_color") else artist.get_facecolor
        return to_rgba(get())
    val, test = to_rgba(plots.VAL_COLOR), to_rgba(plots.TEST_COLOR)
    assert val != test
    for order in (["validation", "test"], ["test", "validation"]):
        curves = {name: [0.2, 0.3, 0.25] for name in order}
        lines = labelled_lines(plots.metric_curve([0, 0.5, 1], curves, title=LABEL).axes[0])
        assert (colour(lines["validation"]), colour(lines["test"])) == (val, test)
        ranked = plots.ranked_bars(["a", "b"], {n: [0.3, 0.4] for n in order}, title=LABEL).axes[0]
        by_label = {c.get_label(): colour(c.patches[0]) for c in ranked.containers}
        assert (by_label["validation"], by_label["test"]) == (val, test)
    grouped = plots.bar_compare({"A": [0.3, 0.2], "B": [0.4, 0.35]}, series=["val top-1", "test top-1"]).axes[0]
    assert [colour(c.patches[0]) for c in grouped.containers] == [val, test]


def test_bias_change_colour_scale_starts_at_zero():
    """Close RMS changes (0.0159-0.0224) must not look like a wide spread: the colour scale and bars start at 0."""
    per_kind, per_block = bias_moves()
    fig = plots.bias_change(per_kind, per_block, title=LABEL)
    ax_kind, ax_block = fig.axes[:2]
    assert ax_block.images[0].get_clim() == (0, pytest.approx(per_block.values.max()))
    assert ax_kind.get_xlim()[0] == 0 and len(ax_kind.texts) == 8
    assert [t.get_text() for t in ax_block.get_xticklabels()] == ["0", "1", "2"] and LABEL in fig.get_suptitle()


def test_point_labels_stay_inside_the_frame():
    """05's rank labels (r=32 at the right end, the lowest point; every point at 100 % on a 2-class folder) never
    touch the axes' frame, and the accuracy axis shows no ticks above 100 %."""
    for acc in ((0.30, 0.31, 0.29, 0.32, 0.31, 0.30), (1.0, 1.0)):
        fig = rank_sweep(acc)
        fig.canvas.draw()
        ax = fig.axes[0]
        frame = ax.get_window_extent()
        for text in ax.texts:
            box = text.get_window_extent()
            assert frame.x0 < box.x0 and box.x1 < frame.x1 and frame.y0 < box.y0 and box.y1 < frame.y1, text.get_text()
        assert 1.0 < ax.get_ylim()[1] < 1.02 if max(acc) == 1.0 else ax.get_ylim()[1] < 0.4


def test_accuracy_axes_stop_at_100_percent():
    """Runs at 100 % (a 2-class folder) show no 102 %, 104 % ticks; the best point stays inside the frame."""
    fig = plots.training_curves({"a": [{"epoch": 1, "train_loss": 0.1, "val_acc": 1.0}]}, title=LABEL,
                                baselines={"zero_shot (no epochs)": 1.0})
    fig.canvas.draw()
    acc = fig.axes[1]
    assert 1.0 < acc.get_ylim()[1] < 1.01
    low, high = acc.get_xlim()
    assert [t.get_text() for t in acc.get_xticklabels() if low <= t.get_position()[0] <= high] == ["1"]   # one epoch
    curve = plots.metric_curve([0, 0.5, 1], {"validation": [1.0, 1.0, 1.0]}, title=LABEL).axes[0]
    assert 1.0 < curve.get_ylim()[1] < 1.01


def test_each_row_is_drawn_with_its_own_recipe():
    """06's curves: the probe's L-BFGS row is its validation line (not the AdamW history it keeps), named so."""
    rows = {"zero_shot": {"val_acc": 0.15, "history": []},
            "linear_probe": {"val_acc": 0.369, "recipe": "sklearn", "history_of": "torch", "history": history(50, 0.228)},
            "full_finetune": {"val_acc": 0.4, "history": history(5, 0.4)}}
    curves, lines = plots.curves_and_lines(rows)
    assert list(curves) == ["Full fine-tuning"]                           # paper names, as every legend
    assert lines == {"Zero-shot (no epochs)": 0.15, "Linear probe (L-BFGS, no epochs)": 0.369}
    acc = plots.training_curves(curves, title=LABEL, baselines=lines).axes[1]
    drawn_lines = labelled_lines(acc)
    assert list(drawn_lines["Linear probe (L-BFGS, no epochs)"].get_ydata()) == [0.369, 0.369]
    assert not any(max(line.get_ydata()) == pytest.approx(0.228) for line in drawn_lines.values())
    rows["linear_probe"]["recipe"] = "torch"                         # a row whose recipe is AdamW is its curve
    curves, lines = plots.curves_and_lines(rows)
    assert "Linear probe (AdamW)" in curves and not any(k.startswith("Linear probe") for k in lines)
