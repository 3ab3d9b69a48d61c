"""BitFit in the course: notebook 03."""
from . import Section, register

SECTION = register(Section(method="bitfit", notebook="03_bitfit"))
