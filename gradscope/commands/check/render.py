"""Renderers of a :class:`~gradscope.commands.check.report.CheckReport`: table, JSON and CSV.

JSON is ``report.to_json()`` (schema ``gradscope.check/1``).  The table reuses the
inspect table's building blocks (header grid, light tables, number formatting): a
header that ends with the verdict, then one row per checked variable and per input.
"""

from __future__ import annotations

import csv
import io
from typing import Any, cast

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from gradscope.commands.check.report import CheckReport, CheckRow
from gradscope.render import OutputFormat, format_shape
from gradscope.render.table import (
    MISSING,
    Column,
    fmt_float,
    make_console,
    make_table,
    run_lines,
    strip_trailing_spaces,
    summary_grid,
)
from gradscope.report import finite_or_none, size_of

__all__ = ["CSV_COLUMNS", "format_csv", "format_report", "format_table"]

VARIABLE_COLUMNS: tuple[Column, ...] = (
    ("layer", "path"),
    ("class", "text"),
    ("variable", "path"),
    ("shape", "text"),
    ("checked", "num"),
    ("max rel err", "num"),
    ("max abs err", "num"),
    ("worst at", "text"),
    ("autodiff", "num"),
    ("numeric", "num"),
    ("result", "text"),
)

INPUT_COLUMNS: tuple[Column, ...] = (
    ("input", "path"),
    ("shape", "text"),
    ("dtype", "text"),
    ("checked", "num"),
    ("max rel err", "num"),
    ("max abs err", "num"),
    ("worst at", "text"),
    ("autodiff", "num"),
    ("numeric", "num"),
    ("result", "text"),
)

CSV_COLUMNS: tuple[str, ...] = (
    "kind",
    "path",
    "layer",
    "class",
    "shape",
    "dtype",
    "size",
    "checked",
    "nonsmooth",
    "nonfinite",
    "max_rel_error",
    "max_abs_error",
    "worst_index",
    "worst_autodiff",
    "worst_numeric",
    "passed",
    "note",
)
"""One row per checked variable (``kind=variable``) and model input (``kind=input``)."""


def format_report(
    report: CheckReport, fmt: OutputFormat, *, width: int | None = None, color: bool = False
) -> str:
    """``report`` in format ``fmt`` (see :func:`gradscope.render.render`)."""
    if fmt is OutputFormat.JSON:
        return report.to_json() + "\n"
    if fmt is OutputFormat.CSV:
        return format_csv(report)
    return format_table(report, width=width, color=color)


# -- table ---------------------------------------------------------------------------------


def _index_text(index: tuple[int, ...]) -> str:
    return "[" + ",".join(str(i) for i in index) + "]"


def _result_cell(row: CheckRow) -> Text:
    if row.unchecked:
        return Text("unchecked", style="bold yellow")
    if row.passed is None:
        return Text(MISSING)
    if row.passed:
        return Text("ok")
    return Text("FAIL", style="bold red")


def _row_note(row: CheckRow) -> str | None:
    notes = []
    if row.nonsmooth:
        plural = "y" if row.nonsmooth == 1 else "ies"
        notes.append(f"{row.nonsmooth} entr{plural} at a kink of the loss, left out")
    if row.note is not None:
        notes.append(row.note)
    return "; ".join(notes) or None


def _check_cells(row: CheckRow) -> list[Text]:
    """The cells every row has, from ``checked`` to ``result``."""
    worst = row.worst
    return [
        Text(str(row.checked)),
        Text(fmt_float(row.max_rel_error)),
        Text(fmt_float(row.max_abs_error)),
        Text(MISSING if worst is None else _index_text(worst.index)),
        Text(MISSING if worst is None else fmt_float(worst.autodiff)),
        Text(MISSING if worst is None else fmt_float(worst.numeric)),
        _result_cell(row),
    ]


def variables_table(rows: tuple[CheckRow, ...]) -> Table:
    """One row per checked variable: its worst entry, errors and verdict."""
    cells = [
        [
            Text(row.layer or MISSING),
            Text(row.layer_class or MISSING),
            Text(row.path),
            Text(format_shape(row.shape)),
            *_check_cells(row),
        ]
        for row in rows
    ]
    notes = [_row_note(row) for row in rows]
    return make_table("Gradient check by variable", VARIABLE_COLUMNS, cells, notes)


def inputs_table(rows: tuple[CheckRow, ...]) -> Table:
    """One row per model input (integer inputs are not differentiable: no check)."""
    cells = [
        [Text(row.path), Text(format_shape(row.shape)), Text(row.dtype), *_check_cells(row)]
        for row in rows
    ]
    notes = [_row_note(row) for row in rows]
    return make_table("Gradient check by input", INPUT_COLUMNS, cells, notes)


def precision_line(report: CheckReport) -> str:
    """In which dtype and why, with which step and tolerance."""
    precision = report.precision
    what = "a float64 copy of the model" if precision.cast else f"the model, in {precision.dtype}"
    if precision.fallback:
        what += " (fallback: no float64 copy, see the note)"
    elif not precision.cast:
        what += f" ({precision.reason})"
    return (
        f"{what}; central differences, step {precision.step:.2g}·max(1,|w|); "
        f"tol {precision.tol:g} on |Δ|/max(|g_ad|,|g_fd|,{fmt_float(precision.floor)})"
    )


def _names(rows: tuple[CheckRow, ...]) -> str:
    return ", ".join(row.path for row in rows[:6]) + (" ..." if len(rows) > 6 else "")


def unchecked_text(report: CheckReport) -> str:
    """What the verdict says of the tensors none of whose sampled entries was checked."""
    unchecked = report.unchecked
    tail = "allowed by --allow-unchecked" if report.allow_unchecked else "not a pass"
    count = "1 tensor" if len(unchecked) == 1 else f"{len(unchecked)} tensors"
    return (
        f"{count} unchecked, every sampled entry at a kink of the loss "
        f"({tail}): {_names(unchecked)}"
    )


def result_line(report: CheckReport) -> str:
    """``passed: ...`` or ``FAILED: ...`` with the failing (and unchecked) tensors."""
    checked = [row for row in report.rows if row.passed is not None]
    entries = sum(row.checked for row in report.rows)
    unchecked = f"; {unchecked_text(report)}" if report.unchecked else ""
    if report.passed:
        return (
            f"passed: {len(checked)} of {len(checked)} tensors ({entries:,} entries) "
            f"within tol {report.precision.tol:g}{unchecked}"
        )
    failed = report.failed
    if not failed:
        return f"FAILED: {unchecked_text(report)}"
    return (
        f"FAILED: {len(failed)} of {len(checked)} tensors exceed tol "
        f"{report.precision.tol:g}: {_names(failed)}{unchecked}"
    )


def format_table(report: CheckReport, *, width: int | None = None, color: bool = False) -> str:
    """The header (ending with the verdict), then the variables and inputs tables."""
    lines = [*run_lines(cast(Any, report)), ("precision", precision_line(report))]
    if report.precision.note is not None:
        lines.append(("note", report.precision.note))
    lines.append(("result", result_line(report)))
    parts: list[RenderableType] = [summary_grid(lines)]
    if report.variables:
        parts.extend([Text(""), variables_table(report.variables)])
    if report.inputs:
        parts.extend([Text(""), inputs_table(report.inputs)])
    buffer = io.StringIO()
    make_console(buffer, width, color).print(Group(*parts))
    return strip_trailing_spaces(buffer.getvalue())


# -- CSV -----------------------------------------------------------------------------------


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _csv_row(row: CheckRow) -> dict[str, object]:
    worst = row.worst
    return {
        "kind": row.kind,
        "path": row.path,
        "layer": row.layer,
        "class": row.layer_class,
        "shape": format_shape(row.shape),
        "dtype": row.dtype,
        "size": size_of(row.shape),
        "checked": row.checked,
        "nonsmooth": row.nonsmooth,
        "nonfinite": row.nonfinite,
        "max_rel_error": row.max_rel_error,
        "max_abs_error": row.max_abs_error,
        "worst_index": None if worst is None else _index_text(worst.index),
        "worst_autodiff": None if worst is None else finite_or_none(worst.autodiff),
        "worst_numeric": None if worst is None else finite_or_none(worst.numeric),
        "passed": row.passed,
        "note": _row_note(row),
    }


def format_csv(report: CheckReport) -> str:
    """One row per checked tensor, header first (see :data:`CSV_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({key: _csv_cell(value) for key, value in _csv_row(row).items()})
    return buffer.getvalue()


render = format_report
"""The registry's entry point (see :func:`gradscope.render.render`)."""
