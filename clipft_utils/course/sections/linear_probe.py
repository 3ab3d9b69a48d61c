"""The linear probe in the course: notebook 02 (its cost in `bench` is one frozen forward per image)."""
from ..params import flag, list_of, number
from . import Section, register

SECTION = register(Section(
    method="linear_probe", notebook="02_linear_probe", bench="inference",
    notebook_checks={"zero_shot_init": flag, "lr_factors": list_of(number(0, open_low=True), min_len=0)}))
