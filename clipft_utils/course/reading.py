"""How long a notebook takes: the reading time estimated from its words, code lines and figures, the run time
measured by the runner; written as the line under each notebook's title (``python scripts/reading_time.py``).

The estimate: prose at :data:`WORDS_PER_MIN`, code at :data:`CODE_LINES_PER_MIN` (read, not skimmed), and
:data:`MIN_PER_FIGURE` per saved figure; the solutions (cells tagged ``solution`` and their headings) are counted
apart. The run time is the ``seconds`` of the notebook's completion record (``<results>/runs/<notebook>.json``).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORDS_PER_MIN = 200
CODE_LINES_PER_MIN = 5
MIN_PER_FIGURE = 1.0
LINE_START = "**Time:**"
"""How the time line under the title begins (it is replaced, never added twice)."""
SOLUTION = "solution"


def is_solution(cell: dict[str, Any]) -> bool:
    """A cell of the solutions: tagged ``solution`` (code and its heading)."""
    return SOLUTION in cell.get("metadata", {}).get("tags", [])


def source(cell: dict[str, Any]) -> str:
    """A cell's source as one string."""
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def code_lines(cell: dict[str, Any]) -> int:
    """Non-blank lines of a code cell."""
    return sum(1 for line in source(cell).splitlines() if line.strip())


def prose_words(cell: dict[str, Any]) -> int:
    """Words of a markdown cell, without the time line itself."""
    return len(re.sub(re.escape(LINE_START) + r".*", "", source(cell)).split())


@dataclass
class Estimate:
    """Words, code lines and figures of a notebook's main text (and of its solutions), and the minutes they take."""

    words: int
    lines: int
    figures: int
    solution_words: int
    solution_lines: int

    @property
    def minutes(self) -> int:
        """Reading minutes of the main text."""
        return round(self.words / WORDS_PER_MIN + self.lines / CODE_LINES_PER_MIN + self.figures * MIN_PER_FIGURE)

    @property
    def solution_minutes(self) -> int:
        """Reading minutes of the solutions."""
        return round(self.solution_words / WORDS_PER_MIN + self.solution_lines / CODE_LINES_PER_MIN)


def estimate(nb: dict[str, Any]) -> Estimate:
    """The reading estimate of a notebook (its JSON)."""
    main = [c for c in nb["cells"] if not is_solution(c)]
    sols = [c for c in nb["cells"] if is_solution(c)]
    code = [c for c in main if c["cell_type"] == "code"]
    return Estimate(
        words=sum(prose_words(c) for c in main if c["cell_type"] == "markdown"),
        lines=sum(code_lines(c) for c in code),
        figures=sum(source(c).count("save_figure(") for c in code),
        solution_words=sum(prose_words(c) for c in sols if c["cell_type"] == "markdown"),
        solution_lines=sum(code_lines(c) for c in sols if c["cell_type"] == "code"))


def run_seconds(runs: Path, notebook: str) -> float | None:
    """The measured seconds of ``notebook``'s last run (its completion record), or None."""
    path = Path(runs) / f"{notebook}.json"
    if not path.exists():
        return None
    return float(json.loads(path.read_text()).get("seconds") or 0) or None


def time_line(est: Estimate, seconds: float | None) -> str:
    """The line under the title: reading minutes (how they were estimated) and the measured run time."""
    run = (f"{max(1, math.ceil(seconds / 60))} min to run on the stand-in (2 CPU cores; the runner measured "
           f"{seconds:.0f} s)" if seconds else "run time not measured yet")
    return (f"{LINE_START} about {est.minutes} min to read (+{est.solution_minutes} min for the solutions), {run}. "
            f"Reading time estimated from {est.words:,} words at {WORDS_PER_MIN}/min, {est.lines} code lines at "
            f"{CODE_LINES_PER_MIN}/min and {est.figures} figure(s) at {MIN_PER_FIGURE:g} min each.")


def stated(nb: dict[str, Any]) -> str | None:
    """The time line the notebook states under its title, or None."""
    match = re.search(re.escape(LINE_START) + r"[^\n]*", source(nb["cells"][0]))
    return match.group(0) if match else None


def stated_minutes(nb: dict[str, Any]) -> int | None:
    """The reading minutes the notebook states, or None."""
    line = stated(nb) or ""
    match = re.search(r"about (\d+) min to read", line)
    return int(match.group(1)) if match else None


def write_time_line(path: Path, runs: Path | None) -> str:
    """Put (or replace) the time line in the notebook's first cell, after its title line; returns it."""
    nb = json.loads(path.read_text())
    seconds = run_seconds(runs, path.stem) if runs is not None else None
    if seconds is None:                                  # keep the run time the notebook already states
        old = re.search(r"the runner measured (\d+) s", stated(nb) or "")
        seconds = float(old.group(1)) if old else None
    line = time_line(estimate(nb), seconds)
    text = source(nb["cells"][0])
    if stated(nb):
        text = text.replace(stated(nb), line)
    else:
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n{line}\n{rest}"
    lines = text.split("\n")
    nb["cells"][0]["source"] = [x + "\n" for x in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return line
