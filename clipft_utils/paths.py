"""Where the course keeps data, caches and results, and how it writes files safely."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ResultsError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; atomic renames still keep every file whole
    fcntl = None

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Root of datasets and caches (``$CLIPFT_DATA`` or ``<project>/data``); a file there is a clear error."""
    path = Path(os.environ.get("CLIPFT_DATA", PROJECT_ROOT / "data")).expanduser()
    if path.exists() and not path.is_dir():
        from .errors import DatasetError
        raise DatasetError(f"The data folder '{path}' (CLIPFT_DATA) is a file, not a folder. Fix: point "
                           "CLIPFT_DATA at a folder (it is created if missing), or unset it to use <project>/data.")
    return path


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
        try:
            yield tmp
        except Exception as exc:  # a full disk fails deep inside torch.save / safetensors with no folder named
            full = disk_full(path.parent)
            if full:
                raise ResultsError(f"Could not write '{path}': {full}. Nothing half-written was left. Fix: free space "
                                   "there, or point CLIPFT_RESULTS / CLIPFT_DATA at a disk with room, and re-run "
                                   "(finished work is kept).") from exc
            raise
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the result the usual permissions
        journal(path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


FULL_MB = 64
"""Less free space than this on a folder's disk after a failed write: the disk is full (the write failed for that)."""


def free_mb(folder: str | os.PathLike) -> float:
    """Free space (MB) on the disk holding ``folder`` (or its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free / 2**20


def disk_full(folder: str | os.PathLike) -> str:
    """A sentence when the disk holding ``folder`` is (nearly) full, else ''."""
    free = free_mb(folder)
    return f"the disk holding '{folder}' is full ({free:.0f} MB free)" if free < FULL_MB else ""


def check_free_space(folders: "list[str | os.PathLike]", need_mb: float, what: str) -> None:
    """A ResultsError before any work when a disk holding one of ``folders`` has less than ``need_mb`` free."""
    for folder in dict.fromkeys(Path(f) for f in folders):
        free = free_mb(folder)
        if free < need_mb:
            raise ResultsError(f"The disk holding '{folder}' has {free:,.0f} MB free; {what} writes up to about "
                               f"{need_mb:,.0f} MB there (results, checkpoints, caches). Nothing was started. Fix: free "
                               "space there, or point CLIPFT_RESULTS / CLIPFT_DATA at a disk with room.")


def note(text: str) -> None:
    """Tell the runner something it should say in the terminal (a resumed checkpoint, a rebuilt cache): one line
    appended to ``$CLIPFT_EVENTS`` when a run set it; nothing otherwise (the notebook shows it anyway)."""
    target = os.environ.get("CLIPFT_EVENTS")
    if target:
        with open(target, "a") as f:
            f.write(" ".join(str(text).split()) + "\n")


def notice(text: str, stacklevel: int = 2) -> None:
    """Warn (the notebook shows it) and ``note`` it for the runner's terminal: a cache rebuilt, a checkpoint resumed."""
    import warnings
    note(text)
    warnings.warn(text, stacklevel=stacklevel + 1)


def journal(path: str | os.PathLike) -> None:
    """Note ``path`` in the runner's journal (``$CLIPFT_JOURNAL``): what a notebook wrote, so that the runner
    can record it as done, or set it aside when the notebook fails."""
    target = os.environ.get("CLIPFT_JOURNAL")
    if target:
        with open(target, "a") as f:
            f.write(f"{Path(path).resolve()}\n")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, blocking: bool = True, shared: bool = False) -> Iterator[bool]:
    """Hold an advisory lock on ``path`` (created if missing) for the block; yields False if ``blocking``
    is off and another process holds it. The lock ends with the process, so a killed run never leaves one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if fcntl is None:
            yield True
            return
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(handle, mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def hash_file(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
