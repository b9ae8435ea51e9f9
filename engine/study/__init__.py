"""Studies: many inputs × method variants × metrics, run as engine batches, aggregated into a
ranked table with confidence intervals (``scores.csv``, ``summary.json``, ``table.md`` and a
figure per metric). ``study(...)`` runs one; ``score_rows``/``summarize``/``write_report`` are the
pieces a service that runs the batches itself uses."""

from engine.study.aggregate import STUDY_COLUMNS, rows_from_csv, rows_to_csv, score_rows, summarize
from engine.study.report import write_report
from engine.study.run import Study, study, study_inputs
from engine.study.variants import StudyError, Variant, parse_variant, parse_variants

__all__ = [
    "STUDY_COLUMNS",
    "Study",
    "StudyError",
    "Variant",
    "parse_variant",
    "parse_variants",
    "rows_from_csv",
    "rows_to_csv",
    "score_rows",
    "study",
    "study_inputs",
    "summarize",
    "write_report",
]
