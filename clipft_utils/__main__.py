"""``python -m clipft_utils``: the course's command line (``clipft_utils.course.cli``)."""
import sys

from clipft_utils.course.cli import main

if __name__ == "__main__":
    sys.exit(main())
