"""The comparison view (notebook 07): tables, figures and a recommender built only from the result JSONs of a run.

``tables``       loading a run's results and the tables built from them (one row per method, combinations, shots)
``report``       the tables as display strings, ``summary.md`` / ``summary.csv``, the command that reproduces a run
``recommend``    the course's decision tree applied to what the run measured
``figures``      the comparison's figures (the helpers they share with notebooks 01-06 are in ``plots``)
``tradeoffs``    the cost half: comparable step budgets, which step times can be ranked, memory by its parts
``predictions``  per-image predictions: saved probabilities, the most disputed test image, its top-5

Every public name is re-exported here: ``from clipft_utils import comparison as cmp; cmp.summary_table(df)``.
"""
from .figures import (NO_RESULTS, curve_points, method_colour, method_marker, method_title, plot_accuracy_vs_compute,
                      plot_accuracy_vs_params, plot_accuracy_vs_shots, plot_combinations, plot_learning_curves,
                      plot_per_class_heatmap, plot_step_time, plot_top5, plot_training_memory, title, top_k_heading)
from .predictions import (aligned_runs, consensus, live_frontend, main_runs, most_disputed, photo_notes, photo_table,
                          run_titles, test_image, top5)
from .recommend import (GOOD_ENOUGH_POINTS, NEEDS, SHARED_BACKBONE_PERCENT, SMALL_GPU_MB, Recommendation, curve_point,
                        memory_budgets, memory_str, recommend, recommendation_grid)
from .report import (COLUMN_NOTES, DISPLAY_COLUMNS, SEVERAL_MODELS, column_notes, format_table,
                     memory_note, run_command, table_notes, to_markdown, with_dashes, write_summary)
from .tables import (COMBINATION_METHODS, COST_COLUMNS, SAME_AS, TABLE_COLUMNS, TOP_K, check_one_dataset,
                     combination_table, curve_shots, curve_starts, default_shots, display_name, hardest_classes,
                     hardest_note, is_standin, label_of, learning_curves, load, main_rows, memory_kind, ordering,
                     per_class_matrix, profile_warnings, result_files, results_folder, shots_curve_skipped,
                     shots_display, shots_table, summary_table, top_k, zero_shot_val)
from .tradeoffs import BUDGET_FACTOR, budget_check, memory_parts, step_time_order

__all__ = [
    # tables
    "COMBINATION_METHODS", "COST_COLUMNS", "TABLE_COLUMNS", "TOP_K", "check_one_dataset", "combination_table", "curve_shots",
    "curve_starts", "default_shots", "hardest_classes", "hardest_note", "is_standin", "label_of", "learning_curves",
    "load", "main_rows", "memory_kind", "ordering", "per_class_matrix", "profile_warnings", "result_files",
    "results_folder",
    "shots_curve_skipped", "shots_display", "shots_table", "summary_table", "top_k", "zero_shot_val",
    # report
    "COLUMN_NOTES", "DISPLAY_COLUMNS", "SAME_AS", "SEVERAL_MODELS", "column_notes", "display_name", "format_table",
    "memory_note", "run_command", "table_notes", "to_markdown", "with_dashes", "write_summary",
    # recommend
    "GOOD_ENOUGH_POINTS", "NEEDS", "SHARED_BACKBONE_PERCENT", "SMALL_GPU_MB", "Recommendation", "curve_point",
    "memory_budgets", "memory_str", "recommend", "recommendation_grid",
    # figures
    "NO_RESULTS", "curve_points", "method_colour", "method_marker", "method_title", "plot_accuracy_vs_compute",
    "plot_accuracy_vs_params", "plot_accuracy_vs_shots", "plot_combinations", "plot_learning_curves",
    "plot_per_class_heatmap", "plot_step_time", "plot_top5", "plot_training_memory", "title", "top_k_heading",
    # tradeoffs
    "BUDGET_FACTOR", "budget_check", "memory_parts", "step_time_order",
    # predictions
    "aligned_runs", "consensus", "live_frontend", "main_runs", "most_disputed", "photo_notes", "photo_table",
    "run_titles", "test_image", "top5",
]
