"""Write each notebook's time line under its title: reading minutes (estimated from its words, code lines and
figures) and the run time the runner measured (the completion records of a smoke run).

    python scripts/reading_time.py [--runs results/smoke/runs]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipft_utils.course.reading import write_time_line  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "results" / "smoke" / "runs",
                        help="completion records of the run whose seconds to state (default: results/smoke/runs)")
    args = parser.parse_args()
    runs = args.runs if args.runs.is_dir() else None
    if runs is None:
        print(f"no completion records in {args.runs}: the run times the notebooks state are kept", file=sys.stderr)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        print(f"{path.stem}: {write_time_line(path, runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
