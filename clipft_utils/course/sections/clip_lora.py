"""CLIP-LoRA in the course: a section of notebook 05, beside LoRA."""
from . import Section, register

SECTION = register(Section(method="clip_lora", notebook="05_lora"))
