"""Shared fixtures: every test runs offline, with caches and results in temporary folders."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread per test worker when ./run_tests.sh runs two (one per core), else up to two. The notebooks' kernels
# (the course runs) inherit the environment: one thread each too, so that two workers' kernels never run four
# threads on two cores (torch's threads then wait on each other).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

# The longest test files first (measured: minutes each), so that two workers finish together instead of one
# of them starting a course run when everything else is done; the rest keep their order.
# xdist hands each worker two files to start with: the rehearsal and torchrun to one, the two course runs to the other.
LONGEST_FIRST = ("test_rehearsal.py", "test_course_smoke.py", "test_distributed.py", "test_course_small.py",
                 "test_runner.py", "test_method_training.py")


def pytest_collection_modifyitems(config, items) -> None:
    """Order the collected tests: the files of LONGEST_FIRST first, in that order (a stable sort)."""
    def rank(item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)


@pytest.fixture(scope="session")
def session_data(tmp_path_factory) -> str:
    """One data folder per test session (decoded/feature caches are shared across tests)."""
    return str(tmp_path_factory.mktemp("clipft-data"))


@pytest.fixture(autouse=True)
def isolated_dirs(monkeypatch, session_data, tmp_path):
    """Point CLIPFT_DATA at the session's data folder and CLIPFT_RESULTS at a per-test folder."""
    monkeypatch.setenv("CLIPFT_DATA", session_data)
    monkeypatch.setenv("CLIPFT_RESULTS", str(tmp_path / "results"))
    yield


@pytest.fixture(scope="module")
def toy():
    """A random ToyCLIP with SynthFlowers' class names and the course template (the text-side methods' tests)."""
    from _helpers import toy_clip_and_prompts
    return toy_clip_and_prompts()
