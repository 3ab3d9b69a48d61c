"""A short smoke-profile run of each parameter-efficient method beats the zero-shot head on validation.

One module-level course (ToyCLIP on SynthFlowers, ``test_per_class=3``) is shared by the three runs; each run goes
through the real path of the notebooks: ``make_config`` -> ``apply_method`` -> ``train_method`` (engine + evaluate +
result JSON). Besides beating zero-shot, every run must leave the parameters it did not train bit-identical.
"""
from __future__ import annotations

import pytest
import torch

from clipft_utils.methods import make_config
from clipft_utils.course import setup, train_method
from clipft_utils.evaluate import evaluate
from clipft_utils.methods import apply_method
from clipft_utils.results import read_result

EPOCHS = 3
"""Short runs: enough for each method's default learning rates to move past the zero-shot head."""

MARGIN = 0.02
"""Required val top-1 gain over zero-shot (2 points, i.e. ~20 of SynthFlowers' 1,020 validation images): far above a
tie-break flip of a few images, far below the gains the methods actually reach in EPOCHS epochs."""

CASES = [("bitfit", {}), ("prefix_tuning", {}), ("lora", {})]


@pytest.fixture(scope="module")
def course(session_data, tmp_path_factory):
    """The smoke course, built once for the module inside the session's data folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPFT_DATA", session_data)
        yield setup("smoke", test_per_class=3, results_dir=str(tmp_path_factory.mktemp("results")))


@pytest.fixture(scope="module")
def zero_shot_val(course) -> float:
    """Validation top-1 of the untrained classifier (the zero-shot head)."""
    return evaluate(course.classifier(), course.loader("val"), device=course.device).top1


def _frozen_state(clf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter that does not require grad."""
    return {n: p.detach().clone() for n, p in clf.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("method, overrides", CASES, ids=[m for m, _ in CASES])
def test_short_run_beats_zero_shot(course, zero_shot_val, method, overrides):
    cfg = make_config(method, "smoke", epochs=EPOCHS, **overrides)
    clf = course.classifier()
    groups = apply_method(method, clf, cfg)
    frozen = _frozen_state(clf)
    out = train_method(course, method, cfg, clf, groups, progress=False, checkpoint=False)
    gain = out.train.best_val_acc - zero_shot_val
    assert gain >= MARGIN, f"{method}: val top-1 {out.train.best_val_acc:.4f} vs zero-shot {zero_shot_val:.4f}"
    params = dict(clf.named_parameters())
    changed = [n for n, p in frozen.items() if not torch.equal(params[n], p)]
    assert not changed, f"{method} changed frozen parameters: {changed[:3]}"
    saved = read_result(out.path)
    assert (saved["method"], saved["variant"]) == (method, None)
    assert saved["test_acc"] == pytest.approx(out.test.top1)


def test_a_paused_run_resumes_and_the_runners_force_starts_it_over(course, monkeypatch):
    """train_method resumes its checkpoint; under the runner's --force (CLIPFT_FRESH=1) it starts from scratch
    (before, --force reran the notebook but resumed the leftover checkpoint)."""
    cfg = make_config("bitfit", "smoke", epochs=2)

    def run(**kw):
        clf = course.classifier()
        return train_method(course, "bitfit", cfg, clf, apply_method("bitfit", clf, cfg), progress=False,
                            variant="fresh", **kw)
    assert not run(stop_after_epochs=1).train.completed                  # paused after epoch 1: a checkpoint
    monkeypatch.setenv("CLIPFT_FRESH", "1")
    fresh = run(stop_after_epochs=1)
    assert fresh.train.resumed_from_epoch == 0 and not fresh.train.completed
    monkeypatch.delenv("CLIPFT_FRESH")
    resumed = run()
    assert resumed.train.resumed_from_epoch == 1 and resumed.train.completed
