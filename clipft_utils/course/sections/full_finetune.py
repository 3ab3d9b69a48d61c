"""Full fine-tuning in the course: notebook 06, which also combines the methods of 01, 02 and 05."""
from __future__ import annotations

from typing import Any

from ...config import extra_epochs
from ...methods import names
from ..params import PRECISION_CHECK, flag, integer, list_of, number, one_of
from . import Section, register


ALPHAS = [round(0.1 * i, 1) for i in range(11)]
"""WiSE-FT's α grid, 0, 0.1, ..., 1: each interior α costs one validation pass (test only at the chosen one)."""


def plan(p: dict[str, Any], prof: Any) -> str:
    """What else notebook 06 trains: its combinations' extra runs, and their epochs."""
    e = extra_epochs(prof, p.get("epochs"), p.get("extra_epochs"))
    return (" + base-to-novel, LP→FT (full, LoRA), LoRA adapter B: "
            + (f"{e} epoch(s) each" if e is not None else "each method's own epochs"))


def ensemble_member(name: str, value: Any) -> None:
    """A registered method's id."""
    one_of(*names(), optional=False)(name, value)


SECTION = register(Section(
    method="full_finetune", notebook="06_full_finetune", plan=plan,
    reads=("01_zero_shot", "02_linear_probe", "05_lora"),
    fixed_config={"warmup_epochs": 0.0},  # notebook 06 derives its warm-up from the epochs
    notebook_defaults={"full": {"wise_alphas": ALPHAS},
                       "smoke": {"wise_alphas": ALPHAS},   # 9 validation passes of the stand-in: seconds
                       "rehearse": {"memory_steps": 1, "wise_alphas": [0.0, 0.5, 1.0], "fusion_weights": [[0.5, 0.5]]},
                       "quick": {"wise_alphas": [0.0, 0.5, 1.0], "memory_steps": 1}},
    notebook_checks={
        "warmup_epochs": number(0), "layer_decay": number(0, 1, open_low=True), "grad_checkpointing": flag,
        "grad_accum_steps": integer(1, optional=False), "precision": PRECISION_CHECK,
        "memory_steps": integer(1, optional=False), "extra_epochs": integer(1),
        "wise_alphas": list_of(number(0, 1, optional=False)), "ensemble_members": list_of(ensemble_member),
        "fusion_weights": list_of(list_of(number(0, optional=False), optional=False, min_len=2))},
))
