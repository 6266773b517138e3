"""Renderers that turn a :class:`~gradscope.report.Report` into text.

One module per output format (``table``, ``json``, ``csv``), each exposing
``format_report(report, ...) -> str``, behind the single entry point :func:`render`.
Renderers only read the frozen report; they never compute statistics, so every format
shows the same numbers.  The format modules are imported on first use, which keeps
``import gradscope.render`` cheap for commands that only need :class:`OutputFormat`.
"""

from __future__ import annotations

import enum

from gradscope.check_report import CheckReport
from gradscope.commands.hessian.report import HessianReport
from gradscope.diff import DiffReport
from gradscope.report import Report

__all__ = ["OutputFormat", "format_shape", "render"]


class OutputFormat(str, enum.Enum):
    """The output formats of ``gradscope inspect`` (the value is the CLI spelling)."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def format_shape(shape: tuple[int, ...]) -> str:
    """A tensor shape as ``3x4`` (``scalar`` for rank 0), compact and comma-free for CSV."""
    if not shape:
        return "scalar"
    return "x".join(str(int(dim)) for dim in shape)


def render(
    report: Report | HessianReport | DiffReport | CheckReport,
    fmt: OutputFormat,
    *,
    width: int | None = None,
    color: bool = False,
) -> str:
    """Render ``report`` (from ``inspect`` or ``hessian``) in format ``fmt``.

    ``width`` and ``color`` only affect the table format (JSON and CSV are meant for
    machines and never wrap or colour).  ``fmt`` may also be given as its string value
    (``"json"``), which is what a CLI option hands over.
    """
    fmt = OutputFormat(fmt)
    if isinstance(report, DiffReport):
        return _render_diff(report, fmt, width=width, color=color)
    if isinstance(report, CheckReport):
        from gradscope.render import check

        return check.format_report(report, fmt, width=width, color=color)
    if fmt is OutputFormat.JSON:
        from gradscope.render import json

        return json.format_report(report)
    if isinstance(report, HessianReport):
        from gradscope.commands.hessian import render as hessian

        if fmt is OutputFormat.TABLE:
            return hessian.format_table(report, width=width, color=color)
        return hessian.format_csv(report)
    if fmt is OutputFormat.TABLE:
        from gradscope.render import table

        return table.format_report(report, width=width, color=color)
    from gradscope.render import csv

    return csv.format_report(report)


def _render_diff(report: DiffReport, fmt: OutputFormat, *, width: int | None, color: bool) -> str:
    """A ``gradscope diff`` report (schema ``gradscope.diff/1``) in format ``fmt``."""
    from gradscope.render import diff

    if fmt is OutputFormat.TABLE:
        return diff.format_table(report, width=width, color=color)
    if fmt is OutputFormat.JSON:
        return diff.format_json(report)
    return diff.format_csv(report)
