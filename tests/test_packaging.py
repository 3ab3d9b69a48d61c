"""The two pin lists (pyproject.toml, environment.yml) agree, and the repo stays lean."""
from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pyproject_pins() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["test"]
    return dict(r.split("==") for r in reqs)


def _conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return dict(r.split("==") for r in pip if "==" in r)


def test_every_dependency_is_pinned_exactly():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in meta["dependencies"] + [r for extra in meta["optional-dependencies"].values() for r in extra]:
        assert "==" in req, f"{req} is not pinned"


def test_the_tests_install_the_export_extra():
    """The ONNX export is tested, never skipped: the test extra carries the export extra's pins."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras["export"]) <= set(extras["test"])


def test_environment_yml_matches_pyproject():
    assert _conda_pins() == _pyproject_pins()


def test_core_pins_are_the_ones_the_course_depends_on():
    pins = _pyproject_pins()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert pins["open_clip_torch"] == "3.3.0"  # LoRA/prefix rely on its fused in_proj_weight layout


def test_notebooks_are_stored_clean():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} has outputs"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"
        tags = [t for c in nb["cells"] for t in c.get("metadata", {}).get("tags", [])]
        assert "parameters" in tags, f"{path.name} has no 'parameters' cell"


def test_no_tracked_file_over_10_mb():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    big = [f for f in files if (ROOT / f).is_file() and (ROOT / f).stat().st_size > 10 * 2**20]
    assert not big


EXPORT_SIBLINGS = {"pixels"}
"""Modules of the library that the open_clip export's client (export_client.py, written as classify.py) imports by
their bare name from its own folder, where the export writes them beside it."""


def _imported_top_level_modules() -> set[str]:
    """Top-level modules imported by the library and the notebooks (the code a course user runs)."""
    import ast
    sources = [p.read_text() for p in (ROOT / "clipft_utils").rglob("*.py")]
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        sources += ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    names = set()
    for src in sources:
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]  # IPython magics
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


def test_course_imports_need_no_test_extras():
    """Everything the library and notebooks import comes from the main dependencies (or their dependencies)."""
    import importlib.metadata as md
    import sys
    from packaging.requirements import Requirement

    def closure(names: list[str]) -> set[str]:
        seen, todo = set(), [n.lower().replace("_", "-") for n in names]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            for req in md.requires(name) or []:
                r = Requirement(req)
                if r.marker is None or r.marker.evaluate({"extra": ""}):
                    todo.append(r.name.lower().replace("_", "-"))
        return seen

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # the [export] extra is optional: clipft_utils/export.py imports it on use and says how to install it
    export = [r.split("==")[0] for r in meta["optional-dependencies"]["export"]]
    installed = closure([r.split("==")[0] for r in meta["dependencies"]] + export)
    dists = md.packages_distributions()
    missing = {}
    for module in _imported_top_level_modules():
        if module in sys.stdlib_module_names or module == "clipft_utils" or module in EXPORT_SIBLINGS:
            continue
        owners = {d.lower().replace("_", "-") for d in dists.get(module, [])}
        assert owners, f"'{module}' is imported by the course but no installed package provides it"
        if not owners & installed:
            missing[module] = sorted(owners)
    assert not missing, f"imported by the course but only installed as test extras (or not at all): {missing}"
