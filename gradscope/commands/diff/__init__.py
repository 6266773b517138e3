"""``gradscope diff``: compare two saved ``inspect`` reports.

:mod:`.compare` reads the reports (with :meth:`gradscope.Report.from_dict`) and compares
them, :mod:`.report` holds the result (:class:`DiffReport`, schema ``gradscope.diff/1``)
and :mod:`.render` writes it as a table, JSON or CSV.  Nothing here imports TensorFlow.
"""

from __future__ import annotations

from .compare import FAIL_CONDITIONS, change, diff_files, diff_reports, load_report, parse_fail_on
from .report import (
    DIFF_SCHEMA,
    REASONS,
    ActivationDiff,
    Change,
    CheckResult,
    Checks,
    DiffReport,
    LossChange,
    NonfiniteChange,
    Presence,
    ReportSide,
    TopChange,
    VariableDiff,
)

__all__ = [
    "DIFF_SCHEMA",
    "FAIL_CONDITIONS",
    "REASONS",
    "ActivationDiff",
    "Change",
    "CheckResult",
    "Checks",
    "DiffReport",
    "LossChange",
    "NonfiniteChange",
    "Presence",
    "ReportSide",
    "TopChange",
    "VariableDiff",
    "change",
    "diff_files",
    "diff_reports",
    "load_report",
    "parse_fail_on",
]
