"""LoRA in the course: notebook 05, with its rank sweep."""
from __future__ import annotations

from typing import Any

from ..params import integer, list_of
from . import Section, notebook_default, register


def plan(params: dict[str, Any], prof: Any) -> str:
    """What else notebook 05 trains: the rank sweep, and its epochs where the profile caps them."""
    ranks = list(params.get("ranks") or notebook_default(prof.name, "ranks"))
    epochs = params.get("sweep_epochs") or notebook_default(prof.name, "sweep_epochs")
    return f" + rank sweep {ranks}" + (f" (at most {epochs} epoch(s) each)" if epochs else "")


SECTION = register(Section(
    method="lora", notebook="05_lora", plan=plan,
    # smoke: the sweep's ranks train at most 2 epochs each (the main run 5): notebook 05 within the smoke budget
    notebook_defaults={"full": {"ranks": [1, 2, 4, 8, 16]}, "smoke": {"ranks": [1, 8, 32], "sweep_epochs": 2},
                       "rehearse": {"ranks": [8]}, "quick": {"ranks": [1, 2]}},
    notebook_checks={"ranks": list_of(integer(1, optional=False)), "sweep_epochs": integer(1)},
))
