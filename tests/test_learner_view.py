"""What the course shows a learner (issue 30): one percent format with exact ticks, one colour and one paper name per
method, training curves from epoch 0 with an outlying loss kept off the axis, WiSE-FT's curve described from its
numbers, the AdamW probe's learning rate chosen on validation, 07's photo table, missing values shown one way, the
reading-time estimate, and the solutions' short training runs."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from clipft_utils import combine, comparison as C, plots  # noqa: E402
from clipft_utils.course import reading  # noqa: E402
from clipft_utils.methods import linear_probe as LP, make_config, names  # noqa: E402

LABEL = "ToyCLIP / synthflowers (STAND-IN)"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ----------------------------------------------------------------------------- one unit, one formatter
@pytest.mark.parametrize("ticks, shown", [([0.2, 0.225, 0.25, 0.275, 0.3], ["20.0%", "22.5%", "25.0%", "27.5%", "30.0%"]),
                                          ([0.2, 0.3, 0.4], ["20%", "30%", "40%"]),
                                          ([0.3, 0.305, 0.31], ["30.0%", "30.5%", "31.0%"])])
def test_percent_ticks_show_every_tick_exactly(ticks, shown):
    """Ticks every 2.5 % read 22.5 %, 25.0 %, 27.5 % — never "22 %, 25 %, 28 %" (27.5 shown as 28)."""
    assert plots.TickPercent().format_ticks(ticks) == shown


def test_one_percent_format_for_prints_tables_and_bar_labels():
    assert plots.pct(0.2039) == "20.4%" and plots.pct(None) == "—" and plots.value_format(True)(0.3975) == "39.8%"
    table = pd.DataFrame({"val top-1": [0.2118, np.nan], "train_loss": [2.95, np.nan], "epoch": [1, 0]})
    shown = plots.percent_table(table, missing="—")
    assert list(shown.columns) == ["val top-1 (%)", "train_loss", "epoch"]
    assert shown.iloc[0, 0] == 21.2 and shown.iloc[1, 0] == "—" and shown.iloc[1, 1] == "—"
    assert C.with_dashes(pd.DataFrame({"a": [None, np.nan, pd.NA, 1]})).iloc[:3, 0].tolist() == ["—"] * 3


# ----------------------------------------------------------------------------- one palette, paper names
def test_every_method_and_combination_has_its_own_colour_and_a_plug_in_never_takes_one():
    kinds = list(names()) + list(plots.COMBINATION_TITLES)
    colours = {k: plots.method_colour(k) for k in kinds}
    assert len(set(colours.values())) == len(kinds)                    # 10 methods + 4 combinations, all distinct
    assert C.method_colour("lora") == plots.method_colour("lora")      # 07 draws with 02-06's palette
    for plug_in in ("toy_norm", "an_eleventh_method", "x"):
        assert plots.method_colour(plug_in) not in colours.values()    # never zero-shot's (or anyone's) colour
        assert plots.method_colour(plug_in) == plots.method_colour(plug_in)
    shades = {plots.method_colour("prefix_tuning", v) for v in (None, "prompt", "vpt_deep")}
    assert len(shades) == 3


def test_tables_and_legends_use_paper_names():
    assert plots.method_title("tip_adapter_f") == "Tip-Adapter-F" and plots.method_title("lp_ft") == "LP→FT"
    assert C.display_name("lora", "r8") == "LoRA [r8]" and plots.method_title("not_a_method") == "not_a_method"
    fig = plots.bar_compare({"LoRA": 0.4, "Zero-shot": 0.2, "other": 0.3})
    bars = fig.axes[0].patches
    assert to_rgba(bars[0].get_facecolor()) == to_rgba(plots.method_colour("lora"))
    assert to_rgba(bars[1].get_facecolor()) == to_rgba(plots.method_colour("zero_shot"))


# ----------------------------------------------------------------------------- curves from epoch 0
def history(epochs: int, start: float, top: float, loss: float = 3.0) -> list[dict]:
    """An engine history: the epoch-0 record (validation only), then ``epochs`` trained epochs."""
    return [{"epoch": 0, "val_acc": start, "val_loss": loss + 1}] + [
        {"epoch": e, "train_loss": loss / e, "val_loss": loss / e, "val_acc": start + (top - start) * e / epochs}
        for e in range(1, epochs + 1)]


def test_training_curves_draw_the_start_and_star_a_trained_epoch():
    acc = plots.training_curves({"BitFit": history(5, 0.21, 0.33)}, title=LABEL).axes[1]
    curve = next(line for line in acc.get_lines() if line.get_label() == "BitFit")
    assert curve.get_xdata()[0] == 0 and curve.get_ydata()[0] == pytest.approx(0.21)      # the jump from the start
    assert to_rgba(curve.get_color()) == to_rgba(plots.method_colour("bitfit"))
    worse = plots.training_curves({"a": history(3, 0.5, 0.3)}, title=LABEL).axes[1]       # training made it worse
    star = next(line for line in worse.get_lines() if line.get_marker() == "*")
    assert star.get_xdata()[0] >= 1                                                       # the start is no best epoch


def test_an_outlying_loss_is_left_off_the_axis_and_named():
    runs = {"Tip-Adapter-F": history(5, 0.3, 0.33, loss=9.5), "BitFit": history(5, 0.2, 0.33), "LoRA": history(5, 0.2, 0.4)}
    loss_ax = plots.training_curves(runs, title=LABEL).axes[0]
    assert loss_ax.get_ylim()[1] < 9.5 and loss_ax.get_ylim()[1] >= 4.0
    legend = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert any(t.startswith("Tip-Adapter-F: loss up to 10.5, off the axis") for t in legend), legend


def test_curve_starts_read_the_epoch_0_point(tmp_path):
    from clipft_utils.results import load_results, make_result, save_result
    from clipft_utils.evaluate import EvalResult
    for method, hist in (("zero_shot", []), ("lora", history(3, 0.2, 0.5))):
        test = EvalResult.from_logits(torch.eye(4), torch.arange(4))
        save_result(make_result(method=method, model="ToyCLIP", pretrained="synthflowers", dataset="synthflowers",
                                test=test, val_acc=0.2 if method == "zero_shot" else 0.5, trainable_params=0,
                                total_params=1, train_seconds=0.0, eval_seconds=0.0, images_per_second=None,
                                peak_memory_mb=None, config={}, history=hist, seed=0, profile="smoke", standin=True),
                    tmp_path / "smoke")
    starts = C.curve_starts(load_results("smoke", tmp_path)).set_index("method")
    assert starts.loc["LoRA", "val before training (%)"] == pytest.approx(20.0)
    assert starts.loc["LoRA", "val after epoch 1 (%)"] == pytest.approx(30.0)
    assert starts.loc["LoRA", "best val (%)"] == pytest.approx(50.0)


# ----------------------------------------------------------------------------- WiSE-FT
def test_curve_shape_is_read_off_the_numbers():
    a = [0.0, 0.5, 1.0]
    assert combine.curve_shape(a, [0.2, 0.3, 0.4]).startswith("rises monotonically")
    assert combine.curve_shape(a, [0.4, 0.3, 0.2]).startswith("falls monotonically")
    assert combine.curve_shape(a, [0.2, 0.5, 0.4]).startswith("peaks inside: highest at α = 0.5 (50.0%)")
    assert combine.curve_shape([0, 0.5, 1, 1.5], [0.3, 0.2, 0.4, 0.35]).startswith("is not monotone")
    assert combine.curve_shape(a, [0.2, None, 0.4]).startswith("only 2 point")


def test_wise_ft_chooses_on_validation_and_evaluates_test_at_the_choice_only():
    torch.manual_seed(0)
    zs, ft = nn.Linear(3, 2), nn.Linear(3, 2)
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    alphas = [round(0.1 * i, 1) for i in range(11)]
    sweep = combine.wise_ft(zs, ft, alphas, {"val": loader}, precision="fp32")
    assert len(sweep.curve) == 11 and "test_acc" not in sweep.curve
    best = sweep.best_alpha("val")
    sweep.add(best, "test", loader, precision="fp32")
    records = sweep.records()
    assert [r["alpha"] for r in records] == alphas
    assert [r["alpha"] for r in records if r["test_acc"] is not None] == [best]        # None elsewhere, JSON-ready
    json.dumps(records)


def test_the_smoke_course_searches_eleven_alphas():
    from clipft_utils.course.sections import notebook_default
    assert notebook_default("smoke", "wise_alphas") == [round(0.1 * i, 1) for i in range(11)]


# ----------------------------------------------------------------------------- the AdamW probe's learning rate
def test_the_adamw_probe_takes_the_learning_rate_best_on_validation():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    y = torch.arange(3).repeat_interleave(40)
    x = centres[y] + 0.3 * torch.randn(len(y), 8, generator=g)
    cfg = make_config("linear_probe", "smoke", epochs=4, lr=1e-4, batch_size=32)     # far too small a rate
    runs = LP.lr_sweep(x[::2], y[::2], x[1::2], y[1::2], cfg, (10, 1000), seed=0)
    assert sorted(runs) == [1, 10, 1000]
    best = LP.best_lr_factor(runs)
    assert runs[best][1].best_val_acc == max(t.best_val_acc for _, t in runs.values()) and best > 1
    same = {f: (None, type("T", (), {"best_val_acc": 0.5})()) for f in (1, 10)}
    assert LP.best_lr_factor(same) == 1                                               # ties: the smaller rate


# ----------------------------------------------------------------------------- 07's photo table
TOPS = {"a_seed0": [("red rose", 0.9), ("tulip", 0.05)], "b_seed0": [("red rose", 0.6), ("tulip", 0.3)],
        "c_seed0": [("tulip", 0.996), ("red rose", 0.001)]}


def test_the_photo_table_names_methods_marks_agreement_and_never_splits_a_percentage():
    titles = {"a_seed0": "Zero-shot", "b_seed0": "LoRA", "c_seed0": "Tip-Adapter"}
    html = C.photo_table(TOPS, titles, true_name="red rose").to_html()
    assert all(f">{t}</th>" in html for t in titles.values()) and "a_seed0" not in html
    assert "<b>99.6%</b>" in html and "99.6 %" not in html                  # no space to wrap "(20.4\n%)" at
    assert "background-color: #fff3bf" in html and "max-width" in html      # agreement marked; fixed column width
    assert C.consensus(TOPS) == ("red rose", 2)
    notes = C.photo_notes(TOPS, titles, true_name="red rose")
    assert notes[0].startswith("2 of 3 models rank 'red rose' first")
    assert "Tip-Adapter, 99.6% sure of 'tulip' and wrong" in notes[1] and "not a calibrated one" in notes[1]


def test_result_files_use_paper_names_and_one_mark_for_nothing():
    df = pd.DataFrame({"run": ["lora_seed0", "lora-r8_seed0"], "method": ["lora", "lora"], "variant": [None, "r8"],
                       "shots": [None, 4], "seed": [0, 0], "test_acc": [0.39754, 0.3441]})
    shown = C.result_files(df)
    assert shown["method"].tolist() == ["LoRA", "LoRA"] and shown["variant"].tolist() == ["—", "r8"]
    assert shown["shots"].tolist() == ["all", "4"] and shown["test top-1 (%)"].tolist() == [39.8, 34.4]


# ----------------------------------------------------------------------------- reading time
def test_the_reading_estimate_counts_words_code_and_figures_apart_from_solutions(tmp_path):
    cells = [{"cell_type": "markdown", "metadata": {}, "source": "# T\n\n" + "word " * 400},
             {"cell_type": "code", "metadata": {}, "source": "a = 1\n\nb = 2\ncourse.save_figure(fig, 'x')\n"},
             {"cell_type": "code", "metadata": {"tags": ["solution"]}, "source": "\n".join(["x = 1"] * 10)}]
    est = reading.estimate({"cells": cells})
    assert (est.words, est.lines, est.figures, est.solution_lines) == (402, 3, 1, 10)
    assert est.minutes == round(402 / 200 + 3 / 5 + 1) and est.solution_minutes == 2
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    reading.write_time_line(path, None)
    line = reading.write_time_line(path, None)                 # replaced, never added twice
    nb = json.loads(path.read_text())
    assert reading.source(nb["cells"][0]).count(reading.LINE_START) == 1 and "run time not measured" in line


# ----------------------------------------------------------------------------- the solutions' short runs
def test_a_short_run_trains_its_steps_and_scores_the_start_and_the_end(tmp_path):
    from clipft_utils import setup
    from clipft_utils.course.exercises import first_per_class, short_train
    from clipft_utils.methods import apply_method
    course = setup("smoke", shots=2, test_per_class=1, results_dir=str(tmp_path))
    cfg = make_config("bitfit", course.profile)
    clf = course.classifier()
    run = short_train(course, clf, apply_method("bitfit", clf, cfg), cfg, steps=2, val_per_class=1)
    assert [h["epoch"] for h in run.train.history] == [0, 1] and run.val_images == len(course.classnames)
    zs = course.features("val", progress=False)             # the frozen tower's validation features, in split order
    targets = np.asarray(course.splits["val"].targets)
    rows = np.sort(np.concatenate([np.flatnonzero(targets == c)[:1] for c in np.unique(targets)]))
    assert len(first_per_class(course.splits["val"], 1)) == len(rows)
    start = ((zs.normalized()[rows] @ course.zero_shot_head().T).argmax(1) == zs.labels[rows]).float().mean().item()
    assert run.start == pytest.approx(start)                   # BitFit's start is the zero-shot classifier
    assert "2 optimizer step(s)" in run.note and "not a converged accuracy" in run.note
