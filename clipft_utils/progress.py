"""Progress bars that show in a live session and stay out of executed notebooks.

Under the runner (papermill, ``CLIPFT_HEADLESS=1``) nobody watches a notebook's cells, and a finished
``leave=False`` bar would remain in the saved notebook as a stale "0%| 0/16" line; there the bars are off
(the runner reports progress per notebook instead). ``CLIPFT_PROGRESS=1`` forces them on, ``=0`` off.
"""
from __future__ import annotations

import os
from typing import Any, Iterable


def enabled() -> bool:
    """Whether progress bars are shown in this process."""
    forced = os.environ.get("CLIPFT_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "False")
    return not os.environ.get("CLIPFT_HEADLESS")


def bar(iterable: Iterable | None = None, *, disable: bool = False, **kwargs: Any):
    """``tqdm.auto.tqdm`` that is switched off where ``enabled()`` says so."""
    from tqdm.auto import tqdm
    return tqdm(iterable, disable=disable or not enabled(), **kwargs)
