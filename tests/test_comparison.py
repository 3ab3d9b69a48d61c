"""The comparison view: tables, summary files, the recommender and the figures, on fake result JSONs."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from clipft_utils import comparison as C  # noqa: E402
from clipft_utils.methods import names  # noqa: E402

from clipft_utils.errors import ConfigError  # noqa: E402
from clipft_utils.evaluate import EvalResult  # noqa: E402
from clipft_utils.results import read_result, load_results, make_result, save_result  # noqa: E402

METHODS = names()

# method: (test accuracy, trainable params, training compute TFLOPs (also its seconds), training memory MB)
FAKE = {
    "zero_shot": (0.50, 0, 0.0, None),
    "linear_probe": (0.70, 1_000, 2.0, 900.0),
    "bitfit": (0.76, 5_000, 10.0, 3_000.0),
    "prefix_tuning": (0.72, 8_000, 12.0, 5_000.0),
    "lora": (0.80, 20_000, 15.0, 6_000.0),
    "full_finetune": (0.81, 1_000_000, 30.0, 12_000.0),
}
TOTAL = 1_001_000
CLASSES = 10
COUNTED = "accounted: parameters + gradients + AdamW state + what autograd saves for one step's backward"


def fake_eval(acc: float, n: int = 100, seed: int = 0) -> EvalResult:
    """An EvalResult whose top-1 is exactly ``acc`` on ``n`` examples."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    logits = rng.normal(size=(n, CLASSES)).astype(np.float32)
    right = int(round(acc * n))
    logits[np.arange(n), labels] = -10.0
    logits[np.arange(right), labels[:right]] = 10.0
    return EvalResult.from_logits(logits, labels)


def write_fake(folder, method: str, seed: int = 0, acc: float | None = None, variant: str | None = None,
               standin: bool = True, **extra) -> None:
    """One result JSON (+ predictions) in the course's schema."""
    a, params, secs, mem = FAKE.get(method, (0.78, 0, 0.0, None))
    test = fake_eval(acc if acc is not None else a, seed=seed)
    history = [] if method == "zero_shot" else [{"epoch": e + 1, "val_acc": a * (e + 1) / 3} for e in range(3)]
    costs = {"train_memory_mb": mem, "train_tflops": secs, "steps": 0 if method == "zero_shot" else 10,
             "memory_measure": COUNTED if mem else None, "deployed_params": params, "base_params": TOTAL}
    res = make_result(method=method, model="ToyCLIP", pretrained="synthflowers", dataset="synthflowers",
                      profile="smoke", seed=seed, test=test, val_acc=a, trainable_params=params,
                      total_params=TOTAL, train_seconds=secs, eval_seconds=0.1, images_per_second=None,
                      peak_memory_mb=None, config={}, history=history, variant=variant, standin=standin,
                      **{**costs, **extra})
    save_result(res, folder, predictions=test)


@pytest.fixture
def run_folder(tmp_path):
    folder = tmp_path / "smoke"
    for m in METHODS:
        write_fake(folder, m)
    return folder


def test_summary_table_has_every_method_in_course_order_with_not_run_rows(tmp_path):
    folder = tmp_path / "smoke"
    write_fake(folder, "lora")
    write_fake(folder, "lora", variant="r4")           # a sweep row: not in the main table
    write_fake(folder, "ensemble", variant="zs+lp")    # a combination row: not in the main table
    table = C.summary_table(load_results("smoke", tmp_path))
    assert list(table["method"]) == list(METHODS)
    assert table.set_index("method").loc["lora", "status"] == "ok"
    assert (table["status"] == "not run").sum() == len(METHODS) - 1
    assert table.set_index("method").loc["lora", "test_acc"] == pytest.approx(0.80)
    assert table.set_index("method").loc["lora", "type"] == "parameter-efficient"
    assert len(C.summary_table(load_results("smoke", tmp_path), include_missing=False)) == 1


def test_seeds_are_reported_as_mean_and_std(tmp_path):
    folder = tmp_path / "smoke"
    for seed, acc in enumerate([0.70, 0.80, 0.90]):
        write_fake(folder, "bitfit", seed=seed, acc=acc)
    row = C.summary_table(load_results("smoke", tmp_path)).set_index("method").loc["bitfit"]
    assert row["n_seeds"] == 3
    assert row["test_acc"] == pytest.approx(0.80)
    assert row["test_acc_std"] == pytest.approx(0.10)
    shown = C.format_table(C.summary_table(load_results("smoke", tmp_path))).set_index("method")
    assert shown.loc["BitFit", "accuracy (%)"] == "80.0 ± 10.0"          # methods by their paper names
    assert shown.loc["LoRA", "accuracy (%)"] == "not run"


def test_combination_table_holds_combinations_and_variants_only(tmp_path):
    folder = tmp_path / "smoke"
    write_fake(folder, "lora")
    write_fake(folder, "lora", variant="r4")
    write_fake(folder, "ensemble", variant="zs+lp")
    write_fake(folder, "wise_ft", curve=[{"alpha": a, "test_acc": 0.5 + a / 4} for a in (0, 0.5, 1)])
    combo = C.combination_table(load_results("smoke", tmp_path))
    assert set(zip(combo["method"], combo["variant"].fillna("-"))) == {("lora", "r4"), ("ensemble", "zs+lp"),
                                                                     ("wise_ft", "-")}
    assert C.combination_table(pd.DataFrame()).empty


def test_write_summary_with_no_results_lists_every_method_as_not_run(tmp_path):
    folder = tmp_path / "smoke"
    folder.mkdir()
    text = C.write_summary("smoke", folder)
    assert "STAND-IN" in text and "ToyCLIP / synthflowers on synthflowers" in text
    assert text.count("not run") == len(METHODS)
    csv = pd.read_csv(folder / "summary.csv")
    assert list(csv["method"]) == list(METHODS) and set(csv["status"]) == {"not run"}
    assert (folder / "summary.md").read_text() == text
    assert not list(folder.glob(".*tmp"))  # atomic writes leave no temporaries


def test_write_summary_reads_results_and_labels_real_runs_without_standin_warning(tmp_path):
    folder = tmp_path / "full"
    write_fake(folder, "lora", standin=False)
    text = C.write_summary("full", folder)
    assert "STAND-IN" not in text
    csv = pd.read_csv(folder / "summary.csv").set_index("method")
    assert csv.loc["lora", "test_acc"] == pytest.approx(0.80)
    assert csv.loc["lora", "label"] == "ToyCLIP / synthflowers on synthflowers"
    assert "Test split: 100 images." in text  # every number says how many test images stand behind it


def test_write_summary_flags_main_rows_tested_on_different_test_sets(tmp_path):
    folder = tmp_path / "smoke"
    write_fake(folder, "lora")
    write_fake(folder, "bitfit")
    save_result({**read_result(folder / "bitfit_seed0.json"), "n_test": 50}, folder)
    assert "Test split: 50 / 100 images (runs differ" in C.write_summary("smoke", folder)


def test_load_accepts_a_results_dir_or_a_root(run_folder):
    assert len(C.load("smoke", results_dir=run_folder)) == len(METHODS)
    assert len(C.load("smoke", root=run_folder.parent)) == len(METHODS)


# ----------------------------------------------------------------------------- recommender
def test_recommend_best_picks_the_most_accurate_method_that_fits(run_folder):
    df = load_results("smoke", run_folder.parent)
    big = C.recommend(df, memory_budget_mb=16_000, need="best")
    assert big.method == "full_finetune"
    small = C.recommend(df, memory_budget_mb=7_000, need="best")
    assert small.method == "lora"                      # full fine-tuning accounts 12000 MB: does not fit
    assert any("full_finetune (12000.0 MB)" in r for r in small.reasons)
    assert any("80.0%" in r for r in small.reasons)     # cites the measured accuracy
    assert "full_finetune" not in small.candidates


def test_recommend_small_budget_and_cheap_and_good(run_folder):
    df = load_results("smoke", run_folder.parent)
    tiny = C.recommend(df, memory_budget_mb=4_000, need="best")
    assert tiny.method == "bitfit" and any("8 GB" in r for r in tiny.reasons)
    good = C.recommend(df, memory_budget_mb=16_000, need="good")
    assert good.method == "lora"                       # within 2 points of 81%, 50x fewer parameters
    cheap = C.recommend(df, memory_budget_mb=16_000, need="cheap")
    assert cheap.method == "linear_probe"              # +20 points over zero-shot for 2 TFLOPs: the most per TFLOP


def test_recommend_many_tasks_sets_full_finetuning_aside(run_folder):
    df = load_results("smoke", run_folder.parent)
    rec = C.recommend(df, memory_budget_mb=16_000, need="best", tasks=5)
    assert rec.method == "lora"
    assert any("full_finetune" in r and "5 tasks" in r for r in rec.reasons)


def test_recommend_without_data_is_zero_shot_and_without_results_is_rule_of_thumb(run_folder, tmp_path):
    df = load_results("smoke", run_folder.parent)
    assert C.recommend(df, 16_000, have_data=False).method == "zero_shot"
    empty = C.recommend(pd.DataFrame(), 4_000, need="best")
    assert empty.method == "bitfit" and "rule of thumb" in empty.reasons[0]
    assert C.recommend(pd.DataFrame(), 16_000, tasks=3).method == "lora"


def test_recommend_nothing_fits_falls_back_to_zero_shot(tmp_path):
    folder = tmp_path / "smoke"
    write_fake(folder, "lora")
    rec = C.recommend(load_results("smoke", tmp_path), memory_budget_mb=100)
    assert rec.method == "zero_shot" and any("Nothing that trains fits" in r for r in rec.reasons)


def test_recommend_validates_its_request(run_folder):
    df = load_results("smoke", run_folder.parent)
    with pytest.raises(ConfigError, match="need"):
        C.recommend(df, 8_000, need="fastest")
    with pytest.raises(ConfigError, match="memory_budget_mb"):
        C.recommend(df, -1)
    with pytest.raises(ConfigError, match="tasks"):
        C.recommend(df, 8_000, tasks=0)


def test_recommend_says_what_its_memory_is_and_flags_the_standin(run_folder):
    rec = C.recommend(load_results("smoke", run_folder.parent), 16_000)
    assert any("Training memory is accounted" in r for r in rec.reasons)
    assert not any("RSS" in r or "process memory" in r for r in rec.reasons)
    assert any("STAND-IN" in r for r in rec.reasons)


# ----------------------------------------------------------------------------- figures and predictions
def test_figures_are_titled_with_the_label_and_survive_missing_results(run_folder, tmp_path):
    import matplotlib.pyplot as plt
    write_fake(run_folder, "wise_ft", curve={"alpha": [0, 0.5, 1], "test_acc": [0.5, 0.85, 0.8]})
    write_fake(run_folder, "ensemble", variant="zs+lp")
    for df in (load_results("smoke", run_folder.parent), pd.DataFrame()):
        label = C.label_of(df, "smoke")
        table = C.summary_table(df)
        figs = [C.plot_accuracy_vs_params(table, label), C.plot_accuracy_vs_compute(table, label),
                C.plot_step_time(table, label), C.plot_training_memory(df, label), C.plot_learning_curves(df, label),
                C.plot_per_class_heatmap(df, label), C.plot_combinations(df, label)]
        for fig in figs:
            titles = [ax.get_title() for ax in fig.axes] + [fig._suptitle.get_text() if fig._suptitle else ""]
            assert any(" ".join(label.split()) in " ".join(t.split()) for t in titles)
            fig.savefig(tmp_path / "f.png")
            plt.close(fig)


def test_per_class_matrix_sorts_many_classes(tmp_path):
    folder = tmp_path / "smoke"
    write_fake(folder, "lora")
    df = load_results("smoke", tmp_path)
    df.at[0, "per_class_acc"] = list(np.linspace(0, 1, 40))
    mat = C.per_class_matrix(df, [f"c{i}" for i in range(40)])
    assert list(mat.columns[:2]) == ["c39", "c38"]     # sorted by mean accuracy, best first


def test_curve_points_reads_the_usual_shapes():
    for curve in ([{"alpha": 0, "test_acc": 0.5}, {"alpha": 1, "test_acc": 0.7}],
                  {"alphas": [0, 1], "acc": [0.5, 0.7]}, [[0, 0.5], [1, 0.7]]):
        xs, ys = C.curve_points(curve)
        assert list(xs) == [0, 1] and list(ys) == [0.5, 0.7]
    assert len(C.curve_points("nonsense")[0]) == 0


def test_top5_uses_saved_predictions_that_match_the_test_labels(run_folder):
    df = load_results("smoke", run_folder.parent)
    runs = C.main_runs(df)
    assert runs[0] == "zero_shot_seed0" and len(runs) == len(METHODS)
    targets = np.arange(100) % CLASSES
    probs = C.aligned_runs(run_folder, runs, targets)
    assert set(probs) == set(runs)
    assert not C.aligned_runs(run_folder, runs, targets[:50])   # other test images: nothing lines up
    names = [f"class {i}" for i in range(CLASSES)]
    table = C.top5(probs, 0, names)
    assert table.shape == (5, len(runs)) and table.iloc[0, 0].startswith("class 0")
    assert 0 <= C.most_disputed(probs) < 100


def test_live_frontend_is_off_under_the_runner(monkeypatch):
    monkeypatch.setenv("CLIPFT_HEADLESS", "1")
    assert C.live_frontend() is False


# ----------------------------------------------------------------------------- the few-shot grid
@pytest.fixture
def grid_folder(tmp_path):
    """LoRA ahead of BitFit by far more than the seed spread at 1 shot, within it at 8; zero-shot once."""
    folder = tmp_path / "smoke"
    write_fake(folder, "zero_shot", acc=0.50)
    accs = {("lora", 1): [0.70, 0.72, 0.71], ("bitfit", 1): [0.55, 0.56, 0.54],
            ("lora", 8): [0.80, 0.84, 0.82], ("bitfit", 8): [0.81, 0.83, 0.79]}
    for (method, k), values in accs.items():
        for seed, acc in enumerate(values):
            write_fake(folder, method, seed=seed, acc=acc, shots=k)
    return folder


def test_the_shots_table_gives_mean_std_and_seeds_and_zero_shot_at_every_point(grid_folder):
    df = load_results("smoke", grid_folder.parent)
    table = C.shots_table(df).set_index(["method", "shots"])
    assert table.loc[("lora", 1.0), "mean"] == pytest.approx(0.71)
    assert table.loc[("lora", 1.0), "std"] == pytest.approx(np.std([0.70, 0.72, 0.71], ddof=1))
    assert table.loc[("bitfit", 8.0), "n_seeds"] == 3
    shown = C.shots_display(C.shots_table(df))
    assert list(shown.columns) == [1, 8]                       # no "all" column for zero-shot alone
    assert shown.loc["zero_shot", 1] == shown.loc["zero_shot", 8] == "50.0 (1)"   # it trains on nothing
    assert shown.loc["lora", 1].startswith("71.0 ± 1.0") and shown.loc["lora", 1].endswith("(3)")


def test_an_ordering_is_stated_only_where_the_gap_exceeds_the_seed_spread(grid_folder):
    table = C.shots_table(load_results("smoke", grid_folder.parent))
    assert C.ordering(table, 1) == ["lora > bitfit: 16.0 points apart, more than the seed spread (1.0)"]
    at_8 = C.ordering(table, 8)
    assert len(at_8) == 1 and at_8[0].startswith("lora ≈ bitfit") and "within the seed spread" in at_8[0]


def test_the_recommender_decides_at_the_users_number_of_labelled_images(grid_folder):
    df = load_results("smoke", grid_folder.parent)
    one = C.recommend(df, memory_budget_mb=16_000, labelled_per_class=1)
    assert one.method == "lora" and any("1" in r and "more than the seed spread" in r for r in one.reasons)
    eight = C.recommend(df, memory_budget_mb=16_000, labelled_per_class=8)
    assert any("within the seed spread" in r for r in eight.reasons)
    default = C.recommend(df, memory_budget_mb=16_000)       # no number given: the overview's point, 8 per class
    assert any(r.startswith("lora ≈ bitfit") for r in default.reasons)


def test_one_seed_gives_no_ordering_and_equal_looking_numbers_get_more_digits(run_folder):
    rec = C.recommend(load_results("smoke", run_folder.parent), memory_budget_mb=16_000)
    assert any("not ordered (one seed" in r for r in rec.reasons)
    table = pd.DataFrame({"method": ["lora", "bitfit"], "shots": [4.0, 4.0], "mean": [0.3510, 0.3340],
                          "std": [0.0166, 0.0080], "n_seeds": [3, 3]})
    assert C.ordering(table, 4) == ["lora > bitfit: 1.70 points apart, more than the seed spread (1.66)"]


def test_a_row_never_takes_its_epochs_from_another_recipes_history(tmp_path):
    folder = tmp_path / "smoke"
    write_fake(folder, "linear_probe", recipe="sklearn", history_of="torch", epochs_run=None)  # L-BFGS: no epochs
    write_fake(folder, "bitfit")                          # a row written before epochs_run: its own history's 3
    table = C.summary_table(load_results("smoke", tmp_path)).set_index("method")
    assert pd.isna(table.loc["linear_probe", "epochs"]) and table.loc["bitfit", "epochs"] == 3
    assert C.format_table(table.reset_index()).set_index("method").loc["Linear probe", "epochs"] == "—"


def test_zero_shot_rows_say_they_used_no_training_image(grid_folder):
    shown = C.format_table(C.summary_table(load_results("smoke", grid_folder.parent))).set_index("method")
    assert shown.loc["Zero-shot", "shots"] == "0" and shown.loc["Zero-shot", "epochs"] == "0"
    assert shown.loc["LoRA", "shots"] == "8"                 # the overview's point: the grid's most shots


def test_the_recommender_chooses_on_validation_never_on_test(tmp_path):
    folder = tmp_path / "smoke"
    write_fake(folder, "lora", acc=0.70)                 # FAKE val: lora 0.80 > bitfit 0.76 ...
    write_fake(folder, "bitfit", acc=0.90)               # ... while bitfit is far ahead on test
    rec = C.recommend(load_results("smoke", tmp_path), memory_budget_mb=16_000, need="best")
    assert rec.method == "lora"
    assert any("highest measured validation accuracy" in r and "80.0% val, test 70.0%" in r for r in rec.reasons)
