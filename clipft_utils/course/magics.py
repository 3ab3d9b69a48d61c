"""``%%when NAME [and NAME ...]``: a notebook cell that runs only when the notebook variables are all true.

Notebooks use it for their optional parts (``extras``): a shots x seeds grid needs only each method's main row,
so the sweeps and combinations are skipped there, and the cell says so instead of running; and for the cells of a
method that does not apply to the course's model (``course.applies``), where it prints the reason.
"""
from __future__ import annotations


def when(line: str, cell: str) -> None:
    """Run ``cell`` if the expression on the magic's line is true in the notebook; else say it was skipped."""
    from IPython import get_ipython
    shell = get_ipython()
    parts = [part.strip() for part in (line or "True").split(" and ")]
    off = next(((part, flag) for part in parts if not (flag := eval(part, shell.user_ns))), None)  # noqa: S307
    if off is None:
        shell.run_cell(cell, store_history=False).raise_error()  # a failure fails the cell (and the run)
    else:
        print(f"(skipped: {getattr(off[1], 'reason', '') or off[0] + ' is off'})")


def register() -> None:
    """Make ``%%when`` available in the running IPython kernel (no-op outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and "when" not in shell.magics_manager.magics["cell"]:
        shell.register_magic_function(when, magic_kind="cell", magic_name="when")
