"""The one line that names what produced a number: model / weights on dataset, and every warning it needs.

Every table, figure and result JSON carries it. Numbers from the offline stand-in say STAND-IN, numbers
from random weights say RANDOM WEIGHTS, a rehearsal says REHEARSAL: none of them can pass for CLIP's.
"""
from __future__ import annotations

from typing import Sequence

STANDIN = "STAND-IN"
RANDOM = "RANDOM WEIGHTS"
REHEARSAL = "REHEARSAL"


def warnings_for(*, standin_notes: Sequence[str] = (), random_weights: bool = False,
                 rehearsal: bool = False) -> list[str]:
    """The warnings a run's label must carry, loudest first."""
    out = []
    if rehearsal:
        out.append(f"{REHEARSAL}: the real course's code and shapes on generated images, not a result")
    if random_weights:
        out.append(f"{RANDOM}: the accuracies mean nothing")
    notes = [n for n in standin_notes if n]
    if notes:
        out.append(f"{STANDIN}: " + "; ".join(notes))
    return out


def run_label(model: str, pretrained: str, dataset: str, warnings: Sequence[str] = ()) -> str:
    """``model / weights on dataset`` followed by its warnings."""
    base = f"{model} / {pretrained} on {dataset}"
    return base + (" — " + " | ".join(warnings) if warnings else "")
