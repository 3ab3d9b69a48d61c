"""The notebooks as a learner reads them (issue 30), checked on the stored notebooks: every exercise has a worked
solution after the exercises, collapsed; the time line under each title states what the estimate gives; the
parameters a learner changes come first; "Save and load" comes before the Summary; the key lines are shown inline
and checked against the library; 06 stays short. The executed solutions: tests/test_course_smoke.py."""
from __future__ import annotations

import json
import re

import papermill as pm
import pytest

from clipft_utils.course import reading
from clipft_utils.course.runner import notebooks
from clipft_utils.paths import PROJECT_ROOT

BOOKS = sorted((PROJECT_ROOT / "notebooks").glob("*.ipynb"))
ADVANCED = "# --- advanced"


def load(path):
    return json.loads(path.read_text())


def text(cell) -> str:
    return reading.source(cell)


def code_of(nb) -> list[str]:
    return [text(c) for c in nb["cells"] if c["cell_type"] == "code"]


def heading_index(nb, heading: str) -> int:
    return next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown" and
                re.search(rf"^#+ {heading}\b", text(c), re.M))


def exercises(nb) -> list[int]:
    """The numbers of the exercises the notebook sets."""
    cell = nb["cells"][heading_index(nb, "Exercises")]
    after = text(cell).split("## Exercises", 1)[1]
    return [int(n) for n in re.findall(r"^(\d+)\. ", after, re.M)]


@pytest.mark.parametrize("path", BOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_collapsed_solution_after_the_exercises(path):
    nb = load(path)
    numbers = exercises(nb)
    assert numbers and numbers == list(range(1, len(numbers) + 1)), path.stem
    start = heading_index(nb, "Exercises")
    cells = nb["cells"]
    solutions = [i for i, c in enumerate(cells) if reading.is_solution(c)]
    assert solutions and min(solutions) > start, f"{path.stem}: solutions must follow the exercises"
    for n in numbers:
        head = next((i for i in solutions if cells[i]["cell_type"] == "markdown"
                     and re.search(rf"^### Solution {n}\b", text(cells[i]), re.M)), None)
        assert head is not None, f"{path.stem}: no '### Solution {n}' heading"
        code = [c for c in cells[head + 1:] if reading.is_solution(c)][:1]
        assert code and code[0]["cell_type"] == "code", f"{path.stem}: solution {n} has no code cell"
        assert code[0]["metadata"].get("jupyter", {}).get("source_hidden") is True, f"{path.stem}: {n} not collapsed"
        assert "print(" in text(code[0]) or "display(" in text(code[0]), f"{path.stem}: solution {n} prints nothing"
    for i in solutions:                      # nothing typed: numbers are printed by the code
        if cells[i]["cell_type"] == "markdown":
            assert not re.search(r"\d+\.\d+ ?%|0\.\d{3}", text(cells[i])), f"{path.stem}: a number typed in cell {i}"


@pytest.mark.parametrize("path", BOOKS, ids=lambda p: p.stem)
def test_the_time_line_under_each_title_states_the_estimate(path):
    nb = load(path)
    line = reading.stated(nb)
    assert line and "min to read" in line and "min to run on the stand-in (2 CPU cores" in line, path.stem
    est = reading.estimate(nb)
    stated = reading.stated_minutes(nb)
    assert abs(stated - est.minutes) <= max(2, 0.2 * est.minutes), \
        f"{path.stem} states {stated} min, the estimate is {est.minutes}: run python scripts/reading_time.py"


@pytest.mark.parametrize("path", BOOKS, ids=lambda p: p.stem)
def test_parameters_cell_puts_the_learners_knobs_first(path):
    nb = load(path)
    (cell,) = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    lines = text(cell).splitlines()
    assert lines.count(ADVANCED) == 1 or any(line.startswith(ADVANCED) for line in lines), path.stem
    top = lines[:next(i for i, line in enumerate(lines) if line.startswith(ADVANCED))]
    assert 1 <= len([line for line in top if "=" in line]) <= 8, f"{path.stem}: at most 8 knobs above '{ADVANCED}'"
    names = set(pm.inspect_notebook(str(path)))             # still one papermill parameters cell with every name
    assert {"profile", "seed", "results_dir", "device"} <= names


@pytest.mark.parametrize("path", BOOKS[:-1], ids=lambda p: p.stem)
def test_save_and_load_comes_before_the_summary(path):
    nb = load(path)
    ids = [c.get("id") for c in nb["cells"]]
    assert ids.index("save-and-load") < heading_index(nb, "Summary"), path.stem


def test_the_key_lines_are_shown_inline_and_checked_against_the_library():
    code = {p.stem: "\n".join(code_of(load(p))) for p in BOOKS}
    assert "def tip_logits_inline" in code["02_linear_probe"] and "TA.tip_logits(" in code["02_linear_probe"]
    assert "def coop_prompts_inline" in code["04_prefix_tuning"]
    assert "def wise_inline" in code["06_full_finetune"] and "combine.interpolate_state_dicts(" in code["06_full_finetune"]
    assert "def lp_ft_start" in code["06_full_finetune"] and "combine.set_head(" in code["06_full_finetune"]
    for nb in ("02_linear_probe", "04_prefix_tuning", "06_full_finetune"):
        assert code[nb].count("max |difference|") >= 1, f"{nb}: an inline version is not compared with the library"


def test_06_stays_short_and_one_idea_per_cell():
    nb = load(PROJECT_ROOT / "notebooks" / "06_full_finetune.ipynb")
    lines = sum(reading.code_lines(c) for c in nb["cells"] if c["cell_type"] == "code" and not reading.is_solution(c))
    assert lines <= 250, f"06 has {lines} code lines outside the solutions"
    for path in BOOKS:
        for c in load(path)["cells"]:
            if c["cell_type"] == "code" and not reading.is_solution(c) and "parameters" not in c["metadata"].get(
                    "tags", []):
                assert reading.code_lines(c) <= 25, f"{path.stem}: a {reading.code_lines(c)}-line cell"


def test_when_is_explained_where_it_first_appears_and_nowhere_claimed_first_again():
    first = None
    for path in BOOKS:                               # course order, solutions included
        for i, c in enumerate(load(path)["cells"]):
            if c["cell_type"] == "code" and text(c).startswith("%%when"):
                first = first or (path.stem, i)
    nb = load(PROJECT_ROOT / "notebooks" / f"{first[0]}.ipynb")
    before = " ".join(text(c) for c in nb["cells"][:first[1]] if c["cell_type"] == "markdown")
    assert "%%when" in before and "magics.py" in before, f"%%when is first used in {first} without explanation"
    later = " ".join(text(c) for p in BOOKS if p.stem != first[0] for c in load(p)["cells"])
    assert "first in the course to begin with `%%when" not in later


def test_07_says_ten_methods_not_six_and_every_notebook_is_planned():
    assert not any("six methods" in text(c) for p in BOOKS for c in load(p)["cells"])
    assert [p.stem for p in BOOKS] == [nb for nb, _ in notebooks()]


def test_exercises_do_what_they_say_and_figures_say_what_they_show():
    """03's Exercise 3 raises the backbone's rate only (the head keeps its own: ``head_lr=None`` would follow
    ``lr``); 05's rank-sweep title names its epochs, and a cell says why its default-rank point differs from the
    main run; 05's Exercise 3 no longer claims what 06's curve looks like."""
    bitfit = " ".join(text(c) for c in load(PROJECT_ROOT / "notebooks" / "03_bitfit.ipynb")["cells"])
    assert "lr=1e-2, head_lr=cfg.effective_head_lr" in bitfit
    lora = load(PROJECT_ROOT / "notebooks" / "05_lora.ipynb")
    code = "\n".join(code_of(lora))
    assert "epoch(s) per rank (the main run: {cfg.epochs})" in code and "compare ranks with each other" in code
    assert "typically concave" not in " ".join(text(c) for c in lora["cells"])
