"""Zero-shot in the course: notebook 01 (no training; one run per seed, whatever the shots)."""
from ..params import integer
from . import Section, register

SECTION = register(Section(method="zero_shot", notebook="01_zero_shot", bench="none",
                           notebook_checks={"ensemble_size": integer(1)}))
