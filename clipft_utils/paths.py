"""Where the course keeps data, caches and results, and how it writes files safely."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ResultsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of datasets and caches (``$CLIPFT_DATA`` or ``<project>/data``)."""
    return Path(os.environ.get("CLIPFT_DATA", PROJECT_ROOT / "data")).expanduser()


def cache_dir(*parts: str) -> Path:
    """A sub-folder of ``data/cache`` (created on demand)."""
    path = data_dir().joinpath("cache", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_root() -> Path:
    """Root of results (``$CLIPFT_RESULTS`` or ``<project>/results``)."""
    return Path(os.environ.get("CLIPFT_RESULTS", PROJECT_ROOT / "results")).expanduser()


def ensure_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and prove it is writable, or raise a ResultsError saying how to fix it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ResultsError(
            f"Cannot write results to '{folder}': {exc.strerror or exc}. "
            "Fix: pass a writable folder (notebook parameter `results_dir`, or set CLIPFT_RESULTS)."
        ) from exc
    return folder


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the result the usual permissions
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)
