"""Figure helpers shared by the notebooks; every one takes a ``title`` (use ``course.title(...)``) and returns the Figure.

Every figure uses matplotlib's constrained layout (no ``tight_layout`` warnings), puts its legend outside the
axes (it never covers data) and uses numeric bar positions with :func:`unique_labels` (equal names never merge).
``style`` holds the shared look (colours, percent axes, legends), ``figures`` the figures every notebook draws,
``method_figures`` those of one method's own measurements; ``comparison.figures`` builds 07's on the same style.
"""
from .figures import (bar_compare, bar_frame, curves_and_lines, label_points, metric_curve, per_class_bars, prediction_grid,
                      lr_schedule, ranked_bars, run_colour, table_figure, training_curves, value_grid)
from .method_figures import bias_change, slowdown_bars
from .style import (COMBINATION_TITLES, CORRECT, FRACTION_LABEL, PALETTE, RECIPE_NAMES, TEST_COLOR, VAL_COLOR, WRONG,
                    TickPercent, best_marker_handle, empty_note, floats, legend_outside, mark_best, method_colour,
                    method_title, pct, percent_axis, percent_table, progress_axis, split_color, tick_decimals,
                    unique_labels, value_format, zoom_limits, zoom_note)

__all__ = ["COMBINATION_TITLES", "CORRECT", "FRACTION_LABEL", "PALETTE", "RECIPE_NAMES", "TEST_COLOR", "VAL_COLOR",
           "WRONG", "TickPercent", "bar_compare", "bar_frame", "best_marker_handle", "bias_change", "curves_and_lines", "empty_note",
           "floats", "label_points", "legend_outside", "lr_schedule", "mark_best", "method_colour", "method_title", "metric_curve",
           "pct", "per_class_bars", "percent_axis", "percent_table", "prediction_grid", "progress_axis", "ranked_bars",
           "run_colour", "slowdown_bars", "split_color", "table_figure", "tick_decimals", "training_curves",
           "unique_labels", "value_format", "value_grid", "zoom_limits", "zoom_note"]
