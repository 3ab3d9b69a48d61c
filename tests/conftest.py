"""Shared fixtures: every test runs offline, with caches and results in temporary folders."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


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
