"""Combining methods: ensemble arithmetic, subset tables, exact weight interpolation, class subsets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from clipft_utils import combine as C
from clipft_utils.data import ImageSplit
from clipft_utils.errors import ConfigError


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# One confident-but-wrong member (huge logit gap) and two milder ones agreeing on class 1.
# Mean of logits: [3, 2, 0] -> class 0.  Mean of probabilities: [0.36, 0.61, 0.03] -> class 1.
CONFIDENT = np.array([[9.0, 0.0, 0.0]])
MILD = np.array([[0.0, 3.0, 0.0]])


def test_ensemble_probs_is_mean_of_softmax():
    a, b = np.array([[1.0, 2.0, 0.5]]), np.array([[0.0, -1.0, 3.0]])
    np.testing.assert_allclose(C.ensemble_probs([a, b]), (softmax(a) + softmax(b)) / 2, rtol=1e-12)
    np.testing.assert_allclose(C.ensemble_probs([a, b]).sum(axis=1), 1.0)
    np.testing.assert_allclose(C.ensemble_probs([a, b], weights=[3, 1]), 0.75 * softmax(a) + 0.25 * softmax(b))
    np.testing.assert_allclose(C.ensemble_probs([a, b], weights=[0, 1]), softmax(b))
    np.testing.assert_allclose(C.ensemble_probs([torch.tensor(a)]), softmax(a))


def test_averaging_probabilities_differs_from_averaging_logits():
    members = [CONFIDENT, MILD, MILD]
    mean_logits = np.mean(members, axis=0)
    probs = C.ensemble_probs(members)
    assert mean_logits.argmax() == 0          # the confident member's scale dominates the logit mean
    assert probs.argmax() == 1                # the probability mean follows the two agreeing members
    np.testing.assert_allclose(probs, np.mean([softmax(m) for m in members], axis=0))
    assert C.accuracy(C.ensemble_logits(members), [1]) == 1.0  # log-probs keep the ensemble's argmax
    np.testing.assert_allclose(softmax(C.ensemble_logits(members).astype(np.float64)), probs, rtol=1e-5)


def test_averaging_probabilities_changes_argmax_vs_members():
    # Each member alone is wrong on a different example; the average is right on both.
    labels = np.array([0, 1])
    m1 = np.log(np.array([[0.45, 0.55], [0.1, 0.9]]))   # wrong on 0
    m2 = np.log(np.array([[0.9, 0.1], [0.6, 0.4]]))               # wrong on 1
    assert C.accuracy(m1, labels) == 0.5 and C.accuracy(m2, labels) == 0.5
    assert C.accuracy(C.ensemble_probs([m1, m2]), labels) == 1.0


def test_ensemble_rejects_bad_input():
    with pytest.raises(ConfigError):
        C.ensemble_probs([])
    with pytest.raises(ConfigError):
        C.ensemble_probs([np.zeros((2, 3)), np.zeros((2, 4))])
    with pytest.raises(ConfigError):
        C.ensemble_probs([np.zeros((2, 3))], weights=[-1])


def test_subset_table_lists_every_subset_with_its_accuracy():
    labels = np.array([0, 1, 2, 1])
    rng = np.random.default_rng(0)
    preds = {n: rng.normal(size=(4, 3)) for n in ("a", "b", "c")}
    val = {n: rng.normal(size=(4, 3)) for n in ("a", "b", "c")}
    table = C.subset_table(preds, labels, val_preds=val, val_labels=labels)
    assert len(table) == 7 and sorted(table["size"].tolist()) == [1, 1, 1, 2, 2, 2, 3]
    for _, row in table.iterrows():
        expected = np.mean([softmax(preds[m]) for m in row["members"]], axis=0)
        assert row["test_acc"] == pytest.approx(np.mean(expected.argmax(1) == labels))
        expected_val = np.mean([softmax(val[m]) for m in row["members"]], axis=0)
        assert row["val_acc"] == pytest.approx(np.mean(expected_val.argmax(1) == labels))
    single = table.set_index("subset").loc["b", "test_acc"]
    assert single == C.accuracy(preds["b"], labels)
    assert len(C.subset_table(preds, labels, min_size=2)) == 4
    assert "val_acc" not in C.subset_table(preds, labels)


def two_models():
    torch.manual_seed(0)
    m0 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    torch.manual_seed(1)
    m1 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    m1[1].num_batches_tracked.fill_(7)
    return m0, m1


def test_interpolation_endpoints_are_bit_identical_and_midpoint_is_the_mean():
    m0, m1 = two_models()
    sd0, sd1 = m0.state_dict(), m1.state_dict()
    at0, at1 = C.interpolate_state_dicts(sd0, sd1, 0.0), C.interpolate_state_dicts(sd0, sd1, 1.0)
    for k in sd0:
        assert torch.equal(at0[k], sd0[k]) and at0[k].dtype == sd0[k].dtype
        if sd0[k].is_floating_point():
            assert torch.equal(at1[k], sd1[k])
        assert at0[k].data_ptr() != sd0[k].data_ptr()  # copies, not views
    mid = C.interpolate_state_dicts(sd0, sd1, 0.5)
    quarter = C.interpolate_state_dicts(sd0, sd1, 0.25)
    for k in sd0:
        if sd0[k].is_floating_point():
            torch.testing.assert_close(mid[k], (sd0[k] + sd1[k]) / 2)
            torch.testing.assert_close(quarter[k], 0.75 * sd0[k] + 0.25 * sd1[k])
        else:  # integer buffers are copied from sd0, never averaged
            assert torch.equal(mid[k], sd0[k])
    assert mid["1.num_batches_tracked"].dtype == torch.long


def test_interpolation_rejects_mismatched_models():
    m0, _ = two_models()
    with pytest.raises(ConfigError):
        C.interpolate_state_dicts(m0.state_dict(), nn.Linear(3, 4).state_dict(), 0.5)
    with pytest.raises(ConfigError):
        C.interpolate_state_dicts(m0.state_dict(), m0.state_dict(), 1.5)


def test_wise_ft_endpoints_reproduce_both_models():
    torch.manual_seed(0)
    zs, ft = nn.Linear(3, 2), nn.Linear(3, 2)
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    sweep = C.wise_ft(zs, ft, [1.0, 0.0, 0.5], {"test": loader, "val": loader}, precision="fp32")
    assert sweep.curve["alpha"].tolist() == [0.0, 0.5, 1.0]
    with torch.no_grad():  # batch by batch, as the sweep evaluates (a BLAS may sum a batch of 20 in another order)
        def batched(model):
            return torch.cat([model(xb) for xb, _ in loader]).numpy()
        np.testing.assert_array_equal(sweep.evals[0.0]["test"].logits, batched(zs))
        np.testing.assert_array_equal(sweep.evals[1.0]["test"].logits, batched(ft))
        np.testing.assert_allclose(sweep.evals[0.5]["test"].logits, ((zs(x) + ft(x)) / 2).numpy(), atol=1e-6)
    assert sweep.best_alpha("val") in (0.0, 0.5, 1.0)
    best = sweep.curve["val_acc"].max()
    assert sweep.curve.set_index("alpha").loc[sweep.best_alpha("val"), "val_acc"] == best
    assert C.interpolated(zs, ft, 1.0)(x).equal(ft(x))


def test_set_head_copies_weight_and_bias():
    clf = nn.Module()
    clf.head = nn.Linear(3, 2)
    w, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.0, -1.0])
    C.set_head(clf, w, b)
    assert torch.equal(clf.head.weight, torch.from_numpy(w)) and clf.head.bias.tolist() == [1.0, -1.0]
    C.set_head(clf, w)
    assert clf.head.bias.tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError):
        C.set_head(clf, np.zeros((3, 3)))


def make_split(labels, indices=None) -> ImageSplit:
    labels = np.asarray(labels)
    images = np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    return ImageSplit(images=images, labels=labels, classnames=["a", "b", "c", "d"], dataset="synthflowers",
                      split="train", mean=(0.0,) * 3, std=(1.0,) * 3, source_key="k", indices=indices)


def test_base_novel_classes_halves():
    assert C.base_novel_classes(102) == (list(range(51)), list(range(51, 102)))
    base, novel = C.base_novel_classes(5)
    assert base == [0, 1, 2] and novel == [3, 4]


def test_class_subset_reindexes_labels_and_keeps_pixels():
    split = make_split([0, 1, 2, 3, 2, 1, 3, 0])
    sub = C.class_subset(split, [3, 1])
    assert len(sub) == 4 and sub.classnames == ["d", "b"] and sub.num_classes == 2
    assert sub.targets.tolist() == [1, 0, 1, 0]  # rows 1, 3, 5, 6 -> labels b, d, b, d -> 1, 0, 1, 0
    pixels = [int(sub[i][0][0, 0, 0] * 255) for i in range(len(sub))]
    assert pixels == [1, 3, 5, 6] and [sub[i][1] for i in range(len(sub))] == [1, 0, 1, 0]
    assert sub.cache_key != split.subset(np.array([1, 3, 5, 6])).cache_key  # new labels, new feature-cache key
    # A subset of a subset (k-shot view) maps to the right base rows.
    view = split.subset(np.array([6, 7, 2]))  # labels 3, 0, 2
    sub2 = C.class_subset(view, [0, 3])
    assert sub2.targets.tolist() == [1, 0] and sub2.indices.tolist() == [6, 7]
    with pytest.raises(ConfigError):
        C.class_subset(split, [0, 0])
    with pytest.raises(ConfigError):
        C.class_subset(split, [4])


def test_same_predictions():
    a = np.array([[1.0, 2.0], [3.0, 0.0]])
    assert C.same_predictions(a, a + 1e-5)
    assert not C.same_predictions(a, a[:, ::-1])          # argmax differs
    assert not C.same_predictions(a, a + 0.1)             # values differ
    assert not C.same_predictions(a, a[:1])               # shapes differ


def test_restricted_eval_uses_only_the_classes_rows_and_reindexes():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    labels = np.array([0, 1, 2, 2])
    head = torch.tensor([[1.0, 0.0], [0.0, 1.0]])        # new class 0 <- old 2 (x axis), new class 1 <- old 1
    ev = C.restricted_eval(feats, labels, [2, 1], head)
    assert ev.labels.tolist() == [1, 0, 0] and ev.preds.tolist() == [1, 0, 1]
    assert ev.top1 == pytest.approx(2 / 3) and ev.num_classes == 2
    ev_b = C.restricted_eval(feats, labels, [2, 1], head, bias=torch.tensor([10.0, 0.0]))
    assert ev_b.preds.tolist() == [0, 0, 0]


def fake_course(folder):
    from types import SimpleNamespace
    identity = dict(model="ToyCLIP", pretrained="synthflowers", dataset="synthflowers", profile="smoke", seed=0,
                    device="cpu", standin=True)
    return SimpleNamespace(seed=0, shots=None, results_dir=folder, identity=lambda: identity)


def save_member(folder, method, logits, labels, trainable=10, val=None):
    from clipft_utils import results as R
    from clipft_utils.evaluate import EvalResult
    test = EvalResult.from_logits(logits, labels)
    row = C.combination_result(fake_course(folder), method, None, test, val_acc=0.5, trainable_params=trainable,
                               total_params=100, train_seconds=2.0)
    return R.save_result(row, folder, predictions=test, val_predictions=None if val is None else EvalResult.from_logits(*val))


def test_collect_members_needs_validation_and_test_predictions_of_these_images(tmp_path):
    labels, val_labels = np.array([0, 1, 1]), np.array([1, 0])
    zs, lora_saved, val = np.eye(2)[[0, 1, 0]] * 3, np.eye(2)[[0, 1, 1]] * 3, np.eye(2)[[1, 0]] * 2
    save_member(tmp_path, "zero_shot", zs, labels, val=(val, val_labels))
    save_member(tmp_path, "lora", lora_saved, labels)                    # saved without validation predictions
    rebuilt = {"linear_probe": (val, zs)}
    members, status = C.collect_members(tmp_path, 0, ["zero_shot", "lora", "linear_probe", "bitfit"], rebuilt, labels,
                                        val_labels)
    assert list(members) == ["zero_shot", "linear_probe"]
    assert members["zero_shot"].source == "saved" and np.array_equal(members["zero_shot"].val, val)
    assert members["linear_probe"].source == "rebuilt here"
    assert status.loc["lora", "predictions"].startswith("left out") and status.loc["bitfit", "predictions"].startswith("left out")
    # saved predictions of other images (another test subset) are not used
    members, _ = C.collect_members(tmp_path, 0, ["zero_shot"], {}, np.array([0, 1]), val_labels)
    assert members == {}


def test_ensemble_result_is_chosen_on_validation_and_remove_rows(tmp_path):
    from clipft_utils import results as R
    labels, val_labels = np.array([0, 1, 1]), np.array([0, 1])
    save_member(tmp_path, "zero_shot", np.eye(2)[[0, 1, 0]] * 3, labels, trainable=0, val=(np.eye(2) * 3, val_labels))
    save_member(tmp_path, "full_finetune", np.eye(2)[[0, 0, 1]] * 3, labels, trainable=7,
                val=(np.eye(2)[[1, 1]] * 3, val_labels))
    members, _ = C.collect_members(tmp_path, 0, ["zero_shot", "full_finetune"], {}, labels, val_labels)
    row, test, val = C.ensemble_result(fake_course(tmp_path), members, ("zero_shot", "full_finetune"), labels, val_labels)
    assert row["method"] == "ensemble" and row["variant"] == "zs+ft" and row["selected_on"] == "val"
    probs = C.ensemble_probs([members["zero_shot"].test, members["full_finetune"].test])
    assert row["test_acc"] == pytest.approx(C.accuracy(probs, labels)) and row["trainable_params"] == 7
    assert row["val_acc"] == pytest.approx(val.top1)
    R.save_result(row, tmp_path, predictions=test)
    R.save_result({**row, "variant": "zs"}, tmp_path, predictions=test)
    removed = C.remove_rows(tmp_path, "ensemble", 0, keep={"zs+ft"})
    assert removed == ["ensemble-zs_seed0"]
    assert (tmp_path / "ensemble-zs+ft_seed0.json").exists() and not (tmp_path / "predictions" / "ensemble-zs_seed0.npz").exists()
    assert (tmp_path / "zero_shot_seed0.json").exists()          # other methods' rows are never touched


def test_wise_ft_reuses_known_evaluations():
    torch.manual_seed(0)
    zs, ft = nn.Linear(3, 2), nn.Linear(3, 2)
    loader = DataLoader(TensorDataset(torch.randn(6, 3), torch.tensor([0, 1, 0, 1, 0, 1])), batch_size=3)
    marker = type("E", (), {"top1": 0.123})()
    sweep = C.wise_ft(zs, ft, [0.0, 1.0], {"val": loader}, precision="fp32", known={0.0: {"val": marker}})
    assert sweep.evals[0.0]["val"] is marker and sweep.curve.loc[0, "val_acc"] == 0.123
    assert sweep.evals[1.0]["val"] is not marker


def test_write_ensembles_writes_the_best_subset_and_all_members_and_replaces_an_earlier_pick(tmp_path):
    from types import SimpleNamespace
    from clipft_utils.course import combos
    labels, val_labels = np.array([0, 1, 1]), np.array([0, 1])
    for method, test, val in (("zero_shot", [0, 1, 0], [0, 1]), ("linear_probe", [0, 1, 1], [0, 0]),
                              ("full_finetune", [1, 1, 1], [0, 1])):
        save_member(tmp_path, method, np.eye(2)[test] * 3, labels, val=(np.eye(2)[val] * 3, val_labels))
    members, _ = C.collect_members(tmp_path, 0, ["zero_shot", "linear_probe", "full_finetune"], {}, labels, val_labels)
    table = C.subset_table({n: m.test for n, m in members.items()}, labels,
                           val_preds={n: m.val for n, m in members.items()}, val_labels=val_labels)
    table = table.sort_values(["val_acc", "size"], ascending=[False, True], ignore_index=True)
    (tmp_path / "ensemble-lp+ft_seed0.json").write_text("{}")                       # an earlier run's pick
    run = SimpleNamespace(test=SimpleNamespace(labels=labels), val=SimpleNamespace(labels=val_labels))
    written = combos.write_ensembles(fake_course(tmp_path), members, table, run)
    best = "+".join(C.short_name(m) for m in table[table["size"] >= 2].iloc[0]["members"])
    assert list(written.index) == ["best", "all"] and written.loc["best", "variant"] == best
    assert written.loc["all", "variant"] == "zs+lp+ft"
    assert sorted(p.name for p in tmp_path.glob("ensemble-*.json")) == sorted(
        {f"ensemble-{best}_seed0.json", "ensemble-zs+lp+ft_seed0.json"})


def test_extra_configs_shorten_the_warm_up_with_the_epochs():
    from types import SimpleNamespace
    from clipft_utils.course import combos
    from clipft_utils.config import get_profile
    from clipft_utils.methods import make_config
    from clipft_utils.methods import full_finetune
    cfg = full_finetune.recipe("smoke", epochs=9)
    assert cfg.epochs == 9 and cfg.warmup_epochs == 3                  # min(5, epochs // 3)
    assert full_finetune.recipe("smoke", epochs=9, config={"warmup_epochs": 1.0}).warmup_epochs == 1.0
    course = SimpleNamespace(profile=get_profile("smoke"))
    cfg_extra, lora_cfg = combos.extra_configs(course, cfg, None, 2)
    assert (cfg_extra.epochs, cfg_extra.warmup_epochs, lora_cfg.epochs) == (2, 0, 2)
    assert lora_cfg == make_config("lora", "smoke", epochs=2)
