"""CoOp in the course: a section of notebook 04 (prompt learning on the text side, beside prefix-tuning)."""
from . import Section, register

SECTION = register(Section(method="coop", notebook="04_prefix_tuning"))
