"""Tip-Adapter and Tip-Adapter-F in the course: sections of notebook 02, beside the linear probe."""
from . import Section, register

TIP_ADAPTER = register(Section(method="tip_adapter", notebook="02_linear_probe", bench="none"))
TIP_ADAPTER_F = register(Section(method="tip_adapter_f", notebook="02_linear_probe", bench="none"))
