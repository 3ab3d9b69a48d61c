"""``%%when NAME``: a notebook cell that runs only when the notebook variable ``NAME`` is true.

Notebooks use it for their optional parts (``extras``): a shots x seeds grid needs only each method's main row,
so the sweeps and combinations are skipped there, and the cell says so instead of running.
"""
from __future__ import annotations


def when(line: str, cell: str) -> None:
    """Run ``cell`` if the expression on the magic's line is true in the notebook; else say it was skipped."""
    from IPython import get_ipython
    shell = get_ipython()
    if eval(line or "True", shell.user_ns):  # noqa: S307 - the notebook's own variable
        shell.run_cell(cell, store_history=False).raise_error()  # a failure fails the cell (and the run)
    else:
        print(f"(skipped: {line.strip()} is off)")


def register() -> None:
    """Make ``%%when`` available in the running IPython kernel (no-op outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and "when" not in shell.magics_manager.magics["cell"]:
        shell.register_magic_function(when, magic_kind="cell", magic_name="when")
