"""JSON renderer: exactly the report's ``to_json``.

Schema ``gradscope.inspect/1`` or ``gradscope.hessian/1``.

The structure is owned by :meth:`Report.to_dict` so that the JSON output and any
programmatic consumer of the report can never disagree; this module only frames it as a
text file (trailing newline).
"""

from __future__ import annotations

from gradscope.report import HessianReport, Report

__all__ = ["format_report"]


def format_report(report: Report | HessianReport) -> str:
    """The report as indented JSON text ending in a newline (NaN/inf become ``null``)."""
    return report.to_json() + "\n"
