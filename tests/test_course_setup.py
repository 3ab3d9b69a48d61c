"""setup(): the profile from $CLIPFT_PROFILE, parameters checked before any work, errors that say which cell to change,
the checkout a notebook belongs to, and labels that never let a stand-in or random-weights number pass for CLIP's."""
from __future__ import annotations

import time

import pytest

from clipft_utils.course import core as C
from clipft_utils.errors import ConfigError, OfflineError


def test_the_profile_comes_from_clipft_profile_when_the_notebook_leaves_it_none(monkeypatch):
    monkeypatch.setenv("CLIPFT_PROFILE", "smoke")
    assert C.resolve_profile(None).name == "smoke"
    monkeypatch.delenv("CLIPFT_PROFILE")
    assert C.resolve_profile(None).name == "full"
    assert C.resolve_profile("smoke").name == "smoke"


def test_offline_full_profile_says_which_cell_and_line_to_change(monkeypatch):
    monkeypatch.delenv("CLIPFT_PROFILE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(Exception) as err:
        C.setup(None, dataset="synthflowers")   # real weights, offline: fails before any data work
    assert isinstance(err.value, OfflineError)
    assert "parameters cell (the first code cell), line 1" in str(err.value) and "./lab.sh --smoke" in str(err.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": "x"}, "seed='x' is invalid"), ({"device": "cudaa"}, "device='cudaa' is invalid"),
    ({"shots": 0}, "shots=0 is invalid"), ({"test_per_class": -1}, "test_per_class=-1 is invalid"),
    ({"profile": "smok"}, "Unknown profile 'smok'"),
])
def test_bad_parameters_fail_in_setup_before_any_work(kwargs, message):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=message):
        C.setup(**{"profile": "smoke", **kwargs})
    assert time.perf_counter() - start < 2


def test_a_notebook_of_another_checkout_is_refused_with_the_fix(tmp_path):
    other = tmp_path / "other-copy"
    (other / "clipft_utils").mkdir(parents=True)
    (other / "clipft_utils" / "__init__.py").write_text("")
    (other / "notebooks").mkdir()
    with pytest.raises(ConfigError, match="other-copy/lab.sh"):
        C.check_checkout(other / "notebooks")
    C.check_checkout(C.PROJECT_ROOT / "notebooks")          # this checkout's own notebooks are fine
    C.check_checkout(tmp_path)                              # and so is any folder outside a checkout


def test_random_weights_and_stand_ins_are_labelled_loudly():
    from clipft_utils.labels import run_label, warnings_for
    label = run_label("ViT-B-32", "random", "flowers102", warnings_for(random_weights=True))
    assert "RANDOM WEIGHTS" in label and "mean nothing" in label
    assert "STAND-IN" in run_label("ToyCLIP", "synthflowers", "synthflowers", warnings_for(standin_notes=["x"]))
    assert "REHEARSAL" in run_label("ViT-B-32", "random", "flowers102", warnings_for(rehearsal=True))
