"""Reports of spec runs: tables vs baseline and matched control (console, Markdown, JSON), diff, plots.

Imports no torch/transformers/lm_eval so `report` and `diff` start fast.
"""

from unlearnspec.report.build import table_from_reference, table_from_results
from unlearnspec.report.diff import Change, diff_tables
from unlearnspec.report.model import RECORDED_LABEL, ReportTable, dumps, load_report
from unlearnspec.report.reference import ReferenceFile, load_reference, render_reference_markdown
from unlearnspec.report.render import markdown

__all__ = [
    "Change",
    "RECORDED_LABEL",
    "ReferenceFile",
    "ReportTable",
    "diff_tables",
    "dumps",
    "load_reference",
    "load_report",
    "markdown",
    "render_reference_markdown",
    "table_from_reference",
    "table_from_results",
]
