"""Prefix-tuning in the course: notebook 04, with its variants prompt tuning and VPT-deep."""
from __future__ import annotations

from typing import Any

from ..params import flag, integer
from . import Section, notebook_default, register


def plan(params: dict[str, Any], prof: Any) -> str:
    """What else notebook 04 trains: the variants, and their epochs where the profile shortens them."""
    if not params.get("variants", True):
        return ""
    epochs = params.get("variant_epochs") or notebook_default(prof.name, "variant_epochs")
    return " + the variants prompt tuning and VPT-deep" + (f" (at most {epochs} epoch(s) each)" if epochs else "")


SECTION = register(Section(
    method="prefix_tuning", notebook="04_prefix_tuning", plan=plan,
    # smoke: the two variants train at most 2 epochs each (the main row 5): notebook 04 within the smoke budget
    notebook_defaults={"smoke": {"variant_epochs": 2},
                       "rehearse": {"vit_timing": False, "timing_repeats": 3, "timing_batch": 8},
                       "quick": {"variants": False, "vit_timing": False}},
    notebook_checks={"variants": flag, "variant_epochs": integer(1), "vit_timing": flag,
                     "vit_timing_batch": integer(1, optional=False),
                     "timing_repeats": integer(3), "timing_batch": integer(1, optional=False)},
))
